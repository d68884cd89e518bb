//! Tunables, validated once at startup.

use std::time::Duration;

use crate::error::ConfigError;
use crate::read::ReadPolicy;
use crate::types::ENTRY_OVERHEAD;

/// Bytes a message adds around its entries: addresses, term, previous log id, commit index,
/// sequence number and length prefixes, as varints.
const MESSAGE_OVERHEAD: usize = 128;

/// Configuration of a Raft node. Times in the core are counted in ticks; the node turns
/// `tick_interval` of wall time into one tick.
///
/// # Choosing timeouts
///
/// What the defaults give: a tick of 50 ms, an election timeout drawn from 10–20 ticks
/// (0.5–1 s) and a heartbeat every 2 ticks (100 ms).
/// - **Failover**: after a leader dies, followers notice within one election timeout
///   (0.5–1 s), then a PreVote round and a vote round take two round trips plus a durable
///   vote: a new leader in about 0.6–1.2 s on a LAN. Clients told "not the leader" by a
///   follower stop being sent to the dead leader at the same moment.
/// - **Heartbeat traffic**: each follower gets 10 small AppendEntries a second when idle
///   (about 100 bytes each, plus the replies), so about 2 KB/s per follower; writes
///   replace heartbeats while they flow.
/// - **Rules of thumb** (section 5.6 of the Raft paper: broadcast time ≪ election timeout
///   ≪ time between failures): keep `election_timeout_min` at least 10× a round trip plus
///   an fsync of your disk, or slow disks and GC pauses cause needless elections; keep
///   `heartbeat_interval` at most a fifth of `election_timeout_min`; keep the spread
///   `election_timeout_max - election_timeout_min` at least as wide as the minimum so that
///   split votes are rare. Scale by changing `tick_interval` (a WAN cluster: 200–500 ms)
///   rather than the tick counts, which are what the simulator tests.
/// - **Lease reads** shorten as `lease_drift_ticks` grows; see [`Config::lease_ticks`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Wall time of one tick (node only; the core never reads a clock).
    pub tick_interval: Duration,
    /// Lower bound of the randomized election timeout, in ticks (section 5.2).
    pub election_timeout_min: u64,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    pub election_timeout_max: u64,
    /// Ticks between heartbeats from the leader. Must be well below the election timeout.
    pub heartbeat_interval: u64,
    /// Most entries in one AppendEntries.
    pub max_entries_per_append: usize,
    /// Approximate most payload bytes in one AppendEntries (one entry is always allowed).
    pub max_bytes_per_append: usize,
    /// Most AppendEntries in flight to one follower in replicate state (pipelining window).
    pub max_inflight: usize,
    /// Largest command accepted by a proposal, in bytes; larger ones are refused with a
    /// typed error (etcd's `--max-request-bytes`). Together with `max_bytes_per_append` it
    /// bounds every AppendEntries, which must fit the transport's frame limit
    /// (checked at start, see [`Config::max_append_bytes`]).
    pub max_entry_bytes: usize,
    /// Take a snapshot once this many entries were applied since the last one (section 7);
    /// 0 turns the count trigger off.
    pub snapshot_threshold: u64,
    /// Also take one once the log's entries after the last snapshot pass this many bytes
    /// (so large entries do not multiply the log by the threshold); 0 turns it off.
    pub snapshot_log_bytes: usize,
    /// Bytes of applied log entries the core keeps in memory (the most recent ones); older
    /// entries stay in the log store, and a leader reads them from there for a follower
    /// that needs them. Entries not yet applied are always held.
    pub log_cache_bytes: usize,
    /// Entries kept behind a snapshot when the log is purged, so followers only slightly
    /// behind catch up from the log rather than by a snapshot.
    pub snapshot_trailing: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Run a PreVote round before raising the term (dissertation 9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers that hear from a leader ignore vote requests for that long (dissertation 6.2).
    pub check_quorum: bool,
    /// How [`RaftNode::read`](crate::RaftNode::read) makes reads linearizable (see
    /// [`ReadPolicy`]); per read with [`RaftNode::read_with`](crate::RaftNode::read_with).
    pub read_policy: ReadPolicy,
    /// The bound on clock drift that lease reads assume, in ticks: a leader's lease lasts
    /// [`Config::lease_ticks`] = `election_timeout_min - 1 - lease_drift_ticks` ticks from
    /// the moment it sent the heartbeat a quorum answered. Raise it if node clocks (tick
    /// rates) may differ by more than `lease_drift_ticks / election_timeout_min`.
    pub lease_drift_ticks: u64,
    /// How long the node lets a proposal or read wait before failing it with
    /// [`RaftError::Timeout`](crate::RaftError::Timeout) (node only). A proposal that timed
    /// out may still be applied later.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_interval: Duration::from_millis(50),
            election_timeout_min: 10,
            election_timeout_max: 20,
            heartbeat_interval: 2,
            max_entries_per_append: 1024,
            max_bytes_per_append: 1 << 20,
            max_inflight: 64,
            max_entry_bytes: 4 << 20,
            snapshot_threshold: 10_000,
            snapshot_log_bytes: 64 << 20,
            log_cache_bytes: 16 << 20,
            snapshot_trailing: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            pre_vote: true,
            check_quorum: true,
            read_policy: ReadPolicy::ReadIndex,
            lease_drift_ticks: 2,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Checks the settings against each other; the node refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| Err(ConfigError { reason });
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be greater than zero".into());
        }
        if self.election_timeout_min < 2 {
            return bad(format!(
                "election_timeout_min is {} ticks; use at least 2",
                self.election_timeout_min
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return bad(format!(
                "election_timeout_max ({}) must exceed election_timeout_min ({}) so timeouts are randomized",
                self.election_timeout_max, self.election_timeout_min
            ));
        }
        if self.heartbeat_interval == 0 || self.heartbeat_interval >= self.election_timeout_min {
            return bad(format!(
                "heartbeat_interval ({}) must be at least 1 and below election_timeout_min ({})",
                self.heartbeat_interval, self.election_timeout_min
            ));
        }
        if self.max_entries_per_append == 0 || self.max_bytes_per_append == 0 {
            return bad(
                "max_entries_per_append and max_bytes_per_append must be at least 1".into(),
            );
        }
        if self.max_inflight == 0 {
            return bad("max_inflight must be at least 1".into());
        }
        if self.max_entry_bytes == 0 {
            return bad("max_entry_bytes must be at least 1".into());
        }
        if self.snapshot_chunk_bytes == 0 {
            return bad("snapshot_chunk_bytes must be at least 1".into());
        }
        if self.read_policy == ReadPolicy::Lease && !(self.check_quorum && self.pre_vote) {
            return bad("read_policy Lease needs check_quorum and pre_vote: without them a voter the lease counts on can be moved to a new term, and vote, while the lease runs".into());
        }
        if self.read_policy == ReadPolicy::Lease && self.lease_ticks() == 0 {
            return bad(format!(
                "lease_drift_ticks ({}) leaves no lease: it must be below election_timeout_min - 1 ({})",
                self.lease_drift_ticks,
                self.election_timeout_min - 1
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be greater than zero".into());
        }
        Ok(())
    }

    /// How long a leader's lease lasts, in its ticks, from the sending of a heartbeat a
    /// quorum answered: the election timeout minus the drift bound, minus one tick because
    /// ticks count time only to the tick. 0 disables lease reads.
    pub fn lease_ticks(&self) -> u64 {
        self.election_timeout_min
            .saturating_sub(1)
            .saturating_sub(self.lease_drift_ticks)
    }

    /// An upper bound on the encoded size of any AppendEntries this configuration lets a
    /// leader send: a batch stops before `max_bytes_per_append` unless its first entry is
    /// larger, and no entry exceeds `max_entry_bytes`.
    pub fn max_append_bytes(&self) -> usize {
        let batch = self
            .max_bytes_per_append
            .max(self.max_entry_bytes + ENTRY_OVERHEAD);
        batch + MESSAGE_OVERHEAD
    }

    /// An upper bound on the encoded size of an InstallSnapshot chunk, for a cluster of up
    /// to a few hundred members (the chunk carries the snapshot's configuration).
    pub fn max_snapshot_chunk_message_bytes(&self) -> usize {
        self.snapshot_chunk_bytes + MESSAGE_OVERHEAD + 4096
    }

    /// Checks that every message this configuration allows fits a transport that carries
    /// at most `max_message_bytes` per message.
    pub fn validate_for_transport(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        let chunk = self.max_snapshot_chunk_message_bytes();
        if chunk > max_message_bytes {
            return Err(ConfigError {
                reason: format!(
                    "an InstallSnapshot chunk may take {chunk} bytes (snapshot_chunk_bytes {}), but the \
                     transport carries at most {max_message_bytes}; lower snapshot_chunk_bytes",
                    self.snapshot_chunk_bytes
                ),
            });
        }
        let needed = self.max_append_bytes();
        if needed > max_message_bytes {
            return Err(ConfigError {
                reason: format!(
                    "an AppendEntries may take {needed} bytes (max_entry_bytes {} and max_bytes_per_append {}), \
                     but the transport carries at most {max_message_bytes}; lower them or raise the transport's frame limit",
                    self.max_entry_bytes, self.max_bytes_per_append
                ),
            });
        }
        Ok(())
    }
}
