//! End-to-end tests of signed commands (issue 12, "Signed commands"): an agent acts only on what the server's
//! command key signed for it, before it expires, once. Forgeries, tampered and replayed commands are published by
//! the test itself, with a plain NATS client on the test's open nats-server (what anyone reaching NATS could do);
//! none may run (the file it would write stays absent), each is counted — by the agent, and by the leader from the
//! agent's report (`commands.refused_by_agents` in `muster stats`, the reason in its log) — and the agent stays
//! HEALTHY and keeps running genuine commands.

use std::path::Path;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use muster_nats::unix_millis;
use muster_nats::wire::header_map;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::commands::{Command, CommandBody, CommandSpec, Execution, RoleCommand};
use muster_schemas::headers;
use muster_schemas::ids::{CommandMsgId, TaskAttempt};
use muster_schemas::signing::{SignedFields, CLOCK_LEEWAY_MS, EXPIRES};
use muster_schemas::{decode, encode, HostId, HostState, Subjects, PROTOCOL_VERSION};
use muster_security::command::CommandSigner;
use muster_tests::requests::{describe_request, wait_request_end};
use muster_tests::{wait_until, Check, Muster, Settings, Timing};

/// Time for freshly started agents to register and report healthy (see foundation.rs).
const STARTUP: Duration = Duration::from_secs(30);
/// Time for a request of one short command to end, with a margin for a loaded machine.
const REQUEST_END: Duration = Duration::from_secs(60);
/// Time for a refusal report to reach the leader's counters (one JetStream round trip, with a margin).
const SOON: Duration = Duration::from_secs(20);
/// How long a refused message is given to run anyway before the test concludes it did not.
const WOULD_HAVE_RUN: Duration = Duration::from_secs(2);

const REFUSED: &str = "commands.refused_by_agents";

/// A shell command appending a line to `file`: how many times it ran is the file's line count.
fn append(file: &Path) -> String {
    format!("echo ran >> {}", file.display())
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

/// An execution of `argv` on `host` the leader never created (a task id far above any it assigned).
fn forged_execution(host: &str, task: u64, argv: &[&str]) -> Command {
    Command {
        schema: PROTOCOL_VERSION,
        host: HostId::new(host).unwrap(),
        body: CommandBody::Execute(Execution {
            task,
            attempt: 1,
            request: task,
            component: None,
            command: RoleCommand::Run,
            spec: CommandSpec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: Default::default(),
                timeout_ms: 10_000,
            },
        }),
    }
}

/// The headers the leader would give `command`, without a signature.
fn unsigned_headers(command: &Command, task: u64) -> Vec<headers::Header> {
    headers::command(&command.host, &CommandMsgId::Execute(TaskAttempt { task, attempt: 1 }))
}

async fn refused_by_agents(m: &Muster) -> u64 {
    m.cli.stats().await.map(|s| s.counter(REFUSED)).unwrap_or(0)
}

/// Waits until the leader has counted `want` refusals, then checks it stays there a moment (no more arrive).
async fn expect_refusals(m: &mut Muster, want: u64) {
    wait_until(SOON, &format!("the leader counts {want} refused commands"), async || {
        m.ensure_alive()?;
        let n = refused_by_agents(m).await;
        Ok(if n >= want { Check::Done(()) } else { Check::NotYet(format!("{REFUSED} = {n}")) })
    })
    .await
    .unwrap();
    tokio::time::sleep(WOULD_HAVE_RUN).await;
    assert_eq!(refused_by_agents(m).await, want, "more refusals than messages refused");
}

