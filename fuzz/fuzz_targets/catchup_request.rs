//! `muster.catchup.<host>` as muster-server takes it: `catchup::prep` (size, decode, version, host id, subject ==
//! body), then the range of commands the reply reads. Input: `[n][n bytes: subject host token][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, split};
use muster_schemas::{limits, Subjects};
use muster_server::catchup::{prep, Range};

fuzz_target!(|data: &[u8]| {
    let (token, payload) = split(data);
    let subject = format!("muster.catchup.{}", String::from_utf8_lossy(token));
    let Ok(req) = prep(&Subjects::default(), &subject, payload) else { return };
    assert!(payload.len() <= limits::MAX_CATCH_UP_REQUEST_BYTES);
    assert_eq!(subject.strip_prefix("muster.catchup."), Some(req.host.as_str()), "Prep checks subject == body");
    assert_msgpack_round_trip(&req);
    let range = Range::of(&req);
    assert!(range.from >= 1 && (1..=limits::CATCH_UP_CHUNK).contains(&range.max), "{range:?}");
});
