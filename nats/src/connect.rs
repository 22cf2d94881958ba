//! The one way a muster process connects to NATS (server, agent, CLI, tests, bench), and the connection's events.
//!
//! [`ConnectParams`] is where every connect option lives, with named fields and a [`Default`], so credentials and
//! TLS are added here once. [`ConnectionEvents`] is fed by the client's event callback: it logs the events, counts
//! slow-consumer drops and disconnects, and fans connects out to any number of [`Reconnects`] (one per agent
//! session, so `muster-agent swarm` can share one client), which re-register after a reconnect as Ambari agents
//! re-send everything after one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

use crate::urls::{parse_urls, UrlError, DEFAULT_NATS_URL};

/// Messages buffered per subscription before the client drops them as a slow consumer. The client's default
/// (65,536) dropped heartbeats when 100,000 agents beat in a burst, and commands in `muster-agent swarm`, where
/// thousands of sessions share one client; tokio allocates channel blocks as they fill, so a large bound costs
/// nothing while idle.
pub const SUBSCRIPTION_CAPACITY: usize = 262_144;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// Every NATS node to try (see [`crate::urls::parse_urls`]).
    pub urls: Vec<ServerAddr>,
    /// The connection's name, shown by `nats server report connections` (e.g. `muster-server server-1`).
    pub name: String,
    /// Prefix of reply inboxes instead of `_INBOX`, for accounts whose permissions allow only named inboxes.
    pub inbox_prefix: Option<String>,
    /// Messages buffered per subscription (see [`SUBSCRIPTION_CAPACITY`]).
    pub subscription_capacity: usize,
    /// Whether to return at once and keep trying in the background when no node answers the first connect: right
    /// for daemons, which may start before NATS; wrong for a CLI or a test, which should fail with the reason.
    pub retry_initial_connect: bool,
    /// How long `Client::request` waits for an answer; `None` keeps the client's default (10 s).
    pub request_timeout: Option<Duration>,
    /// Receives the connection's events: counts and log lines, and connect notifications for [`Reconnects`].
    pub events: ConnectionEvents,
}

impl Default for ConnectParams {
    /// The local nats-server, named `muster`, failing fast.
    fn default() -> Self {
        Self {
            // The constant parses; an empty list would only make the connect fail with the reason.
            urls: parse_urls(DEFAULT_NATS_URL).unwrap_or_default(),
            name: "muster".to_owned(),
            inbox_prefix: None,
            subscription_capacity: SUBSCRIPTION_CAPACITY,
            retry_initial_connect: false,
            request_timeout: None,
            events: ConnectionEvents::new(),
        }
    }
}

impl ConnectParams {
    /// The defaults with the comma-separated URL list `urls` and connection name `name`.
    pub fn new(urls: &str, name: impl Into<String>) -> Result<Self, UrlError> {
        Ok(Self { urls: parse_urls(urls)?, name: name.into(), ..Self::default() })
    }

    /// The URL list as given, for messages.
    fn shown_urls(&self) -> String {
        self.urls.iter().map(|u| u.clone().into_inner().to_string()).collect::<Vec<_>>().join(",")
    }
}

/// The first connect failed (only when [`ConnectParams::retry_initial_connect`] is off).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {urls}: {source}")]
pub struct ConnectError {
    /// The URLs tried.
    pub urls: String,
    /// The client's error.
    #[source]
    pub source: async_nats::ConnectError,
}

/// Connects as `params` say. Reconnects forever after a connection is lost. With
/// [`ConnectParams::retry_initial_connect`] it returns at once; [`Reconnects::wait_connected`] waits for the link.
pub async fn connect(params: ConnectParams) -> Result<Client, ConnectError> {
    let urls = params.shown_urls();
    let events = params.events;
    let mut options = ConnectOptions::new()
        .name(params.name)
        .max_reconnects(None)
        .subscription_capacity(params.subscription_capacity)
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.handle(event) }
        });
    if let Some(prefix) = params.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if params.retry_initial_connect {
        options = options.retry_on_initial_connect();
    }
    if let Some(timeout) = params.request_timeout {
        options = options.request_timeout(Some(timeout));
    }
    options.connect(params.urls).await.map_err(|source| ConnectError { urls, source })
}

/// A process's own reaction to a connection event, e.g. adding a slow-consumer drop to its `muster stats` counters.
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Counts and logs one client's connection events, and tells [`Reconnects`] about connects.
#[derive(Clone)]
pub struct ConnectionEvents {
    /// How many times the client has connected (the first connect included).
    connects: Arc<watch::Sender<u64>>,
    /// Slow-consumer events: each one means messages were dropped.
    slow_consumers: Arc<AtomicU64>,
    /// Times the connection was lost.
    disconnects: Arc<AtomicU64>,
    /// Whether the connection is down (true until the first connect).
    down: Arc<AtomicBool>,
    /// Client errors since the connection went down. While NATS is down every reconnect attempt reports an I/O
    /// error; the first is worth a warning, the rest are noise.
    errors_while_down: Arc<AtomicU64>,
    /// Called with every event before it is counted and logged.
    hook: Option<EventHook>,
}

