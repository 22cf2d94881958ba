//! The results document: one table per scenario (result, target, ceiling measured in the same run, verdict), the
//! machine, and who was busy. Written into docs/benchmarks.md between markers, so the hand-written analysis
//! around them survives a new run; nothing is written unless the whole run completed.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::ceilings::Ceilings;

/// Whether a figure met its target, or held its guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the target.
    Met,
    /// Outside the target: a result, written as such.
    Missed,
    /// A guarantee (nothing lost, no false positive, detection within its bound) held.
    Held,
    /// A guarantee broken: written, and the run exits non-zero.
    Broken,
    /// A figure with no target.
    Info,
}

impl Verdict {
    /// `Met` when `ok`, else `Missed`.
    pub fn of(ok: bool) -> Self {
        if ok {
            Self::Met
        } else {
            Self::Missed
        }
    }

    /// `Held` when `ok`, else `Broken`: for what muster promises rather than aims at.
    pub fn guarantee(ok: bool) -> Self {
        if ok {
            Self::Held
        } else {
            Self::Broken
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::Held => "held (guarantee)",
            Self::Broken => "**BROKEN** (guarantee)",
            Self::Info => "",
        }
    }
}

/// One row of a scenario's table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// The measured value with its unit, as printed.
    pub result: String,
    /// The target for this machine.
    pub target: String,
    /// The ceiling it is compared with.
    pub ceiling: String,
    /// Met or missed.
    pub verdict: Verdict,
}

impl Row {
    /// A row compared with a target and a ceiling.
    pub fn new(metric: &str, result: String, target: &str, ceiling: String, verdict: Verdict) -> Self {
        Self { metric: metric.to_owned(), result, target: target.to_owned(), ceiling, verdict }
    }

    /// A row without a target.
    pub fn info(metric: &str, result: String) -> Self {
        Self::new(metric, result, "", String::new(), Verdict::Info)
    }
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Title, e.g. "1. Registration storm".
    pub title: String,
    /// What ran, in one or two sentences.
    pub setup: String,
    /// The measurements, one [`Row`] each.
    pub rows: Vec<Row>,
    /// Who was busy during the measurement (CPU by process), and other observations.
    pub notes: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Run {
    /// `full` or `quick`.
    pub mode: String,
    /// The command line.
    pub command: String,
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// Wall time of the whole run.
    pub duration_secs: f64,
    /// (name, value) pairs describing the machine and versions.
    pub machine: Vec<(String, String)>,
    /// NATS throughput measured on this machine, which the scenarios' results are compared with.
    pub ceilings: Ceilings,
    /// Every scenario, in order.
    pub scenarios: Vec<Scenario>,
}

impl Run {
    /// Rows that missed their target.
    pub fn missed(&self) -> Vec<String> {
        self.with_verdict(Verdict::Missed)
    }

    /// Rows whose guarantee was broken: the run fails.
    pub fn broken(&self) -> Vec<String> {
        self.with_verdict(Verdict::Broken)
    }

    fn with_verdict(&self, verdict: Verdict) -> Vec<String> {
        self.scenarios
            .iter()
            .flat_map(|s| {
                s.rows
                    .iter()
                    .filter(move |r| r.verdict == verdict)
                    .map(move |r| format!("{}: {} = {} (target {})", s.title, r.metric, r.result, r.target))
            })
            .collect()
    }
}

/// The markdown of one run.
pub fn render(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Results: `{}` run of {}\n", run.mode, run.started);
    let _ = writeln!(
        out,
        "Command: `{}` ({:.0} s). Figures from a 2-core machine that other work shares are **indicative**: \
         compare them with the ceilings measured in the same run, not across machines.\n",
        run.command, run.duration_secs
    );
    let _ = writeln!(out, "| machine | |\n|---|---|");
    for (k, v) in &run.machine {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let c = &run.ceilings;
    let _ = writeln!(out, "\n**Ceilings** (async-nats against this run's nats-server, 128-byte messages):\n");
    let _ = writeln!(out, "| ceiling | measured |\n|---|---|");
    let _ = writeln!(
        out,
        "| core NATS publish → subscribe | {} msg/s{} |",
        thousands(c.core_msgs_per_sec),
        if c.core_dropped > 0 { format!(" ({} slow-consumer events)", c.core_dropped) } else { String::new() }
    );
    let _ = writeln!(
        out,
        "| JetStream publish, `sync_interval: always`, 1,024 acks in flight | {} msg/s |",
        thousands(c.js_pipelined_per_sec)
    );
    let _ = writeln!(
        out,
        "| JetStream publish, `sync_interval: always`, one ack at a time | {} msg/s |",
        thousands(c.js_serial_per_sec)
    );
    let _ = writeln!(
        out,
        "| JetStream publish, `sync_interval: always`, two streams at once (1,024 acks in flight each) | {} msg/s |",
        thousands(c.js_two_streams_per_sec)
    );
    for s in &run.scenarios {
        let _ = writeln!(out, "\n#### {}\n\n{}\n", s.title, s.setup);
        let _ = writeln!(out, "| metric | result | target | ceiling (same run) | verdict |\n|---|---|---|---|---|");
        for r in &s.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.metric,
                r.result,
                r.target,
                r.ceiling,
                r.verdict.as_str()
            );
        }
        if !s.notes.is_empty() {
            out.push('\n');
            for n in &s.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
    }
    out
}

/// Replaces the block of `mode` in the document at `path` (between `<!-- BEGIN bench:<mode> -->` and
/// `<!-- END bench:<mode> -->`), creating the document or the block if missing.
pub fn write_block(path: &Path, mode: &str, block: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- BEGIN bench:{mode} (generated by the bench driver; edits here are overwritten) -->");
    let begin_prefix = format!("<!-- BEGIN bench:{mode}");
    let end = format!("<!-- END bench:{mode} -->");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let replacement = format!("{begin}\n{}\n{end}", block.trim_end());
    let new = match (doc.find(&begin_prefix), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{replacement}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{replacement}\n", doc.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// 1234567.8 → "1,234,568".
pub fn thousands(x: f64) -> String {
    let digits = (x.round() as u64).to_string();
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        n => n,
    };
    let mut out = digits[..head].to_owned();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or_default());
    }
    out
}

/// Seconds with a sensible precision.
pub fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(100_000.0), "100,000");
    }
}
