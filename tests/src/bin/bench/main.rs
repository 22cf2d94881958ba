//! `bench`: the benchmark driver behind `make bench` and `make bench-quick`.
//!
//! Starts its own nats-server (`nats/single.conf`, temp store, random ports), release `muster-server`,
//! `muster-swarm`s and a real agent, runs every scenario of docs/benchmarks.md, and writes the results into
//! that document between its `bench:<mode>` markers — only when every scenario completed. A run that cannot
//! complete (a process exits, a host never registers, a request never completes) exits non-zero and writes
//! nothing; its logs are kept under `target/bench/`.
//!
//! ```text
//! bench [--quick] [--fleet N] [--only GROUP[,GROUP…]] [--security MODE] [--out FILE | --no-write] [--keep]
//! ```
//!
//! `--only` runs some of the scenario groups — `fleet` (1, 2 and 4 share one fleet), `failure` (3), `failover`
//! (5), `footprint` (6), `cli` (7) — and prints the results instead of writing them, unless `--out` names a file.
//! `--security` takes the run off the secured default, to attribute what security costs: `signed` (loopback NATS
//! without TLS or credentials, commands and registration replies still signed and checked) or `insecure`
//! (nothing signed either); such a run also prints instead of writing unless `--out` is given. A partial run
//! writes a block of its own name (`full-only-fleet`, …), never a complete run's.
//!
//! A missed target is a result: written, marked **missed**. A broken guarantee — a host falsely declared lost, a
//! killed host not detected within its bound, a slow-consumer drop — is written too, and the run exits non-zero.
//!
//! # Layout
//! - `env`       — processes (nats-server with monitoring, muster-server, swarms, an agent) and `/proc` readings.
//! - `api`       — the `muster.api.*` endpoints and collectors of the change feed.
//! - `ceilings`  — core-NATS and JetStream throughput, measured in the same run.
//! - `scenarios` — scenarios 1, 2, 3, 4 and 6.
//! - `failover`  — scenario 5: three instances, the leader SIGKILLed under load.
//! - `cli`       — scenario 7: `muster run` on 100 real agents, timed as the operator waits for it.
//! - `report`    — the markdown tables and the marked block in docs/benchmarks.md.

mod api;
mod ceilings;
mod cli;
mod env;
mod failover;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use muster_tests::paths::{nats_server_bin, workspace_root};

use crate::env::{RunDir, Security};
use crate::report::Run;
use crate::scenarios::Plan;

/// The bench's command line, parsed by hand (see [`USAGE`]).
struct Options {
    quick: bool,
    /// Overrides the fleet of scenarios 1, 2, 4 and 5 (the storm target scales with it: 5,000 hosts/s).
    fleet: Option<usize>,
    out: Option<PathBuf>,
    keep: bool,
    /// Scenario groups to run ([`GROUPS`]); all when `None`.
    only: Option<Vec<String>>,
    /// What runs secured (the default: everything).
    security: Security,
}

/// The scenario groups, in the order they run: each starts its own processes.
const GROUPS: [&str; 5] = ["fleet", "failure", "failover", "footprint", "cli"];

const USAGE: &str = "usage: bench [--quick] [--fleet N] [--only GROUP[,GROUP...]] [--security MODE]
             [--out FILE | --no-write] [--keep]
  --quick        the bench-quick plan: a 10,000-host fleet, short windows (< 5 min)
  --fleet N      the fleet of scenarios 1, 2, 4 and 5 (storm target scaled to 5,000 hosts/s); prints the
                 results unless --out is given
  --only GROUPS  run only these groups: fleet (scenarios 1, 2, 4), failure (3), failover (5), footprint (6),
                 cli (7);
                 prints the results unless --out is given
  --security M   secured (default: JWT credentials, TLS, signed commands), signed (loopback NATS without TLS
                 or credentials, commands still signed and checked) or insecure (nothing signed either), to
                 attribute what security costs; other than secured, prints the results unless --out is given
  --out FILE     write the results between the bench:<block> markers of FILE (default docs/benchmarks.md);
                 <block> is quick or full, or a partial run's own name (full-only-fleet, ...)
  --no-write     print the results instead
  --keep         keep target/bench/<mode>-XXXXXX (logs, stores) after a successful run";

