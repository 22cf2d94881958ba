//! `muster.report.<host>` as muster-server takes it: Prep (size, decode, version, host id, subject == body), then
//! the leader core steps it into a small cluster whose tasks 1-3 are running, first as the early copy heard on the
//! core subscription, then as the stored copy from `MUSTER_REPORTS` (a duplicate once the first was final).
//! Input: `[n][n bytes: subject host token][payload]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{assert_msgpack_round_trip, core, split, step};
use muster_schemas::{limits, Subjects};
use muster_server::leader::contract::{Effect, Input};
use muster_server::prep;

fuzz_target!(|data: &[u8]| {
    let (token, payload) = split(data);
    let subject = format!("muster.report.{}", String::from_utf8_lossy(token));
    let Ok(report) = prep::report(&Subjects::default(), &subject, payload) else { return };
    assert!(payload.len() <= limits::MAX_REPORT_BYTES);
    assert_eq!(subject.strip_prefix("muster.report."), Some(report.host.as_str()), "Prep checks subject == body");
    assert_msgpack_round_trip(&report);
    let mut core = core();
    step(&mut core, Input::Report { report: Box::new(report.clone()), ack: None });
    let ready = step(&mut core, Input::Report { report: Box::new(report), ack: Some(1) });
    let acks = ready.effects.iter().filter(|e| matches!(e, Effect::Ack { token: 1, .. })).count();
    assert!(acks <= 1, "a stored report is acked at most once: {:?}", ready.effects);
});
