//! Group commit, for `users.json` and for the sessions' journal alike.
//!
//! Changes are applied in order to the latest state under a short lock with no I/O. One write at
//! a time then makes what changed since the last write durable and only after that publishes it
//! to readers and answers every request whose change it contains: all the changes that arrived
//! while the previous write was in progress share the next write and its fsyncs. So an
//! acknowledged change is always on disk, readers never see a change that is not, and neither
//! readers nor new changes wait while a write is in progress.
//!
//! A failed write drops every change not on disk (those of the failed write, and any made on top
//! of them since) and fails their requests; the latest state goes back to the published one.
//!
//! What a write is, and what readers see, is the [`Medium`]'s: a whole file replaced
//! (`users.json`), or a line appended to a journal (the sessions).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, oneshot};

use crate::store::{StoreError, StoreResult};

/// Where a group commit's changes go, and where readers find them once they are durable.
pub(super) trait Medium: Send + Sync + Sized + 'static {
    /// The latest state: every change made, durable or not.
    type State: Send + 'static;
    /// What one write makes durable, taken from the latest state.
    type Batch: Send + 'static;
    /// What a write that succeeded leaves for [`Medium::after_write`].
    type Written: Send + 'static;

    /// How a request whose write failed is answered: "{WRITE_FAILED}: {cause}".
    const WRITE_FAILED: &'static str;
    /// How a request is answered when the write task is gone.
    const WRITER_STOPPED: &'static str;

    /// Under the state's lock: what the next write makes durable, or `None` when nothing needs
    /// writing (the changes since the last write altered nothing, and everything before them is
    /// durable already).
    fn take(&self, state: &mut Self::State) -> Option<Self::Batch>;

    /// Makes `batch` durable and then publishes it to readers. On an error nothing of the batch
    /// is published (the medium may publish what it read again from disk), and the message says
    /// why.
    fn write(
        self: &Arc<Self>,
        batch: Self::Batch,
    ) -> impl Future<Output = Result<Self::Written, String>> + Send;

    /// After the write's requests are answered, before the next write.
    fn after_write(
        self: &Arc<Self>,
        written: Self::Written,
        commit: &GroupCommit<Self>,
    ) -> impl Future<Output = ()> + Send;

    /// Under the state's lock, after a failed write: the latest state becomes the published one.
    fn revert(&self, state: &mut Self::State);
}

type Waiter = oneshot::Sender<Result<(), String>>;

struct Latest<S> {
    state: S,
    /// Requests whose changes are in `state` but in no write yet.
    waiters: Vec<Waiter>,
}

struct Inner<M: Medium> {
    medium: Arc<M>,
    latest: Mutex<Latest<M::State>>,
    /// A write task is running; it takes the waiters again when it is done. Changed only under
    /// the state's lock.
    writing: AtomicBool,
}

/// The latest state of a [`Medium`] and the one write task that makes it durable.
pub(super) struct GroupCommit<M: Medium> {
    inner: Arc<Inner<M>>,
}

impl<M: Medium> GroupCommit<M> {
    pub fn new(medium: Arc<M>, state: M::State) -> Self {
        Self {
            inner: Arc::new(Inner {
                medium,
                latest: Mutex::new(Latest {
                    state,
                    waiters: Vec::new(),
                }),
                writing: AtomicBool::new(false),
            }),
        }
    }

    pub fn medium(&self) -> &Arc<M> {
        &self.inner.medium
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must leave
    /// the state as it found it when it returns an error.
    pub async fn update<R>(
        &self,
        change: impl FnOnce(&mut M::State) -> StoreResult<R>,
    ) -> StoreResult<R> {
        let (out, written) = {
            let mut latest = self.inner.latest.lock().await;
            let out = change(&mut latest.state)?;
            // Even a change that altered nothing waits: its answer may rest on earlier changes
            // that are not durable yet.
            let (tx, rx) = oneshot::channel();
            latest.waiters.push(tx);
            if !self.inner.writing.swap(true, Ordering::AcqRel) {
                // A task of its own, so a request that is cancelled mid-write cannot stop the
                // write that other requests are waiting for.
                tokio::spawn(self.inner.clone().write_until_done());
            }
            (out, rx)
        };
        match written.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("{}: {e}", M::WRITE_FAILED))),
            Err(_) => Err(StoreError::Unavailable(M::WRITER_STOPPED.into())),
        }
    }

    /// Whether a write task is running. Read without the lock: a hint, not a promise.
    pub fn writing(&self) -> bool {
        self.inner.writing.load(Ordering::Acquire)
    }

    /// The latest state, locked: changes wait until it is released.
    pub async fn state(&self) -> MappedMutexGuard<'_, M::State> {
        MutexGuard::map(self.inner.latest.lock().await, |latest| &mut latest.state)
    }

    /// Runs `replace` on the latest state, under its lock, only if no write is running and no
    /// change is waiting for one (every change made is durable and published); returns what
    /// `replace` did, or `false`.
    pub async fn replace_if_settled(&self, replace: impl FnOnce(&mut M::State) -> bool) -> bool {
        let mut latest = self.inner.latest.lock().await;
        if self.writing() || !latest.waiters.is_empty() {
            return false;
        }
        replace(&mut latest.state)
    }

    fn handle(inner: &Arc<Inner<M>>) -> Self {
        Self {
            inner: inner.clone(),
        }
    }
}

impl<M: Medium> Inner<M> {
    /// Writes batches until no request is waiting.
    async fn write_until_done(self: Arc<Self>) {
        loop {
            let (batch, waiters) = {
                let mut latest = self.latest.lock().await;
                if latest.waiters.is_empty() {
                    self.writing.store(false, Ordering::Release);
                    return;
                }
                let batch = self.medium.take(&mut latest.state);
                (batch, std::mem::take(&mut latest.waiters))
            };
            let Some(batch) = batch else {
                // Nothing to write, and everything before is durable already.
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                continue;
            };
            match self.medium.write(batch).await {
                Ok(written) => {
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                    self.medium
                        .after_write(written, &GroupCommit::handle(&self))
                        .await;
                }
                Err(message) => {
                    let mut latest = self.latest.lock().await;
                    self.medium.revert(&mut latest.state);
                    let later = std::mem::take(&mut latest.waiters);
                    for waiter in waiters.into_iter().chain(later) {
                        let _ = waiter.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}
