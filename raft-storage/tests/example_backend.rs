//! The example backend (`examples/journal_log.rs`), which new authors start from, passes the
//! conformance suite and the crash harness, as theirs must.

#[path = "../examples/journal_log.rs"]
mod journal_log;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use journal_log::JournalLog;
use raft_core::LogStore;
use raft_storage::conformance::crash::{self, Opener};
use raft_storage::conformance::{self, StoreHarness, Stores};
use raft_storage::{FileSnapshotStore, StorageError};

struct Harness {
    root: tempfile::TempDir,
    next: u32,
}

#[async_trait]
impl StoreHarness for Harness {
    async fn create(&mut self) -> Result<Stores, StorageError> {
        self.next += 1;
        Ok(self.reopen().await?.expect("always reopens"))
    }

    fn durable(&self) -> bool {
        true
    }

    async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
        let dir = self.root.path().join(format!("case-{}", self.next));
        std::fs::create_dir_all(&dir)?;
        let log = JournalLog::open(dir.join("journal"))?;
        let snapshots = FileSnapshotStore::open(dir.join("snapshots"), 2).await?;
        Ok(Some(Stores {
            log: Arc::new(log),
            snapshots: Arc::new(snapshots),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_backend_passes_the_conformance_suite() {
    let mut h = Harness {
        root: tempfile::tempdir().expect("temp dir"),
        next: 0,
    };
    let report = conformance::run("journal log (example)", &mut h).await;
    report.assert_passed();
    assert_eq!(report.failures().len(), 0);
}

const OPEN: Opener = |dir: PathBuf| {
    Box::pin(
        async move { Ok(Arc::new(JournalLog::open(dir.join("journal"))?) as Arc<dyn LogStore>) },
    )
};

/// Child mode of the crash test (returns at once otherwise).
#[tokio::test]
async fn journal_crash_child() {
    crash::child(OPEN).await;
}

#[test]
fn the_example_backend_keeps_what_it_acknowledged_across_sigkill() {
    if crash::is_child() {
        return;
    }
    match crash::run("journal_crash_child", OPEN, crash::Plan::from_env()) {
        Ok(report) => println!("{report}"),
        Err(why) => panic!("{why}"),
    }
}

#[test]
fn every_acknowledged_journal_write_is_synced() {
    if crash::is_child() {
        return;
    }
    if !crash::strace_available() {
        println!("sync audit skipped: strace is not installed or may not trace here");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    match crash::audit_syncs("journal_crash_child", dir.path(), 50) {
        Ok(audit) => println!("{audit}"),
        Err(why) => panic!("{why}"),
    }
}
