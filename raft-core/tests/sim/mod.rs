//! A deterministic simulator: many `RaftCore`s, simulated disks that persist only when the
//! simulator says so, and a simulated network that loses, delays, reorders and duplicates.
//! Everything random comes from one seed. Raft's safety properties are checked after every
//! step; a violation panics with the seed and step so the run replays exactly.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;

use bytes::Bytes;
use raft_core::message::{AppendOutcome, AppendResponse};
use raft_core::{
    Action, Config, Entry, EntryMeta, EntryPayload, HardState, InitialState, LogId, LogIndex,
    Membership, Message, MessageBody, NodeId, PersistOp, RaftCore, ReadPolicy, Role, SnapshotMeta,
    Term, WriteId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fault rates for a run. All probabilities are per step (or per message).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay in steps, uniformly in `1..=max_delay` (reordering follows from it).
    pub max_delay: u64,
    /// Probability per step of a new partition.
    pub partition: f64,
    /// Probability per step of healing every partition.
    pub heal: f64,
    /// Probability per step of crashing a node.
    pub crash: f64,
    /// Probability per step of restarting a crashed node.
    pub restart: f64,
    /// Probability per step that a pending disk write completes.
    pub disk: f64,
    /// Probability per step of a client proposal to the leader.
    pub propose: f64,
    /// Probability per step of a client read (at the leader, or at any node with
    /// `Sim::follower_reads`).
    pub read: f64,
    /// Probability that a disk write fails with an I/O error when it completes (the node
    /// then stops: fail-stop, and restarts later from what was durable).
    pub write_error: f64,
    /// Probability that a crash leaves part of the unsynced writes on disk (a prefix of
    /// them, the last possibly torn after some of its entries) rather than none.
    pub torn_crash: f64,
    /// Probability per step of a membership change proposed at the leader: add a spare
    /// node as a learner, promote a learner, remove a member (the leader included).
    pub membership: f64,
    /// Probability per step of cutting the leader off from everyone (the case leases and
    /// deposed leaders are about: a new leader is elected while the old one still acts).
    pub isolate_leader: f64,
}

impl Faults {
    /// No faults at all; every write completes in the step it is issued.
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay: 1,
            partition: 0.0,
            heal: 0.0,
            crash: 0.0,
            restart: 0.0,
            disk: 1.0,
            propose: 0.0,
            read: 0.0,
            write_error: 0.0,
            torn_crash: 0.0,
            membership: 0.0,
            isolate_leader: 0.0,
        }
    }

    /// Faults drawn at random from `rng`: every run sees a different mix.
    pub fn random(rng: &mut ChaCha8Rng) -> Faults {
        Faults {
            loss: rng.gen_range(0.0..0.15),
            duplicate: rng.gen_range(0.0..0.05),
            max_delay: rng.gen_range(1..=6),
            partition: rng.gen_range(0.0..0.02),
            heal: rng.gen_range(0.02..0.1),
            crash: rng.gen_range(0.0..0.01),
            restart: rng.gen_range(0.02..0.1),
            disk: rng.gen_range(0.3..1.0),
            propose: rng.gen_range(0.05..0.5),
            read: rng.gen_range(0.0..0.1),
            write_error: if rng.gen_bool(0.3) {
                rng.gen_range(0.0..0.01)
            } else {
                0.0
            },
            torn_crash: rng.gen_range(0.0..1.0),
            membership: 0.0,
            isolate_leader: 0.0,
        }
    }
}

/// What survives a crash: the hard state, the log after its purge point, and the latest
/// snapshot (the simulated state machine's image, see [`encode_state`]).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard: HardState,
    /// The last purged entry; `log` follows it.
    pub purged: LogId,
    pub log: Vec<Entry>,
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl Disk {
    /// The id of the durable entry at `index` (the purge point included).
    fn log_id_at(&self, index: LogIndex) -> Option<LogId> {
        if index == self.purged.index {
            return Some(self.purged);
        }
        let offset = index.0.checked_sub(self.purged.index.0 + 1)?;
        self.log.get(offset as usize).map(|e| e.log_id)
    }

    fn last_index(&self) -> LogIndex {
        self.log.last().map_or(self.purged.index, |e| e.index())
    }

    /// Whether everything up to `id` is durable here: in the log, or in the snapshot.
    fn holds(&self, id: LogId) -> bool {
        let snapshot = self.snapshot.as_ref().map(|(m, _)| m.last_log_id);
        snapshot.is_some_and(|s| s.index >= id.index) || self.log_id_at(id.index) == Some(id)
    }

    /// Part of `op` reached the disk before a crash or failure: for an append, a prefix
    /// of its entries.
    fn apply_torn(&mut self, op: &PersistOp, rng: &mut ChaCha8Rng) {
        match op {
            PersistOp::Append(entries) => {
                let keep = rng.gen_range(0..=entries.len());
                self.apply(&PersistOp::Append(entries[..keep].to_vec()));
            }
            other if rng.gen_bool(0.5) => self.apply(other),
            _ => {}
        }
    }

    fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::HardState(h) => self.hard = *h,
            PersistOp::Truncate(from) => {
                assert!(
                    from.0 > self.purged.index.0,
                    "disk truncates purged entries"
                );
                self.log
                    .truncate((from.0 - self.purged.index.0 - 1) as usize);
            }
            PersistOp::Append(entries) => {
                for e in entries {
                    assert_eq!(e.index(), self.last_index().next(), "disk append has a gap");
                    self.log.push(e.clone());
                }
            }
            PersistOp::Purge(upto) => {
                if upto.index <= self.purged.index {
                    return;
                }
                let drop = (upto.index.0 - self.purged.index.0).min(self.log.len() as u64);
                self.log.drain(..drop as usize);
                self.purged = *upto;
            }
            PersistOp::Snapshot { meta, data } => self.save_snapshot(meta, data),
        }
    }

    /// The snapshot store keeps the one with the highest last log id.
    fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &Bytes) {
        let newer = self
            .snapshot
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id < meta.last_log_id);
        if newer {
            self.snapshot = Some((meta.clone(), data.clone()));
        }
    }

    /// What the node does at start: a log that does not hold the snapshot's last entry is
    /// emptied and restarts right after it.
    fn reconcile(&mut self) {
        let Some(id) = self.snapshot.as_ref().map(|(m, _)| m.last_log_id) else {
            return;
        };
        let holds = id.index >= self.purged.index && self.log_id_at(id.index) == Some(id);
        if !holds {
            self.log.clear();
            self.purged = id;
        }
    }
}

/// The simulated state machine's state is the list of entries it applied; a snapshot of it
/// is their ids, 16 bytes each.
pub fn encode_state(applied: &[Entry]) -> Bytes {
    let mut out = Vec::with_capacity(applied.len() * 16);
    for e in applied {
        out.extend_from_slice(&e.log_id.term.0.to_le_bytes());
        out.extend_from_slice(&e.log_id.index.0.to_le_bytes());
    }
    Bytes::from(out)
}

