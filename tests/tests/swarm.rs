//! End-to-end test of `muster-swarm`, the load generator: its simulated hosts must be real hosts as far as
//! the server can tell (registered, HEALTHY, running commands and reporting results through the same protocol),
//! and it must stop cleanly. No timing is asserted; `make bench` measures.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_schemas::cluster::TaskStatus;
use muster_schemas::HostState;
use muster_tests::requests::{describe_request, wait_request_end};
use muster_tests::Muster;

/// Simulated hosts: enough to exercise the shared subscriptions and connection, few enough for a busy 2-core
/// machine running the suite in parallel.
const COUNT: usize = 50;

/// Time for the swarm's hosts to register and report healthy, with a wide margin for a loaded machine.
const STARTUP: Duration = Duration::from_secs(60);

/// Time for a request of a built-in command on every simulated host to end.
const REQUEST_END: Duration = Duration::from_secs(60);

/// Time the swarm may take to stop after SIGTERM (idle hosts stop at once).
const STOP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn simulated_hosts_register_run_commands_and_stop_cleanly() {
    let mut m = Muster::start(&[]).await.unwrap();
    let count = COUNT.to_string();
    let args = ["--count", count.as_str(), "--summary-secs", "1"];
    // With the swarm's credentials; as one of the cluster's agents, it is checked for unexpected exits by every wait.
    m.spawn_swarm(&args).unwrap();

    let ids: Vec<String> = (1..=COUNT).map(|i| format!("swarm-{i:06}")).collect();
    let want: Vec<(&str, HostState)> = ids.iter().map(|id| (id.as_str(), HostState::Healthy)).collect();
    let hosts = m.wait_for_states(&want, STARTUP).await.unwrap();
    let simulated: Vec<_> = hosts.iter().filter(|h| h.id.starts_with("swarm-")).collect();
    assert_eq!(simulated.len(), COUNT, "hosts: {hosts:?}");
    assert!(simulated.iter().all(|h| h.hostname == h.id), "simulated hosts report their id as hostname: {hosts:?}");

    let id = m.cli.submit(&["run", "--hosts", "swarm-*", "--", "echo", "hi"]).await.unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{}", describe_request(&view));
    let ran_on: BTreeSet<&str> = view.tasks.iter().map(|t| t.host.as_str()).collect();
    assert_eq!(ran_on, ids.iter().map(String::as_str).collect(), "one task per simulated host");
    for t in &view.tasks {
        assert_eq!((t.status, t.exit_code, t.stdout.as_str()), (TaskStatus::Completed, Some(0), "hi\n"), "{t:?}");
    }

    // Anything but the built-ins fails the way a missing program does in a shell.
    let id = m.cli.submit(&["run", "--hosts", "swarm-000001", "--", "uptime"]).await.unwrap();
    let view = wait_request_end(&m.cli, id, REQUEST_END).await.unwrap();
    let task = view.tasks.first().unwrap_or_else(|| panic!("no task: {}", describe_request(&view)));
    assert_eq!((task.status, task.exit_code), (TaskStatus::Failed, Some(127)), "{task:?}");
    assert!(task.stderr.contains("not a swarm builtin"), "{task:?}");

    let status = m.agent("swarm").terminate(STOP).await.unwrap();
    assert!(status.success(), "the swarm exited with {status} after SIGTERM");
}
