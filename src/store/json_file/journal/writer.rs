//! The sessions' side of group commit: the latest state with the ops not yet written, the
//! published state readers see, and the write that appends each batch to the journal as one
//! line (see `group_commit.rs` for the commit itself, `compaction.rs` for the snapshot).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use super::super::group_commit::{GroupCommit, Medium};
use super::super::session_state::{Op, Sessions, Tx};
use super::codec::encode_line;
use super::file::{AppendError, JournalFile};
use super::load::load;
use crate::store::StoreResult;

/// The latest state: every change made, durable or not.
pub(super) struct Latest {
    pub(super) state: Sessions,
    /// The ops of the changes in `state` that are in no write yet.
    ops: Vec<Op>,
}

/// The sessions' files, what the writer knows of them, and the durable state.
pub(super) struct Files {
    pub(super) dir: PathBuf,
    /// The durable state, which readers see.
    published: RwLock<Sessions>,
    /// Used by the write task only (and, for a moment, by a compaction that it starts).
    journal: Mutex<JournalFile>,
    pub(super) compacting: AtomicBool,
    pub(super) snapshot_len: AtomicU64,
    /// The journal's length, plus the old journal's while it is there.
    pub(super) journal_len: AtomicU64,
    pub(super) old_len: AtomicU64,
    /// After a failed compaction, the next waits until the journal has grown past this.
    pub(super) retry_at: AtomicU64,
    /// How many compactions have finished.
    pub(super) compactions: tokio::sync::watch::Sender<u64>,
}

pub(crate) struct SessionLog {
    pub(super) commit: GroupCommit<Files>,
}

impl SessionLog {
    /// Opens the sessions of `dir`. Reads only; nothing is written until a change is.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let loaded = load(dir)?;
        let files = Files {
            dir: dir.to_owned(),
            published: RwLock::new(loaded.state.clone()),
            snapshot_len: AtomicU64::new(loaded.snapshot_len),
            journal_len: AtomicU64::new(loaded.journal.good_len + loaded.old_len),
            old_len: AtomicU64::new(loaded.old_len),
            journal: Mutex::new(loaded.journal),
            compacting: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            compactions: tokio::sync::watch::Sender::new(0),
        };
        let latest = Latest {
            state: loaded.state,
            ops: Vec::new(),
        };
        Ok(Self {
            commit: GroupCommit::new(Arc::new(files), latest),
        })
    }

    /// The durable state. Hold it briefly, and never across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Sessions> {
        self.commit.medium().published()
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must not
    /// edit through the [`Tx`] when it returns an error.
    pub async fn update<R>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>,
    ) -> StoreResult<R> {
        self.commit
            .update(|latest| {
                let before = latest.ops.len();
                let out = change(&mut Tx::new(&mut latest.state, &mut latest.ops));
                debug_assert!(out.is_ok() || latest.ops.len() == before);
                out
            })
            .await
    }

    /// The number of compactions finished so far, and each new one.
    #[cfg(test)]
    pub(super) fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commit.medium().compactions.subscribe()
    }

    #[cfg(test)]
    pub(super) fn fail_next_write(&self) {
        self.commit.medium().journal().fail_next_write = true;
    }
}

enum Outcome {
    Written(u64),
    Foreign,
    Failed(anyhow::Error),
}

/// What a journal write that succeeded leaves for after its requests are answered.
pub(super) struct Appended {
    len: u64,
    /// Tokens retired in the published copy, to take out of the latest one too.
    retired: Vec<Uuid>,
}

/// Each write appends the ops since the last one to the journal as one line.
impl Medium for Files {
    type State = Latest;
    type Batch = Vec<Op>;
    type Written = Appended;

    const WRITE_FAILED: &'static str = "could not write the sessions journal";
    const WRITER_STOPPED: &'static str = "the sessions journal writer stopped";

    fn take(&self, latest: &mut Latest) -> Option<Vec<Op>> {
        let ops = std::mem::take(&mut latest.ops);
        (!ops.is_empty()).then_some(ops)
    }

    async fn write(self: &Arc<Self>, ops: Vec<Op>) -> Result<Appended, String> {
        let seq = self.published().seq + 1;
        let files = self.clone();
        // Encoding and the fsync are blocking work: off the async workers.
        let (ops, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = match encode_line(seq, &ops) {
                Ok(line) => match files.journal().append(&line) {
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
                // published copy here, in the latest one (which may hold newer changes, but
                // never to a rotated token) after the requests are answered.
                let rotated: Vec<Uuid> = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::Token(t) if t.rotated_at.is_some() => Some(t.id),
                        _ => None,
                    })
                    .collect();
                let mut published = self.published_mut();
                for op in &ops {
                    published.apply(op);
                }
                published.seq = seq;
                published.sweep_retired(&ops);
                let retired = published.retire(&rotated);
                Ok(Appended { len, retired })
            }
            Outcome::Foreign => {
                tracing::warn!(dir = %self.dir.display(), "sessions.journal was changed by another process; reloading the sessions");
                let message = "the sessions journal was changed by another process".to_owned();
                Err(self.reload_after_foreign_change(message).await)
            }
            Outcome::Failed(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "sessions journal write failed; its changes are dropped");
                Err(format!("{e:#}"))
            }
        }
    }

    async fn after_write(self: &Arc<Self>, appended: Appended, commit: &GroupCommit<Self>) {
        self.journal_len.fetch_add(appended.len, Ordering::SeqCst);
        if !appended.retired.is_empty() {
            commit.state().await.state.forget_retired(&appended.retired);
        }
        self.maybe_compact().await;
    }

    /// Drops every change that is not durable: the latest state goes back to the published one.
    fn revert(&self, latest: &mut Latest) {
        latest.state = self.published().clone();
        latest.ops.clear();
    }
}

impl Files {
    pub(super) fn published(&self) -> RwLockReadGuard<'_, Sessions> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> RwLockWriteGuard<'_, Sessions> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn journal(&self) -> std::sync::MutexGuard<'_, JournalFile> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the folder again after another process wrote to it, and publishes what it holds
    /// (the failed write then takes the latest state back to it); returns why the write's
    /// requests fail.
    async fn reload_after_foreign_change(&self, message: String) -> String {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .map_err(|e| anyhow::anyhow!("reader stopped: {e}"))
            .and_then(|r| r);
        match loaded {
            Ok(loaded) => {
                *self.published_mut() = loaded.state;
                self.snapshot_len
                    .store(loaded.snapshot_len, Ordering::SeqCst);
                self.old_len.store(loaded.old_len, Ordering::SeqCst);
                self.journal_len
                    .store(loaded.journal.good_len + loaded.old_len, Ordering::SeqCst);
                *self.journal() = loaded.journal;
                message
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "could not reload the sessions");
                format!("{message}; reloading failed: {e:#}")
            }
        }
    }
}
