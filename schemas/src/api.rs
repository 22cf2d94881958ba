//! The operator API's JSON types: what every `muster.api.*` endpoint takes and answers, reads and writes alike, and
//! the one error type that travels from the leader through the answering instance to the CLI. JSON rather than
//! MessagePack so `nats req muster.api.hosts ''` output is readable as is.
//!
//! | endpoint ([`Endpoint`]) | request body | reply |
//! |---|---|---|
//! | `summary` | empty | [`ClusterSummary`] |
//! | `hosts` | empty | `[`[`HostSummary`]`]` |
//! | `host` | a host id (plain text) | [`HostDetail`] |
//! | `stats` | empty | [`ServerStats`] |
//! | `components` | empty | `[`[`ComponentView`]`]` |
//! | `stacks` | empty | `[`[`StackView`]`]` |
//! | `requests` | empty | `[`[`RequestSummary`]`]`, newest first |
//! | `request` | a request id (plain text) | [`RequestView`] |
//! | `stack.apply` (write) | stack TOML | [`Committed`]`<`[`StackApplied`]`>` |
//! | `blueprint.apply` (write) | blueprint TOML | [`Committed`]`<`[`BlueprintApplied`]`>` |
//! | `request.create` (write) | [`RequestSpec`] JSON | [`Committed`]`<`[`RequestCreated`]`>` |
//! | `request.cancel` (write) | a request id (plain text) | [`Committed`]`<`[`RequestCancelled`]`>` |
//! | `tokens` | empty | `[`[`TokenRecord`]`]` (enrollment tokens; never their secret) |
//! | `enrollments` | empty | `[`[`EnrollmentRecord`]`]` (every host's enrollment: pending, accepted, rejected) |
//! | `token.create` (write) | [`TokenSpec`] JSON | [`Committed`]`<`[`TokenRecord`]`>` |
//! | `token.revoke` (write) | a token id (plain text) | [`Committed`]`<`[`TokenRecord`]`>` |
//! | `host.accept` (write) | a host id (plain text) | [`Committed`]`<`[`EnrollmentRecord`]`>` |
//! | `host.reject` (write) | a host id (plain text) | [`Committed`]`<`[`EnrollmentRecord`]`>` |
//! | `<prefix>.servers` (every instance answers, no queue group) | empty | [`ServerStatus`] |
//!
//! A failed call answers with the services framework's error headers ([`SERVICE_ERROR_HEADER`],
//! [`SERVICE_ERROR_CODE_HEADER`]), which [`ApiError::from_service_error`] turns back into an [`ApiError`]; the
//! leader's answers also carry the error as a JSON body.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{ComponentState, DesiredState, RequestAction, TaskStatus};
use crate::commands::{RequestId, TaskId};
use crate::messages::EnrollRefusal;
use crate::{HostId, HostRecord, HostState, UnixMillis};

// ---- endpoints and errors -------------------------------------------------------------------------------------

/// Every endpoint of the `muster` service, so neither the server nor the CLI spells an endpoint name by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Counts of hosts, components and requests by state.
    Summary,
    /// Every registered host, lost ones included, one [`HostSummary`] each.
    Hosts,
    /// One host with its record.
    Host,
    /// The answering instance's role, epoch and counters.
    Stats,
    /// Every host component.
    Components,
    /// Every stack at its current version, with its services and components.
    Stacks,
    /// Every request, newest first.
    Requests,
    /// One request with its stages and tasks.
    Request,
    /// Store a stack (write).
    StackApply,
    /// Store a blueprint and start the request that maps it (write).
    BlueprintApply,
    /// Start a request (write).
    RequestCreate,
    /// Cancel a running request (write).
    RequestCancel,
    /// Every enrollment token (ids, patterns, uses, expiry; never a secret).
    Tokens,
    /// Every host's enrollment record.
    Enrollments,
    /// Record a new enrollment token (write).
    TokenCreate,
    /// Revoke an enrollment token (write).
    TokenRevoke,
    /// Accept a host's pending (or rejected) enrollment (write).
    HostAccept,
    /// Reject a host's enrollment (write).
    HostReject,
}

