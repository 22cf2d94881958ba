//! One task's run: its process through the [`Executor`], IN_PROGRESS reports while it runs, and its final
//! report. Each task is a future of its own, spawned by the runner; it shares only a [`TaskContext`].

use std::sync::Arc;
use std::time::Duration;

use muster_nats::unix_millis;
use muster_schemas::commands::{CommandSpec, ComponentRef, Execution, Report, ReportBody, TaskPhase, TaskReport};
use muster_schemas::ids::TaskAttempt;
use muster_schemas::{HostId, UnixMillis, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, Outcome, Stop};
use crate::journal::Journal;
use crate::output::OutputCapture;
use crate::stats::{SessionCounter, SessionStats};

/// What every task future of one runner shares.
#[derive(Debug)]
pub struct TaskContext {
    host: HostId,
    reports: mpsc::Sender<Box<Report>>,
    progress_interval: Duration,
    output_limit: usize,
    stats: SessionStats,
    journal: Option<Arc<Journal>>,
}

impl TaskContext {
    /// Tasks of `host` report into `reports` (progress every `progress_interval`, output kept up to
    /// `output_limit` bytes per stream) and count into `stats`.
    pub fn new(
        host: HostId,
        reports: mpsc::Sender<Box<Report>>,
        progress_interval: Duration,
        output_limit: usize,
        stats: SessionStats,
    ) -> Self {
        Self { host, reports, progress_interval, output_limit, stats, journal: None }
    }

    /// Records every task attempt in `journal` before its command starts ([`Journal`]).
    pub fn set_journal(&mut self, journal: Option<Arc<Journal>>) {
        self.journal = journal;
    }

    /// Queues an IN_PROGRESS report unless the reporter is behind: the next one carries all the output anyway.
    fn progress(&self, key: TaskAttempt, report_seq: u32, started_at: UnixMillis, output: &OutputCapture) {
        let (stdout, stderr) = output.text();
        let state =
            TaskState { phase: TaskPhase::InProgress, report_seq, started_at, finished_at: None, exit_code: None };
        if self.reports.try_send(Box::new(task_report(&self.host, key, state, stdout, stderr))).is_err() {
            self.stats.inc(SessionCounter::ReportsDropped);
            tracing::debug!(task = %key, report_seq, "reporter behind; progress report skipped");
        }
    }
}

/// Adds what every command may need to know about where it runs: `MUSTER_HOST` (several agents on one machine keep
/// separate state with it), `MUSTER_SERVICE`/`MUSTER_COMPONENT` and, for tasks, `MUSTER_TASK` and `MUSTER_ATTEMPT`
/// (the leader re-sends a task that went unreported as its next attempt). The stack's own env wins on a clash.
pub fn with_muster_env(
    spec: &mut CommandSpec,
    host: &HostId,
    component: Option<&ComponentRef>,
    task: Option<(u64, u32)>,
) {
    let mut vars = vec![("MUSTER_HOST", host.to_string())];
    if let Some(c) = component {
        vars.push(("MUSTER_SERVICE", c.service.clone()));
        vars.push(("MUSTER_COMPONENT", c.component.clone()));
    }
    if let Some((t, attempt)) = task {
        vars.push(("MUSTER_TASK", t.to_string()));
        vars.push(("MUSTER_ATTEMPT", attempt.to_string()));
    }
    for (k, v) in vars {
        spec.env.entry(k.to_string()).or_insert(v);
    }
}

