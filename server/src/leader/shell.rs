//! The leader's NATS shell: performs what [`crate::leader::driver::drive`] hands it. Commits append txns to the log
//! with fencing and wait for this instance's applier; effects become NATS publishes, report acks and API answers;
//! commands go to the publisher task; suspects are looked up in the arrival record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use muster_schemas::api::Committed;
use muster_schemas::signing::SignedFields;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, headers, limits, MessageKind, RegisterReply, Subjects, Txn, TxnOp, UnixMillis};
use muster_schemas::{ErrorCode, HeartbeatReply, HostId};
use muster_security::command::CommandSigner;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::contract::{ChangeEvent, Effect, Input, Outgoing, Reply, Timing};
use super::driver::Shell;
use super::inbox::{Queued, WriteResult};
use crate::log::{Appender, LogError, Read};
use crate::metrics::{Metrics, ServerCounter};
use crate::status::LastSeen;
use crate::store::{Store, StoreError};
use muster_nats::wire::header_map;

/// How long the leader waits for its own applier to apply what it appended before giving up the lease.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-txn framing overhead budget when splitting ops to fit [`limits::MAX_TXN_BYTES`].
const TXN_OVERHEAD: usize = 256;

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
    /// The term ended (deposed, shutdown) while waiting for the applier: what it applied so far is not the log.
    #[error("interrupted while waiting for the applier to reach sequence {0}")]
    Interrupted(u64),
    /// A leader of a newer epoch wrote before our entries were applied: they may have been refused, so they are
    /// not acknowledged.
    #[error("the log holds epoch {log}, newer than ours ({ours}): deposed")]
    Superseded {
        /// This leader's epoch.
        ours: u64,
        /// The newest epoch applied.
        log: u64,
    },
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
    /// How far this instance's applier has read the log (and the newest epoch in it): a new leader claims the log
    /// once it read to the end.
    pub read: watch::Receiver<Read>,
    /// Counters shown by `muster stats`.
    pub metrics: Metrics,
    /// The arrival record the heartbeat listener writes; suspects are looked up here.
    pub last_seen: LastSeen,
    /// The command key: signs every command and accepted registration reply (`muster_schemas::signing`). `None`
    /// only when running insecure (`MUSTER_INSECURE`, no credentials): they then go unsigned.
    pub signer: Option<Arc<CommandSigner>>,
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
        let mut h = headers::reply(kind, host.as_str(), error);
        // An accepted registration carries the host's component set (scripts the agent runs) and its catch-up
        // cursor: signed like a command.
        if matches!(body, Reply::Register(RegisterReply::Accepted { .. })) {
            // Tests: an answer that reaches the agent after its timeout (`sleep(ms)` holds this task).
            fail::fail_point!("leader::register_reply");
        }
        if let (Some(signer), Reply::Register(RegisterReply::Accepted { epoch, .. })) = (&self.deps.signer, body) {
            let fields = SignedFields::registration(host, *epoch, muster_nats::unix_millis());
            h.extend(signer.sign(&fields, &payload));
        }
        if let Err(e) = self.deps.client.publish_with_headers(to, header_map(h), payload.into()).await {
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

    /// Appends `ops` as one decision — one or more txns, each under the size limit, every one but the last marked
    /// [`continues`](Txn::continues) — and waits until this instance applied it whole. A failure at any part ends
    /// the term, and the parts already appended are dropped by every replica when the next leader's claim arrives.
    async fn commit(&mut self, ops: Vec<TxnOp>, wall: UnixMillis) -> Result<(), LeaderError> {
        let started = Instant::now();
        let n_ops = ops.len();
        let parts = split(ops, part_limit());
        let n = parts.len();
        let writes_request = cfg!(feature = "failpoints")
            && n > 1
            && parts.iter().flatten().any(|op| matches!(op, TxnOp::PutRequest(_)));
        let epoch = self.appender.epoch();
        let mut last = 0;
        for (i, ops) in parts.into_iter().enumerate() {
            let continues = i + 1 < n;
            if !continues && writes_request {
                // Test hook: the last part of a decision that writes a request fails to append, as when the lease
                // lapses mid-decision.
                fail::fail_point!("leader::commit_last_part", |_| Err(LogError::Unavailable(
                    "failpoint leader::commit_last_part".into()
                )
                .into()));
            }
            let txn = Txn { schema: TXN_SCHEMA, epoch, proposed_at: wall, ops, continues };
            last = self.appender.append(&txn).await?;
        }
        wait_applied(&self.deps.applied, last, &CancellationToken::new()).await?;
        // Only what was applied (not refused for its epoch) is acknowledged. The claim makes our epoch the log's
        // newest and every append is fenced, so this holds by construction; checked because a caller must never
        // be told a refused write succeeded.
        let (_, log) = self.deps.store.applied()?;
        if log > epoch {
            self.deps.metrics.inc(ServerCounter::LeaderSuperseded);
            return Err(LeaderError::Superseded { ours: epoch, log });
        }
        debug!(ops = n_ops, txns = n, ms = started.elapsed().as_millis() as u64, "batch committed");
        self.deps.metrics.add(ServerCounter::TxnCommitted, n as u64);
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

    fn publish(&mut self, commands: Vec<Outgoing>) {
        // The publisher only goes away when the term ends, and then so does this loop.
        let _ = self.commands.send(commands);
    }

    fn look_up(&mut self, suspects: Vec<HostId>) {
        self.follow_ups.push(Input::Heard(self.deps.last_seen.look_up(suspects)));
    }
}

/// Splits one decision's ops into parts whose encodings fit `limit` bytes (an op bigger than that alone).
fn split(ops: Vec<TxnOp>, limit: usize) -> Vec<Vec<TxnOp>> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = TXN_OVERHEAD;
    for op in ops {
        let op_size = codec::encode(&op).len();
        if !current.is_empty() && size + op_size > limit {
            parts.push(std::mem::take(&mut current));
            size = TXN_OVERHEAD;
        }
        size += op_size;
        current.push(op);
    }
    parts.push(current);
    parts
}

