//! A cluster of real async `RaftNode`s over the in-memory network and stores, in the shape
//! of the MIT 6.5840 Raft lab's `config.go`: start, crash, restart, partition, and the
//! checks `check_one_leader`, `check_terms`, `n_committed` and `one`.
//!
//! Tests run on tokio's paused clock: time advances only when every task is idle, so a
//! run is fast and its timing repeatable.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Config, Entry, EntryPayload, LogIndex, Membership, NodeId, RaftError, RaftNode, Role, Seams,
    SnapshotMeta, StateMachine, StateMachineError,
};
use raft_storage::{MemLogStore, MemSnapshotStore};
use raft_transport::{MemNetwork, TcpConfig, TcpTransport};

/// What each node applied: index -> command. Shared with the test so it can compare nodes.
pub type Applied = Arc<Mutex<BTreeMap<u64, Bytes>>>;

/// A volatile state machine that records every command it applies.
pub struct Recorder {
    applied_index: LogIndex,
    record: Applied,
}

impl Recorder {
    /// A fresh recorder with its own record.
    pub fn new() -> Recorder {
        Recorder {
            applied_index: LogIndex(0),
            record: Applied::default(),
        }
    }
}

#[async_trait]
impl StateMachine for Recorder {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.applied_index)
    }

    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let mut record = self.record.lock().expect("record lock");
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            assert_eq!(e.index(), self.applied_index.next(), "applied out of order");
            self.applied_index = e.index();
            if let EntryPayload::Command(c) = &e.payload {
                record.insert(e.index().0, c.clone());
                out.push(Bytes::from(format!("applied {}", e.index().0)));
            } else {
                out.push(Bytes::new());
            }
        }
        Ok(out)
    }

    async fn query(&self, _query: Bytes) -> Result<Bytes, StateMachineError> {
        let record = self.record.lock().expect("record lock");
        Ok(Bytes::from(record.len().to_string()))
    }

    /// The state is every command applied, by index: the snapshot holds them all (as the
    /// lab's does), so a node restored from it agrees with the others index by index.
    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        let record = self.record.lock().expect("record lock");
        postcard::to_allocvec(&(self.applied_index.0, &*record))
            .map(Bytes::from)
            .map_err(|e| StateMachineError(e.to_string()))
    }

    async fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), StateMachineError> {
        let (index, restored): (u64, BTreeMap<u64, Bytes>) =
            postcard::from_bytes(&data).map_err(|e| StateMachineError(e.to_string()))?;
        if index != meta.last_log_id.index.0 {
            return Err(StateMachineError(format!(
                "snapshot data at {index}, metadata at {}",
                meta.last_log_id.index
            )));
        }
        *self.record.lock().expect("record lock") = restored;
        self.applied_index = meta.last_log_id.index;
        Ok(())
    }
}

struct Slot {
    log: Arc<MemLogStore>,
    snapshots: Arc<MemSnapshotStore>,
    applied: Applied,
    node: Option<RaftNode>,
    restarts: u64,
}

/// TCP transports and the addresses they keep across restarts.
#[derive(Default)]
pub struct TcpNet {
    pub addrs: BTreeMap<NodeId, std::net::SocketAddr>,
    pub transports: BTreeMap<NodeId, TcpTransport>,
    /// Where member certificates are (`raft-node-<id>.pem` ...), when links are TLS.
    pub tls_dir: Option<std::path::PathBuf>,
}

impl TcpNet {
    /// Node `id`'s transport settings: TLS with its own certificate when the net has them.
    pub fn config(&self, id: NodeId) -> TcpConfig {
        let tls = self.tls_dir.as_ref().map(|dir| {
            let files =
                raft_transport::tls::TlsFiles::in_dir(dir, &raft_transport::tls::member_name(id));
            raft_transport::tls::TlsIdentity::load_member(id, files).expect("member certificate")
        });
        TcpConfig {
            tls,
            ..tcp_config()
        }
    }

    /// The transport of `id`: the one bound at build time, or a new one on the address it
    /// had (after a crash closed it), knowing every address bound so far.
    async fn transport(&mut self, id: NodeId) -> TcpTransport {
        let t = match self.transports.get(&id) {
            Some(t) => t.clone(),
            None => {
                let at = self
                    .addrs
                    .get(&id)
                    .copied()
                    .unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
                let t = TcpTransport::bind(id, at, self.config(id))
                    .await
                    .expect("bind 127.0.0.1");
                self.addrs.insert(id, t.local_addr());
                self.transports.insert(id, t.clone());
                t
            }
        };
        for (&peer, &addr) in &self.addrs {
            if !t.peers().contains_key(&peer) {
                t.set_peer(peer, addr);
            }
        }
        t
    }
}

