//! The async node: drives one [`RaftCore`] on tokio with the four seams.
//!
//! Three tasks cooperate:
//! - the **driver** owns the core; it turns timer ticks, received messages and client
//!   requests into core inputs and carries out the resulting actions;
//! - the **log writer** makes writes durable in order, merging everything queued while the
//!   previous write was in flight into the next one (group commit);
//! - the **applier** feeds committed entries to the state machine and answers clients, so
//!   replication never waits for the application.
//!
//! The seams are trait objects rather than generic parameters: the node makes one dynamic
//! call per batch (never per entry), which is noise next to an fsync or a network round
//! trip, and in exchange `RaftNode` is one concrete type that users can store, clone into
//! handlers and pass around without carrying four type parameters.

mod driver;
mod tasks;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{FatalError, RaftError, StorageError};
use crate::log::EntryMeta;
use crate::metrics::Metrics;
use crate::raft::{CoreStatus, InitialState, MembershipChange, RaftCore};
use crate::read::ReadPolicy;
use crate::state_machine::StateMachine;
use crate::storage::{LogState, LogStore, SnapshotStore};
use crate::transport::{Inbox, Transport};
use crate::types::{Entry, LogId, LogIndex, Membership, NodeId};

/// A node's status: role, term, leader, commit and apply progress, and on a leader each
/// follower's match index.
pub type Status = CoreStatus;

/// Who leads, as one node sees it: what [`RaftNode::watch_leader`] publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    /// The node's current term.
    pub term: crate::types::Term,
    /// The node's role.
    pub role: crate::types::Role,
    /// The leader it follows (itself when it leads); `None` during an election and once
    /// it has not heard from the leader for an election timeout.
    pub leader: Option<NodeId>,
    /// The leader's address from the membership, when it has one.
    pub leader_address: Option<String>,
}

/// The implementations a node runs with.
pub struct Seams {
    /// The log and hard state.
    pub log: Arc<dyn LogStore>,
    /// Snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// The application.
    pub state_machine: Box<dyn StateMachine>,
    /// The network.
    pub transport: Arc<dyn Transport>,
}

type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

