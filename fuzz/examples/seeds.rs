//! Writes the seed corpus, fuzz/seeds/<target>/: well-formed inputs of every kind each target takes, so the
//! fuzzer starts from messages that pass the decoders. Run after a wire type changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (docs/fuzzing.md).

use std::path::Path;

use muster_fuzz::{base, command_signer, registration, BLUEPRINT, STACK, WALL};
use muster_schemas::api::RequestSpec;
use muster_schemas::cluster::RequestAction;
use muster_schemas::commands::{
    Category, Command, CommandBody, CommandSpec, ComponentRef, ComponentSpec, ComponentStatus, Execution, Report,
    ReportBody, RoleCommand, TaskPhase, TaskReport,
};
use muster_schemas::messages::{CatchUpRequest, EnrollRequest};
use muster_schemas::signing::SignedFields;
use muster_schemas::txn::TXN_SCHEMA;
use muster_schemas::{codec, Health, Heartbeat, HostId, Txn, TxnOp, PROTOCOL_VERSION};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("seeds dir");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

/// `[n][head][body]`, as `muster_fuzz::split` cuts it.
fn framed(head: &str, body: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::try_from(head.len()).expect("a short head")];
    v.extend_from_slice(head.as_bytes());
    v.extend_from_slice(body);
    v
}

fn id(s: &str) -> HostId {
    HostId::new(s).expect("a valid host id")
}

