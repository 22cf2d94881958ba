//! The leader's pure core: registrations, heartbeats, reports, operator calls and ticks go in; the records to write,
//! the commands to publish and the effects to perform come out. No I/O and no clock of its own (the shell passes
//! `now` and `wall`), so it is unit-tested directly.
//!
//! # The contract
//!
//! A batch is any number of [`LeaderCore::step`] calls followed by one [`LeaderCore::ready`], which returns a
//! [`Ready`]: the txn ops (the id reservation first when one is due, then every record the batch touched), the
//! effects, the commands to store, and the hosts whose arrival times the core needs. Nothing else leaves the core,
//! and nothing about a batch is left to the caller's memory: `ready` has already queued the Configure commands the
//! batch calls for, reserved the ids its commands carry, and forgotten the requests its ops finish writing.
//! [`crate::leader::driver::drive`] performs a `Ready` in the one order that is safe (commit, then effects, then
//! commands); the real shell and the unit tests both go through it.
//!
//! What the shell learns later comes back as an input: the stream sequences of stored commands
//! ([`Input::Delivered`]) and the last arrivals of suspected hosts ([`Input::Heard`]). If committing fails the
//! leader steps down and this core is dropped: the next leader starts again from the log, so the core never needs
//! to undo anything.
//!
//! # Modules, each owning its state
//!
//! - [`super::hosts`] — host records, registration, heartbeats, detection windows.
//! - [`super::stacks`] — stacks and blueprints.
//! - [`super::select`] — which hosts a selector names.
//! - [`super::components`] — host components, their FSM, Configure commands.
//! - [`super::scheduler`] — requests, stages, tasks, reports, deadlines, ids, command cursors.
//! - [`super::enroll`] — enrollment tokens and the key each host id is bound to.
//!
//! This module only routes inputs and coordinates what crosses modules (a registration maps blueprint components
//! and plans their gap; a lost host's components become UNKNOWN).

use muster_schemas::api::{self, WriteReply};
use muster_schemas::commands::{Report, ReportBody};
use muster_schemas::{ErrorCode, HostId, HostRecord, RegisterReply, RegisterRequest, UnixMillis};
use tokio::time::Instant;

use super::components::Components;
use super::contract::{ApiCall, ApiResult, Dirty, Effect, Input, Loaded, Output, Ready, Reply, Timing};
use super::enroll::Enrollment;
use super::hosts::Hosts;
use super::scheduler::{Committed, Cx, Scheduler};
use super::stacks::Stacks;
use crate::metrics::ServerCounter;

/// The leader's view of the cluster.
pub struct LeaderCore {
    epoch: u64,
    timing: Timing,
    hosts: Hosts,
    stacks: Stacks,
    components: Components,
    scheduler: Scheduler,
    enrollment: Enrollment,
    /// What the batch being stepped has produced so far.
    out: Output,
    /// A tick found suspects: task deadlines are checked once their fate is known, so a task whose host is about
    /// to be declared lost is aborted rather than re-sent.
    deadlines_due: bool,
}

/// The scheduler's view of the rest of the core (a macro so the borrows stay per field).
macro_rules! cx {
    ($core:ident) => {
        &mut Cx { hosts: &$core.hosts, stacks: &$core.stacks, components: &mut $core.components, out: &mut $core.out }
    };
}

impl LeaderCore {
    /// A core for the leader of `epoch`, starting from what is committed.
    pub fn new(epoch: u64, timing: Timing, loaded: Loaded, now: Instant, wall: UnixMillis) -> Self {
        let Loaded {
            hosts,
            stacks,
            blueprints,
            components,
            requests,
            tasks,
            cursors,
            max_task,
            reserved,
            tokens,
            enrollments,
        } = loaded;
        Self {
            epoch,
            timing,
            hosts: Hosts::new(hosts, timing.deadline, now),
            stacks: Stacks::new(stacks, blueprints),
            components: Components::new(components),
            scheduler: Scheduler::new(
                Committed { requests, tasks, cursors, max_task, reserved },
                timing.task_grace,
                wall,
            ),
            enrollment: Enrollment::new(tokens, enrollments),
            out: Output::default(),
            deadlines_due: false,
        }
    }

    /// The leader's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A host's record.
    pub fn host(&self, id: &HostId) -> Option<&HostRecord> {
        self.hosts.get(id)
    }

