//! Deterministic simulation: random partitions, crashes, restarts, loss, delay, reordering
//! and duplication, with Raft's five safety properties checked after every step.
//!
//! `RAFT_SIM_SEEDS` (default 20,000: about 45 s on two cores) and `RAFT_SIM_STEPS` (default
//! 1000) set the size of the run, `RAFT_SIM_BASE_SEED` its first seed; `RAFT_SIM_SEED=N`
//! replays one seed. Seeds run on every core. At scale, in release:
//! `RAFT_SIM_SEEDS=1000000 cargo test -p raft-core --test simulation --release`.
//!
//! Reads take part: ReadIndex at the leader, follower reads, and lease reads under clock drift
//! (nodes tick at rates up to 5% apart), each checked against every index committed
//! before the read began.
//!
//! Storage faults take part: writes that fail (the node stops and restarts from its disk)
//! and crashes that leave part of the unsynced writes on disk. A share of the seeds take
//! snapshots, keep a tiny log cache (leaders read entries back from disk), or have state
//! machines that survive crashes.

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};

use raft_core::{Config, Membership, NodeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::{Faults, Sim};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Steps a quiet cluster may take to elect a leader and catch every node up, on top of the
/// time its replication window needs to drain the backlog (see `Sim::convergence_budget`).
const CONVERGE_STEPS: u64 = 2000;

struct Outcome {
    acked: u64,
    reads: u64,
    /// Of those, served from a leader's lease, and at a follower.
    lease_reads: u64,
    follower_reads: u64,
    /// Nodes that stopped on a failed write (and restarted from their disk).
    stops: u64,
    /// Snapshots taken, and installed from a leader.
    built: u64,
    installed: u64,
    /// Log reads served from disk for followers.
    entries_read: u64,
    /// Membership changes accepted by a leader.
    changes: u64,
}

fn run_seed(seed: u64, steps: u64) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Cluster shapes: 3 or 5 voters, 3 voters and a learner, a single voter with learners.
    let (voters, learners) = match rng.gen_range(0..8) {
        0..=2 => (3, 0),
        3..=5 => (5, 0),
        6 => (3, 1),
        _ => (1, 2),
    };
    let membership = Membership {
        learners: (voters + 1..=voters + learners).map(NodeId).collect(),
        ..Membership::new((1..=voters).map(NodeId))
    };
    let mut cfg = Config {
        election_timeout_min: 10,
        election_timeout_max: 20,
        heartbeat_interval: 2,
        max_entries_per_append: rng.gen_range(1..=64),
        max_bytes_per_append: 4096,
        max_inflight: rng.gen_range(1..=8),
        pre_vote: rng.gen_bool(0.5),
        check_quorum: rng.gen_bool(0.5),
        // Snapshots and compaction in half the seeds: small thresholds and trailing windows,
        // small chunks, so InstallSnapshot crosses the lossy network in many pieces.
        snapshot_threshold: if rng.gen_bool(0.5) {
            rng.gen_range(5..=60)
        } else {
            0
        },
        snapshot_log_bytes: if rng.gen_bool(0.1) {
            rng.gen_range(500..=3000)
        } else {
            0
        },
        snapshot_trailing: rng.gen_range(0..=10),
        snapshot_chunk_bytes: rng.gen_range(64..=2048),
        ..Config::default()
    };
    let faults = Faults::random(&mut rng);
    // A tiny log cache in a third of the seeds: applied entries leave memory at once and
    // leaders read them back from disk for lagging followers.
    if rng.gen_bool(0.33) {
        cfg.log_cache_bytes = rng.gen_range(0..=2000);
    }
    let durable_state_machines = rng.gen_bool(0.3);
    // Membership changes in a third of the seeds, with one or two spare nodes to add; only
    // where PreVote or CheckQuorum keeps a removed node from disrupting the cluster
    // (dissertation 4.2.3).
    let mut faults = faults;
    let mut spares = Vec::new();
    if rng.gen_bool(0.33) && (cfg.pre_vote || cfg.check_quorum) {
        faults.membership = rng.gen_range(0.005..0.05);
        let n = membership.members().len() as u64;
        spares = (n + 1..=n + rng.gen_range(1..=2)).map(NodeId).collect();
    }
    // Reads: ReadIndex at the leader, follower reads, or lease reads (at the leader or via
    // followers) under clock drift within the configured bound.
    let (follower_reads, lease) = match rng.gen_range(0..10) {
        0..=3 => (false, false),
        4..=6 => (true, false),
        _ => (rng.gen_bool(0.5), true),
    };
    if lease {
        cfg.check_quorum = true;
        cfg.pre_vote = true;
        cfg.lease_drift_ticks = rng.gen_range(1..=3);
    }
    if lease || follower_reads {
        // Where a stale read would come from: a leader cut off while a new one is
        // elected fast (short delays) and reads keep arriving at both.
        faults.isolate_leader = rng.gen_range(0.0..0.02);
        faults.max_delay = rng.gen_range(1..=3);
        faults.read = rng.gen_range(0.05..0.5);
    }
    // Clocks drift (up to 5% apart) in every lease seed and a fifth of the others.
    let drift = lease || rng.gen_bool(0.2);
    let ids = membership
        .members()
        .into_iter()
        .chain(spares.iter().copied());
    let rates: Vec<(NodeId, u64, u64)> = ids
        .map(|id| {
            let rate = if drift {
                rng.gen_range(950..=1050)
            } else {
                1000
            };
            (id, rate, rng.gen_range(0..1000))
        })
        .collect();
    let mut sim = Sim::with_spares(seed, membership, &spares, cfg, faults);
    sim.durable_state_machines = durable_state_machines;
    sim.follower_reads = follower_reads;
    if lease {
        sim.read_policy = raft_core::ReadPolicy::Lease;
    }
    for (id, rate, phase) in rates {
        sim.set_clock(id, rate, phase);
    }
    sim.require_addresses = true;
    for _ in 0..steps {
        sim.step_once(true);
    }
    sim.calm();
    let budget = sim.convergence_budget(CONVERGE_STEPS);
    match sim.converge(budget) {
        Ok(k) if std::env::var("RAFT_SIM_VERBOSE").is_ok() => {
            println!(
                "seed {seed}: converged in {k} steps; {:?} {:?}",
                sim.cfg, sim.faults
            )
        }
        Ok(_) => {}
        Err(stuck) => panic!("{stuck}"),
    }
    Outcome {
        acked: sim.acked.len() as u64,
        reads: sim.reads_served,
        lease_reads: sim.lease_reads,
        follower_reads: sim.follower_reads_served,
        stops: sim.stops.len() as u64,
        built: sim.snapshots_built,
        installed: sim.snapshots_installed,
        entries_read: sim.entries_read,
        changes: sim.membership_changes,
    }
}

