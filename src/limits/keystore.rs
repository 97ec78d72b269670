//! The primitive operations limits are built from, with one implementation per backend: Redis
//! (Lua scripts, each one atomic round trip, every key with a TTL) and in-process (the same
//! arithmetic under a mutex), so that the rules are identical when Redis is down.

use async_trait::async_trait;

/// GCRA (generic cell rate algorithm): one key per subject holding its "theoretical arrival time".
/// The default (not allowed) is what a failed backend would mean: fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gcra {
    pub allowed: bool,
    /// How long until a request would be allowed (0 when allowed).
    pub retry_after_ms: i64,
    /// How far the subject's arrival time is ahead of now: `window` means the burst is used up.
    pub used_ms: i64,
}

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

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn gcra(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        window_ms: i64,
    ) -> anyhow::Result<Gcra>;
    async fn record_failure(
        &self,
        fail_key: &str,
        lock_key: &str,
        now_ms: i64,
        policy: LockPolicy,
    ) -> anyhow::Result<Failure>;
    /// Remaining lock in ms, 0 when not locked.
    async fn lock_remaining(&self, lock_key: &str, now_ms: i64) -> anyhow::Result<i64>;
    async fn delete(&self, keys: &[String]) -> anyhow::Result<()>;
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

/// `(allowed, retry_after, new_tat)` of GCRA, shared by both backends so they agree exactly.
pub fn gcra_step(
    stored_tat: Option<i64>,
    now_ms: i64,
    interval_ms: i64,
    window_ms: i64,
) -> (Gcra, Option<i64>) {
    let tat = stored_tat.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + interval_ms;
    let allow_at = new_tat - window_ms;
    if now_ms < allow_at {
        (
            Gcra {
                allowed: false,
                retry_after_ms: allow_at - now_ms,
                used_ms: tat - now_ms,
            },
            None,
        )
    } else {
        (
            Gcra {
                allowed: true,
                retry_after_ms: 0,
                used_ms: new_tat - now_ms,
            },
            Some(new_tat),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_spaces_requests() {
        let (interval, window) = (6_000, 60_000); // 10 per minute
        let mut tat = None;
        for i in 0..10 {
            let (d, next) = gcra_step(tat, 0, interval, window);
            assert!(d.allowed, "request {i}");
            tat = next;
        }
        let (d, _) = gcra_step(tat, 0, interval, window);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 6_000);
        let (d, _) = gcra_step(tat, 6_000, interval, window);
        assert!(d.allowed, "one more after one interval");
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
