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
