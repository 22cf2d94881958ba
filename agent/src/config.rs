//! The agent's configuration: built-in defaults, overridden by a TOML file (`--config FILE`), overridden by
//! environment variables `MUSTER_<NAME>`, through the one settings engine of `muster_nats`.
//!
//! Every setting is declared once, in [`TABLE`], with its default taken from [`crate::params`]; the same table
//! loads the values, refuses unknown file keys, lists unknown `MUSTER_*` variables, renders `--help`, and is
//! compared with the table in docs/agent.md by a test. A bad value is reported with the name the operator
//! actually typed (`MUSTER_REGISTER_TIMEOUT_MS`, or `register_timeout_ms in /etc/muster/agent.toml`).
//!
//! This module sits on top of the runtime modules: it builds their parameters ([`AgentConfig::session_params`]),
//! and none of them reads the configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use muster_nats::connect::TRUST;
use muster_nats::settings::{self, DefaultValue, Setting, SettingsError, Table, Values};
use muster_nats::ClientTrust;
use muster_schemas::messages::EnrollToken;
use muster_schemas::{HostId, Subjects, UnixMillis};
use muster_security::command::{CommandVerifier, KeyError};

use crate::params::{
    CommandParams, CommandTrust, RestartLimits, SessionParams, DEFAULT_AUTO_RESTART, DEFAULT_DISK_FULL_PERCENT,
    DEFAULT_LIFETIME_MAX, DEFAULT_MAX_PARALLEL, DEFAULT_MAX_PER_WINDOW, DEFAULT_MIN_GAP, DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_REGISTER_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, DEFAULT_STATUS_INTERVAL, DEFAULT_WINDOW,
};
use crate::stats::SessionStats;

/// Least interval accepted for progress reports and status checks: each progress report is a JetStream write
/// carrying all the output so far, and each status check forks a process; below 100 ms either becomes load.
pub const MIN_INTERVAL_MS: u64 = 100;

/// Most commands allowed to run at once: each holds a process and two pipes, and the agent is meant to stay a
/// small guest on its host.
pub const MAX_PARALLEL_LIMIT: u64 = 256;

/// A duration default in milliseconds, as the table shows and reads it. Every default is far below `u64::MAX` ms.
const fn millis(d: Duration) -> DefaultValue {
    DefaultValue::Int(d.as_millis() as u64)
}

