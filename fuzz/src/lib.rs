//! What the fuzz targets (`fuzz_targets/`) share: cutting one fuzz input into parts, the round-trip property of
//! the MessagePack codec, and a leader core holding a small cluster (the toy stack, its blueprint, three hosts
//! and a running request) into which a target steps whatever passed the decoder it fuzzes.
//!
//! See docs/fuzzing.md for running the targets and adding one.

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::Duration;

use muster_schemas::api::{RequestSpec, MAX_IDEMPOTENCY_KEY_BYTES};
use muster_schemas::cluster::RequestAction;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, Health, HostFacts, HostId, RegisterRequest, Txn, UnixMillis, PROTOCOL_VERSION};
use muster_security::command::CommandSigner;
use muster_server::leader::contract::{ApiCall, Input, Loaded, Ready, Timing};
use muster_server::leader::core::LeaderCore;
use muster_server::store::Store;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

/// The wall clock every target's core runs at (fixed: a target must be deterministic).
pub const WALL: UnixMillis = 1_700_000_000_000;

/// The core's timing, as a leader with a 1 s heartbeat interval has it.
pub const TIMING: Timing =
    Timing { interval: Duration::from_secs(1), deadline: Duration::from_secs(3), task_grace: Duration::from_secs(2) };

/// The toy stack of the demo and the tests.
pub const STACK: &str = r#"
name = "toy"
[services.toy.components.master]
category = "daemon"
install = { script = "true" }
start = { script = "true", timeout_secs = 5 }
stop = { script = "true" }
status = { script = "true" }
[services.toy.components.worker]
category = "daemon"
depends_on = ["master"]
install = { script = "true" }
start = { script = "true", timeout_secs = 5 }
stop = { script = "true" }
status = { script = "true" }
custom.rebalance = { argv = ["/bin/true"], env = { A = "b" } }
"#;

/// A blueprint for the toy stack.
pub const BLUEPRINT: &str = r#"
name = "bp"
stack = "toy"
[host_groups.masters]
hosts = ["h1"]
components = ["master"]
[host_groups.workers]
hosts = ["h*"]
labels = { role = "worker" }
components = ["worker"]
"#;

/// The hosts the base cluster has registered.
pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Splits `data` into a head of at most `data[0]` bytes and the rest (empty input: two empty parts).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return (&[], &[]) };
    rest.split_at(usize::from(n).min(rest.len()))
}

/// Splits `data` into a head of at most `u16::from_be_bytes(data[..2])` bytes and the rest (for heads that may be
/// longer than 255 bytes, such as a signed message's headers).
pub fn split_wide(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return (&[], &[]) };
    rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()))
}

/// What the codec promises of a value it decoded: encoding it and decoding that gives a value that encodes to the
/// same bytes (compared as bytes, so a float NaN, unequal to itself, still counts as stable).
pub fn assert_msgpack_round_trip<T: Serialize + DeserializeOwned + Debug>(value: &T) {
    let bytes = codec::encode(value);
    let again: T = match codec::decode(&bytes, usize::MAX) {
        Ok(v) => v,
        Err(e) => panic!("{value:?} encodes to bytes that do not decode: {e}"),
    };
    assert_eq!(codec::encode(&again), bytes, "re-encoding {value:?} is not stable");
}

/// The command key of the fuzz targets' server: fixed, so the seed corpus can hold validly signed commands.
pub fn command_signer() -> &'static CommandSigner {
    static SIGNER: OnceLock<CommandSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::Server, [7; 32]).expect("a server key");
        CommandSigner::from_seed(&key.seed().expect("a seed")).expect("a command key")
    })
}

/// A registration as an agent sends it.
pub fn registration(host: &str, labels: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        schema: PROTOCOL_VERSION,
        host: HostId::new(host).expect("a valid host id"),
        facts: HostFacts { hostname: host.into(), cpu_count: 2, ..Default::default() },
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        agent_version: "0.1.0".into(),
        agent_started_at: WALL - 1_000,
        health: Health::default(),
    }
}

/// A leader core with what the base cluster committed, as a new leader loads it, after its takeover.
pub fn core() -> LeaderCore {
    let loaded = muster_server::leader::load(base()).expect("the base store loads");
    let mut core = LeaderCore::new(2, TIMING, loaded, now(), WALL);
    core.step(Input::TakeOver, now(), WALL);
    let _ = core.ready();
    core
}

/// Steps `input` into `core` and completes the batch as the driver would: the commands it publishes come back
/// delivered (one more batch). What the first batch asked for is returned.
pub fn step(core: &mut LeaderCore, input: Input) -> Ready {
    core.step(input, now(), WALL);
    let ready = core.ready();
    if !ready.publish.is_empty() {
        let delivered = ready.publish.iter().cloned().zip(1_000..).collect();
        core.step(Input::Delivered(delivered), now(), WALL);
        let _ = core.ready();
    }
    ready
}

/// The monotonic clock: the core only compares instants, so the real one is fine.
pub fn now() -> Instant {
    Instant::now()
}

/// An API call as the core gets it (token 1).
pub fn api(call: ApiCall) -> Input {
    Input::Api { call, token: 1 }
}

/// The base cluster, committed to an in-memory store once per process: the toy stack, the blueprint, three
/// registered hosts and a `run` request with its commands delivered.
pub fn base() -> &'static Store {
    static BASE: OnceLock<Store> = OnceLock::new();
    BASE.get_or_init(|| {
        let store = Store::in_memory().expect("an in-memory store");
        let mut core = LeaderCore::new(1, TIMING, Loaded::default(), now(), WALL);
        let mut seq = 0;
        let mut commit = |core: &mut LeaderCore, input: Input| {
            core.step(input, now(), WALL);
            let mut ready = core.ready();
            loop {
                seq += 1;
                let txn = Txn { schema: TXN_SCHEMA, epoch: 1, proposed_at: WALL, ops: ready.ops, continues: false };
                store.apply(&[(seq, txn)]).expect("the base cluster commits");
                if ready.publish.is_empty() {
                    break;
                }
                let delivered = ready.publish.into_iter().zip(seq * 100..).collect();
                core.step(Input::Delivered(delivered), now(), WALL);
                ready = core.ready();
            }
        };
        commit(&mut core, Input::TakeOver);
        commit(&mut core, api(ApiCall::ApplyStack { source: STACK.into() }));
        commit(&mut core, api(ApiCall::ApplyBlueprint { source: BLUEPRINT.into() }));
        for h in HOSTS {
            let labels: &[(&str, &str)] = if h == "h1" { &[] } else { &[("role", "worker")] };
            commit(&mut core, Input::Register { req: Box::new(registration(h, labels)), reply: None });
        }
        let run = RequestSpec {
            action: RequestAction::Run,
            target: None,
            hosts: Some("h*".into()),
            argv: vec!["true".into()],
            timeout_secs: Some(60),
            batch: 0,
            max_failures: 0,
            success_factor: None,
            idempotency_key: Some("k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)),
        };
        commit(&mut core, api(ApiCall::Request(run)));
        store
    })
}
