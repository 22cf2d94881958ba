//! The operator API: a NATS services-framework service named `muster` (`nats micro ls` lists it), endpoints
//! under `<prefix>.api.*`, JSON replies (so `nats req muster.api.hosts ''` is readable as is). The endpoints and
//! their request and reply types are listed in [`muster_schemas::api`]. Read endpoints are answered from this
//! instance's redb, so every instance can serve them; write endpoints are forwarded to `<prefix>.leader.*`, which
//! only the leader subscribes to ([`crate::writes::leader_api`]), and its answer (a typed reply or an
//! [`ApiError`]) is relayed as it is.
//!
//! Every read accepts a `Muster-Min-Seq` header (answer once this instance applied that log sequence; writes answer
//! with the `seq` they committed at). Reads run on tokio's blocking pool, a few at a time ([`MAX_CONCURRENT_READS`]):
//! a full-table read of a large fleet takes long enough to stall every other call if it ran on the async loop.
//! Besides the service, every instance answers `<prefix>.servers` (no queue group) with its [`ServerStatus`], for
//! `muster servers`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use muster_nats::unix_millis;
use muster_schemas::api::{
    ApiError, ApiErrorCode, ClusterSummary, ComponentView, Endpoint, HostDetail, HostSummary, RequestSummary,
    RequestView, ServerRole, ServerStats, ServerStatus, ServiceView, StackView, StageView, TaskView, MAX_TASKS_IN_VIEW,
};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::{limits, HostId, HostRecord, Subjects};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::metrics::Metrics;
use crate::status::{Role, Status};
use crate::store::{Store, StoreError};

/// The services-framework name.
pub const SERVICE_NAME: &str = "muster";

/// How many reads run at once. redb readers do not block each other or the applier, so reads could all run in
/// parallel; four keep a burst of full-table reads (100,000 hosts, a 100,000-task request) from taking every core
/// of a small machine from the applier and the leader loop, while one slow read still leaves room for the quick
/// ones behind it.
pub const MAX_CONCURRENT_READS: usize = 4;

/// How long a read waits for this instance to apply the sequence the caller asked for.
const MIN_SEQ_WAIT: Duration = Duration::from_secs(5);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// The services framework refused the service or one of its endpoints.
    #[error("api: cannot start the `{SERVICE_NAME}` service: {0}")]
    Service(async_nats::Error),
    /// The `servers` subscription failed.
    #[error("api: cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject it tried to subscribe to (`<prefix>.servers`).
        subject: String,
        /// The client's error.
        source: async_nats::SubscribeError,
    },
}

/// What the read endpoints read.
#[derive(Clone)]
pub struct ApiDeps {
    /// This instance's redb, the source of every read.
    pub store: Store,
    /// Role, epoch, applied sequence and last heartbeat per host.
    pub status: Status,
    /// Counters, for `stats`.
    pub metrics: Metrics,
    /// JetStream, to learn the log's end for the lag `servers` shows.
    pub js: async_nats::jetstream::Context,
}

