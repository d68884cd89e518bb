//! An application as its developer writes it: a typed [`App`], nodes started with one call
//! on TCP, a client that knows one member's address. Clients are redirected to the leader
//! by address, follow a failover, and apply each command once; starting with an
//! inconsistent membership is refused with a reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_core::app::{App, AppNode, AppStateMachine};
use raft_core::{Config, Membership, NodeId, RaftError, Role};
use raft_storage::{MemLogStore, MemSnapshotStore};
use raft_transport::client::AppClient;
use raft_transport::{StartError, Stores, TcpConfig, TcpNode};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Counter(u64);

impl App for Counter {
    type Command = u64;
    type Response = Result<u64, String>;
    type Query = ();
    type QueryResponse = u64;

    fn apply(&mut self, n: u64) -> Result<u64, String> {
        self.0 = self.0.checked_add(n).ok_or("overflow")?;
        Ok(self.0)
    }

    fn query(&self, _: &()) -> u64 {
        self.0
    }
}

fn stores() -> Stores {
    Stores {
        log: Arc::new(MemLogStore::new()),
        snapshots: Arc::new(MemSnapshotStore::default()),
        state_machine: Box::new(AppStateMachine::new(Counter::default())),
    }
}

fn fast() -> Config {
    Config {
        tick_interval: Duration::from_millis(10),
        ..Config::default()
    }
}

/// Reserves `n` distinct local addresses (bound then released; the nodes bind them next).
fn addresses(n: usize) -> Vec<SocketAddr> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn membership(addrs: &[SocketAddr]) -> Membership {
    let mut m = Membership::new((1..=addrs.len() as u64).map(NodeId));
    for (i, a) in addrs.iter().enumerate() {
        m = m.with_address(NodeId(i as u64 + 1), a.to_string());
    }
    m
}

async fn start_cluster(addrs: &[SocketAddr]) -> Vec<TcpNode> {
    start_cluster_with(addrs, |_| TcpConfig::default()).await
}

async fn start_cluster_with(
    addrs: &[SocketAddr],
    tcp: impl Fn(NodeId) -> TcpConfig,
) -> Vec<TcpNode> {
    let mut nodes = Vec::new();
    for i in 0..addrs.len() {
        let id = NodeId(i as u64 + 1);
        let node = TcpNode::start(id, membership(addrs), fast(), tcp(id), stores())
            .await
            .expect("start");
        nodes.push(node);
    }
    nodes
}

