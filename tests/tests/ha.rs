//! End-to-end tests of high availability: three muster-server instances (two voters, one observer) on a 3-node
//! NATS cluster with real agents, under continuous load — a request every 300 ms, retried when refused — while
//! the leader is killed, the leader is paused past its lease, a follower loses its redb file, or a NATS node dies.
//! Each test then checks that nothing acknowledged was lost, no task ran twice, the observer never led, and every
//! instance converged on the same state (see `muster_tests::Ensemble`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muster_schemas::api::{HostSummary, RequestView};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::HostState;
use muster_tests::ensemble::{describe_servers, sole_leader, Failover, Role, ServerRow, OBSERVER};
use muster_tests::load::{Load, LoadReport, Sample, Sampler};
use muster_tests::requests::describe_request;
use muster_tests::{wait_until, Check, Ensemble, Settings, Timing};

const HOSTS: [&str; 3] = ["h-1", "h-2", "h-3"];

/// A 2 s lease renewed every 667 ms: short enough for quick failovers, long enough that a renewal through an R3
/// KV bucket on a loaded 2-core machine does not time out and depose a healthy leader. Heartbeats every second,
/// lost after 3: a host reconnecting to another NATS node keeps well inside its window.
const TIMING: Timing =
    Timing { heartbeat_interval: Duration::from_secs(1), heartbeat_misses: 3, lease_ttl: Duration::from_secs(2) };

/// The specified bound: a new leader within the lease TTL plus this (expiry is exact to ~10 ms; candidates retry
/// every TTL/4; winning is one KV create).
const FAILOVER_SLACK: Duration = Duration::from_secs(1);

/// Time for the NATS cluster, three instances (R3 streams and buckets, created racing each other) and the agents
/// to be up, a leader elected and every host HEALTHY: seconds normally, much more on a loaded machine.
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

/// Requests acknowledged before a fault, so it strikes a system with work in flight.
const WARM_UP_ACKS: usize = 5;

/// Requests that must be acknowledged after the system recovered from a fault.
const AFTER_ACKS: usize = 5;

/// The load's command and where it leaves its trace: each run appends its task id to `runs/<host>.runs`, so the
/// tests can count how often each task really ran.
fn load_args(e: &Ensemble) -> Vec<String> {
    let runs = e.work.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let script = format!("echo $MUSTER_TASK >> {}/$MUSTER_HOST.runs", runs.display());
    ["run", "--hosts", "h-*", "--", "sh", "-c", &script].map(String::from).to_vec()
}

