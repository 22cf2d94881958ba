//! The insecure mode, which every other end-to-end test leaves behind (they run the secured setup): on a
//! loopback-only nats-server without authentication (`nats/single.conf`), with `MUSTER_INSECURE=true`, a command
//! still runs; and against a NATS address that is not loopback, muster-server and muster-agent without credentials
//! refuse to start, naming the override.

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

use muster_schemas::cluster::TaskStatus;
use muster_schemas::HostState;
use muster_tests::paths::workspace_bin;
use muster_tests::requests::{describe_request, wait_request_end};
use muster_tests::{wait_until, Check, Muster, Proc, TestDir};

/// Time for freshly started agents to register and report healthy (see foundation.rs).
const STARTUP: Duration = Duration::from_secs(30);
/// Time for a request of one short command to end, with a margin for a loaded machine.
const REQUEST_END: Duration = Duration::from_secs(60);
/// Time for a process that must refuse to start to exit (the guard runs before it connects).
const REFUSAL: Duration = Duration::from_secs(20);

/// A documented address no machine has (TEST-NET-1, RFC 5737): used when this machine has no address but loopback.
const TEST_NET: &str = "192.0.2.1";

/// An address of this machine that is not loopback (the one its default route leaves from; finding it sends
/// nothing), or [`TEST_NET`]. The guard decides on the address alone, before connecting.
fn non_loopback_address() -> String {
    let probe = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("198.51.100.1:9")?;
        s.local_addr()
    });
    match probe.map(|a| a.ip()) {
        Ok(ip @ IpAddr::V4(_)) if !ip.is_loopback() && !ip.is_unspecified() => ip.to_string(),
        _ => TEST_NET.to_owned(),
    }
}

#[tokio::test]
async fn the_insecure_loopback_mode_runs_a_command() {
    let mut m = Muster::start_insecure(&["h1"]).await.unwrap();
    assert!(!m.identities.is_secured());
    m.wait_all(HostState::Healthy, STARTUP).await.unwrap();
    // A client without credentials or TLS is served: the loopback config has no authentication.
    let client = m.nats.connect().await.unwrap();
    assert!(!client.server_info().tls_required, "the insecure mode's nats-server requires TLS");
    let marker = m.work.join("ran.marker");
    let script = format!("touch {}", marker.display());
    let id = m.cli.submit(&["run", "--hosts", "h1", "--", "sh", "-c", &script]).await.unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{}", describe_request(&view));
    assert!(marker.exists(), "the command did not run");
}

/// Waits until `p` exits; returns whether it succeeded and its whole log (a backtrace may follow the error).
async fn wait_exit(p: &mut Proc) -> (bool, String) {
    let what = format!("{} exits", p.name());
    wait_until(REFUSAL, &what, async || match p.try_exit_status()? {
        Some(status) => Ok(Check::Done((status.success(), std::fs::read_to_string(p.log_path())?))),
        None => Ok(Check::NotYet(format!("still running; last lines:\n{}", p.log_tail(5)))),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn server_and_agent_refuse_to_start_without_credentials_against_a_non_loopback_address() {
    let dir = TestDir::new().unwrap();
    let address = non_loopback_address();
    let url = format!("nats://{address}:4222");
    let data = dir.join("server");
    std::fs::create_dir_all(&data).unwrap();
    let server_env = [
        ("MUSTER_NATS_URL", url.clone()),
        ("MUSTER_DATA_DIR", data.display().to_string()),
        ("MUSTER_SERVER_ID", "server-1".to_owned()),
    ];
    let agent_env = [("MUSTER_NATS_URL", url.clone()), ("MUSTER_HOST_ID", "h1".to_owned())];
    let server = Proc::spawn("muster-server", &workspace_bin("muster-server").unwrap(), &[], server_env, dir.path());
    let agent = Proc::spawn("agent-h1", &workspace_bin("muster-agent").unwrap(), &[], agent_env, dir.path());
    for mut p in [server.unwrap(), agent.unwrap()] {
        let (success, log) = wait_exit(&mut p).await;
        assert!(!success, "{} started without credentials against {url}:\n{log}", p.name());
        assert!(
            log.contains("MUSTER_INSECURE") && log.contains(&address),
            "{}'s error names neither the override nor the address {address}:\n{log}",
            p.name()
        );
    }
}
