//! The core's view of the replicated log: the id and size of every stored entry since the
//! last purge, a bounded cache of the most recent entries themselves, the commit index, and
//! how much of the log is known durable.
//!
//! Memory follows configuration, not history: entries the state machine has applied and the
//! log store holds durably may leave the cache once it passes its byte budget
//! (`Config::log_cache_bytes`); a leader reads them back from the store
//! ([`crate::Action::ReadEntries`]) for a follower that needs them. Their terms stay known,
//! so every consistency check works on the whole log.

use std::collections::VecDeque;

use crate::error::FatalError;
use crate::types::{Entry, LogId, LogIndex, Term};

/// What the core keeps of a stored entry it may not hold in memory: its id and encoded
/// size ([`Entry::size_hint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// The entry's term and index.
    pub log_id: LogId,
    /// Its encoded size in bytes.
    pub size: usize,
}

impl From<&Entry> for EntryMeta {
    fn from(e: &Entry) -> EntryMeta {
        EntryMeta {
            log_id: e.log_id,
            size: e.size_hint(),
        }
    }
}

/// Where a follower's log disagrees with a leader's AppendEntries (section 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConflictHint {
    /// Term of our entry at the leader's `prev_log_id.index`, if we have one.
    pub term: Option<Term>,
    /// First index of that term in our log, or our last index + 1 if our log is too short.
    pub index: LogIndex,
}

/// The outcome of merging a leader's entries into our log.
#[derive(Debug, Default)]
pub(crate) struct Merge {
    /// Set when a conflicting suffix starting here was removed.
    pub truncated_from: Option<LogIndex>,
    /// The entries that are new to our log and must be persisted.
    pub appended: Vec<Entry>,
}

/// The log as the core sees it. Every index after `purged` has its term and size in
/// `metas`; the last `cache.len()` entries are also held whole. Snapshots bound the log:
/// after a snapshot it is purged up to the snapshot minus a trailing window, so
/// `purged <= snapshot_last`.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry removed by compaction (index 0 when nothing was): its id is still
    /// known, so an AppendEntries right after it can be checked.
    purged: LogId,
    /// The last entry covered by the latest snapshot (index 0 when there is none).
    snapshot_last: LogId,
    /// Term and encoded size of every entry after `purged`, in order.
    metas: VecDeque<(Term, usize)>,
    /// The most recent entries, ending at the last one.
    cache: VecDeque<Entry>,
    /// Sum of the sizes in `metas`.
    bytes: usize,
    /// The part of `bytes` in entries the snapshot covers (the trailing window).
    covered_bytes: usize,
    /// Sum of the sizes of the cached entries.
    cached_bytes: usize,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index up to which our durable log is known to equal this one.
    pub stable: LogIndex,
}

/// Takes entries for one AppendEntries: at most `max_count`, and stopping before the entry
/// that would pass `max_bytes` (always at least one, so a large entry can still travel).
pub(crate) fn batch<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in entries {
        bytes += e.size_hint();
        if out.len() >= max_count || (!out.is_empty() && bytes > max_bytes) {
            break;
        }
        out.push(e.clone());
    }
    out
}

impl RaftLog {
    /// A log restored from storage: `stored` (entries not held in memory, all covered by the
    /// snapshot) then `entries` directly follow `purged`, and the snapshot (`snapshot_last`)
    /// lies within them or at `purged`. Returns why not, if they do not.
    pub fn restore(
        purged: LogId,
        snapshot_last: LogId,
        stored: Vec<EntryMeta>,
        entries: Vec<Entry>,
    ) -> Result<RaftLog, String> {
        let ids = stored
            .iter()
            .map(|m| m.log_id)
            .chain(entries.iter().map(|e| e.log_id));
        for (i, id) in ids.enumerate() {
            let expected = purged.index.0 + 1 + i as u64;
            if id.index.0 != expected {
                return Err(format!(
                    "entry {id} found where index {expected} belongs (the log after {} is not contiguous)",
                    purged.index
                ));
            }
        }
        if let Some(m) = stored
            .last()
            .filter(|m| m.log_id.index > snapshot_last.index)
        {
            return Err(format!(
                "entry {} is left out of memory but not covered by the snapshot at {}",
                m.log_id, snapshot_last
            ));
        }
        let mut log = RaftLog {
            purged,
            snapshot_last,
            metas: stored.iter().map(|m| (m.log_id.term, m.size)).collect(),
            cache: VecDeque::new(),
            bytes: stored.iter().map(|m| m.size).sum(),
            covered_bytes: 0,
            cached_bytes: 0,
            committed: snapshot_last.index,
            stable: LogIndex(0),
        };
        for e in entries {
            log.push(e);
        }
        log.stable = log.last_index();
        log.count_covered();
        if !log.matches(snapshot_last) {
            return Err(format!(
                "the log (from {} to {}) does not hold the snapshot's last entry {}",
                purged,
                log.last_log_id(),
                snapshot_last
            ));
        }
        Ok(log)
    }

