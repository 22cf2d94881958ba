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
//!
//! **The schema gate.** Every instance announces the newest txn schema it understands ([`TXN_SCHEMA`]) in its own
//! key `member.<server id>` of the same bucket, renewed every TTL/3, so it expires a TTL after the instance died
//! ([`announce`]). A voter keeps every announcement it hears in memory ([`Members`], fed by [`watch_members`]),
//! so deciding costs nothing on the claim path, and refuses to campaign while a live instance announces an older
//! schema ([`schema_gate`]): a leader never writes entries a live replica does not understand. The older instance
//! may lead (newer ones understand its entries); the newer ones follow until it is upgraded or gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::Subjects;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The lease's key in the bucket.
const LEADER_KEY: &str = "leader";
/// Each instance's announcement: `member.<server id>` = its txn schema, in decimal.
const MEMBER_PREFIX: &str = "member.";

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

/// Tries to win the lease every `retry` until it does (`Some`) or `shutdown` fires (`None`). An attempt is made
/// only while [`schema_gate`] lets this instance lead, judged from `members` (in memory: no wait); a refusal is
/// logged when it starts or changes and counted by `on_refused` at every attempt it stops.
pub async fn campaign(
    kv: &kv::Store,
    server_id: &str,
    ttl: Duration,
    retry: Duration,
    members: &Members,
    mut on_refused: impl FnMut(),
    shutdown: &CancellationToken,
) -> Option<Lease> {
    let own = announced_schema();
    let mut refused: Option<Refusal> = None;
    loop {
        let gate = schema_gate(server_id, own, members.ready(), &members.live(Instant::now(), ttl));
        match gate {
            Err(why) => {
                if refused.as_ref() != Some(&why) {
                    warn!(%why, "not campaigning for the lease; following");
                }
                if matches!(why, Refusal::OlderMember { .. }) {
                    on_refused();
                }
                refused = Some(why);
            }
            Ok(()) => {
                if refused.take().is_some() {
                    info!("every live instance understands this instance's txn schema; campaigning");
                }
                if let Some(lease) = try_create(kv, server_id, ttl).await {
                    return Some(lease);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// One attempt to win the lease.
async fn try_create(kv: &kv::Store, server_id: &str, ttl: Duration) -> Option<Lease> {
    {
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
        None
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

/// The txn schema this instance announces and gates on: [`TXN_SCHEMA`], unless a test build's failpoint
/// `election::announced_txn_schema` returns another (an instance posing as an older release).
pub fn announced_schema() -> u16 {
    #[cfg(feature = "failpoints")]
    if let Some(schema) = fail::eval("election::announced_txn_schema", |s| s.and_then(|s| s.parse().ok())).flatten() {
        return schema;
    }
    TXN_SCHEMA
}

/// Why [`schema_gate`] keeps an instance from campaigning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The announcements have not been read yet: an older instance may be live.
    #[error("the instances' txn schemas are not known yet")]
    NotKnown,
    /// A live instance announces an older txn schema: it could not read this instance's entries.
    #[error(
        "instance {id} announces txn schema {schema}, older than this instance's {own}: it would stop at the first \
         entry this instance wrote (it may lead; upgrade it, or stop it, for this instance to lead)"
    )]
    OlderMember {
        /// The older instance's id.
        id: String,
        /// The schema it announces.
        schema: u16,
        /// This instance's.
        own: u16,
    },
}

/// The gate, pure: an instance announcing txn schema `own` may campaign only once the announcements are known
/// (`known`) and no other live instance in `live` (id, schema) announces an older one.
pub fn schema_gate(own_id: &str, own: u16, known: bool, live: &[(String, u16)]) -> Result<(), Refusal> {
    if !known {
        return Err(Refusal::NotKnown);
    }
    match live.iter().filter(|(id, _)| id != own_id).min_by_key(|(_, schema)| *schema) {
        Some((id, schema)) if *schema < own => Err(Refusal::OlderMember { id: id.clone(), schema: *schema, own }),
        _ => Ok(()),
    }
}

/// Every instance's announced txn schema as this instance heard it, with when it heard it last (an announcement
/// not heard again within a lease TTL has expired in the bucket: the instance is gone). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<Mutex<MembersInner>>);

#[derive(Debug, Default)]
struct MembersInner {
    heard: BTreeMap<String, (u16, Instant)>,
    known: bool,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, MembersInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the bucket's announcements have been read up to now at least once.
    pub fn ready(&self) -> bool {
        self.lock().known
    }

    /// The instances heard within `ttl` before `now`, with their schemas. Heard is later than written, so an
    /// instance counts as live a little longer than its key lives: the gate errs on the safe side.
    pub fn live(&self, now: Instant, ttl: Duration) -> Vec<(String, u16)> {
        let m = self.lock();
        m.heard
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) < ttl)
            .map(|(id, (s, _))| (id.clone(), *s))
            .collect()
    }

    fn heard(&self, id: &str, schema: u16, at: Instant) {
        self.lock().heard.insert(id.to_string(), (schema, at));
    }

    fn gone(&self, id: &str) {
        self.lock().heard.remove(id);
    }

    fn known(&self) {
        self.lock().known = true;
    }
}

/// Announces this instance's txn schema ([`announced_schema`]) in `member.<server_id>` every `ttl / 3` until
/// `shutdown` fires, then deletes it (a cleanly stopped instance stops gating at once; a dead one's key expires a
/// TTL after its last announcement).
pub async fn announce(kv: kv::Store, server_id: String, ttl: Duration, shutdown: CancellationToken) {
    let key = format!("{MEMBER_PREFIX}{server_id}");
    let value = Bytes::from(announced_schema().to_string());
    loop {
        let wait = match tokio::time::timeout(ttl / 3, kv.put(&key, value.clone())).await {
            Ok(Ok(_)) => ttl / 3,
            Ok(Err(e)) => {
                warn!(error = %e, "announcing the txn schema failed; retrying");
                RENEW_RETRY
            }
            Err(_) => {
                warn!("announcing the txn schema timed out; retrying");
                RENEW_RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = tokio::time::timeout(ttl, kv.delete(&key)).await;
}

/// Keeps `members` up to date from the bucket's `member.*` keys until `shutdown` fires (re-watching after an
/// error). `members` is known once the keys stored when the watch began have been read (this instance's own
/// announcement arrives at the latest then, so an empty bucket is known too).
pub async fn watch_members(kv: kv::Store, members: Members, shutdown: CancellationToken) {
    loop {
        let watched = async {
            let mut watch = kv.watch_with_history(format!("{MEMBER_PREFIX}>")).await.map_err(|e| e.to_string())?;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| e.to_string())?;
                let Some(id) = entry.key.strip_prefix(MEMBER_PREFIX) else { continue };
                match entry.operation {
                    kv::Operation::Put => match std::str::from_utf8(&entry.value).ok().and_then(|v| v.parse().ok()) {
                        Some(schema) => members.heard(id, schema, Instant::now()),
                        // Unreadable: treated as the oldest schema, to be safe.
                        None => members.heard(id, 0, Instant::now()),
                    },
                    kv::Operation::Delete | kv::Operation::Purge => members.gone(id),
                }
                if entry.seen_current {
                    members.known();
                }
            }
            Err::<(), String>("the watch ended".into())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = watched => if let Err(e) = r { warn!(error = %e, "watching the instances' txn schemas failed; again") },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RENEW_RETRY * 5) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(members: &[(&str, u16)]) -> Vec<(String, u16)> {
        members.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[test]
    fn an_instance_campaigns_only_while_no_live_instance_announces_an_older_txn_schema() {
        let all_new = live(&[("s1", 3), ("s2", 3), ("s3", 3)]);
        assert_eq!(schema_gate("s1", 3, true, &all_new), Ok(()));
        // A rolling upgrade: s3 still runs the older release.
        let mixed = live(&[("s1", 3), ("s2", 3), ("s3", 2)]);
        assert_eq!(
            schema_gate("s1", 3, true, &mixed),
            Err(Refusal::OlderMember { id: "s3".into(), schema: 2, own: 3 })
        );
        // The older instance may lead: the newer ones understand its entries.
        assert_eq!(schema_gate("s3", 2, true, &mixed), Ok(()));
        // Its own announcement never gates an instance; nor does a newer one.
        assert_eq!(schema_gate("s1", 2, true, &live(&[("s1", 2), ("s2", 3)])), Ok(()));
        // Until the announcements were read, an older live instance cannot be ruled out.
        assert_eq!(schema_gate("s1", 3, false, &all_new), Err(Refusal::NotKnown));
        assert_eq!(schema_gate("s1", 3, true, &[]), Ok(()));
    }

    #[test]
    fn an_instance_not_heard_for_a_lease_ttl_is_gone() {
        let members = Members::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        members.heard("old", 1, t0);
        members.heard("new", 2, t0 + Duration::from_secs(1));
        assert!(!members.ready());
        members.known();
        assert!(members.ready());
        assert_eq!(members.live(t0 + Duration::from_millis(1_999), ttl), live(&[("new", 2), ("old", 1)]));
        assert_eq!(members.live(t0 + ttl, ttl), live(&[("new", 2)]), "not announced again within the TTL: expired");
        members.heard("old", 1, t0 + ttl);
        assert_eq!(members.live(t0 + ttl, ttl).len(), 2, "announced again");
        members.gone("old");
        assert_eq!(members.live(t0 + ttl, ttl), live(&[("new", 2)]), "a deleted key: stopped cleanly");
    }
}