impl Endpoint {
    /// Every endpoint, reads first.
    pub const ALL: [Endpoint; 18] = [
        Self::Summary,
        Self::Hosts,
        Self::Host,
        Self::Stats,
        Self::Components,
        Self::Stacks,
        Self::Requests,
        Self::Request,
        Self::Tokens,
        Self::Enrollments,
        Self::StackApply,
        Self::BlueprintApply,
        Self::RequestCreate,
        Self::RequestCancel,
        Self::TokenCreate,
        Self::TokenRevoke,
        Self::HostAccept,
        Self::HostReject,
    ];

    /// The name under `<prefix>.api.` (and under `<prefix>.leader.` for writes).
    pub fn name(self) -> &'static str {
        match self {
            Self::Summary => "summary",
            Self::Hosts => "hosts",
            Self::Host => "host",
            Self::Stats => "stats",
            Self::Components => "components",
            Self::Stacks => "stacks",
            Self::Requests => "requests",
            Self::Request => "request",
            Self::StackApply => "stack.apply",
            Self::BlueprintApply => "blueprint.apply",
            Self::RequestCreate => "request.create",
            Self::RequestCancel => "request.cancel",
            Self::Tokens => "tokens",
            Self::Enrollments => "enrollments",
            Self::TokenCreate => "token.create",
            Self::TokenRevoke => "token.revoke",
            Self::HostAccept => "host.accept",
            Self::HostReject => "host.reject",
        }
    }

    /// The endpoint a name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Writes change the log, so only the leader can answer them; the answering instance forwards them.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::StackApply
                | Self::BlueprintApply
                | Self::RequestCreate
                | Self::RequestCancel
                | Self::TokenCreate
                | Self::TokenRevoke
                | Self::HostAccept
                | Self::HostReject
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header in which the services framework carries an error's message (async-nats `NATS_SERVICE_ERROR`).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// The header in which the services framework carries an error's numeric code (`NATS_SERVICE_ERROR_CODE`).
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";

/// Why an API call failed. On the wire it is the HTTP-style number the services framework carries in
/// [`SERVICE_ERROR_CODE_HEADER`] (and in the `code` field of [`ApiError`]'s JSON), so `nats req` shows it as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum ApiErrorCode {
    /// 400: the call is malformed or asks for something impossible (unknown target, invalid stack); retrying the
    /// same call fails the same way.
    BadRequest,
    /// 404: the host, request or endpoint named does not exist (or, for a cancel, is no longer running).
    NotFound,
    /// 413: the body is over the size limit and was not read.
    TooLarge,
    /// 500: the answering instance failed (its database, a bug); the call may or may not have taken effect.
    Internal,
    /// 503: no leader right now, the leader stepped down, or this instance lags behind the sequence asked for;
    /// retry in a moment.
    Unavailable,
    /// 504: the leader did not answer in time; the write may still commit.
    Timeout,
}

impl ApiErrorCode {
    /// Every code, for tables and round-trip tests.
    pub const ALL: [ApiErrorCode; 6] =
        [Self::BadRequest, Self::NotFound, Self::TooLarge, Self::Internal, Self::Unavailable, Self::Timeout];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::Internal => 500,
            Self::Unavailable => 503,
            Self::Timeout => 504,
        }
    }
}

impl From<ApiErrorCode> for u16 {
    fn from(c: ApiErrorCode) -> u16 {
        c.as_u16()
    }
}

/// A number that is no [`ApiErrorCode`] (a newer server, or not a muster service at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown API error code {0}")]
pub struct UnknownApiErrorCode(pub u16);

impl TryFrom<u16> for ApiErrorCode {
    type Error = UnknownApiErrorCode;
    fn try_from(n: u16) -> Result<Self, Self::Error> {
        Self::ALL.into_iter().find(|c| c.as_u16() == n).ok_or(UnknownApiErrorCode(n))
    }
}

impl fmt::Display for ApiErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

/// A failed API call, the same value from the leader's core to the CLI: the core returns it, the leader and the
/// answering instance carry it in the services framework's error headers, and the CLI shows
/// `<message> (code <n>)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct ApiError {
    /// Why, for a caller that branches on it.
    pub code: ApiErrorCode,
    /// What went wrong, in words an operator can act on.
    pub message: String,
}