impl std::fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionEvents")
            .field("connects", &*self.connects.borrow())
            .field("slow_consumers", &self.slow_consumers())
            .field("disconnects", &self.disconnects())
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Default for ConnectionEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionEvents {
    /// A fresh event sink with no connection yet.
    pub fn new() -> Self {
        Self {
            connects: Arc::new(watch::Sender::new(0)),
            slow_consumers: Arc::new(AtomicU64::new(0)),
            disconnects: Arc::new(AtomicU64::new(0)),
            // Down until the first connect, so a wrong URL warns once, not on every attempt.
            down: Arc::new(AtomicBool::new(true)),
            errors_while_down: Arc::new(AtomicU64::new(0)),
            hook: None,
        }
    }

    /// The same sink, also calling `hook` with every event (before counting and logging it).
    pub fn with_hook(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// A watcher for one session.
    pub fn reconnects(&self) -> Reconnects {
        Reconnects { rx: self.connects.subscribe() }
    }

    /// Slow-consumer events so far: messages the client dropped because a subscription's buffer was full.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Times the connection was lost so far.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Handles one client event: counts it and logs it. [`connect`] installs it as the event callback.
    pub fn handle(&self, event: Event) {
        if let Some(hook) = &self.hook {
            hook(&event);
        }
        match event {
            Event::Connected => {
                self.down.store(false, Ordering::Relaxed);
                self.errors_while_down.store(0, Ordering::Relaxed);
                let mut connects = 0;
                self.connects.send_modify(|n| {
                    *n += 1;
                    connects = *n;
                });
                if connects == 1 {
                    tracing::info!("connected to NATS");
                } else {
                    tracing::info!(connects, "reconnected to NATS");
                }
            }
            Event::Disconnected => {
                self.down.store(true, Ordering::Relaxed);
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("disconnected from NATS; reconnecting");
            }
            Event::SlowConsumer(sid) => {
                // One event per dropped message: a burst would log thousands of lines, so only the 1st, 2nd, 4th,
                // 8th... are logged; all are counted.
                let dropped = self.slow_consumers.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(sid, dropped, "slow consumer: NATS messages were dropped");
                }
            }
            Event::LameDuckMode => {
                tracing::info!("NATS server entered lame duck mode; will move to another server")
            }
            Event::Draining => tracing::debug!("NATS connection draining"),
            Event::Closed => tracing::info!("NATS connection closed"),
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::ClientError(e) => {
                let down = self.down.load(Ordering::Relaxed);
                if !down || self.errors_while_down.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "NATS client error");
                } else {
                    tracing::debug!(error = %e, "NATS client error while reconnecting");
                }
            }
        }
    }
}

/// One session's view of the connection: has it connected, and has it reconnected since last looked at?
#[derive(Debug, Clone)]
pub struct Reconnects {
    rx: watch::Receiver<u64>,
}

impl Reconnects {
    /// Whether the client has connected at least once.
    pub fn connected_once(&self) -> bool {
        *self.rx.borrow() > 0
    }

    /// Waits for the first connection (returns at once if it already happened) and marks it seen, so only later
    /// connects count as reconnects. Never returns if the event source is gone without ever connecting.
    pub async fn wait_connected(&mut self) {
        if self.rx.wait_for(|n| *n > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.mark_unchanged();
    }

    /// Marks every connect so far as handled.
    pub fn mark_seen(&mut self) {
        self.rx.mark_unchanged();
    }

    /// Waits until the client connects again after the last [`mark_seen`](Self::mark_seen), then marks it seen.
    /// Never returns once the event source is gone (no client, no reconnects).
    pub async fn reconnected(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.mark_unchanged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_connect_is_not_a_reconnect() {
        let events = ConnectionEvents::new();
        let mut r = events.reconnects();
        assert!(!r.connected_once());
        events.handle(Event::Connected);
        tokio::time::timeout(Duration::from_secs(5), r.wait_connected()).await.expect("wait_connected deadlocked");
        assert!(r.connected_once());
        let again = tokio::time::timeout(Duration::from_millis(20), r.reconnected()).await;
        assert!(again.is_err(), "the first connect was reported as a reconnect");

        events.handle(Event::Disconnected);
        events.handle(Event::Connected);
        tokio::time::timeout(Duration::from_secs(5), r.reconnected()).await.expect("reconnect not seen");
        r.mark_seen();
        assert!(tokio::time::timeout(Duration::from_millis(20), r.reconnected()).await.is_err());
        assert_eq!(events.disconnects(), 1);
    }

    #[tokio::test]
    async fn every_session_sees_the_reconnect() {
        let events = ConnectionEvents::new();
        events.handle(Event::Connected);
        let mut a = events.reconnects();
        let mut b = events.reconnects();
        a.wait_connected().await;
        b.wait_connected().await;
        events.handle(Event::Connected);
        for r in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_secs(5), r.reconnected()).await.expect("reconnect not seen");
        }
        events.handle(Event::SlowConsumer(7));
        events.handle(Event::SlowConsumer(7));
        assert_eq!(events.slow_consumers(), 2);
    }

    #[test]
    fn the_hook_sees_every_event() {
        let seen = Arc::new(AtomicU64::new(0));
        let counted = seen.clone();
        let events = ConnectionEvents::new().with_hook(move |e| {
            if matches!(e, Event::SlowConsumer(_)) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        events.clone().handle(Event::SlowConsumer(1));
        events.handle(Event::Disconnected);
        assert_eq!((seen.load(Ordering::Relaxed), events.slow_consumers(), events.disconnects()), (1, 1, 1));
    }

    #[test]
    fn params_default_to_the_local_server_and_failing_fast() {
        let p = ConnectParams::default();
        assert_eq!(p.shown_urls(), "nats://127.0.0.1:4222");
        assert!(!p.retry_initial_connect);
        assert_eq!(p.subscription_capacity, SUBSCRIPTION_CAPACITY);
        let p = ConnectParams::new("nats://a:4222, nats://b:4222", "muster-cli").unwrap();
        assert_eq!((p.shown_urls().as_str(), p.name.as_str()), ("nats://a:4222,nats://b:4222", "muster-cli"));
        assert!(ConnectParams::new(" ", "x").is_err());
    }
}
