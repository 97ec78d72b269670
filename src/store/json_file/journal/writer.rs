//! The sessions with group commit: the pending and the published state, the one write task that
//! appends each batch to the journal, and the compaction that folds the journal into a snapshot.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::super::session_state::{Op, Sessions, Tx};
use super::codec::encode_line;
use super::file::{AppendError, JournalFile, Rotation};
use super::load::load;
use super::snapshot::{SnapshotRecords, write_snapshot};
use super::{COMPACT_FACTOR, COMPACT_MIN_BYTES, OLD_JOURNAL};
use crate::store::{StoreError, StoreResult};

pub(super) struct Pending {
    /// The latest state: every change made, durable or not.
    pub(super) state: Sessions,
    /// The ops of the changes in `state` that are in no write yet.
    ops: Vec<Op>,
    /// Requests whose changes are in `state` but in no write yet.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// A write task is running; it takes `ops` and `waiters` again when it is done.
    writing: bool,
}

pub(super) struct Inner {
    dir: PathBuf,
    /// The durable state, which readers see.
    published: RwLock<Sessions>,
    pub(super) pending: tokio::sync::Mutex<Pending>,
    /// Used by the write task only (and, for a moment, by a compaction that it starts).
    journal: Mutex<JournalFile>,
    compacting: AtomicBool,
    snapshot_len: AtomicU64,
    /// The journal's length, plus the old journal's while it is there.
    journal_len: AtomicU64,
    old_len: AtomicU64,
    /// After a failed compaction, the next waits until the journal has grown past this.
    retry_at: AtomicU64,
    /// How many compactions have finished.
    compactions: tokio::sync::watch::Sender<u64>,
}

pub(crate) struct SessionLog {
    pub(super) inner: Arc<Inner>,
}

impl SessionLog {
    /// Opens the sessions of `dir`. Reads only; nothing is written until a change is.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let loaded = load(dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                published: RwLock::new(loaded.state.clone()),
                pending: tokio::sync::Mutex::new(Pending {
                    state: loaded.state,
                    ops: Vec::new(),
                    waiters: Vec::new(),
                    writing: false,
                }),
                snapshot_len: AtomicU64::new(loaded.snapshot_len),
                journal_len: AtomicU64::new(loaded.journal.good_len + loaded.old_len),
                old_len: AtomicU64::new(loaded.old_len),
                journal: Mutex::new(loaded.journal),
                compacting: AtomicBool::new(false),
                retry_at: AtomicU64::new(0),
                compactions: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// The durable state. Hold it briefly, and never across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Sessions> {
        self.inner.published()
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must not
    /// edit through the [`Tx`] when it returns an error.
    pub async fn update<R>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>,
    ) -> StoreResult<R> {
        let written = {
            let mut guard = self.inner.pending.lock().await;
            let pending = &mut *guard;
            let before = pending.ops.len();
            let out = change(&mut Tx::new(&mut pending.state, &mut pending.ops));
            debug_assert!(out.is_ok() || pending.ops.len() == before);
            let out = out?;
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
        let (out, rx) = written;
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "could not write the sessions journal: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "the sessions journal writer stopped".into(),
            )),
        }
    }

    /// The number of compactions finished so far, and each new one.
    #[cfg(test)]
    pub(super) fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.compactions.subscribe()
    }

    #[cfg(test)]
    pub(super) fn fail_next_write(&self) {
        self.inner.journal().fail_next_write = true;
    }
}

enum Outcome {
    Written(u64),
    Foreign,
    Failed(anyhow::Error),
}

