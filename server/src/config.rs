//! Server configuration: defaults < config file (`--config FILE`) < `MUSTER_<NAME>` environment variables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every setting of `muster-server`. Field docs are the reference (docs/configuration.md mirrors them).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// NATS URL(s), comma-separated (`MUSTER_NATS_URL`).
    pub nats_url: String,
    /// Subject prefix (`MUSTER_PREFIX`).
    pub prefix: String,
    /// Directory holding `muster.redb` (`MUSTER_DATA_DIR`).
    pub data_dir: PathBuf,
    /// This instance's stable id (`MUSTER_SERVER_ID`); defaults to the hostname.
    pub server_id: String,
    /// Heartbeat interval handed to agents, in ms (`MUSTER_HEARTBEAT_INTERVAL_MS`).
    pub heartbeat_interval_ms: u64,
    /// Missed intervals before HEARTBEAT_LOST (`MUSTER_HEARTBEAT_MISSES`).
    pub heartbeat_misses: u32,
    /// Leader lease TTL in ms (`MUSTER_LEASE_TTL_MS`): how long a dead leader blocks a successor.
    pub lease_ttl_ms: u64,
    /// Registrations in flight on the leader before new ones are told to back off (`MUSTER_MAX_REGISTRATIONS_IN_FLIGHT`).
    pub max_registrations_in_flight: usize,
    /// JetStream replicas of muster's streams and buckets (`MUSTER_REPLICAS`); 0 = follow the NATS cluster: 3 when
    /// connected to a cluster of 3 or more nodes, otherwise 1.
    pub replicas: usize,
    /// Added to a task's timeout before the leader stops waiting for its report and re-sends it
    /// (`MUSTER_TASK_GRACE_MS`).
    pub task_grace_ms: u64,
    /// Applied log entries between snapshots; the log is trimmed behind each (`MUSTER_SNAPSHOT_EVERY`).
    pub snapshot_every: u64,
    /// `voter` (may lead; follower otherwise) or `observer` (never campaigns) (`MUSTER_ROLE`).
    pub role: ServerRole,
}

/// Whether an instance may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Campaigns for the lease; leader or follower.
    Voter,
    /// Never campaigns; applies the log and serves reads.
    Observer,
}

/// Every setting with its environment variable, default and meaning: printed by `--help`, checked by a test
/// against docs/configuration.md.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("MUSTER_NATS_URL", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated"),
    ("MUSTER_PREFIX", "muster", "subject prefix of every muster subject"),
    ("MUSTER_DATA_DIR", "./data", "directory of the redb state file muster.redb"),
    ("MUSTER_SERVER_ID", "<hostname>", "stable id of this server instance"),
    ("MUSTER_HEARTBEAT_INTERVAL_MS", "3000", "heartbeat interval given to agents"),
    ("MUSTER_HEARTBEAT_MISSES", "3", "missed intervals before a host is HEARTBEAT_LOST"),
    ("MUSTER_LEASE_TTL_MS", "2000", "leader lease TTL; bounds failover time"),
    ("MUSTER_MAX_REGISTRATIONS_IN_FLIGHT", "8192", "admission limit for registrations"),
    ("MUSTER_REPLICAS", "0", "JetStream replicas of muster's streams and buckets; 0 = 3 on a 3+ node cluster, else 1"),
    ("MUSTER_TASK_GRACE_MS", "10000", "extra wait past a task's timeout before it is re-sent"),
    ("MUSTER_SNAPSHOT_EVERY", "10000", "log entries between state snapshots (the log is trimmed behind each)"),
    ("MUSTER_ROLE", "voter", "voter (may lead) or observer (never campaigns)"),
    ("MUSTER_LOG", "info", "tracing filter (e.g. muster_server=debug)"),
];

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or a variable could not be read or parsed.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Loads from `file` (optional) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Loads from `file` (optional) and the given environment (so tests need not touch the process environment).
    pub fn load_from(file: Option<&Path>, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let hostname = sysinfo_hostname();
        let mut b = config::Config::builder()
            .set_default("nats_url", "nats://127.0.0.1:4222")?
            .set_default("prefix", muster_schemas::subjects::DEFAULT_PREFIX)?
            .set_default("data_dir", "./data")?
            .set_default("server_id", hostname)?
            .set_default("heartbeat_interval_ms", 3000)?
            .set_default("heartbeat_misses", 3)?
            .set_default("lease_ttl_ms", 2000)?
            .set_default("max_registrations_in_flight", 8192)?
            .set_default("replicas", 0)?
            .set_default("role", "voter")?
            .set_default("task_grace_ms", 10_000)?
            .set_default("snapshot_every", 10_000)?;
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml).required(true));
        }
        // MUSTER_LOG is read by the binary's tracing setup, not a config field.
        let env: HashMap<String, String> = env.into_iter().filter(|(k, _)| k != "MUSTER_LOG").collect();
        b = b.add_source(config::Environment::with_prefix("MUSTER").try_parsing(true).source(Some(env)));
        let cfg: Self = b.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.heartbeat_interval_ms < 100 {
            return bad("MUSTER_HEARTBEAT_INTERVAL_MS must be at least 100");
        }
        if self.heartbeat_misses == 0 {
            return bad("MUSTER_HEARTBEAT_MISSES must be at least 1");
        }
        if self.lease_ttl_ms < 300 {
            return bad("MUSTER_LEASE_TTL_MS must be at least 300");
        }
        if self.snapshot_every == 0 {
            return bad("MUSTER_SNAPSHOT_EVERY must be at least 1");
        }
        if self.max_registrations_in_flight == 0 {
            return bad("MUSTER_MAX_REGISTRATIONS_IN_FLIGHT must be at least 1");
        }
        if self.replicas > 5 {
            return bad("MUSTER_REPLICAS must be between 0 (auto) and 5");
        }
        if self.server_id.is_empty() || self.server_id.contains(['.', '*', '>', ' ']) {
            return bad("MUSTER_SERVER_ID must be non-empty and contain no '.', '*', '>' or spaces");
        }
        Ok(())
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

fn sysinfo_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().replace(['.', '*', '>', ' '], "_"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "muster-server".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_detect_a_dead_host_within_ten_seconds() {
        let c = ServerConfig::load_from(None, env(&[])).unwrap();
        assert_eq!(c.heartbeat_interval_ms, 3000);
        assert_eq!(c.heartbeat_misses, 3);
        assert!(c.heartbeat_deadline() < Duration::from_secs(10));
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "heartbeat_misses = 5\nheartbeat_interval_ms = 1000\n").unwrap();
        let c = ServerConfig::load_from(Some(&f), env(&[("MUSTER_HEARTBEAT_INTERVAL_MS", "500")])).unwrap();
        assert_eq!(c.heartbeat_misses, 5);
        assert_eq!(c.heartbeat_interval_ms, 500);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = ServerConfig::load_from(None, env(&[("MUSTER_HEARTBEAT_MISSES", "0")])).unwrap_err();
        assert!(e.to_string().contains("MUSTER_HEARTBEAT_MISSES"), "{e}");
        let e = ServerConfig::load_from(None, env(&[("MUSTER_HEARTBEAT_INTERVAL_MS", "soon")])).unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval_ms"), "{e}");
    }

    #[test]
    fn help_lists_every_field() {
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
            "role",
        ] {
            let var = format!("MUSTER_{}", field.to_ascii_uppercase());
            assert!(SETTINGS.iter().any(|(v, _, _)| *v == var), "{var} missing from SETTINGS");
        }
    }
}
