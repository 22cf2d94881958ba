//! The materialised state in redb: one file per server instance, written only by the log applier
//! ([`crate::log::run_applier`]), read by anyone through cheap [`Store`] clones.
//!
//! Whole decisions (one or more txn-log entries each, see [`muster_schemas::Txn`]) are applied in ONE redb write
//! transaction together with `applied_seq`, the last part of the last decision applied, so after any crash the
//! file holds exactly the state of the log's whole decisions up to `applied_seq` — never part of one — and so does
//! every snapshot taken from it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use muster_schemas::api::{EnrollmentRecord, TokenRecord};
use muster_schemas::cluster::{
    BlueprintRecord, CommandCursor, HostComponentRecord, RequestRecord, StackRecord, TaskRecord,
};
use muster_schemas::commands::{RequestId, TaskId};
use muster_schemas::{codec, HostId, HostRecord, Txn, TxnOp};
use redb::{Database, Key, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;

/// Host id → MessagePack [`HostRecord`].
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
/// Stack name → its current [`StackRecord`].
const STACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("stacks");
/// `name/version` (version zero-padded) → every [`StackRecord`] ever applied.
const STACK_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("stack_versions");
/// Blueprint name → [`BlueprintRecord`].
const BLUEPRINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("blueprints");
/// `host/service/component` → [`HostComponentRecord`].
const HOST_COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("host_components");
/// Host id → [`CommandCursor`].
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
/// Enrollment token id → [`TokenRecord`].
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Host id → [`EnrollmentRecord`].
const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");
/// Request id → [`RequestRecord`].
const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
/// Task id → [`TaskRecord`].
const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// Bookkeeping: [`APPLIED_SEQ`], [`EPOCH`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Last `MUSTER_TXN` sequence applied to this file.
const APPLIED_SEQ: &str = "applied_seq";
/// Highest leader epoch seen in the log; older entries are refused.
const EPOCH: &str = "epoch";
/// Highest task id reserved by a leader ([`TxnOp::ReserveIds`]).
const RESERVED_TASKS: &str = "reserved_tasks";
/// Highest request id reserved by a leader.
const RESERVED_REQUESTS: &str = "reserved_requests";

/// Largest record we accept back from disk; a record bigger than this was not written by us.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Tables keyed by strings, in the order snapshots and digests walk them.
const STR_TABLES: [TableDefinition<&str, &[u8]>; 8] =
    [HOSTS, STACKS, STACK_VERSIONS, BLUEPRINTS, HOST_COMPONENTS, CURSORS, TOKENS, ENROLLMENTS];
/// Tables keyed by ids.
const ID_TABLES: [TableDefinition<u64, &[u8]>; 2] = [REQUESTS, TASKS];

/// The whole state at one log sequence: what a snapshot in the object store holds (ZooKeeper's SNAP).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The last log sequence the state includes.
    pub seq: u64,
    /// The highest epoch applied.
    pub epoch: u64,
    /// String-keyed tables: name → rows (key, encoded record).
    pub str_tables: Vec<(String, Vec<(String, serde_bytes::ByteBuf)>)>,
    /// Id-keyed tables: name → rows.
    pub id_tables: Vec<(String, Vec<(u64, serde_bytes::ByteBuf)>)>,
    /// Highest task and request ids reserved.
    #[serde(default)]
    pub reserved: (u64, u64),
}

/// Why a redb read or write failed: redb itself, a record that does not decode, or the blocking task.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record for {key}: {source}")]
    Corrupt {
        /// The table and key of the record.
        key: String,
        /// Why it did not decode.
        source: codec::DecodeError,
    },
    /// The blocking task running a redb call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

macro_rules! redb_from {
    ($($t:ty),*) => { $(impl From<$t> for StoreError { fn from(e: $t) -> Self { Self::Redb(e.into()) } })* };
}
redb_from!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// What one applied batch did, for counters and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Entries written to redb by this batch (stale-epoch entries not counted; they are in `stale`).
    pub applied: u64,
    /// Entries refused because their epoch was older than one already applied.
    pub stale: u64,
}

