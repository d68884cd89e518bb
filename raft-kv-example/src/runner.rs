//! Running nodes: one node in this process, or a local cluster of child processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_core::{Config, Membership, NodeId, RaftError, RaftNode, ReadPolicy, Seams};
use raft_transport::tls::{TlsFiles, TlsIdentity};
use raft_transport::{TcpConfig, TcpTransport};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::admin::{AdminCommand, ClientAddrs, KvTransport, MemberAddr};
use crate::identity;
use crate::kv::KvStateMachine;
use crate::security::{ClientAuth, Security};
use crate::server::KvServer;
use raft_transport::tls::pki::Pki;

/// Why a node or cluster could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A command-line value is wrong; the message says which and how.
    #[error("{0}")]
    Usage(String),
    /// Opening the data directory failed.
    #[error("storage: {0}")]
    Storage(#[from] raft_core::StorageError),
    /// The Raft node failed to start.
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    /// The cluster refused or could not carry out a request.
    #[error("{0}")]
    Refused(String),
    /// A socket or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Io { context, source }
}

/// Parses `1=HOST:PORT,2=HOST:PORT,...`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>, RunError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| RunError::Usage(format!("peer '{part}' must look like ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| RunError::Usage(format!("peer id '{id}' is not a number")))?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| {
            RunError::Usage(format!(
                "peer address '{addr}' is not HOST:PORT (use an IP address)"
            ))
        })?;
        out.insert(NodeId(id), addr);
    }
    Ok(out)
}

/// Everything one node needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (must appear in `peers`).
    pub id: NodeId,
    /// Where the redb log and snapshots live; reused across restarts.
    pub data_dir: PathBuf,
    /// Address for Raft traffic.
    pub raft_addr: SocketAddr,
    /// Address for Redis clients.
    pub client_addr: SocketAddr,
    /// Every member's Raft address, this node's included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Every member's client address, for forwarding to the leader (optional).
    pub peer_clients: BTreeMap<NodeId, SocketAddr>,
    /// Raft timing.
    pub raft: Config,
    /// Shared by all members; connections from other clusters are refused.
    pub cluster_id: u64,
    /// Join a running cluster: `peers` lists its members (not this node), and this node
    /// takes part once a member adds it (`RAFT.ADDLEARNER`).
    pub join: bool,
    /// This member's certificate, key and the cluster's CA: mutual TLS on the Raft port,
    /// TLS on the client port and on forwarding links. `None`: plain TCP (trusted networks).
    pub tls: Option<TlsFiles>,
    /// Clients must `AUTH` with this password (Redis's `requirepass`).
    pub password: Option<String>,
    /// Where to serve `/metrics` (Prometheus) and `/status` (JSON), if anywhere.
    pub http_addr: Option<SocketAddr>,
    /// Also serve the fault drill there (`/admin/isolate`, `/admin/heal`): local clusters.
    pub http_admin: bool,
}

/// A node running in this process.
pub struct RunningNode {
    /// The Raft node.
    pub node: RaftNode,
    transport: TcpTransport,
    server: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    /// The client address actually bound.
    pub client_addr: SocketAddr,
}

impl RunningNode {
    /// Stops serving clients, stops the node and closes its connections.
    pub async fn shutdown(self) {
        self.server.abort();
        if let Some(http) = self.http {
            http.abort();
        }
        self.node.shutdown().await;
        self.transport.shutdown();
    }
}

