//! A command as muster-agent takes it from `muster.cmd.<host>` (live or read back in a catch-up):
//! `intake::validate_command` through the session's `CommandGate` (headers, size, decode, version, then the
//! signature by a trusted command key, host, expiry and replay; running insecure: only the host), the gate's check
//! of a registration reply's signature, then the catch-up planner and the repeat filter.
//! Input: `[mode][n: 2 bytes, big-endian][n bytes: headers, one `Name: value` a line][payload]`; mode bit 0: the gate runs insecure.
#![no_main]

use std::sync::{Arc, OnceLock};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use muster_agent::intake::{plan_catch_up, validate_command, BadCommand, CommandGate, CommandKey, SeenSet};
use muster_agent::params::CommandTrust;
use muster_agent::SessionStats;
use muster_fuzz::{assert_msgpack_round_trip, command_signer, split_wide, WALL};
use muster_schemas::commands::CommandBody;
use muster_schemas::ids::TaskAttempt;
use muster_schemas::limits::MAX_COMMAND_BYTES;
use muster_schemas::{HostId, PROTOCOL_VERSION};
use muster_security::command::CommandVerifier;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let (head, payload) = split_wide(data);
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        // As the client parses a message's headers: a name it refuses never reaches the agent.
        let Some((name, value)) = line.split_once(": ") else { continue };
        if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            headers.insert(name, value);
        }
    }
    let headers = (!head.is_empty()).then_some(&headers);
    let insecure = mode & 1 == 1;
    let trust = if insecure {
        CommandTrust::Insecure
    } else {
        static VERIFIER: OnceLock<Arc<CommandVerifier>> = OnceLock::new();
        let verifier = VERIFIER
            .get_or_init(|| Arc::new(CommandVerifier::new([command_signer().public_key()]).expect("a trusted key")));
        CommandTrust::Signed(verifier.clone())
    };
    let own = HostId::new("web-1").expect("a valid host id");
    // The seeds are signed at WALL; the agent's clock reads a second later.
    let gate = CommandGate::new(own.clone(), trust, SessionStats::new()).with_clock(|| WALL + 1_000);
    let _ = gate.check_registration(headers, payload);
    let result = validate_command(headers, payload, &gate);
    let refusals = gate.take_refusals();
    assert!(refusals.len() <= muster_agent::intake::PENDING_REFUSALS);
    let Ok(command) = result else { return };
    assert!(payload.len() <= MAX_COMMAND_BYTES);
    assert_eq!(command.schema, PROTOCOL_VERSION);
    assert_eq!(command.host, own, "a command for another host is never accepted");
    assert_msgpack_round_trip(&command);
    let key = match &command.body {
        CommandBody::Execute(e) => Some(CommandKey::Execute(TaskAttempt { task: e.task, attempt: e.attempt })),
        CommandBody::Cancel { task, attempt } => {
            Some(CommandKey::Cancel(TaskAttempt { task: *task, attempt: *attempt }))
        }
        CommandBody::Configure { .. } => None,
    };
    if let Some(key) = key {
        if !insecure {
            let again = validate_command(headers, payload, &gate);
            assert!(matches!(again, Err(BadCommand::Refused(_))), "a signed {key:?} replayed is refused: {again:?}");
        }
        let mut seen = SeenSet::new(2);
        assert!(seen.insert(key) && !seen.insert(key), "a repeat is dropped");
    }
    let plan = plan_catch_up(vec![(1, command.clone()), (2, command)], &Default::default());
    assert!(plan.commands.len() <= 2);
});
