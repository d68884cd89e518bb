//! The Redis-protocol front end: parses RESP2 requests, turns writes into Raft proposals
//! and reads into linearizable (ReadIndex) queries, and forwards to the leader when this
//! node is not it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use raft_core::{NodeId, RaftError, RaftNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::admin::{AdminCommand, ClientAddrs};
use crate::kv::{
    encode_query, encode_write, Query, QueryResult, Session, Write, WriteOp, WriteResult,
};
use crate::resp::{self, Limits, Value};

/// A parsed client request.
#[derive(Debug)]
enum Request {
    /// Goes through the log.
    Write(Write),
    /// A linearizable read.
    Read(Query),
    /// Answered locally (PING, ECHO, errors, ...).
    Local(Value),
    /// INFO [section]
    Info,
    /// QUIT: answer OK and close.
    Quit,
    /// A membership change (`RAFT.*`), run on the leader.
    Admin(AdminCommand),
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn arity_err(name: &str) -> Request {
    Request::Local(Value::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn int_arg(b: &Bytes) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Turns a command's arguments into a request.
fn classify(args: &[Bytes]) -> Request {
    let Some(first) = args.first() else {
        return Request::Local(Value::err("ERR empty command"));
    };
    let name = upper(first);
    let rest = &args[1..];
    let write = |op| Request::Write(Write { session: None, op });
    if let Some(admin) = AdminCommand::parse(&name, rest) {
        return admin.map_or_else(|e| Request::Local(Value::err(e)), Request::Admin);
    }
    match name.as_str() {
        "PING" => match rest {
            [] => Request::Local(Value::Simple("PONG".into())),
            [msg] => Request::Local(Value::bulk(msg.clone())),
            _ => arity_err(&name),
        },
        "ECHO" => match rest {
            [msg] => Request::Local(Value::bulk(msg.clone())),
            _ => arity_err(&name),
        },
        "QUIT" => Request::Quit,
        "INFO" => Request::Info,
        // Sent by redis-cli and redis-benchmark on connect; nothing to report.
        "COMMAND" | "CONFIG" => Request::Local(Value::Array(Some(Vec::new()))),
        "SELECT" => match rest {
            [db] if db.as_ref() == b"0" => Request::Local(Value::ok()),
            [_] => Request::Local(Value::err("ERR DB index is out of range")),
            _ => arity_err(&name),
        },
        "CLIENT" => Request::Local(Value::ok()),
        "GET" => match rest {
            [k] => Request::Read(Query::Get(k.clone())),
            _ => arity_err(&name),
        },
        "MGET" if !rest.is_empty() => Request::Read(Query::MGet(rest.to_vec())),
        "EXISTS" if !rest.is_empty() => Request::Read(Query::Exists(rest.to_vec())),
        "DBSIZE" if rest.is_empty() => Request::Read(Query::DbSize),
        "SET" => match rest {
            [k, v] => write(WriteOp::Set(k.clone(), v.clone())),
            [_, _, ..] => Request::Local(Value::err(
                "ERR syntax error (SET options are not supported)",
            )),
            _ => arity_err(&name),
        },
        "MSET" if !rest.is_empty() && rest.len() % 2 == 0 => write(WriteOp::MSet(
            rest.chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        )),
        "DEL" if !rest.is_empty() => write(WriteOp::Del(rest.to_vec())),
        "APPEND" => match rest {
            [k, v] => write(WriteOp::Append(k.clone(), v.clone())),
            _ => arity_err(&name),
        },
        "INCR" => match rest {
            [k] => write(WriteOp::IncrBy(k.clone(), 1)),
            _ => arity_err(&name),
        },
        "INCRBY" => match rest {
            [k, d] => match int_arg(d) {
                Some(d) => write(WriteOp::IncrBy(k.clone(), d)),
                None => Request::Local(Value::err("ERR value is not an integer or out of range")),
            },
            _ => arity_err(&name),
        },
        // SESSION <client-id> <seq> <write command...>: exactly-once writes.
        "SESSION" => match rest {
            [client, seq, inner @ ..] if !inner.is_empty() => {
                let (Some(client), Some(seq)) = (int_arg(client), int_arg(seq)) else {
                    return Request::Local(Value::err(
                        "ERR SESSION needs a numeric client id and sequence number",
                    ));
                };
                match classify(inner) {
                    Request::Write(mut w) => {
                        w.session = Some(Session {
                            client: client as u64,
                            seq: seq as u64,
                        });
                        Request::Write(w)
                    }
                    Request::Local(err @ Value::Error(_)) => Request::Local(err),
                    _ => Request::Local(Value::err("ERR SESSION wraps write commands only")),
                }
            }
            _ => arity_err(&name),
        },
        "MGET" | "EXISTS" | "DBSIZE" | "MSET" | "DEL" => arity_err(&name),
        _ => {
            let shown: Vec<String> = rest
                .iter()
                .take(3)
                .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
                .collect();
            Request::Local(Value::err(format!(
                "ERR unknown command '{}', with args beginning with: {}",
                String::from_utf8_lossy(first),
                shown.join(" ")
            )))
        }
    }
}

fn write_reply(r: WriteResult) -> Value {
    match r {
        WriteResult::Ok => Value::ok(),
        WriteResult::Int(n) => Value::Integer(n),
        WriteResult::Err(e) => Value::Error(e),
    }
}

fn query_reply(r: QueryResult) -> Value {
    match r {
        QueryResult::Value(v) => Value::Bulk(v),
        QueryResult::Values(vs) => Value::Array(Some(vs.into_iter().map(Value::Bulk).collect())),
        QueryResult::Int(n) => Value::Integer(n),
    }
}

/// What a Raft error tells the client.
fn error_reply(e: &RaftError) -> Value {
    match e {
        RaftError::NotLeader {
            leader_hint: Some(l),
        } => Value::err(format!(
            "TRYAGAIN this node is not the leader; the leader is node {}",
            l.0
        )),
        RaftError::NotLeader { leader_hint: None } => {
            Value::err("TRYAGAIN no leader is elected yet; retry shortly")
        }
        RaftError::ProposalDropped(_) => {
            Value::err("TRYAGAIN leadership changed and the write was not applied; retry it")
        }
        other => Value::err(format!("ERR {other}")),
    }
}

/// A pipelined connection to another node's client port, for forwarding.
struct Forwarder {
    addr: SocketAddr,
    conn: Mutex<Option<(TcpStream, BytesMut)>>,
}

impl Forwarder {
    fn new(addr: SocketAddr) -> Forwarder {
        Forwarder {
            addr,
            conn: Mutex::new(None),
        }
    }
}

/// The prefix that marks a forwarded command; the receiver never forwards it again.
const FORWARDED: &[u8] = b"FWD";

impl Forwarder {
    async fn forward(&self, requests: &[Vec<Bytes>]) -> Vec<Value> {
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            if conn.is_none() {
                match TcpStream::connect(self.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        *conn = Some((s, BytesMut::new()));
                    }
                    Err(_) => break,
                }
            }
            let Some((stream, buf)) = conn.as_mut() else {
                break;
            };
            match exchange(stream, buf, requests).await {
                Ok(replies) => return replies,
                Err(e) => {
                    tracing::debug!(addr = %self.addr, attempt, error = %e, "forwarding failed");
                    *conn = None;
                }
            }
        }
        requests
            .iter()
            .map(|_| Value::err("TRYAGAIN cannot reach the leader right now; retry shortly"))
            .collect()
    }
}

/// Sends `requests` pipelined (each marked as forwarded) and reads one reply for each.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    requests: &[Vec<Bytes>],
) -> std::io::Result<Vec<Value>> {
    let mut out = BytesMut::new();
    for r in requests {
        let mut args = Vec::with_capacity(r.len() + 1);
        args.push(Bytes::from_static(FORWARDED));
        args.extend(r.iter().cloned());
        resp::encode_request(&args, &mut out);
    }
    stream.write_all(&out).await?;
    let mut replies = Vec::with_capacity(requests.len());
    while replies.len() < requests.len() {
        replies.push(resp::read_value(stream, buf).await?);
    }
    Ok(replies)
}

