//! Command delivery, the I/O half: live commands from a core subscription on `muster.cmd.<host>`, and after every
//! accepted registration a catch-up that reads the same subject from stream `MUSTER_COMMANDS`, starting after the
//! cursor the registration reply gave.
//!
//! The catch-up reaches only the host's own subject, so nats-server permissions can confine an agent to it (see
//! [`Subjects::agent_reads`]): first a direct get of the subject's last command, by subject
//! (`$JS.API.DIRECT.GET.MUSTER_COMMANDS.muster.cmd.<host>`) — for a host with nothing missed, the usual case of a
//! registration storm, that one request is the whole catch-up; only when the last command is newer than the
//! cursor, requests on `muster.catchup.<host>` ([`CatchUpRequest`]), which any server instance answers with the
//! host's stored commands from the cursor up to that last command, a batch at a time ([`CatchUpReply`]). (A direct
//! get of the *next* message cannot be confined: its subject names only the stream. A consumer cannot either: its
//! body, e.g. a push consumer's deliver subject, is the caller's to choose, so agents never create one.)
//!
//! The session subscribes before it registers, so nothing published after the registration is missed; what was
//! published before it is in the stream. The checks and the catch-up plan are the pure [`crate::intake`];
//! [`Delivery`] performs them, driven by the session while it is registered.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::{HeaderMap, Subject};
use futures::StreamExt as _;
use muster_nats::wire::header_map;
use muster_schemas::commands::{Command, ComponentSpec};
use muster_schemas::limits::CATCH_UP_CHUNK;
use muster_schemas::messages::{CatchUpReply, CatchUpRequest};
use muster_schemas::{codec, headers, HostId, Subjects, PROTOCOL_VERSION};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::feed::Feed;
use crate::intake::{plan_catch_up, validate_command, CommandGate, Registration, RunnerInput};
use crate::params::CommandTrust;
use crate::stats::{SessionCounter, SessionStats};

/// Longest wait for the answer to one catch-up request (the servers answer within a few seconds, or say `busy`):
/// a request or its answer lost with the connection would otherwise wait forever. Retried like any error.
const CATCH_UP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest catch-up reply the agent reads: the servers keep theirs under `MAX_CATCH_UP_REPLY_BYTES`; a little
/// room for their encoding.
const MAX_CATCH_UP_REPLY_READ: usize = muster_schemas::limits::MAX_CATCH_UP_REPLY_BYTES + 64 * 1024;

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
    Registered { components: Option<Vec<ComponentSpec>>, fetch: CatchUpFetch },
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
    /// The first stream sequence not read yet.
    next_seq: u64,
    /// Sequences after the cursor that the server says are finished: skipped.
    done: HashSet<u64>,
    /// Commands read for the batch being gathered.
    batch: Vec<(u64, Command)>,
    /// Transient errors in a row, for the backoff.
    failures: u32,
    /// The sequence of the subject's last command when the catch-up looked (after the registration, so anything
    /// later arrives live): the read ends there. `None` until looked up.
    last_seq: Option<u64>,
    finished: bool,
}

/// One session's command delivery: owns the live subscription and the catch-up, and feeds the runner.
pub struct Delivery {
    /// The host's checks of what the server sends (signatures, replay memory, refusals to report).
    gate: CommandGate,
    subject: String,
    /// `<prefix>.catchup.<host>`, where the servers answer catch-up requests.
    catchup: Subject,
    live: Feed,
    stream: Stream<()>,
    client: async_nats::Client,
    runner: mpsc::Sender<RunnerInput>,
    phase: Phase,
    stats: SessionStats,
    rng: SmallRng,
}

impl Delivery {
    /// Delivery for `host` from `live` (the host's command subject, subscribed before the first registration so
    /// nothing published after it is missed) and, for catch-ups, the commands stream and the servers through
    /// `jetstream`.
    pub async fn new(
        jetstream: jetstream::Context,
        subjects: &Subjects,
        host: HostId,
        live: Feed,
        runner: mpsc::Sender<RunnerInput>,
        stats: SessionStats,
        trust: CommandTrust,
    ) -> Result<Self, DeliveryError> {
        let subject = subjects.cmd(&host);
        let catchup = Subject::from(subjects.catchup(&host));
        // No info request: the stream is the server's (it may not exist yet), and the agent may ask it only for its
        // own subject's last command (a direct get by subject).
        let stream = jetstream.get_stream_no_info(subjects.commands_stream()).await.map_err(DeliveryError::Stream)?;
        Ok(Self {
            gate: CommandGate::new(host, trust, stats.clone()),
            subject,
            catchup,
            live,
            stream,
            client: jetstream.client(),
            runner,
            phase: Phase::Unregistered,
            stats,
            rng: SmallRng::from_os_rng(),
        })
    }

