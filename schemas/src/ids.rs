//! Message ids and task keys, each formatted and parsed in one place.
//!
//! JetStream drops a publish whose `Nats-Msg-Id` it has stored within the stream's duplicate window, so every id
//! here is a pure function of what the message means: a retry, or a new leader re-publishing what the old one may
//! have published, lands once.
//!
//! | id | form | message |
//! |---|---|---|
//! | [`TaskAttempt`] | `<task>-a<attempt>` | the `Muster-Task` header of commands and task reports |
//! | [`CommandMsgId::Execute`] | `t<task>-a<attempt>` | a task's command on `muster.cmd.<host>` |
//! | [`CommandMsgId::Cancel`] | `c<task>-a<attempt>` | its cancel |
//! | [`CommandMsgId::Configure`] | `cfg-<host>-e<epoch>-<n>` | a host's component set, the n-th of a leader's term |
//! | [`TxnMsgId`] | `txn-<epoch>-<seq>` | a transaction-log entry, by the sequence it must land at |
//! | [`ReportMsgId`] | `r-<host>-<task>-a<attempt>-p<n>`, `…-f`, `s-<host>-<nonce>`, `x-<host>-<nonce>` | an agent's report |

use std::fmt;
use std::str::FromStr;

use crate::HostId;

/// A task id: unique in the cluster, assigned by the leader.
pub type TaskId = u64;
/// A request id: unique in the cluster, assigned by the leader.
pub type RequestId = u64;

/// A message id or task key that does not have its expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} {text:?}: expected {form}")]
pub struct MalformedId {
    /// Which kind of id was being parsed.
    pub what: &'static str,
    /// The text that did not parse.
    pub text: String,
    /// The expected form, for the message.
    pub form: &'static str,
}

fn malformed(what: &'static str, form: &'static str, text: &str) -> MalformedId {
    MalformedId { what, text: text.to_owned(), form }
}

/// A decimal number without sign, spaces or leading `+` (`u64::from_str` would accept `+5`, which no id holds).
fn number<T: FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One attempt of one task: the unit of delivery, dedup and cancellation. Written `<task>-a<attempt>`, the value
/// of the `Muster-Task` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskAttempt {
    /// The task id, as assigned by the leader.
    pub task: TaskId,
    /// The attempt, from 1.
    pub attempt: u32,
}

const TASK_ATTEMPT_FORM: &str = "<task>-a<attempt>";

impl fmt::Display for TaskAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-a{}", self.task, self.attempt)
    }
}

impl FromStr for TaskAttempt {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .split_once("-a")
            .and_then(|(task, attempt)| Some(Self { task: number(task)?, attempt: number(attempt)? }));
        parsed.ok_or_else(|| malformed("task attempt", TASK_ATTEMPT_FORM, s))
    }
}

/// The `Nats-Msg-Id` of a command in `MUSTER_COMMANDS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandMsgId {
    /// An execution of a task attempt: `t<task>-a<attempt>`.
    Execute(TaskAttempt),
    /// The cancel of a task attempt: `c<task>-a<attempt>`.
    Cancel(TaskAttempt),
    /// A host's component set: `cfg-<host>-e<epoch>-<n>`. Counted per leader term, so a new leader's configures
    /// are never taken for duplicates of its predecessor's.
    Configure {
        /// The host configured.
        host: HostId,
        /// The epoch of the leader that sent it.
        epoch: u64,
        /// The leader's configure counter within its term.
        n: u64,
    },
}

const COMMAND_FORM: &str = "t<task>-a<attempt>, c<task>-a<attempt> or cfg-<host>-e<epoch>-<n>";

impl CommandMsgId {
    /// The task attempt an execution runs, carried in its `Muster-Task` header. Cancels and configures carry none
    /// (an agent matches a cancel by its body).
    pub fn execution(&self) -> Option<TaskAttempt> {
        match self {
            Self::Execute(t) => Some(*t),
            Self::Cancel(_) | Self::Configure { .. } => None,
        }
    }
}

impl fmt::Display for CommandMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Execute(t) => write!(f, "t{t}"),
            Self::Cancel(t) => write!(f, "c{t}"),
            Self::Configure { host, epoch, n } => write!(f, "cfg-{host}-e{epoch}-{n}"),
        }
    }
}

