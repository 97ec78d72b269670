//! The hourly rollups of security events: the stats read them for whole hours, and they always
//! equal a plain `count(*)` of the table, after the writer's batches, a spool replay holding
//! events already stored, retention's deletes, rows written by something else, across hour
//! boundaries, and after the backfill of rows that were there before the rollups.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use flux_auth::security_log::query::EventSource;
use flux_auth::security_log::{EventType, SecurityEvent, rollups};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

async fn rollups_complete(pool: &PgPool) {
    eventually("the rollups' backfill", Duration::from_secs(20), || async {
        let complete: Option<bool> =
            sqlx::query_scalar("SELECT complete FROM public.security_event_rollups_state")
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        complete.filter(|c| *c)
    })
    .await;
}

type Counts = Vec<(String, String, i64)>;

async fn raw_counts(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> Counts {
    sqlx::query_as(
        "SELECT event_type, severity, count(*) FROM public.security_events \
         WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// An hour and type whose rollup differs from the table: the table's count, the rollup's.
type HourDiff = (
    Option<DateTime<Utc>>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// Every hour's rollup against a `count(*)` of that hour in the table.
async fn rollups_equal_the_table(pool: &PgPool) -> Result<(), String> {
    let diff: Vec<HourDiff> =
        sqlx::query_as(
            "WITH raw AS (SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, \
               event_type, severity, count(*) AS n FROM public.security_events GROUP BY 1, 2, 3) \
             SELECT coalesce(raw.hour, r.hour), coalesce(raw.event_type, r.event_type), raw.n, r.events \
             FROM raw FULL JOIN public.security_event_rollups r \
               ON r.hour = raw.hour AND r.event_type = raw.event_type AND r.severity = raw.severity \
             WHERE raw.n IS DISTINCT FROM r.events",
        )
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
    when(diff.is_empty(), (), format!("{diff:?}"))
}

/// The stats of `windows` (from the rollups and the edges) and every hour's rollup equal the
/// table's counts. Polled: the writer may still be flushing what the app recorded last.
async fn assert_consistent(
    pool: &PgPool,
    source: &EventSource,
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
) {
    eventually_ok(
        "rollups equal to the table",
        Duration::from_secs(10),
        || async {
            rollups_equal_the_table(pool).await?;
            for (from, to) in windows {
                let stats = source.stats(*from, *to).await.map_err(|e| e.to_string())?;
                let raw = raw_counts(pool, *from, *to).await;
                let total: i64 = raw.iter().map(|(_, _, n)| n).sum();
                let mut by_type = std::collections::BTreeMap::<String, i64>::new();
                for (t, _, n) in &raw {
                    *by_type.entry(t.clone()).or_default() += n;
                }
                if stats.total != total || stats.by_type != by_type {
                    return Err(format!(
                        "{from}..{to}: stats {} {:?}, table {total} {by_type:?}",
                        stats.total, stats.by_type
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// Windows around `times`: aligned on hours, starting and ending mid-hour, within one hour, and
/// wide enough for the whole table.
fn windows(times: &[DateTime<Utc>]) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    let hour = first.duration_trunc(TimeDelta::hours(1)).unwrap();
    vec![
        (first - TimeDelta::days(400), last + TimeDelta::hours(3)),
        (hour, hour + TimeDelta::hours(2)),
        (
            first + TimeDelta::milliseconds(1),
            last + TimeDelta::milliseconds(1),
        ),
        (hour + TimeDelta::minutes(17), last - TimeDelta::minutes(5)),
        (first, first + TimeDelta::minutes(10)),
    ]
}

async fn event_times(pool: &PgPool) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT created_at FROM public.security_events")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn stats_equal_a_raw_count_after_writes_a_replay_retention_and_across_hours() {
    let Some(app) = TestApp::builder(Backend::File)
        .events_in_postgres()
        .try_spawn()
        .await
    else {
        return;
    };
    let pool = app.db.as_ref().unwrap().pool().await;
    let source = EventSource::Postgres(app.state.security_db.clone().unwrap());
    rollups_complete(&pool).await;

    // The writer's batches, over three hours of the app's clock (each hour boundary crossed).
    for _ in 0..3 {
        for _ in 0..4 {
            app.login(&unique_email(), "nobody has this one").await;
        }
        app.clock().advance(Duration::from_secs(3600));
    }
    let failed = app
        .events_where(|e| count_of(e, "login_failed") >= 12)
        .await;
    assert_eq!(count_of(&failed, "login_failed"), 12);
    let times = event_times(&pool).await;
    let hours: std::collections::BTreeSet<_> = times
        .iter()
        .map(|t| t.duration_trunc(TimeDelta::hours(1)).unwrap())
        .collect();
    assert!(hours.len() >= 3, "events in three hours: {hours:?}");
    assert_consistent(&pool, &source, &windows(&times)).await;

    // Through the API too, for a window of whole hours and edges.
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    make_admin(&app, &email).await;
    let (from, to) = windows(&times)[2];
    let path = format!(
        "/api/admin/security/events/stats?from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let response = app.get_auth(&path, &token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let raw: i64 = raw_counts(&pool, from, to)
        .await
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(body["stats"]["total"], raw, "{body}");

    // A spool replayed: two events the table already holds and three it does not, five hours
    // back. Each is counted once.
    let stored = events_from_postgres(app.db.as_ref().unwrap()).await;
    let mut spooled: Vec<SecurityEvent> = stored.into_iter().take(2).collect();
    let back = app.clock().now() - TimeDelta::hours(5);
    for i in 0..3 {
        let mut event = SecurityEvent::new(EventType::LoginFailed).reason("replayed");
        event.created_at = back + TimeDelta::minutes(25 * i);
        spooled.push(event);
    }
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM public.security_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    {
        // Written elsewhere and moved in whole, as the writer finds a file it spooled earlier.
        let dir = app.settings.security_log_dir();
        let elsewhere = tempfile::tempdir().unwrap();
        let spool =
            flux_auth::security_log::spool::Spool::open(elsewhere.path(), app.clock()).unwrap();
        spool.append(&spooled).unwrap();
        spool.seal();
        for file in spool.sealed_files().unwrap() {
            std::fs::rename(&file, dir.join(file.file_name().unwrap())).unwrap();
        }
        eventually("the spool replayed", Duration::from_secs(10), || async {
            events_from_files(&dir).is_empty().then_some(())
        })
        .await;
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM public.security_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(after >= before + 3, "{before} then {after}");
    let times = event_times(&pool).await;
    assert_consistent(&pool, &source, &windows(&times)).await;

    // Rows written by something else (the old service), then retention: info expires after 90
    // days, critical is kept a year.
    sqlx::query(
        "INSERT INTO public.security_events (id, event_type, severity, created_at) \
         SELECT gen_random_uuid(), 'login_success', CASE WHEN i % 3 = 0 THEN 'critical' ELSE 'info' END, \
           now() - interval '100 days' + i * interval '7 minutes' FROM generate_series(1, 30) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let times = event_times(&pool).await;
    assert_consistent(&pool, &source, &windows(&times)).await;
    let report = flux_auth::cleanup::run_once(&app.state).await;
    assert_eq!(report.events_deleted, 20);
    let times = event_times(&pool).await;
    assert_consistent(&pool, &source, &windows(&times)).await;
    let old_info: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(events), 0)::bigint FROM public.security_event_rollups \
         WHERE severity = 'info' AND hour < now() - interval '90 days'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old_info, 0, "the deleted rows' counts went with them");
}

/// A table from before the rollups (migration 004 as the old service ran it), with 3,000 rows
/// over three days.
async fn table_from_before_the_rollups() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/004_create_security_events.sql"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query(
        "INSERT INTO public.security_events (id, event_type, severity, ip_address, created_at) \
         SELECT gen_random_uuid(), (ARRAY['login_success','login_failed','token_reuse_detected'])[1 + i % 3], \
           (ARRAY['info','warning','critical'])[1 + i % 3], '10.0.0.' || (i % 50), \
           now() - i * interval '86 seconds' FROM generate_series(1, 3000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    (db, pool)
}

#[tokio::test]
async fn rows_stored_before_the_rollups_are_backfilled_and_a_backfill_resumes() {
    if !postgres_available().await {
        return;
    }
    let (db, pool) = table_from_before_the_rollups().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.security_log_database_url = Some(secrecy::SecretString::from(db.url.clone()));
    let app = TestApp::start(settings, dir, Some(db), Backend::File).await;
    // Events recorded while the backfill runs are counted too.
    for _ in 0..3 {
        app.login(&unique_email(), "nobody has this one").await;
    }
    rollups_complete(&pool).await;
    let security_db = app.state.security_db.clone().unwrap();
    let source = EventSource::Postgres(security_db.clone());
    let times = event_times(&pool).await;
    assert_consistent(&pool, &source, &windows(&times)).await;
    let hours: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT hour) FROM public.security_event_rollups")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(hours >= 72, "three days of hours: {hours}");

    // A backfill interrupted a day and a half in resumes there: the hours after it are
    // counted again (here they were wrong), those before it are left as they are.
    sqlx::query(
        "UPDATE public.security_event_rollups_state SET complete = false, \
         next_hour = date_trunc('hour', now() - interval '36 hours')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE public.security_event_rollups SET events = events + 1000 \
         WHERE hour >= date_trunc('hour', now() - interval '36 hours')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (from, to) = windows(&times)[0];
    let raw: i64 = raw_counts(&pool, from, to)
        .await
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(
        source.stats(from, to).await.unwrap().total,
        raw,
        "while a backfill is incomplete the table is counted"
    );
    rollups::backfill(&security_db, &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_consistent(&pool, &source, &windows(&times)).await;
}

/// `flux-auth migrate` leaves an existing security_events table alone; `flux-auth events prepare`
/// (for `RUN_MIGRATIONS=false`) creates the rollups where the log writes and counts what is there
/// before it exits.
#[tokio::test]
async fn events_prepare_creates_and_backfills_the_rollups_and_migrate_does_not() {
    if !postgres_available().await {
        return;
    }
    let (db, pool) = table_from_before_the_rollups().await;
    let cli = |args: &'static [&'static str]| {
        let url = db.url.clone();
        tokio::task::spawn_blocking(move || {
            run_cli_blocking(&[("DATABASE_URL", url), ("STORAGE", "file".into())], args)
        })
    };
    let out = cli(&["migrate"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rollups: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.security_event_rollups')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rollups, None, "migrate adds nothing beside security_events");
    let out = cli(&["events", "prepare"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("security event rollups ready"));
    assert!(text(&out.stdout).contains("security event indexes ready"));
    let complete: bool =
        sqlx::query_scalar("SELECT complete FROM public.security_event_rollups_state")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(complete);
    rollups_equal_the_table(&pool).await.unwrap();
    let counted: i64 =
        sqlx::query_scalar("SELECT sum(events)::bigint FROM public.security_event_rollups")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(counted, 3000);
}
