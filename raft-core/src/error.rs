//! Errors of the core and the node.

use crate::types::{LogId, LogIndex, NodeId};

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

/// Why a core stopped for good (fail-stop). Continuing could break a safety property or lose
/// an acknowledged write, so the node stops acting; restarting it recovers from what is
/// durable. The message names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// A write could not be made durable. Nothing that promises it was sent; requests in
    /// flight have an unknown outcome (a leader's entries may still commit on followers).
    #[error("write {id} could not be made durable ({error}); the node stopped, and requests in flight may or may not take effect; restart it once storage works")]
    WriteFailed {
        /// The write's id (see [`crate::WriteId`]).
        id: u64,
        /// The storage error, as text.
        error: String,
    },
    /// A leader asked to overwrite an entry this node knows is committed. Committed
    /// entries are never truncated (Leader Completeness); either a store lost data or two
    /// leaders disagree.
    #[error("refusing to truncate the log from {from}: entries up to {committed} are committed and must never be removed (a store lost acknowledged data, or a peer is faulty)")]
    TruncateCommitted {
        /// The first index the truncation would remove.
        from: LogIndex,
        /// This node's commit index.
        committed: LogIndex,
    },
    /// Entries that must be applied are missing from the log.
    #[error("committed entries {from}..={to} are missing from the log; the state machine cannot apply them in order")]
    ApplyGap {
        /// The first index to apply.
        from: LogIndex,
        /// The last index to apply.
        to: LogIndex,
    },
    /// The driver reported a write durable that was never issued.
    #[error("the driver reported write {reported} durable, but only {issued} were issued")]
    UnknownWrite {
        /// The id reported.
        reported: u64,
        /// The highest id issued.
        issued: u64,
    },
    /// The state machine failed to apply committed entries; replicas must apply every
    /// entry, so the node cannot go on.
    #[error("the state machine failed to apply committed entries: {0}")]
    StateMachine(String),
    /// One of the node's own tasks (log writer, applier) ended unexpectedly.
    #[error("internal task failed: {0}")]
    Internal(String),
    /// The log store returned entries that are not the ones the log holds: it lost or
    /// changed entries it had acknowledged as durable.
    #[error("the log store returned entry {found} where the log holds {expected:?}; it lost or changed acknowledged entries")]
    StoreMismatch {
        /// What the store returned.
        found: LogId,
        /// What the log holds at that index.
        expected: Option<LogId>,
    },
    /// The state given to a new core contradicts itself.
    #[error("inconsistent restored state: {0}")]
    Restore(String),
}

/// An error reported by a state machine.
#[derive(Debug, thiserror::Error)]
#[error("state machine error: {0}")]
pub struct StateMachineError(pub String);

/// Why a client request to a node failed. Each variant says what the caller should do;
/// in short: `NotLeader`, `ProposalDropped` and (for reads) `Timeout` are retried
/// elsewhere or later; `Timeout`, `ShuttingDown` and `Fatal` leave a proposal's outcome
/// unknown, so retry it only in a session (see [`crate::session`], which the TCP client
/// does for you); the rest are not retryable as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// This node is not the leader. Nothing was done: send the request to the leader it
    /// names (its id, and its address when the membership has one), or, when none is
    /// known, retry shortly (an election is under way).
    #[error("{0}")]
    NotLeader(crate::raft::NotLeader),
    /// The proposal's entry was overwritten by a new leader's log and will never apply:
    /// retry it (on the new leader); it cannot apply twice.
    #[error("proposal at {0} was dropped by a leader change; it was not applied, retry it")]
    ProposalDropped(LogId),
    /// A command is larger than [`Config::max_entry_bytes`](crate::Config::max_entry_bytes)
    /// allows; it was not proposed. Split it, or raise the limit (the transport's frame
    /// limit bounds it).
    #[error("request too large: a command of {size} bytes exceeds the {max}-byte limit (max_entry_bytes)")]
    TooLarge {
        /// The command's size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The node is shutting down or has stopped. A proposal in flight may still be applied
    /// by the others: retry on another member, in a session.
    #[error("the raft node is shutting down")]
    ShuttingDown,
    /// The request did not complete within `Config::request_timeout`. A proposal may still
    /// be applied later (its outcome is unknown); a read can simply be retried.
    #[error("the request did not complete within {0:?}; a proposal may still take effect")]
    Timeout(std::time::Duration),
    /// The node stopped after a fatal error (see [`FatalError`], which says why: a store
    /// or the state machine failed). Restart the process once the cause is fixed; retry
    /// requests on another member (a proposal in flight, in a session).
    #[error("the raft node stopped: {0}")]
    Fatal(FatalError),
    /// The log or snapshot store failed; the node stops rather than risk safety. As for
    /// `Fatal`.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The state machine could not answer a query (the node goes on; asking the same again
    /// will not help). A failure to *apply* stops the node and is reported as
    /// [`Fatal`](RaftError::Fatal) instead; application refusals belong in responses (see
    /// [`crate::app`]).
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
    /// The configuration was rejected at startup; the message names the setting to fix.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A membership change was refused or did not take effect; see
    /// [`ChangeError`](crate::ChangeError) for which (on `NotLeader`, ask the leader; on
    /// `InProgress`, wait and retry).
    #[error(transparent)]
    Membership(#[from] crate::raft::ChangeError),
    /// A leadership transfer was refused or did not happen; see
    /// [`TransferError`](crate::TransferError).
    #[error(transparent)]
    Transfer(#[from] crate::raft::TransferError),
    /// This node's stores show that a committed configuration removed it from the cluster
    /// (see [`CoreStatus::removed`](crate::CoreStatus::removed)): they cannot take part
    /// again. To bring the machine back, start it on empty stores under a new id and add it
    /// (ids are not reused, as in etcd: a node catching up could otherwise briefly see its
    /// old removal as its own).
    #[error("node {0} was removed from the cluster; its data cannot rejoin it: start the machine on empty stores with a new id and add it")]
    Removed(NodeId),
    /// A typed command, query or answer (see [`crate::app`]) could not be encoded or
    /// decoded: the caller and the state machine disagree on the types. Not retryable.
    #[error("codec: {0}")]
    Codec(String),
    /// A command in a session (see [`crate::session`]) was not applied: its session was
    /// forgotten, or it is older than the session's latest command. It may have applied
    /// already; check the state before proposing it again in a new session.
    #[error("session: {0}")]
    Session(String),
}