    /// Number of known hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Steps one input of the batch.
    pub fn step(&mut self, input: Input, now: Instant, wall: UnixMillis) {
        match input {
            Input::TakeOver => self.scheduler.take_over(wall, cx!(self)),
            Input::Register { req, reply } => self.register(*req, reply, now, wall),
            Input::Heartbeat { hb, reply } => self.hosts.heartbeat(hb, reply, now, wall, &mut self.out),
            Input::Report { report, ack } => self.report(*report, ack, now, wall),
            Input::Api { call, token } => {
                let result = self.api(call, wall);
                self.out.effects.push(Effect::Api { token, result });
            }
            Input::Delivered(stored) => {
                for (o, seq) in &stored {
                    self.scheduler.delivered(o, *seq, &mut self.out);
                }
            }
            Input::Heard(heard) => {
                for id in self.hosts.arrivals(heard, now, wall, &mut self.out) {
                    self.components.host_lost(&id, wall, &mut self.out);
                }
                if std::mem::take(&mut self.deadlines_due) {
                    self.scheduler.check_deadlines(wall, cx!(self));
                }
            }
            Input::Tick => {
                if self.hosts.check_windows(now, &mut self.out) {
                    self.deadlines_due = true;
                } else {
                    self.scheduler.check_deadlines(wall, cx!(self));
                }
                self.scheduler.expire(now);
            }
        }
    }

