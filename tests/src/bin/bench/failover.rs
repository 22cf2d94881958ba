//! Scenario 5: leader failover under scenario 2's load. Three muster-server voters share one nats-server (the txn
//! log, the lease bucket); a swarm heartbeats every 5 s; the leader is SIGKILLed while a write is issued every
//! 100 ms, and the figure is the time from the kill until a write is committed again. The new leader grants every
//! host a full detection window, so no live host may be declared HEARTBEAT_LOST because of the failover.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use muster_nats::unix_millis;
use muster_schemas::HostState;
use serde_json::Value;

use crate::api::{self, counter_of, describe_servers, Api, ServerStatus};
use crate::env::{describe_usage, start_ensemble, start_swarm, Instance, Nats, RunDir, ServerTiming, Usage};
use crate::report::{secs, thousands, Row, Scenario, Verdict};
use crate::scenarios::{percentile, Plan};

/// The instances, all voters.
const IDS: [&str; 3] = ["bench-1", "bench-2", "bench-3"];

/// `MUSTER_LEASE_TTL_MS`: the product's default, set explicitly so the report names what it ran with.
const LEASE_TTL: Duration = Duration::from_millis(2_000);

/// The target: writes resume within this long after the leader dies.
const TARGET: Duration = Duration::from_secs(3);

/// A write is issued this often, each in its own task.
const WRITE_PERIOD: Duration = Duration::from_millis(100);

/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes before the kill, for their normal latency (and to show writes work at all).
const BASELINE: Duration = Duration::from_secs(3);

/// No write committed this long after the kill: the run cannot complete.
const RESUME_DEADLINE: Duration = Duration::from_secs(30);

/// The swarm registers at this rate (`--ramp-ms`): the scenario is about the failover, not a storm.
const RAMP_HOSTS_PER_SEC: f64 = 2_000.0;

/// Scenario 2's timers: heartbeat every 5 s, lost after 3 misses.
const TIMING: ServerTiming = ServerTiming { heartbeat_interval: Duration::from_secs(5), heartbeat_misses: 3 };

/// The stack every probe write applies: each with its own description, so each is a change the leader must commit
/// to the log (an unchanged stack is answered without a write). No components: no host is involved.
fn probe_stack(n: u64) -> String {
    format!("name = \"bench-failover\"\n\n[services.probe]\ndescription = \"probe write {n}\"\n")
}

/// One probe write.
#[derive(Debug, Clone)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    /// The log sequence the write's answer carries, or why it failed.
    outcome: Result<u64, String>,
}

/// Issues a write every [`WRITE_PERIOD`] until stopped, each in its own task, and keeps every outcome.
struct Writer {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(api: Api) -> Self {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (attempts, stop) = (attempts.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(WRITE_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut in_flight = tokio::task::JoinSet::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let (api, attempts) = (api.clone(), attempts.clone());
                    in_flight.spawn(async move {
                        let sent = Instant::now();
                        let outcome = write(&api, n).await.map_err(|e| format!("{e:#}"));
                        let attempt = Attempt { sent, answered: Instant::now(), outcome };
                        attempts.lock().unwrap_or_else(|p| p.into_inner()).push(attempt);
                    });
                    while in_flight.try_join_next().is_some() {}
                }
                while in_flight.join_next().await.is_some() {}
            }
        });
        Self { attempts, stop, task }
    }

    fn snapshot(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops issuing, waits for the writes in flight (each bounded by [`WRITE_TIMEOUT`]), returns every attempt.
    async fn finish(self) -> anyhow::Result<Vec<Attempt>> {
        let Self { attempts, stop, task } = self;
        stop.store(true, Ordering::Relaxed);
        task.await.context("the probe writer panicked")?;
        let attempts = attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(attempts)
    }
}

