//! The suite catches real bugs: stores with one planted defect each (the kinds a backend
//! author wrote by mistake) fail the case named after it. The memory stores stand in for a
//! disk: an `Arc` kept across `reopen` is what survives the "restart".

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use raft_core::{Entry, HardState, LogId, LogIndex, LogState, LogStore, Term};
use raft_storage::conformance::{self, StoreHarness, Stores};
use raft_storage::{MemLogStore, MemSnapshotStore, StorageError};

/// Which defect the store has.
#[derive(Clone, Copy, PartialEq)]
enum Bug {
    /// `entries(range, ..)` ignores `range.end`.
    IgnoresRangeEnd,
    /// `truncate` cuts only an in-memory index; the "file" keeps the entries until the next
    /// append rewrites it.
    TruncatesOnlyInMemory,
}

/// A log store over a shared "disk", with one bug.
struct Faulty {
    disk: Arc<MemLogStore>,
    bug: Bug,
    /// In-memory truncation point (lost on reopen).
    cut: Mutex<Option<LogIndex>>,
}

impl Faulty {
    fn cut(&self) -> Option<LogIndex> {
        *self.cut.lock().expect("lock")
    }
}

#[async_trait]
impl LogStore for Faulty {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        self.disk.hard_state().await
    }
    async fn save_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        self.disk.save_hard_state(hs).await
    }
    async fn log_state(&self) -> Result<LogState, StorageError> {
        let mut st = self.disk.log_state().await?;
        if let Some(cut) = self.cut().filter(|c| *c <= st.last.index) {
            let prev = cut.prev();
            let term = if prev <= st.last_purged.index {
                st.last_purged.term
            } else {
                self.disk.term(prev).await?.unwrap_or_default()
            };
            st.last = LogId { term, index: prev };
        }
        Ok(st)
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let cut = self.cut.lock().expect("lock").take();
        if let Some(cut) = cut {
            self.disk.truncate(cut).await?;
        }
        self.disk.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        match self.bug {
            Bug::TruncatesOnlyInMemory => {
                let st = self.disk.log_state().await?;
                if from <= st.last_purged.index {
                    return self.disk.truncate(from).await; // the same refusal
                }
                *self.cut.lock().expect("lock") = Some(from);
                Ok(())
            }
            _ => self.disk.truncate(from).await,
        }
    }
    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.disk.purge(upto).await
    }
    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let end = match self.bug {
            Bug::IgnoresRangeEnd => LogIndex(u64::MAX),
            _ => range.end,
        };
        let end = self.cut().map_or(end, |c| end.min(c));
        self.disk
            .entries(range.start..end.max(range.start), max_bytes)
            .await
    }
    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if self.cut().is_some_and(|c| index >= c) {
            return Ok(None);
        }
        self.disk.term(index).await
    }
}

/// A "durable" harness over shared memory disks, whose log store has `bug`.
struct Harness {
    bug: Option<Bug>,
    reopen: bool,
    disk: Option<(Arc<MemLogStore>, Arc<MemSnapshotStore>)>,
}

impl Harness {
    fn stores(&self) -> Stores {
        let (log, snapshots) = self.disk.clone().expect("created");
        let log: Arc<dyn LogStore> = match self.bug {
            Some(bug) => Arc::new(Faulty {
                disk: log,
                bug,
                cut: Mutex::new(None),
            }),
            None => log,
        };
        Stores { log, snapshots }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn create(&mut self) -> Result<Stores, StorageError> {
        self.disk = Some((
            Arc::new(MemLogStore::new()),
            Arc::new(MemSnapshotStore::new(2)),
        ));
        Ok(self.stores())
    }
    fn durable(&self) -> bool {
        true
    }
    async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
        Ok(self.reopen.then(|| self.stores()))
    }
}

async fn report(bug: Option<Bug>, reopen: bool) -> conformance::Report {
    let mut h = Harness {
        bug,
        reopen,
        disk: None,
    };
    conformance::run("planted bug", &mut h).await
}

async fn failures(bug: Option<Bug>, reopen: bool) -> Vec<&'static str> {
    let report = report(bug, reopen).await;
    report
        .failures()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test]
async fn the_shared_memory_disk_itself_passes() {
    assert_eq!(failures(None, true).await, Vec::<&str>::new());
}

#[tokio::test]
async fn entries_ignoring_the_range_end_is_caught() {
    let failed = failures(Some(Bug::IgnoresRangeEnd), true).await;
    assert!(failed.contains(&"entries_respects_range_end"), "{failed:?}");
}

#[tokio::test]
async fn a_truncation_that_never_reaches_the_disk_is_caught() {
    let failed = failures(Some(Bug::TruncatesOnlyInMemory), true).await;
    assert!(
        failed.contains(&"truncate_then_reopen_without_purge"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_failure_lists_the_operations_that_led_to_it() {
    let report = report(Some(Bug::TruncatesOnlyInMemory), true).await;
    let (_, why) = report
        .failures()
        .into_iter()
        .find(|(name, _)| *name == "truncate_then_reopen_without_purge")
        .expect("caught");
    assert!(
        why.contains("after: create; append(T1#1..=T1#10); truncate(#8); reopen"),
        "{why}"
    );
}

#[tokio::test]
async fn a_durable_store_whose_harness_cannot_reopen_fails() {
    let failed = failures(None, false).await;
    assert!(failed.contains(&"reopen_keeps_entries"), "{failed:?}");
    assert!(
        failed.contains(&"truncate_then_reopen_without_purge"),
        "{failed:?}"
    );
}
