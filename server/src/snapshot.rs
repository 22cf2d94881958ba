//! Snapshots (ZooKeeper's SNAP): the whole state at a log sequence, stored as one object in the JetStream object
//! store `<prefix>-snapshots`. The leader takes one every `snapshot_every` applied entries and only then trims the
//! log behind it, so `snapshot + log after it` always covers everything. A replica whose next entry has been
//! trimmed (new, wiped, or far behind) loads the snapshot, then applies the log after it ([`crate::log`]).

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

/// Takes a snapshot of `store`, stores it, then trims the log behind it. Returns the sequence it covers.
pub async fn take(js: &jetstream::Context, subjects: &Subjects, store: &Store) -> Result<u64, SnapshotError> {
    let st = store.clone();
    let snap = tokio::task::spawn_blocking(move || st.snapshot()).await.map_err(StoreError::from)??;
    let seq = snap.seq;
    let bytes = codec::encode(&snap);
    let os = js.get_object_store(subjects.snapshot_bucket()).await.map_err(nats)?;
    let meta = object_store::ObjectMetadata {
        name: OBJECT.into(),
        description: Some(format!("muster state up to txn log sequence {seq} (epoch {})", snap.epoch)),
        ..Default::default()
    };
    os.put(meta, &mut bytes.as_slice()).await.map_err(nats)?;
    // Only now that the snapshot is stored may the entries it covers go.
    let stream = js.get_stream(subjects.txn_stream()).await.map_err(nats)?;
    stream.purge().sequence(seq + 1).await.map_err(nats)?;
    info!(seq, bytes = bytes.len(), "snapshot stored; log trimmed behind it");
    Ok(seq)
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
        match take(&js, &subjects, &store).await {
            Ok(seq) => {
                last = seq;
                metrics.inc(ServerCounter::SnapshotTaken);
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
