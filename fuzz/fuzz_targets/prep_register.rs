//! `muster.reg.<host>` as muster-server takes it: Prep (size, decode, version, host id, subject == body), then the
//! leader core steps the registration into a small cluster. Input: `[n][n bytes: subject host token][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, core, split, step};
use muster_schemas::{limits, Subjects};
use muster_server::leader::contract::{Effect, Input};
use muster_server::prep;

fuzz_target!(|data: &[u8]| {
    let (token, payload) = split(data);
    let subject = format!("muster.reg.{}", String::from_utf8_lossy(token));
    let Ok(req) = prep::register(&Subjects::default(), &subject, payload) else { return };
    assert!(payload.len() <= limits::MAX_REGISTER_BYTES);
    assert_eq!(subject.strip_prefix("muster.reg."), Some(req.host.as_str()), "Prep checks subject == body");
    assert_msgpack_round_trip(&req);
    let mut core = core();
    let ready = step(&mut core, Input::Register { req: Box::new(req), reply: Some("_INBOX.x".into()) });
    let replies = ready.effects.iter().filter(|e| matches!(e, Effect::Reply { .. })).count();
    assert_eq!(replies, 1, "a registration is answered exactly once: {:?}", ready.effects);
});