pub(crate) enum Request {
    Propose(Bytes, Reply<Bytes>),
    ProposeBatch(Vec<(Bytes, Reply<Bytes>)>),
    Read(Bytes, ReadPolicy, Reply<Bytes>),
    Status(oneshot::Sender<Status>),
    SnapshotNow(Reply<LogId>),
    ChangeMembership(MembershipChange, Reply<Membership>),
    TransferLeadership(NodeId, Reply<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Capacity of a node's inbox of received messages; beyond it messages are dropped.
const INBOX_CAPACITY: usize = 4096;
/// Capacity of the client request queue; callers wait for room (back-pressure).
const REQUEST_CAPACITY: usize = 4096;

/// A handle to a running Raft node. Cheap to clone; every clone talks to the same node.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    inbox: Inbox,
    driver: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// `None` while running; then `Some(None)` after a shutdown, or the fatal error.
    stopped: watch::Receiver<Option<Option<FatalError>>>,
    /// The leader as this node sees it.
    leader: watch::Receiver<LeaderView>,
    /// The latest metrics, published once per tick.
    metrics: watch::Receiver<Arc<Metrics>>,
    /// The tick interval, for waits that poll the core's status.
    tick: std::time::Duration,
    /// The default read policy (`Config::read_policy`).
    read_policy: ReadPolicy,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

impl RaftNode {
    /// Starts a node: validates `config`, restores state from the stores (resuming where a
    /// previous run stopped), and spawns its tasks on the current tokio runtime.
    ///
    /// `bootstrap` is the founding configuration, used only when the stores hold none;
    /// every founding member must be given the same one. `seed` makes election timing
    /// reproducible (for tests; a restarted node should get a new one, as `None` does, so
    /// that its follower-read batch ids differ from the previous run's); `None` draws one
    /// from the OS.
    pub async fn start(
        id: NodeId,
        config: Config,
        bootstrap: Membership,
        seams: Seams,
        seed: Option<u64>,
    ) -> Result<RaftNode, RaftError> {
        config.validate()?;
        if let Some(limit) = seams.transport.max_message_bytes() {
            config.validate_for_transport(limit)?;
        }
        let Seams {
            log,
            snapshots,
            state_machine,
            transport,
        } = seams;
        let (init, state_machine) = restore(&*log, &*snapshots, state_machine, bootstrap).await?;
        let applied = init.applied;
        let seed = seed.unwrap_or_else(rand::random);
        let core = RaftCore::new(id, config.clone(), init, seed);
        if let Some(fatal) = core.fatal() {
            return Err(RaftError::Fatal(fatal.clone()));
        }
        if core.is_removed() {
            return Err(RaftError::Removed(id));
        }
        let (inbox, inbox_rx) = Inbox::channel(INBOX_CAPACITY);
        let (requests, requests_rx) = mpsc::channel(REQUEST_CAPACITY);
        let driver = driver::Driver::new(
            core,
            &config,
            log,
            snapshots,
            state_machine,
            transport,
            applied,
        );
        let (stopped_tx, stopped) = watch::channel(None);
        let (leader_tx, leader) = watch::channel(LeaderView {
            term: crate::types::Term(0),
            role: crate::types::Role::Follower,
            leader: None,
            leader_address: None,
        });
        let (metrics_tx, metrics) = watch::channel(Arc::new(Metrics {
            id,
            role: crate::types::Role::Follower,
            term: crate::types::Term(0),
            leader: None,
            commit_index: LogIndex(0),
            applied_index: applied,
            last_log_index: LogIndex(0),
            first_log_index: LogIndex(0),
            snapshot_index: LogIndex(0),
            snapshot_bytes: 0,
            log_bytes: 0,
            voters: Vec::new(),
            learners: Vec::new(),
            peers: Default::default(),
            counters: Default::default(),
            commit_latency: Default::default(),
            fsync_latency: Default::default(),
            apply_latency: Default::default(),
        }));
        let handle = tokio::spawn(async move {
            let fatal = driver
                .run(requests_rx, inbox_rx, &stopped_tx, &leader_tx, &metrics_tx)
                .await;
            stopped_tx.send_replace(Some(fatal));
        });
        Ok(RaftNode {
            id,
            requests,
            inbox,
            driver: Arc::new(Mutex::new(Some(handle))),
            stopped,
            leader,
            metrics,
            tick: config.tick_interval,
            read_policy: config.read_policy,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A receiver that sees every change of term, role or leader at this node, without
    /// polling [`status`](RaftNode::status): `changed().await` wakes on the next change
    /// (leader elected, leader lost, this node stepping up or down), `borrow()` reads the
    /// latest. Once the node has stopped, the last view stays and `changed()` returns an
    /// error (check [`is_stopped`](RaftNode::is_stopped) before trusting `role`).
    pub fn watch_leader(&self) -> watch::Receiver<LeaderView> {
        self.leader.clone()
    }

    /// The node's latest metrics (published once per tick, so at most one tick old):
    /// role, term, indexes, each follower's lag, counters and latency histograms (see
    /// [`crate::metrics`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.borrow().clone()
    }

    /// A receiver that wakes on every new metrics snapshot (once per tick while the node
    /// runs).
    pub fn watch_metrics(&self) -> watch::Receiver<Arc<Metrics>> {
        self.metrics.clone()
    }

    /// Where a transport delivers the messages it receives for this node.
    pub fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    /// Replicates `command` and resolves to the state machine's response once it is
    /// committed and applied. Fails with [`RaftError::NotLeader`] on a non-leader, and
    /// with [`RaftError::Timeout`] after `Config::request_timeout` (the command may still
    /// be applied later).
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, RaftError> {
        self.call_timed(|tx| Request::Propose(command, tx)).await
    }

    /// Proposes several commands at once, in order, as one batch (one log write, one
    /// round of AppendEntries), and resolves to each command's result in the same order.
    pub async fn propose_batch(&self, commands: Vec<Bytes>) -> Vec<Result<Bytes, RaftError>> {
        let mut replies = Vec::with_capacity(commands.len());
        let batch: Vec<(Bytes, Reply<Bytes>)> = commands
            .into_iter()
            .map(|c| {
                let (tx, rx) = oneshot::channel();
                replies.push(rx);
                (c, tx)
            })
            .collect();
        if self
            .requests
            .send(Request::ProposeBatch(batch))
            .await
            .is_err()
        {
            return replies.iter().map(|_| Err(self.stopped_error())).collect();
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(self.answer(rx.await).await);
        }
        out
    }

    /// A read under the node's default policy (`Config::read_policy`, linearizable
    /// ReadIndex unless configured otherwise), on any node: see [`read_with`](Self::read_with).
    pub async fn read(&self, query: Bytes) -> Result<Bytes, RaftError> {
        self.read_with(query, self.read_policy).await
    }

    /// Runs `query` against the state machine under `policy`:
    /// - [`ReadPolicy::ReadIndex`]: on the leader, once a quorum has confirmed its
    ///   leadership (reads arriving together share one round); on a follower or learner,
    ///   once the leader has given it a read index and it has applied that index (the
    ///   query runs on this node's state machine). Linearizable.
    /// - [`ReadPolicy::Lease`]: the same, but a leader within its lease answers without a
    ///   round; linearizable while clock drift stays within `Config::lease_drift_ticks`.
    /// - [`ReadPolicy::Stale`]: at once, from this node's state, with no guarantee.
    ///
    /// Fails with [`RaftError::NotLeader`] when no leader can be asked (this node is
    /// campaigning, or the node it asked is not the leader: retry, on the hint if given),
    /// and with [`RaftError::Timeout`] after `Config::request_timeout`.
    pub async fn read_with(&self, query: Bytes, policy: ReadPolicy) -> Result<Bytes, RaftError> {
        self.call_timed(|tx| Request::Read(query, policy, tx)).await
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, RaftError> {
        self.call(Request::Status).await
    }

    /// Takes a snapshot now, whatever the policy, and resolves once it is durable (then the
    /// log behind it is purged, keeping `snapshot_trailing` entries). Resolves to the last
    /// entry the snapshot covers; with nothing applied since the latest snapshot, to that one.
    pub async fn snapshot_now(&self) -> Result<LogId, RaftError> {
        self.call(Request::SnapshotNow).await?
    }

    /// Adds `id` as a learner: it receives the log (catching up through a snapshot if
    /// needed) but does not vote. Resolves once the change is committed, to the new
    /// configuration. `address` is recorded in the configuration (opaque to Raft: the
    /// TCP transport takes `HOST:PORT`), so every member's transport learns where `id` is,
    /// now and after restarts, and forgets it once it is removed.
    ///
    /// ```no_run
    /// # async fn grow(node: raft_core::RaftNode) -> Result<(), raft_core::RaftError> {
    /// use raft_core::NodeId;
    /// node.add_learner(NodeId(4), "10.0.0.4:7000").await?;
    /// // ... once it has caught up (see `status().peers`), give it a vote:
    /// let mut voters = node.membership().await?.voters;
    /// voters.insert(NodeId(4));
    /// node.change_membership(voters).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_learner(
        &self,
        id: NodeId,
        address: impl Into<String>,
    ) -> Result<Membership, RaftError> {
        let change = MembershipChange::AddLearner(id, Some(address.into()));
        self.change(change).await
    }

    /// Makes `voters` the voter set, through a joint configuration of the old and new sets
    /// (Raft section 6); learners named in it are promoted. Resolves once the final
    /// configuration is committed.
    ///
    /// Errors: [`RaftError::NotLeader`] on a follower (retry on the hint);
    /// [`RaftError::Membership`] with `InProgress` while another change or a leadership
    /// transfer is under way (retry), `NoVoter` or `Unchanged` for a change that cannot be
    /// made, `Disruptive` when neither `pre_vote` nor `check_quorum` is on, and `Lost` when
    /// a leader change dropped the change before it committed (retry it). A node that loses
    /// leadership keeps waiting for the outcome; use a timeout if you need one.
    pub async fn change_membership(
        &self,
        voters: std::collections::BTreeSet<NodeId>,
    ) -> Result<Membership, RaftError> {
        self.change(MembershipChange::SetVoters(voters)).await
    }

    /// Removes `id` from the cluster (a voter through a joint configuration). Removing the
    /// leader is allowed: it steps down once the change is committed.
    pub async fn remove(&self, id: NodeId) -> Result<Membership, RaftError> {
        self.change(MembershipChange::Remove(id)).await
    }

    /// On the leader: waits until member `id` holds the log up to `max_lag` entries behind
    /// the commit index (a learner that caught up can be promoted without stalling
    /// commits while the joint configuration waits for it), and resolves to its match index.
    /// Checks once per tick; bound the wait with `tokio::time::timeout`.
    ///
    /// Errors: [`RaftError::NotLeader`] on a follower or once leadership is lost, and
    /// [`RaftError::Membership`] (`NotAMember`) if `id` is not a member being replicated to.
    pub async fn wait_caught_up(&self, id: NodeId, max_lag: u64) -> Result<LogIndex, RaftError> {
        let mut every = tokio::time::interval(self.tick);
        loop {
            every.tick().await;
            let s = self.status().await?;
            if s.role != crate::types::Role::Leader {
                let address = s
                    .leader
                    .and_then(|l| s.membership.addresses.get(&l).cloned());
                return Err(RaftError::NotLeader(crate::raft::NotLeader {
                    leader_hint: s.leader,
                    leader_address: address,
                }));
            }
            let Some(&(matched, _)) = s.peers.get(&id) else {
                return Err(crate::raft::ChangeError::NotAMember(id).into());
            };
            if matched.0 + max_lag >= s.commit_index.0 {
                return Ok(matched);
            }
        }
    }

    /// The configuration in effect on this node (the latest in its log).
    pub async fn membership(&self) -> Result<Membership, RaftError> {
        Ok(self.status().await?.membership)
    }

    /// Hands leadership to the voter `target` (dissertation 3.10). While it is under way
    /// this node refuses proposals with `target` as the leader hint. Resolves once `target`
    /// leads; fails with [`RaftError::Transfer`]: `TimedOut` if it did not take over within
    /// an election timeout (this node leads on), `Superseded` if another node won, or a
    /// refusal (`NotAVoter`, `InProgress`).
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), RaftError> {
        self.call(|tx| Request::TransferLeadership(target, tx))
            .await?
    }

    async fn change(&self, change: MembershipChange) -> Result<Membership, RaftError> {
        self.call(|tx| Request::ChangeMembership(change, tx))
            .await?
    }

    /// Stops the node and waits until its tasks have finished (pending writes are completed
    /// or abandoned, never half-done). Pending client requests fail with
    /// [`RaftError::ShuttingDown`]. Calling it again is a no-op.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(handle) = self.driver.lock().await.take() {
            let _ = handle.await;
        }
    }

    /// Resolves once the node has stopped: to `None` after [`shutdown`](Self::shutdown), or
    /// to the fatal error that stopped it (a failed write, a broken invariant, a failing
    /// state machine). A server embedding the node should watch this and exit non-zero on
    /// an error, so that a supervisor restarts it from its durable state.
    pub async fn stopped(&self) -> Option<FatalError> {
        let mut rx = self.stopped.clone();
        let state = match rx.wait_for(Option::is_some).await {
            Ok(state) => state.clone().flatten(),
            Err(_) => None,
        };
        state
    }

    /// Whether the node has stopped (shut down, or after a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.stopped.borrow().is_some() || self.requests.is_closed()
    }

