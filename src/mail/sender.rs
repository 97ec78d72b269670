//! The outbox's sender: one task per kind of message, delivering each at least once. It claims
//! a batch of due messages with a lease (no other instance gets them meanwhile), hands them to
//! the kind's [`Delivery`] a few at a time, and records the attempts as they finish, those that
//! finished together in one commit: sent (the body deleted), retried with exponential back-off,
//! or, once the retry period is over or the failure is permanent, dead (the kind's event:
//! `email_send_failed`, `alert_delivery_failed`). A crash between a delivery and its record sends
//! that message again once the lease runs out: at least once, never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::security_log::{EventType, SecurityEvent, SecurityLogger};
use crate::store::Store;
use crate::store::outbox::{Attempt, OutboxMessage};

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    pub message: String,
    pub permanent: bool,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What delivers one kind of message (email by SMTP; another kind, another implementation).
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// The outbox kind it delivers.
    fn kind(&self) -> &'static str;
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), DeliveryError>;

    /// The event recorded when a message of this kind is given up on (`email_send_failed` for
    /// mail; each kind names its own).
    fn dead_event(&self, message: &OutboxMessage, error: String) -> SecurityEvent {
        SecurityEvent::new(EventType::EmailSendFailed)
            .email(&message.recipient)
            .reason(&message.template)
            .with("messageId", message.id.to_string())
            .with("kind", message.kind.clone())
            .with("attempts", message.attempts + 1)
            .with("error", error)
    }
}

/// The sender's counts, read by `/metrics`, `/health` and the dashboard.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Messages queued by this instance.
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    /// As the last look at the outbox found them (every instance's).
    pub pending_now: AtomicU64,
    pub dead_now: AtomicU64,
    /// Milliseconds since the epoch of the oldest pending message's creation; 0 when none.
    pub oldest_pending_ms: AtomicI64,
}

impl OutboxStats {
    /// Seconds the oldest pending message has waited at `now`.
    pub fn oldest_pending_age_secs(&self, now: DateTime<Utc>) -> u64 {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => 0,
            ms => ((now.timestamp_millis() - ms).max(0) / 1000) as u64,
        }
    }
}

/// How the sender paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The first retry's wait, doubled with each attempt up to [`MAX_RETRY_WAIT`].
    pub retry_base: Duration,
    /// A message undelivered this long after its creation is dead.
    pub retry_for: Duration,
    /// How often the outbox is looked at when nothing wakes the sender.
    pub poll: Duration,
}

/// The longest wait between two attempts.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);
/// How long a claim holds a message: longer than any one delivery takes.
const LEASE: Duration = Duration::from_secs(120);
/// Messages claimed at once.
const BATCH: usize = 128;
/// Deliveries in flight at once (the SMTP transport keeps as many connections).
pub const CONCURRENCY: usize = 8;

/// The attempt after a failure at `now` of a message tried `attempts` times before.
pub fn after_failure(
    message: &OutboxMessage,
    error: &DeliveryError,
    now: DateTime<Utc>,
    pacing: &Pacing,
) -> Attempt {
    let deadline = message.created_at
        + chrono::Duration::from_std(pacing.retry_for).unwrap_or(chrono::Duration::MAX);
    if error.permanent || now >= deadline {
        return Attempt::Dead {
            error: error.message.clone(),
        };
    }
    let factor = 1u32 << message.attempts.min(20);
    let wait = pacing.retry_base.saturating_mul(factor).min(MAX_RETRY_WAIT);
    let retry_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    Attempt::Retry {
        error: error.message.clone(),
        retry_at: retry_at.min(deadline),
    }
}

/// One kind's sender.
pub struct Sender {
    pub store: Arc<dyn Store>,
    pub delivery: Arc<dyn Delivery>,
    pub clock: Clock,
    pub events: SecurityLogger,
    pub stats: Arc<OutboxStats>,
    pub wake: Arc<Notify>,
    pub pacing: Pacing,
}

