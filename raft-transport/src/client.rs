//! Clients over the Raft TCP port: a small request/response protocol that members serve next
//! to their peer connections, a [`RaftClient`] that finds the leader and retries, and an
//! [`AppClient`] that speaks an [`App`]'s types with exactly-once sessions.
//!
//! A client dials any member and opens with [`Frame::ClientHello`]; each request carries an
//! id, so many can be in flight on one connection. A member that is not the leader answers
//! [`ClientFailure::NotLeader`] with the leader's id and the address it has in the
//! membership, which is the same port: the client redials there. No separate client port,
//! no id-to-address table for the application to keep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::app::{decode_outcome, encode_command, App, Outcome};
use raft_core::session::ClientSession;
use raft_core::{NodeId, RaftError, RaftNode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::frame::{self, Frame, HEADER_LEN, MAGIC, VERSION};
use crate::link::Link;
use crate::tls::TlsIdentity;

/// What a client asks a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Propose a command (the leader only).
    Propose(Bytes),
    /// A linearizable read (any member).
    Read(Bytes),
    /// Who leads, as this member knows.
    Leader,
}

/// The leader as a member knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The member answering.
    pub answered_by: NodeId,
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// Its address from the membership, if it has one.
    pub address: Option<String>,
}

/// Why a member did not carry out a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClientFailure {
    /// Ask the leader instead (its address, when the membership has one).
    #[error("not the leader; the leader is {leader:?} at {address:?}")]
    NotLeader {
        /// The leader this member knows of.
        leader: Option<NodeId>,
        /// Its address.
        address: Option<String>,
    },
    /// Not carried out, for a passing reason (no leader yet, leadership changed): retrying
    /// is safe.
    #[error("not carried out, retry: {0}")]
    Retry(String),
    /// The outcome is unknown: the command may still apply (a timeout, the member
    /// stopping). Only a retry in the same session is safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// Refused for good (too large, undecodable, removed member).
    #[error("refused: {0}")]
    Failed(String),
}

impl From<RaftError> for ClientFailure {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader(nl) => ClientFailure::NotLeader {
                leader: nl.leader_hint,
                address: nl.leader_address,
            },
            RaftError::ProposalDropped(_) => ClientFailure::Retry(e.to_string()),
            RaftError::TooLarge { .. }
            | RaftError::Codec(_)
            | RaftError::Config(_)
            | RaftError::Removed(_)
            // A query the state machine could not answer: asking again will not help.
            | RaftError::StateMachine(_) => ClientFailure::Failed(e.to_string()),
            other => ClientFailure::Unknown(other.to_string()),
        }
    }
}

/// Most requests one client connection may have in flight; more wait (back-pressure).
const MAX_IN_FLIGHT: usize = 256;
/// Most request bytes one client connection may have in flight (at least one request of
/// any size is admitted); with [`MAX_CLIENT_CONNECTIONS`](crate::tcp::MAX_CLIENT_CONNECTIONS)
/// this bounds what clients can make a node hold.
const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;

