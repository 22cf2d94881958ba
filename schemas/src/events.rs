//! The change feed on `muster.events.<kind>.<host>`: core publishes for operators and tools, never needed for
//! correctness (the txn log is the record). The `Muster-Summary` header says what happened in one line.

use serde::{Deserialize, Serialize};

use crate::{HostId, HostState, UnixMillis};

/// A host changed state (`muster.events.host.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChanged {
    /// The host that changed; also the subject's last token.
    pub host: HostId,
    /// Previous state; `None` for a host seen for the first time.
    pub from: Option<HostState>,
    /// State after the change, as committed to the log.
    pub to: HostState,
    /// When the leader made the change: ms since the Unix epoch, on the leader's wall clock, as it stepped the
    /// batch whose commit records it (the event itself is published only after that commit).
    pub at: UnixMillis,
    /// Why, in words (e.g. "no heartbeat for 9.0 s").
    pub reason: String,
}

/// A host component changed state (`muster.events.component.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentChanged {
    /// The host the component is on; also the subject's last token.
    pub host: HostId,
    /// Which component, written `service/component`.
    pub component: String,
    /// State before the change.
    pub from: crate::cluster::ComponentState,
    /// State after the change, as committed to the log.
    pub to: crate::cluster::ComponentState,
    /// When the leader made the change: ms since the Unix epoch, on the leader's wall clock.
    pub at: UnixMillis,
    /// What moved it: `<COMMAND> queued`, `<COMMAND> <final status>`, `status check` or `host lost`.
    pub reason: String,
}

/// A task changed status (`muster.events.task.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChanged {
    /// Task id, unique in the cluster.
    pub task: u64,
    /// Id of the request the task belongs to.
    pub request: u64,
    /// The host that runs the task; also the subject's last token.
    pub host: HostId,
    /// Verb and component, e.g. `START toy/master`.
    pub what: String,
    /// Status after the change: QUEUED, IN_PROGRESS, or how it ended.
    pub status: crate::cluster::TaskStatus,
    /// The attempt, from 1; 0 when the task ended before it was ever sent.
    pub attempt: u32,
    /// ms since the Unix epoch: the agent's finish time for a final report, else the leader's wall clock.
    pub at: UnixMillis,
}

/// A request changed status (`muster.events.request.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestChanged {
    /// The request's id; also the subject's last token.
    pub request: u64,
    /// How it ended: COMPLETED, FAILED, TIMEDOUT or ABORTED (the event is sent only when a request ends).
    pub status: crate::cluster::TaskStatus,
    /// Stage now running (index).
    pub stage: u32,
    /// When it ended: ms since the Unix epoch, on the leader's wall clock.
    pub at: UnixMillis,
    /// Why it ended so (e.g. `cancelled by operator`, `stage 2 (…) failed: …`); empty on a plain completion.
    pub detail: String,
}
