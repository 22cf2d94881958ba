//! [`Api`]: the CLI's side of the `muster` service, the thin I/O shell every command goes through. One NATS
//! connection; reads and writes answer typed values or the [`ApiError`] the server sent; `servers` gathers every
//! instance's answer; [`Feed`] is the change feed a follow listens to.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use muster_nats::ConnectParams;
use muster_schemas::api::{ApiError, Committed, Endpoint, ServerStatus};
use muster_schemas::events::{RequestChanged, TaskChanged};
use muster_schemas::subjects::EventKind;
use muster_schemas::{codec, limits, Subjects};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::error::CliError;

/// What [`Api::connect`] needs.
#[derive(Debug, Clone)]
pub struct ApiParams {
    /// NATS URL(s), comma-separated.
    pub nats: String,
    /// The cluster's subject prefix.
    pub prefix: String,
    /// Credentials and TLS; without credentials off loopback the CLI warns (unless `insecure`).
    pub trust: muster_nats::ClientTrust,
    /// How long a read may take.
    pub read_timeout: Duration,
    /// How long a write may take: the leader's own limit plus the hops to it, so the CLI never gives up on a
    /// write the leader is still working on.
    pub write_timeout: Duration,
}

/// Attempts of a write that is safe to repeat (it carries an idempotency key) while no leader answers: with the
/// pauses of [`retry_pause`] they span about 15 s, several times a failover with the default 2 s lease.
const IDEMPOTENT_ATTEMPTS: u32 = 6;

/// The pause before retry `attempt` (from 1) of an idempotent write: 500 ms doubling, at most 4 s.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(500 << attempt.saturating_sub(1).min(3))
}

/// Whether a write that failed this way may be repeated: no leader answered (none elected, it stepped down, or
/// it did not answer in time), so the write may or may not have committed.
fn retryable(e: &CliError) -> bool {
    use muster_schemas::api::ApiErrorCode;
    match e {
        CliError::Api(e) => matches!(e.code, ApiErrorCode::Unavailable | ApiErrorCode::Timeout),
        CliError::Timeout { .. } => true,
        _ => false,
    }
}

/// A fresh idempotency key for one operator command: the time (the one clock) and 64 random bits, so two
/// invocations never share one.
pub fn fresh_idempotency_key() -> String {
    format!("cli-{:x}-{:016x}", muster_nats::unix_millis(), rand::random::<u64>())
}

/// How long `servers` keeps collecting answers after the last one arrived: every instance answers within a few
/// milliseconds of the others unless it is stuck, and a stuck one is what `muster servers` is for.
const SERVERS_QUIET: Duration = Duration::from_millis(300);

/// A connected API client.
pub struct Api {
    client: async_nats::Client,
    subjects: Subjects,
    params: ApiParams,
    /// nats-server's permission violations on this connection, as it words them: a call whose subject one names
    /// fails at once instead of waiting out its timeout.
    denied: broadcast::Sender<String>,
}

