//! The deployment as users run it (docs/deploy.md): the images `scripts/images.sh` builds from this build's
//! binaries, and the repository's `compose.yaml` brought up from nothing under a project of its own — a 3-node
//! NATS cluster with TLS and JWT accounts, two voter muster-servers and an observer, an enrollment token, and ten
//! agents that enroll with it under their containers' hostnames.
//!
//! Checked from the Docker host, through nats-1's published port, as the deployment's admin (credentials and CA
//! copied out of its security volume): every agent enrolls and is HEALTHY under its container's hostname; a
//! command run on all of them answers from each container; `muster servers` shows one leader, one follower and
//! one observer; every stream and bucket of muster has three replicas (read through the NATS protocol with the
//! deployment's server credentials). Then `up` again with one agent more, as an operator scales: the init job
//! leaves the security directory as it is, the token job makes a fresh token, the new agent enrolls with it.
//! Everything is taken down with its volumes at the end, also on failure.
//!
//! Needs Docker and docker-compose: without them the test fails, saying so.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use muster_schemas::api::{HostSummary, RequestView, ServerRole, ServerStatus, TokenRecord};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::{HostState, Subjects};
use muster_tests::docker::{self, Compose, HostCli};
use muster_tests::nats_server::connect_client;
use muster_tests::wait::{wait_until, Check};
use muster_tests::TestDir;

/// Agents to scale to.
const AGENTS: usize = 10;
/// `docker-compose up` from nothing: NATS cluster, the servers' first start until healthy, the token job.
const UP: Duration = Duration::from_secs(150);
/// How long the agents may take to enroll, register and heartbeat once started.
const ENROLLED: Duration = Duration::from_secs(60);
/// How long a command on every agent may take, end to end.
const RUN: Duration = Duration::from_secs(60);
/// How long the servers may take to settle their roles.
const ROLES: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_brings_up_a_secured_ha_deployment_whose_agents_enroll_and_run_commands() -> anyhow::Result<()> {
    docker::require_docker()?;
    let built = docker::build_images()?;
    eprintln!("images ready in {:.1} s", built.as_secs_f64());

    let dir = TestDir::new()?;
    let compose = Compose::new("musterdeploy");
    let checked = deploy_and_check(&compose, &dir).await;
    if checked.is_err() {
        // Drop takes the project down; what its containers said is the only trace left.
        eprintln!("--- docker-compose logs of project {} ---\n{}", compose.project(), compose.logs(60));
    }
    checked
}

