//! The leader core's work: stacks and blueprints, operator requests → stages → tasks (Ambari's ActionScheduler),
//! dispatch, reports, cancellation, deadlines, and the component FSM they drive. Pure, like the rest of the core.

use std::collections::{BTreeMap, BTreeSet};

use muster_schemas::cluster::{
    host_component_key, BlueprintRecord, ComponentState, DesiredState, HostComponentRecord, RequestOptions,
    RequestRecord, StackRecord, StageRecord, TaskRecord, TaskStatus,
};
use muster_schemas::commands::{
    Category, CommandBody, CommandSpec, ComponentRef, ComponentSpec, Execution, Report, ReportBody, RequestId,
    RoleCommand, TaskId, TaskPhase, TaskReport,
};
use muster_schemas::events::{ComponentChanged, RequestChanged, TaskChanged};
use muster_schemas::{HostId, HostState, UnixMillis};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::{command, ApiCall, ApiFailure, ChangeEvent, Dirty, Effect, LeaderCore, Outgoing, Output};
use crate::fsm::component::{transition, ComponentEvent};
use crate::plan::{self, Action, PlannedStage, Target};
use crate::stack;

/// One term of a host selector.
type HostMatcher = Box<dyn Fn(&muster_schemas::HostRecord) -> bool>;

/// Attempts per task: a task whose host does not report within its timeout is cancelled and sent once more.
const MAX_ATTEMPTS: u32 = 2;
/// Default timeout of an ad-hoc run.
const DEFAULT_RUN_TIMEOUT_SECS: u64 = 60;

impl LeaderCore {
    // ---- operator calls ----------------------------------------------------------------------------------------