const HOST_ID: Setting = Setting {
    key: "host_id",
    env: "MUSTER_HOST_ID",
    default: DefaultValue::Computed("the hostname, encoded"),
    meaning:
        "this host's id, 1-64 characters of [A-Za-z0-9_-]; the default lower-cases the hostname and turns . into _",
};
const LABELS: Setting = Setting {
    key: "labels",
    env: "MUSTER_LABELS",
    default: DefaultValue::Unset,
    meaning: "host labels: k=v,k2=v2 in the variable, a table in the file",
};
const REGISTER_TIMEOUT: Setting = Setting {
    key: "register_timeout_ms",
    env: "MUSTER_REGISTER_TIMEOUT_MS",
    default: millis(DEFAULT_REGISTER_TIMEOUT),
    meaning: "how long to wait for a registration reply (>= 1)",
};
const DISK_FULL_PERCENT: Setting = Setting {
    key: "disk_full_percent",
    env: "MUSTER_DISK_FULL_PERCENT",
    default: DefaultValue::Int(DEFAULT_DISK_FULL_PERCENT as u64),
    meaning: "a mount used above this percentage makes the host UNHEALTHY (1-100; 100 disables the check)",
};
const MAX_PARALLEL: Setting = Setting {
    key: "max_parallel",
    env: "MUSTER_MAX_PARALLEL",
    default: DefaultValue::Int(DEFAULT_MAX_PARALLEL as u64),
    meaning: "commands running at once over all components (1-256); each component runs one at a time regardless",
};
const PROGRESS_INTERVAL: Setting = Setting {
    key: "progress_interval_ms",
    env: "MUSTER_PROGRESS_INTERVAL_MS",
    default: millis(DEFAULT_PROGRESS_INTERVAL),
    meaning: "interval of IN_PROGRESS reports of a running command (>= 100)",
};
const STATUS_INTERVAL: Setting = Setting {
    key: "status_interval_ms",
    env: "MUSTER_STATUS_INTERVAL_MS",
    default: millis(DEFAULT_STATUS_INTERVAL),
    meaning: "interval of component status checks (>= 100)",
};
const AUTO_RESTART: Setting = Setting {
    key: "auto_restart",
    env: "MUSTER_AUTO_RESTART",
    default: DefaultValue::Bool(DEFAULT_AUTO_RESTART),
    meaning: "restart components that should run but are found dead (true/false, also 1/0, yes/no, on/off)",
};
const AUTO_RESTART_MAX_PER_WINDOW: Setting = Setting {
    key: "auto_restart_max_per_window",
    env: "MUSTER_AUTO_RESTART_MAX_PER_WINDOW",
    default: DefaultValue::Int(DEFAULT_MAX_PER_WINDOW as u64),
    meaning: "auto-restarts of one component allowed per window (0 disables)",
};
const AUTO_RESTART_WINDOW: Setting = Setting {
    key: "auto_restart_window_ms",
    env: "MUSTER_AUTO_RESTART_WINDOW_MS",
    default: millis(DEFAULT_WINDOW),
    meaning: "the sliding window of that limit (>= 1)",
};
const AUTO_RESTART_MIN_GAP: Setting = Setting {
    key: "auto_restart_min_gap_ms",
    env: "MUSTER_AUTO_RESTART_MIN_GAP_MS",
    default: millis(DEFAULT_MIN_GAP),
    meaning: "least time between two auto-restarts of one component",
};
const AUTO_RESTART_LIFETIME_MAX: Setting = Setting {
    key: "auto_restart_lifetime_max",
    env: "MUSTER_AUTO_RESTART_LIFETIME_MAX",
    default: DefaultValue::Int(DEFAULT_LIFETIME_MAX as u64),
    meaning: "auto-restarts of one component allowed per agent run (0 disables)",
};
const SHUTDOWN_GRACE: Setting = Setting {
    key: "shutdown_grace_ms",
    env: "MUSTER_SHUTDOWN_GRACE_MS",
    default: millis(DEFAULT_SHUTDOWN_GRACE),
    meaning: "on SIGTERM (forwarded to running commands), how long they get to end and report before they are killed",
};

const TRUSTED_KEYS: Setting = Setting {
    key: "trusted_keys",
    env: "MUSTER_TRUSTED_KEYS",
    default: DefaultValue::Unset,
    meaning: concat!(
        "public command keys (N..., comma-separated; or @FILE with one per line) whose signed commands the agent ",
        "acts on; unset: every command is refused, unless MUSTER_INSECURE is set (then unsigned ones are run)"
    ),
};

const STATE_DIR: Setting = Setting {
    key: "state_dir",
    env: "MUSTER_STATE_DIR",
    default: DefaultValue::Text("/var/lib/muster-agent"),
    meaning: "where enrollment keeps the agent's credentials (agent.creds, 0600); nothing else is written",
};
const EXEC_JOURNAL: Setting = Setting {
    key: "exec_journal",
    env: "MUSTER_EXEC_JOURNAL",
    default: DefaultValue::Unset,
    meaning: concat!(
        "append-only journal of every task attempt started (`<task>-a<attempt> <unix ms>`, fsync'd before the ",
        "command runs; a command that cannot be journaled fails unrun), for audits; unset: none"
    ),
};
const ENROLL_TOKEN: Setting = Setting {
    key: "enroll_token",
    env: "MUSTER_ENROLL_TOKEN",
    default: DefaultValue::Unset,
    meaning: "enrollment token (`muster token create`), or @FILE holding it; used only while the state directory has no credentials",
};

/// The settings only the agent has, after the ones every binary shares (`nats_url`, `prefix`).
const AGENT: &[Setting] = &[
    HOST_ID,
    LABELS,
    REGISTER_TIMEOUT,
    DISK_FULL_PERCENT,
    MAX_PARALLEL,
    PROGRESS_INTERVAL,
    STATUS_INTERVAL,
    AUTO_RESTART,
    AUTO_RESTART_MAX_PER_WINDOW,
    AUTO_RESTART_WINDOW,
    AUTO_RESTART_MIN_GAP,
    AUTO_RESTART_LIFETIME_MAX,
    SHUTDOWN_GRACE,
    TRUSTED_KEYS,
    STATE_DIR,
    ENROLL_TOKEN,
    EXEC_JOURNAL,
];

