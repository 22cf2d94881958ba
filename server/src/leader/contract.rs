//! The leader core's contract: what is stepped in ([`Input`]), the one value that comes out ([`Ready`]), and the
//! words both are made of. Pure data: no I/O, no clock, no logic beyond accumulating a batch ([`Output`]).
//!
//! One batch is `core.step(input)`* then `core.ready()`; [`crate::leader::driver::drive`] is the only code that
//! performs a [`Ready`], in the order documented there. Everything the core needs from the outside world comes back
//! as an input: stored command sequences ([`Input::Delivered`]), the arrival times of hosts whose detection window
//! ran out ([`Input::Heard`]), the passage of time ([`Input::Tick`]).

use std::collections::BTreeSet;
use std::time::Duration;

use muster_schemas::api::{ApiError, EnrollmentRecord, RequestSpec, TokenRecord, TokenSpec, WriteReply};
use muster_schemas::cluster::{
    BlueprintRecord, CommandCursor, HostComponentRecord, RequestRecord, StackRecord, TaskRecord,
};
use muster_schemas::commands::{Command, CommandBody, Report, RequestId, TaskId};
use muster_schemas::events::{ComponentChanged, HostChanged, RequestChanged, TaskChanged};
use muster_schemas::ids::CommandMsgId;
use muster_schemas::messages::EnrollRequest;
use muster_schemas::{
    Heartbeat, HeartbeatReply, HostId, HostRecord, RegisterReply, RegisterRequest, TxnOp, PROTOCOL_VERSION,
};
use tokio::time::Instant;

use crate::config::EnrollPolicy;
use crate::metrics::ServerCounter;

/// Something the leader must react to.
#[derive(Debug)]
pub enum Input {
    /// Leadership starts: redo what the previous leader committed but may not have performed (stepped once, first).
    TakeOver,
    /// A registration that passed Prep.
    Register {
        /// The request (boxed: facts are large, heartbeats are the common input).
        req: Box<RegisterRequest>,
        /// Where to send the reply.
        reply: Option<String>,
    },
    /// A heartbeat that passed Prep. Its arrival time is not carried: the listener recorded it in
    /// [`crate::status::LastSeen`], the one record of arrivals, and the core asks for it when it needs it.
    Heartbeat {
        /// The heartbeat, decoded once by Prep; its health may move the host between HEALTHY and UNHEALTHY.
        hb: Heartbeat,
        /// The agent's control inbox, if it gave one.
        reply: Option<String>,
    },
    /// A report that passed Prep; `ack` names the stored message to ack once the report's effect is committed.
    /// `None`: an early copy of a final task report, heard on the core subscription before `MUSTER_REPORTS`
    /// delivers the stored one (which then follows with an ack and is acked as a duplicate).
    Report {
        /// The report, decoded once by Prep.
        report: Box<Report>,
        /// Shell token for the ack, if the report came from the stream.
        ack: Option<u64>,
    },
    /// An operator call; `token` names the caller awaiting the answer.
    Api {
        /// The write, already parsed from the endpoint and body.
        call: ApiCall,
        /// Shell token for the answer.
        token: u64,
    },
    /// Commands the shell stored in `MUSTER_COMMANDS`, with their stream sequences, in publish order: the answer
    /// to [`Ready::publish`].
    Delivered(Vec<(Outgoing, u64)>),
    /// The last heartbeat arrival of each host in [`Ready::suspects`] (`None`: never heard): the answer to it.
    Heard(Vec<(HostId, Option<Instant>)>),
    /// Time passed: check detection windows and task deadlines.
    Tick,
}

/// Operator calls that change state (the leader's write endpoints).
#[derive(Debug, Clone)]
pub enum ApiCall {
    /// Apply a stack file (its TOML source).
    ApplyStack {
        /// The stack file as the operator wrote it; stored with the record.
        source: String,
    },
    /// Apply a blueprint file (its TOML source).
    ApplyBlueprint {
        /// The blueprint file as the operator wrote it; stored with the record.
        source: String,
    },
    /// Start a request.
    Request(RequestSpec),
    /// Cancel a running request.
    Cancel {
        /// The request to cancel.
        request: RequestId,
    },
    /// Record an enrollment token (`token.create`).
    CreateToken(TokenSpec),
    /// Revoke an enrollment token (`token.revoke`).
    RevokeToken {
        /// The token's id.
        id: String,
    },
    /// Accept a host's enrollment (`host.accept`).
    AcceptHost {
        /// The host.
        host: HostId,
    },
    /// Reject a host's enrollment (`host.reject`).
    RejectHost {
        /// The host.
        host: HostId,
    },
    /// An agent's enrollment request that passed Prep (both signatures verified), from the enrollment listener;
    /// answered with [`WriteReply::Enroll`].
    Enroll {
        /// The request.
        req: Box<EnrollRequest>,
        /// The listener's `MUSTER_ENROLL_POLICY`.
        policy: EnrollPolicy,
    },
}

