//! The KV cluster as real processes on 127.0.0.1: driven with a Redis client crate and
//! redis-cli, killed with SIGKILL under load, restarted, and fed hostile bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Commands, RedisResult};

struct Proc {
    id: u64,
    client: SocketAddr,
    raft: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// A cluster of `raft-kv node` processes.
struct ProcCluster {
    _tmp: tempfile::TempDir,
    nodes: Vec<Proc>,
    /// Extra arguments for every `raft-kv node`.
    extra: Vec<String>,
    /// The first `founders` nodes found the cluster; the others join it later.
    founders: usize,
}

/// A port for a node to listen on, chosen below the kernel's ephemeral range (32768 and up
/// on Linux) so that no client connection of a concurrent test can take it between this
/// check and the node binding it; random, so concurrent tests rarely try the same one.
fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free ports (as [`free_port`]), none of which this process
/// hands out again soon.
fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let start = 20_000 + (std::process::id() % 10_000) as u16;
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let port = NEXT.fetch_add(n, Ordering::Relaxed);
        let port = 20_000 + (port - 20_000) % 12_000;
        let free = |q: u16| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok();
        if port <= 32_000 - n && (port..port + n).all(free) {
            return port;
        }
    }
}

impl ProcCluster {
    fn start(n: u64) -> ProcCluster {
        let mut c = ProcCluster::start_stopped(n);
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c
    }

    /// The cluster's layout, with no process started yet.
    fn start_stopped(n: u64) -> ProcCluster {
        let tmp = tempfile::tempdir().unwrap();
        let nodes: Vec<Proc> = (1..=n)
            .map(|id| Proc {
                id,
                client: SocketAddr::from(([127, 0, 0, 1], free_port())),
                raft: SocketAddr::from(([127, 0, 0, 1], free_port())),
                dir: tmp.path().join(format!("node-{id}")),
                child: None,
            })
            .collect();
        ProcCluster {
            _tmp: tmp,
            founders: nodes.len(),
            nodes,
            extra: Vec::new(),
        }
    }

    /// `n` nodes that snapshot every 20 entries (keeping 5 behind), the first `founders`
    /// of them started as the cluster.
    fn compacting(n: u64, founders: usize) -> ProcCluster {
        let mut c = ProcCluster::start_stopped(n);
        c.founders = founders;
        c.extra = ["--snapshot-threshold", "20", "--snapshot-trailing", "5"]
            .map(String::from)
            .to_vec();
        for i in 0..founders {
            c.spawn(i);
        }
        c
    }

    /// Waits for node `i`'s process to fail, and checks that its log says `why`.
    fn assert_refused(&mut self, i: usize, why: &str) {
        let status = self.wait_exit(i, Duration::from_secs(30));
        assert!(!status.success());
        let log = std::fs::read_to_string(self.nodes[i].dir.with_extension("log")).unwrap();
        assert!(log.contains(why), "{log}");
    }

    /// Waits for node `i`'s process to exit on its own.
    fn wait_exit(&mut self, i: usize, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {} did not exit", i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(&mut self, i: usize) {
        let cmd = Command::new(env!("CARGO_BIN_EXE_raft-kv"));
        self.spawn_with(i, cmd);
    }

    /// Starts node `i` with files limited to `kib` KiB (`ulimit -f`, with SIGXFSZ ignored),
    /// so its disk is full from the process's point of view once the log reaches it.
    fn spawn_with_file_limit(&mut self, i: usize, kib: u64) {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_raft-kv"));
        self.spawn_with(i, cmd);
    }

    /// Starts node `i`, not a founder, with `--join`: it waits to be added.
    fn spawn_joining(&mut self, i: usize) {
        self.extra.push("--join".into());
        self.spawn(i);
        self.extra.pop();
    }

    fn spawn_with(&mut self, i: usize, mut cmd: Command) {
        let peers = self.list(|p| p.raft);
        let clients = self.list(|p| p.client);
        let extra = self.extra.clone();
        let p = &mut self.nodes[i];
        let log = std::fs::File::create(p.dir.with_extension("log")).unwrap();
        let child = cmd
            .args(["node", "--id", &p.id.to_string()])
            .arg("--data-dir")
            .arg(&p.dir)
            .args([
                "--raft-addr",
                &p.raft.to_string(),
                "--client-addr",
                &p.client.to_string(),
            ])
            .args(["--peers", &peers, "--peer-clients", &clients])
            .args(["--tick-ms", "20"])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start raft-kv node");
        p.child = Some(child);
    }

