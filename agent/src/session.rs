//! One host's session with the muster leader: register (with backoff), then heartbeat, re-registering whenever
//! the server asks or NATS reconnects. The decisions live in [`crate::protocol`]; this module performs them.
//!
//! Alongside the protocol, a session runs its host's command path: it subscribes to `muster.cmd.<host>` before
//! registering, hands each accepted registration to [`crate::delivery`] (components, then a catch-up from the
//! stream, then live commands), and runs [`crate::runner::run_command_path`] concurrently. On shutdown the
//! session returns only once the command path has finished its own shutdown (grace period included).
//!
//! A session only borrows a cloned [`async_nats::Client`], so many sessions (one per simulated host in
//! `muster-swarm`) can share one connection, each with its own [`Reconnects`] watcher and any [`Executor`].
//! Its inbound messages arrive through a [`SessionIo`]: subscriptions of its own ([`run_session`]), or mailboxes
//! fed by shared subscriptions ([`run_session_with`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, Message, RequestError, RequestErrorKind, Subject};
use futures::{FutureExt as _, StreamExt as _};
use muster_nats::unix_millis;
use muster_nats::wire::header_map;
use muster_nats::Reconnects;
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::limits::{MAX_COMMAND_BYTES, MAX_HEARTBEAT_BYTES, MAX_REGISTER_BYTES};
use muster_schemas::{
    decode, encode, ErrorCode, Heartbeat, HeartbeatReply, HostId, RegisterReply, RegisterRequest, Subjects,
    PROTOCOL_VERSION,
};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backoff::{self, Backoff, HEARTBEAT_JITTER};
use crate::delivery::{Delivery, DeliveryError};
use crate::executor::Executor;
use crate::facts::{bound_health, FactSource};
use crate::feed::Feed;
use crate::intake::{CommandGate, Registration};
use crate::params::SessionParams;
use crate::protocol::{transition, Effect, RetryDelay, SessionEvent, SessionState, Unanswered};
use crate::runner::{run_command_path, RUNNER_INPUT_QUEUE};
use crate::stats::SessionCounter;

/// Largest control message the agent decodes. Control messages are a few hundred bytes; this bound only stops a
/// broken or hostile peer from making the agent decode megabytes.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Largest registration reply the agent decodes: it carries the host's component set, which a `Configure`
/// command may carry too (up to `MAX_COMMAND_BYTES`), plus the finished sequences after the cursor.
pub const MAX_REGISTER_REPLY_BYTES: usize = MAX_COMMAND_BYTES + 64 * 1024;

/// Server and agent clocks further apart than this are logged as a warning at registration: heartbeat-loss
/// detection and report timestamps get confusing well before a minute of skew.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How often a session waiting for NATS re-checks the client's connection state. The connect event and the
/// client's state are updated separately, so the session trusts neither alone; a second is short next to any
/// outage worth waiting out.
pub const CONNECTION_POLL: Duration = Duration::from_secs(1);

/// Why a session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The server refused the registration for a reason retrying cannot fix.
    #[error("registration refused by the server ({code}): {message}")]
    Refused {
        /// The non-retryable code the server refused with (e.g. `invalid_host_id`).
        code: ErrorCode,
        /// The server's explanation, shown to the operator.
        message: String,
    },
    /// The registration would exceed the protocol's size limit (too many labels).
    #[error("registration is {len} bytes, over the {limit}-byte limit; reduce the labels")]
    RegistrationTooLarge {
        /// Encoded size of the registration request.
        len: usize,
        /// The protocol's limit, `MAX_REGISTER_BYTES`.
        limit: usize,
    },
    /// The control inbox could not be subscribed.
    #[error("cannot subscribe to the control inbox: {0}")]
    Subscribe(async_nats::SubscribeError),
    /// The control inbox subscription ended: the client was closed under the session.
    #[error("the control inbox subscription closed (NATS client shut down)")]
    InboxClosed,
    /// Command delivery could not start or stopped.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Runs one host's session until `shutdown` is cancelled (then `Ok`) or the server refuses the host for good.
