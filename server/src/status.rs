//! What this instance is and how far it has applied the log; shared by the API, the leader loop and `run`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use muster_schemas::HostId;
use tokio::sync::watch;
use tokio::time::Instant;

/// The role this instance plays right now (ZooKeeper's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease; the one writer.
    Leader,
    /// Applies the log; may become leader.
    Follower,
    /// Applies the log; never campaigns.
    Observer,
}

impl Role {
    /// Lower-case name for JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Observer => "observer",
        }
    }
}

/// Last heartbeat arrival per host, as heard by this instance's listener.
pub type Heard = Arc<Mutex<HashMap<HostId, Instant>>>;

/// Shared, cheap-to-clone view of this instance.
#[derive(Clone)]
pub struct Status {
    /// This instance's id.
    pub server_id: String,
    role: Arc<Mutex<Role>>,
    epoch: Arc<AtomicU64>,
    /// Last log sequence applied to redb.
    pub applied: watch::Receiver<u64>,
    /// Process start, for uptime.
    pub started: Instant,
    /// Last heartbeat per host as heard by this instance (every instance listens, so reads need not ask the
    /// leader). In memory only, as in Ambari.
    pub last_seen: Heard,
}

impl Status {
    /// A follower (or observer) that has applied up to whatever `applied` says.
    pub fn new(server_id: String, role: Role, applied: watch::Receiver<u64>) -> Self {
        Self {
            server_id,
            role: Arc::new(Mutex::new(role)),
            epoch: Arc::new(AtomicU64::new(0)),
            applied,
            started: Instant::now(),
            last_seen: Arc::default(),
        }
    }

    /// Current role.
    pub fn role(&self) -> Role {
        *self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the role.
    pub fn set_role(&self, role: Role) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = role;
    }

    /// Epoch of the current (or last known) leader.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Records a leader epoch.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Records a heartbeat from `host` now.
    pub fn touch(&self, host: &HostId) {
        let mut map = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(host) {
            Some(t) => *t = Instant::now(),
            None => {
                map.insert(host.clone(), Instant::now());
            }
        }
    }

    /// Seconds since the last heartbeat from `host`, if any was heard.
    pub fn since_heartbeat(&self, host: &HostId) -> Option<f64> {
        let map = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        map.get(host).map(|t| t.elapsed().as_secs_f64())
    }
}
