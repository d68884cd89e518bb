//! Snapshots and log compaction on the real async node, in the shape of the MIT 6.5840 Raft
//! lab's 3D tests: a snapshot every few entries, followers that fall behind (disconnected,
//! crashed, on an unreliable network) and catch up through InstallSnapshot, whole-cluster
//! restarts from snapshots, and a log that stays bounded however many entries pass through.
//! Everything runs on tokio's paused clock.

mod common;

use bytes::Bytes;
use common::{cmd, nth, random_cmd, rounds, seed, test_config, unreliable, Cluster};
use raft_core::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The lab's `SnapShotInterval`: a snapshot every this many applied entries.
const SNAPSHOT_INTERVAL: u64 = 10;

fn snapshot_config(trailing: u64) -> Config {
    Config {
        snapshot_threshold: SNAPSHOT_INTERVAL,
        snapshot_trailing: trailing,
        // Small chunks: every InstallSnapshot crosses the network in several pieces.
        snapshot_chunk_bytes: 64,
        ..test_config()
    }
}

/// Entries each running node holds in its log; none may hold more than `max`.
async fn check_log_sizes(c: &Cluster, max: u64) {
    for id in c.ids() {
        let Some(node) = c.node(id) else { continue };
        let Ok(s) = node.status().await else { continue };
        let held = (s.last_log_id.index.0 + 1).saturating_sub(s.first_log_index.0);
        assert!(
            held <= max,
            "{id} holds {held} entries ({}..={}), more than {max}",
            s.first_log_index,
            s.last_log_id.index
        );
    }
}

fn install_snapshot_messages(c: &Cluster) -> u64 {
    c.net
        .sent_by_kind()
        .get("InstallSnapshot")
        .copied()
        .unwrap_or(0)
}

