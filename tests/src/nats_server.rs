//! [`NatsServer`]: a real nats-server per test, started from the repository's `nats/single.conf`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::paths::{nats_server_bin, workspace_root, TestDir};
use crate::process::Proc;
use crate::wait::{wait_until, within, Check};

/// How long nats-server may take to accept connections: it starts in ~10 ms, but recovering JetStream streams
/// after a restart, on a machine busy with parallel tests, takes longer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A nats-server with JetStream on 127.0.0.1, a random client port, monitoring off and a private store directory.
///
/// [`NatsServer::kill`] and [`NatsServer::restart`] keep the port and the store, so clients reconnect to the same
/// URL and streams survive, as after a crash. Killed on Drop.
#[derive(Debug)]
pub struct NatsServer {
    /// Dropped (killed) before `own_dir` is removed.
    proc: Proc,
    dir: PathBuf,
    port: u16,
    /// Set when [`NatsServer::start`] made the directory itself.
    own_dir: Option<TestDir>,
}

impl NatsServer {
    /// Starts a nats-server in a fresh test directory of its own.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TestDir::new()?;
        let mut server = Self::launch(dir.join("nats")).await?;
        server.own_dir = Some(dir);
        Ok(server)
    }

    /// Starts a nats-server whose files (store, ports file, log) live in `<dir>/nats`.
    pub async fn start_in(dir: &TestDir) -> anyhow::Result<Self> {
        Self::launch(dir.join("nats")).await
    }

    async fn launch(dir: PathBuf) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let store = dir.join("store");
        let ports = dir.join("ports");
        for d in [&store, &ports] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let conf = workspace_root().join("nats/single.conf");
        let conf = conf.to_str().context("workspace path is not UTF-8")?.to_string();
        let ports_arg = ports.to_str().context("test directory path is not UTF-8")?.to_string();
        // `-p -1`: a random free port, announced in the ports file; `-m 0`: no monitoring port to collide on.
        let args =
            |port: &str| ["-c", &conf, "-p", port, "-m", "0", "--ports_file_dir", &ports_arg].map(str::to_string);
        let first = args("-1");
        // single.conf reads its JetStream store directory from this variable (nats-server rejects `-sd` when the
        // file sets store_dir).
        let env = [("MUSTER_NATS_STORE_DIR", store.as_os_str())];
        let mut proc = Proc::spawn("nats-server", &bin, &first.each_ref().map(String::as_str), env, &dir)?;
        let port = wait_ready(&mut proc, &bin, &ports).await?;
        let again = args(&port.to_string());
        proc.set_args(&again.each_ref().map(String::as_str));
        Ok(Self { proc, dir, port, own_dir: None })
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

    /// Connects a client.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        within(CONNECT_TIMEOUT, "a connection to nats-server", connect_client(&self.url())).await?
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
        let port = wait_ready(&mut self.proc, &nats_server_bin()?, &ports).await?;
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
/// node answers (a test wants the reason, not a background retry).
pub async fn connect_client(urls: &str) -> anyhow::Result<async_nats::Client> {
    Ok(muster_nats::connect(muster_nats::ConnectParams::new(urls, CLIENT_NAME)?).await?)
}

/// Waits until the nats-server in `proc` has written its ports file and accepts a client; returns its port.
async fn wait_ready(proc: &mut Proc, bin: &Path, ports_dir: &Path) -> anyhow::Result<u16> {
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
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_client(&url)).await {
            Ok(Ok(_client)) => Ok(Check::Done(port)),
            Ok(Err(e)) => Ok(Check::NotYet(format!("connecting to {url}: {e}"))),
            Err(_) => Ok(Check::NotYet(format!("connecting to {url} timed out"))),
        }
    })
    .await
    .with_context(|| format!("starting nats-server; its log:\n{}", proc.log_tail(30)))
}

/// The client port in a ports file: `{"nats":["nats://127.0.0.1:4222"],...}`.
fn parse_port(text: &str) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = value.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
