//! Hourly counts of security events by type and severity (`security_event_rollups`), so the
//! stats over a month read a few thousand rows instead of millions (BENCHMARKS.md, "Events API
//! at 5,000,000 rows").
//!
//! The counts are kept by triggers on `security_events` itself, in the transaction of each
//! statement that changes it: the writer's batches, spool replays (`ON CONFLICT DO NOTHING`: a row
//! already there is not in the statement's new rows, so it is counted once), retention's
//! deletes, and rows written by anything else that shares the table (the old service during a
//! cutover, an older instance during a rolling upgrade). A count kept by the writer alone would
//! drift the moment any of those wrote. The function runs as its owner (`SECURITY DEFINER`), so
//! another writer of the table needs no rights on the rollups.
//!
//! Like the log's indexes ([`super::indexes`]) they live with the table, in
//! `SECURITY_EVENTS_SCHEMA`, and the log creates them itself once its database is ready. Rows
//! already in the table when the triggers are created are counted afterwards by a backfill, one
//! hour per transaction, resumable (its position is kept in `security_event_rollups_state`).
//! Each hour is recounted under that hour's advisory lock, which the triggers take too, so a
//! recount and a concurrent write of the same hour never lose or double a count. Until the
//! backfill is complete, stats count the raw table.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::{Acquire, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::db::Database;

/// The advisory-lock class of an hour's counts (the object is the hour since the epoch): "roll".
const HOUR_LOCK_CLASS: i32 = 0x726f_6c6c;
/// Serialises the creation of the table, function and triggers between instances: "fluxroll".
const SETUP_LOCK: i64 = 0x666c_7578_726f_6c6c;
/// The triggers, by name and what they fire on.
const TRIGGERS: [(&str, &str); 4] = [
    (
        "security_event_rollups_insert",
        "AFTER INSERT ON {events} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
    ),
    (
        "security_event_rollups_delete",
        "AFTER DELETE ON {events} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
    ),
    (
        "security_event_rollups_update",
        "AFTER UPDATE ON {events} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows \
         FOR EACH STATEMENT",
    ),
    (
        "security_event_rollups_truncate",
        "AFTER TRUNCATE ON {events} FOR EACH STATEMENT",
    ),
];
/// The start of a row's hour, whatever the session's time zone.
const HOUR: &str = "to_timestamp(floor(extract(epoch FROM created_at) / 3600) * 3600)";
/// The hour since the epoch: the advisory lock's object.
const HOUR_KEY: &str = "floor(extract(epoch FROM created_at) / 3600)::int";

/// The rollups' names in the security log's schema.
struct Names {
    events: String,
    rollups: String,
    state: String,
    function: String,
}

impl Names {
    fn of(db: &Database) -> Self {
        let schema = db.schemas().security_events_schema();
        Self {
            events: db.schemas().security_events(),
            rollups: format!("\"{schema}\".security_event_rollups"),
            state: format!("\"{schema}\".security_event_rollups_state"),
            function: format!("\"{schema}\".security_event_rollups_count()"),
        }
    }
}

fn tables_sql(n: &Names) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {rollups} (
            hour        TIMESTAMPTZ NOT NULL,
            event_type  VARCHAR(50) NOT NULL,
            severity    VARCHAR(20) NOT NULL,
            events      BIGINT NOT NULL,
            PRIMARY KEY (hour, event_type, severity)
        );
        CREATE TABLE IF NOT EXISTS {state} (
            id          SMALLINT PRIMARY KEY CHECK (id = 1),
            next_hour   TIMESTAMPTZ,
            last_hour   TIMESTAMPTZ,
            complete    BOOLEAN NOT NULL DEFAULT false
        );",
        rollups = n.rollups,
        state = n.state,
    )
}

/// Locks the hours of `rows` in order (two statements locking overlapping hours cannot
/// deadlock), then adds (`+`) or subtracts (`-`) their counts.
fn change_sql(n: &Names, rows: &str, sign: char) -> String {
    let lock = format!(
        "PERFORM pg_advisory_xact_lock({HOUR_LOCK_CLASS}, k) FROM (SELECT DISTINCT {HOUR_KEY} AS k \
         FROM {rows} WHERE created_at IS NOT NULL ORDER BY 1) hours;"
    );
    let grouped = format!(
        "SELECT {HOUR} AS hour, event_type, severity, count(*) AS n FROM {rows} \
         WHERE created_at IS NOT NULL GROUP BY 1, 2, 3"
    );
    let r = &n.rollups;
    if sign == '+' {
        format!(
            "{lock}
            INSERT INTO {r} AS r (hour, event_type, severity, events)
              SELECT hour, event_type, severity, n FROM ({grouped}) d ORDER BY 1, 2, 3
              ON CONFLICT (hour, event_type, severity) DO UPDATE SET events = r.events + EXCLUDED.events;"
        )
    } else {
        format!(
            "{lock}
            UPDATE {r} AS r SET events = r.events - d.n FROM ({grouped}) d
              WHERE r.hour = d.hour AND r.event_type = d.event_type AND r.severity = d.severity;
            DELETE FROM {r} AS r USING (SELECT DISTINCT {HOUR} AS hour FROM {rows}
              WHERE created_at IS NOT NULL) d WHERE r.hour = d.hour AND r.events <= 0;"
        )
    }
}

