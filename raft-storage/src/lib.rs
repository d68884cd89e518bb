//! # raft-storage
//!
//! Reference implementations of `raft-core`'s storage seams, and the conformance suite
//! every implementation (ours and yours) must pass:
//! - [`mem`]: [`MemLogStore`] and [`MemSnapshotStore`], in memory, for tests and for
//!   deployments that do not need durability;
//! - `redb_log`: `RedbLogStore`, a durable log on redb with a CRC on every entry (the
//!   `redb` feature, on by default; without it the crate builds no database, for backend
//!   authors who only want the suite);
//! - [`snapshot_files`]: [`FileSnapshotStore`], durable snapshots as checksummed files
//!   finished by an atomic rename;
//! - [`conformance`]: the contracts as executable cases; run them against your own
//!   backend with one call.
//!
//! ## Writing a backend
//!
//! 1. Implement [`raft_core::LogStore`] (and [`raft_core::SnapshotStore`], or use
//!    [`FileSnapshotStore`]). The whole contract is in those traits' rustdoc: durable on
//!    return, one change at a time, the byte budget of `entries`, index 0, purge and
//!    retention, what may block. [`contract`] holds the argument checks every store shares
//!    (append contiguity, truncating into the purged prefix, reads of purged indexes, the
//!    byte [`contract::Budget`]): call them rather than restating the rules. Then, if your
//!    store can, override [`LogStore::write_batch`](raft_core::LogStore::write_batch): the
//!    node hands each group commit (term change, truncation, appends) to it in one call,
//!    and one transaction with one fsync is what makes group commit cheap; the default
//!    calls the single-op methods, one fsync each.
//! 2. Run [`conformance::run`] with a [`conformance::StoreHarness`] that makes fresh
//!    stores, declares whether they are durable, and (for a durable store) reopens them.
//!    A failed case names the rule and lists the operations that led to it.
//! 3. Run the crash harness, [`conformance::crash`]: your store in a child process, killed
//!    with SIGKILL at seeded moments, every acknowledged write checked after reopening
//!    (and, with [`conformance::crash::Plan::atomic_batches`], every `write_batch` all or
//!    nothing); and its sync audit ([`conformance::crash::audit_syncs`]), which catches a durable
//!    call that returned without an `fsync`.
//! 4. Compare it with `mem` and `redb` in `raft-bench`, from your own crate:
//!    `raft_benches::cli::main_with(&[("mystore", factory)])`.
//!
//! `examples/journal_log.rs` does all of this in about 200 lines (its tests are
//! `tests/example_backend.rs`). Depend on this crate with `default-features = false` to
//! get the suite without compiling redb.
#![deny(missing_docs)]

pub mod conformance;
pub mod contract;
pub mod mem;
#[cfg(feature = "redb")]
pub mod redb_log;
pub mod snapshot_files;

#[cfg(feature = "redb")]
use std::path::Path;

pub use mem::{MemLogStore, MemSnapshotStore};
pub use raft_core::StorageError;
#[cfg(feature = "redb")]
pub use redb_log::RedbLogStore;
pub use snapshot_files::FileSnapshotStore;

/// File name of the redb log inside a node's data directory.
#[cfg(feature = "redb")]
pub const LOG_FILE: &str = "raft-log.redb";
/// Directory of snapshots inside a node's data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

#[cfg(feature = "redb")]
/// Opens (creating if needed) a node's durable stores in `data_dir`: the redb log in
/// [`LOG_FILE`] and snapshots in [`SNAPSHOT_DIR`], keeping the latest `keep_snapshots`.
pub async fn open_data_dir(
    data_dir: impl AsRef<Path>,
    keep_snapshots: usize,
) -> Result<(RedbLogStore, FileSnapshotStore), StorageError> {
    let dir = data_dir.as_ref();
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        StorageError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: cannot create the data directory: {e}", dir.display()),
        ))
    })?;
    let log = RedbLogStore::open(dir.join(LOG_FILE)).await?;
    let snapshots = FileSnapshotStore::open(dir.join(SNAPSHOT_DIR), keep_snapshots).await?;
    Ok((log, snapshots))
}