/// Handle on the redb file. Clones share the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the file at `path` and makes sure the tables exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Redb(redb::Error::Io(e)))?;
        }
        Self::init(Database::create(path)?)
    }

    /// A store held in memory only, for the fuzz targets (`fuzz/`): the same tables, nothing on disk.
    #[doc(hidden)]
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        let w = db.begin_write()?;
        for t in STR_TABLES {
            w.open_table(t)?;
        }
        w.open_table(REQUESTS)?;
        w.open_table(TASKS)?;
        w.open_table(META)?;
        w.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The last applied log sequence and the highest epoch seen.
    pub fn applied(&self) -> Result<(u64, u64), StoreError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        let get = |k| -> Result<u64, StoreError> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        Ok((get(APPLIED_SEQ)?, get(EPOCH)?))
    }

    /// Highest task and request ids reserved by any leader so far.
    pub fn reserved(&self) -> Result<(u64, u64), StoreError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        let get = |k| -> Result<u64, StoreError> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        Ok((get(RESERVED_TASKS)?, get(RESERVED_REQUESTS)?))
    }

    /// One host's record.
    pub fn host(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        self.get(HOSTS, id.as_str())
    }

    /// Every host record, ordered by id.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.all(HOSTS)
    }

    /// The current version of every stack.
    pub fn stacks(&self) -> Result<Vec<StackRecord>, StoreError> {
        self.all(STACKS)
    }

    /// Every blueprint, at its current version, ordered by name.
    pub fn blueprints(&self) -> Result<Vec<BlueprintRecord>, StoreError> {
        self.all(BLUEPRINTS)
    }

    /// Every host component, ordered by host, service, component.
    pub fn host_components(&self) -> Result<Vec<HostComponentRecord>, StoreError> {
        self.all(HOST_COMPONENTS)
    }

    /// Every host's command cursor.
    pub fn cursors(&self) -> Result<Vec<CommandCursor>, StoreError> {
        self.all(CURSORS)
    }

    /// Every enrollment token, ordered by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all(TOKENS)
    }

    /// Every host's enrollment, ordered by host.
    pub fn enrollments(&self) -> Result<Vec<EnrollmentRecord>, StoreError> {
        self.all(ENROLLMENTS)
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Result<Vec<RequestRecord>, StoreError> {
        self.all(REQUESTS)
    }

    /// One request by id, with its stages; `None` if no request has that id.
    pub fn request(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        self.get(REQUESTS, id)
    }

    /// The highest task id ever stored (0 if none).
    pub fn max_task_id(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TASKS)?;
        let last = t.last()?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// One task by id; `None` if no task has that id.
    pub fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.get(TASKS, id)
    }

    fn get<'k, K: Key + 'static, T: DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
        key: impl std::borrow::Borrow<K::SelfType<'k>> + fmt::Debug,
    ) -> Result<Option<T>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(table)?;
        let name = format!("{}/{key:?}", table.name());
        let v = t.get(key)?;
        v.map(|v| decode_record(&name, v.value())).transpose()
    }

    fn all<K: Key + 'static, T: DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(table)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode_record(table.name(), v.value())?);
        }
        Ok(out)
    }

    /// A consistent copy of everything (one read transaction), for the snapshot object.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        let seq = meta.get(APPLIED_SEQ)?.map_or(0, |v| v.value());
        let epoch = meta.get(EPOCH)?.map_or(0, |v| v.value());
        let reserved =
            (meta.get(RESERVED_TASKS)?.map_or(0, |v| v.value()), meta.get(RESERVED_REQUESTS)?.map_or(0, |v| v.value()));
        let mut str_tables = Vec::new();
        for def in STR_TABLES {
            let t = r.open_table(def)?;
            let mut rows = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                rows.push((k.value().to_string(), serde_bytes::ByteBuf::from(v.value().to_vec())));
            }
            str_tables.push((def.name().to_string(), rows));
        }
        let mut id_tables = Vec::new();
        for def in ID_TABLES {
            let t = r.open_table(def)?;
            let mut rows = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                rows.push((k.value(), serde_bytes::ByteBuf::from(v.value().to_vec())));
            }
            id_tables.push((def.name().to_string(), rows));
        }
        Ok(Snapshot { seq, epoch, str_tables, id_tables, reserved })
    }

    /// Replaces everything with `snap` in one write transaction (tables, `applied_seq`, epoch).
    pub fn restore(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        {
            for def in STR_TABLES {
                let mut t = w.open_table(def)?;
                t.retain(|_, _| false)?;
                if let Some((_, rows)) = snap.str_tables.iter().find(|(n, _)| n == def.name()) {
                    for (k, v) in rows {
                        t.insert(k.as_str(), v.as_slice())?;
                    }
                }
            }
            for def in ID_TABLES {
                let mut t = w.open_table(def)?;
                t.retain(|_, _| false)?;
                if let Some((_, rows)) = snap.id_tables.iter().find(|(n, _)| n == def.name()) {
                    for (k, v) in rows {
                        t.insert(*k, v.as_slice())?;
                    }
                }
            }
            let mut meta = w.open_table(META)?;
            meta.insert(APPLIED_SEQ, snap.seq)?;
            meta.insert(EPOCH, snap.epoch)?;
            meta.insert(RESERVED_TASKS, snap.reserved.0)?;
            meta.insert(RESERVED_REQUESTS, snap.reserved.1)?;
        }
        w.commit()?;
        Ok(())
    }

    /// SHA-256 over every table (names, keys and encoded records in key order), hex: equal on every replica that
    /// applied the same log, whatever route it took there (log only, or snapshot + log).
    pub fn digest(&self) -> Result<String, StoreError> {
        self.digest_at().map(|(_, digest)| digest)
    }

    /// [`Self::digest`] and the `applied_seq` of the state it hashes, read in the same transaction.
    pub fn digest_at(&self) -> Result<(u64, String), StoreError> {
        use sha2::Digest as _;
        // Hashed inside one read transaction, row by row: copying the tables first (as a snapshot does) would hold
        // the whole state in memory once per concurrent `servers` answer.
        let r = self.db.begin_read()?;
        let seq = r.open_table(META)?.get(APPLIED_SEQ)?.map_or(0, |v| v.value());
        let mut h = sha2::Sha256::new();
        for def in STR_TABLES {
            h.update(def.name().as_bytes());
            for row in r.open_table(def)?.iter()? {
                let (k, v) = row?;
                let (k, v) = (k.value(), v.value());
                h.update((k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
        for def in ID_TABLES {
            h.update(def.name().as_bytes());
            for row in r.open_table(def)?.iter()? {
                let (k, v) = row?;
                let v = v.value();
                h.update(k.value().to_le_bytes());
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
        Ok((seq, h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()))
    }

    /// Applies log entries `(seq, txn)` — every part of whole decisions, in log order — in one durable write
    /// transaction (group commit) and records `applied_seq` as the last one's sequence.
    ///
    /// Entries at or below the stored `applied_seq` are skipped (a redelivery after a crash is harmless), and an
    /// entry whose epoch is older than one already applied is refused (a deposed leader's write) but still advances
    /// `applied_seq`, so every replica makes the same decision at the same place in the log.
    pub fn apply(&self, batch: &[(u64, Txn)]) -> Result<ApplyOutcome, StoreError> {
        let mut outcome = ApplyOutcome::default();
        let w = self.db.begin_write()?;
        {
            let mut meta = w.open_table(META)?;
            let mut hosts = w.open_table(HOSTS)?;
            let mut stacks = w.open_table(STACKS)?;
            let mut stack_versions = w.open_table(STACK_VERSIONS)?;
            let mut blueprints = w.open_table(BLUEPRINTS)?;
            let mut host_components = w.open_table(HOST_COMPONENTS)?;
            let mut requests = w.open_table(REQUESTS)?;
            let mut tasks = w.open_table(TASKS)?;
            let mut cursors = w.open_table(CURSORS)?;
            let mut tokens = w.open_table(TOKENS)?;
            let mut enrollments = w.open_table(ENROLLMENTS)?;
            let mut applied = meta.get(APPLIED_SEQ)?.map(|v| v.value()).unwrap_or(0);
            let mut epoch = meta.get(EPOCH)?.map(|v| v.value()).unwrap_or(0);
            for (seq, txn) in batch {
                if *seq <= applied {
                    continue;
                }
                applied = *seq;
                if txn.epoch < epoch {
                    outcome.stale += 1;
                    continue;
                }
                epoch = txn.epoch;
                for op in &txn.ops {
                    match op {
                        TxnOp::PutHost(rec) => {
                            hosts.insert(rec.id.as_str(), codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutStack(rec) => {
                            let bytes = codec::encode(rec);
                            let versioned = format!("{}/{:06}", rec.def.name, rec.version);
                            stack_versions.insert(versioned.as_str(), bytes.as_slice())?;
                            stacks.insert(rec.def.name.as_str(), bytes.as_slice())?;
                        }
                        TxnOp::PutBlueprint(rec) => {
                            blueprints.insert(rec.def.name.as_str(), codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutHostComponent(rec) => {
                            host_components.insert(rec.key().as_str(), codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutRequest(rec) => {
                            requests.insert(rec.id, codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutTask(rec) => {
                            tasks.insert(rec.id, codec::encode(rec).as_slice())?;
                        }
                        TxnOp::ReserveIds { tasks, requests } => {
                            let cur_t = meta.get(RESERVED_TASKS)?.map_or(0, |v| v.value());
                            let cur_r = meta.get(RESERVED_REQUESTS)?.map_or(0, |v| v.value());
                            meta.insert(RESERVED_TASKS, cur_t.max(*tasks))?;
                            meta.insert(RESERVED_REQUESTS, cur_r.max(*requests))?;
                        }
                        TxnOp::PutCursor(rec) => {
                            cursors.insert(rec.host.as_str(), codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutToken(rec) => {
                            tokens.insert(rec.id.as_str(), codec::encode(rec).as_slice())?;
                        }
                        TxnOp::PutEnrollment(rec) => {
                            enrollments.insert(rec.host.as_str(), codec::encode(rec).as_slice())?;
                        }
                    }
                }
                outcome.applied += 1;
            }
            meta.insert(APPLIED_SEQ, applied)?;
            meta.insert(EPOCH, epoch)?;
        }
        w.commit()?;
        Ok(outcome)
    }
}

fn decode_record<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(bytes, MAX_RECORD_BYTES).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::txn::TXN_SCHEMA;
    use muster_schemas::{HostFacts, HostState};

    fn rec(id: &str, state: HostState) -> HostRecord {
        HostRecord {
            id: HostId::new(id).unwrap(),
            state,
            facts: HostFacts::default(),
            labels: Default::default(),
            agent_version: "t".into(),
            agent_started_at: 1,
            first_registered_at: 1,
            registered_at: 1,
            registrations: 1,
            state_since: 1,
            problems: vec![],
        }
    }

    fn txn(epoch: u64, ops: Vec<TxnOp>) -> Txn {
        Txn { schema: TXN_SCHEMA, epoch, proposed_at: 0, ops, continues: false }
    }

    #[test]
    fn apply_is_atomic_idempotent_and_fenced_by_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let out = store
            .apply(&[
                (1, txn(5, vec![TxnOp::PutHost(Box::new(rec("a", HostState::Healthy)))])),
                (2, txn(5, vec![TxnOp::PutHost(Box::new(rec("b", HostState::Healthy)))])),
            ])
            .unwrap();
        assert_eq!(out, ApplyOutcome { applied: 2, stale: 0 });
        // Redelivery of seq 2 changes nothing.
        let again =
            store.apply(&[(2, txn(5, vec![TxnOp::PutHost(Box::new(rec("b", HostState::HeartbeatLost)))]))]).unwrap();
        assert_eq!(again.applied, 0);
        assert_eq!(store.hosts().unwrap().len(), 2);
        assert_eq!(store.host(&HostId::new("b").unwrap()).unwrap().unwrap().state, HostState::Healthy);
        // A deposed leader's entry (older epoch) is refused but consumes its sequence.
        let stale =
            store.apply(&[(3, txn(4, vec![TxnOp::PutHost(Box::new(rec("a", HostState::HeartbeatLost)))]))]).unwrap();
        assert_eq!(stale, ApplyOutcome { applied: 0, stale: 1 });
        assert_eq!(store.host(&HostId::new("a").unwrap()).unwrap().unwrap().state, HostState::Healthy);
        assert_eq!(store.applied().unwrap(), (3, 5));
    }

    #[test]
    fn snapshot_restores_the_same_state_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a.redb")).unwrap();
        a.apply(&[(4, txn(3, vec![TxnOp::PutHost(Box::new(rec("x", HostState::Healthy)))]))]).unwrap();
        let b = Store::open(&dir.path().join("b.redb")).unwrap();
        b.apply(&[(1, txn(1, vec![TxnOp::PutHost(Box::new(rec("stale", HostState::Init)))]))]).unwrap();
        assert_ne!(a.digest().unwrap(), b.digest().unwrap());
        let snap = a.snapshot().unwrap();
        let bytes = codec::encode(&snap);
        b.restore(&codec::decode(&bytes, usize::MAX).unwrap()).unwrap();
        assert_eq!(a.digest().unwrap(), b.digest().unwrap());
        assert_eq!(b.applied().unwrap(), (4, 3));
        assert_eq!(b.hosts().unwrap().len(), 1, "rows not in the snapshot are gone");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store.apply(&[(7, txn(2, vec![TxnOp::PutHost(Box::new(rec("a", HostState::Unhealthy)))]))]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.applied().unwrap(), (7, 2));
        assert_eq!(store.hosts().unwrap()[0].state, HostState::Unhealthy);
    }
}
