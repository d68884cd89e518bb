//! The core's view of the replicated log: entries since the last snapshot, the commit index,
//! and how much of the log is known durable.

use std::collections::VecDeque;

use crate::error::FatalError;
use crate::types::{Entry, LogId, LogIndex, Term};

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

/// The log as the core sees it. Entries from `purged.index + 1` onwards are held in memory;
/// snapshots bound them: after a snapshot the log is purged up to the snapshot minus a
/// trailing window, so `purged <= snapshot_last`.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry removed by compaction (index 0 when nothing was): its id is still
    /// known, so an AppendEntries right after it can be checked.
    purged: LogId,
    /// The last entry covered by the latest snapshot (index 0 when there is none).
    snapshot_last: LogId,
    entries: VecDeque<Entry>,
    /// Sum of the entries' encoded sizes.
    bytes: usize,
    /// The part of `bytes` in entries the snapshot covers (the trailing window).
    covered_bytes: usize,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index up to which our durable log is known to equal `entries`.
    pub stable: LogIndex,
}

impl RaftLog {
    /// A log restored from storage: `entries` directly follow `purged`, and the snapshot
    /// (`snapshot_last`) lies within them or at `purged`. Returns why not, if they do not.
    pub fn restore(
        purged: LogId,
        snapshot_last: LogId,
        entries: Vec<Entry>,
    ) -> Result<RaftLog, String> {
        if let Some((i, e)) = entries
            .iter()
            .enumerate()
            .find(|(i, e)| e.index().0 != purged.index.0 + 1 + *i as u64)
        {
            return Err(format!(
                "entry {} found where index {} belongs (the log after {} is not contiguous)",
                e.log_id,
                purged.index.0 + 1 + i as u64,
                purged.index
            ));
        }
        let stable = entries.last().map(|e| e.index()).unwrap_or(purged.index);
        let bytes = entries.iter().map(Entry::size_hint).sum();
        let mut log = RaftLog {
            purged,
            snapshot_last,
            entries: entries.into(),
            bytes,
            covered_bytes: 0,
            committed: snapshot_last.index,
            stable,
        };
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

    /// The first index held in memory.
    pub fn first_index(&self) -> LogIndex {
        self.purged.index.next()
    }

    /// Encoded size of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Encoded size of the entries after the snapshot (what the next snapshot would let
    /// compaction remove; the trailing window behind the snapshot is not counted).
    pub fn bytes_after_snapshot(&self) -> usize {
        self.bytes - self.covered_bytes
    }

    /// Recomputes the size of the entries the snapshot covers (after it moves).
    fn count_covered(&mut self) {
        let snapshot = self.snapshot_last.index;
        self.covered_bytes = self
            .entries
            .iter()
            .take_while(|e| e.index() <= snapshot)
            .map(Entry::size_hint)
            .sum();
    }

    /// The id of the last entry (or of the purge point when the log is empty).
    pub fn last_log_id(&self) -> LogId {
        self.entries.back().map(|e| e.log_id).unwrap_or(self.purged)
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
        self.get(index).map(|e| e.term())
    }

    /// The entry at `index`, if held in memory.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.first_index().0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The log id at `index`, if known.
    pub fn log_id_at(&self, index: LogIndex) -> Option<LogId> {
        self.term_at(index).map(|term| LogId { term, index })
    }

    /// Whether our log holds `id` (Log Matching makes this a check of the whole prefix).
    pub fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// Entries from `from` on, at most `max_count` of them and about `max_bytes` (always at
    /// least one entry if any exists, so a large entry can still travel).
    pub fn slice(&self, from: LogIndex, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while let Some(e) = self.get(index) {
            bytes += e.size_hint();
            if out.len() >= max_count || (!out.is_empty() && bytes > max_bytes) {
                break;
            }
            out.push(e.clone());
            index = index.next();
        }
        out
    }

    /// Entries in `[from, to]` (inclusive), for handing to the state machine.
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

    /// Appends an entry created by this node as leader.
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
        self.bytes += entry.size_hint();
        self.entries.push_back(entry);
    }

    /// The first index of `term` at or before `index`, walking back over entries of that term.
    fn first_index_of_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut first = index;
        while first > self.first_index() && self.term_at(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
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
                debug_assert_eq!(e.index(), self.last_index().next(), "invariant: contiguous");
                merge.appended.push(e.clone());
                self.bytes += e.size_hint();
                self.entries.push_back(e);
            }
        }
        Ok(merge)
    }

    /// Removes entries from `from` on.
    fn truncate(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.first_index().0) as usize;
        self.bytes -= self
            .entries
            .range(keep.min(self.entries.len())..)
            .map(Entry::size_hint)
            .sum::<usize>();
        self.entries.truncate(keep);
        self.stable = self.stable.min(from.prev());
    }

    /// Drops entries up to and including `upto` (log compaction after a snapshot). `upto`
    /// must be at or below the snapshot and held in the log.
    pub fn compact(&mut self, upto: LogId) {
        debug_assert!(upto.index <= self.snapshot_last.index && self.matches(upto));
        while self
            .entries
            .front()
            .is_some_and(|e| e.index() <= upto.index)
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.size_hint();
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
            self.entries.clear();
            self.bytes = 0;
            self.covered_bytes = 0;
            self.stable = self.stable.min(self.purged.index);
            self.purged = id;
            self.snapshot_last = id;
        }
        self.committed = self.committed.max(id.index);
        !keep_suffix
    }

    /// The last index of `term` in our log, if we have any entry of that term.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        if self.last_log_id().term < term {
            return None;
        }
        let mut index = self.last_index();
        while index >= self.first_index() {
            match self.term_at(index) {
                Some(t) if t == term => return Some(index),
                Some(t) if t < term => return None,
                _ => index = index.prev(),
            }
        }
        (self.purged.term == term).then_some(self.purged.index)
    }

    /// Records that the durable log holds `id` (if our in-memory log still has it).
    pub fn mark_stable(&mut self, id: LogId) {
        if id.index > self.stable && self.matches(id) {
            self.stable = id.index;
        }
    }
}
