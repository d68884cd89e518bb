//! # raft-transport
//!
//! Implementations of `raft-core`'s [`Transport`](raft_core::Transport) seam:
//! - [`mem`]: an in-memory network for many nodes in one process, with partitions, loss,
//!   delay, reordering and duplication, for tests and simulations;
//! - [`tcp`]: TCP on tokio, with length-prefixed checksummed postcard [`frame`]s, a
//!   cluster-id handshake, bounded per-peer queues, write coalescing and reconnection
//!   with backoff.
#![deny(missing_docs)]

pub mod frame;
pub mod mem;
pub mod tcp;

pub use mem::{LinkFaults, MemNetwork, MemTransport};
pub use tcp::{TcpConfig, TcpStats, TcpTransport};
