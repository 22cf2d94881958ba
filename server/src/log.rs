//! The transaction log on JetStream (`MUSTER_TXN`): the leader appends with fencing, every instance applies it.
//!
//! - [`ensure_stream`] creates the stream idempotently at start.
//! - [`Appender`] is the leader's write side: `Nats-Expected-Last-Sequence` fences off a deposed leader, and
//!   `Nats-Msg-Id` makes a retried append (after a timed-out ack) land at most once.
//! - [`run_applier`] is every instance's read side: an ordered consumer from `applied_seq + 1`, decoded and applied
//!   to redb in groups, publishing progress on a `watch` channel the leader waits on before performing effects.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures::StreamExt;
use muster_nats::wire::header_map;
use muster_schemas::ids::TxnMsgId;
use muster_schemas::{codec, headers, limits, Subjects, Txn};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::election::Lease;
use crate::metrics::{Metrics, ServerCounter};
use crate::store::{Store, StoreError};

/// How long to wait for a JetStream publish ack before retrying with the same `Nats-Msg-Id`. With
/// `sync_interval: always` an ack normally takes < 5 ms; a second means the server is failing over or overloaded.
const APPEND_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per append before the leader gives up (and steps down, since it cannot know the log's state).
const APPEND_ATTEMPTS: u32 = 5;
/// Most log entries applied in one redb transaction: bounds the time a write transaction stays open while still
/// amortising the fsync over many entries during catch-up.
const MAX_APPLY_GROUP: usize = 512;
/// Delay before re-creating the applier's consumer after an error (stream not yet reachable, leader election in
/// the NATS cluster).
const APPLIER_RETRY: Duration = Duration::from_millis(500);

/// Why an append to `MUSTER_TXN` or the applier failed; on the leader, any of them ends its term.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another writer appended since our last known sequence: this leader has been deposed.
    #[error("fenced: the log moved past sequence {expected} under us (another leader wrote)")]
    Fenced {
        /// The last sequence this leader believed in.
        expected: u64,
    },
    /// The leader's lease may have expired (e.g. the process was stopped): it must not write.
    #[error("the leader lease of epoch {0} may have expired; not writing")]
    LeaseExpired(u64),
    /// The txn would exceed the maximum log entry size.
    #[error("txn of {0} bytes exceeds the log entry limit")]
    TooLarge(usize),
    /// JetStream did not answer after every retry.
    #[error("append failed after {APPEND_ATTEMPTS} attempts: {0}")]
    Unavailable(String),
    /// A stream call failed.
    #[error("stream: {0}")]
    Stream(String),
    /// The store failed while applying.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log skipped entries this replica needs (they were trimmed behind a snapshot).
    #[error("log gap: expected sequence {expected}, got {got}")]
    Gap {
        /// What came next for us.
        expected: u64,
        /// What the stream delivered.
        got: u64,
    },
    /// A snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// Creates or updates the txn stream. File storage, no limits (the log is trimmed only behind a snapshot), direct
/// gets allowed (catch-up reads), deletes denied.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<stream::Info, LogError> {
    let config = stream::Config {
        name: subjects.txn_stream(),
        description: Some("muster transaction log: ordered state changes applied by every server".into()),
        subjects: vec![subjects.txn()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        deny_delete: true,
        max_message_size: (limits::MAX_TXN_BYTES + 64 * 1024) as i32,
        ..Default::default()
    };
    js.create_or_update_stream(config).await.map_err(|e| LogError::Stream(e.to_string()))
}

/// How long commands stay in `MUSTER_COMMANDS`: an agent that is away longer than this re-registers and gets its
/// state from the server, but cannot catch up on commands older than this (their tasks will have timed out).
const COMMAND_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Commands kept per host subject: bounds the stream per host whatever the age (a catch-up never reads more).
const COMMANDS_PER_HOST: i64 = 10_000;
/// How long before an un-acked report is redelivered (to this leader or, after a failover, the next one).
const REPORT_ACK_WAIT: Duration = Duration::from_secs(10);
/// Reports handed to the leader and not yet acked: a fan-out's results in flight.
const REPORT_MAX_ACK_PENDING: i64 = 100_000;
/// The leader's durable consumer on `MUSTER_REPORTS`.
pub const REPORTS_CONSUMER: &str = "muster-leader";

/// Creates or updates the command and report streams.
///
/// - `MUSTER_COMMANDS` (`<prefix>.cmd.*`): limits retention bounded by age and per-host count, direct gets for
///   agents' catch-up.
/// - `MUSTER_REPORTS` (`<prefix>.report.*`): work-queue retention, so a report is deleted once the leader acks it
///   (it has been committed to the log by then) and the stream does not grow.
pub async fn ensure_work_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(), LogError> {
    let commands = stream::Config {
        name: subjects.commands_stream(),
        description: Some("muster commands to agents; agents catch up from here after a restart".into()),
        subjects: vec![subjects.cmd_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        max_age: COMMAND_MAX_AGE,
        max_messages_per_subject: COMMANDS_PER_HOST,
        max_message_size: (limits::MAX_COMMAND_BYTES + 16 * 1024) as i32,
        ..Default::default()
    };
    js.create_or_update_stream(commands).await.map_err(|e| LogError::Stream(e.to_string()))?;
    let reports = stream::Config {
        name: subjects.reports_stream(),
        description: Some("muster reports from agents, deleted once the leader committed and acked them".into()),
        subjects: vec![subjects.report_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        max_age: COMMAND_MAX_AGE,
        max_message_size: (limits::MAX_REPORT_BYTES + 16 * 1024) as i32,
        ..Default::default()
    };
    js.create_or_update_stream(reports).await.map_err(|e| LogError::Stream(e.to_string()))?;
    Ok(())
}

/// The leader's durable pull consumer on `MUSTER_REPORTS` (explicit acks).
pub async fn reports_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<consumer::Consumer<consumer::pull::Config>, LogError> {
    let stream = js.get_stream(subjects.reports_stream()).await.map_err(|e| LogError::Stream(e.to_string()))?;
    stream
        .get_or_create_consumer(
            REPORTS_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(REPORTS_CONSUMER.into()),
                description: Some("the muster leader; acks a report after committing what it caused".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: REPORT_ACK_WAIT,
                max_ack_pending: REPORT_MAX_ACK_PENDING,
                filter_subject: subjects.report_all(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| LogError::Stream(e.to_string()))
}

/// The last sequence currently in the log.
pub async fn last_sequence(js: &jetstream::Context, subjects: &Subjects) -> Result<u64, LogError> {
    let mut s = js.get_stream(subjects.txn_stream()).await.map_err(|e| LogError::Stream(e.to_string()))?;
    let info = s.info().await.map_err(|e| LogError::Stream(e.to_string()))?;
    Ok(info.state.last_sequence)
}

/// The leader's write handle on the log.
pub struct Appender {
    lease: Lease,
    js: jetstream::Context,
    subject: String,
    stream: String,
    server_id: String,
    epoch: u64,
    last_seq: u64,
}

impl Appender {
    /// An appender for the leader holding `lease` that has applied the log up to `last_seq` (its end).
    pub fn new(js: jetstream::Context, subjects: &Subjects, server_id: &str, lease: Lease, last_seq: u64) -> Self {
        let epoch = lease.epoch;
        Self {
            lease,
            js,
            subject: subjects.txn(),
            stream: subjects.txn_stream(),
            server_id: server_id.to_string(),
            epoch,
            last_seq,
        }
    }

    /// The epoch this appender writes under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence this leader appended (or started from).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `txn` right after the last known sequence and returns its sequence.
    pub async fn append(&mut self, txn: &Txn) -> Result<u64, LogError> {
        if !self.lease.is_valid() {
            return Err(LogError::LeaseExpired(self.epoch));
        }
        let body = codec::encode(txn);
        if body.len() > limits::MAX_TXN_BYTES {
            return Err(LogError::TooLarge(body.len()));
        }
        let expected = self.last_seq;
        let msg_id = TxnMsgId { epoch: self.epoch, seq: expected + 1 }.to_string();
        let hdrs = header_map(headers::txn(&self.server_id, self.epoch));
        let mut last_err = String::new();
        for attempt in 1..=APPEND_ATTEMPTS {
            let publish = jetstream::message::PublishMessage::build()
                .payload(body.clone().into())
                .headers(hdrs.clone())
                .message_id(&msg_id)
                .expected_last_sequence(expected);
            let ack = match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(fut) => tokio::time::timeout(APPEND_ACK_TIMEOUT, fut).await,
                Err(e) => Ok(Err(e)),
            };
            match ack {
                Ok(Ok(ack)) => {
                    self.last_seq = ack.sequence;
                    return Ok(ack.sequence);
                }
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    // After a lost ack our own earlier attempt may be the entry that moved the log on.
                    if attempt > 1 && self.stored_by_us(expected + 1, &msg_id).await {
                        self.last_seq = expected + 1;
                        return Ok(expected + 1);
                    }
                    return Err(LogError::Fenced { expected });
                }
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = format!("no ack within {APPEND_ACK_TIMEOUT:?}"),
            }
            warn!(attempt, error = %last_err, "txn append failed; retrying with the same Nats-Msg-Id");
        }
        Err(LogError::Unavailable(last_err))
    }

    async fn stored_by_us(&self, seq: u64, msg_id: &str) -> bool {
        let Ok(stream) = self.js.get_stream_no_info(&self.stream).await else { return false };
        match stream.direct_get(seq).await {
            Ok(m) => m.headers.get(headers::MSG_ID).map(|v| v.as_str()) == Some(msg_id),
            Err(_) => false,
        }
    }
}

/// Applies the log to `store` from its `applied_seq` on, forever, publishing progress on `applied`.
///
/// A log entry that cannot be decoded is logged, counted (`txn.undecodable`) and skipped — all replicas skip the
/// same entry, so they stay identical — never retried forever and never a crash.
pub async fn run_applier(
    js: jetstream::Context,
    subjects: Subjects,
    store: Store,
    applied: watch::Sender<u64>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = apply_stream(&js, &subjects, &store, &applied, &metrics) => r,
            () = stalled(&js, &subjects, applied.subscribe()) => {
                metrics.inc(ServerCounter::TxnApplierRestarts);
                Err(LogError::Stream("the log has entries this replica is not receiving; recreating its consumer".into()))
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "txn applier interrupted; resuming");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(APPLIER_RETRY) => {}
        }
    }
}

/// How long the applier may receive nothing while the log has entries it has not applied. An ordered consumer
/// whose NATS node died can take a minute to notice; recreating it on a live node takes milliseconds.
const STALL_AFTER: Duration = Duration::from_secs(3);
/// How often the stall watch compares the log's end with `applied_seq`.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Returns once the log's end has stayed ahead of `applied` without progress for [`STALL_AFTER`].
async fn stalled(js: &jetstream::Context, subjects: &Subjects, applied: watch::Receiver<u64>) {
    let mut behind_since: Option<(tokio::time::Instant, u64)> = None;
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let Ok(end) = last_sequence(js, subjects).await else { continue };
        let now_applied = *applied.borrow();
        match behind_since {
            _ if end <= now_applied => behind_since = None,
            Some((since, at)) if at == now_applied => {
                if since.elapsed() >= STALL_AFTER {
                    warn!(applied = now_applied, log_end = end, "txn applier stalled");
                    return;
                }
            }
            _ => behind_since = Some((tokio::time::Instant::now(), now_applied)),
        }
    }
}

