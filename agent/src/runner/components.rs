//! The host's components as the runner watches them: the set the server mapped here, status rounds (every
//! component checked, the changes reported together), and auto-restart (Ambari's recovery) of a component that
//! should run but is found dead. Pure: the runner spawns the checks and the restarts this decides on, and passes
//! in the time and whether the component has a command queued or running.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use muster_schemas::commands::{CommandSpec, ComponentRef, ComponentSpec, ComponentStatus, RoleCommand};
use tokio::time::Instant;

use crate::params::RestartLimits;
use crate::recovery::{Refusal, RestartLimiter};
use crate::status::StatusBook;

/// A status round in progress: every component's check, reported together when the last one is back.
#[derive(Debug)]
struct Round {
    /// Report every status (after a registration), not only the changes.
    full: bool,
    remaining: usize,
    changes: Vec<ComponentStatus>,
}

/// A status report the runner must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The statuses to report: all of them, or the changes.
    pub statuses: Vec<ComponentStatus>,
    /// Whether `statuses` is every component's (the server then forgets statuses not listed).
    pub full: bool,
}

/// What the end of a status round asks of the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundEnd {
    /// The round's report, if it has something to say.
    pub report: Option<StatusReport>,
    /// A round asked for while this one ran, to start now (`true` if a full one).
    pub next: Option<bool>,
}

/// What a status check's result asks of the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The status differs from the last one observed (worth a log line).
    pub changed: bool,
    /// A change to report at once: the check was not part of a round (a round reports its changes at its end).
    pub report: Option<ComponentStatus>,
    /// Auto-restarts of the component so far in this agent run.
    pub auto_restarts: u32,
    /// Whether to restart the component.
    pub restart: Restart,
}

/// The auto-restart decision for a component found not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// Nothing to do: it runs, should not run, has a command queued or running, was stopped by a task, has no
    /// start command, or auto-restart is switched off.
    No,
    /// Queue this start command; `auto_restarts` counts this restart.
    Start {
        /// The component's start command.
        spec: CommandSpec,
        /// Auto-restarts of the component in this agent run, this one included.
        auto_restarts: u32,
    },
    /// The limits refuse a restart now; `first` is set the first time since the component last ran, so the
    /// refusal is logged once as a warning, not at every check.
    Refused {
        /// Which limit refused.
        refusal: Refusal,
        /// First refusal since the component was last seen running.
        first: bool,
    },
}

/// The component set, status rounds and auto-restart limits of one host.
#[derive(Debug)]
pub struct Components {
    limits: RestartLimits,
    specs: BTreeMap<ComponentRef, ComponentSpec>,
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
}

impl Components {
    /// No components yet; restarts within `limits`.
    pub fn new(limits: RestartLimits) -> Self {
        Self {
            limits,
            specs: BTreeMap::new(),
            book: StatusBook::default(),
            limiters: HashMap::new(),
            refusal_logged: HashSet::new(),
            stopped_by_task: HashSet::new(),
            generation: HashMap::new(),
            round: None,
            next_round: None,
        }
    }

    /// Replaces the component set (a registration or a Configure: the server's word on `should_run`, which lifts
    /// every hold a task's STOP put on restarts). Returns how many components there are now.
    pub fn configure(&mut self, specs: Vec<ComponentSpec>) -> usize {
        self.specs = specs
            .into_iter()
            .map(|spec| (ComponentRef { service: spec.service.clone(), component: spec.component.clone() }, spec))
            .collect();
        let mapped: BTreeSet<ComponentRef> = self.specs.keys().cloned().collect();
        self.book.retain(&mapped);
        self.stopped_by_task.clear();
        self.specs.len()
    }

    /// A job of `component` starts: a status check running meanwhile may see it half done and is discarded.
    pub fn job_started(&mut self, component: &ComponentRef) {
        *self.generation.entry(component.clone()).or_default() += 1;
    }

