//! muster-cli: the operator CLI `muster`. It talks to a cluster only through NATS: the `muster` service's API
//! (typed in [`muster_schemas::api`]), the `servers` broadcast and the change feed; it knows nothing of the
//! server's internals.
//!
//! # Layout (bottom layer first; a module uses only modules listed before it)
//! - [`error`]  — leaf: [`CliError`], every way a command fails.
//! - [`time`]   — leaf: ages, spans and UTC dates from epoch milliseconds (pure).
//! - [`table`]  — leaf: aligned tables cut to the line width (pure).
//! - [`args`]   — parameters: the clap command line and its defaults.
//! - [`follow`] — pure logic: deciding from change events and reads when a followed request ended, and its progress.
//! - [`render`] — pure logic: the text printed for each API reply.
//! - [`client`] — I/O shell: the NATS connection, typed API calls, `servers`, the change feed.
//! - [`token`]  — enrollment tokens: minting one from the security directory; the text of tokens and enrollments.
//! - [`security`] — I/O of `muster security init` and `muster creds agent|swarm|revoke` (files; for `revoke` one
//!   system-account connection, and the API as admin for the host's enrollment).
//! - [`watch`]  — I/O shell: following a request to its end with progress bars.
//! - [`mod@run`]— top: one command from arguments to output.
#![deny(missing_docs)]

pub mod args;
pub mod client;
pub mod error;
pub mod follow;
pub mod render;
pub mod run;
pub mod security;
pub mod table;
pub mod time;
pub mod token;
pub mod watch;

pub use args::Cli;
pub use error::CliError;
pub use run::run;
