//! A scratch database with the service's migrations, created next to the admin URL's database
//! and dropped at the end.

use std::time::Duration;

use flux_auth::db::Database;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};

fn admin_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A scratch database with the service's migrations, dropped by `drop_database`.
pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub db: Database,
}

pub async fn create_database() -> Option<BenchDb> {
    let admin = admin_url();
    let mut conn = match PgConnection::connect(&admin).await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("!!! SKIPPED the Postgres benchmarks: no Postgres at {admin} ({e})");
            return None;
        }
    };
    let name = format!("flux_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let db = Database::connect_lazy(
        &SecretString::from(url.clone()),
        &flux_auth::db::Schemas::default(),
        4,
        Duration::from_secs(5),
    )
    .unwrap();
    db.migrate().await.unwrap();
    Some(BenchDb { name, url, db })
}

pub async fn drop_database(bench: BenchDb) {
    bench.db.pool.close().await;
    if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            bench.name
        )))
        .execute(&mut conn)
        .await;
    }
}
