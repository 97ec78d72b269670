//! Reading FluxStudio's `public.users` and `public.refresh_tokens`: which of the columns that
//! vary between live databases this one has, and the rows, a page at a time from a cursor over
//! each table so that neither is ever held whole. Both cursors are in one read-only transaction:
//! the tokens read are those of the same moment as the users, and each table is scanned (and the
//! users sorted) once, not once per page.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

/// The columns that live databases have or lack, as found.
#[derive(Debug, Clone)]
pub struct Columns {
    users: Vec<String>,
    tokens: Vec<String>,
}

impl Columns {
    pub async fn read(source: &PgPool) -> anyhow::Result<Self> {
        let of = |table: &'static str| {
            sqlx::query_scalar::<_, String>(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1",
            )
            .bind(table)
            .fetch_all(source)
        };
        let users = of("users").await?;
        let tokens = of("refresh_tokens").await?;
        for needed in ["id", "email"] {
            if !users.iter().any(|c| c == needed) {
                anyhow::bail!(
                    "public.users has no column {needed}: this database does not hold FluxStudio's \
                     users (set FLUXSTUDIO_DATABASE_URL to the one that does)"
                );
            }
        }
        Ok(Self { users, tokens })
    }

    fn user(&self, name: &str, cast: &str) -> String {
        column(&self.users, name, cast)
    }

    fn token(&self, name: &str, cast: &str) -> String {
        column(&self.tokens, name, cast)
    }

    pub fn has_tokens(&self) -> bool {
        ["token", "user_id", "expires_at"]
            .iter()
            .all(|c| self.tokens.iter().any(|t| t == c))
    }

    /// `avatar_url`, or `profile_picture` in databases that have that instead.
    fn avatar(&self) -> String {
        if self.users.iter().any(|c| c == "avatar_url") {
            "avatar_url::text".into()
        } else {
            self.user("profile_picture", "text")
        }
    }

    /// The users, oldest first (by creation time, then id), so that of two accounts sharing a
    /// mailbox the older is the one imported.
    fn users_sql(&self) -> String {
        format!(
            "SELECT id::text AS id, email::text AS email, {name} AS name, \
             {password_hash} AS password_hash, {user_type} AS user_type, {avatar} AS avatar, \
             {oauth_provider} AS oauth_provider, {oauth_id} AS oauth_id, \
             {google_id} AS google_id, {apple_id} AS apple_id, \
             COALESCE({email_verified}, false) AS email_verified, \
             COALESCE({is_active}, true) AS is_active, \
             COALESCE({created_at}, '0001-01-01 00:00:00+00'::timestamptz) AS sort_key, {created_at} AS created_at, \
             {last_login} AS last_login, \
             CASE WHEN octet_length({preferences}::text) <= {max_preferences} THEN {preferences} END \
               AS preferences, \
             COALESCE(octet_length({preferences}::text) > {max_preferences}, false) AS preferences_too_large, \
             CASE WHEN COALESCE({totp_enabled}, false) THEN COALESCE({totp_secret}, '') END AS totp_secret, \
             ({totp_backup_codes})[1:{max_backup_codes}] AS totp_backup_codes, \
             {totp_enabled_at} AS totp_enabled_at \
             FROM public.users ORDER BY sort_key, 1",
            name = self.user("name", "text"),
            password_hash = self.user("password_hash", "text"),
            user_type = self.user("user_type", "text"),
            avatar = self.avatar(),
            oauth_provider = self.user("oauth_provider", "text"),
            oauth_id = self.user("oauth_id", "text"),
            google_id = self.user("google_id", "text"),
            apple_id = self.user("apple_id", "text"),
            email_verified = self.user("email_verified", "boolean"),
            is_active = self.user("is_active", "boolean"),
            created_at = self.user("created_at", "timestamptz"),
            last_login = self.user("last_login", "timestamptz"),
            preferences = self.user("preferences", "jsonb"),
            totp_secret = self.user("totp_secret", "text"),
            totp_enabled = self.user("totp_enabled", "boolean"),
            totp_backup_codes = self.user("totp_backup_codes", "text[]"),
            totp_enabled_at = self.user("totp_enabled_at", "timestamptz"),
            max_preferences = MAX_PREFERENCES_TEXT,
            max_backup_codes = MAX_BACKUP_CODES,
        )
    }

    /// The refresh tokens, in no particular order.
    fn tokens_sql(&self) -> String {
        format!(
            "SELECT token::text AS token, user_id::text AS user_id, \
             {device_name} AS device_name, host({ip}) AS ip_address, {user_agent} AS user_agent, \
             expires_at::timestamptz AS expires_at, {created_at} AS created_at, \
             {last_used_at} AS last_used_at, \
             ({revoked_at} IS NOT NULL OR NOT COALESCE({is_active}, true)) AS revoked \
             FROM public.refresh_tokens",
            device_name = self.token("device_name", "text"),
            ip = self.token("ip_address", "inet"),
            user_agent = self.token("user_agent", "text"),
            created_at = self.token("created_at", "timestamptz"),
            last_used_at = self.token("last_used_at", "timestamptz"),
            revoked_at = self.token("revoked_at", "timestamptz"),
            is_active = self.token("is_active", "boolean"),
        )
    }
}