#[test]
fn safety_and_liveness_hold_under_random_faults() {
    let steps = env_u64("RAFT_SIM_STEPS", 1000);
    if let Ok(seed) = std::env::var("RAFT_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RAFT_SIM_SEED is a number");
        let out = run_seed(seed, steps);
        println!(
            "simulation: seed {seed} x {steps} steps: 0 violations, {} commands acknowledged, {} reads served ({} from a lease, {} at followers), {} fail-stops on write errors, {} snapshots taken, {} installed, {} log reads from disk, {} membership changes",
            out.acked, out.reads, out.lease_reads, out.follower_reads, out.stops, out.built, out.installed, out.entries_read, out.changes
        );
        return;
    }
    let seeds = env_u64("RAFT_SIM_SEEDS", 20_000);
    let base = env_u64("RAFT_SIM_BASE_SEED", 0);
    let next = AtomicU64::new(0);
    let acked = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let lease_reads = AtomicU64::new(0);
    let follower_reads = AtomicU64::new(0);
    let stops = AtomicU64::new(0);
    let built = AtomicU64::new(0);
    let installed = AtomicU64::new(0);
    let entries_read = AtomicU64::new(0);
    let changes = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= seeds {
                    return;
                }
                let out = run_seed(base + i, steps);
                acked.fetch_add(out.acked, Ordering::Relaxed);
                stops.fetch_add(out.stops, Ordering::Relaxed);
                built.fetch_add(out.built, Ordering::Relaxed);
                installed.fetch_add(out.installed, Ordering::Relaxed);
                entries_read.fetch_add(out.entries_read, Ordering::Relaxed);
                changes.fetch_add(out.changes, Ordering::Relaxed);
                reads.fetch_add(out.reads, Ordering::Relaxed);
                lease_reads.fetch_add(out.lease_reads, Ordering::Relaxed);
                follower_reads.fetch_add(out.follower_reads, Ordering::Relaxed);
            });
        }
    });
    println!(
        "simulation: {seeds} seeds from {base} x {steps} steps: 0 violations, {} commands acknowledged, {} reads served ({} from a lease, {} at followers), {} fail-stops on write errors, {} snapshots taken, {} installed from a leader, {} log reads from disk, {} membership changes",
        acked.into_inner(),
        reads.into_inner(),
        lease_reads.into_inner(),
        follower_reads.into_inner(),
        stops.into_inner(),
        built.into_inner(),
        installed.into_inner(),
        entries_read.into_inner(),
        changes.into_inner()
    );
}