/// Waits for a permission violation naming `subject` (nats-server: `Permissions Violation for Publish to
/// "<subject>"`); never returns if none comes.
async fn violation_for(denied: &mut broadcast::Receiver<String>, subject: &str) -> String {
    let quoted = format!("\"{subject}\"");
    loop {
        match denied.recv().await {
            Ok(m) if m.contains(&quoted) => return m,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

impl Api {
    /// Connects to NATS (the API itself is asked nothing yet).
    pub async fn connect(params: ApiParams) -> Result<Self, CliError> {
        let subjects = Subjects::checked(&params.prefix)?;
        let mut connect = ConnectParams::new(&params.nats, "muster-cli")
            .map_err(|source| CliError::Urls { urls: params.nats.clone(), source })?;
        let trust = &params.trust;
        if let Err(e) = muster_nats::check_insecure(&connect.urls, trust.credentials.is_some(), trust.insecure) {
            eprintln!(
                "warning: connecting without credentials (--creds, MUSTER_NATS_CREDS) to NATS at {}, which is not \
                 a loopback address; --insecure or MUSTER_INSECURE=true silences this",
                e.host
            );
        }
        connect.trust = trust.clone();
        let (denied, _) = broadcast::channel(16);
        let tx = denied.clone();
        connect.events = muster_nats::ConnectionEvents::new().with_hook(move |event| {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(m)) = event {
                if m.contains("Permissions Violation") {
                    let _ = tx.send(m.clone());
                }
            }
        });
        let client = muster_nats::connect(connect).await?;
        Ok(Self { client, subjects, params, denied })
    }

    /// Asks a read endpoint; with `min_seq`, the answer reflects the log at least up to it (read your writes on
    /// any instance).
    pub async fn read<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: &str,
        min_seq: Option<u64>,
    ) -> Result<T, CliError> {
        let payload = self.call(endpoint, body, min_seq, self.params.read_timeout).await?;
        decode_json(&payload)
    }

    /// Asks a write endpoint (the answering instance forwards it to the leader); the reply carries the sequence
    /// it committed at.
    pub async fn write<T: DeserializeOwned>(&self, endpoint: Endpoint, body: &str) -> Result<Committed<T>, CliError> {
        let payload = self.call(endpoint, body, None, self.params.write_timeout).await?;
        decode_json(&payload)
    }

    /// Like [`Api::write`] for a write whose body carries an idempotency key: repeated with the same body while no
    /// leader answers (a failover), since the leader answers a repeat with the original result.
    pub async fn write_idempotent<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: &str,
    ) -> Result<Committed<T>, CliError> {
        let mut attempt = 1;
        loop {
            match self.write(endpoint, body).await {
                Err(e) if attempt < IDEMPOTENT_ATTEMPTS && retryable(&e) => {
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn call(
        &self,
        endpoint: Endpoint,
        body: &str,
        min_seq: Option<u64>,
        timeout: Duration,
    ) -> Result<Bytes, CliError> {
        let subject = self.subjects.api(endpoint.name());
        let mut headers = async_nats::HeaderMap::new();
        if let Some(seq) = min_seq {
            headers.insert(muster_schemas::headers::MIN_SEQ, seq.to_string().as_str());
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::copy_from_slice(body.as_bytes()))
            .timeout(Some(timeout));
        let mut denied = self.denied.subscribe();
        let answer = tokio::select! {
            answer = self.client.send_request(subject.clone(), request) => answer,
            detail = violation_for(&mut denied, &subject) => return Err(CliError::Denied { subject, detail }),
        };
        let msg = match answer {
            Ok(m) => m,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        CliError::NoServer { subject, detail: "no server is running on this NATS".into() }
                    }
                    async_nats::RequestErrorKind::TimedOut => CliError::Timeout { subject, timeout },
                    _ => CliError::Nats(e.to_string()),
                })
            }
        };
        if let Some(h) = &msg.headers {
            if let Some(message) = h.get(async_nats::service::NATS_SERVICE_ERROR) {
                let code = h.get(async_nats::service::NATS_SERVICE_ERROR_CODE).map(|c| c.as_str());
                return Err(ApiError::from_service_error(message.as_str(), code).into());
            }
        }
        Ok(msg.payload)
    }

    /// Asks every instance for its status and collects the answers until none has come for a moment.
    pub async fn servers(&self) -> Result<Vec<ServerStatus>, CliError> {
        let subject = self.subjects.servers();
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.map_err(|e| CliError::Nats(e.to_string()))?;
        self.client
            .publish_with_reply(subject.clone(), inbox, Bytes::new())
            .await
            .map_err(|e| CliError::Nats(e.to_string()))?;
        let mut rows = Vec::new();
        let deadline = tokio::time::Instant::now() + self.params.read_timeout;
        loop {
            let wait = if rows.is_empty() {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                SERVERS_QUIET
            };
            let Ok(Some(m)) = tokio::time::timeout(wait, sub.next()).await else { break };
            // NATS answers a request nobody listens to with an empty "no responders" status message: no server
            // runs (or none uses this prefix).
            if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(CliError::NoServer { subject, detail: "no server is running on this NATS".into() });
            }
            rows.push(decode_json::<ServerStatus>(&m.payload)?);
        }
        if rows.is_empty() {
            return Err(CliError::Timeout { subject, timeout: self.params.read_timeout });
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }

    /// Subscribes to the change feed of requests, and of tasks if `tasks` (progress needs them; the end does not).
    /// Call it before the read or write whose request it follows, so no event can fall between the two.
    pub async fn feed(&self, tasks: bool) -> Result<Feed, CliError> {
        let sub = |s: String| async move { self.client.subscribe(s).await.map_err(|e| CliError::Nats(e.to_string())) };
        let requests = sub(self.subjects.events_of(EventKind::Request)).await?;
        let tasks = if tasks { Some(sub(self.subjects.events_of(EventKind::Task)).await?) } else { None };
        // No wait needed: the server handles one connection's messages in order, so these subscriptions are in
        // place before the request the caller sends next on the same connection can exist. (A NATS cluster passes
        // the interest on to its other nodes asynchronously; an event routed before it arrived is what the safety
        // re-read in `watch` is for.)
        Ok(Feed { requests, tasks })
    }
}

/// One change the feed carried.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// A request changed status.
    Request(RequestChanged),
    /// A task changed status.
    Task(TaskChanged),
}

/// The change feed of requests (and tasks), subscribed before the request it follows was submitted or read.
pub struct Feed {
    requests: async_nats::Subscriber,
    tasks: Option<async_nats::Subscriber>,
}

impl Feed {
    /// The next change; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<FeedEvent> {
        loop {
            let (msg, is_task) = match &mut self.tasks {
                Some(tasks) => tokio::select! {
                    m = self.requests.next() => (m?, false),
                    m = tasks.next() => (m?, true),
                },
                None => (self.requests.next().await?, false),
            };
            // An event carries at most a task's argv (in `what`), so the command limit bounds it. One that does not
            // decode (another version) is skipped: the safety re-read covers whatever it said.
            let event = if is_task {
                codec::decode(&msg.payload, limits::MAX_COMMAND_BYTES).map(FeedEvent::Task)
            } else {
                codec::decode(&msg.payload, limits::MAX_COMMAND_BYTES).map(FeedEvent::Request)
            };
            if let Ok(event) = event {
                return Some(event);
            }
        }
    }
}

fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CliError> {
    serde_json::from_slice(payload)
        .map_err(|e| CliError::Decode { what: "reply from the server", detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::api::ApiError;

    #[test]
    fn only_unanswered_writes_are_repeated_and_keys_are_fresh() {
        assert!(retryable(&CliError::Api(ApiError::unavailable("no leader"))));
        assert!(retryable(&CliError::Api(ApiError::timeout("slow"))));
        assert!(retryable(&CliError::Timeout { subject: "x".into(), timeout: Duration::from_secs(1) }));
        assert!(!retryable(&CliError::Api(ApiError::bad_request("no"))));
        assert!(!retryable(&CliError::Api(ApiError::not_found("no"))));
        let pauses: Vec<u64> = (1..IDEMPOTENT_ATTEMPTS).map(|a| retry_pause(a).as_millis() as u64).collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 4000]);
        let (a, b) = (fresh_idempotency_key(), fresh_idempotency_key());
        assert_ne!(a, b);
        assert!(a.len() <= muster_schemas::api::MAX_IDEMPOTENCY_KEY_BYTES, "{a}");
    }
}
