//! One JSON file of the file store (`users.json`), kept in memory and rewritten whole at each
//! group commit: temp file, fsync, rename, folder fsync, and only then the new state published
//! and its requests answered (see `group_commit.rs`). A file that someone else (the CLI)
//! replaced is noticed by its identity ([`FileStamp`]) and read again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::group_commit::{GroupCommit, Medium};
use crate::durable_file;
use crate::store::StoreResult;

/// A file's identity: when someone else replaces it, one of these changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: std::time::SystemTime,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok()?,
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The durable state readers see, and the identity of the file it was read from or written to.
struct Published<T> {
    data: Arc<T>,
    stamp: Option<FileStamp>,
}

/// How stale a read may be about someone else replacing the file: within this long of a check,
/// reads do not `stat` it again. Under load that is one `stat` per millisecond instead of one per
/// request (a path walk and a syscall, 7% of `/me`'s CPU on the file store); a replacement by
/// the CLI is seen by the first read at most this long after it.
const RECHECK_AFTER: Duration = Duration::from_millis(1);

/// The file, and the state published from it.
struct File<T> {
    path: PathBuf,
    /// Nanoseconds from `origin` to the last `stat` by [`WholeFile::reload_if_replaced`], plus one.
    origin: Instant,
    last_check: AtomicU64,
    encode: fn(&T) -> anyhow::Result<Vec<u8>>,
    published: RwLock<Published<T>>,
}

pub(super) struct WholeFile<T: Clone + Send + Sync + 'static> {
    commit: GroupCommit<File<T>>,
}

impl<T: Clone + Send + Sync + 'static> WholeFile<T> {
    pub fn new(path: PathBuf, data: T, encode: fn(&T) -> anyhow::Result<Vec<u8>>) -> Self {
        let stamp = stamp(&path);
        let file = File {
            published: RwLock::new(Published {
                data: Arc::new(data.clone()),
                stamp,
            }),
            path,
            origin: Instant::now(),
            last_check: AtomicU64::new(0),
            encode,
        };
        Self {
            commit: GroupCommit::new(Arc::new(file), data),
        }
    }

    fn file(&self) -> &File<T> {
        self.commit.medium()
    }

    /// The durable state.
    pub fn read(&self) -> Arc<T> {
        self.file().published().data.clone()
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must leave
    /// the state as it found it when it returns an error.
    pub async fn update<R>(&self, change: impl FnOnce(&mut T) -> StoreResult<R>) -> StoreResult<R> {
        self.commit.update(change).await
    }

    /// Reads the file with `read` and takes it as the state if someone else (the CLI) replaced
    /// it since our last write; returns whether it did. Cheap when nothing changed: one `stat`,
    /// and none within [`RECHECK_AFTER`] of the last one.
    /// While a write of ours is in flight the file's identity changes under us (between its
    /// rename and its publication), and a reload would be refused, so the file is not read then:
    /// reading and parsing all of it on every request in that window made reads stall during a
    /// flood of writes.
    pub async fn reload_if_replaced(
        &self,
        read: fn(&Path) -> anyhow::Result<T>,
    ) -> anyhow::Result<bool> {
        if self.commit.writing() || !self.file().due_for_check() {
            return Ok(false);
        }
        let current = stamp(&self.file().path);
        if current.is_none() || current == self.file().published().stamp {
            return Ok(false);
        }
        let path = self.file().path.clone();
        let data = tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(|e| anyhow::anyhow!("reader stopped: {e}"))??;
        Ok(self.reload(data, current).await)
    }

    /// Replaces the state with `data`, read from the file whose identity was `seen` (changed on
    /// disk by someone else), unless changes of ours are still on their way to disk (then the
    /// file's new identity is our own write, about to be published), or the file is no longer
    /// the one that was read. That last case is a reader that saw one of our writes land, read
    /// it, and got here after a later write of ours: taking its older content would drop
    /// acknowledged changes from memory, and from the file at the next write.
    async fn reload(&self, data: T, seen: Option<FileStamp>) -> bool {
        let file = self.file();
        self.commit
            .replace_if_settled(|latest| {
                if file.published().stamp == seen || stamp(&file.path) != seen {
                    return false;
                }
                *latest = data.clone();
                *file.published_mut() = Published {
                    data: Arc::new(data),
                    stamp: seen,
                };
                true
            })
            .await
    }
}

