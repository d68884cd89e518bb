//! A large state machine's snapshot over real TCP: a follower that was down while the
//! others compacted catches up through InstallSnapshot, and proposals keep committing while
//! the leader writes the snapshot. `RAFT_LARGE_SNAPSHOT_MB` sets the state's size (CI runs
//! 10 MB; `RAFT_LARGE_SNAPSHOT_MB=100` for the heavy variant). Prints build, transfer and
//! install times and the commit latency while the snapshot is written.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use raft_core::{
    Config, Entry, EntryPayload, LogIndex, Membership, NodeId, RaftNode, Seams, SnapshotMeta,
    StateMachine, StateMachineError,
};
use raft_storage::{FileSnapshotStore, MemLogStore};
use raft_transport::{TcpConfig, TcpTransport};

/// A state of `size` bytes; each command stamps its index into the blob, so the whole
/// state depends on the history and a transferred snapshot can be checked by digest.
struct Blob {
    applied: LogIndex,
    data: BytesMut,
    /// The digest of the state, published for the test after every change.
    digest: Arc<Mutex<(LogIndex, u32)>>,
}

impl Blob {
    fn new(size: usize, digest: Arc<Mutex<(LogIndex, u32)>>) -> Blob {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Blob {
            applied: LogIndex(0),
            data: BytesMut::from(&data[..]),
            digest,
        }
    }

    fn publish(&self) {
        *self.digest.lock().expect("digest lock") = (self.applied, crc32fast::hash(&self.data));
    }
}

#[async_trait]
impl StateMachine for Blob {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.applied)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        for e in entries {
            if let EntryPayload::Command(_) = e.payload {
                let at = (e.index().0 as usize * 4099) % (self.data.len() - 8);
                self.data[at..at + 8].copy_from_slice(&e.index().0.to_le_bytes());
            }
            self.applied = e.index();
        }
        self.publish();
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn query(&self, _query: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::new())
    }

    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        let mut out = BytesMut::with_capacity(self.data.len() + 8);
        out.extend_from_slice(&self.applied.0.to_le_bytes());
        out.extend_from_slice(&self.data);
        Ok(out.freeze())
    }

    async fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), StateMachineError> {
        let (index, blob) = data.split_at(8.min(data.len()));
        let index = u64::from_le_bytes(
            index
                .try_into()
                .map_err(|_| StateMachineError("snapshot shorter than its header".into()))?,
        );
        if index != meta.last_log_id.index.0 {
            return Err(StateMachineError(format!("snapshot data at {index}")));
        }
        self.data = BytesMut::from(blob);
        self.applied = meta.last_log_id.index;
        self.publish();
        Ok(())
    }
}

struct Member {
    log: Arc<MemLogStore>,
    snapshots: Arc<FileSnapshotStore>,
    transport: TcpTransport,
    digest: Arc<Mutex<(LogIndex, u32)>>,
    node: Option<RaftNode>,
}

fn config() -> Config {
    Config {
        tick_interval: Duration::from_millis(10),
        election_timeout_min: 15,
        election_timeout_max: 30,
        heartbeat_interval: 3,
        snapshot_threshold: 0, // only the explicit snapshot below
        snapshot_trailing: 0,
        ..Config::default()
    }
}

async fn start(m: &mut Member, id: NodeId, size: usize) {
    let seams = Seams {
        log: m.log.clone(),
        snapshots: m.snapshots.clone(),
        state_machine: Box::new(Blob::new(size, m.digest.clone())),
        transport: Arc::new(m.transport.clone()),
    };
    let members = Membership::new((1..=3).map(NodeId));
    let node = RaftNode::start(id, config(), members, seams, Some(id.0))
        .await
        .expect("node starts");
    m.transport.serve(node.inbox());
    m.node = Some(node);
}

