//! Node-level scenarios on the real async node over the in-memory network and stores, in
//! the shape of the MIT 6.5840 Raft lab tests (3A election, 3B agreement, 3C persistence).
//! Everything runs on tokio's paused clock, so "seconds" below are simulated and a test
//! takes milliseconds of real time.
//!
//! `RAFT_SCENARIO_LONG=1` runs the long variants (more rounds); `RAFT_SCENARIO_SEED=N`
//! changes the seed every scenario starts from.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{cmd, nth, random_cmd, rounds, seed, unreliable, within, Cluster};
use raft_core::NodeId;
use raft_transport::LinkFaults;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The lab's `RaftElectionTimeout`.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

// ----- 3A: leader election ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn initial_election() {
    let c = Cluster::new(3, seed(1)).await;
    c.check_one_leader().await;
    sleep(Duration::from_millis(50)).await;
    let term1 = c.check_terms().await;
    assert!(term1 >= 1, "term is {term1}, but should be at least 1");
    // With no failures, the leader and term stay put.
    sleep(2 * ELECTION_TIMEOUT).await;
    assert_eq!(
        c.check_terms().await,
        term1,
        "term changed even though there were no failures"
    );
    c.check_one_leader().await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn re_election() {
    let mut c = Cluster::new(3, seed(2)).await;
    let leader1 = c.check_one_leader().await;
    // --- the leader is cut off: a new one is elected
    c.disconnect(leader1);
    c.check_one_leader().await;
    // --- the old leader rejoins: it must not disturb the new leader
    c.connect(leader1);
    let leader2 = c.check_one_leader().await;
    // --- no quorum: no leader
    c.disconnect(leader2);
    c.disconnect(nth(&c, leader2, 1));
    sleep(2 * ELECTION_TIMEOUT).await;
    c.check_no_leader().await;
    // --- a quorum again: a leader
    c.connect(nth(&c, leader2, 1));
    c.check_one_leader().await;
    // --- the last node rejoins: still one leader
    c.connect(leader2);
    c.check_one_leader().await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn many_elections() {
    let mut c = Cluster::new(7, seed(3)).await;
    let mut r = rng(seed(3));
    c.check_one_leader().await;
    for _ in 0..rounds(10, 40) {
        // --- three random disconnects: four remain, a majority of seven
        let picks: Vec<NodeId> = (0..3).map(|_| NodeId(r.gen_range(1..=7))).collect();
        for &p in &picks {
            c.disconnect(p);
        }
        // Either the current leader is still alive, or the remaining four elect one.
        c.check_one_leader().await;
        for &p in &picks {
            c.connect(p);
        }
    }
    c.check_one_leader().await;
    c.shutdown().await;
}

// ----- 3B: agreement ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn basic_agreement_at_consecutive_indexes() {
    let c = Cluster::new(3, seed(4)).await;
    c.check_one_leader().await;
    let mut last = 0;
    for i in 1..=3 {
        let index = c.one(cmd(i * 100), 3, false).await;
        if last > 0 {
            assert_eq!(index, last + 1, "got index {index}, expected {}", last + 1);
        }
        last = index;
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn agreement_without_one_follower() {
    let mut c = Cluster::new(3, seed(5)).await;
    c.one(cmd(101), 3, false).await;
    // --- one follower disconnects: the other two still agree
    let leader = c.check_one_leader().await;
    c.disconnect(nth(&c, leader, 1));
    c.one(cmd(102), 2, false).await;
    c.one(cmd(103), 2, false).await;
    sleep(ELECTION_TIMEOUT).await;
    c.one(cmd(104), 2, false).await;
    c.one(cmd(105), 2, false).await;
    // --- it reconnects and catches up
    c.connect(nth(&c, leader, 1));
    c.one(cmd(106), 3, true).await;
    sleep(ELECTION_TIMEOUT).await;
    c.one(cmd(107), 3, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_commit_without_a_majority() {
    let mut c = Cluster::new(5, seed(6)).await;
    c.one(cmd(10), 5, false).await;
    // --- three of five followers disconnect
    let leader = c.check_one_leader().await;
    for k in 1..=3 {
        c.disconnect(nth(&c, leader, k));
    }
    let pending = c.start_command(leader, cmd(20));
    sleep(2 * ELECTION_TIMEOUT).await;
    assert!(
        !pending.is_finished(),
        "a command was acknowledged without a majority"
    );
    let committed = (1..=20)
        .filter(|&i| c.n_committed(i).1 == Some(cmd(20)))
        .count();
    assert_eq!(committed, 0, "command 20 was applied without a majority");
    // --- repair: a leader of a majority commits again
    for k in 1..=3 {
        c.connect(nth(&c, leader, k));
    }
    c.check_one_leader().await;
    c.one(cmd(1000), 5, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_proposals() {
    let c = Cluster::new(3, seed(7)).await;
    let leader = c.check_one_leader().await;
    let term = c.check_terms().await;
    let handles: Vec<_> = (0..5)
        .map(|i| c.start_command(leader, cmd(100 + i)))
        .collect();
    let mut indexes = BTreeSet::new();
    for h in handles {
        let resp = within(10, h).await.expect("task").expect("committed");
        indexes.insert(resp);
    }
    assert_eq!(indexes.len(), 5, "each proposal got its own index");
    assert_eq!(c.check_terms().await, term, "no election interfered");
    sleep(Duration::from_millis(200)).await;
    for id in c.ids() {
        let applied: BTreeSet<Bytes> = c.applied(id).into_values().collect();
        for i in 0..5 {
            assert!(
                applied.contains(&cmd(100 + i)),
                "{id} misses command {}",
                100 + i
            );
        }
    }
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn partitioned_leader_rejoins() {
    let mut c = Cluster::new(3, seed(8)).await;
    c.one(cmd(101), 3, true).await;
    // --- the leader is partitioned and takes commands it cannot commit
    let leader1 = c.check_one_leader().await;
    c.disconnect(leader1);
    drop(c.start_command(leader1, cmd(102)));
    drop(c.start_command(leader1, cmd(103)));
    drop(c.start_command(leader1, cmd(104)));
    // --- the others elect a new leader and commit
    c.one(cmd(103), 2, true).await;
    let leader2 = c.check_one_leader().await;
    c.disconnect(leader2);
    // --- the old leader rejoins; its uncommitted entries are replaced
    c.connect(leader1);
    c.one(cmd(104), 2, true).await;
    c.connect(leader2);
    c.one(cmd(105), 3, true).await;
    for id in c.ids() {
        assert!(
            !c.applied(id).values().any(|v| *v == cmd(102)),
            "{id} applied an uncommitted entry"
        );
    }
    c.shutdown().await;
}

/// Section 5.3's fast backup, twice: 50 uncommitted entries on a minority leader while 50
/// commit on the majority; then all agree.
#[tokio::test(start_paused = true)]
async fn fast_backup() {
    let mut c = Cluster::new(5, seed(9)).await;
    let mut r = rng(seed(9));
    c.one(random_cmd(&mut r), 5, true).await;
    // --- leader and one follower in a minority; 50 commands they cannot commit
    let leader1 = c.check_one_leader().await;
    for k in 2..=4 {
        c.disconnect(nth(&c, leader1, k));
    }
    for _ in 0..50 {
        drop(c.start_command(leader1, random_cmd(&mut r)));
    }
    sleep(ELECTION_TIMEOUT / 2).await;
    c.disconnect(leader1);
    c.disconnect(nth(&c, leader1, 1));
    // --- the other three elect a leader and commit 50
    for k in 2..=4 {
        c.connect(nth(&c, leader1, k));
    }
    for _ in 0..50 {
        c.one(random_cmd(&mut r), 3, true).await;
    }
    // --- the new leader and one follower in a minority; 50 more uncommitted
    let leader2 = c.check_one_leader().await;
    let other = (2..=4)
        .map(|k| nth(&c, leader1, k))
        .find(|&x| x != leader2)
        .expect("another");
    c.disconnect(other);
    for _ in 0..50 {
        drop(c.start_command(leader2, random_cmd(&mut r)));
    }
    sleep(ELECTION_TIMEOUT / 2).await;
    // --- the original minority plus `other` take over and commit 50
    for id in c.ids() {
        c.disconnect(id);
    }
    c.connect(leader1);
    c.connect(nth(&c, leader1, 1));
    c.connect(other);
    for _ in 0..50 {
        c.one(random_cmd(&mut r), 3, true).await;
    }
    // --- everyone back: all agree
    for id in c.ids() {
        c.connect(id);
    }
    c.one(random_cmd(&mut r), 5, true).await;
    c.shutdown().await;
}

/// Message counts stay within stated bounds: an election needs few messages, an idle
/// second costs only heartbeats, and 10 commands need one AppendEntries per follower each.
#[tokio::test(start_paused = true)]
async fn message_count_bounds() {
    let c = Cluster::new(3, seed(10)).await;
    let leader = c.check_one_leader().await;
    // --- election: PreVote and vote, request and answer, to 2 peers, over at most a few
    // rounds. Bound: 30 messages (the lab's bound for RPCs).
    let election = c.net.totals().sent_messages;
    assert!(
        election <= 30 + heartbeats(&c, Duration::from_millis(450 * 2)),
        "election took {election} messages"
    );
    // --- 10 commands, one at a time
    let before = c.net.sent_by_kind();
    let total_before = c.net.totals();
    let node = c.node(leader).expect("up").clone();
    for i in 0..10 {
        within(10, node.propose(cmd(i))).await.expect("committed");
    }
    let after = c.net.sent_by_kind();
    let appends = after["AppendEntries"] - before["AppendEntries"];
    // Bound: one AppendEntries per follower per command, plus one heartbeat round.
    assert!(
        appends <= 10 * 2 + 2,
        "10 commands took {appends} AppendEntries"
    );
    let total_after = c.net.totals();
    let per_cmd_msgs = (total_after.sent_messages - total_before.sent_messages) as f64 / 10.0;
    let per_cmd_bytes = (total_after.sent_bytes - total_before.sent_bytes) as f64 / 10.0;
    println!("scenario: steady state, 3 nodes, 2-byte commands: {per_cmd_msgs:.1} messages and {per_cmd_bytes:.0} bytes per committed command");
    // --- an idle second: heartbeats only
    let idle_start = c.net.totals().sent_messages;
    sleep(Duration::from_secs(1)).await;
    let idle = c.net.totals().sent_messages - idle_start;
    let bound = heartbeats(&c, Duration::from_secs(1));
    assert!(
        idle <= bound,
        "an idle second took {idle} messages, bound {bound}"
    );
    assert!(idle > 0, "no heartbeats at all");
    c.shutdown().await;
}

/// Heartbeat messages (requests and answers) to two followers over `d`, plus one round.
fn heartbeats(c: &Cluster, d: Duration) -> u64 {
    let interval = c.cfg.tick_interval * c.cfg.heartbeat_interval as u32;
    let rounds = d.as_millis() as u64 / interval.as_millis() as u64 + 1;
    rounds * 2 * 2
}

// ----- 3C: persistence ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn persistence_crash_and_restart() {
    let mut c = Cluster::new(3, seed(11)).await;
    c.one(cmd(11), 3, true).await;
    // --- all crash and restart
    c.restart_all().await;
    c.one(cmd(12), 3, true).await;
    // --- the leader crashes and restarts
    let leader1 = c.check_one_leader().await;
    c.crash(leader1).await;
    c.start(leader1).await;
    c.one(cmd(13), 3, true).await;
    // --- the leader crashes; the rest commit; it restarts and catches up
    let leader2 = c.check_one_leader().await;
    c.crash(leader2).await;
    c.one(cmd(14), 2, true).await;
    c.start(leader2).await;
    // --- a follower crashes and restarts
    let leader3 = c.check_one_leader().await;
    let follower = nth(&c, leader3, 1);
    c.crash(follower).await;
    c.one(cmd(15), 2, true).await;
    c.start(follower).await;
    c.one(cmd(16), 3, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn persistence_mixed_rounds_with_five_nodes() {
    let mut c = Cluster::new(5, seed(12)).await;
    let mut index = 1;
    for _ in 0..rounds(5, 20) {
        c.one(cmd(10 + index), 5, true).await;
        index += 1;
        let leader1 = c.check_one_leader().await;
        // --- two followers crash; three commit
        c.crash(nth(&c, leader1, 1)).await;
        c.crash(nth(&c, leader1, 2)).await;
        c.one(cmd(10 + index), 3, true).await;
        index += 1;
        // --- the leader and two others crash; the two restart (no quorum yet)
        c.crash(leader1).await;
        c.crash(nth(&c, leader1, 3)).await;
        c.crash(nth(&c, leader1, 4)).await;
        c.start(nth(&c, leader1, 1)).await;
        c.start(nth(&c, leader1, 2)).await;
        sleep(ELECTION_TIMEOUT).await;
        c.start(nth(&c, leader1, 3)).await;
        c.one(cmd(10 + index), 3, true).await;
        index += 1;
        c.start(nth(&c, leader1, 4)).await;
        c.start(leader1).await;
    }
    c.one(cmd(1000), 5, true).await;
    c.shutdown().await;
}

/// Figure 8's step: every connected node that thinks it leads takes a command (which it
/// may never commit); returns the last such leader.
async fn propose_at_leaders(c: &Cluster, r: &mut ChaCha8Rng) -> Option<NodeId> {
    let mut leader = None;
    for id in c.leaders_now().await {
        if c.is_connected(id) {
            drop(c.start_command(id, random_cmd(r)));
            leader = Some(id);
        }
    }
    leader
}

/// Figure 8's pause: usually shorter than a heartbeat, sometimes half an election.
async fn figure_8_pause(r: &mut ChaCha8Rng) {
    let pause = if r.gen_bool(0.1) {
        r.gen_range(0..500)
    } else {
        r.gen_range(0..13)
    };
    sleep(Duration::from_millis(pause)).await;
}

/// Figure 8 under crashes: leaders crash right after taking a command; restarts keep a
/// majority available most of the time; at the end everyone agrees.
#[tokio::test(start_paused = true)]
async fn figure_8_with_crashes() {
    let mut c = Cluster::new(5, seed(13)).await;
    let mut r = rng(seed(13));
    c.one(random_cmd(&mut r), 1, true).await;
    let mut up = 5;
    for _ in 0..rounds(60, 1000) {
        let leader = propose_at_leaders(&c, &mut r).await;
        figure_8_pause(&mut r).await;
        if let Some(l) = leader {
            if c.node(l).is_some() {
                c.crash(l).await;
                up -= 1;
            }
        }
        if up < 3 {
            let s = NodeId(r.gen_range(1..=5));
            if c.node(s).is_none() {
                c.start(s).await;
                up += 1;
            }
        }
    }
    for id in c.ids() {
        c.start(id).await;
    }
    c.one(random_cmd(&mut r), 5, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn agreement_on_an_unreliable_network() {
    // Delay up to 27 ms and 10% loss on every link: 10% of requests and 10% of replies.
    let c = Cluster::new(5, seed(14)).await;
    c.net.set_faults(unreliable());
    for iter in 1..rounds(10, 50) {
        let handles: Vec<_> = (0..4)
            .map(|j| {
                let c_ids = c.ids();
                let nodes: Vec<_> = c_ids.iter().filter_map(|&id| c.node(id).cloned()).collect();
                tokio::spawn(async move {
                    for node in nodes {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            node.propose(cmd(100 * iter + j)),
                        )
                        .await;
                    }
                })
            })
            .collect();
        c.one(cmd(iter), 1, true).await;
        for h in handles {
            let _ = within(10, h).await;
        }
    }
    c.net.set_faults(LinkFaults::default());
    c.one(cmd(100), 5, true).await;
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn figure_8_on_an_unreliable_network_with_long_reordering() {
    let mut c = Cluster::new(5, seed(15)).await;
    let mut r = rng(seed(15));
    c.one(random_cmd(&mut r), 1, true).await;
    c.net.set_faults(LinkFaults {
        // Long reordering: two thirds of messages arrive up to two seconds late, long after
        // newer ones (as the lab's labrpc does), on top of loss, delay and duplication.
        reorder_rate: 0.66,
        reorder_delay: Duration::from_millis(2000),
        duplicate_rate: 0.02,
        ..unreliable()
    });
    let mut connected = 5;
    for iter in 0..rounds(100, 1000) {
        if iter == 200 {
            c.net.set_faults(unreliable());
        }
        let leader = propose_at_leaders(&c, &mut r).await;
        figure_8_pause(&mut r).await;
        if let Some(l) = leader {
            if r.gen_bool(0.5) && c.is_connected(l) {
                c.disconnect(l);
                connected -= 1;
            }
        }
        if connected < 3 {
            let s = NodeId(r.gen_range(1..=5));
            if !c.is_connected(s) {
                c.connect(s);
                connected += 1;
            }
        }
    }
    for id in c.ids() {
        c.connect(id);
    }
    c.net.set_faults(LinkFaults::default());
    c.one(random_cmd(&mut r), 5, true).await;
    c.shutdown().await;
}

/// Clients keep proposing while nodes crash, restart, disconnect and reconnect; every
/// value a client saw committed must be in the final log.
async fn churn(seed: u64, unreliable_net: bool) {
    let mut c = Cluster::new(5, seed).await;
    let mut r = rng(seed);
    if unreliable_net {
        c.net.set_faults(unreliable());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let mut clients = Vec::new();
    for client in 0..3u64 {
        let stop = stop.clone();
        let acked = acked_tx.clone();
        let live = c.live();
        clients.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let value = cmd(format!("client{client}-{k}"));
                let nodes: Vec<_> = live.lock().expect("live lock").values().cloned().collect();
                for node in &nodes {
                    let res = tokio::time::timeout(
                        Duration::from_millis(300),
                        node.propose(value.clone()),
                    )
                    .await;
                    if let Ok(Ok(_)) = res {
                        let _ = acked.send(value.clone());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        }));
    }
    drop(acked_tx);
    for _ in 0..rounds(20, 100) {
        let id = NodeId(r.gen_range(1..=5));
        match r.gen_range(0..4) {
            0 => c.disconnect(id),
            1 => c.connect(id),
            2 => {
                if c.node(id).is_some()
                    && c.ids().iter().filter(|&&i| c.node(i).is_some()).count() > 3
                {
                    c.crash(id).await;
                }
            }
            _ => c.start(id).await,
        }
        sleep(Duration::from_millis(r.gen_range(0..700))).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for cl in clients {
        let _ = within(10, cl).await;
    }
    c.net.set_faults(LinkFaults::default());
    for id in c.ids() {
        c.start(id).await;
        c.connect(id);
    }
    let last = c.one(cmd("final"), 5, true).await;
    let mut acked = Vec::new();
    while let Some(v) = acked_rx.recv().await {
        acked.push(v);
    }
    // Every node that restarted re-applies from its log, so compare the whole final logs.
    sleep(Duration::from_secs(1)).await;
    for id in c.ids() {
        let log: BTreeSet<Bytes> = c.applied(id).into_values().collect();
        for v in &acked {
            assert!(log.contains(v), "{id} lacks acknowledged value {v:?}");
        }
        assert!(c.applied(id).contains_key(&last));
    }
    println!(
        "scenario: churn (unreliable: {unreliable_net}): {} acknowledged values all present",
        acked.len()
    );
    c.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reliable_churn() {
    churn(seed(16), false).await;
}

#[tokio::test(start_paused = true)]
async fn unreliable_churn() {
    churn(seed(17), true).await;
}