    /// `ID=ADDR,...` of the founding members.
    fn list(&self, f: impl Fn(&Proc) -> SocketAddr) -> String {
        self.nodes[..self.founders]
            .iter()
            .map(|p| format!("{}={}", p.id, f(p)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's state and the end of its log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.nodes {
            let text = std::fs::read_to_string(p.dir.with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- node {} (client {}, raft {}, running: {}):\n",
                p.id,
                p.client,
                p.raft,
                p.child.is_some()
            ));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn sigkill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    fn conn(&self, i: usize) -> redis::Connection {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("redis://{}/", self.nodes[i].client);
            if let Ok(c) = redis::Client::open(url).and_then(|c| c.get_connection()) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never accepted connections",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn info(&self, i: usize) -> Option<std::collections::BTreeMap<String, String>> {
        let mut c = redis::Client::open(format!("redis://{}/", self.nodes[i].client))
            .ok()?
            .get_connection()
            .ok()?;
        let text: String = redis::cmd("INFO").query(&mut c).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    /// Index of the node that reports itself leader, waiting for an election.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_some()
                    && self.info(i).and_then(|f| f.get("role").cloned()).as_deref()
                        == Some("leader")
                {
                    return i;
                }
            }
            if Instant::now() >= deadline {
                panic!("no leader elected\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.sigkill(i);
        }
    }
}

/// Retries a command across nodes while the cluster elects a leader.
fn retry<T>(c: &ProcCluster, mut f: impl FnMut(&mut redis::Connection) -> RedisResult<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        for i in 0..c.nodes.len() {
            if c.nodes[i].child.is_none() {
                continue;
            }
            let Ok(mut conn) = redis::Client::open(format!("redis://{}/", c.nodes[i].client))
                .and_then(|x| x.get_connection())
            else {
                continue;
            };
            match f(&mut conn) {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("command kept failing: {last}");
}

#[test]
fn redis_commands_work_on_leader_and_followers() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let mut l = c.conn(leader);
    let mut f = c.conn(follower);
    let pong: String = redis::cmd("PING").query(&mut f).unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut f).unwrap();
    assert_eq!(echo, "hi");
    // --- writes through a follower are forwarded to the leader
    let _: () = f.set("a", "1").unwrap();
    let _: () = redis::cmd("MSET")
        .arg("b")
        .arg("2")
        .arg("c")
        .arg("3")
        .query(&mut f)
        .unwrap();
    assert_eq!(f.append::<_, _, i64>("a", "0").unwrap(), 2);
    assert_eq!(l.incr::<_, _, i64>("n", 1).unwrap(), 1);
    assert_eq!(
        redis::cmd("INCRBY")
            .arg("n")
            .arg(41)
            .query::<i64>(&mut f)
            .unwrap(),
        42
    );
    // --- reads are linearizable from any node
    assert_eq!(l.get::<_, String>("a").unwrap(), "10");
    assert_eq!(f.get::<_, Option<String>>("missing").unwrap(), None);
    let vals: Vec<Option<String>> = redis::cmd("MGET")
        .arg("a")
        .arg("b")
        .arg("zz")
        .query(&mut f)
        .unwrap();
    assert_eq!(vals, vec![Some("10".into()), Some("2".into()), None]);
    assert_eq!(
        redis::cmd("EXISTS")
            .arg("a")
            .arg("zz")
            .arg("c")
            .query::<i64>(&mut f)
            .unwrap(),
        2
    );
    assert_eq!(f.del::<_, i64>(&["c", "zz"]).unwrap(), 1);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut f).unwrap(), 3);
    // --- errors keep the connection usable
    let err = redis::cmd("INCR").arg("a_string").query::<i64>(&mut f);
    assert!(err.is_ok(), "INCR of a missing key starts at 0");
    let _: () = f.set("s", "abc").unwrap();
    let err = redis::cmd("INCR")
        .arg("s")
        .query::<i64>(&mut f)
        .unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
    let err = redis::cmd("GET").query::<String>(&mut f).unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    let err = redis::cmd("LPUSH")
        .arg("l")
        .arg("x")
        .query::<String>(&mut f)
        .unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    assert_eq!(redis::cmd("PING").query::<String>(&mut f).unwrap(), "PONG");
    // --- INFO has a Raft section
    let info = c.info(follower).unwrap();
    for key in [
        "node_id",
        "role",
        "term",
        "leader_id",
        "commit_index",
        "applied_index",
        "first_log_index",
        "last_log_index",
        "snapshot_index",
    ] {
        assert!(info.contains_key(key), "INFO lacks {key}: {info:?}");
    }
    assert_eq!(info["role"], "follower");
    assert_eq!(info["leader_id"], c.nodes[leader].id.to_string());
    assert_eq!(info["voters"], "1,2,3");
    assert_eq!(
        (info["learners"].as_str(), info["joint"].as_str()),
        ("", "0")
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_and_see_their_own_writes() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    for target in [leader, (leader + 1) % 3] {
        let mut conn = c.conn(target);
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("SET")
                .arg(format!("p{target}:{i}"))
                .arg(i)
                .ignore();
            pipe.cmd("INCR").arg(format!("ctr{target}"));
        }
        pipe.cmd("GET").arg(format!("p{target}:199"));
        let out: Vec<redis::Value> = pipe.query(&mut conn).unwrap();
        assert_eq!(out.len(), 201);
        assert_eq!(out[199], redis::Value::Int(200), "INCRs ran in order");
        assert_eq!(
            out[200],
            redis::Value::BulkString(b"199".to_vec()),
            "a read sees the pipeline's writes"
        );
    }
}

#[test]
fn an_oversized_set_is_refused_without_disturbing_the_cluster() {
    // A 20 MiB value exceeds max_entry_bytes (4 MiB): refused before it enters the log, so
    // no AppendEntries ever exceeds the transport's frame limit and nobody calls an election.
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let term = c.info(leader).unwrap()["term"].clone();
    let big = vec![b'x'; 20 << 20];
    for target in [leader, (leader + 1) % 3] {
        let mut conn = c.conn(target);
        let err = conn
            .set::<_, _, ()>("big", big.as_slice())
            .expect_err("refused");
        assert!(
            err.to_string().contains("request too large"),
            "node {}: {err}",
            target + 1
        );
    }
    // --- writes go on, in the same term, on every node
    let mut conn = c.conn(leader);
    for i in 0..100 {
        let _: () = conn.set(format!("after{i}"), i).unwrap();
    }
    for i in 0..3 {
        let info = c.info(i).unwrap();
        assert_eq!(info["term"], term, "node {} changed term", i + 1);
    }
    let mut follower = c.conn((leader + 1) % 3);
    let v: Option<i64> = follower.get("after99").unwrap();
    assert_eq!(v, Some(99));
}

#[test]
fn a_full_disk_stops_the_node_with_the_cause_and_a_nonzero_exit() {
    // Fail-stop on a failed write: clients get the cause, the process exits non-zero (so a
    // supervisor restarts it), and every acknowledged write is there after the restart.
    let mut c = ProcCluster::start_stopped(1);
    c.spawn_with_file_limit(0, 1500);
    c.leader();
    let mut conn = c.conn(0);
    let value = vec![b'v'; 100_000];
    let mut acked = Vec::new();
    let mut cause = None;
    for i in 0..1000 {
        match conn.set::<_, _, ()>(format!("k{i}"), value.as_slice()) {
            Ok(()) => acked.push(i),
            Err(e) => {
                cause = Some(e.to_string());
                break;
            }
        }
    }
    let cause = cause.expect("the disk filled up");
    assert!(
        cause.contains("could not be made durable"),
        "the client sees the cause: {cause}"
    );
    let status = c.wait_exit(0, Duration::from_secs(20));
    assert!(!status.success(), "exit status {status:?}");
    assert!(!acked.is_empty());
    // --- restarted with room: nothing acknowledged was lost
    c.spawn(0);
    c.leader();
    let mut conn = c.conn(0);
    for i in acked {
        let v: Option<Vec<u8>> = retry(&c, |conn| conn.get(format!("k{i}")));
        assert_eq!(v.as_deref(), Some(value.as_slice()), "k{i} lost");
    }
    let _: () = conn.set("after", 1).unwrap();
}

