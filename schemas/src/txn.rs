//! The transaction log (`muster.txn`, stream `MUSTER_TXN`): the ordered list of state *changes* every replica
//! applies. Ops carry resulting records, never events, so applying one twice gives the same state (idempotent).

use serde::{Deserialize, Serialize};

use crate::api::{EnrollmentRecord, TokenRecord};
use crate::cluster::{BlueprintRecord, CommandCursor, HostComponentRecord, RequestRecord, StackRecord, TaskRecord};
use crate::{HostRecord, UnixMillis};

/// The newest log entry schema this build writes and understands. A replica stops at an entry of a newer schema
/// (or one it cannot decode, such as an op it does not know) rather than skip it.
///
/// - 1: one entry is one whole decision.
/// - 2: a decision may span several entries ([`Txn::continues`]).
/// - 3: enrollment ops ([`TxnOp::PutToken`], [`TxnOp::PutEnrollment`]).
pub const TXN_SCHEMA: u16 = 3;

/// One log entry: a leader's decision (the state changes of one batch, committed together), or one part of it when
/// the decision does not fit one entry. Replicas apply a decision all-or-nothing: only once its last part arrived,
/// in one redb transaction; a decision whose last part never came (its leader's term ended first) is dropped by
/// every replica alike when the next leader's first entry arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// [`TXN_SCHEMA`] of the leader that wrote it (entries written before schema 2 hold the protocol version, 1).
    pub schema: u16,
    /// The epoch of the leader that wrote it; replicas refuse an older epoch after a newer one.
    pub epoch: u64,
    /// When the leader proposed it.
    pub proposed_at: UnixMillis,
    /// The changes, applied in order in one redb write transaction.
    pub ops: Vec<TxnOp>,
    /// More parts of the same decision follow (every part but the last); absent in schema 1 (false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
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
    /// Insert or replace an enrollment token (created, used, revoked; schema 3).
    PutToken(Box<TokenRecord>),
    /// Insert or replace a host's enrollment (pending, accepted — the host enrolled with its key —, rejected;
    /// schema 3).
    PutEnrollment(Box<EnrollmentRecord>),
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
