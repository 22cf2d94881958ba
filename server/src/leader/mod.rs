//! The leader role: the request chain of DESIGN.md around the pure [`core::LeaderCore`].
//!
//! Prep happens in the listeners ([`crate::listen`]); Propose is `core.step` over a batch of inputs, whose touched
//! records are appended to the log with fencing; Sync is this instance's applier writing redb (the leader waits for
//! it); Final is [`perform`]: replies, report acks, API answers, change events, counters. The batch's commands then
//! go to [`publish_commands`], which stores them in `MUSTER_COMMANDS` while the loop steps the next batches and
//! hands their stream sequences back as an input. Any failure of the log or of JetStream ends the leadership: the
//! next term starts again from the log.

pub mod core;
mod work;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use muster_schemas::commands::{Report, ReportBody};
use muster_schemas::{
    codec, headers, limits, Heartbeat, MessageKind, RegisterRequest, Subjects, Txn, TxnOp, UnixMillis, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use self::core::{
    ApiCall, ApiFailure, ChangeEvent, Effect, Input, LeaderCore, Loaded, Outgoing, Output, Reply, Timing,
};
use crate::election::{self, Lease};
use crate::log::{self, Appender, LogError};
use crate::metrics::Metrics;
use crate::status::Heard;
use crate::store::{Store, StoreError};

/// Inputs queued for the core. Heartbeats of 100k hosts at a 5 s interval arrive at 20k/s; this absorbs a second
/// of them while a commit is in flight, and beyond that the NATS subscription buffer takes the backpressure.
pub const INPUT_CAPACITY: usize = 32_768;
/// Most inputs stepped per batch (one group commit). Bounds the latency of the first input in the batch.
const MAX_BATCH: usize = 8_192;
/// How long the leader waits for its own applier to apply what it appended before giving up the lease.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-txn framing overhead budget when splitting ops to fit [`limits::MAX_TXN_BYTES`].
const TXN_OVERHEAD: usize = 256;
/// Command publishes awaiting their JetStream ack at once (a fan-out to 100k hosts is pipelined, not serial).
const PUBLISH_PIPELINE: usize = 2_048;
/// Reports requested per pull from the leader's consumer.
const REPORT_PULL_BATCH: usize = 1_000;
/// How long one pull request for reports lives before the client issues the next.
const REPORT_PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Most stored commands handed back to the core in one [`Queued::Delivered`].
const DELIVERED_CHUNK: usize = 1_024;
/// How long to wait for a command's JetStream ack before retrying with the same `Nats-Msg-Id`.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a new leader tries to claim the log end before giving up the lease.
const EPOCH_CLAIM_ATTEMPTS: u32 = 5;
/// Attempts per command publish before the leader steps down.
const PUBLISH_ATTEMPTS: u32 = 3;

/// The answer to an operator call.
pub type ApiResult = Result<serde_json::Value, ApiFailure>;

/// What listeners hand the leader: an input plus what its answer needs (admission permit, message to ack, caller).
pub enum Queued {
    /// A registration holding an admission permit until its reply is sent.
    Register {
        /// The request.
        req: Box<RegisterRequest>,
        /// Reply subject.
        reply: Option<String>,
        /// Admission permit.
        permit: OwnedSemaphorePermit,
    },
    /// A heartbeat.
    Heartbeat {
        /// The heartbeat.
        hb: Heartbeat,
        /// The agent's control inbox.
        reply: Option<String>,
        /// When the listener heard it.
        at: Instant,
    },
    /// A report, acked once its effect is committed.
    Report {
        /// The report.
        report: Box<Report>,
        /// The JetStream message to ack (boxed: it is large, heartbeats are the common input); `None` for the early
        /// copy of a final report heard on the core subscription.
        msg: Option<Box<jetstream::Message>>,
    },
    /// An operator call.
    Api {
        /// The call.
        call: ApiCall,
        /// Where the answer goes.
        respond: oneshot::Sender<ApiResult>,
    },
    /// Commands the publisher stored, with their stream sequences.
    Delivered(Vec<(Outgoing, u64)>),
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The log failed or fenced us.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The applier did not catch up in time.
    #[error("own applier did not reach sequence {0} within {APPLY_TIMEOUT:?}")]
    ApplyTimeout(u64),
    /// A command could not be stored.
    #[error("command publish failed: {0}")]
    Publish(String),
}

/// Everything the leader needs.
#[derive(Clone)]
pub struct LeaderDeps {
    /// NATS client (replies, events).
    pub client: async_nats::Client,
    /// JetStream context (log, commands, reports).
    pub js: jetstream::Context,
    /// Names.
    pub subjects: Subjects,
    /// This instance.
    pub server_id: String,
    /// Heartbeat timing.
    pub timing: Timing,
    /// redb.
    pub store: Store,
    /// Applier progress.
    pub applied: watch::Receiver<u64>,
    /// Counters.
    pub metrics: Metrics,
    /// Heartbeat arrivals as the listener heard them (liveness does not wait for the core to step them).
    pub heard: Heard,
}

/// Attachments of the batch being processed, by token.
#[derive(Default)]
struct Pending {
    acks: HashMap<u64, Box<jetstream::Message>>,
    apis: HashMap<u64, oneshot::Sender<ApiResult>>,
    permits: Vec<OwnedSemaphorePermit>,
    next: u64,
}

impl Pending {
    fn input(&mut self, q: Queued) -> Input {
        self.next += 1;
        let token = self.next;
        match q {
            Queued::Register { req, reply, permit } => {
                self.permits.push(permit);
                Input::Register { req, reply }
            }
            Queued::Heartbeat { hb, reply, at } => Input::Heartbeat { hb, reply, at },
            Queued::Report { report, msg: Some(msg) } => {
                self.acks.insert(token, msg);
                Input::Report { report, ack: Some(token) }
            }
            Queued::Report { report, msg: None } => Input::Report { report, ack: None },
            Queued::Api { call, respond } => {
                self.apis.insert(token, respond);
                Input::Api { call, token }
            }
            Queued::Delivered(stored) => Input::Delivered(stored),
        }
    }
}

/// Leads under `lease` until `deposed` fires (lease lost, shutdown) or the log fails. Inputs arrive on `inputs`;
/// the reports consumer is started here and feeds `queue`.
pub async fn lead(
    deps: LeaderDeps,
    lease: Lease,
    kv: kv::Store,
    queue: mpsc::Sender<Queued>,
    mut inputs: mpsc::Receiver<Queued>,
    deposed: CancellationToken,
) -> Result<(), LeaderError> {
    // Apply the log to its end, then claim it with an empty txn of our epoch (ZooKeeper's NEWLEADER): once that is
    // in, a deposed leader's expected-last-sequence can never match again. A deposed leader that appended in the
    // meantime just moves the end: catch up again and retry.
    let mut appender = None;
    for _ in 0..EPOCH_CLAIM_ATTEMPTS {
        let last = log::last_sequence(&deps.js, &deps.subjects).await?;
        wait_applied(&deps.applied, last, &deposed).await?;
        let mut a = Appender::new(deps.js.clone(), &deps.subjects, &deps.server_id, lease.clone(), last);
        let marker = Txn { schema: PROTOCOL_VERSION, epoch: lease.epoch, proposed_at: unix_millis(), ops: Vec::new() };
        match a.append(&marker).await {
            Ok(seq) => {
                wait_applied(&deps.applied, seq, &deposed).await?;
                appender = Some(a);
                break;
            }
            Err(LogError::Fenced { .. }) => warn!("the log moved while taking over; catching up again"),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(mut appender) = appender else {
        return Err(LogError::Stream("could not claim the log for this epoch".into()).into());
    };
    let last = appender.last_seq();
    let loaded = load(&deps.store)?;
    info!(
        epoch = lease.epoch,
        seq = last,
        hosts = loaded.hosts.len(),
        requests = loaded.requests.iter().filter(|r| !r.status.is_terminal()).count(),
        "leading"
    );
    let mut core = LeaderCore::new(lease.epoch, deps.timing, loaded, Instant::now(), unix_millis());
    core.hear_from(deps.heard.clone());
    // Liveness and task deadlines are checked every `tick`: when idle on a timer, under load as part of the next
    // batch once due (a queue that never empties must not starve failure detection).
    let tick = (deps.timing.interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut next_tick = Instant::now() + tick;
    let tasks = TaskTracker::new();
    // Unbounded: the loop must never wait on the publisher, which waits on the loop's input queue.
    let (commands, to_publish) = mpsc::unbounded_channel::<Vec<Outgoing>>();
    {
        let (deps, stop, queue) = (deps.clone(), deposed.clone(), queue.clone());
        tasks.spawn(async move {
            if let Err(e) = publish_commands(&deps, to_publish, queue, stop.clone()).await {
                error!(error = %e, "command publisher failed; stepping down");
                stop.cancel();
            }
        });
    }
    {
        let (deps, stop) = (deps.clone(), deposed.clone());
        tasks.spawn(async move {
            if let Err(e) = consume_reports(&deps, queue, stop.clone()).await {
                error!(error = %e, "report consumer failed; stepping down");
                stop.cancel();
            }
        });
    }

    let mut redo = Output::default();
    core.take_over(unix_millis(), &mut redo);
    core.end_batch(&mut redo);
    if redo.changes_state() {
        let wall = unix_millis();
        commit(&deps, &mut core, &mut appender, &mut redo, wall).await?;
        perform(&deps, redo.effects, &mut Pending::default()).await;
        let _ = commands.send(redo.publish);
    }

    let result = loop {
        let first = tokio::select! {
            biased;
            _ = deposed.cancelled() => break Ok(()),
            Some(q) = inputs.recv() => Some(q),
            _ = tokio::time::sleep_until(next_tick) => None,
        };
        let mut pending = Pending::default();
        let mut batch: Vec<Input> = first.map(|q| pending.input(q)).into_iter().collect();
        while batch.len() < MAX_BATCH {
            match inputs.try_recv() {
                Ok(q) => batch.push(pending.input(q)),
                Err(_) => break,
            }
        }
        let (now, wall) = (Instant::now(), unix_millis());
        if now >= next_tick {
            batch.push(Input::Tick);
            next_tick = now + tick;
        }
        if batch.is_empty() {
            continue;
        }
        let mut out = Output::default();
        let inputs_n = batch.len();
        for input in batch {
            core.step(input, now, wall, &mut out);
        }
        core.end_batch(&mut out);
        debug!(inputs = inputs_n, step_us = now.elapsed().as_micros() as u64, "batch stepped");
        if out.changes_state() {
            if let Err(e) = commit(&deps, &mut core, &mut appender, &mut out, wall).await {
                fail(&deps, out.effects, &mut pending).await;
                break Err(e);
            }
        }
        let performing = Instant::now();
        let effects = out.effects.len();
        perform(&deps, out.effects, &mut pending).await;
        debug!(effects, perform_us = performing.elapsed().as_micros() as u64, "batch performed");
        if !out.publish.is_empty() {
            let _ = commands.send(out.publish);
        }
    };
    deposed.cancel();
    tasks.close();
    tasks.wait().await;
    election::release(&kv, &lease).await;
    result
}

/// Commits the batch's records. Its commands are stored afterwards, by [`publish_commands`]: committing first
/// means no agent ever runs a command for work the log does not have. A leader that dies before storing them leaves
/// QUEUED tasks without a command sequence, which the next leader publishes again under the same `Nats-Msg-Id`
/// ([`LeaderCore::take_over`]); one that dies after storing but before recording the sequences leaves the same, and
/// JetStream's duplicate window makes the re-publish land once.
async fn commit(
    deps: &LeaderDeps,
    core: &mut LeaderCore,
    appender: &mut Appender,
    out: &mut Output,
    wall: UnixMillis,
) -> Result<(), LeaderError> {
    let started = Instant::now();
    let mut ops = Vec::new();
    ops.extend(core.reserve_ids());
    let dirty = std::mem::take(&mut out.dirty);
    ops.extend(core.ops(&dirty));
    let n_ops = ops.len();
    let txns = propose(deps, appender, ops, wall).await?;
    debug!(ops = n_ops, txns, ms = started.elapsed().as_millis() as u64, "batch committed");
    deps.metrics.add("txn.committed", txns);
    Ok(())
}

/// Stores committed commands in `MUSTER_COMMANDS`, in order, many acks in flight, while the leader goes on stepping
/// (a fan-out to 100k hosts must not stop reports from being processed), and hands each run of stored commands
/// back to the core as [`Queued::Delivered`] so their sequences are committed with a later batch.
async fn publish_commands(
    deps: &LeaderDeps,
    batches: mpsc::UnboundedReceiver<Vec<Outgoing>>,
    queue: mpsc::Sender<Queued>,
    stop: CancellationToken,
) -> Result<(), LeaderError> {
    let commands = futures::stream::unfold(batches, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
        .flat_map(futures::stream::iter);
    let stored = commands
        .map(|o| async move {
            let seq = publish_command(deps, &o).await;
            (o, seq)
        })
        .buffered(PUBLISH_PIPELINE)
        .ready_chunks(DELIVERED_CHUNK);
    let mut stored = std::pin::pin!(stored);
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = stored.next() => match c { Some(c) => c, None => return Ok(()) },
        };
        let mut done = Vec::with_capacity(chunk.len());
        for (o, seq) in chunk {
            done.push((o, seq?));
        }
        deps.metrics.add("commands.published", done.len() as u64);
        if queue.send(Queued::Delivered(done)).await.is_err() {
            return Ok(());
        }
    }
}

async fn publish_command(deps: &LeaderDeps, o: &Outgoing) -> Result<u64, LeaderError> {
    let mut h = msg_headers(MessageKind::Command, o.host.as_str());
    if o.task.is_some() {
        // `t<task>-a<attempt>` → `<task>-a<attempt>`.
        h.insert(headers::TASK, o.msg_id.trim_start_matches('t'));
    }
    let payload = bytes::Bytes::from(codec::encode(&o.command));
    let subject = deps.subjects.cmd(&o.host);
    let mut last = String::new();
    for _ in 0..PUBLISH_ATTEMPTS {
        let msg = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .headers(h.clone())
            .message_id(&o.msg_id);
        let ack = match deps.js.send_publish(subject.clone(), msg).await {
            Ok(fut) => tokio::time::timeout(PUBLISH_ACK_TIMEOUT, fut).await,
            Err(e) => Ok(Err(e)),
        };
        match ack {
            Ok(Ok(ack)) => return Ok(ack.sequence),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no ack in time".into(),
        }
        warn!(msg_id = %o.msg_id, error = %last, "command publish failed; retrying with the same Nats-Msg-Id");
    }
    Err(LeaderError::Publish(last))
}

/// Appends `ops` as one or more txns (each under the size limit) and waits until this instance applied them.
/// Returns the number of txns.
async fn propose(
    deps: &LeaderDeps,
    appender: &mut Appender,
    ops: Vec<TxnOp>,
    wall: UnixMillis,
) -> Result<u64, LeaderError> {
    if ops.is_empty() {
        return Ok(0);
    }
    let mut txns = Vec::new();
    let mut current = Vec::new();
    let mut size = TXN_OVERHEAD;
    for op in ops {
        let op_size = codec::encode(&op).len();
        if !current.is_empty() && size + op_size > limits::MAX_TXN_BYTES {
            txns.push(std::mem::take(&mut current));
            size = TXN_OVERHEAD;
        }
        size += op_size;
        current.push(op);
    }
    txns.push(current);
    let n = txns.len() as u64;
    let mut last = 0;
    for ops in txns {
        let txn = Txn { schema: PROTOCOL_VERSION, epoch: appender.epoch(), proposed_at: wall, ops };
        last = appender.append(&txn).await?;
    }
    wait_applied(&deps.applied, last, &CancellationToken::new()).await?;
    Ok(n)
}

async fn wait_applied(applied: &watch::Receiver<u64>, seq: u64, stop: &CancellationToken) -> Result<(), LeaderError> {
    let mut rx = applied.clone();
    tokio::select! {
        r = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|a| *a >= seq)) => match r {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LeaderError::ApplyTimeout(seq)),
        },
        _ = stop.cancelled() => Ok(()),
    }
}

