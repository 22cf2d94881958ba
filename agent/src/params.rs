//! The parameters of the runtime modules, each with its default and the reason for it. A leaf: the session,
//! the command path and the swarm take these structs, never the configuration; [`crate::config`] builds them
//! from the operator's settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_schemas::limits::MAX_OUTPUT_BYTES;
use muster_schemas::{HostId, Subjects, UnixMillis};
use muster_security::command::CommandVerifier;

use crate::stats::SessionStats;

/// Default registration timeout. Ambari's server gives a registration 8 s; the leader here answers in
/// milliseconds unless it is at its admission limit, and then it answers `busy` rather than staying silent, so
/// 5 s only expires when nobody is really there.
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Default disk threshold: above 95% used, services start failing writes (ext4 keeps 5% for root), so the host
/// is reported UNHEALTHY while there is still time to act.
pub const DEFAULT_DISK_FULL_PERCENT: u8 = 95;

/// Default commands running at once (over all components): Ambari's agent runs a handful in parallel, and the
/// agent is meant to stay a small guest on its host.
pub const DEFAULT_MAX_PARALLEL: usize = 4;

/// Default interval of IN_PROGRESS reports while a command runs (Ambari: command reports every 5 s).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Default interval of status checks (Ambari sends component status every 20 s; checks here are cheap local
/// processes and only changes are reported, so twice as often).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Default time running commands get to finish at shutdown: `docker stop`'s own default grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Auto-restart is on by default: the server says which components should run, and keeping them running is the
/// agent's job (Ambari's recovery is on for the same reason).
pub const DEFAULT_AUTO_RESTART: bool = true;
/// Default restarts allowed per window (Ambari: 6 per hour).
pub const DEFAULT_MAX_PER_WINDOW: u32 = 6;
/// Default window (Ambari: 60 minutes).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3_600);
/// Default minimum gap between two restarts of one component (Ambari: 5 minutes): long enough for a slow daemon
/// to come up before it is judged dead again.
pub const DEFAULT_MIN_GAP: Duration = Duration::from_secs(300);
/// Default restarts of one component in the agent's lifetime (Ambari's lifetime cap): past this, a human must
/// look at it.
pub const DEFAULT_LIFETIME_MAX: u32 = 24;

/// How often the agent may restart one component on its own (Ambari's recovery limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// Whether the agent restarts components at all.
    pub enabled: bool,
    /// Restarts allowed in any `window`.
    pub max_per_window: u32,
    /// The sliding window `max_per_window` counts over.
    pub window: Duration,
    /// Least time between two restarts of one component.
    pub min_gap: Duration,
    /// Restarts allowed over the agent's lifetime.
    pub lifetime_max: u32,
}

impl Default for RestartLimits {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_AUTO_RESTART,
            max_per_window: DEFAULT_MAX_PER_WINDOW,
            window: DEFAULT_WINDOW,
            min_gap: DEFAULT_MIN_GAP,
            lifetime_max: DEFAULT_LIFETIME_MAX,
        }
    }
}

/// How the command path behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandParams {
    /// Commands running at once, over all components.
    pub max_parallel: usize,
    /// Interval of IN_PROGRESS reports while a command runs.
    pub progress_interval: Duration,
    /// Interval of the component status checks.
    pub status_interval: Duration,
    /// When and how often a dead component that should run is restarted.
    pub auto_restart: RestartLimits,
    /// Time running commands get at shutdown to end (they get SIGTERM) and report, before they are killed.
    pub shutdown_grace: Duration,
    /// Bytes of each of a command's stdout and stderr kept for its report.
    pub output_limit: usize,
}

impl Default for CommandParams {
    fn default() -> Self {
        Self {
            max_parallel: DEFAULT_MAX_PARALLEL,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            status_interval: DEFAULT_STATUS_INTERVAL,
            auto_restart: RestartLimits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            output_limit: MAX_OUTPUT_BYTES,
        }
    }
}

/// What a session needs to know about its host.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// The host this session speaks for.
    pub host: HostId,
    /// Subject names (the prefix must match the server's).
    pub subjects: Subjects,
    /// Labels sent with each registration (used by selectors and blueprints).
    pub labels: BTreeMap<String, String>,
    /// How long to wait for a registration reply before retrying.
    pub register_timeout: Duration,
    /// Reported in the registration (`RegisterRequest::agent_version`).
    pub agent_version: String,
    /// When the agent process started, reported in the registration and part of every status report's nonce.
    pub agent_started_at: UnixMillis,
    /// How commands are run.
    pub commands: CommandParams,
    /// Counters, shared with whoever wants to read them (the swarm sums them).
    pub stats: SessionStats,
    /// Which commands (and registration replies) the session acts on.
    pub trust: CommandTrust,
    /// The execution journal's path (`MUSTER_EXEC_JOURNAL`; see [`crate::journal`]); none: no journal.
    pub exec_journal: Option<PathBuf>,
}

/// Which messages from the server an agent acts on (`MUSTER_TRUSTED_KEYS`, `MUSTER_INSECURE`).
#[derive(Debug, Clone)]
pub enum CommandTrust {
    /// Only those signed by one of these command keys (all are refused when the list is empty).
    Signed(Arc<CommandVerifier>),
    /// Any, signed or not: `MUSTER_INSECURE` without trusted keys (labs only; anyone who can publish on the
    /// host's command subject runs anything).
    Insecure,
}

impl CommandTrust {
    /// Whether every message will be refused (no key trusted and not insecure).
    pub fn refuses_everything(&self) -> bool {
        matches!(self, Self::Signed(v) if v.is_empty())
    }
}
