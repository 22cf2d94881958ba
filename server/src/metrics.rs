//! Counters: every rejected message, illegal transition and commit is counted, and `muster stats` shows them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A set of named monotonic counters, cheap to clone and share.
///
/// Names are dotted (`reg.rejected.malformed`); the set is small and fixed by the code, so a mutex-guarded map
/// of atomics is enough: the lock is held only for the lookup, never across an await.
#[derive(Clone, Default)]
pub struct Metrics {
    counters: Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>,
}

impl Metrics {
    /// Adds `n` to counter `name`; returns the new value.
    pub fn add(&self, name: &str, n: u64) -> u64 {
        let counter = {
            let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(name) {
                Some(c) => c.clone(),
                None => map.entry(name.to_string()).or_default().clone(),
            }
        };
        counter.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Adds one to counter `name`; returns the new value.
    pub fn inc(&self, name: &str) -> u64 {
        self.add(name, 1)
    }

    /// The current value of `name` (0 if never touched).
    pub fn get(&self, name: &str) -> u64 {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name() {
        let m = Metrics::default();
        m.inc("a.b");
        m.add("a.b", 2);
        assert_eq!(m.get("a.b"), 3);
        assert_eq!(m.get("nope"), 0);
        assert_eq!(m.snapshot().get("a.b"), Some(&3));
    }
}
