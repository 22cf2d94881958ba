//! Fault injection on the Docker deployment (issue 14): [`Deployment`], the repository's `compose.yaml` with the
//! override `tests/chaos/compose.chaos.yaml` (short protocol timers, every NATS node's client port published on a
//! fixed port) under a project of its own; faults done to its containers as an operator's bad day would
//! ([`Fault`]: SIGKILL, a frozen process, a stopped NATS node, a container cut off its network, a NATS node cut
//! off the other two by iptables rules in its network namespace from [`TOOLS_IMAGE`]); [`ChaosCli`],
//! the `muster` CLI on the Docker host against all three NATS nodes; [`ChaosLoad`], traced requests submitted
//! without pause; and [`check`], the checker every scenario ends with.
//!
//! The load's commands record their own runs: each appends `<task>-a<attempt>` to `/tmp/chaos/<host>.runs` in its
//! agent's container ([`traced_run`]), which the checker reads back with `docker exec cat` and compares with the
//! tasks' records ([`Runs::check`]): no (task, attempt) ran twice, none ran unrecorded, none ran on another host.
//! The agents' own execution journals ([`JOURNAL`], `MUSTER_EXEC_JOURNAL`) are read the same way and checked
//! against the records too ([`journal_violations`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use muster_schemas::api::{
    Committed, HostSummary, RequestCreated, RequestSummary, RequestView, ServerRole, ServerStatus,
};
use muster_schemas::commands::RequestId;
use muster_schemas::{HostState, Subjects};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::docker::{run, Container, DOCKER_TIMEOUT, SECURITY_DIR};
use crate::load::{traced_run, Acked, Runs};
use crate::nats_server::connect_client;
use crate::paths::{workspace_bin, workspace_root};
use crate::requests::describe_request;
use crate::wait::{wait_until, within, Check};

/// Heartbeat interval the override sets (`MUSTER_HEARTBEAT_INTERVAL_MS`).
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// Missed heartbeats before HEARTBEAT_LOST (`MUSTER_HEARTBEAT_MISSES`).
pub const MISSES: u32 = 3;
/// The leader lease TTL the override sets (`MUSTER_LEASE_TTL_MS`).
pub const LEASE_TTL: Duration = Duration::from_millis(2000);
/// Where, in an agent's container, the load's commands record their runs.
pub const RUNS_DIR: &str = "/tmp/chaos";
/// The agents' execution journal (`MUSTER_EXEC_JOURNAL` in the override).
pub const JOURNAL: &str = "/var/lib/muster-agent/executions.journal";

/// The detection window: heartbeat interval × misses.
pub fn detection_window() -> Duration {
    HEARTBEAT * MISSES
}

/// A free port of 127.0.0.1 (bound and released: another process could take it in between, which `up` would then
/// report).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `compose.yaml` + `tests/chaos/compose.chaos.yaml` under a project `<prefix><pid>x<time>`, each NATS node's client
/// port published on a fixed port of 127.0.0.1 (so it stays the same across the node's restarts). Taken down with
/// its volumes on Drop (`down -v`).
#[derive(Debug)]
pub struct Deployment {
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    ports: [u16; 3],
}

