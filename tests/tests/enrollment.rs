//! Enrollment end to end (docs/enrollment.md), against a real nats-server running the secured config
//! ([`SecureNats`]): a muster-server holding the agent signing key, agents started with only an enrollment token,
//! the CA and a state directory, and the operator's `muster` with admin credentials.
//!
//! - a token enrolls its host: the agent gets its own credentials, registers, goes HEALTHY, and keeps using them
//!   after a restart (the token is ignored once they exist);
//! - a second machine claiming an enrolled host id under another key is refused (impersonation) and counted;
//! - a used-up token and an expired token are refused;
//! - policy `pending` holds a host until `muster hosts accept`, and `muster hosts reject` refuses it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use muster_schemas::api::{EnrollmentRecord, EnrollmentState, HostSummary, ServerStats};
use muster_schemas::HostState;
use muster_security::roles::Role;
use muster_tests::paths::workspace_bin;
use muster_tests::process::Proc;
use muster_tests::secure::SecureNats;
use muster_tests::wait::{wait_until, Check};

/// How long an enrollment (connect, leader decision, reconnect, registration, first heartbeat) may take.
const ENROLLED: Duration = Duration::from_secs(30);
/// How long a refused agent may take to give up.
const REFUSED: Duration = Duration::from_secs(20);

/// A secured nats-server, one muster-server with enrollment on, and the agents a test starts.
struct Enrolling {
    agents: Vec<Proc>,
    server: Proc,
    nats: SecureNats,
}

