//! What a leader knows about each follower's log (etcd's "progress").

use std::collections::VecDeque;

use crate::types::{LogIndex, SnapshotMeta};

/// How the leader currently sends entries to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The follower's match point is unknown: one AppendEntries at a time, waiting for each
    /// answer before the next.
    Probe,
    /// The follower matches up to `match_index`: AppendEntries are pipelined, bounded by
    /// the in-flight window.
    Replicate,
    /// The follower needs a snapshot because the entries it lacks were compacted.
    Snapshot,
}

/// A snapshot being streamed to a follower (InstallSnapshot, Figure 13), by byte offset.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// The next byte to send.
    pub next: u64,
    /// Bytes the follower confirmed it holds.
    pub acked: u64,
    /// Whether the last chunk has been sent since the last rewind.
    pub sent_done: bool,
    /// Heartbeats without progress: a lost chunk is resent from `acked` after some, and
    /// the transfer restarts from scratch after twice as many.
    pub stalls: u32,
}

impl SnapshotSend {
    /// A transfer of `meta` from its first byte.
    pub fn new(meta: SnapshotMeta) -> SnapshotSend {
        SnapshotSend {
            meta,
            next: 0,
            acked: 0,
            sent_done: false,
            stalls: 0,
        }
    }

    /// Resends from the first byte the follower has not confirmed (go-back-N).
    pub fn rewind(&mut self, to: u64) {
        self.next = to;
        self.acked = self.acked.min(to);
        self.sent_done = false;
    }
}

/// Per-follower replication state kept by the leader.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated (and durable) on the follower.
    pub match_index: LogIndex,
    /// Index of the next entry to send.
    pub next_index: LogIndex,
    /// Probe, replicate or snapshot.
    pub state: ReplicationState,
    /// In probe state: a probe is outstanding, wait for its answer (or a heartbeat tick).
    pub probe_sent: bool,
    /// Last index of each in-flight AppendEntries, oldest first.
    inflight: VecDeque<LogIndex>,
    /// Whether the follower answered since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest AppendEntries `seq` the follower has answered in this term (ReadIndex).
    pub acked_seq: u64,
    /// Heartbeats sent while entries were in flight and `match_index` did not move.
    stalled_heartbeats: u32,
    /// In snapshot state: the transfer, once the snapshot's bytes are at hand.
    pub snapshot: Option<SnapshotSend>,
    /// Entries from this index are being read from the log store for this follower;
    /// nothing more is sent with entries until they arrive. Every change of state clears it
    /// (a read started for the old state is not what the new one sends).
    reading: Option<LogIndex>,
    /// Heartbeats since the read began: a read never answered is given up after some.
    read_heartbeats: u32,
}

impl Progress {
    /// A follower about which nothing is known yet: probe from just after our last entry.
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: true,
            acked_seq: 0,
            stalled_heartbeats: 0,
            snapshot: None,
            reading: None,
            read_heartbeats: 0,
        }
    }

    /// Whether another AppendEntries with entries may be sent now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        self.reading.is_none() && self.window(max_inflight) > 0
    }

    /// A read of entries from `from` on was asked for.
    pub fn start_read(&mut self, from: LogIndex) {
        self.reading = Some(from);
        self.read_heartbeats = 0;
    }

    /// Whether a read is outstanding.
    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// The answer to the read from `from` arrived: true if it is the outstanding one (a
    /// stale answer, for a read given up or overtaken by a change of state, is ignored).
    pub fn finish_read(&mut self, from: LogIndex) -> bool {
        let current = self.reading == Some(from);
        if current {
            self.reading = None;
        }
        current
    }

    /// Called at each heartbeat: gives up a read outstanding for `limit` heartbeats (its
    /// task died or hangs) so the next heartbeat asks again. Returns whether it did.
    pub fn read_stalled(&mut self, limit: u32) -> bool {
        if self.reading.is_none() {
            return false;
        }
        self.read_heartbeats += 1;
        if self.read_heartbeats < limit {
            return false;
        }
        self.reading = None;
        true
    }

    /// How many AppendEntries the state allows to send now.
    pub fn window(&self, max_inflight: usize) -> usize {
        match self.state {
            ReplicationState::Probe => usize::from(!self.probe_sent),
            ReplicationState::Replicate => max_inflight.saturating_sub(self.inflight.len()),
            ReplicationState::Snapshot => 0,
        }
    }

    /// Records an AppendEntries whose last entry is `last`.
    pub fn sent(&mut self, last: LogIndex) {
        match self.state {
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Replicate => {
                self.next_index = last.next();
                self.inflight.push_back(last);
            }
            ReplicationState::Snapshot => {}
        }
    }

    /// The follower matches up to `index`. Returns whether `match_index` advanced.
    pub fn ack(&mut self, index: LogIndex) -> bool {
        self.probe_sent = false;
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.stalled_heartbeats = 0;
        self.next_index = self.next_index.max(index.next());
        // A probe that matched (or a follower in snapshot state that turned out to hold
        // our first entry) can take a pipeline.
        if self.state != ReplicationState::Replicate {
            self.become_replicate();
        }
        true
    }

    /// A rejection of the AppendEntries whose prev index was `rejected_prev`, with the next
    /// index to try. Returns false if the rejection is stale and was ignored.
    pub fn reject(&mut self, rejected_prev: LogIndex, retry_at: LogIndex) -> bool {
        let old_next = self.next_index;
        match self.state {
            ReplicationState::Replicate => {
                // Stale: answers a request older than the match point. A rejection exactly at
                // the match point is not: a request overtook the one that established the
                // match and its entries were never stored.
                if rejected_prev < self.match_index {
                    return false;
                }
                self.become_probe();
            }
            ReplicationState::Probe => {
                if rejected_prev != self.next_index.prev() {
                    return false; // stale: answers an older probe
                }
            }
            ReplicationState::Snapshot => return false,
        }
        self.probe_sent = false;
        self.reading = None;
        self.next_index = retry_at.max(self.match_index.next()).min(old_next);
        true
    }

    /// Called at each heartbeat: whether the pipeline has stalled, with entries up to
    /// `last_index` outstanding and no progress for `limit` heartbeats (a lost message).
    pub fn heartbeat_stalled(&mut self, last_index: LogIndex, limit: u32) -> bool {
        if self.inflight.is_empty() || self.match_index >= last_index {
            self.stalled_heartbeats = 0;
            return false;
        }
        self.stalled_heartbeats += 1;
        self.stalled_heartbeats >= limit
    }

    fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.reading = None;
        self.next_index = self.match_index.next();
        self.inflight.clear();
        self.snapshot = None;
    }

    /// Back to probing from just after the match point.
    pub fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.reading = None;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.stalled_heartbeats = 0;
        self.inflight.clear();
        self.snapshot = None;
    }

    /// The follower needs entries we compacted: stream it a snapshot.
    pub fn become_snapshot(&mut self) {
        self.state = ReplicationState::Snapshot;
        self.reading = None;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = None;
    }

    /// The follower installed a snapshot ending at `index`: probe from just after it.
    pub fn snapshot_installed(&mut self, index: LogIndex) {
        self.match_index = self.match_index.max(index);
        self.become_probe();
    }
}
