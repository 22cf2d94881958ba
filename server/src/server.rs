//! `run`: wires one server instance together and drives its role until shutdown.
//!
//! Every instance: ensures the stream and bucket, opens redb, applies the log (applier task), hears heartbeats,
//! makes sure no live instance has its id, serves the read API and agents' catch-ups, announces its txn schema. A
//! voter also campaigns for the lease (while no live instance announces an older txn schema) and, while it holds
//! it, leads. An instance
//! stops with an error — it must not go on — when the election bucket has another lease TTL, when another live
//! instance answers with its server id, and when its applier meets a log entry it does not understand.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;
use muster_schemas::api::ServerStatus;
use muster_schemas::Subjects;
use muster_security::command::CommandSigner;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api::{self, ApiDeps};
use crate::config::{ServerConfig, ServerRole};
use crate::election;
use crate::ingest;
use crate::leader::{self, contract::Timing, inbox::INPUT_CAPACITY, LeaderDeps};
use crate::log::{self, LogError};
use crate::metrics::{Metrics, ServerCounter};
use crate::status::{Role, Status};
use crate::store::{Store, StoreError};
use crate::writes;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The txn stream could not be set up.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The election bucket could not be set up.
    #[error(transparent)]
    Election(#[from] election::ElectionError),
    /// The snapshot bucket could not be set up.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// redb could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The enrollment settings are unusable (`MUSTER_AGENT_SIGNER`).
    #[error(transparent)]
    Enroll(#[from] ingest::EnrollSetupError),
    /// The command key is unusable or missing (`MUSTER_COMMAND_KEY`).
    #[error("MUSTER_COMMAND_KEY: {0}")]
    CommandKey(#[from] muster_security::command::KeyError),
    /// A setting forbids starting (a voter without a command key outside insecure mode).
    #[error(transparent)]
    Settings(#[from] muster_nats::settings::SettingsError),
    /// The redb file claims more of the log than the log holds: the stream was reset or this file belongs to
    /// another cluster. Applying on top would silently mix two histories.
    #[error(
        "redb file {path} has applied up to sequence {applied} but the log {stream} ends at {last}; \
             the file belongs to another log (delete it to rebuild from this log)"
    )]
    AheadOfLog {
        /// The redb file.
        path: String,
        /// Its applied sequence.
        applied: u64,
        /// The txn stream's name (`<PREFIX>_TXN`).
        stream: String,
        /// The stream's last sequence.
        last: u64,
    },
    /// Another live instance answered `<prefix>.servers` with this instance's id: two instances with one id would
    /// both pass the lease's identity check (the default id is the hostname: two instances on one host clash).
    #[error(
        "another live instance already has server id {0:?} (it answered on {1}); give each instance its own \
         MUSTER_SERVER_ID"
    )]
    DuplicateId(String, String),
    /// The NATS connection failed while checking for a duplicate id.
    #[error("asking {subject}: {detail}")]
    Servers {
        /// `<prefix>.servers`.
        subject: String,
        /// What failed.
        detail: String,
    },
}

