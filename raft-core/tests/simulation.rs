//! Deterministic simulation: random partitions, crashes, restarts, loss, delay, reordering
//! and duplication, with Raft's five safety properties checked after every step.
//!
//! `RAFT_SIM_SEEDS` (default 2000) and `RAFT_SIM_STEPS` (default 1000) set the size of the
//! run; `RAFT_SIM_SEED=N` replays one seed.

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};

use raft_core::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::{Faults, Sim};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Steps a quiet cluster may take to elect a leader and catch every node up.
const CONVERGE_STEPS: u64 = 2000;

struct Outcome {
    leaders: u64,
    acked: u64,
    reads: u64,
}

fn run_seed(seed: u64, steps: u64) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nodes = if rng.gen_bool(0.5) { 3 } else { 5 };
    let cfg = Config {
        election_timeout_min: 10,
        election_timeout_max: 20,
        heartbeat_interval: 2,
        max_entries_per_append: rng.gen_range(1..=64),
        max_bytes_per_append: 4096,
        max_inflight: rng.gen_range(1..=8),
        pre_vote: rng.gen_bool(0.5),
        check_quorum: rng.gen_bool(0.5),
        ..Config::default()
    };
    let faults = Faults::random(&mut rng);
    let mut sim = Sim::new(seed, nodes, cfg, faults);
    for _ in 0..steps {
        sim.step_once(true);
    }
    sim.calm();
    match sim.converge(CONVERGE_STEPS) {
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
        leaders: sim.nodes.len() as u64,
        acked: sim.acked.len() as u64,
        reads: sim.reads_served,
    }
}

#[test]
fn safety_and_liveness_hold_under_random_faults() {
    let steps = env_u64("RAFT_SIM_STEPS", 1000);
    if let Ok(seed) = std::env::var("RAFT_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RAFT_SIM_SEED is a number");
        let out = run_seed(seed, steps);
        println!(
            "simulation: seed {seed} x {steps} steps: 0 violations, {} commands acknowledged, {} reads served",
            out.acked, out.reads
        );
        return;
    }
    let seeds = env_u64("RAFT_SIM_SEEDS", 2000);
    let base = env_u64("RAFT_SIM_BASE_SEED", 0);
    let next = AtomicU64::new(0);
    let acked = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= seeds {
                    return;
                }
                let out = run_seed(base + i, steps);
                let _ = out.leaders;
                acked.fetch_add(out.acked, Ordering::Relaxed);
                reads.fetch_add(out.reads, Ordering::Relaxed);
            });
        }
    });
    println!(
        "simulation: {seeds} seeds x {steps} steps: 0 violations, {} commands acknowledged, {} reads served",
        acked.into_inner(),
        reads.into_inner()
    );
}
