//! The `LogStore` contract checks every implementation shares, so the rules live once.

use raft_core::{Entry, LogIndex, LogState, StorageError};

/// Checks that `entries` are contiguous and start right after `state.last`.
pub fn check_append(state: &LogState, entries: &[Entry]) -> Result<(), StorageError> {
    let mut expected = state.last.index.next();
    for e in entries {
        if e.index() != expected {
            return Err(StorageError::Invalid(format!(
                "append must be contiguous: expected index {}, got {} (truncate before overwriting)",
                expected.0,
                e.index().0
            )));
        }
        expected = expected.next();
    }
    Ok(())
}

/// Checks that a truncation does not reach into the purged prefix.
pub fn check_truncate(state: &LogState, from: LogIndex) -> Result<(), StorageError> {
    if from <= state.last_purged.index {
        return Err(StorageError::Invalid(format!(
            "cannot truncate from index {}: entries up to {} were purged (committed entries are never truncated)",
            from.0, state.last_purged.index.0
        )));
    }
    Ok(())
}

/// The byte budget of one [`LogStore::entries`](raft_core::LogStore::entries) call, so
/// every backend measures it alike: sizes are [`Entry::size_hint`], summed from the first
/// entry; the entry that would bring the sum above the budget is left out, except the
/// first, which is always taken.
pub struct Budget {
    max: usize,
    used: usize,
    taken: usize,
}

impl Budget {
    /// A budget of `max_bytes`.
    pub fn new(max_bytes: usize) -> Budget {
        Budget {
            max: max_bytes,
            used: 0,
            taken: 0,
        }
    }

    /// Whether `entry` fits (then it counts against the budget); stop reading at `false`.
    pub fn admits(&mut self, entry: &Entry) -> bool {
        let used = self.used.saturating_add(entry.size_hint());
        if self.taken > 0 && used > self.max {
            return false;
        }
        self.used = used;
        self.taken += 1;
        true
    }
}

/// Checks that a read does not start in the purged prefix.
pub fn check_read(state: &LogState, from: LogIndex) -> Result<(), StorageError> {
    if from <= state.last_purged.index {
        return Err(StorageError::Invalid(format!(
            "index {} was purged (the log starts at {}); read the snapshot instead",
            from.0,
            state.first_index().0
        )));
    }
    Ok(())
}
