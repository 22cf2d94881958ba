//! The operator API: a NATS services-framework service named `muster` (`nats micro ls` lists it), endpoints
//! under `<prefix>.api.*`, JSON replies (so `nats req muster.api.hosts ''` is readable as is). Read endpoints are
//! answered from this instance's redb, so every instance can serve them; write endpoints are forwarded to
//! `<prefix>.leader.*`, which only the leader subscribes to ([`crate::listen::leader_api`]).
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `summary` | empty | `{hosts, hosts_by_state, components, components_by_state, requests_by_status, applied_seq}` |
//! | `hosts` | empty | `[HostSummary]` |
//! | `host`  | a host id (plain text) | `HostDetail` |
//! | `stats` | empty | `{server_id, role, epoch, applied_seq, uptime_secs, counters}` |
//! | `components` | empty | `[ComponentView]` |
//! | `stacks` | empty | `[{name, version, applied_at, services: [{name, components}]}]` |
//! | `requests` | empty | `[{id, description, status, created_at, finished_at, tasks, done}]`, newest first |
//! | `request` | a request id | `RequestView` |
//! | `stack.apply` | stack TOML | `{stack, version, changed, components}` (write) |
//! | `blueprint.apply` | blueprint TOML | `{blueprint, version, mapped, request}` (write) |
//! | `request.create` | `RequestSpec` JSON | `{request, stages, tasks, skipped_lost_hosts}` (write) |
//! | `request.cancel` | a request id | `{request, aborted_tasks}` (write) |
//!
//! Every read accepts a `Muster-Min-Seq` header (answer once this instance applied that log sequence; writes answer
//! with the `seq` they committed at). Besides the service, every instance answers `<prefix>.servers` (no queue
//! group) with its role, epoch, applied sequence, lag and state digest, for `muster servers`.

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use muster_schemas::api::{
    ComponentView, HostDetail, HostSummary, RequestView, StageView, TaskView, MAX_TASKS_IN_VIEW,
};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::{limits, HostId, HostRecord, Subjects};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::leader::unix_millis;
use crate::metrics::Metrics;
use crate::status::Status;
use crate::store::Store;

/// The services-framework name.
pub const SERVICE_NAME: &str = "muster";

/// API failures at start.
#[derive(Debug, thiserror::Error)]
#[error("api: {0}")]
pub struct ApiError(String);

/// What the read endpoints read.
#[derive(Clone)]
pub struct ApiDeps {
    /// redb.
    pub store: Store,
    /// Role, epoch, applied, last-seen.
    pub status: Status,
    /// Counters.
    pub metrics: Metrics,
    /// JetStream (the log's end, for lag).
    pub js: async_nats::jetstream::Context,
}

/// Read endpoints.
const READS: &[&str] = &["summary", "hosts", "host", "stats", "components", "stacks", "requests", "request"];
/// Write endpoints (forwarded to the leader).
const WRITES: &[&str] = &["stack.apply", "blueprint.apply", "request.create", "request.cancel"];
/// How long a forwarded write may take (a blueprint apply plans and stores all its commands).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(65);

