//! The leader's NATS shell: performs what [`crate::leader::driver::drive`] hands it. Commits append txns to the log
//! with fencing and wait for this instance's applier; effects become NATS publishes, report acks and API answers;
//! commands go to the publisher task; suspects are looked up in the arrival record.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use muster_schemas::api::{ApiError, Committed};
use muster_schemas::{
    codec, headers, limits, MessageKind, RegisterReply, Subjects, Txn, TxnOp, UnixMillis, PROTOCOL_VERSION,
};
use muster_schemas::{ErrorCode, HeartbeatReply, HostId};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::contract::{ChangeEvent, Effect, Input, Outgoing, Reply, Timing};
use super::driver::Shell;
use super::inbox::{Queued, WriteResult};
use crate::log::{Appender, LogError};
use crate::metrics::{Metrics, ServerCounter};
use crate::status::LastSeen;
use crate::store::{Store, StoreError};
use muster_nats::wire::header_map;

/// How long the leader waits for its own applier to apply what it appended before giving up the lease.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-txn framing overhead budget when splitting ops to fit [`limits::MAX_TXN_BYTES`].
const TXN_OVERHEAD: usize = 256;
/// What a registration refused because the batch could not be committed is told to wait before retrying.
const UNCOMMITTED_RETRY_MS: u64 = 1000;

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
    /// NATS client: replies, events, the early report subscription.
    pub client: async_nats::Client,
    /// JetStream: the log, commands, reports.
    pub js: jetstream::Context,
    /// Subject and stream names under this cluster's prefix.
    pub subjects: Subjects,
    /// This instance's id, written into every txn it appends.
    pub server_id: String,
    /// Heartbeat and task timing the core applies.
    pub timing: Timing,
    /// redb, read once when leadership starts.
    pub store: Store,
    /// This instance's applier progress: a commit is done once it reaches the appended sequence.
    pub applied: watch::Receiver<u64>,
    /// Counters shown by `muster stats`.
    pub metrics: Metrics,
    /// The arrival record the heartbeat listener writes; suspects are looked up here.
    pub last_seen: LastSeen,
}

/// What the inputs of the batch being performed carry for their answers, by token.
#[derive(Default)]
struct Attachments {
    acks: HashMap<u64, Box<jetstream::Message>>,
    apis: HashMap<u64, oneshot::Sender<WriteResult>>,
    /// Admission permits of the batch's registrations: released once their replies are sent.
    permits: Vec<OwnedSemaphorePermit>,
    next: u64,
}

/// The leader's I/O for one term.
pub struct NatsShell {
    deps: LeaderDeps,
    appender: Appender,
    /// To the command publisher. Unbounded: the loop must never wait on the publisher, which waits on the loop's
    /// input queue.
    commands: mpsc::UnboundedSender<Vec<Outgoing>>,
    attachments: Attachments,
    /// Inputs the shell itself produced (suspects' arrivals), stepped first in the next batch.
    follow_ups: Vec<Input>,
}

impl NatsShell {
    /// A shell appending through `appender` and handing commands to `commands`.
    pub fn new(deps: LeaderDeps, appender: Appender, commands: mpsc::UnboundedSender<Vec<Outgoing>>) -> Self {
        Self { deps, appender, commands, attachments: Attachments::default(), follow_ups: Vec::new() }
    }

    /// Starts a batch: the inputs the shell owes the core come first. Attachments of the previous batch are
    /// dropped (an admission permit is released at the latest here).
    pub fn begin_batch(&mut self) -> Vec<Input> {
        self.attachments = Attachments::default();
        std::mem::take(&mut self.follow_ups)
    }

    /// Turns a queued input into the core's input, keeping what its answer needs.
    pub fn input(&mut self, q: Queued) -> Input {
        let a = &mut self.attachments;
        a.next += 1;
        let token = a.next;
        match q {
            Queued::Register { req, reply, permit } => {
                a.permits.push(permit);
                Input::Register { req, reply }
            }
            Queued::Heartbeat { hb, reply } => Input::Heartbeat { hb, reply },
            Queued::Report { report, msg: Some(msg) } => {
                a.acks.insert(token, msg);
                Input::Report { report, ack: Some(token) }
            }
            Queued::Report { report, msg: None } => Input::Report { report, ack: None },
            Queued::Api { call, respond } => {
                a.apis.insert(token, respond);
                Input::Api { call, token }
            }
            Queued::Delivered(stored) => Input::Delivered(stored),
        }
    }

    async fn reply(&self, to: String, host: &HostId, body: &Reply) {
        let (kind, payload, error) = match body {
            Reply::Register(r) => (MessageKind::RegisterReply, codec::encode(r), register_error(r)),
            Reply::Heartbeat(r) => (MessageKind::HeartbeatReply, codec::encode(r), heartbeat_error(r)),
        };
        let h = header_map(headers::reply(kind, host.as_str(), error));
        if let Err(e) = self.deps.client.publish_with_headers(to, h, payload.into()).await {
            warn!(host = %host, error = %e, "reply not sent");
        }
    }

