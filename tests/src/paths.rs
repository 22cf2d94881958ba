//! Where things are: the workspace, the built binaries, the nats-server binary, and per-test directories.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;
use std::{env, fs};

use anyhow::{bail, Context};

/// Overrides the directory holding `muster-server`, `muster-agent` and `muster` (default: the cargo profile
/// directory this test binary was built into, e.g. `target/debug`).
pub const BIN_DIR_ENV: &str = "MUSTER_BIN_DIR";
/// Overrides which nats-server binary to run.
pub const NATS_SERVER_ENV: &str = "MUSTER_NATS_SERVER";
/// Overrides where test directories are created (default: `target/tmp`).
pub const TMPDIR_ENV: &str = "MUSTER_TEST_TMPDIR";
/// When set (to anything), test directories are kept even when the test passes.
pub const KEEP_ENV: &str = "MUSTER_KEEP_TEST_DIRS";

/// The oldest nats-server that works: async-nats 0.51's KV and account calls need 2.10 (Debian bookworm's 2.9 lacks them).
const MIN_NATS_SERVER: (u32, u32) = (2, 10);

/// The workspace root (the directory holding `Cargo.lock`, `nats/` and `.tools/`).
pub fn workspace_root() -> PathBuf {
    // This crate lives at <root>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo profile directory this test binary belongs to (`target/debug` for `target/debug/deps/foundation-…`).
fn profile_dir() -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        Some(dir.parent()?.to_path_buf())
    } else {
        Some(dir.to_path_buf())
    }
}

/// The path of workspace binary `name` (`muster-server`, `muster-agent`, `muster`). Fails with a hint when it has
/// not been built: `cargo test` builds binaries only for the package under test, not for this one.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let overridden = env::var_os(BIN_DIR_ENV).map(PathBuf::from);
    let dir = match &overridden {
        Some(dir) => dir.clone(),
        None => profile_dir().context("cannot locate the cargo target directory from the test executable")?,
    };
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} does not exist: build the binaries first with `make build` (`make test` does), \
             or point {BIN_DIR_ENV} at a directory holding them",
            bin.display()
        );
    }
    if overridden.is_none() {
        warn_if_stale(&bin);
    }
    Ok(bin)
}

/// Prints a warning (shown with a failing test's output) when a binary is older than the sources it is built
/// from, because then the test is exercising yesterday's code.
fn warn_if_stale(bin: &Path) {
    static WARNED: OnceLock<std::sync::Mutex<Vec<PathBuf>>> = OnceLock::new();
    let warned = WARNED.get_or_init(Default::default);
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned.iter().any(|b| b == bin) {
        return;
    }
    warned.push(bin.to_path_buf());
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else { return };
    let root = workspace_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut consider = |path: PathBuf| {
        if let Ok(t) = fs::metadata(&path).and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, path));
            }
        }
    };
    consider(root.join("Cargo.lock"));
    for krate in ["schemas", "nats", "server", "server/cli", "agent"] {
        consider(root.join(krate).join("Cargo.toml"));
        for file in rust_files(&root.join(krate).join("src")) {
            consider(file);
        }
    }
    if let Some((t, path)) = newest {
        if t > built {
            eprintln!(
                "WARNING: {} is older than {}: the test runs a stale build; run `make build`",
                bin.display(),
                path.display()
            );
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension() == Some(OsStr::new("rs")) {
            out.push(path);
        }
    }
    out
}

/// The nats-server binary: `$MUSTER_NATS_SERVER`, else `<workspace>/.tools/bin/nats-server` (installed by
/// `make tools`), else the first `nats-server` on PATH. Checked once to be version 2.10 or later.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(|| find_nats_server().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn find_nats_server() -> anyhow::Result<PathBuf> {
    let bin = if let Some(bin) = env::var_os(NATS_SERVER_ENV) {
        PathBuf::from(bin)
    } else {
        let tools = workspace_root().join(".tools/bin/nats-server");
        let on_path = || {
            env::split_paths(&env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        };
        match (tools.is_file(), on_path()) {
            (true, _) => tools,
            (false, Some(p)) => p,
            (false, None) => bail!(
                "no nats-server found: run `make tools` (scripts/install-nats.sh), put nats-server >= 2.10 on PATH, \
                 or set {NATS_SERVER_ENV}"
            ),
        }
    };
    let out =
        Command::new(&bin).arg("--version").output().with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_NATS_SERVER => Ok(bin),
        _ => bail!(
            "{} reports {:?}; muster needs nats-server >= {}.{} (run `make tools`)",
            bin.display(),
            text.trim(),
            MIN_NATS_SERVER.0,
            MIN_NATS_SERVER.1
        ),
    }
}

/// A directory for one test's files (nats store, logs, server data), named after the test.
///
/// Removed on Drop when the test passes; kept, with its path printed, when the test is panicking (or when
/// `MUSTER_KEEP_TEST_DIRS` is set), so the logs of a failed test can be read afterwards.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    /// `None` once kept.
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Creates `<target>/tmp/<test-name>-XXXXXX` (or under `$MUSTER_TEST_TMPDIR`).
    pub fn new() -> anyhow::Result<Self> {
        let base = match env::var_os(TMPDIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => profile_dir().and_then(|p| p.parent().map(|t| t.join("tmp"))).unwrap_or_else(env::temp_dir),
        };
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", test_name()))
            .tempdir_in(&base)
            .with_context(|| format!("creating a test directory in {}", base.display()))?;
        Ok(Self { path: dir.path().to_path_buf(), dir: Some(dir) })
    }

    /// The directory's path, named after the running test.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, for a file or directory inside it (not created).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || env::var_os(KEEP_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("test files kept in {}", dir.keep().display());
            }
        }
    }
}

/// The running test's name, from the thread libtest runs it on; a file-name-safe version of it.
fn test_name() -> String {
    let thread = std::thread::current();
    let name = match thread.name() {
        Some(name) if name != "main" => name,
        _ => "muster-test",
    };
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The last `lines` lines of the file at `path` (or a note saying why there are none).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
