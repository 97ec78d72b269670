//! Anomaly rules over the security log's events: a consumer of the logger's live feed, off the
//! request path, that counts what the rules watch ([`windows`]: in Redis when configured, so every
//! instance adds to the same counts, in-process otherwise) and, when a rule fires (once per window
//! and key), takes its action (an address's logins or signups blocked through the limits) and
//! records the rule's own event through the same logger. Whatever follows the log (the dashboard's
//! stream, the event API, alerting on events at or above a severity) sees a firing as the event it
//! is.

pub mod rules;
pub mod windows;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::limits::{Limits, ip_subject};
use crate::mail::Outbox;
use crate::mail::templates::Template;
use crate::metrics::{Metrics, RuleLabels};
use crate::redis_link::RedisLink;
use crate::security_log::{EventType, SecurityEvent, SecurityLogger};
use crate::store::{DeviceSeen, Store};

pub use rules::{Rule, RuleSet};
use windows::{Windows, digest};

/// The rule engine: built once by `app`, fed by [`Anomalies::start`].
pub struct Anomalies {
    rules: RuleSet,
    windows: Windows,
    limits: Arc<Limits>,
    store: Arc<dyn Store>,
    /// Where `new_device_login`'s notice to the user is queued.
    mail: Arc<Outbox>,
    events: SecurityLogger,
    metrics: Metrics,
    clock: Clock,
    /// Events evaluated so far (tests wait on it; `/metrics` does not need it).
    evaluated: AtomicU64,
}

/// Where the rules reach users: the store (each user's known devices, the user a notice is for)
/// and the outbox (`new_device_login`'s notice).
pub struct Accounts {
    pub store: Arc<dyn Store>,
    pub mail: Arc<Outbox>,
}

/// What a firing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    None,
    /// The address's logins refused for this long.
    IpBlocked(Duration),
    /// The address's signups refused for this long.
    SignupsBlocked(Duration),
}

/// A rule that fired, before it is recorded.
struct Firing {
    rule: Rule,
    key: String,
    count: u64,
    threshold: u64,
    window: Duration,
    first_seen_ms: i64,
    action: Action,
}

