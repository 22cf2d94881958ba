//! End-to-end tests of high availability: three muster-server instances (two voters, one observer) on a 3-node
//! NATS cluster with real agents, under continuous load — a request every 300 ms, retried when refused — while
//! the leader is killed, the leader is paused past its lease (once at the moment it sends a command), a follower
//! loses its redb file, or a NATS node dies.
//! The faults aimed at a window strike the moment the leader is seen entering it on the wire (its append of a
//! request's creation, of a task's COMPLETED status, its publication of a command), never after a sleep.
//! Each test then checks, failing on any violation, that nothing acknowledged was lost, every request is whole,
//! every task ran exactly as many times as its record's attempt and nothing ran unrecorded, the observer never
//! led, and every instance converged on the same state (see `muster_tests::Ensemble::audit`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use muster_schemas::api::HostSummary;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::ids::TaskAttempt;
use muster_schemas::{HostState, Subjects, Txn, TxnOp};
use muster_tests::ensemble::{describe_servers, sole_leader, Failover, LogEntry, Role, ServerRow, OBSERVER};
use muster_tests::load::{traced_run, Acked, Load, LoadReport, Sample, Sampler};
use muster_tests::{wait_until, within, Check, Ensemble, Settings, Timing};

const HOSTS: [&str; 3] = ["h-1", "h-2", "h-3"];

/// A 2 s lease renewed every 667 ms: short enough for quick failovers, long enough that a renewal through an R3
/// KV bucket on a loaded 2-core machine does not time out and depose a healthy leader. Heartbeats every second,
/// lost after 3: a host reconnecting to another NATS node keeps well inside its window.
const TIMING: Timing =
    Timing { heartbeat_interval: Duration::from_secs(1), heartbeat_misses: 3, lease_ttl: Duration::from_secs(2) };

/// The specified bound: a new leader within the lease TTL plus this (expiry is exact to ~10 ms; candidates retry
/// every TTL/4; winning is one KV create).
const FAILOVER_SLACK: Duration = Duration::from_secs(1);

/// Time for the three instances (after the first set up the R3 streams and buckets) and the agents to be up, a
/// leader elected and every host HEALTHY: seconds normally, much more on a loaded machine.
const STARTUP: Duration = Duration::from_secs(120);

/// Time for what must happen after a fault: a leader to appear when none is bounded, a restarted instance to
/// rejoin, requests to be acknowledged again.
const RECOVERY: Duration = Duration::from_secs(60);

/// Time for every acknowledged request to end and every instance to converge once the load stops.
const SETTLE: Duration = Duration::from_secs(120);

/// How often the load submits a request.
const LOAD_EVERY: Duration = Duration::from_millis(300);

/// How often the samplers look (a `muster servers` look itself takes ≥ 300 ms).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How soon after a NATS node died every replica must have applied what was written until then. Applying takes
/// milliseconds; JetStream needs a few seconds to move the txn stream's leader; a replica that stops applying for
/// longer serves stale reads.
const CATCH_UP: Duration = Duration::from_secs(15);

/// `muster run --timeout` of the load's commands (see [`load_args`]).
const RUN_TIMEOUT_SECS: u64 = 600;

/// Requests acknowledged before a fault, so it strikes a system with work in flight.
const WARM_UP_ACKS: usize = 5;

/// Requests that must be acknowledged after the system recovered from a fault.
const AFTER_ACKS: usize = 5;

/// The load's command and where it leaves its trace: each run appends its `MUSTER_TASK` to `runs/<host>.runs`, so
/// the tests count how often each task really ran (see [`muster_tests::load::traced_run`]).
fn load_args(e: &Ensemble) -> Vec<String> {
    traced_run(&e.work.join("runs"), "h-*", RUN_TIMEOUT_SECS).unwrap()
}

/// The request `txn` creates, if it creates one: a request written together with its first tasks, QUEUED and
/// without a stored command yet.
fn created_request(txn: &Txn) -> Option<u64> {
    let fresh = |request: u64| {
        txn.ops.iter().any(|op| {
            matches!(op, TxnOp::PutTask(t) if t.request == request && t.attempt == 1 && t.cmd_seq == 0
                && matches!(t.status, TaskStatus::Pending | TaskStatus::Queued))
        })
    };
    txn.ops.iter().find_map(|op| match op {
        TxnOp::PutRequest(r) if !r.status.is_terminal() && fresh(r.id) => Some(r.id),
        _ => None,
    })
}

