//! `SecurityLogger`: the handle request code records events through.
//!
//! In the default async mode `record()` puts the event on a bounded queue and returns at once; if
//! the queue is full (a slow or absent database under load) the event is appended straight to the
//! spool instead, so nothing is dropped and memory stays bounded. In sync mode the caller waits
//! until the writer has made its batch durable (group commit: one write serves many requests).
//! The log-line mirror of each event is written by the writer task, not here: formatting a line
//! and writing it to stdout (under stdout's lock, maybe into a full pipe) is I/O the request path
//! must not do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::event::SecurityEvent;
use super::spool::Spool;
use crate::config::Durability;

/// An event on its way to the writer; `ack` is answered once it is durable (sync mode).
pub struct Envelope {
    pub event: SecurityEvent,
    pub ack: Option<oneshot::Sender<()>>,
}

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
    pub sink_healthy: AtomicBool,
    pub spool_over_cap: AtomicBool,
    pub spool_failing: AtomicBool,
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
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
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
    ) -> Self {
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        Self {
            tx,
            spool,
            stats,
            durability,
            capacity,
            sink,
            live,
            metrics,
        }
    }

    /// A receiver of every event recorded from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>> {
        self.live.subscribe()
    }

    /// Records one event. In async mode this returns without waiting on any I/O.
    pub async fn record(&self, event: SecurityEvent) {
        self.metrics.observe_event(&event);
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(event.clone()));
        }
        match self.durability {
            Durability::Async => self.enqueue(Envelope { event, ack: None }),
            Durability::Sync => {
                let (ack, done) = oneshot::channel();
                self.enqueue(Envelope {
                    event,
                    ack: Some(ack),
                });
                // An error means the writer has gone (shutdown): the event was spilled instead.
                let _ = done.await;
            }
        }
    }

    fn enqueue(&self, envelope: Envelope) {
        match self.tx.try_send(envelope) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(envelope)
                | mpsc::error::TrySendError::Closed(envelope),
            ) => {
                self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                self.spill(envelope);
            }
        }
    }

    /// The overload path: a direct, synced append to the spool. It blocks this thread for one
    /// small write, which is the backpressure that keeps memory bounded without losing events.
    /// The event bypasses the writer, so its log line is written here.
    fn spill(&self, envelope: Envelope) {
        mirror(&envelope.event);
        match self
            .spool
            .append([&envelope.event])
            .or_else(|_| self.spool.append([&envelope.event]))
        {
            Ok(n) => {
                self.stats.spooled.fetch_add(n as u64, Ordering::Relaxed);
                if self.sink == "postgresql" {
                    self.stats
                        .spool_backlog
                        .fetch_add(n as i64, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, event_id = %envelope.event.id,
                    "security event lost: queue full and spool not writable");
            }
        }
        if let Some(ack) = envelope.ack {
            let _ = ack.send(());
        }
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

    /// Events waiting in memory for the writer.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

/// Every event is also a `tracing` event (target `security`) for log shippers, written when the
/// writer takes it (so `created_at`, when it happened, can be a few milliseconds before the line's
/// own timestamp). Its strings were sanitised when the event was built; the formatter escapes them
/// again for its own format.
pub(super) fn mirror(event: &SecurityEvent) {
    let metadata = serde_json::Value::Object(event.metadata.clone());
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
