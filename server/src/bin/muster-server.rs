//! `muster-server`: loads config, sets up tracing, connects, runs until SIGTERM/SIGINT.
//! A first signal drains (leader releases its lease, tasks stop); a second forces exit.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use muster_server::config::{ServerConfig, SETTINGS};
use muster_server::metrics::Metrics;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// mimalloc: under a registration storm glibc malloc/free took a third of the server's CPU (perf, 100k hosts).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "muster-server", version, about = "muster control-plane server (leader / follower / observer)",
    after_help = settings_help())]
struct Args {
    /// TOML config file (settings are the lower-case names of the variables below, without MUSTER_).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn settings_help() -> String {
    let mut s = String::from("Settings (defaults < --config file < environment):\n");
    for (var, default, what) in SETTINGS {
        s.push_str(&format!("  {var:<38} {what} [default: {default}]\n"));
    }
    s
}

/// Longest wait for buffered publishes on exit.
const FLUSH_ON_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cfg = ServerConfig::load(args.config.as_deref())?;
    let metrics = Metrics::default();
    let name = format!("muster-server {}", cfg.server_id);
    let client = muster_server::server::connect(&cfg.nats_url, &name, metrics.clone())
        .await
        .with_context(|| format!("connecting to {}", cfg.nats_url))?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down (signal again to force)");
        stop.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
    muster_server::server::run(cfg, client.clone(), metrics, shutdown).await?;
    // With NATS unreachable a flush waits for a reconnect that may never come; what is unsent is not ours to keep
    // (every acknowledged write is already in JetStream).
    let _ = tokio::time::timeout(FLUSH_ON_EXIT, client.flush()).await;
    Ok(())
}
