//! Header names and values, and the header SET each kind of message carries, built here and nowhere else: every
//! message is readable with `nats sub` without decoding its body.
//!
//! The set builders return `(name, value)` pairs, since this crate has no NATS client; the shells turn them into a
//! client header map with one helper (`muster_nats::wire::header_map`).
//!
//! | message | headers |
//! |---|---|
//! | registration, heartbeat ([`message`]) | `Content-Type`, `Muster-Kind`, `Muster-Host`, `Muster-Schema` |
//! | their replies ([`reply`]) | the same, plus `Muster-Error` on a refusal |
//! | command ([`command`]) | the same, plus `Muster-Task` on an execution |
//! | report ([`report`]) | the same, plus `Muster-Task` on a task report |
//! | catch-up request, reply | [`message`] / [`reply`] with [`MessageKind::CatchUp`] / [`MessageKind::CatchUpReply`] |
//! | txn ([`txn`]) | the same with the writing server as `Muster-Host`, plus `Muster-Epoch` |
//! | change event ([`event`]) | the same with the event's key as `Muster-Host`, plus `Muster-Summary` |

use std::fmt;

use crate::commands::{Report, ReportBody};
use crate::ids::CommandMsgId;
use crate::messages::ErrorCode;
use crate::{HostId, PROTOCOL_VERSION};

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
/// JetStream's dedup id (see [`crate::ids`] for the ids muster gives each stream).
pub const MSG_ID: &str = "Nats-Msg-Id";

