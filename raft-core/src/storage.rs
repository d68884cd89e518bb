//! The storage seams: [`LogStore`] for the log and hard state, [`SnapshotStore`] for
//! snapshots. Reference implementations and a conformance suite live in `raft-storage`.
//!
//! Both traits take `&self`: implementations synchronize internally, so the node can read
//! entries for a lagging follower while a write is in flight.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StorageError;
use crate::types::{Entry, HardState, LogId, LogIndex, SnapshotMeta};

/// Where the stored log begins and ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// The last entry removed by [`LogStore::purge`] (index 0 when nothing was purged).
    pub last_purged: LogId,
    /// The last entry in the log, or `last_purged` when the log is empty.
    pub last: LogId,
}

impl LogState {
    /// The first index still stored (`last_purged.index + 1`).
    pub fn first_index(&self) -> LogIndex {
        self.last_purged.index.next()
    }
}

/// The replicated log and the hard state (current term and vote).
///
/// The whole contract, which `raft_storage::conformance` checks case by case (and
/// `raft_storage::contract` implements the argument checks every backend shares):
/// - **Durable on return**: every method that changes state is durable when it returns
///   `Ok` (fsync or equivalent): after a crash or power loss, the change is there. An
///   `Err` means the change may or may not have happened; the node then stops, since
///   continuing could break Raft's safety. Each change stands alone: a truncation must
///   reach the disk by itself, not only once a later purge or append rewrites the file.
/// - **Index 0** is the empty prefix every log shares: `term(0)` is `Some(Term(0))` on a
///   store that never purged (it is the last purged entry, with term 0).
/// - **Calls** come from one node at a time, mutations one after another, in the order
///   Raft needs them; reads ([`entries`](LogStore::entries), [`term`](LogStore::term),
///   [`log_state`](LogStore::log_state)) may run concurrently with a mutation and must see
///   the log before or after it, never a mix.
/// - **Blocking**: the methods are async and run on the node's tokio runtime. The node
///   calls them once per batch (a group commit), so a short blocking fsync is tolerable,
///   but a backend that blocks for longer (a synchronous database, a large file write)
///   should do its work in `tokio::task::spawn_blocking`, as `RedbLogStore` does.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// The saved hard state, or the default (term 0, no vote) for a new store.
    async fn hard_state(&self) -> Result<HardState, StorageError>;

    /// Saves the hard state, replacing the previous one. Durable on return.
    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError>;

    /// First and last entries.
    async fn log_state(&self) -> Result<LogState, StorageError>;

    /// Appends contiguous entries directly after the last entry (or after `last_purged`
    /// when empty). Durable on return, all or nothing. A gap or overlap is
    /// [`StorageError::Invalid`]; to overwrite, [`truncate`](LogStore::truncate) first.
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Removes every entry with index `>= from` (a conflicting suffix). Durable on return.
    /// `from` past the end is a no-op; `from` at or below `last_purged.index` is
    /// [`StorageError::Invalid`] (committed entries are never truncated).
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError>;

    /// Removes every entry up to and including `upto` (log compaction after a snapshot)
    /// and remembers `upto` as `last_purged`. Purging past the last entry empties the log
    /// and moves its start. Purging at or below `last_purged` is a no-op. `upto` is
    /// recorded as given: the store need not compare its term with the stored entry's (the
    /// node only purges committed entries covered by a snapshot, and checks the log against
    /// the snapshot itself when it starts).
    async fn purge(&self, upto: LogId) -> Result<(), StorageError>;

    /// Entries in `range`, in order, never past `range.end`, stopping early at the byte
    /// budget: sizes are [`Entry::size_hint`](crate::Entry::size_hint), summed from the
    /// first entry; an entry that would bring the sum above `max_bytes` is left out, except
    /// the first, which is always returned (when the range is non-empty and stored).
    /// Reading a purged index is [`StorageError::Invalid`]; the result ends early at the
    /// end of the log.
    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`: `last_purged`'s term for the last purged index,
    /// `None` past the end; a purged index below it is [`StorageError::Invalid`].
    async fn term(&self, index: LogIndex) -> Result<Option<crate::types::Term>, StorageError>;

    /// Carries out `ops` in order, durable on return: what one group commit of the node
    /// writes (a term change, a truncation and the appends that follow it, together). Each
    /// op means what its method above means, checked against the log as the earlier ops
    /// of the batch left it; the first op refused fails the call.
    ///
    /// The default calls those methods one by one: correct for any store, but one
    /// durable write (an fsync) per op. A store that can should override it with one
    /// transaction, all or nothing across a crash, and one fsync for the whole batch, as
    /// `RedbLogStore` and `MemLogStore` do. (All or nothing is not needed for safety: each
    /// op alone is a valid durable step, and the node treats the batch as not durable
    /// until the call returns.)
    async fn write_batch(&self, ops: Vec<LogWrite>) -> Result<(), StorageError> {
        for op in ops {
            match op {
                LogWrite::HardState(h) => self.save_hard_state(&h).await?,
                LogWrite::Truncate(from) => self.truncate(from).await?,
                LogWrite::Append(entries) => self.append(&entries).await?,
                LogWrite::Purge(upto) => self.purge(upto).await?,
            }
        }
        Ok(())
    }
}

/// One mutation of a [`LogStore::write_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogWrite {
    /// [`LogStore::save_hard_state`].
    HardState(HardState),
    /// [`LogStore::truncate`].
    Truncate(LogIndex),
    /// [`LogStore::append`].
    Append(Vec<Entry>),
    /// [`LogStore::purge`].
    Purge(LogId),
}

/// A snapshot being written; dropped without [`finish`](SnapshotWriter::finish) it is
/// abandoned and the previous snapshot stays the latest.
#[async_trait]
pub trait SnapshotWriter: Send {
    /// Appends the next chunk of the snapshot's bytes.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError>;

    /// Makes the snapshot durable and the latest, atomically: a crash before this returns
    /// leaves the previous snapshot whole; after it returns, the new one is durable.
    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError>;
}

/// Point-in-time images of the state machine, each covered by a checksum.
///
/// Retention: the latest finished snapshot is never removed until a newer one is finished
/// (a follower may be streaming it, and a restart needs it); a store may keep a few older
/// ones (as a fallback when the latest turns out damaged) and removes the rest. A
/// snapshot with a lower index finished after a higher one does not become the latest.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Starts writing a snapshot described by `meta`.
    async fn begin(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError>;

    /// The latest finished snapshot's metadata, if any.
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// The latest snapshot's metadata and bytes, checksum verified. A mismatch is
    /// [`StorageError::Corrupt`], never silently wrong data.
    async fn read_latest(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError>;
}
