//! The embedded migrations (`migrations/`), and running them in the background until the
//! database answers.
//!
//! They run in flux-auth's schema ([`super::schemas`]): each connection's `search_path` names it,
//! so their unqualified names land there, and sqlx's bookkeeping (`_sqlx_migrations`) is kept
//! there too. Before they run, the schema is made and an install from before it existed is moved
//! in ([`super::legacy_install`]). Migration 004 is the one exception: `security_events` stays
//! where the old service put it (`SECURITY_EVENTS_SCHEMA`, default `public`), so its statements
//! are run with that schema's `search_path` ([`security_events_sql`]), under the checksum of the
//! file as written: an install that applied it before keeps validating, and the file is unchanged.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Acquire, Postgres, SqlSafeStr};

use super::{Database, Schemas};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The migration that creates `security_events`, outside flux-auth's schema.
const SECURITY_EVENTS_MIGRATION: i64 = 4;
const SECURITY_EVENTS_SQL: &str = include_str!("../../migrations/004_create_security_events.sql");

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
        run_migrations(&mut conn, &self.schemas).await?;
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
        ensure_security_events(&mut conn, &self.schemas).await?;
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

/// Migration 004's statements run in `SECURITY_EVENTS_SCHEMA` (made if missing), then the
/// `search_path` back to flux-auth's schema for what follows in the same transaction. Run inside a
/// transaction (the migrator's, or [`ensure_security_events`]'s), which `SET LOCAL` needs.
pub fn security_events_sql(schemas: &Schemas) -> String {
    let schema = schemas.security_events_schema();
    // A role without CREATE on the database may use an existing schema: the check comes first.
    format!(
        "DO $$ BEGIN IF to_regnamespace('{schema}') IS NULL THEN CREATE SCHEMA \"{schema}\"; END IF; END $$;\n\
         SET LOCAL search_path = \"{schema}\";\n{SECURITY_EVENTS_SQL}\n\
         SET LOCAL search_path = {};\n",
        schemas.search_path()
    )
}

/// Creates `security_events` (and its indexes) where `SECURITY_EVENTS_SCHEMA` says, if missing.
///
/// An existing table is left alone without running the DDL: `CREATE INDEX IF NOT EXISTS` locks
/// the table before it finds the index there, and a running instance may be building the log's
/// own indexes on it `CONCURRENTLY` (`security_log::indexes`), which waits for this transaction
/// while this waits for its lock — a deadlock Postgres ends by failing this start or command.
pub async fn ensure_security_events(
    conn: &mut PgConnection,
    schemas: &Schemas,
) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(schemas.security_events())
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(security_events_sql(schemas)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The embedded migrations for `schemas`: bookkeeping in flux-auth's schema, and 004 run in the
/// security log's schema under the checksum of its file.
pub fn migrator(schemas: &Schemas) -> Migrator {
    let migrations = MIGRATOR
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.version == SECURITY_EVENTS_MIGRATION {
                // The checksum stays the file's: it is what installs have recorded.
                m.sql = sqlx::AssertSqlSafe(security_events_sql(schemas)).into_sql_str();
            }
            m
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(schemas.migrations_table());
    migrator
}

/// Makes flux-auth's schema (moving an install from before it existed into it), runs the
/// migrations there, and makes sure `security_events` exists where it is configured to be (a
/// database migrated before `SECURITY_EVENTS_SCHEMA` changed gets the table in the new place).
///
/// The migrator runs on a connection already acquired (and timed): `Migrator::run` takes an
/// `Acquire`, and a future awaiting it on `&mut PgConnection` cannot be spawned ("implementation
/// of `Acquire` is not general enough", a known sqlx limitation); `run_direct` is sqlx's own way
/// around it (what `run` calls after acquiring). Hidden from sqlx's docs, so an sqlx upgrade may
/// need this adjusted: it would fail to compile, not misbehave.
pub async fn run_migrations(conn: &mut PgConnection, schemas: &Schemas) -> anyhow::Result<()> {
    super::legacy_install::prepare(conn, schemas).await?;
    migrator(schemas).run_direct(None, conn, false).await?;
    ensure_security_events(conn, schemas).await?;
    Ok(())
}
