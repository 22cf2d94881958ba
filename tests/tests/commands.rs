//! End-to-end tests of commands: stacks and blueprints, requests → stages → tasks on real agents, results,
//! timeouts, cancellation, crashes of the agent and of the server in the middle of a request, auto-restart of
//! components, and the answers to bad input. Each test runs its own nats-server, muster-server and agents; the
//! components' daemons are real processes whose files live in the test's own work directory.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use muster_nats::unix_millis;
use muster_schemas::api::{RequestView, TaskView};
use muster_schemas::cluster::{ComponentState, DesiredState, TaskStatus};
use muster_schemas::commands::TaskPhase;
use muster_schemas::HostState;
use muster_tests::cli::parse_request_id;
use muster_tests::descendants::{alive, environ};
use muster_tests::reports::{publish_raw, publish_report, task_report};
use muster_tests::requests::{
    component, describe_components, describe_request, task, tasks, wait_components, wait_request, wait_request_end,
};
use muster_tests::stacks::{blueprint, stack};
use muster_tests::{wait_until, Check, CliOutput, Daemon, Identity, Muster, Settings, Stats, Timing};

/// Time for freshly started agents to register and report healthy (see foundation.rs).
const STARTUP: Duration = Duration::from_secs(30);

/// Time for a request of a few short commands to end. Each command takes milliseconds and each step of the
/// request a round trip through JetStream; the margin is for a loaded 2-core machine running tests in parallel.
const REQUEST_END: Duration = Duration::from_secs(60);

/// Time for something that needs one status check or one report to show (500 ms status interval, see
/// `Settings::fast_commands`), with the same margin.
const SOON: Duration = Duration::from_secs(20);

const THREE: [&str; 3] = ["h1", "h2", "h3"];

/// A cluster of `hosts` with the fast command path plus `settings`, every host HEALTHY.
async fn cluster(hosts: &[&str], settings: Settings) -> Muster {
    let mut m = Muster::start_configured(Timing::FAST, settings, hosts).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    m
}

/// Applies `stack_text`, then `blueprint_text` (which follows its request to the end); returns how the blueprint
/// command ended.
async fn apply(m: &Muster, stack_text: &str, blueprint_text: &str) -> CliOutput {
    let file = m.work.write("stack.toml", stack_text).unwrap();
    let out = m.cli.apply_stack(&file).await.unwrap();
    assert!(out.contains("version 1"), "`muster stack apply`: {out}");
    let file = m.work.write("blueprint.toml", blueprint_text).unwrap();
    m.cli.apply_blueprint(&file, REQUEST_END).await.unwrap()
}

/// The request a `blueprint apply` started, from its output.
fn blueprint_request(out: &CliOutput) -> u64 {
    parse_request_id(&out.stdout).unwrap_or_else(|| panic!("no request id in {}: {}", out.what, out.stdout))
}

/// `counter` now minus before.
fn delta(before: &Stats, after: &Stats, counter: &str) -> u64 {
    after.counter(counter).saturating_sub(before.counter(counter))
}