    /// Sends a client request and waits for its answer, at most `Config::request_timeout`.
    async fn call_timed<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(make(tx)).await.is_err() {
            return Err(self.stopped_error());
        }
        self.answer(rx.await).await
    }

    /// Turns a client's wait into its result: the answer (a timeout included: the driver
    /// fails requests older than `Config::request_timeout` at its ticks, with no timer per
    /// request), or, when the node dropped the request because it stopped, why it stopped.
    async fn answer<T>(
        &self,
        waited: Result<Result<T, RaftError>, oneshot::error::RecvError>,
    ) -> Result<T, RaftError> {
        match waited {
            Ok(result) => result,
            Err(_) => Err(self.stop_cause().await),
        }
    }

    /// Why a dropped request was dropped: a request is only dropped by a node that is
    /// stopping, and the cause (a fatal error, or a shutdown) is published as it stops.
    async fn stop_cause(&self) -> RaftError {
        let wait = std::time::Duration::from_secs(1);
        match tokio::time::timeout(wait, self.stopped()).await {
            Ok(Some(fatal)) => RaftError::Fatal(fatal),
            _ => self.stopped_error(),
        }
    }

    /// What a request to a stopped node gets: the fatal error if one stopped it.
    fn stopped_error(&self) -> RaftError {
        match self.stopped.borrow().clone().flatten() {
            Some(fatal) => RaftError::Fatal(fatal),
            None => RaftError::ShuttingDown,
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(make(tx)).await.is_err() {
            return Err(self.stopped_error());
        }
        rx.await.map_err(|_| self.stopped_error())
    }
}

