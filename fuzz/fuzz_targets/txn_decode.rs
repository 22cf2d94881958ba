//! A `MUSTER_TXN` log entry as every replica's applier takes it: `log::understand` (decode, txn schema), the
//! decision gathering, then applying it to a store (in memory) and loading a leader core from that state.
//! Input: the entry's payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, now, TIMING, WALL};
use muster_schemas::txn::TXN_SCHEMA;
use muster_server::leader::contract::Input;
use muster_server::leader::core::LeaderCore;
use muster_server::log::{understand, Decisions};
use muster_server::store::Store;

fuzz_target!(|data: &[u8]| {
    let Ok(txn) = understand(data) else { return };
    assert!(txn.schema <= TXN_SCHEMA);
    assert_msgpack_round_trip(&txn);
    let mut decisions = Decisions::default();
    let mut ready = Vec::new();
    decisions.push(1, txn.clone(), &mut ready);
    let mut last = txn.clone();
    last.continues = false;
    decisions.push(2, last, &mut ready);
    assert!(!ready.is_empty());
    let store = Store::in_memory().expect("an in-memory store");
    if store.apply(&ready).is_err() {
        return;
    }
    assert_eq!(store.applied().expect("applied_seq reads").0, 2);
    let Ok(loaded) = muster_server::leader::load(&store) else { return };
    let mut core = LeaderCore::new(txn.epoch.saturating_add(1), TIMING, loaded, now(), WALL);
    core.step(Input::TakeOver, now(), WALL);
    let _ = core.ready();
    let _ = store.digest();
});
