//! muster-agent: registers its host with the muster leader, heartbeats its health, runs the commands the leader
//! sends and reports their results, checks its components' status and restarts the ones that should run.
//! Stateless but for its credentials: enrollment ([`enroll`]) keeps them in its state directory; everything else it
//! must not forget lives on the server or in JetStream.
//!
//! # Layout
//! Four layers; a module imports only from its own layer or the layers below it.
//!
//! Leaves — data, parameters and small helpers, importing no module of the layers above (the NATS connection, the
//! clock, message headers and the counters facility come from `muster_nats` and `muster_schemas`):
//! - [`params`]     — [`SessionParams`], [`params::CommandParams`], [`params::RestartLimits`] and their defaults.
//! - [`stats`]      — [`SessionStats`]: a session's typed counters, summed by the swarm.
//! - [`feed`]       — [`feed::Feed`]: a session's inbound messages, from its own subscription or a routed mailbox.
//! - [`output`]     — bounded head-and-tail capture of a command's stdout and stderr.
//!
//! Pure logic — no I/O, time and randomness passed in:
//! - [`backoff`]    — exponential backoff with full jitter, and heartbeat jitter.
//! - [`protocol`]   — the registration/heartbeat state machine: `transition(&state, event) -> (state, effects)`.
//! - [`queue`]      — the action queue: per-component FIFO lanes under a global concurrency limit, cancel.
//! - [`status`]     — the component status book: which statuses changed since last reported.
//! - [`recovery`]   — the auto-restart limiter (per window, minimum gap, lifetime cap).
//! - [`intake`]     — command checks, catch-up planning, repeat suppression; what delivery hands the runner.
//! - [`container`]  — whether this is a container, its id, its cgroup's memory and CPU limits, from the kernel's
//!   files' text.
//!
//! I/O shells — perform what the pure parts decide:
//! - [`facts`]      — [`FactSource`]: host facts for registration and health for heartbeats (sysinfo or static;
//!   a container's own limits and id).
//! - [`reaper`]     — orphans re-parented to the agent (PID 1 or child subreaper) reaped without touching the
//!   executor's children; as PID 1, the container's other processes stopped at the end.
//! - [`executor`]   — [`Executor`] and the real [`ProcessExecutor`]: process groups, timeouts that kill the tree,
//!   SIGTERM forwarded at shutdown.
//! - [`journal`]    — the execution journal (`MUSTER_EXEC_JOURNAL`): every task attempt appended and fsync'd
//!   before its command starts, for audits.
//! - [`reporter`]   — reports out: JetStream publish with `Nats-Msg-Id`, retried with the same id until acked.
//! - [`delivery`]   — commands in: live subscription, catch-up from the stream after the cursor.
//! - [`runner`]     — the command path: queue → executor → reports (`task`), status checks and auto-restart
//!   (`components`, pure), shutdown.
//! - [`session`]    — [`run_session`]: registration and heartbeats per the protocol, alongside the command path.
//!
//! Top — configuration and entry points:
//! - [`config`]     — [`AgentConfig`]: defaults < TOML file < `MUSTER_*` environment, validated; builds the params.
//! - [`enroll`]     — enrollment with a token: its own key, the leader's verdict, credentials kept in the state
//!   directory.
//! - [`swarm`]      — `muster-swarm`: many simulated hosts in one process over shared connections.
//! - [`process`]    — what both binaries do around their work: tracing, the runtime, the signal handler.
//! - [`run`] (here) — one real host's agent.
//!
//! The binaries parse arguments, load the config, set up tracing and signals, connect, and call [`run`]
//! (`src/main.rs`, `muster-agent`, which also runs the [`reaper`] and, as PID 1, [`reaper::stop_the_rest`]) or
//! [`swarm::run_swarm`] (`src/bin/muster-swarm.rs`, `muster-swarm`, with its own allocator).
#![deny(missing_docs)]

pub mod backoff;
pub mod config;
pub mod container;
pub mod delivery;
pub mod enroll;
pub mod executor;
pub mod facts;
pub mod feed;
pub mod intake;
pub mod journal;
pub mod output;
pub mod params;
pub mod process;
pub mod protocol;
pub mod queue;
pub mod reaper;
pub mod recovery;
pub mod reporter;
pub mod runner;
pub mod session;
pub mod stats;
pub mod status;
pub mod swarm;

use std::sync::Arc;

use async_nats::Client;
use muster_nats::Reconnects;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use executor::{Executor, ProcessExecutor};
pub use facts::{FactSource, StaticFacts, SystemFacts};
pub use params::SessionParams;
pub use session::{run_session, run_session_with, SessionError, SessionIo};
pub use stats::SessionStats;

/// Why the agent stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The host could not be inspected.
    #[error(transparent)]
    Facts(#[from] facts::FactsError),
    /// The session ended with an error.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Runs the agent for the real host described by `config` until `shutdown` is cancelled, counting into `stats`
/// (shared with the [`reaper`]).
///
/// `reconnects` must come from the [`muster_nats::ConnectionEvents`] wired into `client`'s event callback.
pub async fn run(
    config: &AgentConfig,
    stats: SessionStats,
    client: Client,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let facts = SystemFacts::new(config.disk_full_percent)?;
    let params = SessionParams { stats, ..config.session_params(muster_nats::unix_millis()) };
    run_session(client, params, facts, Arc::new(ProcessExecutor), reconnects, shutdown).await?;
    Ok(())
}
