//! The agent's configuration: built-in defaults, overridden by a TOML file (`--config FILE`), overridden by
//! environment variables `MUSTER_<NAME>`.
//!
//! Layering goes through the `config` crate; every value is then validated here so that a bad value is reported
//! with the name the operator actually typed (`MUSTER_REGISTER_TIMEOUT_MS`, or `register_timeout_ms in
//! /etc/muster/agent.toml`), never with a serde path.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use async_nats::ServerAddr;
use config::{Config, FileFormat, Source, Value, ValueKind};
use muster_schemas::subjects::DEFAULT_PREFIX;
use muster_schemas::HostId;

use crate::recovery::RestartLimits;
use crate::runner;

/// Prefix of every environment variable the agent reads.
pub const ENV_PREFIX: &str = "MUSTER_";

/// The variable naming the config file (read by the command line parser, not a setting itself).
pub const ENV_CONFIG_FILE: &str = "MUSTER_CONFIG";

/// The variable holding the log filter (`tracing_subscriber::EnvFilter` syntax).
pub const ENV_LOG: &str = "MUSTER_LOG";

/// Log filter used when `MUSTER_LOG` is unset: lifecycle events without per-heartbeat noise.
pub const DEFAULT_LOG: &str = "info";

/// Default NATS server: a nats-server on the same host, as in the single-node dev setup.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Default registration timeout. Ambari's server gives a registration 8 s; the leader here answers in
/// milliseconds unless it is at its admission limit, and then it answers `busy` rather than staying silent, so
/// 5 s only expires when nobody is really there.
pub const DEFAULT_REGISTER_TIMEOUT_MS: u64 = 5_000;

/// Default disk threshold: above 95% used, services start failing writes (ext4 keeps 5% for root), so the host
/// is reported UNHEALTHY while there is still time to act.
pub const DEFAULT_DISK_FULL_PERCENT: u8 = 95;

/// Least interval accepted for progress reports and status checks: each progress report is a JetStream write
/// carrying all the output so far, and each status check forks a process; below 100 ms either becomes load.
pub const MIN_INTERVAL_MS: u64 = 100;

/// Most commands allowed to run at once: each holds a process and two pipes, and the agent is meant to stay a
/// small guest on its host.
pub const MAX_PARALLEL_LIMIT: u64 = 256;

/// One configuration setting: its key in the TOML file, its environment variable, its default and meaning.
/// The single source for `--help`, unknown-key detection and docs/agent.md.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Key in the TOML file.
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default, as shown to operators.
    pub default: &'static str,
    /// What it means.
    pub meaning: &'static str,
}

