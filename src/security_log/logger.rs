//! `SecurityLogger`: the handle request code records events through.
//!
//! In the default async mode `record()` puts the event on a bounded queue and returns at once; if
//! the queue is full (a slow or absent database under load) the event goes to a second bounded
//! queue that a thread of its own appends to the spool in group commits (one append and fsync for
//! everything waiting), so nothing is dropped, memory stays bounded, and a full queue never puts
//! disk I/O on a request's thread. Only when both queues are full does `record()` append the event
//! itself (the last resort, and the backpressure). In sync mode the caller waits
//! until the writer has made its batch durable (group commit: one write serves many requests), and
//! learns whether it was: [`SecurityLogger::record_outcome`] fails when the event is neither in
//! Postgres nor synced to the spool, so the request can refuse to succeed without its record.
//! The log-line mirror of each event is written by the writer task, not here: formatting a line
//! and writing it to stdout (under stdout's lock, maybe into a full pipe) is I/O the request path
//! must not do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::event::SecurityEvent;
use super::spool::Spool;
use super::summary::{Named, TokenFailureSummaries};
use crate::clock::Clock;
use crate::config::Durability;

/// An event on its way to the writer; `ack` is answered (sync mode) once its batch was written:
/// `true` when the event is kept (committed to Postgres, or synced to the spool), `false` when it
/// was lost.
pub struct Envelope {
    pub event: SecurityEvent,
    pub ack: Option<oneshot::Sender<bool>>,
}

/// A sync-mode event that could not be kept: neither committed to Postgres nor synced to the
/// spool. The request that recorded it must not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("security event not kept: database and spool both refused it")]
pub struct NotKept;

/// Counters the writer and logger share with health and metrics.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub recorded: AtomicU64,
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub spooled: AtomicU64,
    /// Events in spool files waiting for replay into the database.
    pub spool_backlog: AtomicI64,
    pub replayed: AtomicU64,
    pub dropped: AtomicU64,
    pub bad_spool_lines: AtomicU64,
    pub overflowed: AtomicU64,
    pub last_flush_ms: AtomicI64,
    /// When events were last lost (0: never); shown apart from the present state in `/health`.
    pub last_drop_ms: AtomicI64,
    /// Losses not yet reported by a `security_events_dropped` event, and when the first of them
    /// happened.
    pub unreported_drops: AtomicU64,
    pub first_unreported_drop_ms: AtomicI64,
    /// Refused bearer tokens counted into a per-address summary instead of recorded one by one.
    pub summarized: AtomicU64,
    /// Times the writer asked its database whether it answers again, after marking it down.
    pub db_probes: AtomicU64,
    /// How long the writer waits between those probes now, in milliseconds (0 until it needs to).
    pub probe_backoff_ms: AtomicU64,
    pub sink_healthy: AtomicBool,
    pub spool_over_cap: AtomicBool,
    pub spool_failing: AtomicBool,
    /// The service's clock: the times above, and every recorded event's `created_at`.
    pub clock: Clock,
}

