//! Ingestion of agent messages: heartbeats, registrations and reports, each through Prep (decoded once per copy)
//! and then to the leader's input queue.
//!
//! - Heartbeats are heard by every instance: each records the arrival in [`LastSeen`] (so any instance answers
//!   "seconds since last heartbeat"), and the leader also steps the heartbeat's health through its core.
//! - Registrations are taken only by the leader, behind admission control.
//! - Reports are consumed only by the leader, from `MUSTER_REPORTS` with its durable consumer (acked after commit),
//!   and final task reports are also heard early on a core subscription (see [`reports`]).
//! - Enrollment requests are taken only by the leader ([`enrollments`]): Prep here (shape, both signatures), the
//!   decision in the core ([`crate::leader::enroll`]), the agent's credentials minted here once it is accepted.

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use async_nats::Message;
use futures::StreamExt;
use muster_nats::wire::header_map;
use muster_schemas::api::{Committed, EnrollVerdict, WriteReply};
use muster_schemas::commands::ReportBody;
use muster_schemas::limits;
use muster_schemas::messages::{EnrollRefusal, EnrollReply, EnrollRequest};
use muster_schemas::{codec, headers, ErrorCode, HeartbeatReply, MessageKind, RegisterReply, Subjects};
use muster_security::claims::AgentMinter;
use muster_security::dir::SecurityDir;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{EnrollPolicy, ServerConfig};
use crate::leader::contract::ApiCall;
use crate::leader::enroll::is_user_key;
use crate::leader::inbox::{LeaderSlot, Queued};
use crate::log::{self, LogError};
use crate::metrics::{Metrics, RefusalLabel, ServerCounter};
use crate::prep::{self, Rejection};
use crate::status::LastSeen;

/// Reports requested per pull from the leader's consumer.
const REPORT_PULL_BATCH: usize = 1_000;
/// How long one pull request for reports lives before the client issues the next.
const REPORT_PULL_EXPIRES: std::time::Duration = std::time::Duration::from_secs(5);

/// Shortest back-off suggested to an agent refused by admission control.
const BUSY_RETRY_MIN_MS: u64 = 200;
/// Narrowest spread of the suggested back-offs: a brief overload (a few thousand hosts over the limit) is over
/// within a second.
const BUSY_SPREAD_MIN_MS: u64 = 800;
/// Longest back-off suggested (the agent honours up to 300 s).
const BUSY_RETRY_MAX_MS: u64 = 60_000;

/// Admission control's back-off: the refused agents of one second are spread over as many seconds as admitting
/// them takes at the admission limit per second (at least 0.2–1 s), so a 100k-host storm comes back at the rate
/// it can be served instead of all at once, again and again.
struct BusyBackoff {
    limit: u64,
    window_start: std::time::Instant,
    this_window: u64,
    last_window: u64,
}

impl BusyBackoff {
    fn new(limit: usize) -> Self {
        Self { limit: limit.max(1) as u64, window_start: std::time::Instant::now(), this_window: 0, last_window: 0 }
    }

    /// Counts one refusal and returns the back-off to suggest for it.
    fn refuse(&mut self, now: std::time::Instant, rng: &mut impl Rng) -> u64 {
        let age = now.saturating_duration_since(self.window_start);
        if age >= std::time::Duration::from_secs(1) {
            self.last_window = if age >= std::time::Duration::from_secs(2) { 0 } else { self.this_window };
            self.this_window = 0;
            self.window_start = now;
        }
        self.this_window += 1;
        let refused = self.this_window.max(self.last_window);
        let spread = (1000 * refused / self.limit).clamp(BUSY_SPREAD_MIN_MS, BUSY_RETRY_MAX_MS);
        rng.random_range(BUSY_RETRY_MIN_MS..BUSY_RETRY_MIN_MS + spread)
    }
}

