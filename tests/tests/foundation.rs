//! End-to-end tests of the foundation: registration, heartbeats, liveness, persistence and recovery of the host
//! state, and the answers to bad input. Each test runs its own nats-server, muster-server and agents (see
//! `muster_tests::Muster`) and looks at the system only through the `muster` CLI and NATS, as an operator would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use muster_nats::unix_millis;
use muster_nats::wire::header_map;
use muster_schemas::api::{HostDetail, HostSummary};
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::limits::MAX_REGISTER_BYTES;
use muster_schemas::{
    decode, encode, ErrorCode, Health, Heartbeat, HeartbeatReply, HostFacts, HostId, HostRecord, HostState,
    RegisterReply, RegisterRequest, Subjects, PROTOCOL_VERSION,
};
use muster_tests::cluster::{describe, Settings, Timing};
use muster_tests::{fatal, wait_until, within, Check, Muster};
use serde::Serialize;

/// Time for freshly started agents to register and report healthy. Registration takes milliseconds; the margin is
/// for a cold, loaded machine and for an agent that tried before the server led and is backing off.
const STARTUP: Duration = Duration::from_secs(30);

/// Bound on one request or subscription step.
const STEP: Duration = Duration::from_secs(10);

/// The issue allows `interval × misses + 1 s` from the kill until HEARTBEAT_LOST: the extra second covers the
/// monitor's tick and the txn commit.
const LOST_SLACK: Duration = Duration::from_secs(1);

/// How quickly an agent must exit after SIGTERM ("promptly"): it has nothing to drain but a NATS connection.
const SIGTERM_EXIT: Duration = Duration::from_secs(5);

const THREE: [&str; 3] = ["h1", "h2", "h3"];

