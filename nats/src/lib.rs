//! muster-nats: what every muster process (server, agent, CLI, tests) shares to be a NATS client, and the
//! process-wide facilities that go with it: one connect, one layered-config engine, typed counters, one clock.
//!
//! # Layout
//! Bottom to top; a module uses only modules listed above it.
//! - [`clock`]    — leaf: `unix_millis()` and [`clock::Now`], one reading of the clocks a shell hands to pure code.
//! - [`counters`](mod@counters) — leaf: typed counters declared by an enum ([`counters!`]), dense atomics.
//! - [`urls`]     — leaf: comma-separated NATS URL lists and the default URL.
//! - [`wire`]     — leaf: turns `muster_schemas::headers` sets into the client's header map.
//! - [`settings`] — logic: defaults < TOML file < `MUSTER_*` environment, declared once per binary in a table.
//! - [`connect`](mod@connect) — I/O: [`ConnectParams`], [`connect()`], credentials and TLS ([`ClientTrust`], the
//!   `MUSTER_NATS_CREDS`/`_CA`/`_CERT`/`_KEY` and `MUSTER_INSECURE` settings, the insecurity guard), connection
//!   events, reconnect watchers.
#![deny(missing_docs)]

pub mod clock;
pub mod connect;
pub mod counters;
pub mod settings;
pub mod urls;
pub mod wire;

pub use clock::unix_millis;
pub use connect::{check_insecure, connect, ClientTrust, ConnectParams, ConnectionEvents, Reconnects};