    /// A task ran `command` on `component`: a STOP or UNINSTALL holds auto-restart off, a START or INSTALL lifts
    /// the hold.
    pub fn task_ended(&mut self, component: &ComponentRef, command: &RoleCommand) {
        match command {
            RoleCommand::Stop | RoleCommand::Uninstall => {
                self.stopped_by_task.insert(component.clone());
            }
            RoleCommand::Start | RoleCommand::Install => {
                self.stopped_by_task.remove(component);
            }
            _ => {}
        }
    }

    /// The status check of `component` (if it has one) and the generation the result must still match.
    pub fn status_check(&self, component: &ComponentRef) -> Option<(CommandSpec, u64)> {
        let spec = self.specs.get(component)?.status.clone()?;
        Some((spec, self.generation.get(component).copied().unwrap_or(0)))
    }

    /// Starts a round (`full`: report every status, not only changes) and returns the components to check: those
    /// with a status check and no command running (`running`). `None` while a round runs: this one is then held
    /// until that one ends ([`RoundEnd::next`]). An empty list means the round must be ended at once with
    /// [`Components::finish_round`].
    pub fn begin_round(&mut self, full: bool, running: impl Fn(&ComponentRef) -> bool) -> Option<Vec<ComponentRef>> {
        if self.round.is_some() {
            self.next_round = Some(self.next_round.unwrap_or(false) || full);
            return None;
        }
        let targets: Vec<ComponentRef> = self
            .specs
            .iter()
            .filter(|(c, spec)| spec.status.is_some() && !running(c))
            .map(|(c, _)| c.clone())
            .collect();
        self.round = Some(Round { full, remaining: targets.len(), changes: Vec::new() });
        Some(targets)
    }

    /// One check of the round is back (or was never started); the round's end when it was the last.
    pub fn round_check_done(&mut self) -> Option<RoundEnd> {
        let round = self.round.as_mut()?;
        round.remaining = round.remaining.saturating_sub(1);
        if round.remaining == 0 {
            return self.finish_round();
        }
        None
    }

    /// Ends the current round: what it reports, and the round held back meanwhile. `None` if no round runs.
    pub fn finish_round(&mut self) -> Option<RoundEnd> {
        let round = self.round.take()?;
        let report = if round.full {
            // A host with no components has nothing to say: the server needs no report to mark it HEALTHY (that is
            // the heartbeat's job), and in a registration storm of bare hosts it would be one fsync'd write each.
            let all = self.book.all();
            (!all.is_empty()).then_some(StatusReport { statuses: all, full: true })
        } else {
            (!round.changes.is_empty()).then_some(StatusReport { statuses: round.changes, full: false })
        };
        Some(RoundEnd { report, next: self.next_round.take() })
    }

    /// Takes the result of a status check started at `generation`: `None` if it is stale (a job of the component
    /// started meanwhile, or the component is no longer mapped). `busy` says whether a command of the component is
    /// queued or running; `now` drives the restart limits.
    pub fn observe(
        &mut self,
        component: &ComponentRef,
        generation: u64,
        running: bool,
        in_round: bool,
        busy: bool,
        now: Instant,
    ) -> Option<Observation> {
        let current = self.generation.get(component).copied().unwrap_or(0);
        if current != generation || !self.specs.contains_key(component) {
            return None;
        }
        let auto_restarts = self.limiters.get(component).map_or(0, RestartLimiter::lifetime);
        let change = self.book.observe(component, running, auto_restarts);
        let changed = change.is_some();
        let report = match (change, &mut self.round, in_round) {
            (Some(change), Some(round), true) => {
                round.changes.push(change);
                None
            }
            (change, _, _) => change,
        };
        let restart = if running {
            self.refusal_logged.remove(component);
            Restart::No
        } else {
            self.restart(component, busy, now)
        };
        Some(Observation { changed, report, auto_restarts, restart })
    }

