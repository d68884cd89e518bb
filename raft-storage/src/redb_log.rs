//! A durable [`LogStore`] on redb.
//!
//! On-disk format (one redb file):
//! - table [`ENTRIES`]: log index → `crc32 (4 bytes LE) ++ postcard(Entry)`, the checksum
//!   taken over the index (8 bytes LE) and the encoded entry, so a value found under the
//!   wrong key is caught as well as a flipped bit;
//! - table [`META`]: `"hard_state"` and `"last_purged"` → the same framing around
//!   postcard of `HardState` and `LogId`.
//!
//! Every mutating call is one redb write transaction committed with
//! `Durability::Immediate`: durable when it returns, all or nothing. redb calls block, so
//! they run on tokio's blocking pool and never stall the node's tasks.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use raft_core::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, StorageError, Term,
};
use redb::{
    Database, Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, Value, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::contract;

/// Log entries by index.
pub const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
/// Hard state and the last purged log id.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const HARD_STATE_KEY: &str = "hard_state";
const LAST_PURGED_KEY: &str = "last_purged";

/// A [`LogStore`] in a redb database file.
#[derive(Debug, Clone)]
pub struct RedbLogStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: PathBuf,
    /// The log's bounds, kept in memory so validation needs no read transaction.
    state: Mutex<LogState>,
    /// Serializes mutations, so a bounds check and the write it guards are one step.
    writer: Mutex<()>,
}

/// Frames `value` with a CRC over `salt` and its postcard encoding.
pub fn encode<T: Serialize>(salt: u64, value: &T) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_allocvec(value)
        .map_err(|e| StorageError::Backend(format!("cannot encode: {e}")))?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&checksum(salt, &body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks and decodes a value framed by [`encode`]; `location` names it in errors.
pub fn decode<T: DeserializeOwned>(
    salt: u64,
    raw: &[u8],
    location: &dyn Fn() -> String,
) -> Result<T, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        location: location(),
        detail,
    };
    if raw.len() < 4 {
        return Err(corrupt(format!(
            "value is {} bytes, shorter than its checksum",
            raw.len()
        )));
    }
    let (crc, body) = raw.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = checksum(salt, body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    postcard::from_bytes(body).map_err(|e| corrupt(format!("cannot decode: {e}")))
}

fn checksum(salt: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(body);
    h.finalize()
}

impl RedbLogStore {
    /// Opens the store at `path`, creating the file if it does not exist.
    pub async fn open(path: impl AsRef<Path>) -> Result<RedbLogStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|e| StorageError::Backend(format!("open task failed: {e}")))?
    }

    fn open_blocking(path: PathBuf) -> Result<RedbLogStore, StorageError> {
        let db = Database::create(&path).map_err(|e| backend(&path, "cannot open or create", e))?;
        let txn = db
            .begin_write()
            .map_err(|e| backend(&path, "cannot begin a transaction", e))?;
        {
            // Creates the tables on first use.
            txn.open_table(ENTRIES)
                .map_err(|e| backend(&path, "cannot open table", e))?;
            txn.open_table(META)
                .map_err(|e| backend(&path, "cannot open table", e))?;
        }
        txn.commit()
            .map_err(|e| backend(&path, "cannot commit", e))?;
        let store = Inner {
            db,
            path,
            state: Mutex::new(LogState::default()),
            writer: Mutex::new(()),
        };
        let state = store.read_state()?;
        *store.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(RedbLogStore {
            inner: Arc::new(store),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))?
    }
}

fn backend(path: &Path, what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("{}: {what}: {e}", path.display()))
}

impl Inner {
    fn state(&self) -> LogState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, s: LogState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StorageError {
        backend(&self.path, what, e)
    }