impl ApiError {
    /// An error with this code.
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A 400 error: the call is malformed or asks for something impossible; retrying fails the same way.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::BadRequest, message)
    }

    /// A 404 error: the host, request or endpoint named does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::NotFound, message)
    }

    /// A 500 error: the answering instance failed; the call may or may not have taken effect.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Internal, message)
    }

    /// A 503 error: no leader, or this instance is behind; the caller should retry shortly.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Unavailable, message)
    }

    /// A 504 error: the leader did not answer in time; the write may still commit.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Timeout, message)
    }

    /// The error carried by a reply's [`SERVICE_ERROR_HEADER`] (`message`) and [`SERVICE_ERROR_CODE_HEADER`]
    /// (`code`, absent or not a known code: kept in the message and taken as [`ApiErrorCode::Internal`], so no
    /// failure is ever mistaken for a success or loses its words).
    pub fn from_service_error(message: &str, code: Option<&str>) -> Self {
        match code.map(|c| c.trim().parse::<u16>().map(ApiErrorCode::try_from)) {
            Some(Ok(Ok(code))) => Self::new(code, message),
            Some(_) => Self::internal(format!("{message} (code {})", code.unwrap_or_default().trim())),
            None => Self::internal(message),
        }
    }
}

// ---- reads ----------------------------------------------------------------------------------------------------

/// `summary`: counts only, cheap at any fleet size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Every host that ever registered, HEARTBEAT_LOST ones included (hosts are never forgotten).
    pub hosts: u64,
    /// Hosts by state name (`HEALTHY`, ...); states with no host are absent.
    pub hosts_by_state: BTreeMap<String, u64>,
    /// Host components known.
    pub components: u64,
    /// Host components by state name.
    pub components_by_state: BTreeMap<String, u64>,
    /// Requests by status name.
    pub requests_by_status: BTreeMap<String, u64>,
    /// The log sequence the answering instance had applied when it counted.
    pub applied_seq: u64,
}

/// One row of `muster hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    /// The host id the agent registered with (its subject token).
    pub id: String,
    /// The host state from the log (Ambari's host FSM: HEALTHY, UNHEALTHY, HEARTBEAT_LOST, ...).
    pub state: HostState,
    /// Seconds since the answering instance last heard a heartbeat from the host; `null` if none since it started
    /// (each instance hears heartbeats itself, so a new instance knows nothing for a moment).
    pub last_heartbeat_secs: Option<f64>,
    /// Hostname as the host reports it.
    pub hostname: String,
    /// The `muster-agent` version the host registered with last.
    pub agent_version: String,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// What the agent reported wrong, when UNHEALTHY.
    pub problems: Vec<String>,
}

/// `host <id>`: the summary fields plus the persisted record (facts, labels, registrations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    /// The same fields as a row of `hosts`.
    #[serde(flatten)]
    pub summary: HostSummary,
    /// The record as the log holds it.
    pub record: HostRecord,
}

/// The role an instance plays right now (ZooKeeper's names), as `stats` and `servers` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Holds the lease; the one writer.
    Leader,
    /// Applies the log and may become leader.
    Follower,
    /// Applies the log and never campaigns.
    Observer,
}

impl ServerRole {
    /// The lower-case name on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Observer => "observer",
        }
    }
}

impl fmt::Display for ServerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `stats`: the answering instance and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// `MUSTER_SERVER_ID` of the instance that answered (the service's queue group picks any).
    pub server_id: String,
    /// Its role when it answered (a follower may have become leader since).
    pub role: ServerRole,
    /// The newest epoch it knows (from leading, or from the log it applied).
    pub epoch: u64,
    /// The last log sequence it applied.
    pub applied_seq: u64,
    /// Seconds since the process started.
    pub uptime_secs: f64,
    /// Counters by dotted name; a counter never bumped may be absent (read it as zero).
    pub counters: BTreeMap<String, u64>,
}

