//! [`Cli`]: the operator CLI `muster`, run as a process, its `--json` output parsed into the schemas' API types
//! (so a test also checks the CLI's output against the wire contract).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use muster_schemas::api::{HostDetail, HostSummary};
use serde::Deserialize;

use crate::paths::workspace_bin;
use crate::wait::within;

/// How long one CLI call may take. A call is one NATS request; seconds mean the server is stuck or gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Runs the `muster` binary against one NATS URL.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
    nats_url: String,
}

impl Cli {
    /// A CLI talking to the NATS server at `nats_url`.
    pub fn new(nats_url: impl Into<String>) -> anyhow::Result<Self> {
        Ok(Self { bin: workspace_bin("muster")?, nats_url: nats_url.into() })
    }

    /// Runs `muster --nats <url> <args>` and returns its stdout; fails with its stderr on a non-zero exit.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let what = format!("`muster {}`", args.join(" "));
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("--nats").arg(&self.nats_url).args(args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUSTER_") {
                cmd.env_remove(key);
            }
        }
        let out = within(CALL_TIMEOUT, &what, cmd.output()).await?.with_context(|| format!("running {what}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            anyhow::bail!(
                "{what} failed ({}): stderr: {} stdout: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        Ok(stdout)
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
}
