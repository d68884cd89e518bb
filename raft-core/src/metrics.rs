//! Metrics of one node: where it stands (role, term, indexes, each follower's lag), what it
//! has done (counters), and how long its work takes (latency histograms).
//!
//! [`RaftNode::metrics`](crate::RaftNode::metrics) returns the latest snapshot and
//! [`RaftNode::watch_metrics`](crate::RaftNode::watch_metrics) wakes on each new one. The
//! node publishes a snapshot at most once per tick, so collecting costs the hot path only
//! counter increments and one clock read per proposal, log write and apply batch.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::message::{Message, MessageBody};
use crate::progress::ReplicationState;
use crate::read::ReadCounts;
use crate::types::{LogIndex, NodeId, Role, Term};

/// Upper bounds of the latency buckets, in seconds (Prometheus's `le`), 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The slot of `d` in a histogram's counts: the first bound it does not exceed, or the
/// last slot (above every bound).
fn bucket_of(d: Duration) -> usize {
    let secs = d.as_secs_f64();
    LATENCY_BUCKETS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative); the last slot counts those
    /// above every bound.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// Observations in all.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_secs: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&mut self, d: Duration) {
        self.counts[bucket_of(d)] += 1;
        self.count += 1;
        self.sum_secs += d.as_secs_f64();
    }

    /// `(upper bound, observations at or below it)` for each bound, cumulative, as
    /// Prometheus exposes them (the `+Inf` bucket is [`count`](Histogram::count)).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BUCKETS
            .iter()
            .zip(self.counts)
            .scan(0, |acc, (&le, n)| {
                *acc += n;
                Some((le, *acc))
            })
    }

    /// The bound below which a fraction `q` of the observations fall (an estimate: the
    /// upper bound of the bucket that holds the `q`-th observation); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        self.cumulative()
            .find(|&(_, n)| n >= rank)
            .map(|(le, _)| le)
            .or(Some(f64::INFINITY))
    }
}

/// A [`Histogram`] that tasks record into without a lock (relaxed atomic counters), and
/// the driver reads once per tick.
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    counts: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: std::sync::atomic::AtomicU64,
    sum_nanos: std::sync::atomic::AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts[bucket_of(d)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// What was recorded so far (each counter read on its own: a snapshot taken while a
    /// task records may be one observation apart between buckets and count).
    pub(crate) fn snapshot(&self) -> Histogram {
        use std::sync::atomic::Ordering::Relaxed;
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            count: self.count.load(Relaxed),
            sum_secs: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// The kinds of Raft message, for counting traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// RequestVote (PreVote probes included).
    RequestVote,
    /// Answers to RequestVote.
    VoteResponse,
    /// AppendEntries (heartbeats included).
    AppendEntries,
    /// Answers to AppendEntries.
    AppendResponse,
    /// InstallSnapshot chunks.
    InstallSnapshot,
    /// Answers to InstallSnapshot chunks.
    SnapshotResponse,
    /// Leadership transfer's TimeoutNow.
    TimeoutNow,
    /// A follower's read-index request.
    ReadIndex,
    /// The leader's answer to one.
    ReadIndexResponse,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 9] = [
        MessageKind::RequestVote,
        MessageKind::VoteResponse,
        MessageKind::AppendEntries,
        MessageKind::AppendResponse,
        MessageKind::InstallSnapshot,
        MessageKind::SnapshotResponse,
        MessageKind::TimeoutNow,
        MessageKind::ReadIndex,
        MessageKind::ReadIndexResponse,
    ];

    /// The kind of `body`.
    pub fn of(body: &MessageBody) -> MessageKind {
        match body {
            MessageBody::RequestVote(_) => MessageKind::RequestVote,
            MessageBody::VoteResponse(_) => MessageKind::VoteResponse,
            MessageBody::AppendEntries(_) => MessageKind::AppendEntries,
            MessageBody::AppendResponse(_) => MessageKind::AppendResponse,
            MessageBody::InstallSnapshot(_) => MessageKind::InstallSnapshot,
            MessageBody::SnapshotResponse(_) => MessageKind::SnapshotResponse,
            MessageBody::TimeoutNow => MessageKind::TimeoutNow,
            MessageBody::ReadIndex(_) => MessageKind::ReadIndex,
            MessageBody::ReadIndexResponse(_) => MessageKind::ReadIndexResponse,
        }
    }

    /// A lower-case name, for labels.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::RequestVote => "request_vote",
            MessageKind::VoteResponse => "vote_response",
            MessageKind::AppendEntries => "append_entries",
            MessageKind::AppendResponse => "append_response",
            MessageKind::InstallSnapshot => "install_snapshot",
            MessageKind::SnapshotResponse => "snapshot_response",
            MessageKind::TimeoutNow => "timeout_now",
            MessageKind::ReadIndex => "read_index",
            MessageKind::ReadIndexResponse => "read_index_response",
        }
    }
}

