//! The one layered-configuration engine of every muster binary: built-in defaults < a TOML file (`--config FILE`)
//! < `MUSTER_*` environment variables.
//!
//! Each binary declares its settings once, in a [`Table`] of [`Setting`]s (file key, variable, default, meaning);
//! the same table loads the values, rejects unknown file keys, lists unknown `MUSTER_*` variables, and renders
//! `--help` ([`Table::help`]) and the docs table ([`Table::markdown`], which a test compares with the docs).
//! Settings every binary shares ([`COMMON`]: the NATS URLs and the subject prefix) are one group; a binary adds
//! its own groups, so the server and the agent each have settings the other does not.
//!
//! Typed accessors on [`Values`] report a bad value in the operator's words: the variable they set
//! (`MUSTER_REGISTER_TIMEOUT_MS`) or `key in FILE`, never a serde path. An empty variable counts as unset (so
//! `MUSTER_X=` in a unit file falls back to the file or the default).
//!
//! ```
//! use muster_nats::settings::{DefaultValue, FileSource, Setting, Table, COMMON, LOG};
//!
//! const MISSES: Setting = Setting {
//!     key: "heartbeat_misses",
//!     env: "MUSTER_HEARTBEAT_MISSES",
//!     default: DefaultValue::Int(3),
//!     meaning: "missed intervals before a host is HEARTBEAT_LOST (>= 1)",
//! };
//! static TABLE: Table = Table { groups: &[COMMON, &[MISSES]], env_only: &[LOG] };
//!
//! let file = FileSource::parse("server.toml", "heartbeat_misses = 5").unwrap();
//! let env = [("MUSTER_PREFIX".to_owned(), "prod.muster".to_owned())].into();
//! let values = TABLE.load_from(Some(file), env).unwrap();
//! assert_eq!(values.integer(&MISSES, 1, u64::from(u32::MAX)).unwrap(), 5);
//! assert_eq!(values.subject_prefix(&muster_nats::settings::PREFIX).unwrap(), "prod.muster");
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_nats::ServerAddr;
use muster_schemas::subjects::{Subjects, DEFAULT_PREFIX};

use crate::urls::{parse_urls, DEFAULT_NATS_URL};

/// Prefix of every environment variable muster reads.
pub const ENV_PREFIX: &str = "MUSTER_";

/// A setting's default, as the code uses it and as `--help` and the docs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// A text value, read like a variable's value.
    Text(&'static str),
    /// A whole number.
    Int(u64),
    /// A switch, given as `true` or `false`.
    Bool(bool),
    /// Computed by the binary when the setting is not given (e.g. from the hostname); the text says how.
    Computed(&'static str),
    /// No value: the setting is optional.
    Unset,
}

impl DefaultValue {
    /// As an operator reads it: literal values in backticks (markdown), descriptions as they are.
    fn shown(self, code: bool) -> String {
        let literal = |v: String| if code { format!("`{v}`") } else { v };
        match self {
            Self::Text(t) => literal(t.to_owned()),
            Self::Int(n) => literal(n.to_string()),
            Self::Bool(b) => literal(b.to_string()),
            Self::Computed(how) => how.to_owned(),
            Self::Unset => "none".to_owned(),
        }
    }

    /// As a value, when it is one.
    fn value(self) -> Option<toml::Value> {
        match self {
            Self::Text(t) => Some(toml::Value::String(t.to_owned())),
            // Defaults are small numbers; one beyond i64 would be a bug the tests' default load catches.
            Self::Int(n) => {
                Some(i64::try_from(n).map_or_else(|_| toml::Value::String(n.to_string()), toml::Value::Integer))
            }
            Self::Bool(b) => Some(toml::Value::Boolean(b)),
            Self::Computed(_) | Self::Unset => None,
        }
    }
}

/// One setting: given as `key` in the TOML file or as the variable `env`, else `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Key in the TOML file: the variable's name in lower case without `MUSTER_`.
    pub key: &'static str,
    /// Environment variable: `MUSTER_` followed by the key in upper case; it overrides the file.
    pub env: &'static str,
    /// Value when neither the file nor the variable gives one; shown in `--help` and the docs.
    pub default: DefaultValue,
    /// What it means, in one line (also its row in the docs).
    pub meaning: &'static str,
}

