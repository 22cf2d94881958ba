//! `muster-swarm`: many simulated hosts in one process, to load the server and NATS the way a real fleet
//! would. Each simulated host is a full [`crate::session`]: its own host id, registration with the same jittered
//! backoff, jittered heartbeats, static facts, and a real command path (delivery, catch-up, action queue, reports
//! through JetStream) whose [`Executor`] runs a few built-in commands instead of processes ([`SwarmExecutor`]).
//!
//! What hosts share, so 100k of them fit in one process:
//! - **connections**: hosts are spread round-robin over `connections` NATS connections, each with one JetStream
//!   context (a context runs an ack task of its own);
//! - **subscriptions**: instead of two subscriptions per host (control inbox and `<prefix>.cmd.<host>`), every
//!   connection holds two wildcard subscriptions, `_INBOX.<swarm>.*` and `<prefix>.cmd.*`, in a queue group private
//!   to this process, and a router moves each message into the addressed host's [`crate::feed::Mailbox`] by its
//!   last subject token. The queue group delivers each message to this process once, over whichever connection
//!   is up. A host's control inbox is `_INBOX.<swarm>.<host>`; the subjects on the wire are the agent protocol's.
//!
//! A command for a host this process does not simulate (another swarm, a real agent) reaches the router too and
//! is counted as `unrouted`; run one swarm per fan-out measurement.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{jetstream, Client, Subject, Subscriber};
use futures::{FutureExt as _, StreamExt as _};
use muster_nats::counters::Counters;
use muster_nats::{unix_millis, ConnectParams, ConnectionEvents};
use muster_schemas::commands::CommandSpec;
use muster_schemas::host::Mount;
use muster_schemas::{HostFacts, HostId, Subjects};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::executor::{Executor, Outcome, Stop};
use crate::facts::StaticFacts;
use crate::feed::{mailbox, Feed, Mailbox};
use crate::output::OutputCapture;
use crate::params::SessionParams;
use crate::session::{run_session_with, SessionIo};
use crate::stats::{SessionCounter, SessionStats};

/// Hosts per connection when `--connections` is not given: one connection's reader and writer keep up with
/// 5,000 hosts' heartbeats and commands with room to spare, and a handful of connections spread the load over
/// the runtime's threads.
pub const HOSTS_PER_CONNECTION: usize = 5_000;

/// Unread messages one simulated host may hold per feed before the router drops more (counted). A host gets a
/// control message only when the server wants a re-registration, and commands at the rate the server sends them;
/// a thousand means the host has stopped reading, not that it is busy.
pub const MAILBOX_CAPACITY: usize = 1_024;

/// Default interval of the summary line on stderr.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// How long shutdown waits for each connection's buffered messages to reach NATS.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest `sleep` the built-in accepts, so a typo cannot overflow a timer.
const MAX_SLEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmParams {
    /// Simulated hosts, each a full session with its own host id.
    pub count: usize,
    /// NATS connections shared by the hosts; `None` is one per [`HOSTS_PER_CONNECTION`] hosts.
    pub connections: Option<usize>,
    /// Host ids are `<id_prefix>-<index>`, the index zero-padded to at least six digits.
    pub id_prefix: String,
    /// Index of the first host (so two swarms can simulate disjoint ranges under one prefix).
    pub first_index: usize,
    /// Sessions start spread evenly over this long; zero starts them all at once (a registration storm).
    pub ramp: Duration,
    /// Interval of the summary line on stderr.
    pub summary_interval: Duration,
}

impl SwarmParams {
    /// `count` hosts named `swarm-000001`… over the default connections, all at once.
    pub fn new(count: usize) -> Self {
        Self {
            count,
            connections: None,
            id_prefix: "swarm".to_owned(),
            first_index: 1,
            ramp: Duration::ZERO,
            summary_interval: DEFAULT_SUMMARY_INTERVAL,
        }
    }

    /// The connections to open: as asked, or one per [`HOSTS_PER_CONNECTION`] hosts; never more than hosts.
    pub fn connection_count(&self) -> usize {
        self.connections.unwrap_or(self.count / HOSTS_PER_CONNECTION).clamp(1, self.count.max(1))
    }
}

