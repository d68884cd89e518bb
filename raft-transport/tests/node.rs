//! The async node over the in-memory network and stores: the user's handle end to end.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::{cmd, within, Cluster};
use raft_core::{
    Config, Entry, HardState, LogId, LogIndex, LogState, LogStore, NodeId, RaftError, Role,
    StorageError, Term,
};

#[tokio::test(start_paused = true)]
async fn propose_resolves_to_the_state_machine_response() {
    let c = Cluster::new(3, 1).await;
    let leader = c.check_one_leader().await;
    let resp = within(10, c.node(leader).unwrap().propose(cmd("x")))
        .await
        .unwrap();
    assert_eq!(
        resp,
        Bytes::from("applied 2"),
        "index 1 is the leader's no-op"
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn proposal_to_a_follower_fails_with_the_leader_hint() {
    let c = Cluster::new(3, 2).await;
    let leader = c.check_one_leader().await;
    c.one(cmd("warm-up"), 3, true).await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let err = c
        .node(follower)
        .unwrap()
        .propose(cmd("y"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RaftError::NotLeader(raft_core::NotLeader { leader_hint: Some(l), .. }) if *l == leader),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&leader.to_string()),
        "the message names the leader: {err}"
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn linearizable_read_reflects_every_acknowledged_write() {
    let c = Cluster::new(3, 3).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).unwrap().clone();
    for i in 0..5 {
        within(10, node.propose(cmd(i))).await.unwrap();
        let seen = within(10, node.read(Bytes::new())).await.unwrap();
        assert_eq!(seen, Bytes::from((i + 1).to_string()));
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn read_on_an_isolated_leader_never_succeeds() {
    let mut c = Cluster::new(3, 4).await;
    let leader = c.check_one_leader().await;
    c.one(cmd("a"), 3, true).await;
    c.disconnect(leader);
    let node = c.node(leader).unwrap().clone();
    let read = tokio::time::timeout(Duration::from_secs(5), node.read(Bytes::new())).await;
    match read {
        Err(_elapsed) => {}
        Ok(Err(RaftError::NotLeader { .. })) => {}
        Ok(other) => panic!("an isolated leader answered a read: {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn status_reports_role_term_leader_and_progress() {
    let c = Cluster::new(3, 5).await;
    let leader = c.check_one_leader().await;
    let idx = c.one(cmd("s"), 3, true).await;
    let s = c.node(leader).unwrap().status().await.unwrap();
    assert_eq!(s.role, Role::Leader);
    assert_eq!(s.leader, Some(leader));
    assert!(s.commit_index >= LogIndex(idx));
    assert_eq!(s.last_log_id.index, LogIndex(idx));
    assert_eq!(s.peers.len(), 2);
    assert!(s.peers.values().all(|(m, _)| *m == LogIndex(idx)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in c.ids() {
        let s = c.node(id).unwrap().status().await.unwrap();
        assert_eq!(s.applied_index, LogIndex(idx), "{id}");
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn metrics_count_proposals_commits_elections_and_traffic_and_follow_a_failover() {
    use raft_core::metrics::MessageKind;
    let mut c = Cluster::new(3, 15).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).unwrap().clone();
    for i in 0..10 {
        within(10, node.propose(cmd(format!("m{i}"))))
            .await
            .unwrap();
    }
    // Published once per tick: the next snapshot holds everything above.
    let mut watch = node.watch_metrics();
    watch.borrow_and_update();
    within(10, watch.changed()).await.unwrap();
    let m = node.metrics();
    assert_eq!(
        (m.id, m.role, m.leader),
        (leader, Role::Leader, Some(leader))
    );
    assert_eq!(m.counters.proposals, 10);
    assert_eq!(m.counters.proposals_committed, 10);
    assert_eq!(
        m.commit_latency.count, 10,
        "one commit latency per proposal"
    );
    assert!(m.fsync_latency.count >= 1 && m.apply_latency.count >= 1);
    assert_eq!(m.counters.elections_won, 1);
    assert!(m.counters.elections_started >= 1 && m.counters.leader_changes >= 1);
    assert_eq!(m.commit_index, m.last_log_index);
    assert_eq!(m.peers.len(), 2);
    let sent = m.counters.sent.get(MessageKind::AppendEntries);
    assert!(
        sent.messages >= 2 && sent.payload_bytes >= 10 * 2,
        "{sent:?}"
    );
    assert!(
        m.counters
            .received
            .get(MessageKind::AppendResponse)
            .messages
            >= 2
    );
    // Every follower caught up: no lag once the heartbeats carried the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = node.metrics();
    assert!(m.peers.values().all(|p| p.lag == 0), "{:?}", m.peers);
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    let f = c.node(follower).unwrap().metrics();
    assert_eq!(f.applied_index, m.applied_index);
    assert!(
        f.counters
            .received
            .get(MessageKind::AppendEntries)
            .payload_bytes
            >= 20
    );
    assert_eq!(f.counters.proposals, 0);
    // A failover: someone else wins, and every survivor counts a new leader.
    let before: Vec<u64> = c
        .ids()
        .iter()
        .filter(|&&id| id != leader)
        .map(|&id| c.node(id).unwrap().metrics().counters.leader_changes)
        .collect();
    c.crash(leader).await;
    let new = c.check_one_leader().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let won = c.node(new).unwrap().metrics();
    assert_eq!((won.role, won.counters.elections_won), (Role::Leader, 1));
    let after: Vec<u64> = c
        .ids()
        .iter()
        .filter(|&&id| id != leader)
        .map(|&id| c.node(id).unwrap().metrics().counters.leader_changes)
        .collect();
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "{before:?} -> {after:?}"
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_cluster_resumes_from_its_stores() {
    let mut c = Cluster::new(3, 6).await;
    c.check_one_leader().await;
    for i in 0..10 {
        c.one(cmd(i), 3, true).await;
    }
    for id in c.ids() {
        c.crash(id).await;
    }
    for id in c.ids() {
        c.start(id).await;
    }
    c.check_one_leader().await;
    let idx = c.one(cmd("after"), 3, true).await;
    assert!(idx >= 12, "the log continued after index {idx}");
    for id in c.ids() {
        let applied = c.applied(id);
        for i in 0..10u64 {
            assert!(
                applied.values().any(|v| *v == cmd(i)),
                "{id} lost command {i}"
            );
        }
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_fails_pending_requests_and_later_calls() {
    let mut c = Cluster::new(3, 7).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).unwrap().clone();
    c.crash(leader).await;
    let err = within(10, node.propose(cmd("late"))).await.unwrap_err();
    assert!(matches!(err, RaftError::ShuttingDown), "{err:?}");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_config_is_refused_at_startup() {
    let bad = Config {
        election_timeout_min: 10,
        election_timeout_max: 10,
        ..Config::default()
    };
    let err = bad.validate().unwrap_err();
    assert!(err.to_string().contains("election_timeout_max"), "{err}");
}

/// A LogStore that counts appends and makes each one take a while, like an fsync; its
/// appends fail once `fail` is set.
struct SlowCountingLog {
    inner: raft_storage::MemLogStore,
    appends: Arc<AtomicU64>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl LogStore for SlowCountingLog {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.hard_state().await
    }
    async fn save_hard_state(&self, h: &HardState) -> Result<(), StorageError> {
        self.inner.save_hard_state(h).await
    }
    async fn log_state(&self) -> Result<LogState, StorageError> {
        self.inner.log_state().await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.appends.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Backend("disk on fire".into()));
        }
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.inner.truncate(from).await
    }
    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.inner.purge(upto).await
    }
    async fn entries(
        &self,
        r: std::ops::Range<LogIndex>,
        max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(r, max).await
    }
    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.inner.term(index).await
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_proposals_share_log_writes() {
    // Group commit: proposals arriving while a write is in flight go into the next one.
    let appends = Arc::new(AtomicU64::new(0));
    let log = Arc::new(SlowCountingLog {
        inner: raft_storage::MemLogStore::new(),
        appends: appends.clone(),
        fail: Default::default(),
    });
    let net = raft_transport::MemNetwork::new(8);
    let snapshots = Arc::new(raft_storage::MemSnapshotStore::default());
    let node = single_node(log, snapshots, &net).await;
    let before = appends.load(Ordering::Relaxed);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let n = node.clone();
            tokio::spawn(async move { n.propose(cmd(i)).await })
        })
        .collect();
    for t in tasks {
        within(10, t).await.unwrap().unwrap();
    }
    let writes = appends.load(Ordering::Relaxed) - before;
    assert!(writes <= 20, "200 proposals took {writes} log writes");
    node.shutdown().await;
}

/// A SnapshotStore that counts how often the latest snapshot is looked up and read whole.
struct CountingSnapshots {
    inner: Arc<raft_storage::MemSnapshotStore>,
    latest: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
}

#[async_trait]
impl raft_core::SnapshotStore for CountingSnapshots {
    async fn begin(
        &self,
        meta: &raft_core::SnapshotMeta,
    ) -> Result<Box<dyn raft_core::SnapshotWriter>, StorageError> {
        self.inner.begin(meta).await
    }
    async fn latest(&self) -> Result<Option<raft_core::SnapshotMeta>, StorageError> {
        self.latest.fetch_add(1, Ordering::Relaxed);
        self.inner.latest().await
    }
    async fn read_latest(&self) -> Result<Option<(raft_core::SnapshotMeta, Bytes)>, StorageError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_latest().await
    }
}

/// A one-voter cluster on these stores, started and elected.
async fn single_node(
    log: Arc<dyn LogStore>,
    snapshots: Arc<dyn raft_core::SnapshotStore>,
    net: &raft_transport::MemNetwork,
) -> raft_core::RaftNode {
    single_node_with(log, snapshots, net, Box::new(common::Recorder::new())).await
}

/// A one-voter cluster on these stores and this state machine, started and elected.
async fn single_node_with(
    log: Arc<dyn LogStore>,
    snapshots: Arc<dyn raft_core::SnapshotStore>,
    net: &raft_transport::MemNetwork,
    state_machine: Box<dyn raft_core::StateMachine>,
) -> raft_core::RaftNode {
    let seams = raft_core::Seams {
        log,
        snapshots,
        state_machine,
        transport: net.transport(NodeId(1)),
    };
    let node = raft_core::RaftNode::start(
        NodeId(1),
        common::test_config(),
        raft_core::Membership::new([NodeId(1)]),
        seams,
        Some(9),
    )
    .await
    .unwrap();
    within(10, async {
        while node.status().await.unwrap().role != Role::Leader {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    node
}

#[tokio::test(start_paused = true)]
async fn a_restart_reads_the_latest_snapshot_once() {
    // A state machine that starts empty needs the snapshot's bytes: the node reads the
    // snapshot once at start, never once for its metadata and again for its bytes.
    let log = Arc::new(raft_storage::MemLogStore::new());
    let store = Arc::new(raft_storage::MemSnapshotStore::default());
    let net = raft_transport::MemNetwork::new(8);
    let node = single_node(log.clone(), store.clone(), &net).await;
    for i in 0..5 {
        node.propose(cmd(i)).await.unwrap();
    }
    let taken = node.snapshot_now().await.unwrap();
    node.shutdown().await;
    let (latest, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counting = Arc::new(CountingSnapshots {
        inner: store,
        latest: latest.clone(),
        reads: reads.clone(),
    });
    let node = single_node(log, counting, &net).await;
    let status = node.status().await.unwrap();
    assert!(status.applied_index >= taken.index, "{status:?}");
    assert_eq!(reads.load(Ordering::Relaxed), 1);
    assert_eq!(latest.load(Ordering::Relaxed), 0);
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn follower_read_reflects_every_acknowledged_write() {
    // The follower asks the leader for a read index and answers from its own state machine
    // once it has applied that index.
    let c = Cluster::new(3, 11).await;
    let leader = c.check_one_leader().await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let (l, f) = (
        c.node(leader).unwrap().clone(),
        c.node(follower).unwrap().clone(),
    );
    for i in 0..5 {
        within(10, l.propose(cmd(i))).await.unwrap();
        let seen = within(10, f.read(Bytes::new())).await.unwrap();
        assert_eq!(seen, Bytes::from((i + 1).to_string()));
    }
    let reads = f.status().await.unwrap().reads;
    assert_eq!(reads.follower_read_index, 5, "{reads:?}");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stale_read_is_served_locally_without_the_leader() {
    let mut c = Cluster::new(3, 12).await;
    let leader = c.check_one_leader().await;
    c.one(cmd("a"), 3, true).await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.disconnect(follower);
    let f = c.node(follower).unwrap().clone();
    let seen = within(1, f.read_with(Bytes::new(), raft_core::ReadPolicy::Stale))
        .await
        .unwrap();
    assert_eq!(seen, Bytes::from("1"));
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_proposal_without_a_quorum_times_out_with_a_typed_error() {
    let cfg = Config {
        request_timeout: Duration::from_secs(2),
        check_quorum: false, // the leader stays leader, cut off
        ..common::test_config()
    };
    let mut c = Cluster::with_config(3, 13, cfg).await;
    let leader = c.check_one_leader().await;
    c.one(cmd("a"), 3, true).await;
    c.disconnect(leader);
    let node = c.node(leader).unwrap().clone();
    let err = within(10, node.propose(cmd("b"))).await.unwrap_err();
    assert!(
        matches!(err, RaftError::Timeout(d) if d == Duration::from_secs(2)),
        "{err:?}"
    );
    let err = within(10, node.read(Bytes::new())).await.unwrap_err();
    assert!(matches!(err, RaftError::Timeout(_)), "{err:?}");
    c.shutdown().await;
}

/// A state machine that answers nothing for commands (only for the leader's no-op).
struct ShortChanged;

#[async_trait]
impl raft_core::StateMachine for ShortChanged {
    async fn applied_index(&self) -> Result<LogIndex, raft_core::StateMachineError> {
        Ok(LogIndex(0))
    }
    async fn apply(
        &mut self,
        entries: &[Entry],
    ) -> Result<Vec<Bytes>, raft_core::StateMachineError> {
        let others = entries
            .iter()
            .filter(|e| !matches!(e.payload, raft_core::EntryPayload::Command(_)));
        Ok(others.map(|_| Bytes::new()).collect())
    }
    async fn query(&self, _: Bytes) -> Result<Bytes, raft_core::StateMachineError> {
        Ok(Bytes::new())
    }
    async fn snapshot(&mut self) -> Result<Bytes, raft_core::StateMachineError> {
        Ok(Bytes::new())
    }
    async fn restore(
        &mut self,
        _: &raft_core::SnapshotMeta,
        _: Bytes,
    ) -> Result<(), raft_core::StateMachineError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_reaches_waiting_clients_with_its_cause() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(SlowCountingLog {
        inner: raft_storage::MemLogStore::new(),
        appends: Default::default(),
        fail: fail.clone(),
    });
    let net = raft_transport::MemNetwork::new(1);
    let node = single_node(log, Arc::new(raft_storage::MemSnapshotStore::new(2)), &net).await;
    within(10, node.propose(cmd("ok"))).await.unwrap();
    fail.store(true, Ordering::SeqCst);
    let err = within(10, node.propose(cmd("lost"))).await.unwrap_err();
    match &err {
        RaftError::Fatal(raft_core::FatalError::WriteFailed { error, .. }) => {
            assert!(error.contains("disk on fire"), "{err}");
        }
        other => panic!("expected the write failure, got {other:?}"),
    }
    let later = within(10, node.read(Bytes::new())).await.unwrap_err();
    assert!(matches!(later, RaftError::Fatal(_)), "{later:?}");
}

#[tokio::test(start_paused = true)]
async fn a_state_machine_that_answers_too_few_responses_is_an_error() {
    let net = raft_transport::MemNetwork::new(1);
    let node = single_node_with(
        Arc::new(raft_storage::MemLogStore::new()),
        Arc::new(raft_storage::MemSnapshotStore::new(2)),
        &net,
        Box::new(ShortChanged),
    )
    .await;
    let err = within(10, node.propose(cmd("x"))).await.unwrap_err();
    assert!(
        err.to_string().contains("responses for"),
        "not silent empty replies: {err}"
    );
    assert!(matches!(
        within(10, node.stopped()).await,
        Some(raft_core::FatalError::StateMachine(_))
    ));
}
