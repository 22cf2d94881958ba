//! Docker deployments: the images `scripts/images.sh` builds, and [`Compose`], the repository's `compose.yaml`
//! brought up under a project name of its own, reached from the host through nats-1's published client port.
//!
//! Nothing here is skipped quietly: without Docker, [`require_docker`] fails with what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;

use crate::paths::{workspace_bin, workspace_root};
use crate::wait::within;

/// How long one `docker` or `docker-compose` call may take when the caller does not say.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// The compose service whose client port is published.
pub const PUBLISHED_NATS: &str = "nats-1";

/// Where the deployment's security directory is, in the containers that mount it.
pub const SECURITY_DIR: &str = "/muster/security";

/// What a `docker`/`docker-compose` run printed.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub what: String,
    /// Exit status 0.
    pub ok: bool,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Output {
    /// stdout, or an error quoting both streams.
    pub fn success(self) -> anyhow::Result<String> {
        if !self.ok {
            bail!("`{}` failed: {}{}", self.what, self.stderr.trim(), tail_of(&self.stdout));
        }
        Ok(self.stdout)
    }
}

fn tail_of(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nstdout (last lines):\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
    }
}

/// Runs `program args` (with `env` added) for at most `limit`.
pub async fn run(program: &str, args: &[&str], env: &[(String, String)], limit: Duration) -> anyhow::Result<Output> {
    let what = format!("{program} {}", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    // The test's own settings (MUSTER_NATS_SERVER, ...) are not the deployment's.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MUSTER_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).kill_on_drop(true);
    let out = within(limit, &what, cmd.output()).await?.with_context(|| format!("running {what}"))?;
    Ok(Output {
        what,
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Fails, saying what is missing, unless `docker` and `docker-compose` are installed and the daemon answers: a test
/// of the deployment must not pass on a machine that cannot run it.
pub fn require_docker() -> anyhow::Result<()> {
    let answers = |program: &str, args: &[&str]| {
        Command::new(program).args(args).stdin(Stdio::null()).output().map(|o| o.status.success()).unwrap_or(false)
    };
    if !answers("docker", &["--version"]) {
        bail!("this test deploys muster with Docker: `docker` is not installed (or not on PATH); install Docker");
    }
    if !answers("docker", &["info"]) {
        bail!("this test deploys muster with Docker: the Docker daemon does not answer `docker info`");
    }
    if !answers("docker-compose", &["version"]) {
        bail!("this test deploys muster with docker-compose: `docker-compose` (1.29 or later) is not installed");
    }
    Ok(())
}

/// Builds (or finds up to date) the three images from the binaries of this test's profile
/// (`scripts/images.sh --profile debug|release`); returns how long it took.
pub fn build_images() -> anyhow::Result<Duration> {
    let bin = workspace_bin("muster-server")?;
    let profile = match bin.parent().and_then(Path::file_name).and_then(|n| n.to_str()) {
        Some("release") => "release",
        _ => "debug",
    };
    let start = Instant::now();
    let script = workspace_root().join("scripts/images.sh");
    let out = Command::new(&script)
        .args(["--profile", profile])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --profile {profile} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            tail_of(&String::from_utf8_lossy(&out.stdout))
        );
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(start.elapsed())
}

/// One container of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its full id.
    pub id: String,
    /// Its hostname (an agent's host id, by default).
    pub hostname: String,
}

/// The repository's `compose.yaml` under a project of its own (`docker-compose -p`), its client port published
/// on a free port of 127.0.0.1 (`NATS_PUBLISH`). Taken down with its volumes on Drop (`down -v`), printing the
/// tail of every container's log first when the test is panicking.
#[derive(Debug)]
pub struct Compose {
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    /// A project named `<prefix><pid><time>` (compose project names: lower-case letters and digits); nothing runs
    /// yet.
    pub fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Self {
            project: format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000),
            file: workspace_root().join("compose.yaml"),
            env: vec![("NATS_PUBLISH".into(), "127.0.0.1:".into())],
        }
    }

    /// The project name.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let file = self.file.to_str().unwrap_or("compose.yaml");
        let mut full = vec!["--ansi", "never", "-p", self.project.as_str(), "-f", file];
        full.extend(args);
        full
    }

    /// `docker-compose -p <project> -f compose.yaml <args>`, at most `limit`.
    pub async fn compose(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        run("docker-compose", &self.args(args), &self.env, limit).await
    }

    /// `up -d` with `args` (e.g. `--scale agent=10`): returns once every service with a health check that another
    /// waits on is healthy and the one-shot jobs completed (docker-compose waits on the `depends_on` conditions).
    pub async fn up(&self, args: &[&str], limit: Duration) -> anyhow::Result<()> {
        let mut full = vec!["up", "-d"];
        full.extend(args);
        self.compose(&full, limit).await?.success().map(drop)
    }

    /// The containers of `service` (stopped ones too), with their hostnames.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<Container>> {
        let ids = self.compose(&["ps", "-q", service], DOCKER_TIMEOUT).await?.success()?;
        let mut out = Vec::new();
        for id in ids.split_whitespace() {
            let hostname = run("docker", &["inspect", "--format", "{{.Config.Hostname}}", id], &[], DOCKER_TIMEOUT)
                .await?
                .success()?;
            out.push(Container { id: id.to_owned(), hostname: hostname.trim().to_owned() });
        }
        Ok(out)
    }

    /// `nats://127.0.0.1:<port>`: nats-1's client port as published on the host.
    pub async fn nats_url(&self) -> anyhow::Result<String> {
        let out = self.compose(&["port", PUBLISHED_NATS, "4222"], DOCKER_TIMEOUT).await?.success()?;
        let port = out.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).with_context(|| {
            format!("`docker-compose port {PUBLISHED_NATS} 4222` printed {:?}, not ADDR:PORT", out.trim())
        })?;
        Ok(format!("nats://127.0.0.1:{port}"))
    }

    /// Copies `file` of the security directory out of the `init` job's container (which mounts the volume) into
    /// `dest_dir`; returns the copy's path.
    pub async fn security_file(&self, file: &str, dest_dir: &Path) -> anyhow::Result<PathBuf> {
        let init = self.containers("init").await?;
        let init = init.first().context("the init job has no container")?;
        let dest = dest_dir.join(file);
        let dest_str = dest.to_str().context("test directory path is not UTF-8")?;
        run("docker", &["cp", &format!("{}:{SECURITY_DIR}/{file}", init.id), dest_str], &[], DOCKER_TIMEOUT)
            .await?
            .success()?;
        Ok(dest)
    }

    /// `docker exec <container> <argv>`; its stdout.
    pub async fn exec(&self, container: &Container, argv: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["exec", container.id.as_str()];
        full.extend(argv);
        run("docker", &full, &[], DOCKER_TIMEOUT).await?.success()
    }

    /// The last `lines` lines of every container's log.
    pub fn logs(&self, lines: usize) -> String {
        let tail = lines.to_string();
        let args = self.args(&["logs", "--no-color", "--tail", &tail]);
        match Command::new("docker-compose").args(&args).stdin(Stdio::null()).output() {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(docker-compose logs: {e})"),
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        tear_down(&self.project, &self.args(&[]), &self.env);
    }
}