    fn entry_location(&self, index: u64) -> impl Fn() -> String + '_ {
        move || format!("{} (log entry {index})", self.path.display())
    }

    /// Runs `f` in one write transaction and commits it (durable on return).
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("cannot begin a write", e))?;
        let out = f(&txn)?;
        txn.commit().map_err(|e| self.err("cannot commit", e))?;
        Ok(out)
    }

    fn read_txn(&self) -> Result<ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(|e| self.err("cannot begin a read", e))
    }

    fn table<'t, K: Key + 'static, V: Value + 'static>(
        &self,
        txn: &'t WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<Table<'t, K, V>, StorageError> {
        txn.open_table(def)
            .map_err(|e| self.err("cannot open table", e))
    }

    fn read_table<K: Key + 'static, V: Value + 'static>(
        &self,
        txn: &ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, StorageError> {
        txn.open_table(def)
            .map_err(|e| self.err("cannot open table", e))
    }

    /// The id of the last stored entry, if any.
    fn last_entry(
        &self,
        table: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Option<LogId>, StorageError> {
        match table.last().map_err(|e| self.err("cannot read", e))? {
            Some((k, v)) => {
                let e: Entry = decode(k.value(), v.value(), &self.entry_location(k.value()))?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }

    /// A framed value from the meta table, if present.
    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.read_txn()?;
        let meta = self.read_table(&txn, META)?;
        let found = meta.get(key).map_err(|e| self.err("cannot read", e))?;
        found
            .map(|v| decode(0, v.value(), &|| format!("{} ({key})", self.path.display())))
            .transpose()
    }

    /// Reads the bounds from disk (on open).
    fn read_state(&self) -> Result<LogState, StorageError> {
        let last_purged: LogId = self.read_meta(LAST_PURGED_KEY)?.unwrap_or_default();
        let txn = self.read_txn()?;
        let entries = self.read_table(&txn, ENTRIES)?;
        let last = self.last_entry(&entries)?.unwrap_or(last_purged);
        Ok(LogState { last_purged, last })
    }

    fn read_hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.read_meta(HARD_STATE_KEY)?.unwrap_or_default())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `ops` in one write transaction: one commit (one fsync) for all, all or
    /// nothing. The bounds kept in memory change only once the commit succeeded.
    fn write_ops(&self, ops: &[LogWrite]) -> Result<(), StorageError> {
        let _writer = self.lock_writer();
        let before = self.state();
        let after = self.write(|txn| {
            ops.iter()
                .try_fold(before, |state, op| self.write_in(txn, state, op))
        })?;
        self.set_state(after);
        Ok(())
    }

    /// One op inside `txn`, on the log as `state` describes it; the bounds after it.
    fn write_in(
        &self,
        txn: &WriteTransaction,
        state: LogState,
        op: &LogWrite,
    ) -> Result<LogState, StorageError> {
        match op {
            LogWrite::HardState(h) => {
                let raw = encode(0, h)?;
                let mut meta = self.table(txn, META)?;
                meta.insert(HARD_STATE_KEY, raw.as_slice())
                    .map_err(|e| self.err("cannot write", e))?;
                Ok(state)
            }
            LogWrite::Append(entries) => {
                contract::check_append(&state, entries)?;
                let Some(last) = entries.last() else {
                    return Ok(state);
                };
                let mut table = self.table(txn, ENTRIES)?;
                for e in entries {
                    let raw = encode(e.index().0, e)?;
                    table
                        .insert(e.index().0, raw.as_slice())
                        .map_err(|e| self.err("cannot write", e))?;
                }
                Ok(LogState {
                    last: last.log_id,
                    ..state
                })
            }
            LogWrite::Truncate(from) => {
                contract::check_truncate(&state, *from)?;
                if *from > state.last.index {
                    return Ok(state);
                }
                let mut table = self.table(txn, ENTRIES)?;
                table
                    .retain_in(from.0.., |_, _| false)
                    .map_err(|e| self.err("cannot delete", e))?;
                let last = self.last_entry(&table)?.unwrap_or(state.last_purged);
                Ok(LogState { last, ..state })
            }
            LogWrite::Purge(upto) => {
                if upto.index <= state.last_purged.index {
                    return Ok(state);
                }
                let raw = encode(0, upto)?;
                let mut table = self.table(txn, ENTRIES)?;
                table
                    .retain_in(..=upto.index.0, |_, _| false)
                    .map_err(|e| self.err("cannot delete", e))?;
                let mut meta = self.table(txn, META)?;
                meta.insert(LAST_PURGED_KEY, raw.as_slice())
                    .map_err(|e| self.err("cannot write", e))?;
                let last = if upto.index >= state.last.index {
                    *upto
                } else {
                    state.last
                };
                Ok(LogState {
                    last_purged: *upto,
                    last,
                })
            }
        }
    }

    fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        contract::check_read(&self.state(), range.start)?;
        let txn = self.read_txn()?;
        let table = self.read_table(&txn, ENTRIES)?;
        let mut out = Vec::new();
        let mut budget = contract::Budget::new(max_bytes);
        let rows = table
            .range(range.start.0..range.end.0)
            .map_err(|e| self.err("cannot read", e))?;
        for (expected, item) in (range.start.0..).zip(rows) {
            let (k, v) = item.map_err(|e| self.err("cannot read", e))?;
            let index = k.value();
            if index != expected {
                return Err(StorageError::Corrupt {
                    location: self.path.display().to_string(),
                    detail: format!("log has a gap: expected entry {expected}, found {index}"),
                });
            }
            let entry = decode(index, v.value(), &self.entry_location(index))?;
            if !budget.admits(&entry) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        let state = self.state();
        if index == state.last_purged.index {
            return Ok(Some(state.last_purged.term));
        }
        contract::check_read(&state, index)?;
        let txn = self.read_txn()?;
        let table = self.read_table(&txn, ENTRIES)?;
        let found = table.get(index.0).map_err(|e| self.err("cannot read", e))?;
        match found {
            Some(v) => Ok(Some(
                decode::<Entry>(index.0, v.value(), &self.entry_location(index.0))?.term(),
            )),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl LogStore for RedbLogStore {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        self.blocking(|s| s.read_hard_state()).await
    }

    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError> {
        let op = LogWrite::HardState(*hard_state);
        self.blocking(move |s| s.write_ops(&[op])).await
    }

    async fn log_state(&self) -> Result<LogState, StorageError> {
        Ok(self.inner.state())
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let op = LogWrite::Append(entries.to_vec());
        self.blocking(move |s| s.write_ops(&[op])).await
    }

    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.blocking(move |s| s.write_ops(&[LogWrite::Truncate(from)]))
            .await
    }

    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.blocking(move |s| s.write_ops(&[LogWrite::Purge(upto)]))
            .await
    }

    /// One transaction, one commit (one fsync) for the whole batch; all or nothing.
    async fn write_batch(&self, ops: Vec<LogWrite>) -> Result<(), StorageError> {
        self.blocking(move |s| s.write_ops(&ops)).await
    }

    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.blocking(move |s| s.entries(range, max_bytes)).await
    }

    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.blocking(move |s| s.term(index)).await
    }
}