/// One probe write: `muster.api.stack.apply`, forwarded by whichever instance receives it to the leader. Succeeds
/// only if the leader committed it (`changed`) and answered with its log sequence.
async fn write(api: &Api, n: u64) -> anyhow::Result<u64> {
    let reply = api.call("stack.apply", probe_stack(n), WRITE_TIMEOUT).await?;
    if reply.get("changed") != Some(&Value::Bool(true)) {
        bail!("stack.apply: not committed as a change: {reply}");
    }
    reply.get("seq").and_then(Value::as_u64).with_context(|| format!("stack.apply: no `seq` in {reply}"))
}

/// The first write issued at or after `since` that succeeded: (answered, its seq), by answer time.
fn first_success(attempts: &[Attempt], since: Instant) -> Option<(Instant, u64)> {
    attempts
        .iter()
        .filter(|a| a.sent >= since)
        .filter_map(|a| a.outcome.as_ref().ok().map(|seq| (a.answered, *seq)))
        .min_by_key(|(at, _)| *at)
}

/// Scenario 5: SIGKILL the leader under load; the figure is the time until a write commits again.
pub async fn failover(run: &RunDir, plan: &Plan) -> anyhow::Result<Scenario> {
    let dir = run.sub("failover")?;
    let mut nats = Nats::start(&dir).await?;
    let api = Api::connect(&nats.url).await?;
    let n = plan.fleet;
    eprintln!("bench: leader failover: {} voters, {n} hosts heartbeating every 5 s", IDS.len());
    let mut instances = start_ensemble(&dir, &nats.url, TIMING, LEASE_TTL, &IDS, &api).await?;
    let host_events = api::host_events(&nats.url).await?;
    let ramp = Duration::from_secs_f64(n as f64 / RAMP_HOSTS_PER_SEC);
    let mut swarm = start_swarm(&dir, &nats.url, "swarm", "swarm", 1, n, ramp)?;

    // Every host HEALTHY.
    let started = Instant::now();
    let deadline = plan.storm_deadline + ramp;
    loop {
        nats.proc.ensure_running()?;
        swarm.ensure_running()?;
        for i in &mut instances {
            i.proc.ensure_running()?;
        }
        let summary = api.summary().await?;
        if summary.healthy == n as u64 {
            break;
        }
        if started.elapsed() > deadline {
            bail!("failover: only {} of {n} hosts HEALTHY after {deadline:?}: {}", summary.healthy, summary.raw);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("bench:   {n} hosts HEALTHY after {:.1} s", started.elapsed().as_secs_f64());

    // Steady state: two heartbeat intervals, then every instance at the end of the log.
    tokio::time::sleep(TIMING.heartbeat_interval * 2).await;
    let rows = wait_caught_up(&api, &mut instances).await?;
    let old = rows.iter().find(|r| r.role == "leader").map(|r| r.id.clone()).context("no leader")?;
    let old_epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
    let old_stats = api.stats_of(&old).await?;
    let before = describe_servers(&rows);

    // Writes before, during and after the kill.
    let writer = Writer::start(api.clone());
    tokio::time::sleep(BASELINE).await;
    let baseline: Vec<Attempt> = writer.snapshot();
    if !baseline.iter().any(|a| a.outcome.is_ok()) {
        let why = baseline.iter().find_map(|a| a.outcome.as_ref().err().cloned()).unwrap_or_default();
        bail!("failover: no write succeeded before the kill ({} tried): {why}", baseline.len());
    }
    let events_before = host_events.len();
    let index = instances.iter().position(|i| i.id == old).context("the leader is not one of ours")?;
    eprintln!("bench:   SIGKILL to the leader {old} (epoch {old_epoch})");
    let killed_wall = unix_millis();
    let killed = Instant::now();
    instances[index].proc.kill9()?;
    let dead = instances.remove(index);
    let usage = {
        let mut procs: Vec<(&str, &muster_tests::Proc)> = vec![("nats-server", &nats.proc), ("swarm", &swarm)];
        procs.extend(instances.iter().map(|i| (i.id.as_str(), &i.proc)));
        Usage::start(&procs)?
    };
    let (resumed, resumed_seq) = loop {
        if let Some(found) = first_success(&writer.snapshot(), killed) {
            break found;
        }
        if killed.elapsed() > RESUME_DEADLINE {
            let attempts = writer.finish().await?;
            let last = attempts.iter().rev().find_map(|a| a.outcome.as_ref().err().cloned()).unwrap_or_default();
            bail!("failover: no write succeeded within {RESUME_DEADLINE:?} of killing {old}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resume = resumed.duration_since(killed).as_secs_f64();
    eprintln!("bench:   writes resumed {resume:.2} s after the kill");
    // A second more of writes, to see them keep succeeding.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = writer.finish().await?;

    let rows = api.servers(IDS.len(), Duration::from_secs(2)).await?;
    let leaders: Vec<&ServerStatus> = rows.iter().filter(|r| r.role == "leader").collect();
    let new = match leaders.as_slice() {
        [one] if one.id != old => one.id.clone(),
        _ => bail!("failover: writes resumed, but the instances say: {}", describe_servers(&rows)),
    };
    let new_epoch = leaders[0].epoch;
    let stats_start = api.stats_of(&new).await?;
    let watch_start = Instant::now();

    // Watch a full detection window past the takeover (the new leader grants every host one), and an interval
    // more: a host the new leader does not hear from is declared lost by then.
    let watch_until = resumed + TIMING.detection_window() + TIMING.heartbeat_interval + Duration::from_secs(2);
    while Instant::now() < watch_until {
        nats.proc.ensure_running()?;
        swarm.ensure_running()?;
        for i in &mut instances {
            i.proc.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let busy = usage.finish()?;
    let stats_end = api.stats_of(&new).await?;
    let watched = watch_start.elapsed().as_secs_f64();
    host_events.ensure_complete("failover")?;
    let after: Vec<_> = host_events.snapshot().split_off(events_before);
    let lost: Vec<String> =
        after.iter().filter(|e| e.event.to == HostState::HeartbeatLost).map(|e| e.event.host.to_string()).collect();
    let mut changes: BTreeMap<String, usize> = BTreeMap::new();
    for e in &after {
        *changes.entry(format!("{:?}", e.event.to)).or_default() += 1;
    }
    let summary = api.summary().await?;
    let rows_after = wait_caught_up(&api, &mut instances).await?;

    let delta = |name: &str| counter_of(&stats_end, name).saturating_sub(counter_of(&stats_start, name));
    let hb_rate = delta("hb.received") as f64 / watched;
    let expected_rate = n as f64 / TIMING.heartbeat_interval.as_secs_f64();
    let step_downs = delta("leader.step_downs");
    let reregistered = delta("reg.accepted");

    // The new leader's log: when it won the lease, when it led (log claimed with its epoch, state loaded).
    let new_log = instances.iter().find(|i| i.id == new).map(|i| i.proc.log_path().to_path_buf());
    let timeline = new_log.as_deref().map(|p| log_times(p, killed_wall)).unwrap_or_default();
    let won = timeline.get("won the leader lease").copied();
    let leading = timeline.get("leading").copied();
    let at = |t: Option<f64>| t.map_or("not in its log".to_owned(), secs);

    // Every write issued after the kill, split by when it was sent: before the first success, or after it.
    let (waiting, resumed_writes): (Vec<&Attempt>, Vec<&Attempt>) =
        attempts.iter().filter(|a| a.sent >= killed).partition(|a| a.sent < resumed);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for e in waiting.iter().filter_map(|a| a.outcome.as_ref().err()) {
        *errors.entry(short_error(e)).or_default() += 1;
    }
    let waiting_failed = waiting.iter().filter(|a| a.outcome.is_err()).count();
    let mut base_latency: Vec<f64> = baseline
        .iter()
        .filter(|a| a.outcome.is_ok())
        .map(|a| a.answered.duration_since(a.sent).as_secs_f64())
        .collect();
    base_latency.sort_by(f64::total_cmp);
    let later_ok = resumed_writes.iter().filter(|a| a.outcome.is_ok()).count();
    let ttl = LEASE_TTL.as_secs_f64();

    let rows_table = vec![
        Row::new(
            "kill → first write committed (`stack.apply`, answered with its log `seq`)",
            secs(resume),
            &format!("≤ {}", secs(TARGET.as_secs_f64())),
            format!(
                "≥ {} (the dead leader's lease expires TTL {} after its last renewal, renewed every TTL/3)",
                secs(ttl * 2.0 / 3.0),
                secs(ttl)
            ),
            Verdict::of(resume <= TARGET.as_secs_f64()),
        ),
        Row::info(&format!("kill → {new} won the lease (its log; candidates retry every TTL/4)"), at(won)),
        Row::info(
            "kill → new leader leading (log caught up, claimed with an epoch marker, state loaded; its log)",
            at(leading),
        ),
        Row::info(
            "writes issued between the kill and the first success: failed / issued",
            format!("{waiting_failed} / {} ({})", waiting.len(), describe_errors(&errors)),
        ),
        Row::info(
            "writes issued in the second after the first success: succeeded / issued",
            format!("{later_ok} / {}", resumed_writes.len()),
        ),
        Row::info(
            "write latency before the kill p50 / max",
            format!(
                "{:.1} ms / {:.1} ms ({} writes)",
                percentile(&base_latency, 0.5) * 1000.0,
                base_latency.last().unwrap_or(&0.0) * 1000.0,
                base_latency.len()
            ),
        ),
        Row::new(
            "hosts declared HEARTBEAT_LOST after the kill (all were alive)",
            if lost.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", lost.len(), lost.iter().take(5).cloned().collect::<Vec<_>>().join(", "))
            },
            "0",
            String::new(),
            Verdict::guarantee(lost.is_empty()),
        ),
        Row::new(
            "hosts HEALTHY at the end",
            format!("{} of {}", thousands(summary.healthy as f64), thousands(n as f64)),
            &thousands(n as f64),
            String::new(),
            Verdict::guarantee(summary.healthy == n as u64),
        ),
        Row::new(
            &format!("heartbeats received by {new} over the {watched:.0} s after the takeover"),
            format!("{}/s", thousands(hb_rate)),
            &format!("≈ {}/s", thousands(expected_rate)),
            String::new(),
            Verdict::Info,
        ),
    ];
    let mut notes = vec![
        format!(
            "Before the kill: {before}. After: {}; epoch {old_epoch} → {new_epoch}; the first write after the kill \
             committed at log sequence {resumed_seq}.",
            describe_servers(&rows_after)
        ),
        format!(
            "Host state changes from the kill to the end of the watch: {}; registrations accepted by {new}: {}; \
             times it stepped down: {step_downs}.",
            if changes.is_empty() {
                "none".to_owned()
            } else {
                changes.iter().map(|(s, c)| format!("{c} → {s}")).collect::<Vec<_>>().join(", ")
            },
            thousands(reregistered as f64)
        ),
        format!(
            "{old} before the kill: {} heartbeats received, {} times stepped down.",
            thousands(counter_of(&old_stats, "hb.received") as f64),
            counter_of(&old_stats, "leader.step_downs")
        ),
        format!("Busy from the kill to the end of the watch: {}.", describe_usage(&busy)),
    ];
    if let Some(seen) = timeline.get("lease create failed") {
        notes.push(format!("{new} logged a failed lease create {} after the kill.", secs(*seen)));
    }
    drop(dead);
    drop(swarm);
    Ok(Scenario {
        title: "5. Leader failover".into(),
        setup: format!(
            "Three muster-server voters ({}) on one nats-server, each applying the txn log into its own redb, lease \
             TTL {} (`MUSTER_LEASE_TTL_MS`, the default); {} simulated hosts (started over {:.0} s) heartbeat every \
             5 s. In steady state, with a write (`muster.api.stack.apply` of a one-service stack whose description \
             changes every time, so each is committed to the log) issued every {} ms with a {} timeout through the \
             API (any instance, forwarded to the leader), the leader is SIGKILLed. The figure is the time from the \
             kill to the first answer of a write issued after it; then the new leader is watched for a full \
             detection window ({} × {}) and an interval more.",
            IDS.join(", "),
            secs(ttl),
            thousands(n as f64),
            ramp.as_secs_f64(),
            WRITE_PERIOD.as_millis(),
            secs(WRITE_TIMEOUT.as_secs_f64()),
            secs(TIMING.heartbeat_interval.as_secs_f64()),
            TIMING.heartbeat_misses
        ),
        rows: rows_table,
        notes,
    })
}

/// Waits until every running instance answers `<prefix>.servers` with one leader and all at the end of the log.
async fn wait_caught_up(api: &Api, instances: &mut [Instance]) -> anyhow::Result<Vec<ServerStatus>> {
    let started = Instant::now();
    loop {
        for i in instances.iter_mut() {
            i.proc.ensure_running()?;
        }
        let rows = api.servers(instances.len(), Duration::from_secs(2)).await?;
        let one_leader = rows.iter().filter(|r| r.role == "leader").count() == 1;
        let caught_up = rows.iter().all(|r| r.log_end == Some(r.applied_seq));
        if rows.len() == instances.len() && one_leader && caught_up {
            return Ok(rows);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("failover: the instances did not reach the end of the log within 60 s: {}", describe_servers(&rows));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// "no leader is elected right now; retry in a moment" → its gist, for counting errors by kind.
fn short_error(e: &str) -> String {
    let e = e.strip_prefix("muster.api.stack.apply: ").unwrap_or(e);
    let e = e.split(" (").next().unwrap_or(e);
    e.chars().take(80).collect()
}

fn describe_errors(errors: &BTreeMap<String, usize>) -> String {
    if errors.is_empty() {
        return "no errors".to_owned();
    }
    errors.iter().map(|(e, c)| format!("{c}× “{e}”")).collect::<Vec<_>>().join(", ")
}

/// Seconds from `since` (ms since the epoch) to the first line of the log at `path` after `since` whose message is
/// each of the watched messages (a server logs `<RFC 3339 UTC time> <LEVEL> <target>: <message> <fields>`).
fn log_times(path: &std::path::Path, since: u64) -> BTreeMap<&'static str, f64> {
    const MESSAGES: [&str; 3] = ["won the leader lease", "leading", "lease create failed"];
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        let Some(at) = line.split_whitespace().next().and_then(rfc3339_millis) else { continue };
        if at < since {
            continue;
        }
        for m in MESSAGES {
            let Some(pos) = line.find(&format!(": {m}")) else { continue };
            let rest = &line[pos + 2 + m.len()..];
            if rest.is_empty() || rest.starts_with(' ') {
                found.entry(m).or_insert((at - since) as f64 / 1000.0);
            }
        }
    }
    found
}

/// The line without its terminal colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-22T00:53:32.123456Z` → milliseconds since the Unix epoch.
fn rfc3339_millis(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian; H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_read_as_utc() {
        assert_eq!(rfc3339_millis("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(rfc3339_millis("2026-11-22T00:53:32.123456Z"), Some(1_795_308_812_123));
        assert_eq!(rfc3339_millis("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(rfc3339_millis("INFO"), None);
    }

    #[test]
    fn messages_are_found_after_the_kill() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        std::fs::write(
            &log,
            "\u{1b}[2m2026-11-22T00:53:30.000000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x: leading epoch=1\n\
             2026-11-22T00:53:33.000000Z  INFO muster_server::election: won the leader lease epoch=7\n\
             2026-11-22T00:53:33.250000Z  INFO muster_server::leader: leading epoch=7 seq=9\n\
             2026-11-22T00:53:34.000000Z  INFO muster_server::leader: leading to nothing\n",
        )
        .unwrap();
        let since = rfc3339_millis("2026-11-22T00:53:32.000Z").unwrap();
        let t = log_times(&log, since);
        assert_eq!(t.get("won the leader lease"), Some(&1.0));
        assert_eq!(t.get("leading"), Some(&1.25));
        assert_eq!(t.get("lease create failed"), None);
    }

    #[test]
    fn probe_stacks_differ() {
        assert_ne!(probe_stack(1), probe_stack(2));
    }
}
