//! The application seam: the user's deterministic state machine.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StateMachineError;
use crate::types::{Entry, LogIndex, SnapshotMeta};

/// The user's application, fed committed entries in log order.
///
/// Contract:
/// - **Deterministic**: the same entries give the same state and the same responses on every
///   replica. No clocks, randomness or local I/O in [`apply`](StateMachine::apply).
/// - **Exactly once**: every index is applied once across restarts. A durable state machine
///   persists its last applied index atomically with its data and reports it from
///   [`applied_index`](StateMachine::applied_index); the node resumes after it. A volatile
///   one reports 0 (or its snapshot's index) after a restart and is fed the log again.
/// - **Snapshots** capture a consistent point: [`snapshot`](StateMachine::snapshot) returns
///   the state as of its last applied index; [`restore`](StateMachine::restore) replaces the
///   whole state with a snapshot's.
/// - **Errors are failures, refusals are responses.** An `Err` from
///   [`apply`](StateMachine::apply) means the state machine cannot go on (its disk
///   failed, its state is corrupt): the node stops, every client waiting on it gets
///   [`RaftError::Fatal`](crate::RaftError::Fatal) with the cause, and the process must be
///   restarted. Since every replica applies the same entry, an `Err` that the entry itself
///   causes would stop every node in turn: an application's own refusals ("insufficient
///   funds", "no such key") must be encoded in the response instead. The typed layer in
///   [`crate::app`] does this for you: its `apply` cannot fail. The same holds for a
///   command that does not decode: a node served with `TcpNode::start` accepts proposals
///   from any client that knows the cluster id (there is no authentication yet), so
///   answer undecodable input with a refusal, never an `Err`.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// The index of the last entry applied (0 for a new state machine).
    async fn applied_index(&self) -> Result<LogIndex, StateMachineError>;

    /// Applies committed entries, in order, and returns one response per entry (empty
    /// `Bytes` for entries that are not commands, such as a leader's no-op). The response
    /// of a command goes back to the client that proposed it.
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError>;

    /// Answers a read-only query against the current state. The node calls it only after a
    /// linearizable read barrier, so the answer reflects every write acknowledged before the
    /// read began.
    async fn query(&self, query: Bytes) -> Result<Bytes, StateMachineError>;

    /// Serializes the state as of the last applied index.
    async fn snapshot(&mut self) -> Result<Bytes, StateMachineError>;

    /// Replaces the state with a snapshot's; afterwards `applied_index` is
    /// `meta.last_log_id.index`.
    async fn restore(&mut self, meta: &SnapshotMeta, data: Bytes) -> Result<(), StateMachineError>;
}
