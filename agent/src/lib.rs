//! muster-agent: registers its host with the muster leader, heartbeats its health, runs the commands the leader
//! sends and reports their results, checks its components' status and restarts the ones that should run.
//! Stateless: nothing is written to disk; everything it must not forget lives on the server or in JetStream.
//!
//! # Layout
//! - [`config`]     — [`AgentConfig`]: defaults < TOML file < `MUSTER_*` environment, validated with clear errors.
//! - [`facts`]      — [`FactSource`]: host facts for registration and health for heartbeats (sysinfo or static).
//! - [`protocol`]   — the pure registration/heartbeat state machine: `transition(&state, event) -> (state, effects)`.
//! - [`session`]    — [`run_session`]: the I/O shell that performs the protocol's effects and runs the command path.
//! - [`delivery`]   — commands in: live subscription, catch-up from the stream after the cursor, dedup.
//! - [`feed`]       — [`feed::Feed`]: a session's inbound messages, from its own subscription or a routed mailbox.
//! - [`queue`]      — the pure action queue: per-component FIFO lanes under a global concurrency limit, cancel.
//! - [`runner`]     — the command path's shell: queue → executor → reports, status checks, auto-restart, shutdown.
//! - [`executor`]   — [`Executor`] and the real [`ProcessExecutor`]: process groups, timeouts that kill the tree.
//! - [`output`]     — bounded head-and-tail capture of a command's stdout and stderr.
//! - [`status`]     — the pure component status book: which statuses changed since last reported.
//! - [`recovery`]   — the pure auto-restart limiter (per window, minimum gap, lifetime cap) with injected time.
//! - [`reporter`]   — reports out: JetStream publish with `Nats-Msg-Id`, retried with the same id until acked.
//! - [`backoff`]    — exponential backoff with full jitter, and heartbeat jitter.
//! - [`connection`] — NATS connect options and [`Reconnects`], the reconnect signal sessions watch.
//! - [`swarm`]      — `muster-agent swarm`: many simulated hosts in one process over shared connections.
//!
//! The binary (`src/main.rs`) parses arguments, loads the config, sets up tracing and signals, connects, and
//! calls [`run`] (or [`swarm::run_swarm`] for `muster-agent swarm`).
#![deny(missing_docs)]

pub mod backoff;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod executor;
pub mod facts;
pub mod feed;
pub mod output;
pub mod protocol;
pub mod queue;
pub mod recovery;
pub mod reporter;
pub mod runner;
pub mod session;
pub mod status;
pub mod swarm;

use std::sync::Arc;

use async_nats::Client;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use connection::{ConnectionEvents, Reconnects};
pub use executor::{Executor, ProcessExecutor};
pub use facts::{FactSource, StaticFacts, SystemFacts};
pub use session::{run_session, run_session_with, SessionError, SessionIo, SessionParams, SessionStats};

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

/// Runs the agent for the real host described by `config` until `shutdown` is cancelled.
///
/// `reconnects` must come from the [`ConnectionEvents`] wired into `client`'s event callback.
pub async fn run(
    config: &AgentConfig,
    client: Client,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let facts = SystemFacts::new(config.disk_full_percent)?;
    let params = SessionParams::from_config(config, session::now_millis());
    run_session(client, params, facts, Arc::new(ProcessExecutor), reconnects, shutdown).await?;
    Ok(())
}
