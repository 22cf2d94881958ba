//! muster-security: who may do what on the wire, and the proof of it.
//!
//! # Layout
//! Bottom to top; a module uses only modules listed above it.
//! - [`roles`] — pure: the identities (agent, swarm, server, admin, viewer, enroll) and what nats-server lets each
//!   publish and subscribe to, built from the subject names and the API's endpoint list; the docs table.
//! - [`claims`] — pure: the operator, account (scoped signing keys, JetStream limits, revocations) and user JWTs,
//!   signed with nkeys; [`claims::AgentMinter`] for enrollment.
//! - [`creds`] — pure: the `.creds` file format.
//! - [`certs`] — the CA and the nats-server TLS certificate (rcgen).
//! - [`config`] — pure: the secured nats-server configs (single node, cluster node).
//! - [`dir`] — I/O: the security directory `muster security init` writes; minting and recording users; planning
//!   and committing a revocation.
//! - [`revoke`] — I/O: pushing a re-signed account JWT to nats-server over `$SYS.REQ.CLAIMS.UPDATE`.
//! - [`command`] — pure: signing a command for one host (the server's command key, ed25519 nkeys) and verifying it
//!   against the pinned public keys (agent side).
#![deny(missing_docs)]

pub mod certs;
pub mod claims;
pub mod command;
pub mod config;
pub mod creds;
pub mod dir;
pub mod revoke;
pub mod roles;
