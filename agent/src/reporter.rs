//! The result path: one owned task per session publishes reports through JetStream onto
//! `muster.report.<host>` (stream `MUSTER_REPORTS`), in the order they were queued.
//!
//! Each report carries `Nats-Msg-Id` = [`Report::msg_id`] and is retried with the same id until JetStream acks
//! it: a publish that timed out may still have been stored, and the stream's duplicate window then drops the
//! retry. A report is never given up on while the agent runs; only shutdown ends the retries.
//!
//! An ack that is merely late is waited for: when a fan-out to many hosts makes them all report at once, the stream
//! stores them one fsync at a time and the last acks take seconds to come; publishing again then would only add
//! duplicates for the stream to drop (measured: 68k extra publishes in a 100,000-host fan-out with a 5 s
//! timeout). An ack that can no longer come — the connection was lost, and with it the reply — is not waited
//! for: a reconnect retries at once.

use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::{HeaderMap, Subject};
use muster_nats::wire::header_map;
use muster_nats::Reconnects;
use muster_schemas::commands::{Report, ReportBody};
use muster_schemas::headers;
use muster_schemas::limits::MAX_REPORT_BYTES;
use muster_schemas::{encode, HostId, Subjects};
use rand::rngs::SmallRng;
use rand::SeedableRng as _;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::stats::{SessionCounter, SessionStats};

/// Reports queued for the reporter. Progress reports are dropped when it is full (the next one carries all the
/// output anyway); final and status reports wait. 256 is minutes of reports for a busy host and a few MiB at most.
pub const REPORT_QUEUE: usize = 256;

/// How long to wait for a JetStream ack before publishing again with the same id, unless NATS reconnects first.
/// A stored report is acked in milliseconds when the stream is idle (≈0.15 ms per fsync here), but a stream with
/// 100,000 reports queued takes ≈15 s to store the last one; half a minute only expires when the stream cannot
/// store (no quorum, or its server is gone while this connection stays up).
pub const REPORT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one attempt to store a report did not end in an ack.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("NATS reconnected while the ack was awaited; its reply is lost")]
    Reconnected,
}

/// Publishes one session's reports, one at a time, each until acked.
pub struct Reporter {
    jetstream: jetstream::Context,
    subject: Subject,
    stats: SessionStats,
    reconnects: Reconnects,
    rng: SmallRng,
}

impl Reporter {
    /// A reporter for `host` publishing through `jetstream` (a clone of a shared context is cheap; a new one
    /// spawns an ack task); `reconnects` watches the connection under it.
    pub fn new(
        mut jetstream: jetstream::Context,
        subjects: &Subjects,
        host: &HostId,
        stats: SessionStats,
        reconnects: Reconnects,
    ) -> Self {
        jetstream.set_timeout(REPORT_ACK_TIMEOUT);
        let subject = Subject::from(subjects.report(host));
        Self { jetstream, subject, stats, reconnects, rng: SmallRng::from_os_rng() }
    }

    /// Publishes every report from `reports` in order until the channel is closed and drained. Dropping the
    /// future stops it (shutdown); what is still queued is then lost, and the server re-delivers those tasks.
    pub async fn run(mut self, mut reports: mpsc::Receiver<Box<Report>>) {
        while let Some(report) = reports.recv().await {
            // Boxed: reports are occasional, and the publish-and-retry state would otherwise enlarge every idle
            // session (`muster-swarm` holds 100k of them).
            Box::pin(self.publish(*report)).await;
        }
    }

    async fn publish(&mut self, report: Report) {
        let Some(body) = fit(report.clone()) else {
            self.stats.inc(SessionCounter::ReportsDropped);
            tracing::error!(id = %report.msg_id(), "report over the size limit even without output; dropped");
            return;
        };
        let id = report.msg_id();
        let headers = header_map(headers::report(&report));
        let mut failures = 0u32;
        loop {
            match self.try_publish(&headers, &body, &id).await {
                Ok(ack) => {
                    self.stats.inc(SessionCounter::ReportsPublished);
                    tracing::trace!(%id, seq = ack.sequence, duplicate = ack.duplicate, "report stored");
                    if failures > 0 {
                        tracing::info!(%id, failures, "report stored after retrying");
                    }
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.stats.inc(SessionCounter::ReportRetries);
                    let delay = Backoff::JETSTREAM_RETRY.delay(failures, &mut self.rng);
                    if failures == 1 {
                        tracing::warn!(%id, error = %e, "cannot store a report; retrying with the same id");
                    } else {
                        tracing::debug!(%id, error = %e, failures, ?delay, "report still not stored");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_publish(&mut self, headers: &HeaderMap, body: &[u8], id: &str) -> Result<PublishAck, AttemptError> {
        // Only a reconnect after this publish loses its reply.
        self.reconnects.mark_seen();
        let publish = PublishMessage::build().payload(body.to_vec().into()).headers(headers.clone()).message_id(id);
        let ack = self.jetstream.send_publish(self.subject.clone(), publish).await?;
        tokio::select! {
            acked = ack => Ok(acked?),
            () = self.reconnects.reconnected() => Err(AttemptError::Reconnected),
        }
    }
}

/// Encodes a report within `MAX_REPORT_BYTES`, shortening a task's output if it would not fit (it always fits
/// when the output was captured with the default limit). `None` if even an empty output does not fit.
pub fn fit(mut report: Report) -> Option<Vec<u8>> {
    loop {
        let body = encode(&report);
        if body.len() <= MAX_REPORT_BYTES {
            return Some(body);
        }
        let ReportBody::Task(t) = &mut report.body else { return None };
        if t.stdout.is_empty() && t.stderr.is_empty() {
            return None;
        }
        for text in [&mut t.stdout, &mut t.stderr] {
            let mut keep = text.len() / 2;
            while !text.is_char_boundary(keep) {
                keep -= 1;
            }
            text.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::commands::{TaskPhase, TaskReport};
    use muster_schemas::PROTOCOL_VERSION;

    fn task_report(stdout: String) -> Report {
        Report {
            schema: PROTOCOL_VERSION,
            host: HostId::new("web-1").unwrap(),
            sent_at: 1,
            body: ReportBody::Task(TaskReport {
                task: 42,
                attempt: 2,
                phase: TaskPhase::Completed,
                report_seq: 3,
                started_at: 1,
                finished_at: Some(2),
                exit_code: Some(0),
                stdout,
                stderr: String::new(),
            }),
        }
    }

    #[test]
    fn oversized_output_is_shortened_to_fit() {
        let r = task_report("é".repeat(MAX_REPORT_BYTES));
        let body = fit(r).expect("fits once shortened");
        assert!(body.len() <= MAX_REPORT_BYTES);
        let small = task_report("ok".into());
        assert_eq!(fit(small.clone()).unwrap(), encode(&small));
    }
}
