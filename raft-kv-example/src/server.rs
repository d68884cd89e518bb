//! The Redis-protocol front end: parses RESP2 requests, turns writes into Raft proposals
//! and reads into linearizable (ReadIndex) queries, and forwards to the leader when this
//! node is not it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use raft_core::{NodeId, NotLeader, RaftError, RaftNode};
use raft_transport::admission::HandshakeLimit;
use raft_transport::link::Link;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::admin::{AdminCommand, ClientAddrs};
use crate::commands::{self, Change, Cmd, Kind, Queued, Reply, Transaction};
use crate::db::Millis;
use crate::kv::{encode_query, encode_write, Query, Session, Write};
use crate::resp::{self, Limits, Protocol, Value};
use crate::security::Security;

/// A parsed client request.
#[derive(Debug)]
enum Request {
    /// A data command (a read or a write), with the session of an exactly-once write.
    Data(Cmd, Option<Session>),
    /// A transaction forwarded by a follower.
    Exec(Transaction),
    /// Answered locally (PING, ECHO, errors, ...).
    Local(Value),
    /// `INFO [section]`
    Info,
    /// QUIT: answer OK and close.
    Quit,
    /// A membership change (`RAFT.*`), run on the leader.
    Admin(AdminCommand),
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: the connection's transaction state.
    Transaction(TxnVerb),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`
    Hello(Vec<Bytes>),
    /// CLIENT subcommand ...
    Client(Vec<Bytes>),
    /// `AUTH [user] password`
    Auth(Vec<Bytes>),
}

/// The transaction commands.
#[derive(Debug)]
enum TxnVerb {
    Multi,
    Exec,
    Discard,
    Watch(Vec<Bytes>),
    Unwatch,
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn local_err(e: impl Into<String>) -> Request {
    Request::Local(Value::err(e))
}

/// The internal command a follower forwards EXEC as: the whole transaction, encoded, so the
/// leader proposes exactly what the client queued (and stamps it with its own clock).
const FORWARDED_EXEC: &str = "RAFTKV.EXEC";

/// A transaction as a follower forwards it to the leader: the watch and the queued
/// commands as the client sent them. The leader parses them again, so what it proposes has
/// passed the same checks as a command sent to it directly.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ForwardedTxn {
    watch: Option<(u64, Vec<Bytes>)>,
    cmds: Vec<Vec<Bytes>>,
}

fn forwarded_exec(raw: &[u8]) -> Result<Transaction, String> {
    let txn: ForwardedTxn = postcard::from_bytes(raw)
        .map_err(|e| format!("ERR undecodable forwarded transaction: {e}"))?;
    let cmds = txn
        .cmds
        .iter()
        .map(|args| commands::queue(args))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("EXECABORT {e}"))?;
    Ok(Transaction {
        watch: txn.watch,
        cmds,
    })
}

/// Turns a command's arguments into a request; `forwarded` requests come from another node.
fn classify(args: &[Bytes], forwarded: bool) -> Request {
    let Some(first) = args.first() else {
        return local_err("ERR empty command");
    };
    let name = upper(first);
    let rest = &args[1..];
    if let Some(admin) = AdminCommand::parse(&name, rest) {
        return admin.map_or_else(local_err, Request::Admin);
    }
    if let Some(parsed) = commands::parse(&name, rest) {
        return parsed.map_or_else(local_err, |c| Request::Data(c, None));
    }
    if name == FORWARDED_EXEC && forwarded {
        return match rest {
            [raw] => forwarded_exec(raw).map_or_else(local_err, Request::Exec),
            _ => local_err(commands::arity_error(&name)),
        };
    }
    let Some(spec) = commands::lookup(&name) else {
        let shown: Vec<String> = rest
            .iter()
            .take(3)
            .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
            .collect();
        return local_err(format!(
            "ERR unknown command '{}', with args beginning with: {}",
            String::from_utf8_lossy(first),
            shown.join(" ")
        ));
    };
    if !commands::arity_ok(spec, args.len()) {
        return local_err(commands::arity_error(&name));
    }
    match name.as_str() {
        "PING" => match rest {
            [] => Request::Local(Value::Simple("PONG".into())),
            [msg] => Request::Local(Value::bulk(msg.clone())),
            _ => local_err(commands::arity_error(&name)),
        },
        "ECHO" => Request::Local(Value::bulk(rest[0].clone())),
        "QUIT" => Request::Quit,
        "INFO" => Request::Info,
        "COMMAND" => Request::Local(command_info(rest)),
        // Sent by redis-benchmark on connect; there is no configuration to show.
        "CONFIG" => Request::Local(Value::Array(Some(Vec::new()))),
        "SELECT" => match rest[0].as_ref() {
            b"0" => Request::Local(Value::ok()),
            _ => local_err("ERR DB index is out of range"),
        },
        "HELLO" => Request::Hello(rest.to_vec()),
        "AUTH" => Request::Auth(rest.to_vec()),
        "CLIENT" => Request::Client(rest.to_vec()),
        "MULTI" => Request::Transaction(TxnVerb::Multi),
        "EXEC" => Request::Transaction(TxnVerb::Exec),
        "DISCARD" => Request::Transaction(TxnVerb::Discard),
        "WATCH" => Request::Transaction(TxnVerb::Watch(rest.to_vec())),
        "UNWATCH" => Request::Transaction(TxnVerb::Unwatch),
        // SESSION <client-id> <seq> <write command...>: exactly-once writes.
        "SESSION" => {
            let (Ok(client), Ok(seq)) = (commands::int(&rest[0]), commands::int(&rest[1])) else {
                return local_err("ERR SESSION needs a numeric client id and sequence number");
            };
            let inner = &rest[2..];
            if upper(&inner[0]) == "SESSION" {
                return local_err("ERR SESSION cannot wrap SESSION");
            }
            match classify(inner, forwarded) {
                Request::Data(Cmd::Write(op), None) => Request::Data(
                    Cmd::Write(op),
                    Some(Session {
                        client: client as u64,
                        seq: seq as u64,
                    }),
                ),
                Request::Local(err @ Value::Error(_)) => Request::Local(err),
                _ => local_err("ERR SESSION wraps write commands only"),
            }
        }
        _ => local_err(format!("ERR '{name}' is not supported here")),
    }
}

/// `COMMAND [COUNT | INFO name... | DOCS ...]`: the command table, as Redis describes it.
fn command_info(args: &[Bytes]) -> Value {
    let describe = |s: &commands::Spec| {
        let flag = match s.kind {
            Kind::Read => "readonly",
            Kind::Write => "write",
            Kind::Connection | Kind::Admin => "fast",
        };
        let keyed = matches!(s.kind, Kind::Read | Kind::Write) && s.arity.abs() > 1;
        Value::Array(Some(vec![
            Value::bulk(s.name.to_ascii_lowercase()),
            Value::Integer(s.arity.into()),
            Value::Array(Some(vec![Value::Simple(flag.into())])),
            Value::Integer(keyed as i64),
            Value::Integer(keyed as i64),
            Value::Integer(keyed as i64),
        ]))
    };
    match args.first().map(|a| upper(a)).as_deref() {
        None => Value::Array(Some(commands::TABLE.iter().map(describe).collect())),
        Some("COUNT") => Value::Integer(commands::TABLE.len() as i64),
        Some("INFO") => Value::Array(Some(
            args[1..]
                .iter()
                .map(|n| commands::lookup(&upper(n)).map_or(Value::Bulk(None), describe))
                .collect(),
        )),
        // DOCS and the rest: nothing to add (redis-cli asks for DOCS on connect).
        Some(_) => Value::Array(Some(Vec::new())),
    }
}

/// The wire value of a state machine reply.
fn reply_value(r: Reply) -> Value {
    match r {
        Reply::Ok => Value::ok(),
        Reply::Status(s) => Value::Simple(s),
        Reply::Int(n) => Value::Integer(n),
        Reply::Bulk(b) => Value::Bulk(Some(b)),
        Reply::Nil => Value::Bulk(None),
        Reply::Array(items) => Value::Array(Some(items.into_iter().map(reply_value).collect())),
        Reply::Map(pairs) => Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (reply_value(k), reply_value(v)))
                .collect(),
        ),
        Reply::Aborted => Value::Array(None),
        Reply::Err(e) => Value::Error(e),
    }
}

fn decode_reply(raw: &[u8]) -> Result<Value, postcard::Error> {
    postcard::from_bytes::<Reply>(raw).map(reply_value)
}

/// Milliseconds since the Unix epoch by this node's clock: the stamp of the writes it
/// proposes as leader, and the time its reads are answered at. Never earlier than a time
/// it returned before, so a wall clock stepped back (NTP) cannot make a key that one read
/// found expired reappear for the next.
fn now_ms() -> Millis {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LATEST: AtomicU64 = AtomicU64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    LATEST.fetch_max(wall, Ordering::Relaxed).max(wall)
}

/// What a Raft error tells the client.
fn error_reply(e: &RaftError) -> Value {
    match e {
        RaftError::NotLeader(NotLeader {
            leader_hint: Some(l),
            ..
        }) => Value::err(format!(
            "TRYAGAIN this node is not the leader; the leader is node {}",
            l.0
        )),
        RaftError::NotLeader(_) => Value::err("TRYAGAIN no leader is elected yet; retry shortly"),
        RaftError::ProposalDropped(_) => {
            Value::err("TRYAGAIN leadership changed and the write was not applied; retry it")
        }
        other => Value::err(format!("ERR {other}")),
    }
}

/// A pipelined connection to another node's client port, for forwarding. It is this
/// member's own link: on TLS it proves this member's identity with its certificate, and
/// with a password (and no TLS) it authenticates with the cluster's password, never with
/// the client's.
struct Forwarder {
    to: NodeId,
    addr: SocketAddr,
    security: Security,
    conn: Mutex<Option<(Link, BytesMut)>>,
}

impl Forwarder {
    fn new(to: NodeId, addr: SocketAddr, security: Security) -> Forwarder {
        Forwarder {
            to,
            addr,
            security,
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
                let opened = tokio::time::timeout(
                    FORWARD_CONNECT_TIMEOUT,
                    open_link(&self.security, self.to, self.addr),
                );
                match opened.await {
                    Ok(Ok(link)) => *conn = Some(link),
                    _ => break,
                }
            }
            let Some((stream, buf)) = conn.as_mut() else {
                break;
            };
            match exchange(stream, buf, requests).await {
                Ok(replies) => return replies,
                Err(Exchange::NotSent(e)) => {
                    // Nothing reached the leader (a link it had closed): send again.
                    tracing::debug!(addr = %self.addr, attempt, error = %e, "forwarding failed");
                    *conn = None;
                }
                Err(Exchange::NoReply(e)) => {
                    // The leader may have applied the writes: sending them again could
                    // apply them twice, so the client learns the outcome is unknown.
                    tracing::debug!(addr = %self.addr, error = %e, "no reply to forwarded requests");
                    *conn = None;
                    return requests
                        .iter()
                        .map(|_| Value::err("TRYAGAIN the leader did not answer; the command may or may not have applied"))
                        .collect();
                }
            }
        }
        requests
            .iter()
            .map(|_| Value::err("TRYAGAIN cannot reach the leader right now; retry shortly"))
            .collect()
    }
}

/// How a forwarding exchange failed.
enum Exchange {
    /// The requests were not written.
    NotSent(std::io::Error),
    /// They were written; no (complete) reply came back.
    NoReply(std::io::Error),
}

/// How long opening a forwarding link (connection, TLS, HELLO) may take.
const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the leader may take to answer a forwarded request: longer than a proposal may
/// take (`Config::request_timeout`, 10 s by default), so a slow answer still arrives.
const FORWARD_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Limits on replies from another node: generous, since a member's reply is as trusted as
/// the member (a large MGET or HGETALL must come back whole).
const PEER_REPLY_LIMITS: Limits = Limits {
    max_bulk: 1 << 30,
    max_array: 1 << 26,
    max_line: 1 << 20,
};

/// Opens a link to member `to`'s client port, speaking RESP3 so that replies keep their
/// types (maps, nulls) on the way back to a RESP3 client.
async fn open_link(
    security: &Security,
    to: NodeId,
    addr: SocketAddr,
) -> std::io::Result<(Link, BytesMut)> {
    let mut stream = crate::security::dial_member(security, to, addr).await?;
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut hello = vec![Bytes::from_static(b"HELLO"), Bytes::from_static(b"3")];
    // On TLS the certificate authenticates this member; otherwise the cluster's password.
    if let (None, Some(password)) = (&security.tls, &security.password) {
        hello.extend([
            Bytes::from_static(b"AUTH"),
            Bytes::from_static(b"default"),
            Bytes::copy_from_slice(password.as_bytes()),
        ]);
    }
    resp::encode_request(&hello, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    match resp::read_value(&mut stream, &mut buf).await? {
        Value::Error(e) => Err(std::io::Error::other(e)),
        _ => Ok((stream, buf)),
    }
}

/// Sends `requests` pipelined (each marked as forwarded) and reads one reply for each.
async fn exchange(
    stream: &mut Link,
    buf: &mut BytesMut,
    requests: &[Vec<Bytes>],
) -> Result<Vec<Value>, Exchange> {
    let mut out = BytesMut::new();
    for r in requests {
        let mut args = Vec::with_capacity(r.len() + 1);
        args.push(Bytes::from_static(FORWARDED));
        args.extend(r.iter().cloned());
        resp::encode_request(&args, &mut out);
    }
    stream.write_all(&out).await.map_err(Exchange::NotSent)?;
    stream.flush().await.map_err(Exchange::NotSent)?;
    let mut replies = Vec::with_capacity(requests.len());
    while replies.len() < requests.len() {
        let read = resp::read_value_with(stream, buf, &PEER_REPLY_LIMITS);
        let reply = tokio::time::timeout(FORWARD_REPLY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        replies.push(reply.map_err(Exchange::NoReply)?);
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
            Err(RaftError::NotLeader(NotLeader {
                leader_hint: Some(l),
                ..
            })) if !forwarded && fwd.knows(l) => {
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
                    error_reply(&RaftError::NotLeader(NotLeader {
                        leader_hint: Some(l),
                        leader_address: None,
                    }))
                })
                .collect(),
        };
        for ((i, _), a) in to_forward.into_iter().zip(answers) {
            replies[i] = a;
        }
    }
    replies
}

/// Commands queued by MULTI, with the arguments they came as (forwarded as such).
#[derive(Debug, Default)]
struct Queue {
    cmds: Vec<(Vec<Bytes>, Queued)>,
    /// A queued command was refused: EXEC discards the transaction.
    failed: bool,
}

impl Queue {
    /// Queues `args`; the reply is QUEUED, or the reason it was refused.
    fn push(&mut self, args: Vec<Bytes>) -> Value {
        if self.cmds.len() >= commands::MAX_QUEUED {
            self.failed = true;
            return Value::err(format!(
                "ERR a transaction holds at most {} commands",
                commands::MAX_QUEUED
            ));
        }
        match commands::queue(&args) {
            Ok(q) => {
                self.cmds.push((args, q));
                Value::Simple("QUEUED".into())
            }
            Err(e) => {
                self.failed = true;
                Value::err(e)
            }
        }
    }
}

/// What one client connection has set up: its protocol, name, and transaction state.
#[derive(Debug, Default)]
struct ConnState {
    proto: Protocol,
    name: Option<Bytes>,
    multi: Option<Queue>,
    /// The applied index WATCH read at, and the keys watched since.
    watch: Option<(u64, Vec<Bytes>)>,
    /// Whether the client authenticated (by password, or as a member), or needs not.
    authenticated: bool,
    /// Whether the client proved with its certificate to be a member (a forwarding link).
    member: bool,
}

impl ConnState {
    fn watch_at(&mut self, index: u64, keys: Vec<Bytes>) {
        let (since, watched) = self.watch.get_or_insert((index, Vec::new()));
        // Several WATCH calls: the earliest read point covers them all.
        *since = (*since).min(index);
        watched.extend(keys);
    }

    /// EXEC: the transaction as one write, and the arguments it is forwarded as.
    fn exec(&mut self) -> Result<(Vec<Bytes>, Write), Value> {
        let queue = self.multi.take().unwrap_or_default();
        let watch = self.watch.take();
        if queue.failed {
            return Err(Value::err(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        let (raw, cmds): (Vec<Vec<Bytes>>, Vec<Queued>) = queue.cmds.into_iter().unzip();
        let forwarded = ForwardedTxn {
            watch: watch.clone(),
            cmds: raw,
        };
        let encoded = postcard::to_allocvec(&forwarded).unwrap_or_default();
        let args = vec![
            Bytes::from_static(FORWARDED_EXEC.as_bytes()),
            encoded.into(),
        ];
        let write = Write {
            session: None,
            at_ms: 0,
            op: Change::Exec(Transaction { watch, cmds }),
        };
        Ok((args, write))
    }

    /// Authenticates as `user` with `password`; the error reply if that fails.
    fn authenticate(
        &mut self,
        security: &Security,
        user: &[u8],
        password: &[u8],
    ) -> Result<(), Value> {
        // Like Redis's default user without a password: any credentials are accepted.
        if security.password.is_none() {
            return Ok(());
        }
        // Only the default user exists; a wrong user name fails as a wrong password does,
        // so names cannot be probed.
        if user == b"default" && security.password_matches(password) {
            self.authenticated = true;
            return Ok(());
        }
        Err(Value::err(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ))
    }

    /// `AUTH password` or `AUTH user password`.
    fn auth(&mut self, args: &[Bytes], security: &Security) -> Value {
        let result = match args {
            [_] if security.password.is_none() => Err(Value::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
            [password] => self.authenticate(security, b"default", password),
            [user, password] => self.authenticate(security, user, password),
            _ => Err(Value::err("ERR syntax error")),
        };
        result.map_or_else(|e| e, |()| Value::ok())
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the protocol and answers
    /// with the server's description.
    fn hello(&mut self, args: &[Bytes], security: &Security) -> Value {
        let mut proto = self.proto;
        if let Some(v) = args.first() {
            proto = match commands::int(v) {
                Ok(2) => Protocol::Resp2,
                Ok(3) => Protocol::Resp3,
                Ok(_) => return Value::err("NOPROTO unsupported protocol version"),
                Err(_) => {
                    return Value::err("ERR Protocol version is not an integer or out of range")
                }
            };
        }
        let mut i = 1;
        let mut name = None;
        let mut credentials = None;
        while i < args.len() {
            match (upper(&args[i]).as_str(), args.len() - i) {
                ("AUTH", 3..) => {
                    credentials = Some((&args[i + 1], &args[i + 2]));
                    i += 3
                }
                ("SETNAME", 2..) => {
                    name = Some(args[i + 1].clone());
                    i += 2
                }
                (opt, _) => return Value::err(format!("ERR Syntax error in HELLO option '{opt}'")),
            }
        }
        // Authenticates only once every option was read: a HELLO refused for its syntax
        // changes nothing.
        if let Some((user, password)) = credentials {
            if let Err(refused) = self.authenticate(security, user, password) {
                return refused;
            }
        }
        if !self.authenticated {
            return Value::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        self.proto = proto;
        if name.is_some() {
            self.name = name;
        }
        let s = |v: &str| Value::bulk(v.to_string());
        Value::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s("7.0.0")),
            (
                s("proto"),
                Value::Integer(if proto == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (s("id"), Value::Integer(1)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Value::Array(Some(Vec::new()))),
        ])
    }

    /// CLIENT SETNAME, GETNAME, SETINFO, ID, INFO.
    fn client(&mut self, args: &[Bytes]) -> Value {
        match (upper(&args[0]).as_str(), &args[1..]) {
            ("SETNAME", [name]) => {
                self.name = Some(name.clone());
                Value::ok()
            }
            ("GETNAME", []) => Value::Bulk(self.name.clone()),
            // Clients announce their library name and version; nothing to keep.
            ("SETINFO", [_, _]) => Value::ok(),
            ("ID", []) => Value::Integer(1),
            ("INFO", []) => Value::bulk(format!(
                "id=1 name={} resp={}\n",
                String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                if self.proto == Protocol::Resp3 { 3 } else { 2 }
            )),
            (sub, _) => Value::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'",
                sub.to_ascii_lowercase()
            )),
        }
    }
}

/// The Redis-protocol server of one node.
pub struct KvServer {
    node: RaftNode,
    peer_clients: ClientAddrs,
    limits: Limits,
    security: Security,
    /// Client connections open at once, at most [`MAX_CLIENTS`].
    slots: Arc<tokio::sync::Semaphore>,
    /// TLS handshakes under way: at most [`MAX_PENDING_HANDSHAKES`], and
    /// [`MAX_PENDING_HANDSHAKES_PER_IP`] from one address.
    handshakes: HandshakeLimit,
}

/// Most client connections served at once (Redis's `maxclients` default); more are told so
/// and closed. Other members' forwarding links (on TLS) are not counted.
pub const MAX_CLIENTS: usize = 10_000;

/// Most connections in their TLS handshake at once; more are closed on arrival.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Most connections in their TLS handshake from one address.
pub const MAX_PENDING_HANDSHAKES_PER_IP: usize = 64;

/// How long a client has to authenticate when a password is required.
pub const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Limits on requests before AUTH (as Redis: few arguments, small strings), so a client
/// that has not authenticated cannot make the server buffer much.
const UNAUTHENTICATED_LIMITS: Limits = Limits {
    max_bulk: 16 << 10,
    max_array: 10,
    max_line: 16 << 10,
};

/// Whether `args` is a command that authenticates (`AUTH`, or `HELLO` with `AUTH`).
fn authenticates(args: &[Bytes]) -> bool {
    let name = args.iter().find(|a| !a.eq_ignore_ascii_case(FORWARDED));
    name.is_some_and(|n| n.eq_ignore_ascii_case(b"AUTH") || n.eq_ignore_ascii_case(b"HELLO"))
}

/// Tells a client the server is full, and closes.
async fn refuse_full<S: AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.flush().await;
    Ok(())
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One client connection's links to other nodes, opened on first use: each client
/// connection forwards over its own, so clients never queue behind each other. Members'
/// client addresses come from the shared table, which follows membership changes.
struct Forwarders {
    clients: ClientAddrs,
    security: Security,
    open: std::sync::Mutex<BTreeMap<NodeId, Arc<Forwarder>>>,
}

impl Forwarders {
    fn new(clients: ClientAddrs, security: Security) -> Forwarders {
        Forwarders {
            clients,
            security,
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
        let fresh = || Arc::new(Forwarder::new(id, addr, self.security.clone()));
        let link = open.entry(id).or_insert_with(fresh);
        if link.addr != addr {
            *link = fresh();
        }
        Some(link.clone())
    }
}

impl KvServer {
    /// A server for `node`; `peer_clients` maps other nodes to their client addresses, so
    /// requests reaching a follower are forwarded to the leader. The table may change while
    /// the server runs (see [`KvTransport`](crate::admin::KvTransport)).
    pub fn new(node: RaftNode, peer_clients: ClientAddrs) -> Arc<KvServer> {
        Self::with_security(node, peer_clients, Security::default())
    }

    /// A server as [`new`](KvServer::new) makes, protected by `security`: TLS on the
    /// client port and on forwarding links, a password for clients.
    pub fn with_security(
        node: RaftNode,
        peer_clients: ClientAddrs,
        security: Security,
    ) -> Arc<KvServer> {
        Arc::new(KvServer {
            node,
            peer_clients,
            limits: Limits::default(),
            security,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS)),
            handshakes: HandshakeLimit::new(MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_IP),
        })
    }

    /// Accepts connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.accepted(stream).await {
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

    /// Admits a new connection (within [`MAX_CLIENTS`], after its TLS handshake) and serves
    /// it.
    async fn accepted(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let Some(identity) = &self.security.tls else {
            let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
                return refuse_full(stream).await;
            };
            return self.connection(stream, false).await;
        };
        // Connections still in their TLS handshake are bounded and timed out.
        let Some(pending) = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.handshakes.admit(peer.ip()))
        else {
            return Ok(());
        };
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            identity.optional_acceptor().accept(stream),
        )
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
        drop(pending);
        // A certificate naming a member (checked against the CA in the handshake) marks
        // another member's forwarding link.
        let member = {
            let members = self.peer_clients.read().unwrap_or_else(|e| e.into_inner());
            members
                .keys()
                .any(|&id| raft_transport::tls::peer_is(tls.get_ref().1, id))
        };
        // Members' links never wait for a client slot, so strangers cannot crowd them out.
        let slot = self.slots.clone().try_acquire_owned();
        if !member && slot.is_err() {
            return refuse_full(tls).await;
        }
        self.connection(tls, member).await
    }

    async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        member: bool,
    ) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        let fwd = Forwarders::new(self.peer_clients.clone(), self.security.clone());
        let mut conn = ConnState {
            authenticated: self.security.password.is_none() || member,
            member,
            ..ConnState::default()
        };
        let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
        loop {
            // Every complete request in the buffer is one pipeline, answered in order.
            // Until the client authenticates, requests are held to small limits (as in
            // Redis), and a pipeline ends at AUTH so what follows it is read with the
            // limits it earns.
            let limits = if conn.authenticated {
                self.limits
            } else {
                UNAUTHENTICATED_LIMITS
            };
            let mut batch = Vec::new();
            let mut fatal = None;
            loop {
                match resp::parse_request(&buf, &limits) {
                    Ok(Some((args, used))) => {
                        buf.advance(used);
                        let authenticates = !conn.authenticated && authenticates(&args);
                        if !args.is_empty() {
                            batch.push(args);
                        }
                        if authenticates {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        fatal = Some(e);
                        break;
                    }
                }
            }
            if batch.is_empty() && fatal.is_none() {
                let read = stream.read_buf(&mut buf);
                let read = if conn.authenticated {
                    read.await?
                } else {
                    // A client that does not authenticate in time is let go.
                    tokio::time::timeout_at(auth_deadline, read)
                        .await
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "no AUTH in time")
                        })??
                };
                if read == 0 {
                    return Ok(());
                }
                continue;
            }
            let (replies, quit) = self.run_pipeline(batch, &fwd, &mut conn).await;
            out.clear();
            for (proto, r) in &replies {
                r.encode_as(*proto, &mut out);
            }
            if let Some(e) = &fatal {
                Value::err(format!("ERR {e}")).encode_as(conn.proto, &mut out);
            }
            stream.write_all(&out).await?;
            stream.flush().await?;
            if quit || fatal.is_some() {
                return Ok(());
            }
        }
    }

    /// Executes a pipeline. Consecutive writes go to the log as one batch; a read waits for
    /// the writes before it, so a pipeline sees its own writes. Each reply carries the
    /// protocol it is sent in (HELLO may switch it mid-pipeline).
    async fn run_pipeline(
        &self,
        batch: Vec<Vec<Bytes>>,
        fwd: &Forwarders,
        conn: &mut ConnState,
    ) -> (Vec<(Protocol, Value)>, bool) {
        let mut replies: Vec<(Protocol, Value)> = Vec::with_capacity(batch.len());
        let mut writes: Vec<(Vec<Bytes>, Write)> = Vec::new();
        let mut reads: Vec<(Vec<Bytes>, Query)> = Vec::new();
        let mut quit = false;
        // A forwarded pipeline comes from another node and holds only forwarded commands;
        // they are never forwarded again, which rules out forwarding loops.
        let is_forwarded = |args: &[Bytes]| {
            args.first()
                .is_some_and(|a| a.eq_ignore_ascii_case(FORWARDED))
        };
        let forwarded = batch.first().is_some_and(|a| is_forwarded(a)) && self.may_forward(conn);
        for args in batch {
            let marked = is_forwarded(&args);
            let args = if marked { args[1..].to_vec() } else { args };
            let Some(first) = args.first() else {
                replies.push((conn.proto, Value::err("ERR empty command")));
                continue;
            };
            let name = upper(first);
            if let Some(refusal) = self.refusal(conn, &name, marked) {
                replies.push((conn.proto, refusal));
                continue;
            }
            // Between MULTI and EXEC, commands are queued, not run.
            let request = match conn.multi.as_mut() {
                Some(queue) if name == "WATCH" => {
                    queue.failed = true;
                    Request::Local(Value::err("ERR WATCH inside MULTI is not allowed"))
                }
                Some(queue) if !matches!(name.as_str(), "EXEC" | "DISCARD" | "MULTI" | "QUIT") => {
                    Request::Local(queue.push(args.clone()))
                }
                _ => classify(&args, forwarded),
            };
            // Runs of writes go to the log as one batch; runs of reads are confirmed
            // together. A run ends where another kind of request begins, so order is kept.
            let proto = conn.proto;
            let tag = |v: Vec<Value>| v.into_iter().map(move |v| (proto, v));
            match request {
                Request::Data(Cmd::Write(op), session) => {
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(tag(done.await));
                    let op = Change::One(op);
                    writes.push((
                        args,
                        Write {
                            session,
                            at_ms: 0,
                            op,
                        },
                    ));
                }
                Request::Exec(txn) => {
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(tag(done.await));
                    let op = Change::Exec(txn);
                    writes.push((
                        args,
                        Write {
                            session: None,
                            at_ms: 0,
                            op,
                        },
                    ));
                }
                Request::Data(Cmd::Read(op), _) => {
                    let done = self.flush_writes(std::mem::take(&mut writes), forwarded, fwd);
                    replies.extend(tag(done.await));
                    reads.push((args, Query::Data { at_ms: 0, op }));
                }
                Request::Transaction(TxnVerb::Exec) if conn.multi.is_some() => {
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(tag(done.await));
                    match conn.exec() {
                        Ok((args, write)) => writes.push((args, write)),
                        Err(e) => replies.push((proto, e)),
                    }
                }
                other => {
                    let done = self.flush_writes(std::mem::take(&mut writes), forwarded, fwd);
                    replies.extend(tag(done.await));
                    let done = self.flush_reads(std::mem::take(&mut reads), forwarded, fwd);
                    replies.extend(tag(done.await));
                    let reply = match other {
                        Request::Local(v) => v,
                        Request::Info => self.info().await,
                        Request::Quit => {
                            replies.push((proto, Value::ok()));
                            quit = true;
                            break;
                        }
                        Request::Admin(c) => {
                            let done = c.execute(&self.node).await;
                            let decode = |_: &[u8]| Ok(Value::ok());
                            let args = std::iter::once(args.clone());
                            let result = vec![done.map(|()| Bytes::new())];
                            let mut r = finish(result, args, decode, forwarded, fwd).await;
                            r.pop().unwrap_or_else(|| Value::err("ERR no reply"))
                        }
                        Request::Transaction(verb) => self.transaction(conn, verb).await,
                        Request::Hello(args) => conn.hello(&args, &self.security),
                        Request::Auth(args) => conn.auth(&args, &self.security),
                        Request::Client(args) => conn.client(&args),
                        Request::Data(..) | Request::Exec(_) => unreachable!("handled above"),
                    };
                    // HELLO answers in the protocol it switches to.
                    replies.push((conn.proto, reply));
                }
            }
        }
        let proto = conn.proto;
        let done = self.flush_writes(writes, forwarded, fwd).await;
        replies.extend(done.into_iter().map(|v| (proto, v)));
        let done = self.flush_reads(reads, forwarded, fwd).await;
        replies.extend(done.into_iter().map(|v| (proto, v)));
        (replies, quit)
    }

    /// Whether this connection may send forwarded commands: on TLS only a member (proved by
    /// its certificate); otherwise anyone authenticated (the password is the cluster's).
    fn may_forward(&self, conn: &ConnState) -> bool {
        match &self.security.tls {
            Some(_) => conn.member,
            None => conn.authenticated,
        }
    }

    /// Why the command `name` may not run on this connection yet, if it may not.
    fn refusal(&self, conn: &ConnState, name: &str, forwarded: bool) -> Option<Value> {
        if forwarded && !self.may_forward(conn) {
            return Some(Value::err(
                "NOPERM forwarded commands are accepted from members only",
            ));
        }
        // requirepass: until AUTH, only the commands that authenticate (and QUIT) run.
        if conn.authenticated || matches!(name, "AUTH" | "HELLO" | "QUIT") {
            return None;
        }
        Some(Value::err("NOAUTH Authentication required."))
    }

    /// MULTI, DISCARD, WATCH, UNWATCH, and EXEC outside a transaction.
    async fn transaction(&self, conn: &mut ConnState, verb: TxnVerb) -> Value {
        match verb {
            TxnVerb::Multi if conn.multi.is_some() => {
                Value::err("ERR MULTI calls can not be nested")
            }
            TxnVerb::Multi => {
                conn.multi = Some(Queue::default());
                Value::ok()
            }
            TxnVerb::Exec => Value::err("ERR EXEC without MULTI"),
            TxnVerb::Discard if conn.multi.is_none() => Value::err("ERR DISCARD without MULTI"),
            TxnVerb::Discard | TxnVerb::Unwatch => {
                if matches!(verb, TxnVerb::Discard) {
                    conn.multi = None;
                }
                conn.watch = None;
                Value::ok()
            }
            TxnVerb::Watch(_) if conn.multi.is_some() => {
                Value::err("ERR WATCH inside MULTI is not allowed")
            }
            TxnVerb::Watch(keys) => {
                // A linearizable read: every write acknowledged before WATCH is at or
                // below the index it returns, so EXEC aborts on any later change.
                match self.node.read(encode_query(&Query::AppliedIndex)).await {
                    Ok(raw) => match postcard::from_bytes::<Reply>(&raw) {
                        Ok(Reply::Int(index)) => {
                            conn.watch_at(index as u64, keys);
                            Value::ok()
                        }
                        other => Value::err(format!("ERR unexpected WATCH answer {other:?}")),
                    },
                    Err(e) => error_reply(&e),
                }
            }
        }
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
        // The proposer's clock stamps the write; only a leader's proposal is accepted, so
        // the stamp in the log is always a leader's.
        let at_ms = now_ms();
        let encoded = writes
            .iter()
            .map(|(_, w)| encode_write(&Write { at_ms, ..w.clone() }))
            .collect();
        let results = self.node.propose_batch(encoded).await;
        let args = writes.into_iter().map(|(a, _)| a);
        finish(results, args, decode_reply, forwarded, fwd).await
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
        let at = now_ms();
        // Reads do not depend on each other: start them all, then collect in order.
        let tasks: Vec<_> = reads
            .iter()
            .map(|(_, q)| {
                let node = self.node.clone();
                let q = match q {
                    Query::Data { op, .. } => Query::Data {
                        at_ms: at,
                        op: op.clone(),
                    },
                    other => other.clone(),
                };
                let q = encode_query(&q);
                tokio::spawn(async move { node.read(q).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(t.await.unwrap_or(Err(RaftError::ShuttingDown)));
        }
        let args = reads.into_iter().map(|(a, _)| a);
        finish(results, args, decode_reply, forwarded, fwd).await
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

    fn err(r: Request) -> String {
        match r {
            Request::Local(Value::Error(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn commands_classify_with_arity_checks() {
        assert!(matches!(
            classify(&args("get k"), false),
            Request::Data(Cmd::Read(_), None)
        ));
        assert!(err(classify(&args("GET"), false)).contains("wrong number"));
        assert!(err(classify(&args("mset a 1 b"), false)).contains("wrong number"));
        assert!(err(classify(&args("incrby k x"), false)).contains("not an integer"));
        assert!(err(classify(&args("nosuch a"), false)).contains("unknown command"));
        assert!(err(classify(&args("ECHO"), false)).contains("wrong number"));
        match classify(&args("SESSION 5 9 INCR c"), false) {
            Request::Data(Cmd::Write(_), s) => assert_eq!(s, Some(Session { client: 5, seq: 9 })),
            other => panic!("{other:?}"),
        }
        assert!(err(classify(&args("SESSION 5 9 GET c"), false)).contains("write commands only"));
    }

    #[test]
    fn a_forwarded_transaction_is_parsed_again_and_accepted_only_from_another_node() {
        let mut conn = ConnState {
            multi: Some(Queue::default()),
            ..ConnState::default()
        };
        let queue = conn.multi.as_mut().unwrap();
        assert_eq!(queue.push(args("INCR k")), Value::Simple("QUEUED".into()));
        assert_eq!(queue.push(args("PING")), Value::Simple("QUEUED".into()));
        let (fwd_args, write) = conn.exec().unwrap();
        let Change::Exec(sent) = write.op else {
            panic!("EXEC is a transaction")
        };
        match classify(&fwd_args, true) {
            Request::Exec(t) => assert_eq!(t, sent, "the leader rebuilds the same transaction"),
            other => panic!("{other:?}"),
        }
        assert!(err(classify(&fwd_args, false)).contains("unknown command"));
        // Commands the parsers refuse are refused when forwarded too.
        let bad = ForwardedTxn {
            watch: None,
            cmds: vec![args("SET k v EX 0")],
        };
        let raw = Bytes::from(postcard::to_allocvec(&bad).unwrap());
        let forged = vec![Bytes::from_static(FORWARDED_EXEC.as_bytes()), raw];
        assert!(err(classify(&forged, true)).starts_with("EXECABORT"));
    }

    #[test]
    fn a_refused_command_in_multi_aborts_exec_and_session_does_not_nest() {
        let mut queue = Queue::default();
        assert!(matches!(queue.push(args("INCRBY k x")), Value::Error(_)));
        let mut conn = ConnState {
            multi: Some(queue),
            ..ConnState::default()
        };
        assert!(matches!(conn.exec(), Err(Value::Error(e)) if e.starts_with("EXECABORT")));
        assert!(conn.multi.is_none());
        let deep = "SESSION 1 1 ".repeat(50_000) + "INCR k";
        assert!(err(classify(&args(&deep), false)).contains("cannot wrap SESSION"));
    }

    #[test]
    fn hello_switches_the_protocol_or_refuses_it() {
        let open = Security::default();
        let mut conn = ConnState {
            authenticated: true,
            ..ConnState::default()
        };
        let Value::Map(m) = conn.hello(&args("3 SETNAME app"), &open) else {
            panic!("HELLO answers with a map")
        };
        assert!(m.contains(&(Value::bulk("proto"), Value::Integer(3))));
        assert_eq!(conn.proto, Protocol::Resp3);
        assert_eq!(conn.name.as_deref(), Some(&b"app"[..]));
        assert!(
            matches!(conn.hello(&args("4"), &open), Value::Error(e) if e.starts_with("NOPROTO"))
        );
        assert_eq!(
            conn.proto,
            Protocol::Resp3,
            "a refused HELLO changes nothing"
        );
        conn.hello(&args("2"), &open);
        assert_eq!(conn.proto, Protocol::Resp2);
        assert!(matches!(
            conn.hello(&args("3 BOGUS"), &open),
            Value::Error(_)
        ));
        assert_eq!(conn.client(&args("SETINFO LIB-NAME redis-py")), Value::ok());
        assert!(matches!(conn.client(&args("TRACKING on")), Value::Error(_)));
    }

    fn error_of(v: Value) -> String {
        match v {
            Value::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn auth_follows_redis_6_with_requirepass() {
        let guarded = Security {
            tls: None,
            password: Some(Arc::from("s3cret")),
        };
        let mut conn = ConnState::default();
        assert!(error_of(conn.hello(&args("3"), &guarded)).starts_with("NOAUTH HELLO"));
        assert_eq!(
            conn.proto,
            Protocol::Resp2,
            "a refused HELLO changes nothing"
        );
        assert!(error_of(conn.auth(&args("wrong"), &guarded)).starts_with("WRONGPASS"));
        assert!(error_of(conn.auth(&args("admin s3cret"), &guarded)).starts_with("WRONGPASS"));
        assert!(error_of(conn.auth(&args("s3cre"), &guarded)).starts_with("WRONGPASS"));
        assert!(!conn.authenticated);
        assert!(
            error_of(conn.hello(&args("3 AUTH default nope"), &guarded)).starts_with("WRONGPASS")
        );
        assert!(matches!(
            conn.hello(&args("3 AUTH default s3cret"), &guarded),
            Value::Map(_)
        ));
        assert!(conn.authenticated);
        let mut other = ConnState::default();
        assert_eq!(other.auth(&args("default s3cret"), &guarded), Value::ok());
        assert!(other.authenticated);
        // Without a password configured, AUTH <password> is a configuration error, as in
        // Redis.
        let mut open = ConnState::default();
        let e = error_of(open.auth(&args("x"), &Security::default()));
        assert!(e.contains("without any password configured"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Every command name (and the internal ones), with arguments from a small alphabet
        /// that hits numbers, options and nesting: parsing never panics.
        #[test]
        fn classifying_any_command_never_panics(
            name in proptest::sample::select(
                commands::TABLE.iter().map(|s| s.name).chain(["FWD", FORWARDED_EXEC, "NOPE"]).collect::<Vec<_>>()
            ),
            rest in proptest::collection::vec(
                proptest::sample::select(vec![
                    "", "0", "-1", "1", "9223372036854775808", "EX", "PX", "NX", "XX", "GET", "KEEPTTL",
                    "SESSION", "SET", "FWD", "MATCH", "COUNT", "TYPE", "*", "AUTH", "default", "3",
                ]),
                0..8,
            ),
            forwarded in proptest::prelude::any::<bool>(),
        ) {
            let args: Vec<Bytes> = std::iter::once(name)
                .chain(rest)
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            let _ = classify(&args, forwarded);
            let _ = commands::queue(&args);
        }
    }
}