/// One instance's answer on `<prefix>.servers`: how far it applied the log, how far behind it is, and the digest
/// that is equal on replicas that applied the same log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The instance's `MUSTER_SERVER_ID`.
    pub id: String,
    /// Its role when it answered.
    pub role: ServerRole,
    /// The newest epoch it knows.
    pub epoch: u64,
    /// The last log sequence it applied to its redb.
    pub applied_seq: u64,
    /// The log's last sequence as it sees it; `null` when JetStream did not answer.
    pub log_end: Option<u64>,
    /// `log_end - applied_seq`; `null` with `log_end`.
    pub lag: Option<u64>,
    /// Seconds since the process started.
    pub uptime_secs: f64,
    /// Hash over every state table; `null` when it could not be computed.
    pub digest: Option<String>,
}

/// One host component as `components` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentView {
    /// Host id of the host it is on.
    pub host: String,
    /// Service the component belongs to.
    pub service: String,
    /// Component name, unique within its stack.
    pub component: String,
    /// State the agent last reported or the leader last decided.
    pub state: ComponentState,
    /// State the operator asked for.
    pub desired: DesiredState,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// How often the agent restarted it on its own.
    pub auto_restarts: u32,
}

/// One stack as `stacks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackView {
    /// Stack name, unique in the cluster.
    pub name: String,
    /// Version, from 1, bumped by each apply that changes it.
    pub version: u32,
    /// When the current version was applied.
    pub applied_at: UnixMillis,
    /// Its services, in definition order.
    pub services: Vec<ServiceView>,
}

/// One service of a [`StackView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service name, unique within the stack.
    pub name: String,
    /// Its component names, in definition order.
    pub components: Vec<String>,
}

/// One row of `requests`: the request without its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// Request id, assigned by the leader from 1.
    pub id: RequestId,
    /// What was asked, e.g. `START master on all hosts`.
    pub description: String,
    /// IN_PROGRESS until it ends COMPLETED, FAILED, TIMEDOUT or ABORTED.
    pub status: TaskStatus,
    /// When the leader created it: ms since the Unix epoch, on the leader's wall clock.
    pub created_at: UnixMillis,
    /// Finished; 0 while running.
    pub finished_at: UnixMillis,
    /// Tasks in all stages.
    pub tasks: u64,
    /// Tasks in the stages that ended.
    pub stages_done_tasks: u64,
    /// Why it ended as it did (empty while running).
    pub detail: String,
}

/// One task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id, unique in the cluster.
    pub id: TaskId,
    /// Index of its stage in the request.
    pub stage: u32,
    /// Host it runs on.
    pub host: String,
    /// `service/component`, or null for ad-hoc runs.
    pub component: Option<String>,
    /// Verb (INSTALL, START, ..., RUN).
    pub command: String,
    /// PENDING, QUEUED, IN_PROGRESS, or how it ended.
    pub status: TaskStatus,
    /// Attempts sent (a task is resent after a lost agent comes back).
    pub attempt: u32,
    /// Exit code of the command, once it ended.
    pub exit_code: Option<i32>,
    /// Head and tail of stdout (bounded by [`crate::limits::MAX_OUTPUT_BYTES`]).
    pub stdout: String,
    /// Head and tail of stderr.
    pub stderr: String,
    /// Started; 0 if not yet.
    pub started_at: UnixMillis,
    /// Finished; 0 if not yet.
    pub finished_at: UnixMillis,
    /// Why it ended as it did.
    pub detail: String,
}

/// Most tasks a request view lists: a fan-out to 100k hosts must still fit one NATS message (1 MiB); counts
/// always cover every task.
pub const MAX_TASKS_IN_VIEW: usize = 1_000;

/// One stage as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// Stage name, e.g. `START master`.
    pub name: String,
    /// PENDING until the stage before completes, IN_PROGRESS while its tasks run, then how it ended.
    pub status: TaskStatus,
    /// Task ids (empty when the request has more than [`MAX_TASKS_IN_VIEW`] tasks).
    pub tasks: Vec<TaskId>,
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

