//! End-to-end tests of `muster-agent` as a process among processes (docs/agent.md, "Running as PID 1 in a
//! container"): orphans its commands leave are reaped (as a child subreaper here, as PID 1 in a container) without
//! touching its commands' exit statuses; SIGTERM is forwarded to running commands, honoured within the shutdown
//! grace and answered with exit 0; and as its PID namespace's init it stops everything else before it exits.
//! Real nats-server, muster-server and agents, real processes, checked through `/proc`.
//!
//! The PID 1 test runs the agent under `unshare --pid --fork --mount-proc` (util-linux): as root, or with
//! unprivileged user namespaces (`--user --map-root-user` is added when not root). Without them it fails, saying so
//! in the agent's log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muster_schemas::cluster::TaskStatus;
use muster_schemas::HostState;
use muster_tests::paths::workspace_bin;
use muster_tests::requests::{describe_request, task, wait_request_end};
use muster_tests::{wait_until, Check, Identity, Muster, Proc, Settings, Timing};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Time for freshly started agents to register and report healthy (see foundation.rs).
const STARTUP: Duration = Duration::from_secs(30);

/// Time for a request of a few short commands to end, with the margin of a loaded 2-core machine.
const REQUEST_END: Duration = Duration::from_secs(60);

/// Time for something the agent does within a second or two (a sweep after SIGCHLD, a status round).
const SOON: Duration = Duration::from_secs(20);

/// Shutdown grace of the SIGTERM tests: long enough to tell "ended at once on SIGTERM" from "killed at the end of
/// the grace" on a loaded machine.
const GRACE: Duration = Duration::from_secs(4);

/// What a SIGTERMed agent may take beyond its grace: the reporter's flush, the NATS flush, a loaded machine.
const EXIT_MARGIN: Duration = Duration::from_secs(6);

/// How soon after the agent's SIGTERM a command that ends on SIGTERM must be gone: well inside [`GRACE`].
const FORWARDED: Duration = Duration::from_secs(2);

/// A process as `/proc/<pid>/stat` shows it; `None` once it is gone (reaped).
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Every process whose parent is `parent`, with its state.
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| stat(pid).filter(|(_, ppid)| *ppid == parent).map(|(state, _)| (pid, state)))
        .collect()
}

/// The zombies among `parent`'s children: exited, never reaped.
fn zombies_of(parent: u32) -> Vec<u32> {
    children_of(parent).into_iter().filter(|(_, state)| *state == 'Z').map(|(pid, _)| pid).collect()
}

/// The pid in a file a command wrote, once it is there.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn log_of(proc: &Proc) -> String {
    std::fs::read_to_string(proc.log_path()).unwrap_or_default()
}