/// A task `txn` writes as COMPLETED, if any: a final report being committed.
fn completed_task(txn: &Txn) -> Option<u64> {
    txn.ops.iter().find_map(|op| match op {
        TxnOp::PutTask(t) if t.status == TaskStatus::Completed => Some(t.id),
        _ => None,
    })
}

/// The fast command path, plus the snapshot interval if one is given.
fn settings(snapshot_every: Option<u64>) -> Settings {
    let s = Settings::fast_commands();
    match snapshot_every {
        Some(n) => s.server("MUSTER_SNAPSHOT_EVERY", &n.to_string()),
        None => s,
    }
}

/// An ensemble with a leader and every host HEALTHY.
async fn ready(settings: Settings) -> Ensemble {
    let mut e = Ensemble::start(TIMING, settings, &HOSTS).await.unwrap();
    let leader = e.wait_ready(STARTUP).await.unwrap();
    eprintln!("ensemble ready; {leader} leads");
    e
}

/// Looks at `muster servers` throughout a scenario.
fn servers_sampler(e: &Ensemble) -> Sampler<Vec<ServerRow>> {
    let cli = e.cli.clone();
    Sampler::start(SAMPLE_EVERY, move || {
        let cli = cli.clone();
        async move { cli.json::<Vec<ServerRow>>(&["servers"]).await }
    })
}

/// Starts the load and waits until it has work acknowledged.
async fn warm_load(e: &Ensemble) -> Load {
    let start = Instant::now();
    let load = Load::start(e.cli.clone(), load_args(e), LOAD_EVERY);
    load.wait_acked_after(start, WARM_UP_ACKS, RECOVERY).await.unwrap();
    load
}

/// The current leader, its epoch, taken right before a fault so the fault hits whoever leads now.
async fn current_leader(e: &mut Ensemble) -> ServerRow {
    wait_until(RECOVERY, "exactly one instance leads", async || {
        let rows = e.servers().await?;
        Ok(match sole_leader(&rows) {
            Some(l) => Check::Done(l.clone()),
            None => Check::NotYet(describe_servers(&rows)),
        })
    })
    .await
    .unwrap()
}

/// Whenever the observer answered `muster servers`, it reported itself an observer, never leader or follower.
fn assert_observer_never_led(samples: &[Sample<Vec<ServerRow>>]) {
    let seen: Vec<&Vec<ServerRow>> = samples.iter().filter_map(|s| s.seen.as_ref().ok()).collect();
    let observed = seen.iter().filter(|rows| rows.iter().any(|r| r.id == OBSERVER)).count();
    assert!(observed >= 5, "too few `muster servers` samples with the observer to judge: {observed}");
    for rows in &seen {
        for r in rows.iter().filter(|r| r.id == OBSERVER) {
            assert_eq!(r.role, Role::Observer, "the observer reported role {:?}: {}", r.role, describe_servers(rows));
        }
    }
    let both = seen.iter().filter(|rows| rows.iter().filter(|r| r.role == Role::Leader).count() > 1).count();
    eprintln!("{} `muster servers` samples ({both} with two instances calling themselves leader)", seen.len());
}

fn assert_failover_in_bound(what: &str, f: &Failover) {
    let bound = TIMING.lease_ttl + FAILOVER_SLACK;
    eprintln!(
        "{what}: {} leads (epoch {}) {:.2} s after it (not yet at {:.2} s; {} probes; bound {:.1} s)",
        f.leader,
        f.epoch,
        f.at_most.as_secs_f64(),
        f.at_least.as_secs_f64(),
        f.probes,
        bound.as_secs_f64()
    );
    assert_ne!(f.leader, OBSERVER, "{what}: the observer took the lead");
    assert!(f.at_most <= bound, "{what}: no new leader within the lease TTL + {FAILOVER_SLACK:?}: {f:?}");
}

/// Once the load has stopped: every request in the log ended and every instance converged on the same
/// `applied_seq` and digest; nothing acknowledged was lost; every request is whole, with one COMPLETED task per
/// host; every task ran on its own host exactly as many times as its record's attempt, and nothing ran that no
/// request records (see [`Ensemble::audit`]). Any violation fails the test.
async fn assert_nothing_lost_nothing_twice(e: &mut Ensemble, load: &LoadReport) {
    eprintln!("load: {}", load.summary());
    let runs = e.work.join("runs");
    let audit = e.audit(&load.ids(), &runs, &HOSTS, |_| HOSTS.len() as u64, SETTLE).await.unwrap_or_else(|err| {
        panic!("{err:#}");
    });
    eprintln!("{}", audit.summary());
}

