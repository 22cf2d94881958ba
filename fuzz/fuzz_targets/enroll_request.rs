//! `muster.enroll.<host>` as muster-server takes it from a holder of an enrollment token: `ingest::prep_enroll`
//! (size, decode, version, host == subject, key shapes, the token's and the agent key's signatures).
//! Input: `[n][n bytes: subject host token][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, split};
use muster_schemas::Subjects;
use muster_server::ingest::prep_enroll;

fuzz_target!(|data: &[u8]| {
    let (token, payload) = split(data);
    let subject = format!("muster.enroll.{}", String::from_utf8_lossy(token));
    let Ok(req) = prep_enroll(&Subjects::default(), &subject, payload) else { return };
    assert_eq!(subject.strip_prefix("muster.enroll."), Some(req.host.as_str()), "Prep checks subject == body");
    assert_msgpack_round_trip(&req);
});
