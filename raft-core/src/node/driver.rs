//! The driver task: owns the core, feeds it inputs and carries out its actions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::tasks::{self, ApplyJob, Responder};
use super::Request;
use crate::error::{FatalError, RaftError, StorageError};
use crate::message::{Message, MessageBody};
use crate::metrics::{Counters, Histogram, Metrics, PeerMetrics};
use crate::raft::{
    Action, ChangeError, MembershipChange, PersistOp, ProposeError, RaftCore, TransferError,
    WriteId,
};
use crate::read::{ReadId, ReadPolicy};
use crate::state_machine::StateMachine;
use crate::storage::{LogStore, SnapshotStore};
use crate::transport::Transport;
use crate::types::{Entry, LogId, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term};

/// Most messages or requests handled before the driver carries out actions, so a flood of
/// input still yields batched writes and sends.
const MAX_INPUT_BATCH: usize = 512;

pub(crate) struct Driver {
    core: RaftCore,
    tick: std::time::Duration,
    transport: Arc<dyn Transport>,
    writes: mpsc::UnboundedSender<(WriteId, PersistOp)>,
    written: mpsc::UnboundedReceiver<Result<WriteId, (WriteId, StorageError)>>,
    apply: mpsc::UnboundedSender<ApplyJob>,
    applied: mpsc::UnboundedReceiver<Result<LogIndex, RaftError>>,
    tasks: Vec<JoinHandle<()>>,
    /// Proposals waiting to be applied, by index, with the term they were proposed in.
    /// Each with the tick after which its caller gets `RaftError::Timeout`, and when it
    /// arrived (for the commit latency).
    proposals: BTreeMap<LogIndex, (Term, Responder, u64, std::time::Instant)>,
    /// Counters and the commit latency, published with the tasks' timings once per tick.
    counters: Counters,
    commit_latency: Histogram,
    timings: tasks::SharedTimings,
    /// The last leader seen with its term (to count changes, re-elections included), and
    /// the tick metrics were last published.
    last_leader: Option<(Term, NodeId)>,
    published_tick: Option<u64>,
    /// Reads waiting for leadership confirmation.
    /// Each with the tick after which its caller gets `RaftError::Timeout`.
    reads: HashMap<ReadId, (Bytes, Responder, u64)>,
    /// Ticks since start, and how many make `Config::request_timeout`.
    ticks: u64,
    timeout_ticks: u64,
    /// When the next tick is due (see `catch_up`).
    tick_due: tokio::time::Instant,
    next_read: ReadId,
    /// Set when the core stopped on a fatal error.
    fatal: Option<FatalError>,
    snapshots: Arc<dyn SnapshotStore>,
    /// State-machine images for snapshots, from the applier.
    images: mpsc::UnboundedReceiver<tasks::Image>,
    /// Snapshots written to the store (or why not).
    built_tx: mpsc::UnboundedSender<Result<(SnapshotMeta, u64), StorageError>>,
    built: mpsc::UnboundedReceiver<Result<(SnapshotMeta, u64), StorageError>>,
    /// The latest snapshot read back for sending (or why not).
    loaded_tx: mpsc::UnboundedSender<Loaded>,
    loaded: mpsc::UnboundedReceiver<Loaded>,
    /// The log store, for reading entries that left the core's memory.
    log: Arc<dyn LogStore>,
    /// Entries read for a follower (or why not).
    read_tx: mpsc::UnboundedSender<EntriesRead>,
    read: mpsc::UnboundedReceiver<EntriesRead>,
    /// Callers of `snapshot_now` waiting for the snapshot being built.
    snapshot_waiters: Vec<oneshot::Sender<Result<LogId, RaftError>>>,
    /// Callers of a membership change waiting for it to finish, with the id of the
    /// configuration entry that began it.
    change_waiters: Vec<(LogId, oneshot::Sender<Result<Membership, RaftError>>)>,
    /// Callers of a leadership transfer waiting for it to end, and its target.
    transfer_waiters: Vec<oneshot::Sender<Result<(), RaftError>>>,
    transfer_target: Option<NodeId>,
    /// The core's peers epoch the transport was last told of, and the peers it named.
    peers_epoch: Option<(u64, LogIndex)>,
    peers: BTreeMap<NodeId, Option<String>>,
}

