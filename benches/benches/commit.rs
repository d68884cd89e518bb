//! Commit throughput of an in-process 3-node cluster: proposals committed and applied per
//! second, for each storage × transport choice and 1, 16 and 256 concurrent proposers.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_benches::{run_load, BenchCluster, TransportKind, STORAGES};

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("commit/3-nodes/256B");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .throughput(Throughput::Elements(1));
    for (storage_name, storage) in STORAGES {
        for transport in [TransportKind::Mem, TransportKind::Tcp, TransportKind::Tls] {
            let cluster = rt
                .block_on(BenchCluster::start(3, *storage, transport))
                .expect("cluster");
            let leader = rt.block_on(cluster.leader()).expect("leader");
            for clients in [1usize, 16, 256] {
                let id = format!("{storage_name}+{}", transport.name());
                group.bench_with_input(BenchmarkId::new(id, clients), &clients, |b, &clients| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        let r = rt.block_on(run_load(
                            &leader,
                            clients,
                            Duration::from_secs(60),
                            Some(iters),
                            256,
                        ));
                        assert_eq!(r.ops, iters, "{} proposals failed", r.errors);
                        start.elapsed()
                    })
                });
            }
            rt.block_on(cluster.shutdown());
        }
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