/// The lab's `snapcommon`: each iteration takes a follower (or the leader) away, commits
/// enough for the others to snapshot past it, and brings it back.
async fn snapshot_common(seed: u64, disconnect: bool, reliable: bool, crash: bool) {
    println!("snapshot scenario seed {seed}");
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut c = Cluster::with_config(3, seed, snapshot_config(0)).await;
    if !reliable {
        c.net.set_faults(unreliable());
    }
    c.one(random_cmd(&mut r), 3, true).await;
    let mut leader = c.check_one_leader().await;
    for i in 0..rounds(10, 30) as u64 {
        // --- take a node away (the leader itself every third round)
        let (victim, sender) = if i % 3 == 1 {
            (leader, nth(&c, leader, 1))
        } else {
            (nth(&c, leader, 1), leader)
        };
        if disconnect {
            c.disconnect(victim);
            c.one(random_cmd(&mut r), 2, true).await;
        }
        if crash {
            c.crash(victim).await;
            c.one(random_cmd(&mut r), 2, true).await;
        }
        // --- enough proposals for the others to take a snapshot and compact past it
        let n = SNAPSHOT_INTERVAL / 2 + r.gen_range(0..SNAPSHOT_INTERVAL);
        if c.node(sender).is_some() {
            for _ in 0..n {
                drop(c.start_command(sender, random_cmd(&mut r)));
            }
        }
        let live = if disconnect || crash { 2 } else { 3 };
        c.one(random_cmd(&mut r), live, true).await;
        check_log_sizes(&c, 4 * SNAPSHOT_INTERVAL).await;
        // --- bring it back: it catches up (through InstallSnapshot when it is behind the
        // others' compacted logs)
        if disconnect {
            c.connect(victim);
            c.one(random_cmd(&mut r), 3, true).await;
            leader = c.check_one_leader().await;
        }
        if crash {
            c.start(victim).await;
            c.one(random_cmd(&mut r), 3, true).await;
            leader = c.check_one_leader().await;
        }
    }
    println!(
        "{} InstallSnapshot messages, {:?}",
        install_snapshot_messages(&c),
        c.node(leader).expect("up").status().await.map(|s| (
            s.snapshot_index,
            s.first_log_index,
            s.last_log_id
        ))
    );
    if disconnect || crash {
        assert!(
            install_snapshot_messages(&c) > 0,
            "no follower ever needed a snapshot"
        );
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_basic() {
    snapshot_common(seed(301), false, true, false).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_install_after_disconnect() {
    snapshot_common(seed(302), true, true, false).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_install_unreliable() {
    snapshot_common(seed(303), true, false, false).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_install_after_crash() {
    snapshot_common(seed(304), false, true, true).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_install_unreliable_crash() {
    snapshot_common(seed(305), false, false, true).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_all_nodes_crash() {
    // The lab's TestSnapshotAllCrash3D: after every node restarts from its snapshot and log,
    // the log index never goes back.
    let mut r = ChaCha8Rng::seed_from_u64(seed(306));
    let mut c = Cluster::with_config(3, seed(306), snapshot_config(2)).await;
    c.one(random_cmd(&mut r), 3, true).await;
    for _ in 0..rounds(10, 30) as u64 {
        let n = SNAPSHOT_INTERVAL / 2 + r.gen_range(0..SNAPSHOT_INTERVAL);
        for _ in 0..n {
            c.one(random_cmd(&mut r), 3, true).await;
        }
        let before = c.one(random_cmd(&mut r), 3, true).await;
        // --- crash and restart all
        c.restart_all().await;
        let after = c.one(random_cmd(&mut r), 3, true).await;
        assert!(after > before, "index went back from {before} to {after}");
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_restart_right_after_snapshot() {
    // The lab's TestSnapshotInit3D: a restart right after a snapshot, twice.
    let mut r = ChaCha8Rng::seed_from_u64(seed(307));
    let mut c = Cluster::with_config(3, seed(307), snapshot_config(0)).await;
    for _ in 0..=SNAPSHOT_INTERVAL {
        c.one(random_cmd(&mut r), 3, true).await;
    }
    for _ in 0..2 {
        c.restart_all().await;
        c.one(random_cmd(&mut r), 3, true).await;
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bounded_log() {
    // After 10,000 proposals with a snapshot every 1,000 entries, every node holds at most
    // threshold + trailing window entries.
    let (threshold, trailing) = (1_000, 100);
    let cfg = Config {
        snapshot_threshold: threshold,
        snapshot_trailing: trailing,
        ..test_config()
    };
    let c = Cluster::with_config(3, seed(308), cfg).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader is up");
    for batch in 0..100 {
        let cmds = (0..100).map(|i| cmd(format!("b{batch}-{i}"))).collect();
        for r in node.propose_batch(cmds).await {
            r.expect("the stable leader commits");
        }
    }
    let last = c.one(cmd("last"), 3, true).await;
    assert!(last > 10_000);
    for id in c.ids() {
        let s = c.node(id).expect("up").status().await.expect("status");
        assert!(
            s.snapshot_index.0 + threshold > last,
            "{id}: snapshot at {} is more than a threshold behind {last}",
            s.snapshot_index
        );
    }
    check_log_sizes(&c, threshold + trailing).await;
    println!("bounded_log: last {last}");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn large_entries_are_bounded_by_log_bytes_not_by_the_entry_threshold() {
    // With a threshold of 10,000 entries, 256 KiB entries would hold 2.5 GB before the count
    // trigger; the byte trigger snapshots once the log after the snapshot holds 4 MiB.
    let cfg = Config {
        snapshot_threshold: 10_000,
        snapshot_log_bytes: 4 << 20,
        snapshot_trailing: 2,
        ..test_config()
    };
    let c = Cluster::with_config(3, seed(309), cfg).await;
    let leader = c.check_one_leader().await;
    let node = c.node(leader).cloned().expect("leader is up");
    let big = Bytes::from(vec![7u8; 256 << 10]);
    let mut most = 0;
    for _ in 0..100 {
        node.propose(big.clone()).await.expect("commit");
        for id in c.ids() {
            let s = c.node(id).expect("up").status().await.expect("status");
            most = most.max(s.log_bytes);
        }
    }
    println!("large entries: at most {most} bytes of log held by any node");
    // 4 MiB after the snapshot, the trailing window, and what arrives while one is written.
    assert!(most <= 6 << 20, "a node held {most} bytes of log");
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn memory_holds_the_log_cache_while_followers_catch_up_from_the_log_store() {
    // A trailing window of 1,000 entries of 64 KiB keeps up to 64 MB of log in the store;
    // memory keeps 1 MiB of applied entries, and a follower that was away is served by
    // reading the store rather than by a snapshot.
    let cfg = Config {
        snapshot_threshold: 10_000,
        snapshot_log_bytes: 0,
        snapshot_trailing: 1_000,
        log_cache_bytes: 1 << 20,
        ..test_config()
    };
    let mut c = Cluster::with_config(3, seed(311), cfg).await;
    let leader = c.check_one_leader().await;
    let away = nth(&c, leader, 1);
    c.disconnect(away);
    let node = c.node(leader).cloned().expect("leader is up");
    let big = Bytes::from(vec![7u8; 64 << 10]);
    for _ in 0..200 {
        node.propose(big.clone()).await.expect("commit");
    }
    let s = node.status().await.expect("status");
    assert!(s.log_bytes >= 200 * (64 << 10), "{s:?}");
    assert!(s.log_cache_bytes <= 1 << 20, "{s:?}");
    c.connect(away);
    let last = c.one(cmd("after"), 3, true).await;
    let s = c.node(away).expect("up").status().await.expect("status");
    assert!(s.last_log_id.index.0 >= last, "{s:?}");
    assert_eq!(
        install_snapshot_messages(&c),
        0,
        "caught up from the log, not a snapshot"
    );
    for id in c.ids() {
        let s = c.node(id).expect("up").status().await.expect("status");
        assert!(s.log_cache_bytes <= 1 << 20, "{id}: {s:?}");
    }
    c.shutdown().await;
}
