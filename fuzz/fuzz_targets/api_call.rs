//! An API call as muster-server takes it (`muster.api.<endpoint>`, forwarded to `muster.leader.<endpoint>` for
//! writes): the read endpoints' arguments (`host`, `request`), and each write parsed from its body (`writes.rs`:
//! stack and blueprint TOML, the request spec's JSON, a request id) and stepped into the leader core of a small
//! cluster, which must answer it exactly once. Input: `[n][n bytes: endpoint name][body]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_fuzz::{api, core, split, step};
use muster_schemas::api::{Endpoint, RequestSpec};
use muster_server::leader::contract::{ApiCall, Effect};
use muster_server::{api as reads, writes};

fuzz_target!(|data: &[u8]| {
    let (name, body) = split(data);
    let name = String::from_utf8_lossy(name);
    match Endpoint::from_name(&name) {
        Some(Endpoint::Host) => {
            if let Ok(host) = reads::host_arg(body) {
                assert_eq!(host.as_str(), String::from_utf8_lossy(body).trim());
            }
        }
        Some(Endpoint::Request) => {
            let _ = reads::request_arg(body);
        }
        _ => {}
    }
    let Ok(call) = writes::parse_call(&name, body) else { return };
    assert!(Endpoint::from_name(&name).is_some_and(Endpoint::is_write));
    if let ApiCall::Request(spec) = &call {
        // The CLI sends what it encodes; what the server decoded must encode to JSON it decodes the same way.
        let json = serde_json::to_vec(spec).expect("a request spec encodes");
        let again: RequestSpec = serde_json::from_slice(&json).expect("an encoded request spec decodes");
        assert_eq!(serde_json::to_vec(&again).expect("a request spec encodes"), json, "JSON round trip of {spec:?}");
    }
    let mut core = core();
    let ready = step(&mut core, api(call));
    let answers = ready.effects.iter().filter(|e| matches!(e, Effect::Api { token: 1, .. })).count();
    assert_eq!(answers, 1, "an API call is answered exactly once: {:?}", ready.effects);
});
