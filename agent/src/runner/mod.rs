//! The command path's shell: one owned runner per session takes commands from [`crate::delivery`], queues them
//! in the [`ActionQueue`], runs them through an [`Executor`], reports their progress and results through the
//! [`Reporter`], runs the components' status checks, and restarts components that should run but do not.
//!
//! ```text
//! session ──RunnerInput──▶ Runner ──spawn──▶ job tasks (one per running command / status check)
//!                            │                   │ progress, final report
//!                            └── status reports ─┴──▶ Reporter ──JetStream──▶ muster.report.<host>
//! ```
//!
//! By concern:
//! - this module: the runner's loop, commands in (dedup, cancel), jobs spawned and joined, its own reports
//!   out, and the shutdown;
//! - `task`: one task's run, its IN_PROGRESS reports and its final report;
//! - `components`: the component set, status rounds and auto-restart decisions (pure).
//!
//! Every decision is made by a pure part: the queue, the component book, the restart limits, the catch-up plan;
//! this module performs them. Shutdown starts nothing new and forwards the agent's SIGTERM to running commands
//! (their process groups); a command that still exits 0 within `shutdown_grace` is reported, one that ends on the
//! signal is not, and the process groups still running when the grace is over are killed, also *without* a
//! report: those commands are after the cursor, so the server re-delivers them when the agent comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use muster_nats::unix_millis;
use muster_nats::Reconnects;
use muster_schemas::commands::{
    Command, CommandBody, CommandSpec, ComponentRef, ComponentSpec, ComponentStatus, Execution, Report, ReportBody,
    RoleCommand,
};
use muster_schemas::ids::{StatusNonce, TaskAttempt};
use muster_schemas::{HostId, UnixMillis, PROTOCOL_VERSION};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::executor::{Executor, Outcome, Stop};
use crate::intake::{CommandKey, RunnerInput, SeenSet};
use crate::journal::Journal;
use crate::output::OutputCapture;
use crate::params::{CommandParams, SessionParams};
use crate::queue::{ActionQueue, Cancelled, JobId};
use crate::reporter::{Reporter, REPORT_QUEUE};
use crate::stats::{SessionCounter, SessionStats};

mod components;
mod task;

use components::{Components, Restart, RoundEnd};
use task::{aborted_before_start, run_task, with_muster_env, TaskContext};

/// Status checks running at once: enough that a host with dozens of components checks them all within a
/// second or two, few enough that a round does not fork a burst of processes on a busy host.
pub const STATUS_CHECKS_PARALLEL: usize = 4;

/// Output kept of a status check: it is only logged, never reported.
pub const STATUS_OUTPUT_BYTES: usize = 4 * 1024;

/// Inputs queued from the session to the runner. Small: the session stops reading commands while it is full,
/// and unread commands wait in the NATS subscription instead.
pub const RUNNER_INPUT_QUEUE: usize = 64;

/// Reports the runner itself produces (status changes, ABORTED for tasks cancelled before they started) kept
/// while the reporter is behind. Reached only when JetStream has been unreachable for a long time; beyond it new
/// ones are dropped and counted (cancelled tasks are then re-delivered after a restart).
pub const MAX_OUTBOX: usize = 4_096;

/// Time the reporter gets after the shutdown grace to publish what is queued, before it is stopped. Inside
/// the 3 s the binary allows itself for its final flush.
pub const REPORT_FLUSH_ON_SHUTDOWN: Duration = Duration::from_secs(2);

/// Runs one session's command path until `stop` is cancelled and the shutdown is complete: the runner fed by
/// `input`, and the reporter publishing through `jetstream` (whose connection `reconnects` watches).
pub async fn run_command_path<E: Executor>(
    executor: Arc<E>,
    jetstream: jetstream::Context,
    reconnects: Reconnects,
    session: &SessionParams,
    input: mpsc::Receiver<RunnerInput>,
    stop: CancellationToken,
) {
    let params = session.commands;
    let stats = session.stats.clone();
    let (reports, queued) = mpsc::channel(REPORT_QUEUE);
    let reporter = Reporter::new(jetstream, &session.subjects, &session.host, stats.clone(), reconnects);
    let runner = Runner::new(executor, session.host.clone(), session.agent_started_at, params, stats, reports)
        .with_journal(session.exec_journal.as_deref().map(Journal::new));
    let reporting = async {
        tokio::select! {
            () = reporter.run(queued) => {}
            () = async {
                stop.cancelled().await;
                tokio::time::sleep(params.shutdown_grace + REPORT_FLUSH_ON_SHUTDOWN).await;
            } => tracing::warn!("stopping with reports unpublished; the server re-delivers their tasks"),
        }
    };
    tokio::join!(runner.run(input, stop.clone()), reporting);
}

