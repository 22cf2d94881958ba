//! `muster-agent`: parse arguments, load the config, set up tracing, signals and the orphan reaper, connect, run;
//! as a container's PID 1, stop the container's other processes before exiting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use muster_agent::config::{self, AgentConfig};
use muster_agent::process::{handle_signals, init_tracing, runtime};
use muster_agent::stats::SessionCounter;
use muster_agent::{enroll, reaper, SessionStats};
use muster_nats::settings::{self, DefaultValue};
use muster_nats::{ConnectParams, ConnectionEvents};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runtime worker threads: the agent does little concurrent work (one session, a few commands' pipes, one signal
/// task), and on a busy host it should not spread over every core.
const WORKER_THREADS: usize = 2;

/// How long shutdown waits for buffered messages to reach NATS: long enough for a healthy connection, short
/// enough that a container stop (10 s grace by default) never has to SIGKILL the agent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Log filter of the agent when `MUSTER_LOG` is unset: the settings table's default, so `--help` shows what
/// applies (a table whose default is not a filter text fails to compile here).
const DEFAULT_LOG: &str = match settings::LOG.default {
    DefaultValue::Text(filter) => filter,
    _ => panic!("MUSTER_LOG's default must be a filter text"),
};

#[derive(Debug, Parser)]
#[command(
    name = "muster-agent",
    version,
    about = "muster agent: registers this host with the muster leader over NATS, heartbeats, runs its commands",
    after_help = config::TABLE.help()
)]
struct Cli {
    /// TOML config file; environment variables override it.
    #[arg(long, value_name = "FILE", env = settings::CONFIG.env)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = init_tracing(DEFAULT_LOG).and_then(|()| runtime(Some(WORKER_THREADS)));
    let result = started.and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = AgentConfig::load(cli.config.as_deref())?;
    // Credentials from an earlier enrollment (or a token to enroll with).
    let plan = enroll::plan(&config)?;
    if let enroll::Plan::Stored(path) = &plan {
        config.trust.credentials = Some(path.clone());
    }
    let has_credentials = config.trust.credentials.is_some() || matches!(plan, enroll::Plan::Enroll(_));
    // Before anything connects: an anonymous agent off loopback runs whatever anyone sends it.
    muster_nats::check_insecure(&config.nats_servers, has_credentials, config.trust.insecure)?;
    if let Ok(env) = settings::env_vars(std::env::vars_os()) {
        for name in config::TABLE.unknown_env_vars(&env) {
            tracing::warn!(variable = %name, "ignoring unknown MUSTER_ variable (typo?)");
        }
    }
    match config.command_trust() {
        trust if trust.refuses_everything() => tracing::error!(
            "no MUSTER_TRUSTED_KEYS: every command will be refused (set it to the server's command.pub, or set \
             MUSTER_INSECURE for a lab without signing)"
        ),
        muster_agent::params::CommandTrust::Insecure => {
            tracing::warn!("MUSTER_INSECURE without MUSTER_TRUSTED_KEYS: acting on unsigned commands")
        }
        muster_agent::params::CommandTrust::Signed(_) => {}
    }
    let shutdown = CancellationToken::new();
    let exit = CancellationToken::new();
    let tracker = TaskTracker::new();
    let pid1 = reaper::is_init();
    tracing::info!(
        host = %config.host_id, prefix = %config.prefix, version = env!("CARGO_PKG_VERSION"), pid1, "starting"
    );
    handle_signals(&tracker, &shutdown, &exit)?;
    let stats = SessionStats::default();
    start_reaper(&tracker, &stats, &exit);
    let shutdown_began = tracker.spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            Instant::now()
        }
    });

    let result = serve(&mut config, &plan, stats.clone(), &shutdown).await;

    shutdown.cancel();
    if pid1 {
        // What still runs is the container's (daemons its commands started), and it ends with the agent: in
        // order, within the same grace, rather than SIGKILLed by the kernel when PID 1 exits.
        let began = shutdown_began.await.unwrap_or_else(|_| Instant::now());
        let killed = reaper::stop_the_rest(&stats, began + config.shutdown_grace).await;
        tracing::info!(killed, "stopped the container's other processes");
    }
    exit.cancel();
    tracker.close();
    tracker.wait().await;

    result?;
    tracing::info!(orphans_reaped = stats.get(SessionCounter::OrphansReaped), "stopped");
    Ok(())
}

/// Starts reaping orphans (see [`reaper`]): PID 1 is its namespace's reaper already; anywhere else the agent
/// makes itself its descendants' reaper, so their orphans are its to reap.
fn start_reaper(tracker: &TaskTracker, stats: &SessionStats, exit: &CancellationToken) {
    if !reaper::is_init() {
        if let Err(e) = reaper::become_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphaned daemons go to init");
        }
    }
    tracker.spawn(reaper::run(stats.clone(), exit.clone()));
}

/// Enrolls if it must, connects, runs until `shutdown`, flushes.
async fn serve(
    config: &mut AgentConfig,
    plan: &enroll::Plan,
    stats: SessionStats,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let enroll::Plan::Enroll(token) = plan {
        match enroll::enroll(config, token, shutdown).await? {
            Some(creds) => config.trust.credentials = Some(creds),
            None => return Ok(()),
        }
    }

    let events = ConnectionEvents::new();
    let reconnects = events.reconnects();
    let connect = ConnectParams {
        urls: config.nats_servers.clone(),
        name: format!("muster-agent {}", config.host_id),
        trust: config.trust.clone(),
        // The agent may start before NATS: it keeps trying, and sessions wait for the first connection.
        retry_initial_connect: true,
        events,
        ..ConnectParams::default()
    };
    let client = muster_nats::connect(connect).await.context("cannot set up the NATS connection")?;

    let result = muster_agent::run(config, stats, client.clone(), reconnects, shutdown.clone()).await;

    shutdown.cancel();
    // Without a connection there is nothing to flush to, and waiting would only delay the exit.
    if client.connection_state() == async_nats::connection::State::Connected {
        match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "flush on shutdown failed"),
            Err(_) => tracing::debug!("flush on shutdown timed out"),
        }
    }
    Ok(result?)
}
