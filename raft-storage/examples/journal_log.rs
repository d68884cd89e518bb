//! A complete durable `LogStore` to start a backend from: every change is one record
//! appended to a journal file and synced before the call returns; opening replays the
//! journal into memory; a purge rewrites the journal as the state it leaves (so the file
//! follows the state, not the history). About 200 lines, passing the conformance suite and
//! the crash harness (`raft-storage/tests/example_backend.rs` runs both):
//!
//! `cargo run -p raft-storage --example journal_log` runs the suite against it.
//!
//! Each record is `[length u32][crc32 u32][postcard(Op)]`. A crash can leave the last
//! record torn; it was never acknowledged (its sync had not returned), so opening drops it.
//! Any other damage is reported as `StorageError::Corrupt`, never skipped.
//!
//! The file calls block the async methods for one write and one `fdatasync` each, which
//! the `LogStore` contract allows for short waits; a backend doing more per call would run
//! it in `tokio::task::spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use raft_core::{Entry, HardState, LogId, LogIndex, LogState, LogStore, StorageError, Term};
use raft_storage::contract;
use serde::{Deserialize, Serialize};

/// One journaled change.
#[derive(Serialize, Deserialize)]
enum Op {
    HardState(HardState),
    Append(Vec<Entry>),
    Truncate(LogIndex),
    /// The whole state at a purge: what the rewritten journal starts with.
    Base {
        hard_state: HardState,
        last_purged: LogId,
        entries: Vec<Entry>,
    },
}

#[derive(Default)]
struct State {
    hard_state: HardState,
    last_purged: LogId,
    entries: Vec<Entry>,
}

impl State {
    fn log_state(&self) -> LogState {
        LogState {
            last_purged: self.last_purged,
            last: self.entries.last().map_or(self.last_purged, |e| e.log_id),
        }
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index.0.checked_sub(self.last_purged.index.0 + 1)?;
        usize::try_from(offset)
            .ok()
            .filter(|&p| p < self.entries.len())
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::HardState(hs) => self.hard_state = hs,
            Op::Append(es) => self.entries.extend(es),
            Op::Truncate(from) => {
                let keep = from.0.saturating_sub(self.last_purged.index.0 + 1);
                self.entries
                    .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            }
            Op::Base {
                hard_state,
                last_purged,
                entries,
            } => {
                *self = State {
                    hard_state,
                    last_purged,
                    entries,
                }
            }
        }
    }
}

/// The journal store.
pub struct JournalLog {
    path: PathBuf,
    inner: Mutex<(State, File)>,
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {what}: {e}", path.display()),
    ))
}

fn frame(op: &Op) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_allocvec(op).map_err(|e| StorageError::Backend(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

impl JournalLog {
    /// Opens (or creates) the journal at `path` and replays it.
    pub fn open(path: impl Into<PathBuf>) -> Result<JournalLog, StorageError> {
        let path = path.into();
        let mut raw = Vec::new();
        if path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut raw))
                .map_err(|e| io(&path, "reading the journal", e))?;
        }
        let (mut state, mut at) = (State::default(), 0usize);
        while raw.len() - at >= 8 {
            let len = u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(raw[at + 4..at + 8].try_into().expect("4 bytes"));
            let Some(body) = raw.get(at + 8..at + 8 + len) else {
                break; // torn last record: never acknowledged
            };
            let last = at + 8 + len == raw.len();
            if crc32fast::hash(body) != crc {
                if last {
                    break; // torn in place: never acknowledged either
                }
                return Err(StorageError::Corrupt {
                    location: format!("{} at byte {at}", path.display()),
                    detail: "record checksum mismatch".into(),
                });
            }
            let op: Op = postcard::from_bytes(body).map_err(|e| StorageError::Corrupt {
                location: format!("{} at byte {at}", path.display()),
                detail: format!("undecodable record: {e}"),
            })?;
            state.apply(op);
            at += 8 + len;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, "opening the journal", e))?;
        // Cut a torn tail so new records follow the last good one.
        file.set_len(at as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&path, "cutting a torn tail", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, "opening the journal", e))?;
        Ok(JournalLog {
            path,
            inner: Mutex::new((state, file)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, File)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `op` to the journal, syncs it, then applies it in memory.
    fn commit(&self, op: Op) -> Result<(), StorageError> {
        let bytes = frame(&op)?;
        let mut guard = self.lock();
        let (state, file) = &mut *guard;
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| io(&self.path, "writing the journal", e))?;
        state.apply(op);
        Ok(())
    }

    /// Rewrites the journal as one `Base` record (temp file, sync, rename, sync the dir).
    fn rewrite(&self, state: State) -> Result<(), StorageError> {
        let tmp = self.path.with_extension("tmp");
        let base = Op::Base {
            hard_state: state.hard_state,
            last_purged: state.last_purged,
            entries: state.entries,
        };
        let bytes = frame(&base)?;
        let mut guard = self.lock();
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| match self.path.parent() {
                Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
                None => Ok(()),
            });
        written.map_err(|e| io(&self.path, "rewriting the journal", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, "reopening the journal", e))?;
        guard.1 = file;
        guard.0.apply(base);
        Ok(())
    }
}