impl Deployment {
    /// A project of its own; nothing runs yet.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let root = workspace_root();
        let ports = [free_port()?, free_port()?, free_port()?];
        ensure!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "free ports collided: {ports:?}");
        Ok(Self {
            project: format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000),
            files: vec![root.join("compose.yaml"), root.join("tests/chaos/compose.chaos.yaml")],
            env: vec![
                ("NATS_PUBLISH".into(), format!("127.0.0.1:{}", ports[0])),
                ("CHAOS_NATS_2".into(), ports[1].to_string()),
                ("CHAOS_NATS_3".into(), ports[2].to_string()),
            ],
            ports,
        })
    }

    /// The project name.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["--ansi", "never", "-p", self.project.as_str()];
        for f in &self.files {
            full.push("-f");
            full.push(f.to_str().unwrap_or("compose.yaml"));
        }
        full.extend(args);
        full
    }

    /// `docker-compose -p <project> -f compose.yaml -f compose.chaos.yaml <args>`: its stdout, or an error.
    pub async fn compose(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        run("docker-compose", &self.args(args), &self.env, limit).await?.success()
    }

    /// `up -d` with `args`.
    pub async fn up(&self, args: &[&str], limit: Duration) -> anyhow::Result<()> {
        let mut full = vec!["up", "-d"];
        full.extend(args);
        self.compose(&full, limit).await.map(drop)
    }

    /// `nats://127.0.0.1:<p1>,…`: the three nodes' published client ports.
    pub fn nats_urls(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The docker network every service is on.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// The containers of `service`, with their hostnames.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<Container>> {
        let ids = self.compose(&["ps", "-q", service], DOCKER_TIMEOUT).await?;
        let mut out = Vec::new();
        for id in ids.split_whitespace() {
            let hostname = docker(&["inspect", "--format", "{{.Config.Hostname}}", id]).await?;
            out.push(Container { id: id.to_owned(), hostname: hostname.trim().to_owned() });
        }
        Ok(out)
    }

    /// The one container of `service`.
    pub async fn container(&self, service: &str) -> anyhow::Result<Container> {
        let mut all = self.containers(service).await?;
        ensure!(all.len() == 1, "service {service} has {} containers, not 1", all.len());
        Ok(all.remove(0))
    }

    /// Copies `file` of the security directory out of the `init` job's container into `dest_dir`.
    pub async fn security_file(&self, file: &str, dest_dir: &Path) -> anyhow::Result<PathBuf> {
        let init = self.container("init").await?;
        let dest = dest_dir.join(file);
        let dest_str = dest.to_str().context("test directory path is not UTF-8")?;
        docker(&["cp", &format!("{}:{SECURITY_DIR}/{file}", init.id), dest_str]).await?;
        Ok(dest)
    }

    /// Every container's whole log (for the checker's "no process panicked").
    pub async fn all_logs(&self) -> anyhow::Result<String> {
        let out = run("docker-compose", &self.args(&["logs", "--no-color"]), &self.env, DOCKER_TIMEOUT).await?;
        ensure!(out.ok, "`{}` failed: {}", out.what, out.stderr.trim());
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// The last `lines` lines of every container's log.
    pub fn logs(&self, lines: usize) -> String {
        let tail = lines.to_string();
        let args = self.args(&["logs", "--no-color", "--tail", &tail]);
        match Command::new("docker-compose").args(&args).envs(self.env.iter().cloned()).stdin(Stdio::null()).output() {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(docker-compose logs: {e})"),
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        crate::docker::tear_down(&self.project, &self.args(&[]), &self.env);
    }
}

/// `docker <args>`: its stdout, or an error quoting stderr.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", args, &[], DOCKER_TIMEOUT).await?.success()
}

/// Cuts `container` off the deployment's network: it reaches nothing, nothing reaches it.
pub async fn disconnect(d: &Deployment, container: &Container) -> anyhow::Result<()> {
    docker(&["network", "disconnect", &d.network(), &container.id]).await.map(drop)
}

/// Puts `container` back on the deployment's network (as `alias` too, for a service others reach by name).
pub async fn connect(d: &Deployment, container: &Container, alias: Option<&str>) -> anyhow::Result<()> {
    let network = d.network();
    let mut args = vec!["network", "connect"];
    if let Some(alias) = alias {
        args.extend(["--alias", alias]);
    }
    args.extend([network.as_str(), container.id.as_str()]);
    docker(&args).await.map(drop)
}

/// The image the route partitions run `iptables` from, in a NATS node's network namespace.
pub const TOOLS_IMAGE: &str = "muster-chaos-tools:trixie";
/// [`TOOLS_IMAGE`]: the agent image's Debian base (`scripts/images.sh` makes it) with iptables, from the Debian
/// mirror the base image's apt names.
const TOOLS_DOCKERFILE: &str = "FROM muster-base:trixie
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
";

