//! Agent ↔ server messages.
//!
//! - `muster.reg.<host>`: [`RegisterRequest`] → [`RegisterReply`] (request/reply).
//! - `muster.hb.<host>`: [`Heartbeat`], a core publish whose reply subject is the agent's control inbox; the server
//!   answers there only when the agent must act ([`HeartbeatReply`]).
//! - `muster.enroll.<host>`: [`EnrollRequest`] → [`EnrollReply`] (request/reply, with an [`EnrollToken`]'s
//!   credentials; answered by the leader only). docs/enrollment.md.
//! - `muster.catchup.<host>`: [`CatchUpRequest`] → [`CatchUpReply`] (request/reply, answered by any server
//!   instance): the host's stored commands after the cursor its registration reply gave.

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

// ---- catch-up (`<prefix>.catchup.<host>`) ---------------------------------------------------------------------

/// An agent asks for its stored commands from `from_seq` up to `up_to_seq` (stream sequences of
/// `MUSTER_COMMANDS`; `up_to_seq` is the sequence of its subject's last command, which it looked up itself). Any
/// server instance answers with a [`CatchUpReply`]; the agent asks again from its `next_seq` while `more` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpRequest {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub schema: u16,
    /// The host; must equal the host token of the subject.
    pub host: HostId,
    /// The first stream sequence wanted (the cursor + 1, then each reply's `next_seq`).
    pub from_seq: u64,
    /// The last stream sequence wanted (inclusive).
    pub up_to_seq: u64,
    /// Most commands wanted in this reply; the server caps it at [`crate::limits::CATCH_UP_CHUNK`] (0 means that).
    #[serde(default)]
    pub max: u32,
}

/// One command as `MUSTER_COMMANDS` stores it: what the agent checks (headers with the command signature, the
/// body's exact bytes) and where it is in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCommand {
    /// Its stream sequence.
    pub seq: u64,
    /// Its headers as stored, one pair per value (JetStream's own `Nats-Stream`, `Nats-Subject`, `Nats-Sequence`,
    /// `Nats-Time-Stamp` of a direct get left out).
    pub headers: Vec<(String, String)>,
    /// Its body, byte for byte (a MessagePack [`crate::commands::Command`]).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A server's answer to a [`CatchUpRequest`] (header `Muster-Error` on a rejection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CatchUpReply {
    /// The host's stored commands from `from_seq` on, in stream order: at most the request's `max`, and fewer when
    /// the next would make the reply larger than [`crate::limits::MAX_CATCH_UP_REPLY_BYTES`].
    Commands {
        /// The commands, oldest first.
        commands: Vec<StoredCommand>,
        /// The first sequence not covered by this reply: where to ask from next.
        next_seq: u64,
        /// Whether commands up to `up_to_seq` may follow (ask again from `next_seq`); false once the range is done.
        more: bool,
    },
    /// Refused: the request was malformed, for another host or version, or the server could not read the stream
    /// right now ([`ErrorCode::is_retryable`]: `busy`, `internal`).
    Rejected {
        /// Why, as an [`ErrorCode`].
        code: ErrorCode,
        /// The same reason in words, for the agent's log.
        message: String,
    },
}

// ---- enrollment (`<prefix>.enroll.<host>`) ------------------------------------------------------------------

/// The prefix of an enrollment token's text, naming its format version ([`EnrollToken`]).
pub const ENROLL_TOKEN_PREFIX: &str = "MUSTER-ENROLL-1.";

/// An enrollment token as `muster token create` prints it and an agent reads it from `MUSTER_ENROLL_TOKEN`: the
/// credentials of one *enroll*-role NATS user, which may only publish `<prefix>.enroll.*` and read its own inbox.
///
/// Text form: `MUSTER-ENROLL-1.<seed>.<jwt>` — the user's nkey seed (base32, `SU…`) and its user JWT (three
/// base64url segments), both already URL-safe, so the token is one opaque line. The token's id is the user's
/// public key (the JWT's subject), which the leader records at `token.create`; the seed never reaches the leader.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    /// The enroll user's nkey seed (`SU…`).
    pub seed: String,
    /// The enroll user's JWT, signed by the account's enroll-role signing key.
    pub jwt: String,
}