/// Runs one instance until `shutdown` fires, then stops every task it started and returns.
pub async fn run(
    cfg: ServerConfig,
    client: async_nats::Client,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    set_up_failpoints();
    // Our own: the applier stops the whole instance when it meets an entry it does not understand.
    let shutdown = shutdown.child_token();
    let subjects = Subjects::new(&cfg.prefix);
    let js = jetstream::new(client.clone());
    let replicas = replicas_for(&cfg, &client).await;
    info!(replicas, "JetStream replicas");
    // Every instance sets up the same streams and buckets; in a cluster these calls race (and a replica change
    // takes a while), so a timeout here is retried, not fatal.
    let mut delay = SETUP_RETRY_FIRST;
    let (stream, kv) = loop {
        let setup = async {
            let stream = log::ensure_stream(&js, &subjects, replicas).await?;
            log::ensure_work_streams(&js, &subjects, replicas).await?;
            crate::snapshot::ensure_bucket(&js, &subjects, replicas).await?;
            let kv = election::ensure_bucket(&js, &subjects, cfg.lease_ttl(), replicas).await?;
            Ok::<_, ServerError>((stream, kv))
        };
        match setup.await {
            Ok(done) => break done,
            Err(ServerError::Election(e)) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "setting up streams and buckets failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(SETUP_RETRY_MAX);
            }
        }
    };
    let store = Store::open(&cfg.redb_path())?;
    let (applied_seq, epoch) = store.applied()?;
    if applied_seq > stream.state.last_sequence {
        return Err(ServerError::AheadOfLog {
            path: cfg.redb_path().display().to_string(),
            applied: applied_seq,
            stream: subjects.txn_stream(),
            last: stream.state.last_sequence,
        });
    }
    info!(server_id = %cfg.server_id, applied_seq, log_end = stream.state.last_sequence, "starting");

    let (applied_tx, applied_rx) = watch::channel(applied_seq);
    let (read_tx, read_rx) = watch::channel(log::Read { seq: applied_seq, epoch });
    let idle_role = if cfg.role == ServerRole::Observer { Role::Observer } else { Role::Follower };
    let status = Status::new(cfg.server_id.clone(), idle_role, applied_rx.clone());
    status.set_epoch(epoch);
    let (slot_tx, slot_rx) = watch::channel(None);
    let tasks = TaskTracker::new();

    let applier = {
        let applying = log::run_applier(
            js.clone(),
            subjects.clone(),
            store.clone(),
            applied_tx,
            read_tx,
            metrics.clone(),
            shutdown.clone(),
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let result = applying.await;
            if result.is_err() {
                stop.cancel();
            }
            result
        })
    };
    {
        let hb = ingest::heartbeats(
            client.clone(),
            subjects.clone(),
            status.last_seen.clone(),
            metrics.clone(),
            slot_rx,
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = hb.await {
                error!(error = %e, "heartbeat listener failed");
            }
        });
    }
    let unique = tokio::select! {
        r = refuse_duplicate_id(&client, &subjects, &cfg.server_id) => r,
        // The applier stopped: its error is returned below.
        _ = shutdown.cancelled() => Ok(()),
    };
    if let Err(e) = unique {
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        return Err(e);
    }
    {
        let deps = ApiDeps { store: store.clone(), status: status.clone(), metrics: metrics.clone(), js: js.clone() };
        let api = api::serve(client.clone(), subjects.clone(), deps, shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = api.await {
                error!(error = %e, "API failed");
            }
        });
    }

    {
        let catchups =
            crate::catchup::serve(client.clone(), js.clone(), subjects.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = catchups.await {
                error!(error = %e, "catch-up responder failed");
            }
        });
    }

    // Every instance announces the txn schema it understands; a voter campaigns only while no live instance
    // announces an older one (the schema gate, see `election`).
    tasks.spawn(election::announce(kv.clone(), cfg.server_id.clone(), cfg.lease_ttl(), shutdown.clone()));
    let members = election::Members::default();
    if cfg.role == ServerRole::Voter {
        tasks.spawn(election::watch_members(kv.clone(), members.clone(), shutdown.clone()));
    }

    if cfg.role == ServerRole::Voter {
        let deps = LeaderDeps {
            client: client.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            server_id: cfg.server_id.clone(),
            timing: Timing {
                interval: cfg.heartbeat_interval(),
                deadline: cfg.heartbeat_deadline(),
                task_grace: std::time::Duration::from_millis(cfg.task_grace_ms),
            },
            store: store.clone(),
            applied: applied_rx,
            read: read_rx,
            metrics: metrics.clone(),
            last_seen: status.last_seen.clone(),
            signer: match cfg.command_key()? {
                Some(path) => Some(Arc::new(CommandSigner::from_file(path)?)),
                None => None,
            },
        };
        let admission = Arc::new(Semaphore::new(cfg.max_registrations_in_flight));
        let enroller = ingest::Enroller::from_config(&cfg)?;
        let refused = || {
            metrics.inc(ServerCounter::LeaderSchemaGate);
        };
        while let Some(lease) =
            election::campaign(&kv, &cfg.server_id, cfg.lease_ttl(), cfg.lease_ttl() / 4, &members, refused, &shutdown)
                .await
        {
            status.set_role(Role::Leader);
            status.set_epoch(lease.epoch);
            let deposed = shutdown.child_token();
            let (queue, inputs) = mpsc::channel(INPUT_CAPACITY);
            slot_tx.send_replace(Some(queue.clone()));
            let term = TaskTracker::new();
            term.spawn(election::hold(
                kv.clone(),
                cfg.server_id.clone(),
                lease.clone(),
                cfg.lease_ttl(),
                deposed.clone(),
            ));
            term.spawn(crate::snapshot::run_snapshotter(
                js.clone(),
                subjects.clone(),
                store.clone(),
                deps.applied.clone(),
                cfg.snapshot_every,
                metrics.clone(),
                deposed.clone(),
            ));
            {
                let writes = writes::leader_api(client.clone(), subjects.clone(), queue.clone(), deposed.clone());
                let stop = deposed.clone();
                term.spawn(async move {
                    if let Err(e) = writes.await {
                        error!(error = %e, "write listener failed; stepping down");
                        stop.cancel();
                    }
                });
            }
            {
                let regs = ingest::registrations(
                    client.clone(),
                    subjects.clone(),
                    metrics.clone(),
                    queue.clone(),
                    admission.clone(),
                    deposed.clone(),
                );
                let stop = deposed.clone();
                term.spawn(async move {
                    if let Err(e) = regs.await {
                        error!(error = %e, "registration listener failed; stepping down");
                        stop.cancel();
                    }
                });
            }
            {
                let enrolls = ingest::enrollments(
                    client.clone(),
                    subjects.clone(),
                    metrics.clone(),
                    queue.clone(),
                    enroller.clone(),
                    deposed.clone(),
                );
                let stop = deposed.clone();
                term.spawn(async move {
                    if let Err(e) = enrolls.await {
                        error!(error = %e, "enrollment listener failed; stepping down");
                        stop.cancel();
                    }
                });
            }
            {
                let reports = ingest::reports(
                    client.clone(),
                    js.clone(),
                    subjects.clone(),
                    metrics.clone(),
                    queue.clone(),
                    deposed.clone(),
                );
                let stop = deposed.clone();
                term.spawn(async move {
                    if let Err(e) = reports.await {
                        error!(error = %e, "report consumer failed; stepping down");
                        stop.cancel();
                    }
                });
            }
            let result = leader::lead(deps.clone(), lease, kv.clone(), queue, inputs, deposed.clone()).await;
            slot_tx.send_replace(None);
            deposed.cancel();
            term.close();
            term.wait().await;
            status.set_role(Role::Follower);
            match result {
                Ok(()) if shutdown.is_cancelled() => break,
                Ok(()) => warn!("lost the leader lease; following"),
                Err(e) => warn!(error = %e, "stepped down"),
            }
            metrics.inc(ServerCounter::LeaderStepDowns);
        }
    } else {
        shutdown.cancelled().await;
    }
    drop(slot_tx);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    let applied = applier.await.unwrap_or(Ok(()));
    info!("stopped");
    Ok(applied?)
}