fn ids(hosts: &[HostSummary]) -> Vec<&str> {
    let mut ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

fn state_of(hosts: &[HostSummary], id: &str) -> Option<HostState> {
    hosts.iter().find(|h| h.id == id).map(|h| h.state)
}

/// `muster host <id> --json` for every listed host.
async fn details(m: &Muster) -> anyhow::Result<BTreeMap<String, HostDetail>> {
    let mut out = BTreeMap::new();
    for host in m.cli.hosts().await? {
        let detail = m.cli.host(&host.id).await?;
        anyhow::ensure!(detail.summary.id == host.id, "`muster host {}` answered for {}", host.id, detail.summary.id);
        out.insert(host.id, detail);
    }
    Ok(out)
}

/// The facts that cannot change while the machine runs (free memory, free disk space and uptime do).
fn stable_facts(f: &HostFacts) -> (&str, u32, u64, &str, &str, &str, &str) {
    (&f.hostname, f.cpu_count, f.memory_total_bytes, &f.os_name, &f.os_version, &f.kernel_version, &f.arch)
}

/// Asserts that a host's record after a server restart is the one before it: everything that is not a clock
/// reading taken by the new server process must be identical (`state_since` may legitimately be rewritten).
fn assert_same_host(before: &HostRecord, after: &HostRecord, why: &str) {
    let id = &before.id;
    assert_eq!(after.id, before.id, "{why}: host id changed");
    assert_eq!(after.state, before.state, "{why}: state of {id} changed");
    assert_eq!(after.facts, before.facts, "{why}: facts of {id} changed");
    assert_eq!(after.labels, before.labels, "{why}: labels of {id} changed");
    assert_eq!(after.agent_version, before.agent_version, "{why}: agent_version of {id} changed");
    assert_eq!(after.agent_started_at, before.agent_started_at, "{why}: agent_started_at of {id} changed");
    assert_eq!(after.first_registered_at, before.first_registered_at, "{why}: first_registered_at of {id} changed");
    assert_eq!(
        (after.registrations, after.registered_at),
        (before.registrations, before.registered_at),
        "{why}: {id} registered again (registrations, registered_at) — agents must not need to re-register when \
         the server restarts"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Registration

#[tokio::test]
async fn three_agents_register_and_become_healthy() {
    let mut m = Muster::start(&THREE).await.unwrap();
    let hosts = m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    assert_eq!(ids(&hosts), THREE, "exactly the three agents are listed");
    let window = m.timing.detection_window().as_secs_f64();
    for h in &hosts {
        assert!(!h.hostname.is_empty(), "{}: empty hostname", h.id);
        assert!(!h.agent_version.is_empty(), "{}: empty agent_version", h.id);
        assert!(h.problems.is_empty(), "{}: HEALTHY with problems {:?}", h.id, h.problems);
        let hb = h.last_heartbeat_secs.unwrap_or_else(|| panic!("{}: HEALTHY but no heartbeat heard", h.id));
        assert!((0.0..window).contains(&hb), "{}: last heartbeat {hb}s ago, beyond the {window}s window", h.id);
        assert!(h.state_secs >= 0.0, "{}: negative state_secs {}", h.id, h.state_secs);
    }

    let details = details(&m).await.unwrap();
    let now = unix_millis();
    for (id, d) in &details {
        let (r, f) = (&d.record, &d.record.facts);
        assert_eq!(r.id.as_str(), id);
        assert_eq!(r.state, HostState::Healthy, "{id}: record disagrees with the listing");
        assert_eq!(d.summary.hostname, f.hostname, "{id}: summary hostname is not the reported one");
        assert_eq!(d.summary.agent_version, r.agent_version);
        assert_eq!(r.registrations, 1, "{id}: one agent start should be one registration");
        assert!(r.first_registered_at > 0 && r.first_registered_at == r.registered_at, "{id}: {r:?}");
        assert!(r.agent_started_at <= r.registered_at && r.registered_at <= now, "{id}: times out of order: {r:?}");
        assert!(r.problems.is_empty());
        assert!(f.cpu_count > 0, "{id}: cpu_count {}", f.cpu_count);
        assert!(f.memory_total_bytes > 0 && f.memory_available_bytes <= f.memory_total_bytes, "{id}: {f:?}");
        assert!(!f.os_name.is_empty() && !f.kernel_version.is_empty() && !f.arch.is_empty(), "{id}: {f:?}");
        assert!(f.uptime_secs > 0, "{id}: uptime 0");
        for mount in &f.mounts {
            assert!(!mount.mount_point.is_empty() && mount.available_bytes <= mount.total_bytes, "{id}: {mount:?}");
        }
    }
    // All three agents run on this machine, so they must report the same machine.
    let machines: Vec<_> = details.values().map(|d| stable_facts(&d.record.facts)).collect();
    assert!(machines.windows(2).all(|w| w[0] == w[1]), "agents on one machine report different facts: {machines:?}");

    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.role.as_str().map(str::to_ascii_lowercase).as_deref(), Some("leader"), "{stats:?}");
    assert_eq!(stats.counter("reg.accepted"), 3, "counters: {:?}", stats.counters);
    assert!(stats.counter("hb.received") > 0, "counters: {:?}", stats.counters);
    assert!(stats.applied_seq > 0, "state changed but no txn applied: {stats:?}");
}

/// Every answer to a registration reaches the agent after its timeout (the leader holds each 600 ms, the agent waits
/// 300 ms): the agent still registers, with an answer that came late, and the leader commits one registration (the
/// agent's retries repeat it and are answered without a commit). An agent that dropped late answers never would.
#[tokio::test]
async fn an_agent_registers_with_an_answer_that_comes_after_its_timeout() {
    let settings = Settings::default()
        .server("FAILPOINTS", "leader::register_reply=sleep(600)")
        .agent("MUSTER_REGISTER_TIMEOUT_MS", "300");
    let mut m = Muster::start_configured(Timing::FAST, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let stats = m.cli.stats().await.unwrap();
    assert_eq!(stats.counter("reg.accepted"), 1, "counters: {:?}", stats.counters);
    assert_eq!(stats.counter("hosts.lost"), 0, "counters: {:?}", stats.counters);
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Liveness

#[tokio::test]
async fn killed_agent_is_heartbeat_lost_within_the_window_and_recovers() {
    let mut m = Muster::start(&THREE).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let before = details(&m).await.unwrap();
    let deadline = m.timing.detection_window() + LOST_SLACK;

    let killed_at_ms = unix_millis();
    let killed_at = Instant::now();
    m.agent("h2").kill9().unwrap();

    // The start of the last look that still saw h2 not lost: h2 cannot have been declared lost before it.
    let mut last_not_lost_look = Duration::ZERO;
    wait_until(deadline + Duration::from_secs(10), "h2 is HEARTBEAT_LOST", async || {
        m.ensure_alive()?;
        let look_started = killed_at.elapsed();
        let hosts = m.cli.hosts().await?;
        for other in ["h1", "h3"] {
            if state_of(&hosts, other) != Some(HostState::Healthy) {
                return Err(fatal(format!("{other} left HEALTHY after h2 was killed: {}", describe(&hosts))));
            }
        }
        if state_of(&hosts, "h2") == Some(HostState::HeartbeatLost) {
            return Ok(Check::Done(()));
        }
        last_not_lost_look = look_started;
        Ok(Check::NotYet(describe(&hosts)))
    })
    .await
    .unwrap();
    assert!(
        last_not_lost_look <= deadline,
        "h2 was still not HEARTBEAT_LOST {last_not_lost_look:?} after the kill; allowed: interval × misses + 1 s = \
         {deadline:?}"
    );

    let lost = m.cli.host("h2").await.unwrap().record;
    assert_eq!(lost.state, HostState::HeartbeatLost);
    // The transition's own timestamp (server clock, same machine) measures detection without polling error.
    let detected_ms = i128::from(lost.state_since) - i128::from(killed_at_ms);
    assert!(detected_ms >= 0, "h2 was declared HEARTBEAT_LOST {}ms BEFORE it was killed", -detected_ms);
    assert!(
        detected_ms <= deadline.as_millis() as i128,
        "h2 declared HEARTBEAT_LOST {detected_ms}ms after the kill; allowed: {deadline:?}"
    );
    assert_same_host_but_state(&before["h2"].record, &lost);

    // No false positive: the others never left HEALTHY, not even between two looks (state_since unchanged).
    for other in ["h1", "h3"] {
        let now = m.cli.host(other).await.unwrap().record;
        assert_eq!(now.state, HostState::Healthy, "{other}");
        assert_eq!(now.state_since, before[other].record.state_since, "{other} changed state while h2 was dying");
        assert_eq!(now.registrations, before[other].record.registrations, "{other} re-registered");
    }

    m.agent("h2").restart().unwrap();
    m.wait_for_states(&[("h1", HostState::Healthy), ("h2", HostState::Healthy), ("h3", HostState::Healthy)], STARTUP)
        .await
        .unwrap();
    let back = m.cli.host("h2").await.unwrap().record;
    let old = &before["h2"].record;
    assert_eq!(back.registrations, old.registrations + 1, "the restarted agent registers exactly once more");
    assert_eq!(back.first_registered_at, old.first_registered_at, "first_registered_at must survive re-registration");
    assert!(back.registered_at > old.registered_at && back.agent_started_at > old.agent_started_at, "{back:?}");
    assert_eq!(stable_facts(&back.facts), stable_facts(&old.facts));
    assert!(back.problems.is_empty());
}

/// A host that went HEARTBEAT_LOST keeps its identity and facts; only state and state_since change.
fn assert_same_host_but_state(before: &HostRecord, after: &HostRecord) {
    assert_eq!(
        (&after.id, &after.facts, after.registrations, after.first_registered_at, after.registered_at),
        (&before.id, &before.facts, before.registrations, before.first_registered_at, before.registered_at),
        "declaring a host lost must change only its state"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3 and 4. Server restart and rebuild

/// Waits until the (restarted) server lists exactly `want` hosts, all HEALTHY with a heartbeat heard by the
/// new process, and then stay so for two detection windows: the new leader's grace window must not end in a false
/// HEARTBEAT_LOST, and agents must keep working without re-registering.
async fn wait_settled_after_restart(m: &mut Muster, want: &[&str]) -> BTreeMap<String, HostDetail> {
    let limit = m.timing.lease_ttl + STARTUP;
    let window = m.timing.detection_window();
    wait_until(limit, "the restarted server lists every host HEALTHY with fresh heartbeats", async || {
        m.ensure_alive()?;
        let hosts = m.cli.hosts().await?;
        let fresh = ids(&hosts) == want
            && hosts.iter().all(|h| {
                h.state == HostState::Healthy && h.last_heartbeat_secs.is_some_and(|s| s < window.as_secs_f64())
            });
        Ok(if fresh { Check::Done(()) } else { Check::NotYet(describe(&hosts)) })
    })
    .await
    .unwrap();
    // Long enough for a wrong grace window or a missed heartbeat to show; waiting on a condition cannot prove
    // that something does *not* happen.
    tokio::time::sleep(window * 2).await;
    m.ensure_alive().unwrap();
    let settled = details(m).await.unwrap();
    for (id, d) in &settled {
        assert_eq!(d.record.state, HostState::Healthy, "{id} after two detection windows: {:?}", d.summary);
        let hb = d.summary.last_heartbeat_secs;
        assert!(hb.is_some_and(|s| s < window.as_secs_f64()), "{id}: heartbeats stopped arriving ({hb:?})");
    }
    settled
}

#[tokio::test]
async fn server_killed_and_restarted_keeps_every_host() {
    let mut m = Muster::start(&THREE).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let before = details(&m).await.unwrap();
    let stats_before = m.cli.stats().await.unwrap();

    m.server.kill9().unwrap();
    m.server.restart().unwrap();

    let after = wait_settled_after_restart(&mut m, &THREE).await;
    for id in THREE {
        assert_same_host(&before[id].record, &after[id].record, "after SIGKILL and restart of the server");
    }
    let stats = m.cli.stats().await.unwrap();
    assert!(stats.applied_seq >= stats_before.applied_seq, "applied_seq went back: {stats_before:?} → {stats:?}");
    assert_eq!(stats.counter("hosts.lost"), 0, "a host was declared lost: {:?}", stats.counters);
}

#[tokio::test]
async fn server_rebuilds_hosts_from_the_log_after_losing_its_redb_file() {
    let mut m = Muster::start(&THREE).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let before = details(&m).await.unwrap();
    let stats_before = m.cli.stats().await.unwrap();

    m.server.terminate(STEP).await.unwrap();
    let redb = m.redb_path();
    assert!(redb.is_file(), "the server kept no redb file at {}", redb.display());
    std::fs::remove_file(&redb).unwrap();
    m.server.restart().unwrap();

    let after = wait_settled_after_restart(&mut m, &THREE).await;
    for id in THREE {
        assert_same_host(&before[id].record, &after[id].record, "after rebuilding from the txn log");
    }
    assert!(redb.is_file(), "the restarted server did not recreate {}", redb.display());
    let stats = m.cli.stats().await.unwrap();
    assert!(
        stats.applied_seq >= stats_before.applied_seq,
        "the rebuilt server applied less of the log: {stats_before:?} → {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Bad input

/// A registration with the host as a plain string, to send ids that `HostId` refuses to even deserialize.
#[derive(Serialize)]
struct RawRegisterRequest {
    schema: u16,
    host: String,
    facts: HostFacts,
    labels: BTreeMap<String, String>,
    agent_version: String,
    agent_started_at: u64,
    health: Health,
}

fn register_request(host: &str) -> RegisterRequest {
    RegisterRequest {
        schema: PROTOCOL_VERSION,
        host: HostId::new(host).unwrap(),
        facts: HostFacts {
            hostname: host.to_string(),
            cpu_count: 1,
            memory_total_bytes: 1 << 30,
            ..Default::default()
        },
        labels: BTreeMap::new(),
        agent_version: "muster-tests".to_string(),
        agent_started_at: unix_millis(),
        health: Health::default(),
    }
}

/// The headers a real agent sends, so a rejection can only be caused by the body or the subject.
fn agent_headers(kind: MessageKind, host: &str, schema: u16) -> async_nats::HeaderMap {
    let mut h = header_map(headers::message(kind, host));
    // A test of version skew sends another schema than this build's.
    h.insert(headers::SCHEMA, schema.to_string().as_str());
    h
}

/// Sends a registration request and asserts it is rejected with `code`, in the header and in the body.
async fn expect_register_rejected(
    client: &async_nats::Client,
    case: &str,
    subject_host: &str,
    body: Vec<u8>,
    code: ErrorCode,
) {
    let subject = Subjects::default().reg(&HostId::new(subject_host).unwrap());
    let headers = agent_headers(MessageKind::Register, subject_host, PROTOCOL_VERSION);
    let reply = within(STEP, case, client.request_with_headers(subject, headers, Bytes::from(body)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{case}: no reply: {e}"));
    let header = reply.headers.as_ref().and_then(|h| h.get(headers::ERROR)).map(|v| v.to_string());
    assert_eq!(header.as_deref(), Some(code.as_str()), "{case}: {} header", headers::ERROR);
    match decode::<RegisterReply>(&reply.payload, usize::MAX) {
        Ok(RegisterReply::Rejected { code: got, message, .. }) => {
            assert_eq!(got, code, "{case}: reply body code (message: {message})");
            assert!(!message.is_empty(), "{case}: rejection without a message");
        }
        other => panic!("{case}: expected a Rejected reply, got {other:?}"),
    }
}

/// Publishes a heartbeat with a reply inbox and returns the server's answer on it.
async fn heartbeat_reply(client: &async_nats::Client, case: &str, subject_host: &str, body: Vec<u8>) -> HeartbeatReply {
    let inbox = client.new_inbox();
    let mut replies = within(STEP, "subscribing to the inbox", client.subscribe(inbox.clone())).await.unwrap().unwrap();
    let subject = Subjects::default().hb(&HostId::new(subject_host).unwrap());
    let headers = agent_headers(MessageKind::Heartbeat, subject_host, PROTOCOL_VERSION);
    within(STEP, case, client.publish_with_reply_and_headers(subject, inbox, headers, Bytes::from(body)))
        .await
        .unwrap()
        .unwrap();
    within(STEP, "flush", client.flush()).await.unwrap().unwrap();
    let msg = within(STEP, &format!("the server's answer to {case}"), replies.next()).await.unwrap().unwrap();
    decode::<HeartbeatReply>(&msg.payload, usize::MAX)
        .unwrap_or_else(|e| panic!("{case}: reply is not a HeartbeatReply: {e}: {:?}", msg.payload))
}

fn heartbeat(host: &str) -> Heartbeat {
    Heartbeat {
        schema: PROTOCOL_VERSION,
        host: HostId::new(host).unwrap(),
        seq: 1,
        sent_at: unix_millis(),
        health: Health::default(),
    }
}

#[tokio::test]
async fn bad_input_is_answered_and_counted_and_changes_nothing() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let client = m.nats.connect().await.unwrap();
    let before = details(&m).await.unwrap();
    let stats_before = m.cli.stats().await.unwrap();

    // 0xc1 is the one byte MessagePack never uses.
    let garbage = b"\xc1\xc1 not msgpack".to_vec();
    expect_register_rejected(&client, "malformed registration", "bad-1", garbage.clone(), ErrorCode::Malformed).await;

    let mut big = register_request("big-1");
    big.labels.insert("padding".into(), "x".repeat(MAX_REGISTER_BYTES + 1024));
    expect_register_rejected(&client, "oversized registration", "big-1", encode(&big), ErrorCode::TooLarge).await;

    let future = RegisterRequest { schema: 999, ..register_request("future-1") };
    expect_register_rejected(&client, "schema 999", "future-1", encode(&future), ErrorCode::UnsupportedVersion).await;

    let r = register_request("bad-host");
    let dotted = RawRegisterRequest {
        schema: r.schema,
        host: "bad.host".into(),
        facts: r.facts,
        labels: r.labels,
        agent_version: r.agent_version,
        agent_started_at: r.agent_started_at,
        health: r.health,
    };
    expect_register_rejected(&client, "invalid body host id", "bad-host", encode(&dotted), ErrorCode::InvalidHostId)
        .await;

    // Someone registering as another host: the subject names h1 (a real, healthy host), the body "intruder".
    let intruder = register_request("intruder");
    expect_register_rejected(&client, "subject/body host mismatch", "h1", encode(&intruder), ErrorCode::HostMismatch)
        .await;

    match heartbeat_reply(&client, "heartbeat from an unregistered host", "ghost-1", encode(&heartbeat("ghost-1")))
        .await
    {
        HeartbeatReply::Reregister { reason } => assert!(!reason.is_empty(), "Reregister without a reason"),
        other => panic!("heartbeat from an unregistered host: expected Reregister, got {other:?}"),
    }
    match heartbeat_reply(&client, "heartbeat host mismatch", "h1", encode(&heartbeat("ghost-2"))).await {
        HeartbeatReply::Rejected { code: ErrorCode::HostMismatch, message } => assert!(!message.is_empty()),
        other => panic!("heartbeat on h1's subject for ghost-2: expected Rejected(host_mismatch), got {other:?}"),
    }
    match heartbeat_reply(&client, "malformed heartbeat", "h1", garbage).await {
        HeartbeatReply::Rejected { code: ErrorCode::Malformed, message } => assert!(!message.is_empty()),
        other => panic!("malformed heartbeat: expected Rejected(malformed), got {other:?}"),
    }

    m.ensure_alive().unwrap();
    let stats = m.cli.stats().await.unwrap();
    let delta = |name: &str| stats.counter(name).saturating_sub(stats_before.counter(name));
    for (counter, want) in [
        ("reg.rejected.malformed", 1),
        ("reg.rejected.too_large", 1),
        ("reg.rejected.unsupported_version", 1),
        ("reg.rejected.invalid_host_id", 1),
        ("reg.rejected.host_mismatch", 1),
        ("hb.rejected.unknown_host", 1),
        ("hb.rejected.host_mismatch", 1),
        ("hb.rejected.malformed", 1),
        ("reg.accepted", 0),
        ("txn.committed", 0),
    ] {
        assert_eq!(
            delta(counter),
            want,
            "counter {counter}; before {:?}, after {:?}",
            stats_before.counters,
            stats.counters
        );
    }

    let after = details(&m).await.unwrap();
    assert_eq!(after.keys().collect::<Vec<_>>(), ["h1"], "bad input created hosts");
    assert_eq!(after["h1"].record, before["h1"].record, "bad input changed h1's record");
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Shutdown

#[tokio::test]
async fn agent_exits_zero_promptly_on_sigterm() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let status = m.agent("h1").terminate(SIGTERM_EXIT).await.unwrap();
    assert!(status.success(), "agent exited with {status} on SIGTERM");
}

#[tokio::test]
async fn agent_exits_zero_promptly_on_sigterm_while_it_cannot_register() {
    let mut m = Muster::start(&[]).await.unwrap();
    m.server.kill9().unwrap();
    m.spawn_agent("h1").unwrap();
    // Give the agent time to fail its first registration and enter its retry back-off, the state in which a
    // shutdown is most easily forgotten. There is no observable event to wait for: nothing answers it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.agent("h1").ensure_running().unwrap();
    let status = m.agent("h1").terminate(SIGTERM_EXIT).await.unwrap();
    assert!(status.success(), "agent exited with {status} on SIGTERM");
}

#[tokio::test]
async fn agent_exits_zero_promptly_on_sigterm_while_nats_is_down() {
    let mut m = Muster::start(&["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    m.nats.kill().unwrap();
    // Let the agent notice the lost connection and start reconnecting; as above, nothing observable to wait for.
    tokio::time::sleep(m.timing.heartbeat_interval * 2).await;
    m.agent("h1").ensure_running().unwrap();
    let status = m.agent("h1").terminate(SIGTERM_EXIT).await.unwrap();
    assert!(status.success(), "agent exited with {status} on SIGTERM");
}
