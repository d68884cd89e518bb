//! # raft-benches
//!
//! What the criterion benchmarks and the `raft-bench` tool share: the storage and transport
//! choices to compare, an in-process cluster built from them, and a closed-loop load
//! generator that measures commit throughput and latency.
//!
//! ## Benchmarking your own storage
//!
//! Implement [`raft_core::LogStore`] and [`raft_core::SnapshotStore`], then add one line to
//! [`STORAGES`]:
//!
//! ```ignore
//! ("mystore", |dir| Box::pin(async move { Ok(Stores::new(MyLog::open(dir).await?, MySnapshots::open(dir).await?)) })),
//! ```
//!
//! and run `raft-bench --storage mem,redb,mystore ...`.
#![deny(missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hdrhistogram::Histogram;
use raft_core::{
    Config, Entry, HardState, LogId, LogIndex, LogState, LogStore, LogWrite, Membership, NodeId,
    RaftError, RaftNode, Role, Seams, SnapshotMeta, SnapshotStore, StateMachine, StateMachineError,
    StorageError, Term, Transport,
};
use raft_storage::{MemLogStore, MemSnapshotStore};
use raft_transport::tls::{pki::Pki, TlsIdentity};
use raft_transport::{MemNetwork, TcpConfig, TcpTransport};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};

/// A node's stores.
pub struct Stores {
    /// The log.
    pub log: Arc<dyn LogStore>,
    /// Snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
}

impl Stores {
    /// Wraps concrete stores.
    pub fn new(log: impl LogStore, snapshots: impl SnapshotStore) -> Stores {
        Stores {
            log: Arc::new(log),
            snapshots: Arc::new(snapshots),
        }
    }
}

/// Opens a node's stores in the given directory.
pub type StorageFactory =
    fn(PathBuf) -> Pin<Box<dyn Future<Output = Result<Stores, StorageError>> + Send>>;

/// The built-in storage choices, by name. Add your own without editing this crate with
/// [`cli::main_with`].
pub const STORAGES: &[(&str, StorageFactory)] = &[
    ("mem", |_| {
        Box::pin(async { Ok(Stores::new(MemLogStore::new(), MemSnapshotStore::default())) })
    }),
    ("redb", |dir| {
        Box::pin(async move {
            let (log, snapshots) = raft_storage::open_data_dir(dir, 2).await?;
            Ok(Stores::new(log, snapshots))
        })
    }),
];

/// Looks a storage choice up by name.
pub fn storage(name: &str) -> Option<StorageFactory> {
    STORAGES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The transport choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The in-memory network (no serialization, no sockets).
    Mem,
    /// TCP on 127.0.0.1.
    Tcp,
    /// Mutual TLS over TCP on 127.0.0.1 (certificates from a private CA made per run).
    Tls,
}

impl TransportKind {
    /// Parses "mem", "tcp" or "tls".
    pub fn parse(s: &str) -> Option<TransportKind> {
        match s {
            "mem" => Some(TransportKind::Mem),
            "tcp" => Some(TransportKind::Tcp),
            "tls" => Some(TransportKind::Tls),
            _ => None,
        }
    }

    /// The choice's name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Mem => "mem",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
        }
    }
}

/// A state machine that only counts: the benchmarks measure Raft, not an application.
#[derive(Debug, Default)]
pub struct CountingStateMachine {
    applied: LogIndex,
}

#[async_trait]
impl StateMachine for CountingStateMachine {
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError> {
        Ok(self.applied)
    }
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        if let Some(last) = entries.last() {
            self.applied = last.index();
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
    async fn query(&self, _query: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::from(self.applied.0.to_string()))
    }
    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::from(self.applied.0.to_le_bytes().to_vec()))
    }
    async fn restore(
        &mut self,
        meta: &SnapshotMeta,
        _data: Bytes,
    ) -> Result<(), StateMachineError> {
        self.applied = meta.last_log_id.index;
        Ok(())
    }
}

/// How a node used its log store: durable writes (one per call that must be durable on
/// return) and entries appended. Their ratio is how well group commit groups.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Durable write calls (`append`, `truncate`, `save_hard_state`, `purge`,
    /// `write_batch`).
    pub writes: AtomicU64,
    /// Entries appended.
    pub entries: AtomicU64,
}

impl LogCounters {
    /// (writes, entries) so far.
    pub fn read(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }
}

/// A log store that counts its durable writes and the entries they carry, and otherwise
/// is the store it wraps.
struct CountingLog {
    inner: Arc<dyn LogStore>,
    counters: Arc<LogCounters>,
}

