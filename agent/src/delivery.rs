//! Command delivery, the I/O half: live commands from a core subscription on `muster.cmd.<host>`, and after every
//! accepted registration a catch-up that reads the same subject from stream `MUSTER_COMMANDS` with direct gets,
//! starting after the cursor the registration reply gave.
//!
//! The session subscribes before it registers, so nothing published after the registration is missed; what was
//! published before it is in the stream. The checks and the catch-up plan are the pure [`crate::intake`];
//! [`Delivery`] performs them, driven by the session while it is registered.

use std::collections::HashSet;

use async_nats::jetstream;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::StreamExt as _;
use muster_schemas::commands::{Command, ComponentSpec};
use muster_schemas::{HostId, Subjects};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::feed::Feed;
use crate::intake::{plan_catch_up, validate_command, Registration, RunnerInput};
use crate::stats::{SessionCounter, SessionStats};

/// Commands handed to the runner per catch-up batch: bounds the agent's memory when a host has a long backlog
/// (a command may be up to `MAX_COMMAND_BYTES`), while a cancel following its execution within one batch is
/// still recognised.
pub const CATCH_UP_CHUNK: usize = 1_000;

/// Why delivery could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The command subject could not be subscribed.
    #[error("cannot subscribe to the command subject: {0}")]
    Subscribe(async_nats::SubscribeError),
    /// The commands stream name is not valid (a bad prefix).
    #[error("cannot use the commands stream: {0}")]
    Stream(async_nats::jetstream::context::GetStreamError),
    /// The command subscription ended: the client was closed under the session.
    #[error("the command subscription closed (NATS client shut down)")]
    SubscriptionClosed,
}

/// Where delivery is.
#[derive(Debug)]
enum Phase {
    /// Not registered: live commands wait in the subscription until the catch-up has run.
    Unregistered,
    /// Just registered: the runner must get the component set first.
    Registered { components: Vec<ComponentSpec>, fetch: CatchUpFetch },
    /// Reading the stream after the cursor.
    CatchingUp(CatchUpFetch),
    /// Caught up: passing live commands on as they arrive.
    Live,
    /// The runner is gone (shutdown): nothing more to deliver.
    Closed,
}

/// Reads one host's subject from the commands stream, from a sequence on, skipping finished sequences. Keeps its
/// progress in itself, so an interrupted read resumes where it stopped.
#[derive(Debug)]
struct CatchUpFetch {
    next_seq: u64,
    done: HashSet<u64>,
    batch: Vec<(u64, Command)>,
    failures: u32,
    finished: bool,
}

/// One session's command delivery: owns the live subscription and the catch-up, and feeds the runner.
pub struct Delivery {
    host: HostId,
    subject: String,
    live: Feed,
    stream: Stream<()>,
    runner: mpsc::Sender<RunnerInput>,
    phase: Phase,
    stats: SessionStats,
    rng: SmallRng,
}

impl Delivery {
    /// Delivery for `host` from `live` (the host's command subject, subscribed before the first registration so
    /// nothing published after it is missed) and, for catch-ups, the commands stream through `jetstream`.
    pub async fn new(
        jetstream: jetstream::Context,
        subjects: &Subjects,
        host: HostId,
        live: Feed,
        runner: mpsc::Sender<RunnerInput>,
        stats: SessionStats,
    ) -> Result<Self, DeliveryError> {
        let subject = subjects.cmd(&host);
        // No info request: the stream is the server's (it may not exist yet), and all the agent sends it are
        // direct gets.
        let stream = jetstream.get_stream_no_info(subjects.commands_stream()).await.map_err(DeliveryError::Stream)?;
        Ok(Self {
            host,
            subject,
            live,
            stream,
            runner,
            phase: Phase::Unregistered,
            stats,
            rng: SmallRng::from_os_rng(),
        })
    }

    /// A registration was accepted: hand its components to the runner, then catch up after its cursor.
    pub fn registered(&mut self, registration: Registration) {
        let fetch = CatchUpFetch {
            next_seq: registration.cursor.saturating_add(1),
            done: registration.done_after_cursor.into_iter().collect(),
            batch: Vec::new(),
            failures: 0,
            finished: false,
        };
        self.phase = Phase::Registered { components: registration.components, fetch };
    }

