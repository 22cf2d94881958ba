//! Talking to muster over NATS as an operator tool would: the `muster.api.*` endpoints (JSON), and collectors of
//! the change feed (`muster.events.host.*`, `muster.events.task.*`) that keep every event with its arrival time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::Client;
use futures::StreamExt as _;
use muster_nats::{ConnectParams, ConnectionEvents};
use muster_schemas::cluster::{ComponentState, TaskStatus};
use muster_schemas::events::{HostChanged, RequestChanged, TaskChanged};
use muster_schemas::subjects::EventKind;
use muster_schemas::{HostState, Subjects};
use muster_tests::Identity;
use serde_json::Value;

/// How long one API call may take. `summary` reads every host record, which at 100k hosts is a large read.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A creation call plans and stores every task's command first: 100k of them take a while.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Buffered messages per collector subscription: a fan-out to 100k hosts emits a few events per task within
/// seconds, and a dropped event would make a latency figure incomplete.
const COLLECTOR_CAPACITY: usize = 4 << 20;

/// How many `muster.api.stats` calls [`Api::stats_of`] makes before giving up: the queue group picks an instance at
/// random, so with three instances 40 calls all missing one has odds of (2/3)^40 ≈ 10⁻⁷.
const STATS_OF_ATTEMPTS: usize = 40;

/// Largest event body decoded.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// A plain client of the bench, named `name` in `nats server report connections`, through the one connect.
pub async fn client(url: &str, name: &str) -> anyhow::Result<Client> {
    Ok(muster_nats::connect(params(url, name)?).await?)
}

/// The connect parameters of a bench client: `url`, `name`, the server identity of the run (which reaches every
/// subject and JetStream's API, as the ceilings and the probes need; see [`crate::env::identities`]).
pub fn params(url: &str, name: &str) -> anyhow::Result<ConnectParams> {
    params_as(url, name, Identity::Server)
}

/// As [`params`], as `who`.
pub fn params_as(url: &str, name: &str, who: Identity<'_>) -> anyhow::Result<ConnectParams> {
    Ok(ConnectParams { trust: crate::env::identities()?.client(who)?, ..ConnectParams::new(url, name)? })
}

/// The operator API.
#[derive(Clone)]
pub struct Api {
    client: Client,
}

