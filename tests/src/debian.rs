//! muster's Debian packages as an operator meets them (docs/packages.md), for tests/tests/packages.rs:
//! [`build_packages`] makes the `.deb` files with cargo-deb from the debug binaries of `make build`; [`Container`]
//! boots a Debian trixie container with systemd as PID 1 (the image [`SYSTEMD_IMAGE`], made on [`BASE_IMAGE`]) to
//! install them in; [`check_example`] holds a shipped default config against the
//! settings table of the docs (which the crates' own unit tests hold against the binaries' settings tables), and
//! [`configure`] turns the shipped example into an operator's config by uncommenting the settings it sets.
//!
//! Docker must be there: a machine without it fails these tests, it does not skip them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};

use crate::paths::{workspace_bin, workspace_root};
use crate::wait::{wait_until, within, Check};

/// The Debian trixie minbase image (debootstrap + docker import) made by `scripts/debian-base.sh` (and by
/// `scripts/images.sh`, the agent image's base, by the same recipe).
pub const BASE_IMAGE: &str = "muster-base:trixie";
/// [`BASE_IMAGE`] with systemd, booting it as PID 1: what a host that installs the packages runs.
pub const SYSTEMD_IMAGE: &str = "muster-systemd:trixie";
/// The packages, each made from the crate of the same name's `[package.metadata.deb]`.
pub const PACKAGES: [&str; 3] = ["muster-server", "muster-agent", "muster-cli"];

/// The image's Dockerfile: systemd (and its `systemd-sysv` init) from the Debian mirror the base image's apt
/// names; units that only make sense on real hardware or a console masked; `container=docker` so systemd knows.
const SYSTEMD_DOCKERFILE: &str = "\
FROM muster-base:trixie
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd systemd-sysv procps \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN systemctl mask getty.target console-getty.service systemd-firstboot.service systemd-udevd.service \\
    systemd-udev-trigger.service systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \\
    systemd-remount-fs.service
