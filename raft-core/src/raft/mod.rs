//! The sans-IO Raft core: a deterministic state machine from inputs to [`Action`]s.
//!
//! Inputs are method calls: [`RaftCore::tick`], [`RaftCore::step`] (a received message),
//! [`RaftCore::propose`], [`RaftCore::read_index`], [`RaftCore::persisted`] (a storage
//! completion) and [`RaftCore::applied`]. Outputs accumulate and are taken with
//! [`RaftCore::take_actions`]. Nothing here blocks, awaits, reads a clock or does I/O.
//!
//! Durability is ordered by [`WriteId`]: every [`PersistOp`] gets the next id, the driver
//! executes them in order and reports the highest finished id with
//! [`RaftCore::persisted`]. Messages that promise durable state (vote grants, append
//! acknowledgements, anything sent after a term change) are held inside the core until the
//! writes issued before them are reported durable, so a driver cannot break the rule by
//! sending too early.

mod election;
mod membership;
mod read;
mod replication;
mod snapshot;
mod transfer;

pub use membership::{ChangeError, MembershipChange};
pub use transfer::TransferError;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::error::FatalError;
use crate::log::{EntryMeta, RaftLog};
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ReplicationState};
use crate::read::{FollowerReads, ReadCounts, ReadId, ReadQueue, SeqTicks};
use crate::types::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term,
};

/// Orders writes: the driver must make writes durable in increasing `WriteId` order.
pub type WriteId = u64;

/// A write the driver must make durable, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// Save the term and vote.
    HardState(HardState),
    /// Remove log entries from this index on (a conflicting suffix).
    Truncate(LogIndex),
    /// Append these contiguous entries after the current last entry.
    Append(Vec<Entry>),
    /// Remove entries up to and including this one (log compaction behind a snapshot).
    Purge(LogId),
    /// Save a snapshot received from the leader in the snapshot store (begin, write,
    /// finish), before any later write of the log.
    Snapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// Its bytes.
        data: Bytes,
    },
}

/// Something the driver must do on the core's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make `op` durable, after every lower id, then report it with [`RaftCore::persisted`].
    Persist {
        /// The write's position in the durability order.
        id: WriteId,
        /// The write itself.
        op: PersistOp,
    },
    /// Send a message. It may be sent at once: the core holds back messages that must wait.
    Send(Message),
    /// Apply these committed, durable entries to the state machine, in order, then report
    /// progress with [`RaftCore::applied`].
    Apply(Vec<Entry>),
    /// The read may be served once the state machine has applied `index`.
    ReadReady {
        /// The caller's id for the read.
        id: ReadId,
        /// The read index: serve the read once `applied >= index`.
        index: LogIndex,
    },
    /// The read cannot be served here: leadership was lost or never held.
    ReadFailed {
        /// The caller's id for the read.
        id: ReadId,
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// Take a snapshot: ask the state machine for its state at its applied index `i`,
    /// write it to the snapshot store with [`RaftCore::snapshot_meta_at`]`(i)` as its
    /// metadata, then report [`RaftCore::snapshot_built`] (or
    /// [`RaftCore::snapshot_build_failed`]). Writing must not hold up the other actions.
    BuildSnapshot,
    /// Read the latest snapshot from the snapshot store and hand it over with
    /// [`RaftCore::snapshot_loaded`] (or [`RaftCore::snapshot_load_failed`]): a follower
    /// needs entries that were compacted.
    LoadSnapshot,
    /// Read entries in `range` from the log store (they left the core's memory, see
    /// [`Config::log_cache_bytes`]), stopping once they pass `max_bytes` as
    /// [`LogStore::entries`](crate::LogStore::entries) does, and hand them over with
    /// [`RaftCore::entries_read`] (or [`RaftCore::entries_read_failed`]): the follower `to`
    /// needs them. Reading must not hold up the other actions.
    ReadEntries {
        /// The follower the entries are for.
        to: NodeId,
        /// The indexes to read.
        range: std::ops::Range<LogIndex>,
        /// Stop after about this many bytes.
        max_bytes: usize,
    },
    /// Replace the state machine's state with this snapshot's (installed from the leader and
    /// durable), before applying any later entry.
    RestoreSnapshot {
        /// What the snapshot covers: afterwards the applied index is its last index.
        meta: SnapshotMeta,
        /// Its bytes.
        data: Bytes,
    },
    /// The core stopped for good (fail-stop); it is always the last action. The driver
    /// stops too and reports the error; a restart recovers from durable state.
    Stop(FatalError),
}