/// The answer to an operator call: the endpoint's typed reply (the shell adds the log sequence it committed at),
/// or the one API error type every layer up to the CLI carries unchanged.
pub type ApiResult = Result<WriteReply, ApiError>;

/// A reply body to an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To a registration.
    Register(RegisterReply),
    /// To a heartbeat, on the agent's control inbox.
    Heartbeat(HeartbeatReply),
}

/// A change-feed event, published on `<prefix>.events.<kind>.<key>`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// A host changed state (`events.host.<host>`).
    Host(HostChanged),
    /// A host component changed state (`events.component.<host>`).
    Component(ComponentChanged),
    /// A task changed status (`events.task.<host>`).
    Task(TaskChanged),
    /// A request ended (`events.request.<id>`).
    Request(RequestChanged),
}

/// What the shell must do once the batch is committed, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a reply to an agent.
    Reply {
        /// The reply subject the agent's request or heartbeat carried.
        to: String,
        /// Host the reply concerns (for the `Muster-Host` header).
        host: HostId,
        /// What to send.
        body: Reply,
    },
    /// Publish a change-feed event.
    Event(ChangeEvent),
    /// Bump a counter (see `muster stats`).
    Count(ServerCounter),
    /// Answer an operator call.
    Api {
        /// Shell token of the waiting caller.
        token: u64,
        /// The typed reply, or the [`ApiError`] the caller gets.
        result: ApiResult,
    },
    /// Ack a consumed report.
    Ack {
        /// Shell token of the stored message.
        token: u64,
        /// Refused rather than processed: never redeliver.
        term: bool,
    },
}

/// A command to store in `MUSTER_COMMANDS` once the batch is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Host whose `muster.cmd.<host>` subject the command is stored under.
    pub host: HostId,
    /// `Nats-Msg-Id`: a re-publish (new leader, retry) lands once. An execution's names its task attempt (the
    /// `Muster-Task` header, and the task whose `cmd_seq` the stored sequence becomes).
    pub msg_id: CommandMsgId,
    /// The command body, MessagePack-encoded by the shell when it stores it.
    pub command: Command,
}

impl Outgoing {
    /// A command of `body` for `host`, stored under `msg_id`.
    pub fn new(host: &HostId, msg_id: CommandMsgId, body: CommandBody) -> Self {
        let command = Command { schema: PROTOCOL_VERSION, host: host.clone(), body };
        Self { host: host.clone(), msg_id, command }
    }
}

/// Everything the shell must do for one batch, in the order [`crate::leader::driver::drive`] does it.
#[derive(Debug, Default)]
pub struct Ready {
    /// Txn ops to append to the log: the id reservation first when one is due, then every record the batch
    /// touched. Empty: nothing to commit.
    pub ops: Vec<TxnOp>,
    /// Effects to perform once `ops` are committed (or, with no ops, once a barrier proved the leadership).
    pub effects: Vec<Effect>,
    /// Commands to store once `ops` are committed; their sequences come back as [`Input::Delivered`].
    pub publish: Vec<Outgoing>,
    /// Hosts whose detection window ran out: their last arrivals come back as [`Input::Heard`] before any of
    /// them is declared lost.
    pub suspects: Vec<HostId>,
    /// Whether performing `effects` and `publish` may only be done by the leader: anything but counters, settled
    /// acks ([`Output::ack_settled`]) and heartbeat replies (advice to register again) tells someone something a
    /// successor may have changed. With no `ops` to fence the batch, the driver proves the leadership first.
    pub needs_leadership: bool,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.effects.is_empty() && self.publish.is_empty() && self.suspects.is_empty()
    }
}