    /// The last entry covered by the snapshot.
    pub fn snapshot_last(&self) -> LogId {
        self.snapshot_last
    }

    /// The last entry removed by compaction.
    pub fn purged(&self) -> LogId {
        self.purged
    }

    /// The first index in the log (in memory or only in the log store).
    pub fn first_index(&self) -> LogIndex {
        self.purged.index.next()
    }

    /// The first index held in memory.
    pub fn first_cached(&self) -> LogIndex {
        LogIndex(self.last_index().0 + 1 - self.cache.len() as u64)
    }

    /// Whether the entry at `index` is in the log but not in memory: it must be read from
    /// the log store.
    pub fn is_evicted(&self, index: LogIndex) -> bool {
        index > self.purged.index && index < self.first_cached()
    }

    /// Encoded size of the log's entries (in memory or not).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Encoded size of the entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Encoded size of the entries after the snapshot (what the next snapshot would let
    /// compaction remove; the trailing window behind the snapshot is not counted).
    pub fn bytes_after_snapshot(&self) -> usize {
        self.bytes - self.covered_bytes
    }

    /// Offset of `index` in `metas`, if the log has it.
    fn offset(&self, index: LogIndex) -> Option<usize> {
        let offset = usize::try_from(index.0.checked_sub(self.first_index().0)?).ok()?;
        (offset < self.metas.len()).then_some(offset)
    }

    /// Recomputes the size of the entries the snapshot covers (after it moves).
    fn count_covered(&mut self) {
        let covered = self
            .snapshot_last
            .index
            .0
            .saturating_sub(self.purged.index.0);
        self.covered_bytes = self
            .metas
            .iter()
            .take(covered as usize)
            .map(|(_, size)| size)
            .sum();
    }

    /// The id of the last entry (or of the purge point when the log is empty).
    pub fn last_log_id(&self) -> LogId {
        match self.metas.back() {
            Some(&(term, _)) => LogId {
                term,
                index: LogIndex(self.purged.index.0 + self.metas.len() as u64),
            },
            None => self.purged,
        }
    }

    /// The last index.
    pub fn last_index(&self) -> LogIndex {
        self.last_log_id().index
    }

