//! Row mapping: the column lists of the queries and the rows they read, turned into records.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::domain::{Email, UserRecord, UserType};
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
        "id, email, name, user_type, password_hash, google_id, email_verified, avatar, created_at, \
         last_login, updated_at, two_factor_enabled"
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
    pub(super) updated_at: DateTime<Utc>,
    pub(super) two_factor_enabled: bool,
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
            updated_at: r.updated_at,
            last_login: r.last_login,
            two_factor_enabled: r.two_factor_enabled,
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

/// A user's row written whole, with its canonical email key, by `sql` ([`INSERT_USER`] or
/// [`INSERT_USER_IF_ABSENT`]): one set of binds for signup, import and a provider's first
/// sign-in, so the three can never write different columns.
pub(super) fn insert_user<'q>(
    user: &'q UserRecord,
    sql: &'static str,
) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.user_type.as_str())
        .bind(&user.password_hash)
        .bind(&user.google_id)
        .bind(user.email_verified)
        .bind(&user.avatar)
        .bind(user.created_at)
        .bind(user.last_login)
        .bind(Email::key_of(&user.email))
        .bind(user.updated_at)
        .bind(user.two_factor_enabled)
}

/// The statement [`insert_user`] binds to: a new user (a taken email or id is an error).
pub(super) const INSERT_USER: &str = "INSERT INTO users (id, email, name, user_type, password_hash, \
    google_id, email_verified, avatar, created_at, last_login, email_key, updated_at, \
    two_factor_enabled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// The same, leaving an existing user alone (imports).
pub(super) const INSERT_USER_IF_ABSENT: &str = "INSERT INTO users (id, email, name, user_type, \
    password_hash, google_id, email_verified, avatar, created_at, last_login, email_key, \
    updated_at, two_factor_enabled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
    ON CONFLICT DO NOTHING";

/// Users written whole, a page of them in one statement (imports): [`insert_user`]'s columns and
/// `settings` (compact JSON text, or none), each bound as an array in the users' order, inserted
/// in that order; a user whose id, email or Google subject is taken is left alone. Answers the
/// ids inserted.
pub(super) fn insert_users_if_absent(
    users: &[(UserRecord, Option<String>)],
) -> sqlx::query::QueryScalar<'static, Postgres, String, PgArguments> {
    let column = |f: &dyn Fn(&UserRecord) -> Option<String>| -> Vec<Option<String>> {
        users.iter().map(|(u, _)| f(u)).collect()
    };
    sqlx::query_scalar(INSERT_USERS_IF_ABSENT)
        .bind(column(&|u| Some(u.id.clone())))
        .bind(column(&|u| Some(u.email.clone())))
        .bind(column(&|u| Some(u.name.clone())))
        .bind(column(&|u| Some(u.user_type.as_str().to_owned())))
        .bind(column(&|u| u.password_hash.clone()))
        .bind(column(&|u| u.google_id.clone()))
        .bind(
            users
                .iter()
                .map(|(u, _)| u.email_verified)
                .collect::<Vec<_>>(),
        )
        .bind(column(&|u| u.avatar.clone()))
        .bind(users.iter().map(|(u, _)| u.created_at).collect::<Vec<_>>())
        .bind(users.iter().map(|(u, _)| u.last_login).collect::<Vec<_>>())
        .bind(column(&|u| Email::key_of(&u.email)))
        .bind(users.iter().map(|(u, _)| u.updated_at).collect::<Vec<_>>())
        .bind(
            users
                .iter()
                .map(|(u, _)| u.two_factor_enabled)
                .collect::<Vec<_>>(),
        )
        .bind(users.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>())
}

const INSERT_USERS_IF_ABSENT: &str = "INSERT INTO users (id, email, name, user_type, \
    password_hash, google_id, email_verified, avatar, created_at, last_login, email_key, \
    updated_at, two_factor_enabled, settings) \
    SELECT id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
    created_at, last_login, email_key, updated_at, two_factor_enabled, settings::jsonb \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::boolean[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
    $12::timestamptz[], $13::boolean[], $14::text[]) WITH ORDINALITY AS page (id, email, name, \
    user_type, password_hash, google_id, email_verified, avatar, created_at, last_login, \
    email_key, updated_at, two_factor_enabled, settings, n) \
    ORDER BY n \
    ON CONFLICT DO NOTHING RETURNING id";