fn decode_state(data: &[u8]) -> Vec<LogId> {
    data.chunks_exact(16)
        .map(|c| {
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
            LogId::new(word(&c[..8]), word(&c[8..]))
        })
        .collect()
}

/// One simulated server.
pub struct SimNode {
    pub core: Option<RaftCore>,
    pub disk: Disk,
    pending: VecDeque<(WriteId, PersistOp)>,
    /// Entries applied since the last restart (the state machine is volatile here).
    pub applied: Vec<Entry>,
    restarts: u64,
    /// Set when a write was reported failed: the node must send nothing more.
    write_failed: bool,
    /// A snapshot being written to the disk (lost if the node crashes first).
    building: Option<(SnapshotMeta, Bytes)>,
    /// The core asked for its latest snapshot to send it.
    loading: bool,
    /// Log reads the core asked for (entries that left its memory), oldest first.
    reading: VecDeque<(NodeId, Range<LogIndex>, usize)>,
    /// The id at each index of the node's log as last checked (index 1 first), so each
    /// input's new entries are found and checked for Log Matching as they arrive.
    shadow: Vec<LogId>,
    /// The node's commit index at the last check: entries up to it cannot change.
    shadow_commit: u64,
}

impl SimNode {
    pub fn core(&self) -> &RaftCore {
        self.core.as_ref().expect("node is up")
    }
    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }
}

struct InFlight {
    at: u64,
    msg: Message,
}

/// A client read waiting for its answer, with the commit it must reflect.
struct PendingRead {
    node: NodeId,
    must_see: LogIndex,
}

/// The simulated cluster.
pub struct Sim {
    pub seed: u64,
    pub step: u64,
    pub cfg: Config,
    pub faults: Faults,
    pub rng: ChaCha8Rng,
    pub nodes: BTreeMap<NodeId, SimNode>,
    membership: Membership,
    net: Vec<InFlight>,
    /// Links that drop everything: (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    // ----- what the checker remembers -----
    leaders: BTreeMap<Term, NodeId>,
    leader_logs: BTreeMap<NodeId, (Term, LogWindow)>,
    /// Every entry ever seen in any log: its payload and the term of the entry before it.
    seen: HashMap<LogId, (EntryPayload, Term)>,
    /// The one entry applied at each index, cluster-wide.
    pub applied_at: BTreeMap<LogIndex, Entry>,
    /// Proposals: (node, log id, payload); acknowledged once that node applied them.
    proposals: Vec<(NodeId, LogId, Bytes)>,
    pub acked: Vec<(LogId, Bytes)>,
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    pub reads_served: u64,
    /// Reads a leader served from its lease, at once.
    pub lease_reads: u64,
    /// Reads served at a follower with a read index from the leader.
    pub follower_reads_served: u64,
    /// Every read's outcome: the read index, or `None` when it failed.
    pub read_results: BTreeMap<u64, Option<LogIndex>>,
    /// The leader hint of every failed read.
    pub read_hints: BTreeMap<u64, Option<NodeId>>,
    next_command: u64,
    /// Messages sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Snapshots asked for, loaded for sending, taken, and installed from a leader.
    pub snapshots_requested: u64,
    pub snapshots_loaded: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    /// Every fail-stop so far: the node and why it stopped.
    pub stops: Vec<(NodeId, raft_core::FatalError)>,
    /// Whether a stop without a storage fault is expected (rule tests of invariants);
    /// random runs treat one as a violation.
    pub expect_fatal: bool,
    /// Whether state machines survive crashes (their applied state is durable, so a restart
    /// resumes from it rather than from the snapshot).
    pub durable_state_machines: bool,
    /// Log reads served from disk for followers.
    pub entries_read: u64,
    /// Membership changes the leader accepted.
    pub membership_changes: u64,
    /// Leaves log reads unanswered (rule tests answer them by hand, see `take_reads`).
    pub hold_reads: bool,
    /// Whether every member added after the start must carry its address (random runs
    /// add members with [`address_of`]; rule tests may add them without one).
    pub require_addresses: bool,
    /// The policy of the reads the simulator starts.
    pub read_policy: ReadPolicy,
    /// Reads start at any node that is up (followers ask the leader), not only the leader.
    pub follower_reads: bool,
    /// Each node's clock rate in ticks per thousand steps (1000 when absent): clock drift.
    pub tick_rates: BTreeMap<NodeId, u64>,
    /// Each node's fraction of a tick carried over, in thousandths.
    tick_debt: BTreeMap<NodeId, u64>,
    /// The highest index any node has known committed, ever: a linearizable read that
    /// begins now must reflect at least this.
    committed_high: LogIndex,
}

/// A broken safety property.
#[derive(Debug)]
pub struct Violation(pub String);

impl Sim {
    /// `n` nodes with ids 1..=n, all founding voters.
    pub fn new(seed: u64, n: u64, cfg: Config, faults: Faults) -> Sim {
        Sim::with_membership(seed, Membership::new((1..=n).map(NodeId)), cfg, faults)
    }

    /// One node per member of `membership` (voters and learners).
    pub fn with_membership(seed: u64, membership: Membership, cfg: Config, faults: Faults) -> Sim {
        Sim::with_spares(seed, membership, &[], cfg, faults)
    }

    /// One node per member of `membership`, and `spares`: nodes started with the same
    /// bootstrap configuration, which does not name them, so they only take part once a
    /// membership change adds them.
    pub fn with_spares(
        seed: u64,
        membership: Membership,
        spares: &[NodeId],
        cfg: Config,
        faults: Faults,
    ) -> Sim {
        let mut ids = membership.members();
        ids.extend(spares.iter().copied());
        let mut sim = Sim {
            seed,
            step: 0,
            cfg,
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: BTreeMap::new(),
            membership,
            net: Vec::new(),
            blocked: BTreeSet::new(),
            leaders: BTreeMap::new(),
            leader_logs: BTreeMap::new(),
            seen: HashMap::new(),
            applied_at: BTreeMap::new(),
            proposals: Vec::new(),
            acked: Vec::new(),
            reads: HashMap::new(),
            next_read: 0,
            reads_served: 0,
            lease_reads: 0,
            follower_reads_served: 0,
            read_results: BTreeMap::new(),
            read_hints: BTreeMap::new(),
            next_command: 0,
            sent: BTreeMap::new(),
            stops: Vec::new(),
            expect_fatal: false,
            snapshots_requested: 0,
            snapshots_loaded: 0,
            snapshots_built: 0,
            snapshots_installed: 0,
            durable_state_machines: false,
            entries_read: 0,
            membership_changes: 0,
            hold_reads: false,
            read_policy: ReadPolicy::ReadIndex,
            follower_reads: false,
            tick_rates: BTreeMap::new(),
            tick_debt: BTreeMap::new(),
            committed_high: LogIndex(0),
            require_addresses: false,
        };
        for id in ids {
            sim.add_node(id, Disk::default());
        }
        sim
    }