/// What a queued job runs.
#[derive(Debug, Clone)]
enum Work {
    /// A task from the server.
    Task(Execution),
    /// The agent's own restart of a component that should run (not reported as a task).
    AutoStart(ComponentRef, CommandSpec),
}

/// What a spawned future is, keyed by its tokio task id so a panicking one is still accounted for.
#[derive(Debug, Clone)]
enum Spawned {
    Task { job: JobId, lane: Option<ComponentRef>, key: TaskAttempt, command: RoleCommand },
    AutoStart { job: JobId, component: ComponentRef },
    Check { component: ComponentRef, generation: u64, in_round: bool },
}

/// The command path's state and the shell around its pure parts. Public so tests and `muster-swarm` can
/// drive it with their own report channel and executor.
pub struct Runner<E> {
    executor: Arc<E>,
    params: CommandParams,
    host: HostId,
    agent_started_at: UnixMillis,
    stats: SessionStats,
    task_context: Arc<TaskContext>,
    /// Reports are boxed for the same reason as [`RunnerInput`]'s commands: a report is 144 bytes inline.
    reports: mpsc::Sender<Box<Report>>,
    /// Reports made by the runner itself, waiting for room in the reporter's queue (the runner never blocks).
    outbox: VecDeque<Box<Report>>,
    queue: ActionQueue<Work>,
    seen: SeenSet,
    jobs: JoinSet<Outcome>,
    spawned: HashMap<tokio::task::Id, Spawned>,
    /// Kill switches of running jobs, for cancels.
    aborts: HashMap<JobId, CancellationToken>,
    /// The component set, status rounds and auto-restart decisions.
    components: Components,
    check_slots: Arc<Semaphore>,
    /// Cancelled at shutdown: status checks are killed at once.
    checks_stop: CancellationToken,
    /// Cancelled at shutdown: running commands are asked to end (SIGTERM to their process groups).
    terminate: CancellationToken,
    /// Cancelled when the shutdown grace is over: running commands are killed and not reported.
    force_stop: CancellationToken,
    status_reports: u64,
    /// Refusal reports made so far in this run, for their nonces.
    refusal_reports: u64,
    shutting_down: bool,
}