/// The most bytes of one part: [`limits::MAX_TXN_BYTES`]; the failpoint `leader::txn_part_bytes` (`return(N)`)
/// lowers it so a test splits small decisions.
fn part_limit() -> usize {
    fail::fail_point!("leader::txn_part_bytes", |n| n.and_then(|n| n.parse().ok()).unwrap_or(limits::MAX_TXN_BYTES));
    limits::MAX_TXN_BYTES
}

/// Waits until this instance's applier reached `seq`. Fails when it takes longer than [`APPLY_TIMEOUT`], and when
/// `stop` fires first: a caller that goes on would work from a state short of the log.
pub async fn wait_applied(
    applied: &watch::Receiver<u64>,
    seq: u64,
    stop: &CancellationToken,
) -> Result<(), LeaderError> {
    let mut rx = applied.clone();
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(LeaderError::Interrupted(seq)),
        r = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|a| *a >= seq)) => match r {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LeaderError::ApplyTimeout(seq)),
        },
    }
}

/// Waits until this instance's applier has read the log up to `seq`; returns how far it read.
pub async fn wait_read(read: &watch::Receiver<Read>, seq: u64, stop: &CancellationToken) -> Result<Read, LeaderError> {
    let mut rx = read.clone();
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(LeaderError::Interrupted(seq)),
        r = tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|r| r.seq >= seq)) => match r {
            Ok(Ok(r)) => Ok(*r),
            _ => Err(LeaderError::ApplyTimeout(seq)),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_for_the_applier_that_is_interrupted_is_an_error() {
        let (tx, rx) = watch::channel(5u64);
        let stop = CancellationToken::new();
        stop.cancel();
        let r = wait_applied(&rx, 7, &stop).await;
        assert!(matches!(r, Err(LeaderError::Interrupted(7))), "{r:?}");
        // Even when the applier is already there: cancellation wins, the caller stops.
        tx.send_replace(9);
        assert!(matches!(wait_applied(&rx, 7, &stop).await, Err(LeaderError::Interrupted(7))));
        assert!(wait_applied(&rx, 7, &CancellationToken::new()).await.is_ok());
    }

    #[test]
    fn a_decision_is_split_in_order_under_the_limit() {
        let op = |n| TxnOp::ReserveIds { tasks: n, requests: n };
        let one = codec::encode(&op(1)).len();
        let parts = split((1..=5).map(op).collect(), TXN_OVERHEAD + 2 * one);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(parts.concat(), (1..=5).map(op).collect::<Vec<_>>());
        assert_eq!(split(Vec::new(), 10).len(), 1, "an empty decision (the epoch claim) is one entry");
    }
}
