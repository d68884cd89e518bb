//! The sans-IO core alone, stepping a steady replication workload: three cores wired in
//! memory, writes durable at once. Separates the algorithm's cost from I/O.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_benches::core_loop::CoreCluster;

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/3-nodes/256B");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut cluster = CoreCluster::new();
        let data = Bytes::from(vec![1u8; 256]);
        group.bench_with_input(
            BenchmarkId::new("propose-commit-apply", batch),
            &batch,
            |b, &batch| b.iter(|| cluster.propose(vec![data.clone(); batch])),
        );
    }
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