    pub(super) fn api(
        &mut self,
        call: ApiCall,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<serde_json::Value, ApiFailure> {
        match call {
            ApiCall::ApplyStack { source } => self.apply_stack(source, wall, out),
            ApiCall::ApplyBlueprint { source } => self.apply_blueprint(source, wall, out),
            ApiCall::Request(spec) => self.create_from_spec(spec, wall, out),
            ApiCall::Cancel { request } => self.cancel(request, wall, out),
        }
    }

    fn apply_stack(
        &mut self,
        source: String,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<serde_json::Value, ApiFailure> {
        let def = stack::parse_stack(&source).map_err(|e| ApiFailure::bad(format!("invalid stack: {e}")))?;
        let prev = self.stacks.get(&def.name);
        let components: Vec<String> = def.components().map(|(_, c)| c.name.clone()).collect();
        if prev.is_some_and(|p| p.def == def) {
            let version = prev.map_or(1, |p| p.version);
            return Ok(json!({"stack": def.name, "version": version, "changed": false, "components": components}));
        }
        let version = prev.map_or(1, |p| p.version + 1);
        let name = def.name.clone();
        let services: BTreeSet<String> = def.services.iter().map(|s| s.name.clone()).collect();
        self.stacks.insert(name.clone(), StackRecord { version, def, source, applied_at: wall });
        out.dirty.insert(Dirty::Stack(name.clone()));
        // Hosts running components of this stack get the new status and start commands.
        let hosts: BTreeSet<HostId> = self
            .components
            .values()
            .filter(|c| services.contains(&c.component.service))
            .map(|c| c.host.clone())
            .collect();
        self.reconfigure.extend(hosts);
        info!(stack = %name, version, "stack applied");
        Ok(json!({"stack": name, "version": version, "changed": true, "components": components}))
    }

    fn apply_blueprint(
        &mut self,
        source: String,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<serde_json::Value, ApiFailure> {
        let stacks = &self.stacks;
        let def = stack::parse_blueprint(&source, |n| stacks.get(n).map(|s| &s.def))
            .map_err(|e| ApiFailure::bad(format!("invalid blueprint: {e}")))?;
        let version = self.blueprints.get(&def.name).map_or(1, |b| b.version + 1);
        let name = def.name.clone();
        self.blueprints.insert(name.clone(), BlueprintRecord { version, def, source, applied_at: wall });
        out.dirty.insert(Dirty::Blueprint(name.clone()));
        let hosts: Vec<HostId> = self.hosts.keys().cloned().collect();
        let mut keys = Vec::new();
        for h in &hosts {
            let new = self.map_from_blueprints(h, wall, out);
            if !new.is_empty() {
                self.reconfigure.insert(h.clone());
            }
            keys.extend(new);
        }
        // Everything the blueprint maps should run (daemons) or be installed (clients), new or not.
        let all: Vec<String> = self.blueprint_keys(&name);
        for k in &all {
            let desired = self.blueprint_desired(k);
            self.set_desired(k, desired, out);
        }
        let request = self.reconcile(&all, &format!("apply blueprint {name}"), wall, out);
        Ok(json!({"blueprint": name, "version": version, "mapped": keys.len(), "request": request}))
    }

    fn blueprint_keys(&self, name: &str) -> Vec<String> {
        let Some(bp) = self.blueprints.get(name) else { return Vec::new() };
        let Some(st) = self.stacks.get(&bp.def.stack) else { return Vec::new() };
        let mut keys = Vec::new();
        for h in self.hosts.values() {
            for g in bp.def.host_groups.iter().filter(|g| stack::group_matches(g, h.id.as_str(), &h.labels)) {
                for c in &g.components {
                    if let Some((svc, _)) = st.def.component(c) {
                        let r = ComponentRef { service: svc.name.clone(), component: c.clone() };
                        keys.push(host_component_key(&h.id, &r));
                    }
                }
            }
        }
        keys
    }

    /// What a blueprint wants of a mapped component: daemons run, clients are installed.
    fn blueprint_desired(&self, key: &str) -> DesiredState {
        let client = self.components.get(key).and_then(|c| {
            let st = self.stack_of(&c.component.service)?;
            st.def.component(&c.component.component).map(|(_, d)| d.category == Category::Client)
        });
        if client == Some(true) {
            DesiredState::Installed
        } else {
            DesiredState::Started
        }
    }

    /// Maps `host` to the components of every blueprint group it matches; returns the keys that are new.
    pub(super) fn map_from_blueprints(&mut self, host: &HostId, wall: UnixMillis, out: &mut Output) -> Vec<String> {
        let Some(h) = self.hosts.get(host) else { return Vec::new() };
        let mut new = Vec::new();
        for bp in self.blueprints.values() {
            let Some(st) = self.stacks.get(&bp.def.stack) else { continue };
            for g in bp.def.host_groups.iter().filter(|g| stack::group_matches(g, host.as_str(), &h.labels)) {
                for c in &g.components {
                    let Some((svc, _)) = st.def.component(c) else { continue };
                    let r = ComponentRef { service: svc.name.clone(), component: c.clone() };
                    let key = host_component_key(host, &r);
                    if !self.components.contains_key(&key) && !new.iter().any(|(k, _): &(String, _)| *k == key) {
                        new.push((
                            key,
                            HostComponentRecord {
                                host: host.clone(),
                                component: r,
                                state: ComponentState::Init,
                                desired: if st.def.component(c).is_some_and(|(_, d)| d.category == Category::Client) {
                                    DesiredState::Installed
                                } else {
                                    DesiredState::Started
                                },
                                stack_version: st.version,
                                state_since: wall,
                                auto_restarts: 0,
                                auto_start: false,
                            },
                        ));
                    }
                }
            }
        }
        new.into_iter()
            .map(|(k, rec)| {
                self.components.insert(k.clone(), rec);
                out.dirty.insert(Dirty::Component(k.clone()));
                k
            })
            .collect()
    }

    /// Plans the tasks that close the gap between desired and current state of `keys` (lost hosts skipped).
    pub(super) fn reconcile(
        &mut self,
        keys: &[String],
        why: &str,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Option<RequestId> {
        let mut by_stack: BTreeMap<String, (Vec<Target>, Vec<Target>)> = BTreeMap::new();
        for k in keys {
            let Some(c) = self.components.get(k) else { continue };
            if !self.host_is_up(&c.host) {
                continue;
            }
            let Some(st) = self.stack_of(&c.component.service) else { continue };
            let t = Target { host: c.host.clone(), component: c.component.clone(), state: c.state };
            let entry = by_stack.entry(st.def.name.clone()).or_default();
            match c.desired {
                DesiredState::Started if c.state != ComponentState::Started => entry.0.push(t),
                DesiredState::Installed
                    if matches!(
                        c.state,
                        ComponentState::Init | ComponentState::InstallFailed | ComponentState::Uninstalled
                    ) =>
                {
                    entry.1.push(t)
                }
                _ => {}
            }
        }
        let mut stages = Vec::new();
        for (name, (start, install)) in by_stack {
            let Some(st) = self.stacks.get(&name) else { continue };
            stages.extend(plan::plan(&st.def, &Action::Install, &install, 0));
            stages.extend(plan::plan(&st.def, &Action::Start, &start, 0));
        }
        if stages.is_empty() {
            return None;
        }
        Some(self.create_request(why.to_string(), stages, RequestOptions::default(), wall, out))
    }

    fn create_from_spec(
        &mut self,
        spec: muster_schemas::api::RequestSpec,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<serde_json::Value, ApiFailure> {
        let options = RequestOptions {
            success_factor: spec.success_factor.unwrap_or(1.0),
            max_failures: spec.max_failures,
            batch: spec.batch,
        };
        if !(0.0..=1.0).contains(&options.success_factor) {
            return Err(ApiFailure::bad("success_factor must be between 0 and 1"));
        }
        let selected = self.select_hosts(spec.hosts.as_deref())?;
        let (up, lost): (Vec<HostId>, Vec<HostId>) = selected.into_iter().partition(|h| self.host_is_up(h));
        let skipped: Vec<String> = lost.iter().map(|h| h.to_string()).collect();
        let where_ = spec.hosts.clone().unwrap_or_else(|| "all hosts".into());
        let (description, stages) = if spec.action == "run" {
            if spec.argv.is_empty() || spec.argv[0].is_empty() {
                return Err(ApiFailure::bad("run needs a program: muster run --hosts SEL -- argv..."));
            }
            if up.is_empty() {
                return Err(ApiFailure::bad(format!("every host selected by {where_:?} is HEARTBEAT_LOST")));
            }
            let timeout = spec.timeout_secs.unwrap_or(DEFAULT_RUN_TIMEOUT_SECS).max(1);
            let cmd = CommandSpec { argv: spec.argv.clone(), env: BTreeMap::new(), timeout_ms: timeout * 1000 };
            (format!("RUN {} on {where_}", spec.argv.join(" ")), plan::plan_run(&up, &cmd, spec.batch as usize))
        } else {
            let action = parse_action(&spec.action)?;
            let target = spec.target.clone().ok_or_else(|| ApiFailure::bad("which service or component?"))?;
            let (stack_name, comps) = self.resolve_target(&target)?;
            let mut targets = Vec::new();
            for h in &up {
                for c in &comps {
                    if let Some(hc) = self.components.get(&host_component_key(h, c)) {
                        targets.push(Target { host: h.clone(), component: c.clone(), state: hc.state });
                    }
                }
            }
            if targets.is_empty() {
                return Err(ApiFailure::bad(format!(
                    "no host selected by {where_:?} has {target} (see muster components)"
                )));
            }
            let desired = match action {
                Action::Install => Some(DesiredState::Installed),
                Action::Start | Action::Restart => Some(DesiredState::Started),
                Action::Stop => Some(DesiredState::Installed),
                Action::Uninstall => Some(DesiredState::Uninstalled),
                Action::Custom(_) => None,
            };
            if let Some(d) = desired {
                let mut hosts = BTreeSet::new();
                for t in &targets {
                    let key = host_component_key(&t.host, &t.component);
                    let keep_started = d == DesiredState::Installed
                        && action == Action::Install
                        && self.components.get(&key).is_some_and(|c| c.desired == DesiredState::Started);
                    if !keep_started && self.set_desired(&key, d, out) {
                        hosts.insert(t.host.clone());
                    }
                }
                self.reconfigure.extend(hosts);
            }
            let st = &self.stacks[&stack_name].def;
            (format!("{} {target} on {where_}", action.verb()), plan::plan(st, &action, &targets, spec.batch as usize))
        };
        let tasks: usize = stages.iter().map(|s| s.tasks.len()).sum();
        let n_stages = stages.len();
        let id = self.create_request(description, stages, options, wall, out);
        Ok(json!({"request": id, "stages": n_stages, "tasks": tasks, "skipped_lost_hosts": skipped}))
    }

    /// The stack and components a target name (service or component) stands for.
    fn resolve_target(&self, target: &str) -> Result<(String, Vec<ComponentRef>), ApiFailure> {
        for st in self.stacks.values() {
            if let Some(svc) = st.def.services.iter().find(|s| s.name == target) {
                let comps = svc
                    .components
                    .iter()
                    .map(|c| ComponentRef { service: svc.name.clone(), component: c.name.clone() });
                return Ok((st.def.name.clone(), comps.collect()));
            }
            if let Some((svc, c)) = st.def.component(target) {
                return Ok((
                    st.def.name.clone(),
                    vec![ComponentRef { service: svc.name.clone(), component: c.name.clone() }],
                ));
            }
        }
        Err(ApiFailure::bad(format!("unknown service or component {target:?} (apply a stack that defines it)")))
    }

    /// Hosts matching a selector: comma-separated terms, any matching term selects (id glob, `label:k=v`,
    /// `state:STATE`). `None` or empty selects every host.
    fn select_hosts(&self, selector: Option<&str>) -> Result<Vec<HostId>, ApiFailure> {
        let sel = selector.unwrap_or("").trim();
        if self.hosts.is_empty() {
            return Err(ApiFailure::bad("no host is registered"));
        }
        let mut ids: Vec<HostId> = if sel.is_empty() {
            self.hosts.keys().cloned().collect()
        } else {
            let mut matchers: Vec<HostMatcher> = Vec::new();
            for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if let Some(l) = term.strip_prefix("label:") {
                    let (k, v) = l
                        .split_once('=')
                        .ok_or_else(|| ApiFailure::bad(format!("label term {term:?} needs key=value")))?;
                    let (k, v) = (k.to_string(), v.to_string());
                    matchers.push(Box::new(move |h| h.labels.get(&k) == Some(&v)));
                } else if let Some(s) = term.strip_prefix("state:") {
                    let s = s.to_ascii_uppercase();
                    const STATES: [&str; 5] =
                        ["INIT", "WAITING_FOR_HOST_STATUS_UPDATES", "HEALTHY", "UNHEALTHY", "HEARTBEAT_LOST"];
                    if !STATES.contains(&s.as_str()) {
                        return Err(ApiFailure::bad(format!("unknown host state {s:?}; one of {}", STATES.join(", "))));
                    }
                    matchers.push(Box::new(move |h| h.state.as_str() == s));
                } else {
                    let p = glob::Pattern::new(term)
                        .map_err(|e| ApiFailure::bad(format!("bad host pattern {term:?}: {e}")))?;
                    matchers.push(Box::new(move |h| p.matches(h.id.as_str())));
                }
            }
            self.hosts.values().filter(|h| matchers.iter().any(|m| m(h))).map(|h| h.id.clone()).collect()
        };
        if ids.is_empty() {
            return Err(ApiFailure::bad(format!("host selector {sel:?} matches no host")));
        }
        ids.sort();
        Ok(ids)
    }

    fn cancel(&mut self, id: RequestId, wall: UnixMillis, out: &mut Output) -> Result<serde_json::Value, ApiFailure> {
        let Some(req) = self.requests.get(&id) else {
            return Err(ApiFailure {
                code: 404,
                message: format!("no running request {id} (unknown or already finished)"),
            });
        };
        let open: Vec<TaskId> = req
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter().copied())
            .filter(|t| self.tasks.get(t).is_some_and(|t| !t.status.is_terminal()))
            .collect();
        // Finished first, so the aborts below do not move the request on (or end it as FAILED).
        self.finish_request(id, TaskStatus::Aborted, "cancelled by operator".into(), wall, out);
        for t in &open {
            self.abort_task(*t, "cancelled by operator", wall, out);
        }
        Ok(json!({"request": id, "aborted_tasks": open.len()}))
    }

    // ---- requests, stages, tasks -------------------------------------------------------------------------------

    fn create_request(
        &mut self,
        description: String,
        planned: Vec<PlannedStage>,
        options: RequestOptions,
        wall: UnixMillis,
        out: &mut Output,
    ) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        let mut stages = Vec::with_capacity(planned.len());
        for (si, ps) in planned.into_iter().enumerate() {
            let mut ids = Vec::with_capacity(ps.tasks.len());
            for pt in ps.tasks {
                let tid = self.next_task;
                self.next_task += 1;
                self.tasks.insert(
                    tid,
                    TaskRecord {
                        id: tid,
                        request: id,
                        stage: si as u32,
                        host: pt.host,
                        component: pt.component,
                        command: pt.command,
                        spec: pt.spec,
                        status: TaskStatus::Pending,
                        attempt: 0,
                        cmd_seq: 0,
                        queued_at: 0,
                        started_at: 0,
                        finished_at: 0,
                        exit_code: None,
                        stdout: String::new(),
                        stderr: String::new(),
                        detail: String::new(),
                    },
                );
                out.dirty.insert(Dirty::Task(tid));
                ids.push(tid);
            }
            self.open.insert((id, si as u32), ids.len());
            stages.push(StageRecord { name: ps.name, tasks: ids, status: TaskStatus::Pending });
        }
        info!(request = id, %description, stages = stages.len(), "request created");
        self.requests.insert(
            id,
            RequestRecord {
                id,
                description,
                status: TaskStatus::InProgress,
                stages,
                current_stage: 0,
                options,
                created_at: wall,
                finished_at: 0,
                detail: String::new(),
            },
        );
        out.dirty.insert(Dirty::Request(id));
        out.effects.push(Effect::Count("requests.created"));
        self.advance(id, wall, out);
        id
    }

    /// Re-dispatches the PENDING tasks of a request's running stage, then moves it on.
    pub(super) fn resume(&mut self, id: RequestId, wall: UnixMillis, out: &mut Output) {
        let Some(req) = self.requests.get(&id) else { return };
        let Some(stage) = req.stages.get(req.current_stage as usize).cloned() else {
            return self.advance(id, wall, out);
        };
        if stage.status == TaskStatus::InProgress {
            let status = |t: &TaskId| self.tasks.get(t).map(|t| (t.status, t.cmd_seq));
            let pending: Vec<TaskId> =
                stage.tasks.iter().copied().filter(|t| matches!(status(t), Some((TaskStatus::Pending, _)))).collect();
            // QUEUED but never recorded as stored: the previous leader died between committing and publishing (or
            // before recording where it published). Publish again under the same id: it lands once.
            let unsent: Vec<TaskId> =
                stage.tasks.iter().copied().filter(|t| matches!(status(t), Some((TaskStatus::Queued, 0)))).collect();
            for t in unsent {
                self.publish_attempt(t, out);
            }
            for t in pending {
                self.dispatch(t, wall, out);
            }
        }
        self.advance(id, wall, out);
    }

    /// Moves a request on as far as it can go: dispatches its current stage, judges finished stages.
    fn advance(&mut self, id: RequestId, wall: UnixMillis, out: &mut Output) {
        loop {
            let Some(req) = self.requests.get(&id) else { return };
            if req.status.is_terminal() {
                return;
            }
            let si = req.current_stage as usize;
            let Some(stage) = req.stages.get(si) else {
                let detail = if req.stages.is_empty() { "nothing to do".to_string() } else { String::new() };
                self.finish_request(id, TaskStatus::Completed, detail, wall, out);
                return;
            };
            if stage.status == TaskStatus::Pending {
                let task_ids = stage.tasks.clone();
                self.set_stage(id, si, TaskStatus::InProgress, out);
                for t in &task_ids {
                    self.dispatch(*t, wall, out);
                }
                // A task that ended at dispatch may already have moved (or ended) the request: look again.
                continue;
            }
            if self.open.get(&(id, si as u32)).is_some_and(|n| *n > 0) {
                return;
            }
            let task_ids = stage.tasks.clone();
            let statuses: Vec<TaskStatus> =
                task_ids.iter().filter_map(|t| self.tasks.get(t)).map(|t| t.status).collect();
            let unfinished = statuses.iter().filter(|s| !s.is_terminal()).count();
            if unfinished > 0 {
                // The counter and the records disagree: the records win (and it is logged: it is a bug).
                warn!(request = id, stage = si, unfinished, "open-task count out of step with the task records");
                self.open.insert((id, si as u32), unfinished);
                return;
            }
            let req = &self.requests[&id];
            let n = statuses.len();
            let failed: Vec<TaskId> = task_ids
                .iter()
                .copied()
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.status != TaskStatus::Completed))
                .collect();
            let allowed = n - (req.options.success_factor * n as f64).ceil() as usize;
            let failed_before: usize = req.stages[..si]
                .iter()
                .flat_map(|s| &s.tasks)
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.status == TaskStatus::SkippedFailed))
                .count();
            let tolerated =
                failed.len() <= allowed || failed_before + failed.len() <= req.options.max_failures as usize;
            if failed.is_empty() || tolerated {
                for t in &failed {
                    if let Some(task) = self.tasks.get_mut(t) {
                        if matches!(task.status, TaskStatus::Failed | TaskStatus::TimedOut) {
                            task.status = TaskStatus::SkippedFailed;
                            out.dirty.insert(Dirty::Task(*t));
                        }
                    }
                }
                self.set_stage(id, si, TaskStatus::Completed, out);
                if let Some(r) = self.requests.get_mut(&id) {
                    r.current_stage += 1;
                }
                continue;
            }
            let stage_status =
                if failed.iter().all(|t| self.tasks.get(t).is_some_and(|t| t.status == TaskStatus::TimedOut)) {
                    TaskStatus::TimedOut
                } else {
                    TaskStatus::Failed
                };
            self.set_stage(id, si, stage_status, out);
            let name = self.requests[&id].stages[si].name.clone();
            let rest: Vec<TaskId> = self.requests[&id].stages[si + 1..].iter().flat_map(|s| s.tasks.clone()).collect();
            let n_later = self.requests[&id].stages.len();
            for later in si + 1..n_later {
                self.set_stage(id, later, TaskStatus::Aborted, out);
            }
            // Finished first: aborting the rest re-enters `advance`, which must find the request over.
            let detail = format!("stage {} ({name}) failed: {} of {n} tasks did not complete", si + 1, failed.len());
            self.finish_request(id, stage_status, detail, wall, out);
            for t in rest {
                self.abort_task(t, "an earlier stage failed", wall, out);
            }
            return;
        }
    }

    fn set_stage(&mut self, id: RequestId, si: usize, status: TaskStatus, out: &mut Output) {
        if let Some(s) = self.requests.get_mut(&id).and_then(|r| r.stages.get_mut(si)) {
            s.status = status;
            out.dirty.insert(Dirty::Request(id));
        }
    }

    fn finish_request(
        &mut self,
        id: RequestId,
        status: TaskStatus,
        detail: String,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        let Some(r) = self.requests.get_mut(&id) else { return };
        r.status = status;
        r.finished_at = wall;
        r.detail = detail.clone();
        let stage = r.current_stage;
        out.dirty.insert(Dirty::Request(id));
        out.effects.push(Effect::Count(match status {
            TaskStatus::Completed => "requests.completed",
            TaskStatus::Aborted => "requests.aborted",
            _ => "requests.failed",
        }));
        info!(request = id, %status, %detail, "request finished");
        out.effects.push(Effect::Event(ChangeEvent::Request(RequestChanged {
            request: id,
            status,
            stage,
            at: wall,
            detail,
        })));
    }

    /// Sends a PENDING task to its host (or ends it at once when that cannot work).
    fn dispatch(&mut self, id: TaskId, wall: UnixMillis, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.status != TaskStatus::Pending {
            return;
        }
        if !self.host_is_up(&task.host) {
            let detail = format!("host {} is HEARTBEAT_LOST", task.host);
            self.end_task(id, TaskStatus::Aborted, detail, wall, out);
            return;
        }
        if let (Some(c), Some(ev)) = (task.component.clone(), ComponentEvent::queued(&task.command)) {
            let key = host_component_key(&task.host, &c);
            let cmd = task.command.clone();
            // Only the gap is worked on: a component already where the command would take it (a status check saw
            // it running, an operator started it by hand) completes without a command.
            let state = self.components.get(&key).map(|c| c.state);
            let already = matches!(
                (&cmd, state),
                (RoleCommand::Start, Some(ComponentState::Started))
                    | (RoleCommand::Stop, Some(ComponentState::Installed))
            );
            if let (true, Some(state)) = (already, state) {
                self.end_task(id, TaskStatus::Completed, format!("already {state}; nothing to do"), wall, out);
                return;
            }
            if let Err(e) = self.component_event(&key, ev, &format!("{cmd} queued"), wall, out) {
                self.end_task(id, TaskStatus::Failed, format!("cannot {cmd} {c}: it is {}", e.from), wall, out);
                return;
            }
        }
        self.send(id, wall, out);
    }

    /// Queues the next attempt of a task: its command is published once the batch is committed.
    fn send(&mut self, id: TaskId, wall: UnixMillis, out: &mut Output) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        task.attempt += 1;
        task.status = TaskStatus::Queued;
        task.queued_at = wall;
        task.cmd_seq = 0;
        out.dirty.insert(Dirty::Task(id));
        out.effects.push(Effect::Count("tasks.queued"));
        let ev = task_event(task, wall);
        out.effects.push(Effect::Event(ChangeEvent::Task(ev)));
        self.publish_attempt(id, out);
    }

    /// The command of a task's current attempt, to publish after commit.
    fn publish_attempt(&mut self, id: TaskId, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        let exec = Execution {
            task: task.id,
            attempt: task.attempt,
            request: task.request,
            component: task.component.clone(),
            command: task.command.clone(),
            spec: task.spec.clone(),
        };
        out.publish.push(Outgoing {
            host: task.host.clone(),
            msg_id: format!("t{}-a{}", task.id, task.attempt),
            command: command(&task.host, CommandBody::Execute(exec)),
            task: Some(task.id),
        });
    }

    /// Ends a task that is not finished: tells the agent to cancel it if it was sent, then records `status`.
    fn abort_task(&mut self, id: TaskId, why: &str, wall: UnixMillis, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        if task.status.is_terminal() {
            return;
        }
        if task.status != TaskStatus::Pending {
            self.cancel_attempt(id, out);
        }
        self.end_task(id, TaskStatus::Aborted, why.to_string(), wall, out);
    }

    fn cancel_attempt(&mut self, id: TaskId, out: &mut Output) {
        let Some(task) = self.tasks.get(&id) else { return };
        out.publish.push(Outgoing {
            host: task.host.clone(),
            msg_id: format!("c{}-a{}", task.id, task.attempt),
            command: command(&task.host, CommandBody::Cancel { task: task.id, attempt: task.attempt }),
            task: None,
        });
        let (host, seq) = (task.host.clone(), task.cmd_seq);
        if let (Some(c), true) = (self.cursors.get_mut(&host), seq > 0) {
            c.finish(seq);
            out.dirty.insert(Dirty::Cursor(host));
        }
    }

    /// Records a task's final status and what follows from it: component state, cursor, the request moving on.
    fn end_task(&mut self, id: TaskId, status: TaskStatus, detail: String, wall: UnixMillis, out: &mut Output) {
        let Some(task) = self.tasks.get_mut(&id) else { return };
        let was_sent = task.status != TaskStatus::Pending;
        if !task.status.is_terminal() {
            if let Some(n) = self.open.get_mut(&(task.request, task.stage)) {
                *n = n.saturating_sub(1);
            }
        }
        task.status = status;
        task.finished_at = wall;
        if !detail.is_empty() {
            task.detail = detail;
        }
        out.dirty.insert(Dirty::Task(id));
        let (host, seq, request) = (task.host.clone(), task.cmd_seq, task.request);
        let component = task.component.clone();
        let cmd = task.command.clone();
        let ev = task_event(task, wall);
        out.effects.push(Effect::Event(ChangeEvent::Task(ev)));
        if seq > 0 {
            if let Some(c) = self.cursors.get_mut(&host) {
                c.finish(seq);
                out.dirty.insert(Dirty::Cursor(host.clone()));
            }
        }
        let phase = match status {
            TaskStatus::Completed => TaskPhase::Completed,
            TaskStatus::TimedOut => TaskPhase::TimedOut,
            TaskStatus::Aborted => TaskPhase::Aborted,
            _ => TaskPhase::Failed,
        };
        // Only a sent command moved the component (INSTALLING, STARTING, ...); its end moves it back or on.
        if let (Some(c), Some(ev), true) = (component, ComponentEvent::finished(&cmd, phase), was_sent) {
            let key = host_component_key(&host, &c);
            let _ = self.component_event(&key, ev, &format!("{cmd} {status}"), wall, out);
        }
        self.advance(request, wall, out);
    }

    // ---- reports -----------------------------------------------------------------------------------------------

    pub(super) fn report(
        &mut self,
        report: Report,
        ack: Option<u64>,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        let host = report.host.clone();
        match report.body {
            ReportBody::Task(t) => self.task_report(host, t, ack, now, wall, out),
            // Status reports only come from the stream (early copies are final task reports).
            ReportBody::Status { statuses, .. } => {
                if !self.hosts.contains_key(&host) {
                    out.effects.push(Effect::Count("report.rejected.unknown_host"));
                    push_ack(out, ack, true);
                    return;
                }
                for s in statuses {
                    let key = host_component_key(&host, &s.component);
                    let Some(rec) = self.components.get_mut(&key) else {
                        out.effects.push(Effect::Count("report.status.unmapped_component"));
                        continue;
                    };
                    if rec.auto_restarts != s.auto_restarts {
                        rec.auto_restarts = s.auto_restarts;
                        out.dirty.insert(Dirty::Component(key.clone()));
                    }
                    let _ = self.component_event(
                        &key,
                        ComponentEvent::Status { running: s.running },
                        "status check",
                        wall,
                        out,
                    );
                }
                out.effects.push(Effect::Count("report.status"));
                push_ack(out, ack, false);
            }
        }
    }

    /// A task report. Its stored copy (`ack` set) is acked once its effect is committed; an early copy (`ack`
    /// `None`, final reports only) ends its task at once, or is ignored quietly when anything is off — the stored
    /// copy follows and gets the full checks, counters and warnings.
    fn task_report(
        &mut self,
        host: HostId,
        r: TaskReport,
        ack: Option<u64>,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        let early = ack.is_none();
        if early && !r.phase.is_final() {
            return;
        }
        if !early && self.early_finals.contains(r.task, r.attempt) {
            // The stored copy of an applied early final, or a progress report of that attempt still in the
            // stream's backlog behind it.
            out.effects.push(Effect::Count(if r.phase.is_final() { "report.duplicate" } else { "report.late" }));
            push_ack(out, ack, false);
            return;
        }
        let refuse = |out: &mut Output, counter: &'static str, why: String| {
            if early {
                debug!(%host, task = r.task, "early copy of a report ignored: {why}");
                out.effects.push(Effect::Count("report.early.ignored"));
            } else {
                warn!(%host, task = r.task, "report refused: {why}");
                out.effects.push(Effect::Count(counter));
                push_ack(out, ack, true);
            }
        };
        let Some(task) = self.tasks.get_mut(&r.task) else {
            return refuse(
                out,
                "report.rejected.unknown_task",
                format!("task {} is unknown or already finished", r.task),
            );
        };
        if task.host != host {
            return refuse(out, "report.rejected.wrong_host", format!("task {} belongs to host {}", r.task, task.host));
        }
        if task.status.is_terminal() {
            if !early && r.attempt == task.attempt {
                match final_status(r.phase) {
                    // The stored copy of a final report whose early copy a previous leader applied.
                    Some(status) if status == task.status => {
                        out.effects.push(Effect::Count("report.duplicate"));
                        push_ack(out, ack, false);
                        return;
                    }
                    // A progress report that was still in the stream's backlog when the final one was heard early.
                    None => {
                        out.effects.push(Effect::Count("report.late"));
                        push_ack(out, ack, false);
                        return;
                    }
                    Some(_) => {}
                }
            }
            // A cancelled task's agent confirms the abort: expected, quiet.
            let counter =
                if task.status == TaskStatus::Aborted { "report.late" } else { "report.rejected.finished_task" };
            return refuse(out, counter, format!("task {} is already {}", r.task, task.status));
        }
        if r.attempt != task.attempt {
            return refuse(
                out,
                "report.stale_attempt",
                format!("attempt {} of task {} was superseded by {}", r.attempt, r.task, task.attempt),
            );
        }
        if early {
            out.effects.push(Effect::Count("report.early"));
            self.early_finals.insert(r.task, r.attempt, now);
        } else {
            push_ack(out, ack, false);
            out.effects.push(Effect::Count("report.task"));
        }
        if r.started_at > 0 && task.started_at != r.started_at {
            task.started_at = r.started_at;
        }
        task.stdout = r.stdout;
        task.stderr = r.stderr;
        task.exit_code = r.exit_code;
        out.dirty.insert(Dirty::Task(r.task));
        let Some(status) = final_status(r.phase) else {
            if task.status == TaskStatus::Queued {
                task.status = TaskStatus::InProgress;
                let ev = task_event(task, wall);
                out.effects.push(Effect::Event(ChangeEvent::Task(ev)));
            }
            return;
        };
        let detail = match r.phase {
            TaskPhase::TimedOut => format!("killed after {} s", task.spec.timeout_ms / 1000),
            TaskPhase::Aborted => "aborted by the agent".into(),
            _ => String::new(),
        };
        let wall = r.finished_at.unwrap_or(wall);
        self.end_task(r.task, status, detail, wall, out);
    }

    // ---- deadlines ---------------------------------------------------------------------------------------------

    /// Tasks whose host has not reported within their timeout + grace: cancelled and re-sent once, then TIMEDOUT
    /// (ABORTED if the host is lost).
    pub(super) fn check_deadlines(&mut self, wall: UnixMillis, out: &mut Output) {
        let grace = self.timing.task_grace.as_millis() as u64;
        let late: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| matches!(t.status, TaskStatus::Queued | TaskStatus::InProgress))
            .filter(|t| wall > t.queued_at.max(self.took_over_wall) + t.spec.timeout_ms + grace)
            .map(|t| t.id)
            .collect();
        for id in late {
            let Some(t) = self.tasks.get(&id) else { continue };
            let (host, attempt, timeout) = (t.host.clone(), t.attempt, t.spec.timeout_ms / 1000);
            if !self.host_is_up(&host) {
                self.abort_task(id, &format!("host {host} was lost during the task"), wall, out);
            } else if attempt < MAX_ATTEMPTS {
                warn!(task = id, %host, attempt, "no result in time; cancelling and re-sending");
                self.cancel_attempt(id, out);
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.detail = format!("attempt {attempt} got no result within {timeout} s; re-sent");
                }
                out.effects.push(Effect::Count("tasks.retried"));
                self.send(id, wall, out);
            } else {
                self.cancel_attempt(id, out);
                let detail = format!("no result within {timeout} s after {attempt} attempts");
                self.end_task(id, TaskStatus::TimedOut, detail, wall, out);
            }
        }
    }

    // ---- components --------------------------------------------------------------------------------------------

    /// Steps a host component's FSM; an illegal event is logged, counted and returned.
    pub(super) fn component_event(
        &mut self,
        key: &str,
        event: ComponentEvent,
        reason: &str,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<(), crate::fsm::component::InvalidTransition> {
        let Some(rec) = self.components.get_mut(key) else { return Ok(()) };
        match transition(rec.state, event) {
            Ok(to) if to == rec.state => Ok(()),
            Ok(to) => {
                out.effects.push(Effect::Event(ChangeEvent::Component(ComponentChanged {
                    host: rec.host.clone(),
                    component: rec.component.to_string(),
                    from: rec.state,
                    to,
                    at: wall,
                    reason: reason.to_string(),
                })));
                rec.state = to;
                rec.state_since = wall;
                out.dirty.insert(Dirty::Component(key.to_string()));
                // Auto-restart covers what was started and then died, never what was not started yet, and stops
                // when it is stopped or uninstalled on purpose.
                let auto_start = match event {
                    ComponentEvent::Stop | ComponentEvent::Uninstall | ComponentEvent::Disable => false,
                    _ if to == ComponentState::Started && rec.desired == DesiredState::Started => true,
                    _ => rec.auto_start,
                };
                if auto_start != rec.auto_start {
                    rec.auto_start = auto_start;
                    let host = rec.host.clone();
                    self.reconfigure.insert(host);
                }
                Ok(())
            }
            Err(e) => {
                warn!(component = key, error = %e, "component event refused");
                out.effects.push(Effect::Count("fsm.illegal_transitions"));
                Err(e)
            }
        }
    }

    /// Sets a desired state; true if it changed.
    fn set_desired(&mut self, key: &str, desired: DesiredState, out: &mut Output) -> bool {
        match self.components.get_mut(key) {
            Some(c) if c.desired != desired => {
                c.desired = desired;
                if desired != DesiredState::Started {
                    c.auto_start = false;
                }
                out.dirty.insert(Dirty::Component(key.to_string()));
                true
            }
            _ => false,
        }
    }

    /// The keys of the components mapped to `host` (keys are `host/service/component`, so they are one range).
    pub(super) fn component_keys(&self, host: &HostId) -> Vec<String> {
        self.host_components(host).map(|(k, _)| k.clone()).collect()
    }

    fn host_components<'a>(&'a self, host: &HostId) -> impl Iterator<Item = (&'a String, &'a HostComponentRecord)> {
        let prefix = format!("{host}/");
        self.components.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// What an agent needs about the components mapped to `host`.
    pub(super) fn component_specs(&self, host: &HostId) -> Vec<ComponentSpec> {
        self.host_components(host)
            .filter_map(|(_, c)| {
                let st = self.stack_of(&c.component.service)?;
                let (_, def) = st.def.component(&c.component.component)?;
                Some(ComponentSpec {
                    service: c.component.service.clone(),
                    component: c.component.component.clone(),
                    category: def.category,
                    status: def.commands.get("status").cloned(),
                    start: def.commands.get("start").cloned().filter(|_| def.category == Category::Daemon),
                    should_run: c.desired == DesiredState::Started && c.auto_start,
                })
            })
            .collect()
    }

    /// Sends every host whose component set changed during the batch its new set, once per host.
    pub(super) fn flush_configures(&mut self, out: &mut Output) {
        for host in std::mem::take(&mut self.reconfigure) {
            self.configure(&host, out);
        }
    }

    /// Sends `host` its full component set (status checks, auto-restart).
    fn configure(&mut self, host: &HostId, out: &mut Output) {
        let components = self.component_specs(host);
        self.configure_seq += 1;
        out.publish.push(Outgoing {
            host: host.clone(),
            msg_id: format!("cfg-{host}-e{}-{}", self.epoch, self.configure_seq),
            command: command(host, CommandBody::Configure { components }),
            task: None,
        });
    }

    fn stack_of(&self, service: &str) -> Option<&StackRecord> {
        self.stacks.values().find(|s| s.def.services.iter().any(|x| x.name == service))
    }

    fn host_is_up(&self, host: &HostId) -> bool {
        self.hosts.get(host).is_some_and(|h| h.state != HostState::HeartbeatLost && h.state != HostState::Init)
    }
}