/// `request <id>`: a request with its stages and (the first [`MAX_TASKS_IN_VIEW`] of) its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    /// Request id, assigned by the leader from 1.
    pub id: RequestId,
    /// What was asked.
    pub description: String,
    /// IN_PROGRESS until it ends COMPLETED, FAILED, TIMEDOUT or ABORTED.
    pub status: TaskStatus,
    /// When the leader created it: ms since the Unix epoch, on the leader's wall clock.
    pub created_at: UnixMillis,
    /// Finished; 0 while running.
    pub finished_at: UnixMillis,
    /// Why it ended as it did.
    pub detail: String,
    /// Stages in order.
    pub stages: Vec<StageView>,
    /// Tasks, in id order: all of them up to [`MAX_TASKS_IN_VIEW`], the first ones beyond.
    pub tasks: Vec<TaskView>,
    /// Tasks in the request.
    #[serde(default)]
    pub tasks_total: u64,
    /// Tasks by status name, over all tasks.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

// ---- writes ---------------------------------------------------------------------------------------------------

/// An operator request (`request.create`): what to do, where, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// What to do; on the wire `install`, `start`, `stop`, `restart`, `uninstall`, `custom:<name>` or `run`.
    pub action: RequestAction,
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
    /// Seconds before the agent kills a `run` (the leader's default when absent).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Hosts per rolling batch (0 = all at once).
    #[serde(default)]
    pub batch: u32,
    /// Failed tasks tolerated before the request is aborted.
    #[serde(default)]
    pub max_failures: u32,
    /// Fraction of a stage's tasks that must complete (1.0 when absent).
    #[serde(default)]
    pub success_factor: Option<f64>,
    /// Chosen by the client, fresh for each thing the operator asks and reused on every retry of it (a write
    /// reported failed may have committed): the leader answers a repeat with the original [`RequestCreated`]
    /// instead of creating a second request, even after a failover (the key is stored with the request). At most
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`]; absent: every call creates a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Longest [`RequestSpec::idempotency_key`]: room for a UUID or a hash with a prefix, small enough that the
/// leader may remember one per request for the cluster's lifetime.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// `stack.apply`: the stack as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackApplied {
    /// Stack name from the file's `name`.
    pub stack: String,
    /// Its version now (unchanged when the same definition was applied again).
    pub version: u32,
    /// Whether this apply changed the stored definition.
    pub changed: bool,
    /// Every component the stack defines.
    pub components: Vec<String>,
}

/// `blueprint.apply`: the blueprint as stored and the request that brings the hosts to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintApplied {
    /// Blueprint name from the file's `name`.
    pub blueprint: String,
    /// Its version now (every apply bumps it).
    pub version: u32,
    /// Host components newly mapped by this apply.
    pub mapped: u64,
    /// The request closing the gap between desired and current states; `null` when there was none.
    pub request: Option<RequestId>,
}

/// `request.create`: the request as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCreated {
    /// The new request's id.
    pub request: RequestId,
    /// Stages planned; 0 when nothing needed doing, and the request then completes at once.
    pub stages: u64,
    /// Tasks planned over all stages.
    pub tasks: u64,
    /// Selected hosts left out because they are HEARTBEAT_LOST.
    pub skipped_lost_hosts: Vec<String>,
}

/// `request.cancel`: what the cancel stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCancelled {
    /// The request, now ABORTED.
    pub request: RequestId,
    /// Tasks that were still queued or running and are now aborted.
    pub aborted_tasks: u64,
}

// ---- enrollment -----------------------------------------------------------------------------------------------

/// `token.create`: a token minted by `muster token create`, recorded at the leader before it is handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// The token's id: its enroll user's public key (`U…`); the seed stays with whoever holds the token.
    pub id: String,
    /// Host id glob the token may enroll (`web-*`); absent: any host.
    #[serde(default)]
    pub hosts: Option<String>,
    /// How many hosts it may enroll (at least 1).
    pub uses: u32,
    /// When it expires (the JWT's expiry too): ms since the Unix epoch.
    pub expires_at: UnixMillis,
}

/// An enrollment token as the leader records it (`tokens`; the txn op `put_token`): created, used, revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its enroll user's public key (`U…`).
    pub id: String,
    /// Host id glob it may enroll; `null`: any host.
    pub hosts: Option<String>,
    /// Hosts it may enroll.
    pub uses: u32,
    /// Hosts it enrolled (or put pending) so far.
    pub used: u32,
    /// When the leader recorded it.
    pub created_at: UnixMillis,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// When an operator revoked it; `null` while it is not revoked.
    pub revoked_at: Option<UnixMillis>,
}

/// Where a host's enrollment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnrollmentState {
    /// Waiting for an operator (`muster hosts accept|reject <host>`); the agent asks again every few seconds.
    Pending,
    /// The host's key is bound to its id: credentials are minted for this key only.
    Accepted,
    /// An operator rejected this key for the host; another key may enroll anew.
    Rejected,
}

impl EnrollmentState {
    /// The upper-case name, as tables show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Accepted => "ACCEPTED",
            Self::Rejected => "REJECTED",
        }
    }
}

impl fmt::Display for EnrollmentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host's enrollment as the leader records it (`enrollments`; the txn op `put_enrollment`): the one key the
/// host id is bound to, and where that stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    /// The host.
    pub host: HostId,
    /// The public key of the agent's own user nkey (`U…`).
    pub key: String,
    /// Pending, accepted or rejected.
    pub state: EnrollmentState,
    /// The id of the token it enrolled with.
    pub token: String,
    /// When the agent first asked with this key.
    pub requested_at: UnixMillis,
    /// When it entered its state.
    pub state_since: UnixMillis,
    /// Why it is in its state (`policy auto`, `policy pending`, `accepted by an operator`, ...).
    pub reason: String,
}

/// The leader core's verdict on an agent's enrollment; the enrollment listener mints the credentials of an
/// accepted one and answers the agent with an [`crate::messages::EnrollReply`]. Never an API answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EnrollVerdict {
    /// Bound (now or before) to `key`: mint the agent's credentials.
    Accepted {
        /// The host the credentials are named after.
        host: HostId,
        /// The agent's public key they are for.
        key: String,
    },
    /// Held for an operator.
    Pending {
        /// Why, for the agent's log.
        message: String,
    },
    /// Refused.
    Refused {
        /// Why, as a code.
        code: EnrollRefusal,
        /// Why, in words.
        message: String,
    },
}

/// What a write returns, before the shell knows the sequence it committed at. Serialized without a tag: each
/// endpoint has its own reply type, and a caller reads the one its endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WriteReply {
    /// The reply to `stack.apply`, before the sequence it committed at is known.
    StackApplied(StackApplied),
    /// The reply to `blueprint.apply`, before the sequence it committed at is known.
    BlueprintApplied(BlueprintApplied),
    /// The reply to `request.create`, before the sequence it committed at is known.
    RequestCreated(RequestCreated),
    /// The reply to `request.cancel`, before the sequence it committed at is known.
    RequestCancelled(RequestCancelled),
    /// The reply to `token.create` and `token.revoke`: the token as recorded.
    Token(TokenRecord),
    /// The reply to `host.accept` and `host.reject`: the enrollment as recorded.
    Enrollment(EnrollmentRecord),
    /// The core's verdict on an agent's enrollment (answered on `<prefix>.enroll.<host>`, not on the API).
    Enroll(EnrollVerdict),
}

/// A write's reply with the log sequence its changes were committed at: a caller passes it as
/// [`crate::headers::MIN_SEQ`] to read its own write on any instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed<T> {
    /// The endpoint's reply, its fields at the top level of the JSON object.
    #[serde(flatten)]
    pub reply: T,
    /// The log sequence the write is in.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_by_name_and_only_the_writes_are_writes() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_name(e.name()), Some(e));
        }
        let writes: Vec<&str> = Endpoint::ALL.into_iter().filter(|e| e.is_write()).map(Endpoint::name).collect();
        assert_eq!(
            writes,
            [
                "stack.apply",
                "blueprint.apply",
                "request.create",
                "request.cancel",
                "token.create",
                "token.revoke",
                "host.accept",
                "host.reject"
            ]
        );
        let reads = Endpoint::ALL.iter().position(|e| e.is_write()).unwrap();
        assert!(Endpoint::ALL[reads..].iter().all(|e| e.is_write()), "reads first");
        assert_eq!(Endpoint::from_name("nope"), None);
    }

    #[test]
    fn error_codes_are_numbers_on_the_wire() {
        for c in ApiErrorCode::ALL {
            assert_eq!(ApiErrorCode::try_from(c.as_u16()), Ok(c));
        }
        let e = ApiError::not_found("no request 9");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"code":404,"message":"no request 9"}"#);
        assert_eq!(serde_json::from_str::<ApiError>(&json).unwrap(), e);
        assert!(serde_json::from_str::<ApiError>(r#"{"code":418,"message":"teapot"}"#).is_err());
        assert_eq!(e.to_string(), "no request 9 (code 404)");
    }

    #[test]
    fn service_error_headers_become_the_same_error() {
        assert_eq!(ApiError::from_service_error("bad", Some("400")), ApiError::bad_request("bad"));
        assert_eq!(ApiError::from_service_error("slow", Some(" 504 ")), ApiError::timeout("slow"));
        // Unknown or missing codes are still failures, and the words survive.
        assert_eq!(ApiError::from_service_error("odd", Some("418")), ApiError::internal("odd (code 418)"));
        assert_eq!(ApiError::from_service_error("odd", Some("x")), ApiError::internal("odd (code x)"));
        assert_eq!(ApiError::from_service_error("bare", None), ApiError::internal("bare"));
    }

    #[test]
    fn write_replies_keep_their_field_names_with_the_seq_beside_them() {
        let reply = WriteReply::RequestCreated(RequestCreated {
            request: 7,
            stages: 2,
            tasks: 3,
            skipped_lost_hosts: vec!["h9".into()],
        });
        let v = serde_json::to_value(Committed { reply, seq: 41 }).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request": 7, "stages": 2, "tasks": 3, "skipped_lost_hosts": ["h9"], "seq": 41})
        );
        let back: Committed<RequestCreated> = serde_json::from_value(v).unwrap();
        assert_eq!((back.reply.request, back.seq), (7, 41));

        let v = serde_json::to_value(WriteReply::BlueprintApplied(BlueprintApplied {
            blueprint: "bp".into(),
            version: 2,
            mapped: 4,
            request: None,
        }))
        .unwrap();
        assert_eq!(v, serde_json::json!({"blueprint": "bp", "version": 2, "mapped": 4, "request": null}));
        let v = serde_json::to_value(WriteReply::StackApplied(StackApplied {
            stack: "s".into(),
            version: 1,
            changed: false,
            components: vec!["master".into()],
        }))
        .unwrap();
        assert_eq!(v, serde_json::json!({"stack": "s", "version": 1, "changed": false, "components": ["master"]}));
        let v = serde_json::to_value(WriteReply::RequestCancelled(RequestCancelled { request: 3, aborted_tasks: 5 }))
            .unwrap();
        assert_eq!(v, serde_json::json!({"request": 3, "aborted_tasks": 5}));
    }

    #[test]
    fn a_request_spec_names_its_action_as_before() {
        let json = r#"{"action": "custom:rebalance", "target": "worker", "hosts": "web-*"}"#;
        let spec: RequestSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.action, RequestAction::Custom("rebalance".into()));
        assert_eq!((spec.batch, spec.max_failures, spec.argv.len()), (0, 0, 0), "defaults");
        assert_eq!(serde_json::to_value(&spec).unwrap()["action"], "custom:rebalance");
        let run: RequestSpec = serde_json::from_str(r#"{"action": "run", "argv": ["true"]}"#).unwrap();
        assert_eq!(run.action, RequestAction::Run);
        let err = serde_json::from_str::<RequestSpec>(r#"{"action": "explode"}"#).unwrap_err();
        assert!(err.to_string().contains("explode"), "{err}");
    }

    #[test]
    fn server_roles_are_lower_case() {
        assert_eq!(serde_json::to_value(ServerRole::Observer).unwrap(), "observer");
        assert_eq!(serde_json::from_value::<ServerRole>("leader".into()).unwrap(), ServerRole::Leader);
    }
}