/// Everything the core starts from.
fn load(store: &Store) -> Result<Loaded, StoreError> {
    let requests = store.requests()?;
    let mut tasks = Vec::new();
    for r in requests.iter().filter(|r| !r.status.is_terminal()) {
        for t in r.stages.iter().flat_map(|s| &s.tasks) {
            tasks.extend(store.task(*t)?);
        }
    }
    Ok(Loaded {
        hosts: store.hosts()?,
        stacks: store.stacks()?,
        blueprints: store.blueprints()?,
        components: store.host_components()?,
        requests,
        tasks,
        cursors: store.cursors()?,
        max_task: store.max_task_id()?,
        reserved: store.reserved()?,
    })
}

/// The batch failed to commit: nobody is told it succeeded. Registrations and API calls get a retryable error;
/// reports stay un-acked (JetStream redelivers them to the next leader).
async fn fail(deps: &LeaderDeps, effects: Vec<Effect>, pending: &mut Pending) {
    for e in effects {
        match e {
            Effect::Reply { to, host, body: Reply::Register(_) } => {
                let body = muster_schemas::RegisterReply::Rejected {
                    code: muster_schemas::ErrorCode::Internal,
                    message: "the transaction log is unavailable; retry".into(),
                    retry_after_ms: Some(1000),
                };
                let mut h = msg_headers(MessageKind::RegisterReply, host.as_str());
                h.insert(headers::ERROR, muster_schemas::ErrorCode::Internal.as_str());
                let _ = deps.client.publish_with_headers(to, h, codec::encode(&body).into()).await;
            }
            Effect::Api { token, .. } => {
                if let Some(tx) = pending.apis.remove(&token) {
                    let _ = tx.send(Err(ApiFailure { code: 503, message: "leader stepped down; retry".into() }));
                }
            }
            _ => {}
        }
    }
}