fn stage_statuses(v: &RequestView) -> Vec<(&str, TaskStatus)> {
    v.stages.iter().map(|s| (s.name.as_str(), s.status)).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Install and start across hosts

#[tokio::test]
async fn blueprint_installs_and_starts_a_service_in_dependency_order() {
    let m = cluster(&THREE, Settings::fast_commands()).await;
    let svc = stack("svc", &m.work, &[Daemon::new("master"), Daemon::new("worker").depends_on("master")]);
    let bp = blueprint("svc-cluster", "svc", &[("masters", &["h1"], &["master"]), ("workers", &["h*"], &["worker"])]);
    let out = apply(&m, &svc, &bp).await.success().unwrap();
    assert!(out.stdout.contains("4 component(s) newly mapped"), "{}", out.stdout);
    let id = blueprint_request(&out);

    let rows = m.cli.requests().await.unwrap();
    assert_eq!(rows.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(), [(id, TaskStatus::Completed)], "{rows:?}");
    let view = m.cli.request(id).await.unwrap();
    let why = describe_request(&view);
    assert_eq!(view.status, TaskStatus::Completed, "{why}");
    assert_eq!(
        view.stages.iter().map(|s| (s.name.as_str(), s.status, s.tasks.len())).collect::<Vec<_>>(),
        [
            ("INSTALL master, worker", TaskStatus::Completed, 4),
            ("START master", TaskStatus::Completed, 1),
            ("START worker", TaskStatus::Completed, 3)
        ],
        "{why}"
    );
    for t in &view.tasks {
        // Every task really ran on its agent: a start time from the agent and exit 0, first attempt.
        assert_eq!((t.status, t.attempt, t.exit_code), (TaskStatus::Completed, 1, Some(0)), "task {}: {why}", t.id);
        assert!(t.started_at > 0 && t.finished_at >= t.started_at, "task {} times: {why}", t.id);
    }

    // Stage order, by the agents' own clocks (one machine): every install ended before any start began, and the
    // master's start ended before any worker's start began.
    let installs =
        tasks(&view, "INSTALL", Some("svc/master")).into_iter().chain(tasks(&view, "INSTALL", Some("svc/worker")));
    let last_install = installs.map(|t| t.finished_at).max().unwrap();
    let master_start = task(&view, "h1", "START", Some("svc/master"));
    let worker_starts = tasks(&view, "START", Some("svc/worker"));
    assert_eq!(worker_starts.len(), 3, "{why}");
    assert!(last_install <= master_start.started_at, "START master began before the installs ended: {why}");
    for w in &worker_starts {
        assert!(
            master_start.finished_at <= w.started_at,
            "worker START on {} began at {} before master START finished at {}: {why}",
            w.host,
            w.started_at,
            master_start.finished_at
        );
    }

    let rows = m.cli.components().await.unwrap();
    assert_eq!(rows.len(), 4, "{}", describe_components(&rows));
    for r in &rows {
        assert_eq!(
            (r.state, r.desired, r.auto_restarts),
            (ComponentState::Started, DesiredState::Started, 0),
            "{}",
            describe_components(&rows)
        );
    }

    // The daemons are real processes, started by those very tasks, each once, master first.
    let mut daemons: Vec<(&str, &str, &TaskView)> = vec![("h1", "master", master_start)];
    daemons.extend(worker_starts.iter().map(|t| (t.host.as_str(), "worker", *t)));
    let mut pids = BTreeSet::new();
    let master_started = m.work.starts("h1", "master");
    for (host, comp, start_task) in daemons {
        assert!(m.work.installed(host, comp), "{comp} on {host} was never installed");
        let starts = m.work.starts(host, comp);
        assert_eq!(starts.len(), 1, "{comp} on {host} was started {} times, not once", starts.len());
        if comp == "worker" {
            assert!(master_started[0] < starts[0], "worker on {host} started before the master");
        }
        let pid = m.work.pid(host, comp).unwrap_or_else(|| panic!("no pid file for {comp} on {host}"));
        assert!(alive(pid), "{comp} on {host}: pid {pid} is not running");
        let env = environ(pid).unwrap_or_else(|| panic!("cannot read the environment of pid {pid}"));
        let task_id = start_task.id.to_string();
        for (key, want) in
            [("MUSTER_HOST", host), ("MUSTER_SERVICE", "svc"), ("MUSTER_COMPONENT", comp), ("MUSTER_TASK", &task_id)]
        {
            assert_eq!(env.get(key).map(String::as_str), Some(want), "{comp} on {host} (pid {pid}): {key}");
        }
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 4, "daemons share pids: {pids:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. A failing start

#[tokio::test]
async fn a_failing_start_fails_its_task_and_aborts_the_rest_of_the_request() {
    // Auto-restart off: the agent would otherwise start the components that should run on its own, and this test
    // is about what the request does.
    let m = cluster(&["h1", "h2"], Settings::fast_commands().agent("MUSTER_AUTO_RESTART", "false")).await;
    let failing = "echo starting master\necho 'master: cannot bind port 7' >&2\nexit 3\n";
    let svc = stack(
        "svc",
        &m.work,
        &[Daemon::new("master").start_script(failing), Daemon::new("worker").depends_on("master")],
    );
    let bp = blueprint("svc-cluster", "svc", &[("masters", &["h1"], &["master"]), ("workers", &["h*"], &["worker"])]);
    let out = apply(&m, &svc, &bp).await;
    let id = blueprint_request(&out);
    let stderr = out.failure().unwrap();
    assert!(stderr.contains(&format!("request {id} ended FAILED")), "blueprint apply stderr: {stderr}");

    let view = m.cli.request(id).await.unwrap();
    let why = describe_request(&view);
    assert_eq!(view.status, TaskStatus::Failed, "{why}");
    assert!(view.detail.contains("stage 2"), "the request should say which stage failed: {why}");
    assert_eq!(
        stage_statuses(&view),
        [
            ("INSTALL master, worker", TaskStatus::Completed),
            ("START master", TaskStatus::Failed),
            ("START worker", TaskStatus::Aborted)
        ],
        "{why}"
    );
    let master = task(&view, "h1", "START", Some("svc/master"));
    assert_eq!((master.status, master.exit_code, master.attempt), (TaskStatus::Failed, Some(3), 1), "{why}");
    assert!(master.stderr.contains("master: cannot bind port 7"), "stderr of the failed task: {:?}", master.stderr);
    assert!(master.stdout.contains("starting master"), "stdout of the failed task: {:?}", master.stdout);
    assert!(master.finished_at >= master.started_at && master.started_at > 0, "{why}");
    for w in tasks(&view, "START", Some("svc/worker")) {
        assert_eq!((w.status, w.attempt, w.started_at), (TaskStatus::Aborted, 0, 0), "never sent: {why}");
        assert!(w.detail.contains("earlier stage"), "task {} detail {:?}", w.id, w.detail);
    }

    // Nothing is left half-way: the master went back to INSTALLED, the workers were never started.
    let rows = m.cli.components().await.unwrap();
    for r in &rows {
        assert_eq!(
            (r.state, r.desired),
            (ComponentState::Installed, DesiredState::Started),
            "{}",
            describe_components(&rows)
        );
    }
    for host in ["h1", "h2"] {
        assert!(m.work.starts(host, "worker").is_empty(), "a worker was started on {host}");
    }
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(
        (stats.counter("requests.created"), stats.counter("requests.failed")),
        (1, 1),
        "one request, failed once, must be counted once: {:?}",
        stats.counters
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Timeouts

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_process_tree() {
    let m = cluster(&["h1"], Settings::fast_commands()).await;
    let pidfile = m.work.join("grandchild.pid");
    // The grandchild `sleep` is what a timeout that only kills the direct child would leave running.
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let timeout_secs = 2;
    let id = m
        .cli
        .submit(&["run", "--hosts", "h1", "--timeout", &timeout_secs.to_string(), "--", "sh", "-c", &script])
        .await
        .unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    let why = describe_request(&view);
    let t = task(&view, "h1", "RUN", None);
    // Attempt 1: the agent killed it and said so; the leader did not have to time it out and re-send it.
    assert_eq!((t.status, t.attempt, t.exit_code), (TaskStatus::TimedOut, 1, None), "{why}");
    assert_eq!(view.status, TaskStatus::TimedOut, "{why}");
    let ran_ms = t.finished_at.saturating_sub(t.started_at);
    assert!(ran_ms >= timeout_secs * 1000, "killed after {ran_ms} ms, before its {timeout_secs} s timeout: {why}");

    let text = std::fs::read_to_string(&pidfile).expect("the command started its grandchild");
    let grandchild: u32 = text.trim().parse().unwrap();
    // `sleep 300` cannot have ended by itself: if it is gone, it was killed with the tree.
    assert!(!m.descendants.owns(grandchild), "the grandchild sleep (pid {grandchild}) survived the timeout");
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.counter("tasks.retried"), 0, "{:?}", stats.counters);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Cancel

#[tokio::test]
async fn cancel_drops_a_queued_task_and_kills_a_running_one() {
    // One command at a time: the second request's task waits in the agent's queue behind the first one.
    let m = cluster(&["h1"], Settings::fast_commands().agent("MUSTER_MAX_PARALLEL", "1")).await;
    let pidfile = m.work.join("running.pid");
    let marker = m.work.join("queued.ran");
    let running = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let a = m.cli.submit(&["run", "--hosts", "h1", "--timeout", "120", "--", "sh", "-c", &running]).await.unwrap();
    let pid = wait_until(SOON, "the first command runs and wrote its pid", async || {
        let view = m.cli.request(a).await?;
        let pid = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok());
        Ok(match pid {
            Some(pid) if alive(pid) && view.tasks[0].status == TaskStatus::InProgress => Check::Done(pid),
            _ => Check::NotYet(format!("pid file {pid:?}; {}", describe_request(&view))),
        })
    })
    .await
    .unwrap();

    let queued = format!("echo ran > {}", marker.display());
    let b = m.cli.submit(&["run", "--hosts", "h1", "--", "sh", "-c", &queued]).await.unwrap();
    let view = m.cli.request(b).await.unwrap();
    assert_eq!(view.tasks[0].status, TaskStatus::Queued, "{}", describe_request(&view));

    let out = m.cli.cancel(b).await.unwrap();
    assert!(out.contains("1 task(s) aborted"), "`muster cancel {b}`: {out}");
    let view = m.cli.request(b).await.unwrap();
    assert_eq!(
        (view.status, view.tasks[0].status),
        (TaskStatus::Aborted, TaskStatus::Aborted),
        "{}",
        describe_request(&view)
    );
    let view = m.cli.request(a).await.unwrap();
    assert_eq!(view.tasks[0].status, TaskStatus::InProgress, "cancelling {b} touched {a}: {}", describe_request(&view));
    assert!(alive(pid), "cancelling request {b} killed request {a}'s command");

    let out = m.cli.cancel(a).await.unwrap();
    assert!(out.contains("1 task(s) aborted"), "`muster cancel {a}`: {out}");
    wait_until(SOON, &format!("the cancelled command (pid {pid}) is killed"), async || {
        Ok(if m.descendants.owns(pid) { Check::NotYet("still running".into()) } else { Check::Done(()) })
    })
    .await
    .unwrap();
    let view = m.cli.request(a).await.unwrap();
    assert_eq!(
        (view.status, view.tasks[0].status),
        (TaskStatus::Aborted, TaskStatus::Aborted),
        "{}",
        describe_request(&view)
    );

    // The agent's only slot is free now: had it kept the dropped command, it would start it at once. Nothing
    // observable says "dropped", so give it a few status intervals.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!marker.exists(), "the cancelled queued command ran anyway");
    let view = m.cli.request(b).await.unwrap();
    assert_eq!(
        (view.tasks[0].status, view.tasks[0].started_at),
        (TaskStatus::Aborted, 0),
        "{}",
        describe_request(&view)
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. An agent crash in the middle of a task

#[tokio::test]
async fn an_agent_killed_mid_task_runs_it_again_after_restart_and_it_completes_once() {
    let mut m = cluster(&["h1"], Settings::fast_commands()).await;
    let runs = m.work.join("runs");
    let script = format!("echo $$ >> {}; sleep 4; echo finished run", runs.display());
    let id = m.cli.submit(&["run", "--hosts", "h1", "--", "sh", "-c", &script]).await.unwrap();
    wait_request(&m.cli, id, "has its command running", SOON, |v| {
        v.tasks[0].status == TaskStatus::InProgress && m.work.lines("runs").len() == 1
    })
    .await
    .unwrap();

    m.agent("h1").kill9().unwrap();
    let restarted_at = unix_millis();
    m.agent("h1").restart().unwrap();

    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    let why = describe_request(&view);
    let t = &view.tasks[0];
    assert_eq!(
        (view.status, t.status, t.attempt, t.exit_code),
        (TaskStatus::Completed, TaskStatus::Completed, 1, Some(0)),
        "{why}"
    );
    assert!(t.stdout.contains("finished run"), "stdout {:?}", t.stdout);
    assert!(
        t.started_at >= restarted_at,
        "the recorded run started at {} before the agent restarted at {restarted_at}: {why}",
        t.started_at
    );
    let pids = m.work.lines("runs");
    assert_eq!(pids.len(), 2, "the command should have run once before the crash and once after: pids {pids:?}");
    assert_ne!(pids[0], pids[1]);

    // One result, from the first attempt: no re-send by the leader, no second final report.
    let stats = m.cli.stats().await.unwrap();
    for counter in ["tasks.retried", "report.stale_attempt", "report.rejected.finished_task", "fsm.illegal_transitions"]
    {
        assert_eq!(stats.counter(counter), 0, "{counter}: {:?}", stats.counters);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 6. A server crash while reports arrive

#[tokio::test]
async fn a_server_killed_while_reports_arrive_loses_none_of_them() {
    let mut m = cluster(&THREE, Settings::fast_commands()).await;
    // Each command prints two lines, waits for the test's gate file (sending progress reports every 500 ms),
    // then prints two more lines and ends within a few hundred ms.
    let w = m.work.shell();
    let script = format!(
        "echo \"$MUSTER_HOST line 1\"; echo \"$MUSTER_HOST line 2\"; \
         while [ ! -e {w}/gate ]; do sleep 0.1; done; \
         echo \"$MUSTER_HOST line 3\"; sleep 0.2; echo \"$MUSTER_HOST line 4\"; touch {w}/done.$MUSTER_HOST"
    );
    let id = m.cli.submit(&["run", "--hosts", "h*", "--", "sh", "-c", &script]).await.unwrap();
    wait_request(&m.cli, id, "has every task running", SOON, |v| {
        v.tasks.len() == 3 && v.tasks.iter().all(|t| t.status == TaskStatus::InProgress)
    })
    .await
    .unwrap();

    // Release the commands and kill the server while their last progress and final reports come in.
    std::fs::write(m.work.join("gate"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.server.kill9().unwrap();
    // Whatever was not consumed yet is stored in the stream while no server runs.
    wait_until(SOON, "every command has ended", async || {
        let done: Vec<&str> = THREE.iter().copied().filter(|h| m.work.join(format!("done.{h}")).exists()).collect();
        Ok(if done.len() == 3 { Check::Done(()) } else { Check::NotYet(format!("done on {done:?}")) })
    })
    .await
    .unwrap();
    m.server.restart().unwrap();

    let view = wait_request_end(&m.cli, id, m.timing.lease_ttl + REQUEST_END).await.unwrap();
    let why = describe_request(&view);
    assert_eq!(view.status, TaskStatus::Completed, "{why}");
    for host in THREE {
        let t = task(&view, host, "RUN", None);
        assert_eq!((t.status, t.attempt, t.exit_code), (TaskStatus::Completed, 1, Some(0)), "{why}");
        let want: String = (1..=4).map(|i| format!("{host} line {i}\n")).collect();
        assert_eq!(t.stdout, want, "stdout of the task on {host}");
    }
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.counter("tasks.retried"), 0, "a task had to be re-sent: {:?}", stats.counters);
}

// ---------------------------------------------------------------------------------------------------------------
// 7. Auto-restart

#[tokio::test]
async fn a_component_killed_behind_the_agents_back_is_restarted_within_the_limits() {
    let settings = Settings::fast_commands().agent("MUSTER_AUTO_RESTART_LIFETIME_MAX", "1");
    let m = cluster(&["h1"], settings).await;
    let svc = stack("svc", &m.work, &[Daemon::new("master")]);
    let bp = blueprint("svc-cluster", "svc", &[("all", &["h1"], &["master"])]);
    apply(&m, &svc, &bp).await.success().unwrap();
    let first = m.work.pid("h1", "master").expect("the start task wrote a pid");
    assert!(alive(first));
    // The restart budget is untouched so far: the component was started once, by its START task.
    let rows = m.cli.components().await.unwrap();
    assert_eq!(component(&rows, "h1", "master").map(|r| r.auto_restarts), Some(0), "{}", describe_components(&rows));
    assert_eq!(m.work.starts("h1", "master").len(), 1, "master was started more than once before the test killed it");

    m.descendants.kill(first).unwrap();
    let second = wait_until(SOON, "master is STARTED again after an auto-restart", async || {
        let rows = m.cli.components().await?;
        let row = component(&rows, "h1", "master").cloned();
        let pid = m.work.pid("h1", "master").filter(|p| *p != first && alive(*p));
        Ok(match (row, pid) {
            (Some(r), Some(pid)) if r.state == ComponentState::Started && r.auto_restarts >= 1 => Check::Done(pid),
            _ => Check::NotYet(format!("{}; new pid {pid:?}", describe_components(&rows))),
        })
    })
    .await
    .unwrap();
    let env = environ(second).expect("the restarted daemon's environment");
    assert_eq!(env.get("MUSTER_COMPONENT").map(String::as_str), Some("master"));
    assert_eq!(env.get("MUSTER_TASK"), None, "the restart should be the agent's own, not a task");
    assert_eq!(m.work.starts("h1", "master").len(), 2);
    assert_eq!(m.cli.requests().await.unwrap().len(), 1, "the server created a request for the restart");

    // The lifetime cap (1) is used up: the next death is reported, not repaired.
    m.descendants.kill(second).unwrap();
    wait_components(&m.cli, "master is INSTALLED after the second kill", SOON, |rows| {
        component(rows, "h1", "master").is_some_and(|r| r.state == ComponentState::Installed)
    })
    .await
    .unwrap();
    // Six status checks and three minimum gaps: long enough for a restart that should not happen to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = m.cli.components().await.unwrap();
    let r = component(&rows, "h1", "master").unwrap();
    assert_eq!(
        (r.state, r.desired, r.auto_restarts),
        (ComponentState::Installed, DesiredState::Started, 1),
        "{}",
        describe_components(&rows)
    );
    assert_eq!(m.work.starts("h1", "master").len(), 2, "master was started a third time");
    assert!(!alive(second));
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Bad input

#[tokio::test]
async fn bad_requests_and_stacks_are_refused_with_clear_errors_and_create_nothing() {
    let m = cluster(&["h1"], Settings::fast_commands()).await;
    let good = stack("svc", &m.work, &[Daemon::new("master"), Daemon::new("worker").depends_on("master")]);
    let file = m.work.write("good.toml", &good).unwrap();
    m.cli.apply_stack(&file).await.unwrap();

    async fn refused(m: &Muster, args: &[&str], want: &str) {
        let out = m.cli.output(args, muster_tests::cli::CALL_TIMEOUT).await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{}: stderr {}", out.what, out.stderr);
        assert!(out.stderr.starts_with("muster: "), "{}: stderr {:?}", out.what, out.stderr);
        assert!(out.stderr.contains(want), "{}: stderr {:?} should contain {want:?}", out.what, out.stderr);
    }
    refused(&m, &["start", "nope"], "unknown service or component \"nope\"").await;
    refused(&m, &["start", "master", "--hosts", "nomatch-*"], "matches no host").await;
    refused(&m, &["run", "--hosts", "nomatch-*", "--", "true"], "matches no host").await;
    refused(&m, &["run", "--hosts", "state:SLEEPY", "--", "true"], "unknown host state").await;
    refused(&m, &["start", "master", "--success-factor", "2"], "success_factor").await;
    refused(&m, &["request", "999"], "no request 999").await;

    // Invalid stacks: each error names the line of the mistake.
    let cases = [
        (
            "a dependency on an unknown component",
            good.replacen("depends_on = [\"master\"]", "depends_on = [\"mastr\"]", 1),
            "depends_on = [\"mastr\"]",
            "mastr",
        ),
        (
            "an unknown key",
            good.replacen("category = \"daemon\"", "category = \"daemon\"\ncolour = \"blue\"", 1),
            "colour = \"blue\"",
            "colour",
        ),
        (
            "a TOML syntax error",
            good.replacen("category = \"daemon\"", "category = \"daemon", 1),
            "category = \"daemon",
            "",
        ),
    ];
    for (case, text, bad_line, mentions) in cases {
        assert_ne!(text, good, "{case}: the test did not change the stack");
        let line =
            text.lines().position(|l| l == bad_line).unwrap_or_else(|| panic!("{case}: no line {bad_line:?}")) + 1;
        let file = m.work.write("bad.toml", &text).unwrap();
        let out =
            m.cli.output(&["stack", "apply", file.to_str().unwrap()], muster_tests::cli::CALL_TIMEOUT).await.unwrap();
        let stderr = out.failure().unwrap();
        assert!(
            stderr.starts_with(&format!("muster: invalid stack: line {line}: ")),
            "{case}: expected line {line} ({bad_line}); stderr {stderr:?}"
        );
        assert!(stderr.contains(mentions), "{case}: stderr {stderr:?} should mention {mentions:?}");
    }

    // Nothing was created or changed: no request, and the stack is still version 1.
    assert_eq!(m.cli.requests().await.unwrap(), [], "a refused command created a request");
    let out = m.cli.apply_stack(&m.work.join("good.toml")).await.unwrap();
    assert!(out.contains("version 1 (unchanged)"), "an invalid stack changed the stored one: {out}");
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.counter("requests.created"), 0, "{:?}", stats.counters);
}

#[tokio::test]
async fn forged_and_late_reports_are_refused_counted_and_change_nothing() {
    let m = cluster(&["h1", "h2"], Settings::fast_commands()).await;
    let done_id = m.cli.submit(&["run", "--hosts", "h1", "--", "echo", "hello"]).await.unwrap();
    let done = wait_request_end(&m.cli, done_id, REQUEST_END).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{}", describe_request(&done));
    // Two rolling batches: h1's task ends at once, h2's waits for the test's gate file, so the request is running
    // with one finished and one unfinished task while the reports are forged.
    let gate = m.work.join("gate");
    let script = format!(
        "if [ \"$MUSTER_HOST\" = h1 ]; then echo quick; else while [ ! -e {} ]; do sleep 0.1; done; echo real result; fi",
        gate.display()
    );
    let run_args = ["run", "--hosts", "h1,h2", "--batch", "1", "--timeout", "60", "--", "sh", "-c", &script];
    let running_id = m.cli.submit(&run_args).await.unwrap();
    let running = wait_request(&m.cli, running_id, "runs its second batch", SOON, |v| {
        v.tasks.iter().any(|t| t.host == "h2" && t.status == TaskStatus::InProgress)
    })
    .await
    .unwrap();
    let pruned = done.tasks[0].id;
    let finished = task(&running, "h1", "RUN", None).id;
    let unfinished = task(&running, "h2", "RUN", None).id;
    let before = m.cli.stats().await.unwrap();

    // Forged with h1's own credentials: what a compromised h1 could publish (only on its own report subject).
    let client = m.nats.connect_as(Identity::Agent("h1")).await.unwrap();
    let js = async_nats::jetstream::new(client);
    use TaskPhase::{Completed, InProgress};
    // A task nobody created.
    publish_report(&js, "h1", &task_report("h1", 424_242, 1, Completed, 0, "")).await.unwrap();
    // A late progress report for h1's finished task of the running request.
    publish_report(&js, "h1", &task_report("h1", finished, 1, InProgress, 999, "late")).await.unwrap();
    // The same for the task of the finished request.
    publish_report(&js, "h1", &task_report("h1", pruned, 1, InProgress, 999, "late")).await.unwrap();
    // h1 claims h2's running task, on its own subject.
    publish_report(&js, "h1", &task_report("h1", unfinished, 1, Completed, 0, "forged")).await.unwrap();
    // Someone on h1's subject speaks for h2.
    publish_report(&js, "h1", &task_report("h2", unfinished, 1, InProgress, 777, "forged")).await.unwrap();
    // Not MessagePack at all.
    publish_raw(&js, "h1", Bytes::from_static(b"\xc1\xc1 not msgpack"), "garbage-1").await.unwrap();
    // A replay of h1's real final report has the same Nats-Msg-Id: the stream drops it before anyone sees it.
    let replay = publish_report(&js, "h1", &task_report("h1", finished, 1, Completed, 0, "replayed")).await.unwrap();
    assert!(replay.duplicate, "a replayed final report was stored again: {replay:?}");

    let counters = [
        "report.rejected.unknown_task",
        "report.rejected.finished_task",
        "report.late",
        "report.rejected.wrong_host",
        "report.rejected.host_mismatch",
        "report.rejected.malformed",
    ];
    let refused = |stats: &Stats| counters.iter().map(|c| delta(&before, stats, c)).sum::<u64>();
    let after = wait_until(SOON, "every forged report is refused and counted", async || {
        let stats = m.cli.stats().await?;
        let seen: Vec<(&str, u64)> = counters.iter().map(|c| (*c, delta(&before, &stats, c))).collect();
        Ok(if refused(&stats) >= 6 { Check::Done(stats) } else { Check::NotYet(format!("{seen:?}")) })
    })
    .await
    .unwrap();
    let n = |c: &str| delta(&before, &after, c);
    let why = format!("before {:?} after {:?}", before.counters, after.counters);
    // Each is counted exactly once. A progress report behind its task's final one is `report.late` (the leader heard
    // the final early, or has it in memory); one it can no longer place counts as unknown or finished.
    let (unknown, finished, late) =
        (n("report.rejected.unknown_task"), n("report.rejected.finished_task"), n("report.late"));
    assert_eq!(unknown + finished + late, 3, "{why}");
    assert!(unknown >= 1 && late >= 1, "{why}");
    assert_eq!((n("report.rejected.wrong_host"), n("report.rejected.host_mismatch")), (1, 1), "{why}");
    assert_eq!(n("report.rejected.malformed"), 1, "{why}");
    assert_eq!(n("fsm.illegal_transitions"), 0, "{why}");

    // No record changed: the finished request as it was, the running request still running.
    assert_eq!(m.cli.request(done_id).await.unwrap(), done, "a refused report changed the finished request");
    assert_eq!(m.cli.request(running_id).await.unwrap(), running, "a refused report changed the running request");
    assert_eq!(m.cli.components().await.unwrap(), [], "reports mapped components");

    // And the forgeries did not get in the way of the real result: h2's own final report still counts.
    std::fs::write(&gate, "").unwrap();
    let view = wait_request(&m.cli, running_id, "completes with h2's real result", SOON, |v| v.status.is_terminal())
        .await
        .unwrap();
    let why = describe_request(&view);
    let t = task(&view, "h2", "RUN", None);
    assert_eq!((view.status, t.status, t.attempt), (TaskStatus::Completed, TaskStatus::Completed, 1), "{why}");
    assert_eq!(t.stdout, "real result\n", "{why}");
}
