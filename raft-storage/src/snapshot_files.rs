//! A durable [`SnapshotStore`] as files in a directory (beside the redb log).
//!
//! Why files and not redb: a snapshot is one large blob written once as a stream and read
//! back as a stream. A file takes chunks as they come without holding the whole snapshot
//! in memory or in one transaction, and the atomic-rename protocol below gives the same
//! all-or-nothing guarantee a redb commit would.
//!
//! File format (`snap-<seq>.snap`, `seq` increasing with each [`begin`](SnapshotStore::begin)):
//! `b"RAFTSNP1"`, meta length (u32 LE), postcard(`SnapshotMeta`), the data, data length
//! (u64 LE), CRC32 over meta and data (u32 LE).
//!
//! Finishing writes the trailer, flushes and fsyncs the file, renames `snap-<seq>.tmp` to
//! `snap-<seq>.snap`, and fsyncs the directory. A crash before the rename leaves a `.tmp`
//! file, removed on the next open, and the previous snapshot whole.
//!
//! Which snapshot is the latest: the whole one with the highest `last_log_id`, then the
//! highest `seq`; not the last one begun. Two writers can be open at once (one built
//! locally, one received from the leader), and the one covering less of the log may well
//! finish last. A file that fails its checksum or cannot be parsed is skipped with a
//! warning naming it, and the next one down is used; only when none is whole is the
//! newest damaged one reported as [`StorageError::Corrupt`].
//!
//! After each finish, the `keep` snapshots with the highest last log ids are kept and the
//! others deleted, except the latest, which is never deleted even when damaged files rank
//! above it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{LogId, SnapshotMeta, SnapshotStore, SnapshotWriter, StorageError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAGIC: &[u8; 8] = b"RAFTSNP1";
const HEADER: usize = MAGIC.len() + 4;
const TRAILER: usize = 8 + 4;

/// Snapshots as files in one directory, keeping the `keep` with the highest last log ids.
#[derive(Debug, Clone)]
pub struct FileSnapshotStore {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    keep: usize,
    next_seq: AtomicU64,
    /// The latest whole snapshot as this process last verified or wrote it; `None` until
    /// the first look-up (see `latest` for why only metadata is remembered).
    known: Mutex<Option<Known>>,
    /// Held while a finished snapshot is published (renamed, made the latest, old ones
    /// pruned), so two writers finishing at once never prune from a stale listing.
    publishing: tokio::sync::Mutex<()>,
}

/// A snapshot known to be whole: verified by a look-up, or written by this process.
#[derive(Debug, Clone)]
struct Known {
    seq: u64,
    meta: SnapshotMeta,
}

/// Orders snapshots: the highest last log id is the latest; of two with the same one, the
/// later begun. Files whose header cannot be read (`None`) rank below every readable one.
type Rank = (Option<LogId>, u64);

impl Known {
    fn rank(&self) -> Rank {
        (Some(self.meta.last_log_id), self.seq)
    }
}

/// A finished snapshot file and the metadata its header claims (`None`: unreadable).
struct OnDisk {
    seq: u64,
    path: PathBuf,
    header: Option<SnapshotMeta>,
}

impl OnDisk {
    fn rank(&self) -> Rank {
        (self.header.as_ref().map(|m| m.last_log_id), self.seq)
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {what}: {e}", path.display()),
    ))
}

fn corrupt(path: &Path, detail: String) -> StorageError {
    StorageError::Corrupt {
        location: path.display().to_string(),
        detail,
    }
}