    /// Auto-restart (Ambari's recovery): a component that should run, found not running, with nothing of it
    /// queued or running, is started again within the limits.
    fn restart(&mut self, component: &ComponentRef, busy: bool, now: Instant) -> Restart {
        let Some(spec) = self.specs.get(component) else { return Restart::No };
        if !spec.should_run || self.stopped_by_task.contains(component) || busy {
            return Restart::No;
        }
        let Some(start) = spec.start.clone() else { return Restart::No };
        let limits = self.limits;
        let limiter = self.limiters.entry(component.clone()).or_insert_with(|| RestartLimiter::new(limits));
        match limiter.acquire(now) {
            Ok(()) => {
                let auto_restarts = limiter.lifetime();
                self.refusal_logged.remove(component);
                Restart::Start { spec: start, auto_restarts }
            }
            Err(Refusal::Disabled) => Restart::No,
            Err(refusal) => Restart::Refused { refusal, first: self.refusal_logged.insert(component.clone()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use muster_schemas::commands::Category;

    fn comp(name: &str) -> ComponentRef {
        ComponentRef { service: "svc".into(), component: name.into() }
    }

    fn spec(argv: &str) -> CommandSpec {
        CommandSpec { argv: vec![argv.into()], env: Default::default(), timeout_ms: 1_000 }
    }

    fn daemon(name: &str, should_run: bool) -> ComponentSpec {
        ComponentSpec {
            service: "svc".into(),
            component: name.into(),
            category: Category::Daemon,
            status: Some(spec("status")),
            start: Some(spec("start")),
            should_run,
        }
    }

    #[test]
    fn a_round_asked_for_during_a_round_waits_for_its_end() {
        let mut c = Components::new(RestartLimits::default());
        c.configure(vec![daemon("a", false), daemon("b", false)]);
        assert_eq!(c.begin_round(false, |_| false), Some(vec![comp("a"), comp("b")]));
        assert_eq!(c.begin_round(true, |_| false), None);
        assert_eq!(c.begin_round(false, |_| false), None);
        let now = Instant::now();
        assert_eq!(c.observe(&comp("a"), 0, true, true, false, now).map(|o| o.report), Some(None), "held for the end");
        assert_eq!(c.round_check_done(), None);
        c.observe(&comp("b"), 0, false, true, false, now);
        let end = c.round_check_done().expect("the last check ends the round");
        let report = end.report.expect("two changes");
        assert_eq!((report.statuses.len(), report.full, end.next), (2, false, Some(true)));
    }

    #[test]
    fn a_check_that_overlapped_a_job_is_stale() {
        let mut c = Components::new(RestartLimits::default());
        c.configure(vec![daemon("a", true)]);
        let (_, generation) = c.status_check(&comp("a")).unwrap();
        c.job_started(&comp("a"));
        assert_eq!(c.observe(&comp("a"), generation, false, false, false, Instant::now()), None);
        assert_eq!(c.observe(&comp("x"), 0, false, false, false, Instant::now()), None, "not mapped");
    }

    #[test]
    fn restarts_follow_should_run_the_stop_hold_and_the_limits() {
        let limits = RestartLimits { max_per_window: 1, min_gap: Duration::ZERO, ..RestartLimits::default() };
        let mut c = Components::new(limits);
        c.configure(vec![daemon("a", true), daemon("b", false)]);
        let now = Instant::now();
        let restart =
            |c: &mut Components, name, busy| c.observe(&comp(name), 0, false, false, busy, now).unwrap().restart;
        assert_eq!(restart(&mut c, "b", false), Restart::No, "should not run");
        assert_eq!(restart(&mut c, "a", true), Restart::No, "a command of it is queued");
        c.task_ended(&comp("a"), &RoleCommand::Stop);
        assert_eq!(restart(&mut c, "a", false), Restart::No, "stopped by a task");
        c.configure(vec![daemon("a", true)]);
        assert_eq!(restart(&mut c, "a", false), Restart::Start { spec: spec("start"), auto_restarts: 1 });
        assert!(matches!(restart(&mut c, "a", false), Restart::Refused { first: true, .. }));
        assert!(matches!(restart(&mut c, "a", false), Restart::Refused { first: false, .. }));
    }
}