#[test]
fn a_node_down_while_the_others_compact_catches_up_through_a_snapshot() {
    let mut c = ProcCluster::compacting(3, 3);
    let leader = c.leader();
    let down = (leader + 1) % 3;
    let mut conn = c.conn(leader);
    let _: () = conn.set("early", "1").unwrap();
    c.sigkill(down);
    // --- the others move on and compact their logs past everything the node holds
    for i in 0..200 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }
    let info = c.info(leader).unwrap();
    let first: u64 = info["first_log_index"].parse().unwrap();
    let snapshot: u64 = info["snapshot_index"].parse().unwrap();
    assert!(snapshot >= 180 && first > 100, "{info:?}");
    assert!(info["snapshot_bytes"].parse::<u64>().unwrap() > 0);
    // --- restarted, it can only catch up from the leader's snapshot
    c.spawn(down);
    let commit: u64 = info["commit_index"].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = c.info(down).is_some_and(|f| {
            f["applied_index"].parse::<u64>().unwrap() >= commit
                && f["snapshot_index"].parse::<u64>().unwrap() >= snapshot
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not catch up",
            down + 1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut via_down = c.conn(down);
    let v: Option<i64> = via_down.get("k199").unwrap();
    assert_eq!(v, Some(199));
    let early: Option<String> = via_down.get("early").unwrap();
    assert_eq!(early.as_deref(), Some("1"));
}

#[test]
fn sigkill_of_the_leader_under_load_loses_no_acknowledged_write() {
    let mut c = ProcCluster::start(3);
    let leader = c.leader();
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|p| p.client).collect();
    // --- a writer thread records every acknowledged SET
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut k = 0u64;
            let mut target = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let key = format!("load:{k}");
                loop {
                    let res = redis::Client::open(format!("redis://{}/", addrs[target]))
                        .and_then(|cl| cl.get_connection_with_timeout(Duration::from_millis(500)))
                        .and_then(|mut conn| {
                            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                            conn.set::<_, _, ()>(&key, k)
                        });
                    match res {
                        Ok(()) => {
                            acked.push(k);
                            break;
                        }
                        Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                        Err(_) => {
                            target = (target + 1) % addrs.len();
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // --- SIGKILL the leader mid-load
    c.sigkill(leader);
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    assert!(
        acked.len() > 20,
        "only {} writes were acknowledged",
        acked.len()
    );
    // --- every acknowledged write is readable after the failover
    for &k in &acked {
        let v: Option<u64> = retry(&c, |conn| conn.get(format!("load:{k}")));
        assert_eq!(v, Some(k), "acknowledged write load:{k} was lost");
    }
    // --- the killed node restarts and converges
    c.spawn(leader);
    let size: i64 = retry(&c, |conn| redis::cmd("DBSIZE").query(conn));
    let target: u64 = c.info(new_leader).unwrap()["commit_index"].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(f) = c.info(leader) {
            if f["applied_index"].parse::<u64>().unwrap() >= target {
                assert_eq!(f["role"], "follower");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = c.conn(leader);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut conn).unwrap(), size);
    let last = acked[acked.len() - 1];
    assert_eq!(
        conn.get::<_, Option<u64>>(format!("load:{last}")).unwrap(),
        Some(last)
    );
    println!(
        "failover test: {} acknowledged writes, all present after SIGKILL of the leader",
        acked.len()
    );
}

#[test]
fn exactly_once_increments_across_a_leader_kill() {
    let mut c = ProcCluster::start(3);
    let leader = c.leader();
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|p| p.client).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.spawn(async move {
        let mut client = raft_kv_example::KvClient::new(addrs);
        let mut seen = Vec::new();
        for _ in 0..150 {
            seen.push(
                client
                    .incr("exactly-once")
                    .await
                    .expect("incr eventually succeeds"),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    c.sigkill(leader);
    let seen = rt.block_on(handle).unwrap();
    // Each increment applied exactly once: the answers are 1..=150 in order, and so is the
    // final value, although retries crossed a leader change.
    assert_eq!(seen, (1..=150).collect::<Vec<i64>>());
    let v: i64 = retry(&c, |conn| conn.get("exactly-once"));
    assert_eq!(v, 150);
}

fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") && out.len() > 3 {
            break;
        }
    }
    out
}

#[test]
fn bad_input_never_takes_a_node_down() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let addr = c.nodes[leader].client;
    let attacks: Vec<&[u8]> = vec![
        b"\x00\x01\x02\xff\xfe garbage\r\n",
        b"*1\r\n$999999999999\r\n",
        b"*99999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nkk\r\n",
        b"*-7\r\n",
        b"$5\r\nhello\r\n",
        // The forwarding mark alone: nothing left to run.
        b"*1\r\n$3\r\nFWD\r\n",
    ];
    for a in attacks {
        let reply = raw_exchange(addr, a);
        assert!(
            reply.is_empty()
                || reply.starts_with(b"-")
                || reply.starts_with(b"$")
                || reply.starts_with(b"*"),
            "{a:?} -> {reply:?}"
        );
    }
    // Half frames: the server waits, the client goes away, nothing breaks.
    for cut in [1usize, 5, 9, 14] {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&full[..cut]).unwrap();
        drop(s);
    }
    let unknown = raw_exchange(addr, b"*1\r\n$7\r\nFOOBARX\r\n");
    assert!(
        unknown.starts_with(b"-ERR unknown command"),
        "{}",
        String::from_utf8_lossy(&unknown)
    );
    let arity = raw_exchange(addr, b"*1\r\n$3\r\nSET\r\n");
    assert!(
        arity.starts_with(b"-ERR wrong number of arguments"),
        "{}",
        String::from_utf8_lossy(&arity)
    );
    // Still alive, still the same cluster.
    let mut conn = c.conn(leader);
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut conn).unwrap(),
        "PONG"
    );
    let _: () = conn.set("after-attacks", "ok").unwrap();
    assert_eq!(conn.get::<_, String>("after-attacks").unwrap(), "ok");
}