/// Builds [`TOOLS_IMAGE`] unless it exists (after [`crate::docker::build_images`], which makes its base).
pub fn ensure_tools_image() -> anyhow::Result<()> {
    let exists = Command::new("docker")
        .args(["image", "inspect", TOOLS_IMAGE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return Ok(());
    }
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", TOOLS_IMAGE, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker build")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("docker build's stdin")?;
        stdin.write_all(TOOLS_DOCKERFILE.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "docker build of {TOOLS_IMAGE} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The cluster port (routes between NATS nodes) in compose.yaml.
const ROUTE_PORT: u16 = 6222;

/// Cuts the NATS node in `container` off the other two (every packet to or from a route port dropped in its
/// network namespace) while clients still reach it; `false` heals it (the rules flushed).
pub async fn cut_routes(container: &Container, cut: bool) -> anyhow::Result<()> {
    let script = if cut {
        ["INPUT", "OUTPUT"]
            .iter()
            .flat_map(|chain| {
                ["--dport", "--sport"].map(|dir| format!("iptables -A {chain} -p tcp {dir} {ROUTE_PORT} -j DROP"))
            })
            .collect::<Vec<_>>()
            .join(" && ")
    } else {
        "iptables -F INPUT && iptables -F OUTPUT".to_owned()
    };
    let net = format!("container:{}", container.id);
    docker(&["run", "--rm", "--net", &net, "--cap-add", "NET_ADMIN", TOOLS_IMAGE, "sh", "-c", &script]).await.map(drop)
}

/// The `muster` CLI on the Docker host, against every NATS node's published port, as the deployment's admin.
#[derive(Debug, Clone)]
pub struct ChaosCli {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// How long one CLI call may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

impl ChaosCli {
    /// `muster` with `MUSTER_NATS_URL=<urls>`, the admin's credentials and the CA.
    pub fn new(urls: &str, creds: &Path, ca: &Path) -> anyhow::Result<Self> {
        let env = vec![
            ("MUSTER_NATS_URL".to_owned(), urls.to_owned()),
            ("MUSTER_NATS_CREDS".to_owned(), creds.display().to_string()),
            ("MUSTER_NATS_CA".to_owned(), ca.display().to_string()),
        ];
        Ok(Self { bin: workspace_bin("muster")?, env })
    }

    /// `muster <args> --json` (flags before a `--`), parsed.
    pub async fn json<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut full: Vec<&str> = args[..split].to_vec();
        full.push("--json");
        full.extend(&args[split..]);
        let bin = self.bin.to_str().context("muster path is not UTF-8")?;
        let stdout = run(bin, &full, &self.env, CLI_TIMEOUT).await?.success()?;
        serde_json::from_str(&stdout).with_context(|| format!("parsing `muster {}`: {stdout}", full.join(" ")))
    }

    /// A request-starting command with `--detach`: the id its acknowledgement names.
    pub async fn submit(&self, args: &[&str]) -> anyhow::Result<RequestId> {
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut full: Vec<&str> = args[..split].to_vec();
        full.push("--detach");
        full.extend(&args[split..]);
        let created: Committed<RequestCreated> = self.json(&full).await?;
        Ok(created.reply.request)
    }

    /// `muster servers`.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerStatus>> {
        self.json(&["servers"]).await
    }

    /// `muster hosts`.
    pub async fn hosts(&self) -> anyhow::Result<Vec<HostSummary>> {
        self.json(&["hosts"]).await
    }
}

/// A small deterministic generator (xorshift64*), seeded and printed by the test so a run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is replaced: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Traced requests submitted without pause: each tick one `muster run` on a host picked at random among `hosts`,
/// or on all of them (one in four), whose command records its run in the container ([`traced_run`]).
#[derive(Debug)]
pub struct ChaosLoad {
    acked: Arc<Mutex<Vec<Acked>>>,
    attempts: Arc<Mutex<u64>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ChaosLoad {
    /// Starts submitting every `every`, up to 3 submissions in flight.
    pub fn start(cli: ChaosCli, hosts: Vec<String>, every: Duration, seed: u64) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let (acked2, attempts2) = (acked.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = ticks.tick() => {}
                }
                while running.len() >= 3 {
                    running.join_next().await;
                }
                let target = if rng.below(4) == 0 || hosts.is_empty() {
                    hosts.join(",")
                } else {
                    hosts[rng.below(hosts.len() as u64) as usize].clone()
                };
                let (cli, acked, attempts) = (cli.clone(), acked2.clone(), attempts2.clone());
                running.spawn(async move {
                    let args = chaos_run(&target);
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let outcome = cli.submit(&argv).await;
                    *attempts.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    if let Ok(id) = outcome {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(Acked { id, at: Instant::now() });
                    }
                });
            }
            while running.join_next().await.is_some() {}
        });
        Self { acked, attempts, stop, task: Some(task) }
    }

    /// Requests acknowledged so far.
    pub fn acked(&self) -> Vec<Acked> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `n` requests were acknowledged after `since`.
    pub async fn wait_acked_after(&self, since: Instant, n: usize, limit: Duration) -> anyhow::Result<()> {
        wait_until(limit, &format!("{n} requests acknowledged after the mark"), async || {
            let got = self.acked().iter().filter(|a| a.at > since).count();
            Ok(if got >= n { Check::Done(()) } else { Check::NotYet(format!("{got} acknowledged")) })
        })
        .await
    }

    /// Stops (submissions in flight finish) and returns (attempts, acknowledged ids).
    pub async fn stop(mut self) -> (u64, Vec<RequestId>) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let attempts = *self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        (attempts, self.acked().iter().map(|a| a.id).collect())
    }
}