/// What the txn log itself says (every state change is in it): epochs never go back; no host was ever written
/// HEARTBEAT_LOST or UNHEALTHY (a new leader grants every host a full window, and nothing here stops an agent);
/// and a task, once ended, is never written with another status, attempt or end time — it ended once.
fn assert_log_sane(log: &[LogEntry]) {
    let brief = |l: &LogEntry| format!("seq {} epoch {} by {}", l.seq, l.epoch, l.writer);
    for w in log.windows(2) {
        assert!(w[0].epoch <= w[1].epoch, "the log's epoch went back: {} then {}", brief(&w[0]), brief(&w[1]));
    }
    let mut ended: BTreeMap<u64, (TaskStatus, u32, u64, u64)> = BTreeMap::new();
    let mut registrations = 0;
    for l in log {
        for op in &l.txn.ops {
            match op {
                TxnOp::PutHost(h) => {
                    assert!(
                        !matches!(h.state, HostState::HeartbeatLost | HostState::Unhealthy),
                        "{} wrote {} as {} ({})",
                        brief(l),
                        h.id,
                        h.state,
                        h.problems.join("; ")
                    );
                    if h.state == HostState::WaitingForHostStatusUpdates {
                        registrations += 1;
                    }
                }
                TxnOp::PutTask(t) => {
                    let now = (t.status, t.attempt, t.finished_at, l.seq);
                    if let Some(&(status, attempt, finished_at, seq)) = ended.get(&t.id) {
                        assert_eq!(
                            (t.status, t.attempt, t.finished_at),
                            (status, attempt, finished_at),
                            "task {} ended as {status} (attempt {attempt}) at seq {seq}, then {} rewrote it",
                            t.id,
                            brief(l)
                        );
                    } else if t.status.is_terminal() {
                        ended.insert(t.id, now);
                    }
                }
                _ => {}
            }
        }
    }
    let (first, last) = (log.first().map_or(0, |l| l.seq), log.last().map_or(0, |l| l.seq));
    eprintln!("txn log {first}..={last}: {} tasks ended, {registrations} host registrations", ended.len());
}

/// Every instance reports the same applied_seq and digest.
async fn assert_converged(e: &mut Ensemble) -> Vec<ServerRow> {
    let started = Instant::now();
    let rows = e.wait_converged(SETTLE).await.unwrap();
    assert_eq!(rows.len(), 3, "{}", describe_servers(&rows));
    eprintln!("converged after {:.1} s: {}", started.elapsed().as_secs_f64(), describe_servers(&rows));
    rows
}

// ---------------------------------------------------------------------------------------------------------------
// 1. The leader is killed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_and_no_request_is_lost_or_run_twice() {
    let mut e = ready(settings(None)).await;
    let sampler = servers_sampler(&e);
    let load = warm_load(&e).await;

    // Killed the moment it appends a request's creation: committed, not yet answered.
    let old = current_leader(&mut e).await;
    let mut tap = e.tap_txns().await.unwrap();
    let what = format!("a request created under epoch {}", old.epoch);
    let txn = tap.next_where(STEP, &what, |t| t.epoch == old.epoch && created_request(t).is_some()).await.unwrap();
    e.server(&old.id).kill9().unwrap();
    let killed_at = Instant::now();
    let struck = created_request(&txn).unwrap();
    eprintln!("{} killed as it appended request {struck}'s creation", old.id);
    let failover = e.wait_failover(&old.id, killed_at, RECOVERY).await.unwrap();
    assert_failover_in_bound(&format!("SIGKILL of leader {}", old.id), &failover);
    assert!(failover.epoch > old.epoch, "the new leader's epoch {} is not above {}", failover.epoch, old.epoch);
    let recovered = Instant::now();
    load.wait_acked_after(recovered, AFTER_ACKS, RECOVERY).await.unwrap();

    // The killed instance comes back as a follower of the new leader and catches up.
    e.server(&old.id).restart().unwrap();
    e.wait_role(&old.id, Role::Follower, RECOVERY).await.unwrap();
    load.wait_acked_after(Instant::now(), 3, RECOVERY).await.unwrap();

    // The request whose creation was on the wire is in the log whether or not its caller heard back: it must
    // complete like an acknowledged one.
    let mut report = load.stop().await;
    report.acked.push(Acked { id: struck, at: killed_at });
    assert_nothing_lost_nothing_twice(&mut e, &report).await;
    assert_converged(&mut e).await;
    let log = e.txn_log().await.unwrap();
    assert_log_sane(&log);
    assert!(
        log.iter().any(|l| l.epoch == failover.epoch && l.writer == failover.leader),
        "no log entry of {} under epoch {}",
        failover.leader,
        failover.epoch
    );
    assert_observer_never_led(&sampler.stop().await);
}