/// Either way it returns only after the host's command path has shut down (at most the configured shutdown
/// grace plus a short report flush).
///
/// `reconnects` must be fed by the client's connection events ([`muster_nats::ConnectionEvents`]); the
/// session waits for the first connection before registering. `executor` runs the host's commands.
///
/// The session subscribes to its own control inbox and command subject ([`SessionIo::subscribe`]); to share
/// subscriptions among many sessions, use [`run_session_with`].
pub async fn run_session<E: Executor>(
    client: Client,
    params: SessionParams,
    facts: impl FactSource,
    executor: Arc<E>,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let span = tracing::info_span!("session", host = %params.host);
    let io = SessionIo::subscribe(&client, &params.subjects, &params.host).instrument(span).await?;
    run_session_with(io, params, facts, executor, reconnects, shutdown).await
}

/// What a session talks through: the client it publishes on, a JetStream context, and its two inbound feeds.
///
/// The real agent subscribes both feeds itself ([`SessionIo::subscribe`]); `muster-swarm` routes them from
/// shared wildcard subscriptions into [`crate::feed::Mailbox`]es and shares one JetStream context per connection.
/// Either way the subjects on the wire are the same.
#[derive(Debug)]
pub struct SessionIo {
    /// Publishes registrations, heartbeats and reports; its connection state gates heartbeats.
    pub client: Client,
    /// Reports and catch-up reads. A context runs an ack task of its own, so sessions share one.
    pub jetstream: jetstream::Context,
    /// The control inbox's subject, sent as the reply subject of every heartbeat.
    pub inbox_subject: Subject,
    /// Messages to the control inbox.
    pub inbox: Feed,
    /// Messages on `<prefix>.cmd.<host>`. Must be live before the first registration, so nothing published after
    /// it is missed.
    pub commands: Feed,
}

impl SessionIo {
    /// A fresh control inbox and command subscription of one host's own, on `client`.
    pub async fn subscribe(client: &Client, subjects: &Subjects, host: &HostId) -> Result<Self, SessionError> {
        let inbox_subject = Subject::from(client.new_inbox());
        let inbox = client.subscribe(inbox_subject.clone()).await.map_err(SessionError::Subscribe)?;
        let commands = client.subscribe(subjects.cmd(host)).await.map_err(DeliveryError::Subscribe)?;
        Ok(Self {
            client: client.clone(),
            jetstream: jetstream::new(client.clone()),
            inbox_subject,
            inbox: Feed::Subscription(inbox),
            commands: Feed::Subscription(commands),
        })
    }
}

/// [`run_session`] over inbound feeds and a JetStream context the caller provides.
///
/// Not an `async fn`: its arguments would then be stored twice for the session's whole life (once as the
/// function's, once moved into the session), ≈1 KiB per simulated host in `muster-swarm`.
pub fn run_session_with<E: Executor>(
    io: SessionIo,
    params: SessionParams,
    facts: impl FactSource,
    executor: Arc<E>,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) -> impl Future<Output = Result<(), SessionError>> + Send {
    let span = tracing::info_span!("session", host = %params.host);
    async move {
        let SessionIo { client, jetstream, inbox_subject, inbox, commands } = io;
        let (runner, runner_input) = mpsc::channel(RUNNER_INPUT_QUEUE);
        let delivery = Delivery::new(
            jetstream.clone(),
            &params.subjects,
            params.host.clone(),
            commands,
            runner,
            params.stats.clone(),
            params.trust.clone(),
        )
        .await?;
        let stop = shutdown.child_token();
        let command_params = params.clone();
        let commands =
            run_command_path(executor, jetstream, reconnects.clone(), &command_params, runner_input, stop.clone());
        let mut shell = Shell {
            reg_subject: Subject::from(params.subjects.reg(&params.host)),
            hb_subject: Subject::from(params.subjects.hb(&params.host)),
            client,
            params,
            facts,
            inbox,
            inbox_subject,
            reconnects,
            rng: SmallRng::from_os_rng(),
            seq: 0,
            delivery,
            accepted: None,
            last_interval: None,
        };
        let protocol = async {
            let result = shell.run(shutdown).await;
            // A refused host stops its commands too (with the same grace as a shutdown).
            stop.cancel();
            result
        };
        let (result, ()) = tokio::join!(protocol, commands);
        result
    }
    .instrument(span)
}

