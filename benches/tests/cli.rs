//! `raft-bench` runs combinations in child processes and prints valid JSON.

#[test]
fn raft_bench_prints_valid_json_for_every_combination() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-bench"))
        .args([
            "--storage",
            "mem,redb",
            "--transport",
            "mem",
            "--nodes",
            "3",
            "--clients",
            "1,8",
        ])
        .args(["--duration", "300ms", "--json"])
        .output()
        .expect("run raft-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let rows = rows.as_array().expect("an array of rows");
    // The disk baseline and redb alone at each client count (redb is durable), then the
    // four combinations.
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[0]["storage"], "disk", "{}", rows[0]);
    assert_eq!(rows[0]["nodes"], 3, "one writer per node");
    for (r, clients) in rows[1..3].iter().zip([1, 8]) {
        assert_eq!(
            (&r["storage"], &r["transport"]),
            (&"redb".into(), &"alone".into())
        );
        assert_eq!(r["nodes"], 3, "one writer per node: {r}");
        // As many entries per write as there are clients: the most a node's group
        // commit could gather.
        assert_eq!(r["clients"], clients, "{r}");
        assert_eq!(r["leader_entries_per_write"], clients as f64, "{r}");
    }
    for r in rows {
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{r}"
        );
    }
    for r in &rows[3..] {
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0, "{r}");
        // Entries went through the leader's log writes (a purge writes none, so the mean
        // can dip just below 1 at one client).
        assert!(r["leader_entries_per_write"].as_f64().unwrap() > 0.5, "{r}");
    }
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("[4/4]"), "progress lines: {progress}");
}

#[test]
fn raft_bench_refuses_an_unknown_storage_with_the_known_ones() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raft-bench"))
        .args(["--storage", "nosuch", "--duration", "100ms"])
        .output()
        .expect("run raft-bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: mem, redb"));
}

#[test]
fn an_outside_binary_benchmarks_its_own_store_beside_the_built_in_ones() {
    // `examples/my_bench.rs` is what a backend author writes in their own crate.
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bench = dir.join("examples").join("my_bench");
    if !bench.exists() {
        // `cargo test` builds examples unless the run is filtered to one test target.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "-q", "-p", "raft-benches", "--example", "my_bench"])
            .status()
            .expect("run cargo");
        assert!(built.success(), "cargo build --example my_bench failed");
    }
    let out = std::process::Command::new(&bench)
        .args(["--storage", "mystore,mem", "--transport", "mem"])
        .args(["--clients", "4", "--duration", "300ms", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bench.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let names: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["storage"].as_str().expect("storage"))
        .collect();
    // `mystore` counts as durable, so the run starts with the disk baseline and the
    // store alone.
    assert_eq!(names, ["disk", "mystore", "mystore", "mem"]);
    let refused = std::process::Command::new(&bench)
        .args(["--storage", "nosuch", "--duration", "100ms"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("known: mem, redb, mystore"));
}
