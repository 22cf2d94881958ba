//! Running one command: the [`Executor`] trait, the real [`ProcessExecutor`], and the mapping from how a run
//! ended ([`Outcome`]) to the task phase reported to the server.
//!
//! The process executor starts each command in a process group of its own, so a timeout or a cancel can kill
//! the whole tree (`killpg`), including daemons and grandchildren. A command that exits by itself is left alone:
//! a start script normally leaves its daemon running in that group. The executor waits for the *process* to
//! exit, not for end of file on its pipes (a daemon may hold them open forever), and then reads what is left for
//! [`DRAIN_AFTER_EXIT`].
//!
//! At shutdown the agent *asks* first ([`Stop::terminate`]): the command's process group gets SIGTERM, as the
//! agent itself did, and the executor waits for the command and then for the rest of its group to exit, until
//! [`Stop::kill`] (the end of the shutdown grace) SIGKILLs what remains. Children are spawned through
//! [`crate::reaper::spawn`], so the orphan reaper leaves their exit statuses to tokio.

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use muster_schemas::commands::{CommandSpec, TaskPhase};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;

use crate::output::OutputCapture;
use crate::reaper;

/// How long output is still read after the command exited: long enough to collect what it wrote just before
/// exiting, short enough that a daemon holding the pipes open does not delay the report noticeably.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// How often a terminated command's process group is checked for members left, after its leader exited.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Read buffer per stream: one pipe buffer's worth (Linux pipes hold 64 KiB; 8 KiB reads keep syscalls few
/// without holding much memory per running command).
const READ_CHUNK: usize = 8 * 1024;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal (not by the agent).
    Signalled(i32),
    /// The timeout expired; the process group was killed.
    TimedOut,
    /// The agent was told to kill it (cancel or shutdown); the process group was killed.
    Killed,
    /// The agent's shutdown asked it to end (SIGTERM to its process group) and it did, other than by exiting 0.
    Terminated,
    /// The process could not be started.
    SpawnFailed(String),
}

impl Outcome {
    /// The final phase and exit code to report for this outcome.
    pub fn phase(&self) -> (TaskPhase, Option<i32>) {
        match self {
            Self::Exited(0) => (TaskPhase::Completed, Some(0)),
            Self::Exited(code) => (TaskPhase::Failed, Some(*code)),
            Self::Signalled(_) | Self::SpawnFailed(_) => (TaskPhase::Failed, None),
            Self::TimedOut => (TaskPhase::TimedOut, None),
            Self::Killed | Self::Terminated => (TaskPhase::Aborted, None),
        }
    }

    /// Whether a status check with this outcome means "running" (exit 0).
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited(0))
    }

    fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(signal)) => Self::Signalled(signal),
            // Neither code nor signal: only a stopped/continued status, which `wait` does not return.
            (None, None) => Self::Exited(-1),
        }
    }
}

/// How the agent tells a running command to end.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Cancelled at shutdown: the command is asked to end (SIGTERM to its process group) and may still finish.
    pub terminate: CancellationToken,
    /// Cancelled to end the command now (a cancel, a status check at shutdown, the end of the shutdown grace):
    /// SIGKILL to its process group.
    pub kill: CancellationToken,
}

impl Stop {
    /// A stop that `kill` alone ends (nothing asks first).
    pub fn kill_only(kill: CancellationToken) -> Self {
        Self { terminate: CancellationToken::new(), kill }
    }
}

/// Something that can run a [`CommandSpec`] to its end. The real agent uses [`ProcessExecutor`];
/// `muster-swarm` can plug in trivial built-in commands without processes.
pub trait Executor: Send + Sync + 'static {
    /// Runs `spec` until it ends, writing its output into `output`. It must end soon after `stop.kill` is
    /// cancelled (returning [`Outcome::Killed`]) and after `spec.timeout_ms` (returning [`Outcome::TimedOut`]),
    /// and must not leave processes of its own behind in those cases. When `stop.terminate` is cancelled it asks
    /// the command to end; a command that then ends returns [`Outcome::Terminated`] (or [`Outcome::Exited`] with
    /// 0, if it still succeeded), and leaves nothing of its own behind either.
    fn execute(&self, spec: CommandSpec, stop: Stop, output: OutputCapture) -> impl Future<Output = Outcome> + Send;
}

/// Runs commands as real processes: argv and env from the spec on top of the agent's environment, stdin from
/// `/dev/null`, its own process group, stdout and stderr captured.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessExecutor;