/// The I/O shell around [`transition`].
struct Shell<F> {
    client: Client,
    params: SessionParams,
    facts: F,
    reg_subject: Subject,
    hb_subject: Subject,
    /// The control inbox: heartbeats carry it as their reply subject; the server writes here only when the agent
    /// must act.
    inbox: Feed,
    inbox_subject: Subject,
    reconnects: Reconnects,
    rng: SmallRng,
    /// Heartbeat sequence number, monotonic over the session's life (across re-registrations).
    seq: u64,
    /// The host's command delivery, driven while registered.
    delivery: Delivery,
    /// What the registration just accepted says about commands, until the protocol confirms it.
    accepted: Option<Registration>,
    /// The heartbeat interval of the last accepted registration: once registered, the agent retries registering at
    /// least this often, so a new leader (which grants every host interval × misses) hears from it in time.
    last_interval: Option<Duration>,
}

impl<F: FactSource> Shell<F> {
    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), SessionError> {
        if !self.reconnects.connected_once() {
            tracing::info!("waiting for the NATS connection");
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = self.reconnects.wait_connected() => {}
        }

        let mut state = SessionState::Registering { failures: 0 };
        let mut register_at = Instant::now();
        let mut next_beat = Instant::now();
        loop {
            let event = match &state {
                SessionState::Registering { .. } => {
                    // Waiting to retry, an earlier attempt's answer may still come: the leader committed that
                    // registration, and taking its acceptance now saves a second one (and the host's window).
                    let late = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        () = sleep_until(register_at) => None,
                        message = self.inbox.next() => match message {
                            Some(message) => match self.late_acceptance(message) {
                                Some(event) => Some(event),
                                None => continue,
                            },
                            None => return Err(SessionError::InboxClosed),
                        },
                    };
                    match late {
                        Some(event) => event,
                        None => {
                            if !self.wait_connected(&shutdown).await {
                                return Ok(());
                            }
                            tokio::select! {
                                biased;
                                () = shutdown.cancelled() => return Ok(()),
                                // Boxed, like the heartbeat below: the request's state would otherwise enlarge
                                // every idle session (`muster-swarm` holds 100k of them).
                                event = Box::pin(self.register()) => event?,
                            }
                        }
                    }
                }
                SessionState::Heartbeating { interval, .. } => {
                    let interval = *interval;
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        () = self.reconnects.reconnected() => SessionEvent::Reconnected,
                        delivered = self.delivery.step() => {
                            delivered?;
                            continue;
                        }
                        message = self.inbox.next() => match message {
                            Some(message) => match self.control_event(&message) {
                                Some(event) => event,
                                None => continue,
                            },
                            None => return Err(SessionError::InboxClosed),
                        },
                        () = sleep_until(next_beat) => {
                            // A publish can wait on a full client buffer; shutdown must not wait with it.
                            tokio::select! {
                                biased;
                                () = shutdown.cancelled() => return Ok(()),
                                () = Box::pin(self.heartbeat()) => {}
                            }
                            next_beat = Instant::now() + backoff::jitter(interval, HEARTBEAT_JITTER, &mut self.rng);
                            continue;
                        }
                    }
                }
                SessionState::Refused { code, message } => {
                    return Err(SessionError::Refused { code: *code, message: message.clone() })
                }
            };

            self.log_event(&event);
            let (next, effects) = match transition(&state, event) {
                Ok(step) => step,
                Err(illegal) => {
                    self.params.stats.inc(SessionCounter::IllegalTransitions);
                    tracing::error!(%illegal, "ignoring an event the protocol does not allow here");
                    continue;
                }
            };
            state = next;
            for effect in effects {
                match effect {
                    Effect::Register { after } => {
                        if after == RetryDelay::Now {
                            self.params.stats.inc(SessionCounter::Reregistrations);
                        }
                        register_at = Instant::now() + self.retry_delay(after);
                    }
                    Effect::StartHeartbeats { interval } => {
                        self.params.stats.inc(SessionCounter::Registrations);
                        if let Some(registration) = self.accepted.take() {
                            self.delivery.registered(registration);
                        }
                        self.drain_stale_control_messages();
                        // The registration just made answers any reconnect that happened while it was in flight.
                        self.reconnects.mark_seen();
                        tracing::debug!(?interval, "heartbeating");
                        next_beat = Instant::now();
                    }
                    Effect::Refuse { code, message } => {
                        tracing::error!(%code, server_message = %message, "the server refused this host; retrying cannot help");
                        return Err(SessionError::Refused { code, message });
                    }
                }
            }
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits until NATS is connected; `false` if `shutdown` came first. A registration sent while NATS is down would
    /// sit in the client's buffer and time out; this registers as soon as NATS is back instead of after a backoff
    /// that kept growing during the outage.
    async fn wait_connected(&mut self, shutdown: &CancellationToken) -> bool {
        if self.connected() {
            return true;
        }
        tracing::info!("NATS is down; registering once it is back");
        while !self.connected() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = self.reconnects.reconnected() => {}
                () = tokio::time::sleep(CONNECTION_POLL) => {}
            }
        }
        true
    }

    /// Sends one registration and classifies the outcome. Only an oversized request (a config problem) is an error.
    async fn register(&mut self) -> Result<SessionEvent, SessionError> {
        let facts = self.facts.facts();
        let health = bound_health(self.facts.health());
        let request = RegisterRequest {
            schema: PROTOCOL_VERSION,
            host: self.params.host.clone(),
            facts,
            labels: self.params.labels.clone(),
            agent_version: self.params.agent_version.clone(),
            agent_started_at: self.params.agent_started_at,
            health,
        };
        let body = encode(&request);
        if body.len() > MAX_REGISTER_BYTES {
            return Err(SessionError::RegistrationTooLarge { len: body.len(), limit: MAX_REGISTER_BYTES });
        }
        self.params.stats.inc(SessionCounter::RegisterAttempts);
        tracing::debug!(bytes = body.len(), "registering");
        // The answer comes to the control inbox, not to a request's private inbox: one that arrives after the
        // timeout is still heard (while waiting to retry, see `run`), instead of being dropped while the leader
        // has committed the registration.
        let headers = header_map(headers::message(MessageKind::Register, self.params.host.as_str()));
        let deadline = Instant::now() + self.params.register_timeout;
        let sent = self
            .client
            .publish_with_reply_and_headers(self.reg_subject.clone(), self.inbox_subject.clone(), headers, body.into())
            .await;
        if let Err(e) = sent {
            return Ok(self.classified(Err(RequestError::with_source(RequestErrorKind::Other, e))));
        }
        loop {
            let message = tokio::select! {
                biased;
                message = self.inbox.next() => message.ok_or(SessionError::InboxClosed)?,
                () = sleep_until(deadline) => {
                    return Ok(self.classified(Err(RequestError::new(RequestErrorKind::TimedOut))));
                }
            };
            match register_answer(message) {
                Some(answer) => return Ok(self.classified(answer)),
                None => tracing::trace!("ignoring a control message while registering"),
            }
        }
    }

    /// Classifies a registration's outcome and keeps what an acceptance says about commands.
    fn classified(&mut self, answer: Result<Message, RequestError>) -> SessionEvent {
        let (event, registration) = classify_register(answer, self.delivery.gate());
        if let SessionEvent::RegisterAccepted { heartbeat_interval_ms, .. } = &event {
            self.last_interval = Some(Duration::from_millis(*heartbeat_interval_ms));
        }
        self.accepted = registration;
        event
    }

    /// An earlier attempt's acceptance heard while waiting to retry, as the event it is; anything else heard then
    /// (its refusals, stale heartbeat answers) changes nothing.
    fn late_acceptance(&mut self, message: Message) -> Option<SessionEvent> {
        let Some(Ok(message)) = register_answer(message) else { return None };
        let event = self.classified(Ok(message));
        matches!(event, SessionEvent::RegisterAccepted { .. }).then(|| {
            tracing::info!("an earlier registration's answer came late; registered with it");
            self.params.stats.inc(SessionCounter::LateRegistrationAnswers);
            event
        })
    }

    async fn heartbeat(&mut self) {
        // Heartbeats are level-triggered: one queued during an outage would arrive stale, and a long outage would
        // fill the client's buffer with them. The reconnect re-registers and the next beat carries fresh health.
        if !self.connected() {
            tracing::debug!("NATS is down; skipping this heartbeat");
            return;
        }
        self.seq += 1;
        let beat = Heartbeat {
            schema: PROTOCOL_VERSION,
            host: self.params.host.clone(),
            seq: self.seq,
            sent_at: unix_millis(),
            health: bound_health(self.facts.health()),
        };
        let body = encode(&beat);
        if body.len() > MAX_HEARTBEAT_BYTES {
            // bound_health makes this unreachable for any sane host id; never send what the server must refuse.
            self.params.stats.inc(SessionCounter::HeartbeatErrors);
            tracing::error!(bytes = body.len(), seq = self.seq, "heartbeat over the size limit; not sent");
            return;
        }
        let headers = header_map(headers::message(MessageKind::Heartbeat, self.params.host.as_str()));
        let sent = self
            .client
            .publish_with_reply_and_headers(self.hb_subject.clone(), self.inbox_subject.clone(), headers, body.into())
            .await;
        match sent {
            Ok(()) => {
                self.params.stats.inc(SessionCounter::Heartbeats);
                tracing::trace!(seq = self.seq, healthy = beat.health.is_healthy(), "heartbeat");
            }
            Err(e) => {
                self.params.stats.inc(SessionCounter::HeartbeatErrors);
                tracing::warn!(error = %e, seq = self.seq, "cannot send heartbeat");
            }
        }
    }

    /// Turns a control-inbox message into an event; unusable messages are logged and counted.
    fn control_event(&mut self, message: &Message) -> Option<SessionEvent> {
        // A heartbeat nobody listened to (no leader) comes back as a "no responders" status: the registration
        // retry and heartbeat-loss logic already cover that, so it is neither an error nor worth a warning.
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            tracing::trace!("heartbeat had no responders");
            return None;
        }
        // The answer to an earlier registration attempt, after a later one was answered: stale.
        if kind_of(message) == Some(MessageKind::RegisterReply.as_str()) {
            tracing::debug!("ignoring a late registration answer; already registered");
            return None;
        }
        match control_event(message) {
            Ok(event) => Some(event),
            Err(why) => {
                self.params.stats.inc(SessionCounter::BadControlMessages);
                tracing::warn!(subject = %message.subject, %why, "ignoring control message");
                None
            }
        }
    }

    /// Answers to heartbeats sent before this registration are about the old registration: drop what has arrived.
    fn drain_stale_control_messages(&mut self) {
        while let Some(Some(message)) = self.inbox.next().now_or_never() {
            tracing::debug!(subject = %message.subject, "dropping a control message that predates the registration");
        }
    }

    fn retry_delay(&mut self, after: RetryDelay) -> Duration {
        match after {
            RetryDelay::Now => Duration::ZERO,
            RetryDelay::Backoff { failures } => {
                let delay = Backoff::REGISTER.delay(failures, &mut self.rng);
                self.last_interval.map_or(delay, |interval| delay.min(interval))
            }
            RetryDelay::ServerAsked(after) => backoff::server_retry_after(after, &mut self.rng),
        }
    }

    fn log_event(&self, event: &SessionEvent) {
        match event {
            SessionEvent::RegisterAccepted { heartbeat_interval_ms, epoch } => {
                tracing::info!(epoch, heartbeat_interval_ms, "registered");
            }
            SessionEvent::RegisterRejected { code, message, retry_after_ms } if code.is_retryable() => {
                tracing::warn!(%code, server_message = %message, ?retry_after_ms, "registration rejected; will retry");
            }
            SessionEvent::RegisterRejected { .. } => {} // logged as an error when the session ends
            SessionEvent::RegisterUnanswered(why) => {
                tracing::warn!(%why, "registration unanswered; will retry")
            }
            SessionEvent::ReregisterRequested { reason } => {
                tracing::info!(%reason, "the server asked this host to register again");
            }
            SessionEvent::HeartbeatRejected { code, message } => {
                tracing::warn!(%code, server_message = %message, "heartbeat rejected by the server (version skew or a bug)");
            }
            SessionEvent::Reconnected => tracing::info!("NATS reconnected; registering again"),
        }
    }
}

