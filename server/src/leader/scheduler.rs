//! Requests and tasks, pure (Ambari's ActionScheduler): operator requests become stages of tasks, tasks are
//! dispatched as commands, reports end them, deadlines retry or time them out, a stage is judged when its last task
//! ends, and a request moves on or fails. Also the id allocator (ids are reserved in the log before any command
//! carries them) and every host's command cursor.
//!
//! The scheduler owns its state; what it reads or moves elsewhere in the core (hosts, stacks, components, the
//! batch's output) it is handed as a [`Cx`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use muster_schemas::api::{self, ApiError, RequestSpec};
use muster_schemas::cluster::{
    host_component_key, CommandCursor, ComponentState, DesiredState, RequestAction, RequestOptions, RequestRecord,
    StageRecord, TaskRecord, TaskStatus,
};
use muster_schemas::commands::{
    CommandBody, CommandSpec, Execution, RequestId, RoleCommand, TaskId, TaskPhase, TaskReport,
};
use muster_schemas::events::{RequestChanged, TaskChanged};
use muster_schemas::ids::{CommandMsgId, TaskAttempt};
use muster_schemas::{HostId, TxnOp, UnixMillis};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::components::Components;
use super::contract::{ChangeEvent, Dirty, Outgoing, Output};
use super::hosts::Hosts;
use super::select::select_hosts;
use super::stacks::Stacks;
use crate::fsm::component::ComponentEvent;
use crate::metrics::ServerCounter;
use crate::plan::{self, PlannedStage, Target};

/// Attempts per task: a task whose host does not report within its timeout is cancelled and sent once more.
const MAX_ATTEMPTS: u32 = 2;
/// Default timeout of an ad-hoc run.
const DEFAULT_RUN_TIMEOUT_SECS: u64 = 60;
/// Ids reserved per [`TxnOp::ReserveIds`]: enough for a fan-out to 100k hosts without a second reservation.
const ID_BLOCK: u64 = 131_072;
/// How long an early final report waits for its stored copy before it is forgotten (the stored copy, should it come
/// later, is then refused as a report for a finished task; either way it is removed from the stream).
const EARLY_FINAL_MEMORY: Duration = Duration::from_secs(600);

/// What a scheduler step reads or moves outside the scheduler: the rest of the core, and the batch's output.
pub struct Cx<'a> {
    /// Host records: who is up.
    pub hosts: &'a Hosts,
    /// Stack definitions: what a target names, how to plan it.
    pub stacks: &'a Stacks,
    /// Host components: moved by the tasks that work on them.
    pub components: &'a mut Components,
    /// What the batch produces.
    pub out: &'a mut Output,
}

/// Requests, their tasks, the id allocator and the command cursors.
pub struct Scheduler {
    /// Unfinished requests, and finished ones until their records are written.
    requests: BTreeMap<RequestId, RequestRecord>,
    /// Tasks of `requests`.
    tasks: HashMap<TaskId, TaskRecord>,
    /// Unfinished tasks per (request, stage index): a stage is judged only when its count reaches zero, so a report
    /// costs O(1) however large the stage (rather than a scan of the stage per report).
    open: HashMap<(RequestId, u32), usize>,
    /// Every host's command cursor.
    cursors: HashMap<HostId, CommandCursor>,
    next_request: RequestId,
    next_task: TaskId,
    /// Highest task and request ids reserved in the log: ids up to these may be used in commands.
    reserved: (TaskId, RequestId),
    /// Added to a task's timeout before the leader gives up waiting for its report.
    task_grace: Duration,
    /// Wall-clock time of the takeover: task deadlines of a previous leader restart from here.
    took_over_wall: UnixMillis,
    /// Final reports that ended their task from their early copy, awaiting the stored copy to ack.
    early_finals: EarlyFinals,
    /// The reply to every `request.create` that carried an idempotency key, by key: a repeat is answered with it.
    /// Rebuilt from the request records at takeover, so it outlives the leader that created the request.
    created: HashMap<String, api::RequestCreated>,
}

/// What the scheduler starts from.
pub struct Committed {
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
}