impl<T> File<T> {
    /// True at most once per [`RECHECK_AFTER`], for the caller that gets to check.
    fn due_for_check(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_check.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RECHECK_AFTER.as_nanos() as u64 {
            return false;
        }
        // Losing the race means another read is checking right now.
        self.last_check
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn published(&self) -> std::sync::RwLockReadGuard<'_, Published<T>> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> std::sync::RwLockWriteGuard<'_, Published<T>> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Each write replaces the whole file with the latest state.
impl<T: Clone + Send + Sync + 'static> Medium for File<T> {
    type State = T;
    type Batch = Arc<T>;
    type Written = ();

    const WRITE_FAILED: &'static str = "could not write data file";
    const WRITER_STOPPED: &'static str = "the data file writer stopped";

    fn take(&self, latest: &mut T) -> Option<Arc<T>> {
        Some(Arc::new(latest.clone()))
    }

    async fn write(self: &Arc<Self>, snapshot: Arc<T>) -> Result<(), String> {
        let path = self.path.clone();
        let encode = self.encode;
        let to_write = snapshot.clone();
        // Encoding and the fsyncs are blocking work: off the async workers.
        let written = tokio::task::spawn_blocking(move || {
            let bytes = encode(&to_write)?;
            durable_file::replace(&path, &bytes)?;
            Ok::<_, anyhow::Error>(stamp(&path))
        })
        .await
        .map_err(|e| anyhow::anyhow!("writer stopped: {e}"))
        .and_then(|r| r);
        match written {
            Ok(stamp) => {
                *self.published_mut() = Published {
                    data: snapshot,
                    stamp,
                };
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "data file write failed; its changes are dropped");
                Err(e.to_string())
            }
        }
    }

    async fn after_write(self: &Arc<Self>, _: (), _: &GroupCommit<Self>) {}

    fn revert(&self, latest: &mut T) {
        *latest = self.published().data.as_ref().clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Vec<u32>) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(v)?)
    }

    fn read(path: &Path) -> Vec<u32> {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    async fn push(file: &WholeFile<Vec<u32>>, n: u32) {
        file.update(|v| {
            v.push(n);
            Ok(())
        })
        .await
        .unwrap();
    }

    /// Until the write task has seen that nobody waits (a reload is refused while it runs).
    async fn idle(file: &WholeFile<Vec<u32>>) {
        loop {
            if !file.commit.writing() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// A reader that saw one of our writes land and reached `reload` only after a later write
    /// of ours must not put the older content back: the second change was acknowledged.
    #[tokio::test]
    async fn a_reload_of_our_own_earlier_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        let file = WholeFile::new(path.clone(), Vec::new(), encode);
        push(&file, 1).await;
        let (seen, seen_stamp) = (read(&path), stamp(&path));
        push(&file, 2).await;
        idle(&file).await;
        assert!(!file.reload(seen, seen_stamp).await);
        assert_eq!(*file.read(), vec![1, 2]);
        push(&file, 3).await;
        assert_eq!(read(&path), vec![1, 2, 3]);
    }

    /// A file replaced by another process (the CLI) is taken, and later changes build on it.
    #[tokio::test]
    async fn a_file_replaced_by_someone_else_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        let file = WholeFile::new(path.clone(), Vec::new(), encode);
        push(&file, 1).await;
        idle(&file).await;
        durable_file::replace(&path, b"[7]").unwrap();
        assert!(file.reload(read(&path), stamp(&path)).await);
        assert_eq!(*file.read(), vec![7]);
        push(&file, 8).await;
        assert_eq!(read(&path), vec![7, 8]);
    }

    /// Reads check the file at most once per window, and a replacement made right after a check
    /// is still taken by a read once the window has passed.
    #[tokio::test]
    async fn a_replacement_right_after_a_check_is_seen_within_the_window() {
        fn read_ok(path: &Path) -> anyhow::Result<Vec<u32>> {
            Ok(read(path))
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        let file = WholeFile::new(path.clone(), Vec::new(), encode);
        push(&file, 1).await;
        idle(&file).await;
        assert!(!file.reload_if_replaced(read_ok).await.unwrap());
        durable_file::replace(&path, b"[7]").unwrap();
        let replaced = Instant::now();
        while !file.reload_if_replaced(read_ok).await.unwrap() {
            assert!(
                replaced.elapsed() < Duration::from_secs(5),
                "the replacement was never taken"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(*file.read(), vec![7]);
    }
}