impl Executor for ProcessExecutor {
    async fn execute(&self, spec: CommandSpec, stop: Stop, output: OutputCapture) -> Outcome {
        let Some((program, args)) = spec.argv.split_first() else {
            return Outcome::SpawnFailed("the command has an empty argv".to_owned());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // Registered until this future ends, by when tokio has waited for the child (or the child was dropped).
        let (mut child, _registered) = match reaper::spawn(&mut command) {
            Ok(spawned) => spawned,
            Err(e) => return Outcome::SpawnFailed(format!("cannot start {program:?}: {e}")),
        };
        // The child leads its own group: its pid is the group id.
        let mut group = GroupGuard(child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw));
        let stdout = pump(child.stdout.take(), output.clone(), Stream::Stdout);
        let stderr = pump(child.stderr.take(), output, Stream::Stderr);
        let reading = async { tokio::join!(stdout, stderr) };
        tokio::pin!(reading);
        let deadline = tokio::time::sleep(Duration::from_millis(spec.timeout_ms));
        tokio::pin!(deadline);

        let mut read_all = false;
        let mut terminated = false;
        let (outcome, leader_reaped) = loop {
            tokio::select! {
                status = child.wait() => {
                    let outcome = match status {
                        Ok(status) => Outcome::from_status(status),
                        Err(e) => Outcome::SpawnFailed(format!("cannot wait for {program:?}: {e}")),
                    };
                    // After the SIGTERM, anything but success is the shutdown's doing.
                    let asked = terminated && outcome != Outcome::Exited(0);
                    break (if asked { Outcome::Terminated } else { outcome }, true);
                }
                _ = &mut reading, if !read_all => read_all = true,
                () = &mut deadline => {
                    group.signal(Signal::SIGKILL);
                    break (Outcome::TimedOut, false);
                }
                () = stop.kill.cancelled() => {
                    group.signal(Signal::SIGKILL);
                    break (Outcome::Killed, false);
                }
                () = stop.terminate.cancelled(), if !terminated => {
                    terminated = true;
                    tracing::debug!(pgid = ?group.0, "forwarding SIGTERM to the command's process group");
                    group.signal(Signal::SIGTERM);
                }
            }
        };
        if !leader_reaped {
            // Killed with SIGKILL: reaping is immediate. Disarm only after, so a drop in between still kills.
            if let Err(e) = child.wait().await {
                tracing::warn!(error = %e, "cannot reap a killed command");
            }
        } else if terminated {
            // The rest of its group got the SIGTERM too: it must be gone before the agent is, or be killed.
            tokio::select! {
                () = group.emptied() => {}
                () = stop.kill.cancelled() => group.signal(Signal::SIGKILL),
                () = &mut deadline => group.signal(Signal::SIGKILL),
            }
        }
        // Reaped and, unless asked to end, left alone: the group may live on (a daemon).
        group.disarm();
        if !read_all {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading).await;
        }
        outcome
    }
}

