//! What a backend author's own benchmark binary looks like: the whole `raft-bench` tool,
//! with their store as one more `--storage` choice beside `mem` and `redb`, and no edit to
//! this workspace. Here the "author's store" is the memory one, opened per node in the
//! directory `raft-bench` hands over:
//!
//! `cargo run --release -p raft-benches --example my_bench -- --storage mystore,mem --clients 1,32`

use raft_benches::{cli, StorageFactory, Stores};

const MY_STORE: StorageFactory = |_node_dir| {
    Box::pin(async {
        Ok(Stores::new(
            raft_storage::MemLogStore::new(),
            raft_storage::MemSnapshotStore::default(),
        ))
    })
};

fn main() -> std::process::ExitCode {
    cli::main_with(&[("mystore", MY_STORE)])
}