async fn leader_of(nodes: &[TcpNode]) -> usize {
    // Every node publishes who it follows; wait until one leads.
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.node.watch_leader().borrow().role == Role::Leader {
                return i;
            }
        }
        let mut w = nodes[0].node.watch_leader();
        let _ = tokio::time::timeout(Duration::from_millis(100), w.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_knowing_one_follower_is_sent_to_the_leader_and_follows_a_failover() {
    let addrs = addresses(3);
    let nodes = start_cluster(&addrs).await;
    let leader = tokio::time::timeout(Duration::from_secs(20), leader_of(&nodes))
        .await
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let mut seen = nodes[follower].node.watch_leader();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.borrow().leader != Some(NodeId(leader as u64 + 1)) {
            seen.changed().await.unwrap();
        }
    })
    .await
    .expect("the follower hears from the leader");
    // The follower's refusal names the leader and its address, from the one membership.
    let typed = AppNode::<Counter>::new(nodes[follower].node.clone());
    match typed.propose(1).await {
        Err(RaftError::NotLeader(n)) => {
            assert_eq!(n.leader_hint, Some(NodeId(leader as u64 + 1)));
            assert_eq!(n.leader_address, Some(addrs[leader].to_string()));
        }
        other => panic!("a follower must refuse with the leader's address: {other:?}"),
    }
    // A client that knows only that follower reaches the leader through the redirect.
    let mut client = AppClient::<Counter>::new([addrs[follower]], 0);
    assert_eq!(client.propose(5).await.unwrap(), Ok(5));
    assert_eq!(client.query(&()).await.unwrap(), 5);
    // Application errors are answers: the cluster goes on.
    assert_eq!(
        client.propose(u64::MAX).await.unwrap(),
        Err("overflow".to_string())
    );
    // The leader goes away; every remaining node's watch reports a new leader, and a
    // client that knows all members carries on.
    let mut watch = nodes[follower].node.watch_leader();
    nodes[leader].shutdown().await;
    let mut client = AppClient::<Counter>::new(addrs.clone(), 0);
    assert_eq!(client.propose(2).await.unwrap(), Ok(7));
    tokio::time::timeout(Duration::from_secs(20), async {
        while watch
            .borrow()
            .leader
            .is_none_or(|l| l == NodeId(leader as u64 + 1))
        {
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("the watch saw the new leader");
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_membership_without_every_address_or_without_this_node_is_refused() {
    let addrs = addresses(2);
    let missing =
        Membership::new([NodeId(1), NodeId(2)]).with_address(NodeId(1), addrs[0].to_string());
    let err = TcpNode::start(NodeId(1), missing, fast(), TcpConfig::default(), stores())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, StartError::MissingAddress(NodeId(2))),
        "{err}"
    );
    let err = TcpNode::start(
        NodeId(9),
        membership(&addrs),
        fast(),
        TcpConfig::default(),
        stores(),
    )
    .await
    .err()
    .expect("refused");
    assert!(matches!(err, StartError::NotAMember(NodeId(9))), "{err}");
    let bad = Membership::new([NodeId(1)]).with_address(NodeId(1), "not-an-address");
    let err = TcpNode::start(NodeId(1), bad, fast(), TcpConfig::default(), stores())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not IP:PORT"), "{err}");
}

#[tokio::test]
async fn a_client_of_another_cluster_is_refused() {
    let addrs = addresses(1);
    let node = TcpNode::start(
        NodeId(1),
        membership(&addrs),
        fast(),
        TcpConfig::default(),
        stores(),
    )
    .await
    .unwrap();
    let mut client = AppClient::<Counter>::new(addrs.clone(), 42);
    client.raw().timeout = Duration::from_millis(500);
    let err = client.propose(1).await.unwrap_err().to_string();
    assert!(err.contains("cluster id 42"), "{err}");
    node.shutdown().await;
}

/// A member that answers its very first request late (after the client gave up on it) and
/// every other request at once, each on the connection it came on.
async fn slow_first_member() -> SocketAddr {
    use raft_transport::frame::{self, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let first = first.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match frame::decode(&buf, 1 << 20) {
                        Ok(Some((f, used))) => {
                            buf.drain(..used);
                            let reply = match f {
                                Frame::ClientHello { .. } => Frame::Welcome,
                                Frame::ClientRequest { id, .. } => {
                                    if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                                        tokio::time::sleep(Duration::from_millis(400)).await;
                                    }
                                    Frame::ClientReply {
                                        id,
                                        result: Ok(bytes::Bytes::from(vec![id as u8])),
                                    }
                                }
                                _ => return,
                            };
                            let mut out = Vec::new();
                            frame::encode(&reply, &mut out).unwrap();
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        },
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_late_reply_is_never_taken_for_the_answer_to_the_next_request() {
    let addr = slow_first_member().await;
    let mut client = raft_transport::client::RaftClient::new([addr], 0);
    client.attempt_timeout = Duration::from_millis(100);
    // The first proposal's reply comes too late: its outcome is unknown.
    let first = client.propose(bytes::Bytes::from_static(b"a")).await;
    assert!(
        matches!(first, Err(raft_transport::client::ClientError::Unknown(_))),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the late reply is on its way
                                                          // The next request gets its own answer (request 1 of a fresh connection), not the
                                                          // late one.
    let second = client
        .propose(bytes::Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert_eq!(&second[..], &[1u8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_client_with_a_certificate_from_the_ca_is_served_over_tls_and_one_without_is_not() {
    use raft_transport::tls::{pki::Pki, TlsIdentity};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate("app CA").unwrap();
    let addrs = addresses(3);
    let ips = [addrs[0].ip()];
    let nodes = start_cluster_with(&addrs, |id| {
        let files = pki.write_member(dir.path(), id, &ips).unwrap();
        TcpConfig {
            tls: Some(TlsIdentity::load_member(id, files).unwrap()),
            ..TcpConfig::default()
        }
    })
    .await;
    let client_files = pki.write_client(dir.path(), "app-client").unwrap();
    let identity = TlsIdentity::load(client_files).unwrap();
    let mut client = AppClient::<Counter>::new(addrs.clone(), 0).with_tls(identity);
    assert_eq!(client.propose(5).await.unwrap(), Ok(5));
    assert_eq!(client.propose(2).await.unwrap(), Ok(7));
    assert_eq!(client.query(&()).await.unwrap(), 7);
    // A client certificate from another CA is refused by the members.
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::generate("another CA").unwrap();
    let mut files = stranger.write_client(other.path(), "app-client").unwrap();
    files.ca = dir.path().join("ca.pem"); // it trusts the cluster, the cluster not it
    let mut foreign =
        AppClient::<Counter>::new(addrs.clone(), 0).with_tls(TlsIdentity::load(files).unwrap());
    foreign.raw().timeout = Duration::from_secs(2);
    assert!(
        foreign.propose(1).await.is_err(),
        "served with another CA's certificate"
    );
    // Plain TCP to a TLS member is refused, not served.
    let mut plain = AppClient::<Counter>::new(addrs.clone(), 0);
    plain.raw().timeout = Duration::from_secs(2);
    assert!(plain.propose(1).await.is_err(), "served without TLS");
    assert_eq!(client.query(&()).await.unwrap(), 7);
    for n in &nodes {
        n.shutdown().await;
    }
}