impl FromStr for CommandMsgId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || malformed("command msg-id", COMMAND_FORM, s);
        if let Some(rest) = s.strip_prefix("cfg-") {
            // The host may hold '-', so the numbers are taken from the right.
            let (rest, n) = rest.rsplit_once('-').ok_or_else(bad)?;
            let (host, epoch) = rest.rsplit_once("-e").ok_or_else(bad)?;
            return Ok(Self::Configure {
                host: HostId::new(host).map_err(|_| bad())?,
                epoch: number(epoch).ok_or_else(bad)?,
                n: number(n).ok_or_else(bad)?,
            });
        }
        if let Some(rest) = s.strip_prefix('t') {
            return rest.parse().map(Self::Execute).map_err(|_| bad());
        }
        if let Some(rest) = s.strip_prefix('c') {
            return rest.parse().map(Self::Cancel).map_err(|_| bad());
        }
        Err(bad())
    }
}

/// The `Nats-Msg-Id` of a transaction-log entry: `txn-<epoch>-<seq>`, the epoch of the leader appending it and
/// the sequence it expects to land at. A retried append after a lost ack is dropped as a duplicate, and the
/// leader recognises its own entry at `seq` by this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnMsgId {
    /// The appending leader's epoch.
    pub epoch: u64,
    /// The log sequence the entry is appended at.
    pub seq: u64,
}

impl fmt::Display for TxnMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn-{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for TxnMsgId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s
            .strip_prefix("txn-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(epoch, seq)| Some(Self { epoch: number(epoch)?, seq: number(seq)? }));
        parsed.ok_or_else(|| malformed("txn msg-id", "txn-<epoch>-<seq>", s))
    }
}

/// The nonce of a status report: `<agent started at>-<n>`, the agent run and its status-report counter, so the
/// status reports of one run, and of two runs, never share a `Nats-Msg-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusNonce {
    /// When the agent process started (ms since the Unix epoch).
    pub started_at: u64,
    /// The status report's number within the run.
    pub n: u64,
}

impl fmt::Display for StatusNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.started_at, self.n)
    }
}

impl FromStr for StatusNonce {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed =
            s.split_once('-').and_then(|(started, n)| Some(Self { started_at: number(started)?, n: number(n)? }));
        parsed.ok_or_else(|| malformed("status nonce", "<started_at>-<n>", s))
    }
}

/// The `Nats-Msg-Id` of a report in `MUSTER_REPORTS`: the same report retried is stored once.
///
/// The host is part of every id: dedup spans the whole stream, so without it a forged report for another host's
/// task (refused by the leader) would still claim the id of that task's genuine report. A final report has its
/// own id (`-f`), never a progress counter: an agent restarted in the middle of a task counts progress reports
/// from 0 again, and a final id that could equal an earlier progress id would be dropped as a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReportMsgId {
    /// A task's n-th progress report of an attempt: `r-<host>-<task>-a<attempt>-p<n>`.
    Progress {
        /// The reporting host.
        host: HostId,
        /// The task attempt.
        task: TaskAttempt,
        /// The progress report's number within the attempt.
        n: u32,
    },
    /// A task attempt's final report: `r-<host>-<task>-a<attempt>-f`.
    Final {
        /// The reporting host.
        host: HostId,
        /// The task attempt.
        task: TaskAttempt,
    },
    /// A component-status report: `s-<host>-<nonce>`. The nonce is opaque when formatting; parsing expects the
    /// agent's [`StatusNonce`] form, since a host id may hold '-' too.
    Status {
        /// The reporting host.
        host: HostId,
        /// The report's nonce.
        nonce: String,
    },
    /// A refused-command report: `x-<host>-<nonce>`, the nonce as a status report's.
    Refused {
        /// The reporting host.
        host: HostId,
        /// The report's nonce.
        nonce: String,
    },
}

const REPORT_FORM: &str =
    "r-<host>-<task>-a<attempt>-p<n>, r-<host>-<task>-a<attempt>-f, s-<host>-<started>-<n> or x-<host>-<started>-<n>";

impl fmt::Display for ReportMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Progress { host, task, n } => write!(f, "r-{host}-{task}-p{n}"),
            Self::Final { host, task } => write!(f, "r-{host}-{task}-f"),
            Self::Status { host, nonce } => write!(f, "s-{host}-{nonce}"),
            Self::Refused { host, nonce } => write!(f, "x-{host}-{nonce}"),
        }
    }
}

