//! Alerts: a consumer of the security log's live feed, off the request path, that turns every
//! anomaly rule's firing and every event at or above `ALERT_MIN_SEVERITY` into one outbox message
//! per webhook (kind `alert`), which the outbox's sender (`mail::sender`, the same machinery as
//! mail: leases, back-off, dead messages) posts signed ([`webhook`], [`payload`]).
//!
//! Deduplication is the outbox's own: a message's id is derived from its webhook and the alert's
//! key (the rule and its key within the rule's window; the event type and its address or user
//! within `ALERT_DEDUP_WINDOW_SECS`), and the store keeps the first message of an id. So one
//! window's alert is queued once however many instances saw it, survives a restart in the store,
//! and is delivered by one instance at a time.

pub mod payload;
pub mod receivers;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::Settings;
use crate::mail::OutboxStats;
use crate::mail::sender::{Pacing, Sender};
use crate::security_log::{EventType, SecurityEvent, SecurityLogger, Severity};
use crate::store::Store;
use crate::store::outbox::OutboxMessage;
pub use payload::Alert;
pub use receivers::{Format, Receiver};
pub use webhook::{ALERT, Webhooks};

/// The alert consumer and its counts, built once by `app`.
pub struct Alerts {
    /// `None` when no webhook is configured: nothing is queued.
    pub webhooks: Option<Arc<Webhooks>>,
    min: Severity,
    dedup_window_ms: i64,
    max_per_minute: u32,
    store: Arc<dyn Store>,
    clock: Clock,
    events: SecurityLogger,
    instance: String,
    dashboard: Option<String>,
    pacing: Pacing,
    /// The minute (since the epoch) and the alerts queued in it.
    budget: Mutex<(i64, u32)>,
    /// queued (by this instance), sent, retried, dead; the outbox's levels.
    pub stats: Arc<OutboxStats>,
    /// Alerts over `ALERT_MAX_PER_MINUTE`, not queued.
    pub suppressed: AtomicU64,
    /// Events the consumer lost because it fell behind the log.
    pub missed: AtomicU64,
    /// Wakes the sender when an alert is queued.
    pub wake: Arc<Notify>,
}

