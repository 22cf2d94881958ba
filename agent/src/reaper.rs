//! Reaping orphans: `muster-agent` collects the exit of every descendant whose parent died before it, so none stays
//! a zombie, and as a container's PID 1 it takes the container's other processes down with it.
//!
//! # Why there are orphans, and why they are the agent's
//! A start script starts its daemon and exits; a daemon that double-forks (`(mydaemon &)`, `daemon(3)`) leaves a
//! process whose parent is gone. The kernel re-parents such an orphan to the nearest *child subreaper* among its
//! ancestors, else to its PID namespace's init. In a container the agent is that init (PID 1); elsewhere it makes
//! itself a subreaper ([`become_subreaper`]), so it finds and reaps its orphans the same way inside and outside
//! a container, and a test can check it without one. An orphan nobody reaps stays a zombie until its reaper exits:
//! in a container, forever.
//!
//! # Reaping only orphans
//! The executor's own commands are children of the agent too, and tokio reaps each of them itself when it is
//! awaited (`waitpid(pid)`, after a pidfd or SIGCHLD says it exited). A blanket `waitpid(-1)` would take their exit
//! statuses first: tokio would then get `ECHILD` and the command's outcome would be lost. So the executor spawns
//! through [`spawn`], which records the child's pid in a registry *while holding its lock* (so a child that exits at
//! once is in the registry before any sweep can see it) and keeps it there until tokio has waited for it
//! ([`Registered`] is dropped with the command's future). A sweep, on every SIGCHLD and every [`SWEEP_INTERVAL`]:
//!
//! 1. lists this process' children (`/proc/self/task/*/children`, else a scan of `/proc/*/stat` for this parent);
//! 2. under the registry's lock, calls `waitpid(pid, WNOHANG)` for each child that is not registered: a live one
//!    is left alone (the call returns at once), a dead one is reaped and counted (`process.orphans_reaped`).
//!
//! A pid that tokio reaped and the kernel re-used for a new child is safe as well: the new child is registered
//! before its pid can show up in a sweep, and a registration is counted per pid. The periodic sweep covers
//! SIGCHLDs merged by the kernel and the `children` files' documented blind spot for processes exiting while they
//! are read.
//!
//! # PID 1's shutdown
//! When the agent is done (its commands ended or were killed, see [`crate::runner`]), whatever still runs in its
//! PID namespace is the container's: daemons its commands started. As PID 1 it sends them SIGTERM, gives them
//! until the end of the shutdown grace (at least [`MIN_REST_GRACE`]) reaping them as they exit, then SIGKILLs what
//! is left and reaps that ([`stop_the_rest`]); only then does it exit, so nothing is left behind. Outside a
//! container the agent never signals processes that are not its commands': daemons outlive an agent restart.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{SessionCounter, SessionStats};

/// Sweeps without a SIGCHLD: catches what a merged signal or a racy `children` read missed. A sweep reads one
/// small file per agent thread and makes one `waitpid` per unregistered child.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Least time the container's other processes get between SIGTERM and SIGKILL when the agent, as PID 1, stops
/// them after a shutdown that used up its grace.
pub const MIN_REST_GRACE: Duration = Duration::from_secs(1);

/// Longest wait for SIGKILLed processes to be reaped: they die at once unless stuck in the kernel.
const KILLED_REAP_LIMIT: Duration = Duration::from_secs(2);

/// How often [`stop_the_rest`] looks again whether everything has exited.
const REST_POLL: Duration = Duration::from_millis(20);

/// Pids of the executor's live children, each with how many registrations hold it.
static REGISTRY: Mutex<BTreeMap<i32, usize>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<i32, usize>> {
    // The map stays consistent whatever panicked while holding it: every change is one insert or remove.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A child the reaper must leave to tokio, until this is dropped (after the child was waited for).
#[derive(Debug)]
pub struct Registered(Option<i32>);

impl Drop for Registered {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let mut registry = registry();
        if let Some(count) = registry.get_mut(&pid) {
            *count -= 1;
            if *count == 0 {
                registry.remove(&pid);
            }
        }
    }
}

/// Spawns `command`, its pid registered so sweeps leave its exit status to tokio. Keep the [`Registered`] until the
/// child has been waited for (or dropped).
pub fn spawn(command: &mut tokio::process::Command) -> io::Result<(tokio::process::Child, Registered)> {
    let mut registry = registry();
    let child = command.spawn()?;
    // `id()` is `None` only once the child has been waited for, which nothing has done yet.
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    if let Some(pid) = pid {
        *registry.entry(pid).or_insert(0) += 1;
    }
    Ok((child, Registered(pid)))
}

