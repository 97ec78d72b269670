//! The primitive operations limits are built from, with one implementation per backend: Redis
//! (Lua scripts, each one atomic round trip, every key with a TTL) and in-process (the same
//! arithmetic under a mutex), so that the rules are identical when Redis is down.

use async_trait::async_trait;

/// The result of counting one failed login against an account or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failure {
    /// Consecutive failures so far; `None` when a lock was already running (not counted).
    pub count: Option<i64>,
    /// The lock this failure started, in ms (0 when none), or the remaining lock when one runs.
    pub lock_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    pub threshold: i64,
    pub base_ms: i64,
    pub max_ms: i64,
    /// Failures are forgotten after this long without another.
    pub memory_ms: i64,
    /// `true`: the lock doubles with every failure past the threshold; `false`: it is fixed.
    pub grows: bool,
}

/// One GCRA limit to count within an [`Admission`].
#[derive(Debug, Clone)]
pub struct Rate {
    pub key: String,
    pub interval_ms: i64,
    pub window_ms: i64,
}

/// Everything a request is checked against before it is served, answered in one atomic step (one
/// Redis round trip): a block that refuses outright, then limits counted in order (the first one
/// over refuses, and the ones after it are not counted), then a lock that is only reported (a
/// locked account still gets the same answer as a wrong password).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub block: Option<String>,
    pub rates: Vec<Rate>,
    pub lock: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `block` is running for this long.
    Blocked { remaining_ms: i64 },
    /// `rates[index]` is over its limit.
    Limited { index: usize, retry_after_ms: i64 },
    /// Served; `locked_ms` is what remains of `lock` (0 when none).
    Admitted { locked_ms: i64 },
}

impl Default for Verdict {
    /// What a failed backend would mean: refuse (fail closed).
    fn default() -> Self {
        Self::Blocked { remaining_ms: 1000 }
    }
}

/// One failure to count: the failure counter, the lock it may start, and the lock's policy.
#[derive(Debug, Clone)]
pub struct FailureKeys {
    pub fail_key: String,
    pub lock_key: String,
    pub policy: LockPolicy,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn admit(&self, admission: &Admission, now_ms: i64) -> anyhow::Result<Verdict>;
    /// Counts one failure against each entry, all in one atomic step; results in the same order.
    async fn record_failures(
        &self,
        entries: &[FailureKeys],
        now_ms: i64,
    ) -> anyhow::Result<Vec<Failure>>;
    async fn delete(&self, keys: &[String]) -> anyhow::Result<()>;
    /// Makes the lock `key` run until `until_ms` at least: a lock is only ever extended here.
    async fn extend_lock(&self, key: &str, until_ms: i64, now_ms: i64) -> anyhow::Result<()>;
    /// Live lock keys under `prefix` with their remaining ms (admin listing).
    async fn locks(&self, prefix: &str, now_ms: i64) -> anyhow::Result<Vec<(String, i64)>>;
}

/// The lock for the `count`-th consecutive failure: `base` at the threshold, doubling, capped.
pub fn lock_ms(count: i64, policy: &LockPolicy) -> i64 {
    if count < policy.threshold {
        return 0;
    }
    if !policy.grows {
        return policy.base_ms;
    }
    let doublings = (count - policy.threshold).min(20) as u32;
    policy
        .base_ms
        .saturating_mul(1i64 << doublings)
        .min(policy.max_ms)
}

/// One GCRA (generic cell rate algorithm) step on a subject's "theoretical arrival time", shared
/// by both backends so they agree exactly: `Ok(new_tat)` when allowed, `Err(retry_after_ms)` when
/// not.
pub fn gcra_step(
    stored_tat: Option<i64>,
    now_ms: i64,
    interval_ms: i64,
    window_ms: i64,
) -> Result<i64, i64> {
    let tat = stored_tat.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + interval_ms;
    let allow_at = new_tat - window_ms;
    if now_ms < allow_at {
        Err(allow_at - now_ms)
    } else {
        Ok(new_tat)
    }
}

/// The counter and lock after one more failure, unless a lock runs (then nothing is counted):
/// `(failure, new count to store, lock until to store)`, shared by both backends.
pub fn failure_step(
    stored_count: Option<i64>,
    lock_until: Option<i64>,
    now_ms: i64,
    policy: &LockPolicy,
) -> (Failure, Option<i64>, Option<i64>) {
    if let Some(until) = lock_until.filter(|u| *u > now_ms) {
        let failure = Failure {
            count: None,
            lock_ms: until - now_ms,
        };
        return (failure, None, None);
    }
    let count = stored_count.unwrap_or(0) + 1;
    let lock = lock_ms(count, policy);
    let failure = Failure {
        count: Some(count),
        lock_ms: lock,
    };
    (failure, Some(count), (lock > 0).then_some(now_ms + lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_spaces_requests() {
        let (interval, window) = (6_000, 60_000); // 10 per minute
        let mut tat = None;
        for i in 0..10 {
            let next = gcra_step(tat, 0, interval, window);
            assert!(next.is_ok(), "request {i}");
            tat = next.ok();
        }
        assert_eq!(gcra_step(tat, 0, interval, window), Err(6_000));
        assert!(
            gcra_step(tat, 6_000, interval, window).is_ok(),
            "one more after one interval"
        );
    }

    #[test]
    fn lock_doubles_from_the_threshold_and_is_capped() {
        let p = LockPolicy {
            threshold: 5,
            base_ms: 30_000,
            max_ms: 900_000,
            memory_ms: 0,
            grows: true,
        };
        assert_eq!(lock_ms(4, &p), 0);
        assert_eq!(lock_ms(5, &p), 30_000);
        assert_eq!(lock_ms(6, &p), 60_000);
        assert_eq!(lock_ms(10, &p), 900_000);
        assert_eq!(lock_ms(1_000, &p), 900_000);
    }
}
