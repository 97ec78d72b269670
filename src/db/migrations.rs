//! The embedded migrations (`migrations/`), and running them in the background until the
//! database answers.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;

use super::Database;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which tables a database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Every migration: users, sessions, identities, security events.
    Full,
    /// Only `security_events`.
    SecurityEventsOnly,
}

impl Database {
    /// A connection to migrate on. A migration (or a backfill after it) may take longer than a
    /// request's statement (an index on a big table), so the statement timeout is off on it, and
    /// it is closed rather than returned to the pool: no request ever runs on it without its
    /// timeout, and nothing has to be undone after a failure.
    pub async fn migration_connection(&self) -> anyhow::Result<PoolConnection<Postgres>> {
        let mut conn = self.acquire().await?;
        conn.close_on_drop();
        sqlx::raw_sql("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await?;
        Ok(conn)
    }

    /// Runs the embedded migrations once, marking the database ready on success.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.migration_connection().await?;
        run_migrations(&mut conn).await?;
        drop(conn);
        self.assume_migrated();
        Ok(())
    }

    /// Marks the database ready without migrating (`RUN_MIGRATIONS=false`), or once migrated.
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
        self.assume_migrated();
        Ok(())
    }

    /// Keeps trying to migrate `schema` with capped backoff until it works; the service runs
    /// meanwhile.
    pub fn migrate_in_background(&self, what: &'static str, schema: Schema) {
        let db = self.clone();
        retry_in_background(what, move || {
            let db = db.clone();
            async move {
                match schema {
                    Schema::Full => db.migrate().await,
                    Schema::SecurityEventsOnly => db.ensure_security_events().await,
                }
            }
        });
    }
}

/// Runs `migrate` in a task of its own until it succeeds, waiting between attempts with capped
/// backoff; the service runs (degraded) meanwhile. `what` names the database in the log.
pub fn retry_in_background<F, Fut>(what: &'static str, mut migrate: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(250);
        loop {
            match migrate().await {
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

/// `MIGRATOR.run` on a connection already acquired (and timed). `run` itself takes an `Acquire`,
/// and a future awaiting it on `&mut PgConnection` cannot be spawned ("implementation of
/// `Acquire` is not general enough", a known sqlx limitation); `run_direct` is sqlx's own way
/// around it (what `run` calls after acquiring). Hidden from sqlx's docs, so an sqlx upgrade may
/// need this adjusted: it would fail to compile, not misbehave.
pub async fn run_migrations(conn: &mut PgConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(None, conn, false).await
}