/// Every setting the agent reads, and the variables its binary reads itself (the config file, the log filter):
/// the single source of loading, `--help` and the table in docs/agent.md.
pub static TABLE: Table =
    Table { groups: &[settings::COMMON, TRUST, AGENT], env_only: &[settings::CONFIG, settings::LOG] };

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// NATS servers to connect to (from `nats_url`, comma-separated).
    pub nats_servers: Vec<ServerAddr>,
    /// This host's id, the token in every subject the agent uses.
    pub host_id: HostId,
    /// Subject prefix; must match the server's.
    pub prefix: String,
    /// Labels sent with the registration (used by selectors and blueprints).
    pub labels: BTreeMap<String, String>,
    /// How long to wait for a registration reply before retrying.
    pub register_timeout: Duration,
    /// A mount used above this percentage makes the host UNHEALTHY.
    pub disk_full_percent: u8,
    /// Commands running at once, over all components.
    pub max_parallel: usize,
    /// Interval of IN_PROGRESS reports of a running command.
    pub progress_interval: Duration,
    /// Interval of component status checks.
    pub status_interval: Duration,
    /// Auto-restart switch and limits.
    pub auto_restart: RestartLimits,
    /// On shutdown, how long running commands get to end (after a forwarded SIGTERM) and report.
    pub shutdown_grace: Duration,
    /// Credentials and TLS of the NATS connection, and `MUSTER_INSECURE` (see [`muster_nats::check_insecure`]).
    pub trust: ClientTrust,
    /// The command keys whose signatures the agent accepts (`MUSTER_TRUSTED_KEYS`); empty: none.
    pub trusted_keys: Arc<CommandVerifier>,
    /// Where enrollment keeps the agent's credentials (`MUSTER_STATE_DIR`).
    pub state_dir: PathBuf,
    /// The enrollment token, if one is configured (`MUSTER_ENROLL_TOKEN`).
    pub enroll_token: Option<EnrollTokenSource>,
    /// The execution journal's path (`MUSTER_EXEC_JOURNAL`), if any.
    pub exec_journal: Option<PathBuf>,
}

/// Where the enrollment token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollTokenSource {
    /// Given in the setting itself (checked to parse; its `Debug` hides the seed).
    Inline(EnrollToken),
    /// `@FILE`: read when it is needed (a mounted secret).
    File(PathBuf),
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read, a value is invalid, or a file key is unknown; the error names the variable or
    /// the key and file.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// No host id was configured and the hostname does not make a valid one.
    #[error("invalid hostname {hostname:?} (used because MUSTER_HOST_ID is unset): {reason}")]
    InvalidHostname {
        /// The machine's hostname.
        hostname: String,
        /// Why it cannot be turned into a host id.
        reason: String,
    },
    /// No host id was configured and the hostname could not be read.
    #[error("cannot determine the hostname to derive the host id; set MUSTER_HOST_ID")]
    NoHostname,
    /// `MUSTER_TRUSTED_KEYS` names a key that is not a public command key, or a file that cannot be read.
    #[error("MUSTER_TRUSTED_KEYS: {0}")]
    TrustedKeys(#[from] KeyError),
}

