//! `muster-agent`: parse arguments, load the config, set up tracing and signals, connect, run.
//! `muster-agent swarm --count N`: the same, for N simulated hosts in this process (load tests).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use muster_agent::config::{self, AgentConfig};
use muster_agent::enroll;
use muster_agent::swarm::{self, SwarmParams};
use muster_nats::settings::{self, DefaultValue};
use muster_nats::{ConnectParams, ConnectionEvents};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;

/// Runtime worker threads: the agent does little concurrent work (one session, a few commands' pipes, one signal
/// task), and on a busy host it should not spread over every core.
const WORKER_THREADS: usize = 2;

/// How long shutdown waits for buffered messages to reach NATS: long enough for a healthy connection, short
/// enough that a container stop (10 s grace by default) never has to SIGKILL the agent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Exit code when a second signal forces an immediate exit (128 + SIGINT, the shell convention).
const FORCED_EXIT_CODE: i32 = 130;

/// Log filter of `muster-agent swarm` when `MUSTER_LOG` is unset: a hundred thousand hosts logging each
/// registration (or each `busy` retry of a storm) would drown the summary lines, so only errors and the swarm's
/// own warnings.
const SWARM_DEFAULT_LOG: &str = "error,muster_agent::swarm=warn";

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
    #[arg(long, value_name = "FILE", env = settings::CONFIG.env, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate many hosts in this process, for load tests: each registers, heartbeats and runs commands (the
    /// built-ins true, false, echo, sleep) like a real agent, over a few shared NATS connections. NATS URL, prefix,
    /// labels and timers come from the usual settings; the host id setting is ignored. Prints a summary line to
    /// stderr every few seconds; SIGTERM stops every host and exits 0.
    Swarm(SwarmArgs),
}

#[derive(Debug, clap::Args)]
struct SwarmArgs {
    /// How many hosts to simulate.
    #[arg(long)]
    count: usize,
    /// NATS connections the hosts share [default: one per 5,000 hosts].
    #[arg(long)]
    connections: Option<usize>,
    /// Host ids are <PREFIX>-000001, <PREFIX>-000002, ...
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

impl SwarmArgs {
    fn params(&self) -> SwarmParams {
        SwarmParams {
            count: self.count,
            connections: self.connections,
            id_prefix: self.id_prefix.clone(),
            first_index: self.first_index,
            ramp: Duration::from_millis(self.ramp_ms),
            summary_interval: Duration::from_secs(self.summary_secs.max(1)),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let swarm = matches!(cli.command, Some(Command::Swarm(_)));
    if let Err(e) = init_tracing(if swarm { SWARM_DEFAULT_LOG } else { DEFAULT_LOG }) {
        eprintln!("muster-agent: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // A swarm is a load generator and may use every core; the agent stays a small guest on its host.
    if !swarm {
        builder.worker_threads(WORKER_THREADS);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("muster-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) -> anyhow::Result<()> {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = AgentConfig::load(cli.config.as_deref())?;
    let swarm = matches!(cli.command, Some(Command::Swarm(_)));
    // Credentials from an earlier enrollment (or a token to enroll with); a swarm brings its own.
    let plan = if swarm { enroll::Plan::Configured } else { enroll::plan(&config)? };
    if let enroll::Plan::Stored(path) = &plan {
        config.trust.credentials = Some(path.clone());
    }
    let has_credentials = config.trust.credentials.is_some() || matches!(plan, enroll::Plan::Enroll(_));
    // Before anything connects, the swarm included: an anonymous agent off loopback runs whatever anyone sends it.
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
    if let Some(Command::Swarm(args)) = &cli.command {
        handle_signals(&tracker, &shutdown, &exit)?;
        let result = swarm::run_swarm(&config, args.params(), shutdown).await;
        exit.cancel();
        tracker.close();
        tracker.wait().await;
        return Ok(result?);
    }
    tracing::info!(host = %config.host_id, prefix = %config.prefix, version = env!("CARGO_PKG_VERSION"), "starting");
    handle_signals(&tracker, &shutdown, &exit)?;
    if let enroll::Plan::Enroll(token) = &plan {
        match enroll::enroll(&config, token, &shutdown).await? {
            Some(creds) => config.trust.credentials = Some(creds),
            None => {
                exit.cancel();
                tracker.close();
                tracker.wait().await;
                return Ok(());
            }
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

    let result = muster_agent::run(&config, client.clone(), reconnects, shutdown.clone()).await;

    shutdown.cancel();
    // Without a connection there is nothing to flush to, and waiting would only delay the exit.
    if client.connection_state() == async_nats::connection::State::Connected {
        match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "flush on shutdown failed"),
            Err(_) => tracing::debug!("flush on shutdown timed out"),
        }
    }
    exit.cancel();
    tracker.close();
    tracker.wait().await;

    result?;
    tracing::info!("stopped");
    Ok(())
}

/// First SIGTERM/SIGINT cancels `shutdown`; a second exits at once; `exit` ends the watcher.
fn handle_signals(tracker: &TaskTracker, shutdown: &CancellationToken, exit: &CancellationToken) -> anyhow::Result<()> {
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
