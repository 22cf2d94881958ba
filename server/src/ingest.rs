//! Ingestion of agent messages: heartbeats, registrations and reports, each through Prep (decoded once per copy)
//! and then to the leader's input queue.
//!
//! - Heartbeats are heard by every instance: each records the arrival in [`LastSeen`] (so any instance answers
//!   "seconds since last heartbeat"), and the leader also steps the heartbeat's health through its core.
//! - Registrations are taken only by the leader, behind admission control.
//! - Reports are consumed only by the leader, from `MUSTER_REPORTS` with its durable consumer (acked after commit),
//!   and final task reports are also heard early on a core subscription (see [`reports`]).

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use async_nats::Message;
use futures::StreamExt;
use muster_nats::wire::header_map;
use muster_schemas::commands::ReportBody;
use muster_schemas::{codec, headers, ErrorCode, HeartbeatReply, MessageKind, RegisterReply, Subjects};
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::leader::inbox::{LeaderSlot, Queued};
use crate::log::{self, LogError};
use crate::metrics::{Metrics, ServerCounter};
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