/// Why the swarm could not run, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The host count was 0 (`--count 0`): there is nothing to simulate.
    #[error("nothing to simulate: the count must be at least 1")]
    NoHosts,
    /// The prefix and index do not make a valid host id.
    #[error("`{id}` is not a valid host id ({reason}); choose another --id-prefix")]
    InvalidHostId {
        /// The id built from the prefix and an index.
        id: String,
        /// What the host-id rules refuse in it.
        reason: String,
    },
    /// A connection could not be set up.
    #[error("cannot set up NATS connection #{index}: {source}")]
    Connect {
        /// The connection's number, from 0.
        index: usize,
        /// Why the client could not be set up.
        source: muster_nats::connect::ConnectError,
    },
    /// A shared subscription could not be made.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The wildcard subject the routers needed.
        subject: String,
        /// Why the client refused the subscription.
        source: async_nats::SubscribeError,
    },
    /// Some simulated hosts' sessions ended with an error (e.g. the server refused them).
    #[error("{failed} simulated host(s) stopped with an error; the first: {first}")]
    Sessions {
        /// Simulated hosts whose session ended with an error.
        failed: usize,
        /// The first error, with its host.
        first: String,
    },
}

/// The ids of `count` hosts from `first_index` on: `<prefix>-<index>`, zero-padded to at least six digits.
pub fn host_ids(prefix: &str, first_index: usize, count: usize) -> Result<Vec<HostId>, SwarmError> {
    let last = first_index.saturating_add(count.saturating_sub(1));
    let width = last.to_string().len().max(6);
    (first_index..first_index.saturating_add(count))
        .map(|i| {
            let id = format!("{prefix}-{i:0width$}");
            HostId::new(id.clone()).map_err(|e| SwarmError::InvalidHostId { id, reason: e.to_string() })
        })
        .collect()
}

/// The facts every simulated host registers with: small, so registrations measure the protocol rather than
/// payload size, and recognisable (`os_name` is `muster-swarm`).
pub fn simulated_facts(host: &HostId) -> StaticFacts {
    const GIB: u64 = 1 << 30;
    StaticFacts {
        facts: HostFacts {
            hostname: host.to_string(),
            cpu_count: 2,
            memory_total_bytes: 4 * GIB,
            memory_available_bytes: 3 * GIB,
            mounts: vec![Mount {
                mount_point: "/".to_owned(),
                fs_type: "ext4".to_owned(),
                total_bytes: 100 * GIB,
                available_bytes: 60 * GIB,
            }],
            os_name: "muster-swarm".to_owned(),
            os_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_version: String::new(),
            arch: std::env::consts::ARCH.to_owned(),
            ip_addresses: Vec::new(),
            uptime_secs: 0,
            timezone: "UTC".to_owned(),
            container: None,
        },
        health: Default::default(),
    }
}

/// Runs built-in commands instead of processes: `true` (exit 0), `false` (exit 1), `echo ARGS` (prints them),
/// `sleep SECS` (honours the timeout, kills and the shutdown's SIGTERM); anything else exits 127 with "not a swarm builtin". A path is
/// reduced to its last component, so a stack's `/bin/true` works too.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwarmExecutor;

impl Executor for SwarmExecutor {
    async fn execute(&self, spec: CommandSpec, stop: Stop, output: OutputCapture) -> Outcome {
        let Some((program, args)) = spec.argv.split_first() else {
            return Outcome::SpawnFailed("the command has an empty argv".to_owned());
        };
        match program.rsplit('/').next().unwrap_or(program) {
            "true" => Outcome::Exited(0),
            "false" => Outcome::Exited(1),
            "echo" => {
                output.stdout(format!("{}\n", args.join(" ")).as_bytes());
                Outcome::Exited(0)
            }
            "sleep" => {
                let Some(duration) = args.first().and_then(|a| parse_sleep(a)) else {
                    output.stderr(format!("sleep: invalid time interval {:?}\n", args.join(" ")).as_bytes());
                    return Outcome::Exited(1);
                };
                tokio::select! {
                    () = tokio::time::sleep(duration) => Outcome::Exited(0),
                    () = tokio::time::sleep(Duration::from_millis(spec.timeout_ms)) => Outcome::TimedOut,
                    () = stop.kill.cancelled() => Outcome::Killed,
                    // A simulated `sleep` ends on SIGTERM as the real one does.
                    () = stop.terminate.cancelled() => Outcome::Terminated,
                }
            }
            _ => {
                let message = format!("{program}: not a swarm builtin (true, false, echo, sleep)\n");
                output.stderr(message.as_bytes());
                Outcome::Exited(127)
            }
        }
    }
}

/// Seconds as `sleep` takes them (fractions allowed), capped at [`MAX_SLEEP`].
fn parse_sleep(arg: &str) -> Option<Duration> {
    let secs: f64 = arg.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_SLEEP.as_secs_f64())))
}

