//! What both binaries (`muster-agent`, `muster-swarm`) do around their work: tracing to stderr, the async runtime,
//! and the SIGTERM/SIGINT handler (a first signal drains, a second exits at once).

use std::io::IsTerminal as _;

use anyhow::Context as _;
use muster_nats::settings;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// Exit code when a second signal forces an immediate exit (128 + SIGINT, the shell convention).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Logs to stderr with `MUSTER_LOG`'s filter, or `default` when it is unset.
pub fn init_tracing(default: &str) -> anyhow::Result<()> {
    let variable = settings::LOG.env;
    let directives = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    let filter = EnvFilter::try_new(&directives).with_context(|| format!("invalid {variable}={directives:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; container logs and test captures get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// The multi-threaded runtime, with `worker_threads` workers (`None`: one per core).
pub fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().context("cannot start the async runtime")
}

/// First SIGTERM/SIGINT cancels `shutdown`; a second exits at once; `exit` ends the watcher.
pub fn handle_signals(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    exit: &CancellationToken,
) -> anyhow::Result<()> {
    // Installed before connecting: a stop during the first connection attempts must still be clean. Explicit
    // handlers are what makes SIGTERM work at all when the agent is PID 1 in a container.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tracker.spawn({
        let shutdown = shutdown.clone();
        let exit = exit.clone();
        async move {
            let mut signals = 0;
            loop {
                let name = tokio::select! {
                    () = exit.cancelled() => return,
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sigint.recv() => "SIGINT",
                };
                signals += 1;
                if signals == 1 {
                    tracing::info!(signal = name, "shutting down (send it again to exit at once)");
                    shutdown.cancel();
                } else {
                    tracing::warn!(signal = name, "second signal: exiting at once");
                    std::process::exit(FORCED_EXIT_CODE);
                }
            }
        }
    });
    Ok(())
}
