//! [`CliError`]: every way a `muster` command fails, each with a message an operator can act on. `main` prints it
//! after `muster: ` and exits 1.

use std::time::Duration;

use muster_schemas::api::ApiError;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::commands::RequestId;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--nats` is not a list of NATS URLs.
    #[error("--nats {urls:?}: {source}")]
    Urls {
        /// What was given.
        urls: String,
        /// What is wrong with it.
        source: muster_nats::urls::UrlError,
    },
    /// `--prefix` is not a subject prefix.
    #[error("--prefix: {0}")]
    Prefix(#[from] muster_schemas::subjects::InvalidPrefix),
    /// NATS could not be reached at all.
    #[error(transparent)]
    Connect(#[from] muster_nats::connect::ConnectError),
    /// No muster server answered: none runs, or none is connected to this NATS.
    #[error("no muster server answered on {subject}: {detail}")]
    NoServer {
        /// The subject asked.
        subject: String,
        /// What happened instead.
        detail: String,
    },
    /// nats-server refused this identity the subject (a permissions violation): e.g. a write with viewer
    /// credentials.
    #[error(
        "NATS refused this identity (MUSTER_NATS_CREDS) access to {subject}: {detail} — viewer credentials may only \
         read; writes need admin credentials"
    )]
    Denied {
        /// The subject asked.
        subject: String,
        /// nats-server's words.
        detail: String,
    },
    /// A server was asked but did not answer in time.
    #[error("no answer on {subject} within {timeout:?}")]
    Timeout {
        /// The subject asked.
        subject: String,
        /// How long the CLI waited.
        timeout: Duration,
    },
    /// The server refused the call; its message says why.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The request ran to its end but did not complete.
    #[error("request {id} ended {status}: {detail}")]
    RequestFailed {
        /// Id of the request that ended.
        id: RequestId,
        /// How it ended.
        status: TaskStatus,
        /// The leader's reason.
        detail: String,
    },
    /// A reply, an event or stdin could not be decoded (a server of another version, or not muster at all).
    #[error("invalid {what}: {detail}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// NATS failed after connecting (a subscription or publish).
    #[error("NATS: {0}")]
    Nats(String),
    /// stdin, stdout or a file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A security directory operation (`muster security`, `muster creds`) failed.
    #[error("{0}")]
    Security(String),
}