impl Drop for ChaosLoad {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The load's request: a traced run on `hosts` recording into [`RUNS_DIR`] of the agent's container, with a
/// timeout long enough that a task held up by a fault is redone by the protocol, not by a timeout's re-send.
pub fn chaos_run(hosts: &str) -> Vec<String> {
    // traced_run creates its directory on this machine: the command makes it in the container itself instead.
    let mut args = traced_run(Path::new(RUNS_DIR), hosts, 120).unwrap_or_default();
    if let Some(script) = args.last_mut() {
        *script = format!("mkdir -p {RUNS_DIR} && {script}");
    }
    args
}

/// Reads every agent container's runs file into `dest` as `<host>.runs` (for [`Runs::read`]).
pub async fn collect_runs(agents: &[Container], dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for a in agents {
        let file = format!("{RUNS_DIR}/{}.runs", a.hostname);
        let out = run(
            "docker",
            &["exec", &a.id, "sh", "-c", &format!("cat {file} 2>/dev/null || true")],
            &[],
            DOCKER_TIMEOUT,
        )
        .await?
        .success()
        .with_context(|| format!("reading {file} in agent {}", a.hostname))?;
        std::fs::write(dest.join(format!("{}.runs", a.hostname)), out)?;
    }
    Ok(())
}

/// Every agent's execution journal: (host, task, attempt) of every line, in order.
pub async fn read_journals(agents: &[Container]) -> anyhow::Result<Vec<(String, u64, u32)>> {
    let mut out = Vec::new();
    for a in agents {
        let text = run(
            "docker",
            &["exec", &a.id, "sh", "-c", &format!("cat {JOURNAL} 2>/dev/null || true")],
            &[],
            DOCKER_TIMEOUT,
        )
        .await?
        .success()
        .with_context(|| format!("reading the journal of agent {}", a.hostname))?;
        let lines: Vec<&str> = text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let key = line.split_once(' ').and_then(|(k, _)| k.parse::<muster_schemas::ids::TaskAttempt>().ok());
            match key {
                Some(k) => out.push((a.hostname.clone(), k.task, k.attempt)),
                // A torn last line: the agent died mid-write, before fsync, so before the command started.
                None if i == lines.len() - 1 => {}
                None => bail!("journal of {} line {}: {line:?}", a.hostname, i + 1),
            }
        }
    }
    Ok(out)
}

/// What the journals say against the tasks' records: no (task, attempt) journaled twice (a second start of the
/// same attempt), none on a host other than its task's, none of a task no request records or of an attempt
/// above the record's, and every COMPLETED task's recorded attempt journaled on its host.
pub fn journal_violations<'a>(
    journal: &[(String, u64, u32)],
    requests: impl IntoIterator<Item = &'a RequestView>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut tasks = BTreeMap::new();
    for v in requests {
        for t in &v.tasks {
            tasks.insert(t.id, (t.host.clone(), t.attempt, t.status));
        }
    }
    let mut seen = BTreeMap::new();
    for (host, task, attempt) in journal {
        *seen.entry((host.clone(), *task, *attempt)).or_insert(0u32) += 1;
        match tasks.get(task) {
            None => wrong.push(format!("journal of {host}: task {task}-a{attempt} is no recorded task")),
            Some((h, _, _)) if h != host => wrong.push(format!("task {task} of {h} started on {host} too")),
            Some((_, a, _)) if attempt > a => {
                wrong.push(format!("journal of {host}: task {task}-a{attempt}, its record says attempt {a}"))
            }
            Some(_) => {}
        }
    }
    for ((host, task, attempt), n) in &seen {
        if *n > 1 {
            wrong.push(format!("{host} started task {task} attempt {attempt} {n} times"));
        }
    }
    for (task, (host, attempt, status)) in &tasks {
        if *status == muster_schemas::cluster::TaskStatus::Completed
            && !seen.contains_key(&(host.clone(), *task, *attempt))
        {
            wrong.push(format!("task {task} COMPLETED at attempt {attempt} on {host}, which never journaled it"));
        }
    }
    wrong
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Requests in the log.
    pub requests: usize,
    /// Requests acknowledged to the load.
    pub acked: usize,
    /// Of those, COMPLETED.
    pub completed: usize,
    /// Tasks of all requests.
    pub tasks: usize,
    /// Runs the agents' commands recorded.
    pub runs: usize,
    /// Tasks run more than once (by attempt: a re-send after a lost dispatch).
    pub retried: usize,
    /// Lines of the agents' execution journals.
    pub journaled: usize,
    /// The instances' common applied_seq.
    pub applied_seq: u64,
    /// Invariant violations (goal: none).
    pub violations: Vec<String>,
    /// From the call to every request ended and every instance converged.
    pub settled: Duration,
}