// ---------------------------------------------------------------------------------------------------------------
// 2. The leader is paused past its lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_write_after_it_wakes_and_steps_down() {
    // No snapshots: the whole log stays readable, to check who wrote what when.
    let mut e = ready(settings(None)).await;
    let sampler = servers_sampler(&e);
    let load = warm_load(&e).await;

    // Stopped the moment it appends a task's COMPLETED status: the report is committed, not yet acked (its
    // successor gets it again and must apply it once).
    let old = current_leader(&mut e).await;
    let mut tap = e.tap_txns().await.unwrap();
    let what = format!("a task's COMPLETED status under epoch {}", old.epoch);
    let txn = tap.next_where(STEP, &what, |t| t.epoch == old.epoch && completed_task(t).is_some()).await.unwrap();
    e.pause(&old.id).unwrap();
    let paused_at = Instant::now();
    eprintln!("{} stopped as it appended task {}'s COMPLETED status", old.id, completed_task(&txn).unwrap());
    let failover = e.wait_failover(&old.id, paused_at, RECOVERY).await.unwrap();
    assert_failover_in_bound(&format!("SIGSTOP of leader {}", old.id), &failover);
    // Keep it stopped well past its lease, with the new leader writing meanwhile.
    let asleep = (TIMING.lease_ttl * 2).saturating_sub(paused_at.elapsed());
    tokio::time::sleep(asleep).await;
    load.wait_acked_after(paused_at, 2, RECOVERY).await.unwrap();

    let end_before_wake = e.log_state().await.unwrap().last_seq;
    let woke_at = Instant::now();
    e.resume(&old.id).unwrap();
    e.wait_role(&old.id, Role::Follower, RECOVERY).await.unwrap();
    eprintln!("{} reports follower {:.2} s after SIGCONT", old.id, woke_at.elapsed().as_secs_f64());
    load.wait_acked_after(woke_at, AFTER_ACKS, RECOVERY).await.unwrap();

    let report = load.stop().await;
    assert_nothing_lost_nothing_twice(&mut e, &report).await;
    assert_converged(&mut e).await;

    let stats = e.stats_of(&old.id, RECOVERY).await.unwrap();
    assert!(stats.counter("leader.step_downs") >= 1, "{} did not count a step-down: {:?}", old.id, stats.counters);

    // The log: epochs never go back, and nothing of the old epoch was appended after it woke.
    let log = e.txn_log().await.unwrap();
    assert!(log.first().is_some_and(|l| l.seq == 1), "the log was trimmed; it cannot be checked whole");
    assert_log_sane(&log);
    let late: Vec<String> = log
        .iter()
        .filter(|l| l.epoch <= old.epoch && l.seq > end_before_wake)
        .map(|l| format!("seq {} epoch {} by {}", l.seq, l.epoch, l.writer))
        .collect();
    assert!(late.is_empty(), "{} wrote under epoch {} after it woke: {late:?}", old.id, old.epoch);
    assert!(log.iter().any(|l| l.epoch == failover.epoch), "no log entry of the new epoch {}", failover.epoch);
    let text = std::fs::read_to_string(e.server(&old.id).log_path()).unwrap_or_default();
    let why = ["may have expired; not writing", "lease renewal failed; stepping down", "lease renewal timed out"];
    let said: Vec<&str> = why.iter().copied().filter(|w| text.contains(w)).collect();
    eprintln!("{} says it stepped down because: {said:?}", old.id);

    assert_observer_never_led(&sampler.stop().await);
}

