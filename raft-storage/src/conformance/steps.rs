//! Records the storage operations a case runs, so a failure message can list them in
//! order and an author can replay the case against their store by hand.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    Entry, HardState, LogId, LogIndex, LogState, LogStore, SnapshotMeta, SnapshotStore,
    SnapshotWriter, StorageError, Term,
};

use super::{StoreHarness, Stores};

/// The operations of one case, in order.
#[derive(Clone, Default)]
pub(super) struct Steps(Arc<Mutex<Vec<String>>>);

impl Steps {
    fn push(&self, step: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }

    /// The steps as one line, oldest first.
    pub fn describe(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).join("; ")
    }
}

/// A harness whose stores record every call into `steps`.
pub(super) struct Recording<'a> {
    pub inner: &'a mut dyn StoreHarness,
    pub steps: Steps,
}

impl Recording<'_> {
    fn wrap(&self, stores: Stores) -> Stores {
        Stores {
            log: Arc::new(RecordedLog {
                inner: stores.log,
                steps: self.steps.clone(),
            }),
            snapshots: Arc::new(RecordedSnapshots {
                inner: stores.snapshots,
                steps: self.steps.clone(),
            }),
        }
    }
}

#[async_trait]
impl StoreHarness for Recording<'_> {
    async fn create(&mut self) -> Result<Stores, StorageError> {
        self.steps.push("create".into());
        let stores = self.inner.create().await?;
        Ok(self.wrap(stores))
    }

    fn durable(&self) -> bool {
        self.inner.durable()
    }

    async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
        self.steps.push("reopen".into());
        let stores = self.inner.reopen().await?;
        Ok(stores.map(|s| self.wrap(s)))
    }

    async fn corrupt_latest_snapshot(&mut self) -> bool {
        self.steps.push("corrupt the latest snapshot".into());
        self.inner.corrupt_latest_snapshot().await
    }

    fn snapshots_kept(&self) -> Option<usize> {
        self.inner.snapshots_kept()
    }

    async fn snapshot_count(&mut self) -> Option<usize> {
        self.inner.snapshot_count().await
    }
}

fn span(entries: &[Entry]) -> String {
    match (entries.first(), entries.last()) {
        (Some(a), Some(b)) if entries.len() > 1 => format!("{}..={}", a.log_id, b.log_id),
        (Some(a), _) => a.log_id.to_string(),
        _ => "nothing".into(),
    }
}

struct RecordedLog {
    inner: Arc<dyn LogStore>,
    steps: Steps,
}

#[async_trait]
impl LogStore for RecordedLog {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.hard_state().await
    }
    async fn save_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        self.steps.push(format!("save_hard_state({hs:?})"));
        self.inner.save_hard_state(hs).await
    }
    async fn log_state(&self) -> Result<LogState, StorageError> {
        self.inner.log_state().await
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.steps.push(format!("append({})", span(entries)));
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.steps.push(format!("truncate({from})"));
        self.inner.truncate(from).await
    }
    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.steps.push(format!("purge({upto})"));
        self.inner.purge(upto).await
    }
    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.steps.push(format!(
            "entries({}..{}, {max_bytes})",
            range.start, range.end
        ));
        self.inner.entries(range, max_bytes).await
    }
    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        self.inner.term(index).await
    }
}

struct RecordedSnapshots {
    inner: Arc<dyn SnapshotStore>,
    steps: Steps,
}

#[async_trait]
impl SnapshotStore for RecordedSnapshots {
    async fn begin(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        self.steps
            .push(format!("begin snapshot at {}", meta.last_log_id));
        let inner = self.inner.begin(meta).await?;
        Ok(Box::new(RecordedWriter {
            inner,
            steps: self.steps.clone(),
            at: meta.last_log_id,
            bytes: 0,
        }))
    }
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.inner.latest().await
    }
    async fn read_latest(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        self.inner.read_latest().await
    }
}

struct RecordedWriter {
    inner: Box<dyn SnapshotWriter>,
    steps: Steps,
    at: LogId,
    bytes: usize,
}

#[async_trait]
impl SnapshotWriter for RecordedWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.bytes += chunk.len();
        self.inner.write(chunk).await
    }
    async fn finish(self: Box<Self>) -> Result<SnapshotMeta, StorageError> {
        self.steps.push(format!(
            "finish snapshot at {} ({} bytes)",
            self.at, self.bytes
        ));
        self.inner.finish().await
    }
}
