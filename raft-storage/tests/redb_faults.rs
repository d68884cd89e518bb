//! Crash safety and corruption detection of the redb stores.
//!
//! The crash test is the suite's crash harness (`raft_storage::conformance::crash`, usable
//! by any backend): this test binary runs again as a child process that appends entries and
//! saves hard states, alone and together in a `write_batch`, printing each
//! acknowledgement; the parent kills it with SIGKILL at random moments, half of them aimed
//! at a batch, and checks, after every reopen, that everything acknowledged is there and no
//! batch was left in part. `RAFT_CRASH_ROUNDS` sets the number of kills (default 12) and
//! `RAFT_CRASH_SEED` the seed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, LogId, LogIndex, LogStore, SnapshotMeta, SnapshotStore, StorageError,
};
use raft_storage::conformance::crash::{self, Opener};
use raft_storage::{redb_log, FileSnapshotStore, RedbLogStore};
use redb::ReadableTable;

/// The redb log in the crash harness's directory.
const OPEN: Opener = |dir: PathBuf| {
    Box::pin(async move {
        let log = RedbLogStore::open(dir.join("crash.redb")).await?;
        Ok(Arc::new(log) as Arc<dyn LogStore>)
    })
};

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("entry {index} ").repeat(1 + (index % 7) as usize))
}

/// Child mode of the crash test (returns at once otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_appends_and_acknowledges() {
    crash::child(OPEN).await;
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    if crash::is_child() {
        return;
    }
    // redb writes a batch in one transaction: all or nothing.
    let plan = crash::Plan::from_env().atomic_batches();
    println!(
        "crash test seed {} ({} rounds; RAFT_CRASH_SEED to replay)",
        plan.seed, plan.rounds
    );
    match crash::run("crash_child_appends_and_acknowledges", OPEN, plan) {
        Ok(report) => println!("{report}"),
        Err(why) => panic!("{why}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_a_stored_entry_give_a_corruption_error_naming_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let log = RedbLogStore::open(&path).await.unwrap();
        let es: Vec<Entry> = (1..=5)
            .map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Command(payload(i)),
            })
            .collect();
        log.append(&es).await.unwrap();
    }
    // Reach the stored value through redb itself and flip a byte, as a disk would.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(redb_log::ENTRIES).unwrap();
            let mut raw = table.get(3u64).unwrap().unwrap().value().to_vec();
            let last = raw.len() - 1;
            raw[last] ^= 0x01;
            table.insert(3u64, raw.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let log = RedbLogStore::open(&path).await.unwrap();
    let err = log
        .entries(LogIndex(1)..LogIndex(6), usize::MAX)
        .await
        .unwrap_err();
    match &err {
        StorageError::Corrupt { location, detail } => {
            assert!(
                location.contains("log.redb") && location.contains("entry 3"),
                "{location}"
            );
            assert!(detail.contains("checksum"), "{detail}");
        }
        other => panic!("expected a corruption error, got {other}"),
    }
    assert!(log.term(LogIndex(3)).await.is_err());
    assert_eq!(
        log.entries(LogIndex(1)..LogIndex(3), usize::MAX)
            .await
            .unwrap()
            .len(),
        2,
        "undamaged entries read fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_a_snapshot_file_give_a_corruption_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    let meta = SnapshotMeta {
        last_log_id: LogId::new(2, 10),
        membership: Default::default(),
    };
    let mut w = store.begin(&meta).await.unwrap();
    w.write(&[7u8; 4096]).await.unwrap();
    w.finish().await.unwrap();
    let file = store.files().await.unwrap().pop().unwrap();
    for offset in [0usize, 20, 2000, 4100] {
        let mut raw = std::fs::read(&file).unwrap();
        let original = raw.clone();
        let at = offset.min(raw.len() - 1);
        raw[at] ^= 0x80;
        std::fs::write(&file, &raw).unwrap();
        match store.read_latest().await {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(
                    location.contains(file.file_name().unwrap().to_str().unwrap()),
                    "{location}"
                )
            }
            other => panic!("flipping byte {at} was not detected: {other:?}"),
        }
        std::fs::write(&file, &original).unwrap();
    }
    // A truncated file is reported too.
    let raw = std::fs::read(&file).unwrap();
    std::fs::write(&file, &raw[..raw.len() / 2]).unwrap();
    assert!(matches!(
        store.read_latest().await,
        Err(StorageError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_file_that_is_not_a_database_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, b"this is not a redb file at all, just some text").unwrap();
    let err = RedbLogStore::open(&path).await.unwrap_err();
    assert!(err.to_string().contains("garbage.redb"), "{err}");
}

/// A redb store with a planted bug the crash harness must catch. It does not override
/// `write_batch`, so batches take the trait's default, one durable call per op.
struct Planted {
    inner: RedbLogStore,
    bug: Bug,
}

enum Bug {
    /// Appends are acknowledged from a buffer and written only every tenth entry (a
    /// "write-behind" cache), so a kill loses acknowledged entries.
    WriteBehind(tokio::sync::Mutex<Vec<Entry>>),
    /// The process dies between a batch's hard state and its entries, the worst moment
    /// for a crash. The flag is set while the last hard state saved carries the vote the
    /// harness marks a batch's hard state with.
    TornBatches(std::sync::atomic::AtomicBool),
}

#[async_trait::async_trait]
impl LogStore for Planted {
    async fn hard_state(&self) -> Result<raft_core::HardState, StorageError> {
        self.inner.hard_state().await
    }
    async fn save_hard_state(&self, hs: &raft_core::HardState) -> Result<(), StorageError> {
        self.inner.save_hard_state(hs).await?;
        if let Bug::TornBatches(mid_batch) = &self.bug {
            mid_batch.store(hs.voted_for.is_some(), Ordering::SeqCst);
        }
        Ok(())
    }
    async fn log_state(&self) -> Result<raft_core::LogState, StorageError> {
        let mut st = self.inner.log_state().await?;
        if let Bug::WriteBehind(buffer) = &self.bug {
            if let Some(last) = buffer.lock().await.last() {
                st.last = last.log_id;
            }
        }
        Ok(st)
    }
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        match &self.bug {
            Bug::WriteBehind(buffer) => {
                let mut buffer = buffer.lock().await;
                buffer.extend_from_slice(entries);
                if buffer.len() >= 10 {
                    self.inner.append(&buffer).await?;
                    buffer.clear();
                }
                Ok(())
            }
            Bug::TornBatches(mid_batch) => {
                if mid_batch.load(Ordering::SeqCst) {
                    // Dies at once, no destructor run, as a kill would leave it.
                    std::process::exit(1);
                }
                self.inner.append(entries).await
            }
        }
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.inner.truncate(from).await
    }
    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.inner.purge(upto).await
    }
    async fn entries(
        &self,
        range: std::ops::Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(range, max_bytes).await
    }
    async fn term(&self, index: LogIndex) -> Result<Option<raft_core::Term>, StorageError> {
        self.inner.term(index).await
    }
}