fn lock(m: &Mutex<Option<Known>>) -> MutexGuard<'_, Option<Known>> {
    // Every critical section is a plain read or assignment: a panic cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FileSnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`, keeping the `keep`
    /// snapshots with the highest last log ids (at least one). Leftovers of interrupted
    /// writes are removed.
    pub async fn open(
        dir: impl AsRef<Path>,
        keep: usize,
    ) -> Result<FileSnapshotStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(&dir, "cannot create the snapshot directory", e))?;
        let mut max_seq = 0;
        for (seq, path, finished) in list(&dir).await? {
            // Leftover `.tmp` files count too, so a new writer never reuses their name.
            max_seq = max_seq.max(seq);
            if !finished {
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(|e| io_err(&path, "cannot remove an abandoned snapshot", e))?;
            }
        }
        Ok(FileSnapshotStore {
            inner: Arc::new(Shared {
                dir,
                keep: keep.max(1),
                next_seq: AtomicU64::new(max_seq + 1),
                known: Mutex::new(None),
                publishing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The directory holding the snapshots.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The finished snapshot files in the order that picks the latest, lowest first: by
    /// the last log id their header states, then by sequence number; files whose header
    /// cannot be read come first. The last one is the latest unless it is damaged.
    pub async fn files(&self) -> Result<Vec<PathBuf>, StorageError> {
        let mut files = ranked(&self.inner.dir).await?;
        files.reverse();
        Ok(files.into_iter().map(|f| f.path).collect())
    }

    fn known(&self) -> Option<Known> {
        lock(&self.inner.known).clone()
    }

    /// The highest-ranked whole snapshot with its checksum-verified bytes. Damaged files
    /// are skipped with a warning; if no whole one remains, the highest-ranked damaged one
    /// is the error.
    async fn newest_whole(&self) -> Result<Option<(Known, Bytes)>, StorageError> {
        let files = ranked(&self.inner.dir).await?;
        let listed: Vec<u64> = files.iter().map(|f| f.seq).collect();
        let mut damage = None;
        for file in files {
            match read_verified(&file.path).await {
                // Pruned by a writer finishing since the listing: a better one exists.
                Ok(None) => continue,
                Ok(Some((meta, data))) => {
                    let found = Known {
                        seq: file.seq,
                        meta,
                    };
                    self.remember(Some(&found), &listed);
                    return Ok(Some((found, data)));
                }
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!(
                        file = %file.path.display(),
                        "snapshot skipped, falling back to the previous one: {e}"
                    );
                    damage.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.remember(None, &listed);
        damage.map_or(Ok(None), Err)
    }

    /// Records what a look-up over the files `listed` found as the latest. A remembered
    /// latest missing from the listing was finished since, and stays if it ranks higher.
    fn remember(&self, found: Option<&Known>, listed: &[u64]) {
        let mut known = lock(&self.inner.known);
        let finished_since = known.as_ref().is_some_and(|k| {
            let higher = found.is_none_or(|f| k.rank() > f.rank());
            higher && !listed.contains(&k.seq)
        });
        if !finished_since {
            *known = found.cloned();
        }
    }

    /// Makes `new` (whole: this process just wrote and synced it) the latest if it ranks
    /// above the remembered latest and every file listed; returns whether it did.
    fn promote(&self, new: &Known, files: &[OnDisk]) -> bool {
        let mut known = lock(&self.inner.known);
        let highest = known.as_ref().is_none_or(|k| k.rank() < new.rank())
            && files.first().map(OnDisk::rank) == Some(new.rank());
        if highest {
            *known = Some(new.clone());
        }
        highest
    }

    /// Publishes a finished, renamed snapshot: updates the latest, then prunes.
    async fn publish(&self, new: Known) -> Result<(), StorageError> {
        let files = ranked(&self.inner.dir).await?;
        let latest = if self.promote(&new, &files) {
            Some(new.seq)
        } else {
            // Something ranks above the new snapshot. Even when it was verified before,
            // it may be damaged since, and pruning on that memory could delete the only
            // whole snapshot left: look again (this is rare, a stale build finishing late).
            self.newest_whole().await?.map(|(k, _)| k.seq)
        };
        self.prune(&files, latest).await
    }

    /// Deletes the snapshots ranked below the `keep` highest, except the latest.
    async fn prune(&self, files: &[OnDisk], latest: Option<u64>) -> Result<(), StorageError> {
        for file in files.iter().skip(self.inner.keep) {
            if Some(file.seq) == latest {
                continue;
            }
            match tokio::fs::remove_file(&file.path).await {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(io_err(&file.path, "cannot remove an old snapshot", e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Snapshot files in `dir` as (seq, path, finished), sorted by seq.
async fn list(dir: &Path) -> Result<Vec<(u64, PathBuf, bool)>, StorageError> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| io_err(dir, "cannot list the snapshot directory", e))?;
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(|e| io_err(dir, "cannot list the snapshot directory", e))?
    {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("snap-") else {
            continue;
        };
        let (seq, finished) = if let Some(s) = rest.strip_suffix(".snap") {
            (s, true)
        } else if let Some(s) = rest.strip_suffix(".tmp") {
            (s, false)
        } else {
            continue;
        };
        if let Ok(seq) = seq.parse::<u64>() {
            out.push((seq, entry.path(), finished));
        }
    }
    out.sort();
    Ok(out)
}

/// The finished snapshot files, highest rank first, each with its header's metadata.
async fn ranked(dir: &Path) -> Result<Vec<OnDisk>, StorageError> {
    let mut out = Vec::new();
    for (seq, path, finished) in list(dir).await? {
        if !finished {
            continue;
        }
        let header = match read_header(&path).await {
            Ok(Some(meta)) => Some(meta),
            Ok(None) => continue, // pruned since the listing
            Err(StorageError::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        out.push(OnDisk { seq, path, header });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.rank()));
    Ok(out)
}

/// Checks the fixed header of a `file_len`-byte snapshot file; returns the meta length.
fn check_header(path: &Path, head: &[u8], file_len: u64) -> Result<usize, StorageError> {
    if file_len < (HEADER + TRAILER) as u64 || head.len() < HEADER || &head[..MAGIC.len()] != MAGIC
    {
        return Err(corrupt(
            path,
            "not a snapshot file (bad header or truncated)".into(),
        ));
    }
    let meta_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if (HEADER + TRAILER) as u64 + meta_len as u64 > file_len {
        return Err(corrupt(
            path,
            format!("metadata length {meta_len} runs past the end of the file"),
        ));
    }
    Ok(meta_len)
}

fn decode_meta(path: &Path, raw: &[u8]) -> Result<SnapshotMeta, StorageError> {
    postcard::from_bytes(raw).map_err(|e| corrupt(path, format!("cannot decode metadata: {e}")))
}

/// The metadata a snapshot file's header states, without reading or verifying the data;
/// `None` when the file no longer exists.
async fn read_header(path: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "cannot open", e)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| io_err(path, "cannot stat", e))?
        .len();
    let mut head = [0u8; HEADER];
    if len >= HEADER as u64 {
        file.read_exact(&mut head)
            .await
            .map_err(|e| io_err(path, "cannot read", e))?;
    }
    let mut meta = vec![0u8; check_header(path, &head, len)?];
    file.read_exact(&mut meta)
        .await
        .map_err(|e| io_err(path, "cannot read", e))?;
    decode_meta(path, &meta).map(Some)
}

/// A snapshot file's metadata and data, checksum verified; `None` when the file no
/// longer exists.
async fn read_verified(path: &Path) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
    match tokio::fs::read(path).await {
        Ok(raw) => parse(path, Bytes::from(raw)).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, "cannot read", e)),
    }
}

/// Parses and verifies a snapshot file's bytes.
fn parse(path: &Path, raw: Bytes) -> Result<(SnapshotMeta, Bytes), StorageError> {
    let meta_end = HEADER + check_header(path, &raw, raw.len() as u64)?;
    let trailer = &raw[raw.len() - TRAILER..];
    let data_len = u64::from_le_bytes(
        trailer[..8]
            .try_into()
            .map_err(|_| corrupt(path, "short trailer".into()))?,
    );
    let stored_crc = u32::from_le_bytes(
        trailer[8..]
            .try_into()
            .map_err(|_| corrupt(path, "short trailer".into()))?,
    );
    let data = raw.slice(meta_end..raw.len() - TRAILER);
    if data.len() as u64 != data_len {
        return Err(corrupt(
            path,
            format!(
                "data is {} bytes but the trailer says {data_len} (truncated file?)",
                data.len()
            ),
        ));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[HEADER..meta_end]);
    h.update(&data);
    let actual = h.finalize();
    if actual != stored_crc {
        return Err(corrupt(
            path,
            format!("checksum mismatch: stored {stored_crc:08x}, computed {actual:08x}"),
        ));
    }
    let meta = decode_meta(path, &raw[HEADER..meta_end])?;
    Ok((meta, data))
}

#[async_trait]
impl SnapshotStore for FileSnapshotStore {
    async fn begin(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let tmp = self.inner.dir.join(format!("snap-{seq:020}.tmp"));
        let done = self.inner.dir.join(format!("snap-{seq:020}.snap"));
        let meta_bytes = postcard::to_allocvec(meta)
            .map_err(|e| StorageError::Backend(format!("cannot encode snapshot metadata: {e}")))?;
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(&tmp, "cannot create", e))?;
        let mut header = Vec::with_capacity(HEADER + meta_bytes.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        header.extend_from_slice(&meta_bytes);
        let mut writer = FileSnapshotWriter {
            known: Known {
                seq,
                meta: meta.clone(),
            },
            file: None,
            crc: crc32fast::Hasher::new(),
            len: 0,
            tmp,
            done,
            renamed: false,
            store: self.clone(),
        };
        // Owned by the writer before the first write, so a failure removes the file.
        let file = writer.file.insert(file);
        file.write_all(&header)
            .await
            .map_err(|e| io_err(&writer.tmp, "cannot write", e))?;
        writer.crc.update(&meta_bytes);
        Ok(Box::new(writer))
    }

    /// The latest whole snapshot's metadata.
    ///
    /// Why the metadata is remembered rather than read from the header alone: a header
    /// says nothing about whether the data behind it is whole, and `latest` must name the
    /// snapshot `read_latest` returns. At start the node reconciles its log against
    /// `latest` and then restores the state machine from `read_latest`; if a damaged
    /// latest made them disagree, the log would be purged past the snapshot actually
    /// restored. So the first look-up in a process verifies fully (the same walk as
    /// `read_latest`) and remembers the result; later calls, and snapshots this process
    /// finishes (whole by construction), cost no reads. Damage after that first look-up
    /// is caught by the next `read_latest`, which always verifies and corrects what is
    /// remembered.
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        if let Some(known) = self.known() {
            return Ok(Some(known.meta));
        }
        Ok(self.newest_whole().await?.map(|(known, _)| known.meta))
    }

    async fn read_latest(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        Ok(self
            .newest_whole()
            .await?
            .map(|(known, data)| (known.meta, data)))
    }
}

struct FileSnapshotWriter {
    known: Known,
    file: Option<tokio::fs::File>,
    crc: crc32fast::Hasher,
    len: u64,
    tmp: PathBuf,
    done: PathBuf,
    /// Set once the file is in place; until then, dropping the writer removes `tmp`.
    renamed: bool,
    store: FileSnapshotStore,
}

#[async_trait]
impl SnapshotWriter for FileSnapshotWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StorageError::Invalid("snapshot writer already finished".into()))?;
        file.write_all(chunk)
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))?;
        self.crc.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<SnapshotMeta, StorageError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| StorageError::Invalid("snapshot writer already finished".into()))?;
        self.seal(file).await?;
        let store = self.store.clone();
        let _publishing = store.inner.publishing.lock().await;
        tokio::fs::rename(&self.tmp, &self.done)
            .await
            .map_err(|e| io_err(&self.done, "cannot rename into place", e))?;
        self.renamed = true;
        sync_dir(&store.inner.dir).await?;
        store.publish(self.known.clone()).await?;
        Ok(self.known.meta.clone())
    }
}

impl FileSnapshotWriter {
    /// Writes the trailer and makes the whole file durable.
    async fn seal(&self, mut file: tokio::fs::File) -> Result<(), StorageError> {
        let crc = self.crc.clone().finalize();
        let mut trailer = [0u8; TRAILER];
        trailer[..8].copy_from_slice(&self.len.to_le_bytes());
        trailer[8..].copy_from_slice(&crc.to_le_bytes());
        file.write_all(&trailer)
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))?;
        // tokio's File writes in the background and keeps a failed write's error for the
        // next call; `sync_all` waits for that write but drops its error, so only `flush`
        // reports a failed trailer (or last chunk) before we call the file whole.
        file.flush()
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err(&self.tmp, "cannot fsync", e))
    }
}

/// Fsyncs a directory, making a rename in it durable.
async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&dir, "cannot fsync the directory", e))
    })
    .await
    .map_err(|e| StorageError::Backend(format!("fsync task failed: {e}")))?
}

impl Drop for FileSnapshotWriter {
    fn drop(&mut self) {
        if !self.renamed {
            // Abandoned or failed: the previous snapshot stays the latest. Best effort; a
            // leftover is removed on the next open.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