/// Turns results into replies; requests refused because this node is not the leader are
/// forwarded to the leader in one pipelined batch (unless they were forwarded already).
async fn finish(
    results: Vec<Result<Bytes, RaftError>>,
    args: impl Iterator<Item = Vec<Bytes>>,
    decode: impl Fn(&[u8]) -> Result<Value, postcard::Error>,
    forwarded: bool,
    fwd: &Forwarders,
) -> Vec<Value> {
    let mut replies: Vec<Value> = Vec::with_capacity(results.len());
    let mut to_forward: Vec<(usize, Vec<Bytes>)> = Vec::new();
    let mut leader = None;
    for (i, (r, args)) in results.into_iter().zip(args).enumerate() {
        match r {
            Ok(raw) => replies.push(
                decode(&raw).unwrap_or_else(|e| Value::err(format!("ERR undecodable reply: {e}"))),
            ),
            Err(RaftError::NotLeader {
                leader_hint: Some(l),
            }) if !forwarded && fwd.knows(l) => {
                leader = Some(l);
                to_forward.push((i, args));
                replies.push(Value::Bulk(None)); // replaced by the leader's answer below
            }
            Err(e) => replies.push(error_reply(&e)),
        }
    }
    if let Some(l) = leader {
        let reqs: Vec<Vec<Bytes>> = to_forward.iter().map(|(_, a)| a.clone()).collect();
        let answers = match fwd.get(l) {
            Some(f) => f.forward(&reqs).await,
            None => reqs
                .iter()
                .map(|_| {
                    error_reply(&RaftError::NotLeader {
                        leader_hint: Some(l),
                    })
                })
                .collect(),
        };
        for ((i, _), a) in to_forward.into_iter().zip(answers) {
            replies[i] = a;
        }
    }
    replies
}

