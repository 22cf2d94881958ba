//! The leader role: the pure [`core::LeaderCore`] and the shell that feeds and performs it.
//!
//! Prep happens in the listeners ([`crate::ingest`], [`crate::writes`]), which queue inputs ([`inbox`]). [`lead`]
//! claims the log for its epoch, loads the core from redb, and then steps batches of queued inputs through
//! [`driver::drive`] — Propose, Sync, Final, commands, in the order documented there — while `publish_commands`
//! stores each batch's commands and hands their stream sequences back as an input. Any failure of the log or of
//! JetStream ends the leadership: the next term starts again from the log.
//!
//! Modules, bottom up: [`contract`] (the words of the contract), the core's concerns ([`hosts`], [`stacks`],
//! [`select`], [`components`], [`scheduler`], [`enroll`]), [`core`] (routes inputs, returns one `Ready`), [`driver`] (the one
//! order), [`inbox`] (the input queue), [`shell`] (NATS), and `lead` here.

pub mod components;
pub mod contract;
pub mod core;
pub mod driver;
pub mod enroll;
pub mod hosts;
pub mod inbox;
pub mod scheduler;
pub mod select;
pub mod shell;
pub mod stacks;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use muster_schemas::signing::SignedFields;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, headers, Txn};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::contract::{Input, Loaded, Outgoing};
use self::core::LeaderCore;
use self::inbox::Queued;
use self::shell::{wait_applied, wait_read, NatsShell};
pub use self::shell::{LeaderDeps, LeaderError};
use crate::election::{self, Lease};
use crate::log::{self, Appender, LogError};
use crate::metrics::ServerCounter;
use crate::store::{Store, StoreError};
use muster_nats::unix_millis;
use muster_nats::wire::header_map;

/// Most inputs stepped per batch (one group commit). Bounds the latency of the first input in the batch.
const MAX_BATCH: usize = 8_192;
/// Command publishes awaiting their JetStream ack at once (a fan-out to 100k hosts is pipelined, not serial).
const PUBLISH_PIPELINE: usize = 2_048;
/// Most stored commands handed back to the core in one [`Queued::Delivered`].
const DELIVERED_CHUNK: usize = 1_024;
/// How long to wait for a command's JetStream ack before retrying with the same `Nats-Msg-Id`.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before asking again for the sequence of a command the stream is still proposing (a duplicate answered
/// with sequence 0): a proposal in an R3 stream commits within milliseconds unless the cluster is electing.
const DUPLICATE_PENDING_PAUSE: Duration = Duration::from_millis(100);
/// How often to ask again before counting it as a failed publish: 50 × 100 ms covers a stream leader election.
const DUPLICATE_PENDING_ASKS: u32 = 50;
/// Times a new leader tries to claim the log end before giving up the lease.
const EPOCH_CLAIM_ATTEMPTS: u32 = 5;
/// Attempts per command publish before the leader steps down.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Leads under `lease` until `deposed` fires (lease lost, shutdown) or the log fails. Inputs arrive on `inputs`;
/// the command publisher started here hands stored commands back through `queue`.
pub async fn lead(
    deps: LeaderDeps,
    lease: Lease,
    kv: kv::Store,
    queue: mpsc::Sender<Queued>,
    mut inputs: mpsc::Receiver<Queued>,
    deposed: CancellationToken,
) -> Result<(), LeaderError> {
    let claimed = async {
        let appender = claim(&deps, &lease, &deposed).await?;
        let loaded = load(&deps.store)?;
        Ok::<_, LeaderError>((appender, loaded))
    };
    let (appender, loaded) = match claimed.await {
        Ok(claimed) => claimed,
        Err(e) => {
            election::release(&kv, &lease).await;
            return Err(e);
        }
    };
    let epoch = appender.epoch();
    info!(
        epoch,
        lease = lease.epoch,
        seq = appender.last_seq(),
        hosts = loaded.hosts.len(),
        requests = loaded.requests.iter().filter(|r| !r.status.is_terminal()).count(),
        "leading"
    );
    let mut core = LeaderCore::new(epoch, deps.timing, loaded, Instant::now(), unix_millis());
    // Liveness and task deadlines are checked every `tick`: when idle on a timer, under load as part of the next
    // batch once due (a queue that never empties must not starve failure detection).
    let tick = (deps.timing.interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut next_tick = Instant::now() + tick;
    let tasks = TaskTracker::new();
    let (commands, to_publish) = mpsc::unbounded_channel::<Vec<Outgoing>>();
    {
        let (deps, stop) = (deps.clone(), deposed.clone());
        tasks.spawn(async move {
            if let Err(e) = publish_commands(&deps, to_publish, queue, stop.clone()).await {
                error!(error = %e, "command publisher failed; stepping down");
                stop.cancel();
            }
        });
    }
    let mut shell = NatsShell::new(deps, appender, commands);

    // The first batch redoes what the previous leader committed but may not have performed.
    let mut first = Some(Input::TakeOver);
    let result = loop {
        let mut batch = shell.begin_batch();
        batch.extend(first.take());
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = deposed.cancelled() => break Ok(()),
                Some(q) = inputs.recv() => batch.push(shell.input(q)),
                _ = tokio::time::sleep_until(next_tick) => {}
            }
        } else if deposed.is_cancelled() {
            break Ok(());
        }
        while batch.len() < MAX_BATCH {
            match inputs.try_recv() {
                Ok(q) => batch.push(shell.input(q)),
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
        if let Err(e) = driver::drive(&mut core, &mut shell, batch, now, wall).await {
            break Err(e);
        }
    };
    deposed.cancel();
    tasks.close();
    tasks.wait().await;
    election::release(&kv, &lease).await;
    result
}

/// Reads the log to its end, then claims it with an empty txn (ZooKeeper's NEWLEADER) under the epoch
/// [`log::claim_epoch`] decides from what was read — above every epoch in the log, whatever the lease's revision —
/// appended right after the end it read: once that is in, a deposed leader's expected-last-sequence can never
/// match again, and every replica drops a decision the previous leader left without its last part. A deposed
/// leader that appended in the meantime just moves the end: read again (and decide the epoch again) and retry.
async fn claim(deps: &LeaderDeps, lease: &Lease, deposed: &CancellationToken) -> Result<Appender, LeaderError> {
    for _ in 0..EPOCH_CLAIM_ATTEMPTS {
        let last = log::last_sequence(&deps.js, &deps.subjects).await?;
        let read = wait_read(&deps.read, last, deposed).await?;
        let epoch = log::claim_epoch(lease.epoch, read.epoch);
        if epoch != lease.epoch {
            deps.metrics.inc(ServerCounter::LeaderEpochAboveLease);
            warn!(
                lease = lease.epoch,
                log = read.epoch,
                epoch,
                "the log holds the lease's epoch or a newer one; leading above it"
            );
        }
        let mut a = Appender::new(deps.js.clone(), &deps.subjects, &deps.server_id, lease.clone(), epoch, last);
        let marker = Txn { schema: TXN_SCHEMA, epoch, proposed_at: unix_millis(), ops: Vec::new(), continues: false };
        match a.append(&marker).await {
            Ok(seq) => {
                wait_applied(&deps.applied, seq, deposed).await?;
                return Ok(a);
            }
            Err(LogError::Fenced { .. }) => warn!("the log moved while taking over; catching up again"),
            Err(e) => return Err(e.into()),
        }
    }
    Err(LogError::Stream("could not claim the log for this epoch".into()).into())
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
        deps.metrics.add(ServerCounter::CommandsPublished, done.len() as u64);
        if queue.send(Queued::Delivered(done)).await.is_err() {
            return Ok(());
        }
    }
}