/// Largest enrollment request read: a host id, two keys and two signatures.
const MAX_ENROLL_BYTES: usize = 4 * 1024;
/// What a pending agent is told to wait before asking again.
const ENROLL_PENDING_RETRY_MS: u64 = 5_000;

/// Why the enrollment settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnrollSetupError {
    /// The agent signing seed could not be read.
    #[error("MUSTER_AGENT_SIGNER: cannot read {path}: {source}")]
    Read {
        /// The configured path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The seed (or the account it signs for) is not usable.
    #[error("MUSTER_AGENT_SIGNER: {path}: {detail}")]
    Key {
        /// The configured path.
        path: String,
        /// Why.
        detail: String,
    },
}

/// What the enrollment listener needs: the policy, and the agent-role signing key that signs an enrolled agent's
/// credentials (`None`: this cluster does not enroll, and every request is told so).
#[derive(Clone)]
pub struct Enroller {
    /// `MUSTER_ENROLL_POLICY`, handed to the core with each request.
    pub policy: EnrollPolicy,
    minter: Option<Arc<AgentMinter>>,
}

impl Enroller {
    /// The enrollment settings of `cfg`, the signing seed read and checked (a misconfigured server must not start).
    pub fn from_config(cfg: &ServerConfig) -> Result<Self, EnrollSetupError> {
        let Some(path) = &cfg.agent_signer else { return Ok(Self { policy: cfg.enroll_policy, minter: None }) };
        let shown = path.display().to_string();
        let seed =
            std::fs::read_to_string(path).map_err(|source| EnrollSetupError::Read { path: shown.clone(), source })?;
        let minter = agent_minter(path, seed.trim()).map_err(|detail| EnrollSetupError::Key { path: shown, detail })?;
        Ok(Self { policy: cfg.enroll_policy, minter: Some(Arc::new(minter)) })
    }

    /// No enrollment (tests, and servers without `MUSTER_AGENT_SIGNER`).
    pub fn disabled(policy: EnrollPolicy) -> Self {
        Self { policy, minter: None }
    }
}

/// Enrollment requests on `<prefix>.enroll.*` while leading: Prep, the core's verdict, then the agent's credentials.
/// Like the write endpoints, a request whose term ends before the core answered it gets no answer from here: only
/// the leader answers, and the agent asks again.
pub async fn enrollments(
    client: async_nats::Client,
    subjects: Subjects,
    metrics: Metrics,
    queue: mpsc::Sender<Queued>,
    enroller: Enroller,
    stop: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subjects.enroll_all()).await?;
    let calls = tokio_util::task::TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(to) = msg.reply.clone() else { continue };
        let (client, metrics, queue, enroller, stop) =
            (client.clone(), metrics.clone(), queue.clone(), enroller.clone(), stop.clone());
        let subject_host = subjects.host_token(msg.subject.as_str()).unwrap_or_default().to_owned();
        let prepped = prep_enroll(&subjects, msg.subject.as_str(), &msg.payload);
        calls.spawn(async move {
            let reply = match prepped {
                Err(message) => Some(refused(EnrollRefusal::Malformed, message)),
                Ok(_) if enroller.minter.is_none() => Some(refused(
                    EnrollRefusal::NotEnabled,
                    "this cluster does not enroll agents (no MUSTER_AGENT_SIGNER)",
                )),
                Ok(req) => enroll_one(&queue, &enroller, req, &stop).await,
            };
            let Some(reply) = reply else { return };
            match &reply {
                EnrollReply::Refused { code, message } if prepped_refusal(*code) => {
                    metrics.inc(ServerCounter::EnrollRefused(RefusalLabel(*code)));
                    debug!(host = %subject_host, code = %code, "enrollment refused: {message}");
                }
                _ => {}
            }
            if let Err(e) = client.publish(to, codec::encode(&reply).into()).await {
                warn!(error = %e, "enrollment reply not sent");
            }
        });
    }
    let _ = sub.unsubscribe().await;
    calls.close();
    calls.wait().await;
    Ok(())
}

