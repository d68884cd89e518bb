//! The node's helper tasks: the log writer (group commit) and the applier.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{FatalError, RaftError, StorageError};
use crate::raft::{PersistOp, WriteId};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::types::{Entry, LogIndex};

/// Where a client waits for its answer.
pub(crate) type Responder = oneshot::Sender<Result<Bytes, RaftError>>;

/// Makes writes durable in order. Everything queued while a write is in flight goes into
/// the next one, so concurrent proposals share an fsync (group commit). Reports the highest
/// durable write id after each batch; stops at the first error, reporting the first write
/// of the failed batch (nothing in it may be presumed durable).
pub(crate) async fn log_writer(
    log: Arc<dyn LogStore>,
    mut writes: mpsc::UnboundedReceiver<(WriteId, PersistOp)>,
    done: mpsc::UnboundedSender<Result<WriteId, (WriteId, StorageError)>>,
) {
    while let Some(first) = writes.recv().await {
        let first_id = first.0;
        let mut batch = vec![first];
        while let Ok(more) = writes.try_recv() {
            batch.push(more);
        }
        let last = batch.last().map(|(id, _)| *id).unwrap_or_default();
        let result = write_batch(&*log, batch)
            .await
            .map(|()| last)
            .map_err(|e| (first_id, e));
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Carries out a batch in order, merging runs of appends into one call.
async fn write_batch(
    log: &dyn LogStore,
    batch: Vec<(WriteId, PersistOp)>,
) -> Result<(), StorageError> {
    let mut appends: Vec<Entry> = Vec::new();
    for (_, op) in batch {
        match op {
            PersistOp::Append(entries) => appends.extend(entries),
            other => {
                if !appends.is_empty() {
                    log.append(&appends).await?;
                    appends.clear();
                }
                match other {
                    PersistOp::HardState(h) => log.save_hard_state(&h).await?,
                    PersistOp::Truncate(from) => log.truncate(from).await?,
                    PersistOp::Append(_) => unreachable!("appends are merged above"),
                }
            }
        }
    }
    if !appends.is_empty() {
        log.append(&appends).await?;
    }
    Ok(())
}

/// Work for the applier, in log order.
pub(crate) enum ApplyJob {
    /// Committed entries, each with the client waiting for it, if any.
    Entries(Vec<(Entry, Option<Responder>)>),
    /// A confirmed read: answer it once `index` is applied.
    Read {
        index: LogIndex,
        query: Bytes,
        reply: Responder,
    },
}

/// Applies committed entries and serves confirmed reads; reports the applied index.
pub(crate) async fn applier(
    mut state_machine: Box<dyn StateMachine>,
    mut applied: LogIndex,
    mut jobs: mpsc::UnboundedReceiver<ApplyJob>,
    progress: mpsc::UnboundedSender<Result<LogIndex, RaftError>>,
) {
    let mut parked: VecDeque<(LogIndex, Bytes, Responder)> = VecDeque::new();
    while let Some(job) = jobs.recv().await {
        match job {
            ApplyJob::Entries(batch) => {
                let Some(last) = batch.last().map(|(e, _)| e.index()) else {
                    continue;
                };
                let (entries, replies): (Vec<Entry>, Vec<Option<Responder>>) =
                    batch.into_iter().unzip();
                match state_machine.apply(&entries).await {
                    Ok(responses) => {
                        let mut responses = responses.into_iter();
                        for reply in replies {
                            let response = responses.next().unwrap_or_default();
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(response));
                            }
                        }
                        applied = last;
                        if progress.send(Ok(applied)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Every waiting client learns the cause before the node stops.
                        let fatal = FatalError::StateMachine(e.to_string());
                        for reply in replies.into_iter().flatten() {
                            let _ = reply.send(Err(RaftError::Fatal(fatal.clone())));
                        }
                        for (_, _, reply) in parked.drain(..) {
                            let _ = reply.send(Err(RaftError::Fatal(fatal.clone())));
                        }
                        let _ = progress.send(Err(RaftError::Fatal(fatal)));
                        return;
                    }
                }
                while parked.front().is_some_and(|(i, _, _)| *i <= applied) {
                    if let Some((_, query, reply)) = parked.pop_front() {
                        let _ = reply.send(state_machine.query(query).await.map_err(Into::into));
                    }
                }
            }
            ApplyJob::Read {
                index,
                query,
                reply,
            } => {
                if index <= applied {
                    let _ = reply.send(state_machine.query(query).await.map_err(Into::into));
                } else {
                    // Read indexes only grow, so the queue stays ordered.
                    parked.push_back((index, query, reply));
                }
            }
        }
    }
}