#[test]
fn redis_cli_works_unchanged() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        println!("redis-cli is not installed (apt-get install redis-tools); skipping the redis-cli check");
        return;
    }
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let port = c.nodes[(leader + 1) % 3].client.port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "cli-key", "cli-value"]), "OK");
    assert_eq!(cli(&["GET", "cli-key"]), "cli-value");
    assert_eq!(cli(&["INCR", "cli-n"]), "1");
    assert!(cli(&["INFO", "raft"]).contains("role:follower"));
}

/// Runs `raft-kv admin --endpoint ADDR ARGS...` as a process: its exit status and output.
fn admin(endpoint: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["admin", "--endpoint", &endpoint.to_string()])
        .args(args)
        .output()
        .expect("run raft-kv admin");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Waits until node `i`'s INFO satisfies `ok`.
fn wait_info(
    c: &ProcCluster,
    i: usize,
    what: &str,
    ok: impl Fn(&BTreeMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.info(i).is_some_and(|f| ok(&f)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: {what}; INFO {:?}",
            i + 1,
            c.info(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_joins_becomes_a_voter_leads_and_once_removed_stops_for_good() {
    // --- phase: three founders compact their logs; node 4 is started with --join.
    let mut c = ProcCluster::compacting(4, 3);
    let leader = c.leader();
    let mut conn = c.conn(leader);
    for i in 0..100 {
        let _: () = conn.set(format!("k{i}"), i).unwrap();
    }
    c.spawn_joining(3);
    let follower = (leader + 1) % 3;
    let (raft4, client4) = (c.nodes[3].raft.to_string(), c.nodes[3].client.to_string());
    // --- phase: added through a follower (forwarded to the leader), it catches up through
    // a snapshot, then gets a vote.
    let (ok, out) = admin(
        c.nodes[follower].client,
        &["add-learner", "4", &raft4, &client4],
    );
    assert!(ok && out.contains("OK"), "add-learner: {out}");
    wait_info(&c, 3, "a caught-up learner", |f| {
        f["role"] == "learner" && f["applied_index"].parse::<u64>().unwrap() >= 100
    });
    let (ok, out) = admin(c.nodes[leader].client, &["promote", "4"]);
    assert!(ok, "promote: {out}");
    wait_info(&c, 3, "a voter", |f| {
        f["voters"] == "1,2,3,4" && f["joint"] == "0"
    });
    let mut via_4 = c.conn(3);
    let v: Option<i64> = via_4.get("k99").unwrap();
    assert_eq!(v, Some(99));
    // --- phase: leadership handed to node 4; a founder forwards to it at the client
    // address the configuration carries (it was never given on a command line).
    let (ok, out) = admin(c.nodes[leader].client, &["transfer", "4"]);
    assert!(ok, "transfer: {out}");
    wait_info(&c, 3, "the leader", |f| f["role"] == "leader");
    let mut via_founder = c.conn(follower);
    let _: () = via_founder.set("written", "through 4").unwrap();
    // --- phase: removed (the leader removes itself), node 4 stops on its own and its data
    // can never be started again; the others carry on.
    let (ok, out) = admin(c.nodes[3].client, &["remove", "4"]);
    assert!(ok, "remove: {out}");
    let status = c.wait_exit(3, Duration::from_secs(30));
    assert!(status.success(), "a removed node exits cleanly: {status}");
    let written: Option<String> = retry(&c, |conn| conn.get("written"));
    assert_eq!(written.as_deref(), Some("through 4"));
    c.spawn_joining(3);
    c.assert_refused(3, "was removed from the cluster");
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let mut c = ProcCluster::start(1);
    c.leader();
    c.sigkill(0);
    c.extra = ["--cluster-id", "9"].map(String::from).to_vec();
    c.spawn(0);
    c.assert_refused(0, "another cluster or node");
}

#[test]
fn a_local_cluster_grows_by_one_node_on_a_typed_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, rx, base) = local_cluster(1, &[], tmp.path());
    let wait_for = |what: &str| wait_for_line(&rx, what);
    wait_for("Type 'add'");
    writeln!(cluster.stdin.as_mut().unwrap(), "add").unwrap();
    let joined = wait_for("joined as a voter");
    assert!(joined.contains("node 2"), "{joined}");
    let node1 = SocketAddr::from(([127, 0, 0, 1], base));
    let mut c = redis::Client::open(format!("redis://{node1}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("voters:1,2\r\n"), "{info}");
    let _: () = c.set("grown", "yes").unwrap();
    let node2 = SocketAddr::from(([127, 0, 0, 1], base + 1));
    let mut c2 = redis::Client::open(format!("redis://{node2}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let v: Option<String> = c2.get("grown").unwrap();
    assert_eq!(v.as_deref(), Some("yes"));
    stop_local_cluster(&mut cluster);
}

/// A connection to node `i` speaking RESP3 (`HELLO 3`), as redis-py 8 does by default.
fn resp3_conn(c: &ProcCluster, i: usize) -> redis::Connection {
    let url = format!("redis://{}/?protocol=resp3", c.nodes[i].client);
    redis::Client::open(url)
        .and_then(|x| x.get_connection())
        .expect("a RESP3 connection")
}

#[test]
fn everyday_commands_work_from_the_redis_crate_in_resp2_and_resp3() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let mut l = c.conn(leader);
    // Through a follower in RESP3: the forwarded replies keep their RESP3 types.
    let mut f3 = resp3_conn(&c, follower);
    let _: () = retry(&c, |x| x.set("warm", 1));
    // --- SET options
    let opts = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::NX)
        .with_expiration(redis::SetExpiry::EX(100));
    let set: Option<String> = f3.set_options("k", "v1", opts).unwrap();
    assert_eq!(set.as_deref(), Some("OK"));
    let again: Option<String> = f3.set_options("k", "v2", opts).unwrap();
    assert_eq!(again, None, "NX on an existing key sets nothing");
    let ttl: i64 = f3.ttl("k").unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    let old: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v3")
        .arg("GET")
        .arg("KEEPTTL")
        .query(&mut f3)
        .unwrap();
    assert_eq!(old.as_deref(), Some("v1"));
    assert!(f3.ttl::<_, i64>("k").unwrap() > 0, "KEEPTTL kept it");
    assert!(f3.persist::<_, bool>("k").unwrap());
    assert_eq!(f3.ttl::<_, i64>("k").unwrap(), -1);
    assert_eq!(f3.pttl::<_, i64>("nope").unwrap(), -2);
    // --- everyday string and key commands
    assert_eq!(f3.decr::<_, _, i64>("n", 3).unwrap(), -3);
    assert_eq!(f3.strlen::<_, i64>("n").unwrap(), 2);
    assert!(f3.set_nx::<_, _, bool>("sn", "x").unwrap());
    assert!(!f3.set_nx::<_, _, bool>("sn", "y").unwrap());
    assert_eq!(f3.getset::<_, _, String>("sn", "z").unwrap(), "x");
    assert_eq!(f3.get_del::<_, String>("sn").unwrap(), "z");
    let t: String = redis::cmd("TYPE").arg("n").query(&mut f3).unwrap();
    assert_eq!(t, "string");
    // --- hashes; HGETALL is a RESP3 map here and a flat array in RESP2
    let added: i64 = redis::cmd("HSET")
        .arg("h")
        .arg(&[("a", "1"), ("b", "2")])
        .query(&mut f3)
        .unwrap();
    assert_eq!(added, 2);
    let _: () = f3.hset_multiple("h2", &[("x", "1")]).unwrap(); // HMSET
    assert_eq!(f3.hincr::<_, _, _, i64>("h", "a", 5).unwrap(), 6);
    let all3: BTreeMap<String, String> = f3.hgetall("h").unwrap();
    let all2: BTreeMap<String, String> = l.hgetall("h").unwrap();
    assert_eq!(all3, all2);
    assert_eq!(all3.get("a").map(String::as_str), Some("6"));
    assert_eq!(f3.hlen::<_, i64>("h").unwrap(), 2);
    assert!(f3.hexists::<_, _, bool>("h", "b").unwrap());
    assert_eq!(f3.hdel::<_, _, i64>("h", "b").unwrap(), 1);
    let wrong: RedisResult<String> = f3.get("h");
    assert!(wrong.unwrap_err().to_string().contains("WRONGTYPE"));
    // --- MULTI/EXEC as one entry, WATCH aborting on a change by another client
    let (n, v): (i64, String) = redis::pipe()
        .atomic()
        .incr("tx", 1)
        .get("tx")
        .query(&mut f3)
        .unwrap();
    assert_eq!((n, v.as_str()), (1, "1"));
    let _: () = redis::cmd("WATCH").arg("tx").query(&mut f3).unwrap();
    let _: () = l.set("tx", 100).unwrap(); // another client changes the watched key
    let aborted: Option<(i64,)> = redis::pipe().atomic().incr("tx", 1).query(&mut f3).unwrap();
    assert_eq!(aborted, None, "EXEC aborts after a watched key changed");
    assert_eq!(l.get::<_, i64>("tx").unwrap(), 100);
    let _: () = redis::cmd("WATCH").arg("tx").query(&mut f3).unwrap();
    let done: Option<(i64,)> = redis::pipe().atomic().incr("tx", 1).query(&mut f3).unwrap();
    assert_eq!(done, Some((101,)));
    // --- FLUSHDB, DBSIZE
    let _: () = redis::cmd("FLUSHDB").query(&mut f3).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut l).unwrap(), 0);
}

#[test]
fn scan_walks_ten_thousand_keys_once_each_while_others_write() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let mut l = c.conn(leader);
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.set(format!("key:{i}"), i).ignore();
    }
    let _: () = pipe.query(&mut l).unwrap();
    let mut f = c.conn((leader + 1) % 3);
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = 0u64;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("key:*")
            .arg("COUNT")
            .arg(500)
            .query(&mut f)
            .unwrap();
        for k in keys {
            assert!(seen.insert(k), "SCAN returned a key twice");
        }
        // Keys come and go between calls; the cursor stays valid.
        let _: () = l.set(format!("other:{calls}"), 1).unwrap();
        let _: () = l.del(format!("other:{}", calls / 2)).unwrap();
        calls += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 10_000, "every key once");
    assert!(
        calls > 10,
        "the walk took {calls} calls, so cursors were used"
    );
    let keys: Vec<String> = l.keys("key:99*").unwrap();
    assert_eq!(keys.len(), 111, "key:99, key:990..999 and key:9900..9999");
}

