//! The vocabulary of Raft: terms, indexes, node ids, log entries and the hard state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A Raft term (section 5.1): a logical clock that only moves forward.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

/// A position in the replicated log; index 0 is the empty position before the first entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

/// The identity of one member of the cluster. Must be unique and stable across restarts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one (saturating at 0).
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// An entry's identity: its term and index travel together (section 5.3, Log Matching:
/// two entries with the same `LogId` carry the same command and have identical prefixes).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogId {
    /// The term of the leader that created the entry. Compared first, so `Ord` on `LogId`
    /// is exactly the "more up-to-date" order of section 5.4.1.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
}

impl LogId {
    /// A log id from raw numbers.
    pub fn new(term: u64, index: u64) -> LogId {
        LogId {
            term: Term(term),
            index: LogIndex(index),
        }
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.term, self.index)
    }
}

/// A cluster configuration: who votes and who only learns.
///
/// `outgoing` is set only during a joint-consensus change (section 6 of the Raft paper):
/// then decisions need a majority of `voters` *and* a majority of `outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration while a joint change is in progress.
    pub outgoing: Option<BTreeSet<NodeId>>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
    /// Where members are reached, for those that carry an address: opaque to the core,
    /// read by the transport (the TCP transport takes `HOST:PORT`). It travels in the
    /// configuration's log entry and in snapshot metadata, so a member added later is
    /// reachable without a restart. A member without one must be known to the transport
    /// some other way (for example [`Membership::new`] with peers configured by hand).
    pub addresses: BTreeMap<NodeId, String>,
}

impl Membership {
    /// A simple (non-joint) configuration of voters only.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            outgoing: None,
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
        }
    }

    /// This configuration with `address` recorded for `id`.
    pub fn with_address(mut self, id: NodeId, address: impl Into<String>) -> Membership {
        self.addresses.insert(id, address.into());
        self
    }

    /// Whether `id` has a vote in this configuration (either half of a joint one).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.as_ref().is_some_and(|o| o.contains(&id))
    }

    /// Every member that receives the log: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        if let Some(out) = &self.outgoing {
            all.extend(out.iter().copied());
        }
        all.extend(self.learners.iter().copied());
        all
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The no-op a new leader appends to commit entries of earlier terms (section 8).
    Blank,
    /// A client command, opaque to Raft.
    Command(Bytes),
    /// A new cluster configuration, effective as soon as it is appended (section 6).
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term and index of the entry.
    pub log_id: LogId,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The entry's index.
    pub fn index(&self) -> LogIndex {
        self.log_id.index
    }

    /// The entry's term.
    pub fn term(&self) -> Term {
        self.log_id.term
    }

    /// Encoded size in bytes, an upper bound on its postcard encoding: what batching budgets
    /// and frame limits count.
    pub fn size_hint(&self) -> usize {
        ENTRY_OVERHEAD + self.payload.size()
    }
}

/// Bytes an entry's encoding may add to its payload's [`EntryPayload::size`]: term and
/// index (varints of at most 10 bytes each), the payload tag and a length prefix.
pub const ENTRY_OVERHEAD: usize = 32;

impl EntryPayload {
    /// The payload's size in bytes: a command's length, or an upper bound on a
    /// configuration's encoding.
    pub fn size(&self) -> usize {
        match self {
            EntryPayload::Blank => 0,
            EntryPayload::Command(b) => b.len(),
            EntryPayload::Membership(m) => {
                let ids = m.voters.len()
                    + m.outgoing.as_ref().map_or(0, |o| o.len())
                    + m.learners.len()
                    + m.addresses.len();
                let text: usize = m.addresses.values().map(String::len).sum();
                // Each id a varint of at most 10 bytes, each set, map and string a length
                // prefix of at most 10.
                10 * ids + 10 * m.addresses.len() + text + 40
            }
        }
    }
}

/// The state every server persists before answering any RPC (Figure 2, "Persistent state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this server has seen.
    pub term: Term,
    /// Candidate that received this server's vote in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// What describes a snapshot: the last entry it covers and the configuration at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log entry the snapshot includes.
    pub last_log_id: LogId,
    /// The membership in effect at `last_log_id`.
    pub membership: Membership,
}

/// The role a server plays (section 5.1), with PreVote's pre-candidate (dissertation 9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Probing whether an election could be won, without raising its term.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Handles all client requests and replicates the log.
    Leader,
    /// Receives the log but never votes or campaigns.
    Learner,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        };
        f.write_str(s)
    }
}