    /// The host's checks of what the server sends; the session checks registration replies with it.
    pub fn gate(&self) -> &CommandGate {
        &self.gate
    }

    /// A registration was accepted: hand its components to the runner, then catch up after its cursor.
    pub fn registered(&mut self, registration: Registration) {
        let fetch = CatchUpFetch {
            next_seq: registration.cursor.saturating_add(1),
            done: registration.done_after_cursor.into_iter().collect(),
            batch: Vec::new(),
            failures: 0,
            last_seq: None,
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
                let n = components.as_ref().map_or(0, Vec::len);
                tracing::debug!(components = n, from_seq = fetch.next_seq, "catching up on commands");
                permit.send(RunnerInput::Registered { components });
                self.phase = Phase::CatchingUp(fetch);
            }
            Phase::CatchingUp(fetch) => {
                let stats = &self.stats;
                // Boxed: a catch-up runs once per registration, and its request state would otherwise enlarge
                // every idle session (`muster-swarm` holds 100k of them).
                let target = Target {
                    stream: &self.stream,
                    subject: &self.subject,
                    client: &self.client,
                    catchup: &self.catchup,
                    host: self.gate.host(),
                };
                let batch = Box::pin(fetch.next_batch(target, &self.gate, stats, &mut self.rng));
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
                match validate_command(message.headers.as_ref(), &message.payload, &self.gate) {
                    Ok(command) => {
                        self.stats.inc(SessionCounter::CommandsReceived);
                        permit.send(RunnerInput::Live(Box::new(command)));
                    }
                    Err(why) if why.is_repeat() => tracing::debug!(%why, "dropping a repeated command"),
                    Err(why) => {
                        self.stats.inc(SessionCounter::BadCommands);
                        tracing::warn!(subject = %message.subject, %why, "ignoring a command message");
                    }
                }
            }
        }
        self.report_refusals();
        Ok(())
    }

    /// Hands the refusals the gate noted (live, catch-up, registration) to the runner, which reports them. Never
    /// waits: with the runner's queue full, a report is dropped (the refusal stays counted).
    fn report_refusals(&self) {
        for refused in self.gate.take_refusals() {
            if self.runner.try_send(RunnerInput::Refused(Box::new(refused))).is_err() {
                tracing::debug!("runner busy; a refusal is counted but not reported");
            }
        }
    }
}

/// What a catch-up reads: the commands stream and the host's subject (the last command), the servers' catch-up
/// subject (the commands).
#[derive(Clone, Copy)]
struct Target<'a> {
    stream: &'a Stream<()>,
    subject: &'a str,
    client: &'a async_nats::Client,
    catchup: &'a Subject,
    host: &'a HostId,
}

/// What one request of a catch-up brought.
enum Step {
    /// Progress (or nothing to do): go on.
    Progress,
    /// The read is complete.
    End,
}

impl CatchUpFetch {
    fn empty() -> Self {
        Self { next_seq: 0, done: HashSet::new(), batch: Vec::new(), failures: 0, last_seq: None, finished: true }
    }