/// Serves the API until `shutdown`; calls in flight are answered before it returns.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    deps: ApiDeps,
    shutdown: CancellationToken,
) -> Result<(), ApiStartError> {
    let svc = client
        .service_builder()
        .description("muster operator API")
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ApiStartError::Service)?;
    let group = svc.group(subjects.api_group());
    let mut endpoints = Vec::new();
    for endpoint in Endpoint::ALL {
        let ep = group.endpoint(endpoint.name()).await.map_err(ApiStartError::Service)?;
        endpoints.push(ep.map(move |r| (endpoint, r)).boxed());
    }
    let mut requests = futures::stream::select_all(endpoints);
    // Not part of the service's queue group: every instance answers, so `muster servers` sees them all.
    let mut status_asks = client
        .subscribe(subjects.servers())
        .await
        .map_err(|source| ApiStartError::Subscribe { subject: subjects.servers(), source })?;
    let readers = Arc::new(Semaphore::new(MAX_CONCURRENT_READS));
    let digests = Digests::default();
    // Every call is answered in a task of its own, so a slow one (a forwarded write, a large read, a read waiting
    // for its sequence) never holds up the next.
    let calls = TaskTracker::new();
    loop {
        let (endpoint, req) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = requests.next() => match r { Some(r) => r, None => break },
            Some(ask) = status_asks.next() => {
                let (deps, client, subjects, digests) = (deps.clone(), client.clone(), subjects.clone(), digests.clone());
                calls.spawn(async move {
                    let Some(reply) = ask.reply else { return };
                    let body = serde_json::to_vec(&server_status(&deps, &subjects, &digests).await).unwrap_or_default();
                    if let Err(e) = client.publish(reply, body.into()).await {
                        warn!(error = %e, "servers answer not sent");
                    }
                });
                continue;
            }
        };
        if endpoint.is_write() {
            let (client, subject) = (client.clone(), subjects.leader_api(endpoint.name()));
            calls.spawn(async move {
                let reply = forward(&client, subject, req.message.payload.clone()).await;
                respond(req, reply).await;
            });
            continue;
        }
        let (deps, readers) = (deps.clone(), readers.clone());
        calls.spawn(async move {
            let reply = answer_read(deps, readers, endpoint, &req.message).await;
            respond(req, reply).await;
        });
    }
    calls.close();
    calls.wait().await;
    let _ = svc.stop().await;
    Ok(())
}

async fn respond(req: service::Request, reply: Result<Bytes, ApiError>) {
    let reply = reply.map_err(|e| service::error::Error { status: e.message, code: usize::from(e.code.as_u16()) });
    if let Err(e) = req.respond(reply).await {
        warn!(error = %e, "api reply not sent");
    }
}

/// Waits for the caller's `Muster-Min-Seq` if it sent one (read-your-writes), then reads on the blocking pool.
async fn answer_read(
    deps: ApiDeps,
    readers: Arc<Semaphore>,
    endpoint: Endpoint,
    msg: &async_nats::Message,
) -> Result<Bytes, ApiError> {
    let min_seq = msg.headers.as_ref().and_then(|h| h.get(muster_schemas::headers::MIN_SEQ));
    if let Some(min_seq) = min_seq {
        let seq =
            min_seq.as_str().parse::<u64>().map_err(|_| ApiError::bad_request("Muster-Min-Seq must be a number"))?;
        caught_up(&deps.status, seq).await?;
    }
    // Waiting for the sequence holds no permit: a lagging instance must not starve its other readers.
    let _permit = readers.acquire_owned().await.map_err(|_| ApiError::unavailable("this instance is stopping"))?;
    let payload = msg.payload.clone();
    tokio::task::spawn_blocking(move || read(&deps, endpoint, &payload))
        .await
        .map_err(|e| ApiError::internal(format!("read failed: {e}")))?
}

async fn caught_up(status: &Status, seq: u64) -> Result<(), ApiError> {
    let mut rx = status.applied.clone();
    let reached = matches!(tokio::time::timeout(MIN_SEQ_WAIT, rx.wait_for(|a| *a >= seq)).await, Ok(Ok(_)));
    if reached {
        return Ok(());
    }
    let at = *status.applied.borrow();
    Err(ApiError::unavailable(format!("this instance has applied up to {at} and has not reached {seq} in time")))
}

/// One read, blocking on redb: the endpoint's reply as JSON.
fn read(deps: &ApiDeps, endpoint: Endpoint, payload: &[u8]) -> Result<Bytes, ApiError> {
    match endpoint {
        Endpoint::Summary => json(&summary_counts(deps)?),
        Endpoint::Hosts => json(&list_hosts(deps)?),
        Endpoint::Host => json(&one_host(deps, payload)?),
        Endpoint::Stats => json(&stats(deps)),
        Endpoint::Components => json(&components(deps)?),
        Endpoint::Stacks => json(&stacks(deps)?),
        Endpoint::Requests => json(&list_requests(deps)?),
        Endpoint::Request => json(&one_request(deps, payload)?),
        Endpoint::Tokens => json(&deps.store.tokens().map_err(store_error)?),
        Endpoint::Enrollments => json(&deps.store.enrollments().map_err(store_error)?),
        write => Err(ApiError::internal(format!("{write} is a write, not answered from this instance's store"))),
    }
}

