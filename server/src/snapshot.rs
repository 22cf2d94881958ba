//! Snapshots (ZooKeeper's SNAP): the whole state at a log sequence, stored as one object in the JetStream object
//! store `<prefix>-snapshots`. The leader takes one every `snapshot_every` applied entries and only then trims the
//! log behind it, so `snapshot + log after it` always covers everything. A replica whose next entry has been
//! trimmed (new, wiped, or far behind) loads the snapshot, then applies the log after it ([`crate::log`]).
//!
//! Nothing deposed snapshots, and a snapshot never replaces one covering more of the log: a snapshot is stored only
//! while its term lasts (checked before and after the state is read, and again right before the put) and only if
//! the stored one covers an older sequence ([`verdict`]). A replaced leader's snapshot in flight would otherwise
//! overwrite its successor's, behind which the log may already be trimmed: replicas needing a snapshot would then
//! find a gap between it and the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use muster_schemas::{codec, Subjects};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{Metrics, ServerCounter};
use crate::store::{Snapshot, Store, StoreError};

/// The object name of the newest snapshot.
const OBJECT: &str = "state";
/// Largest snapshot we will load: far above any real fleet (100k hosts ≈ 200 MB), low enough to refuse garbage.
const MAX_SNAPSHOT_BYTES: usize = 4 << 30;
/// Pause after a failed snapshot before trying again.
const RETRY: Duration = Duration::from_secs(5);
/// The object metadata key holding the log sequence a snapshot covers.
const SEQ_KEY: &str = "muster-seq";

/// Why taking, storing or loading a state snapshot (object `state` in bucket `muster-snapshots`) failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Object store or stream call failed.
    #[error("snapshot store: {0}")]
    Nats(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object could not be decoded.
    #[error("snapshot object is corrupt: {0}")]
    Corrupt(String),
}

fn nats(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Nats(e.to_string())
}

