//! `muster-swarm --count N`: N simulated hosts in one process, for load tests ([`muster_agent::swarm`]). Each
//! registers, heartbeats and runs commands (the built-ins `true`, `false`, `echo`, `sleep`) like a real agent,
//! over a few shared NATS connections, with the agent's settings (NATS URL, credentials, prefix, labels, timers;
//! the host id setting is ignored). Prints a summary line to stderr every few seconds; SIGTERM stops every host
//! and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use muster_agent::config::{self, AgentConfig};
use muster_agent::process::{handle_signals, init_tracing, runtime};
use muster_agent::swarm::{self, SwarmParams};
use muster_nats::settings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// mimalloc, here and not in `muster-agent`: a swarm is a load generator whose malloc/free took a third of its CPU
/// under a 100,000-host registration storm (perf), CPU the server under test shares on one machine; a real agent
/// stays with the system allocator, whose footprint on an idle host is the smaller (1.4 against 15 MiB anonymous).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log filter when `MUSTER_LOG` is unset: a hundred thousand hosts logging each registration (or each `busy` retry
/// of a storm) would drown the summary lines, so only errors and the swarm's own warnings.
const DEFAULT_LOG: &str = "error,muster_agent::swarm=warn";

#[derive(Debug, Parser)]
#[command(
    name = "muster-swarm",
    version,
    about = "muster load generator: many simulated hosts in one process, each a full agent session",
    after_help = config::TABLE.help()
)]
struct Cli {
    /// TOML config file (the agent's); environment variables override it.
    #[arg(long, value_name = "FILE", env = settings::CONFIG.env)]
    config: Option<PathBuf>,
    /// How many hosts to simulate.
    #[arg(long)]
    count: usize,
    /// NATS connections the hosts share [default: one per 5,000 hosts].
    #[arg(long)]
    connections: Option<usize>,
    /// Host ids are PREFIX-000001, PREFIX-000002, ...
    #[arg(long, value_name = "PREFIX", default_value = "swarm")]
    id_prefix: String,
    /// Index of the first host.
    #[arg(long, value_name = "N", default_value_t = 1)]
    first_index: usize,
    /// Spread the hosts' start over this many milliseconds (0: all at once, a registration storm).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ramp_ms: u64,
    /// Seconds between summary lines.
    #[arg(long, value_name = "SECS", default_value_t = swarm::DEFAULT_SUMMARY_INTERVAL.as_secs())]
    summary_secs: u64,
}

impl Cli {
    fn params(&self) -> SwarmParams {
        SwarmParams {
            count: self.count,
            connections: self.connections,
            id_prefix: self.id_prefix.clone(),
            first_index: self.first_index,
            ramp: std::time::Duration::from_millis(self.ramp_ms),
            summary_interval: std::time::Duration::from_secs(self.summary_secs.max(1)),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A load generator may use every core.
    let started = init_tracing(DEFAULT_LOG).and_then(|()| runtime(None));
    match started.and_then(|runtime| runtime.block_on(run(cli))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-swarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = AgentConfig::load(cli.config.as_deref())?;
    // Before anything connects: simulated hosts act on what they are sent, like real ones.
    muster_nats::check_insecure(&config.nats_servers, config.trust.credentials.is_some(), config.trust.insecure)?;
    if let Ok(env) = settings::env_vars(std::env::vars_os()) {
        for name in config::TABLE.unknown_env_vars(&env) {
            tracing::warn!(variable = %name, "ignoring unknown MUSTER_ variable (typo?)");
        }
    }
    let shutdown = CancellationToken::new();
    let exit = CancellationToken::new();
    let tracker = TaskTracker::new();
    handle_signals(&tracker, &shutdown, &exit)?;
    let result = swarm::run_swarm(&config, cli.params(), shutdown).await;
    exit.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(result?)
}
