//! Header names and values: every message is readable with `nats sub` without decoding its body.

use std::fmt;

/// `Content-Type` of every MessagePack body.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Value of [`CONTENT_TYPE`] for agent-protocol and log bodies.
pub const MSGPACK: &str = "application/msgpack";
/// Value of [`CONTENT_TYPE`] for API replies, which are JSON so `nats req` prints them directly.
pub const JSON: &str = "application/json";
/// What the message is: one of [`MessageKind`].
pub const KIND: &str = "Muster-Kind";
/// The host the message is about (agent protocol) or the leader that wrote it (txn log).
pub const HOST: &str = "Muster-Host";
/// The protocol version, [`crate::PROTOCOL_VERSION`].
pub const SCHEMA: &str = "Muster-Schema";
/// The leader epoch a txn or reply was produced under.
pub const EPOCH: &str = "Muster-Epoch";
/// The task a command or report belongs to.
pub const TASK: &str = "Muster-Task";
/// One-line human summary of an event (e.g. `HEALTHY -> HEARTBEAT_LOST`).
pub const SUMMARY: &str = "Muster-Summary";
/// On an API read: answer only once this instance has applied the log up to this sequence (read your writes; a
/// write's answer carries the `seq` it committed at).
pub const MIN_SEQ: &str = "Muster-Min-Seq";
/// Error code on an error reply (see [`crate::ErrorCode`]); absent on success.
pub const ERROR: &str = "Muster-Error";

/// The value of the `Muster-Kind` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// [`crate::RegisterRequest`].
    Register,
    /// [`crate::RegisterReply`].
    RegisterReply,
    /// [`crate::Heartbeat`].
    Heartbeat,
    /// [`crate::HeartbeatReply`].
    HeartbeatReply,
    /// [`crate::Txn`].
    Txn,
    /// A change-feed event on `muster.events.*`.
    Event,
    /// [`crate::commands::Command`].
    Command,
    /// [`crate::commands::Report`].
    Report,
}

impl MessageKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::RegisterReply => "register-reply",
            Self::Heartbeat => "heartbeat",
            Self::HeartbeatReply => "heartbeat-reply",
            Self::Txn => "txn",
            Self::Event => "event",
            Self::Command => "command",
            Self::Report => "report",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
