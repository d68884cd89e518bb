//! A TCP [`Transport`] on tokio.
//!
//! Each node dials each peer it sends to (one outbound connection per peer, opened on first
//! use) and accepts the connections peers dial to it. A connection starts with a handshake
//! carrying the cluster id and both node ids; a peer from another cluster, one that claims
//! an id not in the peer list, or one that dialed the wrong node is refused.
//!
//! Sending never blocks the node: each peer has a bounded queue drained by its own task;
//! when the queue is full the message is dropped and counted (Raft retransmits). The task
//! coalesces everything queued into one write, and reconnects with exponential backoff and
//! jitter when the connection fails. Snapshot chunks are the exception: they wait for room
//! in the queue, and the receiver waits for room in the node's inbox, so TCP flow control
//! carries back-pressure end to end.
//!
//! Hostile or malformed input (wrong handshake, oversized or corrupt frames, a message
//! that claims another sender) closes that connection with a logged error; the process
//! never panics and a peer connection never holds more than one maximum-size frame.
//!
//! The same port serves clients (see [`crate::client`]) once a node is attached with
//! [`TcpTransport::serve_node`]: at most [`MAX_CLIENT_CONNECTIONS`] at once, each with a
//! bounded number and size of requests in flight. Clients are told apart from peers by
//! their first frame.
//!
//! With [`TcpConfig::tls`] set, every connection is mutual TLS (see [`crate::tls`]): a peer
//! must present a certificate from the cluster's CA that names the member it claims to be,
//! and a client one from the same CA. Without it, plain TCP authenticates nobody: any
//! process that reaches the port and knows the cluster id is served, so use it on trusted
//! networks only. Either way, connections that have not finished their handshake are
//! bounded ([`MAX_PENDING_HANDSHAKES`]) and timed out (`connect_timeout`), so a flood of
//! half-open connections cannot starve the members' links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use raft_core::{Inbox, Message, MessageBody, NodeId, RaftNode, Transport};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::admission::{HandshakeLimit, HandshakeSlot};
use crate::frame::{self, Frame, FrameError, HEADER_LEN, MAGIC, VERSION};
use crate::link::Link;
use crate::tls::{self, TlsIdentity};

/// Settings of a TCP transport.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Both ends of every connection must carry the same cluster id.
    pub cluster_id: u64,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Most bytes coalesced into one write.
    pub max_batch_bytes: usize,
    /// First reconnection delay; doubles per failure up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// How long to wait for a connection or a handshake (TLS and hello together).
    pub connect_timeout: Duration,
    /// Mutual TLS between members (and for clients): this member's identity. `None` is
    /// plain TCP, for trusted networks.
    pub tls: Option<Arc<TlsIdentity>>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            cluster_id: 0,
            max_frame: 16 << 20,
            queue_capacity: 4096,
            max_batch_bytes: 1 << 20,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Counters of one transport.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Messages written to sockets.
    pub sent: AtomicU64,
    /// Messages dropped because a peer's queue was full or the peer is unknown.
    pub dropped: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_sent: AtomicU64,
    /// Messages received and handed to the node.
    pub received: AtomicU64,
    /// Connections closed for bad input or a refused handshake.
    pub rejected_connections: AtomicU64,
    /// Messages not sent because their frame exceeds `max_frame`, which the peer would
    /// refuse (and close the connection for).
    pub oversized: AtomicU64,
    /// Write system calls (each carries one or more coalesced frames).
    pub writes: AtomicU64,
    /// Connections closed on arrival because [`MAX_PENDING_HANDSHAKES`] were pending (or
    /// [`MAX_PENDING_HANDSHAKES_PER_IP`] from their address).
    pub over_handshake_limit: AtomicU64,
}

struct Peer {
    tx: mpsc::Sender<Message>,
    task: JoinHandle<()>,
}

