//! [`Ensemble`]: muster in high availability for one test — a 3-node NATS cluster ([`NatsCluster`]), three
//! muster-server instances (`server-1` and `server-2` voters, `server-3` an observer) and agents — and what HA
//! tests look at: `muster servers` rows, who leads, failover times, convergence of every replica, one instance's
//! own counters; [`TxnTap`], which lets a test strike the moment the leader appends a given entry; and
//! [`Ensemble::audit`], the outcome every fault must leave. Secured like [`crate::Muster`]: the NATS cluster runs
//! the `nats-cluster.conf` of the test's security directory (TLS on client and route connections, JWT accounts)
//! and every process has its identity ([`Identities`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use muster_schemas::api::RequestView;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::commands::RequestId;
use muster_schemas::{limits, HostState, Subjects, Txn};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cli::{Cli, RequestRow, Stats, CALL_TIMEOUT};
use crate::cluster::{agent_env, describe, server_env, swarm_env, Settings, Timing};
use crate::descendants::Descendants;
use crate::identities::{Identities, Identity};
use crate::load::Runs;
use crate::nats_cluster::{NatsCluster, NODES};
use crate::paths::{tail, workspace_bin, TestDir};
use crate::process::Proc;
use crate::requests::{describe_request, half_applied};
use crate::stacks::WorkDir;
use crate::wait::{fatal, wait_until, within, Check};

/// The instances and their `MUSTER_ROLE`: two voters, so one can lead while the other takes over, and one
/// observer, which must never lead.
pub const MEMBERS: [(&str, &str); 3] = [("server-1", "voter"), ("server-2", "voter"), ("server-3", "observer")];

/// The observer's id.
pub const OBSERVER: &str = "server-3";

/// How long the first instance may take to create the streams and buckets and answer: seconds, more on a loaded
/// machine.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of each log quoted when the ensemble fails to start.
const START_LOG_LINES: usize = 20;

/// How often [`Ensemble::wait_failover`] asks every instance for its status: the resolution of failover times.
pub const FAILOVER_PROBE: Duration = Duration::from_millis(50);

/// Room for a txn's MessagePack framing beyond [`limits::MAX_TXN_BYTES`], as the servers allow when they decode.
const TXN_FRAMING: usize = 64 * 1024;

/// A role as `muster servers` reports it.
pub use muster_schemas::api::ServerRole as Role;

/// One row of `muster servers --json`: the schemas' type the servers answer with.
pub use muster_schemas::api::ServerStatus as ServerRow;

