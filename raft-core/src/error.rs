//! Errors of the core and the node.

use crate::types::{LogId, NodeId};

/// A configuration that cannot work; the message says which setting to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {reason}")]
pub struct ConfigError {
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// An error reported by a storage implementation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Stored data failed its checksum or could not be decoded.
    #[error("corrupt data in {location}: {detail}")]
    Corrupt {
        /// The file, table or index where the corruption was found.
        location: String,
        /// What was wrong.
        detail: String,
    },
    /// The caller asked for something the contract forbids (a gap, a purged index, ...).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// The underlying device or engine failed.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// Any other backend-specific failure.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// An error reported by a state machine.
#[derive(Debug, thiserror::Error)]
#[error("state machine error: {0}")]
pub struct StateMachineError(pub String);

/// Why a client request to a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// This node is not the leader; retry on `leader_hint` if known.
    #[error("not the leader{}", leader_hint.map(|l| format!("; try the leader {l}")).unwrap_or_else(|| "; no leader is known yet, retry shortly".into()))]
    NotLeader {
        /// The leader this node currently knows of.
        leader_hint: Option<NodeId>,
    },
    /// The proposal's entry was overwritten by a new leader's log and will never apply.
    #[error("proposal at {0} was dropped by a leader change; it was not applied, retry it")]
    ProposalDropped(LogId),
    /// The node is shutting down or has stopped.
    #[error("the raft node is shutting down")]
    ShuttingDown,
    /// The log or snapshot store failed; the node stops rather than risk safety.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The state machine failed.
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The configuration was rejected at startup.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
