//! The transaction log on JetStream (`MUSTER_TXN`): the leader appends with fencing, every instance applies it.
//!
//! - [`ensure_stream`] creates the stream idempotently at start.
//! - [`Appender`] is the leader's write side: `Nats-Expected-Last-Sequence` fences off a deposed leader, and
//!   `Nats-Msg-Id` makes a retried append (after a timed-out ack) land at most once.
//! - [`run_applier`] is every instance's read side: an ordered consumer from `applied_seq + 1`; entries are gathered
//!   into whole decisions ([`Decisions`]) and applied to redb in groups, publishing how far it read ([`Read`]) and
//!   how far it applied on `watch` channels the leader waits on. An entry it cannot understand stops it
//!   ([`LogError::NotUnderstood`]): it is never skipped.
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures::StreamExt;
use muster_nats::wire::header_map;
use muster_schemas::ids::TxnMsgId;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, headers, limits, Subjects, Txn};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::election::Lease;
use crate::metrics::{Metrics, ServerCounter};
use crate::snapshot::Installing;
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
    /// An entry this build cannot decode, or of a newer schema: applying past it would let this replica diverge
    /// from those that understand it, so the applier stops there (the instance exits) until it is upgraded.
    #[error("txn log entry {seq} is not understood by this build (txn schema {TXN_SCHEMA}): {reason}; applied up to {applied}, stopping")]
    NotUnderstood {
        /// The entry's sequence.
        seq: u64,
        /// The last sequence applied (it stays there).
        applied: u64,
        /// Why (the decode error, or its schema).
        reason: String,
    },
}

impl LogError {
    /// Whether retrying cannot help: the applier stops and the instance exits.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::NotUnderstood { .. })
    }
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
    /// An appender writing under `epoch` for the leader holding `lease`, which has read the log up to `last_seq`
    /// (its end). `epoch` is decided when the log is claimed ([`claim_epoch`]).
    pub fn new(
        js: jetstream::Context,
        subjects: &Subjects,
        server_id: &str,
        lease: Lease,
        epoch: u64,
        last_seq: u64,
    ) -> Self {
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

/// The epoch a new leader writes under: its lease's revision, unless the log already holds that epoch or a
/// higher one — after the election bucket was recreated (revisions restart at 1), or a lease won early because
/// a NATS node's clock stepped — then one above the log's. Decided when the log is claimed, from the log read to
/// its end, and written by the claim's own fenced append: a leader never writes under an epoch lower than the log's.
pub fn claim_epoch(lease_revision: u64, log_epoch: u64) -> u64 {
    lease_revision.max(log_epoch + 1)
}

/// How far this instance's applier has read the log: the last entry it received (applied, or held as a part of a
/// decision whose last part has not arrived yet) and the highest epoch of the entries read (or of the state it
/// started from).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Read {
    /// Last sequence received.
    pub seq: u64,
    /// Highest epoch in the log up to `seq`.
    pub epoch: u64,
}

/// Gathers log entries into whole decisions (pure). Every part of a decision but the last says it
/// [`continues`](Txn::continues); a leader appends a decision's parts one after the other and ends its term when
/// one fails, so a decision still open when an entry of another epoch arrives can never be completed: it is
/// dropped, by every replica at the same place in the log, and the caller who proposed it was told it failed.
#[derive(Debug, Default)]
pub struct Decisions {
    open: Vec<(u64, Txn)>,
}

impl Decisions {
    /// Takes the next entry. Its decision's entries go to `ready`, in log order, once `txn` is the last part;
    /// returns how many parts of an abandoned decision were dropped.
    pub fn push(&mut self, seq: u64, txn: Txn, ready: &mut Vec<(u64, Txn)>) -> u64 {
        let mut dropped = 0;
        if self.open.first().is_some_and(|(_, first)| first.epoch != txn.epoch) {
            dropped = self.open.len() as u64;
            self.open.clear();
        }
        let continues = txn.continues;
        self.open.push((seq, txn));
        if !continues {
            ready.append(&mut self.open);
        }
        dropped
    }
}

