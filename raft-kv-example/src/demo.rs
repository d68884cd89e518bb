//! The narrated demo: a 3-node cluster on embedded redb, a failover, and a catch-up.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_kv_example::resp::Value;
use raft_kv_example::runner::{self, LocalNode, RunError};
use raft_kv_example::KvClient;
use tokio::process::Child;

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

fn fail(msg: impl Into<String>) -> RunError {
    RunError::Usage(format!("demo failed: {}", msg.into()))
}

/// Free ports on 127.0.0.1, found by binding port 0.
fn free_ports(n: usize) -> Result<Vec<u16>, RunError> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|source| RunError::Io {
            context: "cannot find free ports on 127.0.0.1".into(),
            source,
        })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|source| RunError::Io {
            context: "cannot read a local port".into(),
            source,
        })
}

/// The `# Raft` fields of a node's INFO, or `None` if it does not answer.
async fn info(addr: SocketAddr) -> Option<std::collections::BTreeMap<String, String>> {
    let mut c = KvClient::new(vec![addr]);
    c.max_attempts = 1;
    c.attempt_timeout = Duration::from_millis(500);
    match c.call(vec![Bytes::from("INFO")]).await {
        Ok(Value::Bulk(Some(text))) => Some(
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        ),
        _ => None,
    }
}

/// Waits until one of `nodes` reports itself leader; returns its index in `nodes`.
async fn wait_for_leader(nodes: &[&LocalNode], within: Duration) -> Result<(usize, u64), RunError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(f) = info(n.client).await {
                if f.get("role").map(String::as_str) == Some("leader") {
                    let term = f.get("term").and_then(|t| t.parse().ok()).unwrap_or(0);
                    return Ok((i, term));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(fail("no leader was elected within the time limit"))
}

pub async fn run() -> Result<(), RunError> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|source| RunError::Io {
        context: "cannot create a temporary directory".into(),
        source,
    })?;
    let result = run_in(dir.path()).await;
    println!();
    match &result {
        Ok(()) => println!(
            "demo finished in {:.1} s: every acknowledged write survived the failover.",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!(
            "demo stopped: {e}\n(node logs were in {})",
            dir.path().display()
        ),
    }
    result
}

