//! I/O: the security directory `muster security init DIR` writes, and the operations on it (minting agent and
//! swarm credentials, planning and committing a revocation). Files holding a secret (seeds, private keys, creds)
//! are created with mode 0600, the directory with 0700.
//!
//! ```text
//! DIR/
//!   security.json          prefix, TLS names, every user minted (role, host, public key, time), revocations
//!   operator.nk            operator seed                                   (secret)
//!   operator.jwt           operator JWT (nats-server's `operator:`)
//!   accounts/SYS.nk        system account seed                             (secret)
//!   accounts/SYS.jwt       system account JWT
//!   accounts/MUSTER.nk     MUSTER account seed (signs nothing; kept for recovery)  (secret)
//!   accounts/MUSTER.jwt    MUSTER account JWT: scoped signing keys, JetStream limits, revocations
//!   accounts/MUSTER.pub    MUSTER account public key (for enrollment, with signers/agent.nk)
//!   signers/<role>.nk      each role's scoped signing seed; signers/agent.nk mints agents  (secret)
//!   ca.pem, ca-key.pem     the CA (MUSTER_NATS_CA) and its key             (key secret)
//!   nats-server.pem, nats-server-key.pem   nats-server's certificate and key (key secret)
//!   server.creds admin.creds viewer.creds sys.creds                         (secret)
//!   command.nk, command.pub  the command-signing seed (MUSTER_COMMAND_KEY) and its public key (MUSTER_TRUSTED_KEYS)
//!   nats-single.conf, nats-cluster.conf
//!   agents/<host>.creds    `muster creds agent HOST` without --out         (secret)
//!   swarm.creds            `muster creds swarm` without --out              (secret)
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use muster_schemas::subjects::Subjects;
use muster_schemas::HostId;
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};

use crate::certs::{self, CertError};
use crate::claims::{self, AccountSpec, AgentMinter, MintError};
use crate::config::{self, ServerConfigInputs};
use crate::creds::Creds;
use crate::roles::Role;

/// The roles init mints one credentials file for (besides the system user).
pub const INIT_USERS: [Role; 3] = [Role::Server, Role::Admin, Role::Viewer];

/// A security directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// `init` into a directory that already holds files, without `--force`.
    #[error("{} exists and is not empty; pass --force to overwrite it (every credential minted from it stops working)", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds something else than expected.
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Minting failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Making certificates failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The prefix is not one.
    #[error(transparent)]
    Prefix(#[from] muster_schemas::subjects::InvalidPrefix),
    /// `revoke HOST` found no unrevoked credentials for the host.
    #[error("no unrevoked credentials were minted for host {0} from this directory")]
    NothingToRevoke(String),
}

/// One user minted from the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minted {
    /// Its role.
    pub role: String,
    /// The host, for an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The user's public key.
    pub public_key: String,
    /// When (Unix seconds).
    pub at: u64,
}

/// `security.json`: what the directory remembers besides its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The subject prefix the role templates were built for.
    pub prefix: String,
    /// Extra names in the nats-server certificate.
    pub tls_hosts: Vec<String>,
    /// Every user minted, oldest first.
    pub minted: Vec<Minted>,
    /// Revoked user public keys and when (Unix seconds), as in the MUSTER account JWT.
    pub revocations: BTreeMap<String, u64>,
}

/// What `init` is asked to do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The subject prefix (the roles' templates are built from it).
    pub prefix: String,
    /// Names (DNS or IP) under which the nats-servers are reached, besides loopback.
    pub hosts: Vec<String>,
    /// Overwrite a directory that already holds files.
    pub force: bool,
    /// Now, Unix seconds.
    pub now: u64,
}

/// The paths of a security directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DirError + '_ {
    move |source| DirError::Io { path: path.to_owned(), source }
}

