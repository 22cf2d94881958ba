//! Server configuration: defaults < config file (`--config FILE`) < `MUSTER_<NAME>` environment variables.
//!
//! Every setting is declared once, in [`SETTINGS`]: the values are loaded from it, `muster-server --help` prints
//! it, and a test checks that docs/configuration.md holds exactly its table.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use muster_nats::connect::TRUST;
use muster_nats::settings::{DefaultValue, Setting, SettingsError, Table, Values, COMMON, LOG, NATS_URL, PREFIX};
use muster_nats::ClientTrust;

/// Every setting of `muster-server`, as loaded from [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// NATS URL(s), comma-separated, as given (checked to parse).
    pub nats_url: String,
    /// Subject prefix (`MUSTER_PREFIX`, default `muster`): every subject, stream and bucket name derives from it.
    pub prefix: String,
    /// Directory holding `muster.redb`.
    pub data_dir: PathBuf,
    /// This instance's stable id.
    pub server_id: String,
    /// Heartbeat interval handed to agents, in ms.
    pub heartbeat_interval_ms: u64,
    /// Missed intervals before HEARTBEAT_LOST.
    pub heartbeat_misses: u32,
    /// Leader lease TTL in ms: how long a dead leader blocks a successor.
    pub lease_ttl_ms: u64,
    /// Registrations in flight on the leader before new ones are told to back off.
    pub max_registrations_in_flight: usize,
    /// JetStream replicas of muster's streams and buckets; 0 = follow the NATS cluster: 3 when connected to a
    /// cluster of 3 or more nodes, otherwise 1.
    pub replicas: usize,
    /// Added to a task's timeout before the leader stops waiting for its report and re-sends it.
    pub task_grace_ms: u64,
    /// Applied log entries between snapshots; the log is trimmed behind each.
    pub snapshot_every: u64,
    /// Whether this instance may lead.
    pub role: ServerRole,
    /// Credentials and TLS of the NATS connection, and `MUSTER_INSECURE` (see [`muster_nats::check_insecure`]).
    pub trust: ClientTrust,
    /// Whether enrolled hosts are accepted at once or held for an operator (`MUSTER_ENROLL_POLICY`).
    pub enroll_policy: EnrollPolicy,
    /// The agent-role signing seed that signs enrolled agents' credentials (`MUSTER_AGENT_SIGNER`); `None`: this
    /// cluster does not enroll agents.
    pub agent_signer: Option<PathBuf>,
    /// The command-signing seed file (`MUSTER_COMMAND_KEY`); see [`ServerConfig::command_key`] for when it is
    /// required.
    pub command_key: Option<PathBuf>,
}

/// Whether an instance may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Campaigns for the lease; leader or follower.
    Voter,
    /// Never campaigns; applies the log and serves reads.
    Observer,
}

impl ServerRole {
    /// The name in `MUSTER_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voter => "voter",
            Self::Observer => "observer",
        }
    }
}

impl fmt::Display for ServerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role that is neither `voter` nor `observer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected voter or observer")]
pub struct UnknownRole;

impl FromStr for ServerRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "voter" => Ok(Self::Voter),
            "observer" => Ok(Self::Observer),
            _ => Err(UnknownRole),
        }
    }
}

/// Whether new hosts are accepted at once or held for an operator (`MUSTER_ENROLL_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnrollPolicy {
    /// A valid token enrolls its host at once.
    #[default]
    Auto,
    /// Every new host waits for `muster hosts accept <host>`.
    Pending,
}

impl EnrollPolicy {
    /// The name in `MUSTER_ENROLL_POLICY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Pending => "pending",
        }
    }
}

impl fmt::Display for EnrollPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy that is neither `auto` nor `pending`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected auto or pending")]
pub struct UnknownPolicy;

impl FromStr for EnrollPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "pending" => Ok(Self::Pending),
            _ => Err(UnknownPolicy),
        }
    }
}

/// Least heartbeat interval: below 100 ms, 100,000 agents would send a million heartbeats a second.
const MIN_HEARTBEAT_INTERVAL_MS: u64 = 100;

/// Least lease TTL: the leader renews every TTL/3, and a renewal is a replicated KV write of a few milliseconds
/// (more on a loaded 3-node cluster); below 300 ms a healthy leader would lose its lease to ordinary latency.
const MIN_LEASE_TTL_MS: u64 = 300;

/// Most JetStream replicas: NATS clusters replicate a stream to at most 5 nodes.
const MAX_REPLICAS: u64 = 5;

/// Characters a server id may not hold: it is a subject token in `muster servers` answers and a connection name.
const SERVER_ID_FORBIDDEN: [char; 4] = ['.', '*', '>', ' '];

