//! The layers of `src/` point one way, checked from the source's own `use` lines (docs/ARCHITECTURE.md
//! draws them): a module imports only its own layer or those below it, the top-level modules form
//! no loop, and no transport reads the database.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom. `main.rs` (the binary) and `lib.rs` (the module list) sit above them all.
const LAYERS: &[(&str, &[&str])] = &[
    ("wiring", &["startup"]),
    ("transports", &["http", "ws", "sio", "telemetry"]),
    ("session core", &["session"]),
    ("service", &["service"]),
    ("presence", &["presence"]),
    ("state", &["state"]),
    ("cluster-wide budgets", &["limits", "revocations"]),
    ("bus", &["fanout", "hub", "bus", "kv"]),
    ("storage", &["db"]),
    ("base", &["protocol", "error", "config", "metrics", "auth", "validate", "ratelimit", "clock"]),
];

/// Transports reach the database only through `service`.
const TRANSPORTS: &[&str] = &["http", "ws", "sio", "session", "telemetry"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, top: Option<&str>, out: &mut Vec<(String, String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if path.is_dir() {
            sources(&path, Some(top.unwrap_or(&name)), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = top.map_or(name.clone(), str::to_owned);
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), module, text));
        }
    }
}

/// The top-level modules a file names with `crate::…` outside its unit tests and comments.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn modules_import_only_their_layer_and_below_and_form_no_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, None, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, module, text) in &files {
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(own) = layer_of(module) else {
            problems.push(format!("{path}: module `{module}` is in no layer (add it to LAYERS and ARCHITECTURE.md)"));
            continue;
        };
        for target in imports(text) {
            if &target == module {
                continue;
            }
            match layer_of(&target) {
                Some(layer) if layer < own => problems.push(format!(
                    "{path}: `{module}` ({}) imports `{target}` ({}), a layer above it",
                    LAYERS[own].0, LAYERS[layer].0
                )),
                None => problems.push(format!("{path}: imports `{target}`, which is in no layer")),
                _ => {}
            }
            if TRANSPORTS.contains(&module.as_str()) && target == "db" {
                problems.push(format!("{path}: a transport imports `db`; go through `service`"));
            }
            graph.entry(module.clone()).or_default().insert(target);
        }
    }
    // Within a layer, imports must still not go round in a circle.
    fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str, seen: &mut BTreeSet<String>) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|next| next == to || (seen.insert(next.clone()) && reaches(graph, next, to, seen)))
    }
    for module in graph.keys() {
        if reaches(&graph, module, module, &mut BTreeSet::new()) {
            problems.push(format!("`{module}` imports something that imports it back"));
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
    assert!(graph.len() > 15, "the scan found the modules ({} of them)", graph.len());
}

#[test]
fn the_scan_sees_grouped_and_inline_paths() {
    let found = imports(
        "use crate::{http, telemetry};\nfn f() { crate::db::x(); } // crate::hub\n#[cfg(test)]\nuse crate::ws;",
    );
    assert_eq!(found.into_iter().collect::<Vec<_>>(), vec!["db", "http", "telemetry"]);
}
