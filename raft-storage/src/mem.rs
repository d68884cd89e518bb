//! In-memory stores: correct, thread-safe and cheap; nothing survives the process.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, SnapshotMeta, SnapshotStore,
    SnapshotWriter, StorageError, Term,
};

use crate::contract;

#[derive(Debug, Default)]
struct MemLog {
    hard: HardState,
    last_purged: LogId,
    entries: VecDeque<Entry>,
}

impl MemLog {
    fn state(&self) -> LogState {
        LogState {
            last_purged: self.last_purged,
            last: self
                .entries
                .back()
                .map(|e| e.log_id)
                .unwrap_or(self.last_purged),
        }
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index.0.checked_sub(self.last_purged.index.0 + 1)?;
        usize::try_from(offset).ok()
    }

    /// One op of the contract; each validates before it changes anything.
    fn apply(&mut self, op: LogWrite) -> Result<(), StorageError> {
        match op {
            LogWrite::HardState(h) => self.hard = h,
            LogWrite::Append(entries) => {
                contract::check_append(&self.state(), &entries)?;
                self.entries.extend(entries);
            }
            LogWrite::Truncate(from) => {
                contract::check_truncate(&self.state(), from)?;
                if let Some(keep) = self.position(from) {
                    self.entries.truncate(keep);
                }
            }
            LogWrite::Purge(upto) => {
                if upto.index <= self.last_purged.index {
                    return Ok(());
                }
                let remove = self
                    .position(upto.index)
                    .map_or(0, |p| p + 1)
                    .min(self.entries.len());
                self.entries.drain(..remove);
                self.last_purged = upto;
            }
        }
        Ok(())
    }
}

/// A [`LogStore`] in memory. Clones of the `Arc` holding it share one log, which lets a
/// test "restart" a node on the same store.
#[derive(Debug, Default)]
pub struct MemLogStore {
    inner: RwLock<MemLog>,
}

impl MemLogStore {
    /// An empty log.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, MemLog> {
        // A panic while holding the lock cannot leave the log half-written: every write
        // below validates first and then mutates without a fallible step.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, MemLog> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.read().hard)
    }

    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError> {
        self.write().apply(LogWrite::HardState(*hard_state))
    }

    async fn log_state(&self) -> Result<LogState, StorageError> {
        Ok(self.read().state())
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write().apply(LogWrite::Append(entries.to_vec()))
    }

    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.write().apply(LogWrite::Truncate(from))
    }

    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.write().apply(LogWrite::Purge(upto))
    }

    /// Under one lock, taking the entries without copying them. (A memory store has no
    /// crash to be atomic across: a refused op leaves the ops before it applied.)
    async fn write_batch(&self, ops: Vec<LogWrite>) -> Result<(), StorageError> {
        let mut log = self.write();
        ops.into_iter().try_for_each(|op| log.apply(op))
    }

    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.read();
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        contract::check_read(&log.state(), range.start)?;
        let mut budget = contract::Budget::new(max_bytes);
        Ok((range.start.0..range.end.0)
            .map_while(|i| log.position(LogIndex(i)).and_then(|p| log.entries.get(p)))
            .take_while(|e| budget.admits(e))
            .cloned()
            .collect())
    }

    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        let log = self.read();
        if index == log.last_purged.index {
            return Ok(Some(log.last_purged.term));
        }
        contract::check_read(&log.state(), index)?;
        Ok(log
            .position(index)
            .and_then(|p| log.entries.get(p))
            .map(|e| e.term()))
    }
}

/// One finished snapshot, with the checksum taken when it was finished.
#[derive(Clone, Debug)]
struct StoredSnapshot {
    /// Order of `begin`: breaks ties between snapshots with the same last log id.
    seq: u64,
    meta: SnapshotMeta,
    data: Bytes,
    crc: u32,
}

impl StoredSnapshot {
    /// Orders snapshots: the highest last log id is the latest; of two with the same one,
    /// the later begun (not the last finished: two writers can be open at once).
    fn rank(&self) -> (LogId, u64) {
        (self.meta.last_log_id, self.seq)
    }

    fn verify(&self) -> Result<(), StorageError> {
        let actual = crc32fast::hash(&self.data);
        if actual == self.crc {
            return Ok(());
        }
        Err(StorageError::Corrupt {
            location: format!("in-memory snapshot at {}", self.meta.last_log_id),
            detail: format!(
                "checksum mismatch: stored {:08x}, computed {actual:08x}",
                self.crc
            ),
        })
    }
}

