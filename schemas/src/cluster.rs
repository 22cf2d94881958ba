//! What the server persists about the cluster beyond hosts: stacks, blueprints, host components, requests,
//! stages and tasks. These are the records carried by [`crate::TxnOp`] and stored in redb.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::commands::{Category, CommandSpec, ComponentRef, RequestId, RoleCommand, TaskId};
use crate::names::{parse_name, UnknownName};
use crate::{HostId, UnixMillis};

/// A stack: services and their components with the commands that manage them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDef {
    /// The stack's `name` from its file: the key it is stored under; a changed definition there is a new version.
    pub name: String,
    /// Services, in file order.
    pub services: Vec<ServiceDef>,
}

/// A service of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// Service name, unique within the stack; the `service` half of a [`ComponentRef`].
    pub name: String,
    /// Free text from the stack file (empty when it has none); muster does not interpret it.
    pub description: String,
    /// Components, in file order.
    pub components: Vec<ComponentDef>,
}

/// A component of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentDef {
    /// Component name, unique within the stack.
    pub name: String,
    /// Daemon or client.
    pub category: Category,
    /// Commands by name: `install`, `start`, `stop`, `status`, `uninstall`, and custom ones.
    pub commands: BTreeMap<String, CommandSpec>,
    /// Components that must be started before this one (and stopped after it).
    pub depends_on: Vec<String>,
}

impl StackDef {
    /// Finds a component by name, with its service.
    pub fn component(&self, name: &str) -> Option<(&ServiceDef, &ComponentDef)> {
        self.services.iter().find_map(|s| s.components.iter().find(|c| c.name == name).map(|c| (s, c)))
    }

    /// Every (service, component) pair.
    pub fn components(&self) -> impl Iterator<Item = (&ServiceDef, &ComponentDef)> {
        self.services.iter().flat_map(|s| s.components.iter().map(move |c| (s, c)))
    }
}

/// A stored stack version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    /// Version, from 1, incremented by each apply of the same name.
    pub version: u32,
    /// The parsed definition.
    pub def: StackDef,
    /// The TOML as applied.
    pub source: String,
    /// When the leader accepted this version: ms since the Unix epoch, on the leader's wall clock.
    pub applied_at: UnixMillis,
}

/// A blueprint: which components run on which hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintDef {
    /// The blueprint's `name` from its file; applying the same name again stores a new version.
    pub name: String,
    /// The stack it maps.
    pub stack: String,
    /// Host groups, in file order; a host that matches several gets the components of each.
    pub host_groups: Vec<HostGroup>,
}

/// Hosts selected by id globs and/or labels, and the components they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGroup {
    /// Group name from the blueprint file, for the operator; hosts are matched by `hosts` and `labels`.
    pub name: String,
    /// Host id globs (`*`, `?`); empty means any host.
    pub hosts: Vec<String>,
    /// Labels a host must all carry.
    pub labels: BTreeMap<String, String>,
    /// Components of the blueprint's stack, by name, mapped onto every host the group matches.
    pub components: Vec<String>,
}

/// A stored blueprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintRecord {
    /// Version, from 1.
    pub version: u32,
    /// The parsed definition.
    pub def: BlueprintDef,
    /// The TOML as applied.
    pub source: String,
    /// When the leader accepted this version: ms since the Unix epoch, on the leader's wall clock.
    pub applied_at: UnixMillis,
}

/// Component states, with the names of Ambari's host-component FSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ComponentState {
    /// Mapped, nothing done yet.
    Init,
    /// An INSTALL task is queued or running.
    Installing,
    /// The last INSTALL failed, timed out or was aborted; INSTALL may be tried again.
    InstallFailed,
    /// Installed, not running.
    Installed,
    /// A START task is queued or running; a failed START goes back to INSTALLED.
    Starting,
    /// Running: the last START completed, or the agent's status check exits 0.
    Started,
    /// A STOP task is queued or running; a failed STOP goes back to STARTED.
    Stopping,
    /// An UNINSTALL task is queued or running; a failed one goes back to INSTALLED.
    Uninstalling,
    /// UNINSTALL completed; the component can be installed again.
    Uninstalled,
    /// Host lost; unknown until the next status report.
    Unknown,
    /// Disabled by the operator.
    Disabled,
}

impl ComponentState {
    /// Every state, in lifecycle order; parsing compares against each one's [`ComponentState::as_str`].
    pub const ALL: [Self; 11] = [
        Self::Init,
        Self::Installing,
        Self::InstallFailed,
        Self::Installed,
        Self::Starting,
        Self::Started,
        Self::Stopping,
        Self::Uninstalling,
        Self::Uninstalled,
        Self::Unknown,
        Self::Disabled,
    ];