/// Starts one node: opens (or resumes) its data directory, binds its sockets, starts Raft
/// and the Redis-protocol server.
pub async fn start_node(opts: NodeOptions) -> Result<RunningNode, RunError> {
    match (opts.join, opts.peers.contains_key(&opts.id)) {
        (false, false) => {
            return Err(RunError::Usage(format!(
                "--peers must include this node ({}) with its raft address (to join a running cluster instead, pass --join)",
                opts.id.0
            )))
        }
        (true, true) => {
            return Err(RunError::Usage(format!(
                "with --join, --peers lists the cluster's current members, not this node ({})",
                opts.id.0
            )))
        }
        _ => {}
    }
    let (log, snapshots) = raft_storage::open_data_dir(&opts.data_dir, 2).await?;
    identity::check(&opts.data_dir, opts.cluster_id, opts.id)?;
    let tls = opts
        .tls
        .clone()
        .map(|files| TlsIdentity::load_member(opts.id, files))
        .transpose()
        .map_err(|e| RunError::Usage(e.to_string()))?;
    let security = Security {
        tls: tls.clone(),
        password: opts.password.as_deref().map(Arc::from),
    };
    let tcp = TcpConfig {
        cluster_id: opts.cluster_id,
        tls,
        ..TcpConfig::default()
    };
    let transport = TcpTransport::bind(opts.id, opts.raft_addr, tcp)
        .await
        .map_err(io(format!(
            "cannot listen for raft traffic on {}",
            opts.raft_addr
        )))?;
    for (&id, &addr) in &opts.peers {
        transport.set_peer(id, addr);
    }
    let clients = opts.peer_clients.clone().into_iter();
    let clients: ClientAddrs = Arc::new(RwLock::new(
        clients.filter(|(id, _)| *id != opts.id).collect(),
    ));
    let listener = TcpListener::bind(opts.client_addr)
        .await
        .map_err(io(format!(
            "cannot listen for clients on {}",
            opts.client_addr
        )))?;
    let client_addr = listener.local_addr().map_err(io("client socket"))?;
    let seams = Seams {
        log: Arc::new(log),
        snapshots: Arc::new(snapshots),
        state_machine: Box::new(KvStateMachine::new()),
        transport: Arc::new(KvTransport::new(transport.clone(), clients.clone())),
    };
    // A joining node starts outside the configuration, so it never campaigns on its own.
    let membership = Membership::new(opts.peers.keys().copied());
    let node = RaftNode::start(opts.id, opts.raft.clone(), membership, seams, None).await?;
    transport.serve(node.inbox());
    if let Some(identity) = security.tls.clone() {
        tokio::spawn(reload_on_hangup(identity));
    }
    let http = match opts.http_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(io(format!("cannot listen for HTTP on {addr}")))?;
            let state = crate::http::HttpNode {
                node: node.clone(),
                transport: transport.clone(),
                admin: opts.http_admin,
            };
            Some(tokio::spawn(async move {
                if let Err(e) = crate::http::serve(listener, state).await {
                    tracing::warn!(error = %e, "the HTTP endpoint stopped");
                }
            }))
        }
        None => None,
    };
    let server = KvServer::with_security(node.clone(), clients, security);
    let server = tokio::spawn(server.serve(listener));
    Ok(RunningNode {
        node,
        transport,
        server,
        http,
        client_addr,
    })
}