/// The minter of the agent-role signing seed at `path` (`<dir>/signers/agent.nk`), for the MUSTER account of the
/// same security directory (`<dir>/accounts/MUSTER.pub`, as `muster security init` writes them).
fn agent_minter(path: &std::path::Path, seed: &str) -> Result<AgentMinter, String> {
    let root = path.parent().and_then(std::path::Path::parent).ok_or("not inside a security directory")?;
    let dir = SecurityDir::new(root).map_err(|e| e.to_string())?;
    let account = dir.account_public().map_err(|e| format!("the MUSTER account's public key: {e}"))?;
    AgentMinter::new(seed, &account).map_err(|e| e.to_string())
}

/// Refusals decided here rather than in the core (which counts its own).
fn prepped_refusal(code: EnrollRefusal) -> bool {
    matches!(code, EnrollRefusal::Malformed | EnrollRefusal::NotEnabled | EnrollRefusal::Internal)
}

fn refused(code: EnrollRefusal, message: impl Into<String>) -> EnrollReply {
    EnrollReply::Refused { code, message: message.into() }
}

/// Hands a checked request to the core and turns its verdict into the agent's reply (minting the credentials of an
/// accepted one). `None`: the term ended first; say nothing.
async fn enroll_one(
    queue: &mpsc::Sender<Queued>,
    enroller: &Enroller,
    req: EnrollRequest,
    stop: &CancellationToken,
) -> Option<EnrollReply> {
    let (tx, rx) = oneshot::channel();
    let call = ApiCall::Enroll { req: Box::new(req), policy: enroller.policy };
    queue.send(Queued::Api { call, respond: tx }).await.ok()?;
    let answer = match tokio::time::timeout(limits::WRITE_TIMEOUT, rx).await {
        Ok(answer) => answer.ok()?,
        Err(_) if stop.is_cancelled() => return None,
        Err(_) => return Some(refused(EnrollRefusal::Internal, "the leader did not decide in time; retry")),
    };
    Some(match answer {
        Ok(Committed { reply: WriteReply::Enroll(verdict), .. }) => match verdict {
            EnrollVerdict::Accepted { host, key } => match enroller.minter.as_ref().map(|m| m.mint(&host, &key)) {
                Some(Ok(jwt)) => {
                    info!(host = %host, key = %key, "enrolled: agent credentials issued");
                    EnrollReply::Accepted { jwt }
                }
                Some(Err(e)) => {
                    error!(host = %host, error = %e, "cannot mint an enrolled agent's credentials");
                    refused(EnrollRefusal::Internal, "the leader could not sign the agent's credentials")
                }
                None => refused(EnrollRefusal::NotEnabled, "this cluster does not enroll agents"),
            },
            EnrollVerdict::Pending { message } => {
                EnrollReply::Pending { message, retry_after_ms: ENROLL_PENDING_RETRY_MS }
            }
            EnrollVerdict::Refused { code, message } => refused(code, message),
        },
        Ok(other) => refused(EnrollRefusal::Internal, format!("unexpected answer {other:?}")),
        Err(e) => refused(EnrollRefusal::Internal, e.message),
    })
}

