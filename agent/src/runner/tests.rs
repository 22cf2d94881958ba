//! The runner driven through its input channel with a fake executor and paused time.

use super::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

use muster_schemas::commands::{Category, TaskPhase, TaskReport};

use crate::intake::plan_catch_up;
use crate::params::RestartLimits;

/// Every await on the runner is bounded: with paused time this is virtual, so it only fires on a deadlock.
const DEADLOCK: Duration = Duration::from_secs(3_600);

/// An executor of built-in commands, so the runner is tested without processes: `ok`, `exit N`,
/// `sleep MS` (ignoring SIGTERM), `block` (until SIGTERM or killed), `stubborn` (until killed), `echo TEXT`, and
/// `status F` / `start F` / `stop F` over named flags.
#[derive(Debug, Default)]
struct Fake {
    flags: Mutex<HashMap<String, bool>>,
    started: Mutex<Vec<String>>,
}

impl Fake {
    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }

    fn set(&self, flag: &str, value: bool) {
        self.flags.lock().unwrap().insert(flag.to_owned(), value);
    }

    fn flag(&self, flag: &str) -> bool {
        self.flags.lock().unwrap().get(flag).copied().unwrap_or(false)
    }
}

impl Executor for Fake {
    async fn execute(&self, spec: CommandSpec, stop: Stop, output: OutputCapture) -> Outcome {
        self.started.lock().unwrap().push(spec.argv.join(" "));
        let arg = spec.argv.get(1).cloned().unwrap_or_default();
        let ends_on_sigterm = spec.argv[0] == "block";
        let work = async {
            match spec.argv[0].as_str() {
                "ok" => Outcome::Exited(0),
                "exit" => Outcome::Exited(arg.parse().unwrap()),
                "sleep" => {
                    tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
                    Outcome::Exited(0)
                }
                "block" | "stubborn" => std::future::pending().await,
                "echo" => {
                    output.stdout(arg.as_bytes());
                    Outcome::Exited(0)
                }
                "status" => Outcome::Exited(if self.flag(&arg) { 0 } else { 3 }),
                "start" => {
                    self.set(&arg, true);
                    Outcome::Exited(0)
                }
                "stop" => {
                    self.set(&arg, false);
                    Outcome::Exited(0)
                }
                other => Outcome::SpawnFailed(format!("no such command {other}")),
            }
        };
        tokio::select! {
            outcome = tokio::time::timeout(Duration::from_millis(spec.timeout_ms), work) => {
                outcome.unwrap_or(Outcome::TimedOut)
            }
            () = stop.kill.cancelled() => Outcome::Killed,
            () = stop.terminate.cancelled(), if ends_on_sigterm => Outcome::Terminated,
        }
    }
}

struct Harness {
    fake: Arc<Fake>,
    input: mpsc::Sender<RunnerInput>,
    reports: mpsc::Receiver<Box<Report>>,
    stop: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
}

fn host() -> HostId {
    HostId::new("web-1").unwrap()
}

fn params() -> CommandParams {
    CommandParams {
        max_parallel: 4,
        progress_interval: Duration::from_secs(5),
        status_interval: Duration::from_secs(10),
        auto_restart: RestartLimits { min_gap: Duration::ZERO, ..RestartLimits::default() },
        shutdown_grace: Duration::from_secs(10),
        output_limit: 1024,
    }
}

fn start(params: CommandParams) -> Harness {
    let fake = Arc::new(Fake::default());
    let (input, input_rx) = mpsc::channel(RUNNER_INPUT_QUEUE);
    let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
    let stop = CancellationToken::new();
    let runner = Runner::new(fake.clone(), host(), 1_000, params, SessionStats::default(), reports_tx);
    let runner = tokio::spawn(runner.run(input_rx, stop.clone()));
    Harness { fake, input, reports, stop, runner }
}

impl Harness {
    async fn send(&self, input: RunnerInput) {
        tokio::time::timeout(DEADLOCK, self.input.send(input)).await.expect("runner input full").unwrap();
    }

    async fn live(&self, body: CommandBody) {
        self.send(RunnerInput::Live(Box::new(Command { schema: PROTOCOL_VERSION, host: host(), body }))).await;
    }

    async fn report(&mut self) -> Report {
        *tokio::time::timeout(DEADLOCK, self.reports.recv()).await.expect("no report came").expect("runner gone")
    }

