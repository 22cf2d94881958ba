//! Agent ↔ server messages.
//!
//! - `muster.reg.<host>`: [`RegisterRequest`] → [`RegisterReply`] (request/reply).
//! - `muster.hb.<host>`: [`Heartbeat`], a core publish whose reply subject is the agent's control inbox; the server
//!   answers there only when the agent must act ([`HeartbeatReply`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::commands::ComponentSpec;
use crate::{Health, HostFacts, HostId, UnixMillis};

/// Registration: sent on start, after a reconnect, and whenever the server says it does not know the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub schema: u16,
    /// The registering host; must equal the host token of the subject.
    pub host: HostId,
    /// Hardware and OS profile.
    pub facts: HostFacts,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
    /// The `muster-agent` crate version (`CARGO_PKG_VERSION`), stored on the host record.
    pub agent_version: String,
    /// When the agent process started.
    pub agent_started_at: UnixMillis,
    /// Current health, so the host can go straight on once its status arrives.
    pub health: Health,
}

/// The leader's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RegisterReply {
    /// Registered: the host is WAITING_FOR_HOST_STATUS_UPDATES until its first heartbeat.
    Accepted {
        /// Heartbeat interval the agent must use (it adds its own jitter).
        heartbeat_interval_ms: u64,
        /// The leader epoch that accepted the registration.
        epoch: u64,
        /// Server clock, so an agent can log a large skew.
        server_time: UnixMillis,
        /// Components mapped to this host: the agent runs their status checks and auto-restarts.
        #[serde(default)]
        components: Vec<ComponentSpec>,
        /// Every command on `muster.cmd.<host>` up to this stream sequence is finished; the agent catches up by
        /// reading the stream after it.
        #[serde(default)]
        cursor: u64,
        /// Commands after `cursor` that are finished too (finished out of order): the agent skips them.
        #[serde(default)]
        done_after_cursor: Vec<u64>,
    },
    /// Refused. `code` says whether retrying can help ([`ErrorCode::is_retryable`]).
    Rejected {
        /// Why, as an [`ErrorCode`]; [`ErrorCode::is_retryable`] tells whether to try again.
        code: ErrorCode,
        /// The same reason in words, for the agent's log.
        message: String,
        /// For retryable codes, how long to wait before trying again.
        retry_after_ms: Option<u64>,
    },
}

/// A heartbeat: small, level-triggered (the full health digest each time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]); another version is refused as `unsupported_version`.
    pub schema: u16,
    /// The host; must equal the host token of the subject.
    pub host: HostId,
    /// Increments per heartbeat, for loss diagnosis.
    pub seq: u64,
    /// When the agent sent it.
    pub sent_at: UnixMillis,
    /// Host health: HEALTHY when no problems.
    pub health: Health,
}

/// What the server tells an agent on its control inbox in answer to a heartbeat. Sent only when action is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HeartbeatReply {
    /// The server does not consider the host registered (unknown, lost, or reset): register again.
    Reregister {
        /// Why the server wants it, in words for the agent's log (e.g. "host is not registered").
        reason: String,
    },
    /// The heartbeat was refused; the agent should log it (it indicates a bug or a version skew).
    Rejected {
        /// Which check failed: `malformed`, `too_large`, `unsupported_version`, `invalid_host_id` or `host_mismatch`.
        code: ErrorCode,
        /// The same reason in words, for the agent's log.
        message: String,
    },
}

/// Machine-readable error codes, also sent in the `Muster-Error` header of error replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Body was not valid MessagePack for the expected message.
    Malformed,
    /// Body exceeded the size limit.
    TooLarge,
    /// `schema` is not a version this server speaks.
    UnsupportedVersion,
    /// The host id (subject or body) is not valid.
    InvalidHostId,
    /// The subject's host differs from the body's host.
    HostMismatch,
    /// The host is not registered.
    UnknownHost,
    /// The event is not legal in the host's current state.
    IllegalTransition,
    /// The leader is at its admission limit; retry after `retry_after_ms`.
    Busy,
    /// This instance is not the leader.
    NotLeader,
    /// The server failed internally (e.g. the log was unavailable); retry.
    Internal,
}

impl ErrorCode {
    /// Every code, so a counter per code can be laid out in advance.
    pub const ALL: [Self; 10] = [
        Self::Malformed,
        Self::TooLarge,
        Self::UnsupportedVersion,
        Self::InvalidHostId,
        Self::HostMismatch,
        Self::UnknownHost,
        Self::IllegalTransition,
        Self::Busy,
        Self::NotLeader,
        Self::Internal,
    ];

    /// The snake_case name used in headers and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidHostId => "invalid_host_id",
            Self::HostMismatch => "host_mismatch",
            Self::UnknownHost => "unknown_host",
            Self::IllegalTransition => "illegal_transition",
            Self::Busy => "busy",
            Self::NotLeader => "not_leader",
            Self::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later (so an agent should back off and retry rather than give up).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Busy | Self::NotLeader | Self::Internal | Self::IllegalTransition)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
