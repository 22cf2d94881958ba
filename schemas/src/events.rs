//! The change feed on `muster.events.<kind>.<host>`: core publishes for operators and tools, never needed for
//! correctness (the txn log is the record). The `Muster-Summary` header says what happened in one line.

use serde::{Deserialize, Serialize};

use crate::{HostId, HostState, UnixMillis};

/// A host changed state (`muster.events.host.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChanged {
    /// The host.
    pub host: HostId,
    /// Previous state; `None` for a host seen for the first time.
    pub from: Option<HostState>,
    /// New state.
    pub to: HostState,
    /// When the change was committed.
    pub at: UnixMillis,
    /// Why, in words (e.g. "no heartbeat for 9.0 s").
    pub reason: String,
}

/// A host component changed state (`muster.events.component.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentChanged {
    /// The host.
    pub host: HostId,
    /// `service/component`.
    pub component: String,
    /// Previous state.
    pub from: crate::cluster::ComponentState,
    /// New state.
    pub to: crate::cluster::ComponentState,
    /// When.
    pub at: UnixMillis,
    /// Why.
    pub reason: String,
}

/// A task changed status (`muster.events.task.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChanged {
    /// Task.
    pub task: u64,
    /// Request.
    pub request: u64,
    /// Host.
    pub host: HostId,
    /// Verb and component, e.g. `START toy/master`.
    pub what: String,
    /// New status.
    pub status: crate::cluster::TaskStatus,
    /// Attempt.
    pub attempt: u32,
    /// When.
    pub at: UnixMillis,
}

/// A request changed status (`muster.events.request.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestChanged {
    /// Request.
    pub request: u64,
    /// New status.
    pub status: crate::cluster::TaskStatus,
    /// Stage now running (index).
    pub stage: u32,
    /// When.
    pub at: UnixMillis,
    /// Why.
    pub detail: String,
}