impl Options {
    fn runs(&self, group: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|g| g == group))
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        quick: false,
        fleet: None,
        out: Some(workspace_root().join("docs/benchmarks.md")),
        keep: false,
        only: None,
        security: Security::Secured,
    };
    let mut out_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--keep" => options.keep = true,
            "--fleet" => {
                let n: usize = args.next().context("--fleet needs a number")?.parse().context("--fleet")?;
                anyhow::ensure!((1_000..=1_000_000).contains(&n), "--fleet must be 1,000 to 1,000,000");
                options.fleet = Some(n);
            }
            "--no-write" => {
                options.out = None;
                out_given = true;
            }
            "--out" => {
                options.out = Some(PathBuf::from(args.next().context("--out needs a file")?));
                out_given = true;
            }
            "--only" => {
                let groups: Vec<String> =
                    args.next().context("--only needs a group")?.split(',').map(str::to_owned).collect();
                if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    anyhow::bail!("--only: unknown group {bad:?} (one of {})", GROUPS.join(", "));
                }
                options.only = Some(groups);
            }
            "--security" => {
                options.security = args.next().context("--security needs a mode")?.parse()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    // A partial or less secured run must not replace the complete results in docs/benchmarks.md.
    if options.is_partial() && !out_given {
        options.out = None;
    }
    Ok(options)
}

impl Options {
    /// Some groups only, another fleet, or less than secured.
    fn is_partial(&self) -> bool {
        self.only.is_some() || self.fleet.is_some() || self.security != Security::Secured
    }