impl Sender {
    /// Delivers until `stop`; returns after the batch in hand is recorded.
    pub async fn run(self, stop: CancellationToken) {
        let kind = self.delivery.kind();
        let mut warned = false;
        // The outbox's levels are read when the sender goes idle, and at most once a poll
        // interval while it is busy: on a long backlog the count costs more than a batch.
        let mut summarised: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            let lease = chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::MAX);
            let claimed = self.store.claim_due(kind, now, lease, BATCH).await;
            let busy = match claimed {
                Ok(batch) => {
                    warned = false;
                    let full = batch.len() == BATCH;
                    self.deliver_all(batch).await;
                    full
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, kind, "outbox unavailable; will retry");
                        warned = true;
                    }
                    false
                }
            };
            if !busy || summarised.is_none_or(|at| at.elapsed() >= self.pacing.poll) {
                self.refresh_summary(kind).await;
                summarised = Some(Instant::now());
            }
            if busy {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.pacing.poll) => {}
            }
        }
    }

    /// Delivers `batch`, [`CONCURRENCY`] at a time, while the attempts that finished are
    /// recorded: each record takes every attempt finished since the last one, in one commit.
    async fn deliver_all(&self, batch: Vec<OutboxMessage>) {
        let (finished, mut results) = mpsc::channel(batch.len().max(1));
        let deliver = async move {
            futures::stream::iter(batch)
                .for_each_concurrent(CONCURRENCY, |message| {
                    let finished = finished.clone();
                    async move {
                        let result = self.delivery.deliver(&message).await;
                        // The channel holds the whole batch: this never waits.
                        let _ = finished.send((message, result)).await;
                    }
                })
                .await;
        };
        let record = async {
            let mut done = Vec::with_capacity(BATCH);
            while results.recv_many(&mut done, BATCH).await > 0 {
                self.record(std::mem::take(&mut done)).await;
            }
        };
        tokio::join!(deliver, record);
    }

    async fn record(&self, done: Vec<(OutboxMessage, Result<(), DeliveryError>)>) {
        let now = self.clock.now();
        let attempts: Vec<(Uuid, Attempt)> = done
            .iter()
            .map(|(message, result)| {
                let attempt = match result {
                    Ok(()) => Attempt::Sent,
                    Err(error) => after_failure(message, error, now, &self.pacing),
                };
                (message.id, attempt)
            })
            .collect();
        if let Err(e) = self.store.record_attempts(&attempts, now).await {
            // The leases run out and the messages are tried again: at least once.
            tracing::warn!(error = %e, count = attempts.len(),
                "could not record delivery attempts; the messages will be tried again");
            return;
        }
        for ((message, _), (_, attempt)) in done.iter().zip(attempts) {
            self.recorded(message, attempt).await;
        }
    }

    /// Counts, logs and reports one recorded attempt.
    async fn recorded(&self, message: &OutboxMessage, attempt: Attempt) {
        match attempt {
            Attempt::Sent => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Attempt::Retry { error, retry_at } => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(message_id = %message.id, template = %message.template,
                    attempts = message.attempts + 1, %retry_at, error = %error,
                    "delivery failed; will retry");
            }
            Attempt::Dead { error } => {
                self.stats.dead.fetch_add(1, Ordering::Relaxed);
                tracing::error!(message_id = %message.id, template = %message.template,
                    attempts = message.attempts + 1, error = %error,
                    "delivery failed for good; the message is dead");
                self.events
                    .record(self.delivery.dead_event(message, error))
                    .await;
            }
        }
    }

    async fn refresh_summary(&self, kind: &str) {
        refresh_summary(self.store.as_ref(), &self.stats, kind).await;
    }
}

/// Reads the outbox's levels into `stats` (what `/health` and `/metrics` report).
pub async fn refresh_summary(store: &dyn Store, stats: &OutboxStats, kind: &str) {
    if let Ok(summary) = store.outbox_summary(kind).await {
        stats.pending_now.store(summary.pending, Ordering::Relaxed);
        stats.dead_now.store(summary.dead, Ordering::Relaxed);
        stats.oldest_pending_ms.store(
            summary
                .oldest_pending_at
                .map_or(0, |t| t.timestamp_millis().max(1)),
            Ordering::Relaxed,
        );
    }
}

/// Without a transport nothing is delivered, but the outbox's levels are still reported, so
/// `/health` shows mail piling up.
pub async fn watch_summary(
    store: Arc<dyn Store>,
    stats: Arc<OutboxStats>,
    kind: &'static str,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        refresh_summary(store.as_ref(), &stats, kind).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing() -> Pacing {
        Pacing {
            retry_base: Duration::from_secs(5),
            retry_for: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn retries_back_off_exponentially_and_die_after_the_period() {
        let now = Utc::now();
        let mut m = OutboxMessage::new("email", "a@example.com", "t", "{}".into(), now);
        let error = DeliveryError::transient("down");
        let waits: Vec<i64> = (0..4)
            .map(|attempts| {
                m.attempts = attempts;
                match after_failure(&m, &error, now, &pacing()) {
                    Attempt::Retry { retry_at, .. } => (retry_at - now).num_seconds(),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(waits, [5, 10, 20, 40]);
        m.attempts = 30;
        match after_failure(&m, &error, now, &pacing()) {
            Attempt::Retry { retry_at, .. } => assert_eq!((retry_at - now).num_seconds(), 3600),
            other => panic!("{other:?}"),
        }
        let late = now + chrono::Duration::hours(24);
        assert!(matches!(
            after_failure(&m, &error, late, &pacing()),
            Attempt::Dead { .. }
        ));
        let permanent = DeliveryError::permanent("no such mailbox");
        assert!(matches!(
            after_failure(&m, &permanent, now, &pacing()),
            Attempt::Dead { .. }
        ));
    }
}