/// Every setting the agent reads.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "nats_url",
        env: "MUSTER_NATS_URL",
        default: DEFAULT_NATS_URL,
        meaning: "NATS server URL; several separated by commas",
    },
    Setting {
        key: "host_id",
        env: "MUSTER_HOST_ID",
        default: "the hostname, encoded (dots become '_')",
        meaning: "this host's id: 1-64 of [A-Za-z0-9_-]",
    },
    Setting {
        key: "prefix",
        env: "MUSTER_PREFIX",
        default: DEFAULT_PREFIX,
        meaning: "subject prefix shared with the server",
    },
    Setting {
        key: "labels",
        env: "MUSTER_LABELS",
        default: "(none)",
        meaning: "host labels: \"k=v,k2=v2\" (a table in the file)",
    },
    Setting {
        key: "register_timeout_ms",
        env: "MUSTER_REGISTER_TIMEOUT_MS",
        default: "5000",
        meaning: "how long to wait for a registration reply",
    },
    Setting {
        key: "disk_full_percent",
        env: "MUSTER_DISK_FULL_PERCENT",
        default: "95",
        meaning: "a mount used above this percentage makes the host UNHEALTHY",
    },
    Setting {
        key: "max_parallel",
        env: "MUSTER_MAX_PARALLEL",
        default: "4",
        meaning: "commands running at once (1-256); one per component at a time",
    },
    Setting {
        key: "progress_interval_ms",
        env: "MUSTER_PROGRESS_INTERVAL_MS",
        default: "5000",
        meaning: "IN_PROGRESS report interval of a running command (>= 100)",
    },
    Setting {
        key: "status_interval_ms",
        env: "MUSTER_STATUS_INTERVAL_MS",
        default: "10000",
        meaning: "component status check interval (>= 100)",
    },
    Setting {
        key: "auto_restart",
        env: "MUSTER_AUTO_RESTART",
        default: "true",
        meaning: "restart components that should run but are found dead",
    },
    Setting {
        key: "auto_restart_max_per_window",
        env: "MUSTER_AUTO_RESTART_MAX_PER_WINDOW",
        default: "6",
        meaning: "auto-restarts of one component allowed per window",
    },
    Setting {
        key: "auto_restart_window_ms",
        env: "MUSTER_AUTO_RESTART_WINDOW_MS",
        default: "3600000",
        meaning: "the auto-restart window (>= 1)",
    },
    Setting {
        key: "auto_restart_min_gap_ms",
        env: "MUSTER_AUTO_RESTART_MIN_GAP_MS",
        default: "300000",
        meaning: "least time between two auto-restarts of one component",
    },
    Setting {
        key: "auto_restart_lifetime_max",
        env: "MUSTER_AUTO_RESTART_LIFETIME_MAX",
        default: "24",
        meaning: "auto-restarts of one component allowed per agent run",
    },
    Setting {
        key: "shutdown_grace_ms",
        env: "MUSTER_SHUTDOWN_GRACE_MS",
        default: "10000",
        meaning: "on SIGTERM, how long running commands may still finish and report",
    },
];

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
    /// Commands running at once.
    pub max_parallel: usize,
    /// Interval of IN_PROGRESS reports of a running command.
    pub progress_interval: Duration,
    /// Interval of component status checks.
    pub status_interval: Duration,
    /// Auto-restart switch and limits.
    pub auto_restart: RestartLimits,
    /// On shutdown, how long running commands may still finish and report.
    pub shutdown_grace: Duration,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("cannot load configuration: {0}")]
    Load(config::ConfigError),
    /// A value was present but not valid. `setting` names where it came from.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The environment variable or `key in FILE`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file held a key the agent does not know (most likely a typo).
    #[error("unknown setting `{key}` in {origin}; known settings: {known}")]
    Unknown {
        /// The unknown key.
        key: String,
        /// The file it came from.
        origin: String,
        /// The known keys, for the error message.
        known: String,
    },
    /// An agent variable was not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// No host id was configured and the hostname could not be read.
    #[error("cannot determine the hostname to derive the host id; set MUSTER_HOST_ID")]
    NoHostname,
}

