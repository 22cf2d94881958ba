//! The leader's pure core: registrations, heartbeats, reports, operator calls and ticks go in; the records to write,
//! the commands to publish and the effects to perform come out. No I/O and no clock of its own (the shell passes
//! `now`), so it is unit-tested directly.
//!
//! One batch of inputs is stepped at a time. The core mutates its state directly and remembers which records it
//! touched ([`Output::dirty`]); the shell turns the dirty keys into txn ops with [`LeaderCore::ops`], appends them
//! and waits for its own applier, performs [`Output::effects`], and hands [`Output::publish`] to its command
//! publisher (so no agent ever runs a command the log does not have). The publisher stores the commands while the
//! core goes on stepping, and their stream sequences come back as an input ([`Input::Delivered`]), committed with a
//! later batch. If any of that fails the leader steps down and this core is dropped: the next leader starts again
//! from the log, so the core never needs to undo anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use muster_schemas::api::RequestSpec;
use muster_schemas::cluster::{
    BlueprintRecord, CommandCursor, HostComponentRecord, RequestRecord, StackRecord, TaskRecord,
};
use muster_schemas::commands::{Command, RequestId, TaskId};
use muster_schemas::events::{ComponentChanged, HostChanged, RequestChanged, TaskChanged};
use muster_schemas::{
    Heartbeat, HeartbeatReply, HostId, HostRecord, HostState, RegisterReply, RegisterRequest, TxnOp, UnixMillis,
    PROTOCOL_VERSION,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::fsm::component::ComponentEvent;
use crate::fsm::host::{transition, HostEvent};
use crate::status::Heard;

/// Something the leader must react to.
#[derive(Debug)]
pub enum Input {
    /// A registration that passed Prep.
    Register {
        /// The request (boxed: facts are large, heartbeats are the common input).
        req: Box<RegisterRequest>,
        /// Where to send the reply.
        reply: Option<String>,
    },
    /// A heartbeat that passed Prep.
    Heartbeat {
        /// The heartbeat.
        hb: Heartbeat,
        /// The agent's control inbox, if it gave one.
        reply: Option<String>,
        /// When a listener heard it: liveness counts from arrival, not from when a busy core gets to it.
        at: Instant,
    },
    /// A report that passed Prep; `ack` names the JetStream message to ack once the report's effect is committed.
    /// `None`: an early copy of a final task report, heard on the core subscription before `MUSTER_REPORTS`
    /// delivers the stored one ([`Input::Report`] with an ack then follows and is acked as a duplicate).
    Report {
        /// The report.
        report: Box<muster_schemas::commands::Report>,
        /// Shell token for the ack, if the report came from the stream.
        ack: Option<u64>,
    },
    /// An operator call; `token` names the caller awaiting the answer.
    Api {
        /// The call.
        call: ApiCall,
        /// Shell token for the answer.
        token: u64,
    },
    /// Commands the shell has stored in `MUSTER_COMMANDS`, with their stream sequences, in publish order.
    Delivered(Vec<(Outgoing, u64)>),
    /// Time passed: check liveness and task deadlines.
    Tick,
}

/// Operator calls that change state.
#[derive(Debug, Clone)]
pub enum ApiCall {
    /// Apply a stack file.
    ApplyStack {
        /// TOML.
        source: String,
    },
    /// Apply a blueprint file.
    ApplyBlueprint {
        /// TOML.
        source: String,
    },
    /// Start a request.
    Request(RequestSpec),
    /// Cancel a request.
    Cancel {
        /// Which.
        request: RequestId,
    },
}

/// An API error: services-framework code (400, 404, 409, 500) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// Code.
    pub code: usize,
    /// Message.
    pub message: String,
}

impl ApiFailure {
    /// A 400.
    pub fn bad(message: impl Into<String>) -> Self {
        Self { code: 400, message: message.into() }
    }
    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { code: 404, message: message.into() }
    }
}

/// A reply body to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To a registration.
    Register(RegisterReply),
    /// To a heartbeat, on the agent's control inbox.
    Heartbeat(HeartbeatReply),
}

/// A change-feed event.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// `events.host.<host>`.
    Host(HostChanged),
    /// `events.component.<host>`.
    Component(ComponentChanged),
    /// `events.task.<host>`.
    Task(TaskChanged),
    /// `events.request.<id>`.
    Request(RequestChanged),
}