impl<E: Executor> Runner<E> {
    /// Every task attempt recorded in `journal` before its command starts (see [`crate::journal`]). Set before
    /// the runner runs (no task holds its context yet).
    pub fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        let context = Arc::get_mut(&mut self.task_context);
        debug_assert!(context.is_some(), "with_journal after tasks started");
        if let Some(context) = context {
            context.set_journal(journal);
        }
        self
    }

    /// A runner with no components and nothing queued, reporting into `reports`.
    pub fn new(
        executor: Arc<E>,
        host: HostId,
        agent_started_at: UnixMillis,
        params: CommandParams,
        stats: SessionStats,
        reports: mpsc::Sender<Box<Report>>,
    ) -> Self {
        let task_context = Arc::new(TaskContext::new(
            host.clone(),
            reports.clone(),
            params.progress_interval,
            params.output_limit,
            stats.clone(),
        ));
        Self {
            executor,
            params,
            host,
            agent_started_at,
            stats,
            task_context,
            reports,
            outbox: VecDeque::new(),
            queue: ActionQueue::new(params.max_parallel),
            seen: SeenSet::default(),
            jobs: JoinSet::new(),
            spawned: HashMap::new(),
            aborts: HashMap::new(),
            components: Components::new(params.auto_restart),
            check_slots: Arc::new(Semaphore::new(STATUS_CHECKS_PARALLEL)),
            checks_stop: CancellationToken::new(),
            terminate: CancellationToken::new(),
            force_stop: CancellationToken::new(),
            status_reports: 0,
            refusal_reports: 0,
            shutting_down: false,
        }
    }

    /// Runs until `stop` is cancelled, then shuts down (see the module docs) and returns.
    pub async fn run(mut self, mut input: mpsc::Receiver<RunnerInput>, stop: CancellationToken) {
        let interval = self.params.status_interval;
        let mut status_tick = interval_at(Instant::now() + interval, interval);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(joined) = self.jobs.join_next_with_id() => self.on_joined(joined),
                permit = self.reports.clone().reserve_owned(), if !self.outbox.is_empty() => self.send_outbox(permit),
                input = input.recv(), if input_open => match input {
                    Some(input) => self.on_input(input),
                    None => input_open = false,
                },
                _ = status_tick.tick() => self.request_round(false),
            }
            self.start_ready();
        }
        drop(input);
        // Boxed: shutdown runs once, and its state would otherwise enlarge every idle runner (`muster-swarm`
        // holds 100k of them).
        Box::pin(self.shutdown()).await;
    }

    fn on_input(&mut self, input: RunnerInput) {
        match input {
            RunnerInput::Registered { components } => {
                if let Some(components) = components {
                    self.configure(components);
                }
                self.request_round(true);
            }
            RunnerInput::CatchUp(plan) => {
                for key in plan.cancelled {
                    self.cancelled_in_catch_up(key);
                }
                for command in plan.commands {
                    self.on_command(command);
                }
            }
            RunnerInput::Live(command) => self.on_command(*command),
            RunnerInput::Refused(mut refused) => {
                self.refusal_reports += 1;
                refused.nonce = StatusNonce { started_at: self.agent_started_at, n: self.refusal_reports }.to_string();
                let report = Report {
                    schema: PROTOCOL_VERSION,
                    host: self.host.clone(),
                    sent_at: unix_millis(),
                    body: ReportBody::Refused(*refused),
                };
                self.push_report(report);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command.body {
            CommandBody::Execute(execution) => {
                let key = TaskAttempt { task: execution.task, attempt: execution.attempt };
                if !self.seen.insert(CommandKey::Execute(key)) || self.queue.contains(key) {
                    self.stats.inc(SessionCounter::DuplicateCommands);
                    tracing::debug!(task = %key, "dropping a repeated command");
                    return;
                }
                if self.seen.contains(CommandKey::Cancel(key)) {
                    // Its cancel came first (an execution re-published after the cancel, e.g. by a new leader
                    // redoing effects): the server does not want this attempt to run.
                    tracing::info!(task = %key, "execution arrived after its cancel; not running it");
                    self.push_report(aborted_before_start(&self.host, key));
                    return;
                }
                tracing::debug!(task = %key, command = %execution.command, component = ?execution.component, "queued");
                let lane = execution.component.clone();
                if let Err(e) = self.queue.push(lane, Some(key), Work::Task(execution)) {
                    self.stats.inc(SessionCounter::DuplicateCommands);
                    tracing::debug!(error = %e, "dropping a repeated command");
                }
            }
            CommandBody::Cancel { task, attempt } => {
                let key = TaskAttempt { task, attempt };
                if !self.seen.insert(CommandKey::Cancel(key)) {
                    self.stats.inc(SessionCounter::DuplicateCommands);
                    return;
                }
                self.cancel(key);
            }
            CommandBody::Configure { components } => {
                self.configure(components);
                self.request_round(false);
            }
        }
    }

    fn cancel(&mut self, key: TaskAttempt) {
        match self.queue.cancel(key) {
            Cancelled::Dequeued(_) => {
                tracing::info!(task = %key, "cancelled before it started");
                self.push_report(aborted_before_start(&self.host, key));
            }
            Cancelled::Running(job) => {
                tracing::info!(task = %key, "cancelling: killing its process group");
                if let Some(abort) = self.aborts.get(&job) {
                    abort.cancel();
                }
            }
            Cancelled::NotFound => tracing::debug!(task = %key, "cancel of a task that is not queued or running"),
        }
    }

    /// An execution and its cancel, both read back in one catch-up batch.
    fn cancelled_in_catch_up(&mut self, key: TaskAttempt) {
        if self.seen.insert(CommandKey::Execute(key)) {
            self.seen.insert(CommandKey::Cancel(key));
            tracing::info!(task = %key, "cancelled before it was delivered");
            self.push_report(aborted_before_start(&self.host, key));
        } else if self.seen.insert(CommandKey::Cancel(key)) {
            // This agent run already has the execution (queued, running or done): an ordinary cancel.
            self.cancel(key);
        } else {
            self.stats.inc(SessionCounter::DuplicateCommands);
        }
    }

    fn configure(&mut self, specs: Vec<ComponentSpec>) {
        let components = self.components.configure(specs);
        tracing::debug!(components, "component set replaced");
    }

    fn start_ready(&mut self) {
        if self.shutting_down {
            return;
        }
        for job in self.queue.start_ready() {
            if let Some(lane) = &job.lane {
                self.components.job_started(lane);
            }
            let abort = self.force_stop.child_token();
            let stop = Stop { terminate: self.terminate.child_token(), kill: abort.clone() };
            let executor = self.executor.clone();
            let (handle, spawned) = match job.payload {
                Work::Task(execution) => {
                    let key = TaskAttempt { task: execution.task, attempt: execution.attempt };
                    let spawned =
                        Spawned::Task { job: job.id, lane: job.lane, key, command: execution.command.clone() };
                    let context = self.task_context.clone();
                    let force_stop = self.force_stop.clone();
                    self.stats.inc(SessionCounter::TasksStarted);
                    let span = tracing::info_span!("task", task = %key, command = %execution.command);
                    let run = run_task(executor, execution, context, stop, force_stop).instrument(span);
                    (self.jobs.spawn(run), spawned)
                }
                Work::AutoStart(component, mut spec) => {
                    with_muster_env(&mut spec, &self.host, Some(&component), None);
                    let output = OutputCapture::new(STATUS_OUTPUT_BYTES);
                    let run = async move { executor.execute(spec, stop, output).await };
                    (self.jobs.spawn(run), Spawned::AutoStart { job: job.id, component })
                }
            };
            self.aborts.insert(job.id, abort);
            self.spawned.insert(handle.id(), spawned);
        }
    }

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, Outcome), JoinError>) {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => {
                tracing::error!(error = %e, "a command task panicked");
                (e.id(), None)
            }
        };
        let Some(spawned) = self.spawned.remove(&id) else { return };
        match spawned {
            Spawned::Task { job, lane, key, command } => {
                self.job_finished(job);
                self.stats.inc(SessionCounter::TasksFinished);
                if let Some(component) = lane {
                    self.components.task_ended(&component, &command);
                    self.check(&component, false);
                }
                tracing::trace!(task = %key, "task future done");
            }
            Spawned::AutoStart { job, component } => {
                self.job_finished(job);
                match &outcome {
                    Some(o) if o.is_success() => tracing::info!(%component, "auto-restart command finished"),
                    Some(o) => tracing::warn!(%component, outcome = ?o, "auto-restart command failed"),
                    None => {}
                }
                self.check(&component, false);
            }
            Spawned::Check { component, generation, in_round } => {
                if let Some(outcome) = outcome {
                    self.on_check(&component, generation, &outcome, in_round);
                }
                if in_round {
                    self.round_check_done();
                }
            }
        }
    }

    fn job_finished(&mut self, job: JobId) {
        self.aborts.remove(&job);
        if let Err(e) = self.queue.finish(job) {
            self.stats.inc(SessionCounter::IllegalTransitions);
            tracing::error!(error = %e, "action queue out of step");
        }
    }

    fn request_round(&mut self, full: bool) {
        if self.shutting_down {
            return;
        }
        let queue = &self.queue;
        let Some(targets) = self.components.begin_round(full, |c| queue.is_running(c)) else { return };
        for component in &targets {
            self.check(component, true);
        }
        if targets.is_empty() {
            if let Some(end) = self.components.finish_round() {
                self.round_ended(end);
            }
        }
    }

    fn round_check_done(&mut self) {
        if let Some(end) = self.components.round_check_done() {
            self.round_ended(end);
        }
    }

    fn round_ended(&mut self, end: RoundEnd) {
        if let Some(report) = end.report {
            self.push_status(report.statuses, report.full);
        }
        if let Some(full) = end.next {
            self.request_round(full);
        }
    }

    /// Starts the status check of `component`, if it has one (and not during shutdown). A round check counts
    /// toward the current round.
    fn check(&mut self, component: &ComponentRef, in_round: bool) {
        let check = if self.shutting_down { None } else { self.components.status_check(component) };
        let Some((mut spec, generation)) = check else {
            if in_round {
                self.round_check_done();
            }
            return;
        };
        with_muster_env(&mut spec, &self.host, Some(component), None);
        let executor = self.executor.clone();
        let slots = self.check_slots.clone();
        let stop = Stop::kill_only(self.checks_stop.child_token());
        self.stats.inc(SessionCounter::StatusChecks);
        let handle = self.jobs.spawn(async move {
            let _slot: Option<OwnedSemaphorePermit> = slots.acquire_owned().await.ok();
            executor.execute(spec, stop, OutputCapture::new(STATUS_OUTPUT_BYTES)).await
        });
        self.spawned.insert(handle.id(), Spawned::Check { component: component.clone(), generation, in_round });
    }

    fn on_check(&mut self, component: &ComponentRef, generation: u64, outcome: &Outcome, in_round: bool) {
        let running = outcome.is_success();
        let busy = self.queue.is_busy(component);
        let observed = if self.shutting_down {
            None
        } else {
            self.components.observe(component, generation, running, in_round, busy, Instant::now())
        };
        let Some(observed) = observed else {
            tracing::trace!(%component, "discarding a status check that overlapped a command");
            return;
        };
        if !matches!(outcome, Outcome::Exited(_)) {
            tracing::debug!(%component, ?outcome, "status check did not exit by itself; counted as not running");
        }
        if observed.changed {
            let auto_restarts = observed.auto_restarts;
            tracing::info!(%component, running, auto_restarts, "component status changed");
        }
        if let Some(change) = observed.report {
            self.push_status(vec![change], false);
        }
        match observed.restart {
            Restart::No => {}
            Restart::Start { spec, auto_restarts } => {
                self.stats.inc(SessionCounter::AutoRestarts);
                tracing::warn!(%component, auto_restarts, "component should run but is not running; restarting it");
                let work = Work::AutoStart(component.clone(), spec);
                if let Err(e) = self.queue.push(Some(component.clone()), None, work) {
                    tracing::error!(error = %e, "cannot queue an auto-restart");
                }
            }
            Restart::Refused { refusal, first: true } => {
                tracing::warn!(%component, %refusal, "component should run but is not running; not restarting it");
            }
            Restart::Refused { refusal, first: false } => tracing::debug!(%component, %refusal, "still not restarting"),
        }
    }

    fn push_status(&mut self, statuses: Vec<ComponentStatus>, full: bool) {
        self.status_reports += 1;
        let nonce = StatusNonce { started_at: self.agent_started_at, n: self.status_reports }.to_string();
        let report = Report {
            schema: PROTOCOL_VERSION,
            host: self.host.clone(),
            sent_at: unix_millis(),
            body: ReportBody::Status { statuses, full, nonce },
        };
        self.push_report(report);
    }

    fn push_report(&mut self, report: Report) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.stats.inc(SessionCounter::ReportsDropped);
            tracing::warn!(id = %report.msg_id(), "report backlog full (JetStream unreachable?); dropping a report");
            return;
        }
        self.outbox.push_back(Box::new(report));
    }

    fn send_outbox(&mut self, permit: Result<mpsc::OwnedPermit<Box<Report>>, mpsc::error::SendError<()>>) {
        match permit {
            Ok(permit) => {
                if let Some(report) = self.outbox.pop_front() {
                    permit.send(report);
                }
            }
            Err(_) => {
                tracing::debug!(dropped = self.outbox.len(), "the reporter has stopped");
                self.outbox.clear();
            }
        }
    }

    async fn shutdown(mut self) {
        self.shutting_down = true;
        self.checks_stop.cancel();
        let not_started = self.queue.drain_pending();
        if !not_started.is_empty() {
            tracing::info!(count = not_started.len(), "not starting queued commands; the server re-delivers them");
        }
        let running = self.queue.running_len();
        if running > 0 {
            tracing::info!(
                running,
                grace = ?self.params.shutdown_grace,
                "forwarding SIGTERM to running commands; waiting for them to end"
            );
        }
        self.terminate.cancel();
        let grace_end = Instant::now() + self.params.shutdown_grace;
        let mut forced = false;
        while !self.jobs.is_empty() {
            tokio::select! {
                biased;
                Some(joined) = self.jobs.join_next_with_id() => self.on_joined(joined),
                permit = self.reports.clone().reserve_owned(), if !self.outbox.is_empty() => self.send_outbox(permit),
                () = sleep_until(grace_end), if !forced => {
                    forced = true;
                    let running = self.queue.running_len();
                    if running > 0 {
                        tracing::warn!(running, "shutdown grace is over: killing commands, unreported (re-delivered)");
                    }
                    self.force_stop.cancel();
                }
            }
        }
        while let Some(report) = self.outbox.pop_front() {
            if self.reports.send(report).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
