//! `postgres`: the sink's batched `INSERT … UNNEST` against `COPY` of the same batches, then
//! both interleaved on one growing table.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use flux_auth::db::Database;
use flux_auth::security_log::SecurityEvent;
use flux_auth::security_log::event::metadata_json;
use flux_auth::security_log::postgres_sink::PgSink;

use crate::scratch_db::{create_database, drop_database};
use crate::{BATCH, batch, runtime};

/// `COPY` into the table, named with its schema as every query names it (the pool's `search_path`
/// is flux-auth's own schema).
fn copy_sql(db: &Database) -> String {
    format!(
        "COPY {} (id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, \
         created_at) FROM STDIN (FORMAT csv)",
        db.schemas().security_events()
    )
}

fn csv_field(out: &mut String, value: Option<&str>) {
    if let Some(value) = value {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// The batch as COPY's CSV (NULL is an unquoted empty field).
fn to_csv(events: &[SecurityEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 700);
    for e in events {
        out.push_str(&e.id.to_string());
        out.push(',');
        out.push_str(e.event_type.as_str());
        out.push(',');
        out.push_str(e.severity.as_str());
        out.push(',');
        csv_field(&mut out, e.user_id.as_deref());
        out.push(',');
        if let Some(token) = e.token_id {
            out.push_str(&token.to_string());
        }
        out.push(',');
        csv_field(&mut out, e.ip_address.as_deref());
        out.push(',');
        csv_field(&mut out, e.user_agent.as_deref());
        out.push(',');
        csv_field(&mut out, Some(&metadata_json(e)));
        out.push(',');
        out.push_str(&e.created_at.to_rfc3339());
        out.push('\n');
    }
    out
}

async fn insert_unnest(sink: &PgSink, events: &[SecurityEvent]) {
    let refs: Vec<&SecurityEvent> = events.iter().collect();
    let n = sink.insert(&refs).await.unwrap();
    assert_eq!(n, events.len() as u64);
}

async fn insert_copy(db: &Database, events: &[SecurityEvent]) {
    let mut conn = db.pool.acquire().await.unwrap();
    let mut copy = conn.copy_in_raw(&copy_sql(db)).await.unwrap();
    copy.send(to_csv(events).into_bytes()).await.unwrap();
    let n = copy.finish().await.unwrap();
    assert_eq!(n, events.len() as u64);
}

async fn truncate(db: &Database) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "TRUNCATE {}",
        db.schemas().security_events()
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn rows(db: &Database) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        db.schemas().security_events()
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

pub fn bench_postgres(c: &mut Criterion) {
    let rt = runtime();
    let Some(bench) = rt.block_on(create_database()) else {
        return;
    };
    let sink = PgSink {
        db: bench.db.clone(),
    };
    let mut next = 0usize;
    let mut fresh = || {
        next += BATCH;
        batch(next)
    };
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));

    rt.block_on(truncate(&bench.db));
    group.bench_function("PgSink::insert (UNNEST) 500", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events = fresh();
                total += rt.block_on(async {
                    let started = Instant::now();
                    insert_unnest(&sink, &events).await;
                    started.elapsed()
                });
            }
            total
        })
    });
    let unnest_rows = rt.block_on(rows(&bench.db));

    rt.block_on(truncate(&bench.db));
    group.bench_function("COPY csv 500 (baseline)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events = fresh();
                total += rt.block_on(async {
                    let started = Instant::now();
                    insert_copy(&bench.db, &events).await;
                    started.elapsed()
                });
            }
            total
        })
    });
    let copy_rows = rt.block_on(rows(&bench.db));
    group.finish();
    println!("postgres: the table held {unnest_rows} rows after UNNEST, {copy_rows} after COPY");

    // Sustained and interleaved: batch by batch on one growing table, so both see the same
    // table size, cache and background load.
    rt.block_on(async {
        truncate(&bench.db).await;
        let batches = 400;
        let (mut unnest, mut copy) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..batches {
            let events = fresh();
            let started = Instant::now();
            insert_unnest(&sink, &events).await;
            unnest += started.elapsed();
            let events = fresh();
            let started = Instant::now();
            insert_copy(&bench.db, &events).await;
            copy += started.elapsed();
        }
        let per_sec = |d: Duration| (batches * BATCH) as f64 / d.as_secs_f64();
        let (u, c) = (per_sec(unnest), per_sec(copy));
        println!(
            "postgres sustained, interleaved, {} events each into one table of {} rows: \
             UNNEST {u:.0} events/s, COPY {c:.0} events/s, UNNEST/COPY {:.0}%",
            batches * BATCH,
            rows(&bench.db).await,
            100.0 * u / c
        );
    });
    rt.block_on(drop_database(bench));
}