const DATA_DIR: Setting = Setting {
    key: "data_dir",
    env: "MUSTER_DATA_DIR",
    default: DefaultValue::Text("./data"),
    meaning: "directory of the redb state file muster.redb",
};

const SERVER_ID: Setting = Setting {
    key: "server_id",
    env: "MUSTER_SERVER_ID",
    default: DefaultValue::Computed("the hostname"),
    meaning: "stable id of this instance (no '.', '*', '>' or spaces; the hostname's become '_')",
};

const HEARTBEAT_INTERVAL_MS: Setting = Setting {
    key: "heartbeat_interval_ms",
    env: "MUSTER_HEARTBEAT_INTERVAL_MS",
    default: DefaultValue::Int(3_000),
    meaning: "heartbeat interval given to agents (>= 100)",
};

const HEARTBEAT_MISSES: Setting = Setting {
    key: "heartbeat_misses",
    env: "MUSTER_HEARTBEAT_MISSES",
    default: DefaultValue::Int(3),
    meaning: concat!(
        "missed intervals before a host is HEARTBEAT_LOST (>= 1); ",
        "with the defaults a dead host is declared lost 9 s after its last heartbeat"
    ),
};

const LEASE_TTL_MS: Setting = Setting {
    key: "lease_ttl_ms",
    env: "MUSTER_LEASE_TTL_MS",
    default: DefaultValue::Int(2_000),
    meaning: "leader lease TTL: a crashed leader blocks a successor at most this long (>= 300)",
};

const MAX_REGISTRATIONS_IN_FLIGHT: Setting = Setting {
    key: "max_registrations_in_flight",
    env: "MUSTER_MAX_REGISTRATIONS_IN_FLIGHT",
    default: DefaultValue::Int(8_192),
    meaning: concat!(
        "admission limit (one group commit holds up to 8,192 inputs); ",
        "beyond it agents are told busy and retry after 0.2-1 s, longer in a storm (docs/protocol.md)"
    ),
};

const REPLICAS: Setting = Setting {
    key: "replicas",
    env: "MUSTER_REPLICAS",
    default: DefaultValue::Int(0),
    meaning: concat!(
        "JetStream replicas of muster's streams and buckets (0-5); ",
        "0 = auto: 3 when the NATS server reports a cluster of 3+ nodes, else 1"
    ),
};

const ROLE: Setting = Setting {
    key: "role",
    env: "MUSTER_ROLE",
    default: DefaultValue::Text("voter"),
    meaning: "voter campaigns for the lease; observer never does",
};

const TASK_GRACE_MS: Setting = Setting {
    key: "task_grace_ms",
    env: "MUSTER_TASK_GRACE_MS",
    default: DefaultValue::Int(10_000),
    meaning: "extra wait past a task's timeout before the leader cancels and re-sends it (once), then TIMEDOUT",
};

const SNAPSHOT_EVERY: Setting = Setting {
    key: "snapshot_every",
    env: "MUSTER_SNAPSHOT_EVERY",
    default: DefaultValue::Int(10_000),
    meaning: "log entries between state snapshots (>= 1); the log is trimmed behind each",
};

const ENROLL_POLICY: Setting = Setting {
    key: "enroll_policy",
    env: "MUSTER_ENROLL_POLICY",
    default: DefaultValue::Text("auto"),
    meaning: "auto enrolls a host with a valid token at once; pending holds it for `muster hosts accept` (docs/enrollment.md)",
};

const AGENT_SIGNER: Setting = Setting {
    key: "agent_signer",
    env: "MUSTER_AGENT_SIGNER",
    default: DefaultValue::Unset,
    meaning: "path of the agent-role signing seed (in the `muster security init` directory) that signs enrolled agents' credentials; unset: no enrollment",
};

const COMMAND_KEY: Setting = Setting {
    key: "command_key",
    env: "MUSTER_COMMAND_KEY",
    default: DefaultValue::Unset,
    meaning: concat!(
        "path of the command-signing seed (command.nk, written by `muster security init`): every command and ",
        "registration reply is signed with it; required unless MUSTER_INSECURE is set and there are no credentials"
    ),
};

/// The server's own settings (beside the common NATS URL and prefix).
const SERVER: &[Setting] = &[
    DATA_DIR,
    SERVER_ID,
    HEARTBEAT_INTERVAL_MS,
    HEARTBEAT_MISSES,
    LEASE_TTL_MS,
    MAX_REGISTRATIONS_IN_FLIGHT,
    REPLICAS,
    ROLE,
    TASK_GRACE_MS,
    SNAPSHOT_EVERY,
    ENROLL_POLICY,
    AGENT_SIGNER,
    COMMAND_KEY,
];

/// Every setting of `muster-server`: loaded by [`ServerConfig::load`], printed by `--help`, and the table of
/// docs/configuration.md.
pub static SETTINGS: Table = Table { groups: &[COMMON, TRUST, SERVER], env_only: &[LOG] };