struct Shared {
    id: NodeId,
    cfg: TcpConfig,
    /// The node clients' requests go to, once [`TcpTransport::serve_node`] was called;
    /// dropped by [`TcpTransport::shutdown`] (it would otherwise keep the node alive).
    node: Mutex<Option<RaftNode>>,
    /// Client connections open at once, at most [`MAX_CLIENT_CONNECTIONS`].
    client_slots: Arc<tokio::sync::Semaphore>,
    /// Connections still in their handshake: at most [`MAX_PENDING_HANDSHAKES`], and
    /// [`MAX_PENDING_HANDSHAKES_PER_IP`] from one address.
    handshakes: HandshakeLimit,
    /// Cut off from every peer (see [`TcpTransport::set_isolated`]).
    isolated: std::sync::atomic::AtomicBool,
    /// Whether anything serves this transport's listener (warned about once if not).
    served: std::sync::atomic::AtomicBool,
    warned_unserved: std::sync::atomic::AtomicBool,
    addrs: Mutex<BTreeMap<NodeId, SocketAddr>>,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stats: TcpStats,
}

/// The TCP transport of one node. Cheap to clone.
#[derive(Clone)]
pub struct TcpTransport {
    shared: Arc<Shared>,
    listener: Arc<Mutex<Option<TcpListener>>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("id", &self.shared.id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TcpTransport {
    /// Binds the listening socket of node `id` (use port 0 for an ephemeral port). Nothing
    /// is accepted until [`serve`](TcpTransport::serve).
    pub async fn bind(
        id: NodeId,
        listen: SocketAddr,
        cfg: TcpConfig,
    ) -> std::io::Result<TcpTransport> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        Ok(TcpTransport {
            shared: Arc::new(Shared {
                id,
                cfg,
                node: Mutex::new(None),
                client_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENT_CONNECTIONS)),
                handshakes: HandshakeLimit::new(
                    MAX_PENDING_HANDSHAKES,
                    MAX_PENDING_HANDSHAKES_PER_IP,
                ),
                isolated: std::sync::atomic::AtomicBool::new(false),
                served: std::sync::atomic::AtomicBool::new(false),
                warned_unserved: std::sync::atomic::AtomicBool::new(false),
                addrs: Mutex::new(BTreeMap::new()),
                peers: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
                stats: TcpStats::default(),
            }),
            listener: Arc::new(Mutex::new(Some(listener))),
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds or changes the address of peer `id`. Only listed peers may connect.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id == self.shared.id {
            return;
        }
        let changed = lock(&self.shared.addrs).insert(id, addr) != Some(addr);
        if changed {
            // A sender dialing the old address restarts on the next send.
            if let Some(old) = lock(&self.shared.peers).remove(&id) {
                old.task.abort();
            }
        }
    }

    /// Forgets `id`: it is no longer dialed, and connections claiming to be it are refused
    /// from now on. What was already queued for it is still sent on a connection that is up.
    pub fn remove_peer(&self, id: NodeId) {
        lock(&self.shared.addrs).remove(&id);
        // Dropping the queue's sender lets its task drain what is queued, then end.
        lock(&self.shared.peers).remove(&id);
    }

    /// The peers this transport knows, and where it dials them.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        lock(&self.shared.addrs).clone()
    }

    /// The peer table follows `peers` (see [`Transport::update_peers`]), reading each
    /// address with `parse`: servers given an address are added or moved, servers given
    /// none keep theirs, servers not named are forgotten. An address `parse` refuses is
    /// logged and leaves that server as it was.
    pub fn update_peers_with(
        &self,
        peers: &BTreeMap<NodeId, Option<String>>,
        parse: impl Fn(&str) -> Option<SocketAddr>,
    ) {
        let known: Vec<NodeId> = lock(&self.shared.addrs).keys().copied().collect();
        for id in known.into_iter().filter(|id| !peers.contains_key(id)) {
            tracing::info!(node = %self.shared.id, peer = %id, "no longer a member; forgotten");
            self.remove_peer(id);
        }
        for (&id, address) in peers {
            let Some(address) = address else { continue };
            match parse(address) {
                Some(addr) => self.set_peer(id, addr),
                None => {
                    tracing::warn!(node = %self.shared.id, peer = %id, %address, "cannot read the member's address; keeping what was known")
                }
            }
        }
    }