async fn apply_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    store: &Store,
    applied: &watch::Sender<u64>,
    metrics: &Metrics,
) -> Result<(), LogError> {
    let (mut from, _) = store.applied()?;
    let mut stream = js.get_stream(subjects.txn_stream()).await.map_err(|e| LogError::Stream(e.to_string()))?;
    let first = stream.info().await.map_err(|e| LogError::Stream(e.to_string()))?.state.first_sequence;
    if first > from + 1 {
        // What we need next was trimmed behind a snapshot: load it, then apply the log after it.
        let snap = crate::snapshot::latest(js, subjects)
            .await?
            .ok_or_else(|| LogError::Stream(format!("the log starts at {first} but no snapshot exists")))?;
        if snap.seq + 1 < first {
            return Err(LogError::Stream(format!(
                "the newest snapshot ends at {} but the log starts at {first}",
                snap.seq
            )));
        }
        if snap.seq > from {
            let st = store.clone();
            let seq = snap.seq;
            tokio::task::spawn_blocking(move || st.restore(&snap)).await.map_err(StoreError::from)??;
            metrics.inc(ServerCounter::SnapshotRestored);
            info!(seq, "state restored from snapshot");
            from = seq;
        }
    }
    applied.send_replace(from);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from + 1 },
            filter_subject: subjects.txn(),
            ..Default::default()
        })
        .await
        .map_err(|e| LogError::Stream(e.to_string()))?;
    let messages = consumer.messages().await.map_err(|e| LogError::Stream(e.to_string()))?;
    info!(from = from + 1, "applying txn log");
    let mut groups = messages.ready_chunks(MAX_APPLY_GROUP);
    let mut expected = from + 1;
    while let Some(group) = groups.next().await {
        let mut batch = Vec::with_capacity(group.len());
        let mut last_seen = None;
        for m in group {
            let m = m.map_err(|e| LogError::Stream(e.to_string()))?;
            let seq = m.info().map_err(|e| LogError::Stream(e.to_string()))?.stream_sequence;
            if seq > expected {
                // Trimmed under us: apply what we have, then start over (from the snapshot).
                if let Some(last) = last_seen {
                    let st = store.clone();
                    tokio::task::spawn_blocking(move || st.apply(&batch, last)).await.map_err(StoreError::from)??;
                    applied.send_replace(last);
                }
                return Err(LogError::Gap { expected, got: seq });
            }
            if seq < expected {
                continue;
            }
            expected = seq + 1;
            last_seen = Some(seq);
            match codec::decode::<Txn>(&m.payload, limits::MAX_TXN_BYTES + 64 * 1024) {
                Ok(txn) => batch.push((seq, txn)),
                Err(e) => {
                    metrics.inc(ServerCounter::TxnUndecodable);
                    error!(seq, error = %e, "skipping undecodable txn log entry");
                }
            }
        }
        let Some(last) = last_seen else { continue };
        let st = store.clone();
        let outcome = tokio::task::spawn_blocking(move || st.apply(&batch, last)).await.map_err(StoreError::from)??;
        metrics.add(ServerCounter::TxnApplied, outcome.applied);
        if outcome.stale > 0 {
            metrics.add(ServerCounter::TxnRefusedStaleEpoch, outcome.stale);
            warn!(count = outcome.stale, "refused txns from an older epoch");
        }
        debug!(seq = last, "applied");
        applied.send_replace(last);
    }
    Err(LogError::Stream("txn consumer ended".into()))
}