/// Serves the API until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    deps: ApiDeps,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let err = |e: async_nats::Error| ApiError(e.to_string());
    let svc = client
        .service_builder()
        .description("muster operator API")
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(err)?;
    let group = svc.group(subjects.api_group());
    let mut endpoints = Vec::new();
    for name in READS.iter().chain(WRITES) {
        let ep = group.endpoint(*name).await.map_err(err)?;
        endpoints.push(ep.map(move |r| (*name, r)).boxed());
    }
    let mut requests = futures::stream::select_all(endpoints);
    // Not part of the service's queue group: every instance answers, so `muster servers` sees them all.
    let mut status_asks = client.subscribe(subjects.servers()).await.map_err(|e| ApiError(e.to_string()))?;
    let writes = tokio_util::task::TaskTracker::new();
    loop {
        let (name, req) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = requests.next() => match r { Some(r) => r, None => break },
            Some(ask) = status_asks.next() => {
                let (deps, client, subjects) = (deps.clone(), client.clone(), subjects.clone());
                writes.spawn(async move {
                    let Some(reply) = ask.reply else { return };
                    let body = server_status(&deps, &subjects).await.to_string();
                    let _ = client.publish(reply, body.into()).await;
                });
                continue;
            }
        };
        if WRITES.contains(&name) {
            let (client, subject) = (client.clone(), subjects.leader_api(name));
            writes.spawn(async move {
                let reply = forward(&client, subject, req.message.payload.clone()).await;
                if let Err(e) = req.respond(reply).await {
                    warn!(error = %e, "api reply not sent");
                }
            });
            continue;
        }
        let min_seq = req
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get(muster_schemas::headers::MIN_SEQ))
            .map(|v| v.as_str().parse::<u64>());
        if let Some(min_seq) = min_seq {
            // Read-your-writes: answer once this instance has applied the caller's write (in its own task, so a
            // lagging instance does not hold up other reads).
            let deps = deps.clone();
            writes.spawn(async move {
                let reply = match min_seq {
                    Err(_) => Err(api_error(400, "Muster-Min-Seq must be a number")),
                    Ok(seq) => match caught_up(&deps, seq).await {
                        Ok(()) => read(&deps, name, &req.message.payload),
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = req.respond(reply.map(|v| Bytes::from(v.to_string()))).await {
                    warn!(error = %e, "api reply not sent");
                }
            });
            continue;
        }
        let reply = read(&deps, name, &req.message.payload);
        if let Err(e) = req.respond(reply.map(|v| Bytes::from(v.to_string()))).await {
            warn!(error = %e, "api reply not sent");
        }
    }
    writes.close();
    writes.wait().await;
    let _ = svc.stop().await;
    Ok(())
}

/// How long a read waits for this instance to apply the sequence the caller asked for.
const MIN_SEQ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn caught_up(deps: &ApiDeps, seq: u64) -> Result<(), service::error::Error> {
    let mut rx = deps.status.applied.clone();
    let reached = matches!(tokio::time::timeout(MIN_SEQ_WAIT, rx.wait_for(|a| *a >= seq)).await, Ok(Ok(_)));
    if reached {
        return Ok(());
    }
    let at = *deps.status.applied.borrow();
    Err(api_error(503, format!("this instance has applied up to {at} and has not reached {seq} in time")))
}

fn read(deps: &ApiDeps, name: &str, payload: &[u8]) -> Answer {
    match name {
        "summary" => summary_counts(deps),
        "hosts" => list_hosts(deps),
        "host" => one_host(deps, payload),
        "stats" => Ok(stats_json(deps)),
        "components" => components(deps),
        "stacks" => stacks(deps),
        "requests" => list_requests(deps),
        _ => one_request(deps, payload),
    }
}

/// Sends a write to the leader and relays its answer (errors included).
async fn forward(client: &async_nats::Client, subject: String, payload: Bytes) -> Result<Bytes, service::error::Error> {
    // The client's default request timeout (10 s) would cut a long write (a large blueprint) short: give the
    // request itself the forward timeout.
    let request = async_nats::Request::new().payload(payload).timeout(Some(FORWARD_TIMEOUT));
    let answer = tokio::time::timeout(FORWARD_TIMEOUT, client.send_request(subject, request)).await;
    let msg = match answer {
        Err(_) => return Err(api_error(504, "the leader did not answer in time")),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(api_error(503, "no leader is elected right now; retry in a moment"))
        }
        Ok(Err(e)) => return Err(api_error(503, format!("leader unreachable: {e}"))),
        Ok(Ok(m)) => m,
    };
    if let Some(h) = &msg.headers {
        if let Some(status) = h.get(service::NATS_SERVICE_ERROR) {
            let code = h.get(service::NATS_SERVICE_ERROR_CODE).and_then(|c| c.as_str().parse().ok()).unwrap_or(500);
            return Err(api_error(code, status.as_str()));
        }
    }
    Ok(msg.payload)
}