/// A variable a binary reads itself, outside the engine (the log filter, the config file's path): listed in
/// `--help` and the docs, and not reported as unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// Its full name (e.g. `MUSTER_LOG`, `MUSTER_CONFIG`), read by the binary itself rather than the engine.
    pub env: &'static str,
    /// What applies when it is not set, as `--help` and the docs show it.
    pub default: DefaultValue,
    /// What it means.
    pub meaning: &'static str,
}

/// `MUSTER_NATS_URL`: every muster process connects to NATS.
pub const NATS_URL: Setting = Setting {
    key: "nats_url",
    env: "MUSTER_NATS_URL",
    default: DefaultValue::Text(DEFAULT_NATS_URL),
    meaning: "NATS server URL; several (every node of a cluster) separated by commas",
};

/// `MUSTER_PREFIX`: the servers, agents and CLI of one cluster must agree on it.
pub const PREFIX: Setting = Setting {
    key: "prefix",
    env: "MUSTER_PREFIX",
    default: DefaultValue::Text(DEFAULT_PREFIX),
    meaning: concat!(
        "subject prefix (dot-separated tokens of letters, digits, - and _); ",
        "must be the same on every server, agent and CLI of a cluster"
    ),
};

/// The settings every binary shares.
pub const COMMON: &[Setting] = &[NATS_URL, PREFIX];

/// `MUSTER_LOG`: the log filter, read by each binary's tracing setup.
pub const LOG: EnvVar = EnvVar {
    env: "MUSTER_LOG",
    default: DefaultValue::Text("info"),
    meaning:
        "log filter (tracing EnvFilter syntax), e.g. debug or muster_server=debug,async_nats=warn; logs go to stderr",
};

/// `MUSTER_CONFIG`: the config file, for binaries that also take it from the environment.
pub const CONFIG: EnvVar =
    EnvVar { env: "MUSTER_CONFIG", default: DefaultValue::Unset, meaning: "TOML config file, same as --config FILE" };

/// A binary's settings: groups of [`Setting`]s (e.g. [`COMMON`] and its own) and the variables it reads itself.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The settings, in groups, in the order `--help` and the docs list them.
    pub groups: &'static [&'static [Setting]],
    /// Variables the binary reads outside the engine.
    pub env_only: &'static [EnvVar],
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The config file's path as given.
        path: String,
        /// The I/O error reading it (e.g. not found, permission denied).
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("cannot parse the config file {origin}: {reason}")]
    Parse {
        /// The config file's path (or the name tests give the text), as the message shows it.
        origin: String,
        /// The parser's message (it gives the line).
        reason: String,
    },
    /// A value was given but is not valid.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// Where it came from: the variable, `key in FILE`, or `the default of key`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds a key the binary does not know (most likely a typo).
    #[error("unknown setting `{key}` in {origin}; known settings: {known}")]
    Unknown {
        /// The unknown key.
        key: String,
        /// The config file's path the key was found in.
        origin: String,
        /// The known keys, for the message.
        known: String,
    },
    /// A `MUSTER_*` variable is not valid UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// A setting without a default was not given (the binary should have computed it instead of asking).
    #[error("{0} is not set and has no default")]
    Missing(String),
}

/// A parsed config file and the name to report it by.
#[derive(Debug, Clone)]
pub struct FileSource {
    origin: String,
    table: toml::Table,
}

impl FileSource {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, SettingsError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: origin.clone(), source })?;
        Self::parse(origin, &text)
    }

    /// Parses `text`, reported as `origin` (tests pass the text directly).
    pub fn parse(origin: impl Into<String>, text: &str) -> Result<Self, SettingsError> {
        let origin = origin.into();
        match text.parse::<toml::Table>() {
            Ok(table) => Ok(Self { origin, table }),
            Err(e) => Err(SettingsError::Parse { origin, reason: e.to_string() }),
        }
    }
}