impl AgentConfig {
    /// Loads the configuration from `file` (if any), the process environment and the machine's hostname.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env = agent_env(std::env::vars_os())?;
        let hostname = sysinfo::System::host_name().ok();
        match file {
            Some(path) => Self::from_sources(
                Some(config::File::from(path).format(FileFormat::Toml).required(true)),
                &env,
                hostname.as_deref(),
            ),
            None => {
                Self::from_sources(None::<config::File<config::FileSourceFile, FileFormat>>, &env, hostname.as_deref())
            }
        }
    }

    /// Builds the configuration from explicit sources: an optional file source, the `MUSTER_*` variables, and the
    /// hostname used when no host id is configured. Tests use this instead of touching the process environment.
    pub fn from_sources<S>(
        file: Option<S>,
        env: &HashMap<String, String>,
        hostname: Option<&str>,
    ) -> Result<Self, ConfigError>
    where
        S: Source + Send + Sync + 'static,
    {
        let settings: HashMap<String, String> = env
            .iter()
            .filter(|(name, value)| !value.is_empty() && setting_for_env(name).is_some())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let mut builder = Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        // No separator: `MUSTER_NATS_URL` is the flat key `nats_url`, not `nats.url`.
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .source(Some(settings.into_iter().collect())),
        );
        let mut values = builder.build().and_then(|c| c.collect()).map_err(ConfigError::Load)?;

        let nats_servers = match values.remove("nats_url") {
            Some(v) => parse_servers(&v)?,
            None => parse_server_list(DEFAULT_NATS_URL).map_err(|reason| invalid("nats_url", None, reason))?,
        };
        let host_id = match values.remove("host_id") {
            Some(v) => {
                let text = string_value("host_id", &v)?;
                HostId::new(text.trim()).map_err(|e| invalid("host_id", Some(&v), e.to_string()))?
            }
            None => {
                let name = hostname.filter(|h| !h.trim().is_empty()).ok_or(ConfigError::NoHostname)?;
                HostId::from_hostname(name).map_err(|e| ConfigError::Invalid {
                    setting: format!("hostname {name:?} (used because MUSTER_HOST_ID is unset)"),
                    reason: e.to_string(),
                })?
            }
        };
        let prefix = match values.remove("prefix") {
            Some(v) => {
                let text = string_value("prefix", &v)?;
                validate_prefix(text.trim()).map_err(|reason| invalid("prefix", Some(&v), reason))?;
                text.trim().to_owned()
            }
            None => DEFAULT_PREFIX.to_owned(),
        };
        let labels = match values.remove("labels") {
            Some(v) => labels_value(&v)?,
            None => BTreeMap::new(),
        };
        let register_timeout_ms = match values.remove("register_timeout_ms") {
            Some(v) => integer_value("register_timeout_ms", &v, 1, u64::MAX)?,
            None => DEFAULT_REGISTER_TIMEOUT_MS,
        };
        let disk_full_percent = match values.remove("disk_full_percent") {
            Some(v) => integer_value("disk_full_percent", &v, 1, 100)?,
            None => u64::from(DEFAULT_DISK_FULL_PERCENT),
        };

        let max_parallel = optional_integer(&mut values, "max_parallel", 1, MAX_PARALLEL_LIMIT)?
            .unwrap_or(runner::DEFAULT_MAX_PARALLEL as u64);
        let progress_interval = optional_millis(&mut values, "progress_interval_ms", MIN_INTERVAL_MS)?
            .unwrap_or(runner::DEFAULT_PROGRESS_INTERVAL);
        let status_interval = optional_millis(&mut values, "status_interval_ms", MIN_INTERVAL_MS)?
            .unwrap_or(runner::DEFAULT_STATUS_INTERVAL);
        let defaults = RestartLimits::default();
        let auto_restart = RestartLimits {
            enabled: match values.remove("auto_restart") {
                Some(v) => bool_value("auto_restart", &v)?,
                None => defaults.enabled,
            },
            max_per_window: optional_u32(&mut values, "auto_restart_max_per_window")?
                .unwrap_or(defaults.max_per_window),
            window: optional_millis(&mut values, "auto_restart_window_ms", 1)?.unwrap_or(defaults.window),
            min_gap: optional_millis(&mut values, "auto_restart_min_gap_ms", 0)?.unwrap_or(defaults.min_gap),
            lifetime_max: optional_u32(&mut values, "auto_restart_lifetime_max")?.unwrap_or(defaults.lifetime_max),
        };
        let shutdown_grace =
            optional_millis(&mut values, "shutdown_grace_ms", 0)?.unwrap_or(runner::DEFAULT_SHUTDOWN_GRACE);

        // Only file keys can remain: the environment map was filtered to known settings above.
        if let Some((key, value)) = values.into_iter().next() {
            return Err(ConfigError::Unknown {
                key,
                origin: value.origin().unwrap_or("the configuration").to_owned(),
                known: SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
            });
        }

        Ok(Self {
            nats_servers,
            host_id,
            prefix,
            labels,
            register_timeout: Duration::from_millis(register_timeout_ms),
            disk_full_percent: u8::try_from(disk_full_percent).unwrap_or(100),
            max_parallel: usize::try_from(max_parallel).unwrap_or(runner::DEFAULT_MAX_PARALLEL),
            progress_interval,
            status_interval,
            auto_restart,
            shutdown_grace,
        })
    }
}