    /// Adds (or replaces) a node that starts from `disk`.
    pub fn add_node(&mut self, id: NodeId, disk: Disk) {
        self.nodes.insert(
            id,
            SimNode {
                core: None,
                disk,
                pending: VecDeque::new(),
                applied: Vec::new(),
                restarts: 0,
                write_failed: false,
                building: None,
                loading: false,
                reading: VecDeque::new(),
                shadow: Vec::new(),
                shadow_commit: 0,
            },
        );
        self.start(id);
    }

    /// Starts a node from its disk, as the real node does: the log reconciled with the
    /// snapshot, and the state machine restored from the snapshot when it is behind it (a
    /// volatile one always is). A random part of the log the snapshot covers is left on
    /// disk, known to the core by id only.
    fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.restarts += 1;
        node.disk.reconcile();
        let snapshot = node.disk.snapshot.clone();
        let covered = snapshot.as_ref().map_or(0, |(m, _)| m.last_log_id.index.0);
        let kept = if self.durable_state_machines {
            std::mem::take(&mut node.applied)
        } else {
            Vec::new()
        };
        let applied = match &snapshot {
            Some((meta, data)) if (kept.len() as u64) < covered => {
                self.restore_state(id, meta, data)
            }
            _ => kept,
        };
        let node = self.nodes.get_mut(&id).expect("known node");
        let in_store = covered.saturating_sub(node.disk.purged.index.0) as usize;
        let split = self.rng.gen_range(0..=in_store.min(node.disk.log.len()));
        let (stored, entries) = node.disk.log.split_at(split);
        let init = InitialState {
            hard_state: node.disk.hard,
            snapshot: snapshot.map(|(m, _)| m),
            last_purged: node.disk.purged,
            stored: stored.iter().map(EntryMeta::from).collect(),
            entries: entries.to_vec(),
            applied: LogIndex(applied.len() as u64),
            bootstrap: self.membership.clone(),
        };
        let seed = self.seed ^ (id.0 << 32) ^ node.restarts;
        node.applied = applied;
        node.pending.clear();
        node.building = None;
        node.loading = false;
        node.reading.clear();
        node.write_failed = false;
        let core = RaftCore::new(id, self.cfg.clone(), init, seed);
        // What came from the disk was checked when it became durable.
        node.shadow = (1..=core.last_log_id().index.0)
            .map(|i| core.log_id_at(LogIndex(i)).unwrap_or_default())
            .collect();
        node.shadow_commit = core.commit_index().0;
        node.core = Some(core);
        self.leader_logs.remove(&id);
    }

    /// The state a snapshot holds, checked against the committed log: every entry it
    /// covers is the one applied at that index cluster-wide (State Machine Safety for
    /// snapshots: the state equals the committed log's at the snapshot's index).
    fn restore_state(&self, id: NodeId, meta: &SnapshotMeta, data: &Bytes) -> Vec<Entry> {
        let ids = decode_state(data);
        if ids.len() as u64 != meta.last_log_id.index.0
            || ids.last().copied().unwrap_or_default() != meta.last_log_id
        {
            self.fail(format!(
                "snapshot at {id}: {} holds {} entries ending at {:?}",
                meta.last_log_id,
                ids.len(),
                ids.last()
            ));
        }
        ids.iter()
            .map(|lid| match self.applied_at.get(&lid.index) {
                Some(e) if e.log_id == *lid => e.clone(),
                other => {
                    self.fail(format!(
                        "state machine safety: {id}'s snapshot holds {lid} where {:?} was applied",
                        other.map(|e| e.log_id)
                    ));
                    unreachable!()
                }
            })
            .collect()
    }

    /// Crashes a node: everything not on its disk is lost.
    pub fn crash(&mut self, id: NodeId) {
        if trace() {
            println!("step {} crash {id}", self.step);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.core = None;
        node.pending.clear();
        node.building = None;
        node.loading = false;
        node.reading.clear();
        self.leader_logs.remove(&id);
        self.net.retain(|f| f.msg.to != id);
    }

    /// Crashes a node in the middle of writing: a prefix of its unsynced writes reached the
    /// disk (the last one possibly torn) though the core never learnt they were durable.
    pub fn crash_torn(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let reached = self.rng.gen_range(0..=node.pending.len());
        for (i, (_, op)) in node.pending.iter().take(reached).enumerate() {
            if i + 1 == reached {
                node.disk.apply_torn(op, &mut self.rng);
            } else {
                node.disk.apply(op);
            }
        }
        self.crash(id);
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        if !self.nodes[&id].is_up() {
            if trace() {
                println!("step {} restart {id}", self.step);
            }
            self.start(id);
        }
    }

    pub fn core(&self, id: u64) -> &RaftCore {
        self.nodes[&NodeId(id)].core()
    }

    pub fn core_mut(&mut self, id: u64) -> &mut RaftCore {
        self.nodes
            .get_mut(&NodeId(id))
            .and_then(|n| n.core.as_mut())
            .expect("node is up")
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    // ----- partitions ---------------------------------------------------------------

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// Splits the cluster into `group` and the rest.
    pub fn partition(&mut self, group: &[NodeId]) {
        for a in self.ids() {
            for b in self.ids() {
                if group.contains(&a) != group.contains(&b) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    // ----- driving ------------------------------------------------------------------

    /// Runs the core's input, then carries out its actions.
    pub fn with_core<R>(&mut self, id: NodeId, f: impl FnOnce(&mut RaftCore) -> R) -> Option<R> {
        let node = self.nodes.get_mut(&id)?;
        let core = node.core.as_mut()?;
        let was_leader = core.role() == Role::Leader;
        let r = f(core);
        let now_leader = core.role() == Role::Leader;
        self.committed_high = self.committed_high.max(core.commit_index());
        self.check_new_entries(id);
        if now_leader && !was_leader {
            self.on_new_leader(id);
        }
        self.drain(id);
        // A perfect disk finishes writes at once (after the batch, so actions keep order).
        if self.faults.disk >= 1.0 && !self.nodes[&id].pending.is_empty() {
            self.complete_writes(id, usize::MAX);
        }
        if self.faults.disk >= 1.0 {
            self.snapshot_io(id);
        }
        Some(r)
    }

    /// Log Matching at every input, incrementally: each entry that enters a node's log is
    /// checked against every entry seen with its id (same payload, same previous term). By
    /// induction on the index, two logs holding an entry with the same id then agree on
    /// every entry before it. Every index above the node's commit index at the previous
    /// check is compared with what it held then (a committed entry never changes: the core
    /// refuses to truncate one), so no new entry is missed whatever an input truncated. An
    /// entry enters a log only by an input, before it can be durable and applied, so it is
    /// still in memory here. A leader's own new entries are checked but not remembered: if
    /// it crashes before its term is durable, they vanish with it and it may lead that term
    /// again with other entries.
    fn check_new_entries(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let Some(core) = &node.core else { return };
        let leading = core.role() == Role::Leader;
        let last = core.last_log_id().index.0;
        let from = core.first_log_index().0.max(node.shadow_commit + 1);
        let mut new = Vec::new();
        for i in from..=last {
            let lid = core.log_id_at(LogIndex(i));
            if lid.is_some() && node.shadow.get(i as usize - 1) == lid.as_ref() {
                continue;
            }
            match core.entry(LogIndex(i)) {
                Some(e) => {
                    let prev = core.log_id_at(e.index().prev()).map(|l| l.term);
                    new.push((e.clone(), prev.unwrap_or_default()));
                }
                None => self.fail(format!("{id}: entry {i}, new to its log, is not in memory")),
            }
        }
        let commit = core.commit_index().0;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.shadow_commit = commit;
        node.shadow.truncate(last as usize);
        for (e, _) in &new {
            let at = e.index().0 as usize - 1;
            if at >= node.shadow.len() {
                node.shadow.resize(at + 1, LogId::default());
            }
            node.shadow[at] = e.log_id;
        }
        for (e, prev_term) in new {
            self.check_entries(id, std::slice::from_ref(&e), prev_term, !leading);
        }
    }

    /// Finishes the snapshot being written (then the core may purge its log), answers a
    /// request for the latest snapshot, and serves the oldest log read.
    fn snapshot_io(&mut self, id: NodeId) {
        self.serve_read(id);
        let Some(node) = self.nodes.get_mut(&id).filter(|n| n.is_up()) else {
            return;
        };
        if let Some((meta, data)) = node.building.take() {
            node.disk.save_snapshot(&meta, &data);
            self.snapshots_built += 1;
            let bytes = data.len() as u64;
            self.with_core(id, |c| c.snapshot_built(&meta, bytes));
        }
        let Some(node) = self.nodes.get_mut(&id).filter(|n| n.is_up() && n.loading) else {
            return;
        };
        node.loading = false;
        match node.disk.snapshot.clone() {
            Some((meta, data)) => self.with_core(id, |c| c.snapshot_loaded(meta, data)),
            None => self.with_core(id, |c| c.snapshot_load_failed()),
        };
    }

    /// Serves the oldest log read of `id` from its disk, as a log store does: the entries
    /// in the range, stopping once past the byte budget (at least one); a purged start
    /// fails.
    fn serve_read(&mut self, id: NodeId) {
        let hold = self.hold_reads;
        let Some(node) = self.nodes.get_mut(&id).filter(|n| n.is_up() && !hold) else {
            return;
        };
        let Some((to, range, max_bytes)) = node.reading.pop_front() else {
            return;
        };
        let from = range.start;
        let disk = &node.disk;
        if from <= disk.purged.index {
            self.with_core(id, |c| c.entries_read_failed(to, from));
            return;
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        let skip = (from.0 - disk.purged.index.0 - 1) as usize;
        for e in disk
            .log
            .iter()
            .skip(skip)
            .take_while(|e| e.index() < range.end)
        {
            if !entries.is_empty() && bytes + e.size_hint() > max_bytes {
                break;
            }
            bytes += e.size_hint();
            entries.push(e.clone());
        }
        self.entries_read += 1;
        self.with_core(id, |c| c.entries_read(to, from, entries));
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let actions = match self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                Some(core) => core.take_actions(),
                None => return,
            };
            if actions.is_empty() {
                return;
            }
            for a in actions {
                self.act(id, a);
            }
        }
    }

    fn act(&mut self, id: NodeId, action: Action) {
        match action {
            Action::Persist { id: wid, op } => {
                let node = self.nodes.get_mut(&id).expect("known node");
                node.pending.push_back((wid, op));
            }
            Action::Send(msg) => self.send(msg),
            Action::Apply(entries) if entries.is_empty() => {
                self.fail(format!("{id} asked to apply nothing"));
            }
            Action::Apply(entries) => self.on_apply(id, entries),
            Action::ReadReady { id: rid, index } => {
                self.read_results.insert(rid, Some(index));
                if let Some(read) = self.reads.remove(&rid) {
                    if index < read.must_see {
                        self.fail(format!(
                            "linearizability: read {rid} at {} served at index {} but {} was committed before it began",
                            read.node, index.0, read.must_see.0
                        ));
                    }
                    self.reads_served += 1;
                    if self.nodes[&id].core().role() != Role::Leader {
                        self.follower_reads_served += 1;
                    }
                }
            }
            Action::ReadFailed {
                id: rid,
                leader_hint,
            } => {
                self.read_hints.insert(rid, leader_hint);
                self.read_results.insert(rid, None);
                self.reads.remove(&rid);
            }
            Action::BuildSnapshot => {
                self.snapshots_requested += 1;
                // The image is taken now, at the applied index; writing it takes a while.
                let node = &self.nodes[&id];
                let index = LogIndex(node.applied.len() as u64);
                match node.core().snapshot_meta_at(index) {
                    Some(meta) => {
                        let data = encode_state(&node.applied);
                        self.nodes.get_mut(&id).expect("known node").building = Some((meta, data));
                    }
                    None => self.fail(format!("{id} cannot describe its applied index {index}")),
                }
            }
            Action::LoadSnapshot => {
                self.snapshots_loaded += 1;
                self.nodes.get_mut(&id).expect("known node").loading = true;
            }
            Action::ReadEntries {
                to,
                range,
                max_bytes,
            } => {
                let node = self.nodes.get_mut(&id).expect("known node");
                node.reading.push_back((to, range, max_bytes));
            }
            Action::RestoreSnapshot { meta, data } => {
                self.snapshots_installed += 1;
                self.check_addresses(id, meta.last_log_id, &meta.membership);
                let state = self.restore_state(id, &meta, &data);
                let node = self.nodes.get_mut(&id).expect("known node");
                node.applied = state;
                let index = meta.last_log_id.index;
                if let Some(core) = node.core.as_mut() {
                    core.applied(index);
                }
            }
            Action::Stop(fatal) => {
                if !self.nodes[&id].write_failed && !self.expect_fatal {
                    self.fail(format!("{id} stopped without a storage fault: {fatal}"));
                }
                self.stops.push((id, fatal));
                // Fail-stop: the node is down until restarted from its disk.
                self.crash(id);
            }
        }
    }

    /// Figure 2, "Persistent state ... updated on stable storage before responding to RPCs":
    /// whatever a message promises is on `from`'s disk when it is sent.
    fn check_durable_before_sent(&self, msg: &Message) {
        let node = &self.nodes[&msg.from];
        if node.write_failed {
            self.fail(format!(
                "{} sent {} after a write failed",
                msg.from,
                msg.body.kind()
            ));
        }
        let disk = &node.disk;
        let pre_vote = match &msg.body {
            MessageBody::RequestVote(r) => r.pre_vote,
            MessageBody::VoteResponse(r) => r.pre_vote,
            _ => false,
        };
        if !pre_vote && disk.hard.term < msg.term {
            self.fail(format!(
                "durability: {} sent {} in term {} with term {} on disk",
                msg.from,
                msg.body.kind(),
                msg.term.0,
                disk.hard.term.0
            ));
        }
        match &msg.body {
            // A vote of an older term is superseded by the newer term on disk (terms only
            // grow, so that vote can never be cast again).
            MessageBody::VoteResponse(r)
                if r.granted
                    && !r.pre_vote
                    && disk.hard.term == msg.term
                    && disk.hard.voted_for != Some(msg.to) =>
            {
                self.fail(format!(
                    "durability: {} granted its vote to {} in term {} but its disk holds {:?}",
                    msg.from, msg.to, msg.term.0, disk.hard
                ));
            }
            MessageBody::AppendResponse(AppendResponse {
                outcome: AppendOutcome::Success { match_index },
                ..
            }) => {
                // What the core holds at the index it acknowledges is durable (in the log, or
                // covered by the snapshot).
                let held = node.core().log_id_at(*match_index);
                let snapshot = disk.snapshot.as_ref().map(|(m, _)| m.last_log_id.index);
                // Index 0 (the empty prefix) is held by every log.
                let durable = match_index.0 == 0
                    || match held {
                        Some(h) => disk.holds(h),
                        // Compacted since (after a snapshot): committed, so durable means in the
                        // disk's snapshot or the committed entry in its log.
                        None => {
                            snapshot.is_some_and(|s| s >= *match_index)
                                || self.applied_at.get(match_index).map(|e| e.log_id)
                                    == disk.log_id_at(*match_index)
                        }
                    };
                if !durable {
                    self.fail(format!(
                        "durability: {} acknowledged {} holding {held:?} (log {}..={}), not durable: disk purged {}, snapshot {:?}, last {:?}",
                        msg.from, match_index.0, node.core().first_log_index(), node.core().last_log_id(), disk.purged, disk.snapshot.as_ref().map(|s| s.0.last_log_id), disk.log.last().map(|e| e.log_id)
                    ));
                }
            }
            MessageBody::SnapshotResponse(r) if r.done && !disk.holds(r.last_log_id) => {
                self.fail(format!(
                    "durability: {} confirmed snapshot {} without holding it durably",
                    msg.from, r.last_log_id
                ));
            }
            _ => {}
        }
    }

    fn send(&mut self, msg: Message) {
        self.check_durable_before_sent(&msg);
        if let MessageBody::AppendEntries(req) = &msg.body {
            self.check_seen(msg.from, &req.entries, req.prev_log_id.term);
        }
        *self.sent.entry(msg.body.kind()).or_default() += 1;
        if self.rng.gen_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.step + self.rng.gen_range(1..=self.faults.max_delay);
            self.net.push(InFlight {
                at,
                msg: msg.clone(),
            });
        }
    }

    /// Fails the oldest pending write of `id` with an I/O error (nothing of it reaches the
    /// disk) and tells the node.
    pub fn fail_write(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let (wid, _) = node.pending.pop_front().expect("a pending write");
        node.write_failed = true;
        self.with_core(id, |c| c.persist_failed(wid, "disk full"));
    }

    /// Completes up to `max` pending writes of `id`, in order. One may fail with an I/O
    /// error (`Faults::write_error`), possibly torn; the node is told and must stop.
    pub fn complete_writes(&mut self, id: NodeId, max: usize) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut last = None;
        let mut failed = None;
        let mut appended = Vec::new();
        for _ in 0..max {
            let Some((wid, op)) = node.pending.pop_front() else {
                break;
            };
            if let PersistOp::Append(entries) = &op {
                let prev = entries.first().map_or(LogIndex(0), |e| e.index().prev());
                let prev_term = node
                    .disk
                    .log_id_at(prev)
                    .map(|l| l.term)
                    .unwrap_or_default();
                appended.push((entries.clone(), prev_term));
            }
            if self.faults.write_error > 0.0 && self.rng.gen_bool(self.faults.write_error) {
                node.disk.apply_torn(&op, &mut self.rng);
                failed = Some(wid);
                break;
            }
            node.disk.apply(&op);
            last = Some(wid);
        }
        for (entries, prev_term) in appended {
            self.check_seen(id, &entries, prev_term);
        }
        if let Some(wid) = last {
            self.with_core(id, |c| c.persisted(wid));
        }
        if let Some(wid) = failed {
            if let Some(node) = self.nodes.get_mut(&id).filter(|n| n.is_up()) {
                node.write_failed = true;
                self.with_core(id, |c| c.persist_failed(wid, "simulated I/O error"));
            }
        }
    }

    fn on_apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        for e in entries {
            let expected = self.nodes[&id].applied.len() as u64 + 1;
            if e.index().0 != expected {
                self.fail(format!(
                    "{id} applied {} out of order (expected #{expected})",
                    e.log_id
                ));
            }
            self.nodes
                .get_mut(&id)
                .expect("known node")
                .applied
                .push(e.clone());
            // State Machine Safety: no two nodes apply different entries at one index.
            match self.applied_at.get(&e.index()) {
                Some(prev) if prev != &e => {
                    let msg = format!(
                        "state machine safety: {id} applied {:?} at {} but {:?} was applied there before",
                        e.payload, e.index(), prev.payload
                    );
                    self.fail(msg);
                }
                Some(_) => {}
                None => {
                    self.applied_at.insert(e.index(), e.clone());
                }
            }
            if let EntryPayload::Command(data) = &e.payload {
                if self
                    .proposals
                    .iter()
                    .any(|(n, lid, _)| *n == id && *lid == e.log_id)
                {
                    self.acked.push((e.log_id, data.clone()));
                    self.proposals
                        .retain(|(n, lid, _)| !(*n == id && *lid == e.log_id));
                }
            }
        }
        let applied = LogIndex(self.nodes[&id].applied.len() as u64);
        if let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
            core.applied(applied);
        }
    }

    /// Log Matching, checked as entries leave a node (in AppendEntries) or become durable
    /// on its disk: an entry with a given (term, index) always carries the same payload and
    /// follows the same previous term. (An entry only ever in a crashed leader's memory
    /// vanished with it; its term may be led again with other entries.)
    fn check_seen(&mut self, id: NodeId, entries: &[Entry], prev_term: Term) {
        self.check_entries(id, entries, prev_term, true);
    }

    /// [`check_seen`](Self::check_seen); `keep` false checks without remembering (a
    /// leader's new entries are only in its memory until sent or durable).
    fn check_entries(&mut self, id: NodeId, entries: &[Entry], mut prev_term: Term, keep: bool) {
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.check_addresses(id, e.log_id, m);
            }
            let record = (e.payload.clone(), prev_term);
            match self.seen.get(&e.log_id) {
                Some(known) if *known != record => {
                    let msg = format!(
                        "log matching: {id} holds {} = {:?} after term {}, elsewhere {:?} after term {}",
                        e.log_id, e.payload, prev_term.0, known.0, known.1 .0
                    );
                    self.fail(msg);
                }
                Some(_) => {}
                None if keep => {
                    self.seen.insert(e.log_id, record);
                }
                None => {}
            }
            prev_term = e.term();
        }
    }

    /// Members carry their addresses: every member a configuration names was added with
    /// its address, which every later configuration keeps, and no former member's lingers.
    fn check_addresses(&mut self, id: NodeId, at: LogId, m: &Membership) {
        let members = m.members();
        let wrong = m.addresses.iter().find(|(n, a)| **a != address_of(**n));
        let stale = m.addresses.keys().find(|n| !members.contains(n));
        let founders = self.membership.members();
        let missing = members.iter().find(|n| {
            self.require_addresses && !founders.contains(n) && !m.addresses.contains_key(n)
        });
        if wrong.is_some() || stale.is_some() || missing.is_some() {
            self.fail(format!(
                "addresses: {id} holds a configuration at {at} with a wrong ({wrong:?}), stale ({stale:?}) or missing ({missing:?}) address: {m:?}"
            ));
        }
    }

    fn on_new_leader(&mut self, id: NodeId) {
        let term = self.nodes[&id].core().term();
        // Election Safety: at most one leader per term.
        if let Some(other) = self.leaders.insert(term, id) {
            if other != id {
                self.fail(format!(
                    "election safety: {other} and {id} both led term {}",
                    term.0
                ));
            }
        }
        // Leader Completeness: the new leader holds every entry applied anywhere.
        // Entries compacted into its snapshot were checked when the snapshot was taken.
        let core = self.nodes[&id].core();
        let missing = self.applied_at.iter().find(|(idx, e)| {
            **idx >= core.first_log_index() && core.log_id_at(**idx) != Some(e.log_id)
        });
        if let Some((idx, e)) = missing {
            let msg = format!(
                "leader completeness: {id} leads term {} without committed entry {} at {}",
                term.0, e.log_id, idx.0
            );
            self.fail(msg);
        }
    }

    /// Leader Append-Only: a leader's log only grows while it leads a term.
    fn check_leaders_append_only(&mut self) {
        for (&id, node) in &self.nodes {
            let Some(core) = &node.core else { continue };
            if core.role() != Role::Leader {
                self.leader_logs.remove(&id);
                continue;
            }
            let now = log_window(core);
            if let Some((term, before)) = self.leader_logs.get(&id) {
                if *term == core.term() && !extends(&now, before) {
                    let msg = format!(
                        "leader append-only: {id}'s log in term {} lost or changed entries",
                        term.0
                    );
                    panic!("{}", self.report(&msg));
                }
            }
            self.leader_logs.insert(id, (core.term(), now));
        }
    }

    /// Log Matching over whole logs: if two logs hold an entry with the same id, they agree
    /// on every entry before it.
    /// (Entries compacted into snapshots are checked when a snapshot is taken or restored.)
    pub fn check_log_matching(&self) {
        let logs: Vec<(NodeId, LogWindow)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| Some((id, log_window(n.core.as_ref()?))))
            .collect();
        for (i, (a, la)) in logs.iter().enumerate() {
            for (b, lb) in &logs[i + 1..] {
                let from = la.0.max(lb.0);
                let to = (la.0 + la.1.len() as u64).min(lb.0 + lb.1.len() as u64);
                let at = |w: &LogWindow, i: u64| w.1[(i - w.0) as usize];
                let common = (from..to).rev().find(|&i| at(la, i) == at(lb, i));
                if let Some(k) = common {
                    if let Some(i) = (from..k).find(|&i| at(la, i) != at(lb, i)) {
                        panic!(
                            "{}",
                            self.report(&format!(
                                "log matching: {a} and {b} share {} but differ at {i}",
                                at(la, k)
                            ))
                        );
                    }
                }
            }
        }
    }

    fn fail(&self, what: String) {
        panic!("{}", self.report(&what));
    }

    fn report(&self, what: &str) -> String {
        let with_state = format!("{what}{}", self.describe());
        self.report_as("SAFETY VIOLATION", &with_state)
    }

    fn report_as(&self, kind: &str, what: &str) -> String {
        format!(
            "{kind} at step {} of seed {}: {what}\n  config: {:?}\n  faults: {:?}\nrerun with RAFT_SIM_SEED={} (RAFT_SIM_TRACE=1 prints every delivered message)",
            self.step, self.seed, self.cfg, self.faults, self.seed
        )
    }

    /// Delivers every message due by now, in a random order.
    pub fn deliver_due(&mut self) {
        let now = self.step;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i).msg);
            } else {
                i += 1;
            }
        }
        // Order messages first so the shuffle is the seed's alone, not the Vec's history.
        due.sort_by_key(|m| (m.to, m.from, m.term));
        for k in (1..due.len()).rev() {
            let j = self.rng.gen_range(0..=k);
            due.swap(k, j);
        }
        for msg in due {
            self.deliver(msg);
        }
    }

    /// Delivers one message now, unless its link is cut or its recipient is down.
    pub fn deliver(&mut self, msg: Message) {
        if self.blocked.contains(&(msg.from, msg.to)) {
            return;
        }
        let to = msg.to;
        if trace() {
            let before = self.nodes[&to].core.as_ref().map(|c| (c.role(), c.term()));
            println!("step {} deliver {msg:?}", self.step);
            self.with_core(to, |c| c.step(msg));
            let after = self.nodes[&to]
                .core
                .as_ref()
                .map(|c| (c.role(), c.term(), c.membership().clone()));
            println!("   {to}: {before:?} -> {after:?}");
            return;
        }
        self.with_core(to, |c| c.step(msg));
    }

    /// Delivers messages until the network is empty (no loss applied beyond the links).
    pub fn deliver_all(&mut self) {
        for _ in 0..1000 {
            if self.net.is_empty() {
                return;
            }
            self.step += self.faults.max_delay;
            self.deliver_due();
        }
    }

    /// Ticks every live node once.
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            // A node's clock runs at its own rate: some steps it ticks twice, some not at all.
            let rate = self.tick_rates.get(&id).copied().unwrap_or(1000);
            let debt = self.tick_debt.get(&id).copied().unwrap_or(0) + rate;
            self.tick_debt.insert(id, debt % 1000);
            for _ in 0..debt / 1000 {
                self.with_core(id, |c| c.tick());
            }
        }
    }

    /// The current leader with the highest term, if any node thinks it leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.core.as_ref().map(|c| (id, c)))
            .filter(|(_, c)| c.role() == Role::Leader)
            .max_by_key(|(_, c)| c.term())
            .map(|(id, _)| id)
    }

    /// Proposes a fresh command at `id`; records it for the acknowledgement check.
    pub fn propose(&mut self, id: NodeId) -> Option<LogId> {
        self.next_command += 1;
        let data = Bytes::from(format!("cmd-{}", self.next_command));
        let result = self.with_core(id, |c| c.propose([data.clone()]))?;
        let lid = result.ok()?;
        self.proposals.push((id, lid, data));
        Some(lid)
    }

    /// Starts a read at `id` under `self.read_policy`.
    pub fn read(&mut self, id: NodeId) -> u64 {
        self.next_read += 1;
        let rid = self.next_read;
        // A linearizable read must reflect everything committed before it began.
        let must_see = self.committed_high;
        self.reads.insert(rid, PendingRead { node: id, must_see });
        let policy = self.read_policy;
        let leases = |s: &Sim| {
            s.nodes[&id]
                .core
                .as_ref()
                .map_or(0, |c| c.read_counts().lease)
        };
        let before = leases(self);
        if self
            .with_core(id, |c| c.read(rid, policy))
            .map(|r| r.is_err())
            != Some(false)
        {
            self.reads.remove(&rid);
        }
        self.lease_reads += leases(self) - before;
        rid
    }

    /// One step: deliver due messages, complete some disk writes, tick, inject faults and
    /// client requests; then check the invariants.
    pub fn step_once(&mut self, inject_faults: bool) {
        self.step += 1;
        self.deliver_due();
        for id in self.ids() {
            if self.nodes[&id].is_up()
                && !self.nodes[&id].pending.is_empty()
                && self.rng.gen_bool(self.faults.disk)
            {
                let n = self.rng.gen_range(1..=self.nodes[&id].pending.len());
                self.complete_writes(id, n);
            }
            if self.nodes[&id].is_up() && self.rng.gen_bool(self.faults.disk) {
                self.snapshot_io(id);
            }
        }
        self.tick_all();
        if inject_faults {
            self.inject_faults();
        }
        if let Some(l) = self.leader() {
            if self.rng.gen_bool(self.faults.propose) {
                self.propose(l);
            }
            if self.rng.gen_bool(self.faults.read) {
                // At any node that is up, or at any node that believes it leads: a deposed
                // leader that does not know it yet is where a stale read would come from.
                let follower_reads = self.follower_reads;
                let at: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter_map(|(&id, n)| Some((id, n.core.as_ref()?)))
                    .filter(|(_, c)| follower_reads || c.role() == Role::Leader)
                    .map(|(id, _)| id)
                    .collect();
                let at = at[self.rng.gen_range(0..at.len())];
                let _ = self.read(at);
            }
            if self.rng.gen_bool(self.faults.membership) {
                self.change_membership(l);
            }
        }
        self.check_leaders_append_only();
        if self.step % 64 == 0 {
            self.check_log_matching();
        }
    }

    /// Proposes a random membership change at `leader`: add a node that is not a member as
    /// a learner, promote a learner, remove a member (possibly the leader itself), or hand
    /// leadership to a voter. A change refused (one is in progress, or no voter would be
    /// left) is simply dropped.
    pub fn change_membership(&mut self, leader: NodeId) {
        use raft_core::MembershipChange;
        let m = self.nodes[&leader].core().membership().clone();
        let pick = |rng: &mut ChaCha8Rng, from: Vec<NodeId>| -> Option<NodeId> {
            (!from.is_empty()).then(|| from[rng.gen_range(0..from.len())])
        };
        let outsiders: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|id| !m.members().contains(id))
            .collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let members: Vec<NodeId> = m.members().into_iter().collect();
        if self.rng.gen_bool(0.2) {
            // A leadership transfer to a random voter (refused if it is the leader).
            let voters: Vec<NodeId> = m.voters.iter().copied().collect();
            if let Some(to) = pick(&mut self.rng, voters) {
                let _ = self.with_core(leader, |c| c.transfer_leadership(to));
            }
            return;
        }
        let change = match self.rng.gen_range(0..3) {
            0 => pick(&mut self.rng, outsiders)
                .map(|id| MembershipChange::AddLearner(id, Some(address_of(id)))),
            1 => pick(&mut self.rng, learners).map(|l| {
                let mut voters = m.voters.clone();
                voters.insert(l);
                MembershipChange::SetVoters(voters)
            }),
            _ => pick(&mut self.rng, members).map(MembershipChange::Remove),
        };
        if let Some(change) = change {
            if let Some(Ok(_)) = self.with_core(leader, |c| c.change_membership(change)) {
                self.membership_changes += 1;
            }
        }
    }

    fn inject_faults(&mut self) {
        let ids = self.ids();
        if self.rng.gen_bool(self.faults.partition) {
            if self.rng.gen_bool(0.5) {
                let k = self.rng.gen_range(1..ids.len());
                let mut group = ids.clone();
                for i in (1..group.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    group.swap(i, j);
                }
                group.truncate(k);
                self.partition(&group);
            } else {
                // One-way: a random link drops in one direction only.
                let a = ids[self.rng.gen_range(0..ids.len())];
                let b = ids[self.rng.gen_range(0..ids.len())];
                if a != b {
                    self.blocked.insert((a, b));
                }
            }
        }
        if self.rng.gen_bool(self.faults.isolate_leader) {
            if let Some(l) = self.leader() {
                self.isolate(l);
            }
        }
        if self.rng.gen_bool(self.faults.heal) {
            self.heal();
        }
        if self.rng.gen_bool(self.faults.crash) {
            let id = ids[self.rng.gen_range(0..ids.len())];
            if self.rng.gen_bool(self.faults.torn_crash) {
                self.crash_torn(id);
            } else {
                self.crash(id);
            }
        }
        if self.rng.gen_bool(self.faults.restart) {
            let down: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|i| !self.nodes[i].is_up())
                .collect();
            if !down.is_empty() {
                let id = down[self.rng.gen_range(0..down.len())];
                self.restart(id);
            }
        }
    }

    /// Ends the faults: heal, restart everyone, reliable network and disks.
    pub fn calm(&mut self) {
        self.heal();
        for id in self.ids() {
            self.restart(id);
        }
        self.faults.loss = 0.0;
        self.faults.duplicate = 0.0;
        self.faults.disk = 1.0;
        self.faults.write_error = 0.0;
        self.faults.propose = 0.0;
        self.faults.read = 0.0;
        self.faults.membership = 0.0;
        for id in self.ids() {
            self.complete_writes(id, usize::MAX);
        }
    }

    /// The steps a calm cluster may take to elect a leader and catch every node up: `base`
    /// steps, plus one round trip per window of entries that the most lagging node lacks.
    /// Replication moves at most `max_entries_per_append * max_inflight` entries per round
    /// trip (two network delays), so a backlog built up under faults drains no faster than
    /// that; a fixed budget would call a slow but live cluster stuck.
    pub fn convergence_budget(&self, base: u64) -> u64 {
        let cores = || self.nodes.values().filter_map(|n| n.core.as_ref());
        // What must cross the network: the entries the shortest log lacks (applying what a
        // node already holds is local and takes no steps).
        let longest = cores().map(|c| c.last_log_id().index.0).max().unwrap_or(0);
        let shortest = cores().map(|c| c.last_log_id().index.0).min().unwrap_or(0);
        let backlog = longest - shortest;
        let window = (self.cfg.max_entries_per_append * self.cfg.max_inflight).max(1) as u64;
        let round_trip = 2 * self.faults.max_delay;
        // A snapshot (16 bytes per entry here) moves four chunks per round trip.
        let snapshot_bytes = 16 * longest;
        let chunks = snapshot_bytes.div_ceil(4 * self.cfg.snapshot_chunk_bytes as u64);
        base + backlog.div_ceil(window) * round_trip + chunks * round_trip
    }

    /// Steps without faults until a leader exists and every node has applied every
    /// acknowledged command; returns the steps it took, or a description of what is stuck.
    pub fn converge(&mut self, max_steps: u64) -> Result<u64, String> {
        for k in 0..max_steps {
            self.step_once(false);
            if self.leader().is_some() && self.all_acked_applied() {
                self.check_log_matching();
                return Ok(k);
            }
        }
        Err(self.report_as(
            "LIVENESS FAILURE",
            &(format!(
                "no convergence {max_steps} steps after faults stopped (leader {:?}, acked {}, applied {:?})",
                self.leader(),
                self.acked.len(),
                self.nodes.values().map(|n| n.applied.len()).collect::<Vec<_>>()
            ) + &self.describe()),
        ))
    }

    /// Every node's status, for failure reports.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "\n  in flight: {:?}",
            self.net
                .iter()
                .map(|f| (f.at, f.msg.from, f.msg.to, f.msg.body.kind()))
                .collect::<Vec<_>>()
        );
        for (id, n) in &self.nodes {
            match &n.core {
                Some(c) => out += &format!("\n  {id}: {:?}\n  {}", c.status(), c.debug_progress()),
                None => out += &format!("\n  {id}: down"),
            }
        }
        out
    }

    /// Whether every member of the leader's configuration has applied every acknowledged
    /// command (a node removed from the cluster no longer receives the log).
    fn all_acked_applied(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        // A membership change under way finishes first (the leader leaves a joint
        // configuration on its own).
        if self.nodes[&leader].core().config_change_pending() {
            return false;
        }
        let members = self.nodes[&leader].core().membership().members();
        let nodes = self.nodes.iter().filter(|(id, _)| members.contains(id));
        nodes.map(|(_, n)| n).all(|n| {
            self.acked.iter().all(|(lid, data)| {
                n.applied
                    .get(lid.index.0 as usize - 1)
                    .is_some_and(|e| e.payload == EntryPayload::Command(data.clone()))
            })
        })
    }
}

