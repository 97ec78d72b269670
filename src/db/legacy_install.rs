//! flux-auth's schema made before the migrations run, and an install from before flux-auth had a
//! schema of its own — its tables and `_sqlx_migrations` in `public` — moved into it.
//!
//! Such an install is recognised by its bookkeeping alone: `public._sqlx_migrations` whose every
//! row is one of our migrations with our checksum, applied successfully. A database that merely
//! has tables called `users` or `refresh_tokens` (the application's own, in a database flux-auth
//! shares) has no such rows, and nothing of it is touched. A bookkeeping table mixing our rows
//! with others, or one recording migrations this version does not know how to move, is refused
//! with what to do rather than guessed at.
//!
//! The move is one transaction under an advisory lock (the store and the security log may
//! migrate the same database at once; the second finds the work done): `ALTER … SET SCHEMA`
//! moves each table with its rows, indexes, constraints and triggers, without copying anything.

use sqlx::postgres::PgConnection;
use sqlx::{Acquire, AssertSqlSafe};

use super::Schemas;
use super::migrations::MIGRATOR;

/// Tells concurrent preparations of one database apart from anything else's advisory locks.
const LOCK_KEY: i64 = 0x666c_7578_5f61_7574; // "flux_aut"

/// The last migration whose objects [`OBJECTS`] lists: installs in `public` predate any later one.
const MOVABLE_UP_TO: i64 = 6;

/// What migrations 001–006 created outside `security_events` (which stays where it is).
const TABLES: [&str; 4] = [
    "users",
    "auth_sessions",
    "refresh_tokens",
    "user_identities",
];
const FUNCTIONS: [&str; 1] = ["flux_auth_user_changed()"];

/// What [`prepare`] found in `public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No `_sqlx_migrations` there.
    Nothing,
    /// A `_sqlx_migrations` of another application's: left alone.
    NotOurs,
    /// flux-auth's install, moved into its schema: the number of tables moved (bookkeeping
    /// included).
    Moved(usize),
}

/// Makes flux-auth's schema if it is missing, and moves an install in `public` into it.
pub async fn prepare(conn: &mut PgConnection, schemas: &Schemas) -> anyhow::Result<Found> {
    let own = schemas.own();
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    // Moving a table locks it: give up rather than queue behind a long transaction (and stall
    // every login behind this lock); the migration is retried.
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    // Checked first: a role without CREATE on the database may use a schema made for it.
    let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(own)
        .fetch_one(&mut *tx)
        .await?;
    if !exists {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{own}\"")))
            .execute(&mut *tx)
            .await?;
    }
    let found = move_from_public(&mut tx, schemas).await?;
    tx.commit().await?;
    if let Found::Moved(tables) = found {
        tracing::info!(
            schema = own,
            tables,
            "moved flux-auth's tables from public into its schema"
        );
    }
    Ok(found)
}

async fn move_from_public(conn: &mut PgConnection, schemas: &Schemas) -> anyhow::Result<Found> {
    let own = schemas.own();
    let there = |name: String| {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(name)
    };
    if !there("public._sqlx_migrations".into())
        .fetch_one(&mut *conn)
        .await?
    {
        return Ok(Found::Nothing);
    }
    let rows: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM public._sqlx_migrations")
            .fetch_all(&mut *conn)
            .await?;
    let ours = |version: i64, checksum: &[u8]| {
        MIGRATOR
            .iter()
            .any(|m| m.version == version && *m.checksum == *checksum)
    };
    let matching = rows.iter().filter(|(v, c, _)| ours(*v, c)).count();
    if matching == 0 {
        return Ok(Found::NotOurs);
    }
    let leave_it = "Nothing was moved; move the tables by hand (docs/OPERATIONS.md, \
                    \"Postgres schema\") or point DATABASE_URL at another database.";
    if matching != rows.len() || rows.iter().any(|(_, _, success)| !success) {
        anyhow::bail!(
            "public._sqlx_migrations records flux-auth's migrations beside others, or a failed \
             one: it is not recognisably one flux-auth install. {leave_it}"
        );
    }
    if rows.iter().any(|(v, _, _)| *v > MOVABLE_UP_TO) {
        anyhow::bail!(
            "public._sqlx_migrations records migrations after {MOVABLE_UP_TO:03}, which were never \
             applied outside flux-auth's schema by a released version. {leave_it}"
        );
    }
    if there(schemas.migrations_table())
        .fetch_one(&mut *conn)
        .await?
    {
        anyhow::bail!(
            "flux-auth's migrations are recorded both in public and in schema {own}: two installs \
             share this database. {leave_it}"
        );
    }
    // A second look, at the shape: flux-auth's refresh tokens are kept hashed (`token_hash`),
    // the old service's raw (`token`).
    let hashed: bool = sqlx::query_scalar(
        "SELECT to_regclass('public.refresh_tokens') IS NULL OR EXISTS (SELECT 1 \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name = 'refresh_tokens' AND column_name = 'token_hash')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !hashed {
        anyhow::bail!(
            "public.refresh_tokens is not flux-auth's (no token_hash column) although \
             public._sqlx_migrations is. {leave_it}"
        );
    }
    let mut moved = 0;
    for table in TABLES {
        if there(format!("public.{table}"))
            .fetch_one(&mut *conn)
            .await?
        {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "ALTER TABLE public.{table} SET SCHEMA \"{own}\""
            )))
            .execute(&mut *conn)
            .await?;
            moved += 1;
        }
    }
    for function in FUNCTIONS {
        let exists: bool = sqlx::query_scalar("SELECT to_regprocedure($1) IS NOT NULL")
            .bind(format!("public.{function}"))
            .fetch_one(&mut *conn)
            .await?;
        if exists {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "ALTER FUNCTION public.{function} SET SCHEMA \"{own}\""
            )))
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE public._sqlx_migrations SET SCHEMA \"{own}\""
    )))
    .execute(&mut *conn)
    .await?;
    Ok(Found::Moved(moved + 1))
}
