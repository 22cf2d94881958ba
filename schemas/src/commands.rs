//! Commands and reports: the delivery and result paths (docs/protocol.md, "Commands" and "Reports").
//!
//! - `muster.cmd.<host>` (stream `MUSTER_COMMANDS`): [`Command`], leader → agent. `Nats-Msg-Id` is a
//!   [`crate::ids::CommandMsgId`] (`t<task>-a<attempt>` for executions, `c<task>-a<attempt>` for cancels), so a
//!   re-publish by a new leader lands once. Agents receive commands live through a core subscription and, after
//!   registering, catch up from the stream with direct gets starting after the `cursor` the registration reply
//!   gives.
//! - `muster.report.<host>` (stream `MUSTER_REPORTS`): [`Report`], agent → leader, published through JetStream with
//!   `Nats-Msg-Id` = [`Report::report_id`] and retried with the same id until acked; the leader acks only after the
//!   transition the report caused is committed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{ReportMsgId, TaskAttempt};
use crate::names::{parse_name, UnknownName};
use crate::{HostId, UnixMillis};

pub use crate::ids::{RequestId, TaskId};

/// How to run one command on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program and arguments (a stack's `script = "..."` becomes `["/bin/sh", "-c", script]`).
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The agent kills the whole process tree after this long.
    pub timeout_ms: u64,
}

/// The command verbs of Ambari's role commands, plus ad-hoc runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleCommand {
    /// Install the component.
    Install,
    /// Start the component's daemon.
    Start,
    /// Stop the component's daemon.
    Stop,
    /// Uninstall the component.
    Uninstall,
    /// A custom command defined by the stack.
    Custom(String),
    /// An ad-hoc `muster run -- argv`.
    Run,
}

impl fmt::Display for RoleCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Install => f.write_str("INSTALL"),
            Self::Start => f.write_str("START"),
            Self::Stop => f.write_str("STOP"),
            Self::Uninstall => f.write_str("UNINSTALL"),
            Self::Custom(c) => write!(f, "CUSTOM:{c}"),
            Self::Run => f.write_str("RUN"),
        }
    }
}

/// Daemon or client (Ambari's component categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// A long-running process with start/stop/status.
    Daemon,
    /// Installed files only (no process).
    Client,
}

/// What an agent needs to know about one component mapped to its host: how to check it, how to restart it, and
/// whether it should be running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Service name in the stack; with `component`, names the host component.
    pub service: String,
    /// Component name (unique within the stack).
    pub component: String,
    /// Daemon or client.
    pub category: Category,
    /// Status check: exit 0 means running, anything else means not running.
    pub status: Option<CommandSpec>,
    /// Start command, used by auto-restart.
    pub start: Option<CommandSpec>,
    /// Whether the component should be running (its desired state is STARTED): the agent auto-restarts it.
    pub should_run: bool,
}

/// A command to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]); the agent refuses a command of another version.
    pub schema: u16,
    /// Target host; equals the subject's host.
    pub host: HostId,
    /// What to do.
    pub body: CommandBody,
}

/// The kinds of command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandBody {
    /// Run a task.
    Execute(Execution),
    /// Cancel a task: drop it if queued, kill its process tree if running.
    Cancel {
        /// Id of the task to cancel.
        task: TaskId,
        /// The attempt to cancel.
        attempt: u32,
    },
    /// The full set of components mapped to this host (replaces the previous set).
    Configure {
        /// Every component now mapped to the host, replacing the agent's set; empty leaves it none to check.
        components: Vec<ComponentSpec>,
    },
}

/// One task to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// Task id, assigned by the leader; with `attempt`, the `Muster-Task` key and the message id.
    pub task: TaskId,
    /// Attempt number, from 1; a timed-out task is re-sent once with attempt 2.
    pub attempt: u32,
    /// The request it belongs to.
    pub request: RequestId,
    /// Service and component, `None` for ad-hoc runs. Tasks of one component run in order, one at a time.
    pub component: Option<ComponentRef>,
    /// The role command; the agent runs `spec` whatever it is, the leader uses it to move the component FSM.
    pub command: RoleCommand,
    /// What to run.
    pub spec: CommandSpec,
}

/// A (service, component) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ComponentRef {
    /// Service name, as in the stack file.
    pub service: String,
    /// Component name, unique within the stack.
    pub component: String,
}

impl fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.component)
    }
}

/// A report from an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]); the leader refuses another one as `unsupported_version`.
    pub schema: u16,
    /// Reporting host; equals the subject's host.
    pub host: HostId,
    /// When it was sent.
    pub sent_at: UnixMillis,
    /// What it says.
    pub body: ReportBody,
}

