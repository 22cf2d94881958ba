//! muster-schemas: every type that crosses the wire, and the names that route it. Data only: no I/O, no tokio.
//!
//! # Layout
//! - [`host_id`]  — [`HostId`], the validated subject token naming a host, and hostname encoding.
//! - [`subjects`] — [`Subjects`], builders for every subject, stream, bucket and API endpoint name.
//! - [`headers`]  — header names and the [`MessageKind`] values carried in `Muster-Kind`.
//! - [`limits`]   — protocol version and payload size limits.
//! - [`codec`]    — MessagePack encode/decode with size limits and typed errors.
//! - [`messages`] — agent ↔ server messages: registration, heartbeat and their replies.
//! - [`cluster`]  — stacks, blueprints, host components, requests, stages, tasks (persisted records).
//! - [`commands`] — commands (leader → agent) and reports (agent → leader), stack command specs.
//! - [`host`]     — host facts, host state and the persisted host record.
//! - [`txn`]      — the transaction-log entry [`Txn`] and its operations.
//! - [`events`]   — the change feed on `muster.events.*`.
//! - [`api`]      — JSON views returned by the `muster.api.*` services endpoints.
#![deny(missing_docs)]

pub mod api;
pub mod cluster;
pub mod codec;
pub mod commands;
pub mod events;
pub mod headers;
pub mod host;
pub mod host_id;
pub mod limits;
pub mod messages;
pub mod subjects;
pub mod txn;

pub use codec::{decode, encode, DecodeError};
pub use headers::MessageKind;
pub use host::{Health, HostFacts, HostRecord, HostState};
pub use host_id::{HostId, InvalidHostId};
pub use limits::PROTOCOL_VERSION;
pub use messages::{ErrorCode, Heartbeat, HeartbeatReply, RegisterReply, RegisterRequest};
pub use subjects::Subjects;
pub use txn::{Txn, TxnOp};

/// Milliseconds since the Unix epoch, the one time format on the wire.
pub type UnixMillis = u64;