impl Verdict {
    /// One line for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} requests ({} acknowledged, {} completed), {} tasks, {} runs ({} retried, {} journaled), applied_seq \
             {}, {} violations, settled in {:.1} s",
            self.requests,
            self.acked,
            self.completed,
            self.tasks,
            self.runs,
            self.retried,
            self.journaled,
            self.applied_seq,
            self.violations.len(),
            self.settled.as_secs_f64()
        )
    }
}

/// The checker, once the faults stopped and the network healed: within `limit`
/// - every acknowledged request is known and every request reached a final status; acknowledged ones COMPLETED
///   (the load's commands cannot fail);
/// - every task has one final status, and the agents' records of their runs ([`Runs::check`]) show each
///   (task, attempt) run once, on its own host, and no run that no task records; so do the agents' execution
///   journals ([`journal_violations`]);
/// - every instance in `servers` answers `muster servers` with the same applied_seq and digest;
/// - every agent in `agents` is HEALTHY;
/// - no container's log says "panicked".
///
/// Violations are collected in the verdict, not raised: the caller decides (a test fails on any).
pub async fn check(
    d: &Deployment,
    cli: &ChaosCli,
    acked: &[RequestId],
    agents: &[Container],
    scratch: &Path,
    limit: Duration,
) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let mut v = Verdict { acked: acked.len(), ..Verdict::default() };
    let mut last = String::new();
    let ended = wait_until(limit, "every request has ended", async || {
        let rows: Vec<RequestSummary> = match cli.json::<Vec<RequestSummary>>(&["requests"]).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Check::NotYet(format!("{e:#}"))),
        };
        let known: BTreeSet<RequestId> = rows.iter().map(|r| r.id).collect();
        let missing: Vec<RequestId> = acked.iter().copied().filter(|id| !known.contains(id)).collect();
        let open: Vec<String> =
            rows.iter().filter(|r| !r.status.is_terminal()).map(|r| format!("{} {}", r.id, r.status)).collect();
        last = format!("acknowledged but unknown: {missing:?}; not ended: {open:?}");
        // An acknowledged request missing from a complete answer is lost: it will not come back by waiting.
        Ok(if open.is_empty() { Check::Done(rows) } else { Check::NotYet(last.clone()) })
    })
    .await;
    let rows = match ended {
        Ok(rows) => rows,
        Err(e) => {
            v.violations.push(format!("{e:#} (last seen: {last})"));
            return Ok(v);
        }
    };
    // Converged: every instance at the same applied_seq and digest. Reads are answered by any instance, so only
    // then does every one of them know what the listing named.
    let left = limit.saturating_sub(started.elapsed()).max(Duration::from_secs(10));
    match converged(cli, left).await {
        Ok(seq) => v.applied_seq = seq,
        Err(e) => v.violations.push(format!("{e:#}")),
    }
    // The listing again, now that every instance has applied everything: the one above may have come from an
    // instance behind the others, which does not know the newest requests yet.
    let rows: Vec<RequestSummary> = match cli.json::<Vec<RequestSummary>>(&["requests"]).await {
        Ok(again) if again.len() >= rows.len() => again,
        _ => rows,
    };
    let mut views = BTreeMap::new();
    for row in &rows {
        let id = row.id.to_string();
        let view: RequestView = wait_until(Duration::from_secs(20), &format!("request {id} read"), async || {
            Ok(match cli.json(&["request", &id]).await {
                Ok(view) => Check::Done(view),
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        })
        .await?;
        views.insert(row.id, view);
    }
    v.requests = views.len();
    for id in acked {
        match views.get(id) {
            None => v.violations.push(format!("acknowledged request {id} is lost")),
            Some(r) if r.status != muster_schemas::cluster::TaskStatus::Completed => {
                v.violations.push(format!("acknowledged request did not complete: {}", describe_request(r)))
            }
            Some(_) => v.completed += 1,
        }
    }
    for r in views.values() {
        v.tasks += r.tasks.len();
        for t in &r.tasks {
            if !t.status.is_terminal() {
                v.violations.push(format!("task {} of request {} has no final status: {}", t.id, r.id, t.status));
            }
        }
    }
    let runs_dir = scratch.join(format!("runs-{}", started.elapsed().as_nanos()));
    collect_runs(agents, &runs_dir).await?;
    let hosts: Vec<&str> = agents.iter().map(|a| a.hostname.as_str()).collect();
    let runs = Runs::read(&runs_dir, &hosts)?;
    let (wrong, tally) = runs.check(views.values(), &hosts);
    v.violations.extend(wrong);
    v.runs = runs.total();
    v.retried = tally.retried;
    let journal = read_journals(agents).await?;
    v.journaled = journal.len();
    v.violations.extend(journal_violations(&journal, views.values()));

    // Every agent HEALTHY.
    let expected: BTreeSet<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    if let Err(e) = all_healthy(cli, &expected, Duration::from_secs(15)).await {
        v.violations.push(format!("{e:#}"));
    }
    // No process panicked.
    let logs = d.all_logs().await?;
    for line in logs.lines().filter(|l| l.contains("panicked")) {
        v.violations.push(format!("a process panicked: {line}"));
    }
    v.settled = started.elapsed();
    Ok(v)
}

/// Waits until `muster servers` lists three instances, one of them the leader, all at the same applied_seq and
/// digest; returns that applied_seq.
pub async fn converged(cli: &ChaosCli, limit: Duration) -> anyhow::Result<u64> {
    wait_until(limit, "the three instances at the same applied_seq and digest, with a leader", async || {
        let rows = match cli.servers().await {
            Ok(rows) => rows,
            Err(e) => return Ok(Check::NotYet(format!("{e:#}"))),
        };
        let seqs: BTreeSet<(u64, Option<String>)> = rows.iter().map(|r| (r.applied_seq, r.digest.clone())).collect();
        let leader = rows.iter().any(|r| r.role == ServerRole::Leader);
        if rows.len() == 3 && leader && seqs.len() == 1 && rows[0].digest.is_some() {
            return Ok(Check::Done(rows[0].applied_seq));
        }
        let seen: Vec<String> =
            rows.iter().map(|r| format!("{} {:?} seq {} {:?}", r.id, r.role, r.applied_seq, r.digest)).collect();
        Ok(Check::NotYet(format!("{seen:?}")))
    })
    .await
}

/// Waits until every host in `expected` is HEALTHY.
pub async fn all_healthy(cli: &ChaosCli, expected: &BTreeSet<String>, limit: Duration) -> anyhow::Result<()> {
    wait_until(limit, &format!("hosts {expected:?} HEALTHY"), async || {
        let hosts = match cli.hosts().await {
            Ok(h) => h,
            Err(e) => return Ok(Check::NotYet(format!("{e:#}"))),
        };
        let healthy: BTreeSet<String> =
            hosts.iter().filter(|h| h.state == HostState::Healthy).map(|h| h.id.clone()).collect();
        if expected.is_subset(&healthy) {
            return Ok(Check::Done(()));
        }
        Ok(Check::NotYet(format!("{:?}", hosts.iter().map(|h| (&h.id, h.state)).collect::<Vec<_>>())))
    })
    .await
}

/// The leader's row of `muster servers`, once there is exactly one.
pub async fn leader(cli: &ChaosCli, limit: Duration) -> anyhow::Result<ServerStatus> {
    wait_until(limit, "one leader", async || {
        let rows = match cli.servers().await {
            Ok(rows) => rows,
            Err(e) => return Ok(Check::NotYet(format!("{e:#}"))),
        };
        let leaders: Vec<&ServerStatus> = rows.iter().filter(|r| r.role == ServerRole::Leader).collect();
        Ok(match leaders.as_slice() {
            [one] => Check::Done((*one).clone()),
            _ => Check::NotYet(format!("{:?}", rows.iter().map(|r| (&r.id, r.role)).collect::<Vec<_>>())),
        })
    })
    .await
}

/// One entry of the txn log: its sequence, epoch and writer (the `Muster-Host` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Stream sequence.
    pub seq: u64,
    /// `Muster-Epoch`.
    pub epoch: u64,
    /// `Muster-Host`: the instance that appended it.
    pub writer: String,
}