fn json(v: &impl serde::Serialize) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| ApiError::internal(e.to_string()))
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Sends a write to the leader and relays its answer (errors included).
async fn forward(client: &async_nats::Client, subject: String, payload: Bytes) -> Result<Bytes, ApiError> {
    // The client's default request timeout (10 s) would cut a long write (a large blueprint) short: give the
    // request itself the forward timeout.
    let request = async_nats::Request::new().payload(payload).timeout(Some(limits::FORWARD_TIMEOUT));
    let answer = tokio::time::timeout(limits::FORWARD_TIMEOUT, client.send_request(subject, request)).await;
    let msg = match answer {
        Err(_) => return Err(ApiError::timeout("the leader did not answer in time")),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(ApiError::unavailable("no leader is elected right now; retry in a moment"))
        }
        Ok(Err(e)) => return Err(ApiError::unavailable(format!("leader unreachable: {e}"))),
        Ok(Ok(m)) => m,
    };
    if let Some(h) = &msg.headers {
        if let Some(message) = h.get(service::NATS_SERVICE_ERROR) {
            let code = h.get(service::NATS_SERVICE_ERROR_CODE).map(|c| c.as_str());
            return Err(ApiError::from_service_error(message.as_str(), code));
        }
    }
    Ok(msg.payload)
}

fn summary(deps: &ApiDeps, r: &HostRecord, now: u64) -> HostSummary {
    HostSummary {
        id: r.id.to_string(),
        state: r.state,
        last_heartbeat_secs: deps.status.since_heartbeat(&r.id),
        hostname: r.facts.hostname.clone(),
        agent_version: r.agent_version.clone(),
        state_secs: secs_between(r.state_since, now),
        problems: r.problems.clone(),
    }
}

fn secs_between(since: u64, now: u64) -> f64 {
    now.saturating_sub(since) as f64 / 1000.0
}

fn list_hosts(deps: &ApiDeps) -> Result<Vec<HostSummary>, ApiError> {
    let now = unix_millis();
    let hosts = deps.store.hosts().map_err(store_error)?;
    Ok(hosts.iter().map(|r| summary(deps, r, now)).collect())
}

fn one_host(deps: &ApiDeps, payload: &[u8]) -> Result<HostDetail, ApiError> {
    let id = host_arg(payload)?;
    let record = deps.store.host(&id).map_err(store_error)?;
    let record = record.ok_or_else(|| ApiError::not_found(format!("no host {id}")))?;
    Ok(HostDetail { summary: summary(deps, &record, unix_millis()), record })
}

/// Counts only, cheap at any fleet size: hosts and components by state, requests by status.
fn summary_counts(deps: &ApiDeps) -> Result<ClusterSummary, ApiError> {
    fn count<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for n in names {
            *by.entry(n.to_string()).or_default() += 1;
        }
        by
    }
    let hosts = deps.store.hosts().map_err(store_error)?;
    let components = deps.store.host_components().map_err(store_error)?;
    let requests = deps.store.requests().map_err(store_error)?;
    Ok(ClusterSummary {
        hosts: hosts.len() as u64,
        hosts_by_state: count(hosts.iter().map(|h| h.state.as_str())),
        components: components.len() as u64,
        components_by_state: count(components.iter().map(|c| c.state.as_str())),
        requests_by_status: count(requests.iter().map(|r| r.status.as_str())),
        applied_seq: *deps.status.applied.borrow(),
    })
}

fn components(deps: &ApiDeps) -> Result<Vec<ComponentView>, ApiError> {
    let now = unix_millis();
    Ok(deps
        .store
        .host_components()
        .map_err(store_error)?
        .into_iter()
        .map(|c| ComponentView {
            host: c.host.to_string(),
            service: c.component.service,
            component: c.component.component,
            state: c.state,
            desired: c.desired,
            state_secs: secs_between(c.state_since, now),
            auto_restarts: c.auto_restarts,
        })
        .collect())
}