type Answer = Result<serde_json::Value, service::error::Error>;

fn api_error(code: usize, status: impl Into<String>) -> service::error::Error {
    service::error::Error { status: status.into(), code }
}

fn summary(deps: &ApiDeps, r: &HostRecord, now: u64) -> HostSummary {
    HostSummary {
        id: r.id.to_string(),
        state: r.state,
        last_heartbeat_secs: deps.status.since_heartbeat(&r.id),
        hostname: r.facts.hostname.clone(),
        agent_version: r.agent_version.clone(),
        state_secs: now.saturating_sub(r.state_since) as f64 / 1000.0,
        problems: r.problems.clone(),
    }
}

fn list_hosts(deps: &ApiDeps) -> Answer {
    let now = unix_millis();
    let hosts = deps.store.hosts().map_err(|e| api_error(500, e.to_string()))?;
    let rows: Vec<HostSummary> = hosts.iter().map(|r| summary(deps, r, now)).collect();
    serde_json::to_value(rows).map_err(|e| api_error(500, e.to_string()))
}

fn one_host(deps: &ApiDeps, payload: &[u8]) -> Answer {
    if payload.len() > limits::MAX_API_REQUEST_BYTES {
        return Err(api_error(413, "request too large"));
    }
    let raw = String::from_utf8_lossy(payload);
    let id = HostId::new(raw.trim()).map_err(|e| api_error(400, e.to_string()))?;
    let record = deps.store.host(&id).map_err(|e| api_error(500, e.to_string()))?;
    let record = record.ok_or_else(|| api_error(404, format!("no host {id}")))?;
    let detail = HostDetail { summary: summary(deps, &record, unix_millis()), record };
    serde_json::to_value(detail).map_err(|e| api_error(500, e.to_string()))
}

/// Counts only, cheap at any fleet size: hosts and components by state, requests by status.
fn summary_counts(deps: &ApiDeps) -> Answer {
    let e = |e: crate::store::StoreError| api_error(500, e.to_string());
    let mut hosts: std::collections::BTreeMap<&str, u64> = Default::default();
    let all = deps.store.hosts().map_err(e)?;
    for h in &all {
        *hosts.entry(h.state.as_str()).or_default() += 1;
    }
    let mut comps: std::collections::BTreeMap<&str, u64> = Default::default();
    let hc = deps.store.host_components().map_err(e)?;
    for c in &hc {
        *comps.entry(c.state.as_str()).or_default() += 1;
    }
    let mut reqs: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in deps.store.requests().map_err(e)? {
        *reqs.entry(r.status.as_str()).or_default() += 1;
    }
    Ok(json!({"hosts": all.len(), "hosts_by_state": hosts, "components": hc.len(), "components_by_state": comps,
              "requests_by_status": reqs, "applied_seq": *deps.status.applied.borrow()}))
}

fn components(deps: &ApiDeps) -> Answer {
    let now = unix_millis();
    let rows: Vec<ComponentView> = deps
        .store
        .host_components()
        .map_err(|e| api_error(500, e.to_string()))?
        .into_iter()
        .map(|c| ComponentView {
            host: c.host.to_string(),
            service: c.component.service,
            component: c.component.component,
            state: c.state,
            desired: c.desired,
            state_secs: now.saturating_sub(c.state_since) as f64 / 1000.0,
            auto_restarts: c.auto_restarts,
        })
        .collect();
    serde_json::to_value(rows).map_err(|e| api_error(500, e.to_string()))
}

