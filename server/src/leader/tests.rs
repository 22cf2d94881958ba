//! Unit tests of the pure leader core: hosts, stacks, blueprints, requests, reports, deadlines, cancellation.
//! Each test drives [`LeaderCore`] through [`drive`], the same code the leader runs, with an in-memory [`Shell`]:
//! commits are instant, stored commands and suspects' arrivals come back as inputs at once.

use std::collections::HashMap;
use std::time::Duration;

use muster_schemas::api::{ApiError, BlueprintApplied, RequestCancelled, RequestCreated, RequestSpec, WriteReply};
use muster_schemas::cluster::{ComponentState, RequestAction, TaskStatus};
use muster_schemas::commands::{CommandBody, ComponentRef, ComponentStatus, Report, ReportBody, TaskPhase, TaskReport};
use muster_schemas::{
    Health, Heartbeat, HeartbeatReply, HostFacts, HostId, HostState, RegisterReply, RegisterRequest, TxnOp, UnixMillis,
    PROTOCOL_VERSION,
};
use tokio::time::Instant;

use super::contract::*;
use super::core::LeaderCore;
use super::driver::{drive, Shell};
use crate::status::LastSeen;
use muster_nats::counters::Counter;

const SEC: Duration = Duration::from_secs(1);

const STACK: &str = r#"
name = "toy"
[services.toy.components.master]
category = "daemon"
install = { script = "true" }
start = { script = "true", timeout_secs = 5 }
stop = { script = "true" }
status = { script = "true" }
[services.toy.components.worker]
category = "daemon"
depends_on = ["master"]
install = { script = "true" }
start = { script = "true", timeout_secs = 5 }
stop = { script = "true" }
status = { script = "true" }
"#;

const BLUEPRINT: &str = r#"
name = "bp"
stack = "toy"
[host_groups.masters]
hosts = ["h1"]
components = ["master"]
[host_groups.workers]
hosts = ["h*"]
components = ["worker"]
"#;

fn id(s: &str) -> HostId {
    HostId::new(s).unwrap()
}

/// The unit tests' shell: what the leader's NATS shell does, in memory.
#[derive(Default)]
struct TestShell {
    /// Fake stream sequence of stored commands.
    seq: u64,
    /// Every command stored, in order.
    sent: Vec<Outgoing>,
    /// Stored but not reported back yet (while `hold` is set): the publisher is slower than the core.
    held: Vec<Outgoing>,
    hold: bool,
    /// Last written status of every request.
    written: HashMap<u64, TaskStatus>,
    /// The arrival record, written by the tests as the heartbeat listener would.
    last_seen: LastSeen,
    /// Inputs the shell owes the core (stored commands, suspects' arrivals).
    follow_ups: Vec<Input>,
    /// What the batches since the last [`Harness::step`] committed and performed.
    ops: Vec<TxnOp>,
    effects: Vec<Effect>,
    /// Commits asked for (barriers included).
    commits: usize,
    /// Another leader took the log: every commit is fenced.
    deposed: bool,
}

/// The test shell's commit failure: another leader appended.
#[derive(Debug)]
struct Fenced;

impl Shell for TestShell {
    type Error = Fenced;

    async fn commit(&mut self, ops: Vec<TxnOp>, _wall: UnixMillis) -> Result<(), Fenced> {
        self.commits += 1;
        if self.deposed {
            return Err(Fenced);
        }
        for op in &ops {
            if let TxnOp::PutRequest(r) = op {
                self.written.insert(r.id, r.status);
            }
        }
        self.ops.extend(ops);
        Ok(())
    }

    async fn perform(&mut self, effects: Vec<Effect>) {
        self.effects.extend(effects);
    }

    fn publish(&mut self, commands: Vec<Outgoing>) {
        if self.hold {
            self.held.extend(commands);
            return;
        }
        let stored = commands
            .into_iter()
            .map(|o| {
                self.seq += 1;
                self.sent.push(o.clone());
                (o, self.seq)
            })
            .collect();
        self.follow_ups.push(Input::Delivered(stored));
    }

    fn look_up(&mut self, suspects: Vec<HostId>) {
        self.follow_ups.push(Input::Heard(self.last_seen.look_up(suspects)));
    }
}

/// What a step committed and performed, its follow-up batches included.
struct Outcome {
    ops: Vec<TxnOp>,
    effects: Vec<Effect>,
}

