//! End-to-end tests of the failover invariants that had no test of their own (issue 11): the schema gate (a
//! leader never writes entries a live replica does not understand), the fencing appender on its own, `leader.*`
//! answered only by the leader, the snapshot-install watchdog, a write retried across a failover with its
//! idempotency key, and a replaced leader's late snapshot.
//!
//! One nats-server and several muster-server instances started by the test, each with its own data directory,
//! id and — where a test needs it — failpoints (`FAILPOINTS`, a `failpoints` build). Every fault strikes at a
//! point observed on the wire or in an instance's log, or held open by a failpoint; none is slept into.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use muster_schemas::api::ServerStatus;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, HostState, Subjects, Txn, TxnOp};
use muster_tests::load::{traced_run, Runs};
use muster_tests::requests::wait_request_end;
use muster_tests::stacks::{stack, Daemon};
use muster_tests::{wait_until, within, Check, Muster, Proc, Settings, Timing};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A 2 s lease, as in tests/tests/ha.rs: short failovers, no spurious ones on a loaded 2-core machine.
const TIMING: Timing =
    Timing { heartbeat_interval: Duration::from_secs(1), heartbeat_misses: 3, lease_ttl: Duration::from_secs(2) };
/// Time for the first instance and the agents to be up, a leader elected, every host HEALTHY.
const STARTUP: Duration = Duration::from_secs(90);
/// Time for what must follow a fault: a leader, an instance caught up, a request ended.
const RECOVERY: Duration = Duration::from_secs(60);
/// A new leader within the lease TTL plus this after the old one is gone.
const FAILOVER_SLACK: Duration = Duration::from_secs(2);

fn subjects() -> Subjects {
    Subjects::default()
}

/// Another muster-server beside `m`'s, with its own data directory and `id`, `m`'s timing, and `env` on top.
fn extra_server(m: &Muster, id: &str, env: &[(&str, &str)]) -> Proc {
    m.spawn_instance(id, id, env).expect("the instance starts")
}

fn signal_proc(p: &Proc, sig: Signal) {
    let pid = p.pid().expect("running");
    signal::kill(Pid::from_raw(i32::try_from(pid).expect("pid")), sig).expect("signal");
}

/// `server-1=Leader(e3 a40/40)`.
fn describe(rows: &[ServerStatus]) -> String {
    rows.iter()
        .map(|r| format!("{}={:?}(e{} a{}/{:?})", r.id, r.role, r.epoch, r.applied_seq, r.log_end))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Looks at `muster servers` until `done` holds; returns the rows.
async fn wait_servers(
    m: &mut Muster,
    extra: &mut [&mut Proc],
    limit: Duration,
    what: &str,
    done: impl Fn(&[ServerStatus]) -> bool,
) -> anyhow::Result<Vec<ServerStatus>> {
    wait_until(limit, what, async || {
        m.ensure_alive()?;
        for p in extra.iter_mut() {
            p.ensure_running()?;
        }
        let rows: Vec<ServerStatus> = m.cli.json(&["servers"]).await?;
        Ok(if done(&rows) { Check::Done(rows) } else { Check::NotYet(describe(&rows)) })
    })
    .await
}

fn leads(rows: &[ServerStatus], id: &str) -> bool {
    rows.iter().any(|r| r.id == id && r.role == muster_schemas::api::ServerRole::Leader)
}

fn row<'a>(rows: &'a [ServerStatus], id: &str) -> Option<&'a ServerStatus> {
    rows.iter().find(|r| r.id == id)
}

/// Occurrences of `needle` in `p`'s whole log.
fn log_count(p: &Proc, needle: &str) -> usize {
    std::fs::read_to_string(p.log_path()).unwrap_or_default().matches(needle).count()
}

/// Sends `body` on `subject` with a reply inbox and collects every answer for `listen`.
async fn request_all(
    client: &async_nats::Client,
    subject: String,
    body: String,
    listen: Duration,
    during: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Vec<async_nats::Message>> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject, inbox, body.into()).await?;
    client.flush().await?;
    during.await;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
        out.push(m);
    }
    Ok(out)
}