/// Applies the log to `store` from its `applied_seq` on until `shutdown` fires, publishing how far it read on
/// `read` and how far it applied on `applied` (always the last part of a whole decision).
///
/// A log entry this build cannot decode, or of a newer [`TXN_SCHEMA`], is logged, counted (`txn.undecodable`) and
/// stops the applier with [`LogError::NotUnderstood`], `applied_seq` left before it: skipping it would let this
/// replica diverge from those that understand it. Every other error is retried.
pub async fn run_applier(
    js: jetstream::Context,
    subjects: Subjects,
    store: Store,
    applied: watch::Sender<u64>,
    read: watch::Sender<Read>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), LogError> {
    // A snapshot install is progress, however long it takes: the stall watch waits while one runs.
    let installing = Installing::default();
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = apply_stream(&js, &subjects, &store, &applied, &read, &metrics, &installing) => r,
            () = stalled(&js, &subjects, read.subscribe(), installing.clone()) => {
                metrics.inc(ServerCounter::TxnApplierRestarts);
                Err(LogError::Stream("the log has entries this replica is not receiving; recreating its consumer".into()))
            }
        };
        match result {
            Err(e) if e.is_fatal() => {
                error!(error = %e, "txn applier stopped");
                return Err(e);
            }
            Err(e) => warn!(error = %e, "txn applier interrupted; resuming"),
            Ok(()) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(APPLIER_RETRY) => {}
        }
    }
}

/// How long the applier may receive nothing while the log has entries it has not read. An ordered consumer
/// whose NATS node died can take a minute to notice; recreating it on a live node takes milliseconds.
const STALL_AFTER: Duration = Duration::from_secs(3);
/// How often the stall watch compares the log's end with what the applier read.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Returns once the log's end has stayed ahead of `read` without progress for [`STALL_AFTER`] ([`StallWatch`]).
async fn stalled(js: &jetstream::Context, subjects: &Subjects, read: watch::Receiver<Read>, installing: Installing) {
    let mut watch = StallWatch::default();
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let Ok(end) = last_sequence(js, subjects).await else { continue };
        let now_read = read.borrow().seq;
        if watch.look(tokio::time::Instant::now(), end, now_read, installing.active()) {
            warn!(read = now_read, log_end = end, "txn applier stalled");
            return;
        }
    }
}

/// The stall watch's judgement, pure: the applier is stalled once the log's end has stayed ahead of what it read,
/// with no progress, for [`STALL_AFTER`]. A snapshot install is progress (the read sequence stands still while a
/// large state downloads and restores): the watch starts over once it ends.
#[derive(Debug, Default)]
struct StallWatch {
    /// Since when, and at which read sequence, the applier has been behind without progress.
    behind_since: Option<(tokio::time::Instant, u64)>,
}

impl StallWatch {
    /// One look: the log's end, how far the applier read, whether a snapshot install runs. True: stalled.
    fn look(&mut self, now: tokio::time::Instant, end: u64, read: u64, installing: bool) -> bool {
        match self.behind_since {
            _ if end <= read || installing => self.behind_since = None,
            Some((since, at)) if at == read => return now.duration_since(since) >= STALL_AFTER,
            _ => self.behind_since = Some((now, read)),
        }
        false
    }
}

