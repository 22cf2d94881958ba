//! The counters of a session: what it sent, received and dropped. One [`SessionStats`] is shared by every part of
//! one session's I/O (cloning shares the values), and by all sessions of `muster-swarm`, which prints their
//! sums: one relaxed atomic add per event, no allocation per session.
//!
//! A leaf: declared with the one counters facility of `muster_nats`, no dependency on the rest of the crate.

use muster_nats::counters::Counters;

muster_nats::counters! {
    /// What an agent session counts.
    pub enum SessionCounter {
        /// Registration requests sent.
        RegisterAttempts = "register.attempts",
        /// Registrations the leader accepted.
        Registrations = "register.accepted",
        /// Re-registrations asked for by the server or caused by a reconnect.
        Reregistrations = "register.again",
        /// Acceptances that came after the registration's timeout and were taken while waiting to retry.
        LateRegistrationAnswers = "register.late_answer",
        /// Heartbeats handed to the NATS client.
        Heartbeats = "heartbeat.sent",
        /// Heartbeats the NATS client refused to send.
        HeartbeatErrors = "heartbeat.errors",
        /// Control-inbox messages that could not be used (undecodable or of an unknown kind).
        BadControlMessages = "control.bad",
        /// Events illegal in the session's state, or calls the action queue refused (a bug).
        IllegalTransitions = "transition.illegal",
        /// Valid commands received (live and read back from the stream), repeats included.
        CommandsReceived = "command.received",
        /// Command messages that could not be used (undecodable, wrong version, wrong host).
        BadCommands = "command.bad",
        /// Commands dropped as repeats of one already seen.
        DuplicateCommands = "command.duplicate",
        /// Messages refused because they carry no signature (`muster_schemas::signing`). Every refusal but a
        /// replay is also reported to the server (`commands.refused_by_agents` in `muster stats`).
        RefusedUnsigned = "command.refused.unsigned",
        /// Messages whose signature by a trusted key does not match them (tampered).
        RefusedBadSignature = "command.refused.bad_signature",
        /// Messages signed by a key this agent does not trust (forged, or a key rotated out).
        RefusedUntrustedKey = "command.refused.untrusted_key",
        /// Genuine messages signed for another host.
        RefusedOtherHost = "command.refused.other_host",
        /// Genuine messages past their expiry.
        RefusedExpired = "command.refused.expired",
        /// Genuine messages accepted before (an execute or cancel seen again), or a component set older than the
        /// one applied. Not reported: a redelivery (live and catch-up, a re-registration, a new leader's re-publish)
        /// looks the same, and neither runs anything twice.
        RefusedReplayed = "command.refused.replayed",
        /// Messages whose signature headers do not parse.
        RefusedMalformed = "command.refused.malformed",
        /// Tasks whose command was started.
        TasksStarted = "task.started",
        /// Tasks that ended, reported or not (a kill at shutdown is not reported).
        TasksFinished = "task.finished",
        /// Component status checks started.
        StatusChecks = "status.checks",
        /// Components restarted by the agent on its own.
        AutoRestarts = "restart.auto",
        /// Reports JetStream acknowledged as stored.
        ReportsPublished = "report.published",
        /// Report publishes that failed and were retried with the same id.
        ReportRetries = "report.retries",
        /// Reports given up on: progress skipped while the reporter was behind, lost at shutdown or past the backlog.
        ReportsDropped = "report.dropped",
        /// Orphaned processes reaped: descendants whose parent exited before them (a daemon a start script
        /// double-forked) are re-parented to `muster-agent` (PID 1 in a container, a child subreaper elsewhere),
        /// which collects their exit so none stays a zombie (`reaper`). Always 0 in `muster-swarm`.
        OrphansReaped = "process.orphans_reaped",
    }
}

/// The counters of one session, or, shared, of many.
pub type SessionStats = Counters<SessionCounter>;