/// The column cast to `cast`, or a typed NULL where this database lacks it.
fn column(present: &[String], name: &str, cast: &str) -> String {
    if present.iter().any(|c| c == name) {
        format!("{name}::{cast}")
    } else {
        format!("NULL::{cast}")
    }
}

/// A user row of FluxStudio's, as read.
#[derive(Debug, sqlx::FromRow)]
pub struct SourceUser {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: Option<String>,
    pub user_type: Option<String>,
    pub avatar: Option<String>,
    pub oauth_provider: Option<String>,
    pub oauth_id: Option<String>,
    pub google_id: Option<String>,
    pub apple_id: Option<String>,
    pub email_verified: bool,
    pub is_active: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub last_login: Option<DateTime<Utc>>,
    /// `preferences`, unless its text is longer than [`MAX_PREFERENCES_TEXT`] (then
    /// `preferences_too_large`): what could never fit the settings' cap is not read.
    pub preferences: Option<serde_json::Value>,
    pub preferences_too_large: bool,
    /// `totp_secret` (base32) of a user with `totp_enabled`; `None` otherwise.
    pub totp_secret: Option<String>,
    pub totp_backup_codes: Option<Vec<String>>,
    pub totp_enabled_at: Option<DateTime<Utc>>,
}

/// A refresh token row of FluxStudio's, as read.
#[derive(Debug, sqlx::FromRow)]
pub struct SourceToken {
    pub token: String,
    pub user_id: String,
    pub device_name: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// `preferences` longer than this as Postgres's text are not read (and reported): that text at
/// most doubles the compact JSON the settings' cap measures, so settings made from them exceed
/// the cap unless most of it is keys the settings drop. Bounds what one page holds.
const MAX_PREFERENCES_TEXT: usize = 2 * crate::domain::settings::MAX_STORED_BYTES;

/// Backup codes read per user at most (FluxStudio made 8).
const MAX_BACKUP_CODES: usize = 20;

/// The two cursors, on a connection of the source's own.
pub struct Reader {
    conn: PoolConnection<Postgres>,
    tokens: bool,
}

impl Reader {
    pub async fn open(source: &PgPool, columns: &Columns) -> Result<Self, sqlx::Error> {
        let mut conn = source.acquire().await?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DECLARE fluxstudio_users NO SCROLL CURSOR FOR {}",
            columns.users_sql()
        )))
        .execute(&mut *conn)
        .await?;
        let tokens = columns.has_tokens();
        if tokens {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DECLARE fluxstudio_tokens NO SCROLL CURSOR FOR {}",
                columns.tokens_sql()
            )))
            .execute(&mut *conn)
            .await?;
        }
        Ok(Self { conn, tokens })
    }

    /// The next page of users; empty at the end.
    pub async fn users(&mut self) -> Result<Vec<SourceUser>, sqlx::Error> {
        sqlx::query_as(FETCH_USERS).fetch_all(&mut *self.conn).await
    }

    /// The next page of refresh tokens; empty at the end, or when the database has none.
    pub async fn tokens(&mut self) -> Result<Vec<SourceToken>, sqlx::Error> {
        if !self.tokens {
            return Ok(Vec::new());
        }
        sqlx::query_as(FETCH_TOKENS)
            .fetch_all(&mut *self.conn)
            .await
    }

    /// Ends the read transaction (it changed nothing).
    pub async fn close(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        Ok(())
    }
}

/// A page: 1,000 rows.
const FETCH_USERS: &str = "FETCH 1000 FROM fluxstudio_users";
const FETCH_TOKENS: &str = "FETCH 1000 FROM fluxstudio_tokens";
