//! Linearizable reads without writing to the log (dissertation 6.4): the bookkeeping.
//!
//! - **ReadIndex** at the leader: it records its commit index as the read index, then
//!   confirms it is still the leader by a round of AppendEntries acknowledged by a quorum.
//!   Each AppendEntries carries a sequence number; a read registered at sequence `s` is
//!   confirmed once a quorum has answered messages with sequence `>= s`, all of which were
//!   sent after the read was registered. Every read registered before a round is confirmed
//!   by that one round (coalescing); a read arriving while a round is in flight waits for
//!   the next.
//! - **Follower reads**: a follower asks the leader for a read index (one request for every
//!   read waiting there), then serves the reads from its own state machine once it has
//!   applied that index.
//! - **Lease reads** (dissertation 6.4.1): a leader that heard from a quorum recently enough
//!   that no other leader can have been elected since serves reads without a round.
//!
//! The rules themselves live in the core (`raft/read.rs`); these are their queues.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::types::{LogIndex, NodeId};

/// Identifies a read request; chosen by the caller (the node) and echoed in the result.
pub type ReadId = u64;

/// How a read is made linearizable (or, for [`ReadPolicy::Stale`], explicitly not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadPolicy {
    /// ReadIndex (dissertation 6.4): the leader confirms its leadership with a quorum
    /// round before the read is served; on a follower, the leader does it on its behalf.
    /// Linearizable under any clock behaviour. The default.
    #[default]
    ReadIndex,
    /// Leader lease (dissertation 6.4.1): a leader that heard from a quorum within
    /// [`Config::lease_ticks`](crate::Config::lease_ticks) serves the read without a round
    /// (a follower still asks the leader, which answers from its lease). Linearizable only
    /// while clocks drift less than
    /// [`Config::lease_drift_ticks`](crate::Config::lease_drift_ticks) allows; needs
    /// `check_quorum`. Falls back to ReadIndex whenever the lease does not hold.
    Lease,
    /// Served at once from this node's state machine, with no check at all: it may miss
    /// writes acknowledged elsewhere (a follower lags; a deposed leader does not know).
    /// Only for callers that ask for possibly stale data by name.
    Stale,
}

/// Which path served a read, for counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// ReadIndex confirmed by the leader's own quorum round.
    LeaderReadIndex,
    /// A follower's read, with the read index from the leader.
    FollowerReadIndex,
    /// The leader's lease (at the leader, or answering a follower).
    Lease,
}

/// Reads served, by path (see [`ReadPath`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Served by the leader after its own quorum round.
    pub leader_read_index: u64,
    /// Served by this follower with a read index from the leader.
    pub follower_read_index: u64,
    /// Served from the leader's lease, without a round.
    pub lease: u64,
}

impl ReadCounts {
    /// Counts one read served through `path`.
    pub fn count(&mut self, path: ReadPath) {
        match path {
            ReadPath::LeaderReadIndex => self.leader_read_index += 1,
            ReadPath::FollowerReadIndex => self.follower_read_index += 1,
            ReadPath::Lease => self.lease += 1,
        }
    }
}

/// Who is waiting for a read index at the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// A read at the leader itself.
    Local(ReadId),
    /// A follower's batch of reads, answered with a `ReadIndexResponse` echoing `ctx`.
    Remote {
        /// The follower.
        from: NodeId,
        /// The follower's id for the batch.
        ctx: u64,
    },
}

#[derive(Debug)]
struct PendingRead {
    reader: Reader,
    index: LogIndex,
    seq: u64,
}

/// Reads waiting at the leader for leadership confirmation, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Reads waiting for the leader's first commit in its term (its commit index is not
    /// known to be current before that, section 8).
    awaiting_commit: Vec<Reader>,
    confirming: VecDeque<PendingRead>,
    /// The sequence number of the confirmation round in flight, if one is.
    round: Option<u64>,
}

impl ReadQueue {
    /// Queues a read until the leader has committed an entry of its own term.
    pub fn defer(&mut self, reader: Reader) {
        self.awaiting_commit.push(reader);
    }

    /// Takes the reads that were waiting for the leader's first commit.
    pub fn take_deferred(&mut self) -> Vec<Reader> {
        std::mem::take(&mut self.awaiting_commit)
    }

    /// Registers a read at `index`, confirmed by answers to messages of sequence `>= seq`.
    pub fn register(&mut self, reader: Reader, index: LogIndex, seq: u64) {
        debug_assert!(self.confirming.back().is_none_or(|r| r.seq <= seq));
        self.confirming
            .push_back(PendingRead { reader, index, seq });
    }