impl CountingLog {
    fn wrote(&self, entries: usize) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .entries
            .fetch_add(entries as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl LogStore for CountingLog {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.hard_state().await
    }
    async fn save_hard_state(&self, h: &HardState) -> Result<(), StorageError> {
        self.wrote(0);
        self.inner.save_hard_state(h).await
    }
    async fn log_state(&self) -> Result<LogState, StorageError> {
        self.inner.log_state().await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.wrote(entries.len());
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.wrote(0);
        self.inner.truncate(from).await
    }
    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.wrote(0);
        self.inner.purge(upto).await
    }
    async fn entries(
        &self,
        range: std::ops::Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(range, max_bytes).await
    }
    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.inner.term(index).await
    }
    async fn write_batch(&self, ops: Vec<LogWrite>) -> Result<(), StorageError> {
        let entries = ops
            .iter()
            .map(|op| match op {
                LogWrite::Append(e) => e.len(),
                _ => 0,
            })
            .sum();
        self.wrote(entries);
        self.inner.write_batch(ops).await
    }
}

/// An in-process cluster built from one storage and one transport choice.
pub struct BenchCluster {
    /// Every node.
    pub nodes: Vec<RaftNode>,
    /// Each node's log writes, in the order of `nodes`.
    pub logs: Vec<Arc<LogCounters>>,
    tcp: Vec<TcpTransport>,
    _dir: tempfile::TempDir,
}

/// Raft timing for benchmarks: ticks of 10 ms, so an election takes well under a second.
pub fn bench_config() -> Config {
    Config {
        tick_interval: Duration::from_millis(10),
        election_timeout_min: 15,
        election_timeout_max: 30,
        heartbeat_interval: 3,
        ..Config::default()
    }
}

