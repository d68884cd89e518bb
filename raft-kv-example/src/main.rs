//! `raft-kv`: run a replicated key-value node, a local cluster, or the demo.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raft_core::{Config, NodeId, RaftError, ReadPolicy};
use raft_kv_example::admin::{AdminCommand, MemberAddr};
use raft_kv_example::identity;
use raft_kv_example::runner::{self, LocalSecurity, NodeOptions, RunError, Tuning};
use raft_kv_example::security::ClientAuth;
use raft_kv_example::view::{self, LocalCluster, SharedCluster};
use raft_transport::tls::TlsFiles;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "raft-kv",
    version,
    about = "A replicated key-value store on Raft, speaking the Redis protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Add node ID as a learner: it receives the log (a snapshot first if needed), no vote.
    AddLearner {
        /// The new node's id.
        id: u64,
        /// Its Raft address, HOST:PORT.
        raft_addr: std::net::SocketAddr,
        /// Its client address, so other nodes can forward to it when it leads.
        client_addr: Option<std::net::SocketAddr>,
    },
    /// Give learner ID a vote (through a joint configuration).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove node ID from the cluster (the leader included: it steps down).
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Hand leadership to voter ID.
    Transfer {
        /// The voter's id.
        id: u64,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node (redb storage, TCP transport, Redis protocol for clients).
    Node {
        /// This node's id; must appear in --peers.
        #[arg(long)]
        id: u64,
        /// Data directory (created if missing; a restart with the same one resumes).
        #[arg(long)]
        data_dir: PathBuf,
        /// Address for Raft traffic, e.g. 127.0.0.1:7001.
        #[arg(long)]
        raft_addr: std::net::SocketAddr,
        /// Address for Redis clients, e.g. 127.0.0.1:6380.
        #[arg(long)]
        client_addr: std::net::SocketAddr,
        /// Every member's Raft address, this node's included: 1=HOST:PORT,2=HOST:PORT,...
        #[arg(long)]
        peers: String,
        /// Every member's client address, so followers forward to the leader.
        #[arg(long, default_value = "")]
        peer_clients: String,
        /// Milliseconds per Raft tick.
        #[arg(long, default_value_t = 50)]
        tick_ms: u64,
        /// Election timeout range, in ticks.
        #[arg(long, default_value_t = 10)]
        election_min_ticks: u64,
        /// Upper bound (exclusive) of the election timeout, in ticks.
        #[arg(long, default_value_t = 20)]
        election_max_ticks: u64,
        /// Heartbeat interval, in ticks.
        #[arg(long, default_value_t = 2)]
        heartbeat_ticks: u64,
        /// Cluster id shared by all members.
        #[arg(long, default_value_t = 1)]
        cluster_id: u64,
        /// Take a snapshot every N applied entries (then the log behind it is purged);
        /// 0 turns snapshots off.
        #[arg(long, default_value_t = Tuning::default().threshold)]
        snapshot_threshold: u64,
        /// Entries kept behind a snapshot, so followers slightly behind need no snapshot.
        #[arg(long, default_value_t = Tuning::default().trailing)]
        snapshot_trailing: u64,
        /// How reads (GET, MGET, EXISTS, ...) are made linearizable, on any node: `index`
        /// (ReadIndex: the leader confirms its leadership with a quorum round, batched for
        /// concurrent reads; followers ask the leader for a read index and answer
        /// locally), `lease` (the leader skips the round while its lease holds; assumes
        /// bounded clock drift), or `stale` (this node's state, no guarantee).
        #[arg(long, default_value = "index", value_parser = runner::parse_read_policy)]
        read_policy: ReadPolicy,
        /// Join a running cluster: --peers lists its current members (not this node); the
        /// node takes part once a member adds it (`raft-kv admin add-learner`).
        #[arg(long)]
        join: bool,
        /// This member's certificate (PEM), which must name it as DNS `raft-node-<id>`:
        /// mutual TLS with the other members on the Raft port, TLS for clients. Needs
        /// --tls-key and --tls-ca. SIGHUP reloads the three files.
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        /// This member's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA certificate(s) (PEM) that sign every member's certificate.
        #[arg(long, requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
        /// Clients must AUTH with this password (Redis's requirepass).
        #[arg(long, env = runner::PASSWORD_ENV, hide_env_values = true)]
        requirepass: Option<String>,
        /// Serve /metrics (Prometheus text format) and /status (JSON) over HTTP here, e.g.
        /// 127.0.0.1:9100.
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Also serve a fault drill on --http-addr (POST /admin/isolate and /admin/heal,
        /// with the header `x-raft-admin`): for local clusters and their live view.
        #[arg(long, requires = "http_addr")]
        http_admin: bool,
    },
    /// Change a running cluster's membership through any of its nodes (sent as the RESP
    /// commands RAFT.ADDLEARNER, RAFT.PROMOTE, RAFT.REMOVE and RAFT.TRANSFER).
    Admin {
        /// A node's client address, e.g. 127.0.0.1:6380 (followers forward to the leader).
        #[arg(long)]
        endpoint: std::net::SocketAddr,
        /// Connect over TLS, checking the node's certificate against this CA (PEM).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The cluster's password (AUTH).
        #[arg(long, env = runner::PASSWORD_ENV, hide_env_values = true)]
        password: Option<String>,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Run a local cluster of child processes on 127.0.0.1 until Ctrl-C.
    Cluster {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Data directory; each node uses DIR/node-N and keeps its data across runs.
        #[arg(long, default_value = "raft-kv-data")]
        data_dir: PathBuf,
        /// First client port; node N listens for clients on BASE+N-1 and for Raft on BASE+1000+N-1.
        #[arg(long, default_value_t = 6380)]
        base_port: u16,
        /// Take a snapshot every N applied entries; 0 turns snapshots off.
        #[arg(long, default_value_t = Tuning::default().threshold)]
        snapshot_threshold: u64,
        /// Entries kept behind a snapshot.
        #[arg(long, default_value_t = Tuning::default().trailing)]
        snapshot_trailing: u64,
        /// How reads are made linearizable: index, lease or stale (see `raft-kv node --help`).
        #[arg(long, default_value = "index", value_parser = runner::parse_read_policy)]
        read_policy: ReadPolicy,
        /// Mutual TLS between the nodes and TLS for clients, with a private CA and node
        /// certificates made in DIR/tls on first use.
        #[arg(long)]
        tls: bool,
        /// Clients must AUTH with this password.
        #[arg(long, env = runner::PASSWORD_ENV, hide_env_values = true)]
        requirepass: Option<String>,
        /// Port of the live web view on 127.0.0.1 (default: base port + 3000). Each node
        /// also serves /metrics and /status on base port + 2000 + N - 1.
        #[arg(long)]
        view_port: Option<u16>,
    },
    /// Start a 3-node cluster in a temporary directory, write, kill the leader, show the
    /// failover and the old leader catching up, and explain each step.
    Demo,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Node {
            id,
            data_dir,
            raft_addr,
            client_addr,
            peers,
            peer_clients,
            tick_ms,
            election_min_ticks,
            election_max_ticks,
            heartbeat_ticks,
            cluster_id,
            snapshot_threshold,
            snapshot_trailing,
            read_policy,
            join,
            tls_cert,
            tls_key,
            tls_ca,
            requirepass,
            http_addr,
            http_admin,
        } => {
            let raft = Config {
                tick_interval: Duration::from_millis(tick_ms),
                election_timeout_min: election_min_ticks,
                election_timeout_max: election_max_ticks,
                heartbeat_interval: heartbeat_ticks,
                snapshot_threshold,
                snapshot_trailing,
                read_policy,
                ..Config::default()
            };
            match (
                runner::parse_peers(&peers),
                runner::parse_peers(&peer_clients),
            ) {
                (Ok(peers), Ok(peer_clients)) => {
                    let opts = NodeOptions {
                        id: NodeId(id),
                        data_dir,
                        raft_addr,
                        client_addr,
                        peers,
                        peer_clients,
                        raft,
                        cluster_id,
                        join,
                        tls: match (tls_cert, tls_key, tls_ca) {
                            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
                            _ => None,
                        },
                        password: requirepass,
                        http_addr,
                        http_admin,
                    };
                    run_node(opts).await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Cmd::Cluster {
            nodes,
            data_dir,
            base_port,
            snapshot_threshold,
            snapshot_trailing,
            read_policy,
            tls,
            requirepass,
            view_port,
        } => {
            let tuning = Tuning {
                threshold: snapshot_threshold,
                trailing: snapshot_trailing,
                read_policy,
            };
            let security = LocalSecurity {
                tls_dir: tls.then(|| data_dir.join("tls")),
                password: requirepass,
            };
            let view_port = view_port.unwrap_or(base_port.saturating_add(3000));
            run_cluster(nodes, data_dir, (base_port, view_port), (tuning, security)).await
        }
        Cmd::Demo => demo::run().await,
        Cmd::Admin {
            endpoint,
            tls_ca,
            password,
            action,
        } => match ClientAuth::new(tls_ca.as_deref(), password) {
            Ok(auth) => admin(endpoint, &auth, action).await,
            Err(e) => Err(RunError::Usage(e.to_string())),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one membership command and prints the answer.
async fn admin(
    endpoint: std::net::SocketAddr,
    auth: &ClientAuth,
    action: AdminAction,
) -> Result<(), RunError> {
    let command = match action {
        AdminAction::AddLearner {
            id,
            raft_addr,
            client_addr,
        } => {
            let addr = MemberAddr {
                raft: raft_addr,
                client: client_addr,
            };
            AdminCommand::AddLearner(NodeId(id), addr)
        }
        AdminAction::Promote { id } => AdminCommand::Promote(NodeId(id)),
        AdminAction::Remove { id } => AdminCommand::Remove(NodeId(id)),
        AdminAction::Transfer { id } => AdminCommand::Transfer(NodeId(id)),
    };
    match raft_kv_example::admin::send(vec![endpoint], &command, auth).await {
        Ok(()) => {
            println!("OK");
            Ok(())
        }
        Err(e) => Err(RunError::Refused(e.to_string())),
    }
}

async fn run_node(opts: NodeOptions) -> Result<(), RunError> {
    let id = opts.id;
    let raft_addr = opts.raft_addr;
    let data_dir = opts.data_dir.clone();
    let node = runner::start_node(opts).await?;
    println!(
        "node {} ready: raft {raft_addr}, clients {}",
        id.0, node.client_addr
    );
    tokio::select! {
        _ = runner::wait_for_stop_signal() => {}
        removed = runner::removal(&node.node) => {
            // Like etcd: a removed member stops, and its data is never used again.
            let marker = identity::mark_removed(&data_dir, &removed)?;
            println!("node {} was removed from the cluster ({removed}); stopping (marked in {})", id.0, marker.display());
        }
        fatal = node.node.stopped() => {
            if let Some(fatal) = fatal {
                // Fail-stop: exit non-zero so a supervisor restarts the node from its
                // durable state; clients already got the cause as their error reply.
                tokio::time::sleep(runner::FATAL_GRACE).await;
                return Err(RunError::Raft(RaftError::Fatal(fatal)));
            }
        }
    }
    println!("node {} stopping", id.0);
    node.shutdown().await;
    Ok(())
}

async fn run_cluster(
    nodes: u64,
    data_dir: PathBuf,
    (base_port, view_port): (u16, u16),
    (tuning, security): (Tuning, LocalSecurity),
) -> Result<(), RunError> {
    if nodes == 0 {
        return Err(RunError::Usage("--nodes must be at least 1".into()));
    }
    let exe = std::env::current_exe().map_err(|source| RunError::Io {
        context: "cannot find the raft-kv executable".into(),
        source,
    })?;
    let layout = runner::local_layout(nodes, base_port, &data_dir);
    let mut children = Vec::new();
    for n in &layout {
        children.push(runner::spawn_node(
            &exe,
            n,
            &layout,
            (tuning, &security),
            None,
        )?);
    }
    println!(
        "local cluster of {nodes} nodes, data in {}",
        data_dir.display()
    );
    for n in &layout {
        println!(
            "  node {}: clients {}  raft {}  metrics http://{}/metrics  data {}",
            n.id.0,
            n.client,
            n.raft,
            n.http,
            n.dir.display()
        );
    }
    let first = &layout[0].client;
    let mut redis_cli = format!("redis-cli -p {}", first.port());
    if let Some(dir) = &security.tls_dir {
        redis_cli += &format!(" --tls --cacert {}", dir.join("ca.pem").display());
    }
    if security.password.is_some() {
        redis_cli += " --askpass";
    }
    println!("connect with:  {redis_cli}   (any node; followers forward to the leader)");
    println!(
        "benchmark:     {} -t set,get -n 100000 -c 32 -P 16 -q",
        redis_cli
            .replacen("redis-cli", "redis-benchmark", 1)
            .replace(" --askpass", " -a PASSWORD")
    );
    let cluster: SharedCluster = Arc::new(tokio::sync::Mutex::new(LocalCluster {
        exe: exe.clone(),
        layout,
        children: children.into_iter().map(Some).collect(),
        tuning,
        security: security.clone(),
    }));
    match tokio::net::TcpListener::bind(("127.0.0.1", view_port)).await {
        Ok(listener) => {
            println!("live view:     http://127.0.0.1:{view_port}/   (every node, elections, traffic; kill, partition, load)");
            tokio::spawn(view::serve(listener, cluster.clone()));
        }
        Err(e) => {
            println!("live view:     not served: cannot listen on 127.0.0.1:{view_port}: {e}")
        }
    }
    println!("Type 'add' and Enter to grow the cluster by one node (it joins, catches up and becomes a voter).");
    println!("Ctrl-C stops the cluster; the data stays for the next run.");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut reading = true;
    loop {
        tokio::select! {
            _ = runner::wait_for_stop_signal() => break,
            line = stdin.next_line(), if reading => match line {
                Ok(Some(l)) if l.trim() == "add" => {
                    let started = std::time::Instant::now();
                    // The view keeps working while the new node catches up (it may take
                    // a while, and a node killed from the view may be what it waits for).
                    let layout = cluster.lock().await.layout.clone();
                    match runner::grow(&exe, &layout, base_port, &data_dir, (tuning, &security)).await {
                        Ok((n, child)) => {
                            println!(
                                "  node {} joined as a voter in {:.1} s: clients {}  raft {}  data {}",
                                n.id.0, started.elapsed().as_secs_f64(), n.client, n.raft, n.dir.display()
                            );
                            let mut c = cluster.lock().await;
                            c.layout.push(n);
                            c.children.push(Some(child));
                        }
                        Err(e) => println!("  could not add a node: {e}"),
                    }
                }
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => println!("  unknown command '{}'; type 'add' to grow the cluster", l.trim()),
                // No terminal (or it closed): only a signal stops the cluster.
                Ok(None) | Err(_) => reading = false,
            },
        }
    }
    println!("stopping...");
    let mut c = cluster.lock().await;
    for child in c.children.iter_mut().flatten() {
        runner::stop_child(child, Duration::from_secs(5)).await;
    }
    Ok(())
}