#[derive(Debug)]
struct MemSnapshots {
    keep: usize,
    next_seq: u64,
    /// Lowest rank first: the last one is the latest unless it is damaged.
    snapshots: Vec<StoredSnapshot>,
}

impl MemSnapshots {
    /// The highest-ranked whole snapshot. Damaged ones above it are skipped with a
    /// warning; if none is whole, the highest-ranked damaged one is the error.
    fn newest_whole(&self) -> Result<Option<&StoredSnapshot>, StorageError> {
        let mut first_damage = None;
        for s in self.snapshots.iter().rev() {
            match s.verify() {
                Ok(()) => return Ok(Some(s)),
                Err(e) => {
                    tracing::warn!(
                        snapshot = %s.meta.last_log_id,
                        "snapshot skipped, falling back to the previous one: {e}"
                    );
                    first_damage.get_or_insert(e);
                }
            }
        }
        first_damage.map_or(Ok(None), Err)
    }

    fn insert(&mut self, snapshot: StoredSnapshot) {
        let at = self
            .snapshots
            .partition_point(|s| s.rank() < snapshot.rank());
        self.snapshots.insert(at, snapshot);
        self.prune();
    }

    /// Drops the snapshots ranked below the `keep` highest, except the latest whole one
    /// (damaged snapshots ranked above it must not push it out).
    fn prune(&mut self) {
        let latest = self
            .snapshots
            .iter()
            .rev()
            .find(|s| s.verify().is_ok())
            .map(|s| s.seq);
        let mut excess = self.snapshots.len().saturating_sub(self.keep);
        self.snapshots.retain(|s| {
            if excess == 0 || Some(s.seq) == latest {
                return true;
            }
            excess -= 1;
            false
        });
    }
}

/// A [`SnapshotStore`] in memory, keeping the `keep` snapshots with the highest last log
/// ids; the latest is the whole one with the highest last log id.
#[derive(Debug)]
pub struct MemSnapshotStore {
    inner: std::sync::Arc<Mutex<MemSnapshots>>,
}

impl Default for MemSnapshotStore {
    fn default() -> Self {
        MemSnapshotStore::new(2)
    }
}

impl MemSnapshotStore {
    /// A store that keeps the `keep` snapshots with the highest last log ids (at least
    /// one).
    pub fn new(keep: usize) -> MemSnapshotStore {
        MemSnapshotStore {
            inner: std::sync::Arc::new(Mutex::new(MemSnapshots {
                keep: keep.max(1),
                next_seq: 1,
                snapshots: Vec::new(),
            })),
        }
    }

    /// How many snapshots are kept right now.
    pub fn count(&self) -> usize {
        lock(&self.inner).snapshots.len()
    }

    /// Flips one byte of the latest snapshot's data, as a disk fault would (for tests of
    /// corruption handling).
    pub fn corrupt_latest(&self) {
        let mut inner = lock(&self.inner);
        if let Some(s) = inner.snapshots.last_mut() {
            let mut data = s.data.to_vec();
            if let Some(b) = data.first_mut() {
                *b ^= 0xff;
            } else {
                data.push(1);
            }
            s.data = Bytes::from(data);
        }
    }
}

fn lock(m: &Mutex<MemSnapshots>) -> MutexGuard<'_, MemSnapshots> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct MemSnapshotWriter {
    seq: u64,
    meta: SnapshotMeta,
    buf: Vec<u8>,
    store: std::sync::Arc<Mutex<MemSnapshots>>,
}

#[async_trait]
impl SnapshotWriter for MemSnapshotWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError> {
        let crc = crc32fast::hash(&self.buf);
        lock(&self.store).insert(StoredSnapshot {
            seq: self.seq,
            meta: self.meta.clone(),
            data: Bytes::from(self.buf),
            crc,
        });
        Ok(self.meta)
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    async fn begin(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        let mut inner = lock(&self.inner);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        Ok(Box::new(MemSnapshotWriter {
            seq,
            meta: meta.clone(),
            buf: Vec::new(),
            store: self.inner.clone(),
        }))
    }

    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(lock(&self.inner).newest_whole()?.map(|s| s.meta.clone()))
    }

    async fn read_latest(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        Ok(lock(&self.inner)
            .newest_whole()?
            .map(|s| (s.meta.clone(), s.data.clone())))
    }
}
