//! The execution journal (`MUSTER_EXEC_JOURNAL`): an append-only file with one line per task attempt the agent
//! starts, `<task>-a<attempt> <unix millis>`, written and fsync'd before the command's process is spawned. It is
//! the agent's own account of what it ran, for an audit that must not trust the server's records: the fault tests
//! read it back from every agent and check that no (task, attempt) ran twice on its host, even across SIGKILLs,
//! freezes and partitions (tests/tests/chaos.rs). The agent never reads it; it grows by about 30 bytes a task.
//!
//! A command whose line cannot be written is not run: it fails with the reason (an unrecorded run is what the
//! journal exists to rule out).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muster_schemas::ids::TaskAttempt;
use muster_schemas::UnixMillis;

/// The journal file, opened for appending at the first record (shared by every task of the agent).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Journal {
    /// The journal at `path`; nothing is opened yet (a failure to open fails the first task, saying why).
    pub fn new(path: &Path) -> Arc<Self> {
        Arc::new(Self { path: path.to_owned(), file: Mutex::new(None) })
    }

    /// Opens (creating it and its directory if needed) the journal at `path` for appending, now.
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let this = Self::new(path);
        let mut file = this.file.lock().unwrap_or_else(|p| p.into_inner());
        *file = Some(this.open_file()?);
        drop(file);
        Ok(this)
    }

    fn open_file(&self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new().create(true).append(true).open(&self.path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `<key> <at>` and fsyncs it (on a blocking thread): returns once the line is on disk.
    pub async fn record(self: &Arc<Self>, key: TaskAttempt, at: UnixMillis) -> std::io::Result<()> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.record_now(key, at))
            .await
            .map_err(|e| std::io::Error::other(format!("journal writer: {e}")))?
    }

    fn record_now(&self, key: TaskAttempt, at: UnixMillis) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(self.open_file()?);
        }
        let Some(file) = file.as_mut() else { unreachable!("opened above") };
        // One write of the whole line: appends of concurrent tasks never interleave.
        file.write_all(format!("{key} {at}\n").as_bytes())?;
        file.sync_data()
    }
}

/// One line of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The task attempt started.
    pub key: TaskAttempt,
    /// When (unix millis).
    pub at: UnixMillis,
}

/// Parses a journal's text (blank lines skipped); an error names the first line that is not `<task>-a<attempt>
/// <millis>`. A torn last line (the agent killed mid-write, never fsync'd, so its command never started) is
/// skipped.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let torn_tail = i == lines.len() - 1;
        let parsed =
            line.split_once(' ').and_then(|(k, at)| Some(Entry { key: k.parse().ok()?, at: at.parse().ok()? }));
        match parsed {
            Some(e) => out.push(e),
            None if torn_tail => {}
            None => return Err(format!("journal line {}: {line:?} is not `<task>-a<attempt> <millis>`", i + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(task: u64, attempt: u32) -> TaskAttempt {
        TaskAttempt { task, attempt }
    }

    #[tokio::test]
    async fn records_are_appended_synced_and_read_back_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/executions.journal");
        let j = Journal::open(&path).unwrap();
        j.record(key(7, 1), 1000).await.unwrap();
        j.record(key(7, 2), 2000).await.unwrap();
        drop(j);
        // A restarted agent appends after what the previous run wrote.
        let j = Journal::open(&path).unwrap();
        j.record(key(9, 1), 3000).await.unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text, "7-a1 1000\n7-a2 2000\n9-a1 3000\n");
        let entries = parse(&text).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry { key: key(7, 1), at: 1000 },
                Entry { key: key(7, 2), at: 2000 },
                Entry { key: key(9, 1), at: 3000 }
            ]
        );
    }

    #[tokio::test]
    async fn concurrent_records_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j")).unwrap();
        let mut all = tokio::task::JoinSet::new();
        for t in 0..50u64 {
            let j = j.clone();
            all.spawn(async move { j.record(key(t, 1), t).await });
        }
        while let Some(r) = all.join_next().await {
            r.unwrap().unwrap();
        }
        let mut tasks: Vec<u64> =
            parse(&std::fs::read_to_string(j.path()).unwrap()).unwrap().iter().map(|e| e.key.task).collect();
        tasks.sort_unstable();
        assert_eq!(tasks, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_bad_line_elsewhere_is_an_error() {
        assert_eq!(parse("3-a1 10\n4-a").unwrap(), vec![Entry { key: key(3, 1), at: 10 }]);
        assert_eq!(parse("").unwrap(), vec![]);
        let err = parse("3-a1 10\nbogus\n4-a1 11\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[tokio::test]
    async fn an_unwritable_place_is_an_error_at_open_or_at_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        // A directory where a file is: creating the journal's directory fails, at open or at the first record.
        assert!(Journal::open(&file.join("journal")).is_err());
        let lazy = Journal::new(&file.join("journal"));
        assert!(lazy.record(key(1, 1), 5).await.is_err());
    }
}
