//! Row mapping: the column lists of the queries and the rows they read, turned into records.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{UserRecord, UserType};
use crate::store::{SessionRecord, TokenRecord};

// Column lists as macros so queries stay `&'static str` (sqlx refuses dynamic SQL strings).
/// The account of a mailbox: `$1` its canonical key, `$2` the address as sent. A row without a
/// key yet (written by an older version during a rolling upgrade, or by hand, and keyed at the
/// next migration) is found by its exact address; a keyed row wins.
macro_rules! by_email {
    () => {
        "(email_key = $1 OR (email_key IS NULL AND email = $2)) ORDER BY email_key IS NULL LIMIT 1"
    };
}

macro_rules! user_columns {
    () => {
        "id, email, name, user_type, password_hash, google_id, email_verified, avatar, created_at, last_login"
    };
}
macro_rules! session_columns {
    () => {
        "id, user_id, device_name, ip_address, user_agent, fingerprint, created_at, last_used_at, expires_at, \
         revoked_at, revoked_reason"
    };
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) name: String,
    pub(super) user_type: String,
    pub(super) password_hash: Option<String>,
    pub(super) google_id: Option<String>,
    pub(super) email_verified: bool,
    pub(super) avatar: Option<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) last_login: Option<DateTime<Utc>>,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            email: r.email,
            name: r.name,
            user_type: UserType::parse(&r.user_type).unwrap_or(UserType::Client),
            password_hash: r.password_hash,
            google_id: r.google_id,
            email_verified: r.email_verified,
            avatar: r.avatar,
            created_at: r.created_at,
            last_login: r.last_login,
            extra: serde_json::Map::new(),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    pub(super) id: Uuid,
    pub(super) user_id: String,
    pub(super) device_name: String,
    pub(super) ip_address: String,
    pub(super) user_agent: Option<String>,
    pub(super) fingerprint: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) last_used_at: DateTime<Utc>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) revoked_at: Option<DateTime<Utc>>,
    pub(super) revoked_reason: Option<String>,
}

impl From<SessionRow> for SessionRecord {
    fn from(r: SessionRow) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            device_name: r.device_name,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_reason: r.revoked_reason,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    pub(super) id: Uuid,
    pub(super) session_id: Uuid,
    pub(super) token_hash: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) rotated_at: Option<DateTime<Utc>>,
    pub(super) replaced_by: Option<Uuid>,
}

impl From<TokenRow> for TokenRecord {
    fn from(r: TokenRow) -> Self {
        Self {
            id: r.id,
            session_id: r.session_id,
            token_hash: r.token_hash,
            created_at: r.created_at,
            rotated_at: r.rotated_at,
            replaced_by: r.replaced_by,
        }
    }
}
