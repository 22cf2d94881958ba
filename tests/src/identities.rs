//! [`Identities`]: who every process of one test is. Secured (the default of every harness): a security
//! directory of the test's own (`muster security init`, through the library), from which nats-server takes its
//! config (`nats-single.conf` / `nats-cluster.conf`: JWT accounts, TLS on clients and routes) and each process
//! its identity ([`Identity`]): muster-server the server credentials and the command key, each agent credentials
//! minted for its host id and the trusted command key, the swarm its swarm credentials, the CLI the admin's, the
//! test's own clients what their check needs. Insecure ([`Identities::insecure`], one test of its own): the
//! repository's loopback configs, no credentials, `MUSTER_INSECURE=true` for the daemons. Signed only
//! ([`Identities::signed`], for the bench's attribution of what security costs): as insecure, but the server
//! signs with a command key and the agents check it.
//!
//! Every variable a process needs to connect as someone is built here and nowhere else.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use muster_schemas::HostId;
use muster_security::dir::{write_file, InitOptions, SecurityDir};

use crate::command_key::CommandKey;
use crate::paths::workspace_root;

/// `MUSTER_NATS_CREDS`.
pub const CREDS_ENV: &str = "MUSTER_NATS_CREDS";
/// `MUSTER_NATS_CA`.
pub const CA_ENV: &str = "MUSTER_NATS_CA";
/// `MUSTER_INSECURE`.
pub const INSECURE_ENV: &str = "MUSTER_INSECURE";

/// Who a process or a client connects as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// muster-server: `server.creds` (reaches everything: the streams, the txn log, every subject), the command key.
    Server,
    /// An operator: `admin.creds` (the API, reads and writes).
    Admin,
    /// A read-only operator: `viewer.creds`.
    Viewer,
    /// The agent of one host: credentials minted for it (on first use), the trusted command key.
    Agent(&'a str),
    /// `muster-swarm`: swarm credentials (minted on first use), the trusted command key.
    Swarm,
}

/// The identities of one test's processes; cheap to clone (paths only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identities {
    /// `None`: the loopback modes (insecure, or signed only when [`Identities::signing`] is set).
    secured: Option<Secured>,
    /// The command key of the signed-only mode (the secured mode's is in [`Secured`]).
    signing: Option<CommandKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Secured {
    dir: SecurityDir,
    command_key: CommandKey,
}

/// Now in Unix seconds (what JWTs and the security directory's records use), from the one clock.
fn now() -> u64 {
    muster_nats::unix_millis() / 1000
}

fn path_value(path: &Path) -> String {
    path.display().to_string()
}

impl Identities {
    /// Writes a security directory for the default prefix into `<dir>/security`.
    pub fn secured(dir: &Path) -> anyhow::Result<Self> {
        Self::secured_with_prefix(dir, muster_schemas::subjects::DEFAULT_PREFIX)
    }

    /// As [`Identities::secured`], with the roles' permissions built for `prefix`.
    pub fn secured_with_prefix(dir: &Path, prefix: &str) -> anyhow::Result<Self> {
        let security = SecurityDir::new(dir.join("security"))?;
        security
            .init(&InitOptions { prefix: prefix.to_owned(), hosts: Vec::new(), force: false, now: now() })
            .with_context(|| format!("muster security init {}", security.root().display()))?;
        // `init` writes the command key as `command.nk` in the directory's root.
        let command_key = CommandKey::ensure_in(security.root())?;
        Ok(Self { secured: Some(Secured { dir: security, command_key }), signing: None })
    }

    /// The insecure loopback mode: `nats/single.conf` / `nats/cluster.conf`, no credentials, unsigned commands.
    pub fn insecure() -> Self {
        Self { secured: None, signing: None }
    }