/// Serves one client connection after its `ClientHello` was accepted.
pub(crate) async fn serve_client<R, W>(mut read: R, mut write: W, node: RaftNode, max_frame: usize)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(f) = rx.recv().await {
            out.clear();
            if frame::encode(&f, &mut out).is_err()
                || write.write_all(&out).await.is_err()
                || write.flush().await.is_err()
            {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopped = false;
    loop {
        let next = tokio::select! {
            f = read_frame(&mut read, max_frame) => f,
            _ = node.stopped() => {
                stopped = true;
                break;
            }
        };
        let (id, op) = match next {
            Ok(Frame::ClientRequest { id, op }) => (id, op),
            // End of stream, bad input, or a frame out of place: the connection is done.
            _ => break,
        };
        let size = match &op {
            ClientOp::Propose(b) | ClientOp::Read(b) => b.len(),
            ClientOp::Leader => 0,
        };
        let weight = size.clamp(1, MAX_IN_FLIGHT_BYTES) as u32;
        let (Ok(slot), Ok(held)) = (
            slots.clone().acquire_owned().await,
            bytes.clone().acquire_many_owned(weight).await,
        ) else {
            break;
        };
        let (node, tx) = (node.clone(), tx.clone());
        tasks.spawn(async move {
            let result = run(&node, op).await.map_err(ClientFailure::from);
            let _ = tx.send(Frame::ClientReply { id, result }).await;
            drop((slot, held));
        });
        while tasks.try_join_next().is_some() {}
    }
    // A client that stopped sending still gets the answers to what it sent (for as long
    // as a request may take); a stopped node answers nothing more.
    if !stopped {
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
    tasks.abort_all();
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort(); // a client that does not read its answers
    }
}

/// How long a closing client connection waits for its requests' answers to be written.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

async fn run(node: &RaftNode, op: ClientOp) -> Result<Bytes, RaftError> {
    match op {
        ClientOp::Propose(cmd) => node.propose(cmd).await,
        ClientOp::Read(q) => node.read(q).await,
        ClientOp::Leader => {
            let s = node.status().await?;
            let info = LeaderInfo {
                answered_by: s.id,
                leader: s.leader,
                address: s
                    .leader
                    .and_then(|l| s.membership.addresses.get(&l).cloned()),
            };
            postcard::to_allocvec(&info)
                .map(Bytes::from)
                .map_err(|e| RaftError::Codec(e.to_string()))
        }
    }
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Frame> {
    let bad = |e: frame::FrameError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await?;
    let (len, crc) = frame::parse_header(header, max).map_err(bad)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    frame::decode_body(&body, crc).map_err(bad)
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A member refused it for good.
    #[error("{0}")]
    Refused(ClientFailure),
    /// The outcome is unknown and the call has no session to retry in safely.
    #[error("the outcome is unknown (the command may still apply): {0}")]
    Unknown(String),
    /// No leader answered within [`RaftClient::timeout`].
    #[error("no leader answered within {timeout:?}{}; last problem: {last}", if *maybe_done { " (an attempt may have reached one: the outcome is unknown)" } else { "" })]
    Unavailable {
        /// The time allowed.
        timeout: Duration,
        /// The last problem seen.
        last: String,
        /// Whether an attempt may have been carried out (its reply was lost). With an
        /// [`AppClient`], finish such a command with [`AppClient::retry_pending`].
        maybe_done: bool,
    },
    /// The session was forgotten by the cluster (too many clients) while a command of it
    /// may have applied; check the state, then continue in a new client.
    #[error("the session expired; the last command may or may not have applied")]
    SessionExpired,
    /// The reply did not decode as the application's types.
    #[error("cannot decode the reply: {0}")]
    Codec(String),
}

/// A connection to one member.
struct Conn {
    addr: SocketAddr,
    stream: Link,
    next_id: u64,
}

/// A client of a cluster: sends each request to the leader, following redirects and
/// leader changes, retrying what is safe to retry until [`timeout`](RaftClient::timeout).
pub struct RaftClient {
    members: Vec<SocketAddr>,
    cluster_id: u64,
    conn: Option<Conn>,
    /// Where to try next: the last leader address heard, else the members in turn.
    next: Option<SocketAddr>,
    turn: usize,
    /// How long one call may take across all its retries.
    pub timeout: Duration,
    /// How long one attempt may wait for its reply; keep it above the members'
    /// `Config::request_timeout`.
    pub attempt_timeout: Duration,
    /// Largest reply frame accepted.
    pub max_frame: usize,
    /// Attempts beyond the first, over this client's life (redirects, failovers): how
    /// often it had to look for the leader again.
    pub retries: u64,
    /// TLS to members that serve it (see [`with_tls`](RaftClient::with_tls)).
    tls: Option<Arc<TlsIdentity>>,
}

impl RaftClient {
    /// A client of the cluster `cluster_id` whose members listen at `members` (any subset
    /// that includes one live member will do: the rest is learned from redirects).
    pub fn new(members: impl IntoIterator<Item = SocketAddr>, cluster_id: u64) -> RaftClient {
        RaftClient {
            members: members.into_iter().collect(),
            cluster_id,
            conn: None,
            next: None,
            turn: 0,
            timeout: Duration::from_secs(30),
            // Longer than a node's default `Config::request_timeout` (10 s), so a slow
            // proposal's answer arrives rather than being given up on.
            attempt_timeout: Duration::from_secs(12),
            max_frame: 64 << 20,
            retries: 0,
            tls: None,
        }
    }

    /// Connects over TLS with `identity`, a certificate from the cluster's CA (members on
    /// TLS accept clients only with one). A member is checked by the IP address dialed, so
    /// its certificate must carry that address (as `tls::pki` certificates given their IPs
    /// do).
    pub fn with_tls(mut self, identity: Arc<TlsIdentity>) -> RaftClient {
        self.tls = Some(identity);
        self
    }

    /// Proposes `command`; retried only where it certainly did not apply.
    pub async fn propose(&mut self, command: Bytes) -> Result<Bytes, ClientError> {
        self.call(ClientOp::Propose(command), false).await
    }

    /// A linearizable read; retried freely (reads change nothing).
    pub async fn read(&mut self, query: Bytes) -> Result<Bytes, ClientError> {
        self.call(ClientOp::Read(query), true).await
    }

    /// Who leads, as the member this client reaches knows.
    pub async fn leader(&mut self) -> Result<LeaderInfo, ClientError> {
        let raw = self.call(ClientOp::Leader, true).await?;
        postcard::from_bytes(&raw).map_err(|e| ClientError::Codec(e.to_string()))
    }

    /// Sends `op` until a member carries it out. `idempotent`: an attempt whose outcome is
    /// unknown may be repeated (reads, and commands in a session).
    pub async fn call(&mut self, op: ClientOp, idempotent: bool) -> Result<Bytes, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last = String::from("no member tried yet");
        let mut attempts = 0u32;
        // Whether an attempt may have reached a member: then a failure leaves the outcome
        // unknown rather than "not done".
        let mut maybe_done = false;
        while tokio::time::Instant::now() < deadline {
            if attempts > 0 {
                self.retries += 1;
                // Back off a little more on every retry of this call (redirect ping-pong
                // during a leadership transfer, an election): 0, 10, 20, ... up to 200 ms.
                let pause = Duration::from_millis((u64::from(attempts) * 10).min(200));
                tokio::time::sleep(pause).await;
            }
            attempts += 1;
            let outcome = self.attempt(&op).await;
            if !matches!(outcome, Ok(Ok(_))) {
                // Any failure ends this connection: a late reply must never be read as the
                // answer to the next request.
                self.conn = None;
            }
            match outcome {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(ClientFailure::NotLeader { leader, address })) => {
                    last = format!("not the leader (leader {leader:?} at {address:?})");
                    self.next = address.and_then(|a| a.parse().ok());
                }
                Ok(Err(ClientFailure::Retry(why))) => last = why,
                Ok(Err(ClientFailure::Unknown(why))) | Err(Attempt::Lost(why)) => {
                    if !idempotent {
                        return Err(ClientError::Unknown(why));
                    }
                    maybe_done = true;
                    last = why;
                    self.next = None;
                }
                Ok(Err(refused @ ClientFailure::Failed(_))) => {
                    return Err(ClientError::Refused(refused))
                }
                // Refused at the handshake (another cluster): no member will say otherwise.
                Err(Attempt::Refused(why)) => {
                    return Err(ClientError::Refused(ClientFailure::Failed(why)))
                }
                // Could not reach the member: nothing was sent, try another.
                Err(Attempt::NotSent(why)) => {
                    last = why;
                    self.next = None;
                }
            }
        }
        Err(ClientError::Unavailable {
            timeout: self.timeout,
            last,
            maybe_done,
        })
    }

    /// The member to try now.
    fn target(&mut self) -> Option<SocketAddr> {
        if let Some(a) = self.next.take() {
            return Some(a);
        }
        let a = *self.members.get(self.turn % self.members.len().max(1))?;
        self.turn += 1;
        Some(a)
    }

    async fn attempt(&mut self, op: &ClientOp) -> Result<Result<Bytes, ClientFailure>, Attempt> {
        if self.conn.is_none() {
            let addr = self
                .target()
                .ok_or_else(|| Attempt::NotSent("no member addresses".into()))?;
            let stream = tokio::time::timeout(self.attempt_timeout, self.dial(addr))
                .await
                .map_err(|_| Attempt::NotSent(format!("{addr}: connect timed out")))??;
            self.conn = Some(Conn {
                addr,
                stream,
                next_id: 1,
            });
        }
        let max = self.max_frame;
        let conn = self.conn.as_mut().expect("connected above");
        let id = conn.next_id;
        conn.next_id += 1;
        let addr = conn.addr;
        let mut out = Vec::new();
        frame::encode(&Frame::ClientRequest { id, op: op.clone() }, &mut out)
            .map_err(|e| Attempt::NotSent(e.to_string()))?;
        // From here on the request may have reached the member.
        let lost = |e: String| Attempt::Lost(format!("{addr}: {e}"));
        let sent = async {
            conn.stream.write_all(&out).await?;
            conn.stream.flush().await
        };
        sent.await.map_err(|e| lost(e.to_string()))?;
        let reply = tokio::time::timeout(self.attempt_timeout, read_frame(&mut conn.stream, max))
            .await
            .map_err(|_| lost("no reply in time".into()))?
            .map_err(|e| lost(e.to_string()))?;
        match reply {
            Frame::ClientReply { id: got, result } if got == id => Ok(result),
            other => Err(lost(format!("unexpected reply {other:?}"))),
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Link, Attempt> {
        let io = |e: std::io::Error| Attempt::NotSent(format!("{addr}: {e}"));
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let mut stream = match &self.tls {
            None => Link::Plain(tcp),
            Some(identity) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = identity.connector().connect(name, tcp).await;
                Link::Dialed(Box::new(tls.map_err(|e| {
                    let why = format!("{addr}: TLS handshake failed: {e}");
                    // A certificate refused (by either end) will be refused by every
                    // member; a reset or a closed connection (a member restarting, or
                    // shedding handshakes) is worth trying elsewhere.
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        Attempt::Refused(why)
                    } else {
                        Attempt::NotSent(why)
                    }
                })?))
            }
        };
        let mut out = Vec::new();
        let hello = Frame::ClientHello {
            magic: MAGIC,
            version: VERSION,
            cluster_id: self.cluster_id,
        };
        frame::encode(&hello, &mut out).map_err(|e| Attempt::NotSent(e.to_string()))?;
        stream.write_all(&out).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        match read_frame(&mut stream, 64 * 1024).await.map_err(io)? {
            Frame::Welcome => Ok(stream),
            // A member that stopped says so; another may serve.
            Frame::Refused(why) if why.contains("stopped") => {
                Err(Attempt::NotSent(format!("{addr}: {why}")))
            }
            Frame::Refused(why) => Err(Attempt::Refused(format!("{addr} refused: {why}"))),
            other => Err(Attempt::NotSent(format!("{addr}: unexpected {other:?}"))),
        }
    }
}