impl ServerConfig {
    /// Loads from `file` (optional) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::from_values(&SETTINGS.load(file)?, sysinfo_hostname)
    }

    /// Builds the configuration from loaded values; `hostname` gives the server id when none is configured (tests
    /// pass their own instead of the machine's).
    pub fn from_values(v: &Values, hostname: impl FnOnce() -> String) -> Result<Self, SettingsError> {
        // Parsed to be checked; the list stays text for the connect and its messages.
        v.urls(&NATS_URL)?;
        let server_id = v.optional_string(&SERVER_ID)?.unwrap_or_else(hostname);
        if server_id.is_empty() || server_id.contains(SERVER_ID_FORBIDDEN) {
            return Err(SettingsError::Invalid {
                setting: SERVER_ID.env.to_owned(),
                reason: format!("{server_id:?} must be non-empty and contain no '.', '*', '>' or spaces"),
            });
        }
        Ok(Self {
            nats_url: v.string(&NATS_URL)?,
            prefix: v.subject_prefix(&PREFIX)?,
            data_dir: PathBuf::from(v.string(&DATA_DIR)?),
            server_id,
            heartbeat_interval_ms: v.integer(&HEARTBEAT_INTERVAL_MS, MIN_HEARTBEAT_INTERVAL_MS, u64::MAX)?,
            heartbeat_misses: u32_of(v.integer(&HEARTBEAT_MISSES, 1, u64::from(u32::MAX))?),
            lease_ttl_ms: v.integer(&LEASE_TTL_MS, MIN_LEASE_TTL_MS, u64::MAX)?,
            max_registrations_in_flight: usize_of(v.integer(&MAX_REGISTRATIONS_IN_FLIGHT, 1, u32::MAX.into())?),
            replicas: usize_of(v.integer(&REPLICAS, 0, MAX_REPLICAS)?),
            task_grace_ms: v.integer(&TASK_GRACE_MS, 0, u64::MAX)?,
            snapshot_every: v.integer(&SNAPSHOT_EVERY, 1, u64::MAX)?,
            role: v.parse(&ROLE)?,
            trust: ClientTrust::from_values(v)?,
            enroll_policy: v.parse(&ENROLL_POLICY)?,
            agent_signer: v.optional_string(&AGENT_SIGNER)?.map(PathBuf::from),
            command_key: v.optional_string(&COMMAND_KEY)?.filter(|p| !p.is_empty()).map(PathBuf::from),
        })
    }

    /// The command key a voter signs with. Without one, a voter refuses to start unless it runs insecure
    /// (`MUSTER_INSECURE` set, no credentials): its commands then go unsigned, and only agents that run insecure
    /// too accept them. An observer never signs (`None`).
    pub fn command_key(&self) -> Result<Option<&Path>, SettingsError> {
        match (&self.command_key, self.role) {
            (_, ServerRole::Observer) => Ok(None),
            (Some(path), ServerRole::Voter) => Ok(Some(path)),
            (None, ServerRole::Voter) if self.trust.insecure && self.trust.credentials.is_none() => Ok(None),
            (None, ServerRole::Voter) => Err(SettingsError::Invalid {
                setting: COMMAND_KEY.env.to_owned(),
                reason: format!(
                    "is required: agents act only on commands signed by it (create one with `muster security init`; \
                     for a lab without credentials, set {} to send commands unsigned)",
                    muster_nats::connect::INSECURE.env
                ),
            }),
        }
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// How long without a heartbeat before HEARTBEAT_LOST: `interval × misses`.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval() * self.heartbeat_misses
    }

    /// The leader lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// Path of the redb state file.
    pub fn redb_path(&self) -> PathBuf {
        self.data_dir.join("muster.redb")
    }
}