#[async_trait]
impl LogStore for JournalLog {
    async fn hard_state(&self) -> Result<HardState, StorageError> {
        Ok(self.lock().0.hard_state)
    }

    async fn save_hard_state(&self, hs: &HardState) -> Result<(), StorageError> {
        self.commit(Op::HardState(*hs))
    }

    async fn log_state(&self) -> Result<LogState, StorageError> {
        Ok(self.lock().0.log_state())
    }

    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        contract::check_append(&self.lock().0.log_state(), entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.commit(Op::Append(entries.to_vec()))
    }

    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        let st = self.lock().0.log_state();
        contract::check_truncate(&st, from)?;
        if from > st.last.index {
            return Ok(());
        }
        self.commit(Op::Truncate(from))
    }

    async fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        let next = {
            let guard = self.lock();
            let s = &guard.0;
            if upto.index <= s.last_purged.index {
                return Ok(());
            }
            let from = s.position(upto.index).map_or(s.entries.len(), |p| p + 1);
            State {
                hard_state: s.hard_state,
                last_purged: upto,
                entries: s.entries[from.min(s.entries.len())..].to_vec(),
            }
        };
        self.rewrite(next)
    }

    async fn entries(
        &self,
        range: Range<LogIndex>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let guard = self.lock();
        let s = &guard.0;
        contract::check_read(&s.log_state(), range.start)?;
        // The byte budget is measured as every backend measures it.
        let mut budget = contract::Budget::new(max_bytes);
        Ok((range.start.0..range.end.0)
            .map_while(|i| s.position(LogIndex(i)).map(|p| &s.entries[p]))
            .take_while(|e| budget.admits(e))
            .cloned()
            .collect())
    }

    async fn term(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        let guard = self.lock();
        let s = &guard.0;
        if index == s.last_purged.index {
            return Ok(Some(s.last_purged.term));
        }
        contract::check_read(&s.log_state(), index)?;
        Ok(s.position(index).map(|p| s.entries[p].term()))
    }
}

/// Runs the conformance suite against the journal store (with the crate's file snapshots).
#[allow(dead_code)]
fn main() {
    use raft_storage::conformance::{self, StoreHarness, Stores};
    use std::sync::Arc;

    struct Harness {
        root: PathBuf,
        next: u32,
    }

    #[async_trait]
    impl StoreHarness for Harness {
        async fn create(&mut self) -> Result<Stores, StorageError> {
            self.next += 1;
            self.reopen().await.map(|s| s.expect("always reopens"))
        }
        fn durable(&self) -> bool {
            true
        }
        async fn reopen(&mut self) -> Result<Option<Stores>, StorageError> {
            let dir = self.root.join(format!("case-{}", self.next));
            std::fs::create_dir_all(&dir)?;
            let log = JournalLog::open(dir.join("journal"))?;
            let snapshots = raft_storage::FileSnapshotStore::open(dir.join("snapshots"), 2).await?;
            Ok(Some(Stores {
                log: Arc::new(log),
                snapshots: Arc::new(snapshots),
            }))
        }
    }

    let root = std::env::temp_dir().join(format!("journal-log-{}", std::process::id()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(conformance::run(
        "journal log",
        &mut Harness {
            root: root.clone(),
            next: 0,
        },
    ));
    let _ = std::fs::remove_dir_all(root);
    report.assert_passed();
}