/// Text that is not an [`EnrollToken`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enrollment token: {0} (expected MUSTER-ENROLL-1.<seed>.<jwt>, as `muster token create` prints)")]
pub struct BadEnrollToken(pub &'static str);

impl EnrollToken {
    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, BadEnrollToken> {
        let rest = text.trim().strip_prefix(ENROLL_TOKEN_PREFIX).ok_or(BadEnrollToken("wrong prefix"))?;
        let (seed, jwt) = rest.split_once('.').ok_or(BadEnrollToken("no JWT after the seed"))?;
        if !seed.starts_with("SU") || !seed.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
            return Err(BadEnrollToken("the seed is not a user nkey seed"));
        }
        let segments = jwt.split('.').collect::<Vec<_>>();
        let url_safe = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if segments.len() != 3 || !segments.iter().all(|s| url_safe(s)) {
            return Err(BadEnrollToken("the JWT is malformed"));
        }
        Ok(Self { seed: seed.to_owned(), jwt: jwt.to_owned() })
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ENROLL_TOKEN_PREFIX}{}.{}", self.seed, self.jwt)
    }
}

impl fmt::Debug for EnrollToken {
    /// The seed is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollToken").field("jwt", &self.jwt).finish_non_exhaustive()
    }
}

/// An agent's enrollment request on `<prefix>.enroll.<host>`, sent with an enrollment token's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Protocol version ([`crate::PROTOCOL_VERSION`]).
    pub schema: u16,
    /// The host to enroll; must equal the host token of the subject.
    pub host: HostId,
    /// The public key of the user nkey the agent generated for itself (`U…`); its seed never leaves the host.
    pub key: String,
    /// The token's id: the enroll user's public key (`U…`).
    pub token: String,
    /// Signature of [`EnrollRequest::signed_bytes`] by the token's seed: proves the caller holds the token it
    /// names (a token holder cannot spend another token's uses or host pattern by naming it).
    pub token_sig: Vec<u8>,
    /// Signature of the same bytes by the agent's own seed: proves it holds the key it asks credentials for.
    pub key_sig: Vec<u8>,
}

impl EnrollRequest {
    /// The bytes both signatures cover: a domain tag, the host, the agent's key and the token id, one a line.
    pub fn signed_bytes(host: &HostId, key: &str, token: &str) -> Vec<u8> {
        format!("muster-enroll/1\n{host}\n{key}\n{token}\n").into_bytes()
    }
}

/// Why an enrollment was refused (the `code` of [`EnrollReply::Refused`], and the label of the server's
/// `enroll.refused.<code>` counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollRefusal {
    /// The request did not decode, has another protocol version, a bad host id, a subject that does not match its
    /// host, a malformed key, or a signature that does not verify.
    Malformed,
    /// No token with this id was created (`muster token list`).
    UnknownToken,
    /// The token's expiry has passed.
    ExpiredToken,
    /// An operator revoked the token.
    RevokedToken,
    /// Every use of the token is spent.
    UsedUp,
    /// The host id does not match the token's host pattern.
    HostNotAllowed,
    /// The host is already enrolled (or pending) under another key: a second machine claiming its id.
    Impersonation,
    /// An operator rejected this host's enrollment with this key.
    Rejected,
    /// This cluster does not enroll agents (the server has no `MUSTER_AGENT_SIGNER`).
    NotEnabled,
    /// The leader failed (log, signing key, timeout); retry.
    Internal,
}

impl EnrollRefusal {
    /// Every code, so a counter per code can be laid out in advance.
    pub const ALL: [Self; 10] = [
        Self::Malformed,
        Self::UnknownToken,
        Self::ExpiredToken,
        Self::RevokedToken,
        Self::UsedUp,
        Self::HostNotAllowed,
        Self::Impersonation,
        Self::Rejected,
        Self::NotEnabled,
        Self::Internal,
    ];

