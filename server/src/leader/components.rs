//! Host components, pure: every component mapped to a host, its FSM, its desired state, and the Configure command
//! that tells an agent its component set (status checks, auto-restart) whenever that set changes.

use std::collections::{BTreeMap, BTreeSet};

use muster_schemas::cluster::{host_component_key, ComponentState, DesiredState, HostComponentRecord};
use muster_schemas::commands::{Category, CommandBody, ComponentSpec, ComponentStatus};
use muster_schemas::events::ComponentChanged;
use muster_schemas::ids::CommandMsgId;
use muster_schemas::{HostId, TxnOp, UnixMillis};
use tracing::warn;

use super::contract::{ChangeEvent, Dirty, Outgoing, Output};
use super::stacks::Stacks;
use crate::fsm::component::{transition, ComponentEvent, InvalidTransition};
use crate::metrics::ServerCounter;

/// Every host component and the hosts whose set changed in the batch being stepped.
pub struct Components {
    /// By `host/service/component` key, so one host's components are one range.
    records: BTreeMap<String, HostComponentRecord>,
    /// Hosts whose component set changed in the batch being stepped: each gets one Configure at its end.
    reconfigure: BTreeSet<HostId>,
    /// Makes each Configure command's `Nats-Msg-Id` unique within the epoch.
    configure_seq: u64,
}

impl Components {
    /// The committed host components.
    pub fn new(records: Vec<HostComponentRecord>) -> Self {
        Self {
            records: records.into_iter().map(|c| (c.key(), c)).collect(),
            reconfigure: BTreeSet::new(),
            configure_seq: 0,
        }
    }

    /// A component by key.
    pub fn get(&self, key: &str) -> Option<&HostComponentRecord> {
        self.records.get(key)
    }

    /// Whether `key` is mapped.
    pub fn contains(&self, key: &str) -> bool {
        self.records.contains_key(key)
    }

    /// Maps new components (from [`Stacks::mapping`]); returns their keys.
    pub fn insert(&mut self, new: Vec<(String, HostComponentRecord)>, out: &mut Output) -> Vec<String> {
        new.into_iter()
            .map(|(k, rec)| {
                self.records.insert(k.clone(), rec);
                out.dirty.insert(Dirty::Component(k.clone()));
                k
            })
            .collect()
    }

    /// Steps a component's FSM; an illegal event is logged, counted and returned.
    pub fn event(
        &mut self,
        key: &str,
        event: ComponentEvent,
        reason: &str,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<(), InvalidTransition> {
        let Some(rec) = self.records.get_mut(key) else { return Ok(()) };
        match transition(rec.state, event) {
            Ok(to) if to == rec.state => Ok(()),
            Ok(to) => {
                out.event(ChangeEvent::Component(ComponentChanged {
                    host: rec.host.clone(),
                    component: rec.component.to_string(),
                    from: rec.state,
                    to,
                    at: wall,
                    reason: reason.to_string(),
                }));
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
                    self.reconfigure.insert(rec.host.clone());
                }
                Ok(())
            }
            Err(e) => {
                warn!(component = key, error = %e, "component event refused");
                out.count(ServerCounter::FsmIllegalTransitions);
                Err(e)
            }
        }
    }

    /// Sets a desired state; true if it changed.
    pub fn set_desired(&mut self, key: &str, desired: DesiredState, out: &mut Output) -> bool {
        match self.records.get_mut(key) {
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

    /// The components of a lost host are UNKNOWN until its agent reports their status again.
    pub fn host_lost(&mut self, host: &HostId, wall: UnixMillis, out: &mut Output) {
        for k in self.keys_of(host) {
            let _ = self.event(&k, ComponentEvent::HostLost, "host lost", wall, out);
        }
    }

    /// A status report from `host`'s agent: what runs, and how often its agent restarted it.
    pub fn status(&mut self, host: &HostId, statuses: Vec<ComponentStatus>, wall: UnixMillis, out: &mut Output) {
        for s in statuses {
            let key = host_component_key(host, &s.component);
            let Some(rec) = self.records.get_mut(&key) else {
                out.count(ServerCounter::ReportStatusUnmapped);
                continue;
            };
            if rec.auto_restarts != s.auto_restarts {
                rec.auto_restarts = s.auto_restarts;
                out.dirty.insert(Dirty::Component(key.clone()));
            }
            let _ = self.event(&key, ComponentEvent::Status { running: s.running }, "status check", wall, out);
        }
    }

    /// The hosts running a component of one of `services`.
    pub fn hosts_using(&self, services: &BTreeSet<String>) -> BTreeSet<HostId> {
        self.records.values().filter(|c| services.contains(&c.component.service)).map(|c| c.host.clone()).collect()
    }

    /// The keys of the components mapped to `host`.
    pub fn keys_of(&self, host: &HostId) -> Vec<String> {
        self.of_host(host).map(|(k, _)| k.clone()).collect()
    }

    fn of_host<'a>(&'a self, host: &HostId) -> impl Iterator<Item = (&'a String, &'a HostComponentRecord)> {
        let prefix = format!("{host}/");
        self.records.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// What an agent needs about the components mapped to `host`.
    pub fn specs(&self, host: &HostId, stacks: &Stacks) -> Vec<ComponentSpec> {
        self.of_host(host)
            .filter_map(|(_, c)| {
                let st = stacks.stack_of(&c.component.service)?;
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

    /// Marks `hosts` to get their component set at the end of the batch.
    pub fn reconfigure(&mut self, hosts: impl IntoIterator<Item = HostId>) {
        self.reconfigure.extend(hosts);
    }

    /// Sends every host whose component set changed during the batch its new set, once per host.
    pub fn flush_configures(&mut self, epoch: u64, stacks: &Stacks, out: &mut Output) {
        for host in std::mem::take(&mut self.reconfigure) {
            let components = self.specs(&host, stacks);
            self.configure_seq += 1;
            let msg_id = CommandMsgId::Configure { host: host.clone(), epoch, n: self.configure_seq };
            out.publish.push(Outgoing::new(&host, msg_id, CommandBody::Configure { components }));
        }
    }

    /// The txn op writing component `key` as it is now.
    pub fn op(&self, key: &str) -> Option<TxnOp> {
        self.records.get(key).map(|r| TxnOp::PutHostComponent(Box::new(r.clone())))
    }
}

#[cfg(test)]
impl Components {
    /// Test access: every host component.
    pub fn records(&self) -> impl Iterator<Item = &HostComponentRecord> {
        self.records.values()
    }
}
