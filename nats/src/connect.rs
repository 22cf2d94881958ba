//! The one way a muster process connects to NATS (server, agent, CLI, tests, bench), and the connection's events.
//!
//! [`ConnectParams`] is where every connect option lives, with named fields and a [`Default`], so credentials and
//! TLS are added here once: [`ClientTrust`] (a `.creds` file, the CA to trust, a client certificate), read from the
//! settings [`TRUST`] (`MUSTER_NATS_CREDS`, `MUSTER_NATS_CA`, `MUSTER_NATS_CERT`, `MUSTER_NATS_KEY`,
//! `MUSTER_INSECURE`). With credentials the reply inboxes are `_INBOX.<user public key>.…`, so a user allowed only
//! `_INBOX.{{subject()}}.>` reads no one else's replies. [`check_insecure`] is the guard daemons run before
//! connecting without credentials. [`ConnectionEvents`] is fed by the client's event callback: it logs the events,
//! counts slow-consumer drops and disconnects, and fans connects out to any number of [`Reconnects`] (one per agent
//! session, so `muster-swarm` can share one client), which re-register after a reconnect as Ambari agents
//! re-send everything after one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;

use crate::settings::{env_vars, DefaultValue, Setting, SettingsError, Values};
use crate::urls::{parse_urls, UrlError, DEFAULT_NATS_URL};

/// Messages buffered per subscription before the client drops them as a slow consumer. The client's default
/// (65,536) dropped heartbeats when 100,000 agents beat in a burst, and commands in `muster-swarm`, where
/// thousands of sessions share one client; tokio allocates channel blocks as they fill, so a large bound costs
/// nothing while idle.
pub const SUBSCRIPTION_CAPACITY: usize = 262_144;

/// How often every client PINGs its NATS server. The client takes its connection for dead after 2 PINGs go
/// unanswered, and reconnects (its backoff grows to 4 s): a path that went silent without a reset (a cable pulled,
/// a container taken off its network, a frozen peer) is noticed within about 3 intervals instead of the client
/// library's 3 minutes, so an agent cut off for a while is HEALTHY again seconds after the network heals, not after
/// TCP's retransmission backoff. Costs one 6-byte PING and PONG per connection per interval.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// `MUSTER_NATS_CREDS`: the identity a process connects as.
pub const NATS_CREDS: Setting = Setting {
    key: "nats_creds",
    env: "MUSTER_NATS_CREDS",
    default: DefaultValue::Unset,
    meaning: "NATS credentials file (.creds: user JWT and seed); its user's key also names the reply inboxes",
};

/// `MUSTER_NATS_CA`: the CA that signed the NATS servers' certificates.
pub const NATS_CA: Setting = Setting {
    key: "nats_ca",
    env: "MUSTER_NATS_CA",
    default: DefaultValue::Unset,
    meaning: "CA certificate (PEM) of the NATS servers; when set, TLS is required and only this CA is trusted",
};

/// `MUSTER_NATS_CERT`: a client certificate, for NATS servers that verify clients (mutual TLS).
pub const NATS_CERT: Setting = Setting {
    key: "nats_cert",
    env: "MUSTER_NATS_CERT",
    default: DefaultValue::Unset,
    meaning: "client certificate (PEM) for mutual TLS; needs MUSTER_NATS_KEY",
};

/// `MUSTER_NATS_KEY`: the client certificate's private key.
pub const NATS_KEY: Setting = Setting {
    key: "nats_key",
    env: "MUSTER_NATS_KEY",
    default: DefaultValue::Unset,
    meaning: "private key (PEM) of MUSTER_NATS_CERT",
};

/// `MUSTER_INSECURE`: the override of [`check_insecure`], for labs.
pub const INSECURE: Setting = Setting {
    key: "insecure",
    env: "MUSTER_INSECURE",
    default: DefaultValue::Bool(false),
    meaning: concat!(
        "allow connecting without credentials to a NATS server that is not on loopback ",
        "(anyone reaching NATS can then run commands on every host; labs only)"
    ),
};

/// The connection-trust settings every binary shares, after [`crate::settings::COMMON`].
pub const TRUST: &[Setting] = &[NATS_CREDS, NATS_CA, NATS_CERT, NATS_KEY, INSECURE];

/// A client certificate and its key, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Who a connection authenticates as and whom it trusts: the [`TRUST`] settings. The default is none of it (a
/// plain connection without credentials, as on a loopback-only lab NATS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTrust {
    /// The `.creds` file (user JWT and nkey seed) to authenticate with; `None` connects anonymously.
    pub credentials: Option<PathBuf>,
    /// The CA certificate (PEM) of the NATS servers: when set, the connection requires TLS and trusts only it.
    pub ca: Option<PathBuf>,
    /// A client certificate for mutual TLS (the connection then requires TLS too).
    pub client_cert: Option<ClientCert>,
    /// `MUSTER_INSECURE`: connecting without credentials to a non-loopback address is allowed (daemons), or not
    /// warned about (CLI). Not a connect option; [`check_insecure`] reads it.
    pub insecure: bool,
}