ENV container=docker
STOPSIGNAL SIGRTMIN+3
CMD [\"/sbin/init\"]
";

/// How long one `docker` or `docker exec` call may take, unless told otherwise.
const CALL: Duration = Duration::from_secs(60);
/// How long making the images may take when they do not exist yet (debootstrap, then apt-get install systemd).
const MAKE_IMAGES: Duration = Duration::from_secs(900);
/// How long systemd may take to boot the container.
const BOOT: Duration = Duration::from_secs(60);

/// What a command printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command, for messages.
    pub what: String,
    /// Whether it exited 0.
    pub ok: bool,
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Output {
    /// Fails, quoting both streams, unless the command exited 0; returns stdout.
    pub fn success(self) -> anyhow::Result<String> {
        ensure!(
            self.ok,
            "{} failed (exit {:?}):\nstdout: {}\nstderr: {}",
            self.what,
            self.code,
            self.stdout.trim(),
            self.stderr.trim()
        );
        Ok(self.stdout)
    }
}

/// Runs `program args` (with the variables `env` added) for at most `limit`, stdin from `input` (or nothing).
async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&str>,
    limit: Duration,
) -> anyhow::Result<Output> {
    use tokio::io::AsyncWriteExt as _;
    let what = format!("`{program} {}`", args.join(" "));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.with_context(|| format!("writing the input of {what}"))?;
    }
    let out = within(limit, &what, child.wait_with_output()).await?.with_context(|| format!("running {what}"))?;
    Ok(Output {
        what,
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `docker args` for at most `limit`.
pub async fn docker(args: &[&str], limit: Duration) -> anyhow::Result<Output> {
    run("docker", args, &[], None, limit).await
}

/// Fails unless the Docker daemon answers: these tests need it, and a machine without it fails them.
pub async fn require_docker() -> anyhow::Result<()> {
    let out = docker(&["info", "--format", "{{.ServerVersion}}"], CALL)
        .await
        .context("docker is needed to install the packages in a Debian container (is it installed?)")?;
    ensure!(out.ok, "the Docker daemon does not answer (`docker info` failed): {}", out.stderr.trim());
    Ok(())
}

/// Makes [`SYSTEMD_IMAGE`] unless it exists: [`BASE_IMAGE`] first (`scripts/debian-base.sh`, which runs
/// debootstrap once), then the Dockerfile above on it. Docker's build cache makes a second run a no-op.
pub async fn ensure_systemd_image() -> anyhow::Result<()> {
    let script = workspace_root().join("scripts/debian-base.sh");
    let script = script.to_str().context("the workspace path is not UTF-8")?;
    run("bash", &[script], &[], None, MAKE_IMAGES).await?.success().context("making the base image")?;
    // The legacy builder: this Docker has no buildx, and a FROM of a local image needs no BuildKit.
    let args = ["build", "-q", "-t", SYSTEMD_IMAGE, "-"];
    run("docker", &args, &[("DOCKER_BUILDKIT", "0")], Some(SYSTEMD_DOCKERFILE), MAKE_IMAGES)
        .await?
        .success()
        .with_context(|| format!("building {SYSTEMD_IMAGE}"))?;
    Ok(())
}

/// `.tools/bin/cargo-deb`, which `make cargo-deb` (a prerequisite of `make test`) installs.
pub fn cargo_deb() -> anyhow::Result<PathBuf> {
    let bin = workspace_root().join(".tools/bin/cargo-deb");
    ensure!(bin.is_file(), "{} does not exist: run `make cargo-deb` (`make test` does)", bin.display());
    Ok(bin)
}

/// Makes the three packages under `dir` (returned in [`PACKAGES`] order, in `dir/debs`) from the binaries the other
/// tests run (target/debug from `make build`, or `MUSTER_BIN_DIR`), stripped; nothing is compiled. cargo-deb
/// `--no-build` takes binaries from `<target dir>/release/`: here a target dir of the test's own (`dir/target`,
/// given as `CARGO_TARGET_DIR`) whose `release/` links to them, rather than `--profile dev`, which cargo-deb 3.8
/// says will become an error.
pub async fn build_packages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let target = dir.join("target");
    let release = target.join("release");
    std::fs::create_dir_all(&release).with_context(|| format!("creating {}", release.display()))?;
    for bin in ["muster-server", "muster-agent", "muster"] {
        let link = release.join(bin);
        std::os::unix::fs::symlink(workspace_bin(bin)?, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let cargo_deb = cargo_deb()?;
    let cargo_deb = cargo_deb.to_str().context("the workspace path is not UTF-8")?;
    let target = target.to_str().context("the test directory path is not UTF-8")?;
    let out = dir.join("debs");
    let out = out.to_str().context("the test directory path is not UTF-8")?;
    let mut debs = Vec::new();
    for package in PACKAGES {
        let manifest = workspace_root().join(match package {
            "muster-server" => "server/Cargo.toml",
            "muster-agent" => "agent/Cargo.toml",
            _ => "server/cli/Cargo.toml",
        });
        let manifest = manifest.to_str().context("the workspace path is not UTF-8")?;
        let args = ["--manifest-path", manifest, "--no-build", "--strip", "--fast", "--output", out];
        let env = [("CARGO_TARGET_DIR", target)];
        let printed = run(cargo_deb, &args, &env, None, Duration::from_secs(180)).await?.success()?;
        let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
        ensure!(
            deb.is_file() && deb.extension() == Some(OsStr::new("deb")),
            "cargo-deb printed no .deb path for {package}: {printed}"
        );
        debs.push(deb);
    }
    Ok(debs)
}

/// A container of [`SYSTEMD_IMAGE`] with systemd as PID 1, removed on Drop (after printing the journal of the
/// units the test names, when the test is panicking).
#[derive(Debug)]
pub struct Container {
    name: String,
    /// Units whose journal is printed when the test fails.
    units: Vec<String>,
}

impl Container {
    /// Boots a container named after `hint`, with host name `hostname`, every path of `mounts` bind-mounted
    /// read-only at the same path, and its TCP port `publish` published on the host's loopback at a free port
    /// ([`Container::published`]). systemd needs what a machine has: `/run` and `/run/lock` as tmpfs, the cgroup
    /// hierarchy writable, and `CAP_SYS_ADMIN` (mounts, and the namespaces of the units' sandboxing). Not
    /// `--privileged`: it asks for every capability, and a Docker daemon without one of them (as on this kind of
    /// machine, which lacks `CAP_SYS_RESOURCE`) then fails to start the container ("unable to apply caps").
    pub async fn boot(hint: &str, hostname: &str, mounts: &[&Path], publish: u16) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("muster-{hint}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            hostname,
            "--cap-add",
            "SYS_ADMIN",
            "--cgroupns=host",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        ]
        .map(str::to_owned)
        .to_vec();
        for m in mounts {
            let m = m.to_str().context("a mounted path is not UTF-8")?;
            args.extend(["-v".to_owned(), format!("{m}:{m}:ro")]);
        }
        args.extend(["-p".to_owned(), format!("127.0.0.1::{publish}")]);
        args.push(SYSTEMD_IMAGE.to_owned());
        args.extend(systemd_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args, CALL).await?.success().context("starting the container")?;
        let container = Self { name, units: Vec::new() };
        container.wait_booted().await?;
        Ok(container)
    }

    /// Waits until systemd has finished booting (`running`, or `degraded` when a unit a container cannot run
    /// failed, which is then printed). Until PID 1 has its bus socket, `systemctl` cannot even ask.
    async fn wait_booted(&self) -> anyhow::Result<()> {
        let state = wait_until(BOOT, "systemd has booted in the container", async || {
            let out = self.exec_for(&["systemctl", "is-system-running", "--wait"], BOOT).await?;
            let state = out.stdout.trim().to_owned();
            Ok(match state.as_str() {
                "running" | "degraded" => Check::Done(state),
                "" => Check::NotYet(out.stderr.trim().to_owned()),
                _ => Check::NotYet(format!("state {state}")),
            })
        })
        .await;
        match state {
            Ok(state) if state == "degraded" => {
                let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]).await?.stdout;
                eprintln!("the container booted degraded; failed units:\n{failed}");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.context(self.logs().await)),
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prints the journal of `unit` too if the test fails.
    pub fn watch(&mut self, unit: &str) {
        self.units.push(unit.to_owned());
    }

    /// Runs `args` in the container (`docker exec`), however it exits.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_for(args, CALL).await
    }

    async fn exec_for(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        let mut full = vec!["exec", self.name.as_str()];
        full.extend(args);
        let mut out = docker(&full, limit).await?;
        out.what = format!("`{}` in the container", args.join(" "));
        Ok(out)
    }

    /// Runs the shell script `script` in the container; fails unless it exits 0; returns its stdout.
    pub async fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec(&["sh", "-ec", script]).await?.success()
    }

    /// The host port that the container's TCP port `port` is published on (on 127.0.0.1).
    pub async fn published(&self, port: u16) -> anyhow::Result<u16> {
        let out = docker(&["port", &self.name, &format!("{port}/tcp")], CALL).await?.success()?;
        // "127.0.0.1:49153"
        let first = out.lines().next().unwrap_or_default();
        first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("`docker port` printed {out:?} for port {port}"))
    }

    /// `systemctl show UNIT -p NAME...` as a map.
    pub async fn unit_properties(&self, unit: &str, names: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
        let mut args = vec!["systemctl", "show", unit];
        for n in names {
            args.extend(["-p", n]);
        }
        let out = self.exec(&args).await?.success()?;
        Ok(out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// The last lines of `unit`'s journal.
    pub async fn journal(&self, unit: &str, lines: usize) -> String {
        let n = lines.to_string();
        match self.exec(&["journalctl", "--no-pager", "-o", "short-precise", "-n", &n, "-u", unit]).await {
            Ok(out) => out.stdout,
            Err(e) => format!("(cannot read the journal of {unit}: {e:#})"),
        }
    }

    async fn logs(&self) -> String {
        match docker(&["logs", "--tail", "40", &self.name], CALL).await {
            Ok(out) => format!("container output:\n{}{}", out.stdout, out.stderr),
            Err(e) => format!("(no container output: {e:#})"),
        }
    }
}

/// PID 1's arguments, which systemd in a container reads as its kernel command line. On a host whose cgroups are
/// v1 (the hybrid layout: controllers on v1, a v2 hierarchy at /sys/fs/cgroup/unified), trixie's systemd 257 boots
/// only when told to accept v1; on a v2 host it needs nothing.
fn systemd_args() -> Vec<String> {
    let unified = std::fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok();
    // trixie's systemd mounts a tmpfs on /tmp at boot, which would hide the test directory when the workspace is
    // under /tmp (its bind mount keeps the host's path).
    let mut args = vec!["/sbin/init".to_owned(), "systemd.mask=tmp.mount".to_owned()];
    if !unified {
        args.extend(["systemd.unified_cgroup_hierarchy=0", "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"].map(str::to_owned));
    }
    args
}

impl Drop for Container {
    fn drop(&mut self) {
        let name = self.name.clone();
        if std::thread::panicking() {
            for unit in &self.units {
                let out = std::process::Command::new("docker")
                    .args(["exec", &name, "journalctl", "--no-pager", "-o", "short-precise", "-n", "60", "-u", unit])
                    .output();
                if let Ok(out) = out {
                    eprintln!("--- journal of {unit} ---\n{}", String::from_utf8_lossy(&out.stdout));
                }
            }
        }
        if std::env::var_os(crate::paths::KEEP_ENV).is_some() {
            eprintln!("container {name} kept (docker rm -f {name})");
            return;
        }
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One setting of a shipped example config: a line `#key = value` (prose comments are `# ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleSetting {
    /// The file key.
    pub key: String,
    /// The value as written (strings with their quotes).
    pub value: String,
    /// Its line, from 1.
    pub line: usize,
}

/// The settings of an example config: every line `#key = value`. Lines that set something uncommented are
/// returned as errors, since the example must set nothing.
pub fn example_settings(text: &str) -> anyhow::Result<Vec<ExampleSetting>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("# ") || trimmed == "#" {
            continue;
        }
        let Some(setting) = trimmed.strip_prefix('#') else {
            bail!("line {line_no} is not commented out: {line:?} (the example must set nothing)");
        };
        let (key, value) = setting.split_once(" = ").with_context(|| {
            format!("line {line_no}: {line:?} is neither prose (`# ...`) nor a setting (`#key = value`)")
        })?;
        ensure!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "line {line_no}: {key:?} is not a setting key"
        );
        out.push(ExampleSetting { key: key.to_owned(), value: value.trim().to_owned(), line: line_no });
    }
    Ok(out)
}

/// One row of a settings table in the docs (`| variable | file key | default | meaning |`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSetting {
    /// The file key.
    pub key: String,
    /// The default when it is a literal (shown in backticks), as text; `None` for `none` or a computed one.
    pub default: Option<String>,
}

