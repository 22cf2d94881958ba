//! Leader election: a lease in the KV bucket `muster-election` whose `max_age` is the lease TTL.
//!
//! The TTL is one cluster-wide value: the bucket's. The first instance creates the bucket with its
//! `MUSTER_LEASE_TTL_MS`; an instance configured with another TTL refuses to start ([`ElectionError::TtlMismatch`])
//! instead of changing it under the leader, whose idea of its lease's validity would then be wrong.
//!
//! Winning = `create("leader")` succeeding (the key is absent or expired); the KV revision of that create is the
//! leader's **epoch**, unless the log already holds that epoch or a newer one (a recreated bucket restarts its
//! revisions at 1): the epoch is decided when the log is claimed ([`crate::log::claim_epoch`]). The leader renews with `update(.., last_revision)` every TTL/3 and steps down once
//! another instance holds the key or a renewal could not be confirmed before the lease may have run out. Expiry
//! produces no watch event, so candidates retry `create` on a timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use muster_schemas::Subjects;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The one key in the bucket.
const LEADER_KEY: &str = "leader";

/// Why the election bucket (KV `muster-election`) could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The bucket could not be created or opened.
    #[error("election bucket: {0}")]
    Bucket(String),
    /// The bucket exists with another lease TTL than this instance's: the TTL is one cluster-wide setting.
    #[error(
        "the election bucket {bucket} has a lease TTL of {bucket_ms} ms but this instance is configured with \
         MUSTER_LEASE_TTL_MS={ours_ms}: the lease TTL must be the same on every instance (set it to {bucket_ms}, or \
         stop every instance and delete the bucket to change it)"
    )]
    TtlMismatch {
        /// The bucket's name.
        bucket: String,
        /// Its TTL (`max_age`), ms.
        bucket_ms: u128,
        /// This instance's `MUSTER_LEASE_TTL_MS`.
        ours_ms: u128,
    },
}

impl ElectionError {
    /// Whether retrying cannot help (the instance must not start).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::TtlMismatch { .. })
    }
}

/// Creates the election bucket with the lease TTL `ttl`, or opens it (updating its replicas) if it exists with
/// that TTL. Fails with [`ElectionError::TtlMismatch`] if it exists with another.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ElectionError> {
    let config = kv::Config {
        bucket: subjects.election_bucket(),
        description: "muster leader lease; the revision of a won lease is the epoch".into(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    // The KV bucket is the stream `KV_<bucket>`. Two instances with different TTLs creating it at the same moment
    // can both pass this check; every later start is checked against the TTL that won.
    if let Ok(mut stream) = js.get_stream(format!("KV_{}", config.bucket)).await {
        let info = stream.info().await.map_err(|e| ElectionError::Bucket(e.to_string()))?;
        if info.config.max_age != ttl {
            return Err(ElectionError::TtlMismatch {
                bucket: config.bucket,
                bucket_ms: info.config.max_age.as_millis(),
                ours_ms: ttl.as_millis(),
            });
        }
    }
    js.create_or_update_key_value(config).await.map_err(|e| ElectionError::Bucket(e.to_string()))
}

/// A won lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The KV revision at which the lease was won: the epoch, unless the log already holds it
    /// ([`crate::log::claim_epoch`]).
    pub epoch: u64,
    /// Latest revision of the key we wrote; renewals and the release update at it.
    revision: Arc<AtomicU64>,
    /// Until when the lease certainly holds: the send time of the last successful write + TTL. The bucket expires
    /// the key TTL after the server *received* that write, which is later, so this errs on the safe side. It uses
    /// the monotonic clock, which keeps running while the process is stopped (SIGSTOP), so a leader that wakes up
    /// after its lease ran out knows it before it writes anything.
    valid_until: Arc<Mutex<Instant>>,
}

impl Lease {
    /// Whether the lease certainly still holds.
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn renewed(&self, revision: u64, sent: Instant, ttl: Duration) {
        self.revision.store(revision, Ordering::SeqCst);
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + ttl;
    }
}

/// Tries to win the lease every `retry` until it does (`Some`) or `shutdown` fires (`None`).
pub async fn campaign(
    kv: &kv::Store,
    server_id: &str,
    ttl: Duration,
    retry: Duration,
    shutdown: &CancellationToken,
) -> Option<Lease> {
    loop {
        let sent = Instant::now();
        match kv.create(LEADER_KEY, Bytes::from(server_id.to_string())).await {
            Ok(revision) => {
                info!(epoch = revision, "won the leader lease");
                return Some(Lease {
                    epoch: revision,
                    revision: Arc::new(AtomicU64::new(revision)),
                    valid_until: Arc::new(Mutex::new(sent + ttl)),
                });
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => debug!("lease held by another instance"),
            Err(e) => warn!(error = %e, "lease create failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Renews `lease` every `ttl / 3` until `deposed` fires. Steps down (cancels `deposed`) when another instance holds
/// the key, or when the lease may have expired without a successful renewal. A renewal that is merely slow or fails
/// while the lease still certainly holds is retried: on a busy disk a KV write can take longer than `ttl / 3`, and
/// stepping down for that would restart every host's detection window for nothing.
pub async fn hold(kv: kv::Store, server_id: String, lease: Lease, ttl: Duration, deposed: CancellationToken) {
    let period = ttl / 3;
    let mut wait = period;
    loop {
        tokio::select! {
            _ = deposed.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let sent = Instant::now();
        let revision = lease.revision.load(Ordering::SeqCst);
        let renewal = tokio::time::timeout(period, kv.update(LEADER_KEY, Bytes::from(server_id.clone()), revision));
        let problem = match renewal.await {
            Ok(Ok(revision)) => {
                lease.renewed(revision, sent, ttl);
                wait = period;
                continue;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A renewal that timed out earlier may have landed after all: if the key still names us, carry on
                // from its revision (its validity is not extended: we do not know when it was written).
                match kv.entry(LEADER_KEY).await {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put && entry.value.as_ref() == server_id.as_bytes() =>
                    {
                        lease.revision.store(entry.revision, Ordering::SeqCst);
                        wait = Duration::ZERO;
                        continue;
                    }
                    _ => {
                        warn!(epoch = lease.epoch, "another instance holds the lease; stepping down");
                        deposed.cancel();
                        return;
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {period:?}"),
        };
        if !lease.is_valid() {
            warn!(epoch = lease.epoch, error = %problem, "lease not renewed in time; stepping down");
            deposed.cancel();
            return;
        }
        warn!(epoch = lease.epoch, error = %problem, "lease renewal failed; retrying while the lease holds");
        wait = RENEW_RETRY;
    }
}

/// Pause between renewal attempts after a failed one.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// Releases a lease on clean shutdown so a successor need not wait for the TTL.
pub async fn release(kv: &kv::Store, lease: &Lease) {
    // Only delete if we still hold it: an update at our revision proves that, then the delete follows.
    if let Ok(rev) = kv.update(LEADER_KEY, Bytes::from_static(b""), lease.revision.load(Ordering::SeqCst)).await {
        debug!(rev, "lease released");
        let _ = kv.delete(LEADER_KEY).await;
    }
}
