//! [`Cli`]: the operator CLI `muster`, run as a process, its `--json` output parsed into the schemas' API types
//! (so a test also checks the CLI's output against the wire contract).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use muster_schemas::api::{
    Committed, ComponentView, HostDetail, HostSummary, RequestCreated, RequestSummary, RequestView,
};
use muster_schemas::commands::RequestId;
use serde::Deserialize;

use crate::identities::{Identities, Identity};
use crate::paths::workspace_bin;
use crate::wait::within;

/// How long one CLI call may take. A call is one NATS request; seconds mean the server is stuck or gone.
/// Calls that follow a request to its end (`blueprint apply`, `start` without `--detach`) take their own limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `muster` run printed and how it exited, for calls that are expected to fail.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub what: String,
    /// How the `muster` process exited (the CLI exits 1 on an error or a request that did not complete).
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Fails, quoting both streams, unless the call exited 0.
    pub fn success(self) -> anyhow::Result<Self> {
        if !self.status.success() {
            anyhow::bail!(
                "{} failed ({}): stderr: {} stdout: {}",
                self.what,
                self.status,
                self.stderr.trim(),
                self.stdout.trim()
            );
        }
        Ok(self)
    }

    /// Fails, quoting both streams, unless the call exited non-zero; returns its stderr.
    pub fn failure(self) -> anyhow::Result<String> {
        if self.status.success() {
            anyhow::bail!("{} succeeded but should have failed; stdout: {}", self.what, self.stdout.trim());
        }
        Ok(self.stderr)
    }
}

/// One row of `muster requests --json`: the API's own type.
pub type RequestRow = RequestSummary;

/// `muster stats --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// The answering server's id.
    pub server_id: serde_json::Value,
    /// Its role (leader, follower, observer).
    pub role: serde_json::Value,
    /// The leader epoch it knows.
    pub epoch: u64,
    /// The last txn-log sequence it applied.
    pub applied_seq: u64,
    /// Counters by name (`reg.accepted`, `hb.rejected.unknown_host`, ...); absent means zero.
    pub counters: BTreeMap<String, u64>,
}

impl Stats {
    /// The counter `name`, zero when absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// Runs the `muster` binary against one NATS URL, as one identity (the admin's unless told otherwise).
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
    nats_url: String,
    /// `MUSTER_NATS_CREDS`, `MUSTER_NATS_CA` of its identity (see [`Identities::env`]).
    env: Vec<(String, String)>,
}

impl Cli {
    /// A CLI talking to the NATS server at `nats_url` as an operator (admin credentials, the CA).
    pub fn new(nats_url: impl Into<String>, identities: &Identities) -> anyhow::Result<Self> {
        Self::as_identity(nats_url, identities, Identity::Admin)
    }

    /// A CLI talking to the NATS server at `nats_url` as `who` (e.g. [`Identity::Viewer`]).
    pub fn as_identity(
        nats_url: impl Into<String>,
        identities: &Identities,
        who: Identity<'_>,
    ) -> anyhow::Result<Self> {
        Ok(Self { bin: workspace_bin("muster")?, nats_url: nats_url.into(), env: identities.env(who)? })
    }

    /// Runs `muster --nats <url> <args>` and returns its stdout; fails with its stderr on a non-zero exit.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self.output(args, CALL_TIMEOUT).await?.success()?.stdout)
    }

    /// Runs `muster --nats <url> <args>` for at most `limit` and returns how it ended, whatever the exit status.
    pub async fn output(&self, args: &[&str], limit: Duration) -> anyhow::Result<CliOutput> {
        let what = format!("`muster {}`", args.join(" "));
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--nats").arg(&self.nats_url).args(args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUSTER_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = within(limit, &what, cmd.output()).await?.with_context(|| format!("running {what}"))?;
        Ok(CliOutput {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `muster <args> --json` and parses stdout as JSON of type `T`.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.run(&args).await?;
        serde_json::from_str(&stdout).with_context(|| {
            format!("parsing the output of `muster {}` as {}: {stdout}", args.join(" "), std::any::type_name::<T>())
        })
    }

    /// `muster hosts --json`.
    pub async fn hosts(&self) -> anyhow::Result<Vec<HostSummary>> {
        self.json(&["hosts"]).await
    }

    /// `muster host <id> --json`.
    pub async fn host(&self, id: &str) -> anyhow::Result<HostDetail> {
        self.json(&["host", id]).await
    }

    /// `muster stats --json`.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.json(&["stats"]).await
    }

    /// `muster stack apply <file>`; returns its stdout.
    pub async fn apply_stack(&self, file: &Path) -> anyhow::Result<String> {
        self.run(&["stack", "apply", path_arg(file)?]).await
    }

    /// `muster blueprint apply <file>`, which follows the request it starts to its end (at most `limit`). Returns
    /// how it ended: it exits 0 only if that request COMPLETED.
    pub async fn apply_blueprint(&self, file: &Path, limit: Duration) -> anyhow::Result<CliOutput> {
        self.output(&["blueprint", "apply", path_arg(file)?], limit).await
    }

    /// `muster components --json`.
    pub async fn components(&self) -> anyhow::Result<Vec<ComponentView>> {
        self.json(&["components"]).await
    }

    /// `muster requests --json`, newest first.
    pub async fn requests(&self) -> anyhow::Result<Vec<RequestRow>> {
        self.json(&["requests"]).await
    }

    /// `muster request <id> --json`.
    pub async fn request(&self, id: RequestId) -> anyhow::Result<RequestView> {
        self.json(&["request", &id.to_string()]).await
    }

    /// Runs a request-starting command (`start toy`, `run --hosts h1 -- true`, ...) with `--detach --json` and
    /// returns the id of the request its reply says it created.
    pub async fn submit(&self, args: &[&str]) -> anyhow::Result<RequestId> {
        // The flags must come before `--` of `muster run`, or they would be the command's arguments.
        let flags = ["--detach", "--json"];
        let mut full: Vec<&str> = Vec::with_capacity(args.len() + flags.len());
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        full.extend(&args[..split]);
        full.extend(flags);
        full.extend(&args[split..]);
        let stdout = self.run(&full).await?;
        let created: Committed<RequestCreated> = serde_json::from_str(&stdout)
            .with_context(|| format!("`muster {}` printed no request-created reply: {stdout}", full.join(" ")))?;
        Ok(created.reply.request)
    }

    /// `muster cancel <id>`; returns its stdout.
    pub async fn cancel(&self, id: RequestId) -> anyhow::Result<String> {
        self.run(&["cancel", &id.to_string()]).await
    }
}

/// The id in a line `request <id>: ...` or `request <id> closes the gap`.
pub fn parse_request_id(stdout: &str) -> Option<RequestId> {
    stdout.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("request ")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn path_arg(file: &Path) -> anyhow::Result<&str> {
    file.to_str().with_context(|| format!("{} is not UTF-8", file.display()))
}