/// The `MUSTER_*` variables of an environment listing, as UTF-8; other variables are skipped, even if they are
/// not UTF-8.
pub fn env_vars(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<HashMap<String, String>, SettingsError> {
    let mut env = HashMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| SettingsError::NotUnicode(name.to_owned()))?;
        env.insert(name.to_owned(), value);
    }
    Ok(env)
}

impl Table {
    /// Every setting, in order.
    pub fn settings(&self) -> impl Iterator<Item = &'static Setting> {
        self.groups.iter().flat_map(|g| g.iter())
    }

    /// Loads from `file` (if any) and the process environment.
    pub fn load(&self, file: Option<&Path>) -> Result<Values, SettingsError> {
        let file = file.map(FileSource::read).transpose()?;
        self.load_from(file, env_vars(std::env::vars_os())?)
    }

    /// Loads from an explicit file and `MUSTER_*` variables (tests use this instead of the process environment).
    /// A key of the file that is no setting is refused.
    pub fn load_from(&self, file: Option<FileSource>, env: HashMap<String, String>) -> Result<Values, SettingsError> {
        if let Some(f) = &file {
            // Sorted, so the error names the same key on every run.
            let mut keys: Vec<&String> = f.table.keys().collect();
            keys.sort();
            if let Some(key) = keys.into_iter().find(|k| !self.settings().any(|s| s.key == k.as_str())) {
                return Err(SettingsError::Unknown {
                    key: key.clone(),
                    origin: f.origin.clone(),
                    known: self.settings().map(|s| s.key).collect::<Vec<_>>().join(", "),
                });
            }
        }
        Ok(Values { file, env })
    }

    /// `MUSTER_*` variables of `env` that are neither a setting nor a variable the binary reads itself: most
    /// likely typos, worth a warning at startup.
    pub fn unknown_env_vars(&self, env: &HashMap<String, String>) -> Vec<String> {
        let mut unknown: Vec<String> = env
            .keys()
            .filter(|name| !self.settings().any(|s| s.env == name.as_str()))
            .filter(|name| !self.env_only.iter().any(|v| v.env == name.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        unknown
    }

    /// The settings part of `--help`.
    pub fn help(&self) -> String {
        let mut out =
            String::from("Settings (defaults < --config FILE < environment; an empty variable counts as unset):\n");
        let rows = self.env_only.iter().map(|v| (v.env, v.default, v.meaning));
        for (env, default, meaning) in rows.chain(self.settings().map(|s| (s.env, s.default, s.meaning))) {
            // Writing into a String cannot fail.
            let _ = writeln!(out, "  {env:<36} {meaning}\n  {:<36} default: {}", "", default.shown(false));
        }
        out.push_str("\nIn the config file a setting is its variable's name in lower case without MUSTER_\n");
        out.push_str("(e.g. nats_url = \"nats://10.0.0.1:4222\").");
        out
    }

    /// The docs table: `| variable | file key | default | meaning |`, the variables the binary reads itself first.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| variable | file key | default | meaning |\n|---|---|---|---|\n");
        for v in self.env_only {
            let _ = writeln!(out, "| `{}` | — | {} | {} |", v.env, v.default.shown(true), v.meaning);
        }
        for s in self.settings() {
            let _ = writeln!(out, "| `{}` | `{}` | {} | {} |", s.env, s.key, s.default.shown(true), s.meaning);
        }
        out
    }
}

/// The loaded sources of one binary's settings, read through typed accessors.
#[derive(Debug, Clone)]
pub struct Values {
    file: Option<FileSource>,
    env: HashMap<String, String>,
}

/// One value and where it came from, in the operator's words.
struct Found<'a> {
    value: Cow<'a, toml::Value>,
    origin: String,
}

impl Found<'_> {
    fn invalid(&self, reason: impl Into<String>) -> SettingsError {
        SettingsError::Invalid { setting: self.origin.clone(), reason: reason.into() }
    }

    /// The value as the operator wrote it, for messages.
    fn shown(&self) -> String {
        match self.value.as_ref() {
            toml::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }

    fn text(&self) -> Result<&str, SettingsError> {
        match self.value.as_ref() {
            toml::Value::String(s) => Ok(s.trim()),
            _ => Err(self.invalid(format!("expected a string; got {}", self.shown()))),
        }
    }
}