/// The settings of the first settings table after the line `heading` in `markdown`, without the variables that
/// have no file key (`MUSTER_LOG`, `MUSTER_CONFIG`).
pub fn docs_settings(markdown: &str, heading: &str) -> anyhow::Result<Vec<DocSetting>> {
    let start = markdown.lines().position(|l| l.trim() == heading).with_context(|| format!("no line {heading:?}"))?;
    let rows = markdown
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with("| variable | file key |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let mut out = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        ensure!(cells.len() >= 4, "a settings row with fewer than 4 cells: {row:?}");
        let Some(key) = cells[1].strip_prefix('`').and_then(|k| k.strip_suffix('`')) else { continue };
        let default = cells[2].strip_prefix('`').and_then(|d| d.strip_suffix('`')).map(str::to_owned);
        out.push(DocSetting { key: key.to_owned(), default });
    }
    ensure!(!out.is_empty(), "no settings table after {heading:?}");
    Ok(out)
}

/// What is wrong with `example` against the settings `table`: a setting the table does not have, one given
/// twice, one missing, or a literal default shown differently. Empty when it is right.
pub fn check_example(example: &[ExampleSetting], table: &[DocSetting]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for s in example {
        if let Some(first) = seen.insert(s.key.as_str(), s.line) {
            problems.push(format!("line {}: {} is given again (first on line {first})", s.line, s.key));
        }
        match table.iter().find(|d| d.key == s.key) {
            None => problems.push(format!("line {}: {} is not a setting", s.line, s.key)),
            Some(DocSetting { default: Some(default), .. }) => {
                let shown = s.value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(&s.value);
                if shown != default {
                    problems.push(format!("line {}: {} shows {} but its default is {default}", s.line, s.key, s.value));
                }
            }
            Some(_) => {}
        }
    }
    for d in table {
        if !seen.contains_key(d.key.as_str()) {
            problems.push(format!("{} is missing", d.key));
        }
    }
    problems
}