#[test]
fn a_lock_with_nx_px_is_exclusive_and_expires() {
    let c = ProcCluster::start(3);
    let leader = c.leader();
    let mut a = c.conn(leader);
    let mut b = c.conn((leader + 1) % 3);
    let lock = |conn: &mut redis::Connection, who: &str| -> bool {
        redis::cmd("SET")
            .arg("lock")
            .arg(who)
            .arg("NX")
            .arg("PX")
            .arg(300)
            .query::<Option<String>>(conn)
            .unwrap()
            .is_some()
    };
    let taken = Instant::now();
    assert!(lock(&mut a, "a"));
    assert!(!lock(&mut b, "b"), "held by a");
    // b polls until the lock expires by the leader's clock: never before 300 ms.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock(&mut b, "b") {
        assert!(Instant::now() < deadline, "the lock never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        taken.elapsed() >= Duration::from_millis(300),
        "expired early"
    );
    assert_eq!(a.get::<_, String>("lock").unwrap(), "b");
}

/// The Python with redis-py that `.ci/run` prepares (`target/pyvenv`), or `RAFT_KV_PYTHON`.
fn python_with_redis_py() -> Result<PathBuf, String> {
    python_with("redis")
}

/// The project's Python (`target/pyvenv`, or `RAFT_KV_PYTHON`), if it can import `module`.
fn python_with(module: &str) -> Result<PathBuf, String> {
    let python = std::env::var_os("RAFT_KV_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python"),
        PathBuf::from,
    );
    let probe = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "{} cannot import {module}: {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(python)
}