fn stacks(deps: &ApiDeps) -> Answer {
    let stacks = deps.store.stacks().map_err(|e| api_error(500, e.to_string()))?;
    Ok(serde_json::Value::Array(
        stacks
            .iter()
            .map(|s| {
                let services: Vec<serde_json::Value> = s
                    .def
                    .services
                    .iter()
                    .map(|svc| json!({"name": svc.name, "components": svc.components.iter().map(|c| &c.name).collect::<Vec<_>>()}))
                    .collect();
                json!({"name": s.def.name, "version": s.version, "applied_at": s.applied_at, "services": services})
            })
            .collect(),
    ))
}

fn list_requests(deps: &ApiDeps) -> Answer {
    let mut reqs = deps.store.requests().map_err(|e| api_error(500, e.to_string()))?;
    reqs.reverse();
    Ok(serde_json::Value::Array(
        reqs.iter()
            .map(|r| {
                let tasks: usize = r.stages.iter().map(|s| s.tasks.len()).sum();
                let done: usize = r.stages.iter().filter(|s| s.status.is_terminal()).map(|s| s.tasks.len()).sum();
                json!({"id": r.id, "description": r.description, "status": r.status, "created_at": r.created_at,
                       "finished_at": r.finished_at, "tasks": tasks, "stages_done_tasks": done, "detail": r.detail})
            })
            .collect(),
    ))
}

fn one_request(deps: &ApiDeps, payload: &[u8]) -> Answer {
    let raw = String::from_utf8_lossy(payload);
    let id: u64 =
        raw.trim().parse().map_err(|_| api_error(400, format!("request id must be a number, not {raw:?}")))?;
    let r = deps.store.request(id).map_err(|e| api_error(500, e.to_string()))?;
    let r = r.ok_or_else(|| api_error(404, format!("no request {id}")))?;
    let total: usize = r.stages.iter().map(|s| s.tasks.len()).sum();
    let small = total <= MAX_TASKS_IN_VIEW;
    let mut tasks = Vec::new();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut stages = Vec::with_capacity(r.stages.len());
    for s in r.stages {
        let (mut done, mut failed, mut running) = (0, 0, 0);
        for tid in &s.tasks {
            let Some(t) = deps.store.task(*tid).map_err(|e| api_error(500, e.to_string()))? else { continue };
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
    let view = RequestView {
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
    };
    serde_json::to_value(view).map_err(|e| api_error(500, e.to_string()))
}

/// This instance for `muster servers`: role, epoch, how far it applied the log and how far behind it is, uptime,
/// and the state digest (equal on replicas that applied the same log).
async fn server_status(deps: &ApiDeps, subjects: &Subjects) -> serde_json::Value {
    let applied = *deps.status.applied.borrow();
    // The epoch this instance has applied (a follower learns it from the log, not from leading).
    let epoch = deps.store.applied().map_or(deps.status.epoch(), |(_, e)| e.max(deps.status.epoch()));
    let log_end = match deps.js.get_stream(subjects.txn_stream()).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).ok(),
        Err(_) => None,
    };
    let store = deps.store.clone();
    let digest = tokio::task::spawn_blocking(move || store.digest()).await.ok().and_then(|d| d.ok());
    json!({
        "id": deps.status.server_id,
        "role": deps.status.role().as_str(),
        "epoch": epoch,
        "applied_seq": applied,
        "log_end": log_end,
        "lag": log_end.map(|e| e.saturating_sub(applied)),
        "uptime_secs": deps.status.started.elapsed().as_secs_f64(),
        "digest": digest,
    })
}

fn stats_json(deps: &ApiDeps) -> serde_json::Value {
    let epoch = deps.store.applied().map_or(deps.status.epoch(), |(_, e)| e.max(deps.status.epoch()));
    json!({
        "server_id": deps.status.server_id,
        "role": deps.status.role().as_str(),
        "epoch": epoch,
        "applied_seq": *deps.status.applied.borrow(),
        "uptime_secs": deps.status.started.elapsed().as_secs_f64(),
        "counters": deps.metrics.snapshot(),
    })
}
