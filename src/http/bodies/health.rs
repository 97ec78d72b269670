//! The bodies of the health routes.

use serde::Serialize;
use utoipa::ToSchema;

/// `GET /health`: `degraded` whenever a fallback is active or a dependency fails.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    #[schema(example = "auth-service")]
    pub service: &'static str,
    pub version: &'static str,
    /// The port actually listened on.
    pub port: u16,
    /// Seconds since start.
    pub uptime: u64,
    pub timestamp: String,
    pub pid: u32,
    pub checks: HealthChecks,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthChecks {
    pub database: CheckState,
    pub storage_type: StorageType,
    pub redis: CheckState,
    pub oauth: Configured,
    pub security_log: SecurityLogHealth,
    pub mail: MailHealth,
    pub alerts: AlertsHealth,
}

/// The alerts' outbox, as their sender last found it (every instance's deliveries: one per alert
/// and webhook).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsHealth {
    /// Webhooks configured (`ALERT_WEBHOOK_URLS`); 0: no alerts are sent.
    pub receivers: usize,
    /// Deliveries waiting.
    pub pending: u64,
    /// Seconds the oldest waiting delivery has waited (0 when none).
    pub oldest_pending_age_secs: u64,
    /// Deliveries given up on (each recorded by an `alert_delivery_failed` event).
    pub dead: u64,
    /// Deliveries this instance made since its start.
    pub sent: u64,
}

/// The mail outbox, as its sender last found it (every instance's messages).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailHealth {
    /// `smtp`, `files` (development without SMTP) or `none` (production without SMTP: messages
    /// wait in the outbox).
    pub transport: &'static str,
    /// Messages waiting for delivery.
    pub pending: u64,
    /// Seconds the oldest waiting message has waited (0 when none).
    pub oldest_pending_age_secs: u64,
    /// Messages given up on (each recorded by an `email_send_failed` event).
    pub dead: u64,
    /// Messages this instance delivered since its start.
    pub sent: u64,
    /// Forgot-password and resend-verification requests answered and waiting for their lookup.
    pub requests_waiting: usize,
    /// Such requests dropped since the start because their queue was full (`MAIL_REQUEST_QUEUE`).
    pub requests_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Ok,
    Error,
    NotConfigured,
}

impl CheckState {
    /// A dependency's state as the limits report Redis: `ok`, `error` or `not_configured`.
    pub fn of(state: &str) -> Self {
        match state {
            "ok" => Self::Ok,
            "error" => Self::Error,
            _ => Self::NotConfigured,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Postgresql,
    File,
}

impl StorageType {
    /// A store's or a sink's kind as it names itself: `postgresql` or `file`.
    pub fn of(kind: &str) -> Self {
        if kind == "postgresql" {
            Self::Postgresql
        } else {
            Self::File
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Configured {
    Configured,
    NotConfigured,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityLogHealth {
    pub sink: StorageType,
    /// The log as it is now: its sink answers, its spool takes writes and is under its cap, and
    /// no event waits in the spool. A loss in the past does not count here (see `lastDropAt`).
    pub healthy: bool,
    /// Events waiting in memory for the writer.
    pub queued: u64,
    /// Events in spool files waiting for the database.
    pub spooled: u64,
    /// Events lost since the start (expected 0).
    pub dropped: u64,
    /// When events were last made durable; null until the first flush.
    #[schema(required = true)]
    pub last_flush_at: Option<String>,
    /// When events were last lost; null if never since the start.
    #[schema(required = true)]
    pub last_drop_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "alive")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
}