/// How long a task runs before its first IN_PROGRESS report (or the progress interval, if shorter).
const FIRST_PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// Runs one task: IN_PROGRESS once it has run for a moment and every `progress_interval` with the output so far, then the final
/// report. A task that ended on the shutdown's SIGTERM, or was killed because the shutdown grace ran out, is not
/// reported.
pub async fn run_task<E: Executor>(
    executor: Arc<E>,
    execution: Execution,
    context: Arc<TaskContext>,
    stop: Stop,
    force_stop: CancellationToken,
) -> Outcome {
    let key = TaskAttempt { task: execution.task, attempt: execution.attempt };
    let started_at = unix_millis();
    let output = OutputCapture::new(context.output_limit);
    tracing::info!("started");
    // Progress reports sent so far. The first goes out only once the command has run for a moment: most commands
    // finish before that, and their final report alone says everything (half the fsync'd writes of a fan-out).
    let mut seq = 0;

    let timeout_ms = execution.spec.timeout_ms;
    let mut spec = execution.spec;
    with_muster_env(&mut spec, &context.host, execution.component.as_ref(), Some((execution.task, execution.attempt)));
    // On disk before the process exists: a run the journal does not show never happened.
    let unrecorded = match &context.journal {
        Some(journal) => journal.record(key, started_at).await.err().map(|e| {
            tracing::error!(journal = %journal.path().display(), error = %e, "execution not journaled; not run");
            format!("muster-agent: not run: cannot write the execution journal {}: {e}", journal.path().display())
        }),
        None => None,
    };
    let outcome = if let Some(why) = unrecorded {
        Outcome::SpawnFailed(why)
    } else {
        let run = executor.execute(spec, stop, output.clone());
        tokio::pin!(run);
        let interval = context.progress_interval;
        let mut tick = interval_at(Instant::now() + FIRST_PROGRESS_AFTER.min(interval), interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = tick.tick() => {
                    context.progress(key, seq, started_at, &output);
                    seq += 1;
                }
            }
        }
    };

    if outcome == Outcome::Killed && force_stop.is_cancelled() {
        tracing::info!("killed at shutdown; not reported (the server re-delivers it)");
        return outcome;
    }
    if outcome == Outcome::Terminated {
        tracing::info!("ended on the shutdown's SIGTERM; not reported (the server re-delivers it)");
        return outcome;
    }
    let (phase, exit_code) = outcome.phase();
    let (stdout, mut stderr) = output.text();
    let note = match &outcome {
        Outcome::SpawnFailed(error) => Some(error.clone()),
        Outcome::TimedOut => Some(format!("muster-agent: timed out after {timeout_ms} ms; killed its process group")),
        Outcome::Killed => Some("muster-agent: cancelled; killed its process group".to_owned()),
        _ => None,
    };
    if let Some(note) = note {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&note);
    }
    tracing::info!(?phase, exit_code, "finished");
    let report = task_report(
        &context.host,
        key,
        // After the last progress report: finals have their own `Nats-Msg-Id` (`-f`), the number only orders.
        TaskState { phase, report_seq: seq, started_at, finished_at: Some(unix_millis()), exit_code },
        stdout,
        stderr,
    );
    tokio::select! {
        biased;
        sent = context.reports.send(Box::new(report)) => if sent.is_err() {
            context.stats.inc(SessionCounter::ReportsDropped);
            tracing::warn!("the reporter has stopped; final report not sent");
        },
        () = force_stop.cancelled() => {
            context.stats.inc(SessionCounter::ReportsDropped);
            tracing::warn!("shutdown grace is over; final report not sent");
        }
    }
    outcome
}

/// The non-output fields of a task report.
#[derive(Debug, Clone, Copy)]
struct TaskState {
    phase: TaskPhase,
    report_seq: u32,
    started_at: UnixMillis,
    finished_at: Option<UnixMillis>,
    exit_code: Option<i32>,
}

fn task_report(host: &HostId, key: TaskAttempt, state: TaskState, stdout: String, stderr: String) -> Report {
    Report {
        schema: PROTOCOL_VERSION,
        host: host.clone(),
        sent_at: unix_millis(),
        body: ReportBody::Task(TaskReport {
            task: key.task,
            attempt: key.attempt,
            phase: state.phase,
            report_seq: state.report_seq,
            started_at: state.started_at,
            finished_at: state.finished_at,
            exit_code: state.exit_code,
            stdout,
            stderr,
        }),
    }
}

/// The final report of a task cancelled before it ever started.
pub fn aborted_before_start(host: &HostId, key: TaskAttempt) -> Report {
    let state = TaskState {
        phase: TaskPhase::Aborted,
        report_seq: 0,
        started_at: 0,
        finished_at: Some(unix_millis()),
        exit_code: None,
    };
    task_report(host, key, state, String::new(), "muster-agent: cancelled before it started".to_owned())
}