/// What a compose project's Drop does (this module's [`Compose`], the fault tests' deployment): the tail of every
/// container's log when the test is panicking, then `down -v`. `base` is the `docker-compose` arguments naming the
/// project and its files. A failed teardown is printed, not asserted: Drop may run while the test is already
/// unwinding, where a second panic aborts the whole test binary and hides the first failure; and each run's project
/// has a name of its own, so what is left behind never collides with the next run.
pub fn tear_down(project: &str, base: &[&str], env: &[(String, String)]) {
    let compose = |args: &[&str]| {
        Command::new("docker-compose").args(base).args(args).envs(env.iter().cloned()).stdin(Stdio::null()).output()
    };
    if std::thread::panicking() {
        let logs = match compose(&["logs", "--no-color", "--tail", "40"]) {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(docker-compose logs: {e})"),
        };
        eprintln!("--- docker-compose logs of project {project} ---\n{logs}");
    }
    match compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "WARNING: `docker-compose -p {project} down -v` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("WARNING: cannot run docker-compose down for project {project}: {e}"),
    }
}

/// The `muster` CLI on the host, against the deployment's published NATS port, as the deployment's admin (its
/// credentials and CA copied out of the security volume).
#[derive(Debug, Clone)]
pub struct HostCli {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl HostCli {
    /// `muster --nats <url>` with `MUSTER_NATS_CREDS=<creds>` and `MUSTER_NATS_CA=<ca>`.
    pub fn new(url: &str, creds: &Path, ca: &Path) -> anyhow::Result<Self> {
        let env = vec![
            ("MUSTER_NATS_URL".to_owned(), url.to_owned()),
            ("MUSTER_NATS_CREDS".to_owned(), creds.display().to_string()),
            ("MUSTER_NATS_CA".to_owned(), ca.display().to_string()),
        ];
        Ok(Self { bin: workspace_bin("muster")?, env })
    }

    /// Runs `muster <args> --json` for at most `limit` and parses its stdout.
    pub async fn json<T: DeserializeOwned>(&self, args: &[&str], limit: Duration) -> anyhow::Result<T> {
        // `--json` before a `--` (muster run), or it would be the command's argument.
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + 1);
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        full.extend(&args[..split]);
        full.push("--json");
        full.extend(&args[split..]);
        let bin = self.bin.to_str().context("muster path is not UTF-8")?;
        let stdout = run(bin, &full, &self.env, limit).await?.success()?;
        serde_json::from_str(&stdout).with_context(|| format!("parsing `muster {}`: {stdout}", full.join(" ")))
    }
}