/// Reads the TLS files again on every SIGHUP (certificate rotation without a restart); new
/// connections use them, open ones keep theirs.
async fn reload_on_hangup(identity: Arc<TlsIdentity>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    while hangups.recv().await.is_some() {
        match identity.reload() {
            Ok(()) => tracing::info!(files = ?identity.files(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; keeping the current certificate")
            }
        }
    }
}

/// Resolves once `node` learns that it was removed from the cluster (a committed
/// configuration no longer names it), to a line saying so; never if it stops first.
pub async fn removal(node: &RaftNode) -> String {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        every.tick().await;
        match node.status().await {
            Ok(s) if s.removed => {
                let voters: Vec<String> = s
                    .membership
                    .voters
                    .iter()
                    .map(|v| v.0.to_string())
                    .collect();
                return format!("at term {}; voters now {}", s.term.0, voters.join(","));
            }
            Ok(_) => {}
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

/// How long a node that stopped on a fatal error keeps its connections open, so that
/// replies carrying the cause reach clients, before the process exits.
pub const FATAL_GRACE: Duration = Duration::from_millis(200);

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Addresses of a local cluster's node `i` (1-based).
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// Node id.
    pub id: NodeId,
    /// Raft address.
    pub raft: SocketAddr,
    /// Client (Redis) address.
    pub client: SocketAddr,
    /// HTTP address (`/metrics`, `/status`).
    pub http: SocketAddr,
    /// Data directory.
    pub dir: PathBuf,
}

/// The layout of a local cluster on 127.0.0.1: client ports from `base_port`, raft ports
/// from `base_port + 1000`, HTTP ports from `base_port + 2000`.
pub fn local_layout(nodes: u64, base_port: u16, data_dir: &Path) -> Vec<LocalNode> {
    (1..=nodes)
        .map(|i| LocalNode {
            id: NodeId(i),
            client: SocketAddr::from(([127, 0, 0, 1], base_port + i as u16 - 1)),
            raft: SocketAddr::from(([127, 0, 0, 1], base_port + 1000 + i as u16 - 1)),
            http: SocketAddr::from(([127, 0, 0, 1], base_port + 2000 + i as u16 - 1)),
            dir: data_dir.join(format!("node-{i}")),
        })
        .collect()
}

fn joined(nodes: &[LocalNode], f: impl Fn(&LocalNode) -> SocketAddr) -> String {
    nodes
        .iter()
        .map(|n| format!("{}={}", n.id.0, f(n)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The settings `raft-kv cluster` passes to every node it starts: when a node takes a
/// snapshot, how much log it keeps behind one, and how it serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Entries applied between snapshots.
    pub threshold: u64,
    /// Entries kept behind a snapshot for followers slightly behind.
    pub trailing: u64,
    /// How GET and the other reads are made linearizable.
    pub read_policy: ReadPolicy,
}

impl Default for Tuning {
    fn default() -> Self {
        let cfg = Config::default();
        Tuning {
            threshold: cfg.snapshot_threshold,
            trailing: cfg.snapshot_trailing,
            read_policy: cfg.read_policy,
        }
    }
}

/// `--read-policy` on the command line.
pub fn read_policy_arg(p: ReadPolicy) -> &'static str {
    match p {
        ReadPolicy::ReadIndex => "index",
        ReadPolicy::Lease => "lease",
        ReadPolicy::Stale => "stale",
    }
}

/// Parses `--read-policy`: `index` (ReadIndex, the default), `lease` or `stale`.
pub fn parse_read_policy(s: &str) -> Result<ReadPolicy, String> {
    match s {
        "index" => Ok(ReadPolicy::ReadIndex),
        "lease" => Ok(ReadPolicy::Lease),
        "stale" => Ok(ReadPolicy::Stale),
        other => Err(format!(
            "unknown read policy {other:?}: use index, lease or stale"
        )),
    }
}

/// How `raft-kv cluster` protects the nodes it starts: TLS with a private CA kept in
/// `tls_dir` (made on first use), and a password for clients.
#[derive(Clone, Debug, Default)]
pub struct LocalSecurity {
    /// Where the CA and the members' certificates live; `None` runs plain TCP.
    pub tls_dir: Option<PathBuf>,
    /// `--requirepass` for every node (passed in the environment, not on the command line).
    pub password: Option<String>,
}

/// The name of a local cluster's CA.
pub const LOCAL_CA: &str = "raft-kv local cluster CA";

impl LocalSecurity {
    /// Makes sure the CA exists and `node` has a certificate naming it, 127.0.0.1 and
    /// localhost (kept across runs; made once).
    pub fn prepare(&self, node: &LocalNode) -> Result<(), RunError> {
        let Some(dir) = &self.tls_dir else {
            return Ok(());
        };
        let tls = |e: raft_transport::tls::TlsError| RunError::Usage(e.to_string());
        let pki = if dir.join("ca-key.pem").exists() {
            Pki::load(dir, LOCAL_CA).map_err(tls)?
        } else {
            std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
            let pki = Pki::generate(LOCAL_CA).map_err(tls)?;
            pki.write_ca(dir).map_err(tls)?;
            pki
        };
        let files = self.files(node.id).expect("invariant: tls_dir is set");
        if !files.cert.exists() {
            let ips = [node.client.ip(), node.raft.ip()];
            pki.write_member(dir, node.id, &ips).map_err(tls)?;
        }
        Ok(())
    }

    /// Node `id`'s TLS files, when TLS is on.
    pub fn files(&self, id: NodeId) -> Option<TlsFiles> {
        let dir = self.tls_dir.as_ref()?;
        Some(TlsFiles::in_dir(dir, &raft_transport::tls::member_name(id)))
    }

    /// How a client of this cluster connects (checking the CA, sending the password).
    pub fn client_auth(&self) -> Result<ClientAuth, RunError> {
        let ca = self.tls_dir.as_ref().map(|d| d.join("ca.pem"));
        ClientAuth::new(ca.as_deref(), self.password.clone())
            .map_err(|e| RunError::Usage(e.to_string()))
    }

    fn apply(&self, id: NodeId, cmd: &mut Command) {
        if let Some(files) = self.files(id) {
            cmd.arg("--tls-cert")
                .arg(files.cert)
                .arg("--tls-key")
                .arg(files.key)
                .arg("--tls-ca")
                .arg(files.ca);
        }
        if let Some(password) = &self.password {
            cmd.env(PASSWORD_ENV, password);
        }
    }
}

/// The environment variable `raft-kv node` reads its `--requirepass` from, when not given.
pub const PASSWORD_ENV: &str = "RAFT_KV_REQUIREPASS";

/// Spawns `raft-kv node` for `node` of `all`, as a child process of `exe`.
pub fn spawn_node(
    exe: &Path,
    node: &LocalNode,
    all: &[LocalNode],
    (tuning, security): (Tuning, &LocalSecurity),
    log: Option<&Path>,
) -> Result<Child, RunError> {
    spawn(exe, node_command(exe, node, all, tuning, security)?, log)
}

/// Spawns `raft-kv node --join` for `node`, a new node for the cluster of `members`.
pub fn spawn_joining_node(
    exe: &Path,
    node: &LocalNode,
    members: &[LocalNode],
    (tuning, security): (Tuning, &LocalSecurity),
    log: Option<&Path>,
) -> Result<Child, RunError> {
    let mut cmd = node_command(exe, node, members, tuning, security)?;
    cmd.arg("--join");
    spawn(exe, cmd, log)
}

fn node_command(
    exe: &Path,
    node: &LocalNode,
    peers: &[LocalNode],
    tuning: Tuning,
    security: &LocalSecurity,
) -> Result<Command, RunError> {
    security.prepare(node)?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--id")
        .arg(node.id.0.to_string())
        .arg("--data-dir")
        .arg(&node.dir)
        .arg("--raft-addr")
        .arg(node.raft.to_string())
        .arg("--client-addr")
        .arg(node.client.to_string())
        .arg("--peers")
        .arg(joined(peers, |n| n.raft))
        .arg("--peer-clients")
        .arg(joined(peers, |n| n.client))
        .arg("--snapshot-threshold")
        .arg(tuning.threshold.to_string())
        .arg("--snapshot-trailing")
        .arg(tuning.trailing.to_string())
        .arg("--read-policy")
        .arg(read_policy_arg(tuning.read_policy))
        .arg("--http-addr")
        .arg(node.http.to_string())
        .arg("--http-admin")
        .kill_on_drop(true);
    security.apply(node.id, &mut cmd);
    Ok(cmd)
}

fn spawn(exe: &Path, mut cmd: Command, log: Option<&Path>) -> Result<Child, RunError> {
    if let Some(path) = log {
        let file =
            std::fs::File::create(path).map_err(io(format!("cannot create {}", path.display())))?;
        let err = file.try_clone().map_err(io("log file"))?;
        cmd.stdout(file).stderr(err);
    }
    cmd.spawn()
        .map_err(io(format!("cannot start {}", exe.display())))
}

/// Grows the local cluster of `members` by one node: starts it with `--join` beside the
/// others (the next ports of the layout), adds it as a learner through any member, and
/// promotes it to voter once it has caught up. Returns the new node and its process.
pub async fn grow(
    exe: &Path,
    members: &[LocalNode],
    base_port: u16,
    data_dir: &Path,
    (tuning, security): (Tuning, &LocalSecurity),
) -> Result<(LocalNode, Child), RunError> {
    let n = members.iter().map(|m| m.id.0).max().unwrap_or(0) + 1;
    let node = local_layout(n, base_port, data_dir)
        .pop()
        .expect("invariant: a layout of n >= 1 nodes has a last one");
    let child = spawn_joining_node(exe, &node, members, (tuning, security), None)?;
    let auth = security.client_auth()?;
    let endpoints: Vec<SocketAddr> = members.iter().map(|m| m.client).collect();
    let addr = MemberAddr {
        raft: node.raft,
        client: Some(node.client),
    };
    for command in [
        AdminCommand::AddLearner(node.id, addr),
        AdminCommand::Promote(node.id),
    ] {
        crate::admin::send(endpoints.clone(), &command, &auth)
            .await
            .map_err(|e| RunError::Refused(format!("{}: {e}", command.to_args()[0])))?;
    }
    Ok((node, child))
}

/// Asks a child to stop cleanly (SIGTERM), then waits up to `grace` before killing it.
pub async fn stop_child(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
