//! A snapshot object (`muster-snapshots`) as a replica installs it: `snapshot::decode`, restoring it into a store
//! (in memory), its digest, and a leader core loaded from the state and taking over. Input: the object's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, now, TIMING, WALL};
use muster_server::leader::contract::Input;
use muster_server::leader::core::LeaderCore;
use muster_server::snapshot;
use muster_server::store::Store;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = snapshot::decode(data) else { return };
    assert_msgpack_round_trip(&snap);
    let store = Store::in_memory().expect("an in-memory store");
    if store.restore(&snap).is_err() {
        return;
    }
    assert_eq!(store.applied().expect("applied_seq reads"), (snap.seq, snap.epoch));
    let _ = store.digest();
    let Ok(loaded) = muster_server::leader::load(&store) else { return };
    let mut core = LeaderCore::new(snap.epoch.saturating_add(1), TIMING, loaded, now(), WALL);
    core.step(Input::TakeOver, now(), WALL);
    let _ = core.ready();
});
