//! [`NatsServer`]: a real nats-server per test, started from the secured `nats-single.conf` of the test's security
//! directory ([`Identities`]), or from the repository's `nats/single.conf` in the insecure loopback mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::identities::{Identities, Identity};
use crate::paths::{nats_server_bin, TestDir};
use crate::process::Proc;
use crate::wait::{wait_until, within, Check};

/// How long nats-server may take to accept connections: it starts in ~10 ms, but recovering JetStream streams
/// after a restart, on a machine busy with parallel tests, takes longer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A nats-server with JetStream on 127.0.0.1, a random client port, monitoring off and a private store directory;
/// secured (JWT accounts, TLS) unless its [`Identities`] are the insecure ones.
///
/// [`NatsServer::kill`] and [`NatsServer::restart`] keep the port and the store, so clients reconnect to the same
/// URL and streams survive, as after a crash. Killed on Drop.
#[derive(Debug)]
pub struct NatsServer {
    /// Dropped (killed) before `own_dir` is removed.
    proc: Proc,
    dir: PathBuf,
    port: u16,
    /// Whose config it runs, and who the test's clients are.
    identities: Identities,
    /// Set when [`NatsServer::start`] made the directory itself.
    own_dir: Option<TestDir>,
}

impl NatsServer {
    /// Starts a secured nats-server in a fresh test directory of its own (its security directory inside).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let identities = Identities::secured(dir.path())?;
        let mut server = Self::launch(dir.join("nats"), identities).await?;
        server.own_dir = Some(dir);
        Ok(server)
    }

    /// Starts a nats-server on the config of `identities`, its files (store, ports file, log) in `<dir>/nats`.
    pub async fn start_in(dir: &TestDir, identities: &Identities) -> anyhow::Result<Self> {
        Self::launch(dir.join("nats"), identities.clone()).await
    }

    async fn launch(dir: PathBuf, identities: Identities) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let store = dir.join("store");
        let ports = dir.join("ports");
        for d in [&store, &ports] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let conf = identities.single_conf();
        let conf = conf.to_str().context("config path is not UTF-8")?.to_string();
        let ports_arg = ports.to_str().context("test directory path is not UTF-8")?.to_string();
        // `-p -1`: a random free port, announced in the ports file; `-m 0`: no monitoring port to collide on;
        // `-a`: loopback (the secured config listens on every interface, being authenticated).
        let args = |port: &str| {
            ["-c", &conf, "-a", "127.0.0.1", "-p", port, "-m", "0", "--ports_file_dir", &ports_arg].map(str::to_string)
        };
        let first = args("-1");
        // single.conf reads its JetStream store directory from this variable (nats-server rejects `-sd` when the
        // file sets store_dir).
        let env = [("MUSTER_NATS_STORE_DIR", store.as_os_str())];
        let mut proc = Proc::spawn("nats-server", &bin, &first.each_ref().map(String::as_str), env, &dir)?;
        let trust = identities.client(Identity::Server)?;
        let port = wait_ready(&mut proc, &bin, &ports, &trust).await?;
        let again = args(&port.to_string());
        proc.set_args(&again.each_ref().map(String::as_str));
        Ok(Self { proc, dir, port, identities, own_dir: None })
    }

    /// The client URL, `nats://127.0.0.1:<port>`; the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// nats-server's log file (every start appended, separated by marker lines).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The identities of everything that talks through this server (its security directory when secured).
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// Connects a client as the server identity, which reaches everything (streams, the txn log, any subject):
    /// what a test needs to read the streams or publish what no other identity may.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.connect_as(Identity::Server).await
    }

    /// Connects a client as `who` (see [`Identity`]).
    pub async fn connect_as(&self, who: Identity<'_>) -> anyhow::Result<async_nats::Client> {
        let trust = self.identities.client(who)?;
        within(CONNECT_TIMEOUT, "a connection to nats-server", connect_client(&self.url(), trust)).await?
    }

    /// Kills the server with SIGKILL (as a crash would).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.kill9()?;
        Ok(())
    }

    /// Starts the server again on the same port with the same store (killing it first if it is running) and waits
    /// until it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart()?;
        let ports = self.dir.join("ports");
        let trust = self.identities.client(Identity::Server)?;
        let port = wait_ready(&mut self.proc, &nats_server_bin()?, &ports, &trust).await?;
        anyhow::ensure!(port == self.port, "nats-server came back on port {port}, not {}", self.port);
        Ok(())
    }

    /// Fails (ending any wait) if the server exited without the test stopping it.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.proc.ensure_running()
    }
}

/// The connection name of every test-support client, as `nats server report connections` shows it.
pub const CLIENT_NAME: &str = "muster-tests";

/// Connects to `urls` (comma-separated) with the one connect every muster process uses, failing at once when no
/// node answers (a test wants the reason, not a background retry), with `trust`'s credentials and CA (see
/// [`Identities::client`]).
pub async fn connect_client(urls: &str, trust: muster_nats::ClientTrust) -> anyhow::Result<async_nats::Client> {
    Ok(muster_nats::connect(muster_nats::ConnectParams {
        trust,
        ..muster_nats::ConnectParams::new(urls, CLIENT_NAME)?
    })
    .await?)
}

/// Waits until the nats-server in `proc` has written its ports file and accepts a client; returns its port.
async fn wait_ready(
    proc: &mut Proc,
    bin: &Path,
    ports_dir: &Path,
    trust: &muster_nats::ClientTrust,
) -> anyhow::Result<u16> {
    let pid = proc.pid().context("nats-server is not running")?;
    // nats-server names the file `<executable name>_<pid>.ports`.
    let exe = bin.file_name().context("nats-server path has no file name")?.to_string_lossy().into_owned();
    let file = ports_dir.join(format!("{exe}_{pid}.ports"));
    wait_until(READY_TIMEOUT, "nats-server accepts connections", async || {
        proc.ensure_running()?;
        let Ok(text) = std::fs::read_to_string(&file) else {
            return Ok(Check::NotYet(format!("no ports file {} yet", file.display())));
        };
        let port = match parse_port(&text) {
            Some(port) => port,
            None => return Ok(Check::NotYet(format!("ports file holds {text:?}"))),
        };
        let url = format!("nats://127.0.0.1:{port}");
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_client(&url, trust.clone())).await {
            Ok(Ok(_client)) => Ok(Check::Done(port)),
            Ok(Err(e)) => Ok(Check::NotYet(format!("connecting to {url}: {e}"))),
            Err(_) => Ok(Check::NotYet(format!("connecting to {url} timed out"))),
        }
    })
    .await
    .with_context(|| format!("starting nats-server; its log:\n{}", proc.log_tail(30)))
}

/// The client port in a ports file: `{"nats":["nats://127.0.0.1:4222"],...}` (`tls://` when secured).
pub(crate) fn parse_port(text: &str) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = value.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
