//! # raft-storage
//!
//! Reference implementations of `raft-core`'s storage seams, and the conformance suite
//! every implementation (ours and yours) must pass:
//! - [`mem`]: [`MemLogStore`] and [`MemSnapshotStore`], in memory, for tests and for
//!   deployments that do not need durability;
//! - `conformance` (coming with the redb store): run it against your own backend.
#![deny(missing_docs)]

pub mod contract;
pub mod mem;

pub use mem::{MemLogStore, MemSnapshotStore};
