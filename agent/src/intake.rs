//! The pure half of command delivery: checking a command message ([`validate_command`]) through the session's
//! [`CommandGate`] (signature, host, expiry, replay), planning a catch-up batch ([`plan_catch_up`]), dropping
//! repeats ([`SeenSet`]), and [`RunnerInput`], what delivery hands the runner. No I/O: [`crate::delivery`] feeds
//! these from NATS, [`crate::runner`] acts on their results.
//!
//! Nothing the server sends that makes the agent act is believed unless signed by a trusted command key
//! (`muster_schemas::signing`, `muster_security::command`): live commands, catch-up commands and the component
//! set of an accepted registration ([`CommandGate::check_registration`]). Each refusal is counted (one
//! `command.refused.<reason>` counter per reason) and, but for a replay, queued for a report to the server
//! ([`CommandGate::take_refusals`]); the agent stays registered and healthy.
//!
//! The same command can arrive twice (live and in the catch-up, or again after a re-registration): the gate
//! refuses a repeat of a signed execute or cancel until it expires, and the runner drops repeats with a bounded
//! [`SeenSet`] (which is all there is when running insecure).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_nats::HeaderMap;
use muster_schemas::commands::{Command, CommandBody, ComponentSpec, RefusedCommand};
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::ids::TaskAttempt;
use muster_schemas::limits::MAX_COMMAND_BYTES;
use muster_schemas::signing::{RefusalReason, SignatureHeaders, SignedFields};
use muster_schemas::{decode, DecodeError, HostId, UnixMillis, PROTOCOL_VERSION};
use muster_security::command::{Refusal, ReplayGuard, Stamp};

use crate::params::CommandTrust;
use crate::stats::{SessionCounter, SessionStats};

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
    /// The body is addressed to another host (running insecure; signed commands are refused as
    /// [`Refusal::OtherHost`]).
    #[error("command is addressed to host {got}")]
    WrongHost {
        /// The host the body is addressed to.
        got: HostId,
    },
    /// Refused by the signature checks (counted per reason by the gate).
    #[error("refused: {0}")]
    Refused(Refusal),
}

impl BadCommand {
    /// Whether this is a repeat of a message already accepted: normal redelivery as often as a replay, worth a
    /// debug line, not a warning.
    pub fn is_repeat(&self) -> bool {
        matches!(self, Self::Refused(Refusal::Replayed { .. }))
    }
}

/// Refusal reports waiting for delivery to hand them to the runner; refusals beyond are only counted (a flood of
/// forgeries must not become a flood of reports).
pub const PENDING_REFUSALS: usize = 16;
/// Longest explanation carried by a refusal report.
const DETAIL_CHARS: usize = 240;

/// One session's checks of what the server sends: which keys it trusts, its own host, the replay memory, and the
/// refusals waiting to be reported. Shared by the live and catch-up paths and the registration (behind a mutex
/// held for microseconds, never across an await).
#[derive(Debug)]
pub struct CommandGate {
    host: HostId,
    trust: CommandTrust,
    stats: SessionStats,
    clock: fn() -> UnixMillis,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    replay: ReplayGuard,
    pending: VecDeque<RefusedCommand>,
}

/// What a refused message claimed, for its report.
#[derive(Default)]
struct Claimed<'a> {
    fields: Option<&'a SignedFields>,
    signer: Option<&'a str>,
}

impl CommandGate {
    /// The gate of `host`'s session, counting into `stats`, judging time by the agent's clock.
    pub fn new(host: HostId, trust: CommandTrust, stats: SessionStats) -> Self {
        Self { host, trust, stats, clock: muster_nats::unix_millis, state: Mutex::default() }
    }

    /// The same gate judging time by `clock` (tests).
    pub fn with_clock(mut self, clock: fn() -> UnixMillis) -> Self {
        self.clock = clock;
        self
    }

    /// The host this gate admits messages for.
    pub fn host(&self) -> &HostId {
        &self.host
    }