/// Final: performs effects in order. A failed publish is logged; the state is already committed.
async fn perform(deps: &LeaderDeps, effects: Vec<Effect>, pending: &mut Pending) {
    for effect in effects {
        match effect {
            Effect::Count(name) => {
                deps.metrics.inc(name);
            }
            Effect::Reply { to, host, body } => {
                let (kind, payload, error) = match &body {
                    Reply::Register(r) => (MessageKind::RegisterReply, codec::encode(r), register_error(r)),
                    Reply::Heartbeat(r) => (MessageKind::HeartbeatReply, codec::encode(r), heartbeat_error(r)),
                };
                let mut h = msg_headers(kind, host.as_str());
                if let Some(code) = error {
                    h.insert(headers::ERROR, code);
                }
                if let Err(e) = deps.client.publish_with_headers(to, h, payload.into()).await {
                    warn!(host = %host, error = %e, "reply not sent");
                }
            }
            Effect::Ack { token, term } => {
                if let Some(msg) = pending.acks.remove(&token) {
                    let kind = if term { AckKind::Term } else { AckKind::Ack };
                    if let Err(e) = msg.ack_with(kind).await {
                        warn!(error = %e, "report ack failed (it will be redelivered and ignored)");
                    }
                }
            }
            Effect::Api { token, result } => {
                if let Some(tx) = pending.apis.remove(&token) {
                    // The log sequence the answer's changes are in, so the caller can read its writes anywhere.
                    let seq = *deps.applied.borrow();
                    let result = result.map(|mut v| {
                        if let Some(o) = v.as_object_mut() {
                            o.insert("seq".into(), seq.into());
                        }
                        v
                    });
                    let _ = tx.send(result);
                }
            }
            Effect::Event(ev) => publish_event(deps, ev).await,
        }
    }
    pending.permits.clear();
}