fn text(m: &async_nats::Message) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// The schema gate

/// A leader never writes entries a live replica does not understand: a voter refuses to campaign while a live
/// instance announces an older txn schema (here an observer posing as the older release through the failpoint
/// `election::announced_txn_schema`: it can never lead, so nothing but the gate keeps the voter from leading), and
/// takes over once that instance is gone.
#[tokio::test]
async fn a_voter_does_not_lead_while_a_live_replica_announces_an_older_txn_schema() {
    let old = TXN_SCHEMA - 1;
    let settings = Settings::default()
        .server("MUSTER_ROLE", "observer")
        .server("FAILPOINTS", &format!("election::announced_txn_schema=return({old})"));
    let mut m = Muster::start_configured(TIMING, settings, &[]).await.unwrap();
    wait_servers(&mut m, &mut [], STARTUP, "the older observer answers", |rows| row(rows, "server-1").is_some())
        .await
        .unwrap();
    let mut new = extra_server(&m, "server-2", &[]);
    wait_servers(&mut m, &mut [&mut new], STARTUP, "the newer voter answers", |rows| row(rows, "server-2").is_some())
        .await
        .unwrap();
    // Many lease TTLs: the lease is free all along, and the one voter never takes it.
    let watched = Instant::now();
    while watched.elapsed() < TIMING.lease_ttl * 4 {
        let rows: Vec<ServerStatus> = m.cli.json(&["servers"]).await.unwrap();
        assert!(!leads(&rows, "server-2"), "the newer voter leads beside an older replica: {}", describe(&rows));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(new.log_path()).unwrap();
    let why = format!("instance server-1 announces txn schema {old}, older than this instance's {TXN_SCHEMA}");
    assert!(log.contains(&why), "the refusal names the older instance and both schemas:\n{}", new.log_tail(30));

    // Gone (SIGKILL: its announcement expires a TTL later): the voter leads.
    m.server.kill9().unwrap();
    let killed = Instant::now();
    let rows = wait_servers(&mut m, &mut [&mut new], RECOVERY, "the voter leads once the older one is gone", |rows| {
        leads(rows, "server-2")
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!(
        "the newer voter led {:.2} s after the older replica was killed: {}",
        took.as_secs_f64(),
        describe(&rows)
    );
    assert!(took <= TIMING.lease_ttl + FAILOVER_SLACK, "the gate held {took:?} after the older replica died");
}

/// The older instance may lead, and the newer ones follow it (they understand its entries); a newer voter does not
/// take the lease even when it is free while the older one lives, and takes over once it is gone.
#[tokio::test]
async fn the_older_instance_leads_and_the_newer_takes_over_only_once_it_is_gone() {
    let old = TXN_SCHEMA - 1;
    let settings =
        Settings::fast_commands().server("FAILPOINTS", &format!("election::announced_txn_schema=return({old})"));
    let mut m = Muster::start_configured(TIMING, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let mut new = extra_server(&m, "server-2", &[]);
    wait_servers(&mut m, &mut [&mut new], STARTUP, "the newer voter follows at the log's end", |rows| {
        leads(rows, "server-1")
            && row(rows, "server-2").is_some_and(|r| Some(r.applied_seq) == r.log_end && r.applied_seq > 0)
    })
    .await
    .unwrap();

    // The lease freed under the older leader (its key deleted): it steps down and wins it again; the newer voter,
    // which retries as often, never takes it.
    let js = async_nats::jetstream::new(m.nats.connect().await.unwrap());
    let kv = js.get_key_value(subjects().election_bucket()).await.unwrap();
    for _ in 0..3 {
        kv.delete("leader").await.unwrap();
        let freed = Instant::now();
        while freed.elapsed() < TIMING.lease_ttl * 2 {
            let rows: Vec<ServerStatus> = m.cli.json(&["servers"]).await.unwrap();
            assert!(!leads(&rows, "server-2"), "the newer voter took the lease: {}", describe(&rows));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(log_count(&m.server, "another instance holds the lease; stepping down") >= 1, "the lease was not freed");
    wait_servers(&mut m, &mut [&mut new], RECOVERY, "the older instance leads again", |rows| leads(rows, "server-1"))
        .await
        .unwrap();
    let id = m.cli.submit(&["run", "--hosts", "h1", "--", "true"]).await.unwrap();
    assert_eq!(wait_request_end(&m.cli, id, RECOVERY).await.unwrap().status, TaskStatus::Completed);

    m.server.kill9().unwrap();
    wait_servers(&mut m, &mut [&mut new], RECOVERY, "the newer voter leads", |rows| leads(rows, "server-2"))
        .await
        .unwrap();
    let id = m.cli.submit(&["run", "--hosts", "h1", "--", "true"]).await.unwrap();
    assert_eq!(wait_request_end(&m.cli, id, RECOVERY).await.unwrap().status, TaskStatus::Completed);
}

// ---------------------------------------------------------------------------------------------------------------
// The fencing appender

/// An append under a stale expected last sequence is refused by the stream, and the write it carried is
/// acknowledged to nobody: another writer appends behind the leader's back (as a leader that won the lease would),
/// then a write arrives. The leader's append is fenced, its term ends without an answer, and the write is not in
/// the log; asked again, the next term applies it once.
#[tokio::test]
async fn an_append_behind_a_moved_log_is_refused_and_acknowledged_to_nobody() {
    let mut m = Muster::start_configured(TIMING, Settings::default(), &[]).await.unwrap();
    let rows = wait_servers(&mut m, &mut [], STARTUP, "server-1 leads", |rows| leads(rows, "server-1")).await.unwrap();
    let epoch = rows[0].epoch;
    let client = m.nats.connect().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());

    // Another writer moves the log's end (an empty entry every replica applies alike).
    let intruder = Txn { schema: TXN_SCHEMA, epoch, proposed_at: 0, ops: Vec::new(), continues: false };
    let moved = js.publish(subjects().txn(), codec::encode(&intruder).into()).await.unwrap().await.unwrap().sequence;

    let source = stack("fenced", &m.work, &[Daemon::new("d")]);
    let subject = subjects().leader_api("stack.apply");
    let answers =
        request_all(&client, subject.clone(), source.clone(), Duration::from_secs(8), async {}).await.unwrap();
    assert!(
        answers.is_empty(),
        "a write whose append was fenced was answered: {:?}",
        answers.iter().map(text).collect::<Vec<_>>()
    );
    let log = std::fs::read_to_string(m.server.log_path()).unwrap();
    assert!(log.contains("fenced"), "the leader's append was not fenced:\n{}", m.server.log_tail(40));
    // Nothing the fenced term wrote follows the intruder's entry: the stack is not in the log.
    let stream = js.get_stream(subjects().txn_stream()).await.unwrap();
    let end = stream.get_info().await.unwrap().state.last_sequence;
    for seq in moved..=end {
        let msg = stream.direct_get(seq).await.unwrap();
        let txn: Txn = muster_schemas::decode(&msg.payload, 2 << 20).unwrap();
        assert!(
            txn.epoch != epoch || txn.ops.is_empty(),
            "entry {seq} of the fenced epoch {epoch} after the log moved at {moved}: {txn:?}"
        );
        assert!(!txn.ops.iter().any(|op| matches!(op, TxnOp::PutStack(_))), "the fenced write is in the log at {seq}");
    }

    // The instance leads again under a new epoch and applies the write once when asked again.
    let rows = wait_servers(&mut m, &mut [], RECOVERY, "server-1 leads under a newer epoch", |rows| {
        rows.iter().any(|r| r.id == "server-1" && r.epoch > epoch && leads(rows, "server-1"))
    })
    .await
    .unwrap();
    let answers = request_all(&client, subject, source, Duration::from_secs(5), async {}).await.unwrap();
    assert_eq!(answers.len(), 1, "{:?}", answers.iter().map(text).collect::<Vec<_>>());
    assert!(text(&answers[0]).contains("\"seq\""), "not a committed write: {}", text(&answers[0]));
    let stats = m.cli.stats().await.unwrap();
    assert!(stats.counter("leader.step_downs") >= 1, "{:?} {}", stats.counters, describe(&rows));
}

// ---------------------------------------------------------------------------------------------------------------
// `leader.*` answered only by the leader

/// A write on `<prefix>.leader.<endpoint>` reaches every instance still subscribed — here a leader paused past its
/// lease, which wakes up deposed with the write in its socket — and gets exactly one answer: the real leader's.
#[tokio::test]
async fn a_leader_write_is_answered_once_by_the_leader_never_by_a_deposed_one() {
    let mut m = Muster::start_configured(TIMING, Settings::default(), &[]).await.unwrap();
    wait_servers(&mut m, &mut [], STARTUP, "server-1 leads", |rows| leads(rows, "server-1")).await.unwrap();
    let mut s2 = extra_server(&m, "server-2", &[]);
    wait_servers(&mut m, &mut [&mut s2], STARTUP, "server-2 follows", |rows| row(rows, "server-2").is_some())
        .await
        .unwrap();

    signal_proc(&m.server, Signal::SIGSTOP);
    let rows = wait_servers(&mut m, &mut [&mut s2], RECOVERY, "server-2 leads", |rows| leads(rows, "server-2")).await;
    if rows.is_err() {
        signal_proc(&m.server, Signal::SIGCONT);
    }
    rows.unwrap();

    // The paused instance is still subscribed to `leader.>`: it gets the write too, and handles it as it wakes.
    let client = m.nats.connect().await.unwrap();
    let source = stack("answered-once", &m.work, &[Daemon::new("d")]);
    let server = &m.server;
    let answers = request_all(&client, subjects().leader_api("stack.apply"), source, Duration::from_secs(10), async {
        signal_proc(server, Signal::SIGCONT);
    })
    .await
    .unwrap();
    let texts: Vec<String> = answers.iter().map(text).collect();
    assert_eq!(answers.len(), 1, "a leader write got {} answers: {texts:?}", answers.len());
    assert!(texts[0].contains("\"seq\""), "the one answer is not the leader's committed write: {}", texts[0]);
    wait_servers(&mut m, &mut [&mut s2], RECOVERY, "the woken instance follows", |rows| {
        leads(rows, "server-2") && !leads(rows, "server-1")
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// The snapshot-install watchdog

/// A replica installing a snapshot for much longer than the stall watchdog's limit (a failpoint holds the
/// install 8 s, as a large state takes to download and restore) is not restarted: it installs once and catches up.
#[tokio::test]
async fn a_long_snapshot_install_is_not_restarted_by_the_stall_watchdog() {
    let settings = Settings::fast_commands().server("MUSTER_SNAPSHOT_EVERY", "5");
    let mut m = Muster::start_configured(TIMING, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    for _ in 0..3 {
        let id = m.cli.submit(&["run", "--hosts", "h1", "--", "true"]).await.unwrap();
        wait_request_end(&m.cli, id, RECOVERY).await.unwrap();
    }
    let js = async_nats::jetstream::new(m.nats.connect().await.unwrap());
    let mut txn = js.get_stream(subjects().txn_stream()).await.unwrap();
    wait_until(RECOVERY, "the log trimmed behind a snapshot", async || {
        let first = txn.info().await?.state.first_sequence;
        Ok(if first > 1 { Check::Done(()) } else { Check::NotYet(format!("first sequence {first}")) })
    })
    .await
    .unwrap();

    let mut replica = extra_server(
        &m,
        "server-2",
        &[("MUSTER_ROLE", "observer"), ("FAILPOINTS", "log::install_pause_ms=return(8000)")],
    );
    wait_servers(&mut m, &mut [&mut replica], RECOVERY, "the new replica caught up", |rows| {
        row(rows, "server-2").is_some_and(|r| r.applied_seq > 0 && Some(r.applied_seq) == r.log_end)
    })
    .await
    .unwrap();
    assert!(log_count(&replica, "state restored from snapshot") >= 1, "{}", replica.log_tail(40));
    assert!(log_count(&replica, "failpoint: holding the snapshot install") >= 1, "{}", replica.log_tail(40));
    assert_eq!(log_count(&replica, "txn applier stalled"), 0, "the watchdog restarted it:\n{}", replica.log_tail(40));
}

// ---------------------------------------------------------------------------------------------------------------
// A write retried across a failover

/// A `request.create` whose leader is killed the moment it appends the request (committed, not answered) and that
/// the caller repeats with the same idempotency key to the next leader is answered with the request the first
/// attempt created, and its command runs once.
#[tokio::test]
async fn a_write_retried_across_a_failover_gets_the_original_answer_and_runs_once() {
    let mut m = Muster::start_configured(TIMING, Settings::fast_commands(), &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let mut s2 = extra_server(&m, "server-2", &[]);
    wait_servers(&mut m, &mut [&mut s2], STARTUP, "server-2 follows", |rows| {
        leads(rows, "server-1") && row(rows, "server-2").is_some_and(|r| Some(r.applied_seq) == r.log_end)
    })
    .await
    .unwrap();

    let runs = m.work.join("runs");
    let args = traced_run(&runs, "h1", 600).unwrap();
    let argv: Vec<String> = args[args.iter().position(|a| a == "--").unwrap() + 1..].to_vec();
    let spec = serde_json::json!({
        "action": "run", "hosts": "h1", "argv": argv, "timeout_secs": 600, "idempotency_key": "across-failover",
    })
    .to_string();
    let client = m.nats.connect().await.unwrap();
    let mut tap = client.subscribe(subjects().txn()).await.unwrap();
    client.flush().await.unwrap();
    let subject = subjects().api("request.create");
    let first = {
        let (client, subject, spec) = (client.clone(), subject.clone(), spec.clone());
        tokio::spawn(async move { client.request(subject, spec.into()).await })
    };
    let created = within(RECOVERY, "the leader appends the request", async {
        while let Some(msg) = tap.next().await {
            let Ok(txn) = muster_schemas::decode::<Txn>(&msg.payload, 2 << 20) else { continue };
            if let Some(id) = txn.ops.iter().find_map(|op| match op {
                TxnOp::PutRequest(r) => Some(r.id),
                _ => None,
            }) {
                return Some(id);
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("the txn subscription ended");
    m.server.kill9().unwrap();
    let killed = Instant::now();
    wait_servers(&mut m, &mut [&mut s2], RECOVERY, "server-2 leads", |rows| leads(rows, "server-2")).await.unwrap();
    eprintln!("server-2 led {:.2} s after the kill", killed.elapsed().as_secs_f64());
    // The first attempt is answered by nobody, or with an error (an instance forwarding it heard no leader).
    let first = first.await.unwrap();
    assert!(
        !first.as_ref().is_ok_and(|r| text(r).contains(&format!("\"request\":{created}"))),
        "the killed leader answered after all: {first:?}"
    );

    let again =
        within(RECOVERY, "the repeat is answered", client.request(subject, spec.into())).await.unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&again.payload).unwrap();
    assert_eq!(reply["request"].as_u64(), Some(created), "the repeat got another answer: {reply}");
    let done = wait_request_end(&m.cli, created, RECOVERY).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    let requests = m.cli.requests().await.unwrap();
    assert_eq!(requests.iter().map(|r| r.id).collect::<Vec<_>>(), vec![created], "created twice: {requests:?}");
    let ran = Runs::read(Path::new(&runs), &["h1"]).unwrap();
    let task = done.tasks[0].id;
    assert_eq!(ran.of(task).len(), 1, "task {task} ran {} times: {ran:?}", ran.of(task).len());
    assert_eq!(ran.total(), 1, "{ran:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// A replaced leader's late snapshot

/// The sequences the stored snapshots cover, newest last, read from the object store's metadata.
async fn stored_snapshots(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<u64>> {
    let os = js.get_object_store("muster-snapshots").await?;
    let mut list = os.list().await?;
    let mut seqs = Vec::new();
    while let Some(info) = list.next().await {
        let info = info?;
        if !info.deleted {
            seqs.push(info.metadata.get("muster-seq").and_then(|s| s.parse().ok()).context("no muster-seq")?);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// A leader paused in the middle of storing a snapshot (every check passed, the put held 20 s by a failpoint) wakes up
/// after its successor stored a newer snapshot and trimmed the log behind it. Its late put must not hide the
/// newer one: a replica that needs a snapshot afterwards still finds one that meets the log.
#[tokio::test]
async fn a_replaced_leaders_late_snapshot_never_hides_its_successors() {
    let settings = Settings::fast_commands()
        .server("MUSTER_SNAPSHOT_EVERY", "30")
        .server("FAILPOINTS", "snapshot::put_pause_ms=1*return(20000)");
    let mut m = Muster::start_configured(TIMING, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let mut s2 = extra_server(&m, "server-2", &[("MUSTER_SNAPSHOT_EVERY", "30")]);
    wait_servers(&mut m, &mut [&mut s2], STARTUP, "server-2 follows", |rows| row(rows, "server-2").is_some())
        .await
        .unwrap();
    // Entries until server-1's first snapshot is due, and held.
    let mut submitted = 0;
    wait_until(RECOVERY, "server-1 holds its first snapshot put", async || {
        if log_count(&m.server, "failpoint: holding the snapshot put") > 0 {
            return Ok(Check::Done(()));
        }
        let id = m.cli.submit(&["run", "--hosts", "h1", "--", "true"]).await?;
        submitted += 1;
        wait_request_end(&m.cli, id, RECOVERY).await?;
        Ok(Check::NotYet(format!("{submitted} requests")))
    })
    .await
    .unwrap();
    signal_proc(&m.server, Signal::SIGSTOP);
    assert_eq!(log_count(&m.server, "snapshot stored"), 0, "paused too late: the put landed already");

    // The successor leads, snapshots at once (none is stored yet) and trims the log behind it.
    let js = async_nats::jetstream::new(m.nats.connect().await.unwrap());
    let newer = wait_until(RECOVERY, "server-2 stored a snapshot", async || {
        m.agent("h1").ensure_running()?;
        s2.ensure_running()?;
        let seqs = stored_snapshots(&js).await.unwrap_or_default();
        Ok(match seqs.last() {
            Some(&seq) if log_count(&s2, "snapshot stored") > 0 => Check::Done(seq),
            _ => Check::NotYet(format!("stored: {seqs:?}")),
        })
    })
    .await;
    signal_proc(&m.server, Signal::SIGCONT);
    let newer = newer.unwrap();
    // The paused leader's put lands late (its log says so), then it finds itself deposed.
    wait_until(RECOVERY, "server-1's late snapshot lands", async || {
        Ok(if log_count(&m.server, "snapshot stored") > 0 {
            Check::Done(())
        } else {
            Check::NotYet(m.server.log_tail(3))
        })
    })
    .await
    .unwrap();
    let seqs = stored_snapshots(&js).await.unwrap();
    assert_eq!(seqs.last().copied(), Some(newer), "the newest snapshot is gone: {seqs:?}");

    // A replica that needs a snapshot (a new one) installs the newest and meets the log after it.
    let mut s3 = extra_server(&m, "server-3", &[("MUSTER_ROLE", "observer")]);
    wait_servers(&mut m, &mut [&mut s2, &mut s3], RECOVERY, "a new replica restored and caught up", |rows| {
        row(rows, "server-3").is_some_and(|r| r.applied_seq > 0 && Some(r.applied_seq) == r.log_end)
    })
    .await
    .unwrap();
    assert_eq!(log_count(&s3, "state restored from snapshot"), 1, "{}", s3.log_tail(30));
}
