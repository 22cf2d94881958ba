//! The text `muster` prints for each API reply, pure: every function takes the reply, the time it is read at
//! (`now`, for ages) and the line width (`None` when stdout is no terminal), and returns the text. `--json` prints
//! the reply itself instead.

use std::fmt::Write;

use console::truncate_str;
use muster_schemas::api::{
    BlueprintApplied, ComponentView, HostDetail, HostSummary, RequestCancelled, RequestCreated, RequestSummary,
    RequestView, ServerStats, ServerStatus, StackApplied,
};
use muster_schemas::cluster::TaskStatus;
use muster_schemas::UnixMillis;

use crate::table::{one_line, Align, Table, MAX_UNBOUNDED_WIDTH};
use crate::time::{age, date_and_age, span, span_millis, span_or_dash};

/// Lines of a task's stdout or stderr shown under it: the end of the output is where the answer or the error is.
const OUTPUT_TAIL_LINES: usize = 3;
/// Indent of a task's output lines under its row.
const OUTPUT_INDENT: &str = "      ";

/// `muster hosts`: one row per host (state, last heartbeat, time in state, hostname, problems), then the count.
pub fn hosts(rows: &[HostSummary], width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("HOST", Align::Left),
        ("STATE", Align::Left),
        ("LAST HB", Align::Right),
        ("IN STATE", Align::Right),
        ("HOSTNAME", Align::Left),
        ("PROBLEMS", Align::Left),
    ]);
    for r in rows {
        t.row([
            r.id.clone(),
            r.state.as_str().to_string(),
            span_or_dash(r.last_heartbeat_secs),
            span(r.state_secs),
            r.hostname.clone(),
            r.problems.join("; "),
        ]);
    }
    format!("{}{} host(s)\n", t.render(width), rows.len())
}

/// `muster host <id>`.
pub fn host(d: &HostDetail, now: UnixMillis) -> String {
    let r = &d.record;
    let f = &r.facts;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<16}{v}");
    };
    line("host", r.id.to_string());
    line("state", format!("{} (for {})", r.state, span(d.summary.state_secs)));
    line(
        "last heartbeat",
        d.summary.last_heartbeat_secs.map_or("none heard by this server".into(), |s| format!("{} ago", span(s))),
    );
    line("problems", if r.problems.is_empty() { "none".into() } else { r.problems.join("; ") });
    line("hostname", f.hostname.clone());
    line("os", format!("{} {} ({}, kernel {})", f.os_name, f.os_version, f.arch, f.kernel_version));
    line("cpus", f.cpu_count.to_string());
    line(
        "memory",
        format!("{:.1} GiB total, {:.1} GiB available", gib(f.memory_total_bytes), gib(f.memory_available_bytes)),
    );
    if let Some(c) = &f.container {
        // What the container may use is above; what its machine has, here.
        line(
            "container",
            format!(
                "{} (on a host of {} cpus, {:.1} GiB)",
                c.id.as_deref().unwrap_or("id unknown"),
                c.host_cpu_count,
                gib(c.host_memory_total_bytes)
            ),
        );
    }
    line("uptime", span(f.uptime_secs as f64));
    line("timezone", f.timezone.clone());
    line("addresses", f.ip_addresses.join(", "));
    line("agent", format!("{} (started {})", r.agent_version, date_and_age(r.agent_started_at, now)));
    line("registrations", r.registrations.to_string());
    line("  first", date_and_age(r.first_registered_at, now));
    line("  last", date_and_age(r.registered_at, now));
    let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    line("labels", if labels.is_empty() { "none".into() } else { labels.join(", ") });
    let _ = writeln!(out, "mounts");
    let mut t =
        Table::new(&[("  MOUNT", Align::Left), ("TYPE", Align::Left), ("FREE", Align::Right), ("SIZE", Align::Right)]);
    for m in &f.mounts {
        t.row([
            format!("  {}", m.mount_point),
            m.fs_type.clone(),
            format!("{:.1} GiB", gib(m.available_bytes)),
            format!("{:.1} GiB", gib(m.total_bytes)),
        ]);
    }
    out + &t.render(None)
}

