//! Scenario 7: what an operator waits for at the terminal — `muster run --hosts '*' -- true` on a fleet of real
//! agent processes, timed from the CLI's start to its exit, which is when it has printed that the request ended.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use muster_tests::paths::workspace_bin;

use crate::api::Api;
use crate::env::{start_agent, start_server, Nats, RunDir, ServerTiming};
use crate::report::{secs, Row, Scenario, Verdict};

/// Real agent processes: each a separate `muster-agent` (≈8 MiB), so 100 fit easily beside everything else.
const AGENTS: usize = 100;

/// Runs timed after one untimed warm-up run (which pays for the first commands' stream and subject setup).
const RUNS: usize = 10;

/// The median a person no longer notices as a wait after a command that touched every host.
const TARGET: Duration = Duration::from_millis(200);

/// How long one `muster run` may take before the scenario fails instead of reporting a figure.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// Starts a nats-server, a muster-server and [`AGENTS`] real agents, then times [`RUNS`] CLI runs.
pub async fn cli(run: &RunDir) -> anyhow::Result<Scenario> {
    let dir = run.sub("cli")?;
    let mut nats = Nats::start(&dir).await?;
    let api = Api::connect(&nats.url).await?;
    let mut server = start_server(&dir, &nats.url, ServerTiming::DEFAULT, &api).await?;
    eprintln!("bench: starting {AGENTS} real agents for the CLI scenario");
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        agents.push(start_agent(&dir, &nats.url, &format!("cli-{i:03}"))?);
    }
    let started = Instant::now();
    while api.summary().await?.healthy < AGENTS as u64 {
        for a in &mut agents {
            a.ensure_running()?;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("CLI scenario: {AGENTS} agents not HEALTHY within 60 s: {}", api.summary().await?.raw);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cli = workspace_bin("muster")?;
    time_run(&cli, &nats.url, &dir).await.context("warm-up run")?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        times.push(time_run(&cli, &nats.url, &dir).await?);
        server.ensure_running()?;
        nats.proc.ensure_running()?;
    }
    times.sort();
    let median = times[RUNS / 2];
    Ok(Scenario {
        title: "7. Operator CLI end to end".into(),
        setup: format!(
            "{AGENTS} real `muster-agent` processes, one release `muster-server`; `muster run --hosts '*' -- true` \
             run {RUNS} times after a warm-up, each timed from the CLI process's start to its exit (it exits when it \
             has seen the request end)."
        ),
        rows: vec![
            Row::new(
                &format!("`muster run` on {AGENTS} hosts, median"),
                secs(median.as_secs_f64()),
                &format!("≤ {}", secs(TARGET.as_secs_f64())),
                String::new(),
                Verdict::of(median <= TARGET),
            ),
            Row::info("fastest", secs(times[0].as_secs_f64())),
            Row::info("slowest", secs(times[RUNS - 1].as_secs_f64())),
        ],
        notes: Vec::new(),
    })
}

/// One `muster run --hosts '*' -- true`, which must exit 0 (every task COMPLETED) within [`RUN_DEADLINE`].
async fn time_run(cli: &Path, nats_url: &str, dir: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // As an operator: admin credentials and the CA.
    let out = tokio::process::Command::new(cli)
        .args(["--nats", nats_url, "run", "--hosts", "*", "--", "true"])
        .envs(crate::env::identities()?.env(muster_tests::Identity::Admin)?)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_DEADLINE, out)
        .await
        .with_context(|| format!("`muster run` did not end within {RUN_DEADLINE:?}"))??;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`muster run` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}
