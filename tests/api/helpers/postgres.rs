//! The database of a test's own: the Postgres server for tests, whether it answers, and a
//! database created for one test and dropped when it ends.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server URL for tests: `TEST_DATABASE_URL` or the local default. Under `CI` a missing server
/// fails the test; elsewhere the test says loudly that it was skipped.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn postgres_available() -> bool {
    match PgConnection::connect(&postgres_admin_url()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "Postgres is required in CI but did not answer at {}: {e}",
                    postgres_admin_url()
                );
            }
            eprintln!(
                "!!! SKIPPED: Postgres not reachable at {} ({e}); start it to run this test",
                postgres_admin_url()
            );
            false
        }
    }
}

/// A database of its own, dropped (with its connections) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A database whose connections search `flux_auth` then `public` unless they say otherwise.
    pub async fn create() -> Self {
        Self::create_with(true).await
    }

    /// A database with Postgres's default `search_path` (`"$user", public`), as an application
    /// sharing it with flux-auth has it.
    pub async fn create_bare() -> Self {
        Self::create_with(false).await
    }

    async fn create_with(search_flux_auth: bool) -> Self {
        let name = format!("flux_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&postgres_admin_url())
            .await
            .expect("connect to postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        // Tests read flux-auth's tables by their plain names, as an operator does after
        // `SET search_path = flux_auth`; the service sets its own search_path on every
        // connection and does not rely on this default (`TestDb::create_bare` has none).
        if search_flux_auth {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{name}\" SET search_path = flux_auth, public"
            )))
            .execute(&mut conn)
            .await
            .expect("set the test database's search_path");
        }
        let _ = conn.close().await;
        let base = postgres_admin_url();
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("TEST_DATABASE_URL must end in /<database>"),
        };
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async; a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}