enum Attempt {
    /// The request never left: safe to send elsewhere.
    NotSent(String),
    /// The member refused this client at the handshake.
    Refused(String),
    /// The request may have arrived; no reply.
    Lost(String),
}

/// A client of a cluster running [`App`] `A`: typed commands and queries, each command
/// applied exactly once however often it is retried across failures and leader changes.
pub struct AppClient<A: App> {
    raw: RaftClient,
    session: ClientSession,
    /// The last command whose outcome is unknown (its call failed after it may have
    /// reached the leader), as sent: retried as is, it applies at most once.
    pending: Option<Bytes>,
    _app: std::marker::PhantomData<fn() -> A>,
}

impl<A: App> AppClient<A> {
    /// A client with a new session (see [`RaftClient::new`]).
    pub fn new(members: impl IntoIterator<Item = SocketAddr>, cluster_id: u64) -> AppClient<A> {
        AppClient {
            raw: RaftClient::new(members, cluster_id),
            session: ClientSession::random(),
            pending: None,
            _app: std::marker::PhantomData,
        }
    }

    /// Connects over TLS with `identity` (see [`RaftClient::with_tls`]).
    pub fn with_tls(mut self, identity: Arc<TlsIdentity>) -> AppClient<A> {
        self.raw = self.raw.with_tls(identity);
        self
    }