/// The cluster under test.
pub struct Cluster {
    pub net: MemNetwork,
    /// Set when the cluster runs over real TCP on 127.0.0.1.
    pub tcp: Option<TcpNet>,
    pub cfg: Config,
    seed: u64,
    membership: Membership,
    slots: BTreeMap<NodeId, Slot>,
    connected: BTreeMap<NodeId, bool>,
    live: LiveNodes,
}

/// The handles of the nodes running right now, shared with client tasks so they follow
/// crashes and restarts.
pub type LiveNodes = Arc<Mutex<BTreeMap<NodeId, RaftNode>>>;

/// The lab's election timeout bound: a leader must emerge within this.
pub const ELECTION_WAIT: Duration = Duration::from_secs(5);

pub fn test_config() -> Config {
    Config {
        tick_interval: Duration::from_millis(10),
        election_timeout_min: 15,
        election_timeout_max: 30,
        heartbeat_interval: 3,
        ..Config::default()
    }
}

impl Cluster {
    /// `n` nodes, all started and connected.
    pub async fn new(n: u64, seed: u64) -> Cluster {
        Self::with_config(n, seed, test_config()).await
    }

    pub async fn with_config(n: u64, seed: u64, cfg: Config) -> Cluster {
        Self::build(n, seed, cfg, false).await
    }

    /// `n` nodes talking over TCP on 127.0.0.1 ephemeral ports.
    pub async fn tcp(n: u64, seed: u64) -> Cluster {
        let cfg = Config {
            tick_interval: Duration::from_millis(10),
            ..test_config()
        };
        Self::build(n, seed, cfg, true).await
    }

    /// `n` nodes talking over mutual TLS on 127.0.0.1, with the member certificates in
    /// `dir` (see `raft_transport::tls::pki`).
    pub async fn tls(n: u64, seed: u64, dir: &std::path::Path) -> Cluster {
        let cfg = Config {
            tick_interval: Duration::from_millis(10),
            ..test_config()
        };
        Self::build_with(
            n,
            seed,
            cfg,
            Some(TcpNet {
                tls_dir: Some(dir.to_owned()),
                ..TcpNet::default()
            }),
        )
        .await
    }

    async fn build(n: u64, seed: u64, cfg: Config, tcp: bool) -> Cluster {
        Self::build_with(n, seed, cfg, tcp.then(TcpNet::default)).await
    }

    async fn build_with(n: u64, seed: u64, cfg: Config, tcp: Option<TcpNet>) -> Cluster {
        println!("cluster seed {seed} (rerun with this seed to replay)");
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut c = Cluster {
            net: MemNetwork::new(seed),
            tcp,
            cfg,
            seed,
            membership: Membership::new(ids.iter().copied()),
            slots: BTreeMap::new(),
            connected: BTreeMap::new(),
            live: LiveNodes::default(),
        };
        for &id in &ids {
            c.add_slot(id);
        }
        if let Some(net) = &mut c.tcp {
            for &id in &ids {
                let t =
                    TcpTransport::bind(id, "127.0.0.1:0".parse().expect("addr"), net.config(id))
                        .await
                        .expect("bind 127.0.0.1");
                net.addrs.insert(id, t.local_addr());
                net.transports.insert(id, t);
            }
        }
        for &id in &ids {
            c.start(id).await;
        }
        c
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().copied().collect()
    }

    /// Starts a new node `id` on empty stores, outside the configuration: it takes part
    /// once a membership change adds it (in-memory network only).
    pub async fn add_spare(&mut self, id: NodeId) {
        self.add_slot(id);
        self.start(id).await;
    }

    /// Empty stores for `id`, connected.
    fn add_slot(&mut self, id: NodeId) {
        self.slots.insert(
            id,
            Slot {
                log: Arc::new(MemLogStore::new()),
                snapshots: Arc::new(MemSnapshotStore::default()),
                applied: Applied::default(),
                node: None,
                restarts: 0,
            },
        );
        self.connected.insert(id, true);
    }

