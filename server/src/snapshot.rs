//! Snapshots (ZooKeeper's SNAP): the whole state at a log sequence, stored as one object in the JetStream object
//! store `<prefix>-snapshots`. The leader takes one every `snapshot_every` applied entries and only then trims the
//! log behind it, so `snapshot + log after it` always covers everything. A replica whose next entry has been
//! trimmed (new, wiped, or far behind) loads the snapshot, then applies the log after it ([`crate::log`]).
//!
//! Nothing deposed snapshots, and a snapshot never replaces one covering more of the log. Each snapshot is its own
//! object, named by the sequence it covers (`state-<seq>`), and a replica loads the one covering the most
//! ([`newest`]): a put can never replace another leader's snapshot, so a replaced leader's snapshot in flight —
//! however late it lands, whatever it checked before — cannot hide its successor's newer one, behind which the log
//! may already be trimmed. The leader deletes only the snapshots older than the one it stored ([`superseded`]).
//! Besides, a snapshot is stored only while its term lasts (checked before and after the state is read, and again
//! right before the put) and only if no stored one covers as much ([`verdict`]): that saves the work; the names
//! make it safe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store};
use futures::StreamExt;
use muster_schemas::{codec, Subjects};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{Metrics, ServerCounter};
use crate::store::{Snapshot, Store, StoreError};

/// The object names of snapshots: `state-<seq>`, the sequence zero-padded to 20 digits (so names sort by it).
const OBJECT_PREFIX: &str = "state-";
/// The one object name of releases that replaced one object in place; still read, deleted once superseded.
const LEGACY_OBJECT: &str = "state";
/// How often a replica looks for the newest snapshot again when the one it chose was deleted as it read it (a newer
/// one was stored meanwhile).
const LATEST_ATTEMPTS: u32 = 3;
/// Longest a listing of the stored snapshots may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
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

/// The name of the object holding a snapshot covering the log up to `seq`.
pub fn object_name(seq: u64) -> String {
    format!("{OBJECT_PREFIX}{seq:020}")
}

/// A stored snapshot: its object name and the log sequence it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The object's name.
    pub name: String,
    /// The sequence it covers.
    pub seq: u64,
    /// The subject of its metadata in the bucket's stream.
    pub meta_subject: String,
}

/// The one covering the most of the log, pure (ties: the last listed).
pub fn newest(stored: &[Stored]) -> Option<&Stored> {
    stored.iter().max_by_key(|s| s.seq)
}

/// The snapshots a leader that stored one covering `ours` deletes, pure: those covering less. A newer one (a
/// successor's, stored while this leader's was in flight) is never among them.
pub fn superseded(stored: &[Stored], ours: u64) -> Vec<&Stored> {
    stored.iter().filter(|s| s.seq < ours).collect()
}