/// Test hooks: in a build with the `failpoints` feature, sets up the failpoints named in the `FAILPOINTS`
/// environment variable (`name=actions;...`, in the fail crate's syntax, e.g. `leader::commit_last_part=1*return`).
/// Without the feature it does nothing.
fn set_up_failpoints() {
    #[cfg(feature = "failpoints")]
    for point in std::env::var("FAILPOINTS").unwrap_or_default().split(';').filter(|p| !p.trim().is_empty()) {
        let set = match point.split_once('=') {
            Some((name, actions)) => fail::cfg(name.trim(), actions.trim()),
            None => Err(format!("expected name=actions, got {point:?}")),
        };
        match set {
            Ok(()) => warn!(failpoint = point, "failpoint set (a test build)"),
            Err(e) => error!(failpoint = point, error = %e, "failpoint not set"),
        }
    }
}

/// How long to collect answers on `<prefix>.servers` before starting: every live instance answers within a few
/// milliseconds (computing its digest takes longer on a large state; such an instance may be missed).
const SERVERS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Asks `<prefix>.servers` (before this instance answers there itself) and fails if a live instance answers with
/// `server_id`. A stopped instance (crashed, restarting under the same id) does not answer.
async fn refuse_duplicate_id(
    client: &async_nats::Client,
    subjects: &Subjects,
    server_id: &str,
) -> Result<(), ServerError> {
    let subject = subjects.servers();
    let failed = |detail: String| ServerError::Servers { subject: subject.clone(), detail };
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| failed(e.to_string()))?;
    client.publish_with_reply(subject.clone(), inbox, bytes::Bytes::new()).await.map_err(|e| failed(e.to_string()))?;
    client.flush().await.map_err(|e| failed(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + SERVERS_WAIT;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(status) = serde_json::from_slice::<ServerStatus>(&msg.payload) {
            if status.id == server_id {
                return Err(ServerError::DuplicateId(server_id.to_string(), subject));
            }
        }
    }
    Ok(())
}

/// Stream replicas: the configured number, or (0 = auto) 3 on a NATS cluster of 3 or more nodes and 1 otherwise —
/// the cluster size is what the connected server announces in its INFO (its cluster's client URLs).
async fn replicas_for(cfg: &ServerConfig, client: &async_nats::Client) -> usize {
    if cfg.replicas > 0 {
        return cfg.replicas;
    }
    // With retry-on-connect the client may not have the server's INFO yet, and a cluster's URLs can arrive in an
    // INFO update just after: give both a moment.
    let deadline = tokio::time::Instant::now() + CLUSTER_INFO_WAIT;
    loop {
        let info = client.server_info();
        let nodes = if info.cluster.is_some() { info.connect_urls.len().max(1) } else { 1 };
        if nodes >= 3 {
            return 3;
        }
        let known = !info.server_id.is_empty();
        if (known && info.cluster.is_none()) || tokio::time::Instant::now() >= deadline {
            return 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// First and longest pause between attempts to set up streams and buckets.
const SETUP_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const SETUP_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// How long to wait for a clustered server to announce its peers.
const CLUSTER_INFO_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