fn stacks(deps: &ApiDeps) -> Result<Vec<StackView>, ApiError> {
    let stacks = deps.store.stacks().map_err(store_error)?;
    Ok(stacks
        .into_iter()
        .map(|s| StackView {
            services: s
                .def
                .services
                .iter()
                .map(|svc| ServiceView {
                    name: svc.name.clone(),
                    components: svc.components.iter().map(|c| c.name.clone()).collect(),
                })
                .collect(),
            name: s.def.name,
            version: s.version,
            applied_at: s.applied_at,
        })
        .collect())
}

fn list_requests(deps: &ApiDeps) -> Result<Vec<RequestSummary>, ApiError> {
    let mut reqs = deps.store.requests().map_err(store_error)?;
    reqs.reverse();
    Ok(reqs
        .into_iter()
        .map(|r| {
            let tasks: usize = r.stages.iter().map(|s| s.tasks.len()).sum();
            let done: usize = r.stages.iter().filter(|s| s.status.is_terminal()).map(|s| s.tasks.len()).sum();
            RequestSummary {
                id: r.id,
                description: r.description,
                status: r.status,
                created_at: r.created_at,
                finished_at: r.finished_at,
                tasks: tasks as u64,
                stages_done_tasks: done as u64,
                detail: r.detail,
            }
        })
        .collect())
}