#[test]
fn redis_py_works_with_its_defaults() {
    let python = match python_with_redis_py() {
        Ok(p) => p,
        Err(why) => {
            println!(
                "redis-py is not available ({why}); skipping the redis-py check \
                 (python3 -m venv target/pyvenv && target/pyvenv/bin/pip install redis)"
            );
            return;
        }
    };
    let c = ProcCluster::start(3);
    let leader = c.leader();
    // Writes start at a follower, so forwarding is part of what redis-py sees.
    let order = [(leader + 1) % 3, leader, (leader + 2) % 3];
    let ports: Vec<String> = order
        .iter()
        .map(|&i| c.nodes[i].client.port().to_string())
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/redis_py_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(&ports)
        .output()
        .expect("run the redis-py check");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("redis-py: {line}");
    }
    assert!(
        out.status.success(),
        "the redis-py check failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a `raft-kv cluster` with `args` on free ports; its output lines arrive on the
/// receiver. Returns the process, the lines and the base (first client) port.
fn local_cluster(
    nodes: u64,
    args: &[&str],
    dir: &std::path::Path,
) -> (Child, std::sync::mpsc::Receiver<String>, u16) {
    use std::io::BufRead;
    // Client ports base.., raft ports base+1000..: pick a base whose ports are all free.
    // Client ports from a block of their own; raft ports 1,000 above it, HTTP 2,000 and the
    // view 3,000 (the shared counter reaches those only after a thousand more ports, more
    // than a run takes).
    let n = nodes as u16 + 1; // room for one added node
    let base = loop {
        let p = free_ports(n);
        let free = |q: u16| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok();
        if (0..n).all(|i| free(p + 1000 + i) && free(p + 2000 + i) && free(p + 3000)) {
            break p;
        }
    };
    let mut cluster = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args([
            "cluster",
            "--nodes",
            &nodes.to_string(),
            "--base-port",
            &base.to_string(),
        ])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start raft-kv cluster");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = cluster.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (cluster, rx, base)
}

/// Stops a `raft-kv cluster` as Ctrl-C would (SIGTERM), so it stops its nodes too; kills
/// it if it has not exited within 20 s.
fn stop_local_cluster(cluster: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &cluster.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = cluster.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = cluster.kill();
    let _ = cluster.wait();
}

/// The next line from a local cluster's output that contains `what` (60 s at most).
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with '{what}': {e}"),
        }
    }
}

/// Sends `bytes` over TLS with `connector` and reads until the server closes the connection
/// (or 5 s pass): what it answered, and whether it closed (what went wrong, and false, if
/// it could not connect).
fn tls_exchange_with(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    bytes: &[u8],
) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let auth = raft_kv_example::security::ClientAuth {
            tls: Some(connector),
            password: None,
        };
        let mut link = match auth.connect(addr).await {
            Ok(link) => link,
            // Not listening yet, say: the caller sees no answer.
            Err(e) => return (format!("(no connection: {e})").into_bytes(), false),
        };
        link.write_all(bytes).await.unwrap();
        link.flush().await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), link.read_to_end(&mut out)).await;
        (out, read.is_ok())
    })
}

/// A RESP request, encoded.
fn request(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out += &format!("${}\r\n{a}\r\n", a.len());
    }
    out.into_bytes()
}

