//! The security-event pipeline: typed events, a logger handle whose `record()` never waits on a
//! database or a disk (in the default async mode; in sync mode it says whether the event was
//! kept), and a background writer that batches events into Postgres, spools them to JSON-lines
//! files when the database is away, and replays the spool when it comes back.

pub mod collector;
pub mod event;
pub mod indexes;
pub mod logger;
pub mod postgres_sink;
pub mod query;
pub mod retention;
pub mod rollups;
pub mod spool;
pub mod summary;
pub mod writer;

pub use collector::LogCollector;
pub use event::{EventType, SecurityEvent, Severity, sanitize};
pub use logger::{NotKept, PipelineStats, SecurityLogger};

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::{Database, Schema};

/// The running pipeline: the logger handle, its database (when there is one) and the writer task.
pub struct Pipeline {
    pub logger: SecurityLogger,
    pub spool: Arc<spool::Spool>,
    pub database: Option<Database>,
    pub writer: JoinHandle<()>,
    pub stop: CancellationToken,
}

/// Starts the writer. Its database is `SECURITY_LOG_DATABASE_URL`, else `DATABASE_URL`; without
/// either, the spool files are the log. A database that is down at start is retried in the
/// background while events go to the spool.
pub fn start(
    settings: &Settings,
    metrics: &crate::metrics::Metrics,
    clock: &crate::clock::Clock,
) -> anyhow::Result<Pipeline> {
    let dir = settings.security_log_dir();
    let spool = Arc::new(spool::Spool::open(&dir, clock.clone()).map_err(|e| {
        anyhow::anyhow!(
            "could not open the security event spool {}: {e}",
            dir.display()
        )
    })?);
    let database = match settings.security_log_database_url() {
        Some(url) => {
            let db = Database::connect_lazy_observed(
                url,
                &crate::db::Schemas::from_settings(settings)?,
                4,
                Duration::from_millis(settings.database_connect_timeout_ms),
                metrics.pool(crate::metrics::POOL_SECURITY_LOG),
            )?;
            if settings.run_migrations {
                // Its own database gets only its table; the user store's gets everything.
                let shared = settings.security_log_database_url.is_none()
                    && settings.storage_kind() == crate::config::StorageKind::Postgres;
                let schema = if shared {
                    Schema::Full
                } else {
                    Schema::SecurityEventsOnly
                };
                db.migrate_in_background("security log", schema);
            } else {
                db.assume_migrated();
            }
            Some(db)
        }
        None => None,
    };
    let stats = Arc::new(PipelineStats {
        clock: clock.clone(),
        ..PipelineStats::default()
    });
    stats
        .sink_healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let capacity = settings.security_log_queue_capacity;
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let sink_kind = if database.is_some() {
        "postgresql"
    } else {
        "file"
    };
    let logger = SecurityLogger::new(
        tx,
        spool.clone(),
        stats.clone(),
        settings.security_log_durability,
        capacity,
        sink_kind,
        metrics.clone(),
    )
    .map_err(|e| anyhow::anyhow!("could not start the security-event spill thread: {e}"))?
    .with_token_failure_summaries(summary::TokenFailureSummaries::new(
        settings.token_failure_log_threshold,
        settings.token_failure_log_window_secs,
    ));
    let writer = writer::Writer {
        rx,
        sink: database.clone().map(|db| postgres_sink::PgSink { db }),
        spool: spool.clone(),
        stats,
        batch_size: settings.security_log_batch_size,
        linger: Duration::from_millis(settings.security_log_linger_ms),
        spool_max_bytes: settings.security_log_spool_max_bytes,
        metrics: metrics.clone(),
        wake: logger.wake_handle(),
    };
    let stop = CancellationToken::new();
    if let Some(db) = &database
        && settings.run_migrations
    {
        tokio::spawn(indexes::ensure_in_background(db.clone(), stop.clone()));
    }
    let spool_handle = writer.spool.clone();
    let writer = tokio::spawn(writer.run(stop.clone()));
    {
        // Summaries of refused bearer tokens are written when their window ends; the last ones
        // at shutdown (`flush_token_failure_summaries(true)`), before the log is drained.
        let (logger, stop) = (logger.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => logger.flush_token_failure_summaries(false).await,
                }
            }
        });
    }
    Ok(Pipeline {
        logger,
        spool: spool_handle,
        database,
        writer,
        stop,
    })
}