impl Scheduler {
    /// The scheduler of a new leader.
    pub fn new(committed: Committed, task_grace: Duration, wall: UnixMillis) -> Self {
        let max_request = committed.requests.iter().map(|r| r.id).max().unwrap_or(0);
        let created =
            committed.requests.iter().filter_map(|r| Some((r.idempotency_key.clone()?, created_reply(r)))).collect();
        let mut open: HashMap<(RequestId, u32), usize> = HashMap::new();
        for t in committed.tasks.iter().filter(|t| !t.status.is_terminal()) {
            *open.entry((t.request, t.stage)).or_default() += 1;
        }
        Self {
            requests: committed.requests.into_iter().filter(|r| !r.status.is_terminal()).map(|r| (r.id, r)).collect(),
            tasks: committed.tasks.into_iter().map(|t| (t.id, t)).collect(),
            open,
            cursors: committed.cursors.into_iter().map(|c| (c.host.clone(), c)).collect(),
            // Above everything committed and everything any earlier leader reserved (and may have used in commands
            // it never committed).
            next_request: max_request.max(committed.reserved.1) + 1,
            next_task: committed.max_task.max(committed.reserved.0) + 1,
            reserved: (0, 0),
            task_grace,
            took_over_wall: wall,
            early_finals: EarlyFinals::default(),
            created,
        }
    }

    /// A host's command cursor, if it was ever sent a command.
    pub fn cursor(&self, host: &HostId) -> Option<&CommandCursor> {
        self.cursors.get(host)
    }