impl AgentConfig {
    /// Loads the configuration from `file` (if any), the process environment and the machine's hostname.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let values = TABLE.load(file)?;
        let hostname = sysinfo::System::host_name().ok();
        Self::from_values(&values, hostname.as_deref())
    }

    /// Validates loaded settings; `hostname` gives the host id when none is configured. Tests use this with
    /// [`Table::load_from`] instead of touching the process environment.
    pub fn from_values(values: &Values, hostname: Option<&str>) -> Result<Self, ConfigError> {
        let host_id = if values.is_set(&HOST_ID) {
            values.parse::<HostId>(&HOST_ID)?
        } else {
            let name = hostname.filter(|h| !h.trim().is_empty()).ok_or(ConfigError::NoHostname)?;
            HostId::from_hostname(name)
                .map_err(|e| ConfigError::InvalidHostname { hostname: name.to_owned(), reason: e.to_string() })?
        };
        let disk_full_percent = values.integer(&DISK_FULL_PERCENT, 1, 100)?;
        let max_parallel = values.integer(&MAX_PARALLEL, 1, MAX_PARALLEL_LIMIT)?;
        let u32_setting = |s: &Setting| -> Result<u32, SettingsError> {
            // The range check makes the conversion exact.
            Ok(u32::try_from(values.integer(s, 0, u64::from(u32::MAX))?).unwrap_or(u32::MAX))
        };
        Ok(Self {
            nats_servers: values.urls(&settings::NATS_URL)?,
            host_id,
            prefix: values.subject_prefix(&settings::PREFIX)?,
            labels: values.labels(&LABELS)?,
            register_timeout: values.millis(&REGISTER_TIMEOUT, 1)?,
            disk_full_percent: u8::try_from(disk_full_percent).unwrap_or(100),
            max_parallel: usize::try_from(max_parallel).unwrap_or(DEFAULT_MAX_PARALLEL),
            progress_interval: values.millis(&PROGRESS_INTERVAL, MIN_INTERVAL_MS)?,
            status_interval: values.millis(&STATUS_INTERVAL, MIN_INTERVAL_MS)?,
            auto_restart: RestartLimits {
                enabled: values.bool(&AUTO_RESTART)?,
                max_per_window: u32_setting(&AUTO_RESTART_MAX_PER_WINDOW)?,
                window: values.millis(&AUTO_RESTART_WINDOW, 1)?,
                min_gap: values.millis(&AUTO_RESTART_MIN_GAP, 0)?,
                lifetime_max: u32_setting(&AUTO_RESTART_LIFETIME_MAX)?,
            },
            shutdown_grace: values.millis(&SHUTDOWN_GRACE, 0)?,
            trust: ClientTrust::from_values(values)?,
            state_dir: PathBuf::from(values.string(&STATE_DIR)?),
            enroll_token: enroll_token(values)?,
            exec_journal: values.optional_string(&EXEC_JOURNAL)?.map(PathBuf::from),
            trusted_keys: Arc::new(trusted_keys(values.optional_string(&TRUSTED_KEYS)?.as_deref())?),
        })
    }

    /// Which commands the agent acts on: those signed by a trusted key; with none trusted, all if
    /// `MUSTER_INSECURE` is set, else none.
    pub fn command_trust(&self) -> CommandTrust {
        if self.trusted_keys.is_empty() && self.trust.insecure {
            CommandTrust::Insecure
        } else {
            CommandTrust::Signed(self.trusted_keys.clone())
        }
    }

    /// The session parameters of this host, with fresh counters. `agent_started_at` is when this process started.
    pub fn session_params(&self, agent_started_at: UnixMillis) -> SessionParams {
        SessionParams {
            host: self.host_id.clone(),
            subjects: Subjects::new(self.prefix.clone()),
            labels: self.labels.clone(),
            register_timeout: self.register_timeout,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_started_at,
            commands: self.command_params(),
            stats: SessionStats::default(),
            trust: self.command_trust(),
            exec_journal: self.exec_journal.clone(),
        }
    }

    /// How this agent runs commands.
    pub fn command_params(&self) -> CommandParams {
        CommandParams {
            max_parallel: self.max_parallel,
            progress_interval: self.progress_interval,
            status_interval: self.status_interval,
            auto_restart: self.auto_restart,
            shutdown_grace: self.shutdown_grace,
            ..CommandParams::default()
        }
    }
}

/// The trusted keys of `MUSTER_TRUSTED_KEYS`: a comma-separated list, or `@FILE` with one per line.
fn trusted_keys(value: Option<&str>) -> Result<CommandVerifier, KeyError> {
    match value.map(str::trim) {
        Some(file) if file.starts_with('@') => {
            let path = &file[1..];
            let text =
                std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
            CommandVerifier::parse_list(&text)
        }
        Some(list) => CommandVerifier::parse_list(list),
        None => CommandVerifier::new(Vec::<String>::new()),
    }
}