/// Prep of an enrollment request: size, one decode, protocol version, host id == subject, key shapes, and both
/// signatures (the token's seed and the agent's own key). Public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn prep_enroll(subjects: &Subjects, subject: &str, payload: &[u8]) -> Result<EnrollRequest, String> {
    if payload.len() > MAX_ENROLL_BYTES {
        return Err(format!("request of {} bytes; at most {MAX_ENROLL_BYTES}", payload.len()));
    }
    let req: EnrollRequest = codec::decode(payload, MAX_ENROLL_BYTES).map_err(|e| format!("undecodable: {e}"))?;
    if req.schema != muster_schemas::PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (this server speaks {})",
            req.schema,
            muster_schemas::PROTOCOL_VERSION
        ));
    }
    if subjects.host_token(subject) != Some(req.host.as_str()) {
        return Err(format!("subject {subject} does not name host {}", req.host));
    }
    let signed = EnrollRequest::signed_bytes(&req.host, &req.key, &req.token);
    for (what, key, sig) in [("token", &req.token, &req.token_sig), ("agent key", &req.key, &req.key_sig)] {
        if !is_user_key(key) {
            return Err(format!("the {what} {key:?} is not a user public key"));
        }
        let public = nkeys::KeyPair::from_public_key(key).map_err(|e| format!("the {what}: {e}"))?;
        public.verify(&signed, sig).map_err(|_| format!("the {what}'s signature does not verify"))?;
    }
    Ok(req)
}

/// Heartbeats on `<prefix>.hb.*`: Prep, record the arrival, forward to the leader core if this instance leads.
pub async fn heartbeats(
    client: async_nats::Client,
    subjects: Subjects,
    last_seen: LastSeen,
    metrics: Metrics,
    leader: LeaderSlot,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subjects.hb_all()).await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        match prep::heartbeat(&subjects, msg.subject.as_str(), &msg.payload) {
            Ok(hb) => {
                last_seen.touch(&hb.host, tokio::time::Instant::now());
                let queue = leader.borrow().clone();
                if let Some(queue) = queue {
                    let reply = msg.reply.as_ref().map(|r| r.to_string());
                    // Never wait for a busy core (a 100k-task commit takes seconds): the subscription would overflow
                    // and drop beats. The arrival is already recorded for liveness; only the heartbeat's health is
                    // skipped, and the agent repeats it with its next beat.
                    if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(Queued::Heartbeat { hb, reply }) {
                        metrics.inc(ServerCounter::HbDeferred);
                    }
                }
            }
            Err(r) => {
                metrics.inc(ServerCounter::HbRejected(r.code));
                log_rejection("heartbeat", &msg, &r);
                // Only the leader answers, so an agent gets one reply, not one per instance.
                if leader.borrow().is_some() {
                    let body = HeartbeatReply::Rejected { code: r.code, message: r.message.clone() };
                    reply(&client, &msg, MessageKind::HeartbeatReply, &r, codec::encode(&body)).await;
                }
            }
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// Registrations on `<prefix>.reg.*` while leading: Prep, admission control, then the core.
pub async fn registrations(
    client: async_nats::Client,
    subjects: Subjects,
    metrics: Metrics,
    queue: mpsc::Sender<Queued>,
    admission: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subjects.reg_all()).await?;
    let mut busy = BusyBackoff::new(admission.available_permits());
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        // Admission first: in a storm most registrations are refused, and refusing must cost less than decoding a
        // body full of host facts. (A malformed one is told so once it is admitted.)
        let Ok(permit) = admission.clone().try_acquire_owned() else {
            metrics.inc(ServerCounter::RegRejected(ErrorCode::Busy));
            let token = subjects.host_token(msg.subject.as_str()).unwrap_or_default();
            let r = Rejection {
                code: ErrorCode::Busy,
                message: "too many registrations in flight; retry later".into(),
                subject_host: muster_schemas::HostId::new(token).ok(),
            };
            let retry = busy.refuse(std::time::Instant::now(), &mut rand::rng());
            let body =
                RegisterReply::Rejected { code: r.code, message: r.message.clone(), retry_after_ms: Some(retry) };
            reply(&client, &msg, MessageKind::RegisterReply, &r, codec::encode(&body)).await;
            continue;
        };
        let req = match prep::register(&subjects, msg.subject.as_str(), &msg.payload) {
            Ok(req) => req,
            Err(r) => {
                metrics.inc(ServerCounter::RegRejected(r.code));
                log_rejection("registration", &msg, &r);
                let body = RegisterReply::Rejected { code: r.code, message: r.message.clone(), retry_after_ms: None };
                reply(&client, &msg, MessageKind::RegisterReply, &r, codec::encode(&body)).await;
                continue;
            }
        };
        let q = Queued::Register { req: Box::new(req), reply: msg.reply.as_ref().map(|r| r.to_string()), permit };
        if queue.send(q).await.is_err() {
            break;
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

/// Reports on `MUSTER_REPORTS`, consumed with the leader's durable consumer while leading; Prep-rejected reports
/// are refused (term-acked) and counted here, the rest go to the core and are acked after commit.
///
/// Final task reports are also heard early, on a core subscription to the same subjects: an agent's publish reaches
/// subscribers as the stream stores it, while the consumer delivers it only after the stream's backlog — in a
/// 100,000-host fan-out, tens of thousands of reports wait behind fsyncs for tens of seconds. The early copy ends
/// its task at once (committed to the log like any transition); the stored copy still arrives, is recognised as
/// its duplicate and acked, so a report is removed from the stream only after what it caused is committed. Early
/// copies never wait: when the core's queue is full, or anything about one is off, the stored copy decides.
pub async fn reports(
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    metrics: Metrics,
    queue: mpsc::Sender<Queued>,
    stop: CancellationToken,
) -> Result<(), LogError> {
    let consumer = log::reports_consumer(&js, &subjects).await?;
    let mut early = client
        .subscribe(subjects.report_all())
        .await
        .map_err(|e| LogError::Stream(format!("subscribing to early reports: {e}")))?;
    // Test hooks: a leader that starts pulling late, with long-lived pulls, lets a test tell whose pull a report
    // went to (tests/tests/deposed.rs).
    let (start_delay, expires) = report_pull_hooks();
    if !start_delay.is_zero() {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(start_delay) => {}
        }
    }
    // Pulls of up to 1,000 reports (a fan-out returns them by the thousand) that expire after a few seconds: a pull
    // that was lost or used up is replaced within REPORT_PULL_EXPIRES rather than the client's default 30 s.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(REPORT_PULL_BATCH)
        .expires(expires)
        .heartbeat(expires / 2)
        .messages()
        .await
        .map_err(|e| LogError::Stream(e.to_string()))?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = early.next() => match m {
                Some(m) => { early_report(&subjects, &metrics, &queue, &m); continue }
                None => return Err(LogError::Stream("early report subscription ended".into())),
            },
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => { warn!(error = %e, "report stream error"); continue }
                None => return Err(LogError::Stream("report consumer ended".into())),
            },
        };
        match prep::report(&subjects, msg.subject.as_str(), &msg.payload) {
            Ok(report) if matches!(report.body, ReportBody::Refused(_)) => {
                refused_command(&metrics, &report);
                let _ = msg.ack().await;
            }
            Ok(report) => {
                let q = Queued::Report { report: Box::new(report), msg: Some(Box::new(msg)) };
                if queue.send(q).await.is_err() {
                    return Ok(());
                }
            }
            Err(r) => {
                metrics.inc(ServerCounter::ReportRejected(r.code));
                warn!(subject = %msg.subject, code = %r.code, "report rejected: {}", r.message);
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }
}

