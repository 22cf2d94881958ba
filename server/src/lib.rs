//! muster-server: the replicated control-plane server and the operator CLI.
//!
//! # Layout
//! - [`config`]   — settings: defaults < file < `MUSTER_*` environment.
//! - [`server`]   — `run(config, client, metrics, shutdown)`: wires an instance and drives its role.
//! - [`election`] — the leader lease in KV; its revision is the epoch.
//! - [`log`]      — the txn log on JetStream: fenced appends, the applier every instance runs.
//! - [`snapshot`] — state snapshots in the object store; the log is trimmed only behind the newest.
//! - [`store`]    — redb: materialised state plus `applied_seq`, written only by the applier.
//! - [`plan`]     — stage planning: dependency order, rolling batches, only the gap.
//! - [`prep`]     — Prep: limits, version, host-id and subject checks for agent messages.
//! - [`listen`]   — heartbeat (every instance) and registration (leader) listeners.
//! - [`leader`]   — the leader loop (Propose → Sync → Final) around the pure [`leader::core`].
//! - [`fsm`]      — pure state machines ([`fsm::host`], [`fsm::component`]).
//! - [`stack`]    — stack and blueprint files: TOML parsing and validation with line numbers.
//! - [`api`]      — the `muster` services-framework API (`<prefix>.api.*`, JSON).
//! - [`status`]   — role, epoch, applied sequence and last-seen, shared by the parts above.
//! - [`metrics`]  — named counters shown by `muster stats`.
//! - [`cli`]      — the operator CLI `muster`.
#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod config;
pub mod election;
pub mod fsm;
pub mod leader;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod plan;
pub mod prep;
pub mod server;
pub mod snapshot;
pub mod stack;
pub mod status;
pub mod store;
