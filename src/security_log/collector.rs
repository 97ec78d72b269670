//! The security log's numbers: each recorded event counted as it happens, and the pipeline's
//! levels (queue, spool, sink) read at scrape time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{EventType, PipelineStats, SecurityEvent, SecurityLogger};
use crate::metrics::{Metrics, counter, gauge};

/// Counts `event` by type and severity, and the auth outcome it stands for.
pub fn count_event(metrics: &Metrics, event: &SecurityEvent) {
    metrics.observe_event(
        event.event_type.as_str(),
        event.severity.as_str(),
        auth_outcome(event.event_type),
    );
}

/// The `outcome` label of `flux_auth_auth_outcomes` an event stands for, if any.
fn auth_outcome(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::SignupSuccess => "signup_success",
        EventType::SignupFailed => "signup_failure",
        EventType::LoginSuccess => "login_success",
        EventType::LoginFailed | EventType::FailedLoginAttempt => "login_failure",
        EventType::OauthSuccess => "google_success",
        EventType::OauthFailed => "google_failure",
        EventType::TokenRefreshed => "refresh",
        EventType::TokenReuseDetected => "refresh_reuse_detected",
        EventType::AccountLocked => "lockout",
        EventType::RateLimitExceeded => "rate_limited",
        _ => return None,
    })
}

/// The pipeline's levels, read at scrape time.
pub struct LogCollector {
    events: SecurityLogger,
    stats: Arc<PipelineStats>,
}

impl LogCollector {
    pub fn new(events: SecurityLogger) -> Self {
        let stats = events.shared_stats();
        Self { events, stats }
    }
}

impl std::fmt::Debug for LogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogCollector")
    }
}

impl Collector for LogCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        gauge(
            &mut e,
            "security_log_queue_depth",
            "Events waiting in memory for the writer",
            self.events.queued() as f64,
        )?;
        gauge(
            &mut e,
            "security_log_spool_backlog_events",
            "Events in spool files waiting for the database",
            s.spool_backlog.load(Ordering::Relaxed).max(0) as f64,
        )?;
        let last = s
            .last_flush()
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        gauge(
            &mut e,
            "security_log_last_flush_timestamp_seconds",
            "When events were last made durable",
            last,
        )?;
        let last_drop = s
            .last_drop()
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        gauge(
            &mut e,
            "security_log_last_drop_timestamp_seconds",
            "When events were last lost (0: never since the start)",
            last_drop,
        )?;
        gauge(
            &mut e,
            "security_log_sink_up",
            "1 while the security log's sink accepts writes",
            f64::from(u8::from(s.sink_healthy.load(Ordering::Relaxed))),
        )?;
        gauge(
            &mut e,
            "security_log_spool_over_cap",
            "1 while the spool exceeds its size cap",
            f64::from(u8::from(s.spool_over_cap.load(Ordering::Relaxed))),
        )?;
        counter(
            &mut e,
            "security_log_events_written",
            "Events made durable in the sink",
            s.written.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_batches_written",
            "Batches written to the sink",
            s.batches.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_spooled",
            "Events written to the spool",
            s.spooled.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_replayed",
            "Spooled events replayed into the database",
            s.replayed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_dropped",
            "Events lost (expected 0: only a failed disk loses events)",
            s.dropped.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_events_summarized",
            "Refused bearer tokens counted into a per-address summary event instead of recorded one by one",
            s.summarized.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "security_log_db_probes",
            "Times the security-log writer asked its database whether it answers again, after marking it down",
            s.db_probes.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "security_log_probe_backoff_seconds",
            "How long the security-log writer waits after its last failed probe before the next (0 while its database takes writes)",
            s.probe_backoff_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )?;
        counter(
            &mut e,
            "security_log_spool_bad_lines",
            "Spool lines skipped because they did not parse",
            s.bad_spool_lines.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}