    /// Performs one delivery step: the registration's components, one catch-up batch, or one live command.
    /// Cancel-safe: a step interrupted at an await loses nothing.
    pub async fn step(&mut self) -> Result<(), DeliveryError> {
        if matches!(self.phase, Phase::Unregistered | Phase::Closed) {
            return std::future::pending().await;
        }
        // Reserve first: a command taken from the subscription or the stream can then always be handed over.
        let Ok(permit) = self.runner.reserve().await else {
            tracing::debug!("the runner has stopped; no more command delivery");
            self.phase = Phase::Closed;
            return Ok(());
        };
        match &mut self.phase {
            Phase::Unregistered | Phase::Closed => {}
            Phase::Registered { components, fetch } => {
                let components = std::mem::take(components);
                let fetch = std::mem::replace(fetch, CatchUpFetch::empty());
                tracing::debug!(components = components.len(), from_seq = fetch.next_seq, "catching up on commands");
                permit.send(RunnerInput::Registered { components });
                self.phase = Phase::CatchingUp(fetch);
            }
            Phase::CatchingUp(fetch) => {
                let stats = &self.stats;
                // Boxed: a catch-up runs once per registration, and its direct-get state would otherwise enlarge
                // every idle session (`muster-agent swarm` holds 100k of them).
                let batch = Box::pin(fetch.next_batch(&self.stream, &self.subject, &self.host, stats, &mut self.rng));
                match batch.await {
                    Some(entries) => {
                        let plan = plan_catch_up(entries, &fetch.done);
                        permit.send(RunnerInput::CatchUp(Box::new(plan)));
                    }
                    None => {
                        tracing::debug!(next_seq = fetch.next_seq, "caught up; taking live commands");
                        self.phase = Phase::Live;
                    }
                }
            }
            Phase::Live => {
                let message = self.live.next().await.ok_or(DeliveryError::SubscriptionClosed)?;
                match validate_command(message.headers.as_ref(), &message.payload, &self.host) {
                    Ok(command) => {
                        self.stats.inc(SessionCounter::CommandsReceived);
                        permit.send(RunnerInput::Live(Box::new(command)));
                    }
                    Err(why) => {
                        self.stats.inc(SessionCounter::BadCommands);
                        tracing::warn!(subject = %message.subject, %why, "ignoring a command message");
                    }
                }
            }
        }
        Ok(())
    }
}

impl CatchUpFetch {
    fn empty() -> Self {
        Self { next_seq: 0, done: HashSet::new(), batch: Vec::new(), failures: 0, finished: true }
    }

    /// The next batch of at most [`CATCH_UP_CHUNK`] commands, or `None` when the stream has nothing more.
    /// Transient errors are retried with backoff, forever: the stream is the only source of missed commands.
    async fn next_batch(
        &mut self,
        stream: &Stream<()>,
        subject: &str,
        own: &HostId,
        stats: &SessionStats,
        rng: &mut SmallRng,
    ) -> Option<Vec<(u64, Command)>> {
        while !self.finished && self.batch.len() < CATCH_UP_CHUNK {
            match stream.direct_get_next_for_subject(subject, Some(self.next_seq)).await {
                Ok(message) => {
                    self.failures = 0;
                    let seq = message.sequence;
                    self.next_seq = seq.saturating_add(1);
                    if self.done.contains(&seq) {
                        continue;
                    }
                    match validate_command(Some(&message.headers), &message.payload, own) {
                        Ok(command) => {
                            stats.inc(SessionCounter::CommandsReceived);
                            self.batch.push((seq, command));
                        }
                        Err(why) => {
                            stats.inc(SessionCounter::BadCommands);
                            tracing::warn!(seq, %why, "ignoring a stored command");
                        }
                    }
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => self.finished = true,
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let delay = Backoff::JETSTREAM_RETRY.delay(self.failures, rng);
                    if self.failures == 1 {
                        tracing::warn!(error = %e, seq = self.next_seq, "cannot read the commands stream; retrying");
                    } else {
                        let failures = self.failures;
                        tracing::debug!(error = %e, failures, ?delay, "commands stream still unreadable");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if self.batch.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.batch))
    }
}