/// `MUSTER_ENROLL_TOKEN`: a token, `@FILE`, or unset (empty counts as unset).
fn enroll_token(values: &Values) -> Result<Option<EnrollTokenSource>, SettingsError> {
    let Some(text) = values.optional_string(&ENROLL_TOKEN)?.filter(|t| !t.trim().is_empty()) else { return Ok(None) };
    if let Some(path) = text.trim().strip_prefix('@') {
        return Ok(Some(EnrollTokenSource::File(PathBuf::from(path))));
    }
    // The value is a secret: the error names what is wrong with it, never the value.
    EnrollToken::parse(&text)
        .map(|t| Some(EnrollTokenSource::Inline(t)))
        .map_err(|e| SettingsError::Invalid { setting: ENROLL_TOKEN.env.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use muster_nats::settings::{parse_labels, FileSource};

    /// How the tests name an inline file, as errors about it show.
    const INLINE_FILE: &str = "the config file";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn toml(text: &str) -> Option<FileSource> {
        Some(FileSource::parse(INLINE_FILE, text).unwrap())
    }

    fn load_with(
        file: Option<FileSource>,
        pairs: &[(&str, &str)],
        hostname: Option<&str>,
    ) -> Result<AgentConfig, ConfigError> {
        let values = TABLE.load_from(file, env(pairs))?;
        AgentConfig::from_values(&values, hostname)
    }

    fn load(file: Option<FileSource>, pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        load_with(file, pairs, Some("Node1.example.com"))
    }

    fn url(c: &AgentConfig) -> Vec<String> {
        c.nats_servers.iter().map(|s| format!("{}", s.clone().into_inner())).collect()
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let c = load(None, &[]).unwrap();
        assert_eq!(url(&c), ["nats://127.0.0.1:4222"]);
        assert_eq!(c.host_id.as_str(), "node1_example_com");
        assert_eq!(c.prefix, "muster");
        assert!(c.labels.is_empty());
        assert_eq!(c.register_timeout, Duration::from_millis(5_000));
        assert_eq!(c.disk_full_percent, 95);
    }

    #[test]
    fn command_settings_default_to_ambaris_numbers() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.max_parallel, 4);
        assert_eq!(c.progress_interval, Duration::from_secs(5));
        assert_eq!(c.status_interval, Duration::from_secs(10));
        assert_eq!(c.auto_restart, RestartLimits::default());
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn command_settings_come_from_file_and_env() {
        let file =
            toml("max_parallel = 8\nauto_restart = false\nauto_restart_window_ms = 60000\nstatus_interval_ms = 500");
        let c = load(
            file,
            &[
                ("MUSTER_MAX_PARALLEL", "2"),
                ("MUSTER_PROGRESS_INTERVAL_MS", "1000"),
                ("MUSTER_AUTO_RESTART_MAX_PER_WINDOW", "3"),
                ("MUSTER_AUTO_RESTART_MIN_GAP_MS", "0"),
                ("MUSTER_AUTO_RESTART_LIFETIME_MAX", "7"),
                ("MUSTER_SHUTDOWN_GRACE_MS", "2500"),
            ],
        )
        .unwrap();
        assert_eq!(c.max_parallel, 2);
        assert_eq!(c.progress_interval, Duration::from_secs(1));
        assert_eq!(c.status_interval, Duration::from_millis(500));
        assert_eq!(
            c.auto_restart,
            RestartLimits {
                enabled: false,
                max_per_window: 3,
                window: Duration::from_secs(60),
                min_gap: Duration::ZERO,
                lifetime_max: 7
            }
        );
        assert_eq!(c.shutdown_grace, Duration::from_millis(2_500));
        for (text, enabled) in [("TRUE", true), ("on", true), ("1", true), ("no", false), ("Off", false)] {
            let c = load(None, &[("MUSTER_AUTO_RESTART", text)]).unwrap();
            assert_eq!(c.auto_restart.enabled, enabled, "{text}");
        }
    }

    #[test]
    fn invalid_command_settings_name_the_variable() {
        let cases = [
            ("MUSTER_MAX_PARALLEL", "0"),
            ("MUSTER_MAX_PARALLEL", "257"),
            ("MUSTER_PROGRESS_INTERVAL_MS", "99"),
            ("MUSTER_STATUS_INTERVAL_MS", "often"),
            ("MUSTER_AUTO_RESTART", "maybe"),
            ("MUSTER_AUTO_RESTART_MAX_PER_WINDOW", "-1"),
            ("MUSTER_AUTO_RESTART_WINDOW_MS", "0"),
            ("MUSTER_AUTO_RESTART_LIFETIME_MAX", "4294967296"),
            ("MUSTER_SHUTDOWN_GRACE_MS", "10s"),
        ];
        for (name, value) in cases {
            let err = load(None, &[(name, value)]).expect_err(name).to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
        let err = load(toml("auto_restart = 3"), &[]).unwrap_err().to_string();
        assert!(err.contains("auto_restart in the config file"), "{err}");
    }

    #[test]
    fn file_overrides_defaults() {
        let file = toml(
            r#"
            nats_url = "nats://10.0.0.1:4222, nats://10.0.0.2:4222"
            host_id = "web-1"
            prefix = "prod.muster"
            register_timeout_ms = 800
            disk_full_percent = 90
            [labels]
            rack = "r1"
            tier = "web"
            "#,
        );
        let c = load(file, &[]).unwrap();
        assert_eq!(url(&c), ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
        assert_eq!(c.host_id.as_str(), "web-1");
        assert_eq!(c.prefix, "prod.muster");
        assert_eq!(c.register_timeout, Duration::from_millis(800));
        assert_eq!(c.disk_full_percent, 90);
        assert_eq!(c.labels, BTreeMap::from([("rack".into(), "r1".into()), ("tier".into(), "web".into())]));
    }

    #[test]
    fn env_overrides_file() {
        let file = toml("host_id = \"from-file\"\nregister_timeout_ms = 800\nlabels = { rack = \"r1\" }");
        let c = load(
            file,
            &[
                ("MUSTER_HOST_ID", "from-env"),
                ("MUSTER_REGISTER_TIMEOUT_MS", "1200"),
                ("MUSTER_LABELS", "zone=a, tier=db"),
                ("MUSTER_NATS_URL", "nats://nats:4222"),
                ("MUSTER_DISK_FULL_PERCENT", "80"),
                ("MUSTER_PREFIX", "m2"),
            ],
        )
        .unwrap();
        assert_eq!(c.host_id.as_str(), "from-env");
        assert_eq!(c.register_timeout, Duration::from_millis(1_200));
        assert_eq!(c.labels, BTreeMap::from([("tier".into(), "db".into()), ("zone".into(), "a".into())]));
        assert_eq!(url(&c), ["nats://nats:4222"]);
        assert_eq!(c.disk_full_percent, 80);
        assert_eq!(c.prefix, "m2");
    }

    #[test]
    fn empty_env_counts_as_unset_and_other_vars_are_ignored() {
        let c = load(toml("host_id = \"from-file\""), &[("MUSTER_HOST_ID", ""), ("MUSTER_LOG", "debug")]).unwrap();
        assert_eq!(c.host_id.as_str(), "from-file");
    }

    #[test]
    fn invalid_env_values_name_the_variable() {
        let cases = [
            ("MUSTER_REGISTER_TIMEOUT_MS", "soon"),
            ("MUSTER_REGISTER_TIMEOUT_MS", "0"),
            ("MUSTER_DISK_FULL_PERCENT", "101"),
            ("MUSTER_HOST_ID", "web.1"),
            ("MUSTER_PREFIX", "a..b"),
            ("MUSTER_PREFIX", "a*"),
            ("MUSTER_LABELS", "rack"),
            ("MUSTER_LABELS", "a=1,a=2"),
            ("MUSTER_NATS_URL", "nats://host:notaport"),
        ];
        for (name, value) in cases {
            let err = load(None, &[(name, value)]).expect_err(name).to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn invalid_file_values_name_the_key_and_file() {
        let err = load(toml("disk_full_percent = \"lots\""), &[]).unwrap_err().to_string();
        assert!(err.contains("disk_full_percent in the config file"), "{err}");
        assert!(err.contains("\"lots\""), "{err}");

        let path = std::env::temp_dir().join(format!("muster-agent-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "register_timeout_ms = -5\n").unwrap();
        let file = FileSource::read(&path);
        std::fs::remove_file(&path).unwrap();
        let err = load_with(Some(file.unwrap()), &[], Some("h")).unwrap_err().to_string();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains("register_timeout_ms in ") && err.contains(&name), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = AgentConfig::load(Some(Path::new("/nonexistent/muster-agent.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/muster-agent.toml"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = load(toml("hostid = \"x\""), &[]).unwrap_err();
        assert!(matches!(&err, ConfigError::Settings(SettingsError::Unknown { key, .. }) if key == "hostid"), "{err}");
    }

    #[test]
    fn missing_hostname_without_host_id_is_a_clear_error() {
        let err = load_with(None, &[], None).unwrap_err();
        assert!(err.to_string().contains("MUSTER_HOST_ID"), "{err}");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_labels("").unwrap(), BTreeMap::new());
        assert_eq!(
            parse_labels(" a = 1 ,, b=x=y, c=").unwrap(),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "x=y".into()), ("c".into(), String::new())])
        );
        assert!(parse_labels("=v").is_err());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("a=1,a=1").is_err());
    }

    #[test]
    fn unknown_muster_vars_are_reported() {
        let e =
            env(&[("MUSTER_HOSTID", "x"), ("MUSTER_LOG", "info"), ("MUSTER_CONFIG", "f"), ("MUSTER_NATS_URL", "u")]);
        assert_eq!(TABLE.unknown_env_vars(&e), ["MUSTER_HOSTID"]);
    }

    #[test]
    fn help_lists_every_variable() {
        let help = TABLE.help();
        for s in TABLE.settings() {
            assert!(help.contains(s.env), "{} missing from help", s.env);
        }
        assert!(help.contains(settings::LOG.env) && help.contains(settings::CONFIG.env));
    }

    #[test]
    fn trusted_keys_come_from_a_list_or_a_file_and_decide_the_trust() {
        let (a, b) =
            (muster_security::command::CommandSigner::generate(), muster_security::command::CommandSigner::generate());
        let list = format!("{}, {}", a.public_key(), b.public_key());
        let c = load(None, &[("MUSTER_TRUSTED_KEYS", &list)]).unwrap();
        assert_eq!(c.trusted_keys.keys().collect::<Vec<_>>(), [a.public_key(), b.public_key()]);
        assert!(matches!(c.command_trust(), CommandTrust::Signed(v) if !v.is_empty()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trusted");
        std::fs::write(&file, format!("# command keys\n{}\n", b.public_key())).unwrap();
        let c = load(None, &[("MUSTER_TRUSTED_KEYS", &format!("@{}", file.display()))]).unwrap();
        assert_eq!(c.trusted_keys.keys().collect::<Vec<_>>(), [b.public_key()]);
        // No keys: everything refused, unless insecure (then unsigned commands run, as in a lab).
        assert!(load(None, &[]).unwrap().command_trust().refuses_everything());
        assert!(matches!(load(None, &[("MUSTER_INSECURE", "true")]).unwrap().command_trust(), CommandTrust::Insecure));
        let with_keys = load(None, &[("MUSTER_INSECURE", "true"), ("MUSTER_TRUSTED_KEYS", &list)]).unwrap();
        assert!(matches!(with_keys.command_trust(), CommandTrust::Signed(_)), "keys are checked even when insecure");
        for bad in ["Nnope", "@/nonexistent/keys", &muster_security::command::CommandSigner::generate().seed()] {
            let e = load(None, &[("MUSTER_TRUSTED_KEYS", bad)]).unwrap_err();
            assert!(e.to_string().contains("MUSTER_TRUSTED_KEYS"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_docs_list_every_setting_as_the_table_does() {
        let docs = include_str!("../../docs/agent.md");
        let table = TABLE.markdown();
        assert!(docs.contains(&table), "docs/agent.md must hold the settings table exactly as generated:\n{table}");
    }

    #[test]
    fn defaults_are_the_params_defaults() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.command_params(), CommandParams::default());
        assert_eq!(c.register_timeout, DEFAULT_REGISTER_TIMEOUT);
        assert_eq!(c.disk_full_percent, DEFAULT_DISK_FULL_PERCENT);
    }
}