/// Whether this process is the init of its PID namespace (a container's PID 1).
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Makes orphaned descendants of this process its children, as they are PID 1's (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// One process' line of `/proc/<pid>/stat`, the fields a sweep needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The process id.
    pub pid: i32,
    /// Its state letter (`R`, `S`, `Z` for a zombie, ...).
    pub state: char,
    /// Its parent's process id.
    pub ppid: i32,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may hold spaces and parentheses (the state
/// follows the *last* `)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { pid, state, ppid })
}

/// Parses a `/proc/<pid>/task/<tid>/children` file: pids separated by spaces; anything else is skipped.
pub fn parse_children(text: &str) -> impl Iterator<Item = i32> + '_ {
    text.split_whitespace().filter_map(|pid| pid.parse().ok()).filter(|pid| *pid > 0)
}

/// Why this process' children cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// `/proc` cannot be read.
    #[error("cannot read /proc: {0}")]
    Proc(#[from] io::Error),
    /// The `/proc` mounted is another PID namespace's (a container started without its own), so its pids are not
    /// the ones `waitpid` takes.
    #[error("/proc belongs to another PID namespace (it calls this process {seen}, not {own})")]
    OtherNamespace {
        /// The pid `/proc/self/stat` shows.
        seen: i32,
        /// This process' own pid.
        own: u32,
    },
}

/// This process' children, live and zombie, as `/proc` lists them.
pub fn children() -> Result<Vec<i32>, ListError> {
    let own = std::process::id();
    let seen = parse_stat(&std::fs::read_to_string("/proc/self/stat")?).map_or(-1, |s| s.pid);
    if u32::try_from(seen).ok() != Some(own) {
        return Err(ListError::OtherNamespace { seen, own });
    }
    // Every thread's children: an orphan is re-parented to one of this process' threads.
    let mut pids = Vec::new();
    let mut readable = false;
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            readable = true;
            pids.extend(parse_children(&text));
        }
    }
    if !readable {
        // A kernel without CONFIG_PROC_CHILDREN: every process' parent, read one by one.
        let own = i32::try_from(own).unwrap_or(-1);
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok();
            if stat.as_deref().and_then(parse_stat).is_some_and(|s| s.ppid == own) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// An orphan reaped by a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Its process id.
    pub pid: i32,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// Reaps every dead child of this process that is not registered (see the module docs); counts and logs each.
pub fn sweep(stats: &SessionStats) -> Result<Vec<Reaped>, ListError> {
    let candidates = children()?;
    let registry = registry();
    let mut reaped = Vec::new();
    for pid in candidates.into_iter().filter(|pid| !registry.contains_key(pid)) {
        let found = match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Reaped { pid, code: Some(code), signal: None },
            Ok(WaitStatus::Signaled(_, signal, _)) => Reaped { pid, code: None, signal: Some(signal as i32) },
            // Alive (or stopped): left alone. ECHILD: not a child any more, someone else reaped it.
            Ok(_) | Err(Errno::ECHILD) => continue,
            Err(e) => {
                tracing::debug!(pid, error = %e, "waitpid of an orphan");
                continue;
            }
        };
        stats.inc(SessionCounter::OrphansReaped);
        tracing::info!(pid, code = found.code, signal = found.signal, "reaped an orphaned process");
        reaped.push(found);
    }
    Ok(reaped)
}

/// Sweeps on every SIGCHLD and every [`SWEEP_INTERVAL`] until `stop` is cancelled. Gives up (with a warning) when
/// this process' children cannot be listed.
pub async fn run(stats: SessionStats, stop: CancellationToken) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGCHLD; reaping orphans every {SWEEP_INTERVAL:?} only");
            None
        }
    };
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async { sigchld.as_mut()?.recv().await } => {}
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&stats) {
            tracing::warn!(error = %e, "cannot look for orphaned processes; they will stay zombies");
            return;
        }
    }
}