impl Inner {
    fn published(&self) -> RwLockReadGuard<'_, Sessions> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> RwLockWriteGuard<'_, Sessions> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, JournalFile> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes batches until no request is waiting.
    async fn write_until_done(self: Arc<Self>) {
        loop {
            let (ops, waiters) = {
                let mut pending = self.pending.lock().await;
                if pending.waiters.is_empty() {
                    pending.writing = false;
                    return;
                }
                (
                    std::mem::take(&mut pending.ops),
                    std::mem::take(&mut pending.waiters),
                )
            };
            if ops.is_empty() {
                // Nothing to write, and everything before is durable already.
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                continue;
            }
            let seq = self.published().seq + 1;
            let inner = self.clone();
            // Encoding and the fsync are blocking work: off the async workers.
            let (ops, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = match encode_line(seq, &ops) {
                    Ok(line) => match inner.journal().append(&line) {
                        Ok(()) => Outcome::Written(line.len() as u64),
                        Err(AppendError::Foreign) => Outcome::Foreign,
                        Err(AppendError::Io(e)) => Outcome::Failed(e),
                    },
                    Err(e) => Outcome::Failed(e),
                };
                (ops, outcome)
            })
            .await
            .unwrap_or_else(|e| {
                (
                    Vec::new(),
                    Outcome::Failed(anyhow::anyhow!("writer stopped: {e}")),
                )
            });
            match outcome {
                Outcome::Written(len) => {
                    // Rotated tokens are retired as soon as their rotation is durable: in the
                    // published copy here, in the pending one (which may hold newer changes, but
                    // never to a rotated token) below.
                    let rotated: Vec<Uuid> = ops
                        .iter()
                        .filter_map(|op| match op {
                            Op::Token(t) if t.rotated_at.is_some() => Some(t.id),
                            _ => None,
                        })
                        .collect();
                    let retired = {
                        let mut published = self.published_mut();
                        for op in &ops {
                            published.apply(op);
                        }
                        published.seq = seq;
                        published.sweep_retired(&ops);
                        published.retire(&rotated)
                    };
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                    self.journal_len.fetch_add(len, Ordering::SeqCst);
                    if !retired.is_empty() {
                        self.pending.lock().await.state.forget_retired(&retired);
                    }
                    self.maybe_compact().await;
                }
                Outcome::Foreign => {
                    tracing::warn!(dir = %self.dir.display(), "sessions.journal was changed by another process; reloading the sessions");
                    let message = "the sessions journal was changed by another process".to_owned();
                    self.reload_after_foreign_change(waiters, message).await;
                }
                Outcome::Failed(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "sessions journal write failed; its changes are dropped");
                    self.drop_pending(waiters, format!("{e:#}")).await;
                }
            }
        }
    }

    /// Drops every change that is not durable and fails its request: the pending state goes back
    /// to the published one.
    async fn drop_pending(
        &self,
        waiters: Vec<oneshot::Sender<Result<(), String>>>,
        message: String,
    ) {
        let mut pending = self.pending.lock().await;
        pending.state = self.published().clone();
        pending.ops.clear();
        let later = std::mem::take(&mut pending.waiters);
        for waiter in waiters.into_iter().chain(later) {
            let _ = waiter.send(Err(message.clone()));
        }
    }

    async fn reload_after_foreign_change(
        &self,
        waiters: Vec<oneshot::Sender<Result<(), String>>>,
        message: String,
    ) {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .map_err(|e| anyhow::anyhow!("reader stopped: {e}"))
            .and_then(|r| r);
        match loaded {
            Ok(loaded) => {
                // Under the pending lock, so that no change lands on the state being replaced.
                let mut pending = self.pending.lock().await;
                *self.published_mut() = loaded.state.clone();
                pending.state = loaded.state;
                pending.ops.clear();
                self.snapshot_len
                    .store(loaded.snapshot_len, Ordering::SeqCst);
                self.old_len.store(loaded.old_len, Ordering::SeqCst);
                self.journal_len
                    .store(loaded.journal.good_len + loaded.old_len, Ordering::SeqCst);
                *self.journal() = loaded.journal;
                let later = std::mem::take(&mut pending.waiters);
                for waiter in waiters.into_iter().chain(later) {
                    let _ = waiter.send(Err(message.clone()));
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "could not reload the sessions");
                self.drop_pending(waiters, format!("{message}; reloading failed: {e:#}"))
                    .await;
            }
        }
    }

    /// Starts a compaction when the journal is past its bound and none is running.
    async fn maybe_compact(self: &Arc<Self>) {
        let journal = self.journal_len.load(Ordering::SeqCst);
        let snapshot = self.snapshot_len.load(Ordering::SeqCst);
        if journal <= COMPACT_MIN_BYTES
            || journal <= COMPACT_FACTOR * snapshot
            || journal < self.retry_at.load(Ordering::SeqCst)
            || self.compacting.swap(true, Ordering::SeqCst)
        {
            return;
        }
        // Between two writes, so no append is in flight: rename the journal and start a new
        // one, and take the records of the state now (shared, not copied).
        let inner = self.clone();
        let started = tokio::task::spawn_blocking(move || {
            let old = inner.dir.join(OLD_JOURNAL);
            let rotated = inner.journal().rotate(&old);
            let records = SnapshotRecords::of(&inner.published());
            (rotated, records)
        })
        .await;
        let (rotated, records) = match started {
            Ok(started) => started,
            Err(e) => {
                self.compaction_failed(anyhow::anyhow!("compaction stopped: {e}"));
                return;
            }
        };
        match rotated {
            Ok(Rotation::Rotated) => {
                // The whole journal so far is the old journal now.
                self.old_len
                    .store(self.journal_len.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            // The new snapshot covers the old journal; the journal is rotated next time.
            Ok(Rotation::OldJournalLeft) => {}
            Ok(Rotation::NotNow) => {
                self.compaction_failed(anyhow::anyhow!("the journal is not ready to be rotated"));
                return;
            }
            Err(e) => {
                // Whether or not the rename happened, the files still add up; try again later.
                self.compaction_failed(anyhow::anyhow!("could not start a new journal: {e}"));
                return;
            }
        }
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match write_snapshot(&inner.dir, &records) {
                Ok(len) => {
                    let removed = fs::remove_file(inner.dir.join(OLD_JOURNAL));
                    if let Err(e) = removed
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!(error = %e, "could not remove sessions.journal.old");
                    }
                    let old = inner.old_len.swap(0, Ordering::SeqCst);
                    inner.journal_len.fetch_sub(
                        old.min(inner.journal_len.load(Ordering::SeqCst)),
                        Ordering::SeqCst,
                    );
                    inner.snapshot_len.store(len, Ordering::SeqCst);
                    tracing::info!(
                        seq = records.seq,
                        sessions = records.sessions.len(),
                        tokens = records.tokens.len() + records.retired.len(),
                        bytes = len,
                        ms = started.elapsed().as_millis() as u64,
                        "sessions journal compacted into sessions.json"
                    );
                    inner.compacting.store(false, Ordering::SeqCst);
                    inner.compactions.send_modify(|n| *n += 1);
                }
                Err(e) => inner.compaction_failed(e),
            }
        });
    }

    fn compaction_failed(&self, e: anyhow::Error) {
        tracing::error!(dir = %self.dir.display(), error = %format!("{e:#}"), "sessions compaction failed; the journal keeps growing until the next attempt");
        self.retry_at.store(
            self.journal_len.load(Ordering::SeqCst) + COMPACT_MIN_BYTES,
            Ordering::SeqCst,
        );
        self.compacting.store(false, Ordering::SeqCst);
    }
}
