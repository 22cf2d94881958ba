//! The transaction log (`muster.txn`, stream `MUSTER_TXN`): the ordered list of state *changes* every replica
//! applies. Ops carry resulting records, never events, so applying one twice gives the same state (idempotent).

use serde::{Deserialize, Serialize};

use crate::cluster::{BlueprintRecord, CommandCursor, HostComponentRecord, RequestRecord, StackRecord, TaskRecord};
use crate::{HostRecord, UnixMillis};

/// One log entry: a batch of state changes committed together (group commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]) of the leader that wrote it.
    pub schema: u16,
    /// The epoch of the leader that wrote it; replicas refuse an older epoch after a newer one.
    pub epoch: u64,
    /// When the leader proposed it.
    pub proposed_at: UnixMillis,
    /// The changes, applied in order in one redb write transaction.
    pub ops: Vec<TxnOp>,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOp {
    /// Insert or replace a host's record.
    PutHost(Box<HostRecord>),
    /// Store a stack version (and make it the stack's current one).
    PutStack(Box<StackRecord>),
    /// Store a blueprint.
    PutBlueprint(Box<BlueprintRecord>),
    /// Insert or replace a host component.
    PutHostComponent(Box<HostComponentRecord>),
    /// Insert or replace a request.
    PutRequest(Box<RequestRecord>),
    /// Insert or replace a task.
    PutTask(Box<TaskRecord>),
    /// Insert or replace a host's command cursor.
    PutCursor(Box<CommandCursor>),
    /// Task and request ids up to these are taken. A leader appends this before it publishes any command carrying
    /// such an id, and a new leader allocates above it, so an id is never reused — even one a deposed leader put in
    /// a command it never committed.
    ReserveIds {
        /// Highest task id reserved.
        tasks: u64,
        /// Highest request id reserved.
        requests: u64,
    },
}
