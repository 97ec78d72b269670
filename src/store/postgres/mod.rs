//! The Postgres store (sqlx, runtime-checked queries, so building never needs a database), on
//! the database handle of [`crate::db`]: users (`users.rs`), sessions and refresh tokens
//! (`sessions.rs`, with the rotation engine in `rotation.rs`), provider identities
//! (`identities.rs`), two-factor sign-in (`two_factor.rs`) and the rows they read (`rows.rs`);
//! each implements its trait of the store.
//!
//! The store answers `Unavailable` (503) on routes that need the database until it is reachable
//! and migrated, and at once while its circuit is open (the database is known to be unreachable).
//!
//! The store's pool does not ping every connection before handing it out (see
//! [`crate::db::ConnectionChecks::WhenSuspect`]). A connection broken while idle (Postgres
//! restarted, the network cut) then fails its first query; reads are retried once on another
//! connection ([`read_retrying!`]), and the failure makes every older connection suspect, so it
//! is tested before its next use.
//!
//! A write that must not outlive its request runs on a [`held::Held`] connection, closed rather
//! than returned to the pool when the request gives up midway, so Postgres ends and rolls back
//! the statement still running on it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;

use async_trait::async_trait;

use super::{RotateRequest, Store, StoreError, StoreResult};
use crate::config::Settings;
use crate::db::{Database, RequestPool};
use crate::metrics::PoolMetrics;

/// Runs a read on a connection of the store's pool: `$conn` is bound to a fresh
/// [`PgStore::conn`] and `$read` (a future of `Result<_, sqlx::Error>` using `&mut *$conn`) runs
/// on it. After a connection-level failure the read runs once more on another connection: a
/// connection broken while idle fails its first query, and a read is safe to repeat, so a restart
/// or a network cut the database is back from costs no request an error. Evaluates to a
/// `StoreResult`; `?` on the acquire returns from the enclosing function.
macro_rules! read_retrying {
    ($store:expr, |$conn:ident| $read:expr) => {{
        let store: &PgStore = $store;
        let mut retried = false;
        loop {
            let mut $conn = store.conn().await?;
            match $read.await {
                Ok(value) => break Ok(value),
                Err(e) if !retried && $crate::db::is_connection_error(&e) => {
                    store.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => break Err(store.fail(e)),
            }
        }
    }};
}

/// `BEGIN` on `$conn` (a `PoolConnection` from [`PgStore::conn`]), evaluating to the transaction.
/// `BEGIN` is the connection's first statement, so like a read it is retried once, on another
/// connection, after a connection-level failure: nothing has run yet.
macro_rules! begin_retrying {
    ($store:expr, $conn:ident) => {{
        let store: &PgStore = $store;
        let mut retried = false;
        loop {
            let failure = match $conn.begin().await {
                Ok(tx) => break tx,
                Err(e) => e,
            };
            if retried || !$crate::db::is_connection_error(&failure) {
                return Err(store.fail(failure));
            }
            store.db.note_failure(&failure);
            retried = true;
            $conn = store.conn().await?;
        }
    }};
}

#[macro_use]
mod rows;
mod devices;
mod email_keys;
pub mod fluxstudio;
mod held;
mod identities;
mod outbox;
mod rotation;
mod sessions;
mod two_factor;
pub mod user_cache;
mod users;

use user_cache::UserCache;

/// Runs the embedded migrations once, then fills the email keys they cannot (migration 006;
/// an account that cannot be keyed is logged, never a failure), marking the database ready on
/// success.
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.migration_connection().await?;
    crate::db::migrations::run_migrations(&mut conn, db.schemas()).await?;
    email_keys::backfill(&mut conn).await?;
    // Only a report: the store works whether or not it can be made.
    let collisions = email_keys::collisions(&mut conn).await;
    drop(conn);
    match collisions {
        Ok(collisions) => super::warn_of_collisions(&collisions),
        Err(e) => tracing::warn!(error = %e,
            "could not list the accounts that cannot sign in by email \
             (flux-auth users email-collisions lists them)"),
    }
    db.assume_migrated();
    Ok(())
}