/// Test hook: in a build with the `failpoints` feature, the failpoint `log::install_pause_ms` holds a snapshot
/// install this many milliseconds (as downloading and restoring a large state takes). Does nothing otherwise.
async fn install_pause() {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = fail::eval("log::install_pause_ms", |s| s.and_then(|s| s.parse::<u64>().ok())).flatten() {
        warn!(ms, "failpoint: holding the snapshot install");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Decodes one entry, or says why this build does not understand it (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn understand(payload: &[u8]) -> Result<Txn, String> {
    let txn = codec::decode::<Txn>(payload, limits::MAX_TXN_BYTES + 64 * 1024)
        .map_err(|e| format!("it does not decode ({e})"))?;
    if txn.schema > TXN_SCHEMA {
        return Err(format!("it has txn schema {}", txn.schema));
    }
    Ok(txn)
}

async fn apply_batch(store: &Store, batch: Vec<(u64, Txn)>, metrics: &Metrics) -> Result<u64, LogError> {
    let last = batch.last().map_or(0, |(seq, _)| *seq);
    let st = store.clone();
    let outcome = tokio::task::spawn_blocking(move || st.apply(&batch)).await.map_err(StoreError::from)??;
    metrics.add(ServerCounter::TxnApplied, outcome.applied);
    if outcome.stale > 0 {
        metrics.add(ServerCounter::TxnRefusedStaleEpoch, outcome.stale);
        warn!(count = outcome.stale, "refused txns from an older epoch");
    }
    Ok(last)
}

async fn apply_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    store: &Store,
    applied: &watch::Sender<u64>,
    read: &watch::Sender<Read>,
    metrics: &Metrics,
    installing: &Installing,
) -> Result<(), LogError> {
    let (mut from, mut epoch) = store.applied()?;
    let mut stream = js.get_stream(subjects.txn_stream()).await.map_err(|e| LogError::Stream(e.to_string()))?;
    let first = stream.info().await.map_err(|e| LogError::Stream(e.to_string()))?.state.first_sequence;
    if first > from + 1 {
        // What we need next was trimmed behind a snapshot: load it, then apply the log after it.
        let _install = installing.start();
        let snap = crate::snapshot::latest(js, subjects)
            .await?
            .ok_or_else(|| LogError::Stream(format!("the log starts at {first} but no snapshot exists")))?;
        if snap.seq + 1 < first {
            return Err(LogError::Stream(format!(
                "the newest snapshot ends at {} but the log starts at {first}",
                snap.seq
            )));
        }
        install_pause().await;
        if snap.seq > from {
            let st = store.clone();
            let seq = snap.seq;
            epoch = snap.epoch;
            tokio::task::spawn_blocking(move || st.restore(&snap)).await.map_err(StoreError::from)??;
            metrics.inc(ServerCounter::SnapshotRestored);
            info!(seq, "state restored from snapshot");
            from = seq;
        }
    }
    applied.send_replace(from);
    read.send_replace(Read { seq: from, epoch });
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
    // Restarted at a decision's first part (`applied_seq` is always a decision's last), so nothing is open yet.
    let mut decisions = Decisions::default();
    while let Some(group) = groups.next().await {
        let mut batch = Vec::with_capacity(group.len());
        let mut failed = None;
        for m in group {
            let m = m.map_err(|e| LogError::Stream(e.to_string()))?;
            let seq = m.info().map_err(|e| LogError::Stream(e.to_string()))?.stream_sequence;
            if seq < expected {
                continue;
            }
            if seq > expected {
                // Trimmed under us: apply the whole decisions we have, then start over (from the snapshot).
                failed = Some(LogError::Gap { expected, got: seq });
                break;
            }
            let txn = match understand(&m.payload) {
                Ok(txn) => txn,
                Err(reason) => {
                    metrics.inc(ServerCounter::TxnUndecodable);
                    // `applied` is filled in below, once the decisions before it are applied.
                    failed = Some(LogError::NotUnderstood { seq, applied: 0, reason });
                    break;
                }
            };
            expected = seq + 1;
            epoch = epoch.max(txn.epoch);
            let dropped = decisions.push(seq, txn, &mut batch);
            if dropped > 0 {
                metrics.add(ServerCounter::TxnDroppedIncomplete, dropped);
                warn!(parts = dropped, before = seq, "dropped a decision whose leader ended before its last part");
            }
        }
        if !batch.is_empty() {
            let last = apply_batch(store, batch, metrics).await?;
            debug!(seq = last, "applied");
            applied.send_replace(last);
        }
        read.send_replace(Read { seq: expected - 1, epoch });
        if let Some(mut e) = failed {
            if let LogError::NotUnderstood { applied: at, .. } = &mut e {
                *at = *applied.borrow();
            }
            return Err(e);
        }
    }
    Err(LogError::Stream("txn consumer ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::TxnOp;

    fn part(epoch: u64, n: u64, continues: bool) -> Txn {
        let ops = vec![TxnOp::ReserveIds { tasks: n, requests: n }];
        Txn { schema: TXN_SCHEMA, epoch, proposed_at: 0, ops, continues }
    }

    fn seqs(ready: &[(u64, Txn)]) -> Vec<u64> {
        ready.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn a_snapshot_install_is_progress_however_long_it_takes() {
        let t0 = tokio::time::Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Behind the log and not moving: stalled once STALL_AFTER has passed.
        let mut w = StallWatch::default();
        assert!(!w.look(at(0), 100, 10, false));
        assert!(!w.look(at(2), 100, 10, false));
        assert!(w.look(at(3), 100, 10, false), "a consumer that delivers nothing is recreated");
        // A minute-long install never is, and the watch starts over once it ends.
        let mut w = StallWatch::default();
        for s in 0..60 {
            assert!(!w.look(at(s), 100, 10, true), "an install restarted after {s} s");
        }
        assert!(!w.look(at(60), 100, 90, false));
        assert!(!w.look(at(62), 100, 90, false));
        assert!(w.look(at(63), 100, 90, false));
        // Progress, or the end reached, resets it.
        let mut w = StallWatch::default();
        assert!(!w.look(at(0), 100, 10, false));
        assert!(!w.look(at(2), 100, 11, false));
        assert!(!w.look(at(4), 100, 11, false));
        assert!(!w.look(at(5), 11, 11, false));
        assert!(!w.look(at(9), 100, 11, false));
    }

    #[test]
    fn a_decision_is_ready_only_with_its_last_part() {
        let mut d = Decisions::default();
        let mut ready = Vec::new();
        assert_eq!(d.push(1, part(3, 1, false), &mut ready), 0);
        assert_eq!(seqs(&ready), [1], "a one-entry decision is ready at once");
        ready.clear();
        d.push(2, part(3, 2, true), &mut ready);
        d.push(3, part(3, 3, true), &mut ready);
        assert!(ready.is_empty(), "parts are held until the last one");
        assert_eq!(d.push(4, part(3, 4, false), &mut ready), 0);
        assert_eq!(seqs(&ready), [2, 3, 4], "the whole decision, in order");
    }

    #[test]
    fn a_decision_left_without_its_last_part_is_dropped_at_the_next_epoch() {
        let mut d = Decisions::default();
        let mut ready = Vec::new();
        d.push(5, part(3, 1, true), &mut ready);
        d.push(6, part(3, 2, true), &mut ready);
        // The next leader's claim: the open decision can never be completed.
        assert_eq!(d.push(7, part(4, 0, false), &mut ready), 2);
        assert_eq!(seqs(&ready), [7]);
        // A restart re-reads from the last whole decision and decides the same.
        let mut again = Decisions::default();
        let mut ready2 = Vec::new();
        let dropped: u64 = [(5, part(3, 1, true)), (6, part(3, 2, true)), (7, part(4, 0, false))]
            .into_iter()
            .map(|(s, t)| again.push(s, t, &mut ready2))
            .sum();
        assert_eq!((dropped, seqs(&ready2)), (2, vec![7]));
    }

    #[test]
    fn an_entry_of_a_newer_schema_or_that_does_not_decode_is_not_understood() {
        assert_eq!(understand(&codec::encode(&part(3, 1, false))).unwrap(), part(3, 1, false));
        let newer = Txn { schema: TXN_SCHEMA + 1, ..part(3, 1, false) };
        assert!(understand(&codec::encode(&newer)).unwrap_err().contains("txn schema"));
        // An op kind this build does not know.
        let mut unknown = codec::encode(&part(3, 1, false));
        let at = unknown.windows(11).position(|w| w == b"reserve_ids").unwrap();
        unknown[at..at + 11].copy_from_slice(b"reserve_xyz");
        assert!(understand(&unknown).unwrap_err().contains("does not decode"));
        assert!(understand(b"not a txn").is_err());
    }

    #[test]
    fn the_claimed_epoch_is_above_every_epoch_in_the_log() {
        assert_eq!(claim_epoch(12, 7), 12, "normally the lease's revision");
        assert_eq!(claim_epoch(1, 40), 41, "a recreated election bucket restarts revisions at 1");
        assert_eq!(claim_epoch(40, 40), 41, "a revision the log already holds is not reused");
    }
}