/// A NATS client as the deployment's server identity (for reading the txn log and tapping its appends).
pub async fn server_client(urls: &str, creds: PathBuf, ca: PathBuf) -> anyhow::Result<async_nats::Client> {
    let trust = muster_nats::ClientTrust { credentials: Some(creds), ca: Some(ca), ..Default::default() };
    connect_client(urls, trust).await.context("connecting as the server identity")
}

/// Every entry of the txn log still stored, oldest first.
pub async fn txn_log(client: &async_nats::Client) -> anyhow::Result<Vec<LogEntry>> {
    let js = async_nats::jetstream::new(client.clone());
    let name = Subjects::default().txn_stream();
    let stream = within(CLI_TIMEOUT, &format!("stream {name}"), js.get_stream(&name)).await??;
    let info = within(CLI_TIMEOUT, &format!("info of {name}"), async {
        let mut s = stream.clone();
        s.info().await.cloned().map_err(anyhow::Error::from)
    })
    .await??;
    let mut out = Vec::new();
    for seq in info.state.first_sequence.max(1)..=info.state.last_sequence {
        let msg = within(CLI_TIMEOUT, &format!("{name} entry {seq}"), stream.direct_get(seq))
            .await?
            .with_context(|| format!("reading {name} entry {seq}"))?;
        let header = |h: &str| msg.headers.get(h).map(|v| v.as_str().to_string());
        let epoch = header(muster_schemas::headers::EPOCH)
            .and_then(|e| e.parse().ok())
            .with_context(|| format!("{name} entry {seq} has no numeric epoch"))?;
        out.push(LogEntry { seq, epoch, writer: header(muster_schemas::headers::HOST).unwrap_or_default() });
    }
    Ok(out)
}