/// Keeps trying to [`migrate`] until it works; the store answers `Unavailable` meanwhile.
fn migrate_in_background(db: &Database) {
    let db = db.clone();
    crate::db::migrations::retry_in_background("users", move || {
        let db = db.clone();
        async move { migrate(&db).await }
    });
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
    /// Users read recently, while Postgres's announcements of their changes are followed; `None`
    /// when `USER_CACHE_USERS=0`, and for the CLI commands that open the store alone
    /// (`from_database`), which serve no requests.
    users: Option<Arc<UserCache>>,
    /// `REQUEST_TIMEOUT_MS`: no write of a request happens later than this after its start.
    request_timeout: chrono::Duration,
}

impl PgStore {
    /// The store's pool observes its acquires into `metrics` (`pool="users"`).
    pub fn open(settings: &Settings, metrics: PoolMetrics) -> anyhow::Result<Self> {
        let url = settings
            .database_url
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("STORAGE=postgres needs DATABASE_URL"))?;
        // Every request takes a connection: no ping before each (see ConnectionChecks).
        let db = Database::connect_lazy_for_requests(
            url,
            &crate::db::Schemas::from_settings(settings)?,
            settings.database_max_connections,
            Duration::from_millis(settings.database_connect_timeout_ms),
            metrics,
            RequestPool {
                statement_timeout: Duration::from_millis(settings.database_statement_timeout_ms),
            },
        )?;
        if settings.run_migrations {
            migrate_in_background(&db);
        } else {
            db.assume_migrated();
        }
        let users = (settings.user_cache_users > 0).then(|| {
            Arc::new(UserCache::new(
                settings.user_cache_users,
                Duration::from_secs(settings.user_cache_ttl_secs),
            ))
        });
        Ok(Self {
            db,
            users,
            request_timeout: chrono::Duration::milliseconds(settings.request_timeout_ms as i64),
        })
    }

    /// The database the store keeps its data in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The in-memory copy of recently read users; `None` when `USER_CACHE_USERS=0`.
    pub fn user_cache(&self) -> Option<&Arc<UserCache>> {
        self.users.as_ref()
    }

    pub fn from_database(db: Database) -> Self {
        Self {
            db,
            users: None,
            request_timeout: chrono::Duration::milliseconds(
                Settings::default().request_timeout_ms as i64,
            ),
        }
    }

    /// The latest moment, by the instance's clock, at which `request` can still write: its
    /// time plus the request timeout (it is answered 408 then, and its statement rolled back).
    fn latest_write(&self, request: &RotateRequest) -> DateTime<Utc> {
        request.now + self.request_timeout
    }

    /// Drops this instance's copy of a user it just changed, so its next request reads the change
    /// without waiting for Postgres's announcement (which every instance, this one too, then hears).
    fn changed_here(&self, user_id: &str) {
        if let Some(users) = &self.users {
            users.forget(user_id);
        }
    }

    /// After an `UPDATE` of one user's row: the change announced here, and `NotFound` when no
    /// row matched.
    fn user_updated(&self, user_id: &str, rows: u64) -> StoreResult<()> {
        self.changed_here(user_id);
        if rows == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    /// A connection for one operation (timed, see [`Database::acquire`]); `Unavailable` until
    /// the database is migrated, and when the pool cannot hand one over in time.
    /// Answers `Unavailable` at once while the circuit is open (the database is known to be
    /// unreachable).
    async fn conn(&self) -> StoreResult<PoolConnection<Postgres>> {
        if !self.db.is_ready() {
            return Err(StoreError::Unavailable(
                "database not ready (connecting or migrating)".into(),
            ));
        }
        if self.db.fails_fast() {
            return Err(StoreError::Unavailable(
                "database unreachable (circuit open)".into(),
            ));
        }
        // Whatever kept the pool from handing over a connection (a timeout, or the server
        // refusing a new one: too many connections, authentication), no statement ran: the
        // store is unavailable, not wrong.
        self.db.acquire().await.map_err(|e| {
            self.db.note_failure(&e);
            StoreError::Unavailable(e.to_string())
        })
    }

    /// [`map_err`], reporting a connection-level failure to the pool (see
    /// [`crate::db::ConnectionChecks`]).
    fn fail(&self, e: sqlx::Error) -> StoreError {
        self.db.note_failure(&e);
        map_err(e)
    }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    async fn ping(&self) -> StoreResult<()> {
        read_retrying!(self, |conn| sqlx::query("SELECT 1").execute(&mut *conn))?;
        Ok(())
    }
}
