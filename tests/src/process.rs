//! [`Proc`]: a child process under test, with stdout and stderr in one log file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::paths::tail;
use crate::wait::fatal;

/// Lines of a log printed when a test fails: enough to show the last errors and the state changes before them.
const LOG_TAIL_LINES: usize = 60;

/// How often a stopping process is checked for exit.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// A child process (muster-server, muster-agent, ...) with its output appended to `<dir>/<name>.log`.
///
/// Killed (SIGKILL) on Drop; if the test is panicking, the tail of its log is printed first.
#[derive(Debug)]
pub struct Proc {
    /// Label used in the log file name and messages, e.g. `agent-h1`.
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Variables set on top of the test's environment (minus inherited `MUSTER_*` ones).
    env: BTreeMap<OsString, OsString>,
    log: PathBuf,
    child: Option<Child>,
    /// Whether the test expects the process to be running, so [`Proc::ensure_running`] can tell a crash from a
    /// deliberate kill.
    expected_running: bool,
    /// How many times the process was started, for the markers in the log.
    starts: u32,
}

impl Proc {
    /// Starts `program` with `args` and `env`, logging to `<log_dir>/<name>.log`.
    ///
    /// Inherited `MUSTER_*` variables are removed first, so a developer's shell cannot change what a test runs.
    pub fn spawn<K, V>(
        name: &str,
        program: &Path,
        args: &[&str],
        env: impl IntoIterator<Item = (K, V)>,
        log_dir: &Path,
    ) -> anyhow::Result<Self>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut proc = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.iter().map(OsString::from).collect(),
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            expected_running: false,
            starts: 0,
        };
        proc.start()?;
        Ok(proc)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "===== muster-tests: start #{} of {} =====", self.starts, self.program.display())?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MUSTER_") {
                cmd.env_remove(key);
            }
        }
        // The output goes to a file that people read with less/cat: no ANSI colour codes (tracing honours this).
        cmd.env("NO_COLOR", "1");
        cmd.envs(&self.env);
        let child = cmd.spawn().with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        self.expected_running = true;
        Ok(())
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file (all starts, appended, separated by marker lines).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sets (or replaces) an environment variable for the next [`Proc::restart`].
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.env.insert(key.into(), value.into());
    }

    /// Replaces the arguments for the next [`Proc::restart`].
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(OsString::from).collect();
    }

    /// The exit status if the process has exited (reaping it), `None` if it is running or was never started.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait().with_context(|| format!("checking {}", self.name))?),
            None => Ok(None),
        }
    }

    /// Fails with a [`crate::wait::Fatal`] error (ending any wait) if the process exited although the test did
    /// not stop it, quoting its exit status and log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if !self.expected_running {
            return Ok(());
        }
        if let Some(status) = self.try_exit_status()? {
            self.expected_running = false;
            return Err(fatal(format!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            )));
        }
        Ok(())
    }

    /// Sends SIGKILL and reaps the process. Returns its exit status (`None` if it was not running).
    pub fn kill9(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.expected_running = false;
        let Some(mut child) = self.child.take() else { return Ok(None) };
        if child.try_wait()?.is_none() {
            child.kill().with_context(|| format!("SIGKILL to {}", self.name))?;
        }
        // Reaping after SIGKILL returns at once: the kernel does not let the process run again.
        Ok(Some(child.wait()?))
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; returns its exit status. If it is still
    /// running after `limit` it is killed and this fails.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.expected_running = false;
        let child = self.child.as_mut().with_context(|| format!("{} is not running", self.name))?;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{} had already exited ({status}) before SIGTERM", self.name);
        }
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        signal::kill(pid, Signal::SIGTERM).with_context(|| format!("SIGTERM to {}", self.name))?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() >= limit {
                self.kill9()?;
                anyhow::bail!(
                    "{} did not exit within {limit:?} of SIGTERM (killed it); last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Starts the process again with the same program, arguments and environment (killing it first if it is
    /// still running). Its output is appended to the same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.start()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Ok(None)) => "running".to_string(),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "stopped by the test".to_string(),
            };
            eprintln!(
                "----- {} ({state}), last {LOG_TAIL_LINES} lines of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES),
                self.name
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
