//! `muster-server`: loads config, sets up tracing, connects, runs until SIGTERM/SIGINT.
//! A first signal drains (leader releases its lease, tasks stop); a second forces exit.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use muster_nats::settings::{env_vars, LOG};
use muster_nats::urls::parse_urls;
use muster_nats::{ConnectParams, ConnectionEvents};
use muster_server::config::{ServerConfig, SETTINGS};
use muster_server::metrics::{Metrics, ServerCounter};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// mimalloc: under a registration storm glibc malloc/free took a third of the server's CPU (perf, 100k hosts).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "muster-server", version, about = "muster control-plane server (leader / follower / observer)",
    after_help = SETTINGS.help())]
struct Args {
    /// TOML config file (settings are the lower-case names of the variables below, without MUSTER_).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Longest wait for buffered publishes on exit.
const FLUSH_ON_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env(LOG.env).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: in a log file or journal they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for name in SETTINGS.unknown_env_vars(&env_vars(std::env::vars_os())?) {
        tracing::warn!(variable = %name, "unknown MUSTER_ variable ignored (see muster-server --help)");
    }
    let cfg = ServerConfig::load(args.config.as_deref())?;
    let urls = parse_urls(&cfg.nats_url)?;
    muster_nats::check_insecure(&urls, cfg.trust.credentials.is_some(), cfg.trust.insecure)?;
    if cfg.command_key()?.is_none() && cfg.role == muster_server::config::ServerRole::Voter {
        tracing::warn!(
            "no MUSTER_COMMAND_KEY: commands go unsigned; only agents running with MUSTER_INSECURE act on them"
        );
    }
    let metrics = Metrics::default();
    let slow = metrics.clone();
    let events = ConnectionEvents::new().with_hook(move |event| {
        if matches!(event, async_nats::Event::SlowConsumer(_)) {
            slow.inc(ServerCounter::NatsSlowConsumer);
        }
    });
    let params = ConnectParams {
        urls,
        name: format!("muster-server {}", cfg.server_id),
        trust: cfg.trust.clone(),
        // NATS may start after the server (a reboot, a container restart): keep trying in the background.
        retry_initial_connect: true,
        events,
        ..ConnectParams::default()
    };
    let client = muster_nats::connect(params).await.with_context(|| format!("connecting to {}", cfg.nats_url))?;
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
