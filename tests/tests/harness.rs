//! Tests of the test-support crate itself: they need nats-server but none of muster's binaries, so a broken
//! harness shows up here rather than as a confusing end-to-end failure.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use muster_tests::{wait_until, within, Check, NatsServer, Proc, TestDir};

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn nats_server_runs_jetstream_from_the_secured_single_conf() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.connect().await.unwrap();
    let info = client.server_info();
    assert_eq!(info.port, nats.port(), "connected to another server than the one started");
    assert_eq!(info.server_name, "muster-single", "the security directory's nats-single.conf was not used");
    assert!(info.tls_required && info.auth_required, "the secured config requires neither TLS nor auth: {info:?}");
    assert!(info.version.starts_with("2."), "unexpected nats-server version {}", info.version);

    let js = jetstream::new(client);
    // query_account fails with "JetStream not enabled" when it is off.
    let account = within(STEP, "JetStream account info", js.query_account()).await.unwrap().unwrap();
    assert_eq!(account.streams, 0, "a fresh store has no streams");
    let store = nats.store_dir().join("jetstream");
    assert!(store.is_dir(), "JetStream did not use the test's store dir {}", store.display());
}

#[tokio::test]
async fn two_servers_get_different_ports() {
    let a = NatsServer::start().await.unwrap();
    let b = NatsServer::start().await.unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

#[tokio::test]
async fn restart_after_sigkill_keeps_port_and_streams() {
    let mut nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let js = jetstream::new(nats.connect().await.unwrap());
    within(
        STEP,
        "creating a stream",
        js.create_stream(stream::Config {
            name: "HARNESS".to_string(),
            subjects: vec!["harness.>".to_string()],
            storage: stream::StorageType::File,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let ack = within(STEP, "publishing", js.publish("harness.one", "kept".into())).await.unwrap().unwrap();
    within(STEP, "the publish ack", ack).await.unwrap().unwrap();

    nats.kill().unwrap();
    assert!(nats.connect().await.is_err(), "nats-server still accepts connections after kill");
    nats.restart().await.unwrap();
    assert_eq!(nats.url(), url, "restart changed the URL");

    let js = jetstream::new(nats.connect().await.unwrap());
    let mut stream = within(STEP, "getting the stream", js.get_stream("HARNESS")).await.unwrap().unwrap();
    let info = within(STEP, "stream info", stream.info()).await.unwrap().unwrap();
    assert_eq!(info.state.messages, 1, "the acknowledged message did not survive SIGKILL");
    let msg = within(STEP, "reading the message", stream.get_raw_message(1)).await.unwrap().unwrap();
    assert_eq!(msg.payload.as_ref(), b"kept");
}

#[tokio::test]
async fn proc_logs_output_and_reports_sigterm_exit() {
    let dir = TestDir::new().unwrap();
    // Exits 0 on SIGTERM, like a well-behaved daemon; prints its environment variable so the log can be checked.
    let script = r#"echo "started with $PROBE"; trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done"#;
    let mut proc =
        Proc::spawn("probe", Path::new("/bin/sh"), &["-c", script], [("PROBE", "value-1")], dir.path()).unwrap();
    let log = proc.log_path().to_path_buf();
    wait_until(STEP, "the probe logs its start", async || {
        proc.ensure_running()?;
        let text = std::fs::read_to_string(&log)?;
        Ok(if text.contains("started with value-1") { Check::Done(()) } else { Check::NotYet(text) })
    })
    .await
    .unwrap();
    let status = proc.terminate(STEP).await.unwrap();
    assert!(status.success(), "probe exited with {status}");
    assert!(proc.log_tail(5).contains("bye"));

    proc.set_env("PROBE", "value-2");
    proc.restart().unwrap();
    wait_until(STEP, "the restarted probe logs its start", async || {
        let text = std::fs::read_to_string(&log)?;
        Ok(if text.contains("started with value-2") { Check::Done(()) } else { Check::NotYet(text) })
    })
    .await
    .unwrap();
    let status = proc.kill9().unwrap().expect("probe was running");
    assert!(!status.success(), "SIGKILL reported as success: {status}");
    proc.ensure_running().expect("a killed process is not a crash");
}

#[tokio::test]
async fn proc_crash_ends_a_wait_at_once() {
    let dir = TestDir::new().unwrap();
    let mut proc =
        Proc::spawn("crasher", Path::new("/bin/sh"), &["-c", "echo oops; exit 3"], [("A", "B")], dir.path()).unwrap();
    let started = std::time::Instant::now();
    let err = wait_until(Duration::from_secs(30), "something that never happens", async || {
        proc.ensure_running()?;
        Ok(Check::<()>::NotYet("waiting".into()))
    })
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "the wait went on after the process died");
    let text = format!("{err:#}");
    assert!(text.contains("crasher exited unexpectedly") && text.contains("oops"), "{text}");
}

#[tokio::test]
async fn wait_until_names_what_did_not_happen() {
    let err = wait_until(Duration::from_millis(300), "the moon turns blue", async || {
        Ok(Check::<()>::NotYet("still grey".into()))
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("the moon turns blue") && err.contains("still grey"), "{err}");
}