    /// The name of the block this run writes: `quick` or `full` for a complete run; a partial run's own name
    /// (`full-fleet-20000`, `full-only-fleet`, `quick-security-signed`, …), so that `--out` never replaces a complete run's results.
    fn block(&self) -> String {
        let mut name = if self.quick { "quick" } else { "full" }.to_owned();
        if let Some(fleet) = self.fleet {
            name.push_str(&format!("-fleet-{fleet}"));
        }
        if let Some(only) = &self.only {
            name.push_str(&format!("-only-{}", only.join("-")));
        }
        if self.security != Security::Secured {
            name.push_str(&format!("-security-{}", self.security));
        }
        name
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mode = if options.quick { "quick" } else { "full" };
    let mut dir = match RunDir::new(mode, options.security) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options, mode, &dir)) {
        Ok(run) => {
            let block = report::render(&run);
            if let Some(out) = &options.out {
                if let Err(e) = report::write_block(out, &options.block(), &block) {
                    eprintln!("bench: {e:#}");
                    return ExitCode::FAILURE;
                }
                eprintln!("bench: results written to {}", out.display());
            } else {
                println!("{block}");
            }
            for missed in run.missed() {
                eprintln!("bench: target missed: {missed}");
            }
            let broken = run.broken();
            for b in &broken {
                eprintln!("bench: GUARANTEE BROKEN: {b}");
            }
            if options.keep || !broken.is_empty() {
                eprintln!("bench: logs kept in {}", dir.keep().display());
            }
            if broken.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench: FAILED, nothing written: {e:#}");
            eprintln!("bench: logs kept in {}", dir.keep().display());
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options, mode: &str, dir: &RunDir) -> anyhow::Result<Run> {
    let mut plan = if options.quick { Plan::quick() } else { Plan::full() };
    if let Some(fleet) = options.fleet {
        plan = plan.with_fleet(fleet);
    }
    let started = Instant::now();
    let started_at = command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let machine = machine()?;
    let (ceilings, mut scenarios) = if options.runs("fleet") {
        scenarios::fleet(dir, &plan).await?
    } else {
        (scenarios::ceilings_alone(dir, &plan).await?, Vec::new())
    };
    if options.runs("failure") {
        scenarios.push(scenarios::failure(dir, &plan).await?);
    }
    if options.runs("failover") {
        scenarios.push(failover::failover(dir, &plan).await?);
    }
    if options.runs("footprint") {
        scenarios.push(scenarios::footprint(dir, &plan).await?);
    }
    if options.runs("cli") {
        scenarios.push(cli::cli(dir).await?);
    }
    scenarios.sort_by(|a, b| a.title.cmp(&b.title));
    let command = std::iter::once(if options.quick { "make bench-quick →" } else { "make bench →" }.to_owned())
        .chain(std::env::args().map(|a| a.replace(&format!("{}/", workspace_root().display()), "")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut label = match options.fleet {
        Some(n) => format!("{mode}, fleet {}", report::thousands(n as f64)),
        None => mode.to_owned(),
    };
    if let Some(only) = &options.only {
        label.push_str(&format!(", only {}", only.join(", ")));
    }
    if options.security != Security::Secured {
        label.push_str(&format!(", security {}", options.security));
    }
    Ok(Run {
        mode: label,
        command,
        started: started_at,
        duration_secs: started.elapsed().as_secs_f64(),
        machine,
        ceilings,
        scenarios,
    })
}

/// The machine and the versions the figures belong to.
fn machine() -> anyhow::Result<Vec<(String, String)>> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let nats = nats_server_bin()?;
    let root = workspace_root();
    let root = root.to_string_lossy();
    let commit = command_output("git", &["-C", &root, "rev-parse", "--short=12", "HEAD"]);
    let dirty = !command_output("git", &["-C", &root, "status", "--porcelain"]).is_empty();
    Ok(vec![
        ("CPUs (`nproc`)".into(), env::nproc().to_string()),
        ("CPU model".into(), model),
        ("memory".into(), format!("{:.1} GiB", mem_kib as f64 / (1 << 20) as f64)),
        ("kernel".into(), command_output("uname", &["-r"])),
        (
            "load average at start".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("nats-server".into(), command_output(&nats.to_string_lossy(), &["--version"])),
        ("rustc".into(), command_output("rustc", &["--version"])),
        ("git commit".into(), if dirty { format!("{commit} + uncommitted changes") } else { commit }),
        ("command signing, per command (this machine, at start)".into(), signing_cost()),
    ])
}

/// What signed commands cost per command, measured in this process: the leader's signing (SHA-256 of the body,
/// ed25519 through nkeys, the headers) and an agent's check (headers parsed, signature verified, replay memory),
/// on a `run true` execution as a fan-out sends it.
fn signing_cost() -> String {
    use muster_schemas::commands::{Command, CommandBody, CommandSpec, Execution, RoleCommand};
    use muster_schemas::signing::{SignatureHeaders, SignedFields};
    use muster_security::command::{CommandSigner, CommandVerifier, ReplayGuard, Stamp};
    const N: u64 = 2_000;
    let host = muster_schemas::HostId::new("swarm-000001").expect("a valid host id");
    let signer = CommandSigner::generate();
    let Ok(verifier) = CommandVerifier::new([signer.public_key()]) else { return "unavailable".into() };
    let command = |task| Command {
        schema: muster_schemas::PROTOCOL_VERSION,
        host: host.clone(),
        body: CommandBody::Execute(Execution {
            task,
            attempt: 1,
            request: 1,
            component: None,
            command: RoleCommand::Run,
            spec: CommandSpec { argv: vec!["true".into()], env: Default::default(), timeout_ms: 60_000 },
        }),
    };
    let now = muster_nats::unix_millis();
    let encoded: Vec<_> = (0..N).map(command).map(|c| (muster_schemas::encode(&c), c)).collect();
    let started = Instant::now();
    let signed: Vec<_> = encoded
        .into_iter()
        .map(|(body, c)| {
            let headers = signer.sign(&SignedFields::issue_command(&c, 1, now, 10_000), &body);
            (c, body, headers)
        })
        .collect();
    let sign = started.elapsed();
    let (started, mut guard) = (Instant::now(), ReplayGuard::default());
    let verified = signed.iter().all(|(c, body, h)| {
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        let Ok(stamp) = Stamp::parse(&SignatureHeaders::read(get)) else { return false };
        let fields = SignedFields::command(c, stamp.epoch, stamp.issued, stamp.expires);
        verifier.verify(&stamp, &fields, body, &host, now).is_ok() && guard.admit(&fields, now).is_ok()
    });
    let verify = started.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / N as f64;
    if !verified {
        return "verification failed".into();
    }
    format!("sign {:.0} µs, verify {:.0} µs", per(sign), per(verify))
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}