/// Every snapshot stored, with the sequence it covers (from its metadata, its description as earlier releases
/// wrote it, or its name; one whose sequence cannot be told covers 0). Read from the bucket's stream: each object's
/// metadata is the last message on its own subject, which names it for [`forget`].
async fn stored(js: &jetstream::Context, subjects: &Subjects) -> Result<Vec<Stored>, SnapshotError> {
    let bucket = subjects.snapshot_bucket();
    let listing = async {
        let stream = js.get_stream_no_info(format!("OBJ_{bucket}")).await.map_err(nats)?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("$O.{bucket}.M.>"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(nats)?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(nats)?;
            let pending = m.info().map_err(nats)?.pending;
            if let Ok(info) = serde_json::from_slice::<object_store::ObjectInfo>(&m.payload) {
                let wanted = info.name == LEGACY_OBJECT || info.name.starts_with(OBJECT_PREFIX);
                if wanted && !info.deleted {
                    let from_description = || {
                        let rest = info.description.as_deref()?.split("sequence ").nth(1)?;
                        rest.split_whitespace().next()?.parse().ok()
                    };
                    let from_name = || info.name.strip_prefix(OBJECT_PREFIX)?.parse().ok();
                    let seq = info.metadata.get(SEQ_KEY).and_then(|s| s.parse().ok());
                    let seq = seq.or_else(from_description).or_else(from_name).unwrap_or(0);
                    out.push(Stored { name: info.name.clone(), seq, meta_subject: m.subject.to_string() });
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    };
    tokio::time::timeout(LIST_TIMEOUT, listing)
        .await
        .unwrap_or_else(|_| Err(SnapshotError::Nats(format!("listing the snapshots took over {LIST_TIMEOUT:?}"))))
}

/// Deletes a superseded snapshot: its chunks, then its metadata's tombstone (so deleted snapshots do not pile up in
/// the listing).
async fn forget(
    js: &jetstream::Context,
    subjects: &Subjects,
    os: &object_store::ObjectStore,
    old: &Stored,
) -> Result<(), SnapshotError> {
    os.delete(&old.name).await.map_err(nats)?;
    let stream = js.get_stream_no_info(format!("OBJ_{}", subjects.snapshot_bucket())).await.map_err(nats)?;
    stream.purge().filter(old.meta_subject.clone()).await.map_err(nats)?;
    Ok(())
}

/// The sequence the newest stored snapshot covers, without reading it.
pub async fn newest_seq(js: &jetstream::Context, subjects: &Subjects) -> Result<Option<u64>, SnapshotError> {
    Ok(newest(&stored(js, subjects).await?).map(|s| s.seq))
}

/// The newest snapshot, if one was ever taken.
pub async fn latest(js: &jetstream::Context, subjects: &Subjects) -> Result<Option<Snapshot>, SnapshotError> {
    let os = js.get_object_store(subjects.snapshot_bucket()).await.map_err(nats)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let all = stored(js, subjects).await?;
        let Some(newest) = newest(&all) else { return Ok(None) };
        let mut object = match os.get(&newest.name).await {
            Ok(o) => o,
            // Deleted as we chose it: a newer one was stored meanwhile.
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound && attempt < LATEST_ATTEMPTS => continue,
            Err(e) => return Err(nats(e)),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(nats)?;
        return decode(&bytes).map(Some);
    }
}

/// Decodes a snapshot object's bytes (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    codec::decode(bytes, MAX_SNAPSHOT_BYTES).map_err(|e| SnapshotError::Corrupt(e.to_string()))
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
    let all = stored(js, subjects).await?;
    let v = verdict(seq, newest(&all).map(|s| s.seq), term.is_cancelled());
    if v != Verdict::Store {
        return Ok(Some((v, seq)));
    }
    let bytes = codec::encode(&snap);
    drop(snap);
    let meta = object_store::ObjectMetadata {
        name: object_name(seq),
        description: Some(format!("muster state up to txn log sequence {seq} (epoch {epoch})")),
        metadata: [(SEQ_KEY.to_string(), seq.to_string())].into(),
        ..Default::default()
    };
    // Encoding a large state takes a while: the term may have ended meanwhile.
    if term.is_cancelled() {
        return Ok(Some((Verdict::TermEnded, seq)));
    }
    put_pause().await;
    // Under its own name: whenever it lands, it replaces no other snapshot.
    os.put(meta, &mut bytes.as_slice()).await.map_err(nats)?;
    // Only now that the snapshot is stored may the entries it covers go.
    let stream = js.get_stream(subjects.txn_stream()).await.map_err(nats)?;
    stream.purge().sequence(seq + 1).await.map_err(nats)?;
    info!(seq, bytes = bytes.len(), "snapshot stored; log trimmed behind it");
    // Older snapshots are of no more use (a replica loads the newest). Listed again: one stored since is kept.
    for old in superseded(&stored(js, subjects).await?, seq) {
        if let Err(e) = forget(js, subjects, &os, old).await {
            warn!(object = %old.name, error = %e, "deleting a superseded snapshot failed");
        }
    }
    Ok(Some((Verdict::Store, seq)))
}

/// Test hook: in a build with the `failpoints` feature, the failpoint `snapshot::put_pause_ms` holds the put this
/// many milliseconds after every check (a replaced leader's snapshot in flight). Does nothing otherwise.
async fn put_pause() {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = fail::eval("snapshot::put_pause_ms", |s| s.and_then(|s| s.parse::<u64>().ok())).flatten() {
        warn!(ms, "failpoint: holding the snapshot put");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
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
    let mut last = match newest_seq(&js, &subjects).await {
        Ok(s) => s.unwrap_or(0),
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

    fn at(seqs: &[u64]) -> Vec<Stored> {
        seqs.iter().map(|&seq| Stored { name: object_name(seq), seq, meta_subject: String::new() }).collect()
    }

    #[test]
    fn a_snapshot_in_flight_never_replaces_or_deletes_a_newer_one() {
        // Each snapshot is its own object: the successor's (300) and the replaced leader's late one (200).
        assert_ne!(object_name(200), object_name(300));
        assert!(object_name(99) < object_name(100), "names sort by sequence");
        let both = at(&[100, 300, 200]);
        assert_eq!(newest(&both).map(|s| s.seq), Some(300), "a replica loads the newest whatever landed last");
        // The late leader deletes only what its own snapshot supersedes; the successor deletes the late one.
        assert_eq!(superseded(&both, 200).iter().map(|s| s.seq).collect::<Vec<_>>(), [100]);
        assert_eq!(superseded(&both, 300).iter().map(|s| s.seq).collect::<Vec<_>>(), [100, 200]);
        assert_eq!(newest(&[]), None);
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
