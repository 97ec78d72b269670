//! Waiting on a condition: poll until it holds, fail the test with what was awaited after a bound.

use std::time::Duration;

/// How long a test waits for something carried by pub/sub or `LISTEN`: generous for a loaded CI
/// machine; the real figure is one delivery, or a second's heartbeat.
pub const MIRROR_PATIENCE: Duration = Duration::from_secs(10);

/// Polls `probe` until it yields a value; fails the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` until it yields `Ok`; fails the test after `limit`, showing the last `Err`
/// (what the probe saw instead).
pub async fn eventually_ok<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Ok(value)` when `done`, else `Err(seen)`: a probe's answer for [`eventually_ok`].
pub fn when<T>(done: bool, value: T, seen: impl std::fmt::Display) -> Result<T, String> {
    if done {
        Ok(value)
    } else {
        Err(seen.to_string())
    }
}