/// A core plus a fake clock, stepping inputs through [`drive`] as the leader does.
struct Harness {
    core: LeaderCore,
    shell: TestShell,
    t0: Instant,
    now: Instant,
    wall: u64,
    next_token: u64,
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: 2 * SEC };
        Self::with_core(LeaderCore::new(7, timing, Loaded::default(), t0, 1_000), t0, 1_000)
    }

    fn with_core(core: LeaderCore, now: Instant, wall: u64) -> Self {
        Self { core, shell: TestShell::default(), t0: now, now, wall, next_token: 0 }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d.as_millis() as u64;
    }

    /// Steps one batch, then the follow-up batches it causes, until the shell owes the core nothing.
    fn step_batch(&mut self, batch: Vec<Input>) -> Outcome {
        let mut batch = batch;
        while !batch.is_empty() {
            let driven = drive(&mut self.core, &mut self.shell, batch, self.now, self.wall);
            // The test shell's futures never wait. A fenced commit ends the leadership: nothing follows.
            if futures::executor::block_on(driven).is_err() {
                break;
            }
            batch = std::mem::take(&mut self.shell.follow_ups);
        }
        Outcome { ops: std::mem::take(&mut self.shell.ops), effects: std::mem::take(&mut self.shell.effects) }
    }

    fn step(&mut self, input: Input) -> Outcome {
        self.step_batch(vec![input])
    }

    fn register(&mut self, host: &str) -> Outcome {
        self.step(Input::Register {
            req: Box::new(RegisterRequest {
                schema: PROTOCOL_VERSION,
                host: id(host),
                facts: HostFacts { cpu_count: 2, ..Default::default() },
                labels: Default::default(),
                agent_version: "1".into(),
                agent_started_at: 5,
                health: Health::default(),
            }),
            reply: Some("inbox".into()),
        })
    }

    fn beat(&mut self, host: &str, problems: &[&str]) -> Outcome {
        self.shell.last_seen.touch(&id(host), self.now);
        self.step(Input::Heartbeat {
            hb: Heartbeat {
                schema: PROTOCOL_VERSION,
                host: id(host),
                seq: 1,
                sent_at: 0,
                health: Health { problems: problems.iter().map(|s| s.to_string()).collect() },
            },
            reply: Some("ctl".into()),
        })
    }

    fn api(&mut self, call: ApiCall) -> ApiResult {
        self.next_token += 1;
        let token = self.next_token;
        let out = self.step(Input::Api { call, token });
        out.effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Api { token: t, result } if t == token => Some(result),
                _ => None,
            })
            .expect("an API answer")
    }

    /// An operator call as one batch, whatever it performs.
    fn api_outcome(&mut self, call: ApiCall) -> Outcome {
        self.next_token += 1;
        self.step(Input::Api { call, token: self.next_token })
    }

    fn request(&mut self, action: &str, target: Option<&str>, hosts: Option<&str>) -> Result<RequestCreated, ApiError> {
        let r = self.api(ApiCall::Request(RequestSpec {
            action: action.parse().expect("a known action"),
            target: target.map(String::from),
            hosts: hosts.map(String::from),
            argv: if action == "run" { vec!["uptime".into()] } else { vec![] },
            timeout_secs: None,
            batch: 0,
            max_failures: 0,
            success_factor: None,
            idempotency_key: None,
        }));
        r.map(|r| match r {
            WriteReply::RequestCreated(c) => c,
            other => panic!("not a request: {other:?}"),
        })
    }

    fn report(&mut self, host: &str, task: u64, attempt: u32, phase: TaskPhase) -> Outcome {
        self.report_copy(host, task, attempt, phase, false)
    }

    /// A report as the stream delivers it (`early` false: with an ack token) or its early copy from the core
    /// subscription (no token).
    fn report_copy(&mut self, host: &str, task: u64, attempt: u32, phase: TaskPhase, early: bool) -> Outcome {
        self.next_token += 1;
        let report = Report {
            schema: PROTOCOL_VERSION,
            host: id(host),
            sent_at: self.wall,
            body: ReportBody::Task(TaskReport {
                task,
                attempt,
                phase,
                report_seq: 0,
                started_at: self.wall,
                finished_at: phase.is_final().then_some(self.wall),
                exit_code: match phase {
                    TaskPhase::Completed => Some(0),
                    TaskPhase::Failed => Some(1),
                    _ => None,
                },
                stdout: "out".into(),
                stderr: String::new(),
            }),
        };
        let ack = (!early).then_some(self.next_token);
        self.step(Input::Report { report: Box::new(report), ack })
    }

    /// Executions sent and not yet reported, as (host, task, attempt).
    fn executions(&self) -> Vec<(String, u64, u32)> {
        self.shell
            .sent
            .iter()
            .filter_map(|o| match &o.command.body {
                CommandBody::Execute(e) => Some((o.host.to_string(), e.task, e.attempt)),
                _ => None,
            })
            .collect()
    }

    /// Completes every execution sent so far that is still open, one batch per report.
    fn complete_all(&mut self) {
        for (host, task, attempt) in self.executions() {
            self.report(&host, task, attempt, TaskPhase::Completed);
        }
    }

    fn state(&self, host: &str, comp: &str) -> ComponentState {
        let key = muster_schemas::cluster::host_component_key(
            &id(host),
            &ComponentRef { service: "toy".into(), component: comp.into() },
        );
        self.core.components().get(&key).expect("mapped").state
    }

    fn request_status(&self, r: u64) -> TaskStatus {
        self.shell.written[&r]
    }

    /// Sets up three healthy hosts, the toy stack and the blueprint; returns the blueprint's request id.
    /// Registers `hosts` and heartbeats each once (HEALTHY).
    fn healthy(&mut self, hosts: impl IntoIterator<Item = String>) {
        for h in hosts {
            self.register(&h);
            self.beat(&h, &[]);
        }
    }

    fn cluster(&mut self) -> u64 {
        self.healthy(["h1", "h2", "h3"].map(String::from));
        self.api(ApiCall::ApplyStack { source: STACK.into() }).unwrap();
        match self.api(ApiCall::ApplyBlueprint { source: BLUEPRINT.into() }) {
            Ok(WriteReply::BlueprintApplied(BlueprintApplied { request: Some(r), .. })) => r,
            other => panic!("blueprint plans a request: {other:?}"),
        }
    }
}

fn acked(out: &Outcome, term: bool) -> bool {
    out.effects.iter().any(|e| matches!(e, Effect::Ack { term: t, .. } if *t == term))
}

