//! Component statuses as last observed, so only changes are reported (Ambari sends component status on change,
//! and all of it after a re-registration).

use std::collections::{BTreeMap, BTreeSet};

use muster_schemas::commands::{ComponentRef, ComponentStatus};

/// The last observed status of every component.
#[derive(Debug, Clone, Default)]
pub struct StatusBook {
    known: BTreeMap<ComponentRef, ComponentStatus>,
}

impl StatusBook {
    /// Records an observation; returns it if it differs from the last one (or is the first).
    pub fn observe(&mut self, component: &ComponentRef, running: bool, auto_restarts: u32) -> Option<ComponentStatus> {
        let status = ComponentStatus { component: component.clone(), running, auto_restarts };
        if self.known.get(component) == Some(&status) {
            return None;
        }
        self.known.insert(component.clone(), status.clone());
        Some(status)
    }

    /// Every known status, in component order (the body of a full report).
    pub fn all(&self) -> Vec<ComponentStatus> {
        self.known.values().cloned().collect()
    }

    /// Forgets components no longer mapped to the host.
    pub fn retain(&mut self, mapped: &BTreeSet<ComponentRef>) {
        self.known.retain(|c, _| mapped.contains(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(name: &str) -> ComponentRef {
        ComponentRef { service: "svc".into(), component: name.into() }
    }

    #[test]
    fn only_changes_are_returned() {
        let mut book = StatusBook::default();
        let a = comp("a");
        assert!(book.observe(&a, true, 0).is_some(), "the first observation is a change");
        assert!(book.observe(&a, true, 0).is_none());
        assert_eq!(book.observe(&a, false, 0).map(|s| s.running), Some(false));
        assert_eq!(book.observe(&a, false, 1).map(|s| s.auto_restarts), Some(1), "a restart count is a change");
        book.observe(&comp("b"), true, 0);
        assert_eq!(book.all().len(), 2);
        book.retain(&BTreeSet::from([comp("b")]));
        assert_eq!(book.all().iter().map(|s| s.component.component.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(!book.all().iter().any(|s| s.component == a), "a is forgotten");
    }
}
