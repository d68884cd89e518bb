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

/// The log as the core sees it. Entries from `snapshot_last.index + 1` onwards are held in
/// memory (the node compacts through snapshots, which bounds this).
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last entry covered by the latest snapshot (index 0 when there is none).
    snapshot_last: LogId,
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index up to which our durable log is known to equal `entries`.
    pub stable: LogIndex,
}

impl RaftLog {
    /// A log restored from storage: `entries` must directly follow `snapshot_last`.
    pub fn restore(snapshot_last: LogId, entries: Vec<Entry>) -> RaftLog {
        debug_assert!(
            entries
                .iter()
                .enumerate()
                .all(|(i, e)| e.index().0 == snapshot_last.index.0 + 1 + i as u64),
            "invariant: restored log is contiguous after the snapshot"
        );
        let stable = entries
            .last()
            .map(|e| e.index())
            .unwrap_or(snapshot_last.index);
        RaftLog {
            snapshot_last,
            entries: entries.into(),
            committed: snapshot_last.index,
            stable,
        }
    }

    /// The last entry covered by the snapshot.
    pub fn snapshot_last(&self) -> LogId {
        self.snapshot_last
    }

    /// The first index held in memory.
    pub fn first_index(&self) -> LogIndex {
        self.snapshot_last.index.next()
    }

    /// The id of the last entry (or of the snapshot when the log is empty).
    pub fn last_log_id(&self) -> LogId {
        self.entries
            .back()
            .map(|e| e.log_id)
            .unwrap_or(self.snapshot_last)
    }

    /// The last index.
    pub fn last_index(&self) -> LogIndex {
        self.last_log_id().index
    }

    /// The term of the entry at `index`, if known (the snapshot's last entry included).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_last.index {
            return Some(self.snapshot_last.term);
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
        if prev.index < self.snapshot_last.index {
            // Covered by our snapshot, hence committed, hence matching the leader's.
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
            if e.index() <= self.snapshot_last.index {
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
                self.entries.push_back(e);
            }
        }
        Ok(merge)
    }

    /// Removes entries from `from` on.
    fn truncate(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.stable = self.stable.min(from.prev());
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
        (self.snapshot_last.term == term).then_some(self.snapshot_last.index)
    }

    /// Records that the durable log holds `id` (if our in-memory log still has it).
    pub fn mark_stable(&mut self, id: LogId) {
        if id.index > self.stable && self.matches(id) {
            self.stable = id.index;
        }
    }
}
