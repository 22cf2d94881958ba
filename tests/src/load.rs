//! Background activity during a fault: [`Load`] keeps submitting requests through the CLI and records every one
//! that was acknowledged; [`Sampler`] keeps looking at the system and records what it saw, so a test can check a
//! property at every moment of a failover, not only before and after. [`traced_run`] is a request-starting command
//! whose every run leaves a line in a per-host file, and [`Runs`] reads those lines back, so a test counts how often
//! each task really ran on the agents' side.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_schemas::api::RequestView;
use muster_schemas::commands::RequestId;
use muster_schemas::ids::TaskAttempt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::Cli;
use crate::wait::{wait_until, Check};

/// A request the system acknowledged (the CLI printed its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The request id the CLI printed.
    pub id: RequestId,
    /// When the acknowledgement arrived.
    pub at: Instant,
}

/// What a [`Load`] did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Every acknowledged request, in order.
    pub acked: Vec<Acked>,
    /// Submissions tried, acknowledged or not.
    pub attempts: u64,
    /// Refused or failed submissions by error message (digits masked, so messages differing only in ids and
    /// sequences count together).
    pub failures: BTreeMap<String, u64>,
}

impl LoadReport {
    /// The ids of every acknowledged request.
    pub fn ids(&self) -> Vec<RequestId> {
        self.acked.iter().map(|a| a.id).collect()
    }

    /// How many were acknowledged after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|a| a.at > t).count()
    }

    /// The longest time between two acknowledgements: at worst how long writes did not get through, as a client
    /// submitting every tick saw it.
    pub fn longest_gap(&self) -> Duration {
        self.acked.windows(2).map(|w| w[1].at.saturating_duration_since(w[0].at)).max().unwrap_or_default()
    }

    /// `412 attempts, 400 acked; failures: 12× "…"`, for messages.
    pub fn summary(&self) -> String {
        let failures: Vec<String> = self.failures.iter().map(|(m, n)| format!("{n}x {m:?}")).collect();
        format!(
            "{} attempts, {} acked, longest gap between acks {:.1} s; failures: [{}]",
            self.attempts,
            self.acked.len(),
            self.longest_gap().as_secs_f64(),
            failures.join(", ")
        )
    }
}

/// Submits `muster <args>` (with `--detach`) every `every` until stopped, one at a time (or a few, see
/// [`Load::start_parallel`]); a submission that fails (no leader right now, a timeout) is simply tried again at
/// the next tick, as a client retries.
#[derive(Debug)]
pub struct Load {
    report: Arc<Mutex<LoadReport>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts submitting, one submission at a time. `args` is a request-starting command as [`Cli::submit`] takes
    /// it.
    pub fn start(cli: Cli, args: Vec<String>, every: Duration) -> Self {
        Self::start_parallel(cli, args, every, 1)
    }

    /// Like [`Load::start`] with up to `in_flight` submissions at once, so one stuck until its timeout (its call
    /// reached a leader that died) does not hold up the next ticks.
    pub fn start_parallel(cli: Cli, args: Vec<String>, every: Duration, in_flight: usize) -> Self {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (stop, mut stopped) = watch::channel(false);
        let shared = report.clone();
        let args = Arc::new(args);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = ticks.tick() => {}
                }
                while running.len() >= in_flight.max(1) {
                    running.join_next().await;
                }
                let (cli, args, shared) = (cli.clone(), args.clone(), shared.clone());
                running.spawn(async move {
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let outcome = cli.submit(&argv).await;
                    let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
                    r.attempts += 1;
                    match outcome {
                        Ok(id) => r.acked.push(Acked { id, at: Instant::now() }),
                        Err(e) => *r.failures.entry(failure_key(&format!("{e:#}"))).or_default() += 1,
                    }
                });
            }
            // Submissions in flight finish: what they were told is part of the report.
            while running.join_next().await.is_some() {}
        });
        Self { report, stop, task: Some(task) }
    }

    /// What was done so far.
    pub fn report(&self) -> LoadReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `n` requests were acknowledged after `since`.
    pub async fn wait_acked_after(&self, since: Instant, n: usize, limit: Duration) -> anyhow::Result<()> {
        wait_until(limit, &format!("{n} requests acknowledged after the mark"), async || {
            let r = self.report();
            Ok(if r.acked_after(since) >= n { Check::Done(()) } else { Check::NotYet(r.summary()) })
        })
        .await
    }

    /// Stops submitting (letting a submission in flight finish) and returns what was done.
    pub async fn stop(mut self) -> LoadReport {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.report()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The part of a CLI failure that says why (its stderr), digits masked, bounded.
fn failure_key(s: &str) -> String {
    let s = s.split_once("stderr:").map_or(s, |(_, why)| why).trim();
    let masked: String = s.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
    masked.chars().take(200).collect()
}

/// One look taken by a [`Sampler`].
#[derive(Debug)]
pub struct Sample<T> {
    /// When the look started.
    pub started: Instant,
    /// When it ended.
    pub ended: Instant,
    /// What it saw, or why it failed.
    pub seen: Result<T, String>,
}

/// Looks at the system with `look` every `every` until stopped, keeping every result.
#[derive(Debug)]
pub struct Sampler<T> {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Vec<Sample<T>>>>,
}

impl<T: Send + 'static> Sampler<T> {
    /// Spawns a task that calls `look` every `every` until [`Sampler::stop`], keeping every result.
    pub fn start<F, Fut>(every: Duration, mut look: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return samples,
                    _ = ticks.tick() => {}
                }
                let started = Instant::now();
                let seen = look().await.map_err(|e| format!("{e:#}"));
                samples.push(Sample { started, ended: Instant::now(), seen });
            }
        });
        Self { stop, task: Some(task) }
    }

    /// Stops looking (letting a look in flight finish) and returns every sample, oldest first.
    pub async fn stop(mut self) -> Vec<Sample<T>> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl<T> Drop for Sampler<T> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `muster run --hosts <hosts> --timeout <secs> -- sh -c 'echo $MUSTER_TASK… >> <runs>/$MUSTER_HOST.runs'`: each