/// Writes `contents` to `path`, mode 0600 when `secret` (0644 otherwise), replacing the file.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), DirError> {
    let mode = if secret { 0o600 } else { 0o644 };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(io(path))?;
    // An existing file keeps its mode through open(); set it.
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read(path: &Path) -> Result<String, DirError> {
    std::fs::read_to_string(path).map_err(io(path))
}

impl SecurityDir {
    /// The directory at `root` (made absolute against the current directory, since the nats-server configs name
    /// its files).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, DirError> {
        let root = root.into();
        let root = if root.is_absolute() { root } else { std::env::current_dir().map_err(io(&root))?.join(root) };
        Ok(Self { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `security.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("security.json")
    }
    /// The operator's seed.
    pub fn operator_seed(&self) -> PathBuf {
        self.root.join("operator.nk")
    }
    /// The operator JWT.
    pub fn operator_jwt(&self) -> PathBuf {
        self.root.join("operator.jwt")
    }
    /// An account's file (`SYS` or `MUSTER`, extension `nk`, `jwt` or `pub`).
    pub fn account_file(&self, name: &str, ext: &str) -> PathBuf {
        self.root.join("accounts").join(format!("{name}.{ext}"))
    }
    /// A role's scoped signing seed.
    pub fn signer_seed(&self, role: Role) -> PathBuf {
        self.root.join("signers").join(format!("{role}.nk"))
    }
    /// The CA certificate (clients' `MUSTER_NATS_CA`).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    /// The nats-server certificate.
    pub fn nats_cert(&self) -> PathBuf {
        self.root.join("nats-server.pem")
    }
    /// The nats-server certificate's key.
    pub fn nats_key(&self) -> PathBuf {
        self.root.join("nats-server-key.pem")
    }
    /// `<name>.creds` (server, admin, viewer, sys, swarm).
    pub fn creds(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.creds"))
    }
    /// Where `muster creds agent HOST` writes without `--out`.
    pub fn agent_creds(&self, host: &HostId) -> PathBuf {
        self.root.join("agents").join(format!("{host}.creds"))
    }
    /// The command-signing seed (`MUSTER_COMMAND_KEY`).
    pub fn command_seed(&self) -> PathBuf {
        self.root.join("command.nk")
    }
    /// The command-signing public key (for `MUSTER_TRUSTED_KEYS`).
    pub fn command_pub(&self) -> PathBuf {
        self.root.join("command.pub")
    }
    /// The single-node nats-server config.
    pub fn single_conf(&self) -> PathBuf {
        self.root.join("nats-single.conf")
    }
    /// The cluster-node nats-server config.
    pub fn cluster_conf(&self) -> PathBuf {
        self.root.join("nats-cluster.conf")
    }

    fn seed(&self, path: &Path, kind: KeyPairType, what: &'static str) -> Result<KeyPair, DirError> {
        claims::key_from_seed(&read(path)?, kind, what)
            .map_err(|e| DirError::Invalid { path: path.to_owned(), detail: e.to_string() })
    }

    /// Reads `security.json`.
    pub fn state(&self) -> Result<State, DirError> {
        let path = self.state_file();
        serde_json::from_str(&read(&path)?).map_err(|e| DirError::Invalid { path, detail: e.to_string() })
    }

    fn save_state(&self, state: &State) -> Result<(), DirError> {
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| DirError::Invalid { path: self.state_file(), detail: e.to_string() })?;
        write_file(&self.state_file(), &(text + "\n"), false)
    }

    /// The MUSTER account's public key.
    pub fn account_public(&self) -> Result<String, DirError> {
        Ok(read(&self.account_file(claims::ACCOUNT_NAME, "pub"))?.trim().to_owned())
    }

    /// The minter of agent credentials (the agent signing seed and the account key).
    pub fn agent_minter(&self) -> Result<AgentMinter, DirError> {
        let path = self.signer_seed(Role::Agent);
        Ok(AgentMinter::new(read(&path)?.trim(), &self.account_public()?)?)
    }

    /// The account spec as the directory holds it (signers from their seeds, revocations from the state).
    fn account_spec(&self, state: &State) -> Result<AccountSpec, DirError> {
        let mut signers = BTreeMap::new();
        for role in Role::ALL {
            signers
                .insert(role, self.seed(&self.signer_seed(role), KeyPairType::Account, "signing seed")?.public_key());
        }
        Ok(AccountSpec {
            account: self.account_public()?,
            subjects: Subjects::checked(&state.prefix)?,
            signers,
            revocations: state.revocations.clone(),
        })
    }

    /// Writes a fresh directory: every key, JWT, certificate, creds file and nats-server config. Refuses a
    /// directory holding files unless `opts.force`.
    pub fn init(&self, opts: &InitOptions) -> Result<(), DirError> {
        let subjects = Subjects::checked(&opts.prefix)?;
        let occupied = match std::fs::read_dir(&self.root) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(DirError::Io { path: self.root.clone(), source: e }),
        };
        if occupied && !opts.force {
            return Err(DirError::Exists(self.root.clone()));
        }
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700)).map_err(io(&self.root))?;

        let seed = |k: &KeyPair| k.seed().map_err(|e| MintError::Key { what: "new key", detail: e.to_string() });
        let operator = KeyPair::new_operator();
        let sys = KeyPair::new_account();
        let account = KeyPair::new_account();
        write_file(&self.operator_seed(), &seed(&operator)?, true)?;
        write_file(&self.account_file(claims::SYS_ACCOUNT_NAME, "nk"), &seed(&sys)?, true)?;
        write_file(&self.account_file(claims::ACCOUNT_NAME, "nk"), &seed(&account)?, true)?;
        write_file(&self.account_file(claims::ACCOUNT_NAME, "pub"), &(account.public_key() + "\n"), false)?;
        for role in Role::ALL {
            write_file(&self.signer_seed(role), &seed(&KeyPair::new_account())?, true)?;
        }
        write_file(&self.operator_jwt(), &claims::operator_jwt(&operator, &sys.public_key())?, false)?;
        write_file(
            &self.account_file(claims::SYS_ACCOUNT_NAME, "jwt"),
            &claims::sys_account_jwt(&operator, &sys.public_key())?,
            false,
        )?;

        let now_secs = i64::try_from(opts.now).unwrap_or(i64::MAX);
        let certs = certs::generate(&opts.hosts, now_secs)?;
        write_file(&self.ca_cert(), &certs.ca.cert, false)?;
        write_file(&self.ca_key(), &certs.ca.key, true)?;
        write_file(&self.nats_cert(), &certs.server.cert, false)?;
        write_file(&self.nats_key(), &certs.server.key, true)?;

        let command = KeyPair::new_server();
        write_file(&self.command_seed(), &(seed(&command)? + "\n"), true)?;
        write_file(&self.command_pub(), &(command.public_key() + "\n"), false)?;

        let mut state = State {
            prefix: subjects.prefix().to_owned(),
            tls_hosts: opts.hosts.clone(),
            minted: Vec::new(),
            revocations: BTreeMap::new(),
        };
        let sys_user = KeyPair::new_user();
        let sys_creds = Creds { jwt: claims::sys_user_jwt(&sys, &sys_user.public_key())?, seed: seed(&sys_user)? };
        write_file(&self.creds("sys"), &sys_creds.render(), true)?;
        for role in INIT_USERS {
            let creds = self.mint(&mut state, role, role.as_str(), None, opts.now)?;
            write_file(&self.creds(role.as_str()), &creds.render(), true)?;
        }
        self.save_state(&state)?;
        self.write_account(&operator, &state)
    }

    /// Mints a new user of `role` named `name` with a fresh key, recording it in `state` (not saved).
    fn mint(
        &self,
        state: &mut State,
        role: Role,
        name: &str,
        host: Option<&HostId>,
        now: u64,
    ) -> Result<Creds, DirError> {
        let signer = self.seed(&self.signer_seed(role), KeyPairType::Account, "signing seed")?;
        let user = KeyPair::new_user();
        let jwt = claims::scoped_user_jwt(&signer, &self.account_public()?, name, &user.public_key())?;
        let seed = user.seed().map_err(|e| MintError::Key { what: "new user key", detail: e.to_string() })?;
        state.minted.push(Minted {
            role: role.as_str().to_owned(),
            host: host.map(|h| h.as_str().to_owned()),
            public_key: user.public_key(),
            at: now,
        });
        Ok(Creds { jwt, seed })
    }

    /// Mints credentials for `host`'s agent and records them (so `revoke` can find them).
    pub fn mint_agent(&self, host: &HostId, now: u64) -> Result<Creds, DirError> {
        let mut state = self.state()?;
        let creds = self.mint(&mut state, Role::Agent, host.as_str(), Some(host), now)?;
        self.save_state(&state)?;
        Ok(creds)
    }

    /// Mints swarm credentials (every host's agent rights, load tests only) and records them.
    pub fn mint_swarm(&self, now: u64) -> Result<Creds, DirError> {
        let mut state = self.state()?;
        let creds = self.mint(&mut state, Role::Swarm, "swarm", None, now)?;
        self.save_state(&state)?;
        Ok(creds)
    }

    /// Records a user minted elsewhere (e.g. at enrollment) so `revoke` finds it.
    pub fn record_agent(&self, host: &HostId, public_key: &str, now: u64) -> Result<(), DirError> {
        claims::check_user_key(public_key)?;
        let mut state = self.state()?;
        state.minted.push(Minted {
            role: Role::Agent.as_str().to_owned(),
            host: Some(host.as_str().to_owned()),
            public_key: public_key.to_owned(),
            at: now,
        });
        self.save_state(&state)
    }

    /// What revoking `host` means: its unrevoked keys and the account JWT revoking them. Nothing is written.
    pub fn plan_revoke(&self, host: &HostId, now: u64) -> Result<RevokePlan, DirError> {
        let mut state = self.state()?;
        let keys: Vec<String> = state
            .minted
            .iter()
            .filter(|m| m.host.as_deref() == Some(host.as_str()) && !state.revocations.contains_key(&m.public_key))
            .map(|m| m.public_key.clone())
            .collect();
        if keys.is_empty() {
            return Err(DirError::NothingToRevoke(host.to_string()));
        }
        for k in &keys {
            state.revocations.insert(k.clone(), now);
        }
        let operator = self.seed(&self.operator_seed(), KeyPairType::Operator, "operator seed")?;
        let account_jwt = self.account_spec(&state)?.jwt(&operator)?;
        Ok(RevokePlan { host: host.to_string(), keys, account_jwt, state })
    }

    /// Stores a revocation nats-server accepted: the new account JWT, the state, and the configs (so a node
    /// started later preloads the revocations too).
    pub fn commit_revoke(&self, plan: &RevokePlan) -> Result<(), DirError> {
        self.save_state(&plan.state)?;
        write_file(&self.account_file(claims::ACCOUNT_NAME, "jwt"), &plan.account_jwt, false)?;
        self.write_configs(&plan.account_jwt)
    }

    /// Signs the account JWT for `state` and writes it and the configs.
    fn write_account(&self, operator: &KeyPair, state: &State) -> Result<(), DirError> {
        let jwt = self.account_spec(state)?.jwt(operator)?;
        write_file(&self.account_file(claims::ACCOUNT_NAME, "jwt"), &jwt, false)?;
        self.write_configs(&jwt)
    }

    fn write_configs(&self, account_jwt: &str) -> Result<(), DirError> {
        let sys_jwt = read(&self.account_file(claims::SYS_ACCOUNT_NAME, "jwt"))?;
        let sys = self.seed(&self.account_file(claims::SYS_ACCOUNT_NAME, "nk"), KeyPairType::Account, "SYS seed")?;
        let inputs = ServerConfigInputs {
            operator_jwt: self.operator_jwt(),
            system_account: sys.public_key(),
            preload: vec![
                (sys.public_key(), sys_jwt.trim().to_owned()),
                (self.account_public()?, account_jwt.trim().to_owned()),
            ],
            ca: self.ca_cert(),
            cert: self.nats_cert(),
            key: self.nats_key(),
        };
        write_file(&self.single_conf(), &config::single(&inputs), false)?;
        write_file(&self.cluster_conf(), &config::cluster(&inputs), false)
    }
}

/// A revocation ready to push ([`crate::revoke::push_account_jwt`]) and then commit
/// ([`SecurityDir::commit_revoke`]).
#[derive(Debug, Clone)]
pub struct RevokePlan {
    /// The host revoked.
    pub host: String,
    /// The user public keys revoked.
    pub keys: Vec<String>,
    /// The re-signed MUSTER account JWT.
    pub account_jwt: String,
    state: State,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions { prefix: "muster".into(), hosts: vec!["nats.example".into()], force: false, now: 1_700_000_000 }
    }

    #[test]
    fn init_writes_the_layout_with_secrets_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SecurityDir::new(tmp.path().join("sec")).unwrap();
        dir.init(&opts()).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.root().to_owned()), 0o700);
        for secret in [
            dir.operator_seed(),
            dir.signer_seed(Role::Agent),
            dir.ca_key(),
            dir.nats_key(),
            dir.creds("sys"),
            dir.command_seed(),
        ] {
            assert_eq!(mode(secret.clone()), 0o600, "{}", secret.display());
        }
        for role in INIT_USERS {
            assert_eq!(mode(dir.creds(role.as_str())), 0o600);
        }
        assert_eq!(mode(dir.ca_cert()), 0o644);
        assert!(read(&dir.single_conf()).unwrap().contains(&dir.account_public().unwrap()));
        assert!(read(&dir.command_pub()).unwrap().starts_with('N'));
        assert_eq!(dir.state().unwrap().minted.len(), INIT_USERS.len());
    }

    #[test]
    fn init_refuses_an_existing_directory_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SecurityDir::new(tmp.path()).unwrap();
        write_file(&tmp.path().join("x"), "keep", false).unwrap();
        assert!(matches!(dir.init(&opts()), Err(DirError::Exists(_))));
        dir.init(&InitOptions { force: true, ..opts() }).unwrap();
    }

    #[test]
    fn revoke_plans_only_the_hosts_unrevoked_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SecurityDir::new(tmp.path().join("s")).unwrap();
        dir.init(&opts()).unwrap();
        let h1 = HostId::new("h1").unwrap();
        let h2 = HostId::new("h2").unwrap();
        assert!(matches!(dir.plan_revoke(&h1, 5), Err(DirError::NothingToRevoke(_))));
        let a = dir.mint_agent(&h1, 1).unwrap();
        dir.mint_agent(&h2, 1).unwrap();
        let plan = dir.plan_revoke(&h1, 5).unwrap();
        assert_eq!(plan.keys, [a.public_key().unwrap()]);
        dir.commit_revoke(&plan).unwrap();
        assert!(read(&dir.single_conf()).unwrap().contains(&plan.account_jwt));
        assert!(matches!(dir.plan_revoke(&h1, 6), Err(DirError::NothingToRevoke(_))));
        assert!(dir.plan_revoke(&h2, 6).is_ok());
    }

    #[test]
    fn the_minter_signs_with_the_accounts_agent_scope() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SecurityDir::new(tmp.path().join("s")).unwrap();
        dir.init(&opts()).unwrap();
        let minter = dir.agent_minter().unwrap();
        assert!(read(&dir.account_file(claims::ACCOUNT_NAME, "jwt")).is_ok());
        let spec = dir.account_spec(&dir.state().unwrap()).unwrap();
        assert_eq!(spec.signers[&Role::Agent], minter.signer_public());
    }
}