async fn deploy_and_check(compose: &Compose, dir: &TestDir) -> anyhow::Result<()> {
    let started = Instant::now();
    let scale = format!("agent={AGENTS}");
    compose.up(&["--scale", &scale], UP).await.context("docker-compose up")?;
    eprintln!("project {} up in {:.1} s", compose.project(), started.elapsed().as_secs_f64());

    let url = compose.nats_url().await?;
    let creds = compose.security_file("admin.creds", dir.path()).await?;
    let ca = compose.security_file("ca.pem", dir.path()).await?;
    let cli = HostCli::new(&url, &creds, &ca)?;

    // Every agent container enrolled under its hostname and is HEALTHY.
    let agents = compose.containers("agent").await?;
    ensure!(agents.len() == AGENTS, "{} agent containers, not {AGENTS}: {agents:?}", agents.len());
    let expected: BTreeSet<String> = agents.iter().map(|c| c.hostname.clone()).collect();
    ensure!(expected.len() == AGENTS, "agent containers share hostnames: {agents:?}");
    wait_until(ENROLLED, &format!("the {AGENTS} agents are HEALTHY under their hostnames"), async || {
        let hosts: Vec<HostSummary> = cli.json(&["hosts"], Duration::from_secs(10)).await?;
        let healthy: BTreeSet<String> =
            hosts.iter().filter(|h| h.state == HostState::Healthy).map(|h| h.id.clone()).collect();
        if healthy == expected {
            return Ok(Check::Done(()));
        }
        let seen: Vec<String> = hosts.iter().map(|h| format!("{} {:?}", h.id, h.state)).collect();
        Ok(Check::NotYet(format!("hosts: {seen:?}; containers: {expected:?}")))
    })
    .await?;
    eprintln!("{AGENTS} agents HEALTHY {:.1} s after up began", started.elapsed().as_secs_f64());

    // A command on all of them, each answering from its own container.
    let ended: RequestView = cli.json(&["run", "--hosts", "*", "--timeout", "30", "--", "uname", "-n"], RUN).await?;
    ensure!(ended.status == TaskStatus::Completed, "the run ended {:?}: {}", ended.status, ended.detail);
    let answered: BTreeSet<String> = ended
        .tasks
        .iter()
        .map(|t| {
            ensure!(t.stdout.trim() == t.host, "task {} on {} printed {:?}", t.id, t.host, t.stdout);
            Ok(t.host.clone())
        })
        .collect::<anyhow::Result<BTreeSet<String>>>()?;
    ensure!(answered == expected, "the run answered from {answered:?}, not from every container {expected:?}");
    // And the hostnames are the containers': ask one container itself.
    let own = compose.exec(&agents[0], &["uname", "-n"]).await?;
    ensure!(own.trim() == agents[0].hostname, "container {} calls itself {own:?}", agents[0].id);

    // One leader, one follower, one observer, all at the log's end.
    let rows = wait_until(ROLES, "one leader, one follower and one observer", async || {
        let rows: Vec<ServerStatus> = cli.json(&["servers"], Duration::from_secs(10)).await?;
        let role_of = |id: &str| rows.iter().find(|r| r.id == id).map(|r| r.role);
        let voters = [role_of("server-1"), role_of("server-2")];
        let settled = rows.len() == 3
            && voters.contains(&Some(ServerRole::Leader))
            && voters.contains(&Some(ServerRole::Follower))
            && role_of("server-3") == Some(ServerRole::Observer);
        if settled {
            Ok(Check::Done(rows))
        } else {
            let seen: Vec<String> = rows.iter().map(|r| format!("{} {:?}", r.id, r.role)).collect();
            Ok(Check::NotYet(format!("{seen:?}")))
        }
    })
    .await?;
    eprintln!("servers: {:?}", rows.iter().map(|r| (&r.id, r.role, r.applied_seq)).collect::<Vec<_>>());

    // Every stream and bucket is R3, with a replica on each node, read as the deployment's server identity.
    let server_creds = compose.security_file("server.creds", dir.path()).await?;
    let trust = muster_nats::ClientTrust { credentials: Some(server_creds), ca: Some(ca), ..Default::default() };
    let client = connect_client(&url, trust).await.context("connecting as the server identity")?;
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::default();
    let streams = [
        subjects.txn_stream(),
        subjects.commands_stream(),
        subjects.reports_stream(),
        format!("KV_{}", subjects.election_bucket()),
        format!("OBJ_{}", subjects.snapshot_bucket()),
    ];
    for name in streams {
        let mut stream = js.get_stream(&name).await.with_context(|| format!("stream {name}"))?;
        let info = stream.info().await.with_context(|| format!("info of stream {name}"))?;
        ensure!(info.config.num_replicas == 3, "stream {name} has {} replicas, not 3", info.config.num_replicas);
        let cluster = info.cluster.as_ref().with_context(|| format!("stream {name} has no cluster info"))?;
        let mut nodes: BTreeSet<String> = cluster.replicas.iter().map(|r| r.name.clone()).collect();
        nodes.extend(cluster.leader.clone());
        ensure!(nodes.len() == 3, "stream {name} is on {nodes:?}, not on three nodes");
    }

    // `up` again, one agent more, as an operator scales: the init job finds its directory and leaves it (the
    // agents' credentials stay valid), the token job makes a fresh token, and the new agent enrolls with it.
    let again = Instant::now();
    let more = format!("agent={}", AGENTS + 1);
    compose.up(&["--scale", &more], UP).await.context("docker-compose up again, one agent more")?;
    let init_log = compose.compose(&["logs", "--no-color", "init"], docker::DOCKER_TIMEOUT).await?.success()?;
    ensure!(
        init_log.matches("left as it is").count() == 1,
        "the second run of the init job did not leave the security directory as it was:\n{init_log}"
    );
    let agents = compose.containers("agent").await?;
    let expected: BTreeSet<String> = agents.iter().map(|c| c.hostname.clone()).collect();
    ensure!(expected.len() == AGENTS + 1, "{} agent containers after scaling up: {agents:?}", expected.len());
    wait_until(ENROLLED, "every agent HEALTHY after scaling up", async || {
        let hosts: Vec<HostSummary> = cli.json(&["hosts"], Duration::from_secs(10)).await?;
        let healthy: BTreeSet<String> =
            hosts.iter().filter(|h| h.state == HostState::Healthy).map(|h| h.id.clone()).collect();
        Ok(if healthy == expected { Check::Done(()) } else { Check::NotYet(format!("HEALTHY: {healthy:?}")) })
    })
    .await?;
    let tokens: Vec<TokenRecord> = cli.json(&["token", "list"], Duration::from_secs(10)).await?;
    let used: Vec<u32> = tokens.iter().map(|t| t.used).collect();
    ensure!(
        tokens.len() == 2 && used.iter().sum::<u32>() == (AGENTS + 1) as u32,
        "tokens after two runs of the token job, their uses: {used:?} (want two, {} uses in all)",
        AGENTS + 1
    );
    eprintln!("scaled to {} agents in {:.1} s", AGENTS + 1, again.elapsed().as_secs_f64());
    eprintln!("deployment checked in {:.1} s after up began", started.elapsed().as_secs_f64());
    Ok(())
}