/// `muster stats`: the answering server's id, role, epoch, applied sequence, uptime, then its counters.
pub fn stats(s: &ServerStats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<12}{}", "server", s.server_id);
    let _ = writeln!(out, "{:<12}{}", "role", s.role);
    let _ = writeln!(out, "{:<12}{}", "epoch", s.epoch);
    let _ = writeln!(out, "{:<12}{}", "applied", s.applied_seq);
    let _ = writeln!(out, "{:<12}{}", "uptime", span(s.uptime_secs));
    let _ = writeln!(out, "counters");
    let mut t = Table::new(&[("  NAME", Align::Left), ("COUNT", Align::Right)]);
    for (name, n) in &s.counters {
        t.row([format!("  {name}"), n.to_string()]);
    }
    out + &t.render(None)
}

/// `muster components`: one row per host component, with state, desired state, time in state and restarts.
pub fn components(rows: &[ComponentView], width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("HOST", Align::Left),
        ("SERVICE", Align::Left),
        ("COMPONENT", Align::Left),
        ("STATE", Align::Left),
        ("DESIRED", Align::Left),
        ("IN STATE", Align::Right),
        ("RESTARTS", Align::Right),
    ]);
    for r in rows {
        t.row([
            r.host.clone(),
            r.service.clone(),
            r.component.clone(),
            r.state.as_str().to_string(),
            r.desired.as_str().to_string(),
            span(r.state_secs),
            r.auto_restarts.to_string(),
        ]);
    }
    format!("{}{} component(s)\n", t.render(width), rows.len())
}

/// `muster requests`, newest first.
pub fn requests(rows: &[RequestSummary], now: UnixMillis, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("STATUS", Align::Left),
        ("TASKS", Align::Right),
        ("CREATED", Align::Right),
        ("TOOK", Align::Right),
        ("DESCRIPTION", Align::Left),
    ]);
    for r in rows {
        let took = if r.finished_at == 0 { "-".to_string() } else { span_millis(r.created_at, r.finished_at) };
        t.row([
            r.id.to_string(),
            r.status.as_str().to_string(),
            r.tasks.to_string(),
            age(r.created_at, now),
            took,
            r.description.clone(),
        ]);
    }
    format!("{}{} request(s)\n", t.render(width), rows.len())
}

