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
//! Every decision is made by a pure part: the queue, the [`StatusBook`], the [`RestartLimiter`], the catch-up
//! plan; this module performs them. Shutdown starts nothing new, gives running commands `shutdown_grace` to
//! finish and report, then kills their process groups *without* a report: those commands are after the
//! cursor, so the server re-delivers them when the agent comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use muster_schemas::commands::{
    Command, CommandBody, CommandSpec, ComponentRef, ComponentSpec, ComponentStatus, Execution, Report, ReportBody,
    RoleCommand, TaskPhase, TaskReport,
};
use muster_schemas::limits::MAX_OUTPUT_BYTES;
use muster_schemas::{HostId, UnixMillis, PROTOCOL_VERSION};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::AgentConfig;
use crate::connection::Reconnects;
use crate::delivery::{CatchUp, CommandKey, SeenSet};
use crate::executor::{Executor, Outcome};
use crate::output::OutputCapture;
use crate::queue::{ActionQueue, Cancelled, JobId, TaskKey};
use crate::recovery::{Refusal, RestartLimiter, RestartLimits};
use crate::reporter::{Reporter, REPORT_QUEUE};
use crate::session::{now_millis, SessionParams, SessionStats};
use crate::status::StatusBook;

/// Default commands running at once (over all components).
pub const DEFAULT_MAX_PARALLEL: usize = 4;
/// Default interval of IN_PROGRESS reports while a command runs (Ambari: command reports every 5 s).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Default interval of status checks (Ambari sends component status every 20 s; checks here are cheap local
/// processes and only changes are reported, so twice as often).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default time running commands get to finish at shutdown: `docker stop`'s own default grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// How the command path behaves; from the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandParams {
    /// Commands running at once.
    pub max_parallel: usize,
    /// Interval of IN_PROGRESS reports.
    pub progress_interval: Duration,
    /// Interval of status checks.
    pub status_interval: Duration,
    /// Auto-restart limits.
    pub auto_restart: RestartLimits,
    /// Time running commands get at shutdown.
    pub shutdown_grace: Duration,
    /// Output kept per stream of a command.
    pub output_limit: usize,
}

impl Default for CommandParams {
    fn default() -> Self {
        Self {
            max_parallel: DEFAULT_MAX_PARALLEL,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            status_interval: DEFAULT_STATUS_INTERVAL,
            auto_restart: RestartLimits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            output_limit: MAX_OUTPUT_BYTES,
        }
    }
}

impl CommandParams {
    /// The parameters `config` asks for.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            max_parallel: config.max_parallel,
            progress_interval: config.progress_interval,
            status_interval: config.status_interval,
            auto_restart: config.auto_restart,
            shutdown_grace: config.shutdown_grace,
            output_limit: MAX_OUTPUT_BYTES,
        }
    }
}

/// What the session hands the runner. Commands are boxed: the channel allocates room for 32 inputs up front in
/// every session, and a command is 184 bytes inline (`muster-agent swarm` holds 100k sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerInput {
    /// A registration was accepted: these are the host's components; report all statuses.
    Registered {
        /// The components mapped to the host.
        components: Vec<ComponentSpec>,
    },
    /// One batch of commands read back from the stream.
    CatchUp(Box<CatchUp>),
    /// One live command.
    Live(Box<Command>),
}

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
    let reporter = Reporter::new(jetstream, &session.subjects, session.host.clone(), stats.clone(), reconnects);
    let runner = Runner::new(executor, session.host.clone(), session.agent_started_at, params, stats, reports);
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
    Task { job: JobId, lane: Option<ComponentRef>, key: TaskKey, command: RoleCommand },
    AutoStart { job: JobId, component: ComponentRef },
    Check { component: ComponentRef, generation: u64, in_round: bool },
}

/// A status round: every component's check, reported together when the last one is back.
#[derive(Debug)]
struct Round {
    full: bool,
    remaining: usize,
    changes: Vec<ComponentStatus>,
}

/// What every task future shares.
#[derive(Debug)]
struct TaskContext {
    host: HostId,
    reports: mpsc::Sender<Box<Report>>,
    progress_interval: Duration,
    output_limit: usize,
    stats: Arc<SessionStats>,
}

/// The command path's state and the shell around its pure parts. Public so tests and `muster-agent swarm` can
/// drive it with their own report channel and executor.
pub struct Runner<E> {
    executor: Arc<E>,
    params: CommandParams,
    host: HostId,
    agent_started_at: UnixMillis,
    stats: Arc<SessionStats>,
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
    components: BTreeMap<ComponentRef, ComponentSpec>,
    book: StatusBook,
    limiters: HashMap<ComponentRef, RestartLimiter>,
    /// Components that refused a restart since they were last seen running: refusals are logged once.
    refusal_logged: HashSet<ComponentRef>,
    /// Components stopped or uninstalled by a task: not restarted until the server's next word on `should_run`
    /// (a Configure or a registration), so the agent never fights an operator's STOP.
    stopped_by_task: HashSet<ComponentRef>,
    /// Bumped whenever a job of the component starts, so a status check that overlapped it is discarded.
    generation: HashMap<ComponentRef, u64>,
    round: Option<Round>,
    /// A round asked for while one was running (`Some(true)` if a full one).
    next_round: Option<bool>,
    check_slots: Arc<Semaphore>,
    /// Cancelled at shutdown: status checks are killed at once.
    checks_stop: CancellationToken,
    /// Cancelled when the shutdown grace is over: running commands are killed and not reported.
    force_stop: CancellationToken,
    status_reports: u64,
    shutting_down: bool,
}