/// Reads everything the core needs from the stores, reconciling the log with the latest
/// snapshot, and restores the state machine from the snapshot when it is behind it.
async fn restore(
    log: &dyn LogStore,
    snapshots: &dyn SnapshotStore,
    mut state_machine: Box<dyn StateMachine>,
    bootstrap: Membership,
) -> Result<(InitialState, Box<dyn StateMachine>), RaftError> {
    let hard_state = log.hard_state().await?;
    let mut applied = state_machine.applied_index().await?;
    // A state machine that starts empty needs the latest snapshot's bytes anyway: one read
    // gives them and the metadata (a snapshot store verifies a whole file to name it).
    let (snapshot, mut image) = if applied == LogIndex(0) {
        match snapshots.read_latest().await? {
            Some((meta, data)) => (Some(meta), Some(data)),
            None => (None, None),
        }
    } else {
        (snapshots.latest().await?, None)
    };
    let base = snapshot.as_ref().map(|s| s.last_log_id).unwrap_or_default();
    let mut log_state = log.log_state().await?;
    if log_state.last_purged.index > base.index {
        return Err(StorageError::Corrupt {
            location: "log store".into(),
            detail: format!(
                "entries up to {} were purged but the latest snapshot only covers {}",
                log_state.last_purged.index, base.index
            ),
        }
        .into());
    }
    if snapshot.is_some() && !holds(log, &log_state, base).await? {
        // A crash between saving a snapshot and purging the log behind it, or a log that
        // ends before the snapshot or disagrees with its last entry: the snapshot rules
        // (it holds only committed entries), so the log restarts right after it.
        if log_state.last.index > log_state.last_purged.index {
            log.truncate(log_state.first_index()).await?;
        }
        log.purge(base).await?;
        log_state = log.log_state().await?;
    }
    let (stored, entries) = read_log(log, &log_state, base.index).await?;
    if applied < base.index {
        let latest = match image.take() {
            Some(data) => snapshot.clone().map(|meta| (meta, data)),
            None => snapshots.read_latest().await?,
        };
        if let Some((meta, data)) = latest {
            state_machine.restore(&meta, data).await?;
            applied = meta.last_log_id.index;
        }
    }
    let init = InitialState {
        hard_state,
        snapshot,
        last_purged: log_state.last_purged,
        stored,
        entries,
        applied,
        bootstrap,
    };
    Ok((init, state_machine))
}

