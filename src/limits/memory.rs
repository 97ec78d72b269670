//! The in-process key store: the same rules as Redis, for one instance, when Redis is absent or
//! down. Bounded: expired entries are pruned, and past `MAX_ENTRIES` the soonest-expiring go.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::keystore::{Failure, Gcra, KeyStore, LockPolicy, gcra_step, lock_ms};

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
    async fn gcra(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        window_ms: i64,
    ) -> anyhow::Result<Gcra> {
        Ok(self.with(now_ms, |map| {
            let (decision, new_tat) =
                gcra_step(Self::live(map, key, now_ms), now_ms, interval_ms, window_ms);
            if let Some(tat) = new_tat {
                map.insert(key.to_owned(), (tat, tat));
            }
            decision
        }))
    }

    async fn record_failure(
        &self,
        fail_key: &str,
        lock_key: &str,
        now_ms: i64,
        policy: LockPolicy,
    ) -> anyhow::Result<Failure> {
        Ok(self.with(now_ms, |map| {
            if let Some(until) = Self::live(map, lock_key, now_ms) {
                return Failure {
                    count: None,
                    lock_ms: until - now_ms,
                };
            }
            let count = Self::live(map, fail_key, now_ms).unwrap_or(0) + 1;
            map.insert(fail_key.to_owned(), (count, now_ms + policy.memory_ms));
            let lock = lock_ms(count, &policy);
            if lock > 0 {
                map.insert(lock_key.to_owned(), (now_ms + lock, now_ms + lock));
            }
            Failure {
                count: Some(count),
                lock_ms: lock,
            }
        }))
    }

    async fn lock_remaining(&self, lock_key: &str, now_ms: i64) -> anyhow::Result<i64> {
        Ok(self.with(now_ms, |map| {
            Self::live(map, lock_key, now_ms).map_or(0, |until| until - now_ms)
        }))
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.remove(key);
        }
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