    /// The reference name, as shown by the CLI and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Installing => "INSTALLING",
            Self::InstallFailed => "INSTALL_FAILED",
            Self::Installed => "INSTALLED",
            Self::Starting => "STARTING",
            Self::Started => "STARTED",
            Self::Stopping => "STOPPING",
            Self::Uninstalling => "UNINSTALLING",
            Self::Uninstalled => "UNINSTALLED",
            Self::Unknown => "UNKNOWN",
            Self::Disabled => "DISABLED",
        }
    }
}

impl fmt::Display for ComponentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComponentState {
    type Err = UnknownName;

    /// Parses the reference name ([`ComponentState::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("component state", &Self::ALL, s)
    }
}

/// Desired states of a host component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredState {
    /// Not installed (Ambari's INIT); the leader does not set it: mapping gives STARTED or INSTALLED.
    Init,
    /// Installed, not running.
    Installed,
    /// Should be running (daemons a blueprint maps; start and restart requests): the agent auto-restarts it.
    Started,
    /// Should be removed: set by an uninstall request.
    Uninstalled,
    /// Taken out of service by the operator (Ambari's DISABLED); no write endpoint sets it yet.
    Disabled,
}

impl DesiredState {
    /// Every desired state.
    pub const ALL: [Self; 5] = [Self::Init, Self::Installed, Self::Started, Self::Uninstalled, Self::Disabled];

    /// The reference name, as shown by the CLI and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Installed => "INSTALLED",
            Self::Started => "STARTED",
            Self::Uninstalled => "UNINSTALLED",
            Self::Disabled => "DISABLED",
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DesiredState {
    type Err = UnknownName;

    /// Parses the reference name ([`DesiredState::as_str`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("desired state", &Self::ALL, s)
    }
}

/// One component on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostComponentRecord {
    /// The host it is on; the first part of its redb key.
    pub host: HostId,
    /// Which (service, component) it is; the rest of its redb key.
    pub component: ComponentRef,
    /// Observed state, moved by the component FSM on task results, status reports and host loss.
    pub state: ComponentState,
    /// What blueprints and requests last asked for; the agent is told to keep it running when STARTED.
    pub desired: DesiredState,
    /// Stack version it was mapped from.
    pub stack_version: u32,
    /// When `state` last changed.
    pub state_since: UnixMillis,
    /// Auto-restarts the agent reported.
    pub auto_restarts: u32,
    /// Whether the agent should restart the component when it finds it dead: set once the component reached
    /// STARTED while its desired state was STARTED, cleared when it is stopped or uninstalled on purpose. (A
    /// component that was never started is not "dead": starting it is a task of a request, in dependency order.)
    #[serde(default)]
    pub auto_start: bool,
}

impl HostComponentRecord {
    /// The redb key: `host/service/component`.
    pub fn key(&self) -> String {
        host_component_key(&self.host, &self.component)
    }
}

/// The redb key of a host component.
pub fn host_component_key(host: &HostId, c: &ComponentRef) -> String {
    format!("{host}/{}/{}", c.service, c.component)
}

/// Ambari's task statuses, also used for stages and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Planned, not sent.
    Pending,
    /// Stored in `MUSTER_COMMANDS`, not yet reported running.
    Queued,
    /// The agent reported it running (its first report arrived); output so far is kept.
    InProgress,
    /// Exit code 0; a stage or request: every task completed or the failures were tolerated.
    Completed,
    /// Exited non-zero, killed by a signal or not started; a stage or request: more failures than tolerated.
    Failed,
    /// Did not finish in time (after one retry).
    TimedOut,
    /// Cancelled, or its request was aborted, or its host was lost.
    Aborted,
    /// Failed, but tolerated by the success factor / max failures.
    SkippedFailed,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Queued,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::TimedOut,
        Self::Aborted,
        Self::SkippedFailed,
    ];

    /// Whether nothing more will happen to it.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Queued | Self::InProgress)
    }

    /// The reference name, as the CLI shows it. `TimedOut` is `TIMEDOUT` here (Ambari's spelling) but `TIMED_OUT`
    /// in serde's JSON and MessagePack; the wire keeps serde's form for compatibility with stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMEDOUT",
            Self::Aborted => "ABORTED",
            Self::SkippedFailed => "SKIPPED_FAILED",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownName;

    /// Parses the reference name ([`TaskStatus::as_str`]); serde's `TIMED_OUT` is accepted too, so a status read
    /// from JSON parses whichever form it came in.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TIMED_OUT" => Ok(Self::TimedOut),
            _ => parse_name("task status", &Self::ALL, s),
        }
    }
}