impl ClientTrust {
    /// The [`TRUST`] settings of loaded values. A certificate without its key (or a key without it) is refused.
    pub fn from_values(v: &Values) -> Result<Self, SettingsError> {
        let path = |s: &Setting| -> Result<Option<PathBuf>, SettingsError> {
            Ok(v.optional_string(s)?.filter(|p| !p.is_empty()).map(PathBuf::from))
        };
        Ok(Self {
            credentials: path(&NATS_CREDS)?,
            ca: path(&NATS_CA)?,
            client_cert: client_cert(path(&NATS_CERT)?, path(&NATS_KEY)?)?,
            insecure: v.bool(&INSECURE)?,
        })
    }

    /// The [`TRUST`] settings from `MUSTER_*` variables alone (tests and the bench, which have no config file).
    pub fn from_env_map(env: HashMap<String, String>) -> Result<Self, SettingsError> {
        static TABLE: crate::settings::Table = crate::settings::Table { groups: &[TRUST], env_only: &[] };
        Self::from_values(&TABLE.load_from(None, env)?)
    }

    /// The [`TRUST`] settings from the process environment (tests and the bench).
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_env_map(env_vars(std::env::vars_os())?)
    }

    /// Whether TLS is required: a CA or a client certificate is given.
    pub fn requires_tls(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some()
    }
}

/// A client certificate needs its key and a key its certificate.
fn client_cert(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<ClientCert>, SettingsError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ClientCert { cert, key })),
        (Some(_), None) => Err(SettingsError::Invalid {
            setting: NATS_CERT.env.to_owned(),
            reason: format!("a client certificate needs its key: set {} too", NATS_KEY.env),
        }),
        (None, Some(_)) => Err(SettingsError::Invalid {
            setting: NATS_KEY.env.to_owned(),
            reason: format!("a client key needs its certificate: set {} too", NATS_CERT.env),
        }),
    }
}

/// A connection without credentials to a NATS server that is not on loopback, without `MUSTER_INSECURE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to connect without credentials to NATS at {host}, which is not a loopback address: anyone who can \
     reach it could run commands on every host. Set MUSTER_NATS_CREDS (see `muster security init`), or set \
     MUSTER_INSECURE=true to allow it (labs only)"
)]
pub struct InsecureError {
    /// The first URL host that is not loopback.
    pub host: String,
}

/// The insecurity guard: connecting to `urls` is allowed with credentials, with `insecure`, or when every URL's
/// host is loopback (127.0.0.0/8, ::1, `localhost`); otherwise the error names the host and `MUSTER_INSECURE`.
/// muster-server and muster-agent refuse to start on it; the CLI warns.
pub fn check_insecure(urls: &[ServerAddr], has_credentials: bool, insecure: bool) -> Result<(), InsecureError> {
    if has_credentials || insecure {
        return Ok(());
    }
    match urls.iter().map(ServerAddr::host).find(|host| !is_loopback(host)) {
        Some(host) => Err(InsecureError { host: host.to_owned() }),
        None => Ok(()),
    }
}

/// Whether a URL host names this machine only: an address in 127.0.0.0/8, `::1`, or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The reply-inbox prefix of a user: `_INBOX.<its public key>`, which nats-server permissions can confine to it.
pub fn inbox_prefix_of(public_key: &str) -> String {
    format!("_INBOX.{public_key}")
}

/// The public key of the user in a `.creds` file's text: the seed block is found and handed to `nkeys`.
pub fn creds_public_key(creds: &str) -> Result<String, CredsError> {
    const BEGIN: &str = "BEGIN USER NKEY SEED";
    const END: &str = "END USER NKEY SEED";
    let mut lines = creds.lines().map(str::trim).skip_while(|line| !(line.starts_with("---") && line.contains(BEGIN)));
    lines.next().ok_or(CredsError::NoSeed)?;
    let seed = lines.next().filter(|l| !l.is_empty() && !l.starts_with("---")).ok_or(CredsError::NoSeed)?;
    if !lines.next().is_some_and(|l| l.starts_with("---") && l.contains(END)) {
        return Err(CredsError::NoSeed);
    }
    let key = nkeys::KeyPair::from_seed(seed).map_err(|e| CredsError::BadSeed(e.to_string()))?;
    if key.key_pair_type() != nkeys::KeyPairType::User {
        return Err(CredsError::BadSeed(format!("the seed is a {:?} key, not a user's", key.key_pair_type())));
    }
    Ok(key.public_key())
}