    /// Ends the batch: everything the shell must do for it, in one value (see the module docs).
    pub fn ready(&mut self) -> Ready {
        self.components.flush_configures(self.epoch, &self.stacks, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let needs_leadership = out.needs_leadership();
        let mut ops = Vec::new();
        if !out.dirty.is_empty() || !out.publish.is_empty() {
            // Before the records: the batch's commands may carry ids beyond the last reservation.
            ops.extend(self.scheduler.reserve_ids());
            ops.reserve(out.dirty.len());
            for d in &out.dirty {
                ops.extend(match d {
                    Dirty::Host(id) => self.hosts.op(id),
                    Dirty::Component(k) => self.components.op(k),
                    Dirty::Stack(n) => self.stacks.stack_op(n),
                    Dirty::Blueprint(n) => self.stacks.blueprint_op(n),
                    Dirty::Request(id) => self.scheduler.request_op(*id),
                    Dirty::Task(id) => self.scheduler.task_op(*id),
                    Dirty::Cursor(h) => self.scheduler.cursor_op(h),
                    Dirty::Token(id) => self.enrollment.token_op(id),
                    Dirty::Enrollment(h) => self.enrollment.record_op(h),
                });
            }
        }
        // Their final records are in `ops`: from here on they are redb's.
        self.scheduler.forget_finished();
        Ready { ops, effects: out.effects, publish: out.publish, suspects: out.suspects, needs_leadership }
    }

    fn register(&mut self, req: RegisterRequest, reply: Option<String>, now: Instant, wall: UnixMillis) {
        let host = match self.hosts.register(req, now, wall, &mut self.out) {
            Ok(host) => host,
            Err((host, refusal)) => {
                if let Some(to) = reply {
                    self.out.effects.push(Effect::Reply { to, host, body: Reply::Register(refusal) });
                }
                return;
            }
        };
        // Hosts that register after a blueprint was applied are mapped now, and their gap is planned.
        let mapped = self.map_from_blueprints(&host, wall);
        if !mapped.is_empty() {
            let why = format!("blueprint components on new host {host}");
            self.scheduler.reconcile(&mapped, &why, wall, cx!(self));
        }
        if let Some(to) = reply {
            let cursor = self.scheduler.cursor(&host);
            let body = Reply::Register(RegisterReply::Accepted {
                heartbeat_interval_ms: self.timing.interval.as_millis() as u64,
                epoch: self.epoch,
                server_time: wall,
                components: self.components.specs(&host, &self.stacks),
                cursor: cursor.map_or(0, |c| c.cursor()),
                done_after_cursor: cursor.map_or_else(Vec::new, |c| c.done.clone()),
            });
            self.out.effects.push(Effect::Reply { to, host, body });
        }
    }

    fn report(&mut self, report: Report, ack: Option<u64>, now: Instant, wall: UnixMillis) {
        let host = report.host;
        match report.body {
            ReportBody::Task(t) => self.scheduler.task_report(host, t, ack, now, wall, cx!(self)),
            // Status reports only come from the stream (early copies are final task reports).
            ReportBody::Status { statuses, .. } => {
                if !self.hosts.contains(&host) {
                    self.out.count(ServerCounter::ReportRejected(ErrorCode::UnknownHost));
                    self.out.ack(ack, true);
                    return;
                }
                self.components.status(&host, statuses, wall, &mut self.out);
                self.out.count(ServerCounter::ReportStatus);
                self.out.ack(ack, false);
            }
            // Counted and acked by the report listener (`ingest::reports`), never queued; changes nothing.
            ReportBody::Refused(_) => self.out.ack_settled(ack),
        }
    }

    fn api(&mut self, call: ApiCall, wall: UnixMillis) -> ApiResult {
        match call {
            ApiCall::ApplyStack { source } => {
                let applied = self.stacks.apply_stack(source, wall, &mut self.out)?;
                // Hosts running components of a changed stack get its new status and start commands.
                if let Some(services) = applied.changed_services {
                    let hosts = self.components.hosts_using(&services);
                    self.components.reconfigure(hosts);
                }
                Ok(WriteReply::StackApplied(applied.reply))
            }
            ApiCall::ApplyBlueprint { source } => {
                let (name, version) = self.stacks.apply_blueprint(source, wall, &mut self.out)?;
                let hosts: Vec<HostId> = self.hosts.records().map(|h| h.id.clone()).collect();
                let mut mapped = 0;
                for h in hosts {
                    let new = self.map_from_blueprints(&h, wall);
                    if !new.is_empty() {
                        mapped += new.len();
                        self.components.reconfigure([h]);
                    }
                }
                // Everything the blueprint maps should run (daemons) or be installed (clients), new or not.
                let all = self.stacks.blueprint_keys(&name, self.hosts.records());
                for k in &all {
                    if let Some(c) = self.components.get(k) {
                        let desired = self.stacks.wanted(&c.component);
                        self.components.set_desired(k, desired, &mut self.out);
                    }
                }
                let request = self.scheduler.reconcile(&all, &format!("apply blueprint {name}"), wall, cx!(self));
                Ok(WriteReply::BlueprintApplied(api::BlueprintApplied {
                    blueprint: name,
                    version,
                    mapped: mapped as u64,
                    request,
                }))
            }
            ApiCall::Request(spec) => {
                self.scheduler.create_from_spec(spec, wall, cx!(self)).map(WriteReply::RequestCreated)
            }
            ApiCall::Cancel { request } => {
                self.scheduler.cancel(request, wall, cx!(self)).map(WriteReply::RequestCancelled)
            }
            ApiCall::CreateToken(spec) => {
                self.enrollment.create_token(spec, wall, &mut self.out).map(WriteReply::Token)
            }
            ApiCall::RevokeToken { id } => {
                self.enrollment.revoke_token(&id, wall, &mut self.out).map(WriteReply::Token)
            }
            ApiCall::AcceptHost { host } => {
                self.enrollment.accept(&host, wall, &mut self.out).map(WriteReply::Enrollment)
            }
            ApiCall::RejectHost { host } => {
                self.enrollment.reject(&host, wall, &mut self.out).map(WriteReply::Enrollment)
            }
            ApiCall::Enroll { req, policy } => {
                let registered = self.hosts.contains(&req.host);
                Ok(WriteReply::Enroll(self.enrollment.enroll(&req, policy, registered, wall, &mut self.out)))
            }
        }
    }

    /// Maps `host` to the components of every blueprint group it matches; returns the keys that are new.
    fn map_from_blueprints(&mut self, host: &HostId, wall: UnixMillis) -> Vec<String> {
        let Some(record) = self.hosts.get(host) else { return Vec::new() };
        let components = &self.components;
        let new = self.stacks.mapping(record, wall, |k| components.contains(k));
        self.components.insert(new, &mut self.out)
    }
}

#[cfg(test)]
impl LeaderCore {
    /// Test access: the host records.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// Test access: the stacks and blueprints.
    pub fn stacks(&self) -> &Stacks {
        &self.stacks
    }

    /// Test access: the host components.
    pub fn components(&self) -> &Components {
        &self.components
    }

    /// Test access: requests, tasks, ids and cursors.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Test access: enrollment tokens and records.
    pub fn enrollment(&self) -> &Enrollment {
        &self.enrollment
    }
}