async fn publish_event(deps: &LeaderDeps, ev: ChangeEvent) {
    let (kind, key, summary, body) = match &ev {
        ChangeEvent::Host(e) => {
            let from = e.from.map_or("NEW", |s| s.as_str());
            info!(host = %e.host, from, to = %e.to, reason = %e.reason, "host state changed");
            ("host", e.host.to_string(), format!("{from} -> {}: {}", e.to, e.reason), codec::encode(e))
        }
        ChangeEvent::Component(e) => {
            info!(host = %e.host, component = %e.component, from = %e.from, to = %e.to, "component state changed");
            (
                "component",
                e.host.to_string(),
                format!("{} {} -> {}: {}", e.component, e.from, e.to, e.reason),
                codec::encode(e),
            )
        }
        ChangeEvent::Task(e) => {
            ("task", e.host.to_string(), format!("task {} {} {}", e.task, e.what, e.status), codec::encode(e))
        }
        ChangeEvent::Request(e) => (
            "request",
            e.request.to_string(),
            format!("request {} {} {}", e.request, e.status, e.detail),
            codec::encode(e),
        ),
    };
    let mut h = msg_headers(MessageKind::Event, &key);
    h.insert(headers::SUMMARY, summary.as_str());
    let subject = format!("{}.events.{kind}.{key}", deps.subjects.prefix());
    if let Err(e) = deps.client.publish_with_headers(subject, h, body.into()).await {
        error!(error = %e, "change event not published");
    }
}

