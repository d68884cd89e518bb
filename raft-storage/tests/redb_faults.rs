//! Crash safety and corruption detection of the redb stores.
//!
//! The crash test runs this test binary again as a child process that appends entries and
//! prints each acknowledged index; the parent kills it with SIGKILL at random moments and
//! checks, after every reopen, that every acknowledged entry is there, intact, and that the
//! log is contiguous. `RAFT_CRASH_ROUNDS` sets the number of kills (default 12) and
//! `RAFT_CRASH_SEED` the seed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use raft_core::{
    Entry, EntryPayload, LogId, LogIndex, LogStore, SnapshotMeta, SnapshotStore, StorageError,
};
use raft_storage::{redb_log, FileSnapshotStore, RedbLogStore};
use redb::ReadableTable;

const CHILD_ENV: &str = "RAFT_CRASH_CHILD_DB";

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("entry {index} ").repeat(1 + (index % 7) as usize))
}

/// Child mode: append forever, printing each acknowledged index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_appends_and_acknowledges() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // only runs as the child of the crash test
    };
    let log = RedbLogStore::open(&path)
        .await
        .expect("child opens the log");
    let mut next = log.log_state().await.expect("state").last.index.0 + 1;
    loop {
        let batch: Vec<Entry> = (next..next + 1 + next % 5)
            .map(|i| Entry {
                log_id: LogId::new(1, i),
                payload: EntryPayload::Command(payload(i)),
            })
            .collect();
        log.append(&batch).await.expect("append");
        next += batch.len() as u64;
        println!("ACK {}", next - 1);
    }
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rounds: u64 = std::env::var("RAFT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("RAFT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    println!("crash test seed {seed} ({rounds} rounds; RAFT_CRASH_SEED to replay)");
    let mut rng = seed;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("crash.redb");
    let exe = std::env::current_exe().expect("test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut acked = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_appends_and_acknowledges",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let kill_after = 1 + next_rand() % 40;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if let Some(n) = line.strip_prefix("ACK ") {
                acked = acked.max(n.trim().parse().expect("index"));
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        // Reopen and check: every acknowledged entry is present, intact and contiguous.
        rt.block_on(async {
            let log = RedbLogStore::open(&db).await.expect("reopen after SIGKILL");
            let st = log.log_state().await.expect("state");
            assert!(
                st.last.index.0 >= acked,
                "round {round}: acknowledged up to {acked} but the log ends at {}",
                st.last.index.0
            );
            let all = log
                .entries(LogIndex(1)..st.last.index.next(), usize::MAX)
                .await
                .expect("read all");
            for (i, e) in all.iter().enumerate() {
                let index = i as u64 + 1;
                assert_eq!(
                    e.index(),
                    LogIndex(index),
                    "round {round}: the log is not contiguous"
                );
                assert_eq!(
                    e.payload,
                    EntryPayload::Command(payload(index)),
                    "round {round}: entry {index} damaged"
                );
            }
        });
    }
    println!("crash test: {rounds} SIGKILLs, {acked} acknowledged entries, none lost");
    assert!(acked > 0, "the child acknowledged nothing");
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