type Loaded = Result<Option<(SnapshotMeta, Bytes)>, StorageError>;

/// Entries read from the log store for a follower: who, from where, and what came back.
type EntriesRead = (NodeId, LogIndex, Result<Vec<Entry>, StorageError>);

impl Driver {
    pub(crate) fn new(
        core: RaftCore,
        config: &crate::config::Config,
        log: Arc<dyn LogStore>,
        snapshots: Arc<dyn SnapshotStore>,
        state_machine: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
        applied_index: LogIndex,
    ) -> Driver {
        let (tick, request_timeout) = (config.tick_interval, config.request_timeout);
        let timeout_ticks = request_timeout.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64;
        let (writes, writes_rx) = mpsc::unbounded_channel();
        let (written_tx, written) = mpsc::unbounded_channel();
        let (apply, apply_rx) = mpsc::unbounded_channel();
        let (applied_tx, applied) = mpsc::unbounded_channel();
        let (images_tx, images) = mpsc::unbounded_channel();
        let (built_tx, built) = mpsc::unbounded_channel();
        let (loaded_tx, loaded) = mpsc::unbounded_channel();
        let (read_tx, read) = mpsc::unbounded_channel();
        let timings = tasks::SharedTimings::default();
        let tasks = vec![
            tokio::spawn(tasks::log_writer(
                log.clone(),
                snapshots.clone(),
                writes_rx,
                written_tx,
                timings.clone(),
            )),
            tokio::spawn(tasks::applier(
                state_machine,
                applied_index,
                apply_rx,
                applied_tx,
                images_tx,
                timings.clone(),
            )),
        ];
        Driver {
            core,
            tick,
            transport,
            writes,
            written,
            apply,
            applied,
            tasks,
            proposals: BTreeMap::new(),
            counters: Counters::default(),
            commit_latency: Histogram::default(),
            timings,
            last_leader: None,
            published_tick: None,
            reads: HashMap::new(),
            ticks: 0,
            timeout_ticks,
            tick_due: tokio::time::Instant::now(),
            next_read: 0,
            fatal: None,
            snapshots,
            images,
            built_tx,
            built,
            loaded_tx,
            loaded,
            log,
            read_tx,
            read,
            snapshot_waiters: Vec::new(),
            change_waiters: Vec::new(),
            transfer_waiters: Vec::new(),
            transfer_target: None,
            peers_epoch: None,
            peers: BTreeMap::new(),
        }
    }