/// Consumes `MUSTER_REPORTS` with the leader's durable consumer; Prep-rejected reports are refused (term-acked)
/// and counted here, the rest go to the core and are acked after commit.
///
/// Final task reports are also heard early, on a core subscription to the same subjects: an agent's publish reaches
/// subscribers as the stream stores it, while the consumer delivers it only after the stream's backlog — in a
/// 100,000-host fan-out, tens of thousands of reports wait behind fsyncs for tens of seconds. The early copy ends
/// its task at once (committed to the log like any transition); the stored copy still arrives, is recognised as
/// its duplicate and acked, so a report is removed from the stream only after what it caused is committed. Early
/// copies never wait: when the core's queue is full, or anything about one is off, the stored copy decides.
async fn consume_reports(
    deps: &LeaderDeps,
    queue: mpsc::Sender<Queued>,
    stop: CancellationToken,
) -> Result<(), LeaderError> {
    let consumer = log::reports_consumer(&deps.js, &deps.subjects).await?;
    let mut early = deps
        .client
        .subscribe(deps.subjects.report_all())
        .await
        .map_err(|e| LogError::Stream(format!("subscribing to early reports: {e}")))?;
    // Pulls of up to 1,000 reports (a fan-out returns them by the thousand) that expire after a few seconds: a pull
    // that was lost or used up is replaced within REPORT_PULL_EXPIRES rather than the client's default 30 s.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(REPORT_PULL_BATCH)
        .expires(REPORT_PULL_EXPIRES)
        .heartbeat(REPORT_PULL_EXPIRES / 2)
        .messages()
        .await
        .map_err(|e| LogError::Stream(e.to_string()))?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = early.next() => match m {
                Some(m) => { early_report(deps, &queue, &m); continue }
                None => return Err(LogError::Stream("early report subscription ended".into()).into()),
            },
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => { warn!(error = %e, "report stream error"); continue }
                None => return Err(LogError::Stream("report consumer ended".into()).into()),
            },
        };
        match crate::prep::report(&deps.subjects, msg.subject.as_str(), &msg.payload) {
            Ok(report) => {
                let q = Queued::Report { report: Box::new(report), msg: Some(Box::new(msg)) };
                if queue.send(q).await.is_err() {
                    return Ok(());
                }
            }
            Err(r) => {
                deps.metrics.inc(&format!("report.rejected.{}", r.code));
                warn!(subject = %msg.subject, code = %r.code, "report rejected: {}", r.message);
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }
}

