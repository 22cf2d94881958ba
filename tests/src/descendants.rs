//! Processes started *by* the processes under test — component daemons, commands and their children — looked at
//! through `/proc`: whether one is alive, what environment it runs with, and [`Descendants`], which kills every
//! one a test left behind.
//!
//! Daemons outlive the agent that started them (that is their job), and a command whose agent was SIGKILLed runs
//! on as an orphan, so killing the test's own children is not enough. Every agent a test starts carries
//! [`OWNER_ENV`] = the test's directory; commands and daemons inherit it. A process is the test's only if it
//! carries that exact entry, so nothing else on the machine (another test, another engineer's demo) is touched.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// The variable marking a test's processes; its value is the test directory (unique per test).
pub const OWNER_ENV: &str = "E2E_TEST_DIR";

/// Rounds of [`Descendants::kill_all`]: a start script killed between forking and writing its pid file may have
/// just forked a daemon, which the next round finds.
const KILL_ROUNDS: usize = 5;

/// Whether `pid` names a live process. A zombie counts as dead: it no longer runs, and the machine's init may be
/// slow to reap orphans (some container inits never do).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) S ...`: comm may contain spaces and parentheses, the state follows the last ')'.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// The environment `pid` was started with, `None` if it is gone or not readable (another user's process).
pub fn environ(pid: u32) -> Option<BTreeMap<String, String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (k, v) = entry.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// The processes of one test, identified by [`OWNER_ENV`]; every live one is killed on Drop.
#[derive(Debug)]
pub struct Descendants {
    marker: String,
}

impl Descendants {
    /// The processes marked with `dir` (the test directory).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let marker = dir.to_str().context("test directory path is not UTF-8")?.to_string();
        Ok(Self { marker })
    }

    /// The variable to give every process this test starts whose descendants must be cleaned up.
    pub fn env(&self) -> (&'static str, String) {
        (OWNER_ENV, self.marker.clone())
    }

    /// Whether `pid` is one of this test's processes (and alive).
    pub fn owns(&self, pid: u32) -> bool {
        alive(pid) && environ(pid).is_some_and(|env| env.get(OWNER_ENV) == Some(&self.marker))
    }

    /// Every live process of this test.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        let me = std::process::id();
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|pid| *pid != me && self.owns(*pid))
            .collect()
    }

    /// Sends SIGKILL to `pid`, which must be one of this test's processes (a daemon killed behind the agent's
    /// back); refuses any other pid, so a stale pid file can never hit an unrelated process.
    pub fn kill(&self, pid: u32) -> anyhow::Result<()> {
        anyhow::ensure!(self.owns(pid), "pid {pid} is not a live process of this test; not killing it");
        let raw = i32::try_from(pid).context("pid out of range")?;
        signal::kill(Pid::from_raw(raw), Signal::SIGKILL).with_context(|| format!("SIGKILL to pid {pid}"))
    }

    /// Kills every live process of this test; returns how many were killed.
    pub fn kill_all(&self) -> usize {
        let mut killed = 0;
        for _ in 0..KILL_ROUNDS {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Ok(raw) = i32::try_from(pid) {
                    if signal::kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                        killed += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed
    }
}

impl Drop for Descendants {
    fn drop(&mut self) {
        self.kill_all();
    }
}