    /// The snake_case name used on the wire and in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::ExpiredToken => "expired_token",
            Self::RevokedToken => "revoked_token",
            Self::UsedUp => "used_up",
            Self::HostNotAllowed => "host_not_allowed",
            Self::Impersonation => "impersonation",
            Self::Rejected => "rejected",
            Self::NotEnabled => "not_enabled",
            Self::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later without anyone changing anything (the agent retries these).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Internal)
    }
}

impl fmt::Display for EnrollRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The leader's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EnrollReply {
    /// Enrolled: the agent's own user JWT (agent role, named after the host, for the key it sent). With its seed it
    /// makes the agent's credentials file.
    Accepted {
        /// The user JWT, signed by the account's agent-role signing key.
        jwt: String,
    },
    /// Held until an operator accepts it (`muster hosts accept <host>`): ask again after `retry_after_ms`.
    Pending {
        /// Why, in words for the agent's log.
        message: String,
        /// When to ask again.
        retry_after_ms: u64,
    },
    /// Refused; [`EnrollRefusal::is_retryable`] tells whether asking again can help.
    Refused {
        /// Why, as a code.
        code: EnrollRefusal,
        /// The same reason in words, for the agent's log.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJVQUJDIn0.c2ln-_x";

    #[test]
    fn an_enroll_token_round_trips_and_keeps_its_seed_out_of_debug() {
        let t = EnrollToken { seed: "SUAB2C3".into(), jwt: JWT.into() };
        let text = t.to_string();
        assert_eq!(text, format!("MUSTER-ENROLL-1.SUAB2C3.{JWT}"));
        assert_eq!(EnrollToken::parse(&format!(" {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains("SUAB2C3"));
        for bad in [
            "",
            "MUSTER-ENROLL-2.SUAB.a.b.c",
            "MUSTER-ENROLL-1.SUAB",
            "MUSTER-ENROLL-1.SOAB.a.b.c",
            "MUSTER-ENROLL-1.SUAB.a.b",
            "MUSTER-ENROLL-1.SUAB.a.b.c d",
            "MUSTER-ENROLL-1.SUAB.a..c",
        ] {
            assert!(EnrollToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn catch_up_messages_round_trip_with_payloads_as_binary() {
        let req = CatchUpRequest { schema: 1, host: HostId::new("web-1").unwrap(), from_seq: 5, up_to_seq: 9, max: 0 };
        assert_eq!(crate::codec::decode::<CatchUpRequest>(&crate::codec::encode(&req), 1024).unwrap(), req);
        let payload = vec![0xffu8; 1000];
        let reply = CatchUpReply::Commands {
            commands: vec![StoredCommand { seq: 7, headers: vec![("Muster-Kind".into(), "command".into())], payload }],
            next_seq: 8,
            more: true,
        };
        let bytes = crate::codec::encode(&reply);
        // `bin`, not an array of integers (which would take 2 bytes for each of these).
        assert!(bytes.len() < 1100, "{}", bytes.len());
        assert_eq!(crate::codec::decode::<CatchUpReply>(&bytes, 2048).unwrap(), reply);
        let r = CatchUpReply::Rejected { code: ErrorCode::InvalidHostId, message: "bad".into() };
        assert_eq!(crate::codec::decode::<CatchUpReply>(&crate::codec::encode(&r), 1024).unwrap(), r);
    }

    #[test]
    fn enroll_replies_are_tagged_and_refusal_codes_named() {
        let r = EnrollReply::Refused { code: EnrollRefusal::UsedUp, message: "spent".into() };
        let back: EnrollReply = crate::codec::decode(&crate::codec::encode(&r), 1024).unwrap();
        assert_eq!(back, r);
        assert_eq!(serde_json::to_value(&r).unwrap()["code"], "used_up");
        for c in EnrollRefusal::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert!(EnrollRefusal::Internal.is_retryable() && !EnrollRefusal::Impersonation.is_retryable());
    }
}