impl BenchCluster {
    /// Starts `n` nodes and waits for a leader.
    pub async fn start(
        n: u64,
        storage: StorageFactory,
        transport: TransportKind,
    ) -> Result<BenchCluster, String> {
        let root = bench_dir();
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let dir = tempfile::tempdir_in(&root).map_err(|e| format!("temp dir: {e}"))?;
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let membership = Membership::new(ids.iter().copied());
        let net = MemNetwork::new(1);
        let mut tcp = Vec::new();
        if transport != TransportKind::Mem {
            let pki = (transport == TransportKind::Tls)
                .then(|| Pki::generate("raft-bench CA"))
                .transpose()
                .map_err(|e| e.to_string())?;
            for &id in &ids {
                let tls = match &pki {
                    Some(pki) => {
                        let files = pki
                            .write_member(&dir.path().join("tls"), id, &[])
                            .map_err(|e| e.to_string())?;
                        Some(TlsIdentity::load_member(id, files).map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                let t = TcpTransport::bind(
                    id,
                    "127.0.0.1:0".parse().expect("addr"),
                    TcpConfig {
                        tls,
                        ..TcpConfig::default()
                    },
                )
                .await
                .map_err(|e| format!("bind: {e}"))?;
                tcp.push(t);
            }
            for t in &tcp {
                for (i, other) in tcp.iter().enumerate() {
                    t.set_peer(ids[i], other.local_addr());
                }
            }
        }
        let mut nodes = Vec::new();
        let mut logs = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let stores = storage(dir.path().join(format!("node-{}", id.0)))
                .await
                .map_err(|e| format!("storage: {e}"))?;
            let t: Arc<dyn Transport> = match transport {
                TransportKind::Mem => net.transport(id),
                TransportKind::Tcp | TransportKind::Tls => Arc::new(tcp[i].clone()),
            };
            let counters = Arc::new(LogCounters::default());
            logs.push(counters.clone());
            let seams = Seams {
                log: Arc::new(CountingLog {
                    inner: stores.log,
                    counters,
                }),
                snapshots: stores.snapshots,
                state_machine: Box::new(CountingStateMachine::default()),
                transport: t,
            };
            let node = RaftNode::start(id, bench_config(), membership.clone(), seams, Some(id.0))
                .await
                .map_err(|e| format!("start: {e}"))?;
            match transport {
                TransportKind::Mem => net.register(id, node.inbox()),
                TransportKind::Tcp | TransportKind::Tls => tcp[i].serve(node.inbox()),
            }
            nodes.push(node);
        }
        let c = BenchCluster {
            nodes,
            logs,
            tcp,
            _dir: dir,
        };
        c.leader().await?;
        Ok(c)
    }

    /// The leader, waiting up to 10 s for one.
    pub async fn leader(&self) -> Result<RaftNode, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for n in &self.nodes {
                if n.status().await.is_ok_and(|s| s.role == Role::Leader) {
                    return Ok(n.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("no leader within 10 s".into())
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
        for t in &self.tcp {
            t.shutdown();
        }
    }
}

/// What a load run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Proposals committed and applied.
    pub ops: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Commit latencies in microseconds (3 significant digits, bounded memory however
    /// long the run).
    pub latencies_us: Histogram<u64>,
    /// Proposals that failed (leader changes).
    pub errors: u64,
}

/// An empty latency histogram: 1 µs to 1 h, 3 significant digits.
/// 1 µs to 60 s at two significant digits (1% resolution): about 50 KB of counters. Each
/// client of a load run records into its own, so this is multiplied by up to a thousand
/// clients; at three digits up to an hour it was 512 KB each, and recording into it
/// (cache misses) was 6% of a mem/mem run's CPU in a profile.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("invariant: valid histogram bounds")
}

impl Default for LoadResult {
    fn default() -> Self {
        LoadResult {
            ops: 0,
            elapsed: Duration::ZERO,
            latencies_us: latency_histogram(),
            errors: 0,
        }
    }
}

impl LoadResult {
    /// Committed proposals per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of latency in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latencies_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `clients` closed-loop proposers of `payload`-byte commands against the leader, for
/// `duration` or until `max_ops` commits, whichever comes first.
pub async fn run_load(
    leader: &RaftNode,
    clients: usize,
    duration: Duration,
    max_ops: Option<u64>,
    payload: usize,
) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        max_ops.unwrap_or(u64::MAX),
    ));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let node = leader.clone();
            // Each client its own buffer, as commands from real clients are: one buffer
            // shared by every client would make its reference count a cache line that
            // every core fights over, a cost of the harness, not of Raft.
            let data = Bytes::from(vec![0xab; payload]);
            let budget = budget.clone();
            let limited = max_ops.is_some();
            tokio::spawn(async move {
                let mut lat = latency_histogram();
                let mut errors = 0u64;
                // One clock read per proposal: its end is the next one's start.
                let mut now = Instant::now();
                while now < deadline {
                    if limited
                        && budget
                            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
                            .is_err()
                    {
                        break;
                    }
                    let outcome = node.propose(data.clone()).await;
                    let end = Instant::now();
                    match outcome {
                        Ok(_) => lat.saturating_record(end.duration_since(now).as_micros() as u64),
                        Err(RaftError::ShuttingDown) => break,
                        Err(_) => errors += 1,
                    }
                    now = end;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut result = LoadResult::default();
    for t in tasks {
        if let Ok((lat, errors)) = t.await {
            let _ = result.latencies_us.add(&lat);
            result.errors += errors;
        }
    }
    result.elapsed = start.elapsed();
    result.ops = result.latencies_us.len();
    result
}

/// The directory benchmarks write to: `RAFT_BENCH_DIR` if set, else `bench-data` in the
/// nearest `target` directory (of the current directory or its parent, so on the same disk
/// as the build and outside any temp filesystem held in memory), else the system's
/// temporary directory. Never inside this crate's sources, which may be a read-only
/// dependency of the caller's crate.
pub fn bench_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFT_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let target = [cwd.join("target"), cwd.join("../target")]
        .into_iter()
        .find(|t| t.is_dir());
    match target {
        Some(t) => t.join("bench-data"),
        None => std::env::temp_dir().join("raft-bench-data"),
    }
}

/// The `raft-bench` command line, callable from other crates with their own stores.
pub mod cli;

/// The disk alone, for a durable row to be compared with: `writers` threads, as many as a
/// cluster's nodes on one machine, each appending `payload`-byte records to its own file in
/// `dir` with write + fdatasync, for `duration`, all at once. Latencies are per record.
pub fn disk_baseline(
    dir: &std::path::Path,
    writers: usize,
    payload: usize,
    duration: Duration,
) -> std::io::Result<LoadResult> {
    use std::io::Write;
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|i| {
            let path = dir.join(format!("baseline-{i}"));
            std::thread::spawn(move || -> std::io::Result<LoadResult> {
                let mut f = std::fs::File::create(&path)?;
                let record = vec![0x5a_u8; payload];
                let mut r = LoadResult::default();
                let begun = Instant::now();
                while begun.elapsed() < duration {
                    let t = Instant::now();
                    f.write_all(&record)?;
                    f.sync_data()?;
                    let _ = r.latencies_us.record(t.elapsed().as_micros() as u64);
                    r.ops += 1;
                }
                drop(f);
                let _ = std::fs::remove_file(&path);
                Ok(r)
            })
        })
        .collect();
    let mut total = LoadResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| std::io::Error::other("a baseline writer panicked"))??;
        total.ops += r.ops;
        let _ = total.latencies_us.add(&r.latencies_us);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// A storage choice alone, without Raft: one writer per node, each appending `batch`
/// entries of `payload` bytes per durable write to its own stores, all at once. `ops` is
/// entries per writer, and latencies are per write.
///
/// It bounds a cluster on the same store: with `clients` closed-loop proposers a node's
/// group commit gathers at most `clients` entries per write, and every node writes every
/// entry, so a cluster row cannot commit more entries per second than this row with
/// `batch = clients`, nor (at one client) commit faster than its p50.
pub async fn store_baseline(
    open: StorageFactory,
    dir: &std::path::Path,
    writers: usize,
    batch: usize,
    payload: usize,
    duration: Duration,
) -> Result<LoadResult, StorageError> {
    // Every store is open before the clock starts, so the writers run together and the
    // opening (a file created and synced) is not counted.
    let mut opened = Vec::with_capacity(writers);
    for i in 0..writers {
        let stores = open(dir.join(format!("store-{i}"))).await?;
        let next = stores.log.log_state().await?.last.index.0 + 1;
        opened.push((stores, next));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(writers);
    for (stores, mut next) in opened {
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![0x5a_u8; payload]);
            let mut r = LoadResult::default();
            while Instant::now() < deadline {
                let entries: Vec<Entry> = (next..next + batch as u64)
                    .map(|i| Entry {
                        log_id: LogId::new(1, i),
                        payload: raft_core::EntryPayload::Command(data.clone()),
                    })
                    .collect();
                let t = Instant::now();
                stores.log.append(&entries).await?;
                r.latencies_us
                    .saturating_record(t.elapsed().as_micros() as u64);
                r.ops += batch as u64;
                next += batch as u64;
            }
            Ok::<_, StorageError>(r)
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t
            .await
            .map_err(|e| StorageError::Backend(format!("a store writer failed: {e}")))??;
        total.ops += r.ops;
        let _ = total.latencies_us.add(&r.latencies_us);
    }
    total.ops /= writers.max(1) as u64;
    total.elapsed = start.elapsed();
    Ok(total)
}

/// The sans-IO core alone: three cores wired to each other in memory, with writes made
/// durable at once. Measures the algorithm's own cost per committed entry.
pub mod core_loop {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use raft_core::{Action, Config, InitialState, Membership, Message, NodeId, RaftCore, Role};

    /// Three cores with an elected leader.
    pub struct CoreCluster {
        cores: Vec<RaftCore>,
        queue: VecDeque<Message>,
        /// Entries handed to the state machines so far, over all nodes.
        pub applied: u64,
    }

    impl CoreCluster {
        /// Three cores; node 1 campaigns and wins.
        pub fn new() -> CoreCluster {
            let m = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
            let cfg = Config {
                pre_vote: false,
                ..Config::default()
            };
            let cores = (1..=3)
                .map(|i| {
                    let init = InitialState {
                        bootstrap: m.clone(),
                        ..InitialState::default()
                    };
                    RaftCore::new(NodeId(i), cfg.clone(), init, i)
                })
                .collect();
            let mut c = CoreCluster {
                cores,
                queue: VecDeque::new(),
                applied: 0,
            };
            while c.cores[0].role() != Role::Leader {
                c.cores[0].tick();
                c.settle();
            }
            c
        }

        /// Proposes `batch` commands at the leader and runs until every message is handled.
        pub fn propose(&mut self, batch: Vec<Bytes>) {
            let _ = self.cores[0].propose(batch);
            self.settle();
        }

        fn settle(&mut self) {
            loop {
                let mut progressed = false;
                for i in 0..self.cores.len() {
                    for a in self.cores[i].take_actions() {
                        progressed = true;
                        match a {
                            Action::Persist { id, .. } => self.cores[i].persisted(id),
                            Action::Send(m) => self.queue.push_back(m),
                            Action::Apply(es) => {
                                self.applied += es.len() as u64;
                                if let Some(last) = es.last() {
                                    self.cores[i].applied(last.index());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                while let Some(m) = self.queue.pop_front() {
                    progressed = true;
                    let to = (m.to.0 - 1) as usize;
                    self.cores[to].step(m);
                }
                if !progressed {
                    return;
                }
            }
        }
    }

    impl Default for CoreCluster {
        fn default() -> Self {
            CoreCluster::new()
        }
    }
}