    /// The untyped client underneath (timeouts, leader lookups).
    pub fn raw(&mut self) -> &mut RaftClient {
        &mut self.raw
    }

    /// Applies `command` exactly once and returns the application's response. If it fails
    /// with an unknown outcome ([`ClientError::Unavailable`] with `maybe_done`), the command
    /// stays pending: [`retry_pending`](AppClient::retry_pending) finishes it exactly once;
    /// proposing it again as a new command could apply it twice.
    pub async fn propose(&mut self, command: A::Command) -> Result<A::Response, ClientError> {
        let tag = self.session.next_command();
        let raw =
            encode_command(Some(tag), &command).map_err(|e| ClientError::Codec(e.to_string()))?;
        self.pending = Some(raw.clone());
        self.send(raw).await
    }

    /// Sends the last command whose outcome is unknown again (same session and sequence
    /// number, so it applies at most once) and returns its response; `None` if no command
    /// is pending.
    pub async fn retry_pending(&mut self) -> Option<Result<A::Response, ClientError>> {
        let raw = self.pending.clone()?;
        Some(self.send(raw).await)
    }

    async fn send(&mut self, raw: Bytes) -> Result<A::Response, ClientError> {
        // The same bytes, session and sequence number on every retry: applied once.
        let reply = match self.raw.call(ClientOp::Propose(raw), true).await {
            Ok(reply) => reply,
            Err(
                e @ ClientError::Unavailable {
                    maybe_done: true, ..
                },
            ) => return Err(e),
            Err(e) => {
                self.pending = None;
                return Err(e);
            }
        };
        self.pending = None;
        match decode_outcome::<A::Response>(&reply)
            .map_err(|e| ClientError::Codec(e.to_string()))?
        {
            Outcome::Applied(r) => Ok(r),
            Outcome::SessionExpired => {
                self.session = ClientSession::random();
                Err(ClientError::SessionExpired)
            }
            Outcome::Stale => Err(ClientError::Refused(ClientFailure::Failed(
                "the cluster has seen a later command of this session".into(),
            ))),
            Outcome::Undecodable(why) => Err(ClientError::Codec(why)),
        }
    }

    /// Answers `query` linearizably.
    pub async fn query(&mut self, query: &A::Query) -> Result<A::QueryResponse, ClientError> {
        let q = postcard::to_allocvec(query).map_err(|e| ClientError::Codec(e.to_string()))?;
        let raw = self.raw.read(Bytes::from(q)).await?;
        postcard::from_bytes(&raw).map_err(|e| ClientError::Codec(e.to_string()))
    }
}