/// Task id → the hosts whose runs file lists it, once per run.
fn runs(e: &Ensemble) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for host in HOSTS {
        let path = e.work.join("runs").join(format!("{host}.runs"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let id: u64 = line.trim().parse().unwrap_or_else(|_| panic!("{}: not a task id: {line:?}", path.display()));
            out.entry(id).or_default().push(host.to_string());
        }
    }
    out
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
    let load = Load::start(e.cli.clone(), load_args(e), LOAD_EVERY);
    let start = Instant::now() - Duration::from_secs(1);
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

/// The observer never reported itself as anything but an observer, and no sample shows it leading.
fn assert_observer_never_led(samples: &[Sample<Vec<ServerRow>>]) {
    let seen: Vec<&Vec<ServerRow>> = samples.iter().filter_map(|s| s.seen.as_ref().ok()).collect();
    assert!(seen.len() >= 5, "too few successful `muster servers` samples to judge: {}", seen.len());
    for rows in &seen {
        for r in rows.iter().filter(|r| r.id == OBSERVER) {
            assert_eq!(r.role, Role::Observer, "the observer reported role {:?}: {}", r.role, describe_servers(rows));
        }
        assert!(rows.iter().any(|r| r.id == OBSERVER), "the observer did not answer: {}", describe_servers(rows));
    }
    let both = seen.iter().filter(|rows| rows.iter().filter(|r| r.role == Role::Leader).count() > 1).count();
    eprintln!("{} `muster servers` samples ({both} with two instances calling themselves leader)", seen.len());
}

fn assert_failover_in_bound(what: &str, f: &Failover) {
    let bound = TIMING.lease_ttl + FAILOVER_SLACK;
    eprintln!(
        "{what}: {} leads (epoch {}) after between {:.2} s and {:.2} s ({} looks; bound {:.1} s)",
        f.leader,
        f.epoch,
        f.at_least.as_secs_f64(),
        f.at_most.as_secs_f64(),
        f.looks,
        bound.as_secs_f64()
    );
    assert_ne!(f.leader, OBSERVER, "{what}: the observer took the lead");
    assert!(f.at_most <= bound, "{what}: no new leader within the lease TTL + {FAILOVER_SLACK:?}: {f:?}");
}

/// Waits until every acknowledged request has ended, then checks that nothing acknowledged was lost and that no
/// task ran more often than its record says: each acknowledged request COMPLETED with one COMPLETED task per host;
/// every task (of any request, acknowledged or not) appears in its own host's runs file at most `attempt` times,
/// and a COMPLETED one at least once; nothing ran that the server has no task for.
async fn assert_nothing_lost_nothing_twice(e: &Ensemble, load: &LoadReport) {
    eprintln!("load: {}", load.summary());
    let acked = load.ids();
    let all: BTreeMap<u64, RequestView> = wait_until(SETTLE, "every acknowledged request has ended", async || {
        let all = e.all_requests().await?;
        let missing: Vec<u64> = acked.iter().copied().filter(|id| !all.contains_key(id)).collect();
        let open: Vec<u64> =
            acked.iter().copied().filter(|id| all.get(id).is_some_and(|r| !r.status.is_terminal())).collect();
        Ok(if missing.is_empty() && open.is_empty() {
            Check::Done(all)
        } else {
            Check::NotYet(format!("not (yet) known: {missing:?}; not ended: {open:?}"))
        })
    })
    .await
    .unwrap();

    for id in &acked {
        let r = &all[id];
        assert_eq!(r.status, TaskStatus::Completed, "acknowledged request did not complete: {}", describe_request(r));
        let mut hosts: Vec<&str> = r.tasks.iter().map(|t| t.host.as_str()).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, HOSTS, "acknowledged request does not have one task per host: {}", describe_request(r));
    }

    let runs = runs(e);
    let mut tasks = BTreeMap::new();
    for r in all.values() {
        for t in &r.tasks {
            tasks.insert(t.id, (r, t));
        }
    }
    for (id, hosts) in &runs {
        let (r, _) = tasks.get(id).unwrap_or_else(|| panic!("task {id} ran on {hosts:?} but no request has it"));
        let t = tasks[id].1;
        assert!(hosts.iter().all(|h| *h == t.host), "task {id} of {} ran on {hosts:?}", describe_request(r));
    }
    let mut retried = 0;
    for (r, t) in tasks.values() {
        let ran = runs.get(&t.id).map_or(0, Vec::len);
        assert!(
            ran <= t.attempt as usize,
            "task {} ran {ran} times but its record says attempt {}: {}",
            t.id,
            t.attempt,
            describe_request(r)
        );
        if t.status == TaskStatus::Completed {
            assert!(ran >= 1, "task {} is COMPLETED but never ran: {}", t.id, describe_request(r));
        }
        if t.attempt > 1 {
            retried += 1;
        }
    }
    eprintln!(
        "{} requests ({} acknowledged), {} tasks, {} task runs, {retried} tasks with more than one attempt",
        all.len(),
        acked.len(),
        tasks.len(),
        runs.values().map(Vec::len).sum::<usize>()
    );
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

    let old = current_leader(&mut e).await;
    let killed_at = Instant::now();
    e.server(&old.id).kill9().unwrap();
    let failover = e.wait_failover(&old.id, killed_at, RECOVERY).await.unwrap();
    assert_failover_in_bound(&format!("SIGKILL of leader {}", old.id), &failover);
    assert!(failover.epoch > old.epoch, "the new leader's epoch {} is not above {}", failover.epoch, old.epoch);
    let recovered = Instant::now();
    load.wait_acked_after(recovered, AFTER_ACKS, RECOVERY).await.unwrap();

    // The killed instance comes back as a follower of the new leader and catches up.
    e.server(&old.id).restart().unwrap();
    e.wait_role(&old.id, Role::Follower, RECOVERY).await.unwrap();
    load.wait_acked_after(Instant::now(), 3, RECOVERY).await.unwrap();

    let report = load.stop().await;
    assert_nothing_lost_nothing_twice(&e, &report).await;
    assert_converged(&mut e).await;
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

    let old = current_leader(&mut e).await;
    let paused_at = Instant::now();
    e.pause(&old.id).unwrap();
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
    assert_nothing_lost_nothing_twice(&e, &report).await;
    let rows = assert_converged(&mut e).await;
    let leader = sole_leader(&rows).unwrap_or_else(|| panic!("no sole leader: {}", describe_servers(&rows)));
    assert_ne!(leader.id, old.id, "the woken instance leads again: {}", describe_servers(&rows));

    let stats = e.stats_of(&old.id, RECOVERY).await.unwrap();
    assert!(stats.counter("leader.step_downs") >= 1, "{} did not count a step-down: {:?}", old.id, stats.counters);

    // The log: epochs never go back, and nothing of the old epoch was appended after it woke.
    let log = e.txn_log().await.unwrap();
    assert!(log.first().is_some_and(|l| l.seq == 1), "the log was trimmed; it cannot be checked whole");
    for w in log.windows(2) {
        assert!(w[0].epoch <= w[1].epoch, "the log's epoch went back: {:?} then {:?}", w[0], w[1]);
    }
    let late: Vec<_> = log.iter().filter(|l| l.epoch <= old.epoch && l.seq > end_before_wake).collect();
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
    assert_nothing_lost_nothing_twice(&e, &report).await;
    let rows = assert_converged(&mut e).await;
    assert!(rows.iter().any(|r| r.id == follower.id && r.role == Role::Follower), "{}", describe_servers(&rows));
    assert!(redb.is_file(), "{} has no redb file {} after rebuilding", follower.id, redb.display());
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
    // Long enough that a host cut off by the kill would have been declared lost twice over.
    let watch = TIMING.detection_window() * 2 + Duration::from_secs(2);
    tokio::time::sleep(watch.saturating_sub(killed_at.elapsed())).await;
    let samples = hosts.stop().await;
    let seen: Vec<&Vec<HostSummary>> = samples.iter().filter_map(|s| s.seen.as_ref().ok()).collect();
    let failed = samples.len() - seen.len();
    eprintln!("{} `muster hosts` samples after the kill, {failed} failed", samples.len());
    assert!(seen.len() >= 5, "too few successful `muster hosts` samples: {samples:?}");
    for hosts in &seen {
        for id in HOSTS {
            let state = hosts.iter().find(|h| h.id == id).map(|h| h.state);
            assert_eq!(state, Some(HostState::Healthy), "{id} after the NATS node died: {hosts:?}");
        }
    }

    let report = load.stop().await;
    assert!(report.acked_after(killed_at) >= AFTER_ACKS * 2, "{}", report.summary());
    assert_nothing_lost_nothing_twice(&e, &report).await;
    assert_converged(&mut e).await;
    assert_observer_never_led(&sampler.stop().await);
}
