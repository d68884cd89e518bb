//! ReadIndex (dissertation 6.4): linearizable reads without writing to the log.
//!
//! The leader records its commit index as the read index, then confirms it is still the
//! leader by a round of AppendEntries acknowledged by a quorum. Each AppendEntries carries a
//! sequence number; a read registered at sequence `s` is confirmed once a quorum has answered
//! messages with sequence `>= s`, all of which were sent after the read was registered.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// Identifies a read request; chosen by the caller (the node) and echoed in the result.
pub type ReadId = u64;

#[derive(Debug)]
struct PendingRead {
    id: ReadId,
    index: LogIndex,
    seq: u64,
}

/// Reads waiting for leadership confirmation, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Reads waiting for the leader's first commit in its term (its commit index is not
    /// known to be current before that, section 8).
    awaiting_commit: Vec<ReadId>,
    confirming: VecDeque<PendingRead>,
}

impl ReadQueue {
    /// Queues a read until the leader has committed an entry of its own term.
    pub fn defer(&mut self, id: ReadId) {
        self.awaiting_commit.push(id);
    }

    /// Takes the reads that were waiting for the leader's first commit.
    pub fn take_deferred(&mut self) -> Vec<ReadId> {
        std::mem::take(&mut self.awaiting_commit)
    }

    /// Registers a read at `index`, confirmed by answers to messages of sequence `>= seq`.
    pub fn register(&mut self, id: ReadId, index: LogIndex, seq: u64) {
        debug_assert!(self.confirming.back().is_none_or(|r| r.seq <= seq));
        self.confirming.push_back(PendingRead { id, index, seq });
    }

    /// Pops every read whose sequence `confirmed(seq)` says a quorum has acknowledged.
    pub fn confirm(&mut self, confirmed: impl Fn(u64) -> bool) -> Vec<(ReadId, LogIndex)> {
        let mut ready = Vec::new();
        while let Some(front) = self.confirming.front() {
            if !confirmed(front.seq) {
                break;
            }
            ready.push((front.id, front.index));
            self.confirming.pop_front();
        }
        ready
    }

    /// Whether no read is waiting for confirmation.
    pub fn is_empty(&self) -> bool {
        self.confirming.is_empty()
    }

    /// Takes every pending read (on losing leadership they all fail).
    pub fn drain(&mut self) -> Vec<ReadId> {
        let mut all = std::mem::take(&mut self.awaiting_commit);
        all.extend(self.confirming.drain(..).map(|r| r.id));
        all
    }
}