    /// Pops every read whose sequence `confirmed(seq)` says a quorum has acknowledged, and
    /// ends the round in flight if it is confirmed too.
    pub fn confirm(&mut self, confirmed: impl Fn(u64) -> bool) -> Vec<(Reader, LogIndex)> {
        let mut ready = Vec::new();
        while let Some(front) = self.confirming.front() {
            if !confirmed(front.seq) {
                break;
            }
            ready.push((front.reader, front.index));
            self.confirming.pop_front();
        }
        if self.round.is_some_and(&confirmed) {
            self.round = None;
        }
        ready
    }

    /// Whether a read waits for a round that has not been sent: no round is in flight
    /// (one in flight covers only the reads registered before it; the rest wait for it).
    pub fn needs_round(&self) -> bool {
        self.round.is_none() && !self.confirming.is_empty()
    }

    /// A confirmation round stamped `seq` was sent.
    pub fn round_sent(&mut self, seq: u64) {
        self.round = Some(seq);
    }

    /// Whether no read is waiting for confirmation.
    pub fn is_empty(&self) -> bool {
        self.confirming.is_empty()
    }

    /// Takes every pending read (on losing leadership they all fail).
    pub fn drain(&mut self) -> Vec<Reader> {
        self.round = None;
        let mut all = std::mem::take(&mut self.awaiting_commit);
        all.extend(self.confirming.drain(..).map(|r| r.reader));
        all
    }
}

/// A batch of reads a follower sent to the leader.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The batch's id, echoed by the leader.
    pub ctx: u64,
    /// The leader asked.
    pub leader: NodeId,
    /// The reads it covers, with their policies.
    pub reads: Vec<(ReadId, ReadPolicy)>,
    /// Ticks since it was sent: a batch unanswered for an election timeout is sent again
    /// (the request or its answer was lost).
    pub age: u64,
    /// Times it was sent; after [`MAX_SENDS`] its reads fail (the leader is heard but does
    /// not answer: a one-way link failure).
    pub sends: u32,
}

/// How many times a follower sends one batch of reads before failing them.
pub(crate) const MAX_SENDS: u32 = 3;

/// Reads waiting at a follower for a read index from the leader.
#[derive(Debug, Default)]
pub(crate) struct FollowerReads {
    /// Reads not sent yet (no leader known, or a batch is in flight).
    pub waiting: Vec<(ReadId, ReadPolicy)>,
    /// How many times the reads at the front of `waiting` were sent already (a batch
    /// put back to be sent again).
    pub resends: u32,
    /// The batch in flight, if any.
    pub in_flight: Option<Batch>,
    /// Ticks the waiting reads have gone unsent for want of a leader.
    pub unsent_ticks: u64,
    next_ctx: u64,
}

impl FollowerReads {
    /// No reads yet; batch ids start after `first_ctx`, drawn at random per start so that
    /// an answer meant for a previous run of this node (still on the wire when it
    /// restarted) matches no batch of this one: it may predate reads begun since.
    pub fn starting_at(first_ctx: u64) -> FollowerReads {
        FollowerReads {
            next_ctx: first_ctx,
            ..FollowerReads::default()
        }
    }

    /// A fresh batch id.
    pub fn next_ctx(&mut self) -> u64 {
        self.next_ctx = self.next_ctx.wrapping_add(1);
        self.next_ctx
    }

    /// Takes every read, sent or not.
    pub fn drain(&mut self) -> Vec<ReadId> {
        let mut all = self.in_flight.take().map(|b| b.reads).unwrap_or_default();
        all.append(&mut self.waiting);
        all.into_iter().map(|(id, _)| id).collect()
    }
}

/// The leader's record of when each confirmation sequence number was first sent, by tick,
/// for leases: an answer to sequence `s` proves the follower heard from the leader no
/// earlier than `s` was first sent.
#[derive(Debug, Default)]
pub(crate) struct SeqTicks {
    /// `(seq, tick)` in increasing order; one entry per sequence number in use.
    sent: VecDeque<(u64, u64)>,
}

impl SeqTicks {
    /// Sequence number `seq` starts being sent at `tick`; entries older than `horizon`
    /// ticks can no longer hold a lease and are dropped (the newest one is kept).
    pub fn record(&mut self, seq: u64, tick: u64, horizon: u64) {
        self.sent.push_back((seq, tick));
        let oldest = tick.saturating_sub(horizon);
        while self.sent.len() > 1 && self.sent.get(1).is_some_and(|&(_, t)| t <= oldest) {
            self.sent.pop_front();
        }
    }

    /// The tick at which `seq` was first sent, if it is recent enough to be known.
    pub fn tick_of(&self, seq: u64) -> Option<u64> {
        let i = self.sent.partition_point(|&(s, _)| s <= seq);
        let (s, t) = *self.sent.get(i.checked_sub(1)?)?;
        // Only an exact match proves when the answered message left.
        (s == seq).then_some(t)
    }

    /// Forgets everything (a new term: no answer from the old one counts).
    pub fn clear(&mut self) {
        self.sent.clear();
    }
}
