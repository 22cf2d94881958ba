//! [`NatsCluster`]: three nats-servers forming one JetStream cluster, for the high-availability tests: started from
//! the secured `nats-cluster.conf` of the test's security directory (TLS on client and route connections, JWT
//! accounts; see [`Identities`]), or from the repository's `nats/cluster.conf` in the insecure loopback mode.
//!
//! nats-server 2.10.27 sometimes forms a cluster that can never place a replicated stream: every create answers "no
//! suitable peers for placement", for good. Started the documented way — all at once, every node routing to both
//! others — that happened here in 3 of 24 starts. So node `n1` is the seed (`n2` and `n3` route to it: both of
//! `cluster.conf`'s route variables name it, and they learn of each other from it), the nodes start one after the
//! other (about 1 in 50 starts still went wrong), and a cluster that cannot place a probe stream within
//! `PLACEMENT_TIMEOUT` is started again from empty stores.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::stream;

use crate::identities::{Identities, Identity};
use crate::nats_server::connect_client;
use crate::paths::nats_server_bin;
use crate::process::Proc;
use crate::wait::{wait_until, Check};

/// Nodes in the cluster: the smallest JetStream cluster that keeps a quorum (and R3 streams) with one node down.
pub const NODES: usize = 3;

/// How long a node may take to accept connections (it starts in ~10 ms; recovering a store after a restart on a
/// machine busy with parallel builds takes longer).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the cluster may take to elect its JetStream meta leader after start: a RAFT election over three
/// processes that are themselves still starting, on 2 loaded cores.
const JETSTREAM_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fresh cluster may take to place its first R3 stream. A healthy one does within about a second; one
/// that cannot answers "no suitable peers for placement" from the start and never recovers.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts of the cluster before giving up on it placing a stream.
pub const START_ATTEMPTS: u32 = 3;

/// The stream [`NatsCluster::wait_placement`] creates and deletes.
const PLACEMENT_PROBE: &str = "MUSTER_TESTS_PLACEMENT_PROBE";

/// How long one connection attempt or one JetStream call of a readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One node: a nats-server process with its own client port, route port and store.
#[derive(Debug)]
struct Node {
    /// `n1`, `n2`, `n3`: the `server_name`, as JetStream reports stream leaders.
    name: String,
    proc: Proc,
    client_port: u16,
}

/// Three nats-servers on 127.0.0.1 with JetStream, routed to each other, each with a private store under
/// `<dir>/nats/<name>/store` and its log in `<dir>/nats/nats-<name>.log`.
///
/// Ports are picked free at start and kept for the cluster's life, so [`NatsCluster::restart`] brings a node back
/// where its peers and clients look for it. Every node is killed on Drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// Whose config the nodes run, and who the test's clients are.
    identities: Identities,
    /// The readiness probes' client settings (the server identity).
    probe: muster_nats::ClientTrust,
}