/// Whether performing `e` tells anyone outside the process something (all but counters).
fn tells(e: &Effect) -> bool {
    !matches!(e, Effect::Count(_))
}

fn counted(out: &Outcome, name: &str) -> bool {
    out.effects.iter().any(|e| matches!(e, Effect::Count(c) if c.name() == name))
}

#[tokio::test(start_paused = true)]
async fn register_then_heartbeat_reaches_healthy() {
    let mut h = Harness::new();
    let out = h.register("a");
    assert!(out.effects.iter().any(|e| matches!(
        e,
        Effect::Reply {
            body: Reply::Register(RegisterReply::Accepted { epoch: 7, heartbeat_interval_ms: 1000, .. }),
            ..
        }
    )));
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::WaitingForHostStatusUpdates);
    h.beat("a", &[]);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::Healthy);
    h.beat("a", &["disk / 99% full"]);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_registration_is_answered_from_the_record_without_a_commit() {
    let mut h = Harness::new();
    let first = h.register("a");
    assert!(first.ops.iter().any(|op| matches!(op, TxnOp::PutHost(r) if r.id == id("a"))));
    // The agent's answer came too late: it registers again, the same process with the same facts.
    h.advance(SEC);
    let repeat = h.register("a");
    assert!(counted(&repeat, "reg.repeated"));
    assert!(!repeat.ops.iter().any(|op| matches!(op, TxnOp::PutHost(_))), "{:?}", repeat.ops);
    assert!(!repeat.effects.iter().any(|e| matches!(e, Effect::Event(_))));
    assert!(repeat
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Reply { body: Reply::Register(RegisterReply::Accepted { epoch: 7, .. }), .. })));
    assert_eq!(h.core.host(&id("a")).unwrap().registrations, 1);
    // The watch restarted: not lost a deadline after the first registration, lost a deadline after the repeat.
    h.advance(2 * SEC + SEC / 2);
    h.step(Input::Tick);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::WaitingForHostStatusUpdates);
    // Once the host has heartbeated, registering again is a new registration (committed).
    h.beat("a", &[]);
    let again = h.register("a");
    assert!(again.ops.iter().any(|op| matches!(op, TxnOp::PutHost(_))));
    assert!(!counted(&again, "reg.repeated"));
    assert_eq!(h.core.host(&id("a")).unwrap().registrations, 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_and_lost_hosts_are_told_to_register() {
    let mut h = Harness::new();
    let out = h.beat("ghost", &[]);
    assert!(counted(&out, "hb.rejected.unknown_host"));
    assert!(out
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Reply { body: Reply::Heartbeat(HeartbeatReply::Reregister { .. }), .. })));
    assert_eq!(h.core.host_count(), 0);

    h.register("a");
    h.beat("a", &[]);
    h.advance(3 * SEC + SEC / 10);
    assert!(counted(&h.step(Input::Tick), "hosts.lost"));
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::HeartbeatLost);
    assert!(counted(&h.beat("a", &[]), "fsm.illegal_transitions"));
    h.register("a");
    h.beat("a", &[]);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::Healthy);
    assert_eq!(h.core.host(&id("a")).unwrap().registrations, 2);
}