/// `muster request <id>`, and what a followed request shows when it ends: the request, each stage with its tasks,
/// and the tail of each task's output where it says something (a run's stdout, a failure's stderr).
pub fn request(v: &RequestView, now: UnixMillis, width: Option<usize>) -> String {
    let cut = |s: String| match width {
        Some(w) => truncate_str(&s, w, "…").into_owned(),
        None => truncate_str(&s, MAX_UNBOUNDED_WIDTH, "…").into_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", cut(format!("request {}  {}  {}", v.id, v.status, one_line(&v.description))));
    let ended = if v.finished_at == 0 {
        "running".to_string()
    } else {
        format!("ended after {}", span_millis(v.created_at, v.finished_at))
    };
    let _ = writeln!(out, "  created {}, {ended}", date_and_age(v.created_at, now));
    if !v.detail.is_empty() {
        let _ = writeln!(out, "{}", cut(format!("  {}", one_line(&v.detail))));
    }
    for (i, s) in v.stages.iter().enumerate() {
        let _ = writeln!(
            out,
            "  stage {} {} [{}] {}/{} done, {} failed",
            i + 1,
            s.name,
            s.status,
            s.done,
            s.total,
            s.failed
        );
        let tasks: Vec<_> = v.tasks.iter().filter(|t| t.stage as usize == i).collect();
        if tasks.is_empty() {
            continue;
        }
        let mut t = Table::new(&[
            ("    TASK", Align::Right),
            ("HOST", Align::Left),
            ("COMMAND", Align::Left),
            ("COMPONENT", Align::Left),
            ("STATUS", Align::Left),
            ("EXIT", Align::Right),
            ("DETAIL", Align::Left),
        ]);
        for task in &tasks {
            t.row([
                task.id.to_string(),
                task.host.clone(),
                task.command.clone(),
                task.component.clone().unwrap_or_else(|| "-".into()),
                task.status.as_str().to_string(),
                task.exit_code.map_or("-".to_string(), |c| c.to_string()),
                task.detail.clone(),
            ]);
        }
        for (n, line) in t.lines(width).into_iter().enumerate() {
            let _ = writeln!(out, "{line}");
            let Some(task) = n.checked_sub(1).map(|i| tasks[i]) else { continue };
            // A run's stdout is its answer; a component's is its log. Stderr matters when the task did not succeed.
            if !task.stdout.trim().is_empty() && task.component.is_none() {
                let _ = writeln!(out, "{}", cut(format!("{OUTPUT_INDENT}stdout: {}", tail(&task.stdout))));
            }
            if !task.stderr.trim().is_empty() && task.status != TaskStatus::Completed {
                let _ = writeln!(out, "{}", cut(format!("{OUTPUT_INDENT}stderr: {}", tail(&task.stderr))));
            }
        }
    }
    if (v.tasks.len() as u64) < v.tasks_total {
        let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "  ({} of {} tasks listed; all: {})", v.tasks.len(), v.tasks_total, counts.join(", "));
    }
    out
}

/// The last lines of an output, joined on one line.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].iter().map(|l| one_line(l)).collect::<Vec<_>>().join(" | ")
}