    /// The insecure loopback mode with signed commands and registration replies: a command key written to
    /// `<dir>/command.nk`, the server signing with it (`MUSTER_COMMAND_KEY`), agents checking it
    /// (`MUSTER_TRUSTED_KEYS`). What signing alone costs, without TLS or credentials.
    pub fn signed(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self { secured: None, signing: Some(CommandKey::ensure_in(dir)?) })
    }

    /// Whether this is the secured setup.
    pub fn is_secured(&self) -> bool {
        self.secured.is_some()
    }

    /// The security directory (secured only).
    pub fn security(&self) -> Option<&SecurityDir> {
        self.secured.as_ref().map(|s| &s.dir)
    }

    /// The command key the server signs with and the agents trust (secured and signed only).
    pub fn command_key(&self) -> Option<&CommandKey> {
        self.secured.as_ref().map(|s| &s.command_key).or(self.signing.as_ref())
    }

    /// The CA certificate clients verify nats-server against (secured only).
    pub fn ca(&self) -> Option<PathBuf> {
        self.security().map(SecurityDir::ca_cert)
    }

    /// nats-server's single-node config.
    pub fn single_conf(&self) -> PathBuf {
        self.security().map_or_else(|| workspace_root().join("nats/single.conf"), SecurityDir::single_conf)
    }

    /// nats-server's config for one node of a 3-node cluster.
    pub fn cluster_conf(&self) -> PathBuf {
        self.security().map_or_else(|| workspace_root().join("nats/cluster.conf"), SecurityDir::cluster_conf)
    }

    /// The `.creds` file of `who` (agent and swarm credentials are minted on first use, as `muster creds agent` /
    /// `muster creds swarm` do); `None` in the insecure mode.
    pub fn creds(&self, who: Identity<'_>) -> anyhow::Result<Option<PathBuf>> {
        let Some(sec) = self.security() else { return Ok(None) };
        let path = match who {
            Identity::Server => sec.creds("server"),
            Identity::Admin => sec.creds("admin"),
            Identity::Viewer => sec.creds("viewer"),
            Identity::Agent(host) => {
                let host = HostId::new(host).with_context(|| format!("agent credentials for {host:?}"))?;
                let path = sec.agent_creds(&host);
                if !path.exists() {
                    let creds = sec.mint_agent(&host, now())?;
                    write_file(&path, &creds.render(), true)?;
                }
                path
            }
            Identity::Swarm => {
                let path = sec.creds("swarm");
                if !path.exists() {
                    write_file(&path, &sec.mint_swarm(now())?.render(), true)?;
                }
                path
            }
        };
        Ok(Some(path))
    }

    /// The client settings of `who`, for a connection through `muster_nats::connect`.
    pub fn client(&self, who: Identity<'_>) -> anyhow::Result<muster_nats::ClientTrust> {
        Ok(muster_nats::ClientTrust { credentials: self.creds(who)?, ca: self.ca(), ..Default::default() })
    }

    /// The `MUSTER_*` variables (besides the URL) a process connecting as `who` needs. Secured: credentials and
    /// CA; the server's command key (`MUSTER_COMMAND_KEY`); an agent's or the swarm's trusted command key
    /// (`MUSTER_TRUSTED_KEYS`). Insecure: `MUSTER_INSECURE=true` for the daemons, nothing for the CLI; signed only:
    /// the command key as when secured.
    pub fn env(&self, who: Identity<'_>) -> anyhow::Result<Vec<(String, String)>> {
        let Some(secured) = &self.secured else {
            let mut env = Vec::new();
            if matches!(who, Identity::Server | Identity::Agent(_) | Identity::Swarm) {
                env.push((INSECURE_ENV.to_owned(), "true".to_owned()));
            }
            match (&self.signing, who) {
                (Some(key), Identity::Server) => env.push(key.server_env()),
                (Some(key), Identity::Agent(_) | Identity::Swarm) => env.push(key.agent_env()),
                _ => {}
            }
            return Ok(env);
        };
        let creds = self.creds(who)?.context("a secured identity has credentials")?;
        let mut env =
            vec![(CREDS_ENV.to_owned(), path_value(&creds)), (CA_ENV.to_owned(), path_value(&secured.dir.ca_cert()))];
        match who {
            Identity::Server => env.push(secured.command_key.server_env()),
            Identity::Agent(_) | Identity::Swarm => env.push(secured.command_key.agent_env()),
            Identity::Admin | Identity::Viewer => {}
        }
        Ok(env)
    }
}