const OPEN_WRITE_BEHIND: Opener = |dir: PathBuf| {
    Box::pin(async move {
        let inner = RedbLogStore::open(dir.join("write-behind.redb")).await?;
        let bug = Bug::WriteBehind(tokio::sync::Mutex::new(Vec::new()));
        Ok(Arc::new(Planted { inner, bug }) as Arc<dyn LogStore>)
    })
};

/// Child mode of the planted-bug crash test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_with_a_write_behind_cache() {
    crash::child(OPEN_WRITE_BEHIND).await;
}

#[test]
fn the_crash_harness_catches_a_store_that_acknowledges_before_writing() {
    if crash::is_child() {
        return;
    }
    let plan = crash::Plan {
        rounds: 6,
        seed: 11,
        atomic_batches: false,
    };
    let lost = crash::run(
        "crash_child_with_a_write_behind_cache",
        OPEN_WRITE_BEHIND,
        plan,
    )
    .expect_err("acknowledged entries were lost, and the harness must say so");
    assert!(
        lost.contains("were acknowledged but the log ends at"),
        "{lost}"
    );
    assert!(lost.contains("RAFT_CRASH_SEED=11"), "{lost}");
}

#[test]
fn every_acknowledged_redb_write_is_synced() {
    if crash::is_child() || !audit_possible() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    match crash::audit_syncs("crash_child_appends_and_acknowledges", dir.path(), 50) {
        Ok(audit) => println!("{audit}"),
        Err(why) => panic!("{why}"),
    }
}

#[test]
fn the_sync_audit_catches_acknowledgements_without_a_sync() {
    if crash::is_child() || !audit_possible() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let why = crash::audit_syncs("crash_child_with_a_write_behind_cache", dir.path(), 50)
        .expect_err("the write-behind store acknowledges most appends without syncing");
    assert!(why.contains("without a sync"), "{why}");
}

/// Whether the sync audit can run; says so when it cannot.
fn audit_possible() -> bool {
    let ok = crash::strace_available();
    if !ok {
        println!("sync audit skipped: strace is not installed or may not trace here");
    }
    ok
}

const OPEN_TORN: Opener = |dir: PathBuf| {
    Box::pin(async move {
        let inner = RedbLogStore::open(dir.join("torn.redb")).await?;
        let bug = Bug::TornBatches(AtomicBool::new(false));
        Ok(Arc::new(Planted { inner, bug }) as Arc<dyn LogStore>)
    })
};

/// Child mode of the planted torn-batch crash test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_with_torn_batches() {
    crash::child(OPEN_TORN).await;
}

#[test]
fn the_crash_harness_catches_a_batch_left_in_part() {
    if crash::is_child() {
        return;
    }
    let plan = crash::Plan {
        rounds: 2,
        seed: 5,
        atomic_batches: true,
    };
    let torn = crash::run("crash_child_with_torn_batches", OPEN_TORN, plan)
        .expect_err("a batch's hard state without its entries, and the harness must say so");
    assert!(
        torn.contains("the hard state of the write_batch of term")
            && torn.contains("without its entries"),
        "{torn}"
    );
}