    /// Runs until shutdown or a fatal error; returns the fatal error, if any. `stopped`
    /// learns a fatal error as soon as it happens, before clients are failed with it.
    pub(crate) async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbox: mpsc::Receiver<Message>,
        stopped: &tokio::sync::watch::Sender<Option<Option<FatalError>>>,
        leader: &tokio::sync::watch::Sender<super::LeaderView>,
        metrics: &tokio::sync::watch::Sender<Arc<Metrics>>,
    ) -> Option<FatalError> {
        let mut ticker = tokio::time::interval(self.tick);
        // Ticks missed while the driver was busy or paused fire at once, and are caught up
        // before any request or message is handled (`catch_up`): the core's clock must not
        // fall behind wall time, or a leader back from a stall would think its lease runs.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticker.tick().await; // the first tick completes at once
        let id = self.core.id();
        let shutdown_reply = loop {
            let outcome = tokio::select! {
                at = ticker.tick() => { self.on_tick(at); Ok(None) }
                Some(msg) = inbox.recv() => {
                    self.catch_up(&mut ticker).await;
                    self.on_messages(msg, &mut inbox);
                    Ok(None)
                }
                req = requests.recv() => match req {
                    Some(req) => {
                        self.catch_up(&mut ticker).await;
                        self.on_requests(req, &mut requests)
                    }
                    None => break None, // every handle was dropped
                },
                done = self.written.recv() => {
                    match done {
                        Some(Ok(upto)) => self.core.persisted(upto),
                        Some(Err((failed, e))) => self.core.persist_failed(failed, e),
                        // Without its writer the node could never make anything durable.
                        None => self.fatal = Some(FatalError::Internal("the log writer ended".into())),
                    }
                    Ok(None)
                }
                Some(image) = self.images.recv() => { self.write_image(image); Ok(None) }
                Some(built) = self.built.recv() => { self.on_built(built); Ok(None) }
                Some(loaded) = self.loaded.recv() => {
                    match loaded {
                        Ok(Some((meta, data))) => self.core.snapshot_loaded(meta, data),
                        Ok(None) => self.core.snapshot_load_failed(),
                        Err(e) => {
                            tracing::warn!(node = %id, error = %e, "cannot read the latest snapshot to send it");
                            self.core.snapshot_load_failed();
                        }
                    }
                    Ok(None)
                }
                Some((to, from, read)) = self.read.recv() => {
                    match read {
                        Ok(entries) => self.core.entries_read(to, from, entries),
                        Err(e) => {
                            tracing::warn!(node = %id, follower = %to, error = %e, "cannot read log entries for a follower; will retry");
                            self.core.entries_read_failed(to, from);
                        }
                    }
                    Ok(None)
                }
                applied = self.applied.recv() => {
                    match applied {
                        Some(Ok(i)) => self.core.applied(i),
                        Some(Err(RaftError::Fatal(e))) => self.fatal = Some(e),
                        Some(Err(e)) => self.fatal = Some(FatalError::StateMachine(e.to_string())),
                        None => self.fatal = Some(FatalError::Internal("the applier ended".into())),
                    }
                    Ok(None)
                }
                else => break None,
            };
            if let Ok(Some(reply)) = outcome {
                break Some(reply);
            }
            self.execute().await;
            self.settle_waiters();
            self.publish_leader(leader);
            self.publish_metrics(metrics);
            if let Some(fatal) = &self.fatal {
                tracing::error!(node = %id, error = %fatal, "raft node stopping after a fatal error");
                stopped.send_replace(Some(Some(fatal.clone())));
                break None;
            }
        };
        self.stop(shutdown_reply).await
    }

    /// Tells watchers when the term, the role or the leader changed (three comparisons per
    /// turn of the loop; watchers wake only on a change).
    fn publish_leader(&self, watch: &tokio::sync::watch::Sender<super::LeaderView>) {
        let (term, role, leader) = (self.core.term(), self.core.role(), self.core.leader());
        watch.send_if_modified(|view| {
            if view.term == term && view.role == role && view.leader == leader {
                return false;
            }
            let address = leader.and_then(|l| self.core.membership().addresses.get(&l).cloned());
            *view = super::LeaderView {
                term,
                role,
                leader,
                leader_address: address,
            };
            true
        });
    }

    /// Counts a change of leader, and publishes a metrics snapshot once per tick (a
    /// snapshot costs a few allocations; the loop turns thousands of times per tick).
    fn publish_metrics(&mut self, watch: &tokio::sync::watch::Sender<Arc<Metrics>>) {
        let leader = self.core.leader().map(|l| (self.core.term(), l));
        if leader.is_some() && leader != self.last_leader {
            self.counters.leader_changes += 1;
            self.last_leader = leader;
        }
        if self.published_tick == Some(self.ticks) {
            return;
        }
        self.published_tick = Some(self.ticks);
        watch.send_replace(Arc::new(self.metrics()));
    }

    /// The node's metrics now.
    fn metrics(&self) -> Metrics {
        let s = self.core.status();
        let mut counters = self.counters.clone();
        counters.reads = s.reads;
        (counters.elections_started, counters.elections_won) = self.core.elections();
        let last = s.last_log_id.index;
        let peers = s
            .peers
            .iter()
            .map(|(&id, &(match_index, state))| {
                let lag = last.0.saturating_sub(match_index.0);
                (
                    id,
                    PeerMetrics {
                        match_index,
                        lag,
                        state,
                    },
                )
            })
            .collect();
        let (fsync_latency, apply_latency) =
            (self.timings.fsync.snapshot(), self.timings.apply.snapshot());
        Metrics {
            id: s.id,
            role: s.role,
            term: s.term,
            leader: s.leader,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_log_index: last,
            first_log_index: s.first_log_index,
            snapshot_index: s.snapshot_index,
            snapshot_bytes: s.snapshot_bytes,
            log_bytes: s.log_bytes as u64,
            voters: s.membership.voters.iter().copied().collect(),
            learners: s.membership.learners.iter().copied().collect(),
            peers,
            counters,
            commit_latency: self.commit_latency.clone(),
            fsync_latency,
            apply_latency,
        }
    }

    /// Steps a received message and whatever else is already queued.
    fn on_messages(&mut self, first: Message, inbox: &mut mpsc::Receiver<Message>) {
        self.counters.received(&first);
        self.core.step(first);
        for _ in 0..MAX_INPUT_BATCH {
            match inbox.try_recv() {
                Ok(msg) => {
                    self.counters.received(&msg);
                    self.core.step(msg)
                }
                Err(_) => break,
            }
        }
    }

    /// Handles client requests; consecutive proposals become one batch (one log write).
    /// Returns the shutdown reply when asked to stop.
    fn on_requests(
        &mut self,
        first: Request,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Result<Option<tokio::sync::oneshot::Sender<()>>, RaftError> {
        let mut batch: Vec<(Bytes, Responder)> = Vec::new();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(req) = next.take() {
            match req {
                Request::Propose(cmd, reply) => batch.push((cmd, reply)),
                Request::ProposeBatch(cmds) => batch.extend(cmds),
                Request::Read(query, policy, reply) => {
                    self.propose(std::mem::take(&mut batch));
                    self.read(query, policy, reply);
                }
                Request::Status(reply) => {
                    let _ = reply.send(self.core.status());
                }
                Request::SnapshotNow(reply) => self.snapshot_now(reply),
                Request::ChangeMembership(change, reply) => self.change_membership(change, reply),
                Request::TransferLeadership(target, reply) => {
                    match self.core.transfer_leadership(target) {
                        Ok(()) => {
                            self.transfer_target = Some(target);
                            self.transfer_waiters.push(reply);
                        }
                        Err(TransferError::NotLeader(refused)) => {
                            let _ = reply.send(Err(RaftError::NotLeader(refused)));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Request::Shutdown(reply) => {
                    self.propose(batch);
                    return Ok(Some(reply));
                }
            }
            handled += 1;
            if handled < MAX_INPUT_BATCH {
                next = requests.try_recv().ok();
            }
        }
        self.propose(batch);
        Ok(None)
    }

    fn propose(&mut self, batch: Vec<(Bytes, Responder)>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        self.counters.proposals += n;
        let (commands, replies): (Vec<Bytes>, Vec<Responder>) = batch.into_iter().unzip();
        let arrived = std::time::Instant::now();
        match self.core.propose(commands) {
            Ok(last) => {
                let first = last.index.0 + 1 - n;
                for (i, reply) in replies.into_iter().enumerate() {
                    let deadline = self.ticks + self.timeout_ticks;
                    let waiting = (last.term, reply, deadline, arrived);
                    self.proposals.insert(LogIndex(first + i as u64), waiting);
                }
            }
            Err(refused) => {
                for reply in replies {
                    let _ = reply.send(Err(self.refusal(refused.clone())));
                }
            }
        }
    }

    fn refusal(&self, e: ProposeError) -> RaftError {
        match e {
            ProposeError::NotLeader(refused) => RaftError::NotLeader(refused),
            ProposeError::TooLarge { size, max } => RaftError::TooLarge { size, max },
            ProposeError::Stopped => self.stopped_error(),
        }
    }

    /// What callers get once the node has stopped.
    fn stopped_error(&self) -> RaftError {
        match &self.fatal {
            Some(e) => RaftError::Fatal(e.clone()),
            None => RaftError::ShuttingDown,
        }
    }

    /// A tick: the core's, then the requests whose time is up fail with
    /// `RaftError::Timeout` (one deadline sweep per tick, not a timer per request).
    fn on_tick(&mut self, at: tokio::time::Instant) {
        self.tick_due = at + self.tick;
        self.ticks += 1;
        self.core.tick();
        let now = self.ticks;
        let timeout = RaftError::Timeout;
        let after = self.tick * self.timeout_ticks as u32;
        // Proposals are ordered by index, hence by age (within a term and across them).
        while let Some(entry) = self.proposals.first_entry() {
            if entry.get().2 > now {
                break;
            }
            let (_, reply, _, _) = entry.remove();
            let _ = reply.send(Err(timeout(after)));
        }
        // Reads also go once their caller is gone: the core may take long to answer them
        // (a follower whose leader does not answer), and they must not pile up meanwhile.
        if !self.reads.is_empty() {
            let done: Vec<ReadId> = self
                .reads
                .iter()
                .filter(|(_, (_, reply, deadline))| *deadline <= now || reply.is_closed())
                .map(|(&id, _)| id)
                .collect();
            for id in done {
                if let Some((_, reply, _)) = self.reads.remove(&id) {
                    let _ = reply.send(Err(timeout(after)));
                }
            }
        }
    }

    /// Feeds the core every tick that is due now (after a stall, all the missed ones)
    /// without waiting for the next.
    async fn catch_up(&mut self, ticker: &mut tokio::time::Interval) {
        while tokio::time::Instant::now() >= self.tick_due {
            let due = tokio::select! {
                biased;
                at = ticker.tick() => Some(at),
                _ = std::future::ready(()) => None,
            };
            match due {
                Some(at) => self.on_tick(at),
                None => return,
            }
        }
    }

    fn read(&mut self, query: Bytes, policy: ReadPolicy, reply: Responder) {
        self.next_read += 1;
        let id = self.next_read;
        match self.core.read(id, policy) {
            Ok(()) => {
                let deadline = self.ticks + self.timeout_ticks;
                self.reads.insert(id, (query, reply, deadline));
            }
            Err(refused) => {
                let _ = reply.send(Err(RaftError::NotLeader(refused)));
            }
        }
    }

    /// Carries out the core's actions, in order.
    async fn execute(&mut self) {
        // Before any message leaves, the transport learns where new members are; servers
        // no longer needed are forgotten only after this batch, which may carry the last
        // heartbeat telling a removed server that its removal committed.
        let epoch = self.core.peers_epoch();
        let forget = if self.peers_epoch != Some(epoch) {
            self.peers_epoch = Some(epoch);
            let peers = self.core.peers();
            let mut both = self.peers.clone();
            both.extend(peers.iter().map(|(id, a)| (*id, a.clone())));
            self.transport.update_peers(&both);
            let gone = both.len() != peers.len();
            self.peers = peers;
            gone
        } else {
            false
        };
        self.execute_actions().await;
        if forget {
            self.transport.update_peers(&self.peers);
        }
    }

    async fn execute_actions(&mut self) {
        for action in self.core.take_actions() {
            match action {
                Action::Persist { id, op } => {
                    let _ = self.writes.send((id, op));
                }
                Action::Send(msg) => {
                    self.counters.sent(&msg);
                    if matches!(&msg.body, MessageBody::InstallSnapshot(s) if s.done) {
                        self.counters.snapshots_sent += 1;
                    }
                    self.transport.send(msg).await
                }
                Action::Apply(entries) => self.apply(entries),
                Action::ReadReady { id, index } => {
                    if let Some((query, reply, _)) = self.reads.remove(&id) {
                        let _ = self.apply.send(ApplyJob::Read {
                            index,
                            query,
                            reply,
                        });
                    }
                }
                Action::ReadFailed { id, leader_hint } => {
                    if let Some((_, reply, _)) = self.reads.remove(&id) {
                        let refused = self.core.not_leader_hinting(leader_hint);
                        let _ = reply.send(Err(RaftError::NotLeader(refused)));
                    }
                }
                Action::BuildSnapshot => {
                    let _ = self.apply.send(ApplyJob::Snapshot);
                }
                Action::LoadSnapshot => {
                    let (store, tx) = (self.snapshots.clone(), self.loaded_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(store.read_latest().await);
                    });
                }
                Action::ReadEntries {
                    to,
                    range,
                    max_bytes,
                } => {
                    let (log, tx) = (self.log.clone(), self.read_tx.clone());
                    tokio::spawn(async move {
                        let from = range.start;
                        let _ = tx.send((to, from, log.entries(range, max_bytes).await));
                    });
                }
                Action::RestoreSnapshot { meta, data } => {
                    self.counters.snapshots_installed += 1;
                    let _ = self.apply.send(ApplyJob::Restore { meta, data });
                }
                Action::Stop(e) => self.fatal = Some(e),
            }
        }
    }

    /// Proposes a membership change; the caller is answered once it has finished.
    fn change_membership(
        &mut self,
        change: MembershipChange,
        reply: oneshot::Sender<Result<Membership, RaftError>>,
    ) {
        match self.core.change_membership(change) {
            Ok(id) => self.change_waiters.push((id, reply)),
            Err(ChangeError::NotLeader(refused)) => {
                let _ = reply.send(Err(RaftError::NotLeader(refused)));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Answers membership changes that finished (committed and no longer joint, or lost
    /// when a new leader's log replaced them) and leadership transfers that ended (another
    /// node leads, or this one gave up).
    fn settle_waiters(&mut self) {
        let core = &self.core;
        let mut waiting = Vec::new();
        for (id, reply) in self.change_waiters.drain(..) {
            match core.change_outcome(id) {
                Some(outcome) => {
                    let _ = reply.send(outcome.map_err(Into::into));
                }
                None => waiting.push((id, reply)),
            }
        }
        self.change_waiters = waiting;
        if !self.transfer_waiters.is_empty() {
            let answer = match (self.core.role(), self.core.leader()) {
                (Role::Leader, _) if self.core.transferring_to().is_none() => {
                    Some(Err(TransferError::TimedOut))
                }
                (Role::Leader, _) | (_, None) => None,
                (_, Some(leader)) if Some(leader) == self.transfer_target => Some(Ok(())),
                (_, Some(leader)) => Some(Err(TransferError::Superseded(leader))),
            };
            if let Some(answer) = answer {
                for reply in self.transfer_waiters.drain(..) {
                    let _ = reply.send(answer.clone().map_err(Into::into));
                }
            }
        }
    }

    /// `snapshot_now`: starts a snapshot (or joins the one being built) and answers once it
    /// is durable; with nothing applied since the last one, answers with that one.
    fn snapshot_now(&mut self, reply: oneshot::Sender<Result<LogId, RaftError>>) {
        if self.core.snapshot_now() || self.core.snapshot_building() {
            self.snapshot_waiters.push(reply);
        } else {
            let last = self.core.status().snapshot_index;
            let _ = reply.send(
                self.core
                    .snapshot_meta_at(last)
                    .map(|m| m.last_log_id)
                    .ok_or(RaftError::ShuttingDown),
            );
        }
    }

    /// Writes a state machine image to the snapshot store off the driver's task, so
    /// replication and commit go on while it is written.
    fn write_image(&mut self, image: tasks::Image) {
        let (index, data) = match image {
            Ok(image) => image,
            Err(e) => {
                tracing::warn!(node = %self.core.id(), error = %e, "the state machine could not take a snapshot");
                self.core.snapshot_build_failed();
                self.answer_snapshot_waiters(Err(e));
                return;
            }
        };
        let Some(meta) = self.core.snapshot_meta_at(index) else {
            // A leader's snapshot past this point was installed meanwhile: that one is the
            // latest, and what `snapshot_now` callers get.
            self.core.snapshot_build_failed();
            let latest = self.core.status().snapshot_index;
            let answer = self.core.snapshot_meta_at(latest).map(|m| m.last_log_id);
            self.answer_snapshot_waiters(answer.ok_or(RaftError::ShuttingDown));
            return;
        };
        let (store, tx) = (self.snapshots.clone(), self.built_tx.clone());
        tokio::spawn(async move {
            let written = tasks::write_snapshot(&*store, &meta, &data).await;
            let _ = tx.send(written.map(|meta| (meta, data.len() as u64)));
        });
    }

    fn on_built(&mut self, built: Result<(SnapshotMeta, u64), StorageError>) {
        match built {
            Ok((meta, bytes)) => {
                tracing::debug!(node = %self.core.id(), snapshot = %meta.last_log_id, bytes, "snapshot taken");
                self.counters.snapshots_built += 1;
                self.core.snapshot_built(&meta, bytes);
                self.answer_snapshot_waiters(Ok(meta.last_log_id));
            }
            Err(e) => {
                tracing::warn!(node = %self.core.id(), error = %e, "cannot write a snapshot; will retry");
                self.core.snapshot_build_failed();
                self.answer_snapshot_waiters(Err(e.into()));
            }
        }
    }

    fn answer_snapshot_waiters(&mut self, result: Result<LogId, RaftError>) {
        for w in self.snapshot_waiters.drain(..) {
            let answer = match &result {
                Ok(id) => Ok(*id),
                Err(e) => Err(RaftError::Storage(StorageError::Backend(format!(
                    "the snapshot could not be taken: {e}"
                )))),
            };
            let _ = w.send(answer);
        }
    }

    /// Pairs committed entries with the clients waiting for them and hands them over.
    fn apply(&mut self, entries: Vec<Entry>) {
        self.counters.entries_applied += entries.len() as u64;
        let now = std::time::Instant::now();
        let batch = entries
            .into_iter()
            .map(|e| {
                let reply = match self.proposals.remove(&e.index()) {
                    Some((term, reply, _, arrived)) if term == e.term() => {
                        self.counters.proposals_committed += 1;
                        self.commit_latency.observe(now.duration_since(arrived));
                        Some(reply)
                    }
                    Some((term, reply, _, _)) => {
                        // Another leader's entry took this index: ours was never committed.
                        let lost = LogId {
                            term,
                            index: e.index(),
                        };
                        let _ = reply.send(Err(RaftError::ProposalDropped(lost)));
                        None
                    }
                    None => None,
                };
                (e, reply)
            })
            .collect();
        let _ = self.apply.send(ApplyJob::Entries(batch));
    }

    /// Fails every waiting client (with the fatal error, if one stopped the node), stops
    /// the helper tasks and waits for them. Returns the fatal error.
    async fn stop(mut self, reply: Option<tokio::sync::oneshot::Sender<()>>) -> Option<FatalError> {
        for (_, (_, r, _, _)) in std::mem::take(&mut self.proposals) {
            let _ = r.send(Err(self.stopped_error()));
        }
        for (_, (_, r, _)) in std::mem::take(&mut self.reads) {
            let _ = r.send(Err(self.stopped_error()));
        }
        for (_, r) in std::mem::take(&mut self.change_waiters) {
            let _ = r.send(Err(self.stopped_error()));
        }
        for r in std::mem::take(&mut self.transfer_waiters) {
            let _ = r.send(Err(self.stopped_error()));
        }
        let fatal = self.fatal.take();
        let Driver {
            writes,
            apply,
            tasks,
            ..
        } = self;
        drop(writes);
        drop(apply);
        for t in tasks {
            let _ = t.await;
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        fatal
    }
}
