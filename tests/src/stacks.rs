//! Test stacks and blueprints: TOML for components whose daemons are real processes, keyed by `$MUSTER_HOST` and
//! kept under a per-test work directory named in the stack text (so parallel tests never share a file), and
//! [`WorkDir`] to read back what the commands left there.
//!
//! Under `<work>/<host>/` a [`Daemon`] component `c` leaves:
//! - `c.installed` — written by its install command;
//! - `c.starts`    — one line per run of its start command: the start time in ns since the Unix epoch;
//! - `c.pid`       — the pid of its daemon (a `sleep`), written by start, removed by stop.
//!
//! The status check is "the pid in `c.pid` is alive and not a zombie", as `/proc` says.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// How long the daemon `sleep`s: longer than any test; [`crate::descendants::Descendants`] kills it at the end.
const DAEMON_SECS: u32 = 100_000;

/// A test's work directory: the root every test stack keeps its per-host files under.
#[derive(Debug, Clone)]
pub struct WorkDir {
    root: PathBuf,
}

impl WorkDir {
    /// Creates `root` and its parents; fails if the path needs quoting in a shell script.
    pub fn create(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        anyhow::ensure!(
            root.to_str().is_some_and(|s| !s.contains(['\'', '"', ' ', '\\', '$', '`'])),
            "{} cannot be put into a shell script unquoted",
            root.display()
        );
        Ok(Self { root })
    }

    /// The root directory, which test stacks write their per-host files under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name`, for a file inside it (not created).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.root.join(name)
    }

    /// The directory as it appears in scripts.
    pub fn shell(&self) -> &str {
        self.root.to_str().expect("checked to be UTF-8 at creation")
    }

    /// Writes `text` to `root/name` (a stack or blueprint file) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.root.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Where a component's files live on a host.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.root.join(host)
    }

    /// The daemon pid that `component`'s start command wrote on `host`, if any.
    pub fn pid(&self, host: &str, component: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.host_dir(host).join(format!("{component}.pid"))).ok()?;
        text.trim().parse().ok()
    }

    /// When `component`'s start command ran on `host` (ns since the Unix epoch), one entry per run.
    pub fn starts(&self, host: &str, component: &str) -> Vec<u128> {
        let path = self.host_dir(host).join(format!("{component}.starts"));
        std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Whether `component`'s install command ran on `host`.
    pub fn installed(&self, host: &str, component: &str) -> bool {
        self.host_dir(host).join(format!("{component}.installed")).is_file()
    }

    /// The lines of `root/name`, empty if it does not exist.
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.root.join(name)).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

/// A daemon component: install, start (a `sleep` in the background), stop and status as real processes.
#[derive(Debug, Clone)]
pub struct Daemon {
    name: String,
    depends_on: Vec<String>,
    start: Option<String>,
}

impl Daemon {
    /// A daemon named `name` with the standard commands.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), depends_on: Vec::new(), start: None }
    }

    /// Started after `component` (and stopped before it).
    pub fn depends_on(mut self, component: &str) -> Self {
        self.depends_on.push(component.to_string());
        self
    }

    /// Replaces the start command with `script` (run in `<work>/<host>/`).
    pub fn start_script(mut self, script: &str) -> Self {
        self.start = Some(script.to_string());
        self
    }

    /// The component's TOML section in service `service`.
    pub fn toml(&self, service: &str, work: &WorkDir) -> String {
        let c = &self.name;
        let dir = format!("{}/$MUSTER_HOST", work.shell());
        let install = format!("mkdir -p {dir} && echo installed > {dir}/{c}.installed");
        let start = self.start.clone().unwrap_or_else(|| {
            format!(
                "cd {dir} || exit 1\n\
                 date +%s%N >> {c}.starts\n\
                 nohup sleep {DAEMON_SECS} >/dev/null 2>&1 &\n\
                 echo $! > {c}.pid\n"
            )
        });
        let start = if self.start.is_some() { format!("cd {dir} || exit 1\n{start}") } else { start };
        let stop = format!("pid=$(cat {dir}/{c}.pid 2>/dev/null) && kill $pid 2>/dev/null\nrm -f {dir}/{c}.pid\n");
        let status = format!(
            "pid=$(cat {dir}/{c}.pid 2>/dev/null) || exit 3\n\
             state=$(sed 's/^.*) //' /proc/$pid/stat 2>/dev/null | cut -c1)\n\
             [ -n \"$state\" ] && [ \"$state\" != Z ]\n"
        );
        let deps = self.depends_on.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", ");
        format!(
            "[services.{service}.components.{c}]\n\
             category = \"daemon\"\n\
             depends_on = [{deps}]\n\
             install = {{ script = '''{install}''', timeout_secs = 30 }}\n\
             start = {{ script = '''\n{start}''', timeout_secs = 30 }}\n\
             stop = {{ script = '''\n{stop}''', timeout_secs = 30 }}\n\
             status = {{ script = '''\n{status}''', timeout_secs = 10 }}\n"
        )
    }
}

/// A stack named `name` with one service of the same name holding `daemons`.
pub fn stack(name: &str, work: &WorkDir, daemons: &[Daemon]) -> String {
    let mut out = format!("name = \"{name}\"\n\n[services.{name}]\ndescription = \"a test service\"\n\n");
    for d in daemons {
        out.push_str(&d.toml(name, work));
        out.push('\n');
    }
    out
}

/// A blueprint named `name` for `stack`; each group is `(name, host globs, components)`.
pub fn blueprint(name: &str, stack: &str, groups: &[(&str, &[&str], &[&str])]) -> String {
    let list = |items: &[&str]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("name = \"{name}\"\nstack = \"{stack}\"\n");
    for (group, hosts, components) in groups {
        out.push_str(&format!(
            "\n[host_groups.{group}]\nhosts = [{}]\ncomponents = [{}]\n",
            list(hosts),
            list(components)
        ));
    }
    out
}