/// run of each task appends its `MUSTER_TASK` to its host's file in `runs` (created here), which [`Runs::read`]
/// reads back as `<task>-a<attempt>` (the agent sets `MUSTER_ATTEMPT` too), so each attempt is counted. The command takes milliseconds; a long timeout keeps a task whose dispatch a failover lost from being
/// rescued by the re-send after its timeout: the new leader must redo it.
pub fn traced_run(runs: &Path, hosts: &str, timeout_secs: u64) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(runs)?;
    let script =
        format!("echo $MUSTER_TASK${{MUSTER_ATTEMPT:+-a$MUSTER_ATTEMPT}} >> {}/$MUSTER_HOST.runs", runs.display());
    let timeout = timeout_secs.to_string();
    Ok(["run", "--hosts", hosts, "--timeout", &timeout, "--", "sh", "-c", &script].map(String::from).to_vec())
}

/// One line of a runs file: a run of a task on a host, with its attempt when the line carries one
/// (`<task>-a<attempt>`; a bare `<task>` does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The host whose file holds the line.
    pub host: String,
    /// The attempt, if the line says.
    pub attempt: Option<u32>,
}

/// Every run the agents recorded, by task id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs(pub BTreeMap<u64, Vec<Run>>);

impl Runs {
    /// Reads `<runs>/<host>.runs` of every host in `hosts` (a missing file is a host that ran nothing).
    pub fn read(runs: &Path, hosts: &[&str]) -> anyhow::Result<Self> {
        let mut out: BTreeMap<u64, Vec<Run>> = BTreeMap::new();
        for host in hosts {
            let path = runs.join(format!("{host}.runs"));
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {}", path.display()))),
            };
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (task, attempt) = match line.parse::<TaskAttempt>() {
                    Ok(t) => (t.task, Some(t.attempt)),
                    Err(_) => (
                        line.parse::<u64>()
                            .map_err(|_| anyhow::anyhow!("{}: not a task id: {line:?}", path.display()))?,
                        None,
                    ),
                };
                out.entry(task).or_default().push(Run { host: (*host).to_string(), attempt });
            }
        }
        Ok(Self(out))
    }

    /// The runs of `task` (none if it never ran).
    pub fn of(&self, task: u64) -> &[Run] {
        self.0.get(&task).map_or(&[][..], Vec::as_slice)
    }

    /// Every run, of every task.
    pub fn total(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
}

/// What [`Runs::check`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTally {
    /// Tasks on the traced hosts.
    pub tasks: usize,
    /// Of those, tasks with more than one attempt.
    pub retried: usize,
}