    /// Redoes what a previous leader committed but may not have performed: tasks still PENDING in a stage that is
    /// already IN_PROGRESS (it died between storing their commands and committing) are dispatched again — the same
    /// `Nats-Msg-Id` makes a command it did store land once — and requests whose stage had ended move on.
    pub fn take_over(&mut self, wall: UnixMillis, cx: &mut Cx) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.resume(id, wall, cx);
        }
    }

    /// The reservation to append before the batch's commands are published, if its ids go beyond (or close to)
    /// what is reserved. A new leader always needs one: it starts with nothing reserved for itself.
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
        let live = outgoing.msg_id.execution().and_then(|sent| {
            let task = self.tasks.get_mut(&sent.task)?;
            (!task.status.is_terminal() && task.attempt == sent.attempt).then_some(task)
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

    /// The txn op writing request `id` as it is now.
    pub fn request_op(&self, id: RequestId) -> Option<TxnOp> {
        self.requests.get(&id).map(|r| TxnOp::PutRequest(Box::new(r.clone())))
    }

    /// The txn op writing task `id` as it is now.
    pub fn task_op(&self, id: TaskId) -> Option<TxnOp> {
        self.tasks.get(&id).map(|r| TxnOp::PutTask(Box::new(r.clone())))
    }

    /// The txn op writing `host`'s command cursor as it is now.
    pub fn cursor_op(&self, host: &HostId) -> Option<TxnOp> {
        self.cursors.get(host).map(|r| TxnOp::PutCursor(Box::new(r.clone())))
    }

    /// Forgets finished requests and their tasks; called once their records are in the batch's ops.
    pub fn forget_finished(&mut self) {
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
    }

    /// Forgets early finals remembered longer than they need to be.
    pub fn expire(&mut self, now: Instant) {
        self.early_finals.expire(now);
    }

    // ---- operator requests -------------------------------------------------------------------------------------

    /// Plans the tasks that close the gap between desired and current state of `keys` (lost hosts skipped).
    pub fn reconcile(&mut self, keys: &[String], why: &str, wall: UnixMillis, cx: &mut Cx) -> Option<RequestId> {
        let mut by_stack: BTreeMap<String, (Vec<Target>, Vec<Target>)> = BTreeMap::new();
        for k in keys {
            let Some(c) = cx.components.get(k) else { continue };
            if !cx.hosts.is_up(&c.host) {
                continue;
            }
            let Some(st) = cx.stacks.stack_of(&c.component.service) else { continue };
            let t = Target { host: c.host.clone(), component: c.component.clone(), state: c.state };
            let entry = by_stack.entry(st.def.name.clone()).or_default();
            match c.desired {
                DesiredState::Started if c.state != ComponentState::Started => entry.0.push(t),
                DesiredState::Installed
                    if matches!(
                        c.state,
                        ComponentState::Init | ComponentState::InstallFailed | ComponentState::Uninstalled
                    ) =>
                {
                    entry.1.push(t)
                }
                _ => {}
            }
        }
        let mut stages = Vec::new();
        for (name, (start, install)) in by_stack {
            let Some(st) = cx.stacks.stack(&name) else { continue };
            stages.extend(plan::plan(&st.def, &RequestAction::Install, &install, 0));
            stages.extend(plan::plan(&st.def, &RequestAction::Start, &start, 0));
        }
        if stages.is_empty() {
            return None;
        }
        Some(self.create_request(why.to_string(), stages, RequestOptions::default(), wall, cx))
    }

    /// Starts the request an operator asked for.
    pub fn create_from_spec(
        &mut self,
        spec: RequestSpec,
        wall: UnixMillis,
        cx: &mut Cx,
    ) -> Result<api::RequestCreated, ApiError> {
        if let Some(key) = &spec.idempotency_key {
            if key.len() > api::MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(ApiError::bad_request(format!(
                    "idempotency_key is longer than {} bytes",
                    api::MAX_IDEMPOTENCY_KEY_BYTES
                )));
            }
            if let Some(original) = self.created.get(key) {
                debug!(key, request = original.request, "request.create repeated: the original reply");
                cx.out.count(ServerCounter::RequestsRepeated);
                return Ok(original.clone());
            }
        }
        let options = RequestOptions {
            success_factor: spec.success_factor.unwrap_or(1.0),
            max_failures: spec.max_failures,
            batch: spec.batch,
        };
        if !(0.0..=1.0).contains(&options.success_factor) {
            return Err(ApiError::bad_request("success_factor must be between 0 and 1"));
        }
        let selected = select_hosts(cx.hosts, spec.hosts.as_deref())?;
        let action = spec.action;
        let (up, lost): (Vec<HostId>, Vec<HostId>) = selected.into_iter().partition(|h| cx.hosts.is_up(h));
        let skipped: Vec<String> = lost.iter().map(|h| h.to_string()).collect();
        let where_ = spec.hosts.clone().unwrap_or_else(|| "all hosts".into());
        let (description, stages) = if action == RequestAction::Run {
            if spec.argv.is_empty() || spec.argv[0].is_empty() {
                return Err(ApiError::bad_request("run needs a program: muster run --hosts SEL -- argv..."));
            }
            if up.is_empty() {
                return Err(ApiError::bad_request(format!("every host selected by {where_:?} is HEARTBEAT_LOST")));
            }
            let timeout = spec.timeout_secs.unwrap_or(DEFAULT_RUN_TIMEOUT_SECS).max(1);
            // Bounded like a stack's timeouts: the task's deadline adds it to times (found by fuzzing: an overflow).
            if timeout > crate::stack::MAX_TIMEOUT_SECS {
                let max = crate::stack::MAX_TIMEOUT_SECS;
                return Err(ApiError::bad_request(format!("timeout_secs must be at most {max} (a day)")));
            }
            let cmd = CommandSpec { argv: spec.argv.clone(), env: BTreeMap::new(), timeout_ms: timeout * 1000 };
            (format!("RUN {} on {where_}", spec.argv.join(" ")), plan::plan_run(&up, &cmd, spec.batch as usize))
        } else {
            let target = spec.target.clone().ok_or_else(|| ApiError::bad_request("which service or component?"))?;
            let (stack_name, comps) = cx.stacks.resolve_target(&target)?;
            let mut targets = Vec::new();
            for h in &up {
                for c in &comps {
                    if let Some(hc) = cx.components.get(&host_component_key(h, c)) {
                        targets.push(Target { host: h.clone(), component: c.clone(), state: hc.state });
                    }
                }
            }
            if targets.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "no host selected by {where_:?} has {target} (see muster components)"
                )));
            }
            let desired = match action {
                RequestAction::Install | RequestAction::Stop => Some(DesiredState::Installed),
                RequestAction::Start | RequestAction::Restart => Some(DesiredState::Started),
                RequestAction::Uninstall => Some(DesiredState::Uninstalled),
                RequestAction::Custom(_) | RequestAction::Run => None,
            };
            if let Some(d) = desired {
                let mut hosts = BTreeSet::new();
                for t in &targets {
                    let key = host_component_key(&t.host, &t.component);
                    let keep_started = d == DesiredState::Installed
                        && action == RequestAction::Install
                        && cx.components.get(&key).is_some_and(|c| c.desired == DesiredState::Started);
                    if !keep_started && cx.components.set_desired(&key, d, cx.out) {
                        hosts.insert(t.host.clone());
                    }
                }
                cx.components.reconfigure(hosts);
            }
            let Some(st) = cx.stacks.stack(&stack_name) else {
                return Err(ApiError::internal(format!("stack {stack_name} vanished while planning")));
            };
            let stages = plan::plan(&st.def, &action, &targets, spec.batch as usize);
            (format!("{} {target} on {where_}", plan::verb(&action)), stages)
        };
        let tasks: usize = stages.iter().map(|s| s.tasks.len()).sum();
        let n_stages = stages.len();
        let id = self.create_request(description, stages, options, wall, cx);
        let reply = api::RequestCreated {
            request: id,
            stages: n_stages as u64,
            tasks: tasks as u64,
            skipped_lost_hosts: skipped,
        };
        // Still here even if it already ended (nothing to do): it is forgotten only once its record is in the ops.
        if let Some(r) = self.requests.get_mut(&id) {
            r.skipped_lost_hosts = reply.skipped_lost_hosts.clone();
            r.idempotency_key = spec.idempotency_key.clone();
        }
        if let Some(key) = spec.idempotency_key {
            self.created.insert(key, reply.clone());
        }
        Ok(reply)
    }

    /// Cancels a running request: its open tasks are aborted (and cancelled on their hosts if they were sent).
    pub fn cancel(&mut self, id: RequestId, wall: UnixMillis, cx: &mut Cx) -> Result<api::RequestCancelled, ApiError> {
        let Some(req) = self.requests.get(&id) else {
            return Err(ApiError::not_found(format!("no running request {id} (unknown or already finished)")));
        };
        let open: Vec<TaskId> = req
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter().copied())
            .filter(|t| self.tasks.get(t).is_some_and(|t| !t.status.is_terminal()))
            .collect();
        // Finished first, so the aborts below do not move the request on (or end it as FAILED).
        self.finish_request(id, TaskStatus::Aborted, "cancelled by operator".into(), wall, cx.out);
        for t in &open {
            self.abort_task(*t, "cancelled by operator", wall, cx);
        }
        Ok(api::RequestCancelled { request: id, aborted_tasks: open.len() as u64 })
    }

    // ---- requests, stages, tasks -------------------------------------------------------------------------------

    fn create_request(
        &mut self,
        description: String,
        planned: Vec<PlannedStage>,
        options: RequestOptions,
        wall: UnixMillis,
        cx: &mut Cx,
    ) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        let mut stages = Vec::with_capacity(planned.len());
        for (si, ps) in planned.into_iter().enumerate() {
            let mut ids = Vec::with_capacity(ps.tasks.len());
            for pt in ps.tasks {
                let tid = self.next_task;
                self.next_task += 1;
                self.tasks.insert(
                    tid,
                    TaskRecord {
                        id: tid,
                        request: id,
                        stage: si as u32,
                        host: pt.host,
                        component: pt.component,
                        command: pt.command,
                        spec: pt.spec,
                        status: TaskStatus::Pending,
                        attempt: 0,
                        cmd_seq: 0,
                        queued_at: 0,
                        started_at: 0,
                        finished_at: 0,
                        exit_code: None,
                        stdout: String::new(),
                        stderr: String::new(),
                        detail: String::new(),
                    },
                );
                cx.out.dirty.insert(Dirty::Task(tid));
                ids.push(tid);
            }
            self.open.insert((id, si as u32), ids.len());
            stages.push(StageRecord { name: ps.name, tasks: ids, status: TaskStatus::Pending });
        }
        info!(request = id, %description, stages = stages.len(), "request created");
        self.requests.insert(
            id,
            RequestRecord {
                id,
                description,
                status: TaskStatus::InProgress,
                stages,
                current_stage: 0,
                options,
                created_at: wall,
                finished_at: 0,
                detail: String::new(),
                idempotency_key: None,
                skipped_lost_hosts: Vec::new(),
            },
        );
        cx.out.dirty.insert(Dirty::Request(id));
        cx.out.count(ServerCounter::RequestsCreated);
        self.advance(id, wall, cx);
        id
    }

    /// Re-dispatches the PENDING tasks of a request's running stage, then moves it on.
    fn resume(&mut self, id: RequestId, wall: UnixMillis, cx: &mut Cx) {
        let Some(req) = self.requests.get(&id) else { return };
        let Some(stage) = req.stages.get(req.current_stage as usize).cloned() else {
            return self.advance(id, wall, cx);
        };
        if stage.status == TaskStatus::InProgress {
            let status = |t: &TaskId| self.tasks.get(t).map(|t| (t.status, t.cmd_seq));
            let pending: Vec<TaskId> =
                stage.tasks.iter().copied().filter(|t| matches!(status(t), Some((TaskStatus::Pending, _)))).collect();
            // QUEUED but never recorded as stored: the previous leader died between committing and publishing (or
            // before recording where it published). Publish again under the same id: it lands once.
            let unsent: Vec<TaskId> =
                stage.tasks.iter().copied().filter(|t| matches!(status(t), Some((TaskStatus::Queued, 0)))).collect();
            for t in unsent {
                self.publish_attempt(t, cx.out);
            }
            for t in pending {
                self.dispatch(t, wall, cx);
            }
        }
        self.advance(id, wall, cx);
    }

    /// Moves a request on as far as it can go: dispatches its current stage, judges finished stages.
    fn advance(&mut self, id: RequestId, wall: UnixMillis, cx: &mut Cx) {
        loop {
            let Some(req) = self.requests.get(&id) else { return };
            if req.status.is_terminal() {
                return;
            }
            let si = req.current_stage as usize;
            let Some(stage) = req.stages.get(si) else {
                let detail = if req.stages.is_empty() { "nothing to do".to_string() } else { String::new() };
                self.finish_request(id, TaskStatus::Completed, detail, wall, cx.out);
                return;
            };
            if stage.status == TaskStatus::Pending {
                let task_ids = stage.tasks.clone();
                self.set_stage(id, si, TaskStatus::InProgress, cx.out);
                for t in &task_ids {
                    self.dispatch(*t, wall, cx);
                }
                // A task that ended at dispatch may already have moved (or ended) the request: look again.
                continue;
            }
            if self.open.get(&(id, si as u32)).is_some_and(|n| *n > 0) {
                return;
            }
            let task_ids = stage.tasks.clone();
            let statuses: Vec<TaskStatus> =
                task_ids.iter().filter_map(|t| self.tasks.get(t)).map(|t| t.status).collect();
            let unfinished = statuses.iter().filter(|s| !s.is_terminal()).count();
            if unfinished > 0 {
                // The counter and the records disagree: the records win (and it is logged: it is a bug).
                warn!(request = id, stage = si, unfinished, "open-task count out of step with the task records");
                self.open.insert((id, si as u32), unfinished);
                return;
            }
            let req = &self.requests[&id];
            let n = statuses.len();
            let failed: Vec<TaskId> = task_ids
                .iter()
                .copied()
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.status != TaskStatus::Completed))
                .collect();
            // Saturating: a stored success factor above 1 (from the log or a snapshot) allows no failure, never a
            // panic (found by fuzzing).
            let allowed = n.saturating_sub((req.options.success_factor * n as f64).ceil() as usize);
            let failed_before: usize = req.stages[..si]
                .iter()
                .flat_map(|s| &s.tasks)
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.status == TaskStatus::SkippedFailed))
                .count();
            let tolerated =
                failed.len() <= allowed || failed_before + failed.len() <= req.options.max_failures as usize;
            if failed.is_empty() || tolerated {
                for t in &failed {
                    if let Some(task) = self.tasks.get_mut(t) {
                        if matches!(task.status, TaskStatus::Failed | TaskStatus::TimedOut) {
                            task.status = TaskStatus::SkippedFailed;
                            cx.out.dirty.insert(Dirty::Task(*t));
                        }
                    }
                }
                self.set_stage(id, si, TaskStatus::Completed, cx.out);
                if let Some(r) = self.requests.get_mut(&id) {
                    r.current_stage += 1;
                }
                continue;
            }
            let stage_status =
                if failed.iter().all(|t| self.tasks.get(t).is_some_and(|t| t.status == TaskStatus::TimedOut)) {
                    TaskStatus::TimedOut
                } else {
                    TaskStatus::Failed
                };
            self.set_stage(id, si, stage_status, cx.out);
            let name = self.requests[&id].stages[si].name.clone();
            let rest: Vec<TaskId> = self.requests[&id].stages[si + 1..].iter().flat_map(|s| s.tasks.clone()).collect();
            let n_later = self.requests[&id].stages.len();
            for later in si + 1..n_later {
                self.set_stage(id, later, TaskStatus::Aborted, cx.out);
            }
            // Finished first: aborting the rest re-enters `advance`, which must find the request over.
            let detail = format!("stage {} ({name}) failed: {} of {n} tasks did not complete", si + 1, failed.len());
            self.finish_request(id, stage_status, detail, wall, cx.out);
            for t in rest {
                self.abort_task(t, "an earlier stage failed", wall, cx);
            }
            return;
        }
    }

    fn set_stage(&mut self, id: RequestId, si: usize, status: TaskStatus, out: &mut Output) {
        if let Some(s) = self.requests.get_mut(&id).and_then(|r| r.stages.get_mut(si)) {
            s.status = status;
            out.dirty.insert(Dirty::Request(id));
        }
    }

    fn finish_request(
        &mut self,
        id: RequestId,
        status: TaskStatus,
        detail: String,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        let Some(r) = self.requests.get_mut(&id) else { return };
        r.status = status;
        r.finished_at = wall;
        r.detail = detail.clone();
        let stage = r.current_stage;
        out.dirty.insert(Dirty::Request(id));
        out.count(match status {
            TaskStatus::Completed => ServerCounter::RequestsCompleted,
            TaskStatus::Aborted => ServerCounter::RequestsAborted,
            _ => ServerCounter::RequestsFailed,
        });
        info!(request = id, %status, %detail, "request finished");
        out.event(ChangeEvent::Request(RequestChanged { request: id, status, stage, at: wall, detail }));
    }

    /// Sends a PENDING task to its host (or ends it at once when that cannot work).
    fn dispatch(&mut self, id: TaskId, wall: UnixMillis, cx: &mut Cx) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.status != TaskStatus::Pending {
            return;
        }
        if !cx.hosts.is_up(&task.host) {
            let detail = format!("host {} is HEARTBEAT_LOST", task.host);
            self.end_task(id, TaskStatus::Aborted, detail, wall, cx);
            return;
        }
        if let (Some(c), Some(ev)) = (task.component.clone(), ComponentEvent::queued(&task.command)) {
            let key = host_component_key(&task.host, &c);
            let cmd = task.command.clone();
            // Only the gap is worked on: a component already where the command would take it (a status check saw
            // it running, an operator started it by hand) completes without a command.
            let state = cx.components.get(&key).map(|c| c.state);
            let already = matches!(
                (&cmd, state),
                (RoleCommand::Start, Some(ComponentState::Started))
                    | (RoleCommand::Stop, Some(ComponentState::Installed))
            );
            if let (true, Some(state)) = (already, state) {
                self.end_task(id, TaskStatus::Completed, format!("already {state}; nothing to do"), wall, cx);
                return;
            }
            if let Err(e) = cx.components.event(&key, ev, &format!("{cmd} queued"), wall, cx.out) {
                self.end_task(id, TaskStatus::Failed, format!("cannot {cmd} {c}: it is {}", e.from), wall, cx);
                return;
            }
        }
        self.send(id, wall, cx.out);
    }

    /// Queues the next attempt of a task: its command is published once the batch is committed.
    fn send(&mut self, id: TaskId, wall: UnixMillis, out: &mut Output) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        task.attempt += 1;
        task.status = TaskStatus::Queued;
        task.queued_at = wall;
        task.cmd_seq = 0;
        out.dirty.insert(Dirty::Task(id));
        out.count(ServerCounter::TasksQueued);
        let ev = task_event(task, wall);
        out.event(ChangeEvent::Task(ev));
        self.publish_attempt(id, out);
    }

    /// The command of a task's current attempt, to publish after commit.
    fn publish_attempt(&self, id: TaskId, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        let exec = Execution {
            task: task.id,
            attempt: task.attempt,
            request: task.request,
            component: task.component.clone(),
            command: task.command.clone(),
            spec: task.spec.clone(),
        };
        let msg_id = CommandMsgId::Execute(TaskAttempt { task: task.id, attempt: task.attempt });
        out.publish.push(Outgoing::new(&task.host, msg_id, CommandBody::Execute(exec)));
    }

    /// Ends a task that is not finished: tells the agent to cancel it if it was sent, then records `status`.
    fn abort_task(&mut self, id: TaskId, why: &str, wall: UnixMillis, cx: &mut Cx) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.status.is_terminal() {
            return;
        }
        if task.status != TaskStatus::Pending {
            self.cancel_attempt(id, cx.out);
        }
        self.end_task(id, TaskStatus::Aborted, why.to_string(), wall, cx);
    }

    fn cancel_attempt(&mut self, id: TaskId, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        let msg_id = CommandMsgId::Cancel(TaskAttempt { task: task.id, attempt: task.attempt });
        let body = CommandBody::Cancel { task: task.id, attempt: task.attempt };
        out.publish.push(Outgoing::new(&task.host, msg_id, body));
        let (host, seq) = (task.host.clone(), task.cmd_seq);
        if let (Some(c), true) = (self.cursors.get_mut(&host), seq > 0) {
            c.finish(seq);
            out.dirty.insert(Dirty::Cursor(host));
        }
    }

    /// Records a task's final status and what follows from it: component state, cursor, the request moving on.
    fn end_task(&mut self, id: TaskId, status: TaskStatus, detail: String, wall: UnixMillis, cx: &mut Cx) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        let was_sent = task.status != TaskStatus::Pending;
        if !task.status.is_terminal() {
            if let Some(n) = self.open.get_mut(&(task.request, task.stage)) {
                *n = n.saturating_sub(1);
            }
        }
        task.status = status;
        task.finished_at = wall;
        if !detail.is_empty() {
            task.detail = detail;
        }
        cx.out.dirty.insert(Dirty::Task(id));
        let (host, seq, request) = (task.host.clone(), task.cmd_seq, task.request);
        let component = task.component.clone();
        let cmd = task.command.clone();
        let ev = task_event(task, wall);
        cx.out.event(ChangeEvent::Task(ev));
        if seq > 0 {
            if let Some(c) = self.cursors.get_mut(&host) {
                c.finish(seq);
                cx.out.dirty.insert(Dirty::Cursor(host.clone()));
            }
        }
        let phase = match status {
            TaskStatus::Completed => TaskPhase::Completed,
            TaskStatus::TimedOut => TaskPhase::TimedOut,
            TaskStatus::Aborted => TaskPhase::Aborted,
            _ => TaskPhase::Failed,
        };
        // Only a sent command moved the component (INSTALLING, STARTING, ...); its end moves it back or on.
        if let (Some(c), Some(ev), true) = (component, ComponentEvent::finished(&cmd, phase), was_sent) {
            let key = host_component_key(&host, &c);
            let _ = cx.components.event(&key, ev, &format!("{cmd} {status}"), wall, cx.out);
        }
        self.advance(request, wall, cx);
    }

    // ---- reports -----------------------------------------------------------------------------------------------

    /// A task report from `host`. Its stored copy (`ack` set) is acked once its effect is committed; an early copy
    /// (`ack` `None`, final reports only) ends its task at once, or is ignored quietly when anything is off — the
    /// stored copy follows and gets the full checks, counters and warnings.
    pub fn task_report(
        &mut self,
        host: HostId,
        r: TaskReport,
        ack: Option<u64>,
        now: Instant,
        wall: UnixMillis,
        cx: &mut Cx,
    ) {
        let early = ack.is_none();
        if early && !r.phase.is_final() {
            return;
        }
        if !early && self.early_finals.contains(r.task, r.attempt) {
            // The stored copy of an applied early final, or a progress report of that attempt still in the
            // stream's backlog behind it.
            cx.out.count(if r.phase.is_final() { ServerCounter::ReportDuplicate } else { ServerCounter::ReportLate });
            cx.out.ack_settled(ack);
            return;
        }
        let refuse = |out: &mut Output, counter: ServerCounter, why: String| {
            if early {
                debug!(%host, task = r.task, "early copy of a report ignored: {why}");
                out.count(ServerCounter::ReportEarlyIgnored);
            } else {
                warn!(%host, task = r.task, "report refused: {why}");
                out.count(counter);
                out.ack(ack, true);
            }
        };
        let Some(task) = self.tasks.get_mut(&r.task) else {
            let why = format!("task {} is unknown or already finished", r.task);
            return refuse(cx.out, ServerCounter::ReportUnknownTask, why);
        };
        if task.host != host {
            let why = format!("task {} belongs to host {}", r.task, task.host);
            return refuse(cx.out, ServerCounter::ReportWrongHost, why);
        }
        if task.status.is_terminal() {
            if !early && r.attempt == task.attempt {
                match final_status(r.phase) {
                    // The stored copy of a final report whose early copy a previous leader applied.
                    Some(status) if status == task.status => {
                        cx.out.count(ServerCounter::ReportDuplicate);
                        cx.out.ack_settled(ack);
                        return;
                    }
                    // A progress report that was still in the stream's backlog when the final one was heard early.
                    None => {
                        cx.out.count(ServerCounter::ReportLate);
                        cx.out.ack_settled(ack);
                        return;
                    }
                    Some(_) => {}
                }
            }
            // A cancelled task's agent confirms the abort: expected, quiet.
            let counter = if task.status == TaskStatus::Aborted {
                ServerCounter::ReportLate
            } else {
                ServerCounter::ReportFinishedTask
            };
            return refuse(cx.out, counter, format!("task {} is already {}", r.task, task.status));
        }
        if r.attempt != task.attempt {
            let why = format!("attempt {} of task {} was superseded by {}", r.attempt, r.task, task.attempt);
            return refuse(cx.out, ServerCounter::ReportStaleAttempt, why);
        }
        if early {
            cx.out.count(ServerCounter::ReportEarly);
            self.early_finals.insert(r.task, r.attempt, now);
        } else {
            cx.out.ack(ack, false);
            cx.out.count(ServerCounter::ReportTask);
        }
        if r.started_at > 0 && task.started_at != r.started_at {
            task.started_at = r.started_at;
        }
        task.stdout = r.stdout;
        task.stderr = r.stderr;
        task.exit_code = r.exit_code;
        cx.out.dirty.insert(Dirty::Task(r.task));
        let Some(status) = final_status(r.phase) else {
            if task.status == TaskStatus::Queued {
                task.status = TaskStatus::InProgress;
                let ev = task_event(task, wall);
                cx.out.event(ChangeEvent::Task(ev));
            }
            return;
        };
        let detail = match r.phase {
            TaskPhase::TimedOut => format!("killed after {} s", task.spec.timeout_ms / 1000),
            TaskPhase::Aborted => "aborted by the agent".into(),
            _ => String::new(),
        };
        let wall = r.finished_at.unwrap_or(wall);
        self.end_task(r.task, status, detail, wall, cx);
    }

    // ---- deadlines ---------------------------------------------------------------------------------------------

    /// Tasks whose host has not reported within their timeout + grace: cancelled and re-sent once, then TIMEDOUT
    /// (ABORTED if the host is lost).
    pub fn check_deadlines(&mut self, wall: UnixMillis, cx: &mut Cx) {
        let grace = self.task_grace.as_millis() as u64;
        let late: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| matches!(t.status, TaskStatus::Queued | TaskStatus::InProgress))
            .filter(|t| wall > t.queued_at.max(self.took_over_wall) + t.spec.timeout_ms + grace)
            .map(|t| t.id)
            .collect();
        for id in late {
            let Some(t) = self.tasks.get(&id) else { continue };
            let (host, attempt, timeout) = (t.host.clone(), t.attempt, t.spec.timeout_ms / 1000);
            if !cx.hosts.is_up(&host) {
                self.abort_task(id, &format!("host {host} was lost during the task"), wall, cx);
            } else if attempt < MAX_ATTEMPTS {
                warn!(task = id, %host, attempt, "no result in time; cancelling and re-sending");
                self.cancel_attempt(id, cx.out);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.detail = format!("attempt {attempt} got no result within {timeout} s; re-sent");
                }
                cx.out.count(ServerCounter::TasksRetried);
                self.send(id, wall, cx.out);
            } else {
                self.cancel_attempt(id, cx.out);
                let detail = format!("no result within {timeout} s after {attempt} attempts");
                self.end_task(id, TaskStatus::TimedOut, detail, wall, cx);
            }
        }
    }
}

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

    /// Forgets what was remembered longer than `EARLY_FINAL_MEMORY` before `now`.
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