fn function_sql(n: &Names) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {function} RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
         BEGIN
           IF TG_OP = 'TRUNCATE' THEN
             DELETE FROM {rollups};
           ELSIF TG_OP = 'INSERT' THEN
             {insert}
           ELSIF TG_OP = 'DELETE' THEN
             {delete}
           ELSE
             PERFORM pg_advisory_xact_lock({HOUR_LOCK_CLASS}, k) FROM (
               SELECT {HOUR_KEY} AS k FROM old_rows WHERE created_at IS NOT NULL
               UNION SELECT {HOUR_KEY} FROM new_rows WHERE created_at IS NOT NULL ORDER BY 1) hours;
             {update_old}
             {update_new}
           END IF;
           RETURN NULL;
         END $fn$;",
        function = n.function,
        rollups = n.rollups,
        insert = change_sql(n, "new_rows", '+'),
        delete = change_sql(n, "old_rows", '-'),
        // The hours are locked above already, old and new together and in order.
        update_old = change_sql(n, "old_rows", '-')
            .split_once(';')
            .map_or(String::new(), |(_, rest)| rest.to_owned()),
        update_new = change_sql(n, "new_rows", '+')
            .split_once(';')
            .map_or(String::new(), |(_, rest)| rest.to_owned()),
    )
}

/// Creates the rollup table, its state, the counting function and the triggers where missing.
/// When the triggers are created, the rows already in the table are left to [`backfill`]: the
/// hours they span are recorded in the same transaction, under a lock that holds writes back
/// for that moment (so every row is either counted by a trigger or within those hours).
pub async fn ensure(db: &Database) -> anyhow::Result<()> {
    let n = Names::of(db);
    let mut conn = db.migration_connection().await?;
    let mut tx = conn.begin().await?;
    // Give way rather than wait behind (or deadlock with) an index being built concurrently on
    // the table: this is retried.
    sqlx::raw_sql("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(tables_sql(&n)))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(function_sql(&n)))
        .execute(&mut *tx)
        .await?;
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
    let present: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = ANY($2)",
    )
    .bind(&n.events)
    .bind(&names)
    .fetch_one(&mut *tx)
    .await?;
    if present == TRIGGERS.len() as i64 {
        tx.commit().await?;
        return Ok(());
    }
    // Writes wait from here to the commit: every row is counted by a trigger or lies within the
    // hours recorded for the backfill. Reads go on.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        n.events
    )))
    .execute(&mut *tx)
    .await?;
    for (name, on) in TRIGGERS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS {name} ON {events}; \
             CREATE TRIGGER {name} {on} EXECUTE FUNCTION {function};",
            events = n.events,
            on = on.replace("{events}", &n.events),
            function = n.function,
        )))
        .execute(&mut *tx)
        .await?;
    }
    // Counts left from triggers dropped since are not trusted: every hour is counted again.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {rollups};
         INSERT INTO {state} (id, next_hour, last_hour, complete)
           SELECT 1, {first}, {last}, false
           FROM (SELECT min(created_at) AS first, max(created_at) AS last FROM {events}) span
         ON CONFLICT (id) DO UPDATE SET next_hour = EXCLUDED.next_hour,
           last_hour = EXCLUDED.last_hour, complete = false;",
        rollups = n.rollups,
        state = n.state,
        events = n.events,
        // From the bounds, not of every row: `min(created_at)` reads one end of an index.
        first = HOUR.replace("created_at", "first"),
        last = HOUR.replace("created_at", "last"),
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("security event rollups created; counting the existing events");
    Ok(())
}

/// How far the backfill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One more hour counted.
    Counted(DateTime<Utc>),
    Complete,
}

/// The backfill's next hour, last hour, and whether it is complete.
type BackfillState = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, bool);