impl Api {
    /// Connects to `url` as an operator (admin credentials).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let params =
            ConnectParams { request_timeout: Some(API_TIMEOUT), ..params_as(url, "muster bench", Identity::Admin)? };
        Ok(Self { client: muster_nats::connect(params).await? })
    }

    /// Calls `muster.api.<endpoint>` with `body`; the JSON reply, or the service error as an error.
    pub async fn call(&self, endpoint: &str, body: impl Into<bytes::Bytes>, limit: Duration) -> anyhow::Result<Value> {
        let subject = Subjects::default().api(endpoint);
        let reply = tokio::time::timeout(limit, self.client.request(subject.clone(), body.into()))
            .await
            .with_context(|| format!("{subject}: no answer within {limit:?}"))?
            .with_context(|| format!("{subject}: request failed"))?;
        if let Some(error) = reply.headers.as_ref().and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR)) {
            bail!("{subject}: {error} ({})", String::from_utf8_lossy(&reply.payload));
        }
        serde_json::from_slice(&reply.payload).with_context(|| format!("{subject}: reply is not JSON"))
    }

    /// `muster.api.stats` as raw JSON: the answering instance's role, epoch and counters (5 s timeout).
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.call("stats", "", Duration::from_secs(5)).await
    }

    /// A counter from `muster.api.stats` (0 if never touched).
    pub async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        Ok(counter_of(&self.stats().await?, name))
    }

    /// `muster.api.summary`, reduced to the counts the scenarios wait on.
    pub async fn summary(&self) -> anyhow::Result<Summary> {
        let v = self.call("summary", "", API_TIMEOUT).await?;
        let count = |group: &str, key: &str| v.get(group).and_then(|g| g.get(key)).and_then(Value::as_u64).unwrap_or(0);
        Ok(Summary {
            healthy: count("hosts_by_state", HostState::Healthy.as_str()),
            started_components: count("components_by_state", ComponentState::Started.as_str()),
            raw: v,
        })
    }

    /// Asks every instance for its status on `<prefix>.servers` (not a queue group: each answers) and collects
    /// the answers that arrive within `window`, or until `expect` instances answered.
    pub async fn servers(&self, expect: usize, window: Duration) -> anyhow::Result<Vec<ServerStatus>> {
        let subject = Subjects::default().servers();
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.context("subscribing to the status inbox")?;
        self.client.publish_with_reply(subject.clone(), inbox, "".into()).await?;
        self.client.flush().await?;
        let mut rows: Vec<ServerStatus> = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while rows.len() < expect {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(msg)) => rows.push(
                    serde_json::from_slice(&msg.payload)
                        .with_context(|| format!("{subject}: unreadable answer {:?}", msg.payload))?,
                ),
                Ok(None) | Err(_) => break,
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rows)
    }

    /// `muster.api.stats` as instance `id` answers it: the API is one queue group, so it asks until `id` is the
    /// one that answers.
    pub async fn stats_of(&self, id: &str) -> anyhow::Result<Value> {
        let mut answered_by = Vec::new();
        for _ in 0..STATS_OF_ATTEMPTS {
            let stats = self.stats().await?;
            let by = stats.get("server_id").and_then(Value::as_str).unwrap_or_default().to_owned();
            if by == id {
                return Ok(stats);
            }
            answered_by.push(by);
        }
        bail!("muster.api.stats: {id} never answered in {STATS_OF_ATTEMPTS} attempts (answered by {answered_by:?})")
    }

    /// Creates a request from a `RequestSpec` JSON; returns (request id, tasks).
    pub async fn create_request(&self, spec: &Value) -> anyhow::Result<(u64, u64)> {
        let reply = self.call("request.create", spec.to_string(), CREATE_TIMEOUT).await?;
        let id = reply.get("request").and_then(Value::as_u64).context("request.create: no request id")?;
        let tasks = reply.get("tasks").and_then(Value::as_u64).unwrap_or(0);
        Ok((id, tasks))
    }

    /// One request's row from `muster.api.requests` (cheap at any size, unlike `muster.api.request`).
    pub async fn request_row(&self, id: u64) -> anyhow::Result<RequestRow> {
        let rows = self.call("requests", "", API_TIMEOUT).await?;
        let row = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r.get("id").and_then(Value::as_u64) == Some(id)))
            .with_context(|| format!("request {id} is not listed"))?;
        let status: TaskStatus = serde_json::from_value(row.get("status").cloned().unwrap_or_default())
            .with_context(|| format!("request {id}: unreadable status"))?;
        let num = |k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(RequestRow {
            status,
            created_at: num("created_at"),
            finished_at: num("finished_at"),
            detail: row.get("detail").and_then(Value::as_str).unwrap_or_default().to_owned(),
        })
    }
}

/// One instance's answer on `<prefix>.servers`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ServerStatus {
    /// `MUSTER_SERVER_ID` of the instance that answered.
    pub id: String,
    /// `leader`, `follower` or `observer`.
    pub role: String,
    /// The newest epoch it knows.
    pub epoch: u64,
    /// The last log sequence it applied.
    pub applied_seq: u64,
    /// The log's last sequence as it sees it.
    pub log_end: Option<u64>,
}