/// The ids of a core's log entries in memory, from the first index held.
type LogWindow = (u64, Vec<LogId>);

/// Whether `RAFT_SIM_TRACE` asks for every delivered message and the state it leads to.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var("RAFT_SIM_TRACE").is_ok())
}

/// The address the simulator gives a node it adds to the cluster.
pub fn address_of(id: NodeId) -> String {
    format!("sim-{}", id.0)
}

fn log_window(core: &RaftCore) -> LogWindow {
    let first = core.first_log_index().0;
    let last = core.last_log_id().index.0;
    let ids = (first..=last)
        .map(|i| core.log_id_at(LogIndex(i)).expect("held"))
        .collect();
    (first, ids)
}

/// Whether `now` keeps every entry of `before` it still holds, and ends no earlier.
fn extends(now: &LogWindow, before: &LogWindow) -> bool {
    let end_before = before.0 + before.1.len() as u64;
    let end_now = now.0 + now.1.len() as u64;
    end_now >= end_before
        && (now.0.max(before.0)..end_before)
            .all(|i| now.1[(i - now.0) as usize] == before.1[(i - before.0) as usize])
}

// ----- helpers for scripted scenarios ----------------------------------------------------

/// A disk holding entries of the given terms at indexes 1, 2, ... and the given hard state.
pub fn disk(term: u64, entry_terms: &[u64]) -> Disk {
    Disk {
        hard: HardState {
            term: Term(term),
            voted_for: None,
        },
        log: entry_terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                log_id: LogId::new(t, i as u64 + 1),
                payload: EntryPayload::Command(Bytes::from(format!("t{t}i{}", i + 1))),
            })
            .collect(),
        ..Disk::default()
    }
}

