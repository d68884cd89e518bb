//! The file snapshot store's choices beyond the conformance suite: which snapshot is the
//! latest, what pruning keeps, falling back past damaged files, looking up metadata
//! without reading every file each time, and a failed last write never reported as done.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raft_core::{LogId, SnapshotMeta, SnapshotStore, StorageError};
use raft_storage::FileSnapshotStore;

fn meta(term: u64, index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(term, index),
        membership: Default::default(),
    }
}

async fn write(store: &FileSnapshotStore, m: &SnapshotMeta, data: &[u8]) {
    let mut w = store.begin(m).await.expect("begin");
    w.write(data).await.expect("write");
    w.finish().await.expect("finish");
}

async fn read(store: &FileSnapshotStore) -> Option<(SnapshotMeta, Bytes)> {
    store.read_latest().await.expect("read_latest")
}

fn some(m: SnapshotMeta, data: &'static [u8]) -> Option<(SnapshotMeta, Bytes)> {
    Some((m, Bytes::from_static(data)))
}

/// Flips a byte in the middle of `path`, as a disk would.
fn damage(path: &Path) {
    let mut raw = std::fs::read(path).expect("read snapshot file");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x5a;
    std::fs::write(path, raw).expect("write snapshot file");
}

async fn latest_file(store: &FileSnapshotStore) -> PathBuf {
    store
        .files()
        .await
        .expect("files")
        .pop()
        .expect("a snapshot file")
}

// ----- which snapshot is the latest ----------------------------------------------------

#[tokio::test]
async fn latest_is_the_highest_last_log_id_whichever_writer_finishes_last() {
    for higher_begun_first in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSnapshotStore::open(dir.path(), 3).await.unwrap();
        let (high, low) = if higher_begun_first {
            let high = store.begin(&meta(3, 30)).await.unwrap();
            (high, store.begin(&meta(2, 20)).await.unwrap())
        } else {
            let low = store.begin(&meta(2, 20)).await.unwrap();
            (store.begin(&meta(3, 30)).await.unwrap(), low)
        };
        let (mut high, mut low) = (high, low);
        high.write(b"from the leader").await.unwrap();
        low.write(b"built locally").await.unwrap();
        high.finish().await.unwrap();
        low.finish().await.unwrap();
        let want = some(meta(3, 30), b"from the leader");
        assert_eq!(
            read(&store).await,
            want,
            "higher begun first: {higher_begun_first}"
        );
        assert_eq!(store.latest().await.unwrap(), Some(meta(3, 30)));
        drop(store);
        let store = FileSnapshotStore::open(dir.path(), 3).await.unwrap();
        assert_eq!(store.latest().await.unwrap(), Some(meta(3, 30)));
        assert_eq!(read(&store).await, want, "after reopen");
    }
}

#[tokio::test]
async fn of_two_with_the_same_last_log_id_the_later_begun_is_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    let mut first = store.begin(&meta(2, 20)).await.unwrap();
    let mut second = store.begin(&meta(2, 20)).await.unwrap();
    first.write(b"first").await.unwrap();
    second.write(b"second").await.unwrap();
    second.finish().await.unwrap();
    first.finish().await.unwrap();
    assert_eq!(read(&store).await, some(meta(2, 20), b"second"));
}

// ----- pruning -------------------------------------------------------------------------

#[tokio::test]
async fn pruning_keeps_the_highest_last_log_ids_not_the_last_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    write(&store, &meta(3, 30), b"thirty").await;
    write(&store, &meta(1, 10), b"ten").await;
    write(&store, &meta(2, 20), b"twenty").await;
    write(&store, &meta(1, 5), b"five").await;
    assert_eq!(store.files().await.unwrap().len(), 2);
    assert_eq!(read(&store).await, some(meta(3, 30), b"thirty"));
    // The one kept beside the latest is the next highest: damage the latest to see it.
    damage(&latest_file(&store).await);
    assert_eq!(read(&store).await, some(meta(2, 20), b"twenty"));
}

#[tokio::test]
async fn pruning_never_deletes_the_only_whole_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 1).await.unwrap();
    write(&store, &meta(2, 20), b"to be damaged").await;
    damage(&latest_file(&store).await);
    // Keeping one by last log id alone would keep the damaged 20 and delete this one.
    write(&store, &meta(1, 10), b"the only whole one").await;
    assert_eq!(read(&store).await, some(meta(1, 10), b"the only whole one"));
    drop(store);
    let store = FileSnapshotStore::open(dir.path(), 1).await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta(1, 10)));
    assert_eq!(read(&store).await, some(meta(1, 10), b"the only whole one"));
}

// ----- damaged files -------------------------------------------------------------------