impl Enrolling {
    async fn start(policy: &str) -> anyhow::Result<Self> {
        let nats = SecureNats::start().await?;
        let sec = nats.security();
        let data = nats.test_dir().join("server");
        std::fs::create_dir_all(&data)?;
        let mut env = nats.env(&nats.creds("server"));
        env.extend(
            [
                ("MUSTER_DATA_DIR", data.display().to_string()),
                ("MUSTER_SERVER_ID", "server-1".to_owned()),
                ("MUSTER_HEARTBEAT_INTERVAL_MS", "500".to_owned()),
                ("MUSTER_LEASE_TTL_MS", "1000".to_owned()),
                ("MUSTER_COMMAND_KEY", sec.command_seed().display().to_string()),
                ("MUSTER_AGENT_SIGNER", sec.signer_seed(Role::Agent).display().to_string()),
                ("MUSTER_ENROLL_POLICY", policy.to_owned()),
                ("MUSTER_LOG", "info,muster_server=debug".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let server = Proc::spawn("muster-server", &workspace_bin("muster-server")?, &[], env, nats.test_dir().path())?;
        Ok(Self { agents: Vec::new(), server, nats })
    }

    /// `muster --creds admin.creds --ca ca.pem <args>`: (success, stdout, stderr).
    async fn muster(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let mut cmd = tokio::process::Command::new(workspace_bin("muster")?);
        cmd.arg("--nats").arg(self.nats.url());
        cmd.arg("--creds").arg(self.nats.creds("admin"));
        cmd.arg("--ca").arg(self.nats.security().ca_cert());
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUSTER_") {
                cmd.env_remove(key);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.context("muster timed out")??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut args = args.to_vec();
        args.push("--json");
        let (ok, out, err) = self.muster(&args).await?;
        anyhow::ensure!(ok, "muster {args:?} failed: {err}");
        serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
    }

    /// `muster token create`: the token line. The leader may still be taking over: retried until it answers.
    async fn token(&self, extra: &[&str]) -> anyhow::Result<String> {
        let dir = self.nats.security().root().display().to_string();
        let mut args = vec!["token", "create", "--dir", dir.as_str()];
        args.extend(extra);
        wait_until(Duration::from_secs(20), "muster token create", async || {
            let (ok, out, err) = self.muster(&args).await?;
            Ok(if ok { Check::Done(out.trim().to_owned()) } else { Check::NotYet(err) })
        })
        .await
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.nats.test_dir().join(format!("state-{name}"))
    }

    /// Starts an agent for `host` with only the token, the CA and a state directory named `name`.
    fn agent(&mut self, name: &str, host: &str, token: &str) -> anyhow::Result<usize> {
        let sec = self.nats.security();
        let env = [
            ("MUSTER_NATS_URL", self.nats.url()),
            ("MUSTER_NATS_CA", sec.ca_cert().display().to_string()),
            ("MUSTER_HOST_ID", host.to_owned()),
            ("MUSTER_STATE_DIR", self.state_dir(name).display().to_string()),
            ("MUSTER_ENROLL_TOKEN", token.to_owned()),
            ("MUSTER_TRUSTED_KEYS", format!("@{}", sec.command_pub().display())),
            ("MUSTER_LOG", "info,muster_agent=debug".to_owned()),
        ];
        let bin = workspace_bin("muster-agent")?;
        self.agents.push(Proc::spawn(&format!("agent-{name}"), &bin, &[], env, self.nats.test_dir().path())?);
        Ok(self.agents.len() - 1)
    }

    async fn wait_state(&mut self, host: &str, state: HostState) -> anyhow::Result<()> {
        wait_until(ENROLLED, &format!("{host} {state}"), async || {
            self.server.ensure_running()?;
            let hosts: Vec<HostSummary> = match self.json(&["hosts"]).await {
                Ok(h) => h,
                Err(e) => return Ok(Check::NotYet(e.to_string())),
            };
            Ok(match hosts.iter().find(|h| h.id == host) {
                Some(h) if h.state == state => Check::Done(()),
                other => Check::NotYet(format!("{other:?}")),
            })
        })
        .await
        .with_context(|| self.logs())
    }

    /// Waits for agent `i` to exit on its own and returns its log; fails if it exits 0 or keeps running.
    async fn refused(&mut self, i: usize) -> anyhow::Result<String> {
        let status = wait_until(REFUSED, "the agent to give up", async || {
            Ok(match self.agents[i].try_exit_status()? {
                Some(s) => Check::Done(s),
                None => Check::NotYet("still running".into()),
            })
        })
        .await
        .with_context(|| self.logs())?;
        anyhow::ensure!(!status.success(), "a refused agent exits non-zero: {status}");
        Ok(self.agents[i].log_tail(40))
    }

    async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let s: ServerStats = self.json(&["stats"]).await?;
        Ok(s.counters.get(name).copied().unwrap_or(0))
    }

    fn logs(&self) -> String {
        let agents: Vec<String> = self.agents.iter().map(|a| format!("--- {}\n{}", a.name(), a.log_tail(30))).collect();
        format!("--- server\n{}\n{}", self.server.log_tail(40), agents.join("\n"))
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}

#[tokio::test]
async fn a_token_enrolls_its_host_which_then_runs_on_its_own_credentials() -> anyhow::Result<()> {
    let mut m = Enrolling::start("auto").await?;
    let token = m.token(&["--hosts", "web-*", "--uses", "1"]).await?;
    assert!(token.starts_with("MUSTER-ENROLL-1."), "{token}");
    let a = m.agent("web-1", "web-1", &token)?;
    m.wait_state("web-1", HostState::Healthy).await?;
    let state = m.state_dir("web-1");
    assert_eq!(mode(&state.join("agent.creds")), 0o600, "credentials kept private");
    assert!(!state.join("agent.nk").exists() && !state.join("enroll.creds").exists(), "nothing else is left");
    let enrollments: Vec<EnrollmentRecord> = m.json(&["hosts", "pending"]).await?;
    assert!(enrollments.is_empty(), "{enrollments:?}");
    assert_eq!(m.counter("enroll.accepted").await?, 1);

    // Restarted with the (now used-up) token still set: it connects with its stored credentials.
    m.agents[a].terminate(Duration::from_secs(10)).await?;
    m.wait_state("web-1", HostState::HeartbeatLost).await?;
    m.agents[a].restart()?;
    m.wait_state("web-1", HostState::Healthy).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_machine_claiming_an_enrolled_host_id_is_refused_as_impersonation() -> anyhow::Result<()> {
    let mut m = Enrolling::start("auto").await?;
    let token = m.token(&["--uses", "5"]).await?;
    m.agent("real", "db-1", &token)?;
    m.wait_state("db-1", HostState::Healthy).await?;
    let rogue = m.agent("rogue", "db-1", &token)?;
    let log = m.refused(rogue).await?;
    assert!(log.contains("impersonation"), "{log}");
    assert_eq!(m.counter("enroll.refused.impersonation").await?, 1);
    assert!(m.server.log_tail(200).contains("impersonation"), "logged by the server");
    // The real host is untouched.
    m.wait_state("db-1", HostState::Healthy).await?;
    Ok(())
}

#[tokio::test]
async fn used_up_and_expired_tokens_are_refused() -> anyhow::Result<()> {
    let mut m = Enrolling::start("auto").await?;
    let once = m.token(&["--uses", "1"]).await?;
    m.agent("a1", "a1", &once)?;
    m.wait_state("a1", HostState::Healthy).await?;
    let second = m.agent("a2", "a2", &once)?;
    let log = m.refused(second).await?;
    assert!(log.contains("used_up"), "{log}");
    assert_eq!(m.counter("enroll.refused.used_up").await?, 1);

    let short = m.token(&["--ttl", "1s"]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = m.agent("a3", "a3", &short)?;
    let log = m.refused(late).await?;
    assert!(log.contains("expired"), "{log}");
    assert!(!m.state_dir("a3").join("agent.creds").exists());
    Ok(())
}

#[tokio::test]
async fn policy_pending_holds_hosts_until_an_operator_accepts_or_rejects_them() -> anyhow::Result<()> {
    let mut m = Enrolling::start("pending").await?;
    let token = m.token(&["--uses", "2"]).await?;
    m.agent("p1", "p1", &token)?;
    let p2 = m.agent("p2", "p2", &token)?;
    let pending = wait_until(ENROLLED, "two pending hosts", async || {
        let rows: Vec<EnrollmentRecord> = m.json(&["hosts", "pending"]).await.unwrap_or_default();
        Ok(if rows.len() == 2 { Check::Done(rows) } else { Check::NotYet(format!("{rows:?}")) })
    })
    .await
    .with_context(|| m.logs())?;
    assert!(pending.iter().all(|r| r.state == EnrollmentState::Pending));
    let hosts: Vec<HostSummary> = m.json(&["hosts"]).await?;
    assert!(hosts.is_empty(), "nothing registers while pending: {hosts:?}");

    let accepted: serde_json::Value = m.json(&["hosts", "accept", "p1"]).await?;
    assert_eq!(accepted["state"], "ACCEPTED");
    m.wait_state("p1", HostState::Healthy).await?;

    let rejected: serde_json::Value = m.json(&["hosts", "reject", "p2"]).await?;
    assert_eq!(rejected["state"], "REJECTED");
    let log = m.refused(p2).await?;
    assert!(log.contains("rejected"), "{log}");
    assert!(log.contains("pending"), "the agent logged that it was pending: {log}");
    Ok(())
}
