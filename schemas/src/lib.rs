//! muster-schemas: every type that crosses the wire, and the names that route it. Data only: no I/O, no tokio.
//!
//! # Layout
//! Bottom to top; a module uses only modules listed above it.
//! - [`limits`]   — leaf: protocol version, payload size limits, the write timeouts derived from one constant.
//! - [`names`]    — leaf: the error of parsing a reference name (state, status) back into its enum.
//! - [`codec`]    — leaf: MessagePack encode/decode with size limits and typed errors.
//! - [`host_id`]  — leaf: [`HostId`], the validated subject token naming a host, and hostname encoding.
//! - [`ids`]      — names: task and request ids, every `Nats-Msg-Id` and the `Muster-Task` key, formatted and parsed.
//! - [`subjects`] — names: [`Subjects`], builders and parsers of every subject, stream, bucket and API endpoint name.
//! - [`host`]     — records: host facts, host state and the persisted host record.
//! - [`commands`] — records: commands (leader → agent) and reports (agent → leader), stack command specs.
//! - [`messages`] — records: agent ↔ server messages: registration, heartbeat and their replies.
//! - [`cluster`]  — records: stacks, blueprints, host components, requests, stages, tasks, request actions.
//! - [`txn`]      — records: the transaction-log entry [`Txn`] and its operations.
//! - [`events`]   — records: the change feed on `muster.events.*`.
//! - [`headers`]  — sets: header names, the [`MessageKind`] values of `Muster-Kind`, and each message's header set.
//! - [`signing`]  — sets: signed commands: the canonical signed bytes, signature headers, validity bounds (no crypto).
//! - [`api`]      — views: the API's endpoints, typed requests, replies (reads and writes) and its one error type.
#![deny(missing_docs)]

pub mod api;
pub mod cluster;
pub mod codec;
pub mod commands;
pub mod events;
pub mod headers;
pub mod host;
pub mod host_id;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod names;
pub mod signing;
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