    /// The term of the entry at `index`, if known (the last purged entry included).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        self.offset(index).map(|o| self.metas[o].0)
    }

    /// The entry at `index`, if held in memory.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.first_cached().0)?;
        self.cache.get(usize::try_from(offset).ok()?)
    }

    /// The log id at `index`, if known.
    pub fn log_id_at(&self, index: LogIndex) -> Option<LogId> {
        self.term_at(index).map(|term| LogId { term, index })
    }

    /// Whether our log holds `id` (Log Matching makes this a check of the whole prefix).
    pub fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// Entries in memory from `from` on, batched for one AppendEntries (see [`batch`]).
    /// Empty if `from` is not in memory.
    pub fn slice(&self, from: LogIndex, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let Some(offset) = from.0.checked_sub(self.first_cached().0) else {
            return Vec::new();
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        batch(self.cache.iter().skip(skip), max_count, max_bytes)
    }

    /// Entries in `[from, to]` (inclusive) held in memory, for handing to the state machine.
    pub fn range(&self, from: LogIndex, to: LogIndex) -> Vec<Entry> {
        let mut out = Vec::with_capacity((to.0.saturating_sub(from.0) + 1) as usize);
        let mut index = from;
        while index <= to {
            match self.get(index) {
                Some(e) => out.push(e.clone()),
                None => break,
            }
            index = index.next();
        }
        out
    }

    /// Appends an entry after the last one.
    pub fn push(&mut self, entry: Entry) {
        debug_assert_eq!(
            entry.index(),
            self.last_index().next(),
            "invariant: contiguous"
        );
        debug_assert!(
            entry.term() >= self.last_log_id().term,
            "invariant: terms grow"
        );
        let size = entry.size_hint();
        self.bytes += size;
        self.cached_bytes += size;
        self.metas.push_back((entry.term(), size));
        self.cache.push_back(entry);
    }

    /// Drops entries from the front of the cache while it holds more than `budget` bytes,
    /// but only entries at or below `upto` (applied and durable: the log store has them,
    /// and nothing in the core needs them whole).
    pub fn evict(&mut self, upto: LogIndex, budget: usize) {
        while self.cached_bytes > budget && self.cache.front().is_some_and(|e| e.index() <= upto) {
            if let Some(e) = self.cache.pop_front() {
                self.cached_bytes -= e.size_hint();
            }
        }
    }

    /// The first index in the log of `term`, the term of the entry at `index` (terms never
    /// decrease along a log, so a term's entries form one run).
    fn first_index_of_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let offset = self.metas.partition_point(|(t, _)| *t < term);
        LogIndex(self.first_index().0 + offset as u64).min(index)
    }

    /// The consistency check of Figure 2, AppendEntries rule 2: `None` if our log contains
    /// `prev`, otherwise a hint for fast backtracking.
    pub fn check_prev(&self, prev: LogId) -> Option<ConflictHint> {
        if prev.index < self.purged.index {
            // Compacted: covered by our snapshot, hence committed, hence the leader's too.
            return None;
        }
        match self.term_at(prev.index) {
            Some(term) if term == prev.term => None,
            Some(term) => Some(ConflictHint {
                term: Some(term),
                index: self.first_index_of_term(prev.index, term),
            }),
            None => Some(ConflictHint {
                term: None,
                index: self.last_index().next(),
            }),
        }
    }

    /// Merges entries that follow a matching `prev`: Figure 2, AppendEntries rules 3 and 4.
    /// Refuses (and changes nothing) if a conflict lies at or below the commit index.
    pub fn merge(&mut self, entries: Vec<Entry>) -> Result<Merge, FatalError> {
        let mut merge = Merge::default();
        let mut new_from = None;
        for (i, e) in entries.iter().enumerate() {
            if e.index() <= self.purged.index {
                continue;
            }
            match self.term_at(e.index()) {
                Some(t) if t == e.term() => continue,
                Some(_) => {
                    // Committed entries are never removed (Leader Completeness, section 5.4).
                    if e.index() <= self.committed {
                        return Err(FatalError::TruncateCommitted {
                            from: e.index(),
                            committed: self.committed,
                        });
                    }
                    // Rule 3: an existing entry conflicts with a new one: delete it and all
                    // that follow it.
                    self.truncate(e.index());
                    merge.truncated_from = Some(e.index());
                    new_from = Some(i);
                    break;
                }
                None => {
                    new_from = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = new_from {
            // Rule 4: append any new entries not already in the log.
            for e in entries.into_iter().skip(i) {
                merge.appended.push(e.clone());
                self.push(e);
            }
        }
        Ok(merge)
    }

    /// Removes entries from `from` on (never committed ones, so never evicted ones).
    fn truncate(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.first_index().0) as usize;
        let removed = self.metas.len().saturating_sub(keep);
        self.bytes -= self
            .metas
            .range(keep.min(self.metas.len())..)
            .map(|(_, size)| size)
            .sum::<usize>();
        self.metas.truncate(keep);
        let cache_keep = self.cache.len().saturating_sub(removed);
        self.cached_bytes -= self
            .cache
            .range(cache_keep..)
            .map(Entry::size_hint)
            .sum::<usize>();
        self.cache.truncate(cache_keep);
        self.stable = self.stable.min(from.prev());
    }

    /// Drops entries up to and including `upto` (log compaction after a snapshot). `upto`
    /// must be at or below the snapshot and held in the log.
    pub fn compact(&mut self, upto: LogId) {
        debug_assert!(upto.index <= self.snapshot_last.index && self.matches(upto));
        let drop = upto.index.0.saturating_sub(self.purged.index.0) as usize;
        for _ in 0..drop.min(self.metas.len()) {
            if let Some((_, size)) = self.metas.pop_front() {
                self.bytes -= size;
            }
        }
        while self.cache.front().is_some_and(|e| e.index() <= upto.index) {
            if let Some(e) = self.cache.pop_front() {
                self.cached_bytes -= e.size_hint();
            }
        }
        self.purged = self.purged.max(upto);
        self.count_covered();
    }

    /// Records a snapshot taken locally at `id`, an entry of this log.
    pub fn set_snapshot(&mut self, id: LogId) {
        self.snapshot_last = self.snapshot_last.max(id);
        self.count_covered();
    }

    /// Installs a leader's snapshot ending at `id` (Figure 13, receiver rules 6 and 7): if
    /// the log holds `id`, the entries after it are kept; otherwise the whole log is
    /// discarded. Returns whether the log was discarded.
    pub fn install_snapshot(&mut self, id: LogId) -> bool {
        let keep_suffix = self.matches(id);
        if keep_suffix {
            self.snapshot_last = id;
            self.compact(id);
        } else {
            self.metas.clear();
            self.cache.clear();
            self.bytes = 0;
            self.covered_bytes = 0;
            self.cached_bytes = 0;
            self.stable = self.stable.min(self.purged.index);
            self.purged = id;
            self.snapshot_last = id;
        }
        self.committed = self.committed.max(id.index);
        !keep_suffix
    }

    /// The last index of `term` in our log (the purge point included), if we have any
    /// entry of that term.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        // Terms never decrease along a log: the entries up to `term` are a prefix.
        let upto = self.metas.partition_point(|(t, _)| *t <= term) as u64;
        self.log_id_at(LogIndex(self.purged.index.0 + upto))
            .filter(|id| id.term == term)
            .map(|id| id.index)
    }

    /// Records that the durable log holds `id` (if our log still has it).
    pub fn mark_stable(&mut self, id: LogId) {
        if self.matches(id) {
            self.stable = self.stable.max(id.index);
        }
    }
}