/// The kinds of report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportBody {
    /// Progress or result of a task.
    Task(TaskReport),
    /// Component statuses: all of them after registration (`full`), otherwise only changes.
    Status {
        /// One entry per component checked: all mapped components when `full`, else only those whose result changed.
        statuses: Vec<ComponentStatus>,
        /// Whether this is the full set (after registration) rather than changes.
        full: bool,
        /// Distinguishes status reports of one agent run for `Nats-Msg-Id` (agent start time + counter).
        nonce: String,
    },
    /// A message that looked like it came from the server and that the agent refused to act on (unsigned, badly
    /// signed, for another host, expired, replayed): the leader counts and logs it and changes no state, so a
    /// refused forgery can neither fail nor complete a real task.
    Refused(RefusedCommand),
}

/// What an agent refused, as far as it could tell (a message that does not decode says little).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedCommand {
    /// Why it was refused.
    pub reason: RefusalReason,
    /// The kind of message it claimed to be (`execute`, `cancel`, `configure`, `registration`); empty if unknown.
    pub kind: String,
    /// The task it named, if any.
    pub task: Option<TaskId>,
    /// The attempt it named, if any.
    pub attempt: Option<u32>,
    /// The public key it claimed to be signed by, if any.
    pub signer: Option<String>,
    /// A one-line explanation for the operator (bounded by the agent).
    pub detail: String,
    /// Distinguishes refusal reports of one agent run for `Nats-Msg-Id` (agent start time + counter, like a
    /// status report's).
    pub nonce: String,
}

/// Why an agent refused to act on a message the server appeared to send: the reason in a
/// [`RefusedCommand`] report and the name of the agent's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No signature headers.
    Unsigned,
    /// Signed by a trusted key, but the signature does not match the message (tampered on the way).
    BadSignature,
    /// Signed by a key the agent does not trust (forged by another identity, or a key rotated out).
    UntrustedKey,
    /// Genuinely signed for another host (republished on this host's subject).
    OtherHost,
    /// Past its expiry (a late replay, or a command stored long before this agent read it).
    Expired,
    /// An attempt already accepted, or a configure older than the one applied.
    Replayed,
    /// Signature headers that do not parse, or that disagree with the body.
    Malformed,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::Unsigned,
        Self::BadSignature,
        Self::UntrustedKey,
        Self::OtherHost,
        Self::Expired,
        Self::Replayed,
        Self::Malformed,
    ];

    /// The reason's name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UntrustedKey => "untrusted_key",
            Self::OtherHost => "other_host",
            Self::Expired => "expired",
            Self::Replayed => "replayed",
            Self::Malformed => "malformed",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefusalReason {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("refusal reason", &Self::ALL, s)
    }
}

/// Progress or result of one task attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Id of the task this report is about.
    pub task: TaskId,
    /// The attempt it reports on (from 1); a report for a superseded attempt is refused.
    pub attempt: u32,
    /// Where it is.
    pub phase: TaskPhase,
    /// Sequence of the progress report within the attempt (0 = first IN_PROGRESS), for `Nats-Msg-Id`.
    pub report_seq: u32,
    /// When the agent started running it (0 if never started).
    pub started_at: UnixMillis,
    /// When it ended (final phases only).
    pub finished_at: Option<UnixMillis>,
    /// Exit code (final phases, when the process exited by itself).
    pub exit_code: Option<i32>,
    /// Bounded stdout (head and tail kept, middle elided).
    pub stdout: String,
    /// Bounded stderr, like `stdout`; the agent appends a note when it killed the task or could not start it.
    pub stderr: String,
}

/// Task phases an agent reports; the final ones map onto Ambari's task statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskPhase {
    /// Running (sent at start and every few seconds with output so far).
    InProgress,
    /// The process exited with code 0.
    Completed,
    /// Exited non-zero or could not be started.
    Failed,
    /// Killed (with its process tree) after its timeout.
    TimedOut,
    /// Cancelled on request (dropped from the queue, or killed).
    Aborted,
}

impl TaskPhase {
    /// Whether the phase is final.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::InProgress)
    }
}

/// One component's observed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Which host component, by (service, component) on the reporting host.
    pub component: ComponentRef,
    /// Status check result: running or not.
    pub running: bool,
    /// Auto-restarts performed by this agent run.
    pub auto_restarts: u32,
}

impl Report {
    /// The `Nats-Msg-Id` of this report (see [`ReportMsgId`] for why each part is there).
    pub fn report_id(&self) -> ReportMsgId {
        let host = self.host.clone();
        match &self.body {
            ReportBody::Task(t) if t.phase.is_final() => ReportMsgId::Final { host, task: t.attempt_key() },
            ReportBody::Task(t) => ReportMsgId::Progress { host, task: t.attempt_key(), n: t.report_seq },
            ReportBody::Status { nonce, .. } => ReportMsgId::Status { host, nonce: nonce.clone() },
            ReportBody::Refused(r) => ReportMsgId::Refused { host, nonce: r.nonce.clone() },
        }
    }

    /// [`Report::report_id`] as the header value: the same report retried is stored once.
    pub fn msg_id(&self) -> String {
        self.report_id().to_string()
    }
}

impl TaskReport {
    /// The task attempt reported on (the value of the report's `Muster-Task` header).
    pub fn attempt_key(&self) -> TaskAttempt {
        TaskAttempt { task: self.task, attempt: self.attempt }
    }
}