/// What a freshly started core is restored from.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted term and vote.
    pub hard_state: HardState,
    /// The latest snapshot's metadata, if there is one.
    pub snapshot: Option<SnapshotMeta>,
    /// The last entry the log store purged (`LogState::last_purged`); at or below the
    /// snapshot's last entry.
    pub last_purged: LogId,
    /// The stored entries after `last_purged` that the core need not hold in memory, by id
    /// and size: only entries the snapshot covers may be left out this way (the core reads
    /// them from the log store when a follower needs them). May be empty.
    pub stored: Vec<EntryMeta>,
    /// Every other stored entry, contiguous and directly after `stored` (or `last_purged`);
    /// the snapshot's last entry is among `stored` or these, or is `last_purged` itself.
    pub entries: Vec<Entry>,
    /// The state machine's last applied index (entries up to it are not applied again).
    pub applied: LogIndex,
    /// The configuration to use when neither the snapshot nor the log holds one (a new
    /// cluster). Every founding member must be given the same one.
    pub bootstrap: Membership,
}

/// A snapshot of the core's state, for status reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Highest index handed to the state machine.
    pub applied_index: LogIndex,
    /// The last entry of the log.
    pub last_log_id: LogId,
    /// The first index still in the log.
    pub first_log_index: LogIndex,
    /// The last index covered by the latest snapshot (0 without one).
    pub snapshot_index: LogIndex,
    /// Encoded size of the log's entries (from the first index on).
    pub log_bytes: usize,
    /// Encoded size of the entries held in memory (bounded by
    /// [`Config::log_cache_bytes`] once applied).
    pub log_cache_bytes: usize,
    /// Size of the latest snapshot taken or installed since start (0 if none yet).
    pub snapshot_bytes: u64,
    /// On a leader: bytes of the snapshot held in memory to stream to followers that need
    /// it (0 once no transfer needs it).
    pub snapshot_sending_bytes: u64,
    /// The last index known durable locally.
    pub stable_index: LogIndex,
    /// The effective configuration.
    pub membership: Membership,
    /// Whether this node was removed from the cluster: a committed configuration no
    /// longer names it, after one that did. A removed node never campaigns; it may as well
    /// stop (see [`RaftError::Removed`](crate::RaftError::Removed)).
    pub removed: bool,
    /// On a leader: each follower's match index and replication state.
    pub peers: BTreeMap<NodeId, (LogIndex, ReplicationState)>,
    /// Reads served since start, by path.
    pub reads: ReadCounts,
}

/// Why a proposal or read was refused: this node is not the leader. The one "not the
/// leader" error of the crate; [`RaftError::NotLeader`](crate::RaftError::NotLeader)
/// carries it too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this node knows of, if any. Cleared once the node has not heard from it
    /// for an election timeout, so a dead leader is not hinted at for long.
    pub leader_hint: Option<NodeId>,
    /// Where that leader is reached, from the membership's member addresses (for the TCP
    /// transport, its `IP:PORT`, which also serves clients).
    pub leader_address: Option<String>,
}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.leader_hint, &self.leader_address) {
            (Some(l), Some(a)) => write!(f, "not the leader; the leader is {l} at {a}"),
            (Some(l), None) => write!(f, "not the leader; the leader is {l}"),
            (None, _) => write!(
                f,
                "not the leader, and no leader is known yet; retry shortly"
            ),
        }
    }
}

/// Why a proposal was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader appends to the log.
    NotLeader(NotLeader),
    /// A command is larger than [`Config::max_entry_bytes`].
    TooLarge {
        /// The command's size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The core has stopped after a fatal error.
    Stopped,
}

impl From<NotLeader> for ProposeError {
    fn from(e: NotLeader) -> Self {
        ProposeError::NotLeader(e)
    }
}