/// One header: its name and value.
pub type Header = (&'static str, String);

/// The value of the `Muster-Kind` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `register`: a [`crate::RegisterRequest`], agent → leader on `<prefix>.reg.<host>`.
    Register,
    /// `register-reply`: a [`crate::RegisterReply`], the leader's answer to a registration.
    RegisterReply,
    /// `heartbeat`: a [`crate::Heartbeat`], agent → every server on `<prefix>.hb.<host>`.
    Heartbeat,
    /// `heartbeat-reply`: a [`crate::HeartbeatReply`], sent to the agent's control inbox only when it must act.
    HeartbeatReply,
    /// `catch-up`: a [`crate::messages::CatchUpRequest`], agent → any server on `<prefix>.catchup.<host>`.
    CatchUp,
    /// `catch-up-reply`: a [`crate::messages::CatchUpReply`], a server's answer with the host's stored commands.
    CatchUpReply,
    /// `txn`: a [`crate::Txn`] on the transaction log, `Muster-Host` naming the writing server.
    Txn,
    /// A change-feed event on `muster.events.*`.
    Event,
    /// `command`: a [`crate::commands::Command`], leader → agent on `<prefix>.cmd.<host>`.
    Command,
    /// `report`: a [`crate::commands::Report`], agent → leader on `<prefix>.report.<host>`.
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
            Self::CatchUp => "catch-up",
            Self::CatchUpReply => "catch-up-reply",
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

/// The headers every muster MessagePack message carries: content type, kind, the host it is about, schema.
pub fn message(kind: MessageKind, host: &str) -> Vec<Header> {
    vec![
        (CONTENT_TYPE, MSGPACK.to_owned()),
        (KIND, kind.as_str().to_owned()),
        (HOST, host.to_owned()),
        (SCHEMA, PROTOCOL_VERSION.to_string()),
    ]
}

/// A reply to an agent (registration or heartbeat reply): [`message`], plus `Muster-Error` when it refuses.
pub fn reply(kind: MessageKind, host: &str, error: Option<ErrorCode>) -> Vec<Header> {
    let mut h = message(kind, host);
    if let Some(code) = error {
        h.push((ERROR, code.as_str().to_owned()));
    }
    h
}

/// A command to `host`: [`message`], plus `Muster-Task` when it executes a task attempt.
pub fn command(host: &HostId, id: &CommandMsgId) -> Vec<Header> {
    let mut h = message(MessageKind::Command, host.as_str());
    if let Some(task) = id.execution() {
        h.push((TASK, task.to_string()));
    }
    h
}

/// A report: [`message`] for its host, plus `Muster-Task` when it reports on a task attempt.
pub fn report(report: &Report) -> Vec<Header> {
    let mut h = message(MessageKind::Report, report.host.as_str());
    if let ReportBody::Task(t) = &report.body {
        h.push((TASK, t.attempt_key().to_string()));
    }
    h
}

/// A catch-up request from `host`'s agent: [`message`] of kind [`MessageKind::CatchUp`].
pub fn catch_up(host: &HostId) -> Vec<Header> {
    message(MessageKind::CatchUp, host.as_str())
}

/// A server's answer to a catch-up request: [`reply`] of kind [`MessageKind::CatchUpReply`], with `Muster-Error`
/// when it refuses.
pub fn catch_up_reply(host: &str, error: Option<ErrorCode>) -> Vec<Header> {
    reply(MessageKind::CatchUpReply, host, error)
}

/// A transaction-log entry: [`message`] naming the writing server as its host, plus the writer's `Muster-Epoch`.
pub fn txn(server_id: &str, epoch: u64) -> Vec<Header> {
    let mut h = message(MessageKind::Txn, server_id);
    h.push((EPOCH, epoch.to_string()));
    h
}

/// A change event: [`message`] with the event's key (a host id, or a request id) as its host, plus the one-line
/// `Muster-Summary`.
pub fn event(key: &str, summary: &str) -> Vec<Header> {
    let mut h = message(MessageKind::Event, key);
    h.push((SUMMARY, summary.to_owned()));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{TaskPhase, TaskReport};
    use crate::ids::TaskAttempt;

    fn get<'a>(h: &'a [Header], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    fn host() -> HostId {
        HostId::new("web-1").unwrap()
    }

    #[test]
    fn every_message_says_what_it_is() {
        let h = message(MessageKind::Heartbeat, "web-1");
        assert_eq!(get(&h, "Content-Type"), Some("application/msgpack"));
        assert_eq!(get(&h, "Muster-Kind"), Some("heartbeat"));
        assert_eq!(get(&h, "Muster-Host"), Some("web-1"));
        assert_eq!(get(&h, "Muster-Schema"), Some("1"));
        assert_eq!(get(&reply(MessageKind::RegisterReply, "web-1", Some(ErrorCode::Busy)), ERROR), Some("busy"));
        assert_eq!(get(&reply(MessageKind::RegisterReply, "web-1", None), ERROR), None);
    }

    #[test]
    fn executions_and_task_reports_name_their_task_attempt() {
        let t = TaskAttempt { task: 42, attempt: 2 };
        assert_eq!(get(&command(&host(), &CommandMsgId::Execute(t)), TASK), Some("42-a2"));
        assert_eq!(get(&command(&host(), &CommandMsgId::Cancel(t)), TASK), None);
        let mut r = Report {
            schema: PROTOCOL_VERSION,
            host: host(),
            sent_at: 1,
            body: ReportBody::Task(TaskReport {
                task: 42,
                attempt: 2,
                phase: TaskPhase::Completed,
                report_seq: 0,
                started_at: 1,
                finished_at: Some(2),
                exit_code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            }),
        };
        let h = report(&r);
        assert_eq!((get(&h, KIND), get(&h, HOST), get(&h, TASK)), (Some("report"), Some("web-1"), Some("42-a2")));
        r.body = ReportBody::Status { statuses: Vec::new(), full: true, nonce: "1-1".into() };
        assert_eq!(get(&report(&r), TASK), None);
    }

    #[test]
    fn catch_up_messages_say_what_they_are() {
        let h = catch_up(&host());
        assert_eq!((get(&h, KIND), get(&h, HOST), get(&h, ERROR)), (Some("catch-up"), Some("web-1"), None));
        let h = catch_up_reply("web-1", Some(ErrorCode::Malformed));
        assert_eq!((get(&h, KIND), get(&h, ERROR)), (Some("catch-up-reply"), Some("malformed")));
    }

    #[test]
    fn txns_and_events_carry_their_extra_header() {
        let h = txn("server-1", 7);
        assert_eq!((get(&h, KIND), get(&h, HOST), get(&h, EPOCH)), (Some("txn"), Some("server-1"), Some("7")));
        let h = event("12", "request 12 COMPLETED");
        assert_eq!((get(&h, KIND), get(&h, HOST)), (Some("event"), Some("12")));
        assert_eq!(get(&h, SUMMARY), Some("request 12 COMPLETED"));
    }
}