/// Every way the log's epochs go back (an entry whose epoch is below one before it): each is a write by a
/// deposed leader.
pub fn epochs_going_back(log: &[LogEntry]) -> Vec<String> {
    log.windows(2)
        .filter(|w| w[1].epoch < w[0].epoch)
        .map(|w| format!("seq {} by {} under epoch {} after epoch {}", w[1].seq, w[1].writer, w[1].epoch, w[0].epoch))
        .collect()
}

/// The kinds of fault the nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of the leader's container (restarted after the fault).
    KillLeader,
    /// SIGKILL of the follower.
    KillFollower,
    /// SIGKILL of the observer.
    KillObserver,
    /// SIGKILL of an agent.
    KillAgent,
    /// The leader frozen (`docker pause`: every process SIGSTOP'd, through the freezer).
    PauseLeader,
    /// The follower frozen.
    PauseFollower,
    /// An agent frozen.
    PauseAgent,
    /// A NATS node stopped, then started.
    StopNats,
    /// An agent cut off the network (so from NATS).
    PartitionAgent,
    /// A NATS node cut off the other two (its routes), still reached by clients.
    PartitionNats,
    /// The leader cut off the network.
    PartitionLeader,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillObserver,
        Fault::KillAgent,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::PauseAgent,
        Fault::StopNats,
        Fault::PartitionAgent,
        Fault::PartitionLeader,
        Fault::PartitionNats,
    ];
}

/// One fault done and healed, for the history.
#[derive(Debug, Clone)]
pub struct Done {
    /// What.
    pub fault: Fault,
    /// To which container (service or agent hostname).
    pub target: String,
    /// Seconds since the run began, when it started.
    pub at: f64,
    /// How long it lasted.
    pub held: Duration,
    /// From healing to the deployment settled again (a leader, three instances answering, agents HEALTHY).
    pub heal: Duration,
}