// ---------------------------------------------------------------------------------------------------------------
// 3. A follower loses its redb file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_state_was_deleted_rebuilds_from_snapshot_and_log() {
    // A snapshot every 20 log entries, and the log trimmed behind each: the wiped follower cannot replay from 1.
    let mut e = ready(settings(Some(20))).await;
    let sampler = servers_sampler(&e);
    let load = warm_load(&e).await;

    let rows = e.servers().await.unwrap();
    let follower = rows
        .iter()
        .find(|r| r.role == Role::Follower)
        .unwrap_or_else(|| panic!("no follower: {}", describe_servers(&rows)))
        .clone();
    e.server(&follower.id).terminate(Duration::from_secs(10)).await.unwrap();
    let redb = e.redb_path(&follower.id);
    std::fs::remove_file(&redb).unwrap_or_else(|err| panic!("deleting {}: {err}", redb.display()));
    // It cannot have applied more than the log held when it stopped.
    let stopped_at = e.log_state().await.unwrap().last_seq;

    // Keep writing until the log has been trimmed past everything the follower ever applied.
    let trimmed = wait_until(RECOVERY, &format!("the log is trimmed past sequence {stopped_at}"), async || {
        let s = e.log_state().await?;
        Ok(if s.first_seq > stopped_at + 1 { Check::Done(s) } else { Check::NotYet(format!("{s:?}")) })
    })
    .await
    .unwrap();
    eprintln!("{} stopped at {stopped_at}, redb deleted; the log now holds {trimmed:?}", follower.id);

    e.server(&follower.id).restart().unwrap();
    let restarted = Instant::now();
    load.wait_acked_after(restarted, AFTER_ACKS, RECOVERY).await.unwrap();

    let report = load.stop().await;
    assert_nothing_lost_nothing_twice(&mut e, &report).await;
    let rows = assert_converged(&mut e).await;
    assert!(rows.iter().any(|r| r.id == follower.id && r.role == Role::Follower), "{}", describe_servers(&rows));
    assert!(redb.is_file(), "{} has no redb file {} after rebuilding", follower.id, redb.display());
    // What is left of the log behind the newest snapshot.
    assert_log_sane(&e.txn_log().await.unwrap());
    let stats = e.stats_of(&follower.id, RECOVERY).await.unwrap();
    assert!(
        stats.counter("snapshot.restored") >= 1,
        "{} did not restore a snapshot: {:?}",
        follower.id,
        stats.counters
    );
    assert_observer_never_led(&sampler.stop().await);
}

// ---------------------------------------------------------------------------------------------------------------
// 5. A NATS node dies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nats_node_does_not_interrupt_service() {
    let mut e = ready(settings(None)).await;
    let sampler = servers_sampler(&e);
    let load = warm_load(&e).await;

    // The node leading the txn stream's RAFT group: the worst one to lose.
    let state = e.log_state().await.unwrap();
    let name = state.nats_leader.clone().unwrap_or_else(|| panic!("the txn stream has no leader: {state:?}"));
    let node = e.nats.index_of(&name).unwrap_or_else(|| panic!("unknown node {name}"));
    let cli = e.cli.clone();
    let hosts = Sampler::start(SAMPLE_EVERY, move || {
        let cli = cli.clone();
        async move { cli.hosts().await }
    });
    let killed_at = Instant::now();
    e.nats.kill(node).unwrap();
    eprintln!("killed nats node {name}, the txn stream's leader");

    load.wait_acked_after(killed_at, AFTER_ACKS * 2, RECOVERY).await.unwrap();
    eprintln!("{} requests acknowledged {:.1} s after the kill", AFTER_ACKS * 2, killed_at.elapsed().as_secs_f64());
    // Every replica keeps applying: what was written until now is applied everywhere within CATCH_UP.
    let written = e.log_state().await.unwrap().last_seq;
    let caught_up = Instant::now();
    let rows = e.wait_applied(written, CATCH_UP).await.unwrap();
    eprintln!(
        "every instance applied up to {written} {:.1} s later: {}",
        caught_up.elapsed().as_secs_f64(),
        describe_servers(&rows)
    );
    // Long enough that a host cut off by the kill would have been declared lost twice over.
    let watch = TIMING.detection_window() * 2 + Duration::from_secs(2);
    tokio::time::sleep(watch.saturating_sub(killed_at.elapsed())).await;
    let samples = hosts.stop().await;
    let seen: Vec<&Vec<HostSummary>> = samples.iter().filter_map(|s| s.seen.as_ref().ok()).collect();
    let failed = samples.len() - seen.len();
    eprintln!("{} `muster hosts` samples after the kill, {failed} failed", samples.len());
    assert!(seen.len() >= 5, "too few successful `muster hosts` samples: {samples:?}");
    // HEALTHY throughout. An agent whose NATS node died registers again when it reconnects (as Ambari's do), and
    // a registration passes through WAITING_FOR_HOST_STATUS_UPDATES until the status it sends at once arrives:
    // seen only within one heartbeat interval of that registration.
    let step = TIMING.heartbeat_interval.as_secs_f64();
    for hosts in &seen {
        for id in HOSTS {
            let host = hosts.iter().find(|h| h.id == id);
            let ok = host.is_some_and(|h| {
                h.state == HostState::Healthy
                    || (h.state == HostState::WaitingForHostStatusUpdates && h.state_secs <= step)
            });
            assert!(ok, "{id} after the NATS node died: {host:?}");
        }
    }

    let report = load.stop().await;
    assert!(report.acked_after(killed_at) >= AFTER_ACKS * 2, "{}", report.summary());
    assert_nothing_lost_nothing_twice(&mut e, &report).await;
    assert_converged(&mut e).await;
    assert_log_sane(&e.txn_log().await.unwrap());
    assert_observer_never_led(&sampler.stop().await);
}

