//! The scenarios. Each starts the processes it needs, measures, and returns its table; anything that keeps a
//! scenario from completing (a process exits, a host never registers, a request does not complete, events are
//! lost) is an error, so no partial figure is ever reported as a result.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use muster_nats::unix_millis;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::events::RequestChanged;
use muster_schemas::{HostState, Subjects};
use serde_json::json;

use crate::api::{self, hosts_in, Api, StreamWatch};
use crate::ceilings::{self, CeilingSizes, Ceilings};
use crate::env::{
    describe_usage, proc_stat, start_agent, start_server, start_swarm, Nats, RunDir, ServerTiming, Usage,
};
use crate::report::{mib, secs, thousands, Row, Scenario, Verdict};

/// Width of the swarm's zero-padded host index (`swarm-000000`), so a glob of `?`s selects a power of ten.
const ID_DIGITS: u32 = 6;

/// What one run measures.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Hosts of the storm, steady-state and fan-out fleet.
    pub fleet: usize,
    /// Storm target for `fleet` hosts.
    pub storm_target: Duration,
    /// How long the storm may take before the run is abandoned.
    pub storm_deadline: Duration,
    /// How long scenario 2 measures steady heartbeats, after two heartbeat intervals of settling.
    pub steady_window: Duration,
    /// Fan-out sizes (powers of ten, at most `fleet`) and their targets.
    pub fanout: Vec<(usize, Duration)>,
    /// Hosts of the failure-detection fleet, and how many of them are killed.
    pub failure_fleet: usize,
    /// How many of `failure_fleet` run in a swarm that is SIGKILLed at once.
    pub failure_victims: usize,
    /// Real-agent footprint window.
    pub footprint_window: Duration,
    /// Ceiling message counts.
    pub ceiling_sizes: CeilingSizes,
}

impl Plan {
    /// The full plan (`make bench`): a 100,000-host fleet and full-length windows.
    pub fn full() -> Self {
        Self {
            fleet: 100_000,
            storm_target: Duration::from_secs(20),
            storm_deadline: Duration::from_secs(240),
            steady_window: Duration::from_secs(60),
            fanout: vec![
                (1_000, Duration::from_millis(500)),
                (10_000, Duration::from_secs(3)),
                (100_000, Duration::from_secs(20)),
            ],
            failure_fleet: 10_000,
            failure_victims: 100,
            footprint_window: Duration::from_secs(60),
            ceiling_sizes: CeilingSizes { core: 1_000_000, js_pipelined: 20_000, js_serial: 2_000 },
        }
    }

    /// This plan with another storm/steady/fan-out fleet: the storm target keeps the rate of 5,000 hosts/s, and
    /// fan-outs larger than the fleet are dropped.
    pub fn with_fleet(mut self, fleet: usize) -> Self {
        self.fleet = fleet;
        self.storm_target = Duration::from_secs_f64(fleet as f64 / 5_000.0);
        self.storm_deadline = self.storm_deadline.max(Duration::from_secs_f64(fleet as f64 / 400.0));
        self.fanout.retain(|(size, _)| *size <= fleet);
        self
    }

    /// `make bench-quick`: the same scenarios with a tenth of the fleet and shorter windows (< 5 min).
    pub fn quick() -> Self {
        Self {
            fleet: 10_000,
            storm_target: Duration::from_secs(2),
            storm_deadline: Duration::from_secs(90),
            steady_window: Duration::from_secs(20),
            fanout: vec![(1_000, Duration::from_millis(500)), (10_000, Duration::from_secs(3))],
            failure_fleet: 10_000,
            failure_victims: 100,
            footprint_window: Duration::from_secs(20),
            ceiling_sizes: CeilingSizes { core: 300_000, js_pipelined: 5_000, js_serial: 500 },
        }
    }
}