/// One task: host × component × command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id, assigned by the leader (from 1, unique in the cluster); the `<task>` of its message ids.
    pub id: TaskId,
    /// The request whose stage holds it.
    pub request: RequestId,
    /// Stage index within the request.
    pub stage: u32,
    /// The host whose agent runs it: its command goes to `muster.cmd.<host>`.
    pub host: HostId,
    /// Component, `None` for ad-hoc runs.
    pub component: Option<ComponentRef>,
    /// The role command; INSTALL, START, STOP and UNINSTALL move the component FSM, custom commands and RUN do not.
    pub command: RoleCommand,
    /// What runs (snapshot at planning time, so a re-send runs the same thing).
    pub spec: CommandSpec,
    /// PENDING until its stage starts, QUEUED once its command is stored, then as the agent reports.
    pub status: TaskStatus,
    /// Attempts sent (0 before the first).
    pub attempt: u32,
    /// `MUSTER_COMMANDS` sequence of the latest attempt's command.
    pub cmd_seq: u64,
    /// When the latest attempt was queued.
    pub queued_at: UnixMillis,
    /// When the agent started it.
    pub started_at: UnixMillis,
    /// When it ended.
    pub finished_at: UnixMillis,
    /// The process's exit code; `None` until it ends, or when it was killed (signal, timeout, cancel) or never started.
    pub exit_code: Option<i32>,
    /// Output from the latest report, at most [`crate::limits::MAX_OUTPUT_BYTES`]: head and tail kept, middle elided.
    pub stdout: String,
    /// Like `stdout`; the agent appends its own note when it killed the task or could not start it.
    pub stderr: String,
    /// Why it ended as it did, when not obvious (aborted, timed out, retried).
    pub detail: String,
}

/// A stage: tasks that run together; stages run one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Human-readable name (e.g. "START master (batch 1/2)").
    pub name: String,
    /// Ids of its tasks, dispatched together when the stage starts.
    pub tasks: Vec<TaskId>,
    /// PENDING until the stage before completes, IN_PROGRESS while its tasks run, then how it ended.
    pub status: TaskStatus,
}

/// What an operator request asks for (`RequestSpec.action` on the API, the verb of `muster request`).
///
/// Written and read as the same strings everywhere (Display, FromStr and serde): `install`, `start`, `stop`,
/// `restart`, `uninstall`, `custom:<name>`, `run`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RequestAction {
    /// Install the target's components.
    Install,
    /// Start them, installing first where needed.
    Start,
    /// Stop the target's running daemons, dependents first.
    Stop,
    /// Stop where running, then start.
    Restart,
    /// Stop where running, then uninstall.
    Uninstall,
    /// A custom command the stack defines for the target (`custom:<name>`, the name non-empty).
    Custom(String),
    /// An ad-hoc command line on the selected hosts (`muster run -- argv`), no target.
    Run,
}

/// The prefix of a custom action's name.
const CUSTOM_PREFIX: &str = "custom:";

impl fmt::Display for RequestAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Install => f.write_str("install"),
            Self::Start => f.write_str("start"),
            Self::Stop => f.write_str("stop"),
            Self::Restart => f.write_str("restart"),
            Self::Uninstall => f.write_str("uninstall"),
            Self::Custom(name) => write!(f, "{CUSTOM_PREFIX}{name}"),
            Self::Run => f.write_str("run"),
        }
    }
}

/// A request action that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}; expected install, start, stop, restart, uninstall, custom:<name> or run")]
pub struct UnknownAction(pub String);

impl FromStr for RequestAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "install" => Self::Install,
            "start" => Self::Start,
            "stop" => Self::Stop,
            "restart" => Self::Restart,
            "uninstall" => Self::Uninstall,
            "run" => Self::Run,
            other => match other.strip_prefix(CUSTOM_PREFIX) {
                Some(name) if !name.is_empty() => Self::Custom(name.to_owned()),
                _ => return Err(UnknownAction(other.to_owned())),
            },
        })
    }
}

impl From<RequestAction> for String {
    fn from(action: RequestAction) -> Self {
        action.to_string()
    }
}

impl TryFrom<String> for RequestAction {
    type Error = UnknownAction;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// Options of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOptions {
    /// A stage succeeds when at least this fraction of its tasks completed (Ambari's success factor).
    pub success_factor: f64,
    /// Failed tasks tolerated over the whole request before it is aborted (rolling restarts).
    pub max_failures: u32,
    /// Hosts per batch (0 = all at once).
    pub batch: u32,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self { success_factor: 1.0, max_failures: 0, batch: 0 }
    }
}