// ---------------------------------------------------------------------------------------------------------------
// 6. A leader stopped the moment it sends a command

/// Bound on one step that should take milliseconds.
const STEP: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_as_it_sends_a_command_has_committed_the_task_and_its_successor_finishes_it() {
    let mut e = ready(settings(None)).await;
    let sampler = servers_sampler(&e);
    let mut commands = e.client.subscribe(Subjects::default().cmd_all()).await.unwrap();
    let old = current_leader(&mut e).await;
    let (cli, args) = (e.cli.clone(), load_args(&e));
    let submission = tokio::spawn(async move {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.submit(&argv).await
    });
    // The test sees a command on the wire while JetStream still replicates it: the leader is stopped before it
    // can do anything after sending it.
    let command = within(STEP, "a command of the submitted request", commands.next()).await.unwrap().unwrap();
    e.pause(&old.id).unwrap();
    let paused_at = Instant::now();
    let header = command.headers.as_ref().and_then(|h| h.get(muster_schemas::headers::TASK));
    let task: u64 = header
        .and_then(|v| v.as_str().parse::<TaskAttempt>().ok().map(|t| t.task))
        .unwrap_or_else(|| panic!("command without a {} header: {command:?}", muster_schemas::headers::TASK));
    let failover = e.wait_failover(&old.id, paused_at, RECOVERY).await.unwrap();
    assert_failover_in_bound(&format!("SIGSTOP of leader {} as it sent task {task}'s command", old.id), &failover);
    let first = submission.await.unwrap();
    eprintln!("the submission whose command was on the wire: {first:?}");
    e.resume(&old.id).unwrap();
    e.wait_role(&old.id, Role::Follower, RECOVERY).await.unwrap();

    // A command goes out only for a committed task (else agents run what no request records, and a successor
    // that does not know the task may hand its id to another).
    let log = e.txn_log().await.unwrap();
    let committed = log
        .iter()
        .filter(|l| l.epoch == old.epoch)
        .any(|l| l.txn.ops.iter().any(|op| matches!(op, TxnOp::PutTask(t) if t.id == task)));
    assert!(committed, "{} sent task {task}'s command before the log held the task (epoch {})", old.id, old.epoch);

    // The new leader finishes that request (nobody was told about it) and serves new ones.
    let load = warm_load(&e).await;
    let mut report = load.stop().await;
    let request = e
        .all_requests()
        .await
        .unwrap()
        .into_values()
        .find(|r| r.tasks.iter().any(|t| t.id == task))
        .unwrap_or_else(|| panic!("no request has task {task}"));
    report.acked.push(muster_tests::load::Acked { id: request.id, at: paused_at });
    assert_nothing_lost_nothing_twice(&mut e, &report).await;
    assert_converged(&mut e).await;
    assert_log_sane(&e.txn_log().await.unwrap());
    assert_observer_never_led(&sampler.stop().await);
}