impl PipelineStats {
    pub fn last_flush(&self) -> Option<DateTime<Utc>> {
        match self.last_flush_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    pub fn mark_flushed(&self) {
        self.last_flush_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    pub fn last_drop(&self) -> Option<DateTime<Utc>> {
        match self.last_drop_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Counts `n` lost events: in the total, as the last drop, and as not yet reported.
    pub fn note_dropped(&self, n: u64) {
        let now = self.clock.now_ms();
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.last_drop_ms.store(now, Ordering::Relaxed);
        let _ = self.first_unreported_drop_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.unreported_drops.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes the losses not yet reported: how many, and when the first and last happened.
    pub fn take_unreported_drops(&self) -> Option<(u64, i64, i64)> {
        let n = self.unreported_drops.swap(0, Ordering::Relaxed);
        let first = self.first_unreported_drop_ms.swap(0, Ordering::Relaxed);
        (n > 0).then(|| (n, first, self.last_drop_ms.load(Ordering::Relaxed)))
    }

    /// Puts back losses whose report could not be written, to be reported with the next ones.
    pub fn restore_unreported_drops(&self, n: u64, first_ms: i64) {
        self.unreported_drops.fetch_add(n, Ordering::Relaxed);
        let _ = self.first_unreported_drop_ms.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |current| {
                Some(if current == 0 {
                    first_ms
                } else {
                    current.min(first_ms)
                })
            },
        );
    }
}

#[derive(Clone)]
pub struct SecurityLogger {
    tx: mpsc::Sender<Envelope>,
    spool: Arc<Spool>,
    stats: Arc<PipelineStats>,
    durability: Durability,
    capacity: usize,
    /// `postgresql` when a database is the sink, `file` when the spool is.
    sink: &'static str,
    /// Live feed for the admin stream; slow subscribers lag and resume from the sink.
    live: tokio::sync::broadcast::Sender<Arc<SecurityEvent>>,
    metrics: crate::metrics::Metrics,
    overflow: std::sync::mpsc::SyncSender<Envelope>,
    spilling: Arc<Spilling>,
    /// Wakes the writer to probe its database and replay at once, instead of after its back-off.
    wake: Arc<tokio::sync::Notify>,
    token_failures: Arc<TokenFailureSummaries>,
    clock: Clock,
}

/// What the overflow thread shares with the loggers: how many events it holds, and a wake-up for
/// whoever waits for it to be empty (shutdown).
#[derive(Default)]
struct Spilling {
    pending: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Events a slow live subscriber may fall behind by before it skips ahead.
const LIVE_BUFFER: usize = 1024;

impl SecurityLogger {
    pub fn new(
        tx: mpsc::Sender<Envelope>,
        spool: Arc<Spool>,
        stats: Arc<PipelineStats>,
        durability: Durability,
        capacity: usize,
        sink: &'static str,
        metrics: crate::metrics::Metrics,
    ) -> std::io::Result<Self> {
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        let (overflow, overflowed) = std::sync::mpsc::sync_channel(capacity.max(1));
        let spilling = Arc::new(Spilling::default());
        {
            let (spool, stats, spilling) = (spool.clone(), stats.clone(), spilling.clone());
            // It ends when the last logger is dropped (the channel closes).
            std::thread::Builder::new()
                .name("security-spill".into())
                .spawn(move || spill_thread(&overflowed, &spool, &stats, sink, &spilling))?;
        }
        let clock = stats.clock.clone();
        Ok(Self {
            tx,
            spool,
            stats,
            durability,
            capacity,
            sink,
            live,
            metrics,
            overflow,
            spilling,
            wake: Arc::default(),
            token_failures: Arc::new(TokenFailureSummaries::off()),
            clock,
        })
    }

    /// Summarises refused bearer tokens per address (see [`TokenFailureSummaries`]), on the
    /// service's clock.
    pub fn with_token_failure_summaries(mut self, summaries: TokenFailureSummaries) -> Self {
        self.token_failures = Arc::new(summaries);
        self
    }

    /// What wakes the writer (see [`Self::database_recovered`]).
    pub(crate) fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Tells the writer that its database answered a probe elsewhere (a health check, the user
    /// store's own probe): it probes and replays the spool now rather than after its back-off, so
    /// events stop going to the spool (or being lost, when the spool's disk is full) as soon as
    /// the database is back. Cheap and safe to call often: wake-ups do not queue up, and one
    /// that finds the writer's database up already does nothing.
    pub fn database_recovered(&self) {
        self.wake.notify_one();
    }

    /// A receiver of every event recorded from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>> {
        self.live.subscribe()
    }

    /// Records an event incidental to a request (a rate limit's refusal, a lock that a failure
    /// started, a session evicted by the cap...): the request's answer stands whatever becomes of
    /// it. In async mode this returns without waiting on any I/O; in sync mode it waits for the
    /// write, and a loss is counted (`dropped`) like any other.
    pub async fn record(&self, event: SecurityEvent) {
        let _ = self.submit(event).await;
    }

    /// Records the event that says what a request did (a sign-in, a signup, a new session, a
    /// logout...). In sync mode, `Err(NotKept)` when it is neither committed to Postgres nor
    /// synced to the spool: the request must then not succeed. In async mode it never waits and
    /// never fails (a later loss is counted and reported).
    pub async fn record_outcome(&self, event: SecurityEvent) -> Result<(), NotKept> {
        if self.submit(event).await {
            Ok(())
        } else {
            Err(NotKept)
        }
    }

    /// Records a refused bearer token from `address`: on its own up to the threshold of its
    /// window, then counted into the address's summary (written when the window ends). An event
    /// that names a user (its token passed verification, or its refresh token was found) is
    /// recorded on its own the first time in its window for that user, session and reason,
    /// whatever else the address sent. Metrics count it either way.
    pub async fn record_token_failure(&self, address: &str, reason: &str, event: SecurityEvent) {
        let named = event.user_id.as_ref().map(|user_id| Named {
            user_id: user_id.clone(),
            session_id: event
                .metadata
                .get("sessionId")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        });
        if self
            .token_failures
            .admit(address, reason, named, self.clock.now())
        {
            self.record(event).await;
        } else {
            super::collector::count_event(&self.metrics, &event);
            self.stats.summarized.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the summaries of the windows that have ended; with `all`, of every window (at
    /// shutdown, before the log is flushed).
    pub async fn flush_token_failure_summaries(&self, all: bool) {
        for summary in self.token_failures.take_due(self.clock.now(), all) {
            self.record(summary).await;
        }
    }

    /// Hands the event to the writer; in sync mode waits for its write and answers whether it
    /// was kept (in async mode, `true` once queued).
    async fn submit(&self, mut event: SecurityEvent) -> bool {
        event.created_at = self.clock.now();
        super::collector::count_event(&self.metrics, &event);
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(event.clone()));
        }
        match self.durability {
            Durability::Async => {
                self.enqueue(Envelope { event, ack: None });
                true
            }
            Durability::Sync => {
                let (ack, done) = oneshot::channel();
                self.enqueue(Envelope {
                    event,
                    ack: Some(ack),
                });
                // Every path that takes an envelope answers its ack; one dropped unanswered (a
                // writer that died with events in its queue) is an event nobody kept.
                done.await.unwrap_or(false)
            }
        }
    }

    fn enqueue(&self, envelope: Envelope) {
        let envelope = match self.tx.try_send(envelope) {
            Ok(()) => return,
            Err(
                mpsc::error::TrySendError::Full(envelope)
                | mpsc::error::TrySendError::Closed(envelope),
            ) => envelope,
        };
        self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
        // Counted before sending, so the thread never sees its count go below zero.
        self.spilling.pending.fetch_add(1, Ordering::AcqRel);
        match self.overflow.try_send(envelope) {
            Ok(()) => {}
            Err(
                std::sync::mpsc::TrySendError::Full(envelope)
                | std::sync::mpsc::TrySendError::Disconnected(envelope),
            ) => {
                self.spilling.pending.fetch_sub(1, Ordering::AcqRel);
                // Both queues full: append it here. This blocks this thread for one write, which
                // is the backpressure that keeps memory bounded without losing events.
                spill(vec![envelope], &self.spool, &self.stats, self.sink);
            }
        }
    }

    /// Waits (up to `limit`) until the overflow thread has written everything it was given.
    pub async fn drain_overflow(&self, limit: Duration) -> bool {
        let empty = async {
            loop {
                let idle = self.spilling.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.spilling.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, empty).await.is_ok()
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn shared_stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    pub fn sink(&self) -> &'static str {
        self.sink
    }

    /// Events waiting in memory for the writer or the overflow thread.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity() + self.spilling.pending.load(Ordering::Relaxed)
    }
}

/// The overflow thread: takes everything waiting (up to the writer's spool batch cap) and appends
/// it with one fsync, until every logger is gone.
fn spill_thread(
    rx: &std::sync::mpsc::Receiver<Envelope>,
    spool: &Spool,
    stats: &PipelineStats,
    sink: &'static str,
    spilling: &Spilling,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < super::writer::SPOOL_BATCH_MAX {
            match rx.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        let n = batch.len();
        spill(batch, spool, stats, sink);
        if spilling.pending.fetch_sub(n, Ordering::AcqRel) == n {
            spilling.idle.notify_waiters();
        }
    }
}

/// A synced append of events that bypass the writer (so their log lines are written here),
/// retried once into a fresh file; a loss is counted only if both fail. Each ack is answered with
/// whether its event was kept.
fn spill(batch: Vec<Envelope>, spool: &Spool, stats: &PipelineStats, sink: &'static str) {
    let (events, acks): (Vec<SecurityEvent>, Vec<_>) =
        batch.into_iter().map(|e| (e.event, e.ack)).unzip();
    for event in &events {
        mirror(event);
    }
    let kept = match spool.append(&events).or_else(|_| spool.append(&events)) {
        Ok(n) => {
            stats.spooled.fetch_add(n as u64, Ordering::Relaxed);
            if sink == "postgresql" {
                stats.spool_backlog.fetch_add(n as i64, Ordering::Relaxed);
            } else {
                stats.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            stats.spool_failing.store(false, Ordering::Relaxed);
            true
        }
        Err(e) => {
            stats.note_dropped(events.len() as u64);
            stats.spool_failing.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, events = events.len(),
                "security events lost: queue full and spool not writable");
            false
        }
    };
    for ack in acks.into_iter().flatten() {
        let _ = ack.send(kept);
    }
}

/// Every event is also a `tracing` event (target `security`) for log shippers, written when the
/// writer takes it (so `created_at`, when it happened, can be a few milliseconds before the line's
/// own timestamp). Its strings were sanitised when the event was built; the formatter escapes them
/// again for its own format.
pub fn mirror(event: &SecurityEvent) {
    let metadata = super::event::metadata_json(event);
    tracing::info!(
        target: "security",
        event_id = %event.id,
        created_at = %crate::domain::format_timestamp(event.created_at),
        event_type = event.event_type.as_str(),
        severity = event.severity.as_str(),
        user_id = event.user_id.as_deref(),
        token_id = event.token_id.map(|t| t.to_string()),
        ip = event.ip_address.as_deref(),
        user_agent = event.user_agent.as_deref(),
        metadata = %metadata,
        "security event"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security_log::EventType;

    /// A queue of one that nobody reads: every event after the first overflows, and the overflow
    /// thread, not `record()`, appends them to the spool.
    #[tokio::test]
    async fn a_full_queue_goes_to_the_overflow_thread_and_every_event_reaches_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), crate::clock::Clock::default()).unwrap());
        let (tx, _rx) = mpsc::channel(1);
        let stats = Arc::new(PipelineStats::default());
        let logger = SecurityLogger::new(
            tx,
            spool.clone(),
            stats.clone(),
            Durability::Async,
            1,
            "postgresql",
            crate::metrics::Metrics::default(),
        )
        .unwrap();
        let mut ids = Vec::new();
        for _ in 0..200 {
            let event = SecurityEvent::new(EventType::TokenVerificationFailed);
            ids.push(event.id);
            logger.record(event).await;
        }
        assert!(logger.drain_overflow(Duration::from_secs(10)).await);
        assert_eq!(
            logger.queued(),
            1,
            "one in the queue, none left in the overflow"
        );
        assert_eq!(stats.overflowed.load(Ordering::Relaxed), 199);
        assert_eq!(stats.spooled.load(Ordering::Relaxed), 199);
        assert_eq!(stats.spool_backlog.load(Ordering::Relaxed), 199);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        spool.seal();
        let mut spooled: Vec<_> = spool
            .all_files()
            .unwrap()
            .iter()
            .flat_map(|f| super::super::spool::read_file(f).unwrap().events)
            .map(|e| e.id)
            .collect();
        spooled.sort();
        let mut expected = ids[1..].to_vec();
        expected.sort();
        assert_eq!(spooled, expected, "each overflowed event once");
    }
}