/// Messages of one kind, and the payload they carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages.
    pub messages: u64,
    /// Payload bytes: the commands of AppendEntries' entries and the data of snapshot
    /// chunks (framing and headers are the transport's; its own counters have them).
    pub payload_bytes: u64,
}

impl Traffic {
    fn count(&mut self, msg: &Message) {
        self.messages += 1;
        self.payload_bytes += match &msg.body {
            MessageBody::AppendEntries(a) => {
                a.entries.iter().map(|e| e.payload.size() as u64).sum()
            }
            MessageBody::InstallSnapshot(s) => s.data.len() as u64,
            _ => 0,
        };
    }
}

/// What a node has done since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands proposed to this node (accepted or not).
    pub proposals: u64,
    /// Proposals committed and applied, answered to their callers.
    pub proposals_committed: u64,
    /// Entries applied to the state machine (from any leader).
    pub entries_applied: u64,
    /// Reads served, by path.
    pub reads: ReadCounts,
    /// Elections this node started (PreVote rounds not counted).
    pub elections_started: u64,
    /// Elections it won.
    pub elections_won: u64,
    /// Times it learned of a new leader (itself included).
    pub leader_changes: u64,
    /// Snapshots it built from its state machine.
    pub snapshots_built: u64,
    /// Snapshots it finished sending to followers.
    pub snapshots_sent: u64,
    /// Snapshots it installed from a leader.
    pub snapshots_installed: u64,
    /// Messages sent, by kind.
    pub sent: TrafficByKind,
    /// Messages received, by kind.
    pub received: TrafficByKind,
    /// Messages sent, by destination (what a picture of the cluster draws as traffic), in
    /// the order destinations were first sent to.
    pub sent_to: Vec<(NodeId, u64)>,
}

/// Traffic of each [`MessageKind`]: a fixed table, so counting a message costs an index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficByKind([Traffic; MessageKind::ALL.len()]);

impl TrafficByKind {
    /// The traffic of `kind`.
    pub fn get(&self, kind: MessageKind) -> Traffic {
        self.0[kind as usize]
    }

    /// Every kind with its traffic.
    pub fn iter(&self) -> impl Iterator<Item = (MessageKind, Traffic)> + '_ {
        MessageKind::ALL.iter().map(|&k| (k, self.0[k as usize]))
    }

    fn count(&mut self, msg: &Message) {
        self.0[MessageKind::of(&msg.body) as usize].count(msg);
    }
}

impl Counters {
    /// Counts a message sent.
    pub fn sent(&mut self, msg: &Message) {
        self.sent.count(msg);
        match self.sent_to.iter_mut().find(|(to, _)| *to == msg.to) {
            Some((_, n)) => *n += 1,
            None => self.sent_to.push((msg.to, 1)),
        }
    }

    /// Counts a message received.
    pub fn received(&mut self, msg: &Message) {
        self.received.count(msg);
    }
}

/// One follower as its leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The highest index known replicated on it.
    pub match_index: LogIndex,
    /// How far behind the leader's last entry it is, in entries.
    pub lag: u64,
    /// How the leader replicates to it now.
    pub state: ReplicationState,
}

/// A snapshot of a node's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index applied to the state machine.
    pub applied_index: LogIndex,
    /// The last index in the log.
    pub last_log_index: LogIndex,
    /// The first index still in the log.
    pub first_log_index: LogIndex,
    /// The last index the latest snapshot covers (0 without one).
    pub snapshot_index: LogIndex,
    /// The latest snapshot's size, in bytes (0 if none since start).
    pub snapshot_bytes: u64,
    /// Encoded size of the log's entries.
    pub log_bytes: u64,
    /// Voters of the effective configuration.
    pub voters: Vec<NodeId>,
    /// Learners of the effective configuration.
    pub learners: Vec<NodeId>,
    /// On a leader: each follower's replication.
    pub peers: BTreeMap<NodeId, PeerMetrics>,
    /// What the node has done.
    pub counters: Counters,
    /// From a proposal reaching the node to its entry being committed and handed to the
    /// state machine (leader only).
    pub commit_latency: Histogram,
    /// Durable log writes (one per group commit: `LogStore::write_batch`).
    pub fsync_latency: Histogram,
    /// State machine `apply` calls (one per batch of committed entries).
    pub apply_latency: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_quantiles_land_on_bounds() {
        let mut h = Histogram::default();
        for ms in [0.03, 0.2, 0.2, 3.0, 20_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        assert_eq!(h.count, 5);
        let buckets: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(buckets[0], (0.000_05, 1));
        assert_eq!(buckets[2], (0.000_25, 3));
        assert_eq!(
            buckets.last(),
            Some(&(10.0, 4)),
            "20 s is above every bound"
        );
        assert_eq!(h.quantile(0.5), Some(0.000_25));
        assert_eq!(h.quantile(0.8), Some(0.005));
        assert_eq!(h.quantile(1.0), Some(f64::INFINITY));
        assert!((h.sum_secs - 20.003_43).abs() < 1e-9);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
