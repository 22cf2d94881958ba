//! The NATS connection: connect options, and turning the client's connection events into a signal that
//! sessions watch to re-register after a reconnect (as Ambari agents re-send everything after one).
//!
//! One [`ConnectionEvents`] feeds from the client's `event_callback`; any number of [`Reconnects`] (one per
//! session, so `muster-agent swarm` can share one client) observe it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::{Client, ConnectError, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

/// Messages buffered per subscription before the client drops them as a slow consumer. The default (65,536)
/// drops under bursts (measured, see DESIGN.md); tokio allocates channel blocks as they fill, so a large bound
/// costs nothing while idle. Sized for `muster-agent swarm`, where thousands of sessions share one client.
pub const SUBSCRIPTION_CAPACITY: usize = 262_144;

/// Fans the client's connection events out to sessions and logs them.
#[derive(Debug, Clone)]
pub struct ConnectionEvents {
    /// How many times the client has connected (the first connect included).
    connects: Arc<watch::Sender<u64>>,
    /// Slow-consumer events seen: each one means messages were dropped.
    slow_consumers: Arc<AtomicU64>,
    /// Whether the connection is down (true until the first connect).
    down: Arc<AtomicBool>,
    /// Client errors since the connection went down. While NATS is down every reconnect attempt reports an I/O
    /// error; the first is worth a warning, the rest are noise.
    errors_while_down: Arc<AtomicU64>,
}

impl Default for ConnectionEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionEvents {
    /// A fresh event fan-out with no connection yet.
    pub fn new() -> Self {
        Self {
            connects: Arc::new(watch::Sender::new(0)),
            slow_consumers: Arc::new(AtomicU64::new(0)),
            // Down until the first connect, so a wrong URL warns once, not on every attempt.
            down: Arc::new(AtomicBool::new(true)),
            errors_while_down: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A watcher for one session.
    pub fn reconnects(&self) -> Reconnects {
        Reconnects { rx: self.connects.subscribe() }
    }

    /// Slow-consumer events seen so far.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// Handles one client event: counts connects and logs the rest. Call it from `ConnectOptions::event_callback`.
    pub fn handle(&self, event: Event) {
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
                tracing::warn!("disconnected from NATS; reconnecting");
            }
            Event::SlowConsumer(sid) => {
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sid, "slow consumer: NATS messages were dropped");
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

/// Connects to NATS the way the agent must: retrying the first connection forever (the agent may start before
/// NATS), reconnecting forever, named `name` for `nats server report connections`, with events fed to `events`.
/// Returns at once; use [`Reconnects::wait_connected`] to wait for the connection.
pub async fn connect(servers: Vec<ServerAddr>, name: String, events: ConnectionEvents) -> Result<Client, ConnectError> {
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.handle(event) }
        })
        .connect(servers)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert_eq!(events.slow_consumers(), 1);
    }
}