impl Alerts {
    /// The alerts of `settings` (already checked by `setting_problems`).
    pub fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        events: SecurityLogger,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let receivers =
            receivers::from_settings(settings).map_err(crate::config::ConfigError::Problems)?;
        let webhooks = match (&settings.alert_webhook_secret, receivers.is_empty()) {
            (Some(secret), false) => Some(Arc::new(Webhooks::new(
                receivers,
                secret.clone(),
                Duration::from_millis(settings.alert_timeout_ms),
                clock.clone(),
            )?)),
            _ => None,
        };
        let dashboard = settings
            .public_url
            .as_deref()
            .map(|u| format!("{}/admin", u.trim_end_matches('/')));
        Ok(Self {
            webhooks,
            min: receivers::min_severity(settings).unwrap_or(Severity::High),
            dedup_window_ms: (settings.alert_dedup_window_secs.max(1) * 1000) as i64,
            max_per_minute: settings.alert_max_per_minute,
            store,
            clock,
            events,
            instance: instance_name(),
            dashboard,
            pacing: Pacing {
                retry_base: Duration::from_millis(settings.alert_retry_base_ms),
                retry_for: Duration::from_secs(settings.alert_retry_for_secs),
                poll: Duration::from_millis(settings.alert_poll_ms.max(10)),
            },
            budget: Mutex::new((0, 0)),
            stats: Arc::default(),
            suppressed: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
        })
    }

    /// How many webhooks alerts go to.
    pub fn receivers(&self) -> usize {
        self.webhooks.as_ref().map_or(0, |w| w.receivers.len())
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn dashboard(&self) -> Option<&str> {
        self.dashboard.as_deref()
    }

    /// Seconds the oldest waiting alert has waited.
    pub fn oldest_pending_age_secs(&self) -> u64 {
        self.stats.oldest_pending_age_secs(self.clock.now())
    }

    /// Whether `event` is alerted: every rule's firing, and what is at or above the minimum
    /// severity (but never a failed alert itself: a webhook that is down would feed itself).
    pub fn alerts_on(&self, event: &SecurityEvent) -> bool {
        event.event_type != EventType::AlertDeliveryFailed
            && (event.event_type.is_anomaly() || event.severity >= self.min)
    }

    /// Follows the log's events until `stop` (nothing to do without webhooks). Subscribes before
    /// returning, so every event recorded after this call is considered.
    pub fn start(self: Arc<Self>, stop: CancellationToken) {
        if self.webhooks.is_none() {
            return;
        }
        let mut feed = self.events.subscribe();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    received = feed.recv() => received,
                };
                match event {
                    Ok(event) if self.alerts_on(&event) => self.queue(&event).await,
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        self.missed.fetch_add(missed, Ordering::Relaxed);
                        tracing::warn!(
                            missed,
                            "alerts fell behind the security log and skipped events"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// The key that makes one alert of many sightings: a rule's firing by its rule and key within
    /// its window (a new device by its user and device), any other event by its type and address
    /// (or user) within `ALERT_DEDUP_WINDOW_SECS`.
    pub fn dedup_key(&self, event: &SecurityEvent) -> String {
        let meta = |k: &str| event.metadata.get(k).and_then(serde_json::Value::as_str);
        let at = event.created_at.timestamp_millis();
        let kind = event.event_type.as_str();
        if event.event_type.is_anomaly() {
            let key = meta("key").unwrap_or("service");
            let window = event
                .metadata
                .get("windowSecs")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
            return if window > 0 {
                format!("{kind}|{key}|{}", at.div_euclid(window * 1000))
            } else {
                let device = meta("deviceFingerprint").map_or(event.id.to_string(), str::to_owned);
                format!("{kind}|{key}|{device}")
            };
        }
        let key = event
            .ip_address
            .as_deref()
            .or(event.user_id.as_deref())
            .unwrap_or("service");
        format!("{kind}|{key}|{}", at.div_euclid(self.dedup_window_ms))
    }

    /// Queues `event`'s alert for every webhook, durably, and wakes the sender.
    pub async fn queue(&self, event: &SecurityEvent) {
        let Some(webhooks) = &self.webhooks else {
            return;
        };
        if !self.within_budget() {
            let suppressed = self.suppressed.fetch_add(1, Ordering::Relaxed) + 1;
            if suppressed.is_power_of_two() {
                tracing::warn!(
                    suppressed,
                    event_type = event.event_type.as_str(),
                    "ALERT_MAX_PER_MINUTE reached: alert not sent"
                );
            }
            return;
        }
        let key = self.dedup_key(event);
        let alert = Alert::of(event, derived_id(&key), &self.instance, self.dashboard());
        let Ok(body) = serde_json::to_string(&alert) else {
            return;
        };
        let now = self.clock.now();
        let messages: Vec<OutboxMessage> = webhooks
            .receivers
            .iter()
            .map(|r| {
                let mut m = OutboxMessage::new(ALERT, &r.id, &alert.event_type, body.clone(), now);
                m.id = derived_id(&format!("{}|{key}", r.id));
                m
            })
            .collect();
        match self.store.enqueue(&messages, None).await {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, event_type = %alert.event_type,
                "could not queue an alert; it is lost"),
        }
    }

    fn within_budget(&self) -> bool {
        let minute = self.clock.now_ms().div_euclid(60_000);
        let mut budget = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if budget.0 != minute {
            *budget = (minute, 0);
        }
        budget.1 += 1;
        budget.1 <= self.max_per_minute
    }

    /// The sender of alerts (none without webhooks).
    pub fn sender(&self) -> Option<Sender> {
        let webhooks = self.webhooks.clone()?;
        Some(Sender {
            store: self.store.clone(),
            delivery: webhooks,
            clock: self.clock.clone(),
            events: self.events.clone(),
            stats: self.stats.clone(),
            wake: self.wake.clone(),
            pacing: self.pacing,
        })
    }

    /// Delivers queued alerts until `stop`; without webhooks, reports the outbox's levels only
    /// (alerts queued before the webhooks were removed).
    pub fn run(&self, stop: CancellationToken) {
        match self.sender() {
            Some(sender) => {
                tokio::spawn(sender.run(stop));
            }
            None => {
                tokio::spawn(crate::mail::sender::watch_summary(
                    self.store.clone(),
                    self.stats.clone(),
                    ALERT,
                    self.pacing.poll,
                    stop,
                ));
            }
        }
    }
}

/// An id derived from `key`: the same key gives the same id on every instance.
fn derived_id(key: &str) -> Uuid {
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// `<host>/<pid>`: which instance queued an alert.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{host}/{}", std::process::id())
}

/// What is wrong with the alerts' settings beyond what `config` checks.
pub fn setting_problems(settings: &Settings) -> Vec<String> {
    receivers::setting_problems(settings)
}