/// Scenarios 1, 2 and 4 on one fleet: the storm registers it, steady state watches it, the fan-outs command it.
/// The ceilings are measured first, on the same nats-server, before muster runs.
pub async fn fleet(run: &RunDir, plan: &Plan) -> anyhow::Result<(Ceilings, Vec<Scenario>)> {
    let dir = run.sub("fleet")?;
    let mut nats = Nats::start(&dir).await?;
    eprintln!("bench: measuring the NATS ceilings");
    let ceilings = ceilings::measure(&nats.url, plan.ceiling_sizes).await?;
    eprintln!(
        "bench: core {} msg/s, JetStream {} msg/s pipelined, {} msg/s serial, {} msg/s into two streams",
        thousands(ceilings.core_msgs_per_sec),
        thousands(ceilings.js_pipelined_per_sec),
        thousands(ceilings.js_serial_per_sec),
        thousands(ceilings.js_two_streams_per_sec)
    );
    let api = Api::connect(&nats.url).await?;
    // Scenario 2 asks for 5 s heartbeats; the storm and the fan-outs run with the same server.
    let timing = ServerTiming { heartbeat_interval: Duration::from_secs(5), heartbeat_misses: 3 };
    let mut server = start_server(&dir, &nats.url, timing, &api).await?;
    let host_events = api::host_events(&nats.url).await?;
    let task_events = api::task_events(&nats.url).await?;
    let request_events = api::request_events(&nats.url).await?;
    let n = plan.fleet;

    // 1. Registration storm.
    eprintln!("bench: storm of {n} hosts");
    let wall0 = unix_millis();
    let t0 = Instant::now();
    let mut swarm = start_swarm(&dir, &nats.url, "swarm", "swarm", 0, n, Duration::ZERO)?;
    let usage = Usage::start(&[("muster-server", &server), ("nats-server", &nats.proc), ("swarm", &swarm)])?;
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        nats.proc.ensure_running()?;
        server.ensure_running()?;
        swarm.ensure_running()?;
        let seen = host_events.len();
        // Each host makes at least two changes (NEW → WAITING → HEALTHY); only then is a full look worth it.
        if seen >= 2 * n {
            let healthy = hosts_in(&host_events.snapshot(), HostState::Healthy);
            if healthy.len() >= n {
                break healthy;
            }
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(10);
            eprintln!("bench:   {:.0} s: {seen} host events", t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > plan.storm_deadline {
            let summary = api.summary().await.map(|s| s.raw.to_string()).unwrap_or_else(|e| e.to_string());
            bail!("storm: not every host HEALTHY after {:?}; summary: {summary}", plan.storm_deadline);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let storm_usage = usage.finish()?;
    host_events.ensure_complete("storm")?;
    let falsely_lost = host_events.snapshot().iter().filter(|e| e.event.to == HostState::HeartbeatLost).count();
    let summary = api.summary().await?;
    if summary.healthy != n as u64 {
        bail!("storm: events say {n} hosts are HEALTHY but the summary says {}: {}", summary.healthy, summary.raw);
    }
    let mut times: Vec<f64> = healthy.values().map(|at| at.saturating_sub(wall0) as f64 / 1000.0).collect();
    times.sort_by(f64::total_cmp);
    let all = *times.last().context("no host")?;
    let busy = api.counter("reg.rejected.busy").await?;
    let storm_step_downs = api.counter("leader.step_downs").await?;
    let accepted = api.counter("reg.accepted").await?;
    let swarm_mem = proc_stat(swarm.pid().context("swarm gone")?)?;
    // A host without components costs a registration request, its reply and a heartbeat on core NATS; the log is
    // group-committed (thousands of registrations per fsync'd append), and no status report is sent.
    let core_floor = 3.0 * n as f64 / ceilings.core_msgs_per_sec;
    let storm = Scenario {
        title: "1. Registration storm".into(),
        setup: format!(
            "{} simulated hosts (`muster-swarm --count {n}`, one process, {} connections) start at once \
             against one muster-server (heartbeat 5 s); time from the swarm's start to the arrival of the last \
             host's WAITING → HEALTHY event (published after its commit), confirmed by `muster.api.summary`.",
            thousands(n as f64),
            n.div_ceil(5_000).max(1)
        ),
        rows: vec![
            Row::new(
                &format!("all {} hosts HEALTHY", thousands(n as f64)),
                secs(all),
                &format!("≤ {}", secs(plan.storm_target.as_secs_f64())),
                format!("≥ {} (request, reply and heartbeat per host at the core NATS rate)", secs(core_floor)),
                Verdict::of(all <= plan.storm_target.as_secs_f64()),
            ),
            Row::info("half of the hosts HEALTHY", secs(percentile(&times, 0.5))),
            Row::new(
                "hosts declared HEARTBEAT_LOST during the storm (all were alive)",
                thousands(falsely_lost as f64),
                "0",
                String::new(),
                Verdict::guarantee(falsely_lost == 0),
            ),
            Row::info(
                "registrations: accepted / answered `busy`",
                format!("{} / {}", thousands(accepted as f64), thousands(busy as f64)),
            ),
            Row::info(
                "swarm memory (whole process, after the storm)",
                format!(
                    "{} RSS, peak {}: {} bytes/host",
                    mib(swarm_mem.rss),
                    mib(swarm_mem.peak_rss),
                    swarm_mem.rss / n as u64
                ),
            ),
        ],
        notes: vec![format!(
            "Busy during the storm: {}. The leader stepped down {storm_step_downs} time(s).",
            describe_usage(&storm_usage)
        )],
    };

    // 2. Steady heartbeats.
    let settle = timing.heartbeat_interval * 2;
    eprintln!("bench: steady state for {:?} (after {settle:?} settling)", plan.steady_window);
    tokio::time::sleep(settle).await;
    let events_before = host_events.len();
    let slow_before = api.counter("nats.slow_consumer").await?;
    let varz_before = nats.slow_consumers().await?;
    let hb_before = api.counter("hb.received").await?;
    let usage = Usage::start(&[("muster-server", &server), ("nats-server", &nats.proc), ("swarm", &swarm)])?;
    let server_pid = server.pid().context("server gone")?;
    let mut max_rss = 0;
    while usage.elapsed() < plan.steady_window {
        server.ensure_running()?;
        swarm.ensure_running()?;
        max_rss = max_rss.max(proc_stat(server_pid)?.rss);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let steady_usage = usage.finish()?;
    let window = usage.elapsed().as_secs_f64();
    let hb_rate = (api.counter("hb.received").await? - hb_before) as f64 / window;
    let slow = api.counter("nats.slow_consumer").await? - slow_before;
    let varz = match (varz_before, nats.slow_consumers().await?) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let changes = host_events.snapshot()[events_before..].len();
    let summary = api.summary().await?;
    let cpu = steady_usage.get("muster-server").map_or(0.0, |u| u.cores);
    let expected_rate = n as f64 / timing.heartbeat_interval.as_secs_f64();
    let steady = Scenario {
        title: "2. Steady heartbeats".into(),
        setup: format!(
            "The storm's {} hosts heartbeat every 5 s (±10 %) for {:.0} s; the server's CPU from `/proc/<pid>/stat` \
             (utime + stime) over the window, its RSS sampled every second.",
            thousands(n as f64),
            window
        ),
        rows: vec![
            Row::new(
                "muster-server CPU",
                format!("{cpu:.3} cores"),
                "≤ 0.5 core",
                String::new(),
                Verdict::of(cpu <= 0.5),
            ),
            Row::new(
                "muster-server RSS (max in window)",
                mib(max_rss),
                "≤ 500 MiB",
                String::new(),
                Verdict::of(max_rss <= 500 << 20),
            ),
            Row::new(
                "slow-consumer drops (muster `nats.slow_consumer` / nats-server /varz)",
                format!("{slow} / {}", varz.map_or("n/a".to_owned(), |v| v.to_string())),
                "0",
                String::new(),
                Verdict::guarantee(slow == 0 && varz.unwrap_or(0) == 0),
            ),
            Row::new(
                "heartbeats received",
                format!("{}/s", thousands(hb_rate)),
                &format!("≈ {}/s", thousands(expected_rate)),
                format!("{:.2} % of core NATS", 100.0 * hb_rate / ceilings.core_msgs_per_sec),
                Verdict::Info,
            ),
            Row::new(
                "host state changes in the window",
                format!("{changes} (HEALTHY at the end: {})", thousands(summary.healthy as f64)),
                "0",
                String::new(),
                Verdict::guarantee(changes == 0 && summary.healthy == n as u64),
            ),
        ],
        notes: vec![format!("Busy during the window: {}.", describe_usage(&steady_usage))],
    };

    // 4. Command fan-out.
    let mut fanout_rows = Vec::new();
    let mut fanout_notes = Vec::new();
    let subjects = Subjects::default();
    let streams = StreamWatch::start(&nats.url, &[subjects.commands_stream(), subjects.reports_stream()]).await?;
    for &(size, target) in plan.fanout.iter().filter(|(size, _)| *size <= n) {
        let glob = glob_for(size)?;
        eprintln!("bench: fan-out `run true` to {size} hosts ({glob})");
        let usage = Usage::start(&[("muster-server", &server), ("nats-server", &nats.proc), ("swarm", &swarm)])?;
        let step_downs = api.counter("leader.step_downs").await?;
        let sent = Instant::now();
        let sent_wall = unix_millis();
        let spec = json!({"action": "run", "hosts": glob, "argv": ["true"]});
        let (id, tasks) = api.create_request(&spec).await?;
        let answered = sent.elapsed().as_secs_f64();
        if tasks != size as u64 {
            bail!("fan-out: `{glob}` made {tasks} tasks, not {size}");
        }
        let deadline = (target * 10).max(Duration::from_secs(120));
        let ended = |events: &[(RequestChanged, Instant)]| {
            events.iter().find(|(e, _)| e.request == id && e.status.is_terminal()).map(|(e, at)| (e.status, *at))
        };
        // The request's terminal event is published once its end is committed: its arrival is when every result
        // was durably recorded. The listing confirms it.
        let (status, recorded) = loop {
            server.ensure_running()?;
            swarm.ensure_running()?;
            if let Some(end) = ended(&request_events.snapshot()) {
                break end;
            }
            if sent.elapsed() > deadline {
                let row = api.request_row(id).await?;
                bail!("fan-out to {size}: request {id} still {:?} after {deadline:?}", row.status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let total = recorded.duration_since(sent).as_secs_f64();
        let fan_usage = usage.finish()?;
        request_events.ensure_complete("fan-out")?;
        let row = api.request_row(id).await?;
        let step_downs = api.counter("leader.step_downs").await? - step_downs;
        if status != TaskStatus::Completed || row.status != TaskStatus::Completed {
            bail!("fan-out to {size}: request {id} ended {:?}: {}", row.status, row.detail);
        }
        // Task events are published after the commit they describe; give the last ones a moment to arrive.
        let completed = wait_for(Duration::from_secs(10), || {
            let done: Vec<u64> = task_events
                .snapshot()
                .iter()
                .filter(|e| e.request == id && e.status == TaskStatus::Completed)
                .map(|e| e.at)
                .collect();
            (done.len() >= tasks as usize).then_some(done)
        })
        .await;
        task_events.ensure_complete("fan-out")?;
        let Some(done) = completed else {
            bail!("fan-out to {size}: fewer than {tasks} COMPLETED task events arrived for request {id}");
        };
        let mut latency: Vec<f64> = done.iter().map(|at| at.saturating_sub(row.created_at) as f64 / 1000.0).collect();
        latency.sort_by(f64::total_cmp);
        let last_run = done.iter().max().map_or(0.0, |at| at.saturating_sub(sent_wall) as f64 / 1000.0);
        // The stores go on after the request ends (its results are committed from the reports' live copies).
        let stored = streams.settled(sent, Duration::from_secs(1), Duration::from_secs(120)).await?;
        let stored_at =
            |i: usize| stored[i].map_or("—".to_owned(), |at| format!("{:.2}", at.duration_since(sent).as_secs_f64()));
        // What must happen in order: the tasks' commit (one fsync'd append), each command out and each report
        // back on core NATS (agents run live copies, the leader commits results from live copies: neither
        // JetStream store is on this path), the results' commit (one more append at least).
        let floor = 2.0 * size as f64 / ceilings.core_msgs_per_sec + 2.0 / ceilings.js_serial_per_sec;
        let hosts = thousands(size as f64);
        fanout_rows.push(Row::new(
            &format!("{hosts} hosts: total, request sent → every result recorded (request COMPLETED)"),
            secs(total),
            &format!("≤ {}", secs(target.as_secs_f64())),
            format!("≥ {} (2 core NATS messages per task at the core rate, 2 serial log appends)", secs(floor)),
            Verdict::of(total <= target.as_secs_f64()),
        ));
        fanout_rows.push(Row::info(
            &format!(
                "{hosts} hosts: s after the request was sent — tasks committed / commands stored / last command run \
                 / reports stored / results committed"
            ),
            format!("{answered:.2} / {} / {last_run:.2} / {} / {total:.2}", stored_at(0), stored_at(1)),
        ));
        fanout_rows.push(Row::info(
            &format!("{hosts} hosts: per-task latency (`finished_at` − `created_at`) p50 / p99 / max"),
            format!(
                "{} / {} / {}",
                secs(percentile(&latency, 0.5)),
                secs(percentile(&latency, 0.99)),
                secs(*latency.last().unwrap_or(&0.0))
            ),
        ));
        fanout_notes.push(format!(
            "{hosts} hosts: `request.create` answered after {} (its tasks committed as QUEUED; the commands are \
             stored after the answer); the request's own \
             `finished_at` − `created_at` is {} (the last agent's end of its command, not when its result was \
             recorded); the leader stepped down {step_downs} time(s); busy: {}.",
            secs(answered),
            secs(row.finished_at.saturating_sub(row.created_at) as f64 / 1000.0),
            describe_usage(&fan_usage)
        ));
    }
    let fanout = Scenario {
        title: "4. Command fan-out".into(),
        setup: format!(
            "`muster.api.request.create` with `{{\"action\":\"run\",\"hosts\":\"swarm-0…?\",\"argv\":[\"true\"]}}` to a \
             power of ten of the {} registered hosts, one request at a time; every result is durably recorded \
             (the request's COMPLETED event, published after that commit, has arrived; `muster.api.requests` confirms). \
             Per-task latency = the task's `finished_at` (the agent's report of its end, `TaskChanged.at`) − the \
             request's `created_at`.",
            thousands(n as f64)
        ),
        rows: fanout_rows,
        notes: fanout_notes,
    };
    drop(swarm);
    Ok((ceilings, vec![storm, steady, fanout]))
}

/// The ceilings alone, on a nats-server of their own: for a run without the fleet scenarios, which measure them
/// on theirs.
pub async fn ceilings_alone(run: &RunDir, plan: &Plan) -> anyhow::Result<Ceilings> {
    let dir = run.sub("ceilings")?;
    let nats = Nats::start(&dir).await?;
    eprintln!("bench: measuring the NATS ceilings");
    let ceilings = ceilings::measure(&nats.url, plan.ceiling_sizes).await?;
    drop(nats);
    Ok(ceilings)
}

/// Scenario 3: a fleet where one separate swarm process is SIGKILLed; every killed host must be declared
/// HEARTBEAT_LOST within `interval × misses + 1 s`, and no other host.
pub async fn failure(run: &RunDir, plan: &Plan) -> anyhow::Result<Scenario> {
    let dir = run.sub("failure")?;
    let mut nats = Nats::start(&dir).await?;
    let api = Api::connect(&nats.url).await?;
    let timing = ServerTiming::DEFAULT;
    let mut server = start_server(&dir, &nats.url, timing, &api).await?;
    let events = api::host_events(&nats.url).await?;
    let (fleet, victims) = (plan.failure_fleet, plan.failure_victims);
    let stay = fleet - victims;
    eprintln!("bench: failure detection: {fleet} hosts, {victims} of them in a swarm that is killed");
    let mut stayers = start_swarm(&dir, &nats.url, "swarm-stays", "swarm", 1, stay, Duration::ZERO)?;
    let mut doomed = start_swarm(&dir, &nats.url, "swarm-killed", "swarm", stay + 1, victims, Duration::ZERO)?;
    let started = Instant::now();
    loop {
        for p in [&mut nats.proc, &mut server, &mut stayers, &mut doomed] {
            p.ensure_running()?;
        }
        let summary = api.summary().await?;
        if summary.healthy == fleet as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("failure detection: only {} of {fleet} hosts HEALTHY after 120 s", summary.healthy);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A full detection window of steady heartbeats first, so the kill lands in steady state.
    tokio::time::sleep(timing.detection_window() + Duration::from_secs(2)).await;
    let victim_ids: HashSet<String> = (stay + 1..=fleet).map(|i| format!("swarm-{i:06}")).collect();
    let marker = events.len();
    let step_downs = api.counter("leader.step_downs").await?;
    let killed_at = unix_millis();
    doomed.kill9()?;
    let bound = timing.detection_window() + Duration::from_secs(1);
    // Watch long enough to see late detections and false positives: two windows past the kill.
    let watch = timing.detection_window() * 2 + Duration::from_secs(2);
    tokio::time::sleep(watch).await;
    server.ensure_running()?;
    stayers.ensure_running()?;
    events.ensure_complete("failure detection")?;
    let after = events.snapshot().split_off(marker);
    let step_downs = api.counter("leader.step_downs").await? - step_downs;
    let mut detected: Vec<f64> = Vec::new();
    let mut seen = HashSet::new();
    let mut false_positives = Vec::new();
    let mut longest_silence: f64 = 0.0;
    for e in after.iter().filter(|e| e.event.to == HostState::HeartbeatLost) {
        let host = e.event.host.to_string();
        if victim_ids.contains(&host) {
            if seen.insert(host) {
                detected.push(e.arrived.saturating_sub(killed_at) as f64 / 1000.0);
                if let Some(s) = silence_secs(&e.event.reason) {
                    longest_silence = longest_silence.max(s);
                }
            }
        } else {
            false_positives.push(host);
        }
    }
    detected.sort_by(f64::total_cmp);
    let within = detected.iter().filter(|d| **d <= bound.as_secs_f64()).count();
    let max = detected.last().copied().unwrap_or(f64::INFINITY);
    let scenario = Scenario {
        title: "3. Failure detection".into(),
        setup: format!(
            "{} hosts in two swarm processes ({} + {}), server defaults (heartbeat 3 s, lost after 3 misses); the \
             process holding {victims} hosts is SIGKILLed in steady state. Latency = arrival of the \
             HEALTHY → HEARTBEAT_LOST event (published after its commit) − the kill (stricter than from each host's last heartbeat).",
            thousands(fleet as f64),
            thousands(stay as f64),
            victims
        ),
        rows: vec![
            Row::new(
                "killed hosts declared HEARTBEAT_LOST within the bound",
                if detected.is_empty() {
                    format!("0 / {victims} (none declared lost within {} of the kill)", secs(watch.as_secs_f64()))
                } else {
                    format!(
                        "{within} / {victims} (max {}, p50 {}; {} declared in all)",
                        secs(max),
                        secs(percentile(&detected, 0.5)),
                        detected.len()
                    )
                },
                &format!("all, ≤ {} (interval × misses + 1 s)", secs(bound.as_secs_f64())),
                String::new(),
                Verdict::guarantee(within == victims),
            ),
            Row::info(
                "longest silence the server reported (`no heartbeat for …`)",
                if detected.is_empty() { "n/a".to_owned() } else { secs(longest_silence) },
            ),
            Row::new(
                "times the leader stepped down in the window (a new term waits a full detection window)",
                step_downs.to_string(),
                "",
                String::new(),
                Verdict::Info,
            ),
            Row::new(
                &format!("false positives among the other {} hosts", thousands(stay as f64)),
                if false_positives.is_empty() {
                    "0".to_owned()
                } else {
                    format!(
                        "{} ({})",
                        false_positives.len(),
                        false_positives.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    )
                },
                "0",
                String::new(),
                Verdict::guarantee(false_positives.is_empty()),
            ),
        ],
        notes: vec![],
    };
    Ok(scenario)
}

/// The stack of scenario 6: five daemons whose every command is `true` (running, as far as status says).
const FOOTPRINT_STACK: &str = r#"
name = "bench"

[services.idle]
description = "five daemons that are always running"
"#;

/// Scenario 6: one real agent, idle, with five components mapped.
pub async fn footprint(run: &RunDir, plan: &Plan) -> anyhow::Result<Scenario> {
    let dir = run.sub("footprint")?;
    let mut nats = Nats::start(&dir).await?;
    let api = Api::connect(&nats.url).await?;
    let mut server = start_server(&dir, &nats.url, ServerTiming::DEFAULT, &api).await?;
    let host = "footprint-1";
    let mut agent = start_agent(&dir, &nats.url, host)?;
    eprintln!("bench: real agent footprint ({host}, five components)");
    let started = Instant::now();
    while api.summary().await?.healthy < 1 {
        agent.ensure_running()?;
        if started.elapsed() > Duration::from_secs(30) {
            bail!("footprint: the agent did not become HEALTHY within 30 s:\n{}", agent.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stack = FOOTPRINT_STACK.to_owned();
    let components: Vec<String> = (1..=5).map(|i| format!("daemon{i}")).collect();
    for c in &components {
        stack.push_str(&format!(
            "\n[services.idle.components.{c}]\ncategory = \"daemon\"\ninstall = {{ argv = [\"true\"] }}\n\
             start = {{ argv = [\"true\"] }}\nstop = {{ argv = [\"true\"] }}\nstatus = {{ argv = [\"true\"] }}\n"
        ));
    }
    api.call("stack.apply", stack, Duration::from_secs(30)).await.context("applying the footprint stack")?;
    let blueprint = format!(
        "name = \"bench-footprint\"\nstack = \"bench\"\n[host_groups.all]\nhosts = [\"{host}\"]\ncomponents = [{}]\n",
        components.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
    );
    let applied =
        api.call("blueprint.apply", blueprint, Duration::from_secs(30)).await.context("applying the blueprint")?;
    let request = applied.get("request").and_then(serde_json::Value::as_u64);
    let started = Instant::now();
    loop {
        agent.ensure_running()?;
        server.ensure_running()?;
        let done = match request {
            Some(id) => api.request_row(id).await?.status.is_terminal(),
            None => true,
        };
        if done && api.summary().await?.started_components == components.len() as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("footprint: components not STARTED within 60 s: {}", api.summary().await?.raw);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the first status rounds after the start run before measuring the idle agent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let usage = Usage::start(&[("muster-agent", &agent)])?;
    let pid = agent.pid().context("agent gone")?;
    let mut max_rss = 0;
    while usage.elapsed() < plan.footprint_window {
        agent.ensure_running()?;
        nats.proc.ensure_running()?;
        max_rss = max_rss.max(proc_stat(pid)?.rss);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let measured = usage.finish()?;
    let u = measured.get("muster-agent").copied().context("agent not measured")?;
    let window = usage.elapsed().as_secs_f64();
    Ok(Scenario {
        title: "6. Real agent footprint".into(),
        setup: format!(
            "One release `muster-agent` (host `{host}`), idle with five daemon components mapped and STARTED (stack \
             commands and status checks are `true`; status checked every 10 s), measured for {window:.0} s."
        ),
        rows: vec![
            Row::new("RSS (max in window)", mib(max_rss), "≤ 10 MiB", String::new(), Verdict::of(max_rss <= 10 << 20)),
            Row::new(
                "CPU of the agent process",
                format!("{:.3} % of a core", u.cores * 100.0),
                "≤ 0.1 %",
                String::new(),
                Verdict::of(u.cores <= 0.001),
            ),
            Row::info(
                "CPU of the status-check processes it ran",
                format!("{:.3} % of a core", u.children_cores * 100.0),
            ),
        ],
        notes: vec![],
    })
}

/// The id glob selecting exactly `size` hosts of a swarm numbered from 0: `swarm-000???` for 1,000.
fn glob_for(size: usize) -> anyhow::Result<String> {
    let digits =
        (1..=ID_DIGITS).find(|d| 10usize.pow(*d) == size).with_context(|| format!("{size} is not a power of ten"))?;
    Ok(format!("swarm-{}{}", "0".repeat((ID_DIGITS - digits) as usize), "?".repeat(digits as usize)))
}

/// The value at fraction `p` of sorted `values` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `no heartbeat for 9.1 s` → 9.1.
fn silence_secs(reason: &str) -> Option<f64> {
    reason.split("no heartbeat for ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Polls `check` every 100 ms for up to `limit`.
async fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_select_powers_of_ten() {
        assert_eq!(glob_for(1_000).unwrap(), "swarm-000???");
        assert_eq!(glob_for(100_000).unwrap(), "swarm-0?????");
        assert!(glob_for(5_000).is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn silence_is_read_from_the_reason() {
        assert_eq!(silence_secs("no heartbeat for 9.1 s"), Some(9.1));
        assert_eq!(silence_secs("registered"), None);
    }
}
