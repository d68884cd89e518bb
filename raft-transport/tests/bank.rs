//! The bank example (`examples/bank.rs`) as real processes: three nodes on redb and TCP, a
//! client doing 1,000 random operations, and SIGKILL of the leader while they run. The
//! client checks every answer against a model and the money at the end; a command applied
//! twice or lost fails it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The example's binary, built by `cargo test` with the tests (built here if missing, as
/// when this test alone is run).
fn bank_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples").join("bank");
    if !bin.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "raft-transport", "--example", "bank"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo build").success(),
            "building the bank example"
        );
    }
    bin
}

/// A port below the kernel's ephemeral range, so no client connection takes it first.
fn free_port(seed: u16) -> u16 {
    let start = 20_000 + (std::process::id() as u16 % 6_000) + seed * 7;
    (start..32_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port")
}

struct Node {
    dir: PathBuf,
    child: Option<Child>,
}

fn spawn(bin: &PathBuf, id: usize, node: &mut Node, members: &str) {
    let log = std::fs::File::create(node.dir.with_extension("log")).unwrap();
    let child = Command::new(bin)
        .args(["serve", "--id", &id.to_string(), "--members", members])
        .arg("--dir")
        .arg(&node.dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a bank node");
    node.child = Some(child);
}

/// The leader's id as `bank leader` reports it, asking only `members`.
fn leader(bin: &PathBuf, members: &str) -> Option<usize> {
    let out = Command::new(bin)
        .args(["leader", "--members", members])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn wait_leader(bin: &PathBuf, members: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = leader(bin, members) {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bank_survives_sigkill_of_the_leader_with_every_operation_applied_once() {
    let bin = bank_binary();
    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|i| free_port(i as u16 * 100)).collect();
    let members = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            dir: tmp.path().join(format!("bank-{id}")),
            child: None,
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        spawn(&bin, i + 1, node, &members);
    }
    let first = wait_leader(&bin, &members);
    // --- the client: 1,000 operations, each checked against the model
    let mut client = Command::new(&bin)
        .args(["run", "--members", &members, "--ops", "1000", "--seed", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bank client");
    let (tx, lines) = mpsc::channel();
    let stdout = client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // --- SIGKILL the leader once the client is 200 operations in
    while !output.iter().any(|l: &String| l == "op 200") {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the client stalled before operation 200");
        output.push(line);
    }
    let victim = leader(&bin, &members).unwrap_or(first);
    let mut killed = nodes[victim - 1].child.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    output.push(format!(
        "(SIGKILL of the leader, node {victim}, after operation 200)"
    ));
    // --- the client finishes against the two survivors
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        output.push(line);
    }
    let status = client.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut err).unwrap();
    for line in &output {
        println!("bank: {line}");
    }
    assert!(status.success(), "the bank client failed: {err}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("balances match the model, money conserved")),
        "{output:?}"
    );
    // --- the killed node restarts and follows a leader again
    spawn(&bin, victim, &mut nodes[victim - 1], &members);
    let own = format!("{victim}=127.0.0.1:{}", ports[victim - 1]);
    let l = wait_leader(&bin, &own);
    println!("bank: node {victim} restarted and follows leader {l}");
    for node in &mut nodes {
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
