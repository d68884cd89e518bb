//! Both reference backends pass the conformance suite.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use raft_storage::conformance::{self, StoreHarness, Stores};
use raft_storage::{open_data_dir, FileSnapshotStore, MemLogStore, MemSnapshotStore, StorageError};

const KEEP: usize = 2;

#[derive(Default)]
struct MemHarness {
    snapshots: Option<Arc<MemSnapshotStore>>,
}

#[async_trait]
impl StoreHarness for MemHarness {
    async fn create(&mut self) -> Result<Stores, StorageError> {
        let snapshots = Arc::new(MemSnapshotStore::new(KEEP));
        self.snapshots = Some(snapshots.clone());
        Ok(Stores {
            log: Arc::new(MemLogStore::new()),
            snapshots,
        })
    }

    async fn corrupt_latest_snapshot(&mut self) -> bool {
        match &self.snapshots {
            Some(s) => {
                s.corrupt_latest();
                true
            }
            None => false,
        }
    }

    fn durable(&self) -> bool {
        false
    }

    fn snapshots_kept(&self) -> Option<usize> {
        Some(KEEP)
    }

    async fn snapshot_count(&mut self) -> Option<usize> {
        self.snapshots.as_ref().map(|s| s.count())
    }
}

struct RedbHarness {
    root: tempfile::TempDir,
    next: u32,
    current: Option<PathBuf>,
    /// The snapshot store last opened: a second store opened on the same directory would
    /// remove the files of writers still open.
    snapshots: Option<FileSnapshotStore>,
}

impl RedbHarness {
    fn new() -> RedbHarness {
        RedbHarness {
            root: tempfile::tempdir().expect("temp dir"),
            next: 0,
            current: None,
            snapshots: None,
        }
    }

    async fn open(&mut self) -> Result<Stores, StorageError> {
        let dir = self.current.as_ref().expect("created");
        let (log, snapshots) = open_data_dir(dir, KEEP).await?;
        self.snapshots = Some(snapshots.clone());
        Ok(Stores {
            log: Arc::new(log),
            snapshots: Arc::new(snapshots),
        })
    }

    /// The finished snapshot files, the latest last.
    async fn snapshot_files(&self) -> Vec<PathBuf> {
        let store = self.snapshots.as_ref().expect("created");
        store.files().await.expect("list")
    }
}

#[async_trait]
impl StoreHarness for RedbHarness {
    async fn create(&mut self) -> Result<Stores, StorageError> {
        self.next += 1;
        self.current = Some(self.root.path().join(format!("case-{}", self.next)));
        self.open().await
    }

    fn durable(&self) -> bool {
        true
    }

    async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
        self.open().await.map(Some)
    }

    async fn corrupt_latest_snapshot(&mut self) -> bool {
        let Some(path) = self.snapshot_files().await.pop() else {
            return false;
        };
        let mut raw = std::fs::read(&path).expect("read snapshot file");
        let mid = raw.len() / 2;
        raw[mid] ^= 0x5a;
        std::fs::write(&path, raw).expect("write snapshot file");
        true
    }

    fn snapshots_kept(&self) -> Option<usize> {
        Some(KEEP)
    }

    async fn snapshot_count(&mut self) -> Option<usize> {
        Some(self.snapshot_files().await.len())
    }
}

#[tokio::test]
async fn memory_stores_pass_the_conformance_suite() {
    let report = conformance::run("memory", &mut MemHarness::default()).await;
    report.assert_passed();
    assert!(report.outcomes.len() >= 30);
    assert_eq!(
        report.skipped(),
        10,
        "only the ten cases about reopening skip: {:?}",
        report.outcomes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_stores_pass_the_conformance_suite() {
    let report = conformance::run("redb + snapshot files", &mut RedbHarness::new()).await;
    report.assert_passed();
    assert_eq!(report.skipped(), 0, "{:?}", report.outcomes);
}