/// What the shell must do once the batch is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a reply.
    Reply {
        /// Reply subject.
        to: String,
        /// Host the reply concerns (for the `Muster-Host` header).
        host: HostId,
        /// Body.
        body: Reply,
    },
    /// Publish a change-feed event.
    Event(ChangeEvent),
    /// Bump a counter.
    Count(&'static str),
    /// Answer an operator call.
    Api {
        /// Shell token.
        token: u64,
        /// The answer.
        result: Result<serde_json::Value, ApiFailure>,
    },
    /// Ack a consumed report (`term`: refused, never redeliver).
    Ack {
        /// Shell token.
        token: u64,
        /// Refused rather than processed.
        term: bool,
    },
}

/// A command to store in `MUSTER_COMMANDS` before the batch commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Target host.
    pub host: HostId,
    /// `Nats-Msg-Id`: a re-publish (new leader, retry) lands once.
    pub msg_id: String,
    /// The command.
    pub command: Command,
    /// The task it executes, if it is an execution.
    pub task: Option<TaskId>,
}

/// A record touched by the batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    /// Host record.
    Host(HostId),
    /// Host component (key).
    Component(String),
    /// Stack (name).
    Stack(String),
    /// Blueprint (name).
    Blueprint(String),
    /// Request.
    Request(RequestId),
    /// Task.
    Task(TaskId),
    /// Command cursor.
    Cursor(HostId),
}

/// Records to write, commands to publish and effects of one batch.
#[derive(Debug, Default)]
pub struct Output {
    /// Records touched.
    pub dirty: BTreeSet<Dirty>,
    /// Commands to publish before committing.
    pub publish: Vec<Outgoing>,
    /// Effects to perform after committing.
    pub effects: Vec<Effect>,
}

impl Output {
    /// Whether the batch changes any record.
    pub fn changes_state(&self) -> bool {
        !self.dirty.is_empty() || !self.publish.is_empty()
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
    /// Hosts.
    pub hosts: Vec<HostRecord>,
    /// Current stack versions.
    pub stacks: Vec<StackRecord>,
    /// Blueprints.
    pub blueprints: Vec<BlueprintRecord>,
    /// Host components.
    pub components: Vec<HostComponentRecord>,
    /// Requests (all; finished ones only count toward the next id).
    pub requests: Vec<RequestRecord>,
    /// Tasks of unfinished requests.
    pub tasks: Vec<TaskRecord>,
    /// Command cursors.
    pub cursors: Vec<CommandCursor>,
    /// Highest task id ever used.
    pub max_task: TaskId,
    /// Highest task and request ids reserved by earlier leaders.
    pub reserved: (TaskId, RequestId),
}

/// Ids reserved per [`TxnOp::ReserveIds`]: enough for a fan-out to 100k hosts without a second reservation.
const ID_BLOCK: u64 = 131_072;

/// The leader's view of the cluster.
pub struct LeaderCore {
    pub(super) epoch: u64,
    pub(super) timing: Timing,
    pub(super) hosts: HashMap<HostId, HostRecord>,
    pub(super) stacks: BTreeMap<String, StackRecord>,
    pub(super) blueprints: BTreeMap<String, BlueprintRecord>,
    /// Host components by `host/service/component` key.
    pub(super) components: BTreeMap<String, HostComponentRecord>,
    /// Unfinished requests, and finished ones until their records are written.
    pub(super) requests: BTreeMap<RequestId, RequestRecord>,
    /// Tasks of `requests`.
    pub(super) tasks: HashMap<TaskId, TaskRecord>,
    /// Unfinished tasks per (request, stage index): a stage is judged only when its count reaches zero, so a report
    /// costs O(1) however large the stage (rather than a scan of the stage per report).
    pub(super) open: HashMap<(RequestId, u32), usize>,
    pub(super) cursors: HashMap<HostId, CommandCursor>,
    pub(super) next_request: RequestId,
    pub(super) next_task: TaskId,
    /// Highest task and request ids reserved in the log: ids up to these may be used in commands.
    reserved: (TaskId, RequestId),
    /// Counter making each Configure command's `Nats-Msg-Id` unique within this epoch.
    pub(super) configure_seq: u64,
    /// Hosts whose component set changed in the batch being stepped: each gets one Configure at its end.
    pub(super) reconfigure: BTreeSet<HostId>,
    /// Last heartbeat or registration of every host that should be heartbeating (and only those: a host leaves it
    /// when declared lost), so a liveness check is one pass over plain timestamps. In memory only, as in Ambari:
    /// after a takeover every host gets a fresh window from then.
    last_seen: HashMap<HostId, Instant>,
    /// Arrivals the listener heard, including heartbeats it could not queue while the core was busy: a host whose
    /// own `last_seen` is past the deadline is looked up here before it is declared lost.
    heard: Heard,
    /// Wall-clock time of the takeover: task deadlines of a previous leader restart from here.
    pub(super) took_over_wall: UnixMillis,
    /// Final reports that ended their task from their early copy, awaiting the stored copy to ack.
    pub(super) early_finals: EarlyFinals,
}

/// How long an early final report waits for its stored copy before it is forgotten (the stored copy, should it come
/// later, is then refused as a report for a finished task; either way it is removed from the stream).
const EARLY_FINAL_MEMORY: Duration = Duration::from_secs(600);

/// Final task reports applied from their early copy (core NATS), by (task, attempt), so the copy the stream stored
/// is acked as a duplicate, quietly, even after the task's request ended and its tasks left memory — and so is a
/// redelivery of it (its ack wait can run out while a busy leader's queue holds it). Kept for a while rather than
/// until the stored copy arrives: a stored copy may never come (its store failed and the agent died).
#[derive(Debug, Default)]
pub struct EarlyFinals {
    keys: HashSet<(TaskId, u32)>,
    /// The same keys in the order they were remembered (an attempt ends once, so each key is in here once).
    order: VecDeque<(Instant, TaskId, u32)>,
}

impl EarlyFinals {
    /// Remembers that `attempt` of `task` ended from its early copy at `now`.
    pub fn insert(&mut self, task: TaskId, attempt: u32, now: Instant) {
        if self.keys.insert((task, attempt)) {
            self.order.push_back((now, task, attempt));
        }
    }