async fn cluster(settings: Settings) -> Muster {
    let mut m = Muster::start_configured(Timing::FAST, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    m
}

/// `muster run --hosts h1 -- sh -c <script>`, detached; returns the request id.
async fn run_sh(m: &Muster, script: &str) -> u64 {
    m.cli.submit(&["run", "--hosts", "h1", "--", "sh", "-c", script]).await.unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// Orphans

#[tokio::test]
async fn orphans_of_commands_are_reaped_and_the_commands_keep_their_exit_statuses() {
    let mut m = cluster(Settings::fast_commands()).await;
    let agent = m.agent("h1").pid().unwrap();

    // A double-forked daemon: the subshell that started it exits at once, so it is re-parented to the agent (its
    // child subreaper here); then it exits too, and only the agent can reap it.
    let pidfile = m.work.join("daemon.pid");
    let script = format!("( sleep 3 </dev/null >/dev/null 2>&1 & echo $! > {} ); echo started", pidfile.display());
    let id = run_sh(&m, &script).await;
    let daemon = wait_until(SOON, "the daemon is re-parented to the agent", async || {
        let pid = read_pid(&pidfile);
        Ok(match pid.map(|pid| (pid, stat(pid))) {
            Some((pid, Some((_, ppid)))) if ppid == agent => Check::Done(pid),
            seen => Check::NotYet(format!("daemon (pid, (state, parent)): {seen:?}; the agent is {agent}")),
        })
    })
    .await
    .unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    let t = task(&view, "h1", "RUN", None);
    assert_eq!((t.status, t.exit_code), (TaskStatus::Completed, Some(0)), "{}", describe_request(&view));

    // A zombie keeps its /proc entry: the entry goes only when the agent reaps it.
    wait_until(SOON, &format!("the agent reaps the exited daemon {daemon}"), async || {
        Ok(match stat(daemon) {
            None => Check::Done(()),
            Some((state, ppid)) => Check::NotYet(format!("pid {daemon} is in state {state}, parent {ppid}")),
        })
    })
    .await
    .unwrap();
    assert_eq!(zombies_of(agent), Vec::<u32>::new(), "zombies left under the agent");
    let log = log_of(m.agent("h1"));
    assert!(log.contains(&format!("reaped an orphaned process pid={daemon} code=0")), "agent log:\n{log}");

    // Many commands leaving orphans at once, while tokio reaps the commands themselves: every command's own exit
    // status reaches its report (a reaper taking it would turn it into "cannot wait"), and every orphan is reaped.
    let script = "for i in 1 2 3 4 5 6 7 8; do (sleep 0.$i </dev/null >/dev/null 2>&1 &); done; exit 7";
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(run_sh(&m, script).await);
    }
    for id in ids {
        let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
        let t = task(&view, "h1", "RUN", None);
        assert_eq!((t.status, t.exit_code), (TaskStatus::Failed, Some(7)), "{}", describe_request(&view));
    }
    wait_until(SOON, "every orphan is reaped", async || {
        let left = children_of(agent);
        Ok(if left.is_empty() { Check::Done(()) } else { Check::NotYet(format!("children of the agent: {left:?}")) })
    })
    .await
    .unwrap();
    let log = log_of(m.agent("h1"));
    let reaped = log.matches("reaped an orphaned process").count();
    assert_eq!(reaped, 1 + 8 * 8, "orphans reaped by the agent, per its log");
}

// ---------------------------------------------------------------------------------------------------------------
// SIGTERM

#[tokio::test]
async fn sigterm_is_forwarded_to_running_commands_and_honoured_within_the_grace() {
    let grace = GRACE.as_millis().to_string();
    let mut m = cluster(Settings::fast_commands().agent("MUSTER_SHUTDOWN_GRACE_MS", &grace)).await;
    let file = |name: &str| m.work.join(name);
    let (a_pid, a_term, b_pid, c_pid) = (file("a.pid"), file("a.term"), file("b.pid"), file("c.pid"));
    // A traps SIGTERM, cleans up and exits 0: reported COMPLETED. B ends on it: not reported (re-delivered).
    // C ignores it (and so does its `sleep`, which inherits the ignored signal): killed when the grace is over.
    let a = run_sh(
        &m,
        &format!(
            "trap 'echo TERM > {}; wait; exit 0' TERM; echo $$ > {}; sleep 600 & wait",
            a_term.display(),
            a_pid.display()
        ),
    )
    .await;
    let b = run_sh(&m, &format!("echo $$ > {}; exec sleep 600", b_pid.display())).await;
    let c = run_sh(&m, &format!("trap '' TERM; echo $$ > {}; exec sleep 600", c_pid.display())).await;
    let pids = wait_until(SOON, "the three commands run, and the server knows", async || {
        let pids: Vec<Option<u32>> = [&a_pid, &b_pid, &c_pid].iter().map(|p| read_pid(p)).collect();
        let mut statuses = Vec::new();
        for id in [a, b, c] {
            statuses.push(m.cli.request(id).await?.tasks[0].status);
        }
        let reported = statuses.iter().all(|s| *s == TaskStatus::InProgress);
        Ok(match pids.as_slice() {
            [Some(a), Some(b), Some(c)] if reported => Check::Done([*a, *b, *c]),
            _ => Check::NotYet(format!("pid files: {pids:?}; tasks: {statuses:?}")),
        })
    })
    .await
    .unwrap();
    let [a_sh, b_sleep, c_sleep] = pids;
    let alive = |pid: u32| stat(pid).is_some_and(|(state, _)| state != 'Z');
    assert!(alive(a_sh) && alive(b_sleep) && alive(c_sleep));

    let agent = m.agent("h1");
    let started = Instant::now();
    let exit = agent.terminate(GRACE + EXIT_MARGIN);
    let forwarded = async {
        // While the agent waits out its grace for C, A and B must already have ended on the forwarded SIGTERM.
        loop {
            if a_term.exists() && !alive(a_sh) && !alive(b_sleep) {
                return Some(started.elapsed());
            }
            if started.elapsed() > GRACE {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (status, forwarded) = tokio::join!(exit, forwarded);
    let status = status.unwrap();
    let took = started.elapsed();
    eprintln!("after the agent's SIGTERM: A and B ended in {forwarded:?}, the agent exited 0 in {took:?}");
    assert!(status.success(), "the agent exited with {status} on SIGTERM");
    let forwarded = forwarded.expect("A and B did not end on the forwarded SIGTERM within the grace");
    assert!(forwarded < FORWARDED, "A and B ended {forwarded:?} after the agent's SIGTERM");
    assert!(took >= GRACE, "the agent exited after {took:?}, before its {GRACE:?} grace was over for C");
    assert!(took < GRACE + EXIT_MARGIN, "the agent took {took:?} to exit");
    assert_eq!(std::fs::read_to_string(&a_term).unwrap().trim(), "TERM");
    assert!(!alive(c_sleep), "C (pid {c_sleep}) survived the end of the grace");
    let left = m.descendants.pids();
    assert!(left.is_empty(), "processes of the commands left behind: {left:?}");

    // What could be reported was: A's clean exit. B and C stay unreported, for the server to deliver again.
    let view = wait_request_end(&m.cli, a, REQUEST_END).await.unwrap();
    let t = task(&view, "h1", "RUN", None);
    assert_eq!((t.status, t.exit_code), (TaskStatus::Completed, Some(0)), "{}", describe_request(&view));
    for id in [b, c] {
        let view = m.cli.request(id).await.unwrap();
        assert_eq!(view.tasks[0].status, TaskStatus::InProgress, "{}", describe_request(&view));
    }
    let log = log_of(m.agent("h1"));
    assert!(log.contains("forwarding SIGTERM to running commands"), "agent log:\n{log}");
    assert!(log.contains("ended on the shutdown's SIGTERM; not reported"), "agent log:\n{log}");
}

// ---------------------------------------------------------------------------------------------------------------
// PID 1

/// The agent's environment as `Muster::spawn_agent` gives it (NATS, id, log filter, the test's marker, its own
/// identity), plus the test's agent settings.
fn agent_env(m: &Muster, id: &str) -> Vec<(String, String)> {
    let (marker, owner) = m.descendants.env();
    let mut env = vec![
        ("MUSTER_NATS_URL".to_owned(), m.nats.url()),
        ("MUSTER_HOST_ID".to_owned(), id.to_owned()),
        ("MUSTER_LOG".to_owned(), "info,muster_agent=debug".to_owned()),
        (marker.to_owned(), owner),
    ];
    env.extend(m.identities.env(Identity::Agent(id)).unwrap());
    env.extend(m.settings.agents.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Whether this test runs with effective uid 0 (`Uid: real effective ...` in `/proc/self/status`).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
}

/// Whether `pid` is PID 1 of its own PID namespace (`NSpid: <pid here> 1`).
fn is_namespace_init(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|ids| ids.split_whitespace().last()) == Some("1")
}

#[tokio::test]
async fn as_pid_1_the_agent_reaps_orphans_and_stops_the_rest_of_its_namespace_before_exiting() {
    let grace = Duration::from_secs(2);
    let settings = Settings::fast_commands().agent("MUSTER_SHUTDOWN_GRACE_MS", &grace.as_millis().to_string());
    let mut m = Muster::start_configured(Timing::FAST, settings, &[]).await.unwrap();
    let mut args: Vec<String> = Vec::new();
    if !running_as_root() {
        args.extend(["--user".into(), "--map-root-user".into()]);
    }
    args.extend(["--pid", "--fork", "--mount-proc", "--kill-child"].map(String::from));
    let bin: PathBuf = workspace_bin("muster-agent").unwrap();
    args.push(bin.to_str().unwrap().to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = agent_env(&m, "h1");
    let unshare = Proc::spawn("agent-h1", Path::new("unshare"), &args, env, m.dir.path()).unwrap();
    m.agents.insert("h1".into(), unshare);
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let unshare = m.agent("h1").pid().unwrap();
    let agent = match children_of(unshare).as_slice() {
        [(pid, _)] => *pid,
        other => panic!("unshare {unshare} should have the agent as its one child: {other:?}"),
    };
    assert!(is_namespace_init(agent), "the agent (pid {agent} here) is not PID 1 of its namespace");
    assert!(log_of(m.agent("h1")).contains("pid1=true"), "the agent does not know it is PID 1");

    // An orphan, re-parented to PID 1, reaped by it.
    let id = run_sh(&m, "(sleep 1 </dev/null >/dev/null 2>&1 &); echo started").await;
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(task(&view, "h1", "RUN", None).status, TaskStatus::Completed, "{}", describe_request(&view));
    wait_until(SOON, "PID 1 reaps the orphan", async || {
        let log = log_of(m.agents.get("h1").unwrap());
        let left = children_of(agent);
        Ok(if log.contains("reaped an orphaned process") && left.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(format!("children of the agent: {left:?}"))
        })
    })
    .await
    .unwrap();

    // Two daemons left running by their start commands: D stops cleanly on SIGTERM, E ignores it.
    let (d_up, d_term, e_up) = (m.work.join("d.up"), m.work.join("d.term"), m.work.join("e.up"));
    let d = format!(
        "(trap 'echo stopped > {}; exit 0' TERM; echo up > {}; while true; do sleep 1; done) \
         </dev/null >/dev/null 2>&1 & echo started",
        d_term.display(),
        d_up.display()
    );
    let e = format!(
        "(trap '' TERM; echo up > {}; exec sleep 600) </dev/null >/dev/null 2>&1 & echo started",
        e_up.display()
    );
    for script in [d, e] {
        let id = run_sh(&m, &script).await;
        let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
        assert_eq!(task(&view, "h1", "RUN", None).status, TaskStatus::Completed, "{}", describe_request(&view));
    }
    wait_until(SOON, "both daemons run", async || {
        Ok(if d_up.exists() && e_up.exists() { Check::Done(()) } else { Check::NotYet("no marker yet".into()) })
    })
    .await
    .unwrap();
    assert!(!m.descendants.pids().is_empty());

    // SIGTERM to PID 1, as `docker stop` sends it: D gets SIGTERM and stops, E is killed when the grace is over, and
    // PID 1 exits 0 (unshare passes its status on) with nothing left in its namespace.
    let started = Instant::now();
    kill(Pid::from_raw(i32::try_from(agent).unwrap()), Signal::SIGTERM).unwrap();
    let status = wait_until(grace + EXIT_MARGIN, "the agent exits", async || {
        Ok(match m.agent("h1").try_exit_status()? {
            Some(status) => Check::Done(status),
            None => Check::NotYet(format!("running for {:?}", started.elapsed())),
        })
    })
    .await
    .unwrap();
    let took = started.elapsed();
    eprintln!("PID 1 exited with {status} {took:?} after its SIGTERM");
    assert!(status.success(), "PID 1 exited with {status}; log:\n{}", log_of(m.agent("h1")));
    assert!(took >= grace, "exited after {took:?}: E cannot have had its {grace:?} grace");
    assert_eq!(std::fs::read_to_string(&d_term).ok().as_deref().map(str::trim), Some("stopped"), "D got no SIGTERM");
    let left = m.descendants.pids();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let log = log_of(m.agent("h1"));
    assert!(log.contains("stopped the container's other processes killed=1"), "agent log:\n{log}");
}