/// Does `fault` to the deployment for `hold`, heals it, and waits until it settled (a leader, three instances
/// answering, every agent HEALTHY; at most `settle`).
pub async fn inflict(
    d: &Deployment,
    cli: &ChaosCli,
    fault: Fault,
    hold: Duration,
    rng: &mut Rng,
    settle: Duration,
    t0: Instant,
) -> anyhow::Result<Done> {
    let at = t0.elapsed().as_secs_f64();
    let agents = d.containers("agent").await?;
    let pick_agent = |rng: &mut Rng| agents[rng.below(agents.len() as u64) as usize].clone();
    // A server by its role: its container, and its id (= its compose service) for the history. Waited for: a
    // lease can change hands after the last fault settled (a leader starved of CPU for a moment steps down).
    let by_role = async |role: ServerRole| -> anyhow::Result<(Container, String)> {
        let id = wait_until(settle, &format!("a {role:?} to strike"), async || {
            Ok(match cli.servers().await {
                Ok(rows) => match rows.iter().find(|r| r.role == role) {
                    Some(row) => Check::Done(row.id.clone()),
                    None => Check::NotYet(format!("{:?}", rows.iter().map(|r| (&r.id, r.role)).collect::<Vec<_>>())),
                },
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        })
        .await?;
        Ok((d.container(&id).await?, id))
    };
    let (target, name) = match fault {
        Fault::KillLeader | Fault::PauseLeader | Fault::PartitionLeader => by_role(ServerRole::Leader).await?,
        Fault::KillFollower | Fault::PauseFollower => by_role(ServerRole::Follower).await?,
        Fault::KillObserver => (d.container("server-3").await?, "server-3".to_owned()),
        Fault::KillAgent | Fault::PauseAgent | Fault::PartitionAgent => {
            let c = pick_agent(rng);
            let n = c.hostname.clone();
            (c, n)
        }
        Fault::StopNats | Fault::PartitionNats => {
            let s = format!("nats-{}", 1 + rng.below(3));
            (d.container(&s).await?, s)
        }
    };
    let started = Instant::now();
    match fault {
        Fault::KillLeader | Fault::KillFollower | Fault::KillObserver | Fault::KillAgent => {
            docker(&["kill", "-s", "KILL", &target.id]).await?;
            tokio::time::sleep(hold).await;
            docker(&["start", &target.id]).await?;
        }
        Fault::PauseLeader | Fault::PauseFollower | Fault::PauseAgent => {
            docker(&["pause", &target.id]).await?;
            tokio::time::sleep(hold).await;
            docker(&["unpause", &target.id]).await?;
        }
        Fault::StopNats => {
            docker(&["stop", "-t", "5", &target.id]).await?;
            tokio::time::sleep(hold).await;
            docker(&["start", &target.id]).await?;
        }
        Fault::PartitionAgent | Fault::PartitionLeader => {
            disconnect(d, &target).await?;
            tokio::time::sleep(hold).await;
            connect(d, &target, None).await?;
        }
        Fault::PartitionNats => {
            cut_routes(&target, true).await?;
            tokio::time::sleep(hold).await;
            cut_routes(&target, false).await?;
        }
    }
    let held = started.elapsed();
    let healed = Instant::now();
    settled(cli, &agents, settle).await.with_context(|| format!("after {fault:?} of {name}"))?;
    Ok(Done { fault, target: name, at, held, heal: healed.elapsed() })
}

/// Waits until `muster servers` shows three instances with one leader, one follower and the observer, and every
/// agent is HEALTHY.
pub async fn settled(cli: &ChaosCli, agents: &[Container], limit: Duration) -> anyhow::Result<()> {
    wait_until(limit, "a leader, a follower and the observer answering", async || {
        let rows = match cli.servers().await {
            Ok(rows) => rows,
            Err(e) => return Ok(Check::NotYet(format!("{e:#}"))),
        };
        let count = |role: ServerRole| rows.iter().filter(|r| r.role == role).count();
        let all = [ServerRole::Leader, ServerRole::Follower, ServerRole::Observer];
        Ok(if rows.len() == 3 && all.iter().all(|r| count(*r) == 1) {
            Check::Done(())
        } else {
            Check::NotYet(format!("{:?}", rows.iter().map(|r| (&r.id, r.role)).collect::<Vec<_>>()))
        })
    })
    .await?;
    let expected: BTreeSet<String> = agents.iter().map(|a| a.hostname.clone()).collect();
    all_healthy(cli, &expected, limit).await
}

/// Fails unless `v` has no violation, quoting them.
pub fn require_clean(v: &Verdict) -> anyhow::Result<()> {
    if !v.violations.is_empty() {
        let quoted: Vec<&String> = v.violations.iter().take(30).collect();
        bail!("{} invariant violations ({}):\n{quoted:#?}", v.violations.len(), v.summary());
    }
    Ok(())
}
