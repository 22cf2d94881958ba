//! Background activity during a fault: [`Load`] keeps submitting requests through the CLI and records every one
//! that was acknowledged; [`Sampler`] keeps looking at the system and records what it saw, so a test can check a
//! property at every moment of a failover, not only before and after.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_schemas::commands::RequestId;
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

/// Submits `muster <args>` (with `--detach`) every `every` until stopped, one at a time; a submission that fails
/// (no leader right now, a timeout) is simply tried again at the next tick, as a client retries.
#[derive(Debug)]
pub struct Load {
    report: Arc<Mutex<LoadReport>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts submitting. `args` is a request-starting command as [`Cli::submit`] takes it.
    pub fn start(cli: Cli, args: Vec<String>, every: Duration) -> Self {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (stop, mut stopped) = watch::channel(false);
        let shared = report.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = ticks.tick() => {}
                }
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let outcome = cli.submit(&argv).await;
                let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
                r.attempts += 1;
                match outcome {
                    Ok(id) => r.acked.push(Acked { id, at: Instant::now() }),
                    Err(e) => *r.failures.entry(failure_key(&format!("{e:#}"))).or_default() += 1,
                }
            }
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
