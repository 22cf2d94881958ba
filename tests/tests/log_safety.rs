//! End-to-end tests of the log's safety under failure: a decision cut short is applied by no replica, a new leader
//! never writes under an epoch lower than the log's, an entry a replica does not understand stops it, and an
//! instance whose lease TTL or server id clashes with the cluster's refuses to start. Each fault is made to happen
//! at its exact point — a failpoint in the leader (`FAILPOINTS`, a `failpoints` build), a bucket deleted while the
//! server is down, an entry published onto the log — never slept into.

use std::time::Duration;

use muster_schemas::cluster::TaskStatus;
use muster_schemas::{HostState, Subjects};
use muster_tests::requests::wait_request_end;
use muster_tests::{wait_until, Check, Muster, Proc, Settings, Timing};

/// Time for freshly started agents to register and report healthy.
const STARTUP: Duration = Duration::from_secs(30);
/// Time for a server to step down, win its lease again and lead (a lease TTL of 1 s, then the claim).
const RELEAD: Duration = Duration::from_secs(20);
/// Longest wait of the caller whose write was cut short (it is stopped before).
const WRITE_LIMIT: Duration = Duration::from_secs(120);
/// Time for an instance that must refuse to start to exit (setup, one `servers` round).
const REFUSAL: Duration = Duration::from_secs(20);

/// A second muster-server beside `m`'s: its own data directory, `id`, and `m`'s timing unless `env` says otherwise.
fn second_server(m: &Muster, name: &str, id: &str, env: &[(&str, &str)]) -> Proc {
    m.spawn_instance(name, id, env).expect("second server starts")
}

/// Waits until `p` exits and returns its exit status and log.
async fn wait_exit(p: &mut Proc, limit: Duration, why: &str) -> (std::process::ExitStatus, String) {
    let what = format!("{} exits ({why})", p.name());
    wait_until(limit, &what, async || match p.try_exit_status()? {
        Some(status) => Ok(Check::Done((status, p.log_tail(200)))),
        None => Ok(Check::NotYet(format!("still running; last lines:\n{}", p.log_tail(5)))),
    })
    .await
    .unwrap()
}

/// Waits until the server is leader again after `step_downs` leaderships ended.
async fn wait_leading_again(m: &mut Muster, step_downs: u64) {
    wait_until(RELEAD, "the server leads again", async || {
        m.ensure_alive()?;
        let s = m.cli.stats().await?;
        let again = s.role == "leader" && s.counter("leader.step_downs") > step_downs;
        Ok(if again { Check::Done(()) } else { Check::NotYet(format!("{} {:?}", s.role, s.counters)) })
    })
    .await
    .unwrap();
}

/// Finding 1: a decision that spans several log entries and whose last part never lands (the leader failed
/// there) is applied by no replica: the next leader never sees any of it, and is not told it succeeded.
#[tokio::test]
async fn a_decision_cut_short_is_applied_by_no_replica() {
    // Every op its own part, and the last part of the first decision that writes a request fails to append.
    let settings = Settings::fast_commands()
        .server("FAILPOINTS", "leader::txn_part_bytes=return(1);leader::commit_last_part=1*return");
    let mut m = Muster::start_configured(Timing::FAST, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let before = m.cli.stats().await.unwrap();
    assert_eq!(before.counter("leader.step_downs"), 0, "a one-host decision was split: {:?}", before.counters);

    // PutRequest, PutTask: several parts; the last one fails and the term ends. The caller gets no answer from a
    // term that ended (it would repeat the write, with its idempotency key, after its write timeout): its CLI is
    // left waiting in the background and stopped at the end.
    let cli = m.cli.clone();
    let caller = tokio::spawn(async move {
        cli.output(&["run", "--hosts", "h1", "--detach", "--json", "--", "true"], WRITE_LIMIT).await
    });
    wait_leading_again(&mut m, 0).await;
    let requests = m.cli.requests().await.unwrap();
    assert!(requests.is_empty(), "the decision cut short left a request: {requests:#?}");

    let id = m.cli.submit(&["run", "--hosts", "h1", "--", "true"]).await.unwrap();
    let done = wait_request_end(&m.cli, id, STARTUP).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    let requests = m.cli.requests().await.unwrap();
    assert_eq!(requests.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id], "{requests:#?}");
    caller.abort();
    let stats = m.cli.stats().await.unwrap();
    assert!(stats.counter("txn.dropped_incomplete") >= 1, "{:?}", stats.counters);
    assert_eq!(stats.counter("txn.refused_stale_epoch"), 0, "{:?}", stats.counters);
}

