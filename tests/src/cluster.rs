//! [`Muster`]: a whole single-server deployment for one test — nats-server, muster-server and agents — with
//! short protocol timers so liveness tests take seconds, not minutes. Secured (a security directory of the test's
//! own, nats-server on its config, every process with its identity: see [`Identities`]) unless started with
//! [`Muster::start_insecure`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use muster_schemas::api::HostSummary;
use muster_schemas::HostState;

use crate::cli::Cli;
use crate::descendants::Descendants;
use crate::identities::{Identities, Identity};
use crate::nats_server::NatsServer;
use crate::paths::{workspace_bin, TestDir};
use crate::process::Proc;
use crate::stacks::WorkDir;
use crate::wait::{wait_until, Check};

/// Overrides the `MUSTER_LOG` filter given to the processes under test.
pub const LOG_ENV: &str = "MUSTER_TEST_LOG";

/// Debug for muster's own crates (state changes, rejections) and info for the libraries: enough to diagnose a
/// failure from the log alone, without async-nats' per-message noise.
const DEFAULT_LOG: &str = "info,muster=debug,muster_server=debug,muster_agent=debug,muster_schemas=debug";

/// The server's protocol timers, passed through its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `MUSTER_HEARTBEAT_INTERVAL_MS`: how often each agent sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// `MUSTER_HEARTBEAT_MISSES`: intervals without a heartbeat before a host is HEARTBEAT_LOST.
    pub heartbeat_misses: u32,
    /// `MUSTER_LEASE_TTL_MS`: how long a dead leader's lease blocks its successor (or its own restart).
    pub lease_ttl: Duration,
}

impl Timing {
    /// 500 ms heartbeats, lost after 3 misses (1.5 s), 1 s leader lease: fast, yet slow enough that a loaded
    /// 2-core machine running tests in parallel does not miss heartbeats.
    pub const FAST: Self =
        Self { heartbeat_interval: Duration::from_millis(500), heartbeat_misses: 3, lease_ttl: Duration::from_secs(1) };

    /// `interval × misses`: how long after its last heartbeat a host is declared HEARTBEAT_LOST.
    pub fn detection_window(&self) -> Duration {
        self.heartbeat_interval * self.heartbeat_misses
    }
}

/// Settings of the processes under test beyond the protocol timers, as `MUSTER_*` variables: for the server and
/// for every agent (including agents spawned later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Extra environment of the muster-server.
    pub server: BTreeMap<String, String>,
    /// Extra environment of every agent.
    pub agents: BTreeMap<String, String>,
}

impl Settings {
    /// The command path at test speed: status checks every 500 ms and progress reports as often (so component
    /// states and task output follow within a second), auto-restarts at least 1 s apart (the default of 5 min
    /// would allow one restart per test), and a task the leader hears nothing about re-sent 2 s past its
    /// timeout (default 10 s).
    pub fn fast_commands() -> Self {
        Self::default()
            .server("MUSTER_TASK_GRACE_MS", "2000")
            .agent("MUSTER_STATUS_INTERVAL_MS", "500")
            .agent("MUSTER_PROGRESS_INTERVAL_MS", "500")
            .agent("MUSTER_AUTO_RESTART_MIN_GAP_MS", "1000")
    }

    /// Sets `key` for the server.
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets `key` for every agent.
    pub fn agent(mut self, key: &str, value: &str) -> Self {
        self.agents.insert(key.to_string(), value.to_string());
        self
    }
}

/// One nats-server, one muster-server (`server-1`, data in `<dir>/server`) and agents named by host id.
///
/// Fields drop in order: agents and server are killed before nats-server, then whatever the agents started
/// (daemons, orphaned commands), and the test directory goes last so every log can still be printed.
#[derive(Debug)]
pub struct Muster {
    /// Agents by host id (`MUSTER_HOST_ID`).
    pub agents: BTreeMap<String, Proc>,
    /// The one `muster-server` process, its output in its log file.
    pub server: Proc,
    /// Every process the agents started (they carry the test's marker); killed on Drop.
    pub descendants: Descendants,
    /// The operator CLI, pointed at `nats`.
    pub cli: Cli,
    /// The nats-server everything talks through.
    pub nats: NatsServer,
    /// The timers the server was started with.
    pub timing: Timing,
    /// Extra settings of the server and agents (they win over the identities' variables).
    pub settings: Settings,
    /// Who every process is: the test's security directory (its command key included), or the insecure mode.
    pub identities: Identities,
    /// `<dir>/work`: where test stacks keep their per-host files.
    pub work: WorkDir,
    /// Holds the nats store, the server's data and every log.
    pub dir: TestDir,
}

