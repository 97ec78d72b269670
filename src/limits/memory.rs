//! The in-process key store: the same rules as Redis, for one instance, when Redis is absent or
//! down. Bounded: expired entries are pruned, and past `MAX_ENTRIES` the soonest-expiring go.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::keystore::{
    Admission, Failure, FailureKeys, KeyStore, Verdict, failure_step, gcra_step,
};

const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct MemoryStore {
    /// key → (value, expires at ms)
    entries: Mutex<HashMap<String, (i64, i64)>>,
}

impl MemoryStore {
    fn with<T>(&self, now_ms: i64, f: impl FnOnce(&mut HashMap<String, (i64, i64)>) -> T) -> T {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, exp)| *exp > now_ms);
            if map.len() >= MAX_ENTRIES {
                let mut expiries: Vec<i64> = map.values().map(|(_, e)| *e).collect();
                let cut = expiries.len() / 4;
                let (_, nth, _) = expiries.select_nth_unstable(cut);
                let cutoff = *nth;
                map.retain(|_, (_, exp)| *exp > cutoff);
            }
        }
        f(&mut map)
    }

    fn live(map: &HashMap<String, (i64, i64)>, key: &str, now_ms: i64) -> Option<i64> {
        map.get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| *v)
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn admit(&self, admission: &Admission, now_ms: i64) -> anyhow::Result<Verdict> {
        Ok(self.with(now_ms, |map| {
            let remaining = |map: &HashMap<String, (i64, i64)>, key: &Option<String>| {
                key.as_deref()
                    .and_then(|k| Self::live(map, k, now_ms))
                    .map_or(0, |until| (until - now_ms).max(0))
            };
            let blocked = remaining(map, &admission.block);
            if blocked > 0 {
                return Verdict::Blocked {
                    remaining_ms: blocked,
                };
            }
            for (index, rate) in admission.rates.iter().enumerate() {
                let stored = Self::live(map, &rate.key, now_ms);
                match gcra_step(stored, now_ms, rate.interval_ms, rate.window_ms) {
                    Ok(tat) => {
                        map.insert(rate.key.clone(), (tat, tat));
                    }
                    Err(retry_after_ms) => {
                        return Verdict::Limited {
                            index,
                            retry_after_ms,
                        };
                    }
                }
            }
            Verdict::Admitted {
                locked_ms: remaining(map, &admission.lock),
            }
        }))
    }

    async fn record_failures(
        &self,
        entries: &[FailureKeys],
        now_ms: i64,
    ) -> anyhow::Result<Vec<Failure>> {
        Ok(self.with(now_ms, |map| {
            entries
                .iter()
                .map(|e| {
                    let (failure, count, lock_until) = failure_step(
                        Self::live(map, &e.fail_key, now_ms),
                        Self::live(map, &e.lock_key, now_ms),
                        now_ms,
                        &e.policy,
                    );
                    if let Some(count) = count {
                        map.insert(e.fail_key.clone(), (count, now_ms + e.policy.memory_ms));
                    }
                    if let Some(until) = lock_until {
                        map.insert(e.lock_key.clone(), (until, until));
                    }
                    failure
                })
                .collect()
        }))
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.remove(key);
        }
        Ok(())
    }

    async fn extend_lock(&self, key: &str, until_ms: i64, now_ms: i64) -> anyhow::Result<()> {
        self.with(now_ms, |map| {
            if Self::live(map, key, now_ms).is_none_or(|held| held < until_ms) {
                map.insert(key.to_owned(), (until_ms, until_ms));
            }
        });
        Ok(())
    }

    async fn locks(&self, prefix: &str, now_ms: i64) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(self.with(now_ms, |map| {
            map.iter()
                .filter(|(k, (until, exp))| {
                    k.starts_with(prefix) && *exp > now_ms && *until > now_ms
                })
                .map(|(k, (until, _))| (k.clone(), until - now_ms))
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::keystore::{LockPolicy, Rate};

    fn rate(key: &str, per_minute: i64) -> Rate {
        Rate {
            key: key.into(),
            interval_ms: 60_000 / per_minute,
            window_ms: 60_000,
        }
    }

    #[tokio::test]
    async fn admission_blocks_first_counts_in_order_and_reports_the_lock() {
        let store = MemoryStore::default();
        let admission = Admission {
            block: Some("block".into()),
            rates: vec![rate("wide", 3), rate("narrow", 2)],
            lock: Some("lock".into()),
        };
        let admitted = Verdict::Admitted { locked_ms: 0 };
        assert_eq!(store.admit(&admission, 0).await.unwrap(), admitted);
        assert_eq!(store.admit(&admission, 0).await.unwrap(), admitted);
        // The narrow limit refuses the third; the wide one counted it (it comes first).
        assert!(matches!(
            store.admit(&admission, 0).await.unwrap(),
            Verdict::Limited { index: 1, .. }
        ));
        assert!(matches!(
            store.admit(&admission, 0).await.unwrap(),
            Verdict::Limited { index: 0, .. }
        ));

        // Failures past the threshold lock; the lock is reported, a block refuses outright.
        let policy = LockPolicy {
            threshold: 2,
            base_ms: 30_000,
            max_ms: 60_000,
            memory_ms: 600_000,
            grows: true,
        };
        let entries = [
            FailureKeys {
                fail_key: "fail".into(),
                lock_key: "lock".into(),
                policy,
            },
            FailureKeys {
                fail_key: "fail-ip".into(),
                lock_key: "block".into(),
                policy: LockPolicy {
                    threshold: 3,
                    ..policy
                },
            },
        ];
        let first = store.record_failures(&entries, 0).await.unwrap();
        assert_eq!(first[0].count, Some(1));
        let second = store.record_failures(&entries, 0).await.unwrap();
        assert_eq!((second[0].count, second[0].lock_ms), (Some(2), 30_000));
        assert_eq!((second[1].count, second[1].lock_ms), (Some(2), 0));
        let later = Admission {
            rates: vec![],
            ..admission.clone()
        };
        assert_eq!(
            store.admit(&later, 1_000).await.unwrap(),
            Verdict::Admitted { locked_ms: 29_000 }
        );
        let third = store.record_failures(&entries, 1_000).await.unwrap();
        assert_eq!(third[0].count, None, "not counted while locked");
        assert_eq!(third[1].count, Some(3));
        assert_eq!(
            store.admit(&later, 1_000).await.unwrap(),
            Verdict::Blocked {
                remaining_ms: 30_000
            }
        );
    }
}