    async fn publish_event(&self, ev: ChangeEvent) {
        let subjects = &self.deps.subjects;
        let (subject, key, summary, body) = match &ev {
            ChangeEvent::Host(e) => {
                let from = e.from.map_or("NEW", |s| s.as_str());
                info!(host = %e.host, from, to = %e.to, reason = %e.reason, "host state changed");
                let summary = format!("{from} -> {}: {}", e.to, e.reason);
                (subjects.event_host(&e.host), e.host.to_string(), summary, codec::encode(e))
            }
            ChangeEvent::Component(e) => {
                info!(host = %e.host, component = %e.component, from = %e.from, to = %e.to, "component state changed");
                let summary = format!("{} {} -> {}: {}", e.component, e.from, e.to, e.reason);
                (subjects.event_component(&e.host), e.host.to_string(), summary, codec::encode(e))
            }
            ChangeEvent::Task(e) => {
                let summary = format!("task {} {} {}", e.task, e.what, e.status);
                (subjects.event_task(&e.host), e.host.to_string(), summary, codec::encode(e))
            }
            ChangeEvent::Request(e) => {
                let summary = format!("request {} {} {}", e.request, e.status, e.detail);
                (subjects.event_request(e.request), e.request.to_string(), summary, codec::encode(e))
            }
        };
        let h = header_map(headers::event(&key, &summary));
        if let Err(e) = self.deps.client.publish_with_headers(subject, h, body.into()).await {
            error!(error = %e, "change event not published");
        }
    }
}

impl Shell for NatsShell {
    type Error = LeaderError;

    /// Appends `ops` as one or more txns (each under the size limit) and waits until this instance applied them.
    async fn commit(&mut self, ops: Vec<TxnOp>, wall: UnixMillis) -> Result<(), LeaderError> {
        let started = Instant::now();
        let n_ops = ops.len();
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
            let txn = Txn { schema: PROTOCOL_VERSION, epoch: self.appender.epoch(), proposed_at: wall, ops };
            last = self.appender.append(&txn).await?;
        }
        wait_applied(&self.deps.applied, last, &CancellationToken::new()).await?;
        debug!(ops = n_ops, txns = n, ms = started.elapsed().as_millis() as u64, "batch committed");
        self.deps.metrics.add(ServerCounter::TxnCommitted, n);
        Ok(())
    }

    /// Final: performs effects in order. A failed publish is logged; the state is already committed.
    async fn perform(&mut self, effects: Vec<Effect>) {
        let performing = Instant::now();
        let n = effects.len();
        for effect in effects {
            match effect {
                Effect::Count(name) => {
                    self.deps.metrics.inc(name);
                }
                Effect::Reply { to, host, body } => self.reply(to, &host, &body).await,
                Effect::Ack { token, term } => {
                    if let Some(msg) = self.attachments.acks.remove(&token) {
                        let kind = if term { AckKind::Term } else { AckKind::Ack };
                        if let Err(e) = msg.ack_with(kind).await {
                            warn!(error = %e, "report ack failed (it will be redelivered and ignored)");
                        }
                    }
                }
                Effect::Api { token, result } => {
                    if let Some(tx) = self.attachments.apis.remove(&token) {
                        // The log sequence the answer's changes are in, so the caller can read its writes anywhere.
                        let seq = *self.deps.applied.borrow();
                        let _ = tx.send(result.map(|reply| Committed { reply, seq }));
                    }
                }
                Effect::Event(ev) => self.publish_event(ev).await,
            }
        }
        self.attachments.permits.clear();
        debug!(effects = n, perform_us = performing.elapsed().as_micros() as u64, "batch performed");
    }

    /// The batch failed to commit: nobody is told it succeeded. Registrations and API calls get a retryable error;
    /// reports stay un-acked (JetStream redelivers them to the next leader).
    async fn fail(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Reply { to, host, body: Reply::Register(_) } => {
                    let body = Reply::Register(RegisterReply::Rejected {
                        code: ErrorCode::Internal,
                        message: "the transaction log is unavailable; retry".into(),
                        retry_after_ms: Some(UNCOMMITTED_RETRY_MS),
                    });
                    self.reply(to, &host, &body).await;
                }
                Effect::Api { token, .. } => {
                    if let Some(tx) = self.attachments.apis.remove(&token) {
                        let _ = tx.send(Err(ApiError::unavailable("leader stepped down; retry")));
                    }
                }
                _ => {}
            }
        }
    }

    fn publish(&mut self, commands: Vec<Outgoing>) {
        // The publisher only goes away when the term ends, and then so does this loop.
        let _ = self.commands.send(commands);
    }

    fn look_up(&mut self, suspects: Vec<HostId>) {
        self.follow_ups.push(Input::Heard(self.deps.last_seen.look_up(suspects)));
    }
}

/// Waits until this instance's applier reached `seq` (or `stop` fires).
pub async fn wait_applied(
    applied: &watch::Receiver<u64>,
    seq: u64,
    stop: &CancellationToken,
) -> Result<(), LeaderError> {
    let mut rx = applied.clone();
    tokio::select! {
        r = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|a| *a >= seq)) => match r {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LeaderError::ApplyTimeout(seq)),
        },
        _ = stop.cancelled() => Ok(()),
    }
}

fn register_error(r: &RegisterReply) -> Option<ErrorCode> {
    match r {
        RegisterReply::Rejected { code, .. } => Some(*code),
        RegisterReply::Accepted { .. } => None,
    }
}

fn heartbeat_error(r: &HeartbeatReply) -> Option<ErrorCode> {
    match r {
        HeartbeatReply::Rejected { code, .. } => Some(*code),
        HeartbeatReply::Reregister { .. } => None,
    }
}