impl Muster {
    /// Starts nats-server, muster-server and one agent per id with [`Timing::FAST`]. Does not wait for the hosts
    /// to register: see [`Muster::wait_all`].
    pub async fn start(agent_ids: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(Timing::FAST, agent_ids).await
    }

    /// Like [`Muster::start`] with other timers.
    pub async fn start_with(timing: Timing, agent_ids: &[&str]) -> anyhow::Result<Self> {
        Self::start_configured(timing, Settings::default(), agent_ids).await
    }

    /// Like [`Muster::start`] with other timers and extra settings.
    pub async fn start_configured(timing: Timing, settings: Settings, agent_ids: &[&str]) -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let identities = Identities::secured(dir.path())?;
        Self::launch(dir, identities, timing, settings, agent_ids).await
    }

    /// The insecure loopback mode (one test of its own): the repository's `nats/single.conf`, no credentials,
    /// `MUSTER_INSECURE=true` for the server and the agents, unsigned commands.
    pub async fn start_insecure(agent_ids: &[&str]) -> anyhow::Result<Self> {
        Self::launch(TestDir::new()?, Identities::insecure(), Timing::FAST, Settings::default(), agent_ids).await
    }

    async fn launch(
        dir: TestDir,
        identities: Identities,
        timing: Timing,
        settings: Settings,
        agent_ids: &[&str],
    ) -> anyhow::Result<Self> {
        let descendants = Descendants::new(dir.path())?;
        let work = WorkDir::create(dir.join("work"))?;
        let nats = NatsServer::start_in(&dir, &identities).await?;
        let cli = Cli::new(nats.url(), &identities)?;
        let data_dir = dir.join("server");
        std::fs::create_dir_all(&data_dir)?;
        let env = server_env(&nats.url(), data_dir, "server-1", &timing, &identities, &settings)?;
        let server = Proc::spawn("muster-server", &workspace_bin("muster-server")?, &[], env, dir.path())?;
        let agents = BTreeMap::new();
        let mut muster = Self { agents, server, descendants, cli, nats, timing, settings, identities, work, dir };
        for id in agent_ids {
            muster.spawn_agent(id)?;
        }
        Ok(muster)
    }

    /// Starts an agent with host id `id` (log `agent-<id>.log`), with credentials of its own.
    pub fn spawn_agent(&mut self, id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!self.agents.contains_key(id), "agent {id} already exists");
        let env = agent_env(&self.nats.url(), id, &self.identities, &self.descendants, &self.settings)?;
        let agent = Proc::spawn(&format!("agent-{id}"), &workspace_bin("muster-agent")?, &[], env, self.dir.path())?;
        self.agents.insert(id.to_string(), agent);
        Ok(())
    }

    /// Starts `muster-swarm <args>` (`--count …`) with the swarm's identity, kept among the agents as
    /// `swarm` (so every wait notices it exiting).
    pub fn spawn_swarm(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let env = swarm_env(&self.nats.url(), &self.identities)?;
        let swarm = Proc::spawn("swarm", &workspace_bin("muster-swarm")?, args, env, self.dir.path())?;
        self.agents.insert("swarm".into(), swarm);
        Ok(())
    }

    /// The environment of another muster-server instance beside the test's own, with id `id` and data in
    /// `<dir>/<name>`: this NATS, the test's timing and log filter, the server identity (credentials, CA, command
    /// key) — not the test's [`Settings`]. Creates the data directory.
    pub fn instance_env(&self, name: &str, id: &str) -> anyhow::Result<Vec<(String, OsString)>> {
        let data = self.dir.join(name);
        std::fs::create_dir_all(&data)?;
        server_env(&self.nats.url(), data, id, &self.timing, &self.identities, &Settings::default())
    }

    /// Starts another muster-server instance (log `<name>.log`) with [`Muster::instance_env`] and `env` on top.
    pub fn spawn_instance(&self, name: &str, id: &str, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut vars = self.instance_env(name, id)?;
        for (k, v) in env {
            vars.retain(|(key, _)| key != k);
            vars.push(((*k).to_string(), OsString::from(v)));
        }
        Proc::spawn(name, &workspace_bin("muster-server")?, &[], vars, self.dir.path())
    }

    /// The agent with host id `id`.
    ///
    /// # Panics
    /// If there is no such agent (a bug in the test).
    pub fn agent(&mut self, id: &str) -> &mut Proc {
        self.agents.get_mut(id).unwrap_or_else(|| panic!("the test started no agent {id}"))
    }

    /// The server's data directory (`MUSTER_DATA_DIR`).
    pub fn server_data_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    /// The server's redb file.
    pub fn redb_path(&self) -> PathBuf {
        self.server_data_dir().join("muster.redb")
    }

    /// Fails with a fatal error (ending any wait) if a process the test did not stop has exited.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        self.nats.ensure_running()?;
        self.server.ensure_running()?;
        for agent in self.agents.values_mut() {
            agent.ensure_running()?;
        }
        Ok(())
    }

    /// Waits until every host in `want` is listed by `muster hosts` in its given state (other hosts may be in any
    /// state); returns that listing.
    pub async fn wait_for_states(
        &mut self,
        want: &[(&str, HostState)],
        limit: Duration,
    ) -> anyhow::Result<Vec<HostSummary>> {
        let what = want.iter().map(|(id, state)| format!("{id}={state}")).collect::<Vec<_>>().join(" ");
        wait_until(limit, &format!("`muster hosts` shows {what}"), async || {
            self.ensure_alive()?;
            let hosts = self.cli.hosts().await?;
            let ok = want.iter().all(|(id, state)| hosts.iter().any(|h| h.id == *id && h.state == *state));
            Ok(if ok { Check::Done(hosts) } else { Check::NotYet(describe(&hosts)) })
        })
        .await
    }

    /// Waits until every agent this test started is listed in `state`.
    pub async fn wait_all(&mut self, state: HostState, limit: Duration) -> anyhow::Result<Vec<HostSummary>> {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        let want: Vec<(&str, HostState)> = ids.iter().map(|id| (id.as_str(), state)).collect();
        self.wait_for_states(&want, limit).await
    }
}