/// The delay before the report consumer's first pull and the life of each pull: zero and [`REPORT_PULL_EXPIRES`],
/// unless the failpoints `ingest::reports_start_delay_ms` / `ingest::report_pull_expires_ms` return other values.
#[cfg(feature = "failpoints")]
fn report_pull_hooks() -> (std::time::Duration, std::time::Duration) {
    let ms = |name: &str| {
        fail::eval(name, |s| s.and_then(|s| s.parse().ok()).map(std::time::Duration::from_millis)).flatten()
    };
    let delay = ms("ingest::reports_start_delay_ms").unwrap_or_default();
    (delay, ms("ingest::report_pull_expires_ms").unwrap_or(REPORT_PULL_EXPIRES))
}

#[cfg(not(feature = "failpoints"))]
fn report_pull_hooks() -> (std::time::Duration, std::time::Duration) {
    (std::time::Duration::ZERO, REPORT_PULL_EXPIRES)
}

/// An agent refused a message that claimed to come from the server (`ReportBody::Refused`): counted and logged,
/// nothing else. It changes no state — a refused forgery must neither fail nor complete a real task — so it needs
/// no commit, and its stored copy is acked at once.
fn refused_command(metrics: &Metrics, report: &muster_schemas::commands::Report) {
    let ReportBody::Refused(r) = &report.body else { return };
    metrics.inc(ServerCounter::CommandsRefusedByAgents);
    warn!(
        host = %report.host,
        reason = %r.reason,
        kind = %r.kind,
        task = ?r.task,
        attempt = ?r.attempt,
        signer = r.signer.as_deref().unwrap_or("-"),
        detail = %r.detail,
        "an agent refused a command: forged, tampered, replayed, or signed with a key it does not trust"
    );
}