muster_nats::counters! {
    /// What the routers of shared subscriptions count.
    pub enum RouterCounter {
        /// Messages handed to a simulated host's mailbox.
        Routed = "router.routed",
        /// Messages for hosts this process does not simulate.
        Unrouted = "router.unrouted",
        /// Messages dropped because the host's mailbox was full.
        Dropped = "router.dropped",
    }
}

/// The counters of all routers of one swarm.
pub type RouterStats = Counters<RouterCounter>;

/// Where a router puts a host's messages.
#[derive(Debug)]
struct Route {
    inbox: Mailbox,
    commands: Mailbox,
}

/// Which of a host's mailboxes a router fills.
#[derive(Debug, Clone, Copy)]
enum FeedKind {
    Inbox,
    Commands,
}

/// One connection and what its hosts share.
struct Connection {
    client: Client,
    events: ConnectionEvents,
    jetstream: jetstream::Context,
}

/// Simulates `params.count` hosts against the NATS servers and prefix of `config` until `shutdown` is cancelled,
/// printing a summary line to stderr every `params.summary_interval`. Returns once every session has shut down
/// and the connections are flushed; an error if any simulated host's session failed.
pub async fn run_swarm(
    config: &AgentConfig,
    params: SwarmParams,
    shutdown: CancellationToken,
) -> Result<(), SwarmError> {
    if params.count == 0 {
        return Err(SwarmError::NoHosts);
    }
    let hosts = host_ids(&params.id_prefix, params.first_index, params.count)?;
    let subjects = Subjects::new(config.prefix.clone());
    let connection_count = params.connection_count();
    let mut connections = Vec::with_capacity(connection_count);
    for index in 0..connection_count {
        let events = ConnectionEvents::new();
        let name = format!("muster-swarm {} #{index}", params.id_prefix);
        let connect = ConnectParams {
            urls: config.nats_servers.clone(),
            name,
            trust: config.trust.clone(),
            retry_initial_connect: true,
            events: events.clone(),
            ..ConnectParams::default()
        };
        let client = muster_nats::connect(connect).await.map_err(|source| SwarmError::Connect { index, source })?;
        let jetstream = jetstream::new(client.clone());
        connections.push(Connection { client, events, jetstream });
    }
    let rss_before = rss_bytes();

    // `_INBOX.<nuid>`: unique to this process, so its last token also names the private queue group.
    let inbox_base = connections[0].client.new_inbox();
    let queue_group = format!("swarm-{}", inbox_base.rsplit('.').next().unwrap_or("swarm"));
    let mut routes = HashMap::with_capacity(hosts.len());
    let mut ios = Vec::with_capacity(hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        let (inbox, inbox_rx) = mailbox(MAILBOX_CAPACITY);
        let (commands, commands_rx) = mailbox(MAILBOX_CAPACITY);
        routes.insert(host.as_str().to_owned(), Route { inbox, commands });
        let connection = &connections[i % connection_count];
        ios.push(SessionIo {
            client: connection.client.clone(),
            jetstream: connection.jetstream.clone(),
            inbox_subject: Subject::from(format!("{inbox_base}.{host}")),
            inbox: Feed::Mailbox(inbox_rx),
            commands: Feed::Mailbox(commands_rx),
        });
    }
    let routes = Arc::new(routes);
    let router_stats = RouterStats::default();
    let routers_stop = CancellationToken::new();
    let routers = TaskTracker::new();
    for connection in &connections {
        for (subject, kind) in [(format!("{inbox_base}.*"), FeedKind::Inbox), (subjects.cmd_all(), FeedKind::Commands)]
        {
            let sub = connection
                .client
                .queue_subscribe(subject.clone(), queue_group.clone())
                .await
                .map_err(|source| SwarmError::Subscribe { subject, source })?;
            routers.spawn(route(sub, kind, routes.clone(), router_stats.clone(), routers_stop.clone()));
        }
    }
    routers.close();

    let stats = SessionStats::default();
    let failures = Arc::new(Mutex::new(Failures::default()));
    let started = Arc::new(AtomicU64::new(0));
    let sessions = TaskTracker::new();
    let template =
        SessionParams { host: hosts[0].clone(), stats: stats.clone(), ..config.session_params(unix_millis()) };
    let reconnects: Vec<_> = connections.iter().map(|c| c.events.reconnects()).collect();
    eprintln!(
        "muster-swarm: {} hosts {}…{} over {connection_count} connection(s), ramp {:?}",
        hosts.len(),
        hosts[0],
        hosts[hosts.len() - 1],
        params.ramp
    );
    sessions.spawn(spawn_sessions(Spawn {
        hosts,
        ios,
        template,
        reconnects,
        ramp: params.ramp,
        tracker: sessions.clone(),
        failures: failures.clone(),
        started: started.clone(),
        shutdown: shutdown.clone(),
    }));
    sessions.close();

    let begun = Instant::now();
    let mut summary = Summary::new(params.count, rss_before);
    let mut tick = tokio::time::interval_at(begun + params.summary_interval, params.summary_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = sessions.wait() => break,
            _ = tick.tick() => {
                eprintln!("{}", summary.line(&stats, &router_stats, &failures, started.load(Ordering::Relaxed), begun));
            }
        }
    }
    eprintln!("{} (final)", summary.line(&stats, &router_stats, &failures, started.load(Ordering::Relaxed), begun));

    routers_stop.cancel();
    routers.wait().await;
    for connection in &connections {
        if connection.client.connection_state() == async_nats::connection::State::Connected {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, connection.client.flush()).await;
        }
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
    match &failures.first {
        Some(first) => Err(SwarmError::Sessions { failed: failures.count, first: first.clone() }),
        None => Ok(()),
    }
}