    /// Starts (or restarts) `id` on its persisted stores with a fresh state machine.
    pub async fn start(&mut self, id: NodeId) {
        let slot = self.slots.get_mut(&id).expect("known node");
        if slot.node.is_some() {
            return;
        }
        slot.restarts += 1;
        slot.applied = Applied::default();
        let seams = Seams {
            log: slot.log.clone(),
            snapshots: slot.snapshots.clone(),
            state_machine: Box::new(Recorder {
                applied_index: LogIndex(0),
                record: slot.applied.clone(),
            }),
            transport: match &mut self.tcp {
                Some(net) => Arc::new(net.transport(id).await),
                None => self.net.transport(id),
            },
        };
        let seed = self.seed ^ (id.0 << 20) ^ slot.restarts;
        let node = RaftNode::start(
            id,
            self.cfg.clone(),
            self.membership.clone(),
            seams,
            Some(seed),
        )
        .await
        .expect("node starts");
        match &self.tcp {
            Some(net) => net.transports[&id].serve(node.inbox()),
            None => self.net.register(id, node.inbox()),
        }
        self.live
            .lock()
            .expect("live lock")
            .insert(id, node.clone());
        slot.node = Some(node);
        if !self.connected[&id] {
            self.net.isolate(id);
        }
    }

    /// Crashes `id`: its process state is gone; its stores keep what was durable.
    pub async fn crash(&mut self, id: NodeId) {
        let slot = self.slots.get_mut(&id).expect("known node");
        if let Some(node) = slot.node.take() {
            self.live.lock().expect("live lock").remove(&id);
            self.net.unregister(id);
            if let Some(t) = self.tcp.as_mut().and_then(|n| n.transports.remove(&id)) {
                t.shutdown();
            }
            node.shutdown().await;
        }
    }

    pub fn disconnect(&mut self, id: NodeId) {
        assert!(self.tcp.is_none(), "partitions need the in-memory network");
        self.connected.insert(id, false);
        self.net.isolate(id);
    }

    pub fn connect(&mut self, id: NodeId) {
        self.connected.insert(id, true);
        self.net.reconnect(id);
        // Keep other disconnected nodes cut off.
        for (&other, &up) in &self.connected {
            if !up {
                self.net.isolate(other);
            }
        }
    }

    pub fn is_connected(&self, id: NodeId) -> bool {
        self.connected[&id]
    }

    /// The running nodes, kept current across crashes and restarts.
    pub fn live(&self) -> LiveNodes {
        self.live.clone()
    }

    /// Nodes that think they lead right now (connected or not).
    pub async fn leaders_now(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        for id in self.ids() {
            if let Some(node) = self.node(id) {
                if let Ok(s) = node.status().await {
                    if s.role == Role::Leader {
                        out.push(id);
                    }
                }
            }
        }
        out
    }

    pub fn node(&self, id: NodeId) -> Option<&RaftNode> {
        self.slots[&id].node.as_ref()
    }