/// Kills a command's process group when the run is abandoned (timeout, cancel, or the future dropped) until the
/// leader has been reaped and, after a SIGTERM, the rest of the group has ended.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.0 {
            // ESRCH (the group is already gone) is the only expected error and needs nothing done.
            if let Err(e) = killpg(group, signal) {
                tracing::debug!(error = %e, pgid = group.as_raw(), ?signal, "killpg");
            }
        }
    }

    /// Returns once no process is left in the group (zombies count until reaped: by the orphan reaper in the
    /// agent, by whoever reaps orphans elsewhere).
    async fn emptied(&self) {
        let Some(group) = self.0 else { return };
        while killpg(group, None).is_ok() {
            tokio::time::sleep(GROUP_POLL).await;
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies one pipe into the capture until end of file or a read error.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, output: OutputCapture, stream: Stream) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => match stream {
                Stream::Stdout => output.stdout(&buf[..n]),
                Stream::Stderr => output.stderr(&buf[..n]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Instant;

    /// Process tests use real time; this bounds each so a hang fails instead of stalling the suite.
    const TEST_TIMEOUT: Duration = Duration::from_secs(20);

    fn sh(script: &str, timeout_ms: u64) -> CommandSpec {
        CommandSpec { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: BTreeMap::new(), timeout_ms }
    }

    async fn run(spec: CommandSpec) -> (Outcome, String, String) {
        run_with(spec, CancellationToken::new()).await
    }

    async fn run_with(spec: CommandSpec, kill: CancellationToken) -> (Outcome, String, String) {
        let output = OutputCapture::new(1024);
        let stop = Stop::kill_only(kill);
        let outcome = tokio::time::timeout(TEST_TIMEOUT, ProcessExecutor.execute(spec, stop, output.clone()))
            .await
            .expect("execute did not return");
        let (stdout, stderr) = output.text();
        (outcome, stdout, stderr)
    }

    fn alive(pid: i32) -> bool {
        // Signal 0 checks existence; a zombie still counts, so also look at /proc.
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(false)
    }

    async fn wait_gone(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[test]
    fn outcomes_map_to_phases() {
        let rows = [
            (Outcome::Exited(0), TaskPhase::Completed, Some(0)),
            (Outcome::Exited(3), TaskPhase::Failed, Some(3)),
            (Outcome::Exited(-1), TaskPhase::Failed, Some(-1)),
            (Outcome::Signalled(9), TaskPhase::Failed, None),
            (Outcome::SpawnFailed("x".into()), TaskPhase::Failed, None),
            (Outcome::TimedOut, TaskPhase::TimedOut, None),
            (Outcome::Killed, TaskPhase::Aborted, None),
            (Outcome::Terminated, TaskPhase::Aborted, None),
        ];
        for (outcome, phase, code) in rows {
            assert_eq!(outcome.phase(), (phase, code), "{outcome:?}");
        }
        assert!(Outcome::Exited(0).is_success() && !Outcome::Exited(1).is_success());
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_captured() {
        let (outcome, out, err) = run(sh("echo hello; echo oops >&2; exit 0", 10_000)).await;
        assert_eq!((outcome, out.as_str(), err.as_str()), (Outcome::Exited(0), "hello\n", "oops\n"));
        let (outcome, _, _) = run(sh("exit 7", 10_000)).await;
        assert_eq!(outcome, Outcome::Exited(7));
        let (outcome, _, _) = run(sh("kill -9 $$", 10_000)).await;
        assert_eq!(outcome, Outcome::Signalled(9));
        assert_eq!(outcome.phase(), (TaskPhase::Failed, None));
    }

    #[tokio::test]
    async fn env_is_added_to_the_inherited_environment() {
        let mut spec = sh("echo \"$MUSTER_TEST_VAR:${PATH:+has-path}\"", 10_000);
        spec.env.insert("MUSTER_TEST_VAR".into(), "set".into());
        let (outcome, out, _) = run(spec).await;
        assert_eq!((outcome, out.as_str()), (Outcome::Exited(0), "set:has-path\n"));
    }

    #[tokio::test]
    async fn spawn_failures_are_outcomes() {
        let spec =
            CommandSpec { argv: vec!["/nonexistent/muster-test".into()], env: BTreeMap::new(), timeout_ms: 1_000 };
        let (outcome, _, _) = run(spec).await;
        assert!(matches!(&outcome, Outcome::SpawnFailed(e) if e.contains("/nonexistent/muster-test")), "{outcome:?}");
        let empty = CommandSpec { argv: vec![], env: BTreeMap::new(), timeout_ms: 1_000 };
        assert!(matches!(run(empty).await.0, Outcome::SpawnFailed(_)));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_tree() {
        let started = Instant::now();
        let (outcome, out, _) = run(sh("sleep 100 & echo $!; wait", 300)).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let grandchild: i32 = out.trim().parse().expect("the script prints the grandchild's pid");
        assert!(wait_gone(grandchild).await, "grandchild {grandchild} survived the timeout");
    }

    #[tokio::test]
    async fn kill_kills_the_whole_process_tree() {
        let kill = CancellationToken::new();
        let output = OutputCapture::new(1024);
        let run = tokio::spawn(ProcessExecutor.execute(
            sh("sleep 100 & echo $!; wait", 60_000),
            Stop::kill_only(kill.clone()),
            output.clone(),
        ));
        let grandchild = first_line_pid(&output).await;
        assert!(alive(grandchild));
        kill.cancel();
        let outcome = tokio::time::timeout(TEST_TIMEOUT, run).await.expect("kill did not end the run").unwrap();
        assert_eq!(outcome, Outcome::Killed);
        assert!(wait_gone(grandchild).await, "grandchild {grandchild} survived the kill");
    }

    /// The pid the script printed first.
    async fn first_line_pid(output: &OutputCapture) -> i32 {
        loop {
            if let Some(pid) = output.text().0.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `script` with its own stop switches; returns them, the running execution and its output.
    fn start(script: &str) -> (Stop, tokio::task::JoinHandle<Outcome>, OutputCapture) {
        let stop = Stop::default();
        let output = OutputCapture::new(1024);
        let run = tokio::spawn(ProcessExecutor.execute(sh(script, 60_000), stop.clone(), output.clone()));
        (stop, run, output)
    }

    #[tokio::test]
    async fn terminate_sends_sigterm_to_the_group_and_a_clean_exit_stays_a_success() {
        // The trap reaps the grandchild before exiting, so nothing is left for another reaper.
        let (stop, run, output) = start("trap 'echo got TERM; wait; exit 0' TERM; sleep 100 & echo $!; wait");
        let grandchild = first_line_pid(&output).await;
        stop.terminate.cancel();
        let outcome = tokio::time::timeout(TEST_TIMEOUT, run).await.expect("terminate did not end the run").unwrap();
        assert_eq!(outcome, Outcome::Exited(0));
        assert!(output.text().0.ends_with("got TERM\n"), "{:?}", output.text());
        assert!(wait_gone(grandchild).await, "the grandchild {grandchild} did not get the SIGTERM");
    }

    #[tokio::test]
    async fn a_command_ending_on_sigterm_is_terminated() {
        let (stop, run, output) = start("echo $$; exec sleep 100");
        let pid = first_line_pid(&output).await;
        let started = Instant::now();
        stop.terminate.cancel();
        let outcome = tokio::time::timeout(TEST_TIMEOUT, run).await.expect("terminate did not end the run").unwrap();
        assert_eq!(outcome, Outcome::Terminated);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn what_ignores_sigterm_runs_until_the_kill() {
        // Ignored signals stay ignored across fork and exec: neither the shell nor its sleep end on SIGTERM.
        let (stop, mut run, output) = start("trap '' TERM; sleep 100 & echo $!; wait");
        let grandchild = first_line_pid(&output).await;
        stop.terminate.cancel();
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut run).await.is_err(), "ended on SIGTERM");
        assert!(alive(grandchild));
        stop.kill.cancel();
        let outcome = tokio::time::timeout(TEST_TIMEOUT, run).await.expect("kill did not end the run").unwrap();
        assert_eq!(outcome, Outcome::Killed);
        assert!(wait_gone(grandchild).await, "grandchild {grandchild} survived the kill");
    }

    #[tokio::test]
    async fn a_terminated_commands_group_is_waited_for_then_killed() {
        // The leader ends on SIGTERM; a member of its group ignores it (it prints its pid once it does) and
        // outlives it.
        let (stop, mut run, output) = start("sh -c 'trap \"\" TERM; echo $$; exec sleep 100' & exec sleep 100");
        let member = first_line_pid(&output).await;
        stop.terminate.cancel();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut run).await.is_err(),
            "returned while its group still ran"
        );
        assert!(alive(member));
        stop.kill.cancel();
        let outcome = tokio::time::timeout(TEST_TIMEOUT, run).await.expect("kill did not end the run").unwrap();
        assert_eq!(outcome, Outcome::Terminated);
        assert!(wait_gone(member).await, "the group member {member} survived the kill");
    }

    #[tokio::test]
    async fn a_daemon_left_behind_neither_blocks_nor_dies() {
        // The daemon inherits the pipes: waiting for EOF would hang for 100 s.
        let started = Instant::now();
        let (outcome, out, _) = run(sh("sleep 100 & echo $!; exit 0", 10_000)).await;
        assert_eq!(outcome, Outcome::Exited(0));
        assert!(started.elapsed() < Duration::from_secs(3), "waited for EOF: {:?}", started.elapsed());
        let daemon: i32 = out.trim().parse().unwrap();
        assert!(alive(daemon), "a normal exit must leave the daemon alone");
        let _ = nix::sys::signal::kill(Pid::from_raw(daemon), Signal::SIGKILL);
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let output = OutputCapture::new(100);
        let spec = sh("i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done", 10_000);
        let outcome = ProcessExecutor.execute(spec, Stop::default(), output.clone()).await;
        assert_eq!(outcome, Outcome::Exited(0));
        let (out, _) = output.text();
        assert!(out.starts_with("line-0\nline-1\n"), "{out:?}");
        assert!(out.ends_with("line-1999\n") && out.contains("bytes elided"), "{out:?}");
    }
}