#[test]
fn a_tls_cluster_with_a_password_serves_redis_cli_and_refuses_the_rest() {
    use raft_transport::tls::{anonymous_connector, pki::Pki, TlsIdentity};
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, rx, base) = local_cluster(3, &["--tls", "--requirepass", "pw-1"], tmp.path());
    let how = wait_for_line(&rx, "connect with:");
    wait_for_line(&rx, "Type 'add'");
    let tls_dir = tmp.path().join("tls");
    let anonymous = anonymous_connector(&tls_dir.join("ca.pem")).unwrap();
    let node = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let talk = |i: u16, bytes: &[u8]| {
        let (reply, closed) = tls_exchange_with(node(i), anonymous.clone(), bytes);
        (String::from_utf8_lossy(&reply).into_owned(), closed)
    };
    let quit = request(&["QUIT"]);
    let authed = |i: u16, cmd: &[&str]| {
        let bytes = [request(&["AUTH", "pw-1"]), request(cmd), quit.clone()].concat();
        talk(i, &bytes).0
    };
    // Writes through every node (followers forward over their own member links), once a
    // leader is elected.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !authed(0, &["SET", "tls-key", "v1"]).starts_with("+OK\r\n+OK") {
        assert!(
            Instant::now() < deadline,
            "the TLS cluster never accepted a write"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        let key = format!("k{i}");
        assert_eq!(
            authed(i, &["SET", &key, "x"]),
            "+OK\r\n+OK\r\n+OK\r\n",
            "node {}",
            i + 1
        );
        assert_eq!(
            authed(i, &["GET", "tls-key"]),
            "+OK\r\n$2\r\nv1\r\n+OK\r\n",
            "node {}",
            i + 1
        );
    }
    // Before AUTH: refused, pipelines included; a wrong password; AUTH mid-pipeline counts
    // from there on.
    let (r, _) = talk(
        1,
        &[
            request(&["GET", "tls-key"]),
            request(&["MULTI"]),
            request(&["AUTH", "nope"]),
            request(&["AUTH", "someone", "pw-1"]),
            request(&["AUTH", "pw-1"]),
            request(&["GET", "tls-key"]),
            quit.clone(),
        ]
        .concat(),
    );
    assert_eq!(
        r,
        "-NOAUTH Authentication required.\r\n-NOAUTH Authentication required.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n$2\r\nv1\r\n+OK\r\n"
    );
    let (r, _) = talk(0, &[request(&["HELLO", "3"]), quit.clone()].concat());
    assert!(r.starts_with("-NOAUTH HELLO"), "{r}");
    let (r, _) = talk(
        0,
        &[
            request(&["HELLO", "3", "AUTH", "default", "pw-1", "BOGUS"]),
            request(&["GET", "tls-key"]),
            quit.clone(),
        ]
        .concat(),
    );
    assert!(
        r.starts_with("-ERR Syntax error") && r.contains("-NOAUTH"),
        "a refused HELLO authenticated: {r}"
    );
    // Before AUTH, a large request is refused outright (a small limit, as in Redis).
    let big = "x".repeat(20_000);
    let (r, closed) = talk(0, &request(&["AUTH", &big]));
    assert!(closed && r.starts_with("-ERR Protocol error"), "{r}");
    // A client may not pass its commands off as a member's forwarded ones: not with the
    // password, and not with a certificate from the cluster's CA that names no member.
    assert!(authed(2, &["FWD", "SET", "tls-key", "forged"]).contains("-NOPERM"));
    assert!(authed(2, &["FWD", "RAFTKV.EXEC", "x"]).contains("-NOPERM"));
    let pki = Pki::load(&tls_dir, raft_kv_example::runner::LOCAL_CA).unwrap();
    let files = pki
        .write_client(&tmp.path().join("client"), "stranger")
        .unwrap();
    let files = raft_transport::tls::TlsFiles {
        ca: tls_dir.join("ca.pem"),
        ..files
    };
    let stranger = TlsIdentity::load(files).unwrap().connector();
    let forged = [
        request(&["AUTH", "pw-1"]),
        request(&["FWD", "SET", "tls-key", "forged"]),
        quit.clone(),
    ]
    .concat();
    let (r, _) = tls_exchange_with(node(2), stranger, &forged);
    assert!(String::from_utf8_lossy(&r).contains("-NOPERM"), "{r:?}");
    assert_eq!(authed(1, &["GET", "tls-key"]), "+OK\r\n$2\r\nv1\r\n+OK\r\n");
    // Plain TCP to the TLS port gets no answer, only a closed connection.
    let plain = raw_exchange(node(0), b"*1\r\n$4\r\nPING\r\n");
    assert!(
        !String::from_utf8_lossy(&plain).contains("PONG"),
        "{plain:?}"
    );
    // Garbage before AUTH, and after it: an error, the connection closed, nothing else.
    let (before, closed) = talk(1, b"*1\r\n$999999999999\r\n");
    assert!(closed && before.starts_with('-'), "{before:?}");
    let (after, closed) = talk(
        1,
        b"*2\r\n$4\r\nAUTH\r\n$4\r\npw-1\r\n\x00\x01\xff garbage\r\n*-7\r\n",
    );
    assert!(closed && after.starts_with("+OK\r\n-"), "{after}");
    // redis-cli as the cluster says to use it (the password given on the command line
    // instead of typed at --askpass's prompt).
    if Command::new("redis-cli").arg("--version").output().is_ok() {
        let printed: Vec<&str> = how
            .split("connect with:")
            .nth(1)
            .unwrap()
            .split("   (")
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(printed[0], "redis-cli", "{how}");
        let mut options: Vec<&str> = Vec::new();
        let mut rest = printed[1..].iter();
        while let Some(&a) = rest.next() {
            match a {
                "-p" => {
                    rest.next();
                }
                "--askpass" => {}
                _ => options.push(a),
            }
        }
        assert!(options.contains(&"--tls"), "{how}");
        let cli = |port: u16, args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(&options)
                .args(["-p", &port.to_string(), "--no-auth-warning", "-a", "pw-1"])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        for i in 0..3 {
            assert_eq!(cli(base + i, &["SET", "cli-key", "c"]), "OK");
            assert_eq!(cli(base + i, &["GET", "tls-key"]), "v1");
        }
    } else {
        println!("redis-cli is not installed (apt-get install redis-tools); skipping its part of the TLS check");
    }
    // The cluster grows over TLS: the new node gets its certificate and joins.
    writeln!(cluster.stdin.as_mut().unwrap(), "add").unwrap();
    let joined = wait_for_line(&rx, "joined as a voter");
    assert!(joined.contains("node 4"), "{joined}");
    // The new node may still be learning who leads: asked again until it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = authed(3, &["GET", "tls-key"]);
        if got == "+OK\r\n$2\r\nv1\r\n+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 answered {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(authed(3, &["SET", "after", "all"]), "+OK\r\n+OK\r\n+OK\r\n");
    stop_local_cluster(&mut cluster);
}

