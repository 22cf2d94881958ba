//! JSON views returned by the `muster.api.*` services endpoints (JSON so `nats req` output is readable as is).

use serde::{Deserialize, Serialize};

use crate::{HostRecord, HostState};

/// One row of `muster hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Host id.
    pub id: String,
    /// Host state (reference name).
    pub state: HostState,
    /// Seconds since this server last heard a heartbeat from the host; `null` if none since it started.
    pub last_heartbeat_secs: Option<f64>,
    /// Hostname as the host reports it.
    pub hostname: String,
    /// Agent version.
    pub agent_version: String,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// Problems, when UNHEALTHY.
    pub problems: Vec<String>,
}

/// `muster host <id>`: every fact the server holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: HostSummary,
    /// The persisted record.
    pub record: HostRecord,
}

/// Error body of an API reply (also signalled through the services framework's error headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// An operator request (`muster.api.request.create`): what to do, where, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// `install`, `start`, `stop`, `restart`, `uninstall`, `custom:<name>` or `run`.
    pub action: String,
    /// Service or component name (all actions but `run`).
    #[serde(default)]
    pub target: Option<String>,
    /// Host selector: comma-separated terms, a host matching any term is selected. A term is an id glob
    /// (`web-*`), `label:<key>=<value>` or `state:<HOST_STATE>`. Empty selects every host.
    #[serde(default)]
    pub hosts: Option<String>,
    /// Program and arguments (`run` only).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Timeout for `run` (default 60 s).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Hosts per rolling batch (0 = all at once).
    #[serde(default)]
    pub batch: u32,
    /// Failed tasks tolerated before the request is aborted.
    #[serde(default)]
    pub max_failures: u32,
    /// Fraction of a stage's tasks that must complete (default 1.0).
    #[serde(default)]
    pub success_factor: Option<f64>,
}

/// One task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: u64,
    /// Stage index.
    pub stage: u32,
    /// Host.
    pub host: String,
    /// `service/component`, or null for ad-hoc runs.
    pub component: Option<String>,
    /// Verb (INSTALL, START, ..., RUN).
    pub command: String,
    /// Status.
    pub status: crate::cluster::TaskStatus,
    /// Attempts sent.
    pub attempt: u32,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Bounded stdout.
    pub stdout: String,
    /// Bounded stderr.
    pub stderr: String,
    /// Started (ms since epoch, 0 if not).
    pub started_at: u64,
    /// Finished (ms since epoch, 0 if not).
    pub finished_at: u64,
    /// Why it ended as it did.
    pub detail: String,
}

/// Most tasks a request view lists: a fan-out to 100k hosts must still fit one NATS message (1 MiB); counts
/// always cover every task.
pub const MAX_TASKS_IN_VIEW: usize = 1_000;

/// One stage as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// Name.
    pub name: String,
    /// Status.
    pub status: crate::cluster::TaskStatus,
    /// Task ids (empty when the request has more than [`MAX_TASKS_IN_VIEW`] tasks).
    pub tasks: Vec<u64>,
    /// Tasks in the stage.
    #[serde(default)]
    pub total: u64,
    /// Tasks that ended.
    #[serde(default)]
    pub done: u64,
    /// Tasks that ended other than COMPLETED.
    #[serde(default)]
    pub failed: u64,
    /// Tasks reported running.
    #[serde(default)]
    pub running: u64,
}

/// A request as the API shows it (`muster.api.request`, `muster request <id> --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    /// Id.
    pub id: u64,
    /// What was asked.
    pub description: String,
    /// Status.
    pub status: crate::cluster::TaskStatus,
    /// Created (ms since epoch).
    pub created_at: u64,
    /// Finished (ms since epoch, 0 while running).
    pub finished_at: u64,
    /// Why it ended as it did.
    pub detail: String,
    /// Stages in order.
    pub stages: Vec<StageView>,
    /// Tasks, in id order: all of them up to [`MAX_TASKS_IN_VIEW`], the first ones beyond.
    pub tasks: Vec<TaskView>,
    /// Tasks in the request.
    #[serde(default)]
    pub tasks_total: u64,
    /// Tasks by status, over all tasks.
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// One host component as `muster components` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentView {
    /// Host.
    pub host: String,
    /// Service.
    pub service: String,
    /// Component.
    pub component: String,
    /// Current state.
    pub state: crate::cluster::ComponentState,
    /// Desired state.
    pub desired: crate::cluster::DesiredState,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// Auto-restarts the agent reported.
    pub auto_restarts: u32,
}