/// The host a `host` read names in its body (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn host_arg(payload: &[u8]) -> Result<HostId, ApiError> {
    if payload.len() > limits::MAX_API_REQUEST_BYTES {
        return Err(ApiError::new(ApiErrorCode::TooLarge, "request too large"));
    }
    let raw = String::from_utf8_lossy(payload);
    HostId::new(raw.trim()).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The request a `request` read names in its body (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn request_arg(payload: &[u8]) -> Result<u64, ApiError> {
    let raw = String::from_utf8_lossy(payload);
    raw.trim().parse().map_err(|_| ApiError::bad_request(format!("request id must be a number, not {raw:?}")))
}

fn one_request(deps: &ApiDeps, payload: &[u8]) -> Result<RequestView, ApiError> {
    let id = request_arg(payload)?;
    let r = deps.store.request(id).map_err(store_error)?;
    let r = r.ok_or_else(|| ApiError::not_found(format!("no request {id}")))?;
    let total: usize = r.stages.iter().map(|s| s.tasks.len()).sum();
    let small = total <= MAX_TASKS_IN_VIEW;
    let mut tasks = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut stages = Vec::with_capacity(r.stages.len());
    for s in r.stages {
        let (mut done, mut failed, mut running) = (0, 0, 0);
        for tid in &s.tasks {
            let Some(t) = deps.store.task(*tid).map_err(store_error)? else { continue };
            *counts.entry(t.status.as_str().to_string()).or_default() += 1;
            done += u64::from(t.status.is_terminal());
            failed += u64::from(t.status.is_terminal() && t.status != TaskStatus::Completed);
            running += u64::from(t.status == TaskStatus::InProgress);
            if tasks.len() < MAX_TASKS_IN_VIEW {
                tasks.push(TaskView {
                    id: t.id,
                    stage: t.stage,
                    host: t.host.to_string(),
                    component: t.component.as_ref().map(|c| c.to_string()),
                    command: t.command.to_string(),
                    status: t.status,
                    attempt: t.attempt,
                    exit_code: t.exit_code,
                    stdout: t.stdout,
                    stderr: t.stderr,
                    started_at: t.started_at,
                    finished_at: t.finished_at,
                    detail: t.detail,
                });
            }
        }
        let total = s.tasks.len() as u64;
        let ids = if small { s.tasks } else { Vec::new() };
        stages.push(StageView { name: s.name, status: s.status, tasks: ids, total, done, failed, running });
    }
    Ok(RequestView {
        id: r.id,
        description: r.description,
        status: r.status,
        created_at: r.created_at,
        finished_at: r.finished_at,
        detail: r.detail,
        stages,
        tasks,
        tasks_total: total as u64,
        counts,
    })
}

fn server_role(role: Role) -> ServerRole {
    match role {
        Role::Leader => ServerRole::Leader,
        Role::Follower => ServerRole::Follower,
        Role::Observer => ServerRole::Observer,
    }
}

/// The epoch this instance knows: a follower learns it from the log it applied, not from leading.
fn known_epoch(deps: &ApiDeps) -> u64 {
    deps.store.applied().map_or(deps.status.epoch(), |(_, e)| e.max(deps.status.epoch()))
}

/// The state digest `servers` shows, computed by one call at a time and reused while nothing new was applied.
///
/// A digest hashes every table: seconds at 100,000 hosts, and `muster servers` may be asked several times a second
/// (the HA tests' samplers do). Computed once per call, concurrently, they piled up on the blocking pool; now the
/// calls queue here and all but the first find the answer ready.
#[derive(Clone, Default)]
struct Digests {
    last: Arc<tokio::sync::Mutex<Option<(u64, u64, String)>>>,
}

impl Digests {
    /// `(epoch, (seq, digest))`: the digest of the state at `seq`, which is `applied` or later (read in the
    /// digest's own transaction); `None` if the store could not be read.
    async fn of(&self, deps: &ApiDeps, applied: u64) -> (u64, Option<(u64, String)>) {
        let mut last = self.last.lock().await;
        if let Some((seq, epoch, digest)) = last.as_ref() {
            if *seq >= applied {
                return (*epoch, Some((*seq, digest.clone())));
            }
        }
        let blocking = deps.clone();
        // Off the async loop: the read transaction and the hashing block for as long as the state is large.
        let computed =
            tokio::task::spawn_blocking(move || (known_epoch(&blocking), blocking.store.digest_at().ok())).await;
        match computed {
            Ok((epoch, Some((seq, digest)))) => {
                *last = Some((seq, epoch, digest.clone()));
                (epoch, Some((seq, digest)))
            }
            Ok((epoch, None)) => (epoch, None),
            Err(_) => (deps.status.epoch(), None),
        }
    }
}

/// This instance for `muster servers`: role, epoch, how far it applied the log and how far behind it is, uptime,
/// and the state digest (equal on replicas that applied the same log).
async fn server_status(deps: &ApiDeps, subjects: &Subjects, digests: &Digests) -> ServerStatus {
    let applied = *deps.status.applied.borrow();
    let log_end = match deps.js.get_stream(subjects.txn_stream()).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).ok(),
        Err(_) => None,
    };
    let (digest_epoch, digest) = digests.of(deps, applied).await;
    // The status's epoch moves when this instance takes the lead, before anything new is applied (which is what
    // renews the cached digest): the newest of the two is the epoch it knows.
    let epoch = digest_epoch.max(deps.status.epoch());
    // The sequence the digest belongs to, so that replicas showing the same `applied_seq` compare like with like.
    let applied = digest.as_ref().map_or(applied, |(seq, _)| *seq);
    let digest = digest.map(|(_, d)| d);
    ServerStatus {
        id: deps.status.server_id.clone(),
        role: server_role(deps.status.role()),
        epoch,
        applied_seq: applied,
        log_end,
        lag: log_end.map(|e| e.saturating_sub(applied)),
        uptime_secs: deps.status.started.elapsed().as_secs_f64(),
        digest,
    }
}

fn stats(deps: &ApiDeps) -> ServerStats {
    ServerStats {
        server_id: deps.status.server_id.clone(),
        role: server_role(deps.status.role()),
        epoch: known_epoch(deps),
        applied_seq: *deps.status.applied.borrow(),
        uptime_secs: deps.status.started.elapsed().as_secs_f64(),
        counters: deps.metrics.snapshot(),
    }
}
