//! The server's counters, declared once with their dotted names and meanings: every rejected message, illegal
//! transition and commit is counted, and `muster stats` prints them by name (counters at zero are left out).

use muster_nats::counters::{Counters, Label};
use muster_schemas::messages::EnrollRefusal;
use muster_schemas::ErrorCode;

/// An enrollment refusal code as a counter label (`enroll.refused.<code>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefusalLabel(pub EnrollRefusal);

impl Label for RefusalLabel {
    const ALL: &'static [Self] = &{
        let mut all = [RefusalLabel(EnrollRefusal::Malformed); EnrollRefusal::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = RefusalLabel(EnrollRefusal::ALL[i]);
            i += 1;
        }
        all
    };

    fn label(self) -> &'static str {
        self.0.as_str()
    }
}

muster_nats::counters! {
    /// What a server counts.
    pub enum ServerCounter {
        /// Registrations accepted by the leader.
        RegAccepted = "reg.accepted",
        /// Registrations that repeated the one recorded (same agent process, nothing changed, no first heartbeat
        /// yet: its answer came too late), answered from the record without a commit.
        RegRepeated = "reg.repeated",
        /// Registrations refused, by error code (busy: admission control).
        RegRejected(ErrorCode) = "reg.rejected",
        /// Heartbeats stepped by the leader's core.
        HbReceived = "hb.received",
        /// Heartbeats refused, by error code (by Prep on every instance, by the leader's host FSM).
        HbRejected(ErrorCode) = "hb.rejected",
        /// Heartbeats whose arrival was recorded but that the busy leader core could not take.
        HbDeferred = "hb.deferred",
        /// Events a host or component FSM refused.
        FsmIllegalTransitions = "fsm.illegal_transitions",
        /// Hosts declared HEARTBEAT_LOST.
        HostsLost = "hosts.lost",
        /// Task reports applied from the stream.
        ReportTask = "report.task",
        /// Status reports applied.
        ReportStatus = "report.status",
        /// Statuses reported for a component not mapped to the host.
        ReportStatusUnmapped = "report.status.unmapped_component",
        /// Final reports applied from their early copy.
        ReportEarly = "report.early",
        /// Early copies left to the stored copy (already applied, or something about them is off).
        ReportEarlyIgnored = "report.early.ignored",
        /// Early copies dropped because the leader's queue was full (the stored copy decides).
        ReportEarlySkipped = "report.early.skipped",
        /// Stored copies of reports already applied, acked quietly.
        ReportDuplicate = "report.duplicate",
        /// Progress reports behind a final one, or confirmations of aborts, acked quietly.
        ReportLate = "report.late",
        /// Reports refused, by error code (Prep, or an unknown host).
        ReportRejected(ErrorCode) = "report.rejected",
        /// Reports for a task that is unknown or already forgotten.
        ReportUnknownTask = "report.rejected.unknown_task",
        /// Reports for a task of another host.
        ReportWrongHost = "report.rejected.wrong_host",
        /// Reports contradicting a task's final status.
        ReportFinishedTask = "report.rejected.finished_task",
        /// Reports for an attempt that was superseded.
        ReportStaleAttempt = "report.stale_attempt",
        /// Requests created (by operators and by reconciliation).
        RequestsCreated = "requests.created",
        /// Requests that ended COMPLETED (including those with nothing to do).
        RequestsCompleted = "requests.completed",
        /// Requests that ended ABORTED: cancelled by an operator.
        RequestsAborted = "requests.aborted",
        /// Requests failed or timed out.
        RequestsFailed = "requests.failed",
        /// Task attempts queued.
        TasksQueued = "tasks.queued",
        /// Tasks re-sent after their host did not report in time.
        TasksRetried = "tasks.retried",
        /// Commands stored in MUSTER_COMMANDS.
        CommandsPublished = "commands.published",
        /// Command publishes answered as duplicates still being proposed (sequence 0), asked again.
        CommandsDuplicatePending = "commands.duplicate_pending",
        /// Commands (or registration replies) an agent refused to act on and reported: unsigned, badly signed,
        /// untrusted key, for another host, expired, replayed or malformed (the reason is in the leader's log).
        CommandsRefusedByAgents = "commands.refused_by_agents",
        /// Catch-up replies with stored commands sent to agents (`<prefix>.catchup.<host>`, every instance).
        CatchUpServed = "catchup.served",
        /// Stored commands sent in catch-up replies.
        CatchUpCommands = "catchup.commands",
        /// Catch-up requests refused, by error code (malformed, too large, bad host id, another host or version;
        /// busy: too many in flight; internal: the stream could not be read).
        CatchUpRejected(ErrorCode) = "catchup.rejected",
        /// Stored commands too large for a catch-up reply, skipped (the agent would refuse them anyway).
        CatchUpOversized = "catchup.oversized",
        /// Txns the leader appended.
        TxnCommitted = "txn.committed",
        /// Txns this instance applied.
        TxnApplied = "txn.applied",
        /// Txns refused for an epoch older than one already applied.
        TxnRefusedStaleEpoch = "txn.refused_stale_epoch",
        /// Log entries this instance could not decode or that have a newer txn schema: its applier stops there.
        TxnUndecodable = "txn.undecodable",
        /// Parts of decisions dropped because their leader's term ended before their last part.
        TxnDroppedIncomplete = "txn.dropped_incomplete",
        /// Times the applier's consumer was recreated after a stall.
        TxnApplierRestarts = "txn.applier_restarts",
        /// Snapshots this instance stored (the leader, every `MUSTER_SNAPSHOT_EVERY` applied entries).
        SnapshotTaken = "snapshot.taken",
        /// Snapshots that failed.
        SnapshotFailed = "snapshot.failed",
        /// States restored from a snapshot.
        SnapshotRestored = "snapshot.restored",
        /// Snapshots not stored: the term ended, or the stored one already covers as much of the log.
        SnapshotSkipped = "snapshot.skipped",
        /// Batches with answers but no changes whose leadership was first proven by an empty fenced append.
        LeaderBarriers = "leader.barriers",
        /// `request.create` calls answered with the original reply of their idempotency key.
        RequestsRepeated = "requests.repeated",
        /// Leaderships that ended.
        LeaderStepDowns = "leader.step_downs",
        /// Claims whose epoch had to be raised above the lease's revision (the log held it already).
        LeaderEpochAboveLease = "leader.epoch_above_lease",
        /// Commits not acknowledged because a newer epoch was applied first (the leader was deposed).
        LeaderSuperseded = "leader.superseded",
        /// Lease attempts this voter skipped because a live instance announces an older txn schema.
        LeaderSchemaGate = "leader.schema_gate",
        /// Enrollment tokens recorded (`token.create`).
        EnrollTokensCreated = "enroll.tokens_created",
        /// Enrollments accepted (by policy auto, or by an operator).
        EnrollAccepted = "enroll.accepted",
        /// New enrollments held pending for an operator.
        EnrollPending = "enroll.pending",
        /// Enrollments rejected by an operator.
        EnrollRejected = "enroll.rejected",
        /// Enrollment requests refused, by code (docs/enrollment.md).
        EnrollRefused(RefusalLabel) = "enroll.refused",
        /// Enrollments refused because the host id is bound to another key (also in `enroll.refused.impersonation`).
        EnrollImpersonation = "enroll.impersonation",
        /// Messages NATS dropped because a subscription was too slow.
        NatsSlowConsumer = "nats.slow_consumer",
    }
}

/// The server's counters, shared by every task of the instance.
pub type Metrics = Counters<ServerCounter>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_under_the_dotted_names_muster_stats_prints() {
        let m = Metrics::default();
        m.inc(ServerCounter::ReportDuplicate);
        m.add(ServerCounter::ReportDuplicate, 2);
        m.inc(ServerCounter::HbRejected(ErrorCode::UnknownHost));
        m.inc(ServerCounter::ReportUnknownTask);
        assert_eq!(m.get(ServerCounter::ReportDuplicate), 3);
        assert_eq!(m.get(ServerCounter::TxnApplied), 0);
        let s = m.snapshot();
        assert_eq!(s.get("report.duplicate"), Some(&3));
        assert_eq!(s.get("hb.rejected.unknown_host"), Some(&1));
        assert_eq!(s.get("report.rejected.unknown_task"), Some(&1));
        assert_eq!(s.len(), 3, "counters at zero are left out: {s:?}");
    }
}
