//! # raft-kv-example
//!
//! A replicated key-value server on `raft-core`: redb storage, the TCP transport, and the
//! Redis protocol (RESP2) for clients, so `redis-cli`, `redis-benchmark` and Redis client
//! libraries work unchanged.
//!
//! - [`kv`]: the deterministic state machine, with exactly-once client sessions;
//! - [`server`]: the RESP2 front end; writes go through the log, reads are linearizable
//!   (ReadIndex), followers forward to the leader;
//! - [`client`]: a Rust client that follows leader changes and retries exactly once;
//! - [`admin`]: the `RAFT.*` membership commands and members' addresses;
//! - [`identity`]: which cluster and node a data directory belongs to;
//! - [`runner`]: one node process, a local cluster of child processes, and the demo.
#![deny(missing_docs)]

pub mod admin;
pub mod client;
pub mod commands;
pub mod db;
pub mod identity;
pub mod kv;
pub mod resp;
pub mod runner;
pub mod server;

pub use client::KvClient;
pub use kv::KvStateMachine;