/// A record touched by the batch: its current value becomes a txn op in [`Ready::ops`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    /// A host record.
    Host(HostId),
    /// A host component, by `host/service/component` key.
    Component(String),
    /// A stack, by name.
    Stack(String),
    /// A blueprint, by name.
    Blueprint(String),
    /// A request record (with its stages), by id.
    Request(RequestId),
    /// A task record, by id.
    Task(TaskId),
    /// A host's command cursor.
    Cursor(HostId),
    /// An enrollment token, by id.
    Token(String),
    /// A host's enrollment.
    Enrollment(HostId),
}

/// What the core's modules accumulate while a batch is stepped; [`crate::leader::core::LeaderCore::ready`] turns
/// it into a [`Ready`].
#[derive(Debug, Default)]
pub struct Output {
    /// Records touched: each one's current value becomes a txn op when the batch is made ready.
    pub dirty: BTreeSet<Dirty>,
    /// Commands to publish after committing.
    pub publish: Vec<Outgoing>,
    /// Effects to perform after committing.
    pub effects: Vec<Effect>,
    /// Hosts to look up in the arrival record.
    pub suspects: Vec<HostId>,
    /// Tokens of the acks in `effects` that are true whoever sends them ([`Output::ack_settled`]).
    pub settled: BTreeSet<u64>,
}

impl Output {
    /// Counts `counter` once the batch is committed.
    pub fn count(&mut self, counter: ServerCounter) {
        self.effects.push(Effect::Count(counter));
    }

    /// Publishes `event` once the batch is committed.
    pub fn event(&mut self, event: ChangeEvent) {
        self.effects.push(Effect::Event(event));
    }

    /// Acks the stored report behind `ack`, if there is one (`term`: refused, never to be redelivered).
    pub fn ack(&mut self, ack: Option<u64>, term: bool) {
        if let Some(token) = ack {
            self.effects.push(Effect::Ack { token, term });
        }
    }

    /// Acks the stored copy of a report whose effect is already committed (a duplicate of an applied final, a
    /// progress report behind it). Such an ack is true whoever sends it — committed state is never undone, and a
    /// successor would ack it the same way — so it needs no proof of leadership: the common case of a fan-out,
    /// where every final report's stored copy follows its early copy, costs no append.
    pub fn ack_settled(&mut self, ack: Option<u64>) {
        if let Some(token) = ack {
            self.settled.insert(token);
            self.effects.push(Effect::Ack { token, term: false });
        }
    }

    /// Whether anything accumulated may only be performed by the leader (see [`Ready::needs_leadership`]).
    pub fn needs_leadership(&self) -> bool {
        !self.publish.is_empty()
            || self.effects.iter().any(|e| match e {
                Effect::Count(_) => false,
                Effect::Ack { token, term: false } => !self.settled.contains(token),
                // It can only ask the agent to register again, which is legal in every state and answered by the
                // leader; every instance's Prep answers heartbeats too. A barrier per batch of heartbeats from
                // unknown hosts would grow the log for every misconfigured agent.
                Effect::Reply { body: Reply::Heartbeat(_), .. } => false,
                _ => true,
            })
    }
}

/// Timing parameters the core needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval handed to agents.
    pub interval: Duration,
    /// `interval × misses`: silence after which a host is HEARTBEAT_LOST.
    pub deadline: Duration,
    /// Added to a task's timeout before the leader gives up waiting for its report: leaves the agent time to kill
    /// the command and report TIMEDOUT itself.
    pub task_grace: Duration,
}

/// Everything committed, as loaded from redb when leadership starts.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every host record.
    pub hosts: Vec<HostRecord>,
    /// The current version of every stack.
    pub stacks: Vec<StackRecord>,
    /// Every blueprint, at its current version.
    pub blueprints: Vec<BlueprintRecord>,
    /// Every host component.
    pub components: Vec<HostComponentRecord>,
    /// Every request (finished ones only count toward the next id).
    pub requests: Vec<RequestRecord>,
    /// The tasks of unfinished requests.
    pub tasks: Vec<TaskRecord>,
    /// Every host's command cursor.
    pub cursors: Vec<CommandCursor>,
    /// Highest task id ever used.
    pub max_task: TaskId,
    /// Highest task and request ids reserved by earlier leaders.
    pub reserved: (TaskId, RequestId),
    /// Every enrollment token.
    pub tokens: Vec<TokenRecord>,
    /// Every host's enrollment.
    pub enrollments: Vec<EnrollmentRecord>,
}
