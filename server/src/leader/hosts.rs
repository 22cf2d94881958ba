//! Host registration and liveness, pure: the host records, the host FSM's inputs (registrations, heartbeats,
//! silence), and the detection window of every host that should be heartbeating.
//!
//! Arrival times are not kept here: they live in [`crate::status::LastSeen`], written by the heartbeat listener on
//! every instance. The core keeps only when each watched host's current detection window started (the takeover,
//! its registration, or its last arrival the core was told about). When a window runs out the host becomes a
//! suspect ([`Output::suspects`]); its last arrival comes back as an input, and only a host silent for a whole
//! window after it is declared HEARTBEAT_LOST. A heartbeat the listener heard but could not queue (the core was
//! busy) therefore still keeps its host alive.

use std::collections::HashMap;
use std::time::Duration;

use muster_schemas::events::HostChanged;
use muster_schemas::{
    ErrorCode, Heartbeat, HeartbeatReply, HostId, HostRecord, HostState, RegisterReply, RegisterRequest, TxnOp,
    UnixMillis,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::contract::{ChangeEvent, Dirty, Effect, Output, Reply};
use crate::fsm::host::{transition, HostEvent};
use crate::metrics::ServerCounter;

/// What an agent refused for an illegal transition is told to wait before registering again.
const REFUSED_RETRY_MS: u64 = 1000;

/// Every host record and the detection windows of those that should be heartbeating.
pub struct Hosts {
    records: HashMap<HostId, HostRecord>,
    /// Start of the current detection window of every host that should be heartbeating (and only those: a host
    /// leaves it when declared lost), so a liveness check is one pass over plain timestamps. In memory only, as in
    /// Ambari: after a takeover every host gets a fresh window from then.
    windows: HashMap<HostId, Instant>,
    /// Silence after which a host is lost (`interval × misses`).
    deadline: Duration,
    /// Suspects were handed out and their arrivals have not come back yet: no new check until they do.
    awaiting_arrivals: bool,
}

impl Hosts {
    /// The committed hosts; every one that should be heartbeating gets one full window from `now`.
    pub fn new(records: Vec<HostRecord>, deadline: Duration, now: Instant) -> Self {
        let windows = records.iter().filter(|h| h.state.expects_heartbeats()).map(|h| (h.id.clone(), now)).collect();
        Self {
            records: records.into_iter().map(|h| (h.id.clone(), h)).collect(),
            windows,
            deadline,
            awaiting_arrivals: false,
        }
    }

    /// A host's record.
    pub fn get(&self, id: &HostId) -> Option<&HostRecord> {
        self.records.get(id)
    }

    /// Whether `id` is registered.
    pub fn contains(&self, id: &HostId) -> bool {
        self.records.contains_key(id)
    }

    /// Number of known hosts.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every host record, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &HostRecord> {
        self.records.values()
    }

    /// Whether commands can be sent to `id`: registered and neither lost nor waiting to register again.
    pub fn is_up(&self, id: &HostId) -> bool {
        self.records.get(id).is_some_and(|h| h.state != HostState::HeartbeatLost && h.state != HostState::Init)
    }

    /// Steps a registration: the record is replaced and the host watched from `now`. Returns the host's id if it
    /// was accepted, or the refusal to send it (counted here).
    ///
    /// A *repeat* — the same agent process (`agent_started_at`) registering again with the same facts, labels and
    /// version while the host still waits for its first heartbeat, because the answer to its first registration
    /// reached it too late — is answered from the record: it changes nothing, so nothing is committed (no txn op,
    /// no event); only the watch restarts. In a registration storm the agents whose answers arrive after their
    /// timeout would otherwise double the commits of the storm that delayed them.
    pub fn register(
        &mut self,
        req: RegisterRequest,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<HostId, (HostId, RegisterReply)> {
        let prev = self.records.get(&req.host);
        if prev.is_some_and(|r| is_repeat(r, &req)) {
            self.windows.insert(req.host.clone(), now);
            out.count(ServerCounter::RegRepeated);
            return Ok(req.host);
        }
        let from = prev.map_or(HostState::Init, |r| r.state);
        let to = match transition(from, HostEvent::Register) {
            Ok(to) => to,
            // Registration is legal in every state (the FSM resets to INIT first); should the table ever change,
            // the refusal is counted and answered, never skipped silently.
            Err(e) => {
                warn!(host = %req.host, error = %e, "registration refused");
                out.count(ServerCounter::FsmIllegalTransitions);
                out.count(ServerCounter::RegRejected(ErrorCode::IllegalTransition));
                let refusal = RegisterReply::Rejected {
                    code: ErrorCode::IllegalTransition,
                    message: e.to_string(),
                    retry_after_ms: Some(REFUSED_RETRY_MS),
                };
                return Err((req.host, refusal));
            }
        };
        let host = req.host.clone();
        let record = HostRecord {
            id: req.host,
            state: to,
            facts: req.facts,
            labels: req.labels,
            agent_version: req.agent_version,
            agent_started_at: req.agent_started_at,
            first_registered_at: prev.map_or(wall, |r| r.first_registered_at),
            registered_at: wall,
            registrations: prev.map_or(0, |r| r.registrations) + 1,
            state_since: wall,
            problems: Vec::new(),
        };
        out.event(ChangeEvent::Host(HostChanged {
            host: host.clone(),
            from: prev.map(|r| r.state),
            to,
            at: wall,
            reason: "registered".into(),
        }));
        self.windows.insert(host.clone(), now);
        self.put(record, out);
        out.count(ServerCounter::RegAccepted);
        Ok(host)
    }

    /// Steps a heartbeat: the host's health moves its state; an unknown or lost host is told to register again.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        reply: Option<String>,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) {
        out.count(ServerCounter::HbReceived);
        let Some(prev) = self.records.get(&hb.host) else {
            out.count(ServerCounter::HbRejected(ErrorCode::UnknownHost));
            reregister(reply, hb.host, "host is not registered".into(), out);
            return;
        };
        let healthy = hb.health.is_healthy();
        let to = match transition(prev.state, HostEvent::Heartbeat { healthy }) {
            Ok(to) => to,
            Err(e) => {
                // Expected after HEARTBEAT_LOST (the agent is told to register again), and a lost fleet sends
                // thousands: counted, logged at debug.
                debug!(host = %hb.host, error = %e, "heartbeat refused");
                out.count(ServerCounter::FsmIllegalTransitions);
                out.count(ServerCounter::HbRejected(ErrorCode::IllegalTransition));
                let reason = format!("host is {}; register again", prev.state);
                reregister(reply, hb.host, reason, out);
                return;
            }
        };
        // A watched host's window is refreshed from the arrival record when it runs out; a host the core was not
        // watching (its window was started by no registration since the takeover) starts one now.
        if !self.windows.contains_key(&hb.host) {
            self.windows.insert(hb.host.clone(), now);
        }
        if to == prev.state && hb.health.problems == prev.problems {
            return;
        }
        let prev = prev.clone();
        if to != prev.state {
            out.event(ChangeEvent::Host(HostChanged {
                host: hb.host.clone(),
                from: Some(prev.state),
                to,
                at: wall,
                reason: if healthy { "status received".into() } else { hb.health.problems.join("; ") },
            }));
        }
        let state_since = if to == prev.state { prev.state_since } else { wall };
        self.put(HostRecord { state: to, state_since, problems: hb.health.problems, ..prev }, out);
    }

    /// Makes every watched host whose window has run out a suspect, unless the previous suspects' arrivals are
    /// still to come back. Returns whether suspects' arrivals are awaited.
    pub fn check_windows(&mut self, now: Instant, out: &mut Output) -> bool {
        if self.awaiting_arrivals {
            return true;
        }
        let deadline = self.deadline;
        let before = out.suspects.len();
        out.suspects.extend(
            self.windows
                .iter()
                .filter(|(_, start)| now.saturating_duration_since(**start) > deadline)
                .map(|(id, _)| id.clone()),
        );
        self.awaiting_arrivals = out.suspects.len() > before;
        self.awaiting_arrivals
    }

    /// Takes the last arrivals of the suspects: a host heard within the deadline gets a new window from that
    /// arrival; the others are declared lost. Returns the hosts declared lost (their components follow).
    pub fn arrivals(
        &mut self,
        heard: Vec<(HostId, Option<Instant>)>,
        now: Instant,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Vec<HostId> {
        self.awaiting_arrivals = false;
        let mut lost = Vec::new();
        for (id, arrival) in heard {
            // Registered again (or already declared lost) since it was suspected: its window says so.
            let Some(start) = self.windows.get_mut(&id) else { continue };
            let last = arrival.map_or(*start, |a| a.max(*start));
            let silent = now.saturating_duration_since(last);
            if silent <= self.deadline {
                *start = last;
                continue;
            }
            self.windows.remove(&id);
            if self.lose(&id, silent, wall, out) {
                lost.push(id);
            }
        }
        lost
    }

    /// Declares a silent host HEARTBEAT_LOST; false if its state does not allow it (it is then left alone).
    fn lose(&mut self, id: &HostId, silent: Duration, wall: UnixMillis, out: &mut Output) -> bool {
        let Some(prev) = self.records.get(id).filter(|h| h.state.expects_heartbeats()) else { return false };
        let Ok(to) = transition(prev.state, HostEvent::HeartbeatLost) else { return false };
        out.count(ServerCounter::HostsLost);
        out.event(ChangeEvent::Host(HostChanged {
            host: id.clone(),
            from: Some(prev.state),
            to,
            at: wall,
            reason: format!("no heartbeat for {:.1} s", silent.as_secs_f64()),
        }));
        let prev = prev.clone();
        self.put(HostRecord { state: to, state_since: wall, problems: Vec::new(), ..prev }, out);
        true
    }

    /// The txn op writing host `id` as it is now.
    pub fn op(&self, id: &HostId) -> Option<TxnOp> {
        self.records.get(id).map(|r| TxnOp::PutHost(Box::new(r.clone())))
    }

    fn put(&mut self, record: HostRecord, out: &mut Output) {
        out.dirty.insert(Dirty::Host(record.id.clone()));
        self.records.insert(record.id.clone(), record);
    }
}

/// Whether `req` repeats the registration `record` holds (see [`Hosts::register`]).
fn is_repeat(record: &HostRecord, req: &RegisterRequest) -> bool {
    record.state == HostState::WaitingForHostStatusUpdates
        && record.agent_started_at == req.agent_started_at
        && record.agent_version == req.agent_version
        && record.facts == req.facts
        && record.labels == req.labels
}

fn reregister(reply: Option<String>, host: HostId, reason: String, out: &mut Output) {
    if let Some(to) = reply {
        out.effects.push(Effect::Reply { to, host, body: Reply::Heartbeat(HeartbeatReply::Reregister { reason }) });
    }
}