fn task_event(t: &TaskRecord, wall: UnixMillis) -> TaskChanged {
    let what = match &t.component {
        Some(c) => format!("{} {c}", t.command),
        None => format!("{} {}", t.command, t.spec.argv.join(" ")),
    };
    TaskChanged {
        task: t.id,
        request: t.request,
        host: t.host.clone(),
        what,
        status: t.status,
        attempt: t.attempt,
        at: wall,
    }
}

/// The status a final report ends its task with (`None` for progress).
fn final_status(phase: TaskPhase) -> Option<TaskStatus> {
    match phase {
        TaskPhase::InProgress => None,
        TaskPhase::Completed => Some(TaskStatus::Completed),
        TaskPhase::Failed => Some(TaskStatus::Failed),
        TaskPhase::TimedOut => Some(TaskStatus::TimedOut),
        TaskPhase::Aborted => Some(TaskStatus::Aborted),
    }
}

/// The reply `request.create` gave for `r`, rebuilt from its record.
fn created_reply(r: &RequestRecord) -> api::RequestCreated {
    api::RequestCreated {
        request: r.id,
        stages: r.stages.len() as u64,
        tasks: r.stages.iter().map(|s| s.tasks.len() as u64).sum(),
        skipped_lost_hosts: r.skipped_lost_hosts.clone(),
    }
}

#[cfg(test)]
impl Scheduler {
    /// Test access: the request in memory, if it is still there.
    pub fn request(&self, id: RequestId) -> Option<&RequestRecord> {
        self.requests.get(&id)
    }

    /// Test access: the tasks in memory.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.values()
    }

    /// Test access: the requests in memory.
    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.requests.values()
    }

    /// Test access: the next ids to allocate.
    pub fn next_ids(&self) -> (TaskId, RequestId) {
        (self.next_task, self.next_request)
    }

    /// Test access: how many early finals are remembered.
    pub fn early_finals(&self) -> usize {
        self.early_finals.len()
    }
}
