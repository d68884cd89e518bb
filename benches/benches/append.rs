//! `LogStore::append` throughput of each store, beside the physical baseline: a raw write +
//! fdatasync of the same bytes to a file in the same directory, measured in the same run.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft_benches::{bench_dir, STORAGES};
use raft_core::{Entry, EntryPayload, LogId};

fn entries(from: u64, n: usize, size: usize) -> Vec<Entry> {
    let data = Bytes::from(vec![0x5a; size]);
    (0..n as u64)
        .map(|i| Entry {
            log_id: LogId::new(1, from + i),
            payload: EntryPayload::Command(data.clone()),
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = bench_dir();
    std::fs::create_dir_all(&root).expect("bench dir");
    for size in [256usize, 4096] {
        let mut group = c.benchmark_group(format!("append/{size}B"));
        group
            .measurement_time(Duration::from_secs(3))
            .sample_size(10);
        for batch in [1usize, 16, 64, 256] {
            group.throughput(Throughput::Elements(batch as u64));
            for (name, open) in STORAGES {
                let dir = tempfile::tempdir_in(&root).expect("temp dir");
                let stores = rt
                    .block_on(open(dir.path().to_path_buf()))
                    .expect("open store");
                let mut next = 1u64;
                group.bench_with_input(BenchmarkId::new(*name, batch), &batch, |b, &batch| {
                    b.iter_custom(|iters| {
                        let batches: Vec<Vec<Entry>> = (0..iters)
                            .map(|i| entries(next + i * batch as u64, batch, size))
                            .collect();
                        next += iters * batch as u64;
                        let start = Instant::now();
                        rt.block_on(async {
                            for es in &batches {
                                stores.log.append(es).await.expect("append");
                            }
                        });
                        start.elapsed()
                    })
                });
            }
            // The physical baseline: the same bytes, written and fdatasync'ed once per batch.
            let dir = tempfile::tempdir_in(&root).expect("temp dir");
            let mut file =
                std::fs::File::create(dir.path().join("baseline")).expect("baseline file");
            let bytes = vec![0x5a; size * batch];
            group.bench_with_input(
                BenchmarkId::new("fdatasync-baseline", batch),
                &batch,
                |b, _| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            file.write_all(&bytes).expect("write");
                            file.sync_data().expect("fdatasync");
                        }
                        start.elapsed()
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, append);
criterion_main!(benches);