/// Finding 2: a recreated election bucket restarts lease revisions at 1, below the epochs in the log. The next
/// leader still writes above the log's epoch, so its writes are applied, not refused while being acknowledged.
#[tokio::test]
async fn a_recreated_election_bucket_does_not_make_the_next_leader_stale() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    // A second term, so the log's epoch is above the revision a new bucket starts at (renewals raise it too).
    m.server.restart().unwrap();
    wait_until(RELEAD, "the restarted server leads at an epoch above 1", async || {
        m.ensure_alive()?;
        let s = m.cli.stats().await?;
        Ok(if s.role == "leader" && s.epoch > 1 { Check::Done(()) } else { Check::NotYet(format!("{s:?}")) })
    })
    .await
    .unwrap();
    m.server.kill9().unwrap();
    let client = m.nats.connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_key_value(Subjects::new("muster").election_bucket()).await.unwrap();
    m.server.restart().unwrap();

    m.spawn_agent("h2").unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.counter("txn.refused_stale_epoch"), 0, "{:?}", stats.counters);
    assert!(stats.counter("leader.epoch_above_lease") >= 1, "{:?}", stats.counters);
}

/// Finding 2: the lease TTL is one cluster-wide value, the election bucket's. An instance configured with another
/// refuses to start instead of changing it under the leader.
#[tokio::test]
async fn an_instance_with_another_lease_ttl_refuses_to_start() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let other = (m.timing.lease_ttl * 3).as_millis().to_string();
    let mut s2 = second_server(&m, "server-2", "server-2", &[("MUSTER_LEASE_TTL_MS", &other)]);
    let (status, log) = wait_exit(&mut s2, REFUSAL, "its lease TTL differs from the bucket's").await;
    assert!(!status.success(), "{status}");
    assert!(log.contains("lease TTL") && log.contains(&other), "the error names the setting:\n{log}");
    // The cluster's TTL is untouched: the first server still leads (its renewals would fail under another TTL).
    m.spawn_agent("h2").unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
}

/// Finding 7: two live instances with one server id would both pass the lease's identity check; the second one
/// refuses to start.
#[tokio::test]
async fn a_second_instance_with_the_same_server_id_refuses_to_start() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let mut twin = second_server(&m, "twin", "server-1", &[]);
    let (status, log) = wait_exit(&mut twin, REFUSAL, "server-1 is taken").await;
    assert!(!status.success(), "{status}");
    assert!(log.contains("server id") && log.contains("server-1"), "the error names the id:\n{log}");
    m.ensure_alive().unwrap();
}

/// Finding 7: a log entry this build cannot decode (here: not MessagePack at all; in a rolling upgrade, an op
/// kind it does not know) stops the replica loudly, its applied sequence left before the entry, instead of being
/// skipped while other replicas apply it.
#[tokio::test]
async fn a_log_entry_the_replica_does_not_understand_stops_it() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let client = m.nats.connect().await.unwrap();
    let js = async_nats::jetstream::new(client);
    let ack = js.publish(Subjects::new("muster").txn(), "not a txn".into()).await.unwrap().await.unwrap();
    let seq = ack.sequence;
    let (status, log) = wait_exit(&mut m.server, REFUSAL, "it cannot apply the log past the entry").await;
    assert!(!status.success(), "{status}");
    let said = format!("txn log entry {seq} is not understood");
    let stayed = format!("applied up to {}", seq - 1);
    assert!(log.contains(&said) && log.contains(&stayed), "wanted {said:?} and {stayed:?} in:\n{log}");
}