    /// Whether a stored copy of `attempt` of `task` is the duplicate of an applied early one.
    pub fn contains(&self, task: TaskId, attempt: u32) -> bool {
        self.keys.contains(&(task, attempt))
    }

    /// Forgets what was remembered longer than [`EARLY_FINAL_MEMORY`] before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, task, attempt)) = self.order.front() {
            if now.saturating_duration_since(at) < EARLY_FINAL_MEMORY {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&(task, attempt));
        }
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl LeaderCore {
    /// A core for the leader of `epoch`, starting from what is committed.
    pub fn new(epoch: u64, timing: Timing, loaded: Loaded, now: Instant, wall: UnixMillis) -> Self {
        let max_request = loaded.requests.iter().map(|r| r.id).max().unwrap_or(0);
        let mut open: HashMap<(RequestId, u32), usize> = HashMap::new();
        for t in loaded.tasks.iter().filter(|t| !t.status.is_terminal()) {
            *open.entry((t.request, t.stage)).or_default() += 1;
        }
        // Every host that should be heartbeating gets one full detection window from the takeover.
        let last_seen =
            loaded.hosts.iter().filter(|h| h.state.expects_heartbeats()).map(|h| (h.id.clone(), now)).collect();
        Self {
            epoch,
            timing,
            hosts: loaded.hosts.into_iter().map(|h| (h.id.clone(), h)).collect(),
            stacks: loaded.stacks.into_iter().map(|s| (s.def.name.clone(), s)).collect(),
            blueprints: loaded.blueprints.into_iter().map(|b| (b.def.name.clone(), b)).collect(),
            components: loaded.components.into_iter().map(|c| (c.key(), c)).collect(),
            requests: loaded.requests.into_iter().filter(|r| !r.status.is_terminal()).map(|r| (r.id, r)).collect(),
            tasks: loaded.tasks.into_iter().map(|t| (t.id, t)).collect(),
            open,
            cursors: loaded.cursors.into_iter().map(|c| (c.host.clone(), c)).collect(),
            // Above everything committed and everything any earlier leader reserved (and may have used in commands
            // it never committed).
            next_request: max_request.max(loaded.reserved.1) + 1,
            next_task: loaded.max_task.max(loaded.reserved.0) + 1,
            reserved: (0, 0),
            configure_seq: 0,
            reconfigure: BTreeSet::new(),
            last_seen,
            heard: Heard::default(),
            took_over_wall: wall,
            early_finals: EarlyFinals::default(),
        }
    }

    /// Redoes what a previous leader committed but may not have performed: tasks still PENDING in a stage that is
    /// already IN_PROGRESS (it died between storing their commands and committing) are dispatched again — the same
    /// `Nats-Msg-Id` makes a command it did store land once — and requests whose stage had ended move on.
    pub fn take_over(&mut self, wall: UnixMillis, out: &mut Output) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.resume(id, wall, out);
        }
    }

    /// Consults `heard` (the heartbeat listener's arrivals) before declaring a host lost.
    pub fn hear_from(&mut self, heard: Heard) {
        self.heard = heard;
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A host's record.
    pub fn host(&self, id: &HostId) -> Option<&HostRecord> {
        self.hosts.get(id)
    }

    /// Number of known hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Steps one input, appending to `out`.
    pub fn step(&mut self, input: Input, now: Instant, wall: UnixMillis, out: &mut Output) {
        match input {
            Input::Register { req, reply } => self.register(*req, reply, now, wall, out),
            Input::Heartbeat { hb, reply, at } => self.heartbeat(hb, reply, at, wall, out),
            Input::Report { report, ack } => self.report(*report, ack, now, wall, out),
            Input::Api { call, token } => {
                let result = self.api(call, wall, out);
                out.effects.push(Effect::Api { token, result });
            }
            Input::Delivered(stored) => {
                for (o, seq) in &stored {
                    self.delivered(o, *seq, out);
                }
            }
            Input::Tick => {
                self.check_liveness(now, wall, out);
                self.check_deadlines(wall, out);
                self.early_finals.expire(now);
            }
        }
    }

    /// Ends a batch: queues the Configure commands its changes call for. The shell calls it after stepping the
    /// batch's inputs and before publishing.
    pub fn end_batch(&mut self, out: &mut Output) {
        self.flush_configures(out);
    }

    /// The reservation to append before the batch's commands are published, if its ids go beyond (or close to)
    /// what is reserved. A new core always needs one: it starts with nothing reserved for itself.
    pub fn reserve_ids(&mut self) -> Option<TxnOp> {
        let (t, r) = self.reserved;
        if self.next_task + ID_BLOCK / 2 <= t && self.next_request + ID_BLOCK / 2 <= r {
            return None;
        }
        self.reserved = (self.next_task + ID_BLOCK, self.next_request + ID_BLOCK);
        Some(TxnOp::ReserveIds { tasks: self.reserved.0, requests: self.reserved.1 })
    }

    /// Records that `outgoing` was stored at stream sequence `seq`. Commands are stored while the core goes on
    /// stepping, so the task may have moved on by then: a task that has ended, or has been sent again as a newer
    /// attempt, leaves its command finished in the cursor (a restarted agent must never run it), and its
    /// `cmd_seq` untouched.
    pub fn delivered(&mut self, outgoing: &Outgoing, seq: u64, out: &mut Output) {
        let live = outgoing.task.and_then(|id| {
            let task = self.tasks.get_mut(&id)?;
            let attempt = match &outgoing.command.body {
                muster_schemas::commands::CommandBody::Execute(e) => e.attempt,
                _ => return None,
            };
            (!task.status.is_terminal() && task.attempt == attempt).then_some(task)
        });
        let cursor =
            self.cursors.entry(outgoing.host.clone()).or_insert_with(|| CommandCursor::new(outgoing.host.clone()));
        cursor.published(seq, live.is_some());
        out.dirty.insert(Dirty::Cursor(outgoing.host.clone()));
        if let Some(task) = live {
            task.cmd_seq = seq;
            out.dirty.insert(Dirty::Task(task.id));
        }
    }

    /// The txn ops of the dirty records, and forgets requests (and their tasks) that are finished: they are in redb.
    pub fn ops(&mut self, dirty: &BTreeSet<Dirty>) -> Vec<TxnOp> {
        let mut ops = Vec::with_capacity(dirty.len());
        for d in dirty {
            let op = match d {
                Dirty::Host(id) => self.hosts.get(id).map(|r| TxnOp::PutHost(Box::new(r.clone()))),
                Dirty::Component(k) => self.components.get(k).map(|r| TxnOp::PutHostComponent(Box::new(r.clone()))),
                Dirty::Stack(n) => self.stacks.get(n).map(|r| TxnOp::PutStack(Box::new(r.clone()))),
                Dirty::Blueprint(n) => self.blueprints.get(n).map(|r| TxnOp::PutBlueprint(Box::new(r.clone()))),
                Dirty::Request(id) => self.requests.get(id).map(|r| TxnOp::PutRequest(Box::new(r.clone()))),
                Dirty::Task(id) => self.tasks.get(id).map(|r| TxnOp::PutTask(Box::new(r.clone()))),
                Dirty::Cursor(h) => self.cursors.get(h).map(|r| TxnOp::PutCursor(Box::new(r.clone()))),
            };
            ops.extend(op);
        }
        let finished: Vec<RequestId> =
            self.requests.values().filter(|r| r.status.is_terminal()).map(|r| r.id).collect();
        for id in finished {
            if let Some(r) = self.requests.remove(&id) {
                for t in r.stages.iter().flat_map(|s| &s.tasks) {
                    self.tasks.remove(t);
                }
                for si in 0..r.stages.len() as u32 {
                    self.open.remove(&(id, si));
                }
            }
        }
        ops
    }

    // ---- hosts -------------------------------------------------------------------------------------------------

    fn register(
        &mut self,
        req: RegisterRequest,
        reply: Option<String>,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        let prev = self.hosts.get(&req.host).cloned();
        let from = prev.as_ref().map_or(HostState::Init, |r| r.state);
        let to = match transition(from, HostEvent::Register) {
            Ok(to) => to,
            // Registration is legal in every state (the FSM resets to INIT first); should the table ever change,
            // the refusal is counted and answered, never skipped silently.
            Err(e) => {
                warn!(host = %req.host, error = %e, "registration refused");
                out.effects.push(Effect::Count("fsm.illegal_transitions"));
                out.effects.push(Effect::Count("reg.rejected.illegal_transition"));
                if let Some(to) = reply {
                    out.effects.push(Effect::Reply {
                        to,
                        host: req.host.clone(),
                        body: Reply::Register(RegisterReply::Rejected {
                            code: muster_schemas::ErrorCode::IllegalTransition,
                            message: e.to_string(),
                            retry_after_ms: Some(1000),
                        }),
                    });
                }
                return;
            }
        };
        let host = req.host.clone();
        let record = HostRecord {
            id: req.host,
            state: to,
            facts: req.facts,
            labels: req.labels,
            agent_version: req.agent_version,
            agent_started_at: req.agent_started_at,
            first_registered_at: prev.as_ref().map_or(wall, |r| r.first_registered_at),
            registered_at: wall,
            registrations: prev.as_ref().map_or(0, |r| r.registrations) + 1,
            state_since: wall,
            problems: Vec::new(),
        };
        self.last_seen.insert(host.clone(), now);
        out.effects.push(Effect::Event(ChangeEvent::Host(HostChanged {
            host: host.clone(),
            from: prev.as_ref().map(|r| r.state),
            to,
            at: wall,
            reason: "registered".into(),
        })));
        self.put_host(record, out);
        out.effects.push(Effect::Count("reg.accepted"));
        // Hosts that register after a blueprint was applied are mapped now, and their gap is planned.
        let mapped = self.map_from_blueprints(&host, wall, out);
        if !mapped.is_empty() {
            self.reconcile(&mapped, &format!("blueprint components on new host {host}"), wall, out);
        }
        if let Some(to) = reply {
            let cursor = self.cursors.get(&host);
            out.effects.push(Effect::Reply {
                to,
                host: host.clone(),
                body: Reply::Register(RegisterReply::Accepted {
                    heartbeat_interval_ms: self.timing.interval.as_millis() as u64,
                    epoch: self.epoch,
                    server_time: wall,
                    components: self.component_specs(&host),
                    cursor: cursor.map_or(0, |c| c.cursor()),
                    done_after_cursor: cursor.map_or_else(Vec::new, |c| c.done.clone()),
                }),
            });
        }
    }

    fn heartbeat(&mut self, hb: Heartbeat, reply: Option<String>, at: Instant, wall: UnixMillis, out: &mut Output) {
        out.effects.push(Effect::Count("hb.received"));
        let Some(prev) = self.hosts.get(&hb.host) else {
            out.effects.push(Effect::Count("hb.rejected.unknown_host"));
            reregister(reply, hb.host, "host is not registered".into(), out);
            return;
        };
        let healthy = hb.health.is_healthy();
        let to = match transition(prev.state, HostEvent::Heartbeat { healthy }) {
            Ok(to) => to,
            Err(e) => {
                // Expected after HEARTBEAT_LOST (the agent is told to register again), and a lost fleet sends
                // thousands: counted, logged at debug.
                debug!(host = %hb.host, error = %e, "heartbeat refused");
                out.effects.push(Effect::Count("fsm.illegal_transitions"));
                out.effects.push(Effect::Count("hb.rejected.illegal_transition"));
                let reason = format!("host is {}; register again", prev.state);
                reregister(reply, hb.host, reason, out);
                return;
            }
        };
        match self.last_seen.get_mut(&hb.host) {
            Some(t) => *t = (*t).max(at),
            None => {
                self.last_seen.insert(hb.host.clone(), at);
            }
        }
        if to == prev.state && hb.health.problems == prev.problems {
            return;
        }
        let prev = prev.clone();
        if to != prev.state {
            out.effects.push(Effect::Event(ChangeEvent::Host(HostChanged {
                host: hb.host.clone(),
                from: Some(prev.state),
                to,
                at: wall,
                reason: if healthy { "status received".into() } else { hb.health.problems.join("; ") },
            })));
        }
        let state_since = if to == prev.state { prev.state_since } else { wall };
        self.put_host(HostRecord { state: to, state_since, problems: hb.health.problems, ..prev }, out);
    }

    fn check_liveness(&mut self, now: Instant, wall: UnixMillis, out: &mut Output) {
        let deadline = self.timing.deadline;
        let silent: Vec<(HostId, Duration)> = self
            .last_seen
            .iter()
            .map(|(id, seen)| (id, now.saturating_duration_since(*seen)))
            .filter(|(_, silent)| *silent > deadline)
            .map(|(id, silent)| (id.clone(), silent))
            .collect();
        if silent.is_empty() {
            return;
        }
        let mut lost = Vec::with_capacity(silent.len());
        let heard: Vec<Option<Instant>> = {
            let map = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            silent.iter().map(|(id, _)| map.get(id).copied()).collect()
        };
        for ((id, silent), heard) in silent.into_iter().zip(heard) {
            // Heard by the listener but not stepped yet (the queue was full): alive.
            if let Some(at) = heard.filter(|at| now.saturating_duration_since(*at) <= deadline) {
                self.last_seen.insert(id, at);
                continue;
            }
            self.last_seen.remove(&id);
            match self.hosts.get(&id) {
                Some(h) if h.state.expects_heartbeats() => lost.push((h.clone(), silent)),
                _ => {}
            }
        }
        for (prev, silent) in lost {
            let Ok(to) = transition(prev.state, HostEvent::HeartbeatLost) else { continue };
            out.effects.push(Effect::Count("hosts.lost"));
            out.effects.push(Effect::Event(ChangeEvent::Host(HostChanged {
                host: prev.id.clone(),
                from: Some(prev.state),
                to,
                at: wall,
                reason: format!("no heartbeat for {:.1} s", silent.as_secs_f64()),
            })));
            let id = prev.id.clone();
            self.put_host(HostRecord { state: to, state_since: wall, problems: Vec::new(), ..prev }, out);
            // Components of a lost host are UNKNOWN until its agent reports their status again.
            let keys = self.component_keys(&id);
            for k in keys {
                let _ = self.component_event(&k, ComponentEvent::HostLost, "host lost", wall, out);
            }
        }
    }

    pub(super) fn put_host(&mut self, record: HostRecord, out: &mut Output) {
        out.dirty.insert(Dirty::Host(record.id.clone()));
        self.hosts.insert(record.id.clone(), record);
    }
}

fn reregister(reply: Option<String>, host: HostId, reason: String, out: &mut Output) {
    if let Some(to) = reply {
        out.effects.push(Effect::Reply { to, host, body: Reply::Heartbeat(HeartbeatReply::Reregister { reason }) });
    }
}

/// A command envelope for `host`.
pub(super) fn command(host: &HostId, body: muster_schemas::commands::CommandBody) -> Command {
    Command { schema: PROTOCOL_VERSION, host: host.clone(), body }
}