async fn leader(members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, m) in members.iter().enumerate() {
            if let Some(node) = &m.node {
                if node
                    .status()
                    .await
                    .is_ok_and(|s| s.role == raft_core::Role::Leader)
                {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn transport(id: u64, addr: std::net::SocketAddr) -> TcpTransport {
    let cfg = TcpConfig {
        cluster_id: 7,
        ..TcpConfig::default()
    };
    TcpTransport::bind(NodeId(id), addr, cfg)
        .await
        .expect("bind 127.0.0.1")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_moves_over_tcp_and_the_follower_catches_up() {
    let mb: usize = std::env::var("RAFT_LARGE_SNAPSHOT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let size = mb << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut members = Vec::new();
    for id in 1..=3 {
        let t = transport(id, "127.0.0.1:0".parse().expect("addr")).await;
        let snapshots = FileSnapshotStore::open(dir.path().join(format!("snap-{id}")), 2)
            .await
            .expect("snapshot dir");
        members.push(Member {
            log: Arc::new(MemLogStore::new()),
            snapshots: Arc::new(snapshots),
            transport: t,
            digest: Arc::default(),
            node: None,
        });
    }
    let addrs: Vec<_> = members.iter().map(|m| m.transport.local_addr()).collect();
    for m in &members {
        for (i, a) in addrs.iter().enumerate() {
            m.transport.set_peer(NodeId(i as u64 + 1), *a);
        }
    }
    for (i, m) in members.iter_mut().enumerate() {
        start(m, NodeId(i as u64 + 1), size).await;
    }
    // --- phase 1: a follower goes down; the others commit and snapshot past it
    let l = leader(&members).await;
    let down = (l + 1) % 3;
    if let Some(node) = members[down].node.take() {
        node.shutdown().await;
        members[down].transport.shutdown();
    }
    let node = members[l].node.clone().expect("leader up");
    for i in 0..50u32 {
        node.propose(Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .expect("commit");
    }
    // --- phase 2: snapshot while a client keeps proposing; measure its commit latency
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let proposer = {
        let (node, writing) = (node.clone(), writing.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                if node.propose(Bytes::from_static(b"during")).await.is_err() {
                    break;
                }
                lat.push(t.elapsed());
            }
            lat
        })
    };
    let t = Instant::now();
    let snapshot = node.snapshot_now().await.expect("snapshot");
    let build = t.elapsed();
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut lat = proposer.await.expect("proposer");
    assert!(
        !lat.is_empty(),
        "proposals committed while the snapshot was written"
    );
    lat.sort();
    let status = node.status().await.expect("status");
    assert!(
        status.first_log_index > snapshot.index,
        "log purged: {status:?}"
    );
    // --- phase 3: the follower restarts and can only catch up from the snapshot
    let t = Instant::now();
    members[down].transport = transport(down as u64 + 1, addrs[down]).await;
    for (i, a) in addrs.iter().enumerate() {
        members[down].transport.set_peer(NodeId(i as u64 + 1), *a);
    }
    start(&mut members[down], NodeId(down as u64 + 1), size).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let caught = members[down].digest.lock().expect("digest").0 >= snapshot.index;
        if caught {
            break;
        }
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let install = t.elapsed();
    // --- the follower's state is the leader's, byte for byte, at the same index
    let target = node.status().await.expect("status").commit_index;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, da) = *members[l].digest.lock().expect("digest");
        let (b, db) = *members[down].digest.lock().expect("digest");
        if a >= target && a == b {
            assert_eq!(da, db, "states differ at {a}");
            break;
        }
        assert!(Instant::now() < deadline, "never at the same index");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "large snapshot: {mb} MB state; build+write {:.2} s; transfer+install+catch-up {:.2} s; \
         {} commits while writing it: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        build.as_secs_f64(),
        install.as_secs_f64(),
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    for m in &mut members {
        if let Some(node) = m.node.take() {
            node.shutdown().await;
        }
        m.transport.shutdown();
    }
}