/// The `MUSTER_*` variables from an environment listing, as UTF-8. Non-agent variables are skipped, even if they
/// are not UTF-8.
pub fn agent_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::NotUnicode(name.to_owned()))?;
        env.insert(name.to_owned(), value);
    }
    Ok(env)
}

/// `MUSTER_*` variables that are neither a setting nor one of the agent's other variables: most likely typos,
/// worth a warning at startup.
pub fn unknown_env_vars(env: &HashMap<String, String>) -> Vec<String> {
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|name| setting_for_env(name).is_none() && *name != ENV_CONFIG_FILE && *name != ENV_LOG)
        .cloned()
        .collect();
    unknown.sort();
    unknown
}

/// The `--help` text listing every environment variable.
pub fn env_help() -> String {
    let mut out = String::from("Environment (overrides the config file, which overrides the defaults):\n");
    let rows = [
        (ENV_CONFIG_FILE, "(none)", "config file, same as --config"),
        (ENV_LOG, DEFAULT_LOG, "log filter, e.g. \"debug\" or \"muster_agent=debug,async_nats=warn\""),
    ];
    let all = rows.iter().copied().chain(SETTINGS.iter().map(|s| (s.env, s.default, s.meaning)));
    for (env, default, meaning) in all {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "  {env:<28} {meaning}\n  {:<28} default: {default}", "");
    }
    out.push_str("\nEvery setting can also be given in the TOML file under its lower-case name without the\nMUSTER_ prefix (e.g. nats_url = \"nats://10.0.0.1:4222\"; labels = { rack = \"r1\" }).\nAn empty variable counts as unset.");
    out
}

/// Parses `k=v,k2=v2` into labels. Whitespace around keys and values is ignored; empty entries are skipped.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) =
            entry.split_once('=').ok_or_else(|| format!("label {entry:?} is not of the form key=value"))?;
        insert_label(&mut labels, key.trim(), value.trim())?;
    }
    Ok(labels)
}

fn insert_label(labels: &mut BTreeMap<String, String>, key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("label with value {value:?} has an empty key"));
    }
    if key.contains(['=', ',']) {
        return Err(format!("label key {key:?} may not contain '=' or ','"));
    }
    if labels.insert(key.to_owned(), value.to_owned()).is_some() {
        return Err(format!("label {key:?} is given twice"));
    }
    Ok(())
}

fn setting_for_env(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == name)
}

/// Where a value came from, in the operator's words.
fn describe(key: &str, value: Option<&Value>) -> String {
    let env = SETTINGS.iter().find(|s| s.key == key).map_or(key, |s| s.env);
    match value.and_then(Value::origin) {
        Some("the environment") => env.to_owned(),
        Some(origin) => format!("{key} in {origin}"),
        None => format!("{key} in the config file"),
    }
}

fn invalid(key: &str, value: Option<&Value>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: describe(key, value), reason: reason.into() }
}

fn string_value(key: &str, value: &Value) -> Result<String, ConfigError> {
    match &value.kind {
        ValueKind::String(s) => Ok(s.clone()),
        _ => Err(invalid(key, Some(value), "expected a string")),
    }
}

fn integer_value(key: &str, value: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
    let parsed = match &value.kind {
        ValueKind::I64(n) => u64::try_from(*n).ok(),
        ValueKind::U64(n) => Some(*n),
        ValueKind::I128(n) => u64::try_from(*n).ok(),
        ValueKind::U128(n) => u64::try_from(*n).ok(),
        ValueKind::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => {
            let shown = match &value.kind {
                ValueKind::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            let range = if max == u64::MAX { format!("at least {min}") } else { format!("{min} to {max}") };
            Err(invalid(key, Some(value), format!("expected a whole number, {range}; got {shown}")))
        }
    }
}

fn optional_integer(
    values: &mut config::Map<String, Value>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    values.remove(key).map(|v| integer_value(key, &v, min, max)).transpose()
}

fn optional_u32(values: &mut config::Map<String, Value>, key: &str) -> Result<Option<u32>, ConfigError> {
    // The range check makes the conversion exact.
    Ok(optional_integer(values, key, 0, u64::from(u32::MAX))?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)))
}