/// What a registration request's outcome means for the protocol, and for an accepted one what it says about
/// command delivery. The component set of an accepted reply is taken only if `gate` admits its signature; a
/// refused one still registers the host (it stays healthy, keeps its current set, and the refusal is reported).
pub fn classify_register(
    result: Result<Message, RequestError>,
    gate: &CommandGate,
) -> (SessionEvent, Option<Registration>) {
    let message = match result {
        Ok(message) => message,
        Err(e) => {
            let why = match e.kind() {
                RequestErrorKind::TimedOut => Unanswered::TimedOut,
                RequestErrorKind::NoResponders => Unanswered::NoResponders,
                _ => Unanswered::Transport(e.to_string()),
            };
            return (SessionEvent::RegisterUnanswered(why), None);
        }
    };
    if let Some(status) = message.status.filter(|s| !s.is_success()) {
        let why = format!("NATS status {status} {}", message.description.as_deref().unwrap_or_default());
        return (SessionEvent::RegisterUnanswered(Unanswered::BadReply(why.trim_end().to_owned())), None);
    }
    match decode::<RegisterReply>(&message.payload, MAX_REGISTER_REPLY_BYTES) {
        Ok(RegisterReply::Accepted {
            heartbeat_interval_ms,
            epoch,
            server_time,
            components,
            cursor,
            done_after_cursor,
        }) => {
            let skew = Duration::from_millis(unix_millis().abs_diff(server_time));
            if skew > MAX_CLOCK_SKEW {
                tracing::warn!(skew_secs = skew.as_secs(), "agent and server clocks differ; check NTP");
            }
            let components = match gate.check_registration(message.headers.as_ref(), &message.payload) {
                Ok(()) => Some(components),
                Err(why) => {
                    tracing::error!(%why, "not applying the component set of an untrusted registration reply");
                    None
                }
            };
            let registration = Registration { components, cursor, done_after_cursor };
            (SessionEvent::RegisterAccepted { heartbeat_interval_ms, epoch }, Some(registration))
        }
        Ok(RegisterReply::Rejected { code, message, retry_after_ms }) => {
            (SessionEvent::RegisterRejected { code, message, retry_after_ms }, None)
        }
        Err(e) => (SessionEvent::RegisterUnanswered(Unanswered::BadReply(e.to_string())), None),
    }
}