impl<E: Executor> Runner<E> {
    /// A runner with no components and nothing queued, reporting into `reports`.
    pub fn new(
        executor: Arc<E>,
        host: HostId,
        agent_started_at: UnixMillis,
        params: CommandParams,
        stats: Arc<SessionStats>,
        reports: mpsc::Sender<Box<Report>>,
    ) -> Self {
        let task_context = Arc::new(TaskContext {
            host: host.clone(),
            reports: reports.clone(),
            progress_interval: params.progress_interval,
            output_limit: params.output_limit,
            stats: stats.clone(),
        });
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
            components: BTreeMap::new(),
            book: StatusBook::default(),
            limiters: HashMap::new(),
            refusal_logged: HashSet::new(),
            stopped_by_task: HashSet::new(),
            generation: HashMap::new(),
            round: None,
            next_round: None,
            check_slots: Arc::new(Semaphore::new(STATUS_CHECKS_PARALLEL)),
            checks_stop: CancellationToken::new(),
            force_stop: CancellationToken::new(),
            status_reports: 0,
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
        // Boxed: shutdown runs once, and its state would otherwise enlarge every idle runner (`muster-agent swarm`
        // holds 100k of them).
        Box::pin(self.shutdown()).await;
    }

    fn on_input(&mut self, input: RunnerInput) {
        match input {
            RunnerInput::Registered { components } => {
                self.configure(components);
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
        }
    }

    fn on_command(&mut self, command: Command) {
        match command.body {
            CommandBody::Execute(execution) => {
                let key = TaskKey { task: execution.task, attempt: execution.attempt };
                if !self.seen.insert(CommandKey::Execute(key)) || self.queue.contains(key) {
                    bump(&self.stats.duplicate_commands);
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
                    bump(&self.stats.duplicate_commands);
                    tracing::debug!(error = %e, "dropping a repeated command");
                }
            }
            CommandBody::Cancel { task, attempt } => {
                let key = TaskKey { task, attempt };
                if !self.seen.insert(CommandKey::Cancel(key)) {
                    bump(&self.stats.duplicate_commands);
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

    fn cancel(&mut self, key: TaskKey) {
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
    fn cancelled_in_catch_up(&mut self, key: TaskKey) {
        if self.seen.insert(CommandKey::Execute(key)) {
            self.seen.insert(CommandKey::Cancel(key));
            tracing::info!(task = %key, "cancelled before it was delivered");
            self.push_report(aborted_before_start(&self.host, key));
        } else if self.seen.insert(CommandKey::Cancel(key)) {
            // This agent run already has the execution (queued, running or done): an ordinary cancel.
            self.cancel(key);
        } else {
            bump(&self.stats.duplicate_commands);
        }
    }

    fn configure(&mut self, specs: Vec<ComponentSpec>) {
        self.components = specs
            .into_iter()
            .map(|spec| (ComponentRef { service: spec.service.clone(), component: spec.component.clone() }, spec))
            .collect();
        let mapped: BTreeSet<ComponentRef> = self.components.keys().cloned().collect();
        self.book.retain(&mapped);
        self.stopped_by_task.clear();
        tracing::debug!(components = self.components.len(), "component set replaced");
    }

    fn start_ready(&mut self) {
        if self.shutting_down {
            return;
        }
        for job in self.queue.start_ready() {
            if let Some(lane) = &job.lane {
                *self.generation.entry(lane.clone()).or_default() += 1;
            }
            let abort = self.force_stop.child_token();
            let executor = self.executor.clone();
            let (handle, spawned) = match job.payload {
                Work::Task(execution) => {
                    let key = TaskKey { task: execution.task, attempt: execution.attempt };
                    let spawned =
                        Spawned::Task { job: job.id, lane: job.lane, key, command: execution.command.clone() };
                    let context = self.task_context.clone();
                    let force_stop = self.force_stop.clone();
                    bump(&self.stats.tasks_started);
                    let span = tracing::info_span!("task", task = %key, command = %execution.command);
                    let run = run_task(executor, execution, context, abort.clone(), force_stop).instrument(span);
                    (self.jobs.spawn(run), spawned)
                }
                Work::AutoStart(component, mut spec) => {
                    with_muster_env(&mut spec, &self.host, Some(&component), None);
                    let output = OutputCapture::new(STATUS_OUTPUT_BYTES);
                    let run = {
                        let abort = abort.clone();
                        async move { executor.execute(spec, abort, output).await }
                    };
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
                bump(&self.stats.tasks_finished);
                if let Some(component) = lane {
                    match command {
                        RoleCommand::Stop | RoleCommand::Uninstall => {
                            self.stopped_by_task.insert(component.clone());
                        }
                        RoleCommand::Start | RoleCommand::Install => {
                            self.stopped_by_task.remove(&component);
                        }
                        _ => {}
                    }
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
            bump(&self.stats.illegal_transitions);
            tracing::error!(error = %e, "action queue out of step");
        }
    }

    fn request_round(&mut self, full: bool) {
        if self.shutting_down {
            return;
        }
        if self.round.is_some() {
            self.next_round = Some(self.next_round.unwrap_or(false) || full);
            return;
        }
        let targets: Vec<ComponentRef> = self
            .components
            .iter()
            .filter(|(c, spec)| spec.status.is_some() && !self.queue.is_running(c))
            .map(|(c, _)| c.clone())
            .collect();
        self.round = Some(Round { full, remaining: targets.len(), changes: Vec::new() });
        for component in &targets {
            self.check(component, true);
        }
        if targets.is_empty() {
            self.finish_round();
        }
    }

    fn round_check_done(&mut self) {
        let Some(round) = &mut self.round else { return };
        round.remaining = round.remaining.saturating_sub(1);
        if round.remaining == 0 {
            self.finish_round();
        }
    }

    fn finish_round(&mut self) {
        let Some(round) = self.round.take() else { return };
        if round.full {
            // A host with no components has nothing to say: the server needs no report to mark it HEALTHY (that is
            // the heartbeat's job), and in a registration storm of bare hosts it would be one fsync'd write each.
            let all = self.book.all();
            if !all.is_empty() {
                self.push_status(all, true);
            }
        } else if !round.changes.is_empty() {
            self.push_status(round.changes, false);
        }
        if let Some(full) = self.next_round.take() {
            self.request_round(full);
        }
    }

    /// Starts the status check of `component`, if it has one (and not during shutdown). A round check counts
    /// toward the current round.
    fn check(&mut self, component: &ComponentRef, in_round: bool) {
        if self.shutting_down {
            if in_round {
                self.round_check_done();
            }
            return;
        }
        let spec = self.components.get(component).and_then(|c| c.status.clone());
        let Some(mut spec) = spec else {
            if in_round {
                self.round_check_done();
            }
            return;
        };
        with_muster_env(&mut spec, &self.host, Some(component), None);
        let generation = self.generation.get(component).copied().unwrap_or(0);
        let executor = self.executor.clone();
        let slots = self.check_slots.clone();
        let kill = self.checks_stop.child_token();
        bump(&self.stats.status_checks);
        let handle = self.jobs.spawn(async move {
            let _slot: Option<OwnedSemaphorePermit> = slots.acquire_owned().await.ok();
            executor.execute(spec, kill, OutputCapture::new(STATUS_OUTPUT_BYTES)).await
        });
        self.spawned.insert(handle.id(), Spawned::Check { component: component.clone(), generation, in_round });
    }

    fn on_check(&mut self, component: &ComponentRef, generation: u64, outcome: &Outcome, in_round: bool) {
        let current = self.generation.get(component).copied().unwrap_or(0);
        if self.shutting_down || current != generation || !self.components.contains_key(component) {
            tracing::trace!(%component, "discarding a status check that overlapped a command");
            return;
        }
        let running = outcome.is_success();
        if !matches!(outcome, Outcome::Exited(_)) {
            tracing::debug!(%component, ?outcome, "status check did not exit by itself; counted as not running");
        }
        let restarts = self.limiters.get(component).map_or(0, RestartLimiter::lifetime);
        if let Some(change) = self.book.observe(component, running, restarts) {
            tracing::info!(%component, running, auto_restarts = restarts, "component status changed");
            match (&mut self.round, in_round) {
                (Some(round), true) => round.changes.push(change),
                _ => self.push_status(vec![change], false),
            }
        }
        if running {
            self.refusal_logged.remove(component);
        } else {
            self.consider_restart(component);
        }
    }

    /// Auto-restart (Ambari's recovery): a component that should run, found not running, with nothing of it
    /// queued or running, is started again within the limits.
    fn consider_restart(&mut self, component: &ComponentRef) {
        let Some(spec) = self.components.get(component) else { return };
        if self.shutting_down
            || !spec.should_run
            || self.stopped_by_task.contains(component)
            || self.queue.is_busy(component)
        {
            return;
        }
        let Some(start) = spec.start.clone() else { return };
        let limits = self.params.auto_restart;
        let limiter = self.limiters.entry(component.clone()).or_insert_with(|| RestartLimiter::new(limits));
        match limiter.acquire(Instant::now()) {
            Ok(()) => {
                bump(&self.stats.auto_restarts);
                let auto_restarts = limiter.lifetime();
                tracing::warn!(%component, auto_restarts, "component should run but is not running; restarting it");
                self.refusal_logged.remove(component);
                let work = Work::AutoStart(component.clone(), start);
                if let Err(e) = self.queue.push(Some(component.clone()), None, work) {
                    tracing::error!(error = %e, "cannot queue an auto-restart");
                }
            }
            Err(Refusal::Disabled) => {}
            Err(refusal) => {
                if self.refusal_logged.insert(component.clone()) {
                    tracing::warn!(%component, %refusal, "component should run but is not running; not restarting it");
                } else {
                    tracing::debug!(%component, %refusal, "still not restarting");
                }
            }
        }
    }

    fn push_status(&mut self, statuses: Vec<ComponentStatus>, full: bool) {
        self.status_reports += 1;
        let nonce = format!("{}-{}", self.agent_started_at, self.status_reports);
        let report = Report {
            schema: PROTOCOL_VERSION,
            host: self.host.clone(),
            sent_at: now_millis(),
            body: ReportBody::Status { statuses, full, nonce },
        };
        self.push_report(report);
    }

    fn push_report(&mut self, report: Report) {
        if self.outbox.len() >= MAX_OUTBOX {
            bump(&self.stats.reports_dropped);
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
            tracing::info!(running, grace = ?self.params.shutdown_grace, "waiting for running commands to finish");
        }
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

/// Adds what every command may need to know about where it runs: `MUSTER_HOST` (several agents on one machine keep
/// separate state with it), `MUSTER_SERVICE`/`MUSTER_COMPONENT` and, for tasks, `MUSTER_TASK`. The stack's own env
/// wins on a clash.
fn with_muster_env(spec: &mut CommandSpec, host: &HostId, component: Option<&ComponentRef>, task: Option<u64>) {
    let mut vars = vec![("MUSTER_HOST", host.to_string())];
    if let Some(c) = component {
        vars.push(("MUSTER_SERVICE", c.service.clone()));
        vars.push(("MUSTER_COMPONENT", c.component.clone()));
    }
    if let Some(t) = task {
        vars.push(("MUSTER_TASK", t.to_string()));
    }
    for (k, v) in vars {
        spec.env.entry(k.to_string()).or_insert(v);
    }
}

/// How long a task runs before its first IN_PROGRESS report (or the progress interval, if shorter).
const FIRST_PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// Runs one task: IN_PROGRESS once it has run for a moment and every `progress_interval` with the output so far, then the final
/// report. A task killed because the shutdown grace ran out is not reported.
async fn run_task<E: Executor>(
    executor: Arc<E>,
    execution: Execution,
    context: Arc<TaskContext>,
    abort: CancellationToken,
    force_stop: CancellationToken,
) -> Outcome {
    let key = TaskKey { task: execution.task, attempt: execution.attempt };
    let started_at = now_millis();
    let output = OutputCapture::new(context.output_limit);
    tracing::info!("started");
    // Progress reports sent so far. The first goes out only once the command has run for a moment: most commands
    // finish before that, and their final report alone says everything (half the fsync'd writes of a fan-out).
    let mut seq = 0;

    let timeout_ms = execution.spec.timeout_ms;
    let mut spec = execution.spec;
    with_muster_env(&mut spec, &context.host, execution.component.as_ref(), Some(execution.task));
    let run = executor.execute(spec, abort, output.clone());
    tokio::pin!(run);
    let interval = context.progress_interval;
    let mut tick = interval_at(Instant::now() + FIRST_PROGRESS_AFTER.min(interval), interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = tick.tick() => {
                context.progress(key, seq, started_at, &output);
                seq += 1;
            }
        }
    };

    if outcome == Outcome::Killed && force_stop.is_cancelled() {
        tracing::info!("killed at shutdown; not reported (the server re-delivers it)");
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
        TaskState { phase, report_seq: seq, started_at, finished_at: Some(now_millis()), exit_code },
        stdout,
        stderr,
    );
    tokio::select! {
        biased;
        sent = context.reports.send(Box::new(report)) => if sent.is_err() {
            bump(&context.stats.reports_dropped);
            tracing::warn!("the reporter has stopped; final report not sent");
        },
        () = force_stop.cancelled() => {
            bump(&context.stats.reports_dropped);
            tracing::warn!("shutdown grace is over; final report not sent");
        }
    }
    outcome
}

impl TaskContext {
    /// Queues an IN_PROGRESS report unless the reporter is behind: the next one carries all the output anyway.
    fn progress(&self, key: TaskKey, report_seq: u32, started_at: UnixMillis, output: &OutputCapture) {
        let (stdout, stderr) = output.text();
        let state =
            TaskState { phase: TaskPhase::InProgress, report_seq, started_at, finished_at: None, exit_code: None };
        if self.reports.try_send(Box::new(task_report(&self.host, key, state, stdout, stderr))).is_err() {
            bump(&self.stats.reports_dropped);
            tracing::debug!(task = %key, report_seq, "reporter behind; progress report skipped");
        }
    }
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

fn task_report(host: &HostId, key: TaskKey, state: TaskState, stdout: String, stderr: String) -> Report {
    Report {
        schema: PROTOCOL_VERSION,
        host: host.clone(),
        sent_at: now_millis(),
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
fn aborted_before_start(host: &HostId, key: TaskKey) -> Report {
    let state = TaskState {
        phase: TaskPhase::Aborted,
        report_seq: 0,
        started_at: 0,
        finished_at: Some(now_millis()),
        exit_code: None,
    };
    task_report(host, key, state, String::new(), "muster-agent: cancelled before it started".to_owned())
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use muster_schemas::commands::Category;

    use crate::delivery::plan_catch_up;

    /// Every await on the runner is bounded: with paused time this is virtual, so it only fires on a deadlock.
    const DEADLOCK: Duration = Duration::from_secs(3_600);

    /// An executor of built-in commands, so the runner is tested without processes: `ok`, `exit N`,
    /// `sleep MS`, `block` (until killed), `echo TEXT`, and `status F` / `start F` / `stop F` over named flags.
    #[derive(Debug, Default)]
    struct Fake {
        flags: Mutex<HashMap<String, bool>>,
        started: Mutex<Vec<String>>,
    }

    impl Fake {
        fn started(&self) -> Vec<String> {
            self.started.lock().unwrap().clone()
        }

        fn set(&self, flag: &str, value: bool) {
            self.flags.lock().unwrap().insert(flag.to_owned(), value);
        }

        fn flag(&self, flag: &str) -> bool {
            self.flags.lock().unwrap().get(flag).copied().unwrap_or(false)
        }
    }

    impl Executor for Fake {
        async fn execute(&self, spec: CommandSpec, kill: CancellationToken, output: OutputCapture) -> Outcome {
            self.started.lock().unwrap().push(spec.argv.join(" "));
            let arg = spec.argv.get(1).cloned().unwrap_or_default();
            let work = async {
                match spec.argv[0].as_str() {
                    "ok" => Outcome::Exited(0),
                    "exit" => Outcome::Exited(arg.parse().unwrap()),
                    "sleep" => {
                        tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
                        Outcome::Exited(0)
                    }
                    "block" => std::future::pending().await,
                    "echo" => {
                        output.stdout(arg.as_bytes());
                        Outcome::Exited(0)
                    }
                    "status" => Outcome::Exited(if self.flag(&arg) { 0 } else { 3 }),
                    "start" => {
                        self.set(&arg, true);
                        Outcome::Exited(0)
                    }
                    "stop" => {
                        self.set(&arg, false);
                        Outcome::Exited(0)
                    }
                    other => Outcome::SpawnFailed(format!("no such command {other}")),
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout(Duration::from_millis(spec.timeout_ms), work) => {
                    outcome.unwrap_or(Outcome::TimedOut)
                }
                () = kill.cancelled() => Outcome::Killed,
            }
        }
    }

    struct Harness {
        fake: Arc<Fake>,
        input: mpsc::Sender<RunnerInput>,
        reports: mpsc::Receiver<Box<Report>>,
        stop: CancellationToken,
        runner: tokio::task::JoinHandle<()>,
    }

    fn host() -> HostId {
        HostId::new("web-1").unwrap()
    }

    fn params() -> CommandParams {
        CommandParams {
            max_parallel: 4,
            progress_interval: Duration::from_secs(5),
            status_interval: Duration::from_secs(10),
            auto_restart: RestartLimits { min_gap: Duration::ZERO, ..RestartLimits::default() },
            shutdown_grace: Duration::from_secs(10),
            output_limit: 1024,
        }
    }

    fn start(params: CommandParams) -> Harness {
        let fake = Arc::new(Fake::default());
        let (input, input_rx) = mpsc::channel(RUNNER_INPUT_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let stop = CancellationToken::new();
        let runner = Runner::new(fake.clone(), host(), 1_000, params, Arc::default(), reports_tx);
        let runner = tokio::spawn(runner.run(input_rx, stop.clone()));
        Harness { fake, input, reports, stop, runner }
    }

    impl Harness {
        async fn send(&self, input: RunnerInput) {
            tokio::time::timeout(DEADLOCK, self.input.send(input)).await.expect("runner input full").unwrap();
        }

        async fn live(&self, body: CommandBody) {
            self.send(RunnerInput::Live(Box::new(Command { schema: PROTOCOL_VERSION, host: host(), body }))).await;
        }

        async fn report(&mut self) -> Report {
            *tokio::time::timeout(DEADLOCK, self.reports.recv()).await.expect("no report came").expect("runner gone")
        }

        /// The next task report (status reports are skipped).
        async fn task(&mut self) -> TaskReport {
            loop {
                if let ReportBody::Task(t) = self.report().await.body {
                    return t;
                }
            }
        }

        /// The next status report.
        async fn status(&mut self) -> (Vec<ComponentStatus>, bool) {
            loop {
                if let ReportBody::Status { statuses, full, .. } = self.report().await.body {
                    return (statuses, full);
                }
            }
        }

        /// Stops the runner and returns every report it still made.
        async fn stop(mut self) -> Vec<Report> {
            self.stop.cancel();
            tokio::time::timeout(DEADLOCK, self.runner).await.expect("shutdown hung").unwrap();
            let mut rest = Vec::new();
            while let Ok(r) = self.reports.try_recv() {
                rest.push(*r);
            }
            rest
        }
    }

    fn spec(argv: &str) -> CommandSpec {
        CommandSpec { argv: argv.split(' ').map(str::to_owned).collect(), env: BTreeMap::new(), timeout_ms: 60_000 }
    }

    fn comp(name: &str) -> ComponentRef {
        ComponentRef { service: "svc".into(), component: name.into() }
    }

    fn execute(task: u64, component: Option<&str>, argv: &str) -> CommandBody {
        CommandBody::Execute(Execution {
            task,
            attempt: 1,
            request: 1,
            component: component.map(comp),
            command: RoleCommand::Custom("TEST".into()),
            spec: spec(argv),
        })
    }

    fn execute_role(task: u64, component: &str, command: RoleCommand, argv: &str) -> CommandBody {
        CommandBody::Execute(Execution {
            task,
            attempt: 1,
            request: 1,
            component: Some(comp(component)),
            command,
            spec: spec(argv),
        })
    }

    fn daemon(name: &str, should_run: bool) -> ComponentSpec {
        ComponentSpec {
            service: "svc".into(),
            component: name.into(),
            category: Category::Daemon,
            status: Some(spec(&format!("status {name}"))),
            start: Some(spec(&format!("start {name}"))),
            should_run,
        }
    }

    fn phases(reports: &[TaskReport]) -> Vec<(u64, TaskPhase, u32)> {
        reports.iter().map(|t| (t.task, t.phase, t.report_seq)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_reports_start_progress_and_result() {
        let mut h = start(params());
        h.live(execute(1, None, "sleep 12000")).await;
        let mut reports = Vec::new();
        for _ in 0..4 {
            reports.push(h.task().await);
        }
        assert_eq!(
            phases(&reports),
            [
                (1, TaskPhase::InProgress, 0),
                (1, TaskPhase::InProgress, 1),
                (1, TaskPhase::InProgress, 2),
                (1, TaskPhase::Completed, 3)
            ]
        );
        let last = &reports[3];
        assert_eq!(last.exit_code, Some(0));
        assert!(last.started_at > 0 && last.finished_at.is_some());
        assert!(reports[0].finished_at.is_none());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn exit_codes_and_failures_become_phases() {
        let mut h = start(params());
        h.live(execute(1, None, "exit 3")).await;
        h.live(execute(2, None, "nonexistent")).await;
        let mut finals = Vec::new();
        while finals.len() < 2 {
            let t = h.task().await;
            if t.phase.is_final() {
                finals.push(t);
            }
        }
        finals.sort_by_key(|t| t.task);
        assert_eq!((finals[0].phase, finals[0].exit_code), (TaskPhase::Failed, Some(3)));
        assert_eq!((finals[1].phase, finals[1].exit_code), (TaskPhase::Failed, None));
        assert!(finals[1].stderr.contains("no such command"), "{:?}", finals[1].stderr);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_are_reported() {
        let mut h = start(params());
        let mut body = execute(1, None, "block");
        if let CommandBody::Execute(e) = &mut body {
            e.spec.timeout_ms = 1_000;
        }
        h.live(body).await;
        let t = loop {
            let t = h.task().await;
            if t.phase.is_final() {
                break t;
            }
        };
        assert_eq!((t.phase, t.exit_code), (TaskPhase::TimedOut, None));
        assert!(t.stderr.contains("timed out after 1000 ms"), "{:?}", t.stderr);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn commands_of_one_component_run_in_order_one_at_a_time() {
        let mut h = start(params());
        h.live(execute(1, Some("a"), "sleep 1000")).await;
        h.live(execute(2, Some("a"), "sleep 10")).await;
        h.live(execute(3, Some("b"), "sleep 10")).await;
        let mut seen = Vec::new();
        while seen.iter().filter(|(_, p, _): &&(u64, TaskPhase, u32)| p.is_final()).count() < 3 {
            let t = h.task().await;
            seen.push((t.task, t.phase, t.report_seq));
        }
        let pos = |task, phase| seen.iter().position(|(t, p, _)| *t == task && *p == phase).unwrap();
        // Task 2 (10 ms) finishes after task 1 (1 s): it ran only once task 1 was done. Task 3 (another component)
        // does not wait for task 1.
        assert!(pos(2, TaskPhase::Completed) > pos(1, TaskPhase::Completed), "{seen:?}");
        assert!(pos(3, TaskPhase::Completed) < pos(1, TaskPhase::Completed), "{seen:?}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_holds_back_ad_hoc_runs() {
        let mut h = start(CommandParams { max_parallel: 2, ..params() });
        for task in 1..=3 {
            h.live(execute(task, None, "block")).await;
        }
        let first = [h.task().await, h.task().await];
        assert_eq!(phases(&first), [(1, TaskPhase::InProgress, 0), (2, TaskPhase::InProgress, 0)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.fake.started().len(), 2, "the third run waits for a slot");
        h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
        let mut next = Vec::new();
        while next.len() < 2 {
            let t = h.task().await;
            if t.report_seq == 0 || t.phase.is_final() {
                next.push((t.task, t.phase));
            }
        }
        assert_eq!(next, [(1, TaskPhase::Aborted), (3, TaskPhase::InProgress)]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_of_a_queued_task_reports_aborted_without_running_it() {
        let mut h = start(params());
        h.live(execute(1, Some("a"), "block")).await;
        h.live(execute(2, Some("a"), "ok")).await;
        assert_eq!(h.task().await.phase, TaskPhase::InProgress);
        h.live(CommandBody::Cancel { task: 2, attempt: 1 }).await;
        let t = h.task().await;
        assert_eq!((t.task, t.phase, t.started_at, t.report_seq), (2, TaskPhase::Aborted, 0, 0));
        h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
        let t = loop {
            let t = h.task().await;
            if t.phase.is_final() {
                break t;
            }
        };
        assert_eq!((t.task, t.phase), (1, TaskPhase::Aborted));
        assert!(t.stderr.contains("cancelled"));
        assert_eq!(h.fake.started(), ["block"], "the cancelled task never ran");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_execution_after_its_cancel_is_aborted_not_run() {
        let mut h = start(params());
        h.live(CommandBody::Cancel { task: 1, attempt: 1 }).await;
        h.live(execute(1, None, "ok")).await;
        let t = h.task().await;
        assert_eq!((t.task, t.phase, t.started_at), (1, TaskPhase::Aborted, 0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.fake.started().is_empty());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_commands_run_once() {
        let mut h = start(params());
        h.live(execute(1, None, "sleep 10")).await;
        h.live(execute(1, None, "sleep 10")).await;
        let catch_up =
            vec![(5, Command { schema: PROTOCOL_VERSION, host: host(), body: execute(1, None, "sleep 10") })];
        h.send(RunnerInput::CatchUp(Box::new(plan_catch_up(catch_up, &Default::default())))).await;
        loop {
            if h.task().await.phase.is_final() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.fake.started(), ["sleep 10"]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_catch_up_cancel_aborts_without_running_or_kills_what_runs() {
        let mut h = start(params());
        // Task 2 already runs (it came live); task 1 is new. Both are cancelled within the catch-up.
        h.live(execute(2, None, "block")).await;
        assert_eq!(h.task().await.phase, TaskPhase::InProgress);
        let cmd = |body| Command { schema: PROTOCOL_VERSION, host: host(), body };
        let entries = vec![
            (1, cmd(execute(1, None, "ok"))),
            (2, cmd(execute(2, None, "block"))),
            (3, cmd(CommandBody::Cancel { task: 1, attempt: 1 })),
            (4, cmd(CommandBody::Cancel { task: 2, attempt: 1 })),
        ];
        h.send(RunnerInput::CatchUp(Box::new(plan_catch_up(entries, &Default::default())))).await;
        let mut finals = Vec::new();
        while finals.len() < 2 {
            let t = h.task().await;
            if t.phase.is_final() {
                finals.push((t.task, t.phase, t.started_at == 0));
            }
        }
        finals.sort_by_key(|(task, _, _)| *task);
        assert_eq!(finals, [(1, TaskPhase::Aborted, true), (2, TaskPhase::Aborted, false)]);
        assert_eq!(h.fake.started(), ["block"]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn registration_reports_all_statuses_then_only_changes() {
        let mut h = start(params());
        h.fake.set("a", true);
        let client = ComponentSpec { category: Category::Client, status: None, start: None, ..daemon("cli", false) };
        h.send(RunnerInput::Registered { components: vec![daemon("a", true), daemon("b", false), client] }).await;
        let (statuses, full) = h.status().await;
        assert!(full);
        let running: Vec<_> = statuses.iter().map(|s| (s.component.component.as_str(), s.running)).collect();
        assert_eq!(running, [("a", true), ("b", false)]);

        // No change: the next rounds report nothing; a change is reported alone.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(h.reports.try_recv().is_err(), "unchanged statuses were reported");
        h.fake.set("b", true);
        let (statuses, full) = h.status().await;
        assert!(!full);
        assert_eq!(
            statuses.iter().map(|s| (s.component.component.as_str(), s.running)).collect::<Vec<_>>(),
            [("b", true)]
        );

        // A second registration reports everything again.
        h.send(RunnerInput::Registered { components: vec![daemon("a", true), daemon("b", false)] }).await;
        let (statuses, full) = h.status().await;
        assert!(full && statuses.len() == 2);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn status_reports_have_distinct_nonces() {
        let mut h = start(params());
        h.send(RunnerInput::Registered { components: vec![daemon("a", false)] }).await;
        let first = h.report().await.msg_id();
        h.send(RunnerInput::Registered { components: vec![daemon("a", false)] }).await;
        let ids = [first, h.report().await.msg_id()];
        assert_eq!(ids, ["s-web-1-1000-1", "s-web-1-1000-2"]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_without_components_sends_no_status_report() {
        let mut h = start(params());
        h.send(RunnerInput::Registered { components: vec![] }).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(h.reports.try_recv().is_err(), "an empty status report was sent");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_component_that_should_run_is_restarted() {
        let mut h = start(params());
        h.send(RunnerInput::Registered { components: vec![daemon("a", true)] }).await;
        let (statuses, _) = h.status().await;
        assert_eq!((statuses[0].running, statuses[0].auto_restarts), (false, 0));
        // The restart runs `start a`, the re-check sees it running and reports the restart count.
        let (statuses, full) = h.status().await;
        assert!(!full);
        assert_eq!((statuses[0].running, statuses[0].auto_restarts), (true, 1));
        assert!(h.fake.started().contains(&"start a".to_owned()));
        // No task report for an auto-restart.
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(r) = h.reports.try_recv() {
            assert!(!matches!(r.body, ReportBody::Task(_)), "{r:?}");
        }
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn auto_restart_respects_the_limits_and_the_switch() {
        let limits = RestartLimits { max_per_window: 2, min_gap: Duration::ZERO, ..RestartLimits::default() };
        let h = start(CommandParams { auto_restart: limits, ..params() });
        // `start x` does not make `a` run: every check finds it dead.
        let mut a = daemon("a", true);
        a.start = Some(spec("start x"));
        h.send(RunnerInput::Registered { components: vec![a] }).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let restarts = h.fake.started().iter().filter(|s| *s == "start x").count();
        assert_eq!(restarts, 2, "two per window");
        h.stop().await;

        let h = start(CommandParams { auto_restart: RestartLimits { enabled: false, ..limits }, ..params() });
        h.send(RunnerInput::Registered { components: vec![daemon("a", true)] }).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!h.fake.started().contains(&"start a".to_owned()), "disabled");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_restart_while_a_command_of_the_component_is_queued_or_after_a_stop() {
        let mut h = start(params());
        h.fake.set("a", true);
        h.send(RunnerInput::Registered { components: vec![daemon("a", true)] }).await;
        h.status().await;
        h.live(execute_role(1, "a", RoleCommand::Stop, "stop a")).await;
        // The STOP's final report, then the immediate re-check reports "not running"...
        loop {
            if h.task().await.phase.is_final() {
                break;
            }
        }
        let (statuses, _) = h.status().await;
        assert!(!statuses[0].running);
        // ...and the agent does not fight the operator, even though should_run is still true.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!h.fake.started().contains(&"start a".to_owned()), "{:?}", h.fake.started());
        // The server's next word on should_run lifts the hold.
        h.live(CommandBody::Configure { components: vec![daemon("a", true)] }).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.fake.started().contains(&"start a".to_owned()), "{:?}", h.fake.started());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn status_checks_skip_a_component_whose_command_runs() {
        let mut h = start(params());
        h.send(RunnerInput::Registered { components: vec![daemon("a", false)] }).await;
        h.status().await;
        h.live(execute(1, Some("a"), "sleep 35000")).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let checks = h.fake.started().iter().filter(|s| *s == "status a").count();
        assert_eq!(checks, 1, "only the registration's check: {:?}", h.fake.started());
        tokio::time::sleep(Duration::from_secs(6)).await;
        let checks = h.fake.started().iter().filter(|s| *s == "status a").count();
        assert_eq!(checks, 2, "re-checked right after the command: {:?}", h.fake.started());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_commands_finish_within_the_grace_then_kills_without_report() {
        let mut h = start(CommandParams { shutdown_grace: Duration::from_secs(10), ..params() });
        h.live(execute(1, None, "sleep 3000")).await;
        h.live(execute(2, None, "block")).await;
        h.live(execute(3, Some("a"), "block")).await;
        h.live(execute(4, Some("a"), "ok")).await;
        for _ in 0..3 {
            assert_eq!(h.task().await.phase, TaskPhase::InProgress);
        }
        let started = Instant::now();
        let rest = h.stop().await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(11), "{elapsed:?}");
        let finals: Vec<_> = rest
            .iter()
            .filter_map(|r| match &r.body {
                ReportBody::Task(t) if t.phase.is_final() => Some((t.task, t.phase)),
                _ => None,
            })
            .collect();
        // Task 1 finished within the grace; 2 and 3 were killed unreported; 4 never started.
        assert_eq!(finals, [(1, TaskPhase::Completed)]);
        assert_eq!(h_started(&rest), 0);
    }

    fn h_started(reports: &[Report]) -> usize {
        reports.iter().filter(|r| matches!(&r.body, ReportBody::Task(t) if t.task == 4)).count()
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_is_immediate_when_idle() {
        let h = start(params());
        let started = Instant::now();
        assert!(h.stop().await.is_empty());
        assert!(started.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test]
    async fn real_processes_report_output_and_can_be_cancelled() {
        // The runner with the real executor: a short real-time test.
        let (input, input_rx) = mpsc::channel(RUNNER_INPUT_QUEUE);
        let (reports_tx, mut reports) = mpsc::channel(REPORT_QUEUE);
        let stop = CancellationToken::new();
        let runner = Runner::new(Arc::new(crate::ProcessExecutor), host(), 1, params(), Arc::default(), reports_tx);
        let runner = tokio::spawn(runner.run(input_rx, stop.clone()));
        let sh = |task, script: &str| {
            let mut body = execute(task, None, "x");
            if let CommandBody::Execute(e) = &mut body {
                e.spec.argv = vec!["/bin/sh".into(), "-c".into(), script.into()];
            }
            RunnerInput::Live(Box::new(Command { schema: PROTOCOL_VERSION, host: host(), body }))
        };
        input.send(sh(1, "echo out; echo err >&2; exit 2")).await.unwrap();
        input.send(sh(2, "sleep 100")).await.unwrap();
        let mut finals = HashMap::new();
        let mut cancelled = false;
        while finals.len() < 2 {
            let r = tokio::time::timeout(Duration::from_secs(20), reports.recv()).await.expect("no report").unwrap();
            let ReportBody::Task(t) = r.body else { continue };
            if t.task == 2 && t.phase == TaskPhase::InProgress && !cancelled {
                cancelled = true;
                input
                    .send(RunnerInput::Live(Box::new(Command {
                        schema: PROTOCOL_VERSION,
                        host: host(),
                        body: CommandBody::Cancel { task: 2, attempt: 1 },
                    })))
                    .await
                    .unwrap();
            }
            if t.phase.is_final() {
                finals.insert(t.task, t);
            }
        }
        let one = &finals[&1];
        assert_eq!(
            (one.phase, one.exit_code, one.stdout.as_str(), one.stderr.as_str()),
            (TaskPhase::Failed, Some(2), "out\n", "err\n")
        );
        assert_eq!(finals[&2].phase, TaskPhase::Aborted);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), runner).await.expect("shutdown hung").unwrap();
    }
}