impl Values {
    /// Whether the operator gave `setting` (a non-empty variable, or the key in the file).
    pub fn is_set(&self, setting: &Setting) -> bool {
        self.given(setting).is_some()
    }

    fn given(&self, s: &Setting) -> Option<Found<'_>> {
        if let Some(text) = self.env.get(s.env).filter(|v| !v.is_empty()) {
            return Some(Found { value: Cow::Owned(toml::Value::String(text.clone())), origin: s.env.to_owned() });
        }
        let file = self.file.as_ref()?;
        let value = file.table.get(s.key)?;
        Some(Found { value: Cow::Borrowed(value), origin: format!("{} in {}", s.key, file.origin) })
    }

    fn find(&self, s: &Setting) -> Option<Found<'_>> {
        self.given(s).or_else(|| {
            let value = s.default.value()?;
            Some(Found { value: Cow::Owned(value), origin: format!("the default of {}", s.key) })
        })
    }

    fn required(&self, s: &Setting) -> Result<Found<'_>, SettingsError> {
        self.find(s).ok_or_else(|| SettingsError::Missing(s.env.to_owned()))
    }

    /// A text setting, trimmed.
    pub fn string(&self, s: &Setting) -> Result<String, SettingsError> {
        Ok(self.required(s)?.text()?.to_owned())
    }

    /// A text setting whose default is computed by the binary or absent: `None` when not given.
    pub fn optional_string(&self, s: &Setting) -> Result<Option<String>, SettingsError> {
        self.find(s).map(|f| f.text().map(str::to_owned)).transpose()
    }

    /// A setting parsed with `T`'s `FromStr` (a role, a path); the parse error is the reason shown.
    pub fn parse<T>(&self, s: &Setting) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let found = self.required(s)?;
        let text = found.text()?;
        text.parse().map_err(|e: T::Err| found.invalid(format!("{e}; got {}", found.shown())))
    }

    /// A whole number in `min..=max`.
    pub fn integer(&self, s: &Setting, min: u64, max: u64) -> Result<u64, SettingsError> {
        let found = self.required(s)?;
        let parsed = match found.value.as_ref() {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(text) => text.trim().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => {
                let range = if max == u64::MAX { format!("at least {min}") } else { format!("{min} to {max}") };
                Err(found.invalid(format!("expected a whole number, {range}; got {}", found.shown())))
            }
        }
    }

    /// A number of milliseconds, at least `min_ms`.
    pub fn millis(&self, s: &Setting, min_ms: u64) -> Result<Duration, SettingsError> {
        self.integer(s, min_ms, u64::MAX).map(Duration::from_millis)
    }

    /// A switch: `true`/`false` in the file; also `1`/`0`, `yes`/`no`, `on`/`off` (any case) in a variable.
    pub fn bool(&self, s: &Setting) -> Result<bool, SettingsError> {
        let found = self.required(s)?;
        match found.value.as_ref() {
            toml::Value::Boolean(b) => Ok(*b),
            toml::Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(found.invalid(format!("expected true or false; got {}", found.shown()))),
            },
            _ => Err(found.invalid(format!("expected true or false; got {}", found.shown()))),
        }
    }

    /// Labels: `k=v,k2=v2` in a variable (or a string in the file), or a table in the file; none when not given.
    pub fn labels(&self, s: &Setting) -> Result<BTreeMap<String, String>, SettingsError> {
        let Some(found) = self.find(s) else { return Ok(BTreeMap::new()) };
        match found.value.as_ref() {
            toml::Value::String(text) => parse_labels(text).map_err(|reason| found.invalid(reason)),
            toml::Value::Table(table) => {
                let mut labels = BTreeMap::new();
                for (key, v) in table {
                    let text = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => v.to_string(),
                        _ => return Err(found.invalid(format!("label {key:?} must be a string"))),
                    };
                    insert_label(&mut labels, key.trim(), text.trim()).map_err(|reason| found.invalid(reason))?;
                }
                Ok(labels)
            }
            _ => Err(found.invalid("expected a table or \"key=value,key2=value2\"")),
        }
    }

    /// A comma-separated list of NATS URLs (at least one).
    pub fn urls(&self, s: &Setting) -> Result<Vec<ServerAddr>, SettingsError> {
        let found = self.required(s)?;
        parse_urls(found.text()?).map_err(|e| found.invalid(e.to_string()))
    }

    /// A subject prefix, checked by [`Subjects::checked`].
    pub fn subject_prefix(&self, s: &Setting) -> Result<String, SettingsError> {
        let found = self.required(s)?;
        let text = found.text()?;
        Subjects::checked(text).map(|_| text.to_owned()).map_err(|e| found.invalid(e.reason))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const COUNT: Setting =
        Setting { key: "count", env: "MUSTER_COUNT", default: DefaultValue::Int(4), meaning: "how many (1-256)" };
    const INTERVAL: Setting = Setting {
        key: "interval_ms",
        env: "MUSTER_INTERVAL_MS",
        default: DefaultValue::Int(5_000),
        meaning: "how often (>= 100)",
    };
    const SWITCH: Setting =
        Setting { key: "switch", env: "MUSTER_SWITCH", default: DefaultValue::Bool(true), meaning: "on or off" };
    const LABELS: Setting =
        Setting { key: "labels", env: "MUSTER_LABELS", default: DefaultValue::Unset, meaning: "host labels" };
    const ID: Setting =
        Setting { key: "id", env: "MUSTER_ID", default: DefaultValue::Computed("the hostname"), meaning: "its id" };
    static TABLE: Table = Table { groups: &[COMMON, &[COUNT, INTERVAL, SWITCH, LABELS, ID]], env_only: &[CONFIG, LOG] };
    /// A binary without the switch, to show tables differ per binary.
    static OTHER: Table = Table { groups: &[COMMON, &[COUNT]], env_only: &[LOG] };

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn load(file: Option<&str>, pairs: &[(&str, &str)]) -> Values {
        let file = file.map(|text| FileSource::parse("test.toml", text).unwrap());
        TABLE.load_from(file, env(pairs)).unwrap()
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let v = load(None, &[]);
        let urls: Vec<String> = v.urls(&NATS_URL).unwrap().into_iter().map(|u| u.into_inner().to_string()).collect();
        assert_eq!(urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(v.subject_prefix(&PREFIX).unwrap(), "muster");
        assert_eq!(v.integer(&COUNT, 1, 256).unwrap(), 4);
        assert_eq!(v.millis(&INTERVAL, 100).unwrap(), Duration::from_secs(5));
        assert!(v.bool(&SWITCH).unwrap());
        assert!(v.labels(&LABELS).unwrap().is_empty());
        assert_eq!(v.optional_string(&ID).unwrap(), None);
        assert!(!v.is_set(&ID));
        assert!(matches!(v.string(&ID), Err(SettingsError::Missing(name)) if name == "MUSTER_ID"));
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let file = "count = 8\ninterval_ms = 1000\nswitch = false\nid = \"from-file\"\n[labels]\nrack = \"r1\"\n";
        let v = load(Some(file), &[("MUSTER_COUNT", "2"), ("MUSTER_LABELS", "zone=a, tier=db"), ("MUSTER_ID", "")]);
        assert_eq!(v.integer(&COUNT, 1, 256).unwrap(), 2);
        assert_eq!(v.millis(&INTERVAL, 100).unwrap(), Duration::from_secs(1));
        assert!(!v.bool(&SWITCH).unwrap());
        assert_eq!(
            v.labels(&LABELS).unwrap(),
            BTreeMap::from([("tier".into(), "db".into()), ("zone".into(), "a".into())])
        );
        assert_eq!(v.optional_string(&ID).unwrap().as_deref(), Some("from-file"), "an empty variable is unset");
        let v = load(Some(file), &[]);
        assert_eq!(v.labels(&LABELS).unwrap(), BTreeMap::from([("rack".into(), "r1".into())]));
        for (text, on) in [("TRUE", true), ("on", true), ("1", true), ("no", false), ("Off", false)] {
            assert_eq!(load(None, &[("MUSTER_SWITCH", text)]).bool(&SWITCH).unwrap(), on, "{text}");
        }
    }

    #[test]
    fn invalid_variables_are_named() {
        type Read = fn(&Values) -> Result<(), SettingsError>;
        let cases: [(&str, &str, Read); 9] = [
            ("MUSTER_COUNT", "0", |v| v.integer(&COUNT, 1, 256).map(drop)),
            ("MUSTER_COUNT", "257", |v| v.integer(&COUNT, 1, 256).map(drop)),
            ("MUSTER_COUNT", "-1", |v| v.integer(&COUNT, 1, 256).map(drop)),
            ("MUSTER_INTERVAL_MS", "10s", |v| v.millis(&INTERVAL, 100).map(drop)),
            ("MUSTER_SWITCH", "maybe", |v| v.bool(&SWITCH).map(drop)),
            ("MUSTER_LABELS", "rack", |v| v.labels(&LABELS).map(drop)),
            ("MUSTER_LABELS", "a=1,a=2", |v| v.labels(&LABELS).map(drop)),
            ("MUSTER_PREFIX", "a..b", |v| v.subject_prefix(&PREFIX).map(drop)),
            ("MUSTER_NATS_URL", "nats://host:notaport", |v| v.urls(&NATS_URL).map(drop)),
        ];
        for (name, value, read) in cases {
            let err = read(&load(None, &[(name, value)])).expect_err(name).to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn invalid_file_values_name_the_key_and_file() {
        let err = load(Some("count = \"lots\""), &[]).integer(&COUNT, 1, 256).unwrap_err().to_string();
        assert!(err.contains("count in test.toml") && err.contains("\"lots\""), "{err}");
        let err = load(Some("switch = 3"), &[]).bool(&SWITCH).unwrap_err().to_string();
        assert!(err.contains("switch in test.toml"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "interval_ms = -5\n").unwrap();
        let err = TABLE.load(Some(&path)).unwrap().millis(&INTERVAL, 100).unwrap_err().to_string();
        assert!(err.contains(&format!("interval_ms in {}", path.display())), "{err}");
    }

    #[test]
    fn missing_or_broken_files_and_unknown_keys_are_refused() {
        let err = TABLE.load(Some(Path::new("/nonexistent/muster.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/muster.toml"), "{err}");
        assert!(matches!(FileSource::parse("x.toml", "count = "), Err(SettingsError::Parse { .. })));
        let file = FileSource::parse("x.toml", "switch = true").unwrap();
        let err = OTHER.load_from(Some(file), HashMap::new()).unwrap_err();
        assert!(
            matches!(&err, SettingsError::Unknown { key, origin, .. } if key == "switch" && origin == "x.toml"),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_muster_variables_are_refused_and_others_skipped() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff]);
        assert!(env_vars([(OsString::from("OTHER"), bad.clone())]).unwrap().is_empty());
        let err = env_vars([(OsString::from("MUSTER_ID"), bad)]).unwrap_err();
        assert!(matches!(err, SettingsError::NotUnicode(name) if name == "MUSTER_ID"));
    }

    #[test]
    fn unknown_variables_are_listed() {
        let e = env(&[("MUSTER_HOSTID", "x"), ("MUSTER_LOG", "info"), ("MUSTER_CONFIG", "f"), ("MUSTER_COUNT", "1")]);
        assert_eq!(TABLE.unknown_env_vars(&e), ["MUSTER_HOSTID"]);
        assert_eq!(OTHER.unknown_env_vars(&e), ["MUSTER_CONFIG", "MUSTER_HOSTID"]);
    }

    #[test]
    fn help_and_docs_list_every_variable_with_its_default() {
        let help = TABLE.help();
        let docs = TABLE.markdown();
        for s in TABLE.settings() {
            assert!(help.contains(s.env) && docs.contains(&format!("| `{}` | `{}` |", s.env, s.key)), "{}", s.env);
        }
        assert!(help.contains("MUSTER_LOG") && help.contains("MUSTER_CONFIG"));
        assert!(docs.contains("| `MUSTER_COUNT` | `count` | `4` | how many (1-256) |"), "{docs}");
        assert!(docs.contains("| `MUSTER_ID` | `id` | the hostname | its id |"), "{docs}");
        assert!(docs.contains("| `MUSTER_CONFIG` | — | none |"), "{docs}");
    }
}