fn main() {
    write("prep_register", "h1", &framed("h1", &codec::encode(&registration("h1", &[]))));
    write("prep_register", "h4-labels", &framed("h4", &codec::encode(&registration("h4", &[("role", "worker")]))));

    let beat = |host: &str, problems: Vec<String>| Heartbeat {
        schema: PROTOCOL_VERSION,
        host: id(host),
        seq: 7,
        sent_at: WALL,
        health: Health { problems },
    };
    write("prep_heartbeat", "h2", &framed("h2", &codec::encode(&beat("h2", vec![]))));
    write("prep_heartbeat", "h3-unhealthy", &framed("h3", &codec::encode(&beat("h3", vec!["disk full".into()]))));

    let report =
        |host: &str, body: ReportBody| Report { schema: PROTOCOL_VERSION, host: id(host), sent_at: WALL, body };
    let task = |task: u64, phase: TaskPhase| {
        ReportBody::Task(TaskReport {
            task,
            attempt: 1,
            phase,
            report_seq: 2,
            started_at: WALL - 10,
            finished_at: phase.is_final().then_some(WALL),
            exit_code: phase.is_final().then_some(0),
            stdout: "out".into(),
            stderr: String::new(),
        })
    };
    write("prep_report", "task-completed", &framed("h1", &codec::encode(&report("h1", task(1, TaskPhase::Completed)))));
    write("prep_report", "task-running", &framed("h2", &codec::encode(&report("h2", task(2, TaskPhase::InProgress)))));
    write("prep_report", "task-failed", &framed("h3", &codec::encode(&report("h3", task(3, TaskPhase::Failed)))));
    let status = ReportBody::Status {
        statuses: vec![ComponentStatus {
            component: ComponentRef { service: "toy".into(), component: "worker".into() },
            running: true,
            auto_restarts: 1,
        }],
        full: true,
        nonce: "n1".into(),
    };
    write("prep_report", "status", &framed("h2", &codec::encode(&report("h2", status))));

    let spec = CommandSpec {
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        env: [("A".into(), "b".into())].into(),
        timeout_ms: 5_000,
    };
    let command = |body| Command { schema: PROTOCOL_VERSION, host: id("web-1"), body };
    let execute = command(CommandBody::Execute(Execution {
        task: 9,
        attempt: 1,
        request: 3,
        component: Some(ComponentRef { service: "toy".into(), component: "master".into() }),
        command: RoleCommand::Start,
        spec: spec.clone(),
    }));
    let configure = command(CommandBody::Configure {
        components: vec![ComponentSpec {
            service: "toy".into(),
            component: "master".into(),
            category: Category::Daemon,
            status: Some(spec.clone()),
            start: Some(spec),
            should_run: true,
        }],
    });
    // Mode byte 0: the gate trusts `command_signer()`; 1: it runs insecure.
    let signed = |name: &str, command: &Command, mode: u8| {
        let body = codec::encode(command);
        let fields = SignedFields::issue_command(command, 2, WALL, 2_000);
        let mut head = String::from("Muster-Kind: command\nMuster-Host: web-1");
        for (k, v) in command_signer().sign(&fields, &body) {
            head.push_str(&format!("\n{k}: {v}"));
        }
        let mut input = vec![mode];
        input.extend(u16::try_from(head.len()).expect("short headers").to_be_bytes());
        input.extend(head.as_bytes());
        input.extend(&body);
        write("agent_command", name, &input);
    };
    signed("execute", &execute, 0);
    signed("cancel", &command(CommandBody::Cancel { task: 9, attempt: 1 }), 0);
    signed("configure", &configure, 0);
    signed("execute-insecure", &execute, 1);
    let mut unsigned = vec![1, 0, 0];
    unsigned.extend(codec::encode(&execute));
    write("agent_command", "execute-insecure-no-headers", &unsigned);

    write("api_call", "stack-apply", &framed("stack.apply", STACK.as_bytes()));
    write("api_call", "blueprint-apply", &framed("blueprint.apply", BLUEPRINT.as_bytes()));
    write("api_call", "request-cancel", &framed("request.cancel", b"1"));
    write("api_call", "host", &framed("host", b"h1"));
    write("api_call", "request", &framed("request", b" 1 "));
    let run = RequestSpec {
        action: RequestAction::Run,
        target: None,
        hosts: Some("h1,label:role=worker,state:HEALTHY".into()),
        argv: vec!["echo".into(), "hi".into()],
        timeout_secs: Some(30),
        batch: 1,
        max_failures: 1,
        success_factor: Some(0.5),
        idempotency_key: Some("key-1".into()),
    };
    write("api_call", "request-run", &framed("request.create", &serde_json::to_vec(&run).expect("json")));
    for (name, action, target) in [
        ("request-start", RequestAction::Start, "toy"),
        ("request-restart", RequestAction::Restart, "worker"),
        ("request-custom", RequestAction::Custom("rebalance".into()), "worker"),
        ("request-uninstall", RequestAction::Uninstall, "toy/master"),
    ] {
        let spec =
            RequestSpec { action, target: Some(target.into()), hosts: Some("h*".into()), argv: vec![], ..run.clone() };
        write("api_call", name, &framed("request.create", &serde_json::to_vec(&spec).expect("json")));
    }

    let store = base();
    let snapshot = store.snapshot().expect("the base cluster snapshots");
    write("snapshot_decode", "base", &codec::encode(&snapshot));
    let loaded = muster_server::leader::load(store).expect("the base cluster loads");
    let mut ops: Vec<TxnOp> = vec![TxnOp::ReserveIds { tasks: 100, requests: 10 }];
    ops.extend(loaded.hosts.into_iter().map(|r| TxnOp::PutHost(Box::new(r))));
    ops.extend(loaded.stacks.into_iter().map(|r| TxnOp::PutStack(Box::new(r))));
    ops.extend(loaded.blueprints.into_iter().map(|r| TxnOp::PutBlueprint(Box::new(r))));
    ops.extend(loaded.components.into_iter().map(|r| TxnOp::PutHostComponent(Box::new(r))));
    ops.extend(loaded.requests.into_iter().map(|r| TxnOp::PutRequest(Box::new(r))));
    ops.extend(loaded.tasks.into_iter().map(|r| TxnOp::PutTask(Box::new(r))));
    ops.extend(loaded.cursors.into_iter().map(|r| TxnOp::PutCursor(Box::new(r))));
    let txn = |ops: Vec<TxnOp>, continues| Txn { schema: TXN_SCHEMA, epoch: 3, proposed_at: WALL, ops, continues };
    for (i, op) in ops.iter().enumerate() {
        write("txn_decode", &format!("op-{i}"), &codec::encode(&txn(vec![op.clone()], false)));
    }
    write("txn_decode", "all", &codec::encode(&txn(ops, true)));
    write("txn_decode", "barrier", &codec::encode(&txn(vec![], false)));

    let catchup = CatchUpRequest { schema: PROTOCOL_VERSION, host: id("h1"), from_seq: 5, up_to_seq: 90, max: 16 };
    write("catchup_request", "h1", &framed("h1", &codec::encode(&catchup)));

    let user = |b: u8| nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, [b; 32]).expect("a user key");
    let (token, agent) = (user(1), user(2));
    let signed = EnrollRequest::signed_bytes(&id("h9"), &agent.public_key(), &token.public_key());
    let enroll = EnrollRequest {
        schema: PROTOCOL_VERSION,
        host: id("h9"),
        key: agent.public_key(),
        token: token.public_key(),
        token_sig: token.sign(&signed).expect("signed"),
        key_sig: agent.sign(&signed).expect("signed"),
    };
    write("enroll_request", "h9", &framed("h9", &codec::encode(&enroll)));

    write("stack_toml", "stack", STACK.as_bytes());
    write("stack_toml", "blueprint", BLUEPRINT.as_bytes());
    write(
        "stack_toml",
        "bad-dependency",
        b"name = \"s\"\n[services.a.components.b]\ncategory = \"client\"\ndepends_on = [\"c\"]\n",
    );
}
