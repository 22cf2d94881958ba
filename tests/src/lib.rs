//! muster-tests: the support code end-to-end tests share. Tests start real processes — a `nats-server` on a random
//! port with a private store, the workspace's `muster-server`, `muster-agent` and `muster` binaries — and talk to
//! them only through NATS and the CLI, as an operator would. Every harness runs the secured setup by default: a
//! security directory per test (`muster security init`), nats-server on its configs (JWT accounts, TLS), each
//! process with its own identity ([`Identities`]); [`Muster::start_insecure`] is the loopback mode's own test.
//!
//! # Layout
//! Bottom to top; a module uses only modules listed above it.
//! - [`paths`]       — leaf: where things are: workspace root, built binaries, the nats-server binary, [`TestDir`].
//! - [`wait`]        — leaf: [`wait_until`] and [`within`]: every wait has a deadline and says what did not happen.
//! - [`command_key`] — leaf: [`CommandKey`]: a command-signing key (server seed file, agents' trusted key).
//! - [`identities`]  — leaf: [`Identities`]: the test's security directory and who each process is ([`Identity`]):
//!   the variables and client settings of every identity, built here only.
//! - [`descendants`] — leaf: [`Descendants`]: the daemons and commands the agents started, via `/proc`.
//! - [`stacks`]      — leaf: test stacks whose daemons are real processes, and [`WorkDir`], the files they leave.
//! - [`process`]     — processes: [`Proc`]: a child with its output in a log file, SIGKILL / SIGTERM / restart.
//! - [`nats_server`] — processes: [`NatsServer`] (`nats-single.conf`), restartable; the tests' one connect.
//! - [`nats_cluster`] — processes: [`NatsCluster`]: three nats-servers in one JetStream cluster (`nats-cluster.conf`).
//! - [`secure`]      — processes: [`secure::SecureNats`]: a [`NatsServer`] with its security directory at hand.
//! - [`reports`]     — clients: forged agent reports, published through JetStream like an agent's.
//! - [`cli`]         — clients: [`Cli`]: runs `muster ... --json` and parses the replies into the schemas' API types.
//! - [`requests`]    — clients: waiting on requests and components through the CLI; descriptions for failures.
//! - [`load`]        — clients: [`load::Load`] (requests submitted during a fault) and [`load::Sampler`].
//! - [`cluster`]     — harnesses: [`Muster`]: one nats-server, one muster-server and agents, fast test timing.
//! - [`ensemble`]    — harnesses: [`Ensemble`]: muster in HA (two voters, one observer) on a [`NatsCluster`].
//! - [`debian`]      — packages: muster's `.deb` files (cargo-deb) and a Debian container booting systemd.
//! - [`docker`]      — harnesses: the images (`scripts/images.sh`) and [`docker::Compose`], the repository's
//!   `compose.yaml` under a project of its own, reached from the host.
//! - [`chaos`]       — harnesses: faults on that deployment (with `tests/chaos/compose.chaos.yaml`): partitions,
//!   SIGKILL, freezes, NATS nodes stopped; the load and the checker of tests/tests/chaos.rs.
//!
//! Everything that can outlive a failed test (processes, directories) is cleaned up on Drop; when the test is
//! panicking, Drop first prints the tail of every log and keeps the test directory (see docs/testing.md).
#![deny(missing_docs)]

pub mod chaos;
pub mod cli;
pub mod cluster;
pub mod command_key;
pub mod debian;
pub mod descendants;
pub mod docker;
pub mod ensemble;
pub mod identities;
pub mod load;
pub mod nats_cluster;
pub mod nats_server;
pub mod paths;
pub mod process;
pub mod reports;
pub mod requests;
pub mod secure;
pub mod stacks;
pub mod wait;

pub use cli::{Cli, CliOutput, Stats};
pub use cluster::{Muster, Settings, Timing};
pub use command_key::CommandKey;
pub use descendants::Descendants;
pub use ensemble::Ensemble;
pub use identities::{Identities, Identity};
pub use nats_cluster::NatsCluster;
pub use nats_server::NatsServer;
pub use paths::TestDir;
pub use process::Proc;
pub use stacks::{Daemon, WorkDir};
pub use wait::{fatal, wait_until, within, Check};