/// Hands the early copy of a final task report to the core if it passes Prep and the core has room; anything else
/// is left to the stored copy (which is counted and logged if it is bad).
fn early_report(subjects: &Subjects, metrics: &Metrics, queue: &mpsc::Sender<Queued>, msg: &Message) {
    let Ok(report) = prep::report(subjects, msg.subject.as_str(), &msg.payload) else { return };
    let ReportBody::Task(t) = &report.body else { return };
    if !t.phase.is_final() {
        return;
    }
    if queue.try_send(Queued::Report { report: Box::new(report), msg: None }).is_err() {
        metrics.inc(ServerCounter::ReportEarlySkipped);
    }
}

fn log_rejection(what: &str, msg: &Message, r: &Rejection) {
    // Version skew and forged subjects are worth a warning; garbage is debug (it can be sent in floods).
    match r.code {
        ErrorCode::UnsupportedVersion | ErrorCode::HostMismatch => {
            warn!(subject = %msg.subject, code = %r.code, "{what} rejected: {}", r.message)
        }
        _ => debug!(subject = %msg.subject, code = %r.code, "{what} rejected: {}", r.message),
    }
}

async fn reply(client: &async_nats::Client, msg: &Message, kind: MessageKind, r: &Rejection, body: Vec<u8>) {
    let Some(to) = msg.reply.clone() else { return };
    let host = r.subject_host.as_ref().map_or("", |h| h.as_str());
    let h = header_map(headers::reply(kind, host, Some(r.code)));
    if let Err(e) = client.publish_with_headers(to, h, body.into()).await {
        warn!(error = %e, "error reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn busy_backoff_spreads_a_storm_over_the_time_it_takes_to_admit() {
        let mut rng = rand::rng();
        let mut b = BusyBackoff::new(1000);
        let t0 = Instant::now();
        // A few refusals: 0.2–1 s, as for any brief overload.
        let first: Vec<u64> = (0..10).map(|_| b.refuse(t0, &mut rng)).collect();
        assert!(first.iter().all(|r| (200..1000).contains(r)), "{first:?}");
        // 20,000 refused within a second at a limit of 1,000: spread over up to 0.2 + 20 s.
        let storm: Vec<u64> = (0..20_000).map(|_| b.refuse(t0, &mut rng)).collect();
        let last = *storm.last().unwrap();
        assert!(last < 20_200);
        assert!(storm.iter().any(|r| *r > 15_000), "the spread grows with the storm");
        // The next second remembers the storm; two quiet seconds later it is forgotten.
        assert!((0..100).map(|_| b.refuse(t0 + Duration::from_millis(1500), &mut rng)).any(|r| r > 15_000));
        let calm: Vec<u64> = (0..10).map(|_| b.refuse(t0 + Duration::from_secs(10), &mut rng)).collect();
        assert!(calm.iter().all(|r| (200..1000).contains(r)), "{calm:?}");
    }
}
