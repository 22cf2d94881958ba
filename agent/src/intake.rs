//! The pure half of command delivery: checking a command message ([`validate_command`]), planning a catch-up
//! batch ([`plan_catch_up`]), dropping repeats ([`SeenSet`]), and [`RunnerInput`], what delivery hands the
//! runner. No I/O: [`crate::delivery`] feeds these from NATS, [`crate::runner`] acts on their results.
//!
//! The same command can arrive twice (live and in the catch-up, or again after a re-registration): the runner
//! drops repeats with a bounded [`SeenSet`].

use std::collections::{HashMap, HashSet, VecDeque};

use async_nats::HeaderMap;
use muster_schemas::commands::{Command, CommandBody, ComponentSpec};
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::ids::TaskAttempt;
use muster_schemas::limits::MAX_COMMAND_BYTES;
use muster_schemas::{decode, DecodeError, HostId, PROTOCOL_VERSION};

/// Task attempts remembered for duplicate suppression. A command is repeated only by a catch-up overlapping the
/// live feed, or by a re-registration replaying what is still unfinished after the cursor; both are bounded by
/// the commands a host has in flight, far below this.
pub const SEEN_CAPACITY: usize = 10_000;

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
        /// The protocol version the body declares.
        got: u16,
    },
    /// The body is addressed to another host.
    #[error("command is addressed to host {got}")]
    WrongHost {
        /// The host the body is addressed to.
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
    pub cancelled: Vec<TaskAttempt>,
}

/// Plans a catch-up batch from `(stream sequence, command)` entries in stream order: skips the sequences the
/// server lists as finished after the cursor, pairs each cancel with an earlier execution of the same attempt,
/// and keeps only the last `Configure` (each one is the full component set, so earlier ones are stale).
pub fn plan_catch_up(entries: Vec<(u64, Command)>, done_after_cursor: &HashSet<u64>) -> CatchUp {
    let commands: Vec<Command> =
        entries.into_iter().filter(|(seq, _)| !done_after_cursor.contains(seq)).map(|(_, c)| c).collect();
    let mut dropped = vec![false; commands.len()];
    let mut executions: HashMap<TaskAttempt, usize> = HashMap::new();
    let mut cancelled = Vec::new();
    let mut last_configure = None;
    for (i, command) in commands.iter().enumerate() {
        match &command.body {
            CommandBody::Execute(e) => {
                executions.insert(TaskAttempt { task: e.task, attempt: e.attempt }, i);
            }
            CommandBody::Cancel { task, attempt } => {
                let key = TaskAttempt { task: *task, attempt: *attempt };
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
    Execute(TaskAttempt),
    /// `Cancel` of this attempt.
    Cancel(TaskAttempt),
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

    /// Keys remembered; the tests check the bound with it.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
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

/// What delivery hands the runner. Commands are boxed: the channel allocates room for 32 inputs up front in
/// every session, and a command is 184 bytes inline (`muster-agent swarm` holds 100k sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerInput {
    /// A registration was accepted: these are the host's components; report all statuses.
    Registered {
        /// The components mapped to the host.
        components: Vec<ComponentSpec>,
    },
    /// One batch of commands read back from the stream.
    CatchUp(Box<CatchUp>),
    /// One live command.
    Live(Box<Command>),
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

    fn key(task: u64, attempt: u32) -> TaskAttempt {
        TaskAttempt { task, attempt }
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
