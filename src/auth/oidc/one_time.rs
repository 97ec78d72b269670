//! Single-use values with a short life: the state of a pending authorization (PKCE verifier and
//! nonce, taken once by the callback), markers of ID tokens already used (so a replayed token is
//! refused) and the pending second steps of two-factor sign-ins. In Redis when it is configured
//! and up, so any instance can finish a flow another started; in-process otherwise, bounded so a
//! flood of `/authorize` calls cannot exhaust memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::redis_link::RedisLink;

/// In-process entries kept at most; past it, the entries closest to expiry make room.
const LOCAL_CAPACITY: usize = 20_000;

pub struct OneTimeStore {
    redis: Option<Arc<RedisLink>>,
    prefix: String,
    local: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    clock: Clock,
}

impl OneTimeStore {
    pub fn new(redis: Option<Arc<RedisLink>>, key_prefix: &str, clock: Clock) -> Self {
        Self::in_namespace(redis, key_prefix, "oidc", clock)
    }

    /// A store whose keys are apart from every other namespace's (two-factor challenges use
    /// `mfa`).
    pub fn in_namespace(
        redis: Option<Arc<RedisLink>>,
        key_prefix: &str,
        namespace: &str,
        clock: Clock,
    ) -> Self {
        Self {
            redis,
            prefix: format!("{key_prefix}{namespace}:"),
            local: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Keys are hashes of the secret they stand for, so neither Redis nor a heap dump holds
    /// a usable state value or ID token.
    fn key(&self, kind: &str, secret: &str) -> String {
        format!(
            "{}{kind}:{}",
            self.prefix,
            hex::encode(Sha256::digest(secret.as_bytes()))
        )
    }

    fn redis_up(&self) -> Option<&RedisLink> {
        self.redis.as_deref().filter(|link| link.is_up())
    }

    /// Stores `value` for `ttl` under (`kind`, `secret`).
    pub async fn put(&self, kind: &str, secret: &str, value: &str, ttl: Duration) {
        let key = self.key(kind, secret);
        if let Some(link) = self.redis_up() {
            match link
                .store()
                .set_nx_px(&key, value, ttl.as_millis() as i64)
                .await
            {
                Ok(_) => return,
                Err(e) => link.failed(&e),
            }
        }
        self.local_put(key, value, ttl);
    }

    /// Takes the value once: a second take of the same key finds nothing.
    pub async fn take(&self, kind: &str, secret: &str) -> Option<String> {
        let key = self.key(kind, secret);
        if let Some(link) = self.redis_up() {
            match link.store().take(&key).await {
                Ok(Some(value)) => return Some(value),
                Ok(None) => {}
                Err(e) => link.failed(&e),
            }
        }
        // Also where values stored while Redis was away are.
        self.local_take(&key)
    }

    /// Marks (`kind`, `secret`) used for `ttl`; false when it was marked already.
    pub async fn first_use(&self, kind: &str, secret: &str, ttl: Duration) -> bool {
        let key = self.key(kind, secret);
        // In-process first, so a replay is caught on this instance even across a Redis outage.
        if !self.local_put_new(key.clone(), ttl) {
            return false;
        }
        if let Some(link) = self.redis_up() {
            match link
                .store()
                .set_nx_px(&key, "1", ttl.as_millis() as i64)
                .await
            {
                Ok(stored) => return stored,
                Err(e) => link.failed(&e),
            }
        }
        true
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, DateTime<Utc>)>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn local_put(&self, key: String, value: &str, ttl: Duration) {
        let now = self.clock.now();
        let mut map = self.local();
        make_room(&mut map, now);
        map.insert(key, (value.to_owned(), expiry(now, ttl)));
    }

    fn local_put_new(&self, key: String, ttl: Duration) -> bool {
        let now = self.clock.now();
        let mut map = self.local();
        if map.get(&key).is_some_and(|(_, until)| *until > now) {
            return false;
        }
        make_room(&mut map, now);
        map.insert(key, (String::new(), expiry(now, ttl)));
        true
    }

    fn local_take(&self, key: &str) -> Option<String> {
        let now = self.clock.now();
        self.local()
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value)
    }
}

fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    now + chrono::Duration::milliseconds(ttl.as_millis() as i64)
}

/// Drops expired entries when full; if that is not enough, the ones nearest expiry.
fn make_room(map: &mut HashMap<String, (String, DateTime<Utc>)>, now: DateTime<Utc>) {
    if map.len() < LOCAL_CAPACITY {
        return;
    }
    map.retain(|_, (_, until)| *until > now);
    if map.len() >= LOCAL_CAPACITY {
        let mut expiries: Vec<DateTime<Utc>> = map.values().map(|(_, until)| *until).collect();
        expiries.sort_unstable();
        if let Some(cutoff) = expiries.get(expiries.len() / 10).copied() {
            map.retain(|_, (_, until)| *until > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_are_taken_once_and_expire() {
        let clock = Clock::default();
        let store = OneTimeStore::new(None, "t:", clock.clone());
        store
            .put("state", "abc", "v", Duration::from_secs(60))
            .await;
        assert_eq!(store.take("state", "abc").await.as_deref(), Some("v"));
        assert_eq!(store.take("state", "abc").await, None);
        store
            .put("state", "def", "v", Duration::from_secs(60))
            .await;
        clock.advance(Duration::from_secs(61));
        assert_eq!(store.take("state", "def").await, None);
        assert!(
            store
                .first_use("used", "tok", Duration::from_secs(60))
                .await
        );
        assert!(
            !store
                .first_use("used", "tok", Duration::from_secs(60))
                .await
        );
    }

    #[test]
    fn the_local_map_stays_bounded() {
        let now = Utc::now();
        let mut map = HashMap::new();
        for i in 0..LOCAL_CAPACITY {
            map.insert(
                i.to_string(),
                (String::new(), now + chrono::Duration::seconds(i as i64 + 1)),
            );
        }
        make_room(&mut map, now);
        assert!(map.len() < LOCAL_CAPACITY);
    }
}