async fn run_in(dir: &Path) -> Result<(), RunError> {
    let exe = std::env::current_exe().map_err(|source| RunError::Io {
        context: "cannot find the raft-kv executable".into(),
        source,
    })?;
    let ports = free_ports(9)?;
    let layout: Vec<LocalNode> = (0..3)
        .map(|i| LocalNode {
            id: raft_core::NodeId(i as u64 + 1),
            client: SocketAddr::from(([127, 0, 0, 1], ports[i])),
            raft: SocketAddr::from(([127, 0, 0, 1], ports[3 + i])),
            http: SocketAddr::from(([127, 0, 0, 1], ports[6 + i])),
            dir: dir.join(format!("node-{}", i + 1)),
        })
        .collect();
    let log = |i: usize| dir.join(format!("node-{}.log", i + 1));
    // Small enough that compaction shows within the demo's few hundred writes.
    let snapshots = runner::Tuning {
        threshold: 40,
        trailing: 10,
        ..runner::Tuning::default()
    };
    // The demo runs on plain TCP, without a password (see `raft-kv cluster --tls`).
    let open = runner::LocalSecurity::default();

    step(
        1,
        "Starting 3 nodes as separate processes, each with its own redb database:",
    );
    let mut children: Vec<Option<Child>> = Vec::new();
    for (i, n) in layout.iter().enumerate() {
        children.push(Some(runner::spawn_node(
            &exe,
            n,
            &layout,
            (snapshots, &open),
            Some(&log(i)),
        )?));
        println!(
            "    node {}  clients {}  raft {}  data {}",
            n.id.0,
            n.client,
            n.raft,
            n.dir.display()
        );
    }
    let all: Vec<&LocalNode> = layout.iter().collect();
    let (leader, term) = wait_for_leader(&all, Duration::from_secs(20)).await?;
    println!(
        "    node {} was elected leader in term {term}",
        layout[leader].id.0
    );

    step(
        2,
        "Writing 50 keys through a client that may contact any node (followers forward):",
    );
    let addrs: Vec<SocketAddr> = layout.iter().map(|n| n.client).collect();
    let mut client = KvClient::new(addrs.clone());
    for k in 0..50 {
        client
            .set(&format!("key:{k}"), &format!("value-{k}"))
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let counter = client
        .incr("counter")
        .await
        .map_err(|e| fail(e.to_string()))?;
    println!("    50 SETs and one INCR (counter = {counter}) acknowledged: each was committed on a majority");
    let v = client.get("key:7").await.map_err(|e| fail(e.to_string()))?;
    println!(
        "    GET key:7 -> {:?} (a linearizable read: the leader confirmed its leadership first)",
        v.map(|b| String::from_utf8_lossy(&b).into_owned())
    );

    step(
        3,
        &format!(
            "Killing the leader, node {}, with SIGKILL (no clean shutdown):",
            layout[leader].id.0
        ),
    );
    if let Some(mut c) = children[leader].take() {
        let _ = c.kill().await;
    }
    let survivors: Vec<&LocalNode> = layout
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    let failover = Instant::now();
    let (new_leader, new_term) = wait_for_leader(&survivors, Duration::from_secs(20)).await?;
    println!(
        "    node {} took over in term {new_term}, {} ms after the kill",
        survivors[new_leader].id.0,
        failover.elapsed().as_millis()
    );

    step(
        4,
        "Reading every acknowledged write back from the surviving nodes:",
    );
    let mut client = KvClient::new(survivors.iter().map(|n| n.client).collect());
    for k in 0..50 {
        let got = client
            .get(&format!("key:{k}"))
            .await
            .map_err(|e| fail(e.to_string()))?;
        if got.as_deref() != Some(format!("value-{k}").as_bytes()) {
            return Err(fail(format!(
                "key:{k} was acknowledged but reads back as {got:?}"
            )));
        }
    }
    let counter_after = client
        .get("counter")
        .await
        .map_err(|e| fail(e.to_string()))?;
    if counter_after.as_deref() != Some(counter.to_string().as_bytes()) {
        return Err(fail(format!(
            "counter was {counter} but reads back as {counter_after:?}"
        )));
    }
    println!("    all 50 keys and the counter are intact: no acknowledged write was lost");
    for k in 50..150 {
        client
            .set(&format!("key:{k}"), &format!("value-{k}"))
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    println!("    100 more keys written while the old leader is down");
    if let Some(f) = info(survivors[new_leader].client).await {
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("?").to_string();
        println!(
            "    node {} took a snapshot at index {} ({} bytes) and compacted its log: it now starts at index {}, so the old leader will need the snapshot",
            survivors[new_leader].id.0,
            field("snapshot_index"),
            field("snapshot_bytes"),
            field("first_log_index")
        );
    }

    step(
        5,
        &format!(
            "Restarting node {} on its data directory; it rejoins as a follower and catches up:",
            layout[leader].id.0
        ),
    );
    children[leader] = Some(runner::spawn_node(
        &exe,
        &layout[leader],
        &layout,
        (snapshots, &open),
        Some(&log(leader)),
    )?);
    let target = info(survivors[new_leader].client)
        .await
        .and_then(|f| f.get("commit_index").and_then(|c| c.parse::<u64>().ok()))
        .ok_or_else(|| fail("the new leader stopped answering"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(f) = info(layout[leader].client).await {
            let applied: u64 = f
                .get("applied_index")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            if applied >= target {
                println!(
                    "    node {} is a {} in term {}, applied index {applied} (the leader's commit index was {target}); it installed a snapshot at index {}",
                    layout[leader].id.0,
                    f.get("role").map(String::as_str).unwrap_or("?"),
                    f.get("term").map(String::as_str).unwrap_or("?"),
                    f.get("snapshot_index").map(String::as_str).unwrap_or("?")
                );
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(fail("the restarted node did not catch up in time"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut via_old = KvClient::new(vec![layout[leader].client]);
    let v = via_old
        .get("key:149")
        .await
        .map_err(|e| fail(e.to_string()))?;
    println!(
        "    GET key:149 via node {} -> {:?}",
        layout[leader].id.0,
        v.map(|b| String::from_utf8_lossy(&b).into_owned())
    );

    step(6, "Stopping the cluster.");
    for c in children.iter_mut().flatten() {
        runner::stop_child(c, Duration::from_secs(5)).await;
    }
    Ok(())
}
