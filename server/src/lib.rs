//! muster-server: the replicated control-plane server.
//!
//! # Layout
//! Bottom up; no module imports from a layer above its own.
//!
//! Leaf: parameters, counters and shared state
//! - [`config`]   — leaf: settings, defaults < file < `MUSTER_*` environment (read only by `server` and the binary).
//! - [`metrics`]  — leaf: the server's counters, each with its dotted name and meaning (`muster stats`).
//! - [`status`]   — leaf: role, epoch, applied sequence and the one record of heartbeat arrivals ([`status::LastSeen`]).
//!
//! Pure logic
//! - [`fsm`]      — pure: the host and host-component state machines ([`fsm::host`], [`fsm::component`]).
//! - [`stack`]    — pure: stack and blueprint files, TOML parsing and validation with line numbers.
//! - [`plan`]     — pure: stage planning, dependency order, rolling batches, only the gap.
//! - [`prep`]     — pure: Prep, limits, one decode, version, host-id and subject checks for agent messages.
//!
//! I/O shells
//! - [`store`]    — I/O: redb, materialised state plus `applied_seq`, written only by the applier.
//! - [`election`] — I/O: the leader lease in KV; its revision is the epoch.
//! - [`snapshot`] — I/O: state snapshots in the object store; the log is trimmed only behind the newest.
//! - [`log`]      — I/O: the txn log on JetStream, fenced appends and the applier every instance runs.
//! - [`leader`]   — I/O with a pure core: [`leader::core`] and its concerns (pure) below the leader's shell
//!   ([`leader::driver`]'s one order, [`leader::shell`], `lead`).
//! - [`ingest`]   — I/O: agent messages, heartbeats (every instance), registrations and reports (leader).
//! - [`writes`]   — I/O: the leader's write endpoints (`<prefix>.leader.*`).
//! - [`catchup`]  — I/O with a pure core: agents' catch-up requests (`<prefix>.catchup.*`), answered from the commands
//!   stream by every instance.
//! - [`api`]      — I/O: the `muster` services-framework API (`<prefix>.api.*`, JSON).
//!
//! Top
//! - [`server`]   — `run(config, client, metrics, shutdown)`: wires an instance and drives its role.
#![deny(missing_docs)]

pub mod api;
pub mod catchup;
pub mod config;
pub mod election;
pub mod fsm;
pub mod ingest;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod plan;
pub mod prep;
pub mod server;
pub mod snapshot;
pub mod stack;
pub mod status;
pub mod store;
pub mod writes;