impl Sim {
    /// A cluster of `disks.len()` nodes (ids 1..) started from the given disks.
    pub fn from_disks(seed: u64, cfg: Config, disks: Vec<Disk>) -> Sim {
        let mut sim = Sim::new(seed, disks.len() as u64, cfg, Faults::none());
        for (i, d) in disks.into_iter().enumerate() {
            sim.add_node(NodeId(i as u64 + 1), d);
        }
        sim
    }

    /// Makes `id` campaign at once (as on a leadership transfer) and delivers everything.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        self.deliver_all();
    }

    /// Makes `id` campaign at once (as a leadership transfer's target does), without
    /// delivering anything.
    pub fn campaign(&mut self, id: u64) {
        self.with_core(NodeId(id), |c| c.campaign_now());
    }

    /// Messages on the wire, oldest first.
    pub fn in_flight(&self) -> Vec<&Message> {
        self.net.iter().map(|f| &f.msg).collect()
    }

    /// Removes and returns every message on the wire.
    pub fn take_in_flight(&mut self) -> Vec<Message> {
        self.net.drain(..).map(|f| f.msg).collect()
    }

    /// Delivers messages until none is left, one at a time, dropping those `keep` refuses
    /// and calling `check` after each delivery.
    pub fn deliver_filtered(
        &mut self,
        mut keep: impl FnMut(&Message) -> bool,
        mut check: impl FnMut(&Sim),
    ) {
        for _ in 0..100_000 {
            if self.net.is_empty() {
                return;
            }
            let msg = self.net.remove(0).msg;
            if keep(&msg) {
                self.deliver(msg);
                check(self);
            }
        }
    }

    /// The log ids of `id`'s log.
    pub fn log(&self, id: u64) -> Vec<LogId> {
        let core = self.core(id);
        (1..=core.last_log_id().index.0)
            .filter_map(|i| core.log_id_at(LogIndex(i)))
            .collect()
    }

    /// Sets `id`'s clock to `rate` ticks per thousand steps, starting `phase` thousandths
    /// of a tick in.
    pub fn set_clock(&mut self, id: NodeId, rate: u64, phase: u64) {
        self.tick_rates.insert(id, rate);
        self.tick_debt.insert(id, phase % 1000);
    }

    /// Ticks `id` `n` times, delivering everything after each tick.
    pub fn tick_node(&mut self, id: u64, n: u64) {
        for _ in 0..n {
            self.with_core(NodeId(id), |c| c.tick());
            self.deliver_all();
        }
    }

    /// Ticks every node `n` times, delivering everything after each round.
    pub fn run_ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick_all();
            self.deliver_all();
        }
    }

    /// Count of messages of a kind sent so far.
    pub fn count(&self, kind: &str) -> u64 {
        self.sent.get(kind).copied().unwrap_or(0)
    }

    /// Delivers messages until none is left, except those `hold` picks: they are taken off
    /// the wire undelivered and returned, in order.
    pub fn deliver_holding(&mut self, mut hold: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut held = Vec::new();
        loop {
            let msgs = self.take_in_flight();
            if msgs.is_empty() {
                return held;
            }
            for m in msgs {
                if hold(&m) {
                    held.push(m);
                } else {
                    self.deliver(m);
                }
            }
        }
    }

    /// Takes the log reads `id` asked for and has not been answered: (for whom, range, byte
    /// budget).
    pub fn take_reads(&mut self, id: u64) -> Vec<(NodeId, Range<LogIndex>, usize)> {
        let node = self.nodes.get_mut(&NodeId(id)).expect("known node");
        node.reading.drain(..).collect()
    }

    /// Pending (not yet durable) writes of a node.
    pub fn pending_writes(&self, id: u64) -> usize {
        self.nodes[&NodeId(id)].pending.len()
    }
}