/// An operator's config made from the shipped `example`: each `(key, value)` of `set` uncomments the line
/// `#key = ...` and gives it `value` (TOML, e.g. `"\"nats://10.0.0.1:4222\""` or `1000`). Fails when the example
/// does not have the setting exactly once.
pub fn configure(example: &str, set: &[(&str, String)]) -> anyhow::Result<String> {
    let mut lines: Vec<String> = example.lines().map(str::to_owned).collect();
    for (key, value) in set {
        let prefix = format!("#{key} = ");
        let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with(&prefix)).collect();
        ensure!(found.len() == 1, "the example has {} lines {prefix:?}", found.len());
        lines[found[0]] = format!("{key} = {value}");
    }
    Ok(lines.join("\n") + "\n")
}

/// `text` as a TOML basic string (the paths and URLs the tests set need no more than quotes and backslashes).
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = "## Configuration\n\ntext\n\n| variable | file key | default | meaning |\n|---|---|---|---|\n\
        | `MUSTER_LOG` | — | `info` | log |\n| `MUSTER_NATS_URL` | `nats_url` | `nats://127.0.0.1:4222` | url |\n\
        | `MUSTER_HOST_ID` | `host_id` | the hostname | id |\n| `MUSTER_MAX` | `max` | `4` | most |\n\nafter\n";

    #[test]
    fn the_docs_table_is_read_without_env_only_variables() {
        let rows = docs_settings(DOCS, "## Configuration").unwrap();
        let keys: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.key.as_str(), r.default.as_deref())).collect();
        assert_eq!(keys, [("nats_url", Some("nats://127.0.0.1:4222")), ("host_id", None), ("max", Some("4"))]);
    }

    #[test]
    fn an_example_is_checked_against_the_table() {
        let table = docs_settings(DOCS, "## Configuration").unwrap();
        let good = "# prose\n#nats_url = \"nats://127.0.0.1:4222\"\n\n# more\n#host_id = \"web-1\"\n#max = 4\n";
        assert_eq!(check_example(&example_settings(good).unwrap(), &table), Vec::<String>::new());
        let bad = "#nats_url = \"nats://127.0.0.1:4222\"\n#max = 5\n#nmax = 4\n#max = 4\n";
        let problems = check_example(&example_settings(bad).unwrap(), &table);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("nmax is not a setting")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("shows 5 but its default is 4")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("max is given again")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("host_id is missing")), "{problems:?}");
        assert!(example_settings("max = 4\n").is_err(), "an uncommented setting is refused");
        assert!(example_settings("#max: 4\n").is_err(), "a line that is neither prose nor a setting is refused");
    }

    #[test]
    fn configure_uncomments_exactly_the_settings_it_sets() {
        let example = "# prose\n#nats_url = \"nats://127.0.0.1:4222\"\n#max = 4\n";
        let text = configure(example, &[("max", "8".to_owned())]).unwrap();
        assert_eq!(text, "# prose\n#nats_url = \"nats://127.0.0.1:4222\"\nmax = 8\n");
        assert!(configure(example, &[("min", "1".to_owned())]).is_err());
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
