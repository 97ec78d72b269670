//! The Postgres store (sqlx, runtime-checked queries, so building never needs a database).
//!
//! The pool connects lazily: if the database is down at start the service still starts, answers
//! `Unavailable` (503) on routes that need it, and a background task keeps trying to connect and
//! migrate; once that succeeds the store is ready and stays so, reconnecting as the pool does.
//!
//! Every query takes its connection through [`Database::acquire`], which times the wait for the
//! pool (sqlx does not report it) into `db_pool_acquire_wait_seconds{pool}`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use secrecy::ExposeSecret;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
use uuid::Uuid;

use super::{
    ImportOutcome, InvalidReason, NewSession, RotateOutcome, RotateRequest, RotationDecision,
    SessionRecord, Store, StoreError, StoreResult, TokenRecord, decide_rotation,
};
use crate::config::Settings;
use crate::domain::{UserRecord, UserType};
use crate::metrics::PoolMetrics;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

mod identities;

/// Which tables a database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Every migration: users, sessions, identities, security events.
    Full,
    /// Only `security_events`.
    SecurityEventsOnly,
}

/// A pool that connects on first use, a flag that turns true once migrations have run, and the
/// metrics its acquires are timed into.
#[derive(Clone)]
pub struct Database {
    /// For levels (size, idle) and tools. Queries go through [`Database::acquire`] instead, so
    /// their wait is measured.
    pub pool: PgPool,
    ready: Arc<AtomicBool>,
    metrics: PoolMetrics,
}

impl Database {
    /// A pool whose acquire wait nobody scrapes (CLI commands, tools); the service uses
    /// [`Database::connect_lazy_observed`].
    pub fn connect_lazy(
        url: &secrecy::SecretString,
        max_connections: u32,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_observed(url, max_connections, timeout, PoolMetrics::unregistered())
    }

    /// A pool that observes every acquire into `metrics` (from [`crate::metrics::Metrics::pool`]).
    pub fn connect_lazy_observed(
        url: &secrecy::SecretString,
        max_connections: u32,
        timeout: Duration,
        metrics: PoolMetrics,
    ) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?
            .application_name("flux-auth");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// A connection from the pool, timing the wait: seconds into `db_pool_acquire_wait_seconds`
    /// when one is handed over (idle, or newly opened), a count in `db_pool_acquire_errors` when
    /// none is (pool timeout, pool closed, connect failed, or the wait abandoned by its caller).
    /// The error is sqlx's, for [`map_err`].
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let started = Instant::now();
        let attempt = Attempt(Some(&self.metrics.errors));
        let conn = self.pool.acquire().await?;
        attempt.succeeded();
        self.metrics
            .wait_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(conn)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs the embedded migrations once, marking the database ready on success.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.acquire().await?;
        run_migrations(&mut conn).await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks the database ready without migrating (`RUN_MIGRATIONS=false`).
    pub fn assume_migrated(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Creates only `security_events` (migration 004, idempotent), marking the database ready.
    /// A database that holds nothing but the security log (users in JSON files — the old
    /// production setup, whose database may still have the old service's own `users` table) must
    /// not get this service's user tables and indexes.
    pub async fn ensure_security_events(&self) -> anyhow::Result<()> {
        let mut conn = self.acquire().await?;
        sqlx::raw_sql(include_str!(
            "../../migrations/004_create_security_events.sql"
        ))
        .execute(&mut *conn)
        .await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Keeps trying to migrate with capped backoff until it works; the service runs meanwhile.
    pub fn migrate_in_background(&self, what: &'static str, schema: Schema) {
        let db = self.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(250);
            loop {
                let result = match schema {
                    Schema::Full => db.migrate().await,
                    Schema::SecurityEventsOnly => db.ensure_security_events().await,
                };
                match result {
                    Ok(()) => {
                        tracing::info!(database = what, "database ready, migrations applied");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(database = what, error = %e, retry_in_ms = wait.as_millis() as u64,
                            "database not reachable yet; serving degraded and retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(15));
                    }
                }
            }
        });
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.acquire().await.map_err(map_err)?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

/// Counts an acquire as failed unless it succeeded, so a wait dropped midway (the security-log
/// writer's 2 s batch timeout is shorter than the pool's, a client hanging up) is not lost.
struct Attempt<'a>(Option<&'a Counter>);

impl Attempt<'_> {
    fn succeeded(mut self) {
        self.0 = None;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(errors) = self.0 {
            errors.inc();
        }
    }
}

/// `MIGRATOR.run` on a connection already acquired (and timed). `run` itself takes an `Acquire`,
/// and a future awaiting it on `&mut PgConnection` cannot be spawned ("implementation of
/// `Acquire` is not general enough", a known sqlx limitation); `run_direct` is sqlx's own way
/// around it (what `run` calls after acquiring). Hidden from sqlx's docs, so an sqlx upgrade may
/// need this adjusted: it would fail to compile, not misbehave.
async fn run_migrations(conn: &mut PgConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}

/// Maps sqlx errors to what callers can act on; the detail goes to the log, never to a client.
pub fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            let constraint = db.constraint().unwrap_or_default();
            StoreError::Conflict(if constraint.contains("email") {
                "email"
            } else {
                "id"
            })
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
        {
            // 57xxx: operator intervention (shutdown, cancel); 08xxx: connection exceptions.
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(anyhow::Error::new(e)),
    }
}