/// A message's kind header, if it has one.
fn kind_of(message: &Message) -> Option<&str> {
    message.headers.as_ref().and_then(|h| h.get(headers::KIND)).map(|v| v.as_str())
}

/// A control-inbox message as the answer to a registration: a registration reply, or the "no responders" status
/// (no leader heard it) — `None` for anything else (a heartbeat's answer sent before registering again).
pub fn register_answer(message: Message) -> Option<Result<Message, RequestError>> {
    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Some(Err(RequestError::new(RequestErrorKind::NoResponders)));
    }
    (kind_of(&message) == Some(MessageKind::RegisterReply.as_str())).then_some(Ok(message))
}

/// What a control-inbox message asks for, or why it is unusable.
pub fn control_event(message: &Message) -> Result<SessionEvent, String> {
    let kind = kind_of(message);
    if let Some(kind) = kind.filter(|k| *k != MessageKind::HeartbeatReply.as_str()) {
        return Err(format!("unexpected message kind {kind:?}"));
    }
    match decode::<HeartbeatReply>(&message.payload, MAX_REPLY_BYTES).map_err(|e| e.to_string())? {
        HeartbeatReply::Reregister { reason } => Ok(SessionEvent::ReregisterRequested { reason }),
        HeartbeatReply::Rejected { code, message } => Ok(SessionEvent::HeartbeatRejected { code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CommandTrust;
    use async_nats::StatusCode;
    use muster_schemas::commands::{Category, ComponentSpec};

    fn message(payload: Vec<u8>, kind: Option<MessageKind>) -> Message {
        let headers = kind.map(|k| header_map(headers::message(k, "web-1")));
        Message {
            subject: Subject::from("_INBOX.x"),
            reply: None,
            payload: payload.into(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn sessions_can_be_spawned() {
        // `muster-swarm` spawns one session per simulated host, so the future must be Send.
        fn assert_send<T: Send>(_: &T) {}
        fn check(client: Client, params: SessionParams, reconnects: Reconnects) {
            let session = run_session(
                client,
                params,
                crate::facts::StaticFacts::default(),
                Arc::new(crate::executor::ProcessExecutor),
                reconnects,
                CancellationToken::new(),
            );
            assert_send(&session);
        }
        let _ = check;
    }

    #[test]
    fn register_outcomes_are_classified() {
        let gate = CommandGate::new(HostId::new("web-1").unwrap(), CommandTrust::Insecure, Default::default());
        let component = ComponentSpec {
            service: "svc".into(),
            component: "server".into(),
            category: Category::Daemon,
            status: None,
            start: None,
            should_run: true,
        };
        let accepted = RegisterReply::Accepted {
            heartbeat_interval_ms: 2_000,
            epoch: 9,
            server_time: unix_millis(),
            components: vec![component.clone()],
            cursor: 41,
            done_after_cursor: vec![43, 47],
        };
        assert_eq!(
            classify_register(Ok(message(encode(&accepted), Some(MessageKind::RegisterReply))), &gate),
            (
                SessionEvent::RegisterAccepted { heartbeat_interval_ms: 2_000, epoch: 9 },
                Some(Registration { components: Some(vec![component]), cursor: 41, done_after_cursor: vec![43, 47] })
            )
        );
        let rejected =
            RegisterReply::Rejected { code: ErrorCode::Busy, message: "full".into(), retry_after_ms: Some(700) };
        assert_eq!(
            classify_register(Ok(message(encode(&rejected), None)), &gate).0,
            SessionEvent::RegisterRejected { code: ErrorCode::Busy, message: "full".into(), retry_after_ms: Some(700) }
        );
        assert!(matches!(
            classify_register(Ok(message(b"\xc1".to_vec(), None)), &gate),
            (SessionEvent::RegisterUnanswered(Unanswered::BadReply(_)), None)
        ));
        let timed_out = RequestError::new(RequestErrorKind::TimedOut);
        assert_eq!(
            classify_register(Err(timed_out), &gate),
            (SessionEvent::RegisterUnanswered(Unanswered::TimedOut), None)
        );
        let none = RequestError::new(RequestErrorKind::NoResponders);
        assert_eq!(classify_register(Err(none), &gate).0, SessionEvent::RegisterUnanswered(Unanswered::NoResponders));
        let mut status = message(vec![], None);
        status.status = Some(StatusCode::from_u16(503).unwrap());
        assert!(matches!(
            classify_register(Ok(status), &gate).0,
            SessionEvent::RegisterUnanswered(Unanswered::BadReply(_))
        ));
    }

    #[test]
    fn an_unsigned_registration_reply_registers_but_its_components_are_not_applied() {
        let signer = muster_security::command::CommandSigner::generate();
        let verifier = muster_security::command::CommandVerifier::new([signer.public_key()]).unwrap();
        let stats = crate::stats::SessionStats::default();
        let gate =
            CommandGate::new(HostId::new("web-1").unwrap(), CommandTrust::Signed(Arc::new(verifier)), stats.clone());
        let accepted = RegisterReply::Accepted {
            heartbeat_interval_ms: 2_000,
            epoch: 9,
            server_time: unix_millis(),
            components: vec![],
            cursor: 41,
            done_after_cursor: vec![],
        };
        let body = encode(&accepted);
        let (event, registration) = classify_register(Ok(message(body.clone(), None)), &gate);
        assert_eq!(event, SessionEvent::RegisterAccepted { heartbeat_interval_ms: 2_000, epoch: 9 });
        assert_eq!(registration.map(|r| (r.components, r.cursor)), Some((None, 41)));
        assert_eq!(stats.get(SessionCounter::RefusedUnsigned), 1);
        // Signed: applied.
        let fields = muster_schemas::signing::SignedFields::registration(gate.host(), 9, unix_millis());
        let mut reply = message(body.clone(), Some(MessageKind::RegisterReply));
        for (name, value) in signer.sign(&fields, &body) {
            reply.headers.as_mut().unwrap().insert(name, value.as_str());
        }
        let (_, registration) = classify_register(Ok(reply), &gate);
        assert_eq!(registration.and_then(|r| r.components), Some(vec![]));
    }

    #[test]
    fn registration_answers_are_told_from_other_control_messages() {
        let accepted = RegisterReply::Accepted {
            heartbeat_interval_ms: 2_000,
            epoch: 9,
            server_time: unix_millis(),
            components: vec![],
            cursor: 0,
            done_after_cursor: vec![],
        };
        let reply = message(encode(&accepted), Some(MessageKind::RegisterReply));
        assert!(matches!(register_answer(reply), Some(Ok(_))));
        let rereg = HeartbeatReply::Reregister { reason: "unknown host".into() };
        assert!(register_answer(message(encode(&rereg), Some(MessageKind::HeartbeatReply))).is_none());
        assert!(register_answer(message(encode(&accepted), None)).is_none(), "no kind: not an answer");
        let mut none = message(vec![], None);
        none.status = Some(StatusCode::NO_RESPONDERS);
        assert!(matches!(register_answer(none), Some(Err(e)) if e.kind() == RequestErrorKind::NoResponders));
    }

    #[test]
    fn control_messages_are_classified() {
        let rereg = HeartbeatReply::Reregister { reason: "unknown host".into() };
        assert_eq!(
            control_event(&message(encode(&rereg), Some(MessageKind::HeartbeatReply))),
            Ok(SessionEvent::ReregisterRequested { reason: "unknown host".into() })
        );
        let rejected = HeartbeatReply::Rejected { code: ErrorCode::HostMismatch, message: "x".into() };
        assert_eq!(
            control_event(&message(encode(&rejected), None)),
            Ok(SessionEvent::HeartbeatRejected { code: ErrorCode::HostMismatch, message: "x".into() })
        );
        assert!(control_event(&message(encode(&rereg), Some(MessageKind::Txn))).is_err());
        assert!(control_event(&message(vec![0xc1], None)).is_err());
        assert!(control_event(&message(vec![0; MAX_REPLY_BYTES + 1], None)).is_err());
    }
}
