//! The `raft-bench` command line, as a library: runs every combination of storage ×
//! transport × nodes × clients and prints one table of commit throughput, latency
//! percentiles, CPU time and peak memory.
//!
//! Each combination runs in a child process of its own (this same executable, re-run with
//! `--single`), so its CPU time and peak RSS are its own and one run's memory never inflates
//! the next.
//!
//! A backend author gets the whole tool with their store beside `mem` and `redb`, from their
//! own crate, with no edit to this workspace: a binary whose `main` is
//!
//! ```no_run
//! use raft_benches::{cli, Stores, StorageFactory};
//!
//! // Opens the author's stores in a fresh directory for one node (here: the memory ones).
//! const MINE: StorageFactory = |_dir| {
//!     Box::pin(async {
//!         Ok(Stores::new(
//!             raft_storage::MemLogStore::new(),
//!             raft_storage::MemSnapshotStore::default(),
//!         ))
//!     })
//! };
//!
//! fn main() -> std::process::ExitCode {
//!     cli::main_with(&[("mystore", MINE)])
//! }
//! ```
//!
//! and then `cargo run --release --bin my-bench -- --storage mystore,redb --clients 1,32`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::{
    bench_dir, disk_baseline, run_load, store_baseline, BenchCluster, StorageFactory,
    TransportKind, STORAGES,
};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(
    name = "raft-bench",
    about = "Compare Raft commit throughput across storage and transport choices"
)]
struct Args {
    /// Storage choices, comma-separated (built in: mem, redb; plus any the binary adds).
    #[arg(long, default_value = "mem,redb", value_delimiter = ',')]
    storage: Vec<String>,
    /// Transport choices, comma-separated: mem, tcp, tls.
    #[arg(long, default_value = "mem,tcp", value_delimiter = ',')]
    transport: Vec<String>,
    /// Cluster sizes, comma-separated.
    #[arg(long, default_value = "3", value_delimiter = ',')]
    nodes: Vec<u64>,
    /// Concurrent proposers, comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// How long each combination runs, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Command size in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: run one combination in this process and print its result as JSON.
    #[arg(long, hide = true)]
    single: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in '{s}' (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// One combination's measurements.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    storage: String,
    transport: String,
    nodes: u64,
    clients: usize,
    payload: usize,
    ops: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
    /// Mean entries per durable log write on the leader, during the load.
    #[serde(default)]
    leader_entries_per_write: f64,
    /// The same over all followers.
    #[serde(default)]
    follower_entries_per_write: f64,
}

impl Row {
    /// A row of what `r` measured; the process-wide columns start at zero.
    fn measured(
        storage: &str,
        transport: &str,
        nodes: u64,
        clients: usize,
        payload: usize,
        r: &crate::LoadResult,
    ) -> Row {
        Row {
            storage: storage.into(),
            transport: transport.into(),
            nodes,
            clients,
            payload,
            ops: r.ops,
            ops_per_sec: r.ops_per_sec(),
            p50_ms: r.quantile_ms(0.5),
            p99_ms: r.quantile_ms(0.99),
            p999_ms: r.quantile_ms(0.999),
            errors: r.errors,
            cpu_seconds: 0.0,
            peak_rss_mb: 0.0,
            leader_entries_per_write: 0.0,
            follower_entries_per_write: 0.0,
        }
    }
}

/// User + system CPU seconds of this process (from /proc; clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run_single(a: &Args, storages: &Storages<'_>) -> Result<Row, String> {
    let (s, t, n, c) = (&a.storage[0], &a.transport[0], a.nodes[0], a.clients[0]);
    let factory = storages
        .find(s)
        .ok_or_else(|| format!("unknown storage '{s}'"))?;
    let kind = TransportKind::parse(t).ok_or_else(|| format!("unknown transport '{t}'"))?;
    let cluster = BenchCluster::start(n, factory, kind).await?;
    let leader = cluster.leader().await?;
    let before: Vec<(u64, u64)> = cluster.logs.iter().map(|l| l.read()).collect();
    let cpu0 = cpu_seconds();
    let r = run_load(&leader, c, a.duration, None, a.payload).await;
    let cpu = cpu_seconds() - cpu0;
    let after: Vec<(u64, u64)> = cluster.logs.iter().map(|l| l.read()).collect();
    let is_leader: Vec<bool> = cluster
        .nodes
        .iter()
        .map(|n| n.id() == leader.id())
        .collect();
    let per_write = |pick: bool| {
        let (mut writes, mut entries) = (0u64, 0u64);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if is_leader[i] == pick {
                writes += a.0 - b.0;
                entries += a.1 - b.1;
            }
        }
        if writes == 0 {
            0.0
        } else {
            entries as f64 / writes as f64
        }
    };
    let (leader_epw, follower_epw) = (per_write(true), per_write(false));
    cluster.shutdown().await;
    Ok(Row {
        cpu_seconds: cpu,
        peak_rss_mb: peak_rss_mb(),
        leader_entries_per_write: leader_epw,
        follower_entries_per_write: follower_epw,
        ..Row::measured(s, t, n, c, a.payload, &r)
    })
}