/// `bench-1=leader(e4 a120/120) bench-2=…`.
pub fn describe_servers(rows: &[ServerStatus]) -> String {
    if rows.is_empty() {
        return "no instance answered".to_owned();
    }
    rows.iter()
        .map(|r| {
            let end = r.log_end.map_or("?".to_owned(), |e| e.to_string());
            format!("{}={}(e{} a{}/{end})", r.id, r.role, r.epoch, r.applied_seq)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A counter of a `muster.api.stats` answer (0 if never touched).
pub fn counter_of(stats: &Value, name: &str) -> u64 {
    stats.pointer(&format!("/counters/{name}")).and_then(Value::as_u64).unwrap_or(0)
}

/// What `muster.api.summary` says.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Hosts in state HEALTHY (0 when none).
    pub healthy: u64,
    /// Host components STARTED.
    pub started_components: u64,
    /// The whole reply, for error messages.
    pub raw: Value,
}

/// A request as `muster.api.requests` lists it.
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// IN_PROGRESS while it runs, then how it ended.
    pub status: TaskStatus,
    /// Created (ms since epoch).
    pub created_at: u64,
    /// Finished (ms since epoch, 0 while running).
    pub finished_at: u64,
    /// Why it ended as it did.
    pub detail: String,
}

/// Collects the change feed of one kind for as long as it lives.
pub struct Collector<T> {
    events: Arc<Mutex<Vec<T>>>,
    undecodable: Arc<AtomicU64>,
    /// The collector's own connection, whose slow-consumer count says whether events were dropped.
    connection: ConnectionEvents,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for Collector<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Clone + Send + 'static> Collector<T> {
    async fn start(
        url: &str,
        subject: &str,
        decode: impl Fn(&async_nats::Message) -> Option<T> + Send + 'static,
    ) -> anyhow::Result<Self> {
        let connection = ConnectionEvents::new();
        let params = ConnectParams {
            subscription_capacity: COLLECTOR_CAPACITY,
            events: connection.clone(),
            ..params_as(url, "muster bench collector", Identity::Admin)?
        };
        let client = muster_nats::connect(params).await?;
        let mut sub = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let undecodable = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (events, undecodable) = (events.clone(), undecodable.clone());
            async move {
                let _client = client;
                while let Some(message) = sub.next().await {
                    match decode(&message) {
                        Some(event) => events.lock().unwrap_or_else(|p| p.into_inner()).push(event),
                        None => {
                            undecodable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Ok(Self { events, undecodable, connection, task })
    }

    /// Events received so far.
    pub fn snapshot(&self) -> Vec<T> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Events received so far (count).
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Fails if any event was dropped or unreadable: figures from an incomplete feed are not results.
    pub fn ensure_complete(&self, what: &str) -> anyhow::Result<()> {
        let (slow, bad) = (self.connection.slow_consumers(), self.undecodable.load(Ordering::Relaxed));
        if slow > 0 || bad > 0 {
            bail!("{what}: the event collector lost events ({slow} slow-consumer drops, {bad} undecodable)");
        }
        Ok(())
    }
}

/// A host change with the moment it reached the bench (ms since the Unix epoch, this machine's clock). The leader
/// publishes change events only after the batch that made them is committed, while `HostChanged.at` is when it
/// stepped the change, before the commit: arrival is the honest "durable by" time.
#[derive(Debug, Clone)]
pub struct HostArrival {
    /// The event.
    pub event: HostChanged,
    /// When it arrived.
    pub arrived: u64,
}

/// Collects every host state change (`muster.events.host.*`) from now on, decoded, with its arrival time.
pub async fn host_events(url: &str) -> anyhow::Result<Collector<HostArrival>> {
    Collector::start(url, &Subjects::default().events_of(EventKind::Host), |m| {
        let event = muster_schemas::decode(&m.payload, MAX_EVENT_BYTES).ok()?;
        Some(HostArrival { event, arrived: muster_nats::unix_millis() })
    })
    .await
}

/// Collects `muster.events.request.*`, each with the moment it arrived (the server publishes it after the commit
/// it describes, so arrival bounds when the change was durable).
pub async fn request_events(url: &str) -> anyhow::Result<Collector<(RequestChanged, Instant)>> {
    Collector::start(url, &Subjects::default().events_of(EventKind::Request), |m| {
        Some((muster_schemas::decode(&m.payload, MAX_EVENT_BYTES).ok()?, Instant::now()))
    })
    .await
}

/// Collects every task's status changes (`muster.events.task.*`) from now on, decoded.
pub async fn task_events(url: &str) -> anyhow::Result<Collector<TaskChanged>> {
    Collector::start(url, &Subjects::default().events_of(EventKind::Task), |m| {
        muster_schemas::decode(&m.payload, MAX_EVENT_BYTES).ok()
    })
    .await
}

/// Hosts whose latest event (of `events`) put them in `state`, with the arrival time of that event.
pub fn hosts_in(events: &[HostArrival], state: HostState) -> HashMap<String, u64> {
    let mut latest: HashMap<String, (HostState, u64)> = HashMap::new();
    for e in events {
        latest.insert(e.event.host.to_string(), (e.event.to, e.arrived));
    }
    latest.into_iter().filter(|(_, (s, _))| *s == state).map(|(h, (_, at))| (h, at)).collect()
}

/// The last sequence of some streams, sampled every [`STREAM_SAMPLE`] from a task of its own: when a fan-out's
/// commands (`MUSTER_COMMANDS`) and final reports (`MUSTER_REPORTS`) were all stored. Only stream info is read
/// (one small JetStream API call per stream per sample), so the fleet's traffic is not doubled.
pub struct StreamWatch {
    samples: Samples,
    names: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

/// Each sample: when, and every watched stream's last sequence.
type Samples = Arc<Mutex<Vec<(Instant, Vec<u64>)>>>;

/// How often [`StreamWatch`] samples.
const STREAM_SAMPLE: Duration = Duration::from_millis(20);

impl StreamWatch {
    /// Starts sampling the streams `names`.
    pub async fn start(url: &str, names: &[String]) -> anyhow::Result<Self> {
        let js = async_nats::jetstream::new(client(url, "muster bench stream watch").await?);
        let mut streams = Vec::new();
        for name in names {
            streams.push(js.get_stream(name).await.with_context(|| format!("stream {name}"))?);
        }
        let samples: Samples = Arc::default();
        let task = tokio::spawn({
            let samples = samples.clone();
            async move {
                loop {
                    let mut seqs = Vec::with_capacity(streams.len());
                    for stream in &mut streams {
                        match stream.info().await {
                            Ok(info) => seqs.push(info.state.last_sequence),
                            // A sample that cannot be read is skipped; the next one counts.
                            Err(_) => break,
                        }
                    }
                    if seqs.len() == streams.len() {
                        samples.lock().expect("samples lock").push((Instant::now(), seqs));
                    }
                    tokio::time::sleep(STREAM_SAMPLE).await;
                }
            }
        });
        Ok(Self { samples, names: names.to_vec(), task })
    }

    /// Waits until no stream has grown for `quiet` (at most `limit`), then, per stream, the first moment its last
    /// sequence reached its final value: when its last message was stored. `None` for a stream that did not grow
    /// after `since`.
    pub async fn settled(
        &self,
        since: Instant,
        quiet: Duration,
        limit: Duration,
    ) -> anyhow::Result<Vec<Option<Instant>>> {
        let started = Instant::now();
        loop {
            let stable = {
                let samples = self.samples.lock().expect("samples lock");
                let last = samples.last().map(|(_, s)| s.clone());
                let cut = Instant::now().checked_sub(quiet);
                match (last, cut) {
                    (Some(last), Some(cut)) => {
                        samples.iter().rev().take_while(|(at, _)| *at >= cut).all(|(_, s)| *s == last)
                            && samples.iter().any(|(at, _)| *at < cut)
                    }
                    _ => false,
                }
            };
            if stable {
                break;
            }
            if started.elapsed() > limit {
                bail!("streams {} still growing after {limit:?}", self.names.join(", "));
            }
            tokio::time::sleep(STREAM_SAMPLE).await;
        }
        let samples = self.samples.lock().expect("samples lock");
        let Some(before) =
            samples.iter().rev().find(|(at, _)| *at <= since).or(samples.first()).map(|(_, s)| s.clone())
        else {
            bail!("no stream sample");
        };
        let last = samples.last().map(|(_, s)| s.clone()).unwrap_or_default();
        Ok((0..self.names.len())
            .map(|i| {
                (last[i] > before[i])
                    .then(|| samples.iter().find(|(at, s)| *at >= since && s[i] >= last[i]).map(|(at, _)| *at))
                    .flatten()
            })
            .collect())
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