    /// Starts accepting connections and delivering their messages to `inbox`. Until this
    /// is called the node can send but hears nothing (a warning says so once).
    pub fn serve(&self, inbox: Inbox) {
        let Some(listener) = lock(&self.listener).take() else {
            return;
        };
        self.shared.served.store(true, Ordering::Relaxed);
        let shared = self.shared.clone();
        let task = tokio::spawn(accept_loop(listener, shared, inbox));
        lock(&self.shared.tasks).push(task);
    }

    /// Serves `node`: its peers' messages, and clients' requests on the same port (see
    /// [`crate::client`]). What [`TcpNode::start`](crate::start::TcpNode::start) calls.
    pub fn serve_node(&self, node: &RaftNode) {
        *lock(&self.shared.node) = Some(node.clone());
        self.serve(node.inbox());
    }

    /// Cuts this node off from every peer (`true`) or reconnects it (`false`): while
    /// isolated, nothing is sent and everything received is dropped, as if the network
    /// were partitioned around it. For demonstrations and fault drills; connections stay
    /// up, so healing takes effect at once.
    pub fn set_isolated(&self, isolated: bool) {
        self.shared.isolated.store(isolated, Ordering::Relaxed);
    }

    /// Whether [`set_isolated`](TcpTransport::set_isolated) cut this node off.
    pub fn is_isolated(&self) -> bool {
        self.shared.isolated.load(Ordering::Relaxed)
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TcpStats {
        &self.shared.stats
    }

    /// Closes the listener and every connection. The transport's tasks hold it alive, so
    /// call this when the node stops.
    pub fn shutdown(&self) {
        lock(&self.listener).take();
        lock(&self.shared.node).take();
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
        for (_, p) in std::mem::take(&mut *lock(&self.shared.peers)) {
            p.task.abort();
        }
    }

    fn peer_sender(&self, to: NodeId) -> Option<mpsc::Sender<Message>> {
        let mut peers = lock(&self.shared.peers);
        if let Some(p) = peers.get(&to) {
            if !p.task.is_finished() {
                return Some(p.tx.clone());
            }
        }
        let addr = *lock(&self.shared.addrs).get(&to)?;
        let (tx, rx) = mpsc::channel(self.shared.cfg.queue_capacity);
        let task = tokio::spawn(sender_loop(self.shared.clone(), to, addr, rx));
        peers.insert(
            to,
            Peer {
                tx: tx.clone(),
                task,
            },
        );
        Some(tx)
    }
}

#[async_trait]
impl Transport for TcpTransport {
    /// Members' addresses are read as `IP:PORT` (see [`update_peers_with`](TcpTransport::update_peers_with)).
    fn update_peers(&self, peers: &BTreeMap<NodeId, Option<String>>) {
        self.update_peers_with(peers, |a| a.parse().ok());
    }

    async fn send(&self, msg: Message) {
        let stats = &self.shared.stats;
        if !self.shared.served.load(Ordering::Relaxed)
            && !self.shared.warned_unserved.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(node = %self.shared.id, "sending, but nothing serves this transport: call TcpTransport::serve(node.inbox()) (or start with TcpNode::start), or the node never hears its peers");
        }
        if self.is_isolated() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(tx) = self.peer_sender(msg.to) else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %self.shared.id, peer = %msg.to, "no address for peer; message dropped");
            return;
        };
        if matches!(msg.body, MessageBody::InstallSnapshot(_)) {
            // Back-pressure: snapshot chunks wait for room rather than being dropped.
            if tx.send(msg).await.is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else if tx.try_send(msg).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn max_message_bytes(&self) -> Option<usize> {
        // The frame's body holds the message behind the `Frame::Raft` tag.
        Some(self.shared.cfg.max_frame.saturating_sub(FRAME_TAG_BYTES))
    }
}