impl Runs {
    /// Compares the runs with what `requests` record, for the tasks on the `traced` hosts: every task ran on its
    /// own host exactly as many times as its record's attempt (each attempt once, where the lines carry it), and
    /// every run belongs to a task some request records. Returns every violation.
    pub fn check<'a>(
        &self,
        requests: impl IntoIterator<Item = &'a RequestView>,
        traced: &[&str],
    ) -> (Vec<String>, RunTally) {
        let (mut wrong, mut tally) = (Vec::new(), RunTally::default());
        let mut recorded = std::collections::BTreeSet::new();
        for v in requests {
            for t in &v.tasks {
                recorded.insert(t.id);
                if !traced.contains(&t.host.as_str()) {
                    continue;
                }
                tally.tasks += 1;
                tally.retried += usize::from(t.attempt > 1);
                let ran = self.of(t.id);
                let elsewhere: Vec<&str> = ran.iter().filter(|r| r.host != t.host).map(|r| r.host.as_str()).collect();
                if !elsewhere.is_empty() {
                    wrong.push(format!("task {} of {} ran on {elsewhere:?} too", t.id, t.host));
                }
                if ran.len() != t.attempt as usize {
                    wrong.push(format!(
                        "task {} ({}) ran {} times, its record says attempt {}: request {}",
                        t.id,
                        t.status,
                        ran.len(),
                        t.attempt,
                        v.id
                    ));
                }
                let mut attempts: Vec<u32> = ran.iter().filter_map(|r| r.attempt).collect();
                attempts.sort_unstable();
                let want: Vec<u32> = (1..=t.attempt).collect();
                if !attempts.is_empty() && attempts.len() == ran.len() && attempts != want {
                    wrong.push(format!("task {} ran attempts {attempts:?}, its record says {}", t.id, t.attempt));
                }
            }
        }
        for (task, ran) in &self.0 {
            if !recorded.contains(task) {
                let hosts: Vec<&str> = ran.iter().map(|r| r.host.as_str()).collect();
                wrong.push(format!("task {task} ran {} times on {hosts:?} but no request records it", ran.len()));
            }
        }
        (wrong, tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::api::{StageView, TaskView};
    use muster_schemas::cluster::TaskStatus;

    fn task(id: u64, host: &str, attempt: u32) -> TaskView {
        TaskView {
            id,
            stage: 0,
            host: host.to_string(),
            component: None,
            command: "RUN".to_string(),
            status: TaskStatus::Completed,
            attempt,
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            started_at: 1,
            finished_at: 2,
            detail: String::new(),
        }
    }

    fn request(id: u64, tasks: Vec<TaskView>) -> RequestView {
        let stage = StageView {
            name: "RUN".to_string(),
            status: TaskStatus::Completed,
            tasks: tasks.iter().map(|t| t.id).collect(),
            total: tasks.len() as u64,
            done: tasks.len() as u64,
            failed: 0,
            running: 0,
        };
        RequestView {
            id,
            description: String::new(),
            status: TaskStatus::Completed,
            created_at: 1,
            finished_at: 2,
            detail: String::new(),
            stages: vec![stage],
            tasks_total: tasks.len() as u64,
            counts: [("COMPLETED".to_string(), tasks.len() as u64)].into(),
            tasks,
        }
    }

    fn runs(files: &[(&str, &str)]) -> Runs {
        let dir = tempfile::tempdir().unwrap();
        for (host, text) in files {
            std::fs::write(dir.path().join(format!("{host}.runs")), text).unwrap();
        }
        let hosts: Vec<&str> = files.iter().map(|(h, _)| *h).collect();
        Runs::read(dir.path(), &hosts).unwrap()
    }

    #[test]
    fn each_attempt_ran_once_passes() {
        let r = request(1, vec![task(10, "h-1", 1), task(11, "h-2", 2)]);
        let (wrong, tally) = runs(&[("h-1", "10\n"), ("h-2", "11\n11\n")]).check([&r], &["h-1", "h-2"]);
        assert!(wrong.is_empty(), "{wrong:?}");
        assert_eq!(tally, RunTally { tasks: 2, retried: 1 });
    }

    /// Exact counting: a re-dispatch of an attempt that already ran is a run too many, a COMPLETED task that never
    /// ran a run missing (the HA tests used to check only `runs <= attempt`, and only warned about a run no request
    /// records, which fails here too).
    #[test]
    fn a_redispatched_attempt_a_missing_run_and_an_unrecorded_run_fail() {
        let r = request(1, vec![task(10, "h-1", 1), task(11, "h-2", 1)]);
        let (wrong, _) = runs(&[("h-1", "10\n10\n99\n"), ("h-2", "")]).check([&r], &["h-1", "h-2"]);
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        assert!(wrong[0].contains("task 10 (COMPLETED) ran 2 times"), "{wrong:?}");
        assert!(wrong[1].contains("task 11 (COMPLETED) ran 0 times"), "{wrong:?}");
        assert!(wrong[2].contains("task 99 ran 1 times"), "{wrong:?}");
    }

    #[test]
    fn lines_with_attempts_count_each_attempt_and_a_run_on_another_host_fails() {
        let r = request(1, vec![task(10, "h-1", 2)]);
        let (wrong, _) = runs(&[("h-1", "10-a1\n10-a1\n"), ("h-2", "")]).check([&r], &["h-1", "h-2"]);
        assert_eq!(wrong, vec!["task 10 ran attempts [1, 1], its record says 2".to_string()]);
        let (wrong, _) = runs(&[("h-1", "10-a1\n"), ("h-2", "10-a2\n")]).check([&r], &["h-1", "h-2"]);
        assert_eq!(wrong, vec!["task 10 of h-1 ran on [\"h-2\"] too".to_string()]);
    }
}
