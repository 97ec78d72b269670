//! The Redis for tests: its address, whether it answers, and a direct connection to it.

use std::time::Duration;

/// The Redis for tests: `TEST_REDIS_URL` or the local default. Absent: fails under `CI`, else the
/// test announces that it was skipped.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub async fn redis_available() -> bool {
    let ping = async {
        let client = redis::Client::open(redis_url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => true,
        outcome => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "Redis is required in CI but did not answer at {}: {outcome:?}",
                    redis_url()
                );
            }
            eprintln!(
                "!!! SKIPPED: Redis not reachable at {} ({outcome:?}); start it to run this test",
                redis_url()
            );
            false
        }
    }
}

/// A direct connection to the test Redis, for looking at the keys the app wrote.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