/// Stores one command, signed with the command key once (a retry re-sends the same bytes, so the stream's dedup
/// by `Nats-Msg-Id` sees one message): host, task attempt, this term's epoch (the newest in the log this instance
/// read, which is its own while it leads), now, and an expiry at the task's deadline (`muster_schemas::signing`).
async fn publish_command(deps: &LeaderDeps, o: &Outgoing) -> Result<u64, LeaderError> {
    let mut h = headers::command(&o.host, &o.msg_id);
    let msg_id = o.msg_id.to_string();
    let payload = bytes::Bytes::from(codec::encode(&o.command));
    if let Some(signer) = &deps.signer {
        let (epoch, grace) = (deps.read.borrow().epoch, deps.timing.task_grace.as_millis() as u64);
        let fields = SignedFields::issue_command(&o.command, epoch, unix_millis(), grace);
        h.extend(signer.sign(&fields, &payload));
    }
    let h = header_map(h);
    let subject = deps.subjects.cmd(&o.host);
    let mut last = String::new();
    let (mut failures, mut pending) = (0, 0);
    while failures < PUBLISH_ATTEMPTS {
        let msg =
            jetstream::message::PublishMessage::build().payload(payload.clone()).headers(h.clone()).message_id(&msg_id);
        let ack = match deps.js.send_publish(subject.clone(), msg).await {
            Ok(fut) => tokio::time::timeout(PUBLISH_ACK_TIMEOUT, fut).await,
            Err(e) => Ok(Err(e)),
        };
        match ack {
            // A clustered stream answers a duplicate of a message it is still proposing with sequence 0 and no
            // error (nats-server 2.10): that is no sequence. Asked again a moment later, it names the stored one.
            Ok(Ok(ack)) if ack.duplicate && ack.sequence == 0 && pending < DUPLICATE_PENDING_ASKS => {
                deps.metrics.inc(ServerCounter::CommandsDuplicatePending);
                pending += 1;
                tokio::time::sleep(DUPLICATE_PENDING_PAUSE).await;
                continue;
            }
            Ok(Ok(ack)) if ack.sequence == 0 => last = "the stream named no sequence for a stored command".into(),
            Ok(Ok(ack)) => return Ok(ack.sequence),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no ack in time".into(),
        }
        failures += 1;
        warn!(msg_id = %o.msg_id, error = %last, "command publish failed; retrying with the same Nats-Msg-Id");
    }
    Err(LeaderError::Publish(last))
}

/// Everything the core starts from (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn load(store: &Store) -> Result<Loaded, StoreError> {
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
        tokens: store.tokens()?,
        enrollments: store.enrollments()?,
    })
}

#[cfg(test)]
mod tests;