/// Counts the next hour of the backfill (the next hour that holds events, up to the last hour
/// to count) in one transaction, under that hour's lock.
pub async fn backfill_step(conn: &mut PgConnection, db: &Database) -> anyhow::Result<Step> {
    let n = Names::of(db);
    let mut tx = conn.begin().await?;
    // The state row's lock keeps two instances from counting the same hours at once.
    let state: Option<BackfillState> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT next_hour, last_hour, complete FROM {} WHERE id = 1 FOR UPDATE",
        n.state
    )))
    .fetch_optional(&mut *tx)
    .await?;
    let (next, last) = match state {
        None | Some((_, _, true)) => return Ok(Step::Complete),
        Some((Some(next), Some(last), false)) if next <= last => (next, last),
        Some(_) => return complete(tx, &n).await,
    };
    let found: Option<DateTime<Utc>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT min(created_at) FROM {} WHERE created_at >= $1 AND created_at < $2",
        n.events
    )))
    .bind(next)
    .bind(last + TimeDelta::hours(1))
    .fetch_one(&mut *tx)
    .await?;
    let Some(found) = found else {
        return complete(tx, &n).await;
    };
    let hour = found.duration_trunc(TimeDelta::hours(1))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(HOUR_LOCK_CLASS)
        .bind((hour.timestamp() / 3600) as i32)
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE hour = $1",
        n.rollups
    )))
    .bind(hour)
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (hour, event_type, severity, events) \
         SELECT $1, event_type, severity, count(*) FROM {} \
         WHERE created_at >= $1 AND created_at < $2 GROUP BY 2, 3",
        n.rollups, n.events
    )))
    .bind(hour)
    .bind(hour + TimeDelta::hours(1))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET next_hour = $1 WHERE id = 1",
        n.state
    )))
    .bind(hour + TimeDelta::hours(1))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Step::Counted(hour))
}

async fn complete(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    n: &Names,
) -> anyhow::Result<Step> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET complete = true WHERE id = 1",
        n.state
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Step::Complete)
}

/// Runs the backfill to its end (or `stop`), logging its progress every ten seconds.
pub async fn backfill(db: &Database, stop: &CancellationToken) -> anyhow::Result<()> {
    let mut conn = db.migration_connection().await?;
    let (mut hours, mut logged) = (0u64, tokio::time::Instant::now());
    loop {
        let step = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            step = backfill_step(&mut conn, db) => step?,
        };
        match step {
            Step::Complete => {
                if hours > 0 {
                    tracing::info!(hours, "security event rollups backfilled");
                }
                return Ok(());
            }
            Step::Counted(hour) => {
                hours += 1;
                if logged.elapsed() >= Duration::from_secs(10) {
                    logged = tokio::time::Instant::now();
                    tracing::info!(hours, through = %crate::domain::format_timestamp(hour),
                        "backfilling security event rollups");
                }
            }
        }
    }
}

/// Counts by type and severity between `from` and `to` from the rollups for the whole hours and
/// the table for the partial hours at either edge; `None` when the rollups cannot answer (not
/// created, or their backfill not complete): the caller counts the table.
pub async fn counts(
    db: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Option<Vec<(String, String, i64)>>> {
    let n = Names::of(db);
    let mut conn = db.acquire().await?;
    let complete: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(sqlx::AssertSqlSafe(
        format!("SELECT complete FROM {} WHERE id = 1", n.state),
    ))
    .fetch_optional(&mut *conn)
    .await;
    match complete {
        Ok(Some(true)) => {}
        Ok(_) => return Ok(None),
        // 42P01: the table is not there (rollups never created: `RUN_MIGRATIONS=false`).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let hour = TimeDelta::hours(1);
    let first = from.duration_trunc(hour)?;
    let first = if first < from { first + hour } else { first };
    let last = to.duration_trunc(hour)?;
    if first >= last {
        return Ok(None); // no whole hour: the table alone, over less than two hours
    }
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_type, severity, sum(n)::bigint FROM (
           SELECT event_type, severity, events AS n FROM {rollups} WHERE hour >= $3 AND hour < $4
           UNION ALL SELECT event_type, severity, count(*) FROM {events}
             WHERE created_at >= $1 AND created_at < $3 GROUP BY 1, 2
           UNION ALL SELECT event_type, severity, count(*) FROM {events}
             WHERE created_at >= $4 AND created_at < $2 GROUP BY 1, 2
         ) counts GROUP BY 1, 2",
        rollups = n.rollups,
        events = n.events,
    )))
    .bind(from)
    .bind(to)
    .bind(first)
    .bind(last)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(rows))
}