/// Why a credentials file's user key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// No `-----BEGIN USER NKEY SEED-----` block with one line in it.
    #[error("no user nkey seed block in the credentials file")]
    NoSeed,
    /// The block holds no valid user seed.
    #[error("the credentials file's seed is not valid: {0}")]
    BadSeed(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// Every NATS node to try (see [`crate::urls::parse_urls`]).
    pub urls: Vec<ServerAddr>,
    /// The connection's name, shown by `nats server report connections` (e.g. `muster-server server-1`).
    pub name: String,
    /// Prefix of reply inboxes instead of `_INBOX`; `None` derives it from the credentials (`_INBOX.<user public
    /// key>`, see [`inbox_prefix_of`]), or keeps `_INBOX` without credentials.
    pub inbox_prefix: Option<String>,
    /// Credentials and TLS (see [`ClientTrust`]); the default connects anonymously without TLS.
    pub trust: ClientTrust,
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
    /// The local nats-server, named `muster`, anonymous, failing fast.
    fn default() -> Self {
        Self {
            // The constant parses; an empty list would only make the connect fail with the reason.
            urls: parse_urls(DEFAULT_NATS_URL).unwrap_or_default(),
            name: "muster".to_owned(),
            inbox_prefix: None,
            trust: ClientTrust::default(),
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

/// The connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The first connect failed (only when [`ConnectParams::retry_initial_connect`] is off).
    #[error("cannot connect to NATS at {urls}: {source}")]
    Nats {
        /// The URLs tried.
        urls: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A file of [`ClientTrust`] cannot be read (checked before connecting, so a daemon that would retry forever
    /// fails at once with the path instead).
    #[error("cannot read {setting} {}: {source}", path.display())]
    File {
        /// The setting naming the file (e.g. `MUSTER_NATS_CREDS`).
        setting: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The credentials file is not one.
    #[error("invalid credentials file {} (MUSTER_NATS_CREDS): {reason}", path.display())]
    Creds {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks that `path`, given by `setting`, can be read, before the client reads it at each connect.
fn readable(setting: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path).map(drop).map_err(|source| ConnectError::File { setting, path: path.to_owned(), source })
}

/// Connects as `params` say. Reconnects forever after a connection is lost. With
/// [`ConnectParams::retry_initial_connect`] it returns at once; [`Reconnects::wait_connected`] waits for the link.
/// The files of [`ClientTrust`] are read (or checked to be readable) first, whatever the retry setting.
pub async fn connect(params: ConnectParams) -> Result<Client, ConnectError> {
    let urls = params.shown_urls();
    let events = params.events;
    let mut options = ConnectOptions::new()
        .name(params.name)
        .max_reconnects(None)
        .ping_interval(PING_INTERVAL)
        .subscription_capacity(params.subscription_capacity)
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.handle(event) }
        });
    let mut inbox_prefix = params.inbox_prefix;
    if let Some(path) = &params.trust.credentials {
        let text = tokio::fs::read_to_string(path).await.map_err(|source| ConnectError::File {
            setting: NATS_CREDS.env,
            path: path.clone(),
            source,
        })?;
        let public_key =
            creds_public_key(&text).map_err(|e| ConnectError::Creds { path: path.clone(), reason: e.to_string() })?;
        options = options
            .credentials(&text)
            .map_err(|e| ConnectError::Creds { path: path.clone(), reason: e.to_string() })?;
        inbox_prefix.get_or_insert_with(|| inbox_prefix_of(&public_key));
    }
    if let Some(ca) = &params.trust.ca {
        readable(NATS_CA.env, ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let Some(ClientCert { cert, key }) = &params.trust.client_cert {
        readable(NATS_CERT.env, cert)?;
        readable(NATS_KEY.env, key)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if params.trust.requires_tls() {
        options = options.require_tls(true);
    }
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    if params.retry_initial_connect {
        options = options.retry_on_initial_connect();
    }
    if let Some(timeout) = params.request_timeout {
        options = options.request_timeout(Some(timeout));
    }
    options.connect(params.urls).await.map_err(|source| ConnectError::Nats { urls, source })
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

    fn urls(text: &str) -> Vec<ServerAddr> {
        parse_urls(text).unwrap()
    }

    #[test]
    fn loopback_is_127_8_ipv6_one_and_localhost() {
        for host in ["127.0.0.1", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "128.0.0.1", "::2", "0.0.0.0", "nats", "localhost.example.com", "example.com", ""] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn the_guard_refuses_an_anonymous_connection_off_loopback_unless_told() {
        let local = urls("nats://127.0.0.1:4222,nats://localhost:4223,nats://[::1]:4224");
        assert_eq!(check_insecure(&local, false, false), Ok(()));
        let mixed = urls("nats://127.0.0.1:4222,nats://10.1.2.3:4222");
        let err = check_insecure(&mixed, false, false).unwrap_err();
        assert_eq!(err.host, "10.1.2.3");
        let text = err.to_string();
        assert!(text.contains("MUSTER_INSECURE") && text.contains("MUSTER_NATS_CREDS"), "{text}");
        assert!(text.contains("not a loopback address") && text.contains("10.1.2.3"), "{text}");
        assert_eq!(check_insecure(&mixed, true, false), Ok(()), "credentials make it safe");
        assert_eq!(check_insecure(&mixed, false, true), Ok(()), "MUSTER_INSECURE overrides");
        assert!(check_insecure(&urls("tls://nats.example.com:4222"), false, false).is_err());
    }

    /// A `.creds` file as `nsc` and `muster security init` write it; the JWT is not looked at here.
    fn creds(seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER \
             JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can \
             be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY \
             SEED------\n\n*************************************************************\n"
        )
    }

    #[test]
    fn the_inbox_prefix_is_the_creds_users_public_key() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let key = creds_public_key(&creds(&seed)).unwrap();
        assert_eq!(key, user.public_key());
        assert_eq!(inbox_prefix_of(&key), format!("_INBOX.{}", user.public_key()));
        assert_eq!(
            creds_public_key("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n"),
            Err(CredsError::NoSeed)
        );
        assert!(matches!(creds_public_key(&creds("SUNOTASEED")), Err(CredsError::BadSeed(_))));
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        assert!(matches!(creds_public_key(&creds(&account)), Err(CredsError::BadSeed(_))), "an account seed");
    }

    #[test]
    fn trust_settings_load_and_a_certificate_needs_its_key() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(ClientTrust::from_env_map(env(&[])).unwrap(), ClientTrust::default());
        let t = ClientTrust::from_env_map(env(&[
            ("MUSTER_NATS_CREDS", "/etc/muster/agent.creds"),
            ("MUSTER_NATS_CA", "/etc/muster/ca.pem"),
            ("MUSTER_NATS_CERT", "c.pem"),
            ("MUSTER_NATS_KEY", "k.pem"),
            ("MUSTER_INSECURE", "yes"),
        ]))
        .unwrap();
        assert_eq!(t.credentials.as_deref(), Some(Path::new("/etc/muster/agent.creds")));
        assert_eq!(t.ca.as_deref(), Some(Path::new("/etc/muster/ca.pem")));
        assert_eq!(t.client_cert, Some(ClientCert { cert: "c.pem".into(), key: "k.pem".into() }));
        assert!(t.insecure && t.requires_tls());
        let err = ClientTrust::from_env_map(env(&[("MUSTER_NATS_CERT", "c.pem")])).unwrap_err().to_string();
        assert!(err.contains("MUSTER_NATS_CERT") && err.contains("MUSTER_NATS_KEY"), "{err}");
        let err = ClientTrust::from_env_map(env(&[("MUSTER_NATS_KEY", "k.pem")])).unwrap_err().to_string();
        assert!(err.contains("MUSTER_NATS_KEY") && err.contains("MUSTER_NATS_CERT"), "{err}");
        let err = ClientTrust::from_env_map(env(&[("MUSTER_INSECURE", "maybe")])).unwrap_err().to_string();
        assert!(err.contains("MUSTER_INSECURE"), "{err}");
    }

    #[tokio::test]
    async fn unreadable_or_broken_trust_files_fail_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.creds");
        let params =
            |trust: ClientTrust| ConnectParams { trust, retry_initial_connect: true, ..ConnectParams::default() };
        let err = connect(params(ClientTrust { credentials: Some(missing.clone()), ..ClientTrust::default() }))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::File { setting: "MUSTER_NATS_CREDS", path, .. } if *path == missing),
            "{err}"
        );
        let broken = dir.path().join("broken.creds");
        std::fs::write(&broken, "not a creds file").unwrap();
        let err =
            connect(params(ClientTrust { credentials: Some(broken), ..ClientTrust::default() })).await.unwrap_err();
        assert!(matches!(err, ConnectError::Creds { .. }), "{err}");
        let err = connect(params(ClientTrust { ca: Some(missing), ..ClientTrust::default() })).await.unwrap_err();
        assert!(matches!(err, ConnectError::File { setting: "MUSTER_NATS_CA", .. }), "{err}");
    }
}