/// The Raft algorithm for one node, without I/O.
#[derive(Debug)]
pub struct RaftCore {
    id: NodeId,
    cfg: Config,
    role: Role,
    hard: HardState,
    leader: Option<NodeId>,
    log: RaftLog,
    /// Configurations found in the log after the snapshot, by index (the last one rules).
    config_log: Vec<(LogIndex, Membership)>,
    /// The configuration at the snapshot (or the bootstrap one).
    base_config: Membership,
    rng: ChaCha8Rng,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_timeout: u64,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    /// Sequence number stamped on every AppendEntries this leader sends (ReadIndex).
    seq: u64,
    /// Nothing has been sent with `seq` yet (a read registered now may share it).
    seq_fresh: bool,
    /// When each recent `seq` was first sent, for the lease.
    seq_ticks: SeqTicks,
    /// Ticks since start: the leader's clock for its lease.
    ticks: u64,
    /// This leader sent `TimeoutNow` in its term: no lease until the term ends.
    lease_forfeited: bool,
    /// Started less than an election timeout ago: a leader may hold a lease counting on
    /// this node's silence, so it ignores candidates as if it had just heard from one.
    just_started: bool,
    reads: ReadQueue,
    follower_reads: FollowerReads,
    read_counts: ReadCounts,
    /// Elections started (not PreVote rounds) and won, for metrics.
    elections: (u64, u64),
    apply_sent: LogIndex,
    applied: LogIndex,
    last_write: WriteId,
    persisted_write: WriteId,
    /// The latest hard-state write: nothing in a new term leaves before it is durable.
    hard_state_write: WriteId,
    /// Appends in flight to storage: when `WriteId` is durable, so is the `LogId`.
    pending_stable: VecDeque<(WriteId, LogId)>,
    /// Messages waiting for the writes issued before them to become durable.
    held: VecDeque<(WriteId, Message)>,
    actions: Vec<Action>,
    /// Set once the core has stopped (fail-stop); every input is ignored from then on.
    fatal: Option<FatalError>,
    /// A [`Action::BuildSnapshot`] is outstanding.
    snapshot_building: bool,
    /// Size of the latest snapshot taken or installed since start.
    snapshot_bytes: u64,
    /// A [`Action::LoadSnapshot`] is outstanding.
    snapshot_loading: bool,
    /// On a leader: the snapshot loaded for followers that need it.
    snapshot_source: Option<(SnapshotMeta, Bytes)>,
    /// On a follower: the leader's snapshot being received.
    incoming: Option<snapshot::Incoming>,
    /// An installed snapshot waiting for its write to be durable before the state machine
    /// is reset from it.
    restore_pending: Option<(WriteId, SnapshotMeta, Bytes)>,
    /// On a leader: a leadership transfer in progress.
    transfer: Option<transfer::Transfer>,
    /// On a leader: some follower tracked is a server a committed change removed.
    retiring: bool,
    /// On a leader: the latest configuration entry known committed when followers were
    /// last tracked.
    settled_config: LogIndex,
    /// Bumped whenever the servers this node must reach may have changed.
    peers_epoch: u64,
}

