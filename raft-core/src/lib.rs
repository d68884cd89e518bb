//! # raft-core
//!
//! The Raft consensus algorithm as a sans-IO core ([`RaftCore`]), the four seams through
//! which it meets the world ([`LogStore`], [`SnapshotStore`], [`StateMachine`],
//! [`Transport`]), and an async node on tokio ([`RaftNode`]) that drives a core with them.
//!
//! The core is synchronous and deterministic: it takes time as ticks and randomness from a
//! seeded RNG, and returns [`Action`]s instead of doing I/O. Every Raft rule lives there.
//! The node executes those actions: it persists, sends, applies, and answers clients.
#![deny(missing_docs)]

pub mod app;
pub mod config;
pub mod error;
mod log;
pub mod message;
pub mod metrics;
pub mod node;
mod progress;
mod quorum;
pub mod raft;
pub mod read;
pub mod session;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod types;

pub use config::Config;
pub use error::{ConfigError, FatalError, RaftError, StateMachineError, StorageError};
pub use log::EntryMeta;
pub use message::{Message, MessageBody};
pub use node::{LeaderView, RaftNode, Seams, Status};
pub use progress::ReplicationState;
pub use raft::{
    Action, ChangeError, CoreStatus, InitialState, MembershipChange, NotLeader, PersistOp,
    ProposeError, RaftCore, TransferError, WriteId,
};
pub use read::{ReadCounts, ReadId, ReadPath, ReadPolicy};
pub use state_machine::StateMachine;
pub use storage::{LogState, LogStore, LogWrite, SnapshotStore, SnapshotWriter};
pub use transport::{Inbox, Transport};
pub use types::{
    Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, Role, SnapshotMeta, Term,
    ENTRY_OVERHEAD,
};