/// An operator request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Request id, assigned by the leader (from 1, unique in the cluster).
    pub id: RequestId,
    /// What was asked, in words (e.g. "START toy on demo-*").
    pub description: String,
    /// IN_PROGRESS from creation, then COMPLETED, FAILED, TIMEDOUT or ABORTED (cancelled, or a stage failed).
    pub status: TaskStatus,
    /// Stages in order.
    pub stages: Vec<StageRecord>,
    /// Index of the stage running now (== stages.len() when done).
    pub current_stage: u32,
    /// Options given at creation: success factor, failures tolerated, batch size.
    pub options: RequestOptions,
    /// When the leader created it: ms since the Unix epoch, on the leader's wall clock.
    pub created_at: UnixMillis,
    /// Finished (0 while running).
    pub finished_at: UnixMillis,
    /// Why it ended as it did.
    pub detail: String,
    /// The [`crate::api::RequestSpec::idempotency_key`] of the `request.create` that made it, if its client gave
    /// one: a repeat of that key is answered with this request, by this leader or any later one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Selected hosts left out at creation because they were HEARTBEAT_LOST: the rest of the original reply.
    #[serde(default)]
    pub skipped_lost_hosts: Vec<String>,
}

/// How far a host got through its commands on `muster.cmd.<host>`, so a restarted agent catches up exactly: it
/// reads the stream after [`CommandCursor::cursor`] and skips [`CommandCursor::done`].
///
/// Stream sequences are global to `MUSTER_COMMANDS` (all hosts share it), so one host's sequences have gaps: the
/// cursor is "everything up to here is finished", not a count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandCursor {
    /// The host whose `muster.cmd.<host>` commands it tracks.
    pub host: HostId,
    /// Highest sequence published to the host.
    pub high: u64,
    /// Sequences of executions not finished yet.
    pub pending: Vec<u64>,
    /// Finished sequences above the cursor (finished out of order, cancels and configures).
    pub done: Vec<u64>,
}

impl CommandCursor {
    /// A host with no commands yet.
    pub fn new(host: HostId) -> Self {
        Self { host, high: 0, pending: Vec::new(), done: Vec::new() }
    }

    /// Every command up to this sequence is finished.
    pub fn cursor(&self) -> u64 {
        self.pending.iter().min().map_or(self.high, |p| p - 1)
    }

    /// Records a published command; executions stay pending until [`CommandCursor::finish`].
    pub fn published(&mut self, seq: u64, execution: bool) {
        self.high = self.high.max(seq);
        if execution {
            self.pending.push(seq);
        } else {
            self.done.push(seq);
        }
        self.compact();
    }

    /// Records that the execution at `seq` finished.
    pub fn finish(&mut self, seq: u64) {
        if let Some(i) = self.pending.iter().position(|p| *p == seq) {
            self.pending.swap_remove(i);
            self.done.push(seq);
            self.compact();
        }
    }

    fn compact(&mut self) {
        let cursor = self.cursor();
        self.done.retain(|d| *d > cursor);
        self.done.sort_unstable();
        self.done.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_status_names_round_trip() {
        for s in ComponentState::ALL {
            assert_eq!(s.as_str().parse::<ComponentState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in DesiredState::ALL {
            assert_eq!(s.as_str().parse::<DesiredState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(s));
            let wire: String = serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap();
            assert_eq!(wire.parse::<TaskStatus>(), Ok(s), "serde's name {wire} parses too");
        }
        for bad in ["", "started", "RUNNING", " STARTED"] {
            assert!(bad.parse::<ComponentState>().is_err(), "{bad:?}");
            assert!(bad.parse::<DesiredState>().is_err(), "{bad:?}");
            assert!(bad.parse::<TaskStatus>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_actions_are_the_strings_the_api_sends() {
        let cases = [
            ("install", RequestAction::Install),
            ("start", RequestAction::Start),
            ("stop", RequestAction::Stop),
            ("restart", RequestAction::Restart),
            ("uninstall", RequestAction::Uninstall),
            ("custom:reload", RequestAction::Custom("reload".into())),
            ("run", RequestAction::Run),
        ];
        for (text, action) in cases {
            assert_eq!(text.parse::<RequestAction>(), Ok(action.clone()));
            assert_eq!(action.to_string(), text);
            assert_eq!(serde_json::to_value(&action).unwrap(), text);
            assert_eq!(serde_json::from_value::<RequestAction>(text.into()).unwrap(), action);
        }
        for bad in ["", "START", "custom:", "custom", "reload", "run "] {
            assert!(bad.parse::<RequestAction>().is_err(), "{bad:?}");
            assert!(serde_json::from_value::<RequestAction>(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursor_advances_over_out_of_order_finishes() {
        let mut c = CommandCursor::new(HostId::new("h").unwrap());
        c.published(10, true);
        c.published(14, false);
        c.published(20, true);
        assert_eq!(c.cursor(), 9);
        c.finish(20);
        assert_eq!((c.cursor(), c.done.clone()), (9, vec![14, 20]));
        c.finish(10);
        assert_eq!((c.cursor(), c.done.clone()), (20, vec![]));
        c.finish(99);
        assert_eq!(c.cursor(), 20);
    }
}
