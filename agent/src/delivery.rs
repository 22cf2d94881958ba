//! Command delivery (DESIGN.md, "Commands and results"): live commands from a core subscription on
//! `muster.cmd.<host>`, and after every accepted registration a catch-up that reads the same subject from stream
//! `MUSTER_COMMANDS` with direct gets, starting after the cursor the registration reply gave.
//!
//! The session subscribes before it registers, so nothing published after the registration is missed; what was
//! published before it is in the stream. The same command can therefore arrive twice (live and in the
//! catch-up, or again after a re-registration): the runner drops repeats with a bounded [`SeenSet`].
//!
//! Pure parts, unit-tested: [`validate_command`], [`plan_catch_up`], [`SeenSet`]. The I/O is [`Delivery`], which
//! the session drives while it is registered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::HeaderMap;
use futures::StreamExt as _;
use muster_schemas::commands::{Command, CommandBody, ComponentSpec};
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::limits::MAX_COMMAND_BYTES;
use muster_schemas::{decode, DecodeError, HostId, Subjects, PROTOCOL_VERSION};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::feed::Feed;
use crate::queue::TaskKey;
use crate::runner::RunnerInput;
use crate::session::SessionStats;

/// Task attempts remembered for duplicate suppression. A command is repeated only by a catch-up overlapping the
/// live feed, or by a re-registration replaying what is still unfinished after the cursor; both are bounded by
/// the commands a host has in flight, far below this.
pub const SEEN_CAPACITY: usize = 10_000;

/// Commands handed to the runner per catch-up batch: bounds the agent's memory when a host has a long backlog
/// (a command may be up to `MAX_COMMAND_BYTES`), while a cancel following its execution within one batch is
/// still recognised.
pub const CATCH_UP_CHUNK: usize = 1_000;

/// Why a command message is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BadCommand {
    /// The body could not be decoded (too large or malformed).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The `Muster-Kind` header names another kind of message.
    #[error("message kind {0:?} is not a command")]
    WrongKind(String),
    /// The body speaks another protocol version.
    #[error("protocol version {got} is not {PROTOCOL_VERSION}")]
    WrongSchema {
        /// The version in the body.
        got: u16,
    },
    /// The body is addressed to another host.
    #[error("command is addressed to host {got}")]
    WrongHost {
        /// The host in the body.
        got: HostId,
    },
}

/// Decodes and checks one command message: size, kind, protocol version, and that it is addressed to `own`.
pub fn validate_command(headers: Option<&HeaderMap>, payload: &[u8], own: &HostId) -> Result<Command, BadCommand> {
    if let Some(kind) = headers.and_then(|h| h.get(headers::KIND)).map(|v| v.as_str()) {
        if kind != MessageKind::Command.as_str() {
            return Err(BadCommand::WrongKind(kind.to_owned()));
        }
    }
    let command: Command = decode(payload, MAX_COMMAND_BYTES)?;
    if command.schema != PROTOCOL_VERSION {
        return Err(BadCommand::WrongSchema { got: command.schema });
    }
    if &command.host != own {
        return Err(BadCommand::WrongHost { got: command.host });
    }
    Ok(command)
}

/// What the runner must do with one catch-up batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Commands to apply in stream order.
    pub commands: Vec<Command>,
    /// Executions followed by their cancel within the batch: neither is in `commands`; the runner reports the
    /// task ABORTED without running it (or cancels it, if this agent run already has it).
    pub cancelled: Vec<TaskKey>,
}

