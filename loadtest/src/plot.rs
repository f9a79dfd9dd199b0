//! Two small SVG charts, drawn by hand to keep the tool free of plotting crates: latency over time
//! (p50, p99 per second) and the latency distribution (CDF by quantile).

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::stats::Second;

const W: f64 = 800.0;
const H: f64 = 400.0;
const PAD: f64 = 60.0;

fn frame(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64, log_x: bool) -> String {
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{title}</text>
<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">{y_label}</text>
"#,
        W / 2.0,
        H - PAD,
        W - 20.0,
        H - PAD,
        H - PAD,
        W / 2.0,
        H - 15.0,
        H / 2.0,
        H / 2.0
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let y = H - PAD - f * (H - 2.0 * PAD);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{:.1}</text>"#, PAD - 5.0, y + 4.0, f * y_max);
        let _ = writeln!(s, r##"<line x1="{PAD}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##, W - 20.0);
        let label = if log_x { quantile_label(f * x_max) } else { format!("{:.0}", f * x_max) };
        let x = PAD + f * (W - PAD - 20.0);
        let _ = writeln!(s, r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#, H - PAD + 15.0);
    }
    s
}

fn quantile_label(nines: f64) -> String {
    // x is "number of nines": 0 → 0%, 1 → 90%, 2 → 99%, 3 → 99.9%.
    let q = 1.0 - 10f64.powf(-nines);
    format!("{:.2}%", q * 100.0)
}

fn polyline(points: &[(f64, f64)], x_max: f64, y_max: f64, color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = PAD + (x / x_max.max(1e-9)) * (W - PAD - 20.0);
            let py = H - PAD - (y / y_max.max(1e-9)).min(1.0) * (H - 2.0 * PAD);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    format!(r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, pts.join(" "))
}

fn legend(entries: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (name, color)) in entries.iter().enumerate() {
        let y = PAD + 15.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            W - 150.0,
            y - 9.0,
            W - 135.0,
            y
        );
    }
    s
}

pub fn latency_over_time(title: &str, timeline: &[Second]) -> String {
    let x_max = timeline.last().map_or(1.0, |s| s.t);
    let y_max = timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut s = frame(title, "seconds", "latency (ms)", x_max, y_max, false);
    let p50: Vec<(f64, f64)> = timeline.iter().map(|s| (s.t, s.p50_ms)).collect();
    let p99: Vec<(f64, f64)> = timeline.iter().map(|s| (s.t, s.p99_ms)).collect();
    s.push_str(&polyline(&p50, x_max, y_max, "#1f77b4"));
    s.push_str(&polyline(&p99, x_max, y_max, "#d62728"));
    s.push_str(&legend(&[("p50", "#1f77b4"), ("p99", "#d62728")]));
    s.push_str("</svg>\n");
    s
}

/// Latency by quantile, x in "nines" (90%, 99%, 99.9%…), for one or more runs.
pub fn latency_cdf(title: &str, runs: &[(&str, &Histogram<u64>)]) -> String {
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let x_max = 4.0;
    let y_max = runs.iter().map(|(_, h)| h.value_at_quantile(0.9999) as f64 / 1000.0).fold(1.0, f64::max) * 1.1;
    let mut s = frame(title, "quantile", "latency (ms)", x_max, y_max, true);
    let mut entries = Vec::new();
    for (i, (name, h)) in runs.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = (0..=80)
            .map(|k| {
                let nines = k as f64 / 20.0;
                let q = (1.0 - 10f64.powf(-nines)).min(0.9999);
                (nines, h.value_at_quantile(q) as f64 / 1000.0)
            })
            .collect();
        s.push_str(&polyline(&points, x_max, y_max, color));
        entries.push((*name, color));
    }
    s.push_str(&legend(&entries));
    s.push_str("</svg>\n");
    s
}