/// The storage choice `s` alone, `n` writers at once, each writing `c` entries per write
/// (see [`store_baseline`]): the row "`s` / alone", the ceiling of the cluster rows with
/// `n` nodes and `c` clients on the same storage.
fn store_row(a: &Args, storages: &Storages<'_>, s: &str, n: u64, c: usize) -> Option<Row> {
    eprintln!(
        "[baseline] {n} writers appending {c} entries of {} B per write to {s} for {:?} ...",
        a.payload, a.duration
    );
    let open = storages.find(s)?;
    let dir = bench_dir().join(format!("store-baseline-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("    baseline failed: {e}"))
        .ok()?;
    let measured = rt.block_on(store_baseline(
        open, &dir, n as usize, c, a.payload, a.duration,
    ));
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    match measured {
        Ok(r) => Some(Row {
            leader_entries_per_write: c as f64,
            ..Row::measured(s, "alone", n, c, a.payload, &r)
        }),
        Err(e) => {
            eprintln!("    baseline failed: {e}");
            None
        }
    }
}

fn run_child(a: &Args, s: &str, t: &str, n: u64, c: usize) -> Result<Row, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args(["--single", "--storage", s, "--transport", t])
        .args(["--nodes", &n.to_string(), "--clients", &c.to_string()])
        .args(["--duration", &format!("{}ms", a.duration.as_millis())])
        .args(["--payload", &a.payload.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad child output: {e}"))
}

/// The built-in storage choices and the caller's.
struct Storages<'a> {
    extra: &'a [(&'static str, StorageFactory)],
}

impl Storages<'_> {
    fn all(&self) -> impl Iterator<Item = &(&'static str, StorageFactory)> {
        STORAGES.iter().chain(self.extra.iter())
    }

    fn find(&self, name: &str) -> Option<StorageFactory> {
        self.all().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

/// Runs `raft-bench` with the built-in storage choices (`mem`, `redb`).
pub fn main() -> ExitCode {
    main_with(&[])
}

/// Runs `raft-bench` with `extra` storage choices beside the built-in ones, each a name for
/// `--storage` and a factory that opens one node's stores in a fresh directory. Parses the
/// process's command line; returns the exit code for `main` to return.
pub fn main_with(extra: &[(&'static str, StorageFactory)]) -> ExitCode {
    let storages = Storages { extra };
    let a = Args::parse();
    if a.single {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("raft-bench: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(run_single(&a, &storages)) {
            Ok(row) => {
                println!("{}", serde_json::to_string(&row).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    for s in &a.storage {
        if storages.find(s).is_none() {
            let known: Vec<&str> = storages.all().map(|(n, _)| *n).collect();
            eprintln!(
                "raft-bench: unknown storage '{s}'; known: {}",
                known.join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    for t in &a.transport {
        if TransportKind::parse(t).is_none() {
            eprintln!("raft-bench: unknown transport '{t}'; known: mem, tcp, tls");
            return ExitCode::FAILURE;
        }
    }
    let combos: Vec<(String, String, u64, usize)> = a
        .storage
        .iter()
        .flat_map(|s| a.transport.iter().map(move |t| (s.clone(), t.clone())))
        .flat_map(|(s, t)| a.nodes.iter().map(move |&n| (s.clone(), t.clone(), n)))
        .flat_map(|(s, t, n)| a.clients.iter().map(move |&c| (s.clone(), t.clone(), n, c)))
        .collect();
    let mut rows = Vec::new();
    let mut failed = false;
    // The disk alone, once per cluster size, when some storage is durable.
    let mut baselines = std::collections::BTreeMap::new();
    if a.storage.iter().any(|s| s != "mem") {
        for &n in &a.nodes {
            eprintln!(
                "[baseline] {n} writers of {} B with write + fdatasync for {:?} ...",
                a.payload, a.duration
            );
            let dir = bench_dir();
            let _ = std::fs::create_dir_all(&dir);
            match disk_baseline(&dir, n as usize, a.payload, a.duration) {
                Ok(r) => {
                    baselines.insert(n, r.quantile_ms(0.5));
                    rows.push(Row {
                        leader_entries_per_write: 1.0,
                        ..Row::measured("disk", "-", n, n as usize, a.payload, &r)
                    })
                }
                Err(e) => eprintln!("    baseline failed: {e}"),
            }
            for s in a.storage.iter().filter(|s| *s != "mem") {
                for &c in &a.clients {
                    if let Some(row) = store_row(&a, &storages, s, n, c) {
                        rows.push(row);
                    }
                }
            }
        }
    }
    for (i, (s, t, n, c)) in combos.iter().enumerate() {
        eprintln!(
            "[{}/{}] storage={s} transport={t} nodes={n} clients={c} for {:?} ...",
            i + 1,
            combos.len(),
            a.duration
        );
        match run_child(&a, s, t, *n, *c) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("    failed: {e}");
                failed = true;
            }
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:<8} {:<9} {:>5} {:>7} {:>12} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>14}",
            "storage",
            "transport",
            "nodes",
            "clients",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "cpu s",
            "peak MB",
            "ent/wr L",
            "ent/wr F",
            "p50/disk",
            "cpu us/op/node"
        );
        for r in &rows {
            // A durable row's p50 against the disk's, measured in the same run.
            let vs_disk = match baselines.get(&r.nodes) {
                Some(&disk) if r.storage != "mem" && r.storage != "disk" && disk > 0.0 => {
                    format!("{:.2}x", r.p50_ms / disk)
                }
                _ => "-".into(),
            };
            // The baselines run in this process, beside others: they have no CPU, memory
            // or follower columns of their own.
            let cluster = r.cpu_seconds > 0.0;
            let shown = |v: f64, decimals: usize| match cluster {
                true => format!("{v:.decimals$}"),
                false => "-".into(),
            };
            println!(
                "{:<8} {:<9} {:>5} {:>7} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>9} {:>8.1} {:>8} {:>8} {:>14}",
                r.storage,
                r.transport,
                r.nodes,
                r.clients,
                r.ops_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                shown(r.cpu_seconds, 2),
                shown(r.peak_rss_mb, 1),
                r.leader_entries_per_write,
                shown(r.follower_entries_per_write, 1),
                vs_disk,
                // The whole process (every node and the load generator) per committed
                // entry, shared out over the nodes.
                shown(r.cpu_seconds * 1e6 / r.ops.max(1) as f64 / r.nodes as f64, 1)
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
