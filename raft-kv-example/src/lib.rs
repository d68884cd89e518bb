//! # raft-kv-example
//!
//! A replicated key-value server on `raft-core`: redb storage, the TCP transport, and the
//! Redis protocol (RESP2, and RESP3 after `HELLO 3`) for clients, so `redis-cli`,
//! `redis-benchmark` and Redis client libraries (redis-py, the `redis` crate) work unchanged.
//!
//! - [`kv`]: the deterministic state machine, with exactly-once client sessions and writes
//!   stamped with the leader's clock;
//! - [`commands`]: the command table; each data type's module parses and applies its
//!   commands (strings, keys and expiry, hashes, MULTI/EXEC);
//! - [`db`]: the keyspace: typed values, expiry by stamped time, WATCH versions, SCAN order;
//! - [`server`]: the RESP front end (connections, pipelines, transactions, HELLO); writes
//!   go through the log, reads are linearizable (ReadIndex), followers forward to the leader;
//! - [`client`]: a Rust client that follows leader changes and retries exactly once;
//! - [`admin`]: the `RAFT.*` membership commands and members' addresses;
//! - [`identity`]: which cluster and node a data directory belongs to;
//! - [`runner`]: one node process, a local cluster of child processes, and the demo.
#![deny(missing_docs)]

pub mod admin;
pub mod client;
pub mod commands;
pub mod db;
pub mod http;
pub mod identity;
pub mod kv;
pub mod resp;
pub mod runner;
pub mod security;
pub mod server;
pub mod view;

pub use client::KvClient;
pub use kv::KvStateMachine;