impl NatsCluster {
    /// Starts the three nodes in `<dir>/nats`, one after the other, and waits until every one accepts clients,
    /// JetStream answers on each (the meta leader is elected) and an R3 stream can be placed. A cluster that cannot
    /// place one is started again from empty stores (see the module documentation), at most [`START_ATTEMPTS`]
    /// times.
    pub async fn start_in(dir: &Path, identities: &Identities) -> anyhow::Result<Self> {
        let base = dir.join("nats");
        // Client and route ports for every node, taken all at once so they are distinct.
        let ports = free_ports(NODES * 2)?;
        let mut attempt = 1;
        loop {
            let mut cluster = Self::launch(&base, &ports, identities).await?;
            match cluster.wait_placement().await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("NOTE: {e:#}; starting the NATS cluster again from empty stores");
                    drop(cluster);
                    for i in 0..NODES {
                        let store = store_dir(&base, i);
                        std::fs::remove_dir_all(&store).with_context(|| format!("removing {}", store.display()))?;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e.context(format!("the NATS cluster failed to place a stream {attempt} times"))),
            }
        }
    }

    /// Starts the nodes on `ports` (client ports, then route ports), each once the one before accepts clients, and
    /// waits until JetStream answers through every one.
    async fn launch(base: &Path, ports: &[u16], identities: &Identities) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let conf = identities.cluster_conf();
        let conf = conf.to_str().context("config path is not UTF-8")?.to_string();
        let (client_ports, route_ports) = ports.split_at(NODES);
        let route = |i: usize| format!("nats://127.0.0.1:{}", route_ports[i]);
        let probe = identities.client(Identity::Server)?;
        let mut cluster = Self { nodes: Vec::with_capacity(NODES), identities: identities.clone(), probe };
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let store = store_dir(base, i);
            std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
            let store = store.to_str().context("test directory path is not UTF-8")?.to_string();
            // The seed's routes name itself, which nats-server ignores.
            let env = [
                ("MUSTER_NATS_NAME", name.clone()),
                ("MUSTER_NATS_PORT", client_ports[i].to_string()),
                ("MUSTER_NATS_CLUSTER_PORT", route_ports[i].to_string()),
                ("MUSTER_NATS_ROUTE_A", route(0)),
                ("MUSTER_NATS_ROUTE_B", route(0)),
                ("MUSTER_NATS_STORE_DIR", store),
            ];
            // `-a`: clients on loopback (the secured config listens on every interface, being authenticated).
            let proc = Proc::spawn(&format!("nats-{name}"), &bin, &["-c", &conf, "-a", "127.0.0.1"], env, base)?;
            cluster.nodes.push(Node { name, proc, client_port: client_ports[i] });
            cluster.wait_node_ready(i).await?;
        }
        cluster.wait_jetstream().await?;
        Ok(cluster)
    }

    /// `nats://127.0.0.1:<port>` of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma-separated, as `MUSTER_NATS_URL` and `muster --nats` take them.
    pub fn urls(&self) -> String {
        (0..NODES).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// The node names (`n1`, `n2`, `n3`), by index.
    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The index of the node named `name` (as JetStream names a stream's leader).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> &Path {
        self.nodes[i].proc.log_path()
    }

    /// The identities of everything that talks through the cluster.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// Connects a client that knows every node (and so survives losing one), as the server identity (which
    /// reaches the streams, the txn log and every subject).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.connect_as(Identity::Server).await
    }

    /// As [`NatsCluster::connect`], as `who`.
    pub async fn connect_as(&self, who: Identity<'_>) -> anyhow::Result<async_nats::Client> {
        let trust = self.identities.client(who)?;
        tokio::time::timeout(PROBE_TIMEOUT, connect_client(&self.urls(), trust))
            .await
            .context("timed out connecting to the NATS cluster")?
            .context("connecting to the NATS cluster")
    }

    /// Kills node `i` with SIGKILL, as a crash of its machine would.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].proc.kill9()?;
        Ok(())
    }

    /// Starts node `i` again on its ports with its store and waits until it accepts clients.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].proc.restart()?;
        self.wait_node_ready(i).await
    }

    /// Fails (ending any wait) if a node exited without the test stopping it.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.proc.ensure_running()?;
        }
        Ok(())
    }

    async fn wait_node_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let url = self.url(i);
        let probe = &self.probe;
        let node = &mut self.nodes[i];
        wait_until(READY_TIMEOUT, &format!("nats-server {} accepts connections on {url}", node.name), async || {
            node.proc.ensure_running()?;
            match tokio::time::timeout(PROBE_TIMEOUT, connect_client(&url, probe.clone())).await {
                Ok(Ok(_client)) => Ok(Check::Done(())),
                Ok(Err(e)) => Ok(Check::NotYet(format!("connecting: {e}"))),
                Err(_) => Ok(Check::NotYet("connecting timed out".into())),
            }
        })
        .await
        .with_context(|| format!("starting nats-server {}; its log:\n{}", node.name, node.proc.log_tail(30)))
    }

    /// Waits until JetStream answers an account query through every node: the cluster has formed and elected its
    /// meta leader, so stream and bucket creation can start.
    async fn wait_jetstream(&mut self) -> anyhow::Result<()> {
        for i in 0..NODES {
            let url = self.url(i);
            let probe = &self.probe;
            let nodes = &mut self.nodes;
            wait_until(JETSTREAM_READY_TIMEOUT, &format!("JetStream answers through {url}"), async || {
                for node in nodes.iter_mut() {
                    node.proc.ensure_running()?;
                }
                let client = tokio::time::timeout(PROBE_TIMEOUT, connect_client(&url, probe.clone()))
                    .await
                    .context("connecting timed out")??;
                let js = async_nats::jetstream::new(client);
                match tokio::time::timeout(PROBE_TIMEOUT, js.query_account()).await {
                    Ok(Ok(_)) => Ok(Check::Done(())),
                    Ok(Err(e)) => Ok(Check::NotYet(format!("account info: {e}"))),
                    Err(_) => Ok(Check::NotYet("account info timed out".into())),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until a stream with a replica on every node can be created (then deletes it): the cluster knows all
    /// its peers, so muster's R3 streams and buckets can be placed.
    async fn wait_placement(&mut self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.connect().await?);
        let nodes = &mut self.nodes;
        wait_until(PLACEMENT_TIMEOUT, "the NATS cluster places a stream on all three nodes", async || {
            for node in nodes.iter_mut() {
                node.proc.ensure_running()?;
            }
            let config = stream::Config {
                name: PLACEMENT_PROBE.into(),
                subjects: vec![PLACEMENT_PROBE.to_lowercase()],
                num_replicas: NODES,
                ..Default::default()
            };
            match tokio::time::timeout(PROBE_TIMEOUT, js.create_stream(config)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Ok(Check::NotYet(format!("creating an R{NODES} stream: {e}"))),
                Err(_) => return Ok(Check::NotYet(format!("creating an R{NODES} stream timed out"))),
            }
            tokio::time::timeout(PROBE_TIMEOUT, js.delete_stream(PLACEMENT_PROBE))
                .await
                .context("deleting the placement probe timed out")?
                .context("deleting the placement probe")?;
            Ok(Check::Done(()))
        })
        .await
    }
}

/// Node `i`'s JetStream store directory.
fn store_dir(base: &Path, i: usize) -> PathBuf {
    base.join(format!("n{}", i + 1)).join("store")
}

/// `n` distinct free TCP ports on 127.0.0.1. They are held until all are chosen (so they differ) and released just
/// before the nodes bind them; another process taking one in between is possible but rare enough for tests.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