    /// The next batch of at most [`CATCH_UP_CHUNK`] commands, or `None` when the stream has nothing more.
    /// Errors are retried with backoff, forever: the stream is the only source of missed commands.
    async fn next_batch(
        &mut self,
        target: Target<'_>,
        own: &CommandGate,
        stats: &SessionStats,
        rng: &mut SmallRng,
    ) -> Option<Vec<(u64, Command)>> {
        while !self.finished && self.batch.len() < CATCH_UP_CHUNK {
            match self.read(target, own, stats).await {
                Ok(Step::Progress) => self.failures = 0,
                Ok(Step::End) => {
                    self.failures = 0;
                    self.finished = true;
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let delay = Backoff::JETSTREAM_RETRY.delay(self.failures, rng);
                    if self.failures == 1 {
                        tracing::warn!(error = %e, seq = self.next_seq, "cannot catch up on commands; retrying");
                    } else {
                        let failures = self.failures;
                        tracing::debug!(error = %e, failures, ?delay, "still cannot catch up on commands");
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

    /// One request: the look at the subject's last command, or one catch-up request to the servers.
    async fn read(
        &mut self,
        target: Target<'_>,
        own: &CommandGate,
        stats: &SessionStats,
    ) -> Result<Step, CatchUpError> {
        let Some(last_seq) = self.last_seq else {
            return match target.stream.direct_get_last_for_subject(target.subject).await {
                Ok(last) if last.sequence >= self.next_seq => {
                    self.last_seq = Some(last.sequence);
                    Ok(Step::Progress)
                }
                // Nothing after the cursor: the whole catch-up was this one request.
                Ok(_) => Ok(Step::End),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(Step::End),
                Err(e) => Err(CatchUpError::Last(e)),
            };
        };
        if self.next_seq > last_seq {
            return Ok(Step::End);
        }
        let request = CatchUpRequest {
            schema: PROTOCOL_VERSION,
            host: target.host.clone(),
            from_seq: self.next_seq,
            up_to_seq: last_seq,
            max: u32::try_from(CATCH_UP_CHUNK - self.batch.len()).unwrap_or(u32::MAX),
        };
        let request = async_nats::Request::new()
            .headers(header_map(headers::catch_up(target.host)))
            .payload(codec::encode(&request).into())
            .timeout(Some(CATCH_UP_REQUEST_TIMEOUT));
        let answer =
            target.client.send_request(target.catchup.clone(), request).await.map_err(CatchUpError::Request)?;
        let (commands, next_seq, more) = match codec::decode(&answer.payload, MAX_CATCH_UP_REPLY_READ) {
            Ok(CatchUpReply::Commands { commands, next_seq, more }) => (commands, next_seq, more),
            Ok(CatchUpReply::Rejected { code, message }) => return Err(CatchUpError::Rejected { code, message }),
            Err(e) => return Err(CatchUpError::Reply(e)),
        };
        let asked_from = self.next_seq;
        for stored in commands {
            let seq = stored.seq;
            // Only what was asked for: a sequence outside the range (a confused server) is not taken.
            if seq < self.next_seq || seq > last_seq {
                continue;
            }
            self.next_seq = seq.saturating_add(1);
            if self.done.contains(&seq) {
                continue;
            }
            match validate_command(Some(&header_map_of(&stored.headers)), &stored.payload, own) {
                Ok(command) => {
                    stats.inc(SessionCounter::CommandsReceived);
                    self.batch.push((seq, command));
                }
                Err(why) if why.is_repeat() => tracing::debug!(seq, %why, "dropping a repeated stored command"),
                Err(why) => {
                    stats.inc(SessionCounter::BadCommands);
                    tracing::warn!(seq, %why, "ignoring a stored command");
                }
            }
        }
        // The server says where to go on (past anything it skipped); never backwards.
        self.next_seq = self.next_seq.max(next_seq);
        if !more || self.next_seq > last_seq {
            return Ok(Step::End);
        }
        if self.next_seq == asked_from {
            // "More" without a step forward: asking again at once would spin; back off like any failure.
            return Err(CatchUpError::NoProgress(asked_from));
        }
        Ok(Step::Progress)
    }
}

/// A stored command's headers as the client's map. A pair that is not a valid header (never one the server wrote)
/// is left out rather than trusted to the client's panicking constructors; the command's checks then judge it.
fn header_map_of(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            map.append(name, value);
        }
    }
    map
}

/// Why one catch-up request failed (each is retried with backoff).
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    /// The direct get of the subject's last command failed.
    #[error("cannot look up the last command: {0}")]
    Last(async_nats::jetstream::stream::DirectGetError),
    /// The catch-up request got no answer (no server, timeout, connection trouble).
    #[error("catch-up request failed: {0}")]
    Request(async_nats::RequestError),
    /// The answer was not a catch-up reply.
    #[error("bad catch-up reply: {0}")]
    Reply(codec::DecodeError),
    /// A reply said more follow but covered nothing.
    #[error("a catch-up reply from {0} made no progress")]
    NoProgress(u64),
    /// A server refused the request.
    #[error("catch-up refused ({code}): {message}")]
    Rejected {
        /// Why, as the server's code (`busy` and `internal` are transient).
        code: muster_schemas::ErrorCode,
        /// The server's words.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_headers_become_a_map_and_bad_pairs_are_left_out() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let pairs = [
            pair("Muster-Kind", "command"),
            pair("X-Multi", "1"),
            pair("X-Multi", "2"),
            pair("Bad:Name", "x"),
            pair("X-Bad", "a\r\nb"),
        ];
        let map = header_map_of(&pairs);
        assert_eq!(map.get("Muster-Kind").map(|v| v.as_str()), Some("command"));
        assert_eq!(map.get_all("X-Multi").map(|v| v.as_str().to_owned()).collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(map.len(), 2, "{map:?}");
    }
}