/// Collects the warnings emitted while it is the default subscriber.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut line = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                let _ = write!(line, "{}={value:?} ", field.name());
            },
        );
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn a_damaged_latest_falls_back_to_the_previous_one_with_a_warning_naming_it() {
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    write(&store, &meta(1, 10), b"previous").await;
    write(&store, &meta(2, 20), b"latest, to be damaged").await;
    let bad = latest_file(&store).await;
    damage(&bad);
    drop(store);
    // A restart: `latest` is the first look-up, and must agree with `read_latest`.
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta(1, 10)));
    assert_eq!(read(&store).await, some(meta(1, 10), b"previous"));
    let name = bad.file_name().unwrap().to_str().unwrap().to_string();
    let seen = warnings.0.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|w| w.contains(&name)),
        "warnings {seen:?} should name {name}"
    );
}

#[tokio::test]
async fn a_latest_with_an_unreadable_header_falls_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    write(&store, &meta(1, 10), b"previous").await;
    write(&store, &meta(2, 20), b"latest, to be cut short").await;
    let bad = latest_file(&store).await;
    std::fs::write(&bad, b"RAFT").unwrap();
    assert_eq!(read(&store).await, some(meta(1, 10), b"previous"));
    assert_eq!(store.latest().await.unwrap(), Some(meta(1, 10)));
}

#[tokio::test]
async fn with_no_whole_snapshot_left_the_newest_damaged_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    write(&store, &meta(1, 10), b"older, damaged too").await;
    write(&store, &meta(2, 20), b"newest, damaged").await;
    let files = store.files().await.unwrap();
    for f in &files {
        damage(f);
    }
    let newest = files.last().unwrap().file_name().unwrap().to_str().unwrap();
    for result in [
        store.read_latest().await.map(|r| r.map(|(m, _)| m)),
        FileSnapshotStore::open(dir.path(), 2)
            .await
            .unwrap()
            .latest()
            .await,
    ] {
        match result {
            Err(StorageError::Corrupt { location, .. }) => {
                assert!(location.contains(newest), "{location} should name {newest}")
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
}

// ----- metadata look-ups ---------------------------------------------------------------

#[tokio::test]
async fn latest_reads_the_files_only_on_its_first_look_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
        write(&store, &meta(1, 10), b"previous").await;
        write(&store, &meta(2, 20), b"latest").await;
    }
    let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta(2, 20)));
    // Damage behind the store's back: a second `latest` does not read the file again...
    damage(&latest_file(&store).await);
    assert_eq!(store.latest().await.unwrap(), Some(meta(2, 20)));
    // ...while `read_latest` always verifies, falls back, and corrects what is remembered.
    assert_eq!(read(&store).await, some(meta(1, 10), b"previous"));
    assert_eq!(store.latest().await.unwrap(), Some(meta(1, 10)));
    // A snapshot this process finishes is the latest at once.
    write(&store, &meta(3, 30), b"newer").await;
    assert_eq!(store.latest().await.unwrap(), Some(meta(3, 30)));
}

// ----- a failed last write -------------------------------------------------------------

const FSIZE_CHILD_ENV: &str = "RAFT_FSIZE_CHILD_DIR";

/// The soft file size limit of this process, in bytes (Linux).
fn file_size_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max file size"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Child mode: fills a snapshot up to the file size limit, so that only the trailer's
/// write fails, and prints what `finish` said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsize_child_writes_a_snapshot_whose_trailer_passes_the_limit() {
    let Ok(dir) = std::env::var(FSIZE_CHILD_ENV) else {
        return; // only runs as the child of the test below
    };
    let limit = file_size_limit().expect("a file size limit in /proc/self/limits");
    let store = FileSnapshotStore::open(&dir, 2).await.expect("open");
    let m = meta(1, 10);
    let header = 8 + 4 + postcard::to_allocvec(&m).expect("encode").len();
    let data = vec![7u8; limit - header];
    let mut w = store.begin(&m).await.expect("begin");
    for chunk in data.chunks(1000) {
        w.write(chunk)
            .await
            .expect("writes below the limit succeed");
    }
    match w.finish().await {
        Ok(_) => println!("FINISH OK"),
        Err(e) => println!("FINISH ERR {e}"),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn finish_reports_a_trailer_write_that_failed() {
    if std::env::var(FSIZE_CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // SIGXFSZ ignored (kept across exec), so a write past the limit fails with EFBIG.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 8 && exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fsize_child_writes_a_snapshot_whose_trailer_passes_the_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FSIZE_CHILD_ENV, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("FINISH ERR"),
        "a failed trailer write was reported as success: {stdout}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = FileSnapshotStore::open(dir.path(), 2).await.unwrap();
        assert_eq!(store.files().await.unwrap(), Vec::<PathBuf>::new());
        assert_eq!(store.latest().await.unwrap(), None);
    });
}