/// Bytes read from the log store per call at start.
const RESTORE_READ_BYTES: usize = 4 << 20;

/// Reads the stored log in bounded batches: entries up to `covered` (the snapshot's last
/// index) by id and size only, the rest whole. Memory at start then follows what must be
/// applied, not the trailing window kept behind the snapshot.
async fn read_log(
    log: &dyn LogStore,
    state: &LogState,
    covered: LogIndex,
) -> Result<(Vec<EntryMeta>, Vec<Entry>), StorageError> {
    let (mut stored, mut entries) = (Vec::new(), Vec::new());
    let end = state.last.index.next();
    let mut next = state.first_index();
    while next < end {
        let batch = log.entries(next..end, RESTORE_READ_BYTES).await?;
        let Some(last) = batch.last().map(Entry::index) else {
            return Err(StorageError::Corrupt {
                location: "log store".into(),
                detail: format!("no entry at {next} though the log ends at {}", state.last),
            });
        };
        next = last.next();
        for e in batch {
            if e.index() <= covered {
                stored.push(EntryMeta::from(&e));
            } else {
                entries.push(e);
            }
        }
    }
    Ok((stored, entries))
}

/// Whether the log holds `id` (as an entry, or as its last purged entry).
async fn holds(log: &dyn LogStore, state: &LogState, id: LogId) -> Result<bool, StorageError> {
    if id.index < state.last_purged.index || id.index > state.last.index {
        return Ok(false);
    }
    Ok(log.term(id.index).await? == Some(id.term))
}
