//! The messages Raft servers exchange. All are serde types; transports put them on the wire
//! with postcard.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, LogIndex, NodeId, SnapshotMeta, Term};

/// A message addressed from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's current term when it sent the message (for PreVote requests, the term
    /// the sender would campaign in).
    pub term: Term,
    /// The RPC itself.
    pub body: MessageBody,
}

/// The RPCs of the Raft paper plus PreVote, fast backtracking and leadership transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// RequestVote (Figure 2), or a PreVote probe (dissertation 9.6) when `pre_vote` is set.
    RequestVote(RequestVote),
    /// The answer to a RequestVote or PreVote.
    VoteResponse(VoteResponse),
    /// AppendEntries (Figure 2); with no entries it is a heartbeat.
    AppendEntries(AppendEntries),
    /// The answer to an AppendEntries.
    AppendResponse(AppendResponse),
    /// One chunk of InstallSnapshot (Figure 13), streamed in order.
    InstallSnapshot(InstallSnapshot),
    /// The answer to an InstallSnapshot chunk.
    SnapshotResponse(SnapshotResponse),
    /// Leadership transfer: the leader tells a caught-up follower to campaign now
    /// (dissertation 3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index, for every read waiting at the follower
    /// (dissertation 6.4).
    ReadIndex(ReadIndexRequest),
    /// The leader's answer to a [`MessageBody::ReadIndex`].
    ReadIndexResponse(ReadIndexResponse),
}

/// A follower's request for a read index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's id for this batch of reads, echoed in the answer.
    pub ctx: u64,
    /// Every read in the batch allows a lease read: a leader holding its lease may answer
    /// at once, without a round of heartbeats.
    pub lease: bool,
}

/// The leader's answer to a read index request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// Echo of the request's `ctx`.
    pub ctx: u64,
    /// The read index: serve the batch once this index is applied. `None` when the
    /// recipient is not (or no longer) the leader.
    pub index: Option<LogIndex>,
}

/// RequestVote and PreVote arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// The candidate's last log entry, for the up-to-date check of section 5.4.1.
    pub last_log_id: LogId,
    /// A PreVote probe: grants change no state on the voter.
    pub pre_vote: bool,
    /// Set when the campaign follows a leadership transfer: voters then ignore their
    /// leader lease (CheckQuorum), since the current leader asked for this election.
    pub transfer: bool,
}

/// The answer to a RequestVote or PreVote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether the vote (or pre-vote) was granted.
    pub granted: bool,
    /// Echoes the request's `pre_vote` flag.
    pub pre_vote: bool,
}

/// AppendEntries arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The entry immediately preceding `entries`, for the consistency check.
    pub prev_log_id: LogId,
    /// Entries to store (empty for a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// A leader-local sequence number, echoed in the response; ReadIndex uses it to know
    /// which round of contact a follower has acknowledged.
    pub seq: u64,
}

/// The answer to an AppendEntries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// Echo of the request's `seq`.
    pub seq: u64,
    /// Success and the matching index, or a rejection with a backtracking hint.
    pub outcome: AppendOutcome,
}

/// Whether an AppendEntries was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log now matches the leader's up to and including `match_index`,
    /// and that prefix is durable on the follower.
    Success {
        /// Highest index known to match the leader's log.
        match_index: LogIndex,
    },
    /// The consistency check failed at `rejected_prev`.
    Conflict {
        /// The `prev_log_id.index` of the rejected request (lets the leader drop stale
        /// rejections).
        rejected_prev: LogIndex,
        /// The term of the follower's entry at `rejected_prev`, if it has one.
        conflict_term: Option<Term>,
        /// The first index of `conflict_term` in the follower's log or, when the
        /// follower's log is too short, its last index + 1.
        conflict_index: LogIndex,
    },
}

/// One chunk of a snapshot being installed on a follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Byte offset of this chunk within the snapshot.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The answer to an InstallSnapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The snapshot the chunk belonged to.
    pub last_log_id: LogId,
    /// The number of bytes the follower has received so far (the next expected offset).
    pub next_offset: u64,
    /// Whether the snapshot is now installed.
    pub done: bool,
}

impl MessageBody {
    /// A short name for logs and message counters.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote(r) if r.pre_vote => "PreVote",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::VoteResponse(r) if r.pre_vote => "PreVoteResponse",
            MessageBody::VoteResponse(_) => "VoteResponse",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendResponse(_) => "AppendResponse",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::SnapshotResponse(_) => "SnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex(_) => "ReadIndex",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResponse",
        }
    }
}
