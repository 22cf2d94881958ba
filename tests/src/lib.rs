//! muster-tests: the support code end-to-end tests share. Tests start real processes — a `nats-server` on a random
//! port with a private store, the workspace's `muster-server`, `muster-agent` and `muster` binaries — and talk to
//! them only through NATS and the CLI, as an operator would.
//!
//! # Layout
//! - [`paths`]       — where things are: workspace root, built binaries, the nats-server binary, [`TestDir`].
//! - [`nats_server`] — [`NatsServer`]: a nats-server started from `nats/single.conf`, restartable on the same port.
//! - [`process`]     — [`Proc`]: a child process with its output in a log file, SIGKILL / SIGTERM / restart.
//! - [`cli`]         — [`Cli`]: runs `muster ... --json` and parses the replies into the schemas' API types.
//! - [`wait`]        — [`wait_until`] and [`within`]: every wait has a deadline and says what did not happen.
//! - [`cluster`]     — [`Muster`]: one nats-server, one muster-server and some agents, with the fast test timing.
//! - [`descendants`] — [`Descendants`]: the daemons and commands the agents started, via `/proc`; killed at the end.
//! - [`nats_cluster`] — [`NatsCluster`]: three nats-servers in one JetStream cluster, from `nats/cluster.conf`.
//! - [`ensemble`]    — [`Ensemble`]: muster in HA (two voters, one observer) on a [`NatsCluster`], with agents.
//! - [`load`]        — [`load::Load`] (requests submitted during a fault) and [`load::Sampler`] (looks throughout).
//! - [`stacks`]      — test stacks whose daemons are real processes, and [`WorkDir`], the files they leave.
//! - [`requests`]    — waiting on requests and components through the CLI; descriptions for failure messages.
//! - [`reports`]     — forged agent reports, published through JetStream like an agent's.
//!
//! Everything that can outlive a failed test (processes, directories) is cleaned up on Drop; when the test is
//! panicking, Drop first prints the tail of every log and keeps the test directory (see docs/testing.md).
#![deny(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod descendants;
pub mod ensemble;
pub mod load;
pub mod nats_cluster;
pub mod nats_server;
pub mod paths;
pub mod process;
pub mod reports;
pub mod requests;
pub mod stacks;
pub mod wait;

pub use cli::{Cli, CliOutput, Stats};
pub use cluster::{Muster, Settings, Timing};
pub use descendants::Descendants;
pub use ensemble::Ensemble;
pub use nats_cluster::NatsCluster;
pub use nats_server::NatsServer;
pub use paths::TestDir;
pub use process::Proc;
pub use stacks::{Daemon, WorkDir};
pub use wait::{fatal, wait_until, within, Check};