impl Anomalies {
    pub fn new(
        settings: &crate::config::Settings,
        redis: Option<Arc<RedisLink>>,
        limits: Arc<Limits>,
        accounts: Accounts,
        events: SecurityLogger,
        metrics: Metrics,
        clock: Clock,
    ) -> Self {
        let Accounts { store, mail } = accounts;
        for rule in Rule::ALL {
            // Every rule's series from the start, at zero.
            drop(
                metrics
                    .anomalies
                    .get_or_create_owned(&RuleLabels { rule: rule.name() }),
            );
        }
        Self {
            rules: RuleSet::from_settings(settings),
            windows: Windows::new(redis, &settings.redis_key_prefix),
            limits,
            store,
            mail,
            events,
            metrics,
            clock,
            evaluated: AtomicU64::new(0),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Events evaluated so far.
    pub fn evaluated(&self) -> u64 {
        self.evaluated.load(Ordering::Acquire)
    }

    /// Follows the log's events until `stop`. Subscribes before returning, so every event
    /// recorded after this call is evaluated. A feed that falls behind skips what it lost
    /// (counted in `flux_auth_anomaly_events_missed_total`) rather than slowing anyone down.
    pub fn start(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mut feed = self.events.subscribe();
        tokio::spawn(async move {
            if !self.rules.enabled {
                return;
            }
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    received = feed.recv() => received,
                };
                match event {
                    Ok(event) => self.evaluate(&event).await,
                    Err(RecvError::Lagged(missed)) => {
                        self.metrics.anomaly_events_missed.inc_by(missed);
                        tracing::warn!(
                            missed,
                            "anomaly rules fell behind the security log and skipped events"
                        );
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// Evaluates one event against every rule that watches its type.
    pub async fn evaluate(&self, event: &SecurityEvent) {
        if self.rules.enabled && !event.event_type.is_anomaly() {
            let now_ms = self.clock.now_ms();
            match event.event_type {
                EventType::LoginFailed | EventType::FailedLoginAttempt => {
                    self.failed_login(event, now_ms).await;
                }
                EventType::SignupSuccess | EventType::SignupFailed => {
                    self.signup_attempt(event, now_ms).await;
                    if event.event_type == EventType::SignupSuccess {
                        self.device_seen(event).await;
                    }
                }
                EventType::RateLimitExceeded if reason(event) == Some("signup_ip") => {
                    self.signup_attempt(event, now_ms).await;
                }
                EventType::TokenReuseDetected => self.token_reused(event, now_ms).await,
                EventType::LoginSuccess | EventType::OauthSuccess => {
                    self.device_seen(event).await;
                }
                _ => {}
            }
        }
        self.evaluated.fetch_add(1, Ordering::Release);
    }

    async fn failed_login(&self, event: &SecurityEvent, now_ms: i64) {
        let address = address_of(event);
        let account = meta(event, "email")
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty());
        let stuffing = self.rules.credential_stuffing;
        if let (true, Some(ip), Some(account)) = (stuffing.on(), &address, &account) {
            let seen = self
                .windows
                .observe(
                    Rule::CredentialStuffing.name(),
                    ip,
                    &digest(account),
                    now_ms,
                    millis(stuffing.window),
                    stuffing.threshold,
                )
                .await;
            if seen.fired {
                let action = if self.limits.enabled() && !stuffing.block.is_zero() {
                    self.limits.block("ip", ip, stuffing.block).await;
                    Action::IpBlocked(stuffing.block)
                } else {
                    Action::None
                };
                let firing = Firing {
                    rule: Rule::CredentialStuffing,
                    key: ip.clone(),
                    count: seen.count,
                    threshold: u64::from(stuffing.threshold),
                    window: stuffing.window,
                    first_seen_ms: seen.first_seen_ms,
                    action,
                };
                self.fire(firing, event, None).await;
            }
        }
        let targeted = self.rules.account_targeted;
        if let (true, Some(ip), Some(account)) = (targeted.on(), &address, &account) {
            let seen = self
                .windows
                .observe(
                    Rule::AccountTargeted.name(),
                    account,
                    &digest(ip),
                    now_ms,
                    millis(targeted.window),
                    targeted.threshold,
                )
                .await;
            if seen.fired {
                let firing = Firing {
                    rule: Rule::AccountTargeted,
                    key: account.clone(),
                    count: seen.count,
                    threshold: u64::from(targeted.threshold),
                    window: targeted.window,
                    first_seen_ms: seen.first_seen_ms,
                    action: Action::None,
                };
                self.fire(firing, event, event.user_id.as_deref()).await;
            }
        }
        let spike = self.rules.spike;
        if spike.floor > 0 {
            let window_ms = millis(spike.window);
            let (current, trailing) = self
                .windows
                .count_in_window(
                    "login_failures",
                    now_ms,
                    window_ms,
                    rules::SPIKE_TRAILING_WINDOWS,
                )
                .await;
            if self.rules.spike_fires(current, trailing) {
                let window_start = now_ms - now_ms.rem_euclid(window_ms);
                let window_key = format!("service:{window_start}");
                if self
                    .windows
                    .claim(
                        Rule::LoginFailureSpike.name(),
                        &window_key,
                        now_ms,
                        window_ms,
                    )
                    .await
                {
                    let firing = Firing {
                        rule: Rule::LoginFailureSpike,
                        key: "service".into(),
                        count: current,
                        threshold: u64::from(spike.floor),
                        window: spike.window,
                        first_seen_ms: window_start,
                        action: Action::None,
                    };
                    let average = trailing as f64 / rules::SPIKE_TRAILING_WINDOWS as f64;
                    self.fire_with(firing, event, None, |e| {
                        e.with("trailingAverage", (average * 100.0).round() / 100.0)
                            .with("factor", spike.factor)
                    })
                    .await;
                }
            }
        }
    }

    async fn signup_attempt(&self, event: &SecurityEvent, now_ms: i64) {
        let burst = self.rules.signup_burst;
        let Some(ip) = address_of(event).filter(|_| burst.on()) else {
            return;
        };
        let seen = self
            .windows
            .observe(
                Rule::SignupBurst.name(),
                &ip,
                &event.id.simple().to_string(),
                now_ms,
                millis(burst.window),
                burst.threshold,
            )
            .await;
        if seen.fired {
            let action = if self.limits.enabled() && !burst.block.is_zero() {
                self.limits.block("signup", &ip, burst.block).await;
                Action::SignupsBlocked(burst.block)
            } else {
                Action::None
            };
            let firing = Firing {
                rule: Rule::SignupBurst,
                key: ip,
                count: seen.count,
                threshold: u64::from(burst.threshold),
                window: burst.window,
                first_seen_ms: seen.first_seen_ms,
                action,
            };
            self.fire(firing, event, None).await;
        }
    }

    async fn token_reused(&self, event: &SecurityEvent, now_ms: i64) {
        let theft = self.rules.token_theft;
        if !theft.on() {
            return;
        }
        let Some(session) = meta(event, "sessionId")
            .map(str::to_owned)
            .or_else(|| event.user_id.clone())
        else {
            return;
        };
        let seen = self
            .windows
            .observe(
                Rule::TokenTheft.name(),
                "service",
                &session,
                now_ms,
                millis(theft.window),
                theft.threshold,
            )
            .await;
        if seen.fired {
            let firing = Firing {
                rule: Rule::TokenTheft,
                key: "service".into(),
                count: seen.count,
                threshold: u64::from(theft.threshold),
                window: theft.window,
                first_seen_ms: seen.first_seen_ms,
                action: Action::None,
            };
            self.fire(firing, event, None).await;
        }
    }

    /// Remembers the device of a sign-in (or signup) and fires when its user had others but
    /// never this one. Each device fires once: the store remembers it.
    async fn device_seen(&self, event: &SecurityEvent) {
        if !self.rules.new_device {
            return;
        }
        let (Some(user_id), Some(fingerprint)) =
            (event.user_id.as_deref(), meta(event, "deviceFingerprint"))
        else {
            return;
        };
        let seen = self
            .store
            .remember_device(
                user_id,
                fingerprint,
                self.clock.now(),
                self.rules.known_devices_per_user,
            )
            .await;
        match seen {
            Ok(DeviceSeen::New) if event.event_type != EventType::SignupSuccess => {
                if self.rules.new_device_notice {
                    // Queued before the rule's event is recorded: whoever sees the event finds
                    // the notice already durable.
                    self.notify_new_device(user_id, event).await;
                }
                let now_ms = self.clock.now_ms();
                let firing = Firing {
                    rule: Rule::NewDevice,
                    key: user_id.to_owned(),
                    count: 1,
                    threshold: 1,
                    window: Duration::ZERO,
                    first_seen_ms: now_ms,
                    action: Action::None,
                };
                self.fire_with(firing, event, Some(user_id), |e| {
                    let e = e.with("deviceFingerprint", fingerprint);
                    match meta(event, "deviceName") {
                        Some(name) => e.with("deviceName", name),
                        None => e,
                    }
                })
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not remember a sign-in's device; new_device_login not evaluated for it")
            }
        }
    }

    /// Mails the user what signed in (the device's name and user agent, cut to 300 characters),
    /// from where and when. A failure is logged: the rule's event is recorded either way.
    async fn notify_new_device(&self, user_id: &str, event: &SecurityEvent) {
        let user = match self.store.user_by_id(user_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, %user_id, "could not read the user for a new-device notice");
                return;
            }
        };
        let device = match (meta(event, "deviceName"), event.user_agent.as_deref()) {
            (Some(name), Some(agent)) => format!("{name} ({agent})"),
            (Some(name), None) => name.to_owned(),
            (None, Some(agent)) => agent.to_owned(),
            (None, None) => "an unknown device".to_owned(),
        };
        let device: String = device.chars().take(300).collect();
        let template = Template::NewDevice {
            device,
            ip: event.ip_address.clone().unwrap_or_else(|| "unknown".into()),
            at: event.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        };
        if let Err(e) = self
            .mail
            .send(&user.email, &user.name, &template, None)
            .await
        {
            tracing::warn!(error = %e, %user_id, "could not queue a new-device notice");
        }
    }

    async fn fire(&self, firing: Firing, trigger: &SecurityEvent, user_id: Option<&str>) {
        self.fire_with(firing, trigger, user_id, |e| e).await;
    }

    /// Records the rule's event (severity by its type), with what it counted and did, about the
    /// address (and user) of the event that made it fire.
    async fn fire_with(
        &self,
        firing: Firing,
        trigger: &SecurityEvent,
        user_id: Option<&str>,
        extra: impl FnOnce(SecurityEvent) -> SecurityEvent,
    ) {
        self.metrics
            .anomalies
            .get_or_create(&RuleLabels {
                rule: firing.rule.name(),
            })
            .inc();
        let (action, blocked) = match firing.action {
            Action::None => ("none", None),
            Action::IpBlocked(d) => ("ip_blocked", Some(d.as_secs())),
            Action::SignupsBlocked(d) => ("signups_blocked", Some(d.as_secs())),
        };
        let first_seen = chrono::DateTime::from_timestamp_millis(firing.first_seen_ms)
            .map(crate::domain::format_timestamp);
        let last_seen = crate::domain::format_timestamp(self.clock.now());
        let mut event = SecurityEvent::new(firing.rule.event_type())
            .with("rule", firing.rule.name())
            .with("key", crate::security_log::sanitize(&firing.key, 300))
            .with("count", firing.count)
            .with("threshold", firing.threshold)
            .with("windowSecs", firing.window.as_secs())
            .with("lastSeen", last_seen)
            .with("action", action);
        if let Some(first_seen) = first_seen {
            event = event.with("firstSeen", first_seen);
        }
        if let Some(secs) = blocked {
            event = event.with("blockedForSecs", secs);
        }
        if let Some(request_id) = meta(trigger, "requestId") {
            event = event.with("triggerRequestId", request_id);
        }
        event.created_at = self.clock.now();
        event.ip_address = trigger.ip_address.clone();
        event.user_agent = trigger.user_agent.clone();
        if let Some(user_id) = user_id {
            event = event.user(user_id);
        }
        let event = extra(event);
        tracing::warn!(
            rule = firing.rule.name(),
            action,
            count = firing.count,
            "anomaly rule fired"
        );
        self.events.record(event).await;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn meta<'a>(event: &'a SecurityEvent, key: &str) -> Option<&'a str> {
    event.metadata.get(key).and_then(Value::as_str)
}

fn reason(event: &SecurityEvent) -> Option<&str> {
    meta(event, "reason")
}

/// The event's address as the limits name it (an IPv6 client by its /64).
fn address_of(event: &SecurityEvent) -> Option<String> {
    event
        .ip_address
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .map(ip_subject)
}
