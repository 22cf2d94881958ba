//! The processes a benchmark runs against — nats-server (with monitoring), muster-server, swarms, a real agent —
//! and what the driver reads about them from `/proc` (CPU time, resident memory). Everything runs secured, as the
//! end-to-end tests do: one security directory per run ([`identities`], written when the [`RunDir`] is made),
//! nats-server on its `nats-single.conf` (JWT accounts, TLS), every process with its own identity — unless the
//! run asks for less ([`Security`]) to attribute what security costs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use muster_tests::paths::{nats_server_bin, workspace_bin, workspace_root};
use muster_tests::{Identities, Identity, Proc};

use crate::api::Api;

/// How long nats-server and muster-server may take to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Server protocol timers for one environment.
#[derive(Debug, Clone, Copy)]
pub struct ServerTiming {
    /// `MUSTER_HEARTBEAT_INTERVAL_MS`: how often each simulated agent heartbeats.
    pub heartbeat_interval: Duration,
    /// `MUSTER_HEARTBEAT_MISSES`: intervals without a heartbeat before a host is HEARTBEAT_LOST.
    pub heartbeat_misses: u32,
}

impl ServerTiming {
    /// The product's defaults (docs/configuration.md).
    pub const DEFAULT: Self = Self { heartbeat_interval: Duration::from_millis(3_000), heartbeat_misses: 3 };

    /// `interval × misses`.
    pub fn detection_window(&self) -> Duration {
        self.heartbeat_interval * self.heartbeat_misses
    }
}

/// How secured a run is (`--security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// JWT credentials, TLS, signed commands: what the product runs (the default).
    Secured,
    /// Loopback NATS without TLS or credentials; commands and registration replies signed and checked.
    Signed,
    /// Loopback NATS, nothing signed.
    Insecure,
}

impl Security {
    const NAMES: [(&'static str, Self); 3] =
        [("secured", Self::Secured), ("signed", Self::Signed), ("insecure", Self::Insecure)];
}

impl std::str::FromStr for Security {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, mode)| *mode)
            .with_context(|| format!("--security: unknown mode {s:?} (secured, signed or insecure)"))
    }
}

impl std::fmt::Display for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Self::NAMES.iter().find(|(_, mode)| mode == self).map_or("?", |(name, _)| name);
        f.write_str(name)
    }
}

/// The run's identities: its security directory (`<run dir>/security`), made once by [`RunDir::new`].
static IDENTITIES: OnceLock<Identities> = OnceLock::new();

/// The run's identities (see [`IDENTITIES`]); an error before [`RunDir::new`].
pub fn identities() -> anyhow::Result<&'static Identities> {
    IDENTITIES.get().context("no run directory yet: its security directory holds every identity")
}

/// `MUSTER_*` variables of `who` (credentials, CA, command key or trusted keys), as `(name, value)` pairs.
fn identity_env(who: Identity<'_>) -> anyhow::Result<Vec<(String, OsString)>> {
    Ok(identities()?.env(who)?.into_iter().map(|(k, v)| (k, OsString::from(v))).collect())
}

/// A nats-server (secured: the run's `nats-single.conf`; else the repository's loopback one) on random client and monitoring ports, with its store in
/// `dir`.
pub struct Nats {
    /// The nats-server process, its output in its log file.
    pub proc: Proc,
    /// The client URL, `nats://127.0.0.1:<port>`.
    pub url: String,
    /// `http://127.0.0.1:<port>` (the monitoring endpoint: /varz).
    pub monitor: Option<String>,
}

