//! The outbox (messages to deliver at least once, whatever their kind: `email` today) and the
//! one-time tokens (email verification, password reset) that mail carries, kept by the store so
//! that a message and its token are written in one commit.
//!
//! The store knows a message's kind, recipient and body only as text: what a body means and how
//! it is delivered belongs to the sender of that kind (`mail::sender`). A message is `pending`
//! until delivered (`sent`, its body then deleted) or given up on (`dead`, its body kept for an
//! operator). A sender claims due messages with a lease, so two instances on one database never
//! deliver one message at the same time.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreResult;

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    Pending,
    Sent,
    Dead,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Self {
        match raw {
            "sent" => Self::Sent,
            "dead" => Self::Dead,
            _ => Self::Pending,
        }
    }
}

/// One message of the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxMessage {
    pub id: Uuid,
    /// Which sender delivers it (`email`).
    pub kind: String,
    /// Who gets it: an address for `email`.
    pub recipient: String,
    /// What it is (`verify_email`, `reset_password`, …): for the listing and the events.
    pub template: String,
    /// What the sender delivers; `None` once sent.
    pub body: Option<String>,
    pub state: OutboxState,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// The next delivery attempt is not before this.
    pub next_attempt_at: DateTime<Utc>,
    /// A sender holds the message until then.
    pub leased_until: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed (never secret: the transport's error text).
    pub last_error: Option<String>,
}

impl OutboxMessage {
    /// A new pending message, due at once.
    pub fn new(
        kind: &str,
        recipient: &str,
        template: &str,
        body: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::new_v4(),
            kind: kind.to_owned(),
            recipient: recipient.to_owned(),
            template: template.to_owned(),
            body: Some(body),
            state: OutboxState::Pending,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            leased_until: None,
            sent_at: None,
            last_error: None,
        }
    }

    /// Whether a sender may claim it at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.state == OutboxState::Pending
            && self.next_attempt_at <= now
            && self.leased_until.is_none_or(|until| until <= now)
    }
}

/// What a delivery attempt ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Sent,
    /// Try again at `retry_at`.
    Retry {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// Given up.
    Dead {
        error: String,
    },
}

/// The outbox of one kind at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxSummary {
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

/// What a one-time token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "verify_email" => Some(Self::VerifyEmail),
            "reset_password" => Some(Self::ResetPassword),
            _ => None,
        }
    }
}

/// A one-time token as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OneTimeToken {
    /// Hex SHA-256 of the raw token.
    pub token_hash: String,
    pub user_id: String,
    pub purpose: TokenPurpose,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What using a token changes, in the same step that consumes it.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEffect {
    /// The user's email is verified.
    VerifyEmail,
    /// The user's password becomes `password_hash`, and the email verified (the mail arrived).
    ResetPassword { password_hash: String },
}

impl TokenEffect {
    pub fn purpose(&self) -> TokenPurpose {
        match self {
            Self::VerifyEmail => TokenPurpose::VerifyEmail,
            Self::ResetPassword { .. } => TokenPurpose::ResetPassword,
        }
    }
}

/// What presenting a token found.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenUse {
    /// Consumed and applied to this user.
    Applied { user_id: String },
    /// Known but past its end: deleted, nothing applied.
    Expired,
    /// Unknown, used already, of another purpose, or its user is gone.
    Unknown,
}

/// The outbox and the one-time tokens.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores `messages` and, when given, `token` in one commit; the token replaces the user's
    /// earlier token of the same purpose (a second reset request kills the first link).
    async fn enqueue(
        &self,
        messages: &[OutboxMessage],
        token: Option<&OneTimeToken>,
    ) -> StoreResult<()>;
    /// Up to `limit` due messages of `kind`, oldest first, leased until `now + lease`: no other
    /// sender gets them meanwhile.
    async fn claim_due(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>>;
    /// Records attempts on claimed messages, in one commit: each sent (its body deleted),
    /// retried later, or dead. A message no longer pending is left as it is.
    async fn record_attempts(
        &self,
        attempts: &[(Uuid, Attempt)],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn outbox_summary(&self, kind: &str) -> StoreResult<OutboxSummary>;
    /// Pending and dead messages, oldest first, without their bodies.
    async fn outbox_messages(&self, limit: usize) -> StoreResult<Vec<OutboxMessage>>;
    /// Sent messages delivered before `before` (their records: the bodies are gone already),
    /// and expired one-time tokens; returns how many went.
    async fn delete_finished_mail(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64>;
    /// A token by its hash, unconsumed (expired or not).
    async fn one_time_token(&self, token_hash: &str) -> StoreResult<Option<OneTimeToken>>;
    /// Consumes the token of `effect`'s purpose and applies `effect` to its user, atomically: of
    /// concurrent uses of one token exactly one is `Applied`.
    async fn use_one_time_token(
        &self,
        token_hash: &str,
        effect: &TokenEffect,
        now: DateTime<Utc>,
    ) -> StoreResult<TokenUse>;
}

/// Sent messages' records are kept this long (the listing, audits), then deleted by cleanup.
pub const SENT_RETENTION_DAYS: i64 = 7;