fn optional_millis(
    values: &mut config::Map<String, Value>,
    key: &str,
    min: u64,
) -> Result<Option<Duration>, ConfigError> {
    Ok(optional_integer(values, key, min, u64::MAX)?.map(Duration::from_millis))
}

fn bool_value(key: &str, value: &Value) -> Result<bool, ConfigError> {
    match &value.kind {
        ValueKind::Boolean(b) => Ok(*b),
        ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid(key, Some(value), format!("expected true or false; got {s:?}"))),
        },
        other => Err(invalid(key, Some(value), format!("expected true or false; got {other}"))),
    }
}

fn labels_value(value: &Value) -> Result<BTreeMap<String, String>, ConfigError> {
    match &value.kind {
        ValueKind::String(text) => parse_labels(text).map_err(|reason| invalid("labels", Some(value), reason)),
        ValueKind::Table(table) => {
            let mut labels = BTreeMap::new();
            for (key, v) in table {
                let text = match &v.kind {
                    ValueKind::String(s) => s.clone(),
                    ValueKind::Boolean(_)
                    | ValueKind::I64(_)
                    | ValueKind::U64(_)
                    | ValueKind::I128(_)
                    | ValueKind::U128(_)
                    | ValueKind::Float(_) => v.kind.to_string(),
                    _ => return Err(invalid("labels", Some(value), format!("label {key:?} must be a string"))),
                };
                insert_label(&mut labels, key.trim(), text.trim())
                    .map_err(|reason| invalid("labels", Some(value), reason))?;
            }
            Ok(labels)
        }
        _ => Err(invalid("labels", Some(value), "expected a table or \"key=value,key2=value2\"")),
    }
}

fn parse_servers(value: &Value) -> Result<Vec<ServerAddr>, ConfigError> {
    let text = string_value("nats_url", value)?;
    parse_server_list(&text).map_err(|reason| invalid("nats_url", Some(value), reason))
}

fn parse_server_list(text: &str) -> Result<Vec<ServerAddr>, String> {
    let servers = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<ServerAddr>().map_err(|e| format!("{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("no server URL given".to_owned());
    }
    Ok(servers)
}

/// A prefix is one or more dot-separated subject tokens of `[A-Za-z0-9_-]`.
fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the prefix is empty".to_owned());
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err(format!("{prefix:?} has an empty token"));
        }
        if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("{prefix:?} contains {c:?}; tokens may hold only letters, digits, '-' and '_'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TomlText = config::File<config::FileSourceString, FileFormat>;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn toml(text: &str) -> Option<TomlText> {
        Some(config::File::from_str(text, FileFormat::Toml))
    }

    fn load(file: Option<TomlText>, pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_sources(file, &env(pairs), Some("Node1.example.com"))
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
        let file = config::File::from(path.as_path()).format(FileFormat::Toml);
        let result = AgentConfig::from_sources(Some(file), &env(&[]), Some("h"));
        std::fs::remove_file(&path).unwrap();
        let err = result.unwrap_err().to_string();
        // The config crate names the file relative to the working directory.
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.contains("register_timeout_ms in ") && err.contains(&name), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let file = config::File::from(Path::new("/nonexistent/muster-agent.toml")).format(FileFormat::Toml);
        let err = AgentConfig::from_sources(Some(file), &env(&[]), Some("h")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/muster-agent.toml"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = load(toml("hostid = \"x\""), &[]).unwrap_err();
        assert!(matches!(&err, ConfigError::Unknown { key, .. } if key == "hostid"), "{err}");
    }

    #[test]
    fn missing_hostname_without_host_id_is_a_clear_error() {
        let err = AgentConfig::from_sources(None::<TomlText>, &env(&[]), None).unwrap_err();
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
        assert_eq!(unknown_env_vars(&e), ["MUSTER_HOSTID"]);
    }

    #[test]
    fn help_lists_every_variable() {
        let help = env_help();
        for s in SETTINGS {
            assert!(help.contains(s.env), "{} missing from help", s.env);
        }
        assert!(help.contains(ENV_LOG) && help.contains(ENV_CONFIG_FILE));
    }
}