#[tokio::test]
async fn forged_tampered_and_replayed_commands_are_never_run_are_counted_and_the_agent_stays_healthy() {
    let mut m = Muster::start_configured(Timing::FAST, Settings::fast_commands(), &["h1", "h2"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let subjects = Subjects::new("muster");
    let (h1, h2) = (HostId::new("h1").unwrap(), HostId::new("h2").unwrap());
    let client = m.nats.connect().await.unwrap();
    let mut h1_commands = client.subscribe(subjects.cmd(&h1)).await.unwrap();
    client.flush().await.unwrap();

    // A genuine command, captured on the wire as it goes to h1.
    let genuine_log = m.work.join("genuine.log");
    let script = append(&genuine_log);
    let id = m.cli.submit(&["run", "--hosts", "h1", "--timeout", "1", "--", "sh", "-c", &script]).await.unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{}", describe_request(&view));
    assert_eq!(lines(&genuine_log), 1);
    let captured = tokio::time::timeout(SOON, async {
        loop {
            let msg = h1_commands.next().await.expect("subscription open");
            let command: Command = decode(&msg.payload, 1 << 20).unwrap();
            if matches!(command.body, CommandBody::Execute(_)) {
                return msg;
            }
        }
    })
    .await
    .expect("the genuine command was seen on the wire");
    let genuine_headers: HeaderMap = captured.headers.clone().expect("a signed command has headers");
    assert!(genuine_headers.get("Muster-Signature").is_some(), "the leader signs its commands");
    let expires: u64 = genuine_headers.get(EXPIRES).unwrap().as_str().parse().unwrap();
    let publish = async |subject: String, headers: HeaderMap, payload: Bytes| {
        client.publish_with_headers(subject, headers, payload).await.unwrap();
        client.flush().await.unwrap();
    };
    let before = refused_by_agents(&m).await;
    assert_eq!(before, 0, "nothing refused yet");

    // 1. Unsigned, as in the issue's report (a plain MessagePack command on the host's subject).
    let unsigned_marker = m.work.join("unsigned.marker");
    let touch = format!("touch {}", unsigned_marker.display());
    let forged = forged_execution("h1", 900_001, &["sh", "-c", &touch]);
    publish(subjects.cmd(&h1), header_map(unsigned_headers(&forged, 900_001)), encode(&forged).into()).await;

    // 2. Signed well, by a key that is not the server's.
    let forged_marker = m.work.join("forged.marker");
    let touch = format!("touch {}", forged_marker.display());
    let forged = forged_execution("h1", 900_002, &["sh", "-c", &touch]);
    let body = encode(&forged);
    let mut h = unsigned_headers(&forged, 900_002);
    h.extend(CommandSigner::generate().sign(&SignedFields::issue_command(&forged, 99, unix_millis(), 0), &body));
    publish(subjects.cmd(&h1), header_map(h), body.into()).await;

    // 3. The genuine command replayed to another host (h2 never saw it, so only the signed host stops it).
    publish(subjects.cmd(&h2), genuine_headers.clone(), captured.payload.clone()).await;

    // 4. The genuine command with its argv tampered with, signature kept.
    let tampered_marker = m.work.join("tampered.marker");
    let mut tampered: Command = decode(&captured.payload, 1 << 20).unwrap();
    if let CommandBody::Execute(e) = &mut tampered.body {
        e.spec.argv = vec!["sh".into(), "-c".into(), format!("touch {}", tampered_marker.display())];
    }
    publish(subjects.cmd(&h1), genuine_headers.clone(), encode(&tampered).into()).await;

    // 5. The genuine command replayed to its own host at once: already accepted (counted by the agent, not
    // reported: a redelivery looks the same).
    publish(subjects.cmd(&h1), genuine_headers.clone(), captured.payload.clone()).await;

    expect_refusals(&mut m, 4).await;

    // 6. The genuine command replayed to its own host after its expiry.
    let late = expires + CLOCK_LEEWAY_MS + 500;
    tokio::time::sleep(Duration::from_millis(late.saturating_sub(unix_millis()))).await;
    publish(subjects.cmd(&h1), genuine_headers.clone(), captured.payload.clone()).await;
    expect_refusals(&mut m, 5).await;

    for marker in [&unsigned_marker, &forged_marker, &tampered_marker] {
        assert!(!marker.exists(), "{} exists: a refused command ran", marker.display());
    }
    assert_eq!(lines(&genuine_log), 1, "the genuine command ran again");
    let log = std::fs::read_to_string(m.server.log_path()).unwrap();
    for reason in ["unsigned", "untrusted_key", "other_host", "bad_signature", "expired"] {
        assert!(log.contains(&format!("reason={reason}")), "the leader's log names no {reason} refusal");
    }

    // The agents are still HEALTHY and still run what the server genuinely sends.
    m.wait_all(HostState::Healthy, SOON).await.unwrap();
    let after = m.work.join("after.log");
    let script = append(&after);
    let id = m.cli.submit(&["run", "--hosts", "h*", "--", "sh", "-c", &script]).await.unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{}", describe_request(&view));
    assert_eq!(lines(&after), 2);
    assert_eq!(refused_by_agents(&m).await, 5, "a genuine command was refused");
}

#[tokio::test]
async fn an_agent_without_trusted_keys_refuses_every_command_and_stays_healthy() {
    // h1 trusts another key than the server's: nothing the server sends is acted on, not even its component set.
    let other = CommandSigner::generate();
    let settings = Settings::fast_commands().agent("MUSTER_TRUSTED_KEYS", other.public_key());
    let mut m = Muster::start_configured(Timing::FAST, settings, &["h1"]).await.unwrap();
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    let marker = m.work.join("ran.marker");
    let script = format!("touch {}", marker.display());
    let id = m.cli.submit(&["run", "--hosts", "h1", "--timeout", "1", "--", "sh", "-c", &script]).await.unwrap();
    // Never run: attempt 1 and its re-send time out at the leader; every delivery of them is refused.
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(view.status, TaskStatus::TimedOut, "{}", describe_request(&view));
    assert!(!marker.exists(), "a command signed by an untrusted key ran");
    // The registration reply, both attempts and their cancels: each refused and reported.
    wait_until(SOON, "the leader counts the refusals", async || {
        let n = refused_by_agents(&m).await;
        Ok(if n >= 5 { Check::Done(()) } else { Check::NotYet(format!("{REFUSED} = {n}")) })
    })
    .await
    .unwrap();
    m.wait_all(HostState::Healthy, SOON).await.unwrap();
    let log = std::fs::read_to_string(m.agent("h1").log_path()).unwrap();
    assert!(log.contains("untrusted"), "the agent's log does not say why it refuses");
}
