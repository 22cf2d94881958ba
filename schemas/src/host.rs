//! Hosts: the facts an agent reports, the host state machine's states, and the record the server persists.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{parse_name, UnknownName};
use crate::{HostId, UnixMillis};

/// Host states, with the names Ambari's host FSM gives them (shown as is by the CLI and in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HostState {
    /// Known but not (or no longer) registered.
    Init,
    /// Registered; waiting for the first heartbeat with the host's status.
    WaitingForHostStatusUpdates,
    /// Heartbeating and reporting itself healthy.
    Healthy,
    /// Heartbeating but reporting a problem (see [`Health::problems`]).
    Unhealthy,
    /// No heartbeat within `interval × misses`.
    HeartbeatLost,
}

impl HostState {
    /// Every state, in the order of the host FSM.
    pub const ALL: [Self; 5] =
        [Self::Init, Self::WaitingForHostStatusUpdates, Self::Healthy, Self::Unhealthy, Self::HeartbeatLost];

    /// The reference name, as shown by the CLI and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::WaitingForHostStatusUpdates => "WAITING_FOR_HOST_STATUS_UPDATES",
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::HeartbeatLost => "HEARTBEAT_LOST",
        }
    }

    /// Whether the host is expected to be heartbeating (so the liveness monitor watches it).
    pub fn expects_heartbeats(self) -> bool {
        matches!(self, Self::WaitingForHostStatusUpdates | Self::Healthy | Self::Unhealthy)
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostState {
    type Err = UnknownName;

    /// Parses the reference name ([`HostState::as_str`]), as a `state:<HOST_STATE>` selector term holds it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("host state", &Self::ALL, s)
    }
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path it is mounted at (e.g. `/`, `/var`).
    pub mount_point: String,
    /// Filesystem type (ext4, overlay, ...).
    pub fs_type: String,
    /// Size of the filesystem in bytes, as `statvfs` reports it.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

/// The hardware and OS profile an agent sends on registration (Ambari's host facts).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// The machine's own hostname (before encoding into a host id).
    pub hostname: String,
    /// Logical CPUs (hardware threads) the agent sees.
    pub cpu_count: u32,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Available memory in bytes at registration time.
    pub memory_available_bytes: u64,
    /// Mounted filesystems with free space.
    pub mounts: Vec<Mount>,
    /// OS family/name (e.g. "Debian GNU/Linux").
    pub os_name: String,
    /// OS release (e.g. "12").
    pub os_version: String,
    /// Kernel release string (`uname -r`, e.g. "6.1.0-18-amd64").
    pub kernel_version: String,
    /// CPU architecture as `uname -m` names it (e.g. "x86_64", "aarch64").
    pub arch: String,
    /// Non-loopback IP addresses.
    pub ip_addresses: Vec<String>,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Timezone name, when the host has one configured.
    pub timezone: String,
    /// Set when the agent runs in a container: then `cpu_count`, `memory_total_bytes` and
    /// `memory_available_bytes` are the container's (its cgroup limits, where lower than the host's),
    /// `ip_addresses` its own interfaces' and `mounts` what it sees. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerFacts>,
}

/// What an agent running in a container knows about that container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerFacts {
    /// The container's id as its runtime names it (64 hex digits for Docker, Podman and containerd), when the
    /// agent could find it (in `/proc/self/mountinfo` or its cgroup path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Logical CPUs of the machine the container runs on (`cpu_count` is lower when a `cpu.max` quota allows
    /// fewer).
    #[serde(default)]
    pub host_cpu_count: u32,
    /// Memory of the machine the container runs on, in bytes (`memory_total_bytes` is lower when the cgroup's
    /// memory limit is).
    #[serde(default)]
    pub host_memory_total_bytes: u64,
}

/// The health an agent reports in each heartbeat: HEALTHY vs UNHEALTHY.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Health {
    /// Human-readable problems; empty means healthy.
    pub problems: Vec<String>,
}

impl Health {
    /// True when there is no problem.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the server persists per host (redb table `hosts`, and in the txn log as the *result* of a transition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host id: its subject token and the key of the `hosts` table.
    pub id: HostId,
    /// Current host state.
    pub state: HostState,
    /// Facts from the latest registration.
    pub facts: HostFacts,
    /// Labels from the agent's config (used by blueprints and selectors).
    pub labels: BTreeMap<String, String>,
    /// Agent version from the latest registration.
    pub agent_version: String,
    /// When the agent process started (from the latest registration).
    pub agent_started_at: UnixMillis,
    /// When the host first registered.
    pub first_registered_at: UnixMillis,
    /// When the host last registered.
    pub registered_at: UnixMillis,
    /// How many times the host has registered.
    pub registrations: u64,
    /// When `state` last changed.
    pub state_since: UnixMillis,
    /// Problems from the heartbeat that made the host UNHEALTHY (empty otherwise).
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_match_serde() {
        for state in HostState::ALL {
            assert_eq!(state.as_str().parse::<HostState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert!("healthy".parse::<HostState>().is_err(), "names are case-sensitive, as on the wire");
        assert!("".parse::<HostState>().is_err());
    }

    #[test]
    fn container_facts_are_optional_on_the_wire() {
        use crate::{decode, encode};
        let bare = HostFacts { hostname: "web-1".into(), cpu_count: 8, ..HostFacts::default() };
        let bytes = encode(&bare);
        // Without a container nothing new is sent: an older server or agent sees the facts it always saw.
        assert!(!bytes.windows(b"container".len()).any(|w| w == b"container"));
        assert_eq!(decode::<HostFacts>(&bytes, usize::MAX).unwrap(), bare);

        let contained = HostFacts {
            cpu_count: 2,
            container: Some(ContainerFacts {
                id: Some("ab".repeat(32)),
                host_cpu_count: 8,
                host_memory_total_bytes: 1 << 34,
            }),
            ..bare.clone()
        };
        assert_eq!(decode::<HostFacts>(&encode(&contained), usize::MAX).unwrap(), contained);
        // A container without a known id, and one sent without the host totals, still decode.
        let mut json = serde_json::to_value(&bare).unwrap();
        json["container"] = serde_json::json!({"host_cpu_count": 4});
        let facts: HostFacts = serde_json::from_value(json).unwrap();
        assert_eq!(facts.container, Some(ContainerFacts { id: None, host_cpu_count: 4, host_memory_total_bytes: 0 }));
    }
}