impl Nats {
    /// Starts nats-server and waits until it accepts clients.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let (store, ports) = (dir.join("nats-store"), dir.join("nats-ports"));
        for d in [&store, &ports] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let conf = identities()?.single_conf();
        let args = [
            "-c",
            path_str(&conf)?,
            // Loopback: the secured config listens on every interface.
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            // A random monitoring port: /varz counts slow consumers on the nats-server side.
            "-m",
            "-1",
            "--ports_file_dir",
            path_str(&ports)?,
        ];
        let env = [("MUSTER_NATS_STORE_DIR", store.into_os_string())];
        let mut proc = Proc::spawn("nats-server", &bin, &args, env, dir)?;
        let pid = proc.pid().context("nats-server did not start")?;
        let exe = bin.file_name().context("nats-server has no file name")?.to_string_lossy().into_owned();
        let file = ports.join(format!("{exe}_{pid}.ports"));
        let started = Instant::now();
        loop {
            proc.ensure_running()?;
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    let first = |key: &str| value.get(key)?.get(0)?.as_str().map(str::to_owned);
                    // `tls://127.0.0.1:<port>`: muster's URLs say `nats://` (TLS is negotiated, the server requires it).
                    if let Some(url) =
                        first("nats").and_then(|u| Some(format!("nats://127.0.0.1:{}", u.rsplit(':').next()?)))
                    {
                        if crate::api::client(&url, "muster bench probe").await.is_ok() {
                            return Ok(Self { proc, url, monitor: first("monitoring") });
                        }
                    }
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("nats-server did not accept clients within {READY_TIMEOUT:?}:\n{}", proc.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `slow_consumers` from /varz, when monitoring is on.
    pub async fn slow_consumers(&self) -> anyhow::Result<Option<u64>> {
        let Some(base) = &self.monitor else { return Ok(None) };
        let varz = http_get_json(&format!("{base}/varz")).await?;
        Ok(varz.get("slow_consumers").and_then(serde_json::Value::as_u64))
    }
}

/// A muster-server (`bench-1`) with its data in `<dir>/server`.
pub async fn start_server(dir: &Path, nats_url: &str, timing: ServerTiming, api: &Api) -> anyhow::Result<Proc> {
    let data = dir.join("server");
    std::fs::create_dir_all(&data)?;
    let mut env: Vec<(String, OsString)> = [
        ("MUSTER_NATS_URL", nats_url.into()),
        ("MUSTER_DATA_DIR", data.into_os_string()),
        ("MUSTER_SERVER_ID", "bench-1".into()),
        ("MUSTER_HEARTBEAT_INTERVAL_MS", timing.heartbeat_interval.as_millis().to_string().into()),
        ("MUSTER_HEARTBEAT_MISSES", timing.heartbeat_misses.to_string().into()),
        ("MUSTER_LOG", server_log_filter().into()),
    ]
    .map(|(k, v): (&str, OsString)| (k.to_owned(), v))
    .into();
    env.extend(identity_env(Identity::Server)?);
    let mut server = Proc::spawn("muster-server", &workspace_bin("muster-server")?, &[], env, dir)?;
    let started = Instant::now();
    loop {
        server.ensure_running()?;
        if let Ok(stats) = api.stats().await {
            if stats.get("role").and_then(|r| r.as_str()) == Some("leader") {
                return Ok(server);
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("muster-server did not lead within {READY_TIMEOUT:?}:\n{}", server.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One muster-server instance of a replicated ensemble.
pub struct Instance {
    /// `MUSTER_SERVER_ID`: the instance's id, also the name of its log file and data directory.
    pub id: String,
    /// The process (log `<dir>/<id>.log`, data in `<dir>/<id>/`).
    pub proc: Proc,
}

/// Voters `ids` (each `MUSTER_ROLE=voter`, its own `MUSTER_DATA_DIR`) on one nats-server, sharing the txn log and
/// the lease bucket. The first starts alone and must lead before the others start (nats-server 2.10 leaves
/// concurrent creates of one stream unanswered until they time out); then every instance must answer
/// `<prefix>.servers`, with exactly one leading.
pub async fn start_ensemble(
    dir: &Path,
    nats_url: &str,
    timing: ServerTiming,
    lease_ttl: Duration,
    ids: &[&str],
    api: &Api,
) -> anyhow::Result<Vec<Instance>> {
    let mut instances: Vec<Instance> = Vec::new();
    for id in ids {
        let data = dir.join(id);
        std::fs::create_dir_all(&data)?;
        let mut env: Vec<(String, OsString)> = [
            ("MUSTER_NATS_URL", nats_url.into()),
            ("MUSTER_DATA_DIR", data.into_os_string()),
            ("MUSTER_SERVER_ID", (*id).into()),
            ("MUSTER_ROLE", "voter".into()),
            ("MUSTER_HEARTBEAT_INTERVAL_MS", timing.heartbeat_interval.as_millis().to_string().into()),
            ("MUSTER_HEARTBEAT_MISSES", timing.heartbeat_misses.to_string().into()),
            ("MUSTER_LEASE_TTL_MS", lease_ttl.as_millis().to_string().into()),
            ("MUSTER_LOG", server_log_filter().into()),
        ]
        .map(|(k, v): (&str, OsString)| (k.to_owned(), v))
        .into();
        env.extend(identity_env(Identity::Server)?);
        let mut proc = Proc::spawn(id, &workspace_bin("muster-server")?, &[], env, dir)?;
        if instances.is_empty() {
            let started = Instant::now();
            loop {
                proc.ensure_running()?;
                if let Ok(stats) = api.stats().await {
                    if stats.get("role").and_then(|r| r.as_str()) == Some("leader") {
                        break;
                    }
                }
                if started.elapsed() > READY_TIMEOUT {
                    bail!("{id} did not lead within {READY_TIMEOUT:?}:\n{}", proc.log_tail(20));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        instances.push(Instance { id: (*id).to_owned(), proc });
    }
    let started = Instant::now();
    loop {
        for i in &mut instances {
            i.proc.ensure_running()?;
        }
        let rows = api.servers(ids.len(), Duration::from_secs(2)).await?;
        let leaders = rows.iter().filter(|r| r.role == "leader").count();
        if rows.len() == ids.len() && leaders == 1 {
            return Ok(instances);
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("the ensemble did not form within {READY_TIMEOUT:?}: {}", crate::api::describe_servers(&rows));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The servers' `MUSTER_LOG`: what an operator runs (state changes logged at info), or `$BENCH_MUSTER_LOG` to look
/// closer (e.g. `info,muster_server::leader=debug,muster_server::log=debug` for the leader's batch timings; the
/// processes do not inherit `MUSTER_*` variables).
fn server_log_filter() -> String {
    std::env::var("BENCH_MUSTER_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// `muster-swarm` with `count` hosts `<prefix>-<index>` from `first_index`, their starts spread over `ramp`
/// (`--ramp-ms`; zero: all at once).
pub fn start_swarm(
    dir: &Path,
    nats_url: &str,
    name: &str,
    prefix: &str,
    first: usize,
    count: usize,
    ramp: Duration,
) -> anyhow::Result<Proc> {
    let (first, count, ramp) = (first.to_string(), count.to_string(), ramp.as_millis().to_string());
    let args =
        ["--count", &count, "--id-prefix", prefix, "--first-index", &first, "--ramp-ms", &ramp, "--summary-secs", "5"];
    let mut env = vec![("MUSTER_NATS_URL".to_owned(), OsString::from(nats_url))];
    env.extend(identity_env(Identity::Swarm)?);
    Proc::spawn(name, &workspace_bin("muster-swarm")?, &args, env, dir)
}

/// One real `muster-agent` for host `id`.
pub fn start_agent(dir: &Path, nats_url: &str, id: &str) -> anyhow::Result<Proc> {
    let mut env =
        vec![("MUSTER_NATS_URL".to_owned(), OsString::from(nats_url)), ("MUSTER_HOST_ID".to_owned(), id.into())];
    env.extend(identity_env(Identity::Agent(id))?);
    Proc::spawn(&format!("agent-{id}"), &workspace_bin("muster-agent")?, &[], env, dir)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A plain HTTP/1.0 GET of a JSON document (the monitoring endpoint needs nothing more).
async fn http_get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch).await.context("monitoring endpoint timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).context("malformed HTTP response")?;
    Ok(serde_json::from_str(body)?)
}

/// CPU time and memory of one process, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    /// utime + stime of reaped children (commands an agent ran), in seconds.
    pub children_cpu_secs: f64,
    /// VmRSS in bytes.
    pub rss: u64,
    /// VmHWM (peak resident set) in bytes.
    pub peak_rss: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn proc_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<u64>()? as f64 / clock_ticks())
    };
    // utime, stime, cutime, cstime are fields 14-17 of the line: 12-15 after the name.
    let cpu_secs = tick(11)? + tick(12)?;
    let children_cpu_secs = tick(13)? + tick(14)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcStat { cpu_secs, children_cpu_secs, rss: kib("VmRSS:"), peak_rss: kib("VmHWM:") })
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU used by a set of named processes over a window.
pub struct Usage {
    start: Instant,
    before: BTreeMap<String, (u32, ProcStat)>,
}

/// What [`Usage::finish`] measured for one process.
#[derive(Debug, Clone, Copy)]
pub struct UsageOf {
    /// Cores used on average (CPU seconds per wall second).
    pub cores: f64,
    /// Cores used by its reaped children.
    pub children_cores: f64,
}

impl Usage {
    /// Starts measuring `procs` (name → process).
    pub fn start(procs: &[(&str, &Proc)]) -> anyhow::Result<Self> {
        let mut before = BTreeMap::new();
        for (name, proc) in procs {
            let pid = proc.pid().with_context(|| format!("{name} is not running"))?;
            before.insert(name.to_string(), (pid, proc_stat(pid)?));
        }
        Ok(Self { start: Instant::now(), before })
    }

    /// The window's length so far.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Ends the window: cores used by each process (by name).
    pub fn finish(&self) -> anyhow::Result<BTreeMap<String, UsageOf>> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        let mut out = BTreeMap::new();
        for (name, (pid, before)) in &self.before {
            let now = proc_stat(*pid)?;
            out.insert(
                name.clone(),
                UsageOf {
                    cores: (now.cpu_secs - before.cpu_secs) / wall,
                    children_cores: (now.children_cpu_secs - before.children_cpu_secs) / wall,
                },
            );
        }
        Ok(out)
    }
}

/// "muster-server 1.62, nats-server 0.31, swarm 0.20 cores": who was busy during a window.
pub fn describe_usage(usage: &BTreeMap<String, UsageOf>) -> String {
    let mut parts: Vec<(f64, String)> =
        usage.iter().map(|(name, u)| (u.cores, format!("{name} {:.2}", u.cores))).collect();
    parts.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = usage.values().map(|u| u.cores).sum();
    format!(
        "{} cores (sum {total:.2} of {})",
        parts.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(", "),
        nproc()
    )
}

/// CPUs this process may use (`available_parallelism`), 1 if unknown.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A directory for one benchmark run under `target/bench/`; kept on failure or when asked.
pub struct RunDir {
    /// The run's directory under `target/bench/`.
    pub path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl RunDir {
    /// Creates `target/bench/<label>-XXXXXX` (random suffix), removed on drop unless [`RunDir::keep`] is called,
    /// and the run's security directory (or, running `signed`, its command key) in it (see [`identities`]); one
    /// run per process.
    pub fn new(label: &str, security: Security) -> anyhow::Result<Self> {
        let base = workspace_root().join("target/bench");
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new().prefix(&format!("{label}-")).tempdir_in(&base)?;
        let identities = match security {
            Security::Secured => Identities::secured(dir.path())?,
            Security::Signed => Identities::signed(dir.path())?,
            Security::Insecure => Identities::insecure(),
        };
        IDENTITIES.set(identities).map_err(|_| anyhow::anyhow!("a second run directory in one bench process"))?;
        Ok(Self { path: dir.path().to_path_buf(), dir: Some(dir) })
    }

    /// Keeps the directory (logs, stores) after the run.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            return dir.keep();
        }
        self.path.clone()
    }

    /// A sub-directory for one environment.
    pub fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }
}