/// Most client connections one node serves at once; more are refused at the handshake.
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;

/// Most accepted connections still in their handshake (TLS and hello) at once; more are
/// closed on arrival, so connections that never finish cannot pile up.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Most of those from one IP address: a flood from one source is shed while members (and
/// clients) elsewhere still get in.
pub const MAX_PENDING_HANDSHAKES_PER_IP: usize = 64;

/// Bytes a frame body adds to the message it carries (the enum tag, with room to spare).
const FRAME_TAG_BYTES: usize = 16;

// ----- sending ------------------------------------------------------------------------------

/// Owns the connection to one peer: dials, handshakes, and writes coalesced batches.
async fn sender_loop(
    shared: Arc<Shared>,
    to: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
) {
    let cfg = shared.cfg.clone();
    let mut backoff = cfg.backoff_min;
    let mut buf = Vec::with_capacity(64 * 1024);
    'connect: loop {
        let mut stream = match dial(&shared, to, addr).await {
            Ok(s) => {
                backoff = cfg.backoff_min;
                s
            }
            Err(e) => {
                tracing::debug!(node = %shared.id, peer = %to, %addr, error = %e, "cannot connect; retrying");
                // Messages queued meanwhile are stale by the time we connect: drop them.
                loop {
                    match rx.try_recv() {
                        Ok(_) => shared.stats.dropped.fetch_add(1, Ordering::Relaxed),
                        // The peer was forgotten (or the transport dropped): stop dialing.
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    };
                }
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2 + 1);
                tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        loop {
            let Some(first) = rx.recv().await else {
                return; // the transport was dropped
            };
            buf.clear();
            let mut count = 0u64;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                let start = buf.len();
                if frame::encode(&Frame::Raft(msg), &mut buf).is_ok() {
                    if buf.len() - start - HEADER_LEN > cfg.max_frame {
                        // The peer must refuse this frame and would close the connection,
                        // taking every message behind it along: never send it.
                        tracing::warn!(node = %shared.id, peer = %to, bytes = buf.len() - start, max = cfg.max_frame, "message exceeds the frame limit; dropped");
                        buf.truncate(start);
                        shared.stats.oversized.fetch_add(1, Ordering::Relaxed);
                    } else {
                        count += 1;
                    }
                }
                if buf.len() < cfg.max_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if let Err(e) = write_batch(&mut stream, &buf).await {
                tracing::debug!(node = %shared.id, peer = %to, error = %e, "write failed; reconnecting");
                shared.stats.dropped.fetch_add(count, Ordering::Relaxed);
                continue 'connect;
            }
            shared.stats.writes.fetch_add(1, Ordering::Relaxed);
            shared.stats.sent.fetch_add(count, Ordering::Relaxed);
            shared
                .stats
                .bytes_sent
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Writes a batch of frames and pushes it to the socket (TLS buffers records until flushed).
async fn write_batch(stream: &mut Link, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

async fn dial(shared: &Shared, to: NodeId, addr: SocketAddr) -> Result<Link, ConnError> {
    let cfg = &shared.cfg;
    tokio::time::timeout(cfg.connect_timeout, dial_and_greet(shared, to, addr))
        .await
        .map_err(|_| ConnError::Timeout)?
}

/// Connects (TLS asking for member `to`'s certificate, when configured) and exchanges
/// the hello.
async fn dial_and_greet(shared: &Shared, to: NodeId, addr: SocketAddr) -> Result<Link, ConnError> {
    let cfg = &shared.cfg;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match &cfg.tls {
        None => Link::Plain(tcp),
        Some(identity) => Link::Dialed(Box::new(
            identity
                .connector()
                .connect(tls::server_name(to), tcp)
                .await?,
        )),
    };
    let hello = Frame::Hello {
        magic: MAGIC,
        version: VERSION,
        cluster_id: cfg.cluster_id,
        from: shared.id,
        to,
    };
    let mut buf = Vec::new();
    frame::encode(&hello, &mut buf)?;
    write_batch(&mut stream, &buf).await?;
    match read_frame(&mut stream, 64 * 1024).await? {
        Frame::Welcome => Ok(stream),
        Frame::Refused(reason) => Err(ConnError::Refused(reason)),
        other => Err(ConnError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

// ----- receiving ----------------------------------------------------------------------------

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, inbox: Inbox) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let Some(pending) = shared.handshakes.admit(remote.ip()) else {
                    // Too many connections have not finished their handshake: this one is
                    // closed unread, so they cannot crowd out the members' links.
                    let stats = &shared.stats;
                    stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    stats.over_handshake_limit.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = %shared.id, %remote, "too many pending handshakes (from this address or in all); closed");
                    continue;
                };
                let conn_shared = shared.clone();
                let inbox = inbox.clone();
                let task = tokio::spawn(async move {
                    let shared = conn_shared;
                    if let Err(e) = serve_connection(stream, pending, &shared, &inbox).await {
                        shared
                            .stats
                            .rejected_connections
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %shared.id, %remote, error = %e, "closed connection");
                    }
                });
                // Tracked so `shutdown` closes accepted connections too.
                let mut tasks = lock(&shared.tasks);
                tasks.retain(|t| !t.is_finished());
                tasks.push(task);
            }
            Err(e) => {
                tracing::warn!(node = %shared.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Checks a dialer's `Hello`: same cluster, addressed to us, from a known peer that (on
/// TLS) holds that peer's certificate.
fn check_hello(shared: &Shared, stream: &Link, hello: &Frame) -> Result<NodeId, String> {
    let Frame::Hello {
        magic,
        version,
        cluster_id,
        from,
        to,
    } = hello
    else {
        return Err("the first frame must be Hello".into());
    };
    if *magic != MAGIC || *version != VERSION {
        return Err(format!(
            "unsupported protocol (magic {magic:08x}, version {version})"
        ));
    }
    if *cluster_id != shared.cfg.cluster_id {
        return Err(format!(
            "cluster id {cluster_id} does not match this node's cluster {}",
            shared.cfg.cluster_id
        ));
    }
    if *to != shared.id {
        return Err(format!("this is {}, not {to}", shared.id));
    }
    if *from == shared.id || !lock(&shared.addrs).contains_key(from) {
        return Err(format!("{from} is not a peer of {}", shared.id));
    }
    // Authentication: on TLS, the certificate must name the member the hello claims.
    match stream {
        Link::Accepted(tls) if !tls::peer_is(tls.get_ref().1, *from) => Err(format!(
            "the certificate presented does not name {from} ({})",
            tls::member_name(*from)
        )),
        _ => Ok(*from),
    }
}

/// Accepts the TLS session, when configured, and reads the first frame.
async fn handshake(stream: TcpStream, shared: &Shared) -> Result<(Link, Frame), ConnError> {
    stream.set_nodelay(true)?;
    let mut link = match &shared.cfg.tls {
        None => Link::Plain(stream),
        Some(identity) => {
            Link::Accepted(Box::new(identity.mutual_acceptor().accept(stream).await?))
        }
    };
    let first = read_frame(&mut link, 64 * 1024).await?;
    Ok((link, first))
}

async fn refuse(stream: &mut Link, reason: String) -> ConnError {
    let mut out = Vec::new();
    if frame::encode(&Frame::Refused(reason.clone()), &mut out).is_ok() {
        let _ = write_batch(stream, &out).await;
    }
    ConnError::Refused(reason)
}

async fn serve_connection(
    stream: TcpStream,
    pending: HandshakeSlot,
    shared: &Shared,
    inbox: &Inbox,
) -> Result<(), ConnError> {
    let (mut stream, hello) =
        tokio::time::timeout(shared.cfg.connect_timeout, handshake(stream, shared))
            .await
            .map_err(|_| ConnError::Timeout)??;
    drop(pending);
    if let Frame::ClientHello {
        magic,
        version,
        cluster_id,
    } = hello
    {
        return serve_client_hello(stream, shared, (magic, version, cluster_id)).await;
    }
    let from = match check_hello(shared, &stream, &hello) {
        Ok(from) => from,
        Err(reason) => return Err(refuse(&mut stream, reason).await),
    };
    let mut out = Vec::new();
    frame::encode(&Frame::Welcome, &mut out)?;
    write_batch(&mut stream, &out).await?;
    // Only reads from here on; the write half stays open with the connection.
    let mut read = tokio::io::BufReader::with_capacity(64 * 1024, stream);
    loop {
        let msg = match read_frame(&mut read, shared.cfg.max_frame).await {
            Ok(Frame::Raft(msg)) => msg,
            Ok(other) => return Err(ConnError::Protocol(format!("unexpected frame {other:?}"))),
            Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if msg.from != from || msg.to != shared.id {
            return Err(ConnError::Protocol(format!(
                "message from {} to {} on {from}'s connection to {}",
                msg.from, msg.to, shared.id
            )));
        }
        if shared.isolated.load(Ordering::Relaxed) {
            continue; // cut off: as if it never arrived
        }
        let delivered = if matches!(msg.body, MessageBody::InstallSnapshot(_)) {
            inbox.deliver_wait(msg).await
        } else {
            inbox.deliver(msg)
        };
        if delivered {
            shared.stats.received.fetch_add(1, Ordering::Relaxed);
        } else if inbox.is_closed() {
            // The node stopped: close the connection, so the peer reconnects to whoever
            // listens next (a restarted node) instead of writing into a dead inbox.
            return Ok(());
        }
    }
}

/// Answers a client's hello and serves the client, or refuses it.
async fn serve_client_hello(
    mut stream: Link,
    shared: &Shared,
    (magic, version, cluster_id): (u32, u16, u64),
) -> Result<(), ConnError> {
    let node = lock(&shared.node).clone();
    let slot = shared.client_slots.clone().try_acquire_owned();
    let refusal = if magic != MAGIC || version != VERSION {
        Some(format!(
            "unsupported protocol (magic {magic:08x}, version {version})"
        ))
    } else if cluster_id != shared.cfg.cluster_id {
        Some(format!(
            "cluster id {cluster_id} does not match this node's cluster {}",
            shared.cfg.cluster_id
        ))
    } else if node.is_none() {
        Some(format!("node {} does not serve clients", shared.id))
    } else if node.as_ref().is_some_and(RaftNode::is_stopped) {
        Some(format!("node {} has stopped", shared.id))
    } else if slot.is_err() {
        Some(format!(
            "node {} has {MAX_CLIENT_CONNECTIONS} clients already",
            shared.id
        ))
    } else {
        None
    };
    if let Some(reason) = refusal {
        return Err(refuse(&mut stream, reason).await);
    }
    let mut out = Vec::new();
    frame::encode(&Frame::Welcome, &mut out)?;
    write_batch(&mut stream, &out).await?;
    if let (Some(node), Ok(_slot)) = (node, slot) {
        let max = shared.cfg.max_frame;
        match stream {
            Link::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                crate::client::serve_client(read, write, node, max).await;
            }
            tls => {
                let (read, write) = tokio::io::split(tls);
                crate::client::serve_client(read, write, node, max).await;
            }
        }
    }
    Ok(())
}

/// Reads one frame, refusing lengths over `max` before allocating.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Frame, ConnError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let (len, crc) = frame::parse_header(header, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(frame::decode_body(&body, crc)?)
}
