//! One JSON file of the file store, kept in memory, with group commit.
//!
//! Changes are applied in order to the latest state (`pending`), each under a short lock with no
//! I/O. One write at a time then makes the latest state durable (temp file, fsync, rename, folder
//! fsync) and only after that publishes it to readers and answers every request whose change it
//! contains: all the changes that arrived while the previous write was in progress share the next
//! write and its fsyncs. So an acknowledged change is always on disk, readers never see a change
//! that is not, and neither readers nor new changes wait while a write is in progress.
//!
//! A failed write drops every change not on disk (those of the failed write, and any made on top
//! of them since) and fails their requests; the state goes back to what is on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, oneshot};

use super::{FileStamp, stamp};
use crate::durable_file;
use crate::store::{StoreError, StoreResult};

/// The durable state readers see, and the identity of the file it was read from or written to.
pub(super) struct Published<T> {
    pub data: Arc<T>,
    pub stamp: Option<FileStamp>,
}

struct Pending<T> {
    /// The latest state: every change made, durable or not.
    data: T,
    /// Requests whose changes are in `data` but in no write yet.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// A write task is running; it takes `waiters` again when it is done.
    writing: bool,
}

struct Inner<T> {
    path: PathBuf,
    encode: fn(&T) -> anyhow::Result<Vec<u8>>,
    published: RwLock<Published<T>>,
    pending: Mutex<Pending<T>>,
}

pub(super) struct GroupFile<T> {
    inner: Arc<Inner<T>>,
}

impl<T: Clone + Send + Sync + 'static> GroupFile<T> {
    pub fn new(path: PathBuf, data: T, encode: fn(&T) -> anyhow::Result<Vec<u8>>) -> Self {
        let stamp = stamp(&path);
        Self {
            inner: Arc::new(Inner {
                published: RwLock::new(Published {
                    data: Arc::new(data.clone()),
                    stamp,
                }),
                pending: Mutex::new(Pending {
                    data,
                    waiters: Vec::new(),
                    writing: false,
                }),
                path,
                encode,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The durable state.
    pub fn read(&self) -> Arc<T> {
        self.inner.published().data.clone()
    }

    /// The identity of the file the durable state came from.
    pub fn stamp(&self) -> Option<FileStamp> {
        self.inner.published().stamp
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must leave
    /// the state as it found it when it returns an error.
    pub async fn update<R>(&self, change: impl FnOnce(&mut T) -> StoreResult<R>) -> StoreResult<R> {
        let (out, written) = {
            let mut pending = self.inner.pending.lock().await;
            let out = change(&mut pending.data)?;
            // Even a change that altered nothing waits: its answer may rest on earlier changes
            // that are not durable yet.
            let (tx, rx) = oneshot::channel();
            pending.waiters.push(tx);
            if !pending.writing {
                pending.writing = true;
                // A task of its own, so a request that is cancelled mid-write cannot stop the
                // write that other requests are waiting for.
                tokio::spawn(self.inner.clone().write_until_done());
            }
            (out, rx)
        };
        match written.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "could not write data file: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "the data file writer stopped".into(),
            )),
        }
    }

    /// Replaces the state with `data` read from the file (changed on disk by someone else),
    /// unless changes of ours are still on their way to disk: then the file's new identity is
    /// our own write, about to be published.
    pub async fn reload(&self, data: T, stamp: Option<FileStamp>) -> bool {
        let mut pending = self.inner.pending.lock().await;
        if pending.writing || !pending.waiters.is_empty() || self.stamp() == stamp {
            return false;
        }
        pending.data = data.clone();
        *self.inner.published_mut() = Published {
            data: Arc::new(data),
            stamp,
        };
        true
    }
}

impl<T: Clone + Send + Sync + 'static> Inner<T> {
    fn published(&self) -> std::sync::RwLockReadGuard<'_, Published<T>> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> std::sync::RwLockWriteGuard<'_, Published<T>> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes batches until no request is waiting.
    async fn write_until_done(self: Arc<Self>) {
        loop {
            let (snapshot, waiters) = {
                let mut pending = self.pending.lock().await;
                if pending.waiters.is_empty() {
                    pending.writing = false;
                    return;
                }
                (
                    Arc::new(pending.data.clone()),
                    std::mem::take(&mut pending.waiters),
                )
            };
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
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "data file write failed; its changes are dropped");
                    let message = e.to_string();
                    let mut pending = self.pending.lock().await;
                    pending.data = self.published().data.as_ref().clone();
                    let later = std::mem::take(&mut pending.waiters);
                    for waiter in waiters.into_iter().chain(later) {
                        let _ = waiter.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}
