//! Mutual TLS between members: a cluster elects, commits and fails over on TLS links, and
//! every kind of peer that should not be heard is refused while the node keeps serving (no
//! certificate, a certificate from another CA, a certificate for another node id, plain
//! TCP, and a flood of connections that never finish their handshake).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{cmd, tcp_config, Cluster};
use raft_core::{Inbox, NodeId};
use raft_transport::frame::{self, Frame};
use raft_transport::tls::pki::Pki;
use raft_transport::tls::{self, TlsFiles, TlsIdentity};
use raft_transport::{TcpConfig, TcpTransport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cluster's CA with certificates for members 1 to `n` in `dir`.
fn cluster_pki(dir: &Path, n: u64) -> Pki {
    let pki = Pki::generate("test cluster CA").unwrap();
    for id in 1..=n {
        pki.write_member(dir, NodeId(id), &["127.0.0.1".parse().unwrap()])
            .unwrap();
    }
    pki
}

fn member(dir: &Path, id: u64) -> Arc<TlsIdentity> {
    let files = TlsFiles::in_dir(dir, &tls::member_name(NodeId(id)));
    TlsIdentity::load_member(NodeId(id), files).unwrap()
}

/// Node 1 alone on TLS, knowing peer 2, its inbox kept by the test.
async fn tls_listener(
    dir: &Path,
) -> (
    TcpTransport,
    tokio::sync::mpsc::Receiver<raft_core::Message>,
) {
    let cfg = TcpConfig {
        tls: Some(member(dir, 1)),
        ..tcp_config()
    };
    let t = TcpTransport::bind(NodeId(1), "127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    t.set_peer(NodeId(2), "127.0.0.1:9".parse().unwrap());
    let (inbox, rx) = Inbox::channel(16);
    t.serve(inbox);
    (t, rx)
}

/// Sends a peer `Hello` from `from` on `stream` and returns the answer, or why none came.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    from: u64,
) -> Result<Frame, String> {
    let mut buf = Vec::new();
    let hello = Frame::Hello {
        magic: frame::MAGIC,
        version: frame::VERSION,
        cluster_id: tcp_config().cluster_id,
        from: NodeId(from),
        to: NodeId(1),
    };
    frame::encode(&hello, &mut buf).unwrap();
    stream.write_all(&buf).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await {
        Err(_) if reply.is_empty() => return Err("no answer".into()),
        Err(_) => {}
        Ok(Err(e)) if reply.is_empty() => return Err(e.to_string()),
        Ok(_) => {}
    }
    match frame::decode(&reply, 1 << 20) {
        Ok(Some((f, _))) => Ok(f),
        _ if reply.is_empty() => Err("closed without an answer".into()),
        other => Err(format!("undecodable answer {other:?}")),
    }
}

/// Dials `addr` over TLS with `connector`, asking for node 1, and greets as `from`.
async fn tls_greet(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    from: u64,
) -> Result<Frame, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let stream = connector
        .connect(tls::server_name(NodeId(1)), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    greet(stream, from).await
}

fn rejected(t: &TcpTransport) -> u64 {
    t.stats().rejected_connections.load(Ordering::Relaxed)
}

/// A real member still gets in: the node kept serving through the refusal.
async fn still_serves(t: &TcpTransport, dir: &Path) {
    let answer = tls_greet(t.local_addr(), member(dir, 2).connector(), 2).await;
    assert_eq!(
        answer,
        Ok(Frame::Welcome),
        "a genuine member was not welcomed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_elects_commits_and_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 3);
    let mut c = Cluster::tls(3, 7301, dir.path()).await;
    let leader = c.check_one_leader().await;
    c.one(cmd("over tls 1"), 3, true).await;
    c.crash(leader).await;
    c.check_one_leader().await;
    c.one(cmd("over tls 2"), 2, true).await;
    c.start(leader).await;
    c.one(cmd("over tls 3"), 3, true).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_peer_without_certificate() {
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 2);
    let (t, _rx) = tls_listener(dir.path()).await;
    // Trusts the CA, presents nothing.
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let answer = tls_greet(t.local_addr(), Arc::new(anonymous).into(), 2).await;
    assert!(
        !matches!(answer, Ok(Frame::Welcome)),
        "a peer without a certificate was welcomed: {answer:?}"
    );
    still_serves(&t, dir.path()).await;
    assert!(rejected(&t) >= 1);
    t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 2);
    // Node 2's name, signed by a CA the cluster does not trust (which this dialer trusts
    // along with the cluster's, so only the server's check can stop it).
    let other = tempfile::tempdir().unwrap();
    let rogue = Pki::generate("another CA").unwrap();
    let files = rogue.write_member(other.path(), NodeId(2), &[]).unwrap();
    let both = other.path().join("both-cas.pem");
    let cas = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap() + rogue.ca_pem();
    std::fs::write(&both, cas).unwrap();
    let impostor = TlsIdentity::load(TlsFiles { ca: both, ..files }).unwrap();
    let (t, _rx) = tls_listener(dir.path()).await;
    let answer = tls_greet(t.local_addr(), impostor.connector(), 2).await;
    assert!(
        !matches!(answer, Ok(Frame::Welcome)),
        "a certificate from another CA was welcomed: {answer:?}"
    );
    still_serves(&t, dir.path()).await;
    assert!(rejected(&t) >= 1);
    t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_certificate_for_another_node_id() {
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 3);
    let (t, _rx) = tls_listener(dir.path()).await;
    // Node 3's genuine certificate, claiming to be node 2 in the hello.
    let answer = tls_greet(t.local_addr(), member(dir.path(), 3).connector(), 2).await;
    assert!(
        matches!(answer, Ok(Frame::Refused(ref r)) if r.contains("does not name n2")),
        "node 3's certificate spoke as node 2: {answer:?}"
    );
    // The other direction: a dialer meaning to reach node 2 does not accept node 1's
    // certificate at that address.
    let tcp = TcpStream::connect(t.local_addr()).await.unwrap();
    let wrong_server = member(dir.path(), 2)
        .connector()
        .connect(
            ServerName::try_from(tls::member_name(NodeId(2))).unwrap(),
            tcp,
        )
        .await;
    assert!(wrong_server.is_err(), "node 1 passed as node 2");
    // A member's certificate is checked when it is loaded, too.
    let files = TlsFiles::in_dir(dir.path(), &tls::member_name(NodeId(3)));
    let err = TlsIdentity::load_member(NodeId(2), files).unwrap_err();
    assert!(err.to_string().contains("raft-node-2"), "{err}");
    still_serves(&t, dir.path()).await;
    assert!(rejected(&t) >= 1);
    t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plain_tcp() {
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 2);
    let (t, _rx) = tls_listener(dir.path()).await;
    let plain = TcpStream::connect(t.local_addr()).await.unwrap();
    let answer = greet(plain, 2).await;
    assert!(
        !matches!(answer, Ok(Frame::Welcome)),
        "plain TCP was welcomed: {answer:?}"
    );
    still_serves(&t, dir.path()).await;
    assert!(rejected(&t) >= 1);
    t.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_is_bounded_and_members_still_reconnect() {
    use raft_transport::tcp::MAX_PENDING_HANDSHAKES_PER_IP;
    let dir = tempfile::tempdir().unwrap();
    cluster_pki(dir.path(), 3);
    let mut c = Cluster::tls(3, 7302, dir.path()).await;
    let leader = c.check_one_leader().await;
    let addr = c.tcp.as_ref().unwrap().addrs[&leader];
    // Connections that say nothing, from another loopback address than the members', far
    // more than one address may hold.
    let flood = 4 * MAX_PENDING_HANDSHAKES_PER_IP;
    let mut idle = Vec::new();
    for _ in 0..flood {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    // Members still get in: a follower restarts and must reconnect both ways.
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    c.crash(follower).await;
    c.start(follower).await;
    for i in 0..5 {
        c.one(cmd(format!("during the flood {i}")), 3, true).await;
    }
    // Every idle connection is closed: those over the bound at once, the rest when the
    // handshake timeout (2 s) runs out.
    for mut s in idle {
        let mut sink = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection stayed open"
        );
    }
    let t = &c.tcp.as_ref().unwrap().transports[&leader];
    assert!(
        rejected(t) >= flood as u64,
        "{} rejected of {flood}",
        rejected(t)
    );
    // Most were turned away on arrival rather than held (the first ones are held until
    // their timeout; a few more may find a place freed meanwhile).
    let over = t.stats().over_handshake_limit.load(Ordering::Relaxed);
    assert!(
        over >= (flood - 2 * MAX_PENDING_HANDSHAKES_PER_IP) as u64,
        "{over} closed on arrival"
    );
    c.one(cmd("after the flood"), 3, true).await;
    c.shutdown().await;
}

#[test]
fn a_reload_keeps_the_old_certificate_when_the_new_one_names_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = cluster_pki(dir.path(), 2);
    let identity = member(dir.path(), 1);
    identity.reload().expect("the same files load again");
    // Node 2's certificate and key copied over node 1's files.
    let (one, two) = (
        TlsFiles::in_dir(dir.path(), "raft-node-1"),
        TlsFiles::in_dir(dir.path(), "raft-node-2"),
    );
    std::fs::copy(&two.cert, &one.cert).unwrap();
    std::fs::copy(&two.key, &one.key).unwrap();
    let err = identity.reload().unwrap_err();
    assert!(err.to_string().contains("raft-node-1"), "{err}");
    // A fresh certificate for node 1 is taken.
    pki.write_member(dir.path(), NodeId(1), &[]).unwrap();
    identity.reload().expect("a new certificate for node 1");
    // Keys are for their owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&one.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
}