#[test]
fn a_password_cluster_refuses_strangers_and_forwards_with_its_own_credentials() {
    let mut c = ProcCluster::start_stopped(3);
    c.extra = ["--requirepass", "pw-2"].map(String::from).to_vec();
    for i in 0..3 {
        c.spawn(i);
    }
    let open = |i: usize, url: String| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match redis::Client::open(url.clone()).and_then(|c| c.get_connection()) {
                Ok(conn) => return conn,
                Err(e) => assert!(Instant::now() < deadline, "node {}: {e}", i + 1),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for i in 0..3 {
        let mut conn = open(i, format!("redis://:pw-2@{}/", c.nodes[i].client));
        // Through every node, leader or follower (which forwards with the cluster's own
        // password, not this client's connection).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match conn.set::<_, _, ()>(format!("pw-key-{i}"), i) {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "node {}: {e}", i + 1),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(conn.get::<_, u64>(format!("pw-key-{i}")).unwrap(), i as u64);
    }
    let wrong = redis::Client::open(format!("redis://:nope@{}/", c.nodes[1].client))
        .unwrap()
        .get_connection();
    assert!(wrong.is_err(), "a wrong password was accepted");
    let wrong = raw_exchange(c.nodes[1].client, b"*2\r\n$4\r\nAUTH\r\n$4\r\nnope\r\n");
    assert!(
        wrong.starts_with(b"-WRONGPASS"),
        "{}",
        String::from_utf8_lossy(&wrong)
    );
    let stranger = raw_exchange(c.nodes[1].client, b"*2\r\n$3\r\nGET\r\n$8\r\npw-key-1\r\n");
    assert!(
        stranger.starts_with(b"-NOAUTH"),
        "{}",
        String::from_utf8_lossy(&stranger)
    );
}

/// `GET path` on `addr` over HTTP/1.1: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// `method path` with extra `headers` (each ending in CRLF): the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}");
    write!(s, "{head}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Parses the Prometheus text format strictly: every sample's family has `# TYPE`, names
/// and labels are well formed, values are numbers. Returns each sample as
/// (name with labels, value).
fn parse_prometheus(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or(format!("bad TYPE line {line:?}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("unknown type in {line:?}"));
            }
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
        };
        let name = series.split('{').next().unwrap();
        if !name.starts_with("raft_")
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("bad metric name in {line:?}"));
        }
        let labels = &series[name.len()..];
        let well_formed = labels.starts_with('{')
            && labels.ends_with('}')
            && labels.matches('"').count() % 2 == 0;
        if !labels.is_empty() && !well_formed {
            return Err(format!("bad labels in {line:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        if !typed.contains(name) && !typed.contains(family) {
            return Err(format!("{name} has no # TYPE"));
        }
        samples.push((series.to_string(), value));
    }
    Ok(samples)
}

#[test]
fn every_node_serves_metrics_that_parse_and_status_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, rx, base) = local_cluster(3, &[], tmp.path());
    wait_for_line(&rx, "Type 'add'");
    let node = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let http_addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + 2000 + i));
    // Writes through node 1, leader or not.
    let mut conn = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = redis::Client::open(format!("redis://{}/", node(0)))
                .and_then(|c| c.get_connection())
            {
                if c.set::<_, _, ()>("m-0", 0).is_ok() {
                    break c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never accepted a write"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for i in 1..20 {
        let _: () = conn.set(format!("m-{i}"), i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // a tick or more: metrics are published per tick
    let mut leaders = Vec::new();
    for i in 0..3 {
        let (code, text) = http_get(http_addr(i), "/metrics");
        assert_eq!(code, 200, "{text}");
        let samples =
            parse_prometheus(&text).unwrap_or_else(|e| panic!("node {}: {e}\n{text}", i + 1));
        let get = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        for name in [
            "raft_term",
            "raft_commit_index",
            "raft_applied_index",
            "raft_proposals_total",
            "raft_elections_won_total",
            "raft_messages_sent_total{kind=\"append_entries\"}",
            "raft_fsync_latency_seconds_count",
        ] {
            assert!(get(name).is_some(), "node {}: no {name}", i + 1);
        }
        assert!(get("raft_applied_index").unwrap() >= 21.0, "node {}", i + 1);
        // Buckets are cumulative: they never decrease, and +Inf holds every observation.
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(s, _)| s.starts_with("raft_fsync_latency_seconds_bucket{"))
            .map(|(_, v)| *v)
            .collect();
        assert!(
            buckets.len() >= 10 && buckets.windows(2).all(|w| w[0] <= w[1]),
            "{buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            get("raft_fsync_latency_seconds_count")
        );
        if get("raft_role{role=\"leader\"}") == Some(1.0) {
            leaders.push(i);
            assert!(get("raft_proposals_committed_total").unwrap() >= 20.0);
            assert!(get("raft_commit_latency_seconds_count").unwrap() >= 20.0);
            assert_eq!(
                samples
                    .iter()
                    .filter(|(s, _)| s.starts_with("raft_peer_lag_entries{"))
                    .count(),
                2
            );
        }
        let (code, status) = http_get(http_addr(i), "/status");
        assert_eq!(code, 200);
        assert!(
            status.starts_with('{') && status.contains(&format!("\"id\":{}", i + 1)),
            "{status}"
        );
        // The official Prometheus parser agrees, where Python has it.
        if let Ok(python) = python_with("prometheus_client") {
            let parse = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))";
            let mut child = Command::new(python)
                .args(["-c", parse])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "prometheus_client could not parse node {}'s metrics",
                i + 1
            );
            let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert!(families >= 30, "{families} families");
        }
    }
    assert_eq!(
        leaders.len(),
        1,
        "exactly one node reports itself leader: {leaders:?}"
    );
    // The fault drill through the view: only from the view's page (its header), and a node's
    // own drill only with the admin header.
    let view = SocketAddr::from(([127, 0, 0, 1], base + 3000));
    let leader = leaders[0];
    let path = format!("/api/nodes/{}/isolate", leader + 1);
    assert_eq!(
        http(view, "POST", &path, "").0,
        403,
        "an action without the page's header"
    );
    assert_eq!(http(http_addr(leader), "POST", "/admin/isolate", "").0, 403);
    assert_eq!(http(view, "POST", &path, "x-raft-view: 1\r\n").0, 200);
    // Cut off, the old leader is replaced; healed, it follows the new one.
    let role_of = |i: u16| http_get(http_addr(i), "/status").1;
    let deadline = Instant::now() + Duration::from_secs(20);
    let others: Vec<u16> = (0..3).filter(|&i| i != leader).collect();
    while !others
        .iter()
        .any(|&i| role_of(i).contains("\"role\":\"leader\""))
    {
        assert!(
            Instant::now() < deadline,
            "no new leader while node {} was isolated",
            leader + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(role_of(leader).contains("\"isolated\":true"));
    let path = format!("/api/nodes/{}/heal", leader + 1);
    assert_eq!(http(view, "POST", &path, "x-raft-view: 1\r\n").0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !role_of(leader).contains("\"role\":\"follower\"") {
        assert!(
            Instant::now() < deadline,
            "node {} did not rejoin: {}",
            leader + 1,
            role_of(leader)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_local_cluster(&mut cluster);
}

#[test]
fn the_live_view_shows_a_failover_in_a_real_browser() {
    let missing: Vec<&str> = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .into_iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    let python = python_with("selenium");
    if !missing.is_empty() || python.is_err() {
        println!(
            "browser test skipped: missing {missing:?} {:?} (apt-get install chromium chromium-driver; target/pyvenv/bin/pip install selenium)",
            python.err()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, rx, _) = local_cluster(3, &[], tmp.path());
    let line = wait_for_line(&rx, "live view:");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL")
        .to_string();
    wait_for_line(&rx, "Type 'add'");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let screenshot = target.join("raft-kv-view.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/view_check.py");
    let out = Command::new(python.unwrap())
        .arg(&script)
        .arg(&url)
        .arg(&screenshot)
        .output()
        .expect("run the browser check");
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        println!("{l}");
    }
    stop_local_cluster(&mut cluster);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("view check passed"));
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        screenshot.display()
    );
}