/// As PID 1 at the end of the agent's shutdown: SIGTERM to every other process of the PID namespace, reaping them
/// as they exit until `until` (at least [`MIN_REST_GRACE`] from now), then SIGKILL to what is left, reaped as well.
/// Returns how many processes were still there at the SIGKILL. Does nothing unless this process is PID 1: outside
/// a container "every other process" is the machine's.
pub async fn stop_the_rest(stats: &SessionStats, until: Instant) -> usize {
    if !is_init() {
        return 0;
    }
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM).is_err() {
        // ESRCH: there is no other process. Nothing to wait for.
        return 0;
    }
    let until = until.max(Instant::now() + MIN_REST_GRACE);
    let left = wait_for_children(stats, until).await;
    if left == 0 {
        return 0;
    }
    tracing::warn!(processes = left, "processes of the container ignored SIGTERM; killing them");
    let _ = kill(everyone, Signal::SIGKILL);
    wait_for_children(stats, Instant::now() + KILLED_REAP_LIMIT).await;
    left
}

/// Sweeps until this process has no child left or `until` passes; returns how many children are left.
async fn wait_for_children(stats: &SessionStats, until: Instant) -> usize {
    loop {
        let left = match sweep(stats).and_then(|_| children()) {
            Ok(children) => children.len(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot see the processes left");
                return 0;
            }
        };
        if left == 0 || Instant::now() >= until {
            return left;
        }
        tokio::time::sleep(REST_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let stat = "4242 (sh) Z 17 4242 4242 0 -1 4194564 91 0 0 0 0 0 0 0 20 0 1 0 1234 0 0";
        assert_eq!(parse_stat(stat), Some(Stat { pid: 4242, state: 'Z', ppid: 17 }));
        let odd = "77 (a) b (c)) S 1 77 77 0 -1";
        assert_eq!(parse_stat(odd), Some(Stat { pid: 77, state: 'S', ppid: 1 }));
        for bad in ["", "42", "42 (sh)", "42 (sh) Z", "x (sh) Z 1", "42 (sh) Z one", "(sh) Z 1", "42 sh) Z 1"] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn children_files_parse() {
        assert_eq!(parse_children("12 345 6789 \n").collect::<Vec<_>>(), [12, 345, 6789]);
        assert_eq!(parse_children("").count(), 0);
        assert_eq!(parse_children("12 x -3 0 99999999999 7").collect::<Vec<_>>(), [12, 7]);
    }

    #[test]
    fn this_process_is_seen_in_proc() {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!(u32::try_from(stat.pid).unwrap(), std::process::id());
        assert!(!is_init(), "unit tests do not run as PID 1");
    }

    /// A registered child that exits is left to its owner however often sweeps run; an unregistered orphan-like
    /// child (spawned by std, which nothing here waits for) is reaped and counted. Real processes.
    #[tokio::test]
    async fn sweeps_reap_unregistered_children_only() {
        let stats = SessionStats::default();
        let mut command = tokio::process::Command::new("/bin/sh");
        command.args(["-c", "exit 3"]);
        let (mut child, registered) = spawn(&mut command).unwrap();
        let own = i32::try_from(child.id().unwrap()).unwrap();
        // Not waited for by anyone (std's `Child` does not wait when dropped): a stand-in for an orphan re-parented
        // to this process.
        let orphan_pid = {
            #[expect(clippy::zombie_processes, reason = "the zombie is the point: the sweep must reap it")]
            let orphan = std::process::Command::new("/bin/sh").args(["-c", "exit 5"]).spawn().unwrap();
            i32::try_from(orphan.id()).unwrap()
        };

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut reaped = Vec::new();
        while !reaped.iter().any(|r: &Reaped| r.pid == orphan_pid) {
            assert!(std::time::Instant::now() < deadline, "the orphan {orphan_pid} was never reaped");
            reaped.extend(sweep(&stats).unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // More sweeps once the registered child has surely exited: it stays tokio's.
        tokio::time::sleep(Duration::from_millis(100)).await;
        reaped.extend(sweep(&stats).unwrap());
        assert!(reaped.iter().all(|r| r.pid != own), "a registered child was reaped: {reaped:?}");
        assert!(reaped.contains(&Reaped { pid: orphan_pid, code: Some(5), signal: None }), "{reaped:?}");
        assert_eq!(child.wait().await.unwrap().code(), Some(3), "tokio lost its child's exit status");
        drop(registered);
        assert!(!registry().contains_key(&own));
        assert!(stats.get(SessionCounter::OrphansReaped) >= 1);
    }
}