    /// The next task report (status reports are skipped).
    async fn task(&mut self) -> TaskReport {
        loop {
            if let ReportBody::Task(t) = self.report().await.body {
                return t;
            }
        }
    }

    /// The next status report.
    async fn status(&mut self) -> (Vec<ComponentStatus>, bool) {
        loop {
            if let ReportBody::Status { statuses, full, .. } = self.report().await.body {
                return (statuses, full);
            }
        }
    }

    /// Stops the runner and returns every report it still made.
    async fn stop(mut self) -> Vec<Report> {
        self.stop.cancel();
        tokio::time::timeout(DEADLOCK, self.runner).await.expect("shutdown hung").unwrap();
        let mut rest = Vec::new();
        while let Ok(r) = self.reports.try_recv() {
            rest.push(*r);
        }
        rest
    }
}

fn spec(argv: &str) -> CommandSpec {
    CommandSpec { argv: argv.split(' ').map(str::to_owned).collect(), env: BTreeMap::new(), timeout_ms: 60_000 }
}

fn comp(name: &str) -> ComponentRef {
    ComponentRef { service: "svc".into(), component: name.into() }
}

fn execute(task: u64, component: Option<&str>, argv: &str) -> CommandBody {
    CommandBody::Execute(Execution {
        task,
        attempt: 1,
        request: 1,
        component: component.map(comp),
        command: RoleCommand::Custom("TEST".into()),
        spec: spec(argv),
    })
}

fn execute_role(task: u64, component: &str, command: RoleCommand, argv: &str) -> CommandBody {
    CommandBody::Execute(Execution {
        task,
        attempt: 1,
        request: 1,
        component: Some(comp(component)),
        command,
        spec: spec(argv),
    })
}

fn daemon(name: &str, should_run: bool) -> ComponentSpec {
    ComponentSpec {
        service: "svc".into(),
        component: name.into(),
        category: Category::Daemon,
        status: Some(spec(&format!("status {name}"))),
        start: Some(spec(&format!("start {name}"))),
        should_run,
    }
}