fn parse_action(a: &str) -> Result<Action, ApiFailure> {
    Ok(match a {
        "install" => Action::Install,
        "start" => Action::Start,
        "stop" => Action::Stop,
        "restart" => Action::Restart,
        "uninstall" => Action::Uninstall,
        other => match other.strip_prefix("custom:") {
            Some(name) if !name.is_empty() => Action::Custom(name.to_string()),
            _ => return Err(ApiFailure::bad(format!("unknown action {other:?}"))),
        },
    })
}

fn task_event(t: &TaskRecord, wall: UnixMillis) -> TaskChanged {
    let what = match &t.component {
        Some(c) => format!("{} {c}", t.command),
        None => format!("{} {}", t.command, t.spec.argv.join(" ")),
    };
    TaskChanged {
        task: t.id,
        request: t.request,
        host: t.host.clone(),
        what,
        status: t.status,
        attempt: t.attempt,
        at: wall,
    }
}

/// The status a final report ends its task with (`None` for progress).
fn final_status(phase: TaskPhase) -> Option<TaskStatus> {
    match phase {
        TaskPhase::InProgress => None,
        TaskPhase::Completed => Some(TaskStatus::Completed),
        TaskPhase::Failed => Some(TaskStatus::Failed),
        TaskPhase::TimedOut => Some(TaskStatus::TimedOut),
        TaskPhase::Aborted => Some(TaskStatus::Aborted),
    }
}

/// Acks the stored report behind `ack`, if there is one (`term`: refused, never to be redelivered).
fn push_ack(out: &mut Output, ack: Option<u64>, term: bool) {
    if let Some(token) = ack {
        out.effects.push(Effect::Ack { token, term });
    }
}
