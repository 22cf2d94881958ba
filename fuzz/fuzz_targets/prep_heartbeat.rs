//! `muster.hb.<host>` as muster-server hears it: Prep (size, decode, version, host id, subject == body), then the
//! leader core steps its health into a small cluster. Input: `[n][n bytes: subject host token][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, core, split, step};
use muster_schemas::{limits, Subjects};
use muster_server::leader::contract::Input;
use muster_server::prep;

fuzz_target!(|data: &[u8]| {
    let (token, payload) = split(data);
    let subject = format!("muster.hb.{}", String::from_utf8_lossy(token));
    let Ok(hb) = prep::heartbeat(&Subjects::default(), &subject, payload) else { return };
    assert!(payload.len() <= limits::MAX_HEARTBEAT_BYTES);
    assert_eq!(subject.strip_prefix("muster.hb."), Some(hb.host.as_str()), "Prep checks subject == body");
    assert_msgpack_round_trip(&hb);
    let mut core = core();
    step(&mut core, Input::Heartbeat { hb, reply: Some("_INBOX.x".into()) });
});