fn phases(reports: &[TaskReport]) -> Vec<(u64, TaskPhase, u32)> {
    reports.iter().map(|t| (t.task, t.phase, t.report_seq)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_task_reports_start_progress_and_result() {
    let mut h = start(params());
    h.live(execute(1, None, "sleep 12000")).await;
    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(h.task().await);
    }
    assert_eq!(
        phases(&reports),
        [
            (1, TaskPhase::InProgress, 0),
            (1, TaskPhase::InProgress, 1),
            (1, TaskPhase::InProgress, 2),
            (1, TaskPhase::Completed, 3)
        ]
    );
    let last = &reports[3];
    assert_eq!(last.exit_code, Some(0));
    assert!(last.started_at > 0 && last.finished_at.is_some());
    assert!(reports[0].finished_at.is_none());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn exit_codes_and_failures_become_phases() {
    let mut h = start(params());
    h.live(execute(1, None, "exit 3")).await;
    h.live(execute(2, None, "nonexistent")).await;
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let t = h.task().await;
        if t.phase.is_final() {
            finals.push(t);
        }
    }
    finals.sort_by_key(|t| t.task);
    assert_eq!((finals[0].phase, finals[0].exit_code), (TaskPhase::Failed, Some(3)));
    assert_eq!((finals[1].phase, finals[1].exit_code), (TaskPhase::Failed, None));
    assert!(finals[1].stderr.contains("no such command"), "{:?}", finals[1].stderr);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_reported() {
    let mut h = start(params());
    let mut body = execute(1, None, "block");
    if let CommandBody::Execute(e) = &mut body {
        e.spec.timeout_ms = 1_000;
    }
    h.live(body).await;
    let t = loop {
        let t = h.task().await;
        if t.phase.is_final() {
            break t;
        }
    };
    assert_eq!((t.phase, t.exit_code), (TaskPhase::TimedOut, None));
    assert!(t.stderr.contains("timed out after 1000 ms"), "{:?}", t.stderr);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn commands_of_one_component_run_in_order_one_at_a_time() {
    let mut h = start(params());
    h.live(execute(1, Some("a"), "sleep 1000")).await;
    h.live(execute(2, Some("a"), "sleep 10")).await;
    h.live(execute(3, Some("b"), "sleep 10")).await;
    let mut seen = Vec::new();
    while seen.iter().filter(|(_, p, _): &&(u64, TaskPhase, u32)| p.is_final()).count() < 3 {
        let t = h.task().await;
        seen.push((t.task, t.phase, t.report_seq));
    }
    let pos = |task, phase| seen.iter().position(|(t, p, _)| *t == task && *p == phase).unwrap();
    // Task 2 (10 ms) finishes after task 1 (1 s): it ran only once task 1 was done. Task 3 (another component)
    // does not wait for task 1.
    assert!(pos(2, TaskPhase::Completed) > pos(1, TaskPhase::Completed), "{seen:?}");
    assert!(pos(3, TaskPhase::Completed) < pos(1, TaskPhase::Completed), "{seen:?}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_global_limit_holds_back_ad_hoc_runs() {
    let mut h = start(CommandParams { max_parallel: 2, ..params() });
    for task in 1..=3 {
        h.live(execute(task, None, "block")).await;
    }
    let first = [h.task().await, h.task().await];
    assert_eq!(phases(&first), [(1, TaskPhase::InProgress, 0), (2, TaskPhase::InProgress, 0)]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.fake.started().len(), 2, "the third run waits for a slot");
    h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
    let mut next = Vec::new();
    while next.len() < 2 {
        let t = h.task().await;
        if t.report_seq == 0 || t.phase.is_final() {
            next.push((t.task, t.phase));
        }
    }
    assert_eq!(next, [(1, TaskPhase::Aborted), (3, TaskPhase::InProgress)]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_of_a_queued_task_reports_aborted_without_running_it() {
    let mut h = start(params());
    h.live(execute(1, Some("a"), "block")).await;
    h.live(execute(2, Some("a"), "ok")).await;
    assert_eq!(h.task().await.phase, TaskPhase::InProgress);
    h.live(CommandBody::Cancel { task: 2, attempt: 1 }).await;
    let t = h.task().await;
    assert_eq!((t.task, t.phase, t.started_at, t.report_seq), (2, TaskPhase::Aborted, 0, 0));
    h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
    let t = loop {
        let t = h.task().await;
        if t.phase.is_final() {
            break t;
        }
    };
    assert_eq!((t.task, t.phase), (1, TaskPhase::Aborted));
    assert!(t.stderr.contains("cancelled"));
    assert_eq!(h.fake.started(), ["block"], "the cancelled task never ran");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_execution_after_its_cancel_is_aborted_not_run() {
    let mut h = start(params());
    h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
    h.live(execute(1, None, "ok")).await;
    let t = h.task().await;
    assert_eq!((t.task, t.phase, t.started_at), (1, TaskPhase::Aborted, 0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.fake.started().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn repeated_commands_run_once() {
    let mut h = start(params());
    h.live(execute(1, None, "sleep 10")).await;
    h.live(execute(1, None, "sleep 10")).await;
    let catch_up = vec![(5, Command { schema: PROTOCOL_VERSION, host: host(), body: execute(1, None, "sleep 10") })];
    h.send(RunnerInput::CatchUp(Box::new(plan_catch_up(catch_up, &Default::default())))).await;
    loop {
        if h.task().await.phase.is_final() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.fake.started(), ["sleep 10"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_cancel_aborts_without_running_or_kills_what_runs() {
    let mut h = start(params());
    // Task 2 already runs (it came live); task 1 is new. Both are cancelled within the catch-up.
    h.live(execute(2, None, "block")).await;
    assert_eq!(h.task().await.phase, TaskPhase::InProgress);
    let cmd = |body| Command { schema: PROTOCOL_VERSION, host: host(), body };
    let entries = vec![
        (1, cmd(execute(1, None, "ok"))),
        (2, cmd(execute(2, None, "block"))),
        (3, cmd(CommandBody::Cancel { task: 1, attempt: 1 })),
        (4, cmd(CommandBody::Cancel { task: 2, attempt: 1 })),
    ];
    h.send(RunnerInput::CatchUp(Box::new(plan_catch_up(entries, &Default::default())))).await;
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let t = h.task().await;
        if t.phase.is_final() {
            finals.push((t.task, t.phase, t.started_at == 0));
        }
    }
    finals.sort_by_key(|(task, _, _)| *task);
    assert_eq!(finals, [(1, TaskPhase::Aborted, true), (2, TaskPhase::Aborted, false)]);
    assert_eq!(h.fake.started(), ["block"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn registration_reports_all_statuses_then_only_changes() {
    let mut h = start(params());
    h.fake.set("a", true);
    let client = ComponentSpec { category: Category::Client, status: None, start: None, ..daemon("cli", false) };
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", true), daemon("b", false), client]) }).await;
    let (statuses, full) = h.status().await;
    assert!(full);
    let running: Vec<_> = statuses.iter().map(|s| (s.component.component.as_str(), s.running)).collect();
    assert_eq!(running, [("a", true), ("b", false)]);

    // No change: the next rounds report nothing; a change is reported alone.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(h.reports.try_recv().is_err(), "unchanged statuses were reported");
    h.fake.set("b", true);
    let (statuses, full) = h.status().await;
    assert!(!full);
    assert_eq!(statuses.iter().map(|s| (s.component.component.as_str(), s.running)).collect::<Vec<_>>(), [("b", true)]);

    // A second registration reports everything again.
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", true), daemon("b", false)]) }).await;
    let (statuses, full) = h.status().await;
    assert!(full && statuses.len() == 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn status_reports_have_distinct_nonces() {
    let mut h = start(params());
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", false)]) }).await;
    let first = h.report().await.msg_id();
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", false)]) }).await;
    let ids = [first, h.report().await.msg_id()];
    assert_eq!(ids, ["s-web-1-1000-1", "s-web-1-1000-2"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_host_without_components_sends_no_status_report() {
    let mut h = start(params());
    h.send(RunnerInput::Registered { components: Some(vec![]) }).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(h.reports.try_recv().is_err(), "an empty status report was sent");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_component_that_should_run_is_restarted() {
    let mut h = start(params());
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", true)]) }).await;
    let (statuses, _) = h.status().await;
    assert_eq!((statuses[0].running, statuses[0].auto_restarts), (false, 0));
    // The restart runs `start a`, the re-check sees it running and reports the restart count.
    let (statuses, full) = h.status().await;
    assert!(!full);
    assert_eq!((statuses[0].running, statuses[0].auto_restarts), (true, 1));
    assert!(h.fake.started().contains(&"start a".to_owned()));
    // No task report for an auto-restart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(r) = h.reports.try_recv() {
        assert!(!matches!(r.body, ReportBody::Task(_)), "{r:?}");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn auto_restart_respects_the_limits_and_the_switch() {
    let limits = RestartLimits { max_per_window: 2, min_gap: Duration::ZERO, ..RestartLimits::default() };
    let h = start(CommandParams { auto_restart: limits, ..params() });
    // `start x` does not make `a` run: every check finds it dead.
    let mut a = daemon("a", true);
    a.start = Some(spec("start x"));
    h.send(RunnerInput::Registered { components: Some(vec![a]) }).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let restarts = h.fake.started().iter().filter(|s| *s == "start x").count();
    assert_eq!(restarts, 2, "two per window");
    h.stop().await;

    let h = start(CommandParams { auto_restart: RestartLimits { enabled: false, ..limits }, ..params() });
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", true)]) }).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!h.fake.started().contains(&"start a".to_owned()), "disabled");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_restart_while_a_command_of_the_component_is_queued_or_after_a_stop() {
    let mut h = start(params());
    h.fake.set("a", true);
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", true)]) }).await;
    h.status().await;
    h.live(execute_role(1, "a", RoleCommand::Stop, "stop a")).await;
    // The STOP's final report, then the immediate re-check reports "not running"...
    loop {
        if h.task().await.phase.is_final() {
            break;
        }
    }
    let (statuses, _) = h.status().await;
    assert!(!statuses[0].running);
    // ...and the agent does not fight the operator, even though should_run is still true.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!h.fake.started().contains(&"start a".to_owned()), "{:?}", h.fake.started());
    // The server's next word on should_run lifts the hold.
    h.live(CommandBody::Configure { components: vec![daemon("a", true)] }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.fake.started().contains(&"start a".to_owned()), "{:?}", h.fake.started());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn status_checks_skip_a_component_whose_command_runs() {
    let mut h = start(params());
    h.send(RunnerInput::Registered { components: Some(vec![daemon("a", false)]) }).await;
    h.status().await;
    h.live(execute(1, Some("a"), "sleep 35000")).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let checks = h.fake.started().iter().filter(|s| *s == "status a").count();
    assert_eq!(checks, 1, "only the registration's check: {:?}", h.fake.started());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let checks = h.fake.started().iter().filter(|s| *s == "status a").count();
    assert_eq!(checks, 2, "re-checked right after the command: {:?}", h.fake.started());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_forwards_sigterm_lets_commands_finish_within_the_grace_then_kills_without_report() {
    let mut h = start(CommandParams { shutdown_grace: Duration::from_secs(10), ..params() });
    h.live(execute(1, None, "sleep 3000")).await;
    h.live(execute(2, None, "block")).await;
    h.live(execute(3, Some("a"), "stubborn")).await;
    h.live(execute(4, Some("a"), "ok")).await;
    for _ in 0..3 {
        assert_eq!(h.task().await.phase, TaskPhase::InProgress);
    }
    let started = Instant::now();
    let rest = h.stop().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(11), "{elapsed:?}");
    let finals: Vec<_> = rest
        .iter()
        .filter_map(|r| match &r.body {
            ReportBody::Task(t) if t.phase.is_final() => Some((t.task, t.phase)),
            _ => None,
        })
        .collect();
    // Task 1 finished within the grace; 2 ended on the SIGTERM and 3 was killed at the end of the grace, both
    // unreported; 4 never started.
    assert_eq!(finals, [(1, TaskPhase::Completed)]);
    assert_eq!(h_started(&rest), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_as_soon_as_the_commands_end_on_sigterm() {
    let mut h = start(CommandParams { shutdown_grace: Duration::from_secs(10), ..params() });
    h.live(execute(1, None, "block")).await;
    h.live(execute(2, Some("a"), "block")).await;
    for _ in 0..2 {
        assert_eq!(h.task().await.phase, TaskPhase::InProgress);
    }
    let started = Instant::now();
    let rest = h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(1), "waited for the grace: {:?}", started.elapsed());
    assert!(rest.iter().all(|r| !matches!(&r.body, ReportBody::Task(t) if t.phase.is_final())), "{rest:?}");
}

fn h_started(reports: &[Report]) -> usize {
    reports.iter().filter(|r| matches!(&r.body, ReportBody::Task(t) if t.task == 4)).count()
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_immediate_when_idle() {
    let h = start(params());
    let started = Instant::now();
    assert!(h.stop().await.is_empty());
    assert!(started.elapsed() < Duration::from_millis(10));
}

#[tokio::test]
async fn real_processes_report_output_and_can_be_cancelled() {
    // The runner with the real executor: a short real-time test.
    let (input, input_rx) = mpsc::channel(RUNNER_INPUT_QUEUE);
    let (reports_tx, mut reports) = mpsc::channel(REPORT_QUEUE);
    let stop = CancellationToken::new();
    let runner =
        Runner::new(Arc::new(crate::ProcessExecutor), host(), 1, params(), SessionStats::default(), reports_tx);
    let runner = tokio::spawn(runner.run(input_rx, stop.clone()));
    let sh = |task, script: &str| {
        let mut body = execute(task, None, "x");
        if let CommandBody::Execute(e) = &mut body {
            e.spec.argv = vec!["/bin/sh".into(), "-c".into(), script.into()];
        }
        RunnerInput::Live(Box::new(Command { schema: PROTOCOL_VERSION, host: host(), body }))
    };
    input.send(sh(1, "echo out; echo err >&2; exit 2")).await.unwrap();
    input.send(sh(2, "sleep 100")).await.unwrap();
    let mut finals = HashMap::new();
    let mut cancelled = false;
    while finals.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(20), reports.recv()).await.expect("no report").unwrap();
        let ReportBody::Task(t) = r.body else { continue };
        if t.task == 2 && t.phase == TaskPhase::InProgress && !cancelled {
            cancelled = true;
            input
                .send(RunnerInput::Live(Box::new(Command {
                    schema: PROTOCOL_VERSION,
                    host: host(),
                    body: CommandBody::Cancel { task: 2, attempt: 1 },
                })))
                .await
                .unwrap();
        }
        if t.phase.is_final() {
            finals.insert(t.task, t);
        }
    }
    let one = &finals[&1];
    assert_eq!(
        (one.phase, one.exit_code, one.stdout.as_str(), one.stderr.as_str()),
        (TaskPhase::Failed, Some(2), "out\n", "err\n")
    );
    assert_eq!(finals[&2].phase, TaskPhase::Aborted);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner).await.expect("shutdown hung").unwrap();
}