/// `server-1=leader(e4 a120/120 9f3c…) server-2=…`, for failure messages.
pub fn describe_servers(rows: &[ServerRow]) -> String {
    if rows.is_empty() {
        return "no instance answered".to_string();
    }
    rows.iter()
        .map(|r| {
            let end = r.log_end.map_or("?".to_string(), |e| e.to_string());
            let digest = r.digest.as_deref().map_or("-", |d| &d[..d.len().min(12)]);
            format!("{}={:?}(e{} a{}/{end} {digest})", r.id, r.role, r.epoch, r.applied_seq)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The one instance that reports itself leader, if exactly one does.
pub fn sole_leader(rows: &[ServerRow]) -> Option<&ServerRow> {
    let mut leaders = rows.iter().filter(|r| r.role == Role::Leader);
    match (leaders.next(), leaders.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// How long a failover took, bracketed by the answers of the instances.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The instance that leads now.
    pub leader: String,
    /// The epoch it leads under, as `muster servers` showed it right after.
    pub epoch: u64,
    /// When (after the fault) its first answer as leader arrived: it led by then.
    pub at_most: Duration,
    /// When its last answer as a non-leader arrived (zero if none came after the fault): it did not lead yet when
    /// it sent that.
    pub at_least: Duration,
    /// Status probes sent.
    pub probes: u32,
}

/// One entry of the txn log, with what its headers say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its stream sequence.
    pub seq: u64,
    /// `Muster-Epoch`: the epoch of the leader that wrote it.
    pub epoch: u64,
    /// `Muster-Host`: the id of the instance that wrote it.
    pub writer: String,
    /// The entry itself.
    pub txn: Txn,
}

/// Where the txn stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The oldest entry still stored (the log is trimmed behind each snapshot).
    pub first_seq: u64,
    /// The newest entry.
    pub last_seq: u64,
    /// The NATS node (`n1`…) leading the stream's RAFT group.
    pub nats_leader: Option<String>,
}

/// Every append to the txn log as the leader sends it: a core subscription to `<prefix>.txn`, which NATS delivers
/// as it hands the same message to the stream. A fault struck the moment a wanted entry arrives lands after the
/// leader appended it and before anything it does next (waiting for its applier, replying, acking reports,
/// publishing commands): the window is hit by observation, not by a sleep.
#[derive(Debug)]
pub struct TxnTap {
    sub: async_nats::Subscriber,
}

impl TxnTap {
    /// Waits at most `limit` for an appended entry for which `wanted` holds and returns it; `what` names it in the
    /// error. Entries that do not decode as a [`Txn`] are passed over.
    pub async fn next_where(
        &mut self,
        limit: Duration,
        what: &str,
        mut wanted: impl FnMut(&Txn) -> bool,
    ) -> anyhow::Result<Txn> {
        let mut seen = 0u32;
        let found = within(limit, &format!("an appended txn: {what}"), async {
            while let Some(msg) = futures::StreamExt::next(&mut self.sub).await {
                seen += 1;
                let Ok(txn) = muster_schemas::decode::<Txn>(&msg.payload, limits::MAX_TXN_BYTES + TXN_FRAMING) else {
                    continue;
                };
                if wanted(&txn) {
                    return Some(txn);
                }
            }
            None
        })
        .await;
        found
            .with_context(|| format!("{seen} appends seen"))?
            .with_context(|| format!("the txn subscription ended after {seen} appends"))
    }
}

/// What [`Ensemble::audit`] counted.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Requests in the log (acknowledged or not).
    pub requests: usize,
    /// Acknowledged requests.
    pub acked: usize,
    /// Tasks of every request.
    pub tasks: u64,
    /// Tasks on the traced hosts, whose runs were counted.
    pub traced_tasks: usize,
    /// Runs in the traced hosts' files.
    pub runs: usize,
    /// Traced tasks with more than one attempt.
    pub retried: usize,
    /// The converged `muster servers` rows.
    pub rows: Vec<ServerRow>,
}

impl Audit {
    /// `412 requests (400 acknowledged), 20,412 tasks; traced: 1,236 tasks, 1,236 runs, 0 retried`.
    pub fn summary(&self) -> String {
        format!(
            "{} requests ({} acknowledged), {} tasks; traced: {} tasks, {} runs, {} with more than one attempt; {}",
            self.requests,
            self.acked,
            self.tasks,
            self.traced_tasks,
            self.runs,
            self.retried,
            describe_servers(&self.rows)
        )
    }
}

/// Violations quoted in an audit's error, at most.
const AUDIT_QUOTED: usize = 40;

/// A 3-node NATS cluster, three muster-server instances ([`MEMBERS`]) with data in `<dir>/<id>/` and logs in
/// `<dir>/<id>.log`, and agents named by host id.
///
/// Fields drop in order: agents and servers are killed before the NATS nodes, then whatever the agents started, and
/// the test directory goes last so every log can still be printed.
#[derive(Debug)]
pub struct Ensemble {
    /// Agents by host id.
    pub agents: BTreeMap<String, Proc>,
    /// Server instances by id.
    servers: BTreeMap<String, Proc>,
    /// Every process the agents started; killed on Drop.
    pub descendants: Descendants,
    /// The operator CLI, given every node's URL.
    pub cli: Cli,
    /// One CLI per node, each given only that node: a services-framework request goes to an instance connected to
    /// the node it is published on when there is one, which is how [`Ensemble::stats_of`] reaches one instance.
    node_clis: Vec<Cli>,
    /// A client of the test itself as the server identity (the txn stream, JetStream's API, any subject).
    pub client: async_nats::Client,
    /// A client of the test itself as the admin (bulk reads of the API: [`Ensemble::api`]).
    admin: async_nats::Client,
    /// The NATS cluster.
    pub nats: NatsCluster,
    /// The servers' protocol timers.
    pub timing: Timing,
    /// Who every process is: the test's security directory (its command key included).
    pub identities: Identities,
    /// `<dir>/work`: files the commands under test write.
    pub work: WorkDir,
    /// The test's directory (NATS stores, logs, server data): removed when the test passes, kept when it fails.
    pub dir: TestDir,
}

impl Ensemble {
    /// Starts the NATS cluster, the three instances with `timing` and `settings.server`, and one agent per id with
    /// `settings.agents`. Does not wait for a leader or for the hosts: see [`Ensemble::wait_ready`].
    ///
    /// A failure to start quotes the tail of every log: the test directory is removed when the error is returned.
    pub async fn start(timing: Timing, settings: Settings, agent_ids: &[&str]) -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let descendants = Descendants::new(dir.path())?;
        let work = WorkDir::create(dir.join("work"))?;
        let identities = Identities::secured(dir.path())?;
        let (nats, servers) = match Self::launch(&dir, timing, &identities, &settings).await {
            Ok(started) => started,
            Err(e) => return Err(e.context(format!("starting the ensemble; its logs:\n{}", log_tails(dir.path())))),
        };
        let cli = Cli::new(nats.urls(), &identities)?;
        let node_clis = (0..NODES).map(|i| Cli::new(nats.url(i), &identities)).collect::<anyhow::Result<Vec<_>>>()?;
        let client = nats.connect().await?;
        let admin = nats.connect_as(Identity::Admin).await?;
        let agents = BTreeMap::new();
        let mut ensemble =
            Self { agents, servers, descendants, cli, node_clis, client, admin, nats, timing, identities, work, dir };
        for id in agent_ids {
            ensemble.spawn_agent(id, &settings)?;
        }
        Ok(ensemble)
    }

    /// Starts the NATS cluster and the instances, the first alone.
    async fn launch(
        dir: &TestDir,
        timing: Timing,
        identities: &Identities,
        settings: &Settings,
    ) -> anyhow::Result<(NatsCluster, BTreeMap<String, Proc>)> {
        let nats = NatsCluster::start_in(dir.path(), identities).await?;
        let cli = Cli::new(nats.urls(), identities)?;
        let mut servers = BTreeMap::new();
        for (id, role) in MEMBERS {
            let data_dir = dir.join(id);
            std::fs::create_dir_all(&data_dir)?;
            // The role goes before the test's settings, which may override it.
            let mut env = vec![("MUSTER_ROLE".to_string(), OsString::from(role))];
            env.extend(server_env(&nats.urls(), data_dir, id, &timing, identities, settings)?);
            let mut proc = Proc::spawn(id, &workspace_bin("muster-server")?, &[], env, dir.path())?;
            if servers.is_empty() {
                // The first instance creates the streams and buckets alone: nats-server 2.10 leaves concurrent
                // creates of one stream unanswered until they time out (10 s each), which would only slow the
                // start (each instance retries).
                wait_until(SETUP_TIMEOUT, &format!("{id} has set up the streams and answers"), async || {
                    proc.ensure_running()?;
                    let rows: Vec<ServerRow> = cli.json(&["servers"]).await?;
                    Ok(if rows.iter().any(|r| r.id == id) {
                        Check::Done(())
                    } else {
                        Check::NotYet(describe_servers(&rows))
                    })
                })
                .await?;
            }
            servers.insert(id.to_string(), proc);
        }
        Ok((nats, servers))
    }

    fn spawn_agent(&mut self, id: &str, settings: &Settings) -> anyhow::Result<()> {
        let env = agent_env(&self.nats.urls(), id, &self.identities, &self.descendants, settings)?;
        let agent = Proc::spawn(&format!("agent-{id}"), &workspace_bin("muster-agent")?, &[], env, self.dir.path())?;
        self.agents.insert(id.to_string(), agent);
        Ok(())
    }

    /// Starts `muster-swarm <args>` (`--count …`) with the swarm's identity, kept among the agents as
    /// `swarm` (so every wait notices it exiting).
    pub fn spawn_swarm(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let env = swarm_env(&self.nats.urls(), &self.identities)?;
        let swarm = Proc::spawn("swarm", &workspace_bin("muster-swarm")?, args, env, self.dir.path())?;
        self.agents.insert("swarm".into(), swarm);
        Ok(())
    }

    /// The instance `id`.
    ///
    /// # Panics
    /// If there is no such instance (a bug in the test).
    pub fn server(&mut self, id: &str) -> &mut Proc {
        self.servers.get_mut(id).unwrap_or_else(|| panic!("the ensemble has no instance {id}"))
    }

    /// The instances that are running (not killed or stopped by the test).
    pub fn running_servers(&self) -> BTreeSet<String> {
        self.servers.iter().filter(|(_, p)| p.pid().is_some()).map(|(id, _)| id.clone()).collect()
    }

    /// Instance `id`'s redb file.
    pub fn redb_path(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("muster.redb")
    }

    /// Sends SIGSTOP to instance `id`: it stops dead, holding its connections, as a long GC pause or a frozen VM.
    pub fn pause(&mut self, id: &str) -> anyhow::Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// Sends SIGCONT to instance `id`.
    pub fn resume(&mut self, id: &str) -> anyhow::Result<()> {
        self.signal(id, Signal::SIGCONT)
    }

    fn signal(&mut self, id: &str, sig: Signal) -> anyhow::Result<()> {
        let pid = self.server(id).pid().with_context(|| format!("{id} is not running"))?;
        signal::kill(Pid::from_raw(i32::try_from(pid)?), sig).with_context(|| format!("{sig} to {id}"))
    }

    /// Fails with a fatal error (ending any wait) if a process the test did not stop has exited.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        self.nats.ensure_running()?;
        for p in self.servers.values_mut().chain(self.agents.values_mut()) {
            p.ensure_running()?;
        }
        Ok(())
    }

    /// `muster servers --json`.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerRow>> {
        self.cli.json(&["servers"]).await
    }

    /// Waits until `muster servers` lists every running instance with exactly one voter leading, and every agent
    /// is HEALTHY; returns the leader's id.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<String> {
        let what = "`muster servers` lists every instance with one voter leading, and `muster hosts` every agent \
                    HEALTHY";
        wait_until(limit, what, async || {
            self.ensure_alive()?;
            let rows = self.servers().await?;
            let ids: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
            let leader = sole_leader(&rows).filter(|l| l.id != OBSERVER);
            let Some(leader) = leader.filter(|_| ids == self.running_servers()) else {
                return Ok(Check::NotYet(describe_servers(&rows)));
            };
            let hosts = self.cli.hosts().await?;
            let healthy =
                self.agents.keys().all(|id| hosts.iter().any(|h| h.id == *id && h.state == HostState::Healthy));
            Ok(if healthy { Check::Done(leader.id.clone()) } else { Check::NotYet(describe(&hosts)) })
        })
        .await
    }

    /// Waits until an instance other than `old` reports itself leader and measures when, from `since` (the fault).
    ///
    /// It asks on the subject `muster servers` asks on, `<prefix>.servers`, every [`FAILOVER_PROBE`] with the
    /// test's own client and timestamps each answer as it arrives: the CLI would add its process start and its
    /// collection window to every look. Then `muster servers` itself must show the same leader.
    pub async fn wait_failover(&mut self, old: &str, since: Instant, limit: Duration) -> anyhow::Result<Failover> {
        let subject = Subjects::new(muster_schemas::subjects::DEFAULT_PREFIX).servers();
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.context("subscribing to the probe inbox")?;
        let mut probe = tokio::time::interval(FAILOVER_PROBE);
        let mut probes = 0u32;
        let mut last_not_leading: BTreeMap<String, Instant> = BTreeMap::new();
        let mut last = String::from("no answer yet");
        let deadline = tokio::time::Instant::from_std(since + limit);
        let (leader, epoch, at) = loop {
            tokio::select! {
                _ = probe.tick() => {
                    self.ensure_alive()?;
                    probes += 1;
                    self.client.publish_with_reply(subject.clone(), inbox.clone(), "".into()).await?;
                }
                Some(msg) = futures::StreamExt::next(&mut answers) => {
                    let at = Instant::now();
                    let row: ServerRow = serde_json::from_slice(&msg.payload)
                        .with_context(|| format!("parsing a {subject} answer: {:?}", msg.payload))?;
                    if row.role == Role::Leader && row.id != old {
                        break (row.id, row.epoch, at);
                    }
                    last = describe_servers(std::slice::from_ref(&row));
                    last_not_leading.insert(row.id, at);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    anyhow::bail!("no instance but {old} led within {limit:?} ({probes} probes); last answer: {last}");
                }
            }
        };
        let at_least = last_not_leading.get(&leader).map_or(Duration::ZERO, |t| t.saturating_duration_since(since));
        let mut failover = Failover { at_most: at.saturating_duration_since(since), at_least, leader, epoch, probes };
        let rows = self.wait_role(&failover.leader, Role::Leader, limit).await?;
        // An answer reads the epoch before the role (a JetStream call lies between), so the probe's answer may pair
        // the new role with the previous epoch; this later look shows the epoch the instance leads under.
        if let Some(row) = rows.iter().find(|r| r.id == failover.leader) {
            failover.epoch = row.epoch;
        }
        let others: Vec<&ServerRow> =
            rows.iter().filter(|r| r.role == Role::Leader && r.id != failover.leader).collect();
        anyhow::ensure!(
            others.iter().all(|r| r.id == old),
            "`muster servers` shows another leader besides {}: {}",
            failover.leader,
            describe_servers(&rows)
        );
        Ok(failover)
    }

    /// Waits until `muster servers` shows `id` in `role`; returns the rows.
    pub async fn wait_role(&mut self, id: &str, role: Role, limit: Duration) -> anyhow::Result<Vec<ServerRow>> {
        self.wait_rows(limit, &format!("`muster servers` shows {id} as {role:?}"), |_, rows| {
            rows.iter().any(|r| r.id == id && r.role == role)
        })
        .await
    }

    /// Looks at `muster servers` until `done` holds for its rows and returns them; a timeout quotes the last rows
    /// seen (a look cut short by the deadline would otherwise hide them).
    async fn wait_rows(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Self, &[ServerRow]) -> bool,
    ) -> anyhow::Result<Vec<ServerRow>> {
        let mut last = String::from("no answer yet");
        let result = wait_until(limit, what, async || {
            self.ensure_alive()?;
            let rows = self.servers().await?;
            last = describe_servers(&rows);
            Ok(if done(self, &rows) { Check::Done(rows) } else { Check::NotYet(last.clone()) })
        })
        .await;
        result.with_context(|| format!("the last `muster servers` answer: {last}"))
    }

    /// `muster stats --json` as instance `id` answers it. The API is one queue group, so the CLI is pointed at one
    /// node after another until `id` is the one that answers (nats-server prefers a subscriber on the node a
    /// request arrives at).
    pub async fn stats_of(&mut self, id: &str, limit: Duration) -> anyhow::Result<Stats> {
        let mut attempt = 0usize;
        wait_until(limit, &format!("`muster stats` answered by {id}"), async || {
            self.ensure_alive()?;
            if !self.running_servers().contains(id) {
                return Err(fatal(format!("{id} is not running")));
            }
            let cli = &self.node_clis[attempt % NODES];
            attempt += 1;
            let stats = cli.stats().await?;
            Ok(if stats.server_id.as_str() == Some(id) {
                Check::Done(stats)
            } else {
                Check::NotYet(format!("answered by {}", stats.server_id))
            })
        })
        .await
    }

    /// Waits until every running instance answers `muster servers` with the same `applied_seq` and `digest`, at
    /// the end of the log; returns those rows.
    pub async fn wait_converged(&mut self, limit: Duration) -> anyhow::Result<Vec<ServerRow>> {
        let what = "every instance reports the same applied_seq and digest, at the end of the log";
        self.wait_rows(limit, what, |e, rows| {
            let Some(first) = rows.first() else { return false };
            answered_by_all(e, rows)
                && first.digest.is_some()
                && rows.iter().all(|r| {
                    r.applied_seq == first.applied_seq && r.digest == first.digest && r.log_end == Some(r.applied_seq)
                })
        })
        .await
    }

    /// Waits until every running instance has applied the log up to `seq` (while writes may go on); returns the
    /// rows.
    pub async fn wait_applied(&mut self, seq: u64, limit: Duration) -> anyhow::Result<Vec<ServerRow>> {
        let what = format!("every instance has applied the log up to {seq}");
        self.wait_rows(limit, &what, |e, rows| answered_by_all(e, rows) && rows.iter().all(|r| r.applied_seq >= seq))
            .await
    }

    /// One call of the operator API over the test's own NATS client (bulk reads that would take a CLI process
    /// each), its JSON reply parsed as `T`.
    pub async fn api<T: serde::de::DeserializeOwned>(&self, endpoint: &str, body: &str) -> anyhow::Result<T> {
        let subject = Subjects::new(muster_schemas::subjects::DEFAULT_PREFIX).api(endpoint);
        let what = format!("{subject} {body:?}");
        let msg = within(CALL_TIMEOUT, &what, self.admin.request(subject.clone(), body.to_string().into()))
            .await?
            .with_context(|| format!("requesting {what}"))?;
        if let Some(status) = msg.headers.as_ref().and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR)) {
            anyhow::bail!("{what}: {status}");
        }
        serde_json::from_slice(&msg.payload).with_context(|| {
            format!(
                "parsing the answer to {what} as {}: {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&msg.payload)
            )
        })
    }

    /// Where the txn stream stands, as JetStream reports it.
    pub async fn log_state(&self) -> anyhow::Result<LogState> {
        let js = async_nats::jetstream::new(self.client.clone());
        let name = Subjects::new(muster_schemas::subjects::DEFAULT_PREFIX).txn_stream();
        let info = within(CALL_TIMEOUT, &format!("stream info of {name}"), async {
            js.get_stream(&name).await?.info().await.cloned().map_err(anyhow::Error::from)
        })
        .await??;
        Ok(LogState {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            nats_leader: info.cluster.and_then(|c| c.leader),
        })
    }

    /// Every entry of the txn log still stored (behind the newest snapshot it is trimmed), oldest first, read with
    /// direct gets and decoded.
    pub async fn txn_log(&self) -> anyhow::Result<Vec<LogEntry>> {
        let js = async_nats::jetstream::new(self.client.clone());
        let name = Subjects::new(muster_schemas::subjects::DEFAULT_PREFIX).txn_stream();
        let state = self.log_state().await?;
        let stream = within(CALL_TIMEOUT, &format!("stream {name}"), js.get_stream(&name)).await??;
        let mut out = Vec::new();
        for seq in state.first_seq.max(1)..=state.last_seq {
            let msg = within(CALL_TIMEOUT, &format!("{name} entry {seq}"), stream.direct_get(seq))
                .await?
                .with_context(|| format!("reading {name} entry {seq}"))?;
            let header = |h: &str| msg.headers.get(h).map(|v| v.as_str().to_string());
            let epoch = header(muster_schemas::headers::EPOCH).and_then(|e| e.parse().ok()).with_context(|| {
                format!("{name} entry {seq} has no numeric {} header", muster_schemas::headers::EPOCH)
            })?;
            let writer = header(muster_schemas::headers::HOST).unwrap_or_default();
            let txn = muster_schemas::decode(&msg.payload, limits::MAX_TXN_BYTES + TXN_FRAMING)
                .with_context(|| format!("decoding {name} entry {seq}"))?;
            out.push(LogEntry { seq, epoch, writer, txn });
        }
        Ok(out)
    }

    /// A tap on every append to the txn log from now on (see [`TxnTap`]).
    pub async fn tap_txns(&self) -> anyhow::Result<TxnTap> {
        let subject = Subjects::new(muster_schemas::subjects::DEFAULT_PREFIX).txn();
        let sub = self.client.subscribe(subject.clone()).await.with_context(|| format!("subscribing to {subject}"))?;
        // The subscription is in place at the server before the caller goes on to cause what it waits for.
        self.client.flush().await.context("flushing the txn subscription")?;
        Ok(TxnTap { sub })
    }

    /// The outcome every fault must leave, checked once the load has stopped: within `limit` every request in the
    /// log (acknowledged or not) has ended and every instance converged (same `applied_seq` and digest, at the
    /// log's end); then
    /// - **nothing acknowledged lost**: every id in `acked` exists and COMPLETED;
    /// - **no half-applied decision**: every request is whole ([`half_applied`]) with `expected_tasks(request)`
    ///   tasks, and COMPLETED (the loads' commands cannot fail);
    /// - **no task run twice, none run unrecorded**: on the `traced` hosts (whose commands append `$MUSTER_TASK`
    ///   to `<runs>/<host>.runs`, see [`crate::load::traced_run`]) every task ran on its own host exactly as many
    ///   times as its record's attempt — each attempt once where the lines carry it — and every run belongs to a
    ///   task some request records.
    ///
    /// Every violation is listed in the error.
    pub async fn audit(
        &mut self,
        acked: &[RequestId],
        runs_dir: &Path,
        traced: &[&str],
        expected_tasks: impl Fn(&RequestView) -> u64,
        limit: Duration,
    ) -> anyhow::Result<Audit> {
        let mut last = String::from("no answer yet");
        let ended = wait_until(limit, "every request in the log has ended", async || {
            self.ensure_alive()?;
            let rows: Vec<RequestRow> = self.api("requests", "").await?;
            let known: BTreeSet<RequestId> = rows.iter().map(|r| r.id).collect();
            let missing: Vec<RequestId> = acked.iter().copied().filter(|id| !known.contains(id)).collect();
            let open: Vec<String> =
                rows.iter().filter(|r| !r.status.is_terminal()).map(|r| format!("{} {}", r.id, r.status)).collect();
            last = format!("acknowledged but unknown: {missing:?}; not ended: {open:?}");
            Ok(if missing.is_empty() && open.is_empty() { Check::Done(rows) } else { Check::NotYet(last.clone()) })
        })
        .await;
        let rows = ended.with_context(|| format!("last seen: {last}"))?;
        let converged = self.wait_converged(limit).await?;
        let mut views = BTreeMap::new();
        for row in &rows {
            views.insert(row.id, self.api::<RequestView>("request", &row.id.to_string()).await?);
        }

        let mut wrong: Vec<String> = Vec::new();
        for id in acked {
            match views.get(id) {
                None => wrong.push(format!("acknowledged request {id} is lost")),
                Some(v) if v.status != TaskStatus::Completed => {
                    wrong.push(format!("acknowledged request did not complete: {}", describe_request(v)))
                }
                Some(_) => {}
            }
        }
        let mut audit = Audit { requests: views.len(), acked: acked.len(), rows: converged, ..Audit::default() };
        let runs = Runs::read(runs_dir, traced)?;
        for v in views.values() {
            audit.tasks += v.tasks_total;
            let gaps = half_applied(v, expected_tasks(v));
            if !gaps.is_empty() {
                wrong.push(format!("request {} is not whole: {}: {}", v.id, gaps.join("; "), describe_request(v)));
            }
            if v.status != TaskStatus::Completed {
                wrong.push(format!("request did not complete: {}", describe_request(v)));
            }
        }
        let (ran_wrong, tally) = runs.check(views.values(), traced);
        wrong.extend(ran_wrong);
        (audit.traced_tasks, audit.retried) = (tally.tasks, tally.retried);
        audit.runs = runs.total();
        if !wrong.is_empty() {
            let n = wrong.len();
            wrong.truncate(AUDIT_QUOTED);
            anyhow::bail!("{n} violations ({}):\n{}", audit.summary(), wrong.join("\n"));
        }
        Ok(audit)
    }

    /// Every request the answering instance knows, in full, by id.
    pub async fn all_requests(&self) -> anyhow::Result<BTreeMap<u64, RequestView>> {
        let rows: Vec<RequestRow> = self.api("requests", "").await?;
        let mut out = BTreeMap::new();
        for row in rows {
            out.insert(row.id, self.api("request", &row.id.to_string()).await?);
        }
        Ok(out)
    }
}

/// Whether `rows` hold exactly the instances that are running.
fn answered_by_all(e: &Ensemble, rows: &[ServerRow]) -> bool {
    let ids: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    ids == e.running_servers()
}

/// The last lines of every log in `dir` and `dir/nats`, for an error that ends the test before Drop could print
/// them.
fn log_tails(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> = [dir.to_path_buf(), dir.join("nats")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .map(|p| format!("----- {} -----\n{}", p.display(), tail(p, START_LOG_LINES)))
        .collect::<Vec<_>>()
        .join("\n")
}