impl FromStr for ReportMsgId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || malformed("report msg-id", REPORT_FORM, s);
        let host = |text: &str| HostId::new(text).map_err(|_| bad());
        let status = s.strip_prefix("s-").map(|rest| (rest, false));
        if let Some((rest, refused)) = status.or_else(|| s.strip_prefix("x-").map(|rest| (rest, true))) {
            // `<host>-<started>-<n>`: the nonce is the last two tokens.
            let (rest, n) = rest.rsplit_once('-').ok_or_else(bad)?;
            let (h, started) = rest.rsplit_once('-').ok_or_else(bad)?;
            let nonce = format!("{started}-{n}").parse::<StatusNonce>().map_err(|_| bad())?.to_string();
            let host = host(h)?;
            return Ok(if refused { Self::Refused { host, nonce } } else { Self::Status { host, nonce } });
        }
        let rest = s.strip_prefix("r-").ok_or_else(bad)?;
        // `<host>-<task>-a<attempt>-<p<n>|f>`, taken from the right because the host may hold '-'.
        let (rest, last) = rest.rsplit_once('-').ok_or_else(bad)?;
        let (rest, attempt) = rest.rsplit_once("-a").ok_or_else(bad)?;
        let (h, task) = rest.rsplit_once('-').ok_or_else(bad)?;
        let task = TaskAttempt { task: number(task).ok_or_else(bad)?, attempt: number(attempt).ok_or_else(bad)? };
        match last {
            "f" => Ok(Self::Final { host: host(h)?, task }),
            _ => {
                let n = last.strip_prefix('p').and_then(number).ok_or_else(bad)?;
                Ok(Self::Progress { host: host(h)?, task, n })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HostId {
        HostId::new(h).unwrap()
    }

    fn round_trip<T>(value: T, text: &str)
    where
        T: fmt::Display + FromStr<Err = MalformedId> + PartialEq + fmt::Debug,
    {
        assert_eq!(value.to_string(), text);
        assert_eq!(text.parse::<T>(), Ok(value), "{text}");
    }

    #[test]
    fn task_attempts_round_trip() {
        round_trip(TaskAttempt { task: 42, attempt: 2 }, "42-a2");
        round_trip(TaskAttempt { task: u64::MAX, attempt: u32::MAX }, "18446744073709551615-a4294967295");
        for bad in ["", "42", "42-a", "-a2", "t42-a2", "42-b2", "42-a2-a3", "+4-a1", "4-a+1", " 4-a1", "4-a1 "] {
            assert!(bad.parse::<TaskAttempt>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_ids_round_trip() {
        let t = TaskAttempt { task: 7, attempt: 1 };
        round_trip(CommandMsgId::Execute(t), "t7-a1");
        round_trip(CommandMsgId::Cancel(t), "c7-a1");
        round_trip(CommandMsgId::Configure { host: host("web-1"), epoch: 12, n: 3 }, "cfg-web-1-e12-3");
        round_trip(CommandMsgId::Configure { host: host("e-1-e2"), epoch: 5, n: 0 }, "cfg-e-1-e2-e5-0");
        assert_eq!(CommandMsgId::Execute(t).execution(), Some(t));
        assert_eq!(CommandMsgId::Cancel(t).execution(), None);
        for bad in
            ["", "t", "x7-a1", "t7", "c7-b1", "cfg-web-1", "cfg-web-1-12-3", "cfg--e1-2", "cfg-a.b-e1-2", "t7-a1x"]
        {
            assert!(bad.parse::<CommandMsgId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn txn_ids_round_trip() {
        round_trip(TxnMsgId { epoch: 3, seq: 1_000 }, "txn-3-1000");
        for bad in ["", "txn-3", "txn--1", "txn-3-", "tx-3-1", "txn-3-1-2", "txn-a-1"] {
            assert!(bad.parse::<TxnMsgId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_ids_round_trip() {
        let task = TaskAttempt { task: 42, attempt: 2 };
        round_trip(ReportMsgId::Progress { host: host("web-1"), task, n: 0 }, "r-web-1-42-a2-p0");
        round_trip(ReportMsgId::Final { host: host("web-1"), task }, "r-web-1-42-a2-f");
        round_trip(ReportMsgId::Final { host: host("a-9-a1"), task }, "r-a-9-a1-42-a2-f");
        round_trip(ReportMsgId::Status { host: host("web-1"), nonce: "1700-3".into() }, "s-web-1-1700-3");
        round_trip(ReportMsgId::Refused { host: host("web-1"), nonce: "1700-4".into() }, "x-web-1-1700-4");
        round_trip(StatusNonce { started_at: 1700, n: 3 }, "1700-3");
        for bad in [
            "",
            "r-web-1-42-a2",
            "r-web-1-42-a2-x",
            "r-web-1-42-a2-p",
            "r--42-a2-f",
            "r-web-1-x-a2-f",
            "s-web-1",
            "s-web-1-x-1",
            "x-web-1",
            "q-web-1-42-a2-f",
        ] {
            assert!(bad.parse::<ReportMsgId>().is_err(), "{bad:?}");
        }
    }
}