/// Creates the snapshot bucket if needed.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<object_store::ObjectStore, SnapshotError> {
    let name = subjects.snapshot_bucket();
    if let Ok(os) = js.get_object_store(&name).await {
        // Follow the replica count (a single node grown into a cluster).
        let mut stream = js.get_stream(format!("OBJ_{name}")).await.map_err(nats)?;
        let mut config = stream.info().await.map_err(nats)?.config.clone();
        if config.num_replicas != replicas {
            config.num_replicas = replicas;
            js.update_stream(config).await.map_err(nats)?;
        }
        return Ok(os);
    }
    js.create_object_store(object_store::Config {
        bucket: name,
        description: Some("muster state snapshots: the log is trimmed only behind the newest".into()),
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(nats)
}

/// Whether this replica is installing a snapshot (downloading it, restoring it into redb): its applied sequence
/// stands still meanwhile, for as long as a large state takes (100k hosts ≈ 200 MB), and the applier's stall watch
/// must not take that for a stalled consumer and restart the install, again and again. Cheap to clone: the
/// install holds an [`InstallGuard`] while it runs, the watch reads [`Installing::active`].
#[derive(Debug, Clone, Default)]
pub struct Installing(Arc<AtomicBool>);

impl Installing {
    /// Marks an install as running until the returned guard is dropped (however the install ends).
    pub fn start(&self) -> InstallGuard {
        self.0.store(true, Ordering::SeqCst);
        InstallGuard(self.0.clone())
    }

    /// Whether an install is running.
    pub fn active(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Held while a snapshot install runs; see [`Installing`].
#[derive(Debug)]
pub struct InstallGuard(Arc<AtomicBool>);

impl Drop for InstallGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The newest snapshot, if one was ever taken.
pub async fn latest(js: &jetstream::Context, subjects: &Subjects) -> Result<Option<Snapshot>, SnapshotError> {
    let os = js.get_object_store(subjects.snapshot_bucket()).await.map_err(nats)?;
    let mut object = match os.get(OBJECT).await {
        Ok(o) => o,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(nats(e)),
    };
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.map_err(nats)?;
    codec::decode(&bytes, MAX_SNAPSHOT_BYTES).map(Some).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

/// Whether a snapshot just read may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it, then trim the log behind it.
    Store,
    /// The term that read it has ended: a deposed leader snapshots nothing.
    TermEnded,
    /// The stored snapshot already covers the log up to this sequence, at or past ours.
    Covered(u64),
}

/// The rule: a snapshot covering the log up to `ours` is stored only while its term lasts (`term_ended` false)
/// and only over a snapshot covering less (`stored`: the sequence of the stored one, if there is one).
pub fn verdict(ours: u64, stored: Option<u64>, term_ended: bool) -> Verdict {
    match stored {
        _ if term_ended => Verdict::TermEnded,
        Some(stored) if stored >= ours => Verdict::Covered(stored),
        _ => Verdict::Store,
    }
}

/// The sequence the stored snapshot covers, if there is one: from its metadata, or from the description earlier
/// versions wrote.
async fn stored_seq(os: &object_store::ObjectStore) -> Result<Option<u64>, SnapshotError> {
    let info = match os.info(OBJECT).await {
        Ok(info) => info,
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(nats(e)),
    };
    let from_description = || {
        let rest = info.description.as_deref()?.split("sequence ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    if info.deleted {
        return Ok(None);
    }
    // One whose sequence cannot be told is replaced.
    Ok(Some(info.metadata.get(SEQ_KEY).and_then(|s| s.parse().ok()).or_else(from_description).unwrap_or(0)))
}

/// Takes a snapshot of `store` and, if [`verdict`] allows, stores it, then trims the log behind it. Returns the
/// verdict and the sequence the snapshot covers (`None`: the term had ended before anything was read).
pub async fn take(
    js: &jetstream::Context,
    subjects: &Subjects,
    store: &Store,
    term: &CancellationToken,
) -> Result<Option<(Verdict, u64)>, SnapshotError> {
    if term.is_cancelled() {
        return Ok(None);
    }
    let st = store.clone();
    let snap = tokio::task::spawn_blocking(move || st.snapshot()).await.map_err(StoreError::from)??;
    let (seq, epoch) = (snap.seq, snap.epoch);
    let os = js.get_object_store(subjects.snapshot_bucket()).await.map_err(nats)?;
    let stored = stored_seq(&os).await?;
    let v = verdict(seq, stored, term.is_cancelled());
    if v != Verdict::Store {
        return Ok(Some((v, seq)));
    }
    let bytes = codec::encode(&snap);
    drop(snap);
    let meta = object_store::ObjectMetadata {
        name: OBJECT.into(),
        description: Some(format!("muster state up to txn log sequence {seq} (epoch {epoch})")),
        metadata: [(SEQ_KEY.to_string(), seq.to_string())].into(),
        ..Default::default()
    };
    // Encoding a large state takes a while: the term may have ended meanwhile.
    if term.is_cancelled() {
        return Ok(Some((Verdict::TermEnded, seq)));
    }
    os.put(meta, &mut bytes.as_slice()).await.map_err(nats)?;
    // Only now that the snapshot is stored may the entries it covers go.
    let stream = js.get_stream(subjects.txn_stream()).await.map_err(nats)?;
    stream.purge().sequence(seq + 1).await.map_err(nats)?;
    info!(seq, bytes = bytes.len(), "snapshot stored; log trimmed behind it");
    Ok(Some((Verdict::Store, seq)))
}

/// While leading: takes a snapshot whenever `every` entries were applied since the last one.
pub async fn run_snapshotter(
    js: jetstream::Context,
    subjects: Subjects,
    store: Store,
    mut applied: watch::Receiver<u64>,
    every: u64,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut last = match latest(&js, &subjects).await {
        Ok(s) => s.map_or(0, |s| s.seq),
        Err(e) => {
            warn!(error = %e, "cannot read the newest snapshot; taking a new one when due");
            0
        }
    };
    loop {
        let due = tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.wait_for(|a| a.saturating_sub(last) >= every) => r.is_ok(),
        };
        if !due {
            return;
        }
        match take(&js, &subjects, &store, &stop).await {
            Ok(None) => return,
            Ok(Some((Verdict::Store, seq))) => {
                last = seq;
                metrics.inc(ServerCounter::SnapshotTaken);
            }
            Ok(Some((Verdict::TermEnded, seq))) => {
                info!(seq, "snapshot not stored: the term ended");
                metrics.inc(ServerCounter::SnapshotSkipped);
                return;
            }
            Ok(Some((Verdict::Covered(stored), seq))) => {
                info!(seq, stored, "snapshot not stored: the stored one covers as much of the log");
                metrics.inc(ServerCounter::SnapshotSkipped);
                last = stored;
            }
            Err(e) => {
                warn!(error = %e, "snapshot failed");
                metrics.inc(ServerCounter::SnapshotFailed);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_is_active_until_its_guard_is_dropped_however_it_ends() {
        let installing = Installing::default();
        assert!(!installing.active());
        let watch = installing.clone();
        let guard = installing.start();
        assert!(watch.active());
        drop(guard);
        assert!(!watch.active());
        let failed = std::panic::catch_unwind(|| {
            let _guard = watch.start();
            panic!("restore failed");
        });
        assert!(failed.is_err());
        assert!(!installing.active());
    }

    #[test]
    fn a_snapshot_is_stored_only_in_its_term_and_only_over_an_older_one() {
        assert_eq!(verdict(100, None, false), Verdict::Store);
        assert_eq!(verdict(100, Some(40), false), Verdict::Store);
        // A replaced leader's snapshot in flight, its successor's newer one already stored.
        assert_eq!(verdict(100, Some(250), false), Verdict::Covered(250));
        assert_eq!(verdict(100, Some(100), false), Verdict::Covered(100));
        assert_eq!(verdict(100, Some(40), true), Verdict::TermEnded);
        assert_eq!(verdict(100, None, true), Verdict::TermEnded);
    }
}
