//! How an alert leaves: a signed POST to its webhook, the outbox's [`Delivery`] of kind `alert`.
//! A 2xx answer is delivered; 408, 429, 5xx and network failures are retried with back-off; any
//! other answer (a 4xx, a redirect) is final, and the alert dead (`alert_delivery_failed`).

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::payload::{ALERT_ID_HEADER, Alert, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
use super::receivers::{Format, Receiver};
use crate::clock::Clock;
use crate::mail::sender::{Delivery, DeliveryError};
use crate::security_log::{EventType, SecurityEvent};
use crate::store::outbox::OutboxMessage;

/// The outbox kind of alerts.
pub const ALERT: &str = "alert";
/// How much of a receiver's answer is kept (in the error of a failed attempt, in the CLI).
pub const ANSWER_CHARS: usize = 300;

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Its body, at most [`ANSWER_CHARS`] characters.
    pub body: String,
}

/// Every configured webhook, with the key that signs what they get.
pub struct Webhooks {
    pub receivers: Vec<Receiver>,
    secret: SecretString,
    client: reqwest::Client,
    clock: Clock,
}

impl Webhooks {
    pub fn new(
        receivers: Vec<Receiver>,
        secret: SecretString,
        timeout: Duration,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A webhook that moves is a configuration to fix, not a place to follow blindly.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flux-auth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            receivers,
            secret,
            client,
            clock,
        })
    }

    /// Posts `alert` to `receiver` now, signed at this moment, in the receiver's format.
    pub async fn post(&self, receiver: &Receiver, alert: &Alert) -> Result<Answer, DeliveryError> {
        let body = match receiver.format {
            Format::Json => serde_json::to_vec(alert),
            Format::Slack => serde_json::to_vec(&alert.slack_body()),
        }
        .map_err(|e| DeliveryError::permanent(format!("unencodable alert: {e}")))?;
        let timestamp = self.clock.now().timestamp();
        let signed = signature(self.secret.expose_secret().as_bytes(), timestamp, &body);
        let response = self
            .client
            .post(receiver.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signed)
            .header(ALERT_ID_HEADER, alert.id.to_string())
            .body(body)
            .send()
            .await
            // Without the URL: a Slack webhook's URL is its credential.
            .map_err(|e| DeliveryError::transient(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok(Answer {
            status,
            body: text.chars().take(ANSWER_CHARS).collect(),
        })
    }

    fn receiver(&self, id: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.id == id)
    }
}

/// Whether an answer is a delivery, a failure worth retrying, or a final refusal.
pub fn judge(answer: &Answer) -> Result<(), DeliveryError> {
    let detail = || {
        let body: String = answer.body.chars().take(100).collect();
        format!("HTTP {}: {}", answer.status, body.trim())
    };
    match answer.status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::transient(detail())),
        _ => Err(DeliveryError::permanent(detail())),
    }
}

#[async_trait]
impl Delivery for Webhooks {
    fn kind(&self) -> &'static str {
        ALERT
    }

    async fn deliver(&self, message: &OutboxMessage) -> Result<(), DeliveryError> {
        let Some(receiver) = self.receiver(&message.recipient) else {
            return Err(DeliveryError::permanent(
                "the webhook is no longer in ALERT_WEBHOOK_URLS",
            ));
        };
        let alert: Alert = message
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .ok_or_else(|| DeliveryError::permanent("the alert's body is unreadable"))?;
        judge(&self.post(receiver, &alert).await?)
    }

    fn dead_event(&self, message: &OutboxMessage, error: String) -> SecurityEvent {
        let alert_id = message
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<Alert>(b).ok())
            .map(|a| a.id.to_string());
        let mut event = SecurityEvent::new(EventType::AlertDeliveryFailed)
            .reason(&message.template)
            .with("receiver", message.recipient.clone())
            .with("messageId", message.id.to_string())
            .with("attempts", message.attempts + 1)
            .with("error", error);
        if let Some(id) = alert_id {
            event = event.with("alertId", id);
        }
        event
    }
}