#[tokio::test(start_paused = true)]
async fn liveness_waits_one_window_after_takeover() {
    let mut h = Harness::new();
    h.register("a");
    h.beat("a", &[]);
    h.advance(3 * SEC);
    assert!(!counted(&h.step(Input::Tick), "hosts.lost"), "not lost at exactly the deadline");
    let rec = h.core.host(&id("a")).cloned().unwrap();
    let t1 = h.t0 + 100 * SEC;
    let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: SEC };
    let core = LeaderCore::new(8, timing, Loaded { hosts: vec![rec], ..Default::default() }, t1, 0);
    let mut next = Harness::with_core(core, t1, 0);
    next.advance(2 * SEC);
    assert!(next.step(Input::Tick).ops.is_empty());
    next.advance(2 * SEC);
    let out = next.step(Input::Tick);
    assert_eq!(out.ops.iter().filter(|op| matches!(op, TxnOp::PutHost(_))).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn liveness_counts_from_arrival_not_from_when_the_core_gets_to_it() {
    let mut h = Harness::new();
    h.register("a");
    h.register("b");
    let heard = h.now;
    h.advance(3 * SEC + SEC / 10);
    // Both beats were heard at `heard` but the core only steps them now: "a"'s silence since then is past the
    // deadline, "b" beat again later and is fine.
    let mut batch = Vec::new();
    for (host, at) in [("a", heard), ("b", heard), ("b", heard + 2 * SEC)] {
        h.shell.last_seen.touch(&id(host), at);
        let hb = Heartbeat { schema: PROTOCOL_VERSION, host: id(host), seq: 1, sent_at: 0, health: Health::default() };
        batch.push(Input::Heartbeat { hb, reply: None });
    }
    batch.push(Input::Tick);
    h.step_batch(batch);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::HeartbeatLost);
    assert_eq!(h.core.host(&id("b")).unwrap().state, HostState::Healthy);
    // A lost host is no longer watched: later ticks do not declare it again.
    h.advance(10 * SEC);
    h.beat("b", &[]);
    assert!(!counted(&h.step(Input::Tick), "hosts.lost"));
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_heard_but_not_yet_stepped_keeps_its_host_alive() {
    let mut h = Harness::new();
    h.register("a");
    h.register("b");
    // The listener heard "a" 2 s ago but could not queue the beat (the core was busy); "b" nothing at all.
    h.advance(3 * SEC + SEC / 10);
    h.shell.last_seen.touch(&id("a"), h.now - 2 * SEC);
    h.step(Input::Tick);
    assert_ne!(h.core.host(&id("a")).unwrap().state, HostState::HeartbeatLost);
    assert_eq!(h.core.host(&id("b")).unwrap().state, HostState::HeartbeatLost);
    // Counted from that arrival: silent 3 s after it, "a" is lost too.
    h.advance(SEC + SEC / 10);
    h.step(Input::Tick);
    assert_eq!(h.core.host(&id("a")).unwrap().state, HostState::HeartbeatLost);
}

#[tokio::test(start_paused = true)]
async fn a_stage_ends_exactly_when_its_last_task_reports() {
    let mut h = Harness::new();
    h.healthy((0..50).map(|i| format!("h{i}")));
    let request = h.request("run", None, None).unwrap().request;
    let tasks = h.executions();
    assert_eq!(tasks.len(), 50);
    // Out of order, one failure (not tolerated): the request ends, FAILED, only with the last report.
    for (i, (host, task, attempt)) in tasks.iter().rev().enumerate() {
        assert_eq!(h.shell.written.get(&request), Some(&TaskStatus::InProgress), "ended before report {i}");
        let phase = if i == 10 { TaskPhase::Failed } else { TaskPhase::Completed };
        h.report(host, *task, *attempt, phase);
    }
    assert_eq!(h.shell.written.get(&request), Some(&TaskStatus::Failed));
}

#[tokio::test(start_paused = true)]
async fn a_command_stored_after_its_task_ended_is_finished_in_the_cursor() {
    let mut h = Harness::new();
    h.register("a");
    h.beat("a", &[]);
    // The shell stores commands while the core goes on: step the request without delivering its command.
    h.shell.hold = true;
    let spec = RequestSpec {
        action: RequestAction::Run,
        target: None,
        hosts: None,
        argv: vec!["true".into()],
        timeout_secs: None,
        batch: 0,
        max_failures: 0,
        success_factor: None,
        idempotency_key: None,
    };
    h.step(Input::Api { call: ApiCall::Request(spec), token: 1 });
    let outgoing = std::mem::take(&mut h.shell.held);
    let task = match &outgoing[0].command.body {
        CommandBody::Execute(e) => e.task,
        other => panic!("{other:?}"),
    };
    // The agent (live subscription) ran it and reported before the store's ack came back.
    h.report("a", task, 1, TaskPhase::Completed);
    let out = h.step(Input::Delivered(vec![(outgoing[0].clone(), 42)]));
    let cursor = out
        .ops
        .iter()
        .find_map(|op| match op {
            TxnOp::PutCursor(c) => Some(c.clone()),
            _ => None,
        })
        .expect("the cursor is written");
    assert!(cursor.pending.is_empty(), "a finished task's command must not be pending: {cursor:?}");
    assert_eq!(cursor.cursor(), 42, "a restarted agent must not run it again");
}

#[tokio::test(start_paused = true)]
async fn blueprint_installs_then_starts_in_dependency_order() {
    let mut h = Harness::new();
    let r = h.cluster();
    // Stage 1: INSTALL everything (4 tasks: master on h1, worker on h1..h3).
    assert_eq!(h.executions().len(), 4);
    assert_eq!(h.state("h1", "master"), ComponentState::Installing);
    let first = h.executions();
    for (host, task, attempt) in &first {
        h.report(host, *task, *attempt, TaskPhase::InProgress);
    }
    h.complete_all();
    assert_eq!(h.state("h2", "worker"), ComponentState::Installed);
    // Stage 2: START master only; workers wait for it.
    let started: Vec<_> = h.executions()[4..].to_vec();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].0, "h1");
    assert_eq!(h.state("h1", "master"), ComponentState::Starting);
    assert_eq!(h.state("h2", "worker"), ComponentState::Installed);
    h.report("h1", started[0].1, 1, TaskPhase::Completed);
    // Stage 3: START worker everywhere.
    assert_eq!(h.executions().len(), 8);
    let workers: Vec<_> = h.executions()[5..].to_vec();
    for (host, task, attempt) in workers {
        h.report(&host, task, attempt, TaskPhase::Completed);
    }
    assert_eq!(h.request_status(r), TaskStatus::Completed);
    assert_eq!(h.state("h3", "worker"), ComponentState::Started);
    // The cursor moved past every finished command.
    let c = h.core.scheduler().cursor(&id("h1")).expect("h1 was sent commands");
    assert_eq!((c.cursor(), c.pending.len()), (c.high, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_stage_aborts_the_rest_of_the_request() {
    let mut h = Harness::new();
    let r = h.cluster();
    let installs = h.executions();
    let (host, task, _) = installs.iter().find(|(h, _, _)| h == "h1").cloned().unwrap();
    h.report(&host, task, 1, TaskPhase::Failed);
    for (host, task, attempt) in installs.iter().filter(|(_, t, _)| *t != task) {
        h.report(host, *task, *attempt, TaskPhase::Completed);
    }
    assert_eq!(h.request_status(r), TaskStatus::Failed);
    assert_eq!(h.executions().len(), 4, "no START was sent");
    let req = h.core.scheduler().request(r);
    assert!(req.is_none(), "finished requests leave memory once written");
}

#[tokio::test(start_paused = true)]
async fn reports_for_unknown_foreign_or_finished_tasks_change_nothing() {
    let mut h = Harness::new();
    h.cluster();
    let (host, task, attempt) = h.executions()[0].clone();
    let other = if host == "h1" { "h2" } else { "h1" };
    let out = h.report(other, task, attempt, TaskPhase::Completed);
    assert!(counted(&out, "report.rejected.wrong_host") && acked(&out, true) && out.ops.is_empty());
    let out = h.report(&host, 9_999, 1, TaskPhase::Completed);
    assert!(counted(&out, "report.rejected.unknown_task") && out.ops.is_empty());
    let out = h.report(&host, task, attempt, TaskPhase::Completed);
    assert!(acked(&out, false) && !out.ops.is_empty());
    let out = h.report(&host, task, attempt, TaskPhase::Completed);
    assert!(counted(&out, "report.duplicate") && acked(&out, false) && out.ops.is_empty(), "completes once");
    let out = h.report(&host, task, attempt, TaskPhase::Failed);
    assert!(counted(&out, "report.rejected.finished_task") && acked(&out, true) && out.ops.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_early_final_report_ends_its_task_and_its_stored_copy_is_acked_as_a_duplicate() {
    let mut h = Harness::new();
    h.healthy((0..3).map(|i| format!("h{i}")));
    let request = h.request("run", None, None).unwrap().request;
    let tasks = h.executions();
    // Early copies: progress is left to the stream; a final one ends its task, with nothing to ack.
    let (host, task, attempt) = tasks[0].clone();
    let out = h.report_copy(&host, task, attempt, TaskPhase::InProgress, true);
    assert!(out.ops.is_empty() && out.effects.is_empty());
    let out = h.report_copy(&host, task, attempt, TaskPhase::Completed, true);
    assert!(counted(&out, "report.early") && !out.ops.is_empty());
    assert!(!out.effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    // Its retry's early copy changes nothing and is not refused loudly.
    let out = h.report_copy(&host, task, attempt, TaskPhase::Completed, true);
    assert!(counted(&out, "report.early.ignored") && out.ops.is_empty());
    assert!(!out.effects.iter().any(|e| matches!(e, Effect::Ack { .. })));
    // A progress report of that attempt still in the stream's backlog is acked quietly.
    let out = h.report(&host, task, attempt, TaskPhase::InProgress);
    assert!(counted(&out, "report.late") && acked(&out, false) && out.ops.is_empty());
    // The rest end the request from early copies alone.
    for (host, task, attempt) in &tasks[1..] {
        h.report_copy(host, *task, *attempt, TaskPhase::Completed, true);
    }
    assert_eq!(h.shell.written.get(&request), Some(&TaskStatus::Completed));
    assert_eq!(h.core.scheduler().early_finals(), 3);
    // The stored copies arrive after the request ended and its tasks left memory: acked as duplicates, and so is a
    // redelivery of one.
    for (host, task, attempt) in tasks.iter().chain(&tasks[..1]) {
        let out = h.report(host, *task, *attempt, TaskPhase::Completed);
        assert!(counted(&out, "report.duplicate") && acked(&out, false) && out.ops.is_empty());
    }
    // Early copies for unknown tasks are ignored without an ack or a warning counter.
    let out = h.report_copy("h1", 9_999, 1, TaskPhase::Failed, true);
    assert!(counted(&out, "report.early.ignored") && !counted(&out, "report.rejected.unknown_task"));
}

#[test]
fn early_finals_are_forgotten_after_a_while() {
    let mut f = super::scheduler::EarlyFinals::default();
    let t0 = Instant::now();
    f.insert(1, 1, t0);
    f.insert(2, 1, t0 + Duration::from_secs(300));
    f.expire(t0 + Duration::from_secs(599));
    assert_eq!(f.len(), 2);
    f.expire(t0 + Duration::from_secs(601));
    assert_eq!(f.len(), 1);
    assert!(!f.contains(1, 1) && f.contains(2, 1));
    f.expire(t0 + Duration::from_secs(2_000));
    assert!(f.is_empty() && !f.contains(2, 1));
}

#[tokio::test(start_paused = true)]
async fn silent_hosts_get_one_retry_then_timedout() {
    let mut h = Harness::new();
    h.register("h1");
    h.beat("h1", &[]);
    let r = h.request("run", None, Some("h1")).unwrap().request;
    assert_eq!(h.executions(), vec![("h1".into(), 1, 1)]);
    // The run timeout is 60 s, grace 2 s; keep the host alive meanwhile.
    for _ in 0..63 {
        h.advance(SEC);
        h.beat("h1", &[]);
        h.step(Input::Tick);
    }
    assert_eq!(h.executions(), vec![("h1".into(), 1, 1), ("h1".into(), 1, 2)], "re-sent as attempt 2");
    assert!(h.shell.sent.iter().any(|o| matches!(o.command.body, CommandBody::Cancel { task: 1, attempt: 1 })));
    // A late report of attempt 1 is stale.
    let out = h.report("h1", 1, 1, TaskPhase::Completed);
    assert!(out.ops.is_empty());
    for _ in 0..63 {
        h.advance(SEC);
        h.beat("h1", &[]);
        h.step(Input::Tick);
    }
    assert_eq!(h.request_status(r), TaskStatus::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn cancel_aborts_queued_and_running_tasks_and_resets_components() {
    let mut h = Harness::new();
    let r = h.cluster();
    let (host, task, attempt) = h.executions()[0].clone();
    h.report(&host, task, attempt, TaskPhase::InProgress);
    let out = h.api(ApiCall::Cancel { request: r }).unwrap();
    let WriteReply::RequestCancelled(RequestCancelled { aborted_tasks, .. }) = out else { panic!("{out:?}") };
    assert_eq!(aborted_tasks, 8, "4 queued installs and the 4 starts of later stages");
    assert_eq!(h.request_status(r), TaskStatus::Aborted);
    let cancels = h.shell.sent.iter().filter(|o| matches!(o.command.body, CommandBody::Cancel { .. })).count();
    assert_eq!(cancels, 4, "only sent tasks are cancelled on their hosts");
    assert_eq!(h.state("h1", "master"), ComponentState::InstallFailed, "not left INSTALLING");
    assert!(h.api(ApiCall::Cancel { request: r }).is_err(), "already finished");
}

#[tokio::test(start_paused = true)]
async fn bad_requests_are_refused_with_a_reason() {
    let mut h = Harness::new();
    h.cluster();
    let e = h.request("start", Some("nope"), None).unwrap_err();
    assert!(e.message.contains("unknown service or component"), "{e:?}");
    let e = h.request("start", Some("master"), Some("zz*")).unwrap_err();
    assert!(e.message.contains("matches no host"), "{e:?}");
    let e = h.request("start", Some("master"), Some("h2")).unwrap_err();
    assert!(e.message.contains("has master"), "{e:?}");
    let e = h
        .api(ApiCall::ApplyStack { source: "name = \"x\"\n[services.a.components.b]\ncategory = \"nope\"\n".into() })
        .unwrap_err();
    assert!(e.message.contains("line 3"), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn lost_hosts_make_components_unknown_and_status_reports_restore_them() {
    let mut h = Harness::new();
    h.cluster();
    h.complete_all();
    let starts = h.executions()[4..].to_vec();
    for (host, task, attempt) in starts {
        h.report(&host, task, attempt, TaskPhase::Completed);
    }
    h.complete_all();
    assert_eq!(h.state("h2", "worker"), ComponentState::Started);
    for _ in 0..4 {
        h.advance(SEC);
        h.beat("h1", &[]);
        h.beat("h3", &[]);
        h.step(Input::Tick);
    }
    assert_eq!(h.core.host(&id("h2")).unwrap().state, HostState::HeartbeatLost);
    assert_eq!(h.state("h2", "worker"), ComponentState::Unknown);
    let out = h.register("h2");
    let specs = out.effects.iter().find_map(|e| match e {
        Effect::Reply { body: Reply::Register(RegisterReply::Accepted { components, .. }), .. } => {
            Some(components.clone())
        }
        _ => None,
    });
    assert_eq!(specs.unwrap().len(), 1, "the registration reply carries the host's components");
    h.next_token += 1;
    let status = Report {
        schema: PROTOCOL_VERSION,
        host: id("h2"),
        sent_at: 0,
        body: ReportBody::Status {
            statuses: vec![ComponentStatus {
                component: ComponentRef { service: "toy".into(), component: "worker".into() },
                running: true,
                auto_restarts: 1,
            }],
            full: true,
            nonce: "1".into(),
        },
    };
    h.step(Input::Report { report: Box::new(status), ack: Some(h.next_token) });
    assert_eq!(h.state("h2", "worker"), ComponentState::Started);
}

#[tokio::test(start_paused = true)]
async fn a_component_already_running_completes_without_a_command_and_requests_end_once() {
    let mut h = Harness::new();
    let r = h.cluster();
    h.complete_all();
    // A status check says every worker already runs before its START stage.
    for host in ["h1", "h2", "h3"] {
        h.next_token += 1;
        let status = Report {
            schema: PROTOCOL_VERSION,
            host: id(host),
            sent_at: 0,
            body: ReportBody::Status {
                statuses: vec![ComponentStatus {
                    component: ComponentRef { service: "toy".into(), component: "worker".into() },
                    running: true,
                    auto_restarts: 0,
                }],
                full: false,
                nonce: host.into(),
            },
        };
        h.step(Input::Report { report: Box::new(status), ack: Some(h.next_token) });
    }
    let (host, task, attempt) = h.executions()[4].clone();
    let out = h.report(&host, task, attempt, TaskPhase::Completed);
    assert_eq!(h.executions().len(), 5, "no START sent to running workers");
    assert_eq!(h.request_status(r), TaskStatus::Completed);
    let ends = out.effects.iter().filter(|e| matches!(e, Effect::Event(ChangeEvent::Request(_)))).count();
    assert_eq!(ends, 1, "the request ends once");
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_redoes_dispatches_that_were_not_committed() {
    let mut h = Harness::new();
    h.cluster();
    // The old leader "died" after moving stage 1 to IN_PROGRESS but before its tasks were recorded as sent.
    let mut loaded = Loaded { hosts: h.core.hosts().records().cloned().collect(), ..Default::default() };
    loaded.stacks = h.core.stacks().records().cloned().collect();
    loaded.components = h.core.components().records().cloned().collect();
    loaded.requests = h.core.scheduler().requests().cloned().collect();
    loaded.tasks = h
        .core
        .scheduler()
        .tasks()
        .cloned()
        .map(|mut t| {
            t.status = TaskStatus::Pending;
            t.attempt = 0;
            t
        })
        .collect();
    loaded.max_task = 8;
    for c in &mut loaded.components {
        c.state = ComponentState::Init;
    }
    let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: SEC };
    let mut next = Harness::with_core(LeaderCore::new(9, timing, loaded, h.now, h.wall), h.now, h.wall);
    next.step(Input::TakeOver);
    let ids: Vec<String> = next.shell.sent.iter().map(|o| o.msg_id.to_string()).collect();
    assert_eq!(ids, ["t1-a1", "t2-a1", "t3-a1", "t4-a1"], "the same ids as the first leader used");
}

#[tokio::test(start_paused = true)]
async fn auto_restart_is_granted_only_once_a_component_ran_and_a_failed_request_ends_once() {
    let mut h = Harness::new();
    let r = h.cluster();
    let should_run = |h: &Harness, host: &str| -> Vec<bool> {
        h.shell
            .sent
            .iter()
            .rev()
            .find_map(|o| match &o.command.body {
                CommandBody::Configure { components } if o.host.as_str() == host => {
                    Some(components.iter().map(|c| c.should_run).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    assert!(should_run(&h, "h1").iter().all(|r| !r), "not before anything ran");
    h.complete_all();
    let (host, task, attempt) = h.executions()[4].clone();
    h.report(&host, task, attempt, TaskPhase::Completed);
    assert_eq!(should_run(&h, "h1"), vec![true, false], "master ran; worker not yet");
    // A failing worker start aborts nothing after it, and the request ends exactly once.
    let workers: Vec<_> = h.executions()[5..].to_vec();
    let mut ends = 0;
    for (i, (host, task, attempt)) in workers.into_iter().enumerate() {
        let phase = if i == 0 { TaskPhase::Failed } else { TaskPhase::Completed };
        let out = h.report(&host, task, attempt, phase);
        ends += out.effects.iter().filter(|e| matches!(e, Effect::Event(ChangeEvent::Request(_)))).count();
    }
    assert_eq!(ends, 1);
    assert_eq!(h.request_status(r), TaskStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn ids_are_reserved_before_use_and_a_new_leader_starts_above_the_reservation() {
    let reservations = |out: &Outcome| out.ops.iter().filter(|op| matches!(op, TxnOp::ReserveIds { .. })).count();
    let mut h = Harness::new();
    let out = h.register("a");
    assert!(matches!(out.ops.first(), Some(TxnOp::ReserveIds { .. })), "a new leader reserves first");
    assert_eq!(reservations(&h.register("b")), 0, "nothing more while ids remain");
    h.cluster();
    let used = h.executions().iter().map(|(_, t, _)| *t).max().unwrap();
    // A deposed leader reserved up to 500 and may have sent commands for ids it never committed.
    let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: SEC };
    let loaded = Loaded { max_task: used, reserved: (500, 40), ..Default::default() };
    let mut next = Harness::with_core(LeaderCore::new(9, timing, loaded, h.now, h.wall), h.now, h.wall);
    let out = next.register("a");
    let Some(TxnOp::ReserveIds { tasks, requests }) = out.ops.first() else { panic!("no reservation") };
    assert!(*tasks > 500 && *requests > 40);
    assert_eq!(next.core.scheduler().next_ids(), (501, 41));
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leader_that_has_not_noticed_acks_replies_and_answers_nothing() {
    let mut h = Harness::new();
    let r = h.cluster();
    let (host, task, attempt) = h.executions()[0].clone();
    let stranger = if host == "h3" { "h2" } else { "h3" };
    h.shell.deposed = true;
    h.shell.commits = 0;
    // Each of these changes no state, so no ops would fence it: a task the successor created (unknown here), a
    // task this leader thinks is another host's, a refused API call.
    let outcomes = [
        h.report("h2", 999_999, 1, TaskPhase::InProgress),
        h.report(stranger, task, attempt, TaskPhase::InProgress),
        h.api_outcome(ApiCall::Cancel { request: r + 1_000 }),
    ];
    for (i, out) in outcomes.iter().enumerate() {
        let told: Vec<&Effect> = out.effects.iter().filter(|e| tells(e)).collect();
        assert!(told.is_empty(), "batch {i}: a deposed leader performed {told:?}");
    }
    assert_eq!(h.shell.commits, 3, "every batch tried to prove the leadership first");
}

#[tokio::test(start_paused = true)]
async fn answers_without_changes_wait_for_a_barrier_and_counters_alone_do_not() {
    let mut h = Harness::new();
    h.cluster();
    let before = h.shell.commits;
    let out = h.report("h2", 999_999, 1, TaskPhase::InProgress);
    assert!(out.ops.is_empty() && acked(&out, true), "the refusal is term-acked: {:?}", out.effects);
    assert!(counted(&out, "leader.barriers"));
    assert_eq!(h.shell.commits, before + 1, "one barrier");
    // A heartbeat of a healthy host tells nobody anything: no append.
    let out = h.beat("h1", &[]);
    assert!(out.effects.iter().all(|e| !tells(e)), "{:?}", out.effects);
    assert_eq!(h.shell.commits, before + 1, "no barrier for counters alone");
    // Nor for advice to register again, which any instance may give.
    let out = h.beat("stranger", &[]);
    assert!(out.effects.iter().any(|e| matches!(e, Effect::Reply { body: Reply::Heartbeat(_), .. })));
    assert_eq!(h.shell.commits, before + 1, "no barrier for a heartbeat's reply");
    // The stored copy of a final whose early copy is committed is acked as any leader would: no barrier either,
    // even when deposed (the common case of a fan-out stays free).
    let (host, task, attempt) = h.executions()[0].clone();
    h.report_copy(&host, task, attempt, TaskPhase::Completed, true);
    let before = h.shell.commits;
    h.shell.deposed = true;
    let out = h.report(&host, task, attempt, TaskPhase::Completed);
    assert!(acked(&out, false) && counted(&out, "report.duplicate"), "{:?}", out.effects);
    assert_eq!(h.shell.commits, before, "a settled ack needs no barrier");
}

#[tokio::test(start_paused = true)]
async fn a_repeated_request_create_gets_the_original_reply_from_this_leader_and_the_next() {
    let mut h = Harness::new();
    h.healthy(["h1", "h2"].map(String::from));
    let spec = |key: &str| RequestSpec {
        action: RequestAction::Run,
        target: None,
        hosts: Some("h*".into()),
        argv: vec!["true".into()],
        timeout_secs: None,
        batch: 0,
        max_failures: 0,
        success_factor: None,
        idempotency_key: Some(key.into()),
    };
    let first = h.api_outcome(ApiCall::Request(spec("k-1")));
    let records: Vec<_> = first
        .ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::PutRequest(r) => Some((**r).clone()),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].idempotency_key.as_deref(), Some("k-1"), "the key is stored with the request");
    let answer = |out: &Outcome| {
        out.effects.iter().find_map(|e| match e {
            Effect::Api { result: Ok(WriteReply::RequestCreated(c)), .. } => Some(c.clone()),
            _ => None,
        })
    };
    let original = answer(&first).expect("created");
    let sent = h.executions().len();
    // The client did not hear the answer and retries with the same key: nothing new is created or sent.
    let again = h.api_outcome(ApiCall::Request(spec("k-1")));
    assert_eq!(answer(&again), Some(original.clone()));
    assert!(again.ops.iter().all(|op| !matches!(op, TxnOp::PutRequest(_) | TxnOp::PutTask(_))), "{:?}", again.ops);
    assert!(counted(&again, "requests.repeated"));
    assert_eq!(h.executions().len(), sent, "no second run");
    // Another key is another request.
    let other = answer(&h.api_outcome(ApiCall::Request(spec("k-2")))).expect("created");
    assert_ne!(other.request, original.request);
    // After a failover the next leader, loaded from the records, still knows the key.
    let loaded = Loaded { hosts: h.core.hosts().records().cloned().collect(), requests: records, ..Default::default() };
    let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: SEC };
    let mut next = Harness::with_core(LeaderCore::new(9, timing, loaded, h.now, h.wall), h.now, h.wall);
    let after = next.api_outcome(ApiCall::Request(spec("k-1")));
    assert_eq!(answer(&after), Some(original));
    assert!(next.executions().is_empty(), "the next leader creates nothing either");
    // A key too long to remember is refused.
    let long = "k".repeat(muster_schemas::api::MAX_IDEMPOTENCY_KEY_BYTES + 1);
    let refused = h.api(ApiCall::Request(spec(&long)));
    assert!(matches!(refused, Err(ref e) if e.code == muster_schemas::api::ApiErrorCode::BadRequest), "{refused:?}");
}

/// Found by fuzzing (`fuzz/regressions/api_call/run-timeout-overflow`, the `api_call` target): a `run` whose
/// `timeout_secs` overflowed when turned into milliseconds (a panic with overflow checks, a wrapped deadline
/// without) is refused with a reason.
#[tokio::test(start_paused = true)]
async fn a_run_timeout_beyond_a_day_is_refused() {
    let input = include_bytes!("../../../fuzz/regressions/api_call/run-timeout-overflow");
    let (name, body) = input[1..].split_at(usize::from(input[0]));
    let call = crate::writes::parse_call(std::str::from_utf8(name).unwrap(), body).unwrap();
    let mut h = Harness::new();
    h.cluster();
    let e = h.api(call).unwrap_err();
    assert!(e.message.contains("timeout_secs must be at most 86400"), "{e:?}");
}

/// Found by fuzzing (`fuzz/regressions/{txn_decode,snapshot_decode}/success-factor-above-one`, the `txn_decode` and
/// `snapshot_decode` targets): a stored request whose success factor is above 1 made a new leader's stage
/// accounting underflow at its takeover. The core now allows such a stage no failure.
#[tokio::test(start_paused = true)]
async fn a_stored_success_factor_above_one_does_not_panic_a_new_leader() {
    let entry = include_bytes!("../../../fuzz/regressions/txn_decode/success-factor-above-one");
    let snapshot = include_bytes!("../../../fuzz/regressions/snapshot_decode/success-factor-above-one");
    let txn = crate::log::understand(entry).unwrap();
    let from_log = crate::store::Store::in_memory().unwrap();
    let last = muster_schemas::Txn { continues: false, ..txn.clone() };
    from_log.apply(&[(1, txn), (2, last)]).unwrap();
    let from_snapshot = crate::store::Store::in_memory().unwrap();
    from_snapshot.restore(&crate::snapshot::decode(snapshot).unwrap()).unwrap();
    for store in [from_log, from_snapshot] {
        let timing = Timing { interval: SEC, deadline: 3 * SEC, task_grace: SEC };
        let mut core = LeaderCore::new(9, timing, super::load(&store).unwrap(), Instant::now(), 1_000);
        core.step(Input::TakeOver, Instant::now(), 1_000);
        core.ready();
    }
}
