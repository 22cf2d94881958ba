//! What this instance is, how far it has applied the log, and when it last heard each host; shared by the API, the
//! listeners, the leader loop and `run`.

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

/// When this instance last heard each host's heartbeat: the one record of arrivals. The heartbeat listener writes
/// it on every instance, so any instance answers "seconds since last heartbeat" without asking the leader; the
/// leader reads it only for the hosts whose detection window ran out, so a heartbeat the listener heard but could
/// not queue (the core was busy) still keeps its host alive. In memory only, as in Ambari.
#[derive(Clone, Default)]
pub struct LastSeen(Arc<Mutex<HashMap<HostId, Instant>>>);

impl LastSeen {
    /// Records that `host` was heard at `at`.
    pub fn touch(&self, host: &HostId, at: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before inserting: the common case (a known host) must not clone its id.
        match map.get_mut(host) {
            Some(t) => *t = (*t).max(at),
            None => {
                map.insert(host.clone(), at);
            }
        }
    }

    /// When `host` was last heard, if ever.
    pub fn get(&self, host: &HostId) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(host).copied()
    }

    /// When each of `hosts` was last heard, under one lock.
    pub fn look_up(&self, hosts: Vec<HostId>) -> Vec<(HostId, Option<Instant>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .into_iter()
            .map(|h| {
                let at = map.get(&h).copied();
                (h, at)
            })
            .collect()
    }
}

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
    /// When this instance last heard each host.
    pub last_seen: LastSeen,
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
            last_seen: LastSeen::default(),
        }
    }

    /// The role right now: leader while this instance holds the lease, else follower or observer by its config.
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
        self.last_seen.touch(host, Instant::now());
    }

    /// Seconds since the last heartbeat from `host`, if any was heard.
    pub fn since_heartbeat(&self, host: &HostId) -> Option<f64> {
        self.last_seen.get(host).map(|t| t.elapsed().as_secs_f64())
    }
}