/// A number already checked to be at most `u32::MAX`.
fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A number already checked to be at most `u32::MAX`, which fits every `usize` muster runs on.
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The machine's hostname as a server id: the characters a server id may not hold become `_`.
fn sysinfo_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().replace(SERVER_ID_FORBIDDEN, "_"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "muster-server".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use muster_nats::settings::FileSource;

    use super::*;

    fn load(file: Option<&str>, pairs: &[(&str, &str)]) -> Result<ServerConfig, SettingsError> {
        let file = file.map(|text| FileSource::parse("server.toml", text)).transpose()?;
        let env: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ServerConfig::from_values(&SETTINGS.load_from(file, env)?, || "host-1".to_owned())
    }

    #[test]
    fn defaults_detect_a_dead_host_within_ten_seconds() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.heartbeat_interval_ms, 3000);
        assert_eq!(c.heartbeat_misses, 3);
        assert!(c.heartbeat_deadline() < Duration::from_secs(10));
        assert_eq!(
            (c.nats_url.as_str(), c.prefix.as_str(), c.server_id.as_str()),
            ("nats://127.0.0.1:4222", "muster", "host-1")
        );
        assert_eq!((c.role, c.replicas, c.lease_ttl_ms, c.snapshot_every), (ServerRole::Voter, 0, 2_000, 10_000));
        assert_eq!((c.max_registrations_in_flight, c.task_grace_ms), (8_192, 10_000));
        assert_eq!(c.redb_path(), Path::new("./data/muster.redb"));
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "heartbeat_misses = 5\nheartbeat_interval_ms = 1000\nrole = \"observer\"\n").unwrap();
        let env = HashMap::from([("MUSTER_HEARTBEAT_INTERVAL_MS".to_owned(), "500".to_owned())]);
        let c =
            ServerConfig::from_values(&SETTINGS.load_from(Some(FileSource::read(&f).unwrap()), env).unwrap(), || {
                "h".to_owned()
            })
            .unwrap();
        assert_eq!(c.heartbeat_misses, 5);
        assert_eq!(c.heartbeat_interval_ms, 500);
        assert_eq!(c.role, ServerRole::Observer);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases = [
            ("MUSTER_HEARTBEAT_MISSES", "0"),
            ("MUSTER_HEARTBEAT_INTERVAL_MS", "soon"),
            ("MUSTER_HEARTBEAT_INTERVAL_MS", "99"),
            ("MUSTER_LEASE_TTL_MS", "299"),
            ("MUSTER_SNAPSHOT_EVERY", "0"),
            ("MUSTER_MAX_REGISTRATIONS_IN_FLIGHT", "0"),
            ("MUSTER_REPLICAS", "6"),
            ("MUSTER_SERVER_ID", "a.b"),
            ("MUSTER_ROLE", "leader"),
            ("MUSTER_ENROLL_POLICY", "maybe"),
            ("MUSTER_PREFIX", "a*"),
            ("MUSTER_NATS_URL", "nats://h:port"),
        ];
        for (name, value) in cases {
            let e = load(None, &[(name, value)]).expect_err(name);
            assert!(e.to_string().contains(name), "{name}={value}: {e}");
        }
        let e = load(Some("heartbeat_misses = \"many\""), &[]).unwrap_err();
        assert!(e.to_string().contains("heartbeat_misses in server.toml"), "{e}");
        let e = load(Some("heartbeat_mises = 4"), &[]).unwrap_err();
        assert!(matches!(&e, SettingsError::Unknown { key, .. } if key == "heartbeat_mises"), "{e}");
    }

    #[test]
    fn help_lists_every_field() {
        let help = SETTINGS.help();
        for field in [
            "nats_url",
            "prefix",
            "data_dir",
            "server_id",
            "heartbeat_interval_ms",
            "heartbeat_misses",
            "lease_ttl_ms",
            "max_registrations_in_flight",
            "replicas",
            "task_grace_ms",
            "snapshot_every",
            "role",
        ] {
            let var = format!("MUSTER_{}", field.to_ascii_uppercase());
            assert!(SETTINGS.settings().any(|s| s.env == var && s.key == field), "{var} missing from SETTINGS");
            assert!(help.contains(&var), "{var} missing from --help");
        }
        assert!(help.contains("MUSTER_LOG"));
    }

    #[test]
    fn a_voter_needs_a_command_key_unless_it_runs_insecure_without_credentials() {
        let key = load(None, &[("MUSTER_COMMAND_KEY", "/etc/muster/command.nk")]).unwrap();
        assert_eq!(key.command_key().unwrap(), Some(Path::new("/etc/muster/command.nk")));
        let e = load(None, &[]).unwrap().command_key().unwrap_err();
        assert!(e.to_string().contains("MUSTER_COMMAND_KEY") && e.to_string().contains("MUSTER_INSECURE"), "{e}");
        let creds = [("MUSTER_INSECURE", "true"), ("MUSTER_NATS_CREDS", "/etc/muster/server.creds")];
        assert!(load(None, &creds).unwrap().command_key().is_err(), "credentials mean a secured cluster");
        assert_eq!(load(None, &[("MUSTER_INSECURE", "true")]).unwrap().command_key().unwrap(), None);
        assert_eq!(load(None, &[("MUSTER_ROLE", "observer")]).unwrap().command_key().unwrap(), None, "never signs");
    }

    #[test]
    fn docs_configuration_md_holds_the_settings_table() {
        let docs = include_str!("../../docs/configuration.md");
        let table = SETTINGS.markdown();
        assert!(
            docs.contains(&table),
            "docs/configuration.md's muster-server table differs from SETTINGS; it should read:\n{table}"
        );
    }
}
