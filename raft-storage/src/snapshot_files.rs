//! A durable [`SnapshotStore`] as files in a directory (beside the redb log).
//!
//! Why files and not redb: a snapshot is one large blob written once as a stream and read
//! back as a stream. A file takes chunks as they come without holding the whole snapshot
//! in memory or in one transaction, and the atomic-rename protocol below gives the same
//! all-or-nothing guarantee a redb commit would.
//!
//! File format (`snap-<seq>.snap`, `seq` increasing):
//! `b"RAFTSNP1"`, meta length (u32 LE), postcard(`SnapshotMeta`), the data, data length
//! (u64 LE), CRC32 over meta and data (u32 LE).
//!
//! Finishing writes the trailer, fsyncs the file, renames `snap-<seq>.tmp` to
//! `snap-<seq>.snap`, and fsyncs the directory; only then is it the latest. A crash before
//! the rename leaves a `.tmp` file, removed on the next open, and the previous snapshot
//! whole. Older snapshots beyond the configured count are deleted after each finish.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{SnapshotMeta, SnapshotStore, SnapshotWriter, StorageError};
use tokio::io::AsyncWriteExt;

const MAGIC: &[u8; 8] = b"RAFTSNP1";
const HEADER: usize = MAGIC.len() + 4;
const TRAILER: usize = 8 + 4;

/// Snapshots as files in one directory, keeping the latest `keep`.
#[derive(Debug, Clone)]
pub struct FileSnapshotStore {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    keep: usize,
    next_seq: AtomicU64,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {what}: {e}", path.display()),
    ))
}

impl FileSnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`, keeping the latest `keep`
    /// snapshots (at least one). Leftovers of interrupted writes are removed.
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
            if finished {
                max_seq = max_seq.max(seq);
            } else {
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
            }),
        })
    }

    /// The directory holding the snapshots.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The finished snapshot files, oldest first.
    pub async fn files(&self) -> Result<Vec<PathBuf>, StorageError> {
        Ok(list(&self.inner.dir)
            .await?
            .into_iter()
            .filter(|(_, _, finished)| *finished)
            .map(|(_, p, _)| p)
            .collect())
    }

    async fn latest_file(&self) -> Result<Option<PathBuf>, StorageError> {
        Ok(self.files().await?.pop())
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

/// Parses and verifies a snapshot file's bytes.
fn parse(path: &Path, raw: Bytes) -> Result<(SnapshotMeta, Bytes), StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        location: path.display().to_string(),
        detail,
    };
    if raw.len() < HEADER + TRAILER || &raw[..MAGIC.len()] != MAGIC {
        return Err(corrupt(
            "not a snapshot file (bad header or truncated)".into(),
        ));
    }
    let meta_len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize;
    let meta_end = HEADER
        .checked_add(meta_len)
        .filter(|&end| end <= raw.len() - TRAILER)
        .ok_or_else(|| {
            corrupt(format!(
                "metadata length {meta_len} runs past the end of the file"
            ))
        })?;
    let trailer = &raw[raw.len() - TRAILER..];
    let data_len = u64::from_le_bytes(
        trailer[..8]
            .try_into()
            .map_err(|_| corrupt("short trailer".into()))?,
    );
    let stored_crc = u32::from_le_bytes(
        trailer[8..]
            .try_into()
            .map_err(|_| corrupt("short trailer".into()))?,
    );
    let data = raw.slice(meta_end..raw.len() - TRAILER);
    if data.len() as u64 != data_len {
        return Err(corrupt(format!(
            "data is {} bytes but the trailer says {data_len} (truncated file?)",
            data.len()
        )));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[HEADER..meta_end]);
    h.update(&data);
    let actual = h.finalize();
    if actual != stored_crc {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored_crc:08x}, computed {actual:08x}"
        )));
    }
    let meta = postcard::from_bytes(&raw[HEADER..meta_end])
        .map_err(|e| corrupt(format!("cannot decode metadata: {e}")))?;
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
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(&tmp, "cannot create", e))?;
        let mut header = Vec::with_capacity(HEADER + meta_bytes.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        header.extend_from_slice(&meta_bytes);
        file.write_all(&header)
            .await
            .map_err(|e| io_err(&tmp, "cannot write", e))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&meta_bytes);
        Ok(Box::new(FileSnapshotWriter {
            meta: meta.clone(),
            file: Some(file),
            crc,
            len: 0,
            tmp,
            done,
            store: self.inner.clone(),
        }))
    }

    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.read_latest().await?.map(|(meta, _)| meta))
    }

    async fn read_latest(&self) -> Result<Option<(SnapshotMeta, Bytes)>, StorageError> {
        let Some(path) = self.latest_file().await? else {
            return Ok(None);
        };
        let raw = tokio::fs::read(&path)
            .await
            .map_err(|e| io_err(&path, "cannot read", e))?;
        parse(&path, Bytes::from(raw)).map(Some)
    }
}

struct FileSnapshotWriter {
    meta: SnapshotMeta,
    file: Option<tokio::fs::File>,
    crc: crc32fast::Hasher,
    len: u64,
    tmp: PathBuf,
    done: PathBuf,
    store: Arc<Shared>,
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
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StorageError::Invalid("snapshot writer already finished".into()))?;
        let crc = self.crc.clone().finalize();
        let mut trailer = [0u8; TRAILER];
        trailer[..8].copy_from_slice(&self.len.to_le_bytes());
        trailer[8..].copy_from_slice(&crc.to_le_bytes());
        file.write_all(&trailer)
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err(&self.tmp, "cannot fsync", e))?;
        drop(file);
        tokio::fs::rename(&self.tmp, &self.done)
            .await
            .map_err(|e| io_err(&self.done, "cannot rename into place", e))?;
        let dir = self.store.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(&dir, "cannot fsync the directory", e))
        })
        .await
        .map_err(|e| StorageError::Backend(format!("fsync task failed: {e}")))??;
        self.prune().await?;
        Ok(self.meta.clone())
    }
}

impl FileSnapshotWriter {
    /// Deletes finished snapshots beyond the configured count, oldest first.
    async fn prune(&self) -> Result<(), StorageError> {
        let finished: Vec<PathBuf> = list(&self.store.dir)
            .await?
            .into_iter()
            .filter(|(_, _, f)| *f)
            .map(|(_, p, _)| p)
            .collect();
        let excess = finished.len().saturating_sub(self.store.keep);
        for path in &finished[..excess] {
            tokio::fs::remove_file(path)
                .await
                .map_err(|e| io_err(path, "cannot remove an old snapshot", e))?;
        }
        Ok(())
    }
}

impl Drop for FileSnapshotWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Abandoned: the previous snapshot stays the latest. Best effort; a leftover is
            // removed on the next open.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
