//! # raft-transport
//!
//! Implementations of `raft-core`'s [`Transport`](raft_core::Transport) seam:
//! - [`mem`]: an in-memory network for many nodes in one process, with partitions, loss,
//!   delay, reordering and duplication, for tests and simulations;
//! - [`tcp`]: TCP on tokio, with length-prefixed checksummed postcard [`frame`]s, a
//!   cluster-id handshake, bounded per-peer queues, write coalescing and reconnection
//!   with backoff;
//! - [`admission`]: bounds on connections still in their handshake, in all and per address;
//! - [`link`]: one connection, plain TCP or TLS, as one stream type;
//! - [`tls`]: mutual TLS for the TCP transport, each member's certificate naming its node id;
//! - [`start`]: one call to run a node on TCP ([`TcpNode::start`]), its peers taken from
//!   the membership's addresses;
//! - [`client`]: clients on the same port: [`client::RaftClient`] finds the leader and
//!   retries, [`client::AppClient`] speaks an application's types exactly once.
#![deny(missing_docs)]

pub mod admission;
pub mod client;
pub mod frame;
pub mod link;
pub mod mem;
pub mod start;
pub mod tcp;
pub mod tls;

pub use mem::{LinkFaults, MemNetwork, MemTransport};
pub use start::{StartError, Stores, TcpNode};
pub use tcp::{TcpConfig, TcpStats, TcpTransport};
