//! [`SecureNats`]: a secured nats-server ([`NatsServer`] on the `nats-single.conf` of the test's security
//! directory, see [`Identities`]) with that directory beside it, for tests that hold the credentials files
//! themselves (confinement, revocation, enrollment).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use muster_schemas::HostId;

use crate::identities::{Identities, Identity};
use crate::nats_server::{connect_client, NatsServer};
use crate::paths::TestDir;
use crate::wait::within;
use muster_security::dir::SecurityDir;

/// How long a client connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A secured nats-server and its security directory (`<test dir>/security`). Killed on Drop.
#[derive(Debug)]
pub struct SecureNats {
    /// Dropped (killed) before `test_dir` is removed.
    nats: NatsServer,
    identities: Identities,
    security: SecurityDir,
    test_dir: TestDir,
}

impl SecureNats {
    /// Runs `muster security init` (the library it calls) for the default prefix into a fresh test directory and
    /// starts nats-server from its `nats-single.conf`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_prefix(muster_schemas::subjects::DEFAULT_PREFIX).await
    }

    /// As [`SecureNats::start`], with the roles' permissions built for `prefix`.
    pub async fn start_with_prefix(prefix: &str) -> anyhow::Result<Self> {
        let test_dir = TestDir::new()?;
        let identities = Identities::secured_with_prefix(test_dir.path(), prefix)?;
        let security = identities.security().cloned().context("a secured test has a security directory")?;
        let nats = NatsServer::start_in(&test_dir, &identities).await?;
        Ok(Self { nats, identities, security, test_dir })
    }

    /// The client URL, `nats://127.0.0.1:<port>` (TLS is negotiated: the server requires it).
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The security directory.
    pub fn security(&self) -> &SecurityDir {
        &self.security
    }

    /// The identities of the test's processes.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// The nats-server itself.
    pub fn server(&self) -> &NatsServer {
        &self.nats
    }

    /// The test directory (the security directory and nats-server's files are inside).
    pub fn test_dir(&self) -> &TestDir {
        &self.test_dir
    }

    /// nats-server's log file.
    pub fn log_path(&self) -> &Path {
        self.nats.log_path()
    }

    /// `<name>.creds` of the security directory (`server`, `admin`, `viewer`, `sys`).
    pub fn creds(&self, name: &str) -> PathBuf {
        self.security().creds(name)
    }

    /// Mints agent credentials for `host` (as `muster creds agent` does) and returns the file's path.
    pub fn mint_agent(&self, host: &str) -> anyhow::Result<PathBuf> {
        HostId::new(host)?;
        self.identities.creds(Identity::Agent(host))?.ok_or_else(|| anyhow::anyhow!("no credentials for {host}"))
    }

    /// The trust settings of a client authenticating with `creds` and verifying the server against the CA.
    pub fn trust(&self, creds: &Path) -> muster_nats::ClientTrust {
        muster_nats::ClientTrust {
            credentials: Some(creds.to_owned()),
            ca: Some(self.security().ca_cert()),
            ..Default::default()
        }
    }

    /// The `MUSTER_*` variables a muster process needs to connect with `creds` (URL, credentials, CA).
    pub fn env(&self, creds: &Path) -> Vec<(String, String)> {
        vec![
            ("MUSTER_NATS_URL".to_owned(), self.url()),
            (crate::identities::CREDS_ENV.to_owned(), creds.display().to_string()),
            (crate::identities::CA_ENV.to_owned(), self.security().ca_cert().display().to_string()),
        ]
    }

    /// Connects with `creds` through the one connect every muster process uses.
    pub async fn connect_as(&self, creds: &Path) -> anyhow::Result<async_nats::Client> {
        within(CONNECT_TIMEOUT, "a connection to nats-server", connect_client(&self.url(), self.trust(creds))).await?
    }

    /// Fails if nats-server exited without the test stopping it.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.nats.ensure_running()
    }
}
