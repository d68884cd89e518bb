//! The node's helper tasks: the log writer (group commit) and the applier.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{FatalError, RaftError, StateMachineError, StorageError};
use crate::metrics::AtomicHistogram;
use crate::raft::{PersistOp, WriteId};
use crate::state_machine::StateMachine;
use crate::storage::{LogStore, LogWrite, SnapshotStore};
use crate::types::{Entry, LogIndex, SnapshotMeta};

/// Bytes handed to the snapshot store per `write` call.
const SNAPSHOT_WRITE_CHUNK: usize = 1 << 20;

/// Streams `data` into the snapshot store as `meta` and finishes it (durable on return).
pub(crate) async fn write_snapshot(
    store: &dyn SnapshotStore,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<SnapshotMeta, StorageError> {
    let mut writer = store.begin(meta).await?;
    for chunk in data.chunks(SNAPSHOT_WRITE_CHUNK) {
        writer.write(chunk).await?;
    }
    writer.finish().await
}

/// Where a client waits for its answer.
pub(crate) type Responder = oneshot::Sender<Result<Bytes, RaftError>>;

/// How long the tasks' work takes, for metrics: shared with the driver, which reads it once
/// per tick.
/// Recorded without a lock, so timing never delays a write's or an apply's report.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    pub(crate) fsync: AtomicHistogram,
    pub(crate) apply: AtomicHistogram,
}

pub(crate) type SharedTimings = Arc<Timings>;

/// Makes writes durable in order. Everything queued while a write is in flight goes into
/// the next one, so concurrent proposals share an fsync (group commit). Reports the highest
/// durable write id after each batch; stops at the first error, reporting the first write
/// of the failed batch (nothing in it may be presumed durable).
pub(crate) async fn log_writer(
    log: Arc<dyn LogStore>,
    snapshots: Arc<dyn SnapshotStore>,
    mut writes: mpsc::UnboundedReceiver<(WriteId, PersistOp)>,
    done: mpsc::UnboundedSender<Result<WriteId, (WriteId, StorageError)>>,
    timings: SharedTimings,
) {
    while let Some(first) = writes.recv().await {
        let first_id = first.0;
        let mut batch = vec![first];
        while let Ok(more) = writes.try_recv() {
            batch.push(more);
        }
        let last = batch.last().map(|(id, _)| *id).unwrap_or_default();
        let result = write_batch(&*log, &*snapshots, batch, &timings)
            .await
            .map(|()| last)
            .map_err(|e| (first_id, e));
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Carries out a batch in order: the log's ops go to the store as one
/// [`LogStore::write_batch`] (one transaction and one fsync on stores that support it),
/// with runs of appends merged; a received snapshot, which lives in the other store, is
/// written between the log writes before and after it.
async fn write_batch(
    log: &dyn LogStore,
    snapshots: &dyn SnapshotStore,
    batch: Vec<(WriteId, PersistOp)>,
    timings: &SharedTimings,
) -> Result<(), StorageError> {
    // Times the log's durable writes only (a snapshot file written on the way is not an
    // fsync of the log).
    let durable = |ops: Vec<LogWrite>| async move {
        let started = std::time::Instant::now();
        let written = log.write_batch(ops).await;
        timings.fsync.observe(started.elapsed());
        written
    };
    let mut ops: Vec<LogWrite> = Vec::new();
    for (_, op) in batch {
        match op {
            PersistOp::Append(entries) => match ops.last_mut() {
                Some(LogWrite::Append(run)) => run.extend(entries),
                _ => ops.push(LogWrite::Append(entries)),
            },
            PersistOp::HardState(h) => ops.push(LogWrite::HardState(h)),
            PersistOp::Truncate(from) => ops.push(LogWrite::Truncate(from)),
            PersistOp::Purge(upto) => ops.push(LogWrite::Purge(upto)),
            PersistOp::Snapshot { meta, data } => {
                if !ops.is_empty() {
                    durable(std::mem::take(&mut ops)).await?;
                }
                write_snapshot(snapshots, &meta, &data).await?;
            }
        }
    }
    if !ops.is_empty() {
        durable(ops).await?;
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
    /// Take a snapshot of the state at the applied index; the image goes back to the driver.
    Snapshot,
    /// Replace the state with an installed snapshot's.
    Restore { meta: SnapshotMeta, data: Bytes },
}

/// A state machine's image at an applied index, for the driver to write to the store.
pub(crate) type Image = Result<(LogIndex, Bytes), RaftError>;

/// Applies committed entries and serves confirmed reads; reports the applied index.
pub(crate) async fn applier(
    mut state_machine: Box<dyn StateMachine>,
    mut applied: LogIndex,
    mut jobs: mpsc::UnboundedReceiver<ApplyJob>,
    progress: mpsc::UnboundedSender<Result<LogIndex, RaftError>>,
    images: mpsc::UnboundedSender<Image>,
    timings: SharedTimings,
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
                let started = std::time::Instant::now();
                let applied_now = state_machine.apply(&entries).await;
                timings.apply.observe(started.elapsed());
                let applied_now = applied_now.and_then(|r| {
                    if r.len() == entries.len() {
                        Ok(r)
                    } else {
                        Err(StateMachineError(format!(
                            "apply returned {} responses for {} entries; the contract is one per entry",
                            r.len(),
                            entries.len()
                        )))
                    }
                });
                match applied_now {
                    Ok(responses) => {
                        for (reply, response) in replies.into_iter().zip(responses) {
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
                serve_parked(&mut *state_machine, applied, &mut parked).await;
            }
            ApplyJob::Snapshot => {
                let image = state_machine.snapshot().await.map(|data| (applied, data));
                let _ = images.send(image.map_err(Into::into));
            }
            ApplyJob::Restore { meta, data } => {
                if let Err(e) = state_machine.restore(&meta, data).await {
                    let fatal = FatalError::StateMachine(format!("restoring a snapshot: {e}"));
                    let _ = progress.send(Err(RaftError::Fatal(fatal)));
                    return;
                }
                applied = meta.last_log_id.index;
                if progress.send(Ok(applied)).is_err() {
                    return;
                }
                serve_parked(&mut *state_machine, applied, &mut parked).await;
            }
            ApplyJob::Read {
                index,
                query,
                reply,
            } => {
                if index <= applied {
                    let _ = reply.send(state_machine.query(query).await.map_err(Into::into));
                } else {
                    // Kept in index order: a lease read may come with a higher index than
                    // a ReadIndex read confirmed after it.
                    let at = parked.partition_point(|(i, _, _)| *i <= index);
                    parked.insert(at, (index, query, reply));
                }
            }
        }
    }
}

/// Answers the reads waiting for an index now applied.
async fn serve_parked(
    state_machine: &mut dyn StateMachine,
    applied: LogIndex,
    parked: &mut VecDeque<(LogIndex, Bytes, Responder)>,
) {
    while parked.front().is_some_and(|(i, _, _)| *i <= applied) {
        if let Some((_, query, reply)) = parked.pop_front() {
            let _ = reply.send(state_machine.query(query).await.map_err(Into::into));
        }
    }
}