/// The Redis-protocol server of one node.
pub struct KvServer {
    node: RaftNode,
    peer_clients: ClientAddrs,
    limits: Limits,
}

/// One client connection's links to other nodes, opened on first use: each client
/// connection forwards over its own, so clients never queue behind each other. Members'
/// client addresses come from the shared table, which follows membership changes.
struct Forwarders {
    clients: ClientAddrs,
    open: std::sync::Mutex<BTreeMap<NodeId, Arc<Forwarder>>>,
}

impl Forwarders {
    fn new(clients: ClientAddrs) -> Forwarders {
        Forwarders {
            clients,
            open: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn address(&self, id: NodeId) -> Option<SocketAddr> {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients.get(&id).copied()
    }

    /// Whether requests can be forwarded to `id`.
    fn knows(&self, id: NodeId) -> bool {
        self.address(id).is_some()
    }

    /// The link to `id`, reopened when its address changed.
    fn get(&self, id: NodeId) -> Option<Arc<Forwarder>> {
        let addr = self.address(id)?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let link = open
            .entry(id)
            .or_insert_with(|| Arc::new(Forwarder::new(addr)));
        if link.addr != addr {
            *link = Arc::new(Forwarder::new(addr));
        }
        Some(link.clone())
    }
}

impl KvServer {
    /// A server for `node`; `peer_clients` maps other nodes to their client addresses, so
    /// requests reaching a follower are forwarded to the leader. The table may change while
    /// the server runs (see [`KvTransport`](crate::admin::KvTransport)).
    pub fn new(node: RaftNode, peer_clients: ClientAddrs) -> Arc<KvServer> {
        Arc::new(KvServer {
            node,
            peer_clients,
            limits: Limits::default(),
        })
    }

    /// Accepts connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.connection(stream).await {
                            tracing::debug!(%peer, error = %e, "client connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        let fwd = Forwarders::new(self.peer_clients.clone());
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
            // Every complete request in the buffer is one pipeline, answered in order.
            let mut batch = Vec::new();
            let mut fatal = None;
            loop {
                match resp::parse_request(&buf, &self.limits) {
                    Ok(Some((args, used))) => {
                        buf.advance(used);
                        if !args.is_empty() {
                            batch.push(args);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fatal = Some(e);
                        break;
                    }
                }
            }
            let (replies, quit) = self.run_pipeline(batch, &fwd).await;
            out.clear();
            for r in &replies {
                r.encode(&mut out);
            }
            if let Some(e) = &fatal {
                Value::err(format!("ERR {e}")).encode(&mut out);
            }
            stream.write_all(&out).await?;
            if quit || fatal.is_some() {
                return Ok(());
            }
        }
    }

    /// Executes a pipeline. Consecutive writes go to the log as one batch; a read waits for
    /// the writes before it, so a pipeline sees its own writes.
    async fn run_pipeline(&self, batch: Vec<Vec<Bytes>>, fwd: &Forwarders) -> (Vec<Value>, bool) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut writes: Vec<(Vec<Bytes>, Write)> = Vec::new();
        let mut reads: Vec<(Vec<Bytes>, Query)> = Vec::new();
        let mut quit = false;
        // A forwarded pipeline comes from another node and holds only forwarded commands;
        // they are never forwarded again, which rules out forwarding loops.
        let forwarded = batch
            .first()
            .and_then(|a| a.first())
            .is_some_and(|a| a.eq_ignore_ascii_case(FORWARDED));
        for args in batch {
            let args = match args.first() {
                Some(a) if a.eq_ignore_ascii_case(FORWARDED) => args[1..].to_vec(),
                _ => args,
            };
            // Runs of writes go to the log as one batch; runs of reads are confirmed
            // together. A run ends where another kind of request begins, so order is kept.
            match classify(&args) {
                Request::Write(w) => {
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(done.await);
                    writes.push((args, w));
                }
                Request::Read(q) => {
                    let done = self.flush_writes(std::mem::take(&mut writes), forwarded, fwd);
                    replies.extend(done.await);
                    reads.push((args, q));
                }
                other => {
                    let done = self.flush_writes(std::mem::take(&mut writes), forwarded, fwd);
                    replies.extend(done.await);
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(done.await);
                    match other {
                        Request::Local(v) => replies.push(v),
                        Request::Info => replies.push(self.info().await),
                        Request::Quit => {
                            replies.push(Value::ok());
                            quit = true;
                            break;
                        }
                        Request::Admin(c) => {
                            let done = c.execute(&self.node).await;
                            let decode = |_: &[u8]| Ok(Value::ok());
                            let args = std::iter::once(args.clone());
                            let result = vec![done.map(|()| Bytes::new())];
                            replies.extend(finish(result, args, decode, forwarded, fwd).await);
                        }
                        Request::Write(_) | Request::Read(_) => unreachable!("handled above"),
                    }
                }
            }
        }
        replies.extend(self.flush_writes(writes, forwarded, fwd).await);
        replies.extend(self.flush_reads(reads, forwarded, fwd).await);
        (replies, quit)
    }

    async fn flush_writes(
        &self,
        writes: Vec<(Vec<Bytes>, Write)>,
        forwarded: bool,
        fwd: &Forwarders,
    ) -> Vec<Value> {
        if writes.is_empty() {
            return Vec::new();
        }
        let encoded = writes.iter().map(|(_, w)| encode_write(w)).collect();
        let results = self.node.propose_batch(encoded).await;
        let args = writes.into_iter().map(|(a, _)| a);
        let decode = |raw: &[u8]| postcard::from_bytes::<WriteResult>(raw).map(write_reply);
        finish(results, args, decode, forwarded, fwd).await
    }

    async fn flush_reads(
        &self,
        reads: Vec<(Vec<Bytes>, Query)>,
        forwarded: bool,
        fwd: &Forwarders,
    ) -> Vec<Value> {
        if reads.is_empty() {
            return Vec::new();
        }
        // Reads do not depend on each other: start them all, then collect in order.
        let tasks: Vec<_> = reads
            .iter()
            .map(|(_, q)| {
                let node = self.node.clone();
                let q = encode_query(q);
                tokio::spawn(async move { node.read(q).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await.unwrap_or(Err(RaftError::ShuttingDown)));
        }
        let args = reads.into_iter().map(|(a, _)| a);
        let decode = |raw: &[u8]| postcard::from_bytes::<QueryResult>(raw).map(query_reply);
        finish(results, args, decode, forwarded, fwd).await
    }

    async fn info(&self) -> Value {
        let s = match self.node.status().await {
            Ok(s) => s,
            Err(e) => return error_reply(&e),
        };
        let role = match s.role {
            raft_core::Role::Leader => "leader",
            raft_core::Role::Candidate | raft_core::Role::PreCandidate => "candidate",
            raft_core::Role::Follower => "follower",
            raft_core::Role::Learner => "learner",
        };
        let mut text = String::new();
        text.push_str("# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nserver_name:raft-kv\r\n\r\n");
        text.push_str("# Raft\r\n");
        let mut kv = |k: &str, v: String| text.push_str(&format!("{k}:{v}\r\n"));
        kv("node_id", s.id.0.to_string());
        kv("role", role.into());
        kv("term", s.term.0.to_string());
        kv(
            "leader_id",
            s.leader
                .map(|l| l.0.to_string())
                .unwrap_or_else(|| "none".into()),
        );
        kv("commit_index", s.commit_index.0.to_string());
        kv("applied_index", s.applied_index.0.to_string());
        kv("first_log_index", s.first_log_index.0.to_string());
        kv("last_log_index", s.last_log_id.index.0.to_string());
        kv("last_log_term", s.last_log_id.term.0.to_string());
        kv("snapshot_index", s.snapshot_index.0.to_string());
        kv("snapshot_bytes", s.snapshot_bytes.to_string());
        kv("log_bytes", s.log_bytes.to_string());
        kv("log_cache_bytes", s.log_cache_bytes.to_string());
        let ids = |set: &std::collections::BTreeSet<raft_core::NodeId>| {
            set.iter()
                .map(|v| v.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        kv("voters", ids(&s.membership.voters));
        kv("learners", ids(&s.membership.learners));
        // During a joint change (Raft section 6): the voters being replaced.
        kv(
            "outgoing_voters",
            s.membership.outgoing.as_ref().map(ids).unwrap_or_default(),
        );
        kv("joint", (s.membership.outgoing.is_some() as u8).to_string());
        // Reads served here since start, by path (dissertation 6.4).
        kv(
            "reads_leader_read_index",
            s.reads.leader_read_index.to_string(),
        );
        kv(
            "reads_follower_read_index",
            s.reads.follower_read_index.to_string(),
        );
        kv("reads_lease", s.reads.lease.to_string());
        for (peer, (m, state)) in &s.peers {
            kv(
                &format!("peer_{}", peer.0),
                format!("match={},state={state:?}", m.0),
            );
        }
        Value::bulk(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn commands_classify_with_arity_checks() {
        assert!(matches!(
            classify(&args("get k")),
            Request::Read(Query::Get(_))
        ));
        assert!(
            matches!(classify(&args("GET")), Request::Local(Value::Error(e)) if e.contains("wrong number"))
        );
        assert!(matches!(
            classify(&args("mset a 1 b")),
            Request::Local(Value::Error(_))
        ));
        assert!(
            matches!(classify(&args("incrby k x")), Request::Local(Value::Error(e)) if e.contains("not an integer"))
        );
        assert!(
            matches!(classify(&args("nosuch a")), Request::Local(Value::Error(e)) if e.contains("unknown command"))
        );
        match classify(&args("SESSION 5 9 INCR c")) {
            Request::Write(w) => assert_eq!(w.session, Some(Session { client: 5, seq: 9 })),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&args("SESSION 5 9 GET c")),
            Request::Local(Value::Error(_))
        ));
    }
}