    pub async fn sleep(d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// The leader among connected, live nodes: exactly one per term, else panic. Waits up to
    /// the election bound for one to appear.
    pub async fn check_one_leader(&self) -> NodeId {
        for _ in 0..10 {
            Self::sleep(Duration::from_millis(450)).await;
            let mut by_term: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
            for id in self.ids() {
                if !self.connected[&id] {
                    continue;
                }
                if let Some(node) = self.node(id) {
                    if let Ok(s) = node.status().await {
                        if s.role == Role::Leader {
                            by_term.entry(s.term.0).or_default().push(id);
                        }
                    }
                }
            }
            for (term, leaders) in &by_term {
                assert!(
                    leaders.len() <= 1,
                    "term {term} has {} leaders: {leaders:?}",
                    leaders.len()
                );
            }
            if let Some((_, leaders)) = by_term.iter().next_back() {
                return leaders[0];
            }
        }
        panic!("expected one leader, got none");
    }

    /// The term all connected nodes agree on.
    pub async fn check_terms(&self) -> u64 {
        let mut term = None;
        for id in self.ids() {
            if !self.connected[&id] {
                continue;
            }
            if let Some(node) = self.node(id) {
                let t = node.status().await.expect("status").term.0;
                match term {
                    None => term = Some(t),
                    Some(x) => assert_eq!(x, t, "servers disagree on term"),
                }
            }
        }
        term.expect("some node is connected")
    }

    /// Asserts no connected node thinks it leads.
    pub async fn check_no_leader(&self) {
        for id in self.ids() {
            if !self.connected[&id] {
                continue;
            }
            if let Some(node) = self.node(id) {
                let s = node.status().await.expect("status");
                assert_ne!(s.role, Role::Leader, "{id} leads without a majority");
            }
        }
    }

    /// How many nodes applied `index`, and the command there; panics if two disagree.
    pub fn n_committed(&self, index: u64) -> (usize, Option<Bytes>) {
        let mut count = 0;
        let mut value: Option<Bytes> = None;
        for slot in self.slots.values() {
            let record = slot.applied.lock().expect("record lock");
            if let Some(v) = record.get(&index) {
                if let Some(prev) = &value {
                    assert_eq!(prev, v, "committed values differ at index {index}");
                }
                value = Some(v.clone());
                count += 1;
            }
        }
        (count, value)
    }

    /// Proposes `cmd` through whichever node leads, retrying for up to 10 seconds, and
    /// waits until at least `expected` nodes applied it. Returns its index.
    pub async fn one(&self, cmd: Bytes, expected: usize, retry: bool) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            for id in self.ids() {
                if !self.connected[&id] {
                    continue;
                }
                let Some(node) = self.node(id).cloned() else {
                    continue;
                };
                let proposal =
                    tokio::time::timeout(Duration::from_secs(2), node.propose(cmd.clone())).await;
                let Ok(Ok(resp)) = proposal else { continue };
                let index: u64 = std::str::from_utf8(&resp)
                    .ok()
                    .and_then(|s| s.strip_prefix("applied "))
                    .and_then(|s| s.parse().ok())
                    .expect("recorder response names the index");
                for _ in 0..40 {
                    let (n, v) = self.n_committed(index);
                    if n >= expected && v.as_ref() == Some(&cmd) {
                        return index;
                    }
                    Self::sleep(Duration::from_millis(50)).await;
                }
                if !retry {
                    panic!("one({cmd:?}) failed to reach agreement on {expected} nodes");
                }
            }
            Self::sleep(Duration::from_millis(50)).await;
        }
        panic!("one({cmd:?}) failed to reach agreement");
    }

    /// Proposes at `id` without waiting for agreement; returns the error on a non-leader.
    pub fn start_command(
        &self,
        id: NodeId,
        cmd: Bytes,
    ) -> tokio::task::JoinHandle<Result<Bytes, RaftError>> {
        let node = self.node(id).cloned().expect("node is up");
        tokio::spawn(async move { node.propose(cmd).await })
    }

    /// Every command applied by `id`, by index.
    pub fn applied(&self, id: NodeId) -> BTreeMap<u64, Bytes> {
        self.slots[&id].applied.lock().expect("record lock").clone()
    }

    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.crash(id).await;
        }
    }
}

/// Awaits `fut`, failing the test if it takes longer than `secs` (simulated) seconds: a
/// stuck cluster must fail a test, not hang it.
pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {secs} s"))
}

pub fn tcp_config() -> TcpConfig {
    TcpConfig {
        cluster_id: 42,
        ..TcpConfig::default()
    }
}

pub fn cmd(s: impl std::fmt::Display) -> Bytes {
    Bytes::from(s.to_string())
}

/// The seed a scenario starts from: `RAFT_SCENARIO_SEED` (default 0) plus `offset`.
pub fn seed(offset: u64) -> u64 {
    std::env::var("RAFT_SCENARIO_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + offset
}

/// `short` rounds, or `long` ones with `RAFT_SCENARIO_LONG` set.
pub fn rounds(short: usize, long: usize) -> usize {
    if std::env::var("RAFT_SCENARIO_LONG").is_ok() {
        long
    } else {
        short
    }
}

/// The node `k` places after `id`, wrapping around.
pub fn nth(c: &Cluster, id: NodeId, k: u64) -> NodeId {
    let n = c.ids().len() as u64;
    NodeId((id.0 - 1 + k) % n + 1)
}

/// A random command.
pub fn random_cmd(r: &mut rand_chacha::ChaCha8Rng) -> Bytes {
    use rand::Rng;
    cmd(format!("v{}", r.gen::<u32>()))
}

/// The lab's unreliable network: up to 27 ms of delay and 10% loss on every link.
pub fn unreliable() -> raft_transport::LinkFaults {
    raft_transport::LinkFaults {
        drop_rate: 0.1,
        delay: (Duration::ZERO, Duration::from_millis(27)),
        ..raft_transport::LinkFaults::default()
    }
}

impl Cluster {
    /// Crashes every node, then restarts them all from their stores.
    pub async fn restart_all(&mut self) {
        for id in self.ids() {
            self.crash(id).await;
        }
        for id in self.ids() {
            self.start(id).await;
        }
    }
}
