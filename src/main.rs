//! The `chorus` binary: `chorus` serves, `chorus migrate` only migrates.

use std::process::ExitCode;

use clap::Parser;

use chorus::config::{Cli, Command};
use chorus::startup::Application;
use chorus::{init_logging, run_migrations};

/// Allocations of 8 KiB and more get their own mappings instead of a slot in glibc's heap. Every
/// HTTP connection carries actix-http's 8 KiB read and 8 KiB write buffers (fixed in its HTTP/1
/// dispatcher) for as long as it is open, and fills only the first page of each. From the heap, the
/// buffers land in memory that short-lived allocations already touched, so all of it counts as
/// resident, and once freed they leave holes between long-lived allocations; mapped on their own,
/// only the pages data reached are resident and a free gives them back. Measured on 5,000 idle
/// WebSockets, when they still held these buffers: 25.4 KiB RSS per connection before, 21.0 KiB
/// after (docs/BENCHMARKS.md). WebSockets now let the buffers go at the upgrade
/// (`ws::connection`); plain keep-alive connections and long-polls still hold them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only adjusts glibc's allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8192);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    // A missing .env is normal; a malformed one is worth a word but not a refusal to start.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("chorus: ignoring .env: {e}");
        }
    }
    let cli = Cli::parse();
    let mut settings = cli.settings;
    if let Err(e) = settings.validate() {
        eprintln!("chorus: {e}");
        return ExitCode::from(2);
    }
    init_logging(settings.log_format);
    // The HTTP workers run their own single-threaded runtimes, and the node's tasks run on the first
    // of them (`startup::NodeTasks`); this one only migrates, binds, and waits for the drain signal.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chorus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => runtime.block_on(async {
            let applied = run_migrations(&settings.database_url)
                .await
                .map_err(|e| format!("cannot migrate the database at DATABASE_URL: {e}"))?;
            tracing::info!(count = applied.len(), ?applied, "migrations applied");
            Ok::<_, String>(())
        }),
        Command::Serve => runtime.block_on(async {
            let app = Application::build(settings).await.map_err(|e| e.to_string())?;
            tracing::info!(port = app.port(), node_id = app.state.settings.node_id(), "chorus node listening");
            let (state, handle) = (app.state.clone(), app.handle());
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown signal: draining");
                Application::drain(&state, &handle).await;
            });
            app.run_until_stopped().await.map_err(|e| e.to_string())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chorus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