/// `h1=HEALTHY(hb 0.3s) h2=INIT(hb -)`, for failure messages.
pub fn describe(hosts: &[HostSummary]) -> String {
    if hosts.is_empty() {
        return "no hosts".to_string();
    }
    hosts
        .iter()
        .map(|h| {
            let hb = h.last_heartbeat_secs.map_or("-".to_string(), |s| format!("{s:.1}s"));
            format!("{}={}(hb {hb})", h.id, h.state)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn log_filter() -> String {
    std::env::var(LOG_ENV).unwrap_or_else(|_| DEFAULT_LOG.to_string())
}

/// The environment of a muster-server under test: this NATS, its own data dir and id, the test's timing and log
/// filter, the server identity, then the test's own server settings (which win).
pub(crate) fn server_env(
    nats_urls: &str,
    data_dir: std::path::PathBuf,
    id: &str,
    timing: &Timing,
    identities: &Identities,
    settings: &Settings,
) -> anyhow::Result<Vec<(String, OsString)>> {
    let ms = |d: Duration| d.as_millis().to_string();
    let mut env: Vec<(String, OsString)> = [
        ("MUSTER_NATS_URL", nats_urls.into()),
        ("MUSTER_DATA_DIR", data_dir.into_os_string()),
        ("MUSTER_SERVER_ID", id.into()),
        ("MUSTER_HEARTBEAT_INTERVAL_MS", ms(timing.heartbeat_interval).into()),
        ("MUSTER_HEARTBEAT_MISSES", timing.heartbeat_misses.to_string().into()),
        ("MUSTER_LEASE_TTL_MS", ms(timing.lease_ttl).into()),
        ("MUSTER_LOG", log_filter().into()),
        ("RUST_BACKTRACE", "1".into()),
    ]
    .into_iter()
    .map(|(k, v): (&str, OsString)| (k.to_string(), v))
    .collect();
    env.extend(identities.env(Identity::Server)?.into_iter().map(|(k, v)| (k, OsString::from(v))));
    env.extend(settings.server.iter().map(|(k, v)| (k.clone(), OsString::from(v))));
    Ok(env)
}

/// The environment of the agent of host `id`: this NATS, the id, the log filter, the marker its descendants
/// carry, its own identity (credentials minted for `id`, the CA, the trusted command key), then the test's agent
/// settings (which win).
pub(crate) fn agent_env(
    nats_urls: &str,
    id: &str,
    identities: &Identities,
    descendants: &Descendants,
    settings: &Settings,
) -> anyhow::Result<Vec<(String, String)>> {
    let (marker, owner) = descendants.env();
    let mut env: Vec<(String, String)> = vec![
        ("MUSTER_NATS_URL".into(), nats_urls.to_string()),
        ("MUSTER_HOST_ID".into(), id.to_string()),
        ("MUSTER_LOG".into(), log_filter()),
        ("RUST_BACKTRACE".into(), "1".to_string()),
        (marker.into(), owner),
    ];
    env.extend(identities.env(Identity::Agent(id))?);
    env.extend(settings.agents.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// The environment of `muster-swarm`: this NATS and the swarm's identity.
pub(crate) fn swarm_env(nats_urls: &str, identities: &Identities) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![("MUSTER_NATS_URL".to_string(), nats_urls.to_string())];
    env.extend(identities.env(Identity::Swarm)?);
    Ok(env)
}
