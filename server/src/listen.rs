//! Listeners: Prep for agent messages, then hand-off to the leader core. Heartbeats are heard by every instance (so
//! any instance can answer "seconds since last heartbeat"); registrations and write calls only by the leader.

use std::sync::Arc;

use async_nats::Message;
use futures::StreamExt;
use muster_schemas::{codec, headers, ErrorCode, HeartbeatReply, MessageKind, RegisterReply, Subjects};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::leader::core::{ApiCall, ApiFailure};
use crate::leader::{msg_headers, ApiResult, Queued};
use crate::metrics::Metrics;
use crate::prep::{self, Rejection};
use crate::status::Status;

/// The leader's input queue, when this instance leads.
pub type LeaderSlot = watch::Receiver<Option<mpsc::Sender<Queued>>>;

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

/// Heartbeats on `<prefix>.hb.*`: Prep, touch last-seen, forward to the leader core if this instance leads.
pub async fn heartbeats(
    client: async_nats::Client,
    subjects: Subjects,
    status: Status,
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
                status.touch(&hb.host);
                let queue = leader.borrow().clone();
                if let Some(queue) = queue {
                    let (reply, at) = (msg.reply.as_ref().map(|r| r.to_string()), tokio::time::Instant::now());
                    let q = Queued::Heartbeat { hb, reply, at };
                    // Never wait for a busy core (a 100k-task commit takes seconds): the subscription would overflow
                    // and drop beats. The arrival is already in `status` for liveness; only the heartbeat's health
                    // is skipped, and the agent repeats it with its next beat.
                    if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(q) {
                        metrics.inc("hb.deferred");
                    }
                }
            }
            Err(r) => {
                metrics.inc(&format!("hb.rejected.{}", r.code));
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
            metrics.inc("reg.rejected.busy");
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
                metrics.inc(&format!("reg.rejected.{}", r.code));
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

/// How long a write call may take on the leader (a blueprint apply plans and publishes all its commands).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Write calls on `<prefix>.leader.>` while leading: parsed here, executed by the core, answered after commit.
/// Replies are JSON; errors carry the services framework's error headers so the API can relay them as they are.
pub async fn leader_api(
    client: async_nats::Client,
    subjects: Subjects,
    queue: mpsc::Sender<Queued>,
    stop: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(format!("{}.leader.>", subjects.prefix())).await?;
    let prefix = format!("{}.leader.", subjects.prefix());
    let calls = tokio_util::task::TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let endpoint = msg.subject.as_str().strip_prefix(prefix.as_str()).unwrap_or_default().to_string();
        let (queue, client) = (queue.clone(), client.clone());
        // Answered in its own task so a slow write does not hold up the next call's parsing; the core still
        // executes calls one batch at a time, in arrival order.
        calls.spawn(async move {
            let result = match parse_call(&endpoint, &msg.payload) {
                Ok(call) => {
                    let (tx, rx) = oneshot::channel();
                    if queue.send(Queued::Api { call, respond: tx }).await.is_err() {
                        Err(ApiFailure { code: 503, message: "leader stepped down; retry".into() })
                    } else {
                        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => Err(ApiFailure { code: 503, message: "leader stepped down; retry".into() }),
                            Err(_) => {
                                Err(ApiFailure { code: 504, message: "the leader did not answer in time".into() })
                            }
                        }
                    }
                }
                Err(e) => Err(e),
            };
            let (h, body) = api_reply(&result);
            let _ = client.publish_with_headers(reply, h, body).await;
        });
    }
    let _ = sub.unsubscribe().await;
    calls.close();
    calls.wait().await;
    Ok(())
}

fn parse_call(endpoint: &str, payload: &[u8]) -> Result<ApiCall, ApiFailure> {
    if payload.len() > crate::stack::MAX_FILE_BYTES {
        return Err(ApiFailure::bad("request body too large"));
    }
    let text = || String::from_utf8(payload.to_vec()).map_err(|_| ApiFailure::bad("body must be UTF-8"));
    match endpoint {
        "stack.apply" => Ok(ApiCall::ApplyStack { source: text()? }),
        "blueprint.apply" => Ok(ApiCall::ApplyBlueprint { source: text()? }),
        "request.create" => serde_json::from_slice(payload)
            .map(ApiCall::Request)
            .map_err(|e| ApiFailure::bad(format!("invalid request spec: {e}"))),
        "request.cancel" => {
            let id = text()?.trim().parse().map_err(|_| ApiFailure::bad("request id must be a number"))?;
            Ok(ApiCall::Cancel { request: id })
        }
        other => Err(ApiFailure::not_found(format!("no write endpoint {other:?}"))),
    }
}

/// Headers and JSON body of an API answer (errors as the services framework encodes them).
pub fn api_reply(result: &ApiResult) -> (async_nats::HeaderMap, bytes::Bytes) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let body = match result {
        Ok(v) => v.to_string(),
        Err(f) => {
            h.insert(async_nats::service::NATS_SERVICE_ERROR, f.message.as_str());
            h.insert(async_nats::service::NATS_SERVICE_ERROR_CODE, f.code.to_string().as_str());
            serde_json::json!({"code": f.code, "message": f.message}).to_string()
        }
    };
    (h, body.into())
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
    let mut h = msg_headers(kind, host);
    h.insert(headers::ERROR, r.code.as_str());
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
