//! End-to-end: nothing deposed acks (issue 11, finding 3), and a repeated write is answered with its original
//! result (finding 7).
//!
//! A leader paused past its lease, holding a report its pull was handed for a task it does not know (as it would
//! not know one its successor created), must not term-ack it when it wakes up (the report would be deleted from
//! the work queue, and the successor would never hear of it): it proves its leadership with a fenced append before
//! it tells anyone anything, fails, and steps down; the report is redelivered to the real leader, which decides. An
//! ack's subject names its delivery, and the first delivery went to the paused leader alone, so whose ack it is can
//! be told for certain.
//!
//! The window is hit by observation, not by a sleep: the leader is paused the moment its report pull is seen on
//! the wire, and the report is published only once the successor leads (two failpoints make this exact: every
//! instance starts pulling reports 8 s after it takes over, and a pull lives 30 s — so the paused leader's pull is
//! the only one, and still open, when the report is stored).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer;
use futures::StreamExt;
use muster_schemas::api::{Committed, Endpoint, RequestCreated};
use muster_schemas::commands::TaskPhase;
use muster_schemas::{HostState, Subjects};
use muster_tests::cli::CALL_TIMEOUT;
use muster_tests::ensemble::Role;
use muster_tests::reports::{publish_report, task_report};
use muster_tests::{wait_until, within, Check, Ensemble, Identity, Muster, Settings, Timing};

/// The leader's durable consumer on the reports stream (muster-server's `log::REPORTS_CONSUMER`).
const REPORTS_CONSUMER: &str = "muster-leader";

/// A task id no leader ever created.
const UNKNOWN_TASK: u64 = 987_654_321;

/// A 2 s lease, as in tests/tests/ha.rs: short failovers, no spurious ones on a loaded 2-core machine.
const TIMING: Timing =
    Timing { heartbeat_interval: Duration::from_secs(1), heartbeat_misses: 3, lease_ttl: Duration::from_secs(2) };

/// Every instance starts pulling reports this long after it takes over (failpoint), and each pull lives as long
/// as [`PULL_LIFE`]: the successor is not pulling yet when the report is stored; the paused leader's pull is.
const FAILPOINTS: &str = "ingest::reports_start_delay_ms=return(8000);ingest::report_pull_expires_ms=return(30000)";
const PULL_LIFE: Duration = Duration::from_secs(30);

const STARTUP: Duration = Duration::from_secs(120);
const RECOVERY: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_paused_leader_that_wakes_up_deposed_acks_nothing() -> anyhow::Result<()> {
    let settings = Settings::fast_commands().server("FAILPOINTS", FAILPOINTS);
    let mut e = Ensemble::start(TIMING, settings, &["h1"]).await?;
    let old = e.wait_ready(STARTUP).await?;
    let subjects = Subjects::default();
    let stream = subjects.reports_stream();
    let mut pulls = e.client.subscribe(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{REPORTS_CONSUMER}")).await?;
    let mut acks = e.client.subscribe(format!("$JS.ACK.{stream}.{REPORTS_CONSUMER}.>")).await?;
    e.client.flush().await?;

    // Only the leader pulls: pause it the moment its pull is on the wire.
    within(STARTUP, "the leader's first report pull", pulls.next()).await?.context("pull subscription ended")?;
    e.pause(&old)?;
    let pulled_at = Instant::now();
    let failover = e.wait_failover(&old, pulled_at, RECOVERY).await?;

    // A report the paused leader's state cannot place (its task is unknown: think of one its successor created) is
    // stored and handed to the paused leader's open pull: its first delivery is the paused leader's alone.
    let js = async_nats::jetstream::new(e.client.clone());
    publish_report(&js, "h1", &task_report("h1", UNKNOWN_TASK, 1, TaskPhase::InProgress, 1, "forged")).await?;
    let mut consumer: consumer::PullConsumer = js
        .get_stream(&stream)
        .await?
        .get_consumer(REPORTS_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("the reports consumer: {e}"))?;
    wait_until(Duration::from_secs(10), "the report handed to the paused leader's pull", async || {
        let info = consumer.info().await?;
        Ok(if info.num_ack_pending > 0 { Check::Done(()) } else { Check::NotYet(format!("{info:?}")) })
    })
    .await?;
    anyhow::ensure!(
        pulled_at.elapsed() < PULL_LIFE,
        "the setup outlived the paused leader's pull ({:?}): the report may have gone to {}",
        pulled_at.elapsed(),
        failover.leader
    );

    // It wakes up deposed and steps down. Whatever it acked would be its first delivery's ack; the real leader
    // gets the report redelivered (after the ack wait) and refuses it itself.
    e.resume(&old)?;
    e.wait_role(&old, Role::Follower, RECOVERY).await?;
    wait_until(RECOVERY, "the report acked by the real leader (after redelivery)", async || {
        let info = consumer.info().await?;
        Ok(if info.num_ack_pending == 0 && info.num_pending == 0 {
            Check::Done(())
        } else {
            Check::NotYet(format!("{} ack pending, {} pending", info.num_ack_pending, info.num_pending))
        })
    })
    .await?;
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), acks.next()).await {
        // `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
        let delivered = m.subject.split('.').nth(4).unwrap_or("?").to_string();
        seen.push((delivered, String::from_utf8_lossy(&m.payload).into_owned()));
    }
    anyhow::ensure!(!seen.is_empty(), "nobody acked the report (or acks are not on the subjects watched)");
    let by_deposed: Vec<_> = seen.iter().filter(|(delivered, _)| delivered == "1").collect();
    anyhow::ensure!(
        by_deposed.is_empty(),
        "the deposed leader acked a report it was handed while paused (deleting it from the work queue before \
         the real leader saw it): {by_deposed:?}; every ack: {seen:?}"
    );
    Ok(())
}

/// Issue 11, finding 7: a write repeated with its idempotency key (a client that heard no answer retries) is
/// answered with the original result, and creates nothing the second time.
#[tokio::test]
async fn a_request_create_repeated_with_its_key_is_answered_with_the_original() -> anyhow::Result<()> {
    let mut m = Muster::start(&["h1"]).await?;
    m.wait_all(HostState::Healthy, STARTUP).await?;
    let client = m.nats.connect_as(Identity::Admin).await?;
    let subject = Subjects::default().api(Endpoint::RequestCreate.name());
    let spec = serde_json::json!({
        "action": "run", "hosts": "h1", "argv": ["true"], "idempotency_key": "deposed-test-1",
    });
    let mut answers = Vec::new();
    for _ in 0..2 {
        let msg =
            within(CALL_TIMEOUT, "request.create", client.request(subject.clone(), spec.to_string().into())).await??;
        let created: Committed<RequestCreated> = serde_json::from_slice(&msg.payload)
            .with_context(|| format!("not a created request: {}", String::from_utf8_lossy(&msg.payload)))?;
        answers.push(created.reply);
    }
    anyhow::ensure!(answers[0] == answers[1], "a repeat got another answer: {answers:?}");
    let requests = m.cli.requests().await?;
    anyhow::ensure!(requests.len() == 1, "the repeat created a request: {requests:?}");
    anyhow::ensure!(m.cli.stats().await?.counter("requests.repeated") == 1);
    Ok(())
}
