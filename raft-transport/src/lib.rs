//! # raft-transport
//!
//! Implementations of `raft-core`'s [`Transport`](raft_core::Transport) seam:
//! - [`mem`]: an in-memory network for many nodes in one process, with partitions, loss,
//!   delay, reordering and duplication, for tests and simulations;
#![deny(missing_docs)]

pub mod mem;

pub use mem::{LinkFaults, MemNetwork, MemTransport};