/// Plans a catch-up batch from `(stream sequence, command)` entries in stream order: skips the sequences the
/// server lists as finished after the cursor, pairs each cancel with an earlier execution of the same attempt,
/// and keeps only the last `Configure` (each one is the full component set, so earlier ones are stale).
pub fn plan_catch_up(entries: Vec<(u64, Command)>, done_after_cursor: &HashSet<u64>) -> CatchUp {
    let commands: Vec<Command> =
        entries.into_iter().filter(|(seq, _)| !done_after_cursor.contains(seq)).map(|(_, c)| c).collect();
    let mut dropped = vec![false; commands.len()];
    let mut executions: HashMap<TaskKey, usize> = HashMap::new();
    let mut cancelled = Vec::new();
    let mut last_configure = None;
    for (i, command) in commands.iter().enumerate() {
        match &command.body {
            CommandBody::Execute(e) => {
                executions.insert(TaskKey { task: e.task, attempt: e.attempt }, i);
            }
            CommandBody::Cancel { task, attempt } => {
                let key = TaskKey { task: *task, attempt: *attempt };
                if let Some(j) = executions.remove(&key) {
                    dropped[j] = true;
                    dropped[i] = true;
                    cancelled.push(key);
                }
            }
            CommandBody::Configure { .. } => {
                if let Some(previous) = last_configure.replace(i) {
                    dropped[previous] = true;
                }
            }
        }
    }
    let commands = commands.into_iter().zip(dropped).filter(|(_, d)| !d).map(|(c, _)| c).collect();
    CatchUp { commands, cancelled }
}

/// What a command is, for duplicate suppression: an execution and the cancel of the same attempt are distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKey {
    /// `Execute` of this attempt.
    Execute(TaskKey),
    /// `Cancel` of this attempt.
    Cancel(TaskKey),
}

/// The last `capacity` command keys seen, for dropping repeats. Oldest keys are forgotten first.
#[derive(Debug, Clone)]
pub struct SeenSet {
    capacity: usize,
    order: VecDeque<CommandKey>,
    keys: HashSet<CommandKey>,
}

impl Default for SeenSet {
    fn default() -> Self {
        Self::new(SEEN_CAPACITY)
    }
}

