//! What a receiver gets: the alert as JSON (or Slack's shape of it), and its signature.
//!
//! `X-Flux-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with
//! `ALERT_WEBHOOK_SECRET`, and `X-Flux-Timestamp: <t>`: the receiver recomputes the HMAC over the
//! exact bytes it received, compares in constant time, and refuses a `t` outside its replay
//! window (docs/OPERATIONS.md, "Alerts"). Each attempt is signed afresh, so a retry hours later
//! still passes a five-minute window.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::format_timestamp;
use crate::security_log::SecurityEvent;

pub const SIGNATURE_HEADER: &str = "x-flux-signature";
pub const TIMESTAMP_HEADER: &str = "x-flux-timestamp";
/// The alert's id, the same at every attempt and every receiver: a receiver that keeps the ids
/// it saw drops the second copy an at-least-once delivery can bring.
pub const ALERT_ID_HEADER: &str = "x-flux-alert-id";

/// One alert, as every JSON receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The same for one event (or one rule's window and key) at every receiver and attempt.
    pub id: Uuid,
    /// `alert`, or `test` for `flux-auth alerts test`.
    pub kind: String,
    /// The security event's type (`credential_stuffing_suspected`, …).
    pub event_type: String,
    pub severity: String,
    /// The anomaly rule that fired, when the event is a rule's.
    pub rule: Option<String>,
    /// What the rule counted by (an address, an account, `service`), else the event's address or
    /// user.
    pub key: Option<String>,
    pub count: Option<u64>,
    pub threshold: Option<u64>,
    pub window_secs: Option<u64>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// What the rule did (`ip_blocked`, `signups_blocked`, `none`).
    pub action: Option<String>,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    /// The security event's id (the dashboard and the events API find it by this).
    pub event_id: Uuid,
    /// When the event happened.
    pub time: String,
    /// Which instance queued the alert (`<host>/<pid>`).
    pub instance: String,
    /// The dashboard, when `PUBLIC_URL` is set.
    pub dashboard_url: Option<String>,
    /// One line for people.
    pub summary: String,
}

fn text(event: &SecurityEvent, key: &str) -> Option<String> {
    event
        .metadata
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn number(event: &SecurityEvent, key: &str) -> Option<u64> {
    event.metadata.get(key).and_then(Value::as_u64)
}

impl Alert {
    /// The alert of `event`; `id` is its deduplication's id.
    pub fn of(event: &SecurityEvent, id: Uuid, instance: &str, dashboard: Option<&str>) -> Self {
        let rule = event
            .event_type
            .is_anomaly()
            .then(|| event.event_type.as_str().to_owned());
        let key = text(event, "key")
            .or_else(|| event.ip_address.clone())
            .or_else(|| event.user_id.clone());
        let count = number(event, "count");
        let window_secs = number(event, "windowSecs");
        let mut summary = format!(
            "{} ({})",
            event.event_type.as_str(),
            event.severity.as_str()
        );
        if let Some(key) = &key {
            summary.push_str(&format!(" on {key}"));
        }
        if let (Some(count), Some(window)) = (count, window_secs.filter(|w| *w > 0)) {
            summary.push_str(&format!(": {count} within {window} s"));
        }
        if let Some(action) = text(event, "action").filter(|a| a != "none") {
            summary.push_str(&format!(", {action}"));
        }
        Self {
            id,
            kind: "alert".into(),
            event_type: event.event_type.as_str().into(),
            severity: event.severity.as_str().into(),
            rule,
            key,
            count,
            threshold: number(event, "threshold"),
            window_secs,
            first_seen: text(event, "firstSeen"),
            last_seen: text(event, "lastSeen"),
            action: text(event, "action"),
            ip: event.ip_address.clone(),
            user_id: event.user_id.clone(),
            event_id: event.id,
            time: format_timestamp(event.created_at),
            instance: instance.to_owned(),
            dashboard_url: dashboard.map(str::to_owned),
            summary,
        }
    }

    /// What `flux-auth alerts test` sends.
    pub fn test(now: DateTime<Utc>, instance: &str, dashboard: Option<&str>) -> Self {
        Self {
            id: Uuid::new_v4(),
            kind: "test".into(),
            event_type: "alert_test".into(),
            severity: "info".into(),
            rule: None,
            key: None,
            count: None,
            threshold: None,
            window_secs: None,
            first_seen: None,
            last_seen: None,
            action: None,
            ip: None,
            user_id: None,
            event_id: Uuid::nil(),
            time: format_timestamp(now),
            instance: instance.to_owned(),
            dashboard_url: dashboard.map(str::to_owned),
            summary: "flux-auth test alert: this webhook receives flux-auth's alerts".into(),
        }
    }

    /// The body a Slack incoming webhook shows: a line of text (for notifications) and blocks.
    pub fn slack_body(&self) -> Value {
        let icon = match self.severity.as_str() {
            "critical" => ":rotating_light:",
            "high" => ":warning:",
            _ => ":information_source:",
        };
        let text = format!("{icon} flux-auth: {}", self.summary);
        let mut fields = vec![
            json!({"type": "mrkdwn", "text": format!("*Event*\n`{}`", self.event_type)}),
            json!({"type": "mrkdwn", "text": format!("*Severity*\n{}", self.severity)}),
        ];
        for (name, value) in [
            ("Key", self.key.clone()),
            ("Count", self.count.map(|c| c.to_string())),
            ("Window", self.window_secs.map(|w| format!("{w} s"))),
            ("Action", self.action.clone()),
            ("First seen", self.first_seen.clone()),
            ("Last seen", self.last_seen.clone()),
        ] {
            if let Some(value) = value {
                fields.push(json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")}));
            }
        }
        let mut context = format!("{} · {} · alert {}", self.instance, self.time, self.id);
        if let Some(url) = &self.dashboard_url {
            context.push_str(&format!(" · <{url}|dashboard>"));
        }
        json!({
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                // Slack shows at most 10 fields in a section.
                {"type": "section", "fields": fields.into_iter().take(10).collect::<Vec<_>>()},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
            ],
        })
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(b"key", b'1700000000.{"a":1}', sha256).
        let signed = signature(b"key", 1_700_000_000, b"{\"a\":1}");
        assert_eq!(
            signed,
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
        assert_ne!(signed, signature(b"key", 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(signed, signature(b"kez", 1_700_000_000, b"{\"a\":1}"));
    }
}