/// `muster servers`, sorted by id.
pub fn servers(rows: &[ServerStatus], width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("ROLE", Align::Left),
        ("EPOCH", Align::Right),
        ("APPLIED", Align::Right),
        ("LAG", Align::Right),
        ("UPTIME", Align::Right),
        ("DIGEST", Align::Left),
    ]);
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    for r in rows {
        t.row([
            r.id.clone(),
            r.role.as_str().to_string(),
            r.epoch.to_string(),
            r.applied_seq.to_string(),
            opt(r.lag),
            span(r.uptime_secs),
            r.digest.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    format!("{}{} server(s)\n", t.render(width), rows.len())
}

/// `muster stack apply`.
pub fn stack_applied(r: &StackApplied) -> String {
    format!("stack {} version {}{}\n", r.stack, r.version, if r.changed { "" } else { " (unchanged)" })
}

/// `muster blueprint apply`; the request line is the one `muster request <id> --watch` follows.
pub fn blueprint_applied(r: &BlueprintApplied) -> String {
    let mut out = format!("blueprint {} version {}: {} component(s) newly mapped\n", r.blueprint, r.version, r.mapped);
    if let Some(id) = r.request {
        let _ = writeln!(out, "request {id} closes the gap");
    }
    out
}

/// A request-starting command: `request <id>: ...` comes first, so scripts can take the id from its first line.
pub fn request_created(r: &RequestCreated) -> String {
    let mut out = format!("request {}: {} task(s) in {} stage(s)\n", r.request, r.tasks, r.stages);
    if !r.skipped_lost_hosts.is_empty() {
        let _ = writeln!(out, "skipped (HEARTBEAT_LOST): {}", r.skipped_lost_hosts.join(", "));
    }
    out
}

/// `muster cancel`: one line with the request id and how many tasks were aborted.
pub fn request_cancelled(r: &RequestCancelled) -> String {
    format!("request {} cancelled: {} task(s) aborted\n", r.request, r.aborted_tasks)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use muster_schemas::api::{ServerRole, StageView, TaskView};
    use muster_schemas::HostState;

    use super::*;

    const NOW: UnixMillis = 1_795_897_730_319;

    #[test]
    fn requests_are_aligned_dated_and_cut() {
        let row = |id, description: String| RequestSummary {
            id,
            description,
            status: TaskStatus::Completed,
            created_at: NOW - 192_000,
            finished_at: NOW - 190_500,
            tasks: 100,
            stages_done_tasks: 100,
            detail: String::new(),
        };
        let rows = [row(12, "RUN true on all hosts".into()), row(9, format!("RUN echo {}", "x".repeat(70_000)))];
        let out = requests(&rows, NOW, Some(100));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ID  STATUS     TASKS    CREATED  TOOK  DESCRIPTION");
        assert_eq!(lines[1], "12  COMPLETED    100  3m12s ago  1.5s  RUN true on all hosts");
        assert!(lines[2].len() <= 100 + "…".len() && lines[2].ends_with('…'), "{}", lines[2]);
        assert_eq!(lines[3], "2 request(s)");
    }

    #[test]
    fn host_times_are_dates_with_ages() {
        let facts = muster_schemas::HostFacts {
            hostname: "web-1".into(),
            cpu_count: 2,
            memory_total_bytes: 1 << 33,
            memory_available_bytes: 1 << 32,
            mounts: Vec::new(),
            os_name: "Debian".into(),
            os_version: "13".into(),
            kernel_version: "6.1".into(),
            arch: "x86_64".into(),
            ip_addresses: vec!["10.0.0.1".into()],
            uptime_secs: 90_000,
            timezone: "UTC".into(),
            container: None,
        };
        let record = muster_schemas::HostRecord {
            id: muster_schemas::HostId::new("h1").unwrap(),
            state: HostState::Healthy,
            facts,
            labels: BTreeMap::new(),
            agent_version: "0.1.0".into(),
            agent_started_at: NOW - 4_000,
            first_registered_at: NOW - 3_600_000,
            registered_at: NOW - 4_000,
            registrations: 2,
            state_since: NOW - 75_000,
            problems: Vec::new(),
        };
        let summary = HostSummary {
            id: "h1".into(),
            state: HostState::Healthy,
            last_heartbeat_secs: Some(0.8),
            hostname: "web-1".into(),
            agent_version: "0.1.0".into(),
            state_secs: 75.0,
            problems: Vec::new(),
        };
        let d = HostDetail { summary, record };
        let out = host(&d, NOW);
        assert!(out.contains("agent           0.1.0 (started 2026-11-28 20:28:46 UTC (4.0s ago))"), "{out}");
        assert!(out.contains("  first         2026-11-28 19:28:50 UTC (1h00m ago)"), "{out}");
        assert!(out.contains("uptime          1d01h"), "{out}");
        assert!(!out.contains(&NOW.to_string()[..6]), "no epoch milliseconds: {out}");
        assert!(!out.contains("container"), "not in a container: {out}");

        let mut d = d;
        let id = "ab".repeat(32);
        d.record.facts.container = Some(muster_schemas::host::ContainerFacts {
            id: Some(id.clone()),
            host_cpu_count: 16,
            host_memory_total_bytes: 1 << 36,
        });
        let out = host(&d, NOW);
        assert!(out.contains(&format!("container       {id} (on a host of 16 cpus, 64.0 GiB)\n")), "{out}");
        assert!(out.contains("cpus            2\n"), "{out}");
        d.record.facts.container.as_mut().unwrap().id = None;
        assert!(host(&d, NOW).contains("container       id unknown (on a host of 16 cpus"), "{out}");
    }

    #[test]
    fn request_shows_output_under_its_task() {
        let task = |id, host: &str, status, stdout: &str, stderr: &str| TaskView {
            id,
            stage: 0,
            host: host.into(),
            component: None,
            command: "RUN".into(),
            status,
            attempt: 1,
            exit_code: Some(if status == TaskStatus::Completed { 0 } else { 1 }),
            stdout: stdout.into(),
            stderr: stderr.into(),
            started_at: NOW,
            finished_at: NOW,
            detail: String::new(),
        };
        let v = RequestView {
            id: 7,
            description: "RUN uptime on all hosts".into(),
            status: TaskStatus::Failed,
            created_at: NOW - 2_000,
            finished_at: NOW - 1_000,
            detail: "1 task(s) failed".into(),
            stages: vec![StageView {
                name: "RUN".into(),
                status: TaskStatus::Failed,
                tasks: vec![1, 2],
                total: 2,
                done: 2,
                failed: 1,
                running: 0,
            }],
            tasks: vec![
                task(1, "h1", TaskStatus::Completed, "a\nb\nc\nd\n", ""),
                task(2, "h2", TaskStatus::Failed, "", "boom\n"),
            ],
            tasks_total: 2,
            counts: BTreeMap::new(),
        };
        let out = request(&v, NOW, Some(120));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "request 7  FAILED  RUN uptime on all hosts");
        assert_eq!(lines[1], "  created 2026-11-28 20:28:48 UTC (2.0s ago), ended after 1.0s");
        assert_eq!(lines[3], "  stage 1 RUN [FAILED] 2/2 done, 1 failed");
        assert_eq!(lines[4], "    TASK  HOST  COMMAND  COMPONENT  STATUS     EXIT  DETAIL");
        assert_eq!(lines[5], "       1  h1    RUN      -          COMPLETED     0");
        assert_eq!(lines[6], "      stdout: b | c | d");
        assert_eq!(lines[7], "       2  h2    RUN      -          FAILED        1");
        assert_eq!(lines[8], "      stderr: boom");
    }

    #[test]
    fn servers_and_hosts_are_tables() {
        let s = ServerStatus {
            id: "server-1".into(),
            role: ServerRole::Leader,
            epoch: 4,
            applied_seq: 120,
            log_end: Some(120),
            lag: Some(0),
            uptime_secs: 75.0,
            digest: Some("9f3c".into()),
        };
        let out = servers(&[s], Some(100));
        assert_eq!(out, "ID        ROLE    EPOCH  APPLIED  LAG  UPTIME  DIGEST\nserver-1  leader      4      120    0   1m15s  9f3c\n1 server(s)\n");
        let h = HostSummary {
            id: "h1".into(),
            state: HostState::Healthy,
            last_heartbeat_secs: None,
            hostname: "web-1".into(),
            agent_version: "0.1.0".into(),
            state_secs: 3.0,
            problems: vec![],
        };
        let out = hosts(&[h], None);
        assert_eq!(out, "HOST  STATE    LAST HB  IN STATE  HOSTNAME  PROBLEMS\nh1    HEALTHY        -      3.0s  web-1\n1 host(s)\n");
    }

    #[test]
    fn write_replies_read_as_before() {
        let created = RequestCreated { request: 7, stages: 2, tasks: 3, skipped_lost_hosts: vec!["h9".into()] };
        assert_eq!(request_created(&created), "request 7: 3 task(s) in 2 stage(s)\nskipped (HEARTBEAT_LOST): h9\n");
        let stack = StackApplied { stack: "toy".into(), version: 1, changed: false, components: vec![] };
        assert_eq!(stack_applied(&stack), "stack toy version 1 (unchanged)\n");
        let bp = BlueprintApplied { blueprint: "bp".into(), version: 2, mapped: 4, request: Some(9) };
        assert_eq!(
            blueprint_applied(&bp),
            "blueprint bp version 2: 4 component(s) newly mapped\nrequest 9 closes the gap\n"
        );
        assert_eq!(
            request_cancelled(&RequestCancelled { request: 3, aborted_tasks: 5 }),
            "request 3 cancelled: 5 task(s) aborted\n"
        );
    }
}
