//! The node over real TCP on 127.0.0.1 (ephemeral ports), and the transport's defences
//! against hostile peers.

mod common;

use std::time::Duration;

use common::{cmd, tcp_config, within, Cluster};
use proptest::prelude::*;
use raft_core::{Inbox, NodeId};
use raft_transport::frame::{self, Frame};
use raft_transport::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_initial_election() {
    let c = Cluster::tcp(3, 11).await;
    let leader = c.check_one_leader().await;
    let term = c.check_terms().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.check_terms().await,
        term,
        "the term is stable with no failures"
    );
    assert_eq!(c.check_one_leader().await, leader);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_agreement() {
    let c = Cluster::tcp(3, 12).await;
    c.check_one_leader().await;
    for i in 1..=20 {
        c.one(cmd(i), 3, false).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_leader_crash_and_reelection() {
    let mut c = Cluster::tcp(3, 13).await;
    let first = c.check_one_leader().await;
    c.one(cmd("before"), 3, false).await;
    c.crash(first).await;
    let second = c.check_one_leader().await;
    assert_ne!(second, first);
    c.one(cmd("after"), 2, true).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_restarted_node_catches_up() {
    let mut c = Cluster::tcp(3, 14).await;
    let leader = c.check_one_leader().await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.crash(follower).await;
    for i in 0..10 {
        c.one(cmd(i), 2, true).await;
    }
    c.start(follower).await;
    let idx = c.one(cmd("all"), 3, true).await;
    let applied = c.applied(follower);
    assert!(applied.contains_key(&idx));
    for i in 0..10 {
        assert!(
            applied.values().any(|v| *v == cmd(i)),
            "restarted node misses command {i}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_member_added_with_its_address_is_reached_and_forgotten_once_removed() {
    // --- phase: three members over TCP; node 4 knows where they are, none of them knows it.
    let mut c = Cluster::tcp(3, 15).await;
    c.one(cmd("before"), 3, false).await;
    c.add_spare(NodeId(4)).await;
    let net = c.tcp.as_ref().expect("tcp");
    let addr4 = net.addrs[&NodeId(4)].to_string();
    let founders = [NodeId(1), NodeId(2), NodeId(3)];
    let knows_4 = |c: &Cluster, id: NodeId| {
        let net = c.tcp.as_ref().expect("tcp");
        net.transports[&id].peers().contains_key(&NodeId(4))
    };
    assert!(founders.iter().all(|&id| !knows_4(&c, id)));
    // --- phase: added as a learner with its address, every member's transport learns it
    // from the configuration, and node 4 catches up over TCP.
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader");
    let m = within(10, node.add_learner(NodeId(4), addr4.clone()))
        .await
        .expect("added");
    assert_eq!(m.addresses.get(&NodeId(4)), Some(&addr4));
    c.one(cmd("after"), 4, false).await;
    let told: Vec<bool> = founders.iter().map(|&id| knows_4(&c, id)).collect();
    assert_eq!(
        told, [true; 3],
        "every member learns the address from the configuration"
    );
    // --- phase: removed, it is forgotten by every member's transport.
    within(10, node.remove(NodeId(4))).await.expect("removed");
    for _ in 0..100 {
        if founders.iter().all(|&id| !knows_4(&c, id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        founders.iter().all(|&id| !knows_4(&c, id)),
        "a removed member is still in a transport's peer table"
    );
    // The leader's last heartbeat still reached node 4 before it was forgotten: node 4
    // knows its removal committed.
    let removed = c
        .node(NodeId(4))
        .expect("up")
        .status()
        .await
        .expect("status")
        .removed;
    assert!(removed, "node 4 never learnt that its removal committed");
    c.one(cmd("without 4"), 3, false).await;
    c.shutdown().await;
}

// ----- hostile input ------------------------------------------------------------------------

async fn listening(
    id: u64,
    cfg: TcpConfig,
) -> (
    TcpTransport,
    tokio::sync::mpsc::Receiver<raft_core::Message>,
) {
    let t = TcpTransport::bind(NodeId(id), "127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    t.set_peer(NodeId(2), "127.0.0.1:9".parse().unwrap());
    let (inbox, rx) = Inbox::channel(16);
    t.serve(inbox);
    (t, rx)
}

async fn hello(addr: std::net::SocketAddr, cluster_id: u64, from: u64, to: u64) -> Frame {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    frame::encode(
        &Frame::Hello {
            magic: frame::MAGIC,
            version: frame::VERSION,
            cluster_id,
            from: NodeId(from),
            to: NodeId(to),
        },
        &mut buf,
    )
    .unwrap();
    s.write_all(&buf).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut reply)).await;
    frame::decode(&reply, 1 << 20)
        .unwrap()
        .map(|(f, _)| f)
        .unwrap_or(Frame::Welcome)
}

#[tokio::test]
async fn handshake_from_another_cluster_is_refused() {
    let (t, _rx) = listening(1, tcp_config()).await;
    let reply = hello(t.local_addr(), 7, 2, 1).await;
    assert!(
        matches!(reply, Frame::Refused(ref r) if r.contains("cluster")),
        "{reply:?}"
    );
    t.shutdown();
}

#[tokio::test]
async fn handshake_with_an_unknown_or_wrong_id_is_refused() {
    let (t, _rx) = listening(1, tcp_config()).await;
    let unknown = hello(t.local_addr(), 42, 9, 1).await;
    assert!(
        matches!(unknown, Frame::Refused(ref r) if r.contains("not a peer")),
        "{unknown:?}"
    );
    let impostor = hello(t.local_addr(), 42, 1, 1).await;
    assert!(matches!(impostor, Frame::Refused(_)), "{impostor:?}");
    let misdirected = hello(t.local_addr(), 42, 2, 3).await;
    assert!(
        matches!(misdirected, Frame::Refused(ref r) if r.contains("not n3")),
        "{misdirected:?}"
    );
    t.shutdown();
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_connection_and_the_server_lives_on() {
    let cfg = TcpConfig {
        max_frame: 1024,
        ..tcp_config()
    };
    let (t, _rx) = listening(1, cfg).await;
    let attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],                                  // huge declared length
        [4u8, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9].to_vec(), // bad checksum
        vec![0x10, 0, 0],                                // half a header, then close
    ];
    for bytes in attacks {
        let mut s = TcpStream::connect(t.local_addr()).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
        drop(s);
        assert!(closed.is_ok(), "the server kept a hostile connection open");
    }
    // Still serving: a valid handshake is answered.
    assert_eq!(hello(t.local_addr(), 42, 2, 1).await, Frame::Welcome);
    assert!(
        t.stats()
            .rejected_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_frame_limit_is_never_sent_and_the_link_survives() {
    // The receiver would refuse the frame and close the connection, losing every message
    // queued behind it; the sender drops the one message instead.
    let cfg = TcpConfig {
        max_frame: 64 << 10,
        ..tcp_config()
    };
    let bind = |id| TcpTransport::bind(NodeId(id), "127.0.0.1:0".parse().unwrap(), cfg.clone());
    let (a, b) = (bind(1).await.unwrap(), bind(2).await.unwrap());
    a.set_peer(NodeId(2), b.local_addr());
    b.set_peer(NodeId(1), a.local_addr());
    let (inbox, mut rx) = Inbox::channel(16);
    b.serve(inbox);
    let chunk = |len: usize| raft_core::Message {
        from: NodeId(1),
        to: NodeId(2),
        term: raft_core::Term(1),
        body: raft_core::MessageBody::InstallSnapshot(raft_core::message::InstallSnapshot {
            meta: Default::default(),
            offset: 0,
            data: bytes::Bytes::from(vec![7u8; len]),
            done: false,
        }),
    };
    use raft_core::Transport;
    a.send(chunk(100 << 10)).await;
    a.send(chunk(10)).await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the small message arrives")
        .unwrap();
    assert_eq!(got, chunk(10));
    let stats = |t: &TcpTransport| {
        use std::sync::atomic::Ordering::Relaxed;
        (
            t.stats().oversized.load(Relaxed),
            t.stats().rejected_connections.load(Relaxed),
        )
    };
    assert_eq!(
        stats(&a).0,
        1,
        "the large message was dropped at the sender"
    );
    assert_eq!(stats(&b).1, 0, "no connection was refused");
    assert_eq!(a.max_message_bytes().map(|m| m < cfg.max_frame), Some(true));
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn a_node_refuses_to_start_when_an_append_could_exceed_the_frame_limit() {
    let cfg = TcpConfig {
        max_frame: 1 << 20,
        ..tcp_config()
    };
    let t = TcpTransport::bind(NodeId(1), "127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let seams = || raft_core::Seams {
        log: std::sync::Arc::new(raft_storage::MemLogStore::new()),
        snapshots: std::sync::Arc::new(raft_storage::MemSnapshotStore::new(2)),
        state_machine: Box::new(common::Recorder::new()),
        transport: std::sync::Arc::new(t.clone()),
    };
    let members = raft_core::Membership::new([NodeId(1)]);
    let too_big = raft_core::Config {
        snapshot_chunk_bytes: 256 << 10,
        ..raft_core::Config::default() // 4 MiB entries
    };
    let err = raft_core::RaftNode::start(NodeId(1), too_big, members.clone(), seams(), Some(1))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, raft_core::RaftError::Config(e) if e.reason.contains("max_entry_bytes")),
        "{err}"
    );
    let fits = raft_core::Config {
        max_entry_bytes: 512 << 10,
        max_bytes_per_append: 512 << 10,
        snapshot_chunk_bytes: 256 << 10,
        ..raft_core::Config::default()
    };
    let node = raft_core::RaftNode::start(NodeId(1), fits, members, seams(), Some(1))
        .await
        .expect("starts");
    node.shutdown().await;
    t.shutdown();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The decoder never panics and never claims more bytes than it was given.
    #[test]
    fn frame_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((_, used))) = frame::decode(&bytes, 256) {
            prop_assert!(used <= bytes.len());
        }
    }

    /// Valid frames with arbitrary corruption either decode to the same frame or fail.
    #[test]
    fn corrupted_frames_are_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<usize>(), bit in 0u8..8) {
        let msg = raft_core::Message {
            from: NodeId(1),
            to: NodeId(2),
            term: raft_core::Term(5),
            body: raft_core::MessageBody::InstallSnapshot(raft_core::message::InstallSnapshot {
                meta: Default::default(),
                offset: 0,
                data: bytes::Bytes::from(payload),
                done: true,
            }),
        };
        let mut buf = Vec::new();
        frame::encode(&Frame::Raft(msg.clone()), &mut buf).unwrap();
        let at = flip % buf.len();
        buf[at] ^= 1 << bit;
        // Incomplete (a shortened length) or rejected are fine; a wrong frame is not.
        if let Ok(Some((f, _))) = frame::decode(&buf, 1 << 20) {
            prop_assert_eq!(f, Frame::Raft(msg));
        }
    }
}