/// Hands the early copy of a final task report to the core if it passes Prep and the core has room; anything else
/// is left to the stored copy (which is counted and logged if it is bad).
fn early_report(deps: &LeaderDeps, queue: &mpsc::Sender<Queued>, msg: &async_nats::Message) {
    let Ok(report) = crate::prep::report(&deps.subjects, msg.subject.as_str(), &msg.payload) else { return };
    let ReportBody::Task(t) = &report.body else { return };
    if !t.phase.is_final() {
        return;
    }
    if queue.try_send(Queued::Report { report: Box::new(report), msg: None }).is_err() {
        deps.metrics.inc("report.early.skipped");
    }
}

fn register_error(r: &muster_schemas::RegisterReply) -> Option<&'static str> {
    match r {
        muster_schemas::RegisterReply::Rejected { code, .. } => Some(code.as_str()),
        muster_schemas::RegisterReply::Accepted { .. } => None,
    }
}

fn heartbeat_error(r: &muster_schemas::HeartbeatReply) -> Option<&'static str> {
    match r {
        muster_schemas::HeartbeatReply::Rejected { code, .. } => Some(code.as_str()),
        muster_schemas::HeartbeatReply::Reregister { .. } => None,
    }
}

/// The headers every muster message carries.
pub fn msg_headers(kind: MessageKind, host: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::MSGPACK);
    h.insert(headers::KIND, kind.as_str());
    h.insert(headers::HOST, host);
    h.insert(headers::SCHEMA, PROTOCOL_VERSION.to_string().as_str());
    h
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_millis() -> UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
#[cfg(test)]
mod tests;
