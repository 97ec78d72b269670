//! Indexes on `security_events` for the admin event API's filters (an incident is investigated by
//! address, by type, by user) and the anomalies panel's drill-down, each leading with its filter
//! and ending with the page order (`created_at DESC, id DESC`), so a page is read from the index
//! in order and stops at its limit. The log creates them itself, once its database is ready,
//! rather than in a numbered migration: the table may live in a database or schema of its own.
//! `CONCURRENTLY`, so a table of millions of rows keeps taking events while they build; one left
//! invalid by an interrupted build is dropped and built again. BENCHMARKS.md has the figures.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Database;

/// Name and columns of each index.
pub const INDEXES: [(&str, &str); 2] = [
    (
        "idx_security_events_ip_created",
        "(ip_address, created_at DESC, id DESC)",
    ),
    (
        "idx_security_events_type_created",
        "(event_type, created_at DESC, id DESC)",
    ),
];

/// Creates the missing indexes (and rebuilds invalid ones), one at a time.
pub async fn ensure(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.migration_connection().await?;
    // An index lives in its table's schema, which is not on the connection's search_path.
    let schema = db.schemas().security_events_schema().to_owned();
    let table = db.schemas().security_events();
    for (name, columns) in INDEXES {
        let qualified = format!("\"{schema}\".{name}");
        let invalid: Option<bool> = sqlx::query_scalar(
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.oid = to_regclass($1)",
        )
        .bind(&qualified)
        .fetch_optional(&mut *conn)
        .await?;
        match invalid {
            Some(false) => continue,
            Some(true) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {qualified}"
                )))
                .execute(&mut *conn)
                .await?;
            }
            None => {}
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {columns}"
        )))
        .execute(&mut *conn)
        .await?;
        tracing::info!(index = name, "security events index ready");
    }
    Ok(())
}

/// Waits for the log's database to be migrated, then creates the hourly rollups
/// ([`super::rollups::ensure`]: a moment's lock), [`ensure`]s the indexes and backfills the
/// rollups, one after the other, retrying a failure after a minute, until done or `stop`. Each
/// step is idempotent (the backfill resumes where it stopped).
pub async fn ensure_in_background(db: Database, stop: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if !db.is_ready() {
            wait = Duration::from_secs(1);
            continue;
        }
        let prepared = async {
            super::rollups::ensure(&db).await?;
            ensure(&db).await?;
            super::rollups::backfill(&db, &stop).await
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = prepared => match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not prepare the security events indexes and rollups; retrying in a minute");
                    wait = Duration::from_secs(60);
                }
            },
        }
    }
}
