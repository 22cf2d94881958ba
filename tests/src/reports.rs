//! Reports as an agent sends them, for tests that forge them: MessagePack [`Report`]s published through JetStream
//! on `muster.report.<host>` (stream `MUSTER_REPORTS`) with an agent's headers and `Nats-Msg-Id`
//! [`Report::msg_id`], so a refusal can only be caused by what the report says.

use anyhow::Context;
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use muster_nats::unix_millis;
use muster_nats::wire::header_map;
use muster_schemas::commands::{Report, ReportBody, TaskId, TaskPhase, TaskReport};
use muster_schemas::headers::{self, MessageKind};
use muster_schemas::{encode, HostId, Subjects, PROTOCOL_VERSION};

use crate::wait::within;

/// Bound on one publish and its ack (milliseconds when nats-server is up).
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A task report from `host` for `task`/`attempt` in `phase`: exit 0 with output `stdout` when final.
pub fn task_report(host: &str, task: TaskId, attempt: u32, phase: TaskPhase, report_seq: u32, stdout: &str) -> Report {
    let now = unix_millis();
    let last = phase.is_final();
    Report {
        schema: PROTOCOL_VERSION,
        host: HostId::new(host).expect("a valid host id"),
        sent_at: now,
        body: ReportBody::Task(TaskReport {
            task,
            attempt,
            phase,
            report_seq,
            started_at: now,
            finished_at: last.then_some(now),
            exit_code: last.then_some(0),
            stdout: stdout.to_string(),
            stderr: String::new(),
        }),
    }
}

/// Publishes `report` on `muster.report.<subject_host>` as an agent would; returns JetStream's ack (which says
/// whether the stream dropped it as a duplicate of an earlier `Nats-Msg-Id`).
pub async fn publish_report(
    js: &jetstream::Context,
    subject_host: &str,
    report: &Report,
) -> anyhow::Result<PublishAck> {
    publish_raw(js, subject_host, Bytes::from(encode(report)), &report.msg_id()).await
}

/// Publishes `body` (anything, e.g. garbage) on `muster.report.<subject_host>` with message id `msg_id`.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject_host: &str,
    body: Bytes,
    msg_id: &str,
) -> anyhow::Result<PublishAck> {
    let subject = Subjects::default().report(&HostId::new(subject_host)?);
    // The headers of the subject's host, whatever the body claims: a refusal must come from the body alone.
    let mut set = headers::message(MessageKind::Report, subject_host);
    set.push((headers::MSG_ID, msg_id.to_owned()));
    let h = header_map(set);
    let what = format!("the JetStream ack of report {msg_id} on {subject}");
    let ack = within(PUBLISH_TIMEOUT, &what, async {
        let pending = js.publish_with_headers(subject.clone(), h, body).await?;
        pending.await.map_err(anyhow::Error::from)
    })
    .await?;
    ack.with_context(|| format!("publishing report {msg_id} on {subject}"))
}
