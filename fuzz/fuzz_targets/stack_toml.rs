//! Stack and blueprint files (TOML, `muster stack apply` / `muster blueprint apply`) as the leader parses them:
//! `stack::parse_stack`, and `stack::parse_blueprint` against the toy stack; what parses is stored in the log, so
//! it must survive the MessagePack round trip, and a blueprint's host groups must match hosts without panicking.
//! Input: the file's text.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, STACK};
use muster_schemas::cluster::StackDef;
use muster_server::stack::{group_matches, parse_blueprint, parse_stack};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_stack(text) {
        Ok(def) => assert_msgpack_round_trip(&def),
        // An error names a line of the file (or none).
        Err(e) => assert!(e.line.is_none_or(|l| l >= 1 && l <= text.matches('\n').count() + 1), "{e} in {text:?}"),
    }
    static TOY: OnceLock<StackDef> = OnceLock::new();
    let toy = TOY.get_or_init(|| parse_stack(STACK).expect("the toy stack parses"));
    if let Ok(bp) = parse_blueprint(text, |name| (name == toy.name).then_some(toy)) {
        assert_msgpack_round_trip(&bp);
        let labels = BTreeMap::from([("role".to_string(), "worker".to_string())]);
        for g in &bp.host_groups {
            let _ = group_matches(g, "h1", &labels);
        }
    }
});
