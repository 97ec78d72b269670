//! Compaction: once the journal is past its bound, between two writes, the journal is renamed
//! aside and a new one started, and a blocking thread writes the snapshot of the state at that
//! point and then deletes the old journal; appends carry on meanwhile.

use std::fs;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::file::Rotation;
use super::snapshot::{SnapshotRecords, write_snapshot};
use super::writer::Files;
use super::{COMPACT_FACTOR, COMPACT_MIN_BYTES, OLD_JOURNAL};

impl Files {
    /// Starts a compaction when the journal is past its bound and none is running.
    pub(super) async fn maybe_compact(self: &Arc<Self>) {
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
        let files = self.clone();
        let started = tokio::task::spawn_blocking(move || {
            let old = files.dir.join(OLD_JOURNAL);
            let rotated = files.journal().rotate(&old);
            let records = SnapshotRecords::of(&files.published());
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
        let files = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match write_snapshot(&files.dir, &records) {
                Ok(len) => {
                    let removed = fs::remove_file(files.dir.join(OLD_JOURNAL));
                    if let Err(e) = removed
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!(error = %e, "could not remove sessions.journal.old");
                    }
                    let old = files.old_len.swap(0, Ordering::SeqCst);
                    files.journal_len.fetch_sub(
                        old.min(files.journal_len.load(Ordering::SeqCst)),
                        Ordering::SeqCst,
                    );
                    files.snapshot_len.store(len, Ordering::SeqCst);
                    tracing::info!(
                        seq = records.seq,
                        sessions = records.sessions.len(),
                        tokens = records.tokens.len() + records.retired.len(),
                        bytes = len,
                        ms = started.elapsed().as_millis() as u64,
                        "sessions journal compacted into sessions.json"
                    );
                    files.compacting.store(false, Ordering::SeqCst);
                    files.compactions.send_modify(|n| *n += 1);
                }
                Err(e) => files.compaction_failed(e),
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