pub struct PgStore {
    db: Database,
}

impl PgStore {
    /// The store's pool observes its acquires into `metrics` (`pool="users"`).
    pub fn open(settings: &Settings, metrics: PoolMetrics) -> anyhow::Result<Self> {
        let url = settings
            .database_url
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("STORAGE=postgres needs DATABASE_URL"))?;
        let db = Database::connect_lazy_observed(
            url,
            settings.database_max_connections,
            Duration::from_millis(settings.database_connect_timeout_ms),
            metrics,
        )?;
        if settings.run_migrations {
            db.migrate_in_background("users", Schema::Full);
        } else {
            db.assume_migrated();
        }
        Ok(Self { db })
    }

    pub fn from_database(db: Database) -> Self {
        Self { db }
    }

    /// A connection for one operation (timed, see [`Database::acquire`]); `Unavailable` until
    /// the database is migrated, and when the pool cannot hand one over in time.
    async fn conn(&self) -> StoreResult<PoolConnection<Postgres>> {
        if !self.db.is_ready() {
            return Err(StoreError::Unavailable(
                "database not ready (connecting or migrating)".into(),
            ));
        }
        self.db.acquire().await.map_err(map_err)
    }
}

// Column lists as macros so queries stay `&'static str` (sqlx refuses dynamic SQL strings).
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
macro_rules! token_columns {
    () => {
        "id, session_id, token_hash, created_at, rotated_at, replaced_by"
    };
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    user_type: String,
    password_hash: Option<String>,
    google_id: Option<String>,
    email_verified: bool,
    avatar: Option<String>,
    created_at: DateTime<Utc>,
    last_login: Option<DateTime<Utc>>,
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
struct SessionRow {
    id: Uuid,
    user_id: String,
    device_name: String,
    ip_address: String,
    user_agent: Option<String>,
    fingerprint: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_reason: Option<String>,
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
struct TokenRow {
    id: Uuid,
    session_id: Uuid,
    token_hash: String,
    created_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
    replaced_by: Option<Uuid>,
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

async fn insert_token(tx: &mut Transaction<'_, Postgres>, token: &TokenRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, rotated_at, replaced_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.id)
    .bind(token.session_id)
    .bind(&token.token_hash)
    .bind(token.created_at)
    .bind(token.rotated_at)
    .bind(token.replaced_by)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn session_by_id(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> StoreResult<Option<SessionRecord>> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "SELECT ",
        session_columns!(),
        " FROM auth_sessions WHERE id = $1"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?;
    Ok(row.map(SessionRecord::from))
}

async fn revoke_in_tx(
    tx: &mut Transaction<'_, Postgres>,
    session_id: Uuid,
    now: DateTime<Utc>,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query("UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL")
        .bind(session_id)
        .bind(now)
        .bind(reason)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn database(&self) -> Option<Database> {
        Some(self.db.clone())
    }

    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        batch: usize,
    ) -> StoreResult<u64> {
        let cutoff = now - chrono::Duration::days(super::ENDED_SESSION_RETENTION_DAYS);
        let mut conn = self.conn().await?;
        // SKIP LOCKED: never wait behind a refresh that holds a session row.
        let done = sqlx::query(
            "DELETE FROM auth_sessions WHERE id IN ( \
               SELECT id FROM auth_sessions \
               WHERE revoked_at < $1 OR expires_at < $1 OR last_used_at < $2 \
               LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(cutoff - idle_ttl)
        .bind(batch as i64)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
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
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(row.map(UserRecord::from))
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(row.map(UserRecord::from))
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn set_last_login(&self, user_id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query("UPDATE users SET last_login = $2 WHERE id = $1")
            .bind(user_id)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn set_user_type(&self, email: &str, user_type: UserType) -> StoreResult<UserRecord> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET user_type = $2, updated_at = now() WHERE email = $1 RETURNING ",
            user_columns!()
        ))
        .bind(email)
        .bind(user_type.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        row.map(UserRecord::from).ok_or(StoreError::NotFound)
    }

    async fn import_user(&self, user: &UserRecord) -> StoreResult<ImportOutcome> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
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
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(if done.rows_affected() == 1 {
            ImportOutcome::Inserted
        } else {
            ImportOutcome::Skipped
        })
    }

    async fn create_session(
        &self,
        new: &NewSession,
        max_live: usize,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<Uuid>> {
        let s = &new.session;
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, created_at, \
             last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(s.id)
        .bind(&s.user_id)
        .bind(&s.device_name)
        .bind(&s.ip_address)
        .bind(&s.user_agent)
        .bind(&s.fingerprint)
        .bind(s.created_at)
        .bind(s.last_used_at)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_token(&mut tx, &new.token).await?;
        // Revoke the oldest live sessions beyond the cap, in the same transaction.
        let evicted: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = 'session_limit' WHERE id IN ( \
               SELECT id FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL \
                 AND expires_at > $2 AND last_used_at > $3 \
               ORDER BY created_at DESC, id DESC OFFSET $4) RETURNING id",
        )
        .bind(&s.user_id)
        .bind(s.created_at)
        .bind(s.created_at - idle_ttl)
        .bind(max_live as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(evicted)
    }

    async fn rotate_refresh_token(&self, request: &RotateRequest) -> StoreResult<RotateOutcome> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        // The row lock on the presented token serialises concurrent refreshes of one token: the
        // first rotates it, the rest see it rotated and take the grace path.
        // token_hash is CHAR(64) and sqlx sends a String as text: compared as text, Postgres casts
        // the column and scans the whole table (refresh got slower with every token ever issued,
        // BENCHMARKS.md). Casting the parameter instead keeps the unique index in use.
        let token: Option<TokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            token_columns!(),
            " FROM refresh_tokens WHERE token_hash = $1::bpchar FOR UPDATE"
        ))
        .bind(&request.presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(token) = token.map(TokenRecord::from) else {
            return Ok(RotateOutcome::Invalid {
                reason: InvalidReason::Unknown,
                session: None,
                token_id: None,
            });
        };
        let session: Option<SessionRow> = sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM auth_sessions WHERE id = $1 FOR UPDATE"
        ))
        .bind(token.session_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(mut session) = session.map(SessionRecord::from) else {
            return Ok(RotateOutcome::Invalid {
                reason: InvalidReason::Unknown,
                session: None,
                token_id: Some(token.id),
            });
        };
        let successor: Option<TokenRecord> = match token.replaced_by {
            Some(id) => sqlx::query_as::<_, TokenRow>(concat!(
                "SELECT ",
                token_columns!(),
                " FROM refresh_tokens WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .map(TokenRecord::from),
            None => None,
        };
        let outcome = match decide_rotation(&token, &session, successor.as_ref(), request) {
            RotationDecision::Rotate {
                fingerprint_matched,
            } => {
                // The three writes of a rotation in one statement (one round trip, not three):
                // the old token marked rotated, its successor inserted, the session touched.
                let successor = request.successor_in(token.session_id);
                sqlx::query(
                    "WITH rotated AS ( \
                       UPDATE refresh_tokens SET rotated_at = $2, replaced_by = $3 WHERE id = $1), \
                     successor AS ( \
                       INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
                       VALUES ($3, $4, $5, $6)) \
                     UPDATE auth_sessions SET last_used_at = $2, ip_address = $7 WHERE id = $4",
                )
                .bind(token.id)
                .bind(request.now)
                .bind(successor.id)
                .bind(successor.session_id)
                .bind(&successor.token_hash)
                .bind(successor.created_at)
                .bind(&request.ip_address)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                session.last_used_at = request.now;
                session.ip_address = request.ip_address.clone();
                RotateOutcome::Rotated {
                    session,
                    old_token_id: token.id,
                    fingerprint_matched,
                }
            }
            RotationDecision::Grace {
                fingerprint_matched,
            } => RotateOutcome::Grace {
                session,
                old_token_id: token.id,
                fingerprint_matched,
            },
            RotationDecision::Reuse => {
                revoke_in_tx(&mut tx, session.id, request.now, "token_reuse").await?;
                session.revoked_at = Some(request.now);
                session.revoked_reason = Some("token_reuse".into());
                RotateOutcome::ReuseDetected {
                    session,
                    token_id: token.id,
                }
            }
            RotationDecision::RejectFingerprint => {
                revoke_in_tx(&mut tx, session.id, request.now, "fingerprint_mismatch").await?;
                session.revoked_at = Some(request.now);
                session.revoked_reason = Some("fingerprint_mismatch".into());
                RotateOutcome::FingerprintRejected {
                    session,
                    token_id: token.id,
                }
            }
            RotationDecision::Invalid(reason) => RotateOutcome::Invalid {
                reason,
                session: Some(session),
                token_id: Some(token.id),
            },
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(SessionRecord, Uuid)>> {
        let mut conn = self.conn().await?;
        let row: Option<(Uuid, Uuid)> = sqlx::query_as(
            // `::bpchar`: see rotate_refresh_token.
            "SELECT session_id, id FROM refresh_tokens WHERE token_hash = $1::bpchar",
        )
        .bind(token_hash)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
        let Some((session_id, token_id)) = row else {
            return Ok(None);
        };
        // On the same connection: one acquire, and never two connections held at once.
        Ok(session_by_id(&mut conn, session_id)
            .await?
            .map(|s| (s, token_id)))
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_all_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<u64> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn live_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<SessionRecord>> {
        let mut conn = self.conn().await?;
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 AND last_used_at > $3 ORDER BY last_used_at DESC"
        ))
        .bind(user_id)
        .bind(now)
        .bind(now - idle_ttl)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>> {
        let mut conn = self.conn().await?;
        let rows: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, revoked_at FROM auth_sessions WHERE revoked_at >= $1")
                .bind(since)
                .fetch_all(&mut *conn)
                .await
                .map_err(map_err)?;
        Ok(rows)
    }

    async fn session(&self, session_id: Uuid) -> StoreResult<Option<SessionRecord>> {
        let mut conn = self.conn().await?;
        session_by_id(&mut conn, session_id).await
    }

    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        self.pg_user_by_identity(issuer, subject).await
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<super::IdentityRecord>> {
        self.pg_identities_of(user_id).await
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &super::IdentityRecord,
    ) -> StoreResult<()> {
        self.pg_insert_user_with_identity(user, identity).await
    }

    async fn link_identity(&self, identity: &super::IdentityRecord) -> StoreResult<()> {
        self.pg_link_identity(identity).await
    }

    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.pg_touch_identity(issuer, subject, email, at).await
    }
}