impl SeenSet {
    /// An empty set remembering at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), order: VecDeque::new(), keys: HashSet::new() }
    }

    /// Records `key`; `false` if it was already remembered (a repeat).
    pub fn insert(&mut self, key: CommandKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: CommandKey) -> bool {
        self.keys.contains(&key)
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What an accepted registration says about command delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Components mapped to the host.
    pub components: Vec<ComponentSpec>,
    /// Every command up to this stream sequence is finished.
    pub cursor: u64,
    /// Commands after the cursor that are finished too.
    pub done_after_cursor: Vec<u64>,
}

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
    /// Passing live commands on.
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
    stats: Arc<SessionStats>,
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
        stats: Arc<SessionStats>,
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
                        bump(&self.stats.commands_received);
                        permit.send(RunnerInput::Live(Box::new(command)));
                    }
                    Err(why) => {
                        bump(&self.stats.bad_commands);
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
                            bump(&stats.commands_received);
                            self.batch.push((seq, command));
                        }
                        Err(why) => {
                            bump(&stats.bad_commands);
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

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::commands::{CommandSpec, Execution, RoleCommand};
    use muster_schemas::encode;

    fn host() -> HostId {
        HostId::new("web-1").unwrap()
    }

    fn command(body: CommandBody) -> Command {
        Command { schema: PROTOCOL_VERSION, host: host(), body }
    }

    fn execute(task: u64, attempt: u32) -> Command {
        command(CommandBody::Execute(Execution {
            task,
            attempt,
            request: 1,
            component: None,
            command: RoleCommand::Run,
            spec: CommandSpec { argv: vec!["true".into()], env: Default::default(), timeout_ms: 1_000 },
        }))
    }

    fn cancel(task: u64, attempt: u32) -> Command {
        command(CommandBody::Cancel { task, attempt })
    }

    fn configure(n: usize) -> Command {
        let components = (0..n)
            .map(|i| ComponentSpec {
                service: "svc".into(),
                component: format!("c{i}"),
                category: muster_schemas::commands::Category::Daemon,
                status: None,
                start: None,
                should_run: false,
            })
            .collect();
        command(CommandBody::Configure { components })
    }

    fn key(task: u64, attempt: u32) -> TaskKey {
        TaskKey { task, attempt }
    }

    #[test]
    fn commands_are_validated() {
        let own = host();
        let good = execute(1, 1);
        assert_eq!(validate_command(None, &encode(&good), &own).unwrap(), good);

        let mut h = HeaderMap::new();
        h.insert(headers::KIND, MessageKind::Command.as_str());
        assert!(validate_command(Some(&h), &encode(&good), &own).is_ok());
        h.insert(headers::KIND, MessageKind::Report.as_str());
        assert!(matches!(validate_command(Some(&h), &encode(&good), &own), Err(BadCommand::WrongKind(_))));

        let mut old = good.clone();
        old.schema = PROTOCOL_VERSION + 1;
        assert!(matches!(validate_command(None, &encode(&old), &own), Err(BadCommand::WrongSchema { .. })));
        let mut other = good.clone();
        other.host = HostId::new("web-2").unwrap();
        assert!(matches!(validate_command(None, &encode(&other), &own), Err(BadCommand::WrongHost { .. })));
        assert!(matches!(validate_command(None, b"\xc1", &own), Err(BadCommand::Decode(DecodeError::Malformed(_)))));
        let huge = vec![0u8; MAX_COMMAND_BYTES + 1];
        assert!(matches!(validate_command(None, &huge, &own), Err(BadCommand::Decode(DecodeError::TooLarge { .. }))));
    }

    #[test]
    fn catch_up_skips_sequences_done_after_the_cursor() {
        let entries = vec![(5, execute(1, 1)), (6, execute(2, 1)), (7, execute(3, 1)), (9, execute(4, 1))];
        let done = HashSet::from([6, 9]);
        let plan = plan_catch_up(entries, &done);
        assert_eq!(plan.commands, vec![execute(1, 1), execute(3, 1)]);
        assert!(plan.cancelled.is_empty());
    }

    #[test]
    fn catch_up_drops_an_execution_cancelled_later_in_the_batch() {
        let entries = vec![
            (1, execute(1, 1)),
            (2, execute(2, 1)),
            (3, cancel(1, 1)),
            // A cancel of another attempt, or of a task not in the batch, is kept for the runner.
            (4, cancel(2, 2)),
            (5, cancel(7, 1)),
            // A cancel before its execution does not pair here; the runner refuses to run an attempt it saw cancelled.
            (6, cancel(3, 1)),
            (7, execute(3, 1)),
        ];
        let plan = plan_catch_up(entries, &HashSet::new());
        assert_eq!(plan.commands, vec![execute(2, 1), cancel(2, 2), cancel(7, 1), cancel(3, 1), execute(3, 1)]);
        assert_eq!(plan.cancelled, vec![key(1, 1)]);
    }

    #[test]
    fn catch_up_keeps_only_the_last_configure() {
        let entries = vec![(1, configure(1)), (2, execute(1, 1)), (3, configure(2)), (4, execute(2, 1))];
        let plan = plan_catch_up(entries, &HashSet::new());
        assert_eq!(plan.commands, vec![execute(1, 1), configure(2), execute(2, 1)]);
    }

    #[test]
    fn done_sequences_do_not_pair() {
        // The execution at 1 is finished; its cancel at 2 is for the runner (which will find nothing to do).
        let plan = plan_catch_up(vec![(1, execute(1, 1)), (2, cancel(1, 1))], &HashSet::from([1]));
        assert_eq!(plan.commands, vec![cancel(1, 1)]);
        assert!(plan.cancelled.is_empty());
    }

    #[test]
    fn seen_set_drops_repeats_and_stays_bounded() {
        let mut seen = SeenSet::new(3);
        assert!(seen.insert(CommandKey::Execute(key(1, 1))));
        assert!(!seen.insert(CommandKey::Execute(key(1, 1))), "a repeat");
        assert!(seen.insert(CommandKey::Cancel(key(1, 1))), "cancel and execute are distinct");
        assert!(seen.insert(CommandKey::Execute(key(1, 2))), "attempts are distinct");
        assert!(seen.insert(CommandKey::Execute(key(2, 1))));
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(CommandKey::Execute(key(1, 1))), "the oldest is forgotten first");
        assert!(seen.contains(CommandKey::Execute(key(2, 1))));
        for task in 0..100_000 {
            seen.insert(CommandKey::Execute(key(task, 9)));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(SeenSet::default().capacity, SEEN_CAPACITY);
    }
}