    /// The refusals waiting to be reported, oldest first.
    pub fn take_refusals(&self) -> Vec<RefusedCommand> {
        self.state().pending.drain(..).collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The signature headers of a message, parsed; `None` when running insecure (nothing is checked then).
    fn stamp(&self, headers: Option<&HeaderMap>) -> Result<Option<Stamp>, Refusal> {
        match self.trust {
            CommandTrust::Insecure => Ok(None),
            CommandTrust::Signed(_) => {
                let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
                Stamp::parse(&SignatureHeaders::read(get)).map(Some)
            }
        }
    }

    /// Verifies a signed message's `fields` (from its body and `stamp`) and admits it into the replay memory.
    fn admit(&self, stamp: &Stamp, fields: &SignedFields, payload: &[u8]) -> Result<(), Refusal> {
        let CommandTrust::Signed(verifier) = &self.trust else { return Ok(()) };
        let now = (self.clock)();
        verifier.verify(stamp, fields, payload, &self.host, now)?;
        self.state().replay.admit(fields, now)
    }

    /// Counts a refusal, queues its report (but for a replay), and turns it into the caller's error.
    fn refuse(&self, refusal: Refusal, claimed: Claimed<'_>) -> BadCommand {
        let reason = refusal.reason();
        self.stats.inc(match reason {
            RefusalReason::Unsigned => SessionCounter::RefusedUnsigned,
            RefusalReason::BadSignature => SessionCounter::RefusedBadSignature,
            RefusalReason::UntrustedKey => SessionCounter::RefusedUntrustedKey,
            RefusalReason::OtherHost => SessionCounter::RefusedOtherHost,
            RefusalReason::Expired => SessionCounter::RefusedExpired,
            RefusalReason::Replayed => SessionCounter::RefusedReplayed,
            RefusalReason::Malformed => SessionCounter::RefusedMalformed,
        });
        if reason != RefusalReason::Replayed {
            let mut state = self.state();
            if state.pending.len() < PENDING_REFUSALS {
                let task = claimed.fields.and_then(|f| f.task);
                state.pending.push_back(RefusedCommand {
                    reason,
                    kind: claimed.fields.map_or_else(String::new, |f| f.kind.to_string()),
                    task: task.map(|t| t.task),
                    attempt: task.map(|t| t.attempt),
                    signer: claimed.signer.map(str::to_owned),
                    detail: refusal.to_string().chars().take(DETAIL_CHARS).collect(),
                    nonce: String::new(),
                });
            }
        }
        BadCommand::Refused(refusal)
    }

    /// Checks an accepted registration reply's signature (it carries the component set, whose scripts the agent
    /// runs, and the catch-up cursor). `Err`: its component set must not be applied.
    pub fn check_registration(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), BadCommand> {
        let stamp = match self.stamp(headers) {
            Ok(Some(stamp)) => stamp,
            Ok(None) => return Ok(()),
            Err(r) => return Err(self.refuse(r, Claimed::default())),
        };
        // The reply names its host only in its header; a reply signed for another host fails there or below.
        let host = headers
            .and_then(|h| h.get(headers::HOST))
            .and_then(|v| HostId::new(v.as_str()).ok())
            .unwrap_or_else(|| self.host.clone());
        let mut fields = SignedFields::registration(&host, stamp.epoch, stamp.issued);
        fields.expires = stamp.expires;
        self.admit(&stamp, &fields, payload)
            .map_err(|r| self.refuse(r, Claimed { fields: Some(&fields), signer: Some(&stamp.signer) }))
    }
}

/// Decodes and checks one command message: size, kind, protocol version, and, through `gate`, its signature,
/// host, expiry and novelty (running insecure: only that it is addressed to the gate's host).
pub fn validate_command(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    gate: &CommandGate,
) -> Result<Command, BadCommand> {
    if let Some(kind) = headers.and_then(|h| h.get(headers::KIND)).map(|v| v.as_str()) {
        if kind != MessageKind::Command.as_str() {
            return Err(BadCommand::WrongKind(kind.to_owned()));
        }
    }
    // Refused before the body is even decoded when it carries no usable signature.
    let stamp = gate.stamp(headers).map_err(|r| gate.refuse(r, Claimed::default()))?;
    let command: Command = decode(payload, MAX_COMMAND_BYTES)?;
    if command.schema != PROTOCOL_VERSION {
        return Err(BadCommand::WrongSchema { got: command.schema });
    }
    match stamp {
        Some(stamp) => {
            let fields = SignedFields::command(&command, stamp.epoch, stamp.issued, stamp.expires);
            gate.admit(&stamp, &fields, payload)
                .map_err(|r| gate.refuse(r, Claimed { fields: Some(&fields), signer: Some(&stamp.signer) }))?;
        }
        None if command.host != gate.host => return Err(BadCommand::WrongHost { got: command.host }),
        None => {}
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
    /// Components mapped to the host; `None` when the reply's signature was refused (the agent keeps the set it
    /// has).
    pub components: Option<Vec<ComponentSpec>>,
    /// Every command up to this stream sequence is finished.
    pub cursor: u64,
    /// Commands after the cursor that are finished too.
    pub done_after_cursor: Vec<u64>,
}

/// What delivery hands the runner. Commands are boxed: the channel allocates room for 32 inputs up front in
/// every session, and a command is 184 bytes inline (`muster-swarm` holds 100k sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerInput {
    /// A registration was accepted: these are the host's components; report all statuses.
    Registered {
        /// The components mapped to the host; `None`: keep the current set (the reply's signature was refused).
        components: Option<Vec<ComponentSpec>>,
    },
    /// One batch of commands read back from the stream.
    CatchUp(Box<CatchUp>),
    /// One live command.
    Live(Box<Command>),
    /// A refused message to report to the server (its nonce is set by the runner).
    Refused(Box<RefusedCommand>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use muster_nats::wire::header_map;
    use muster_schemas::commands::{CommandSpec, Execution, RoleCommand};
    use muster_schemas::encode;
    use muster_security::command::{CommandSigner, CommandVerifier};

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

    /// A gate that checks no signature (`MUSTER_INSECURE` without trusted keys).
    fn insecure() -> CommandGate {
        CommandGate::new(host(), CommandTrust::Insecure, SessionStats::default())
    }

    const NOW: UnixMillis = 1_700_000_000_000;
    fn now() -> UnixMillis {
        NOW
    }
    fn an_hour_later() -> UnixMillis {
        NOW + 3_600_000
    }

    /// A gate trusting `signer`, its clock at [`NOW`].
    fn trusting(signer: &CommandSigner) -> CommandGate {
        let verifier = Arc::new(CommandVerifier::new([signer.public_key()]).unwrap());
        CommandGate::new(host(), CommandTrust::Signed(verifier), SessionStats::default()).with_clock(now)
    }

    /// `command` as the leader stores it: body and headers, signed by `signer` at [`NOW`] in epoch 3.
    fn signed(signer: &CommandSigner, command: &Command) -> (HeaderMap, Vec<u8>) {
        let body = encode(command);
        let fields = SignedFields::issue_command(command, 3, NOW, 10_000);
        let mut h = headers::command(&command.host, &muster_schemas::ids::CommandMsgId::Execute(key(1, 1)));
        h.extend(signer.sign(&fields, &body));
        (header_map(h), body)
    }

    fn refused(r: Result<Command, BadCommand>) -> RefusalReason {
        match r {
            Err(BadCommand::Refused(r)) => r.reason(),
            other => panic!("not refused: {other:?}"),
        }
    }

    fn count(gate: &CommandGate, c: SessionCounter) -> u64 {
        gate.stats.get(c)
    }

    #[test]
    fn a_signed_command_is_accepted_once_and_its_repeat_is_counted_not_reported() {
        let signer = CommandSigner::generate();
        let gate = trusting(&signer);
        let (h, body) = signed(&signer, &execute(1, 1));
        assert_eq!(validate_command(Some(&h), &body, &gate).unwrap(), execute(1, 1));
        let again = validate_command(Some(&h), &body, &gate);
        assert!(matches!(&again, Err(e) if e.is_repeat()), "{again:?}");
        assert_eq!(count(&gate, SessionCounter::RefusedReplayed), 1);
        assert!(gate.take_refusals().is_empty(), "a repeat is not reported");
    }

    #[test]
    fn forged_tampered_misaddressed_and_late_commands_are_refused_counted_and_reported() {
        let signer = CommandSigner::generate();
        let gate = trusting(&signer);
        // Unsigned: refused before decoding.
        assert_eq!(refused(validate_command(None, &encode(&execute(1, 1)), &gate)), RefusalReason::Unsigned);
        // Signed by another key.
        let (h, body) = signed(&CommandSigner::generate(), &execute(2, 1));
        assert_eq!(refused(validate_command(Some(&h), &body, &gate)), RefusalReason::UntrustedKey);
        // Tampered argv: one byte of "true" changed.
        let (h, mut body) = signed(&signer, &execute(3, 1));
        let at = body.windows(4).position(|w| w == b"true").unwrap();
        body[at] = b'T';
        assert_eq!(refused(validate_command(Some(&h), &body, &gate)), RefusalReason::BadSignature);
        // A genuine command for web-2, republished on this host's subject.
        let mut other = execute(4, 1);
        other.host = HostId::new("web-2").unwrap();
        let (h, body) = signed(&signer, &other);
        assert_eq!(refused(validate_command(Some(&h), &body, &gate)), RefusalReason::OtherHost);
        // A genuine command, an hour later (its task timed out long ago).
        let (h, body) = signed(&signer, &execute(5, 1));
        let late = trusting(&signer).with_clock(an_hour_later);
        assert_eq!(refused(validate_command(Some(&h), &body, &late)), RefusalReason::Expired);
        assert_eq!(count(&late, SessionCounter::RefusedExpired), 1);
        // None of them entered the replay memory: the genuine ones are still accepted here.
        assert!(validate_command(Some(&h), &body, &gate).is_ok());

        let counted = [
            SessionCounter::RefusedUnsigned,
            SessionCounter::RefusedUntrustedKey,
            SessionCounter::RefusedBadSignature,
            SessionCounter::RefusedOtherHost,
        ];
        assert_eq!(counted.map(|c| count(&gate, c)), [1; 4]);
        let reports = gate.take_refusals();
        let reasons: Vec<_> = reports.iter().map(|r| r.reason).collect();
        use RefusalReason::*;
        assert_eq!(reasons, [Unsigned, UntrustedKey, BadSignature, OtherHost]);
        assert_eq!((reports[3].kind.as_str(), reports[3].task, reports[3].attempt), ("execute", Some(4), Some(1)));
        assert_eq!(reports[2].signer.as_deref(), Some(signer.public_key()));
        assert!(gate.take_refusals().is_empty(), "taken once");
    }

    #[test]
    fn without_trusted_keys_everything_is_refused_and_reports_stay_bounded() {
        let signer = CommandSigner::generate();
        let none = Arc::new(CommandVerifier::new(Vec::<String>::new()).unwrap());
        let gate = CommandGate::new(host(), CommandTrust::Signed(none), SessionStats::default()).with_clock(now);
        for task in 0..100 {
            let (h, body) = signed(&signer, &execute(task, 1));
            assert_eq!(refused(validate_command(Some(&h), &body, &gate)), RefusalReason::UntrustedKey);
        }
        assert_eq!(count(&gate, SessionCounter::RefusedUntrustedKey), 100);
        assert_eq!(gate.take_refusals().len(), PENDING_REFUSALS);
    }

    #[test]
    fn a_registration_reply_is_checked_and_orders_later_configures() {
        let signer = CommandSigner::generate();
        let gate = trusting(&signer);
        let reply = b"the encoded reply".to_vec();
        let sign_reply = |issued, epoch| {
            let fields = SignedFields::registration(&host(), epoch, issued);
            let mut h = headers::reply(MessageKind::RegisterReply, "web-1", None);
            h.extend(signer.sign(&fields, &reply));
            header_map(h)
        };
        assert!(gate.check_registration(Some(&sign_reply(NOW, 3)), &reply).is_ok());
        let mut tampered = reply.clone();
        tampered[0] ^= 1;
        assert!(matches!(
            gate.check_registration(Some(&sign_reply(NOW, 3)), &tampered),
            Err(BadCommand::Refused(Refusal::BadSignature { .. }))
        ));
        assert!(matches!(gate.check_registration(None, &reply), Err(BadCommand::Refused(Refusal::Unsigned))));
        // A configure issued before the registration reply (read back in the catch-up) is older than its set.
        let stale = configure(1);
        let body = encode(&stale);
        let mut h = headers::command(&host(), &muster_schemas::ids::CommandMsgId::Execute(key(1, 1)));
        h.extend(signer.sign(&SignedFields::issue_command(&stale, 3, NOW - 1, 0), &body));
        assert_eq!(refused(validate_command(Some(&header_map(h)), &body, &gate)), RefusalReason::Replayed);
        assert!(insecure().check_registration(None, &reply).is_ok(), "insecure: nothing to check");
    }

    #[test]
    fn commands_are_validated() {
        let own = insecure();
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
