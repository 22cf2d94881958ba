//! Stacks and blueprints, pure: the current version of every stack and every blueprint, applying new versions, and
//! what a blueprint maps onto a host. What follows from an apply (components mapped, hosts reconfigured, the gap
//! planned) is the core's to coordinate.

use std::collections::{BTreeMap, BTreeSet};

use muster_schemas::api::{self, ApiError};
use muster_schemas::cluster::{
    host_component_key, BlueprintRecord, ComponentState, DesiredState, HostComponentRecord, StackDef, StackRecord,
};
use muster_schemas::commands::{Category, ComponentRef};
use muster_schemas::{HostRecord, TxnOp, UnixMillis};
use tracing::info;

use super::contract::{Dirty, Output};
use crate::stack;

/// The current version of every stack and every blueprint.
pub struct Stacks {
    stacks: BTreeMap<String, StackRecord>,
    blueprints: BTreeMap<String, BlueprintRecord>,
}

/// A stack applied: the answer, and the services of a changed stack (hosts running them get the new commands).
pub struct StackApplied {
    /// The answer to the operator.
    pub reply: api::StackApplied,
    /// The stack's services if it changed; `None` if the same definition was applied again.
    pub changed_services: Option<BTreeSet<String>>,
}

impl Stacks {
    /// The committed stacks and blueprints.
    pub fn new(stacks: Vec<StackRecord>, blueprints: Vec<BlueprintRecord>) -> Self {
        Self {
            stacks: stacks.into_iter().map(|s| (s.def.name.clone(), s)).collect(),
            blueprints: blueprints.into_iter().map(|b| (b.def.name.clone(), b)).collect(),
        }
    }

    /// A stack's current version, by name.
    pub fn stack(&self, name: &str) -> Option<&StackRecord> {
        self.stacks.get(name)
    }

    /// A blueprint, by name.
    pub fn blueprint(&self, name: &str) -> Option<&BlueprintRecord> {
        self.blueprints.get(name)
    }

    /// The stack defining `service`.
    pub fn stack_of(&self, service: &str) -> Option<&StackRecord> {
        self.stacks.values().find(|s| s.def.services.iter().any(|x| x.name == service))
    }

    /// Applies a stack file: a new version if its definition changed.
    pub fn apply_stack(
        &mut self,
        source: String,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<StackApplied, ApiError> {
        let def = stack::parse_stack(&source).map_err(|e| ApiError::bad_request(format!("invalid stack: {e}")))?;
        let prev = self.stacks.get(&def.name);
        let components: Vec<String> = def.components().map(|(_, c)| c.name.clone()).collect();
        if let Some(p) = prev.filter(|p| p.def == def) {
            let reply = api::StackApplied { stack: def.name, version: p.version, changed: false, components };
            return Ok(StackApplied { reply, changed_services: None });
        }
        let version = prev.map_or(1, |p| p.version + 1);
        let name = def.name.clone();
        let services: BTreeSet<String> = def.services.iter().map(|s| s.name.clone()).collect();
        self.stacks.insert(name.clone(), StackRecord { version, def, source, applied_at: wall });
        out.dirty.insert(Dirty::Stack(name.clone()));
        info!(stack = %name, version, "stack applied");
        let reply = api::StackApplied { stack: name, version, changed: true, components };
        Ok(StackApplied { reply, changed_services: Some(services) })
    }

    /// Applies a blueprint file (a new version every time); returns its name and version.
    pub fn apply_blueprint(
        &mut self,
        source: String,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<(String, u32), ApiError> {
        let stacks = &self.stacks;
        let def = stack::parse_blueprint(&source, |n| stacks.get(n).map(|s| &s.def))
            .map_err(|e| ApiError::bad_request(format!("invalid blueprint: {e}")))?;
        let version = self.blueprints.get(&def.name).map_or(1, |b| b.version + 1);
        let name = def.name.clone();
        self.blueprints.insert(name.clone(), BlueprintRecord { version, def, source, applied_at: wall });
        out.dirty.insert(Dirty::Blueprint(name.clone()));
        Ok((name, version))
    }

    /// The host component keys blueprint `name` maps onto `hosts`, new or not.
    pub fn blueprint_keys<'a>(&self, name: &str, hosts: impl Iterator<Item = &'a HostRecord>) -> Vec<String> {
        let Some(bp) = self.blueprints.get(name) else { return Vec::new() };
        let Some(st) = self.stacks.get(&bp.def.stack) else { return Vec::new() };
        let mut keys = Vec::new();
        for h in hosts {
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
    pub fn wanted(&self, component: &ComponentRef) -> DesiredState {
        match self.stack_of(&component.service) {
            Some(st) => wanted_in(&st.def, &component.component),
            None => DesiredState::Started,
        }
    }

    /// The components every blueprint group `host` matches maps to it that are not mapped yet (`is_mapped`), as
    /// fresh records keyed by host component key.
    pub fn mapping(
        &self,
        host: &HostRecord,
        wall: UnixMillis,
        is_mapped: impl Fn(&str) -> bool,
    ) -> Vec<(String, HostComponentRecord)> {
        let mut new: Vec<(String, HostComponentRecord)> = Vec::new();
        for bp in self.blueprints.values() {
            let Some(st) = self.stacks.get(&bp.def.stack) else { continue };
            for g in bp.def.host_groups.iter().filter(|g| stack::group_matches(g, host.id.as_str(), &host.labels)) {
                for c in &g.components {
                    let Some((svc, _)) = st.def.component(c) else { continue };
                    let r = ComponentRef { service: svc.name.clone(), component: c.clone() };
                    let key = host_component_key(&host.id, &r);
                    if is_mapped(&key) || new.iter().any(|(k, _)| *k == key) {
                        continue;
                    }
                    let record = HostComponentRecord {
                        host: host.id.clone(),
                        component: r,
                        state: ComponentState::Init,
                        desired: wanted_in(&st.def, c),
                        stack_version: st.version,
                        state_since: wall,
                        auto_restarts: 0,
                        auto_start: false,
                    };
                    new.push((key, record));
                }
            }
        }
        new
    }

    /// The stack and components a target name (service or component) stands for.
    pub fn resolve_target(&self, target: &str) -> Result<(String, Vec<ComponentRef>), ApiError> {
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
        Err(ApiError::bad_request(format!("unknown service or component {target:?} (apply a stack that defines it)")))
    }

    /// The txn op writing stack `name` as it is now.
    pub fn stack_op(&self, name: &str) -> Option<TxnOp> {
        self.stacks.get(name).map(|r| TxnOp::PutStack(Box::new(r.clone())))
    }

    /// The txn op writing blueprint `name` as it is now.
    pub fn blueprint_op(&self, name: &str) -> Option<TxnOp> {
        self.blueprints.get(name).map(|r| TxnOp::PutBlueprint(Box::new(r.clone())))
    }
}

#[cfg(test)]
impl Stacks {
    /// Test access: every stack's current record.
    pub fn records(&self) -> impl Iterator<Item = &StackRecord> {
        self.stacks.values()
    }
}

/// Daemons run, clients are installed.
fn wanted_in(def: &StackDef, component: &str) -> DesiredState {
    if def.component(component).is_some_and(|(_, d)| d.category == Category::Client) {
        DesiredState::Installed
    } else {
        DesiredState::Started
    }
}