/// Moves each message of `sub` into the mailbox its last subject token names.
async fn route(
    mut sub: Subscriber,
    kind: FeedKind,
    routes: Arc<HashMap<String, Route>>,
    stats: RouterStats,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = sub.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let token = message.subject.rsplit('.').next().unwrap_or_default();
        let Some((host, route)) = routes.get_key_value(token) else {
            stats.inc(RouterCounter::Unrouted);
            continue;
        };
        let mailbox = match kind {
            FeedKind::Inbox => &route.inbox,
            FeedKind::Commands => &route.commands,
        };
        match mailbox.push(message) {
            Ok(()) => stats.inc(RouterCounter::Routed),
            Err(_) => {
                tracing::warn!(%host, ?kind, "simulated host's mailbox is full; message dropped");
                stats.inc(RouterCounter::Dropped)
            }
        };
    }
}

/// Everything the session spawner needs.
struct Spawn {
    hosts: Vec<HostId>,
    ios: Vec<SessionIo>,
    template: SessionParams,
    reconnects: Vec<muster_nats::Reconnects>,
    ramp: Duration,
    tracker: TaskTracker,
    failures: Arc<Mutex<Failures>>,
    started: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

/// Sessions that ended with an error.
#[derive(Debug, Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

/// Starts one session per host, spread over the ramp (all at once without one).
async fn spawn_sessions(spawn: Spawn) {
    let Spawn { hosts, ios, template, reconnects, ramp, tracker, failures, started, shutdown } = spawn;
    let executor = Arc::new(SwarmExecutor);
    let count = hosts.len();
    let begun = Instant::now();
    for (i, (host, io)) in hosts.into_iter().zip(ios).enumerate() {
        if !ramp.is_zero() {
            let at = begun + ramp.mul_f64(i as f64 / count as f64);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = sleep_until(at) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
        let facts = simulated_facts(&host);
        let params = SessionParams { host, ..template.clone() };
        let reconnects = reconnects[i % reconnects.len()].clone();
        let (executor, failures, shutdown) = (executor.clone(), failures.clone(), shutdown.clone());
        let host = params.host.clone();
        // A combinator, not an `async move` wrapper: a wrapper would keep a second copy of the session's
        // arguments (≈1 KiB) alive for the session's whole life.
        let session = run_session_with(io, params, facts, executor, reconnects, shutdown).map(move |result| {
            if let Err(e) = result {
                tracing::error!(%host, error = %e, "simulated host stopped");
                let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                failures.count += 1;
                failures.first.get_or_insert_with(|| format!("{host}: {e}"));
            }
        });
        tracker.spawn(session);
        started.fetch_add(1, Ordering::Relaxed);
    }
}

/// The summary line: totals, and rates since the previous line.
struct Summary {
    count: usize,
    rss_before: Option<u64>,
    last_heartbeats: u64,
    last_at: Instant,
}

impl Summary {
    fn new(count: usize, rss_before: Option<u64>) -> Self {
        Self { count, rss_before, last_heartbeats: 0, last_at: Instant::now() }
    }

    fn line(
        &mut self,
        stats: &SessionStats,
        routers: &RouterStats,
        failures: &Mutex<Failures>,
        started: u64,
        begun: Instant,
    ) -> String {
        let now = Instant::now();
        let heartbeats = stats.get(SessionCounter::Heartbeats);
        let rate =
            (heartbeats - self.last_heartbeats) as f64 / now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last_heartbeats = heartbeats;
        self.last_at = now;
        let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).count as u64;
        let errors = stats.get(SessionCounter::HeartbeatErrors)
            + stats.get(SessionCounter::BadControlMessages)
            + stats.get(SessionCounter::IllegalTransitions)
            + stats.get(SessionCounter::BadCommands)
            + stats.get(SessionCounter::ReportsDropped)
            + routers.get(RouterCounter::Dropped)
            + failed;
        let mut line = format!(
            "swarm t={:.0}s started={started}/{} registered={} register_attempts={} reregistrations={} \
             heartbeats/s={rate:.0} commands={} tasks={}/{} reports={} report_retries={} unrouted={} errors={errors}",
            now.duration_since(begun).as_secs_f64(),
            self.count,
            stats.get(SessionCounter::Registrations),
            stats.get(SessionCounter::RegisterAttempts),
            stats.get(SessionCounter::Reregistrations),
            stats.get(SessionCounter::CommandsReceived),
            stats.get(SessionCounter::TasksFinished),
            stats.get(SessionCounter::TasksStarted),
            stats.get(SessionCounter::ReportsPublished),
            stats.get(SessionCounter::ReportRetries),
            routers.get(RouterCounter::Unrouted),
        );
        if let Some(rss) = rss_bytes() {
            let _ = write!(line, " rss={:.0}MiB", rss as f64 / (1 << 20) as f64);
            if let (Some(before), true) = (self.rss_before, started > 0) {
                let _ = write!(line, " bytes/host={}", rss.saturating_sub(before) / started);
            }
        }
        line
    }
}

/// This process's resident memory (`VmRSS`), where /proc has it.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec { argv: argv.iter().map(|s| s.to_string()).collect(), env: Default::default(), timeout_ms }
    }

    async fn run(argv: &[&str]) -> (Outcome, String, String) {
        let output = OutputCapture::new(1024);
        let outcome = SwarmExecutor.execute(spec(argv, 60_000), Stop::default(), output.clone()).await;
        let (out, err) = output.text();
        (outcome, out, err)
    }

    #[test]
    fn ids_are_zero_padded_and_validated() {
        let ids = host_ids("swarm", 1, 3).unwrap();
        assert_eq!(
            ids.iter().map(HostId::as_str).collect::<Vec<_>>(),
            ["swarm-000001", "swarm-000002", "swarm-000003"]
        );
        assert_eq!(host_ids("s", 9_999_999, 2).unwrap()[1].as_str(), "s-10000000");
        assert!(matches!(host_ids("bad.prefix", 1, 1), Err(SwarmError::InvalidHostId { .. })));
        assert!(host_ids("x", 1, 0).unwrap().is_empty());
    }

    #[test]
    fn connections_default_to_one_per_five_thousand_hosts() {
        let with = |count, connections| SwarmParams { connections, ..SwarmParams::new(count) }.connection_count();
        assert_eq!(with(50, None), 1);
        assert_eq!(with(100_000, None), 20);
        assert_eq!(with(3, Some(8)), 3, "never more connections than hosts");
        assert_eq!(with(10, Some(0)), 1);
    }

    #[tokio::test]
    async fn builtins_behave_like_their_coreutils() {
        assert_eq!(run(&["true"]).await.0, Outcome::Exited(0));
        assert_eq!(run(&["/bin/false"]).await.0, Outcome::Exited(1));
        assert_eq!(run(&["echo", "hi", "there"]).await, (Outcome::Exited(0), "hi there\n".into(), String::new()));
        let (outcome, _, err) = run(&["rm", "-rf", "/"]).await;
        assert_eq!(outcome, Outcome::Exited(127));
        assert!(err.contains("not a swarm builtin"), "{err}");
        assert_eq!(run(&["sleep", "nope"]).await.0, Outcome::Exited(1));
        assert!(matches!(run(&[]).await.0, Outcome::SpawnFailed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_honours_time_timeout_kill_and_sigterm() {
        let started = Instant::now();
        assert_eq!(run(&["sleep", "1.5"]).await.0, Outcome::Exited(0));
        assert_eq!(started.elapsed(), Duration::from_millis(1_500));

        let out = OutputCapture::new(64);
        let timed = SwarmExecutor.execute(spec(&["sleep", "10"], 2_000), Stop::default(), out.clone()).await;
        assert_eq!(timed, Outcome::TimedOut);

        for (signal, outcome) in [("kill", Outcome::Killed), ("terminate", Outcome::Terminated)] {
            let stop = Stop::default();
            let run = tokio::spawn(SwarmExecutor.execute(spec(&["sleep", "10"], 60_000), stop.clone(), out.clone()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            match signal {
                "kill" => stop.kill.cancel(),
                _ => stop.terminate.cancel(),
            }
            assert_eq!(run.await.unwrap(), outcome, "{signal}");
        }
    }
}