impl RaftCore {
    /// A core restored from `init`. `seed` drives every random choice (election jitter).
    pub fn new(id: NodeId, cfg: Config, init: InitialState, seed: u64) -> RaftCore {
        let snapshot_last = init
            .snapshot
            .as_ref()
            .map(|s| s.last_log_id)
            .unwrap_or_default();
        let base_config = init
            .snapshot
            .map(|s| s.membership)
            .unwrap_or(init.bootstrap);
        let config_log = init
            .entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index(), m.clone())),
                _ => None,
            })
            .collect();
        let restored = RaftLog::restore(init.last_purged, snapshot_last, init.stored, init.entries);
        let (mut log, bad_restore) = match restored {
            Ok(log) => (log, None),
            Err(why) => (
                RaftLog::restore(snapshot_last, snapshot_last, Vec::new(), Vec::new())
                    .expect("invariant: an empty log at the snapshot is consistent"),
                Some(why),
            ),
        };
        // Entries the state machine already applied are committed.
        let applied = init.applied.max(snapshot_last.index).min(log.last_index());
        log.committed = applied;
        log.evict(applied, cfg.log_cache_bytes);
        let mut core = RaftCore {
            id,
            role: Role::Follower,
            hard: init.hard_state,
            leader: None,
            log,
            config_log,
            base_config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_timeout_min,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            seq: 0,
            seq_fresh: false,
            seq_ticks: SeqTicks::default(),
            ticks: 0,
            lease_forfeited: false,
            // A node that never persisted a term never answered a leader either.
            just_started: init.hard_state.term.0 > 0,
            reads: ReadQueue::default(),
            follower_reads: FollowerReads::default(),
            read_counts: ReadCounts::default(),
            elections: (0, 0),
            apply_sent: applied,
            applied,
            last_write: 0,
            persisted_write: 0,
            hard_state_write: 0,
            pending_stable: VecDeque::new(),
            held: VecDeque::new(),
            actions: Vec::new(),
            fatal: None,
            snapshot_building: false,
            snapshot_bytes: 0,
            snapshot_loading: false,
            snapshot_source: None,
            incoming: None,
            restore_pending: None,
            transfer: None,
            retiring: false,
            settled_config: LogIndex(0),
            peers_epoch: 0,
            cfg,
        };
        core.role = core.follower_role();
        core.reset_election_timer();
        core.follower_reads = FollowerReads::starting_at(core.rng.gen());
        if let Some(why) = bad_restore {
            core.halt(FatalError::Restore(why));
        }
        core
    }

    // ----- inputs ---------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.follower_reads_tick();
                self.tick_election();
            }
        }
    }

    /// Handles a message received from a peer.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.id || msg.from == self.id || self.fatal.is_some() {
            return;
        }
        if !self.step_term(&msg) {
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(msg),
            Role::Candidate | Role::PreCandidate => self.step_candidate(msg),
            Role::Follower | Role::Learner => self.step_follower(msg),
        }
        if matches!(self.role, Role::Follower | Role::Learner) {
            // The leader may have changed: reads waiting here go to the one we know now.
            self.send_follower_reads();
        }
    }

    /// Appends client commands to the log (leader only) and starts replicating them.
    /// Returns the id of the last new entry. A batch with a command larger than
    /// [`Config::max_entry_bytes`] is refused whole.
    pub fn propose(
        &mut self,
        commands: impl IntoIterator<Item = Bytes>,
    ) -> Result<LogId, ProposeError> {
        self.propose_payloads(commands.into_iter().map(EntryPayload::Command))
    }

    /// The driver finished every write up to and including `upto`.
    pub fn persisted(&mut self, upto: WriteId) {
        if upto <= self.persisted_write || self.fatal.is_some() {
            return;
        }
        if upto > self.last_write {
            // Trusting an unknown write could release promises about data never written.
            return self.halt(FatalError::UnknownWrite {
                reported: upto,
                issued: self.last_write,
            });
        }
        self.persisted_write = upto;
        while let Some(&(id, log_id)) = self.pending_stable.front() {
            if id > upto {
                break;
            }
            self.log.mark_stable(log_id);
            self.pending_stable.pop_front();
        }
        while self.held.front().is_some_and(|(id, _)| *id <= upto) {
            if let Some((_, msg)) = self.held.pop_front() {
                self.actions.push(Action::Send(msg));
            }
        }
        self.release_restore(upto);
        match self.role {
            Role::Leader => self.maybe_commit(),
            // Our own vote may be what decides the election.
            Role::Candidate => self.tally_votes(),
            _ => {}
        }
        self.maybe_apply();
    }

    /// The driver could not make write `id` durable. The core stops (fail-stop): it drops
    /// every message still waiting for that write, so nothing that promises it is ever sent,
    /// and emits [`Action::Stop`] as its last action.
    pub fn persist_failed(&mut self, id: WriteId, error: impl std::fmt::Display) {
        if self.fatal.is_none() {
            self.halt(FatalError::WriteFailed {
                id,
                error: error.to_string(),
            });
        }
    }

    /// The state machine has applied every entry up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        self.applied = self.applied.max(index.min(self.apply_sent));
        self.maybe_snapshot();
    }

    /// Takes the actions produced so far, in the order they must be carried out. After
    /// [`Action::Stop`] nothing more is ever returned.
    pub fn take_actions(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.actions);
        if self.fatal.is_some() {
            // A halt deep inside an input returns to callers that may still push actions.
            if let Some(stop) = actions.iter().position(|a| matches!(a, Action::Stop(_))) {
                actions.truncate(stop + 1);
            } else {
                actions.clear();
            }
        }
        actions
    }

    // ----- queries --------------------------------------------------------------------

    /// Why the core stopped, if it did.
    pub fn fatal(&self) -> Option<&FatalError> {
        self.fatal.as_ref()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// The effective configuration (the latest one in the log).
    pub fn membership(&self) -> &Membership {
        self.config_log
            .last()
            .map(|(_, m)| m)
            .unwrap_or(&self.base_config)
    }

    /// The entry at `index`, if held in memory by the core.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.get(index)
    }

    /// The first index still held in the log (entries before it were compacted).
    pub fn first_log_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// The id of the entry at `index`, if the log still knows it (the last purged entry
    /// included).
    pub fn log_id_at(&self, index: LogIndex) -> Option<LogId> {
        self.log.log_id_at(index)
    }

    /// The id of the last log entry.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_log_id()
    }

    /// A full status report.
    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            id: self.id,
            role: self.role,
            term: self.hard.term,
            voted_for: self.hard.voted_for,
            leader: self.leader,
            commit_index: self.log.committed,
            applied_index: self.applied,
            last_log_id: self.log.last_log_id(),
            first_log_index: self.log.first_index(),
            snapshot_index: self.log.snapshot_last().index,
            log_bytes: self.log.bytes(),
            log_cache_bytes: self.log.cached_bytes(),
            snapshot_bytes: self.snapshot_bytes,
            snapshot_sending_bytes: self
                .snapshot_source
                .as_ref()
                .map_or(0, |(_, data)| data.len() as u64),
            stable_index: self.log.stable,
            membership: self.membership().clone(),
            removed: self.is_removed(),
            peers: self
                .progress
                .iter()
                .map(|(&id, p)| (id, (p.match_index, p.state)))
                .collect(),
            reads: self.read_counts,
        }
    }

    /// Per-follower replication details, for diagnostics.
    pub fn debug_progress(&self) -> String {
        format!(
            "{:?} held {} writes {}/{} election {}/{}",
            self.progress,
            self.held.len(),
            self.persisted_write,
            self.last_write,
            self.election_elapsed,
            self.randomized_timeout
        )
    }

    // ----- shared machinery -----------------------------------------------------------

    /// Stops for good: drops every held message and every action not yet taken (a lost
    /// message or an unapplied entry is always safe; a message promising an unwritten
    /// write is not), then emits [`Action::Stop`].
    fn halt(&mut self, error: FatalError) {
        tracing::error!(node = %self.id, term = %self.hard.term, %error, "raft core stopping");
        self.held.clear();
        self.actions.clear();
        self.reads = ReadQueue::default();
        self.follower_reads = FollowerReads::default();
        self.actions.push(Action::Stop(error.clone()));
        self.fatal = Some(error);
    }

    fn not_leader(&self) -> NotLeader {
        self.not_leader_hinting(self.leader.filter(|&l| l != self.id))
    }

    /// A refusal naming `hint` as the leader, with its address from the membership.
    pub fn not_leader_hinting(&self, hint: Option<NodeId>) -> NotLeader {
        NotLeader {
            leader_hint: hint,
            leader_address: hint.and_then(|l| self.membership().addresses.get(&l).cloned()),
        }
    }

    /// Follower, or learner when this node has no vote in the configuration.
    fn follower_role(&self) -> Role {
        if self.membership().is_voter(self.id) {
            Role::Follower
        } else {
            Role::Learner
        }
    }

    /// Every other voter.
    fn voter_peers(&self) -> Vec<NodeId> {
        let me = self.id;
        let m = self.membership();
        m.members()
            .into_iter()
            .filter(|&id| id != me && m.is_voter(id))
            .collect()
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        // Section 5.2: randomized election timeouts make split votes rare.
        self.randomized_timeout = self
            .rng
            .gen_range(self.cfg.election_timeout_min..self.cfg.election_timeout_max);
    }

    /// Issues a write; returns its id.
    fn persist(&mut self, op: PersistOp) -> WriteId {
        self.last_write += 1;
        let id = self.last_write;
        if let PersistOp::Append(entries) = &op {
            if let Some(last) = entries.last() {
                self.pending_stable.push_back((id, last.log_id));
            }
        }
        self.actions.push(Action::Persist { id, op });
        id
    }

    fn save_hard_state(&mut self, hard: HardState) {
        if hard == self.hard {
            return;
        }
        self.hard = hard;
        // A term change and a vote in the same step share one write.
        if let Some(Action::Persist {
            op: PersistOp::HardState(pending),
            ..
        }) = self.actions.last_mut()
        {
            *pending = hard;
            return;
        }
        self.hard_state_write = self.persist(PersistOp::HardState(hard));
    }

    /// Sends a message stamped with our current term.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.hard.term;
        self.send_with_term(to, term, body);
    }

    /// Figure 2, "Persistent state": updated on stable storage before responding to RPCs.
    /// Only a leader's AppendEntries may overtake its own pending log appends (the leader
    /// counts itself toward a commit only once its log is durable), and never the write of
    /// its term: a leader that crashed before its term was durable could lead that term
    /// again with different entries.
    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let msg = Message {
            from: self.id,
            to,
            term,
            body,
        };
        // Read index requests and answers promise nothing about our log either.
        let may_overtake = matches!(
            msg.body,
            MessageBody::AppendEntries(_)
                | MessageBody::ReadIndex(_)
                | MessageBody::ReadIndexResponse(_)
        ) && self.persisted_write >= self.hard_state_write;
        if may_overtake || self.persisted_write == self.last_write {
            self.actions.push(Action::Send(msg));
        } else {
            self.held.push_back((self.last_write, msg));
        }
    }

    /// Hands newly committed and locally durable entries to the state machine.
    fn maybe_apply(&mut self) {
        let upto = self.log.committed.min(self.log.stable);
        // After an installed snapshot, nothing is applied before the state machine has it.
        if upto > self.apply_sent && self.fatal.is_none() && self.restore_pending.is_none() {
            let from = self.apply_sent.next();
            let entries = self.log.range(from, upto);
            if entries.len() as u64 != upto.0 - self.apply_sent.0 {
                // State Machine Safety needs every index applied, in order, exactly once.
                return self.halt(FatalError::ApplyGap { from, to: upto });
            }
            self.apply_sent = upto;
            self.actions.push(Action::Apply(entries));
            // Applied and durable: the log store serves these from now on if needed.
            self.log.evict(upto, self.cfg.log_cache_bytes);
        }
    }

    /// Appends entries to our log as a follower or leader and records configurations.
    fn note_appended(&mut self, entries: &[Entry]) {
        let before = self.config_log.len();
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.config_log.push((e.index(), m.clone()));
            }
        }
        if self.config_log.len() != before {
            self.config_changed();
        }
    }

    /// Forgets configurations whose entries were truncated away, and withdraws held
    /// acknowledgements of them.
    fn note_truncated(&mut self, from: LogIndex) {
        let before = self.config_log.len();
        self.config_log.retain(|(i, _)| *i < from);
        if self.config_log.len() != before {
            self.config_changed();
        }
        // Figure 2, "Persistent state": an acknowledgement held for durability must still be
        // true when sent; one for an entry this truncation replaced would vouch for an entry
        // no longer stored (and let the old leader count us toward committing it).
        self.held.retain(|(_, m)| match &m.body {
            MessageBody::AppendResponse(r) => match r.outcome {
                crate::message::AppendOutcome::Success { match_index } => match_index < from,
                _ => true,
            },
            _ => true,
        });
    }

    /// Becomes a follower in `term` (raising the term clears the vote).
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            self.save_hard_state(HardState {
                term,
                voted_for: None,
            });
        }
        let was_leader = self.role == Role::Leader;
        self.role = self.follower_role();
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.snapshot_source = None;
        self.transfer = None;
        if was_leader {
            self.fail_pending_reads();
        }
        self.reset_election_timer();
    }
}
