//! The rules' counts: in Redis when it is configured and up (every instance adds to the same
//! counts, and a rule fires once across all of them), in-process otherwise (per instance), with
//! the same arithmetic. Each operation is one round trip; every key has a TTL; what a key holds
//! is bounded by its rule's threshold.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use redis::Script;
use sha2::{Digest, Sha256};

use crate::redis_link::RedisLink;

/// A count after one more observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// Distinct members within the window, at most the threshold.
    pub count: u64,
    /// When the oldest of them was seen (ms).
    pub first_seen_ms: i64,
    /// This observation reached the threshold and took the window's one firing for its key.
    pub fired: bool,
}

/// Adds ARGV[4] to the sorted set KEYS[1] (score: now), forgets members older than the window,
/// keeps the newest `threshold`, and at the threshold takes KEYS[2] (the firing, once per window)
/// if nobody has. ARGV: now, window ms, threshold, member. Returns count, first seen, fired.
const OBSERVE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[4])
local n = redis.call('ZCARD', KEYS[1])
if n > threshold then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - threshold - 1)
  n = threshold
end
redis.call('PEXPIRE', KEYS[1], window)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local fired = 0
if n >= threshold and redis.call('SET', KEYS[2], now, 'NX', 'PX', window) then
  fired = 1
end
return {n, tonumber(first[2]), fired}
";

/// Counts one in the window KEYS[1] (kept for ARGV[1] ms) and answers it with the sum of the
/// windows KEYS[2..]. Returns current, trailing.
const BUCKET_SCRIPT: &str = r"
local current = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local trailing = 0
if #KEYS > 1 then
  local values = redis.call('MGET', unpack(KEYS, 2))
  for _, v in ipairs(values) do trailing = trailing + (tonumber(v) or 0) end
end
return {current, trailing}
";

/// Sets KEYS[1] for ARGV[1] ms unless it is set: 1 when this call took it.
const CLAIM_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then return 1 end
return 0
";

/// Keys held in-process at most; past it the expired go, then the least recently touched.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
struct Memory {
    /// key → (member → last seen ms), and when the key was last touched.
    sets: HashMap<String, (HashMap<String, i64>, i64)>,
    /// firing key → until ms.
    fired: HashMap<String, i64>,
    /// bucket name → window index → (count, until ms); each name keeps only the windows its
    /// rule still reads, so no key string is built per event.
    buckets: HashMap<String, BTreeMap<i64, (u64, i64)>>,
}

impl Memory {
    fn prune(&mut self, now_ms: i64) {
        if self.sets.len() >= MAX_KEYS {
            self.sets
                .retain(|_, (members, _)| members.values().any(|&seen| seen > now_ms));
            if self.sets.len() >= MAX_KEYS {
                let mut touched: Vec<i64> = self.sets.values().map(|(_, t)| *t).collect();
                let cut = touched.len() / 4;
                let (_, nth, _) = touched.select_nth_unstable(cut);
                let cutoff = *nth;
                self.sets.retain(|_, (_, t)| *t > cutoff);
            }
        }
        if self.fired.len() >= MAX_KEYS {
            self.fired.retain(|_, until| *until > now_ms);
        }
        if self.buckets.len() >= MAX_KEYS {
            self.buckets
                .retain(|_, windows| windows.values().any(|(_, until)| *until > now_ms));
        }
    }

    fn claim(&mut self, key: &str, now_ms: i64, ttl_ms: i64) -> bool {
        if self.fired.get(key).is_some_and(|until| *until > now_ms) {
            return false;
        }
        self.fired.insert(key.to_owned(), now_ms + ttl_ms);
        true
    }
}

pub struct Windows {
    redis: Option<Arc<RedisLink>>,
    memory: Mutex<Memory>,
    prefix: String,
    observe: Script,
    bucket: Script,
    claim: Script,
}

/// A short, fixed-size name for a key or member: what Redis and memory hold is the same size
/// whatever the client sent, and holds no address of mail.
pub fn digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    hex::encode(&hash[..12])
}

impl Windows {
    pub fn new(redis: Option<Arc<RedisLink>>, prefix: &str) -> Self {
        Self {
            redis,
            memory: Mutex::default(),
            prefix: format!("{prefix}anomaly:"),
            observe: Script::new(OBSERVE_SCRIPT),
            bucket: Script::new(BUCKET_SCRIPT),
            claim: Script::new(CLAIM_SCRIPT),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn redis(&self) -> Option<&Arc<RedisLink>> {
        self.redis.as_ref().filter(|link| link.is_up())
    }

    /// One more `member` for `rule`'s `key`, now; see [`Seen`].
    pub async fn observe(
        &self,
        rule: &str,
        key: &str,
        member: &str,
        now_ms: i64,
        window_ms: i64,
        threshold: u32,
    ) -> Seen {
        let key = digest(key);
        let set_key = format!("{}{rule}:{key}", self.prefix);
        let fired_key = format!("{}{rule}:fired:{key}", self.prefix);
        let window_ms = window_ms.max(1);
        if let Some(link) = self.redis() {
            let store = link.store();
            let mut conn = store.connection();
            let answer = store
                .bounded(
                    self.observe
                        .key(&set_key)
                        .key(&fired_key)
                        .arg(now_ms)
                        .arg(window_ms)
                        .arg(threshold)
                        .arg(member)
                        .invoke_async::<(u64, i64, i64)>(&mut conn),
                )
                .await;
            match answer {
                Ok((count, first_seen_ms, fired)) => {
                    return Seen {
                        count,
                        first_seen_ms,
                        fired: fired == 1,
                    };
                }
                Err(e) => link.failed(&e),
            }
        }
        let mut memory = self.memory();
        memory.prune(now_ms);
        let (members, touched) = memory.sets.entry(set_key).or_default();
        *touched = now_ms;
        members.retain(|_, seen| *seen > now_ms - window_ms);
        members.insert(member.to_owned(), now_ms);
        let threshold = threshold.max(1) as usize;
        // The newest `threshold` are kept, as the script's ZREMRANGEBYRANK keeps them: the oldest
        // go one at a time (never the member just seen). A cut at the oldest kept time kept
        // every member seen in the same millisecond, so a flood grew a key without bound.
        while members.len() > threshold {
            let oldest = members
                .iter()
                .filter(|(m, _)| m.as_str() != member)
                .min_by_key(|(_, seen)| **seen)
                .map(|(m, _)| m.clone());
            match oldest {
                Some(oldest) => members.remove(&oldest),
                None => break,
            };
        }
        let count = members.len() as u64;
        let first_seen_ms = members.values().copied().min().unwrap_or(now_ms);
        let fired = count >= threshold as u64 && memory.claim(&fired_key, now_ms, window_ms);
        Seen {
            count,
            first_seen_ms,
            fired,
        }
    }

    /// Counts one in the window `now_ms` falls in (windows of `window_ms`); answers its count and
    /// the sum of the `trailing` windows before it.
    pub async fn count_in_window(
        &self,
        name: &str,
        now_ms: i64,
        window_ms: i64,
        trailing: usize,
    ) -> (u64, u64) {
        let window_ms = window_ms.max(1);
        let index = now_ms.div_euclid(window_ms);
        let key = |i: i64| format!("{}{name}:{i}", self.prefix);
        let keep_ms = window_ms * (trailing as i64 + 2);
        if let Some(link) = self.redis() {
            let store = link.store();
            let mut conn = store.connection();
            let mut invocation = self.bucket.prepare_invoke();
            invocation.key(key(index)).arg(keep_ms);
            for back in 1..=trailing as i64 {
                invocation.key(key(index - back));
            }
            match store
                .bounded(invocation.invoke_async::<(u64, u64)>(&mut conn))
                .await
            {
                Ok(counts) => return counts,
                Err(e) => link.failed(&e),
            }
        }
        let mut memory = self.memory();
        memory.prune(now_ms);
        if !memory.buckets.contains_key(name) {
            memory.buckets.insert(name.to_owned(), BTreeMap::new());
        }
        let Some(windows) = memory.buckets.get_mut(name) else {
            return (0, 0);
        };
        // Windows older than the trailing ones are read no more.
        let oldest = index - trailing as i64;
        while windows.first_key_value().is_some_and(|(i, _)| *i < oldest) {
            windows.pop_first();
        }
        let entry = windows.entry(index).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = now_ms + keep_ms;
        let current = entry.0;
        let trailing_sum = windows
            .range(oldest..index)
            .filter(|(_, (_, until))| *until > now_ms)
            .map(|(_, (count, _))| count)
            .sum();
        (current, trailing_sum)
    }

    /// Takes `rule`'s one firing for `key` for `window_ms`: `true` for the first caller (across
    /// every instance when Redis is up).
    pub async fn claim(&self, rule: &str, key: &str, now_ms: i64, window_ms: i64) -> bool {
        let fired_key = format!("{}{rule}:fired:{}", self.prefix, digest(key));
        let window_ms = window_ms.max(1);
        if let Some(link) = self.redis() {
            let store = link.store();
            let mut conn = store.connection();
            match store
                .bounded(
                    self.claim
                        .key(&fired_key)
                        .arg(window_ms)
                        .invoke_async::<i64>(&mut conn),
                )
                .await
            {
                Ok(took) => return took == 1,
                Err(e) => link.failed(&e),
            }
        }
        let mut memory = self.memory();
        memory.prune(now_ms);
        memory.claim(&fired_key, now_ms, window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_count_fires_once_at_its_threshold_and_again_only_after_its_window() {
        let windows = Windows::new(None, "t:");
        let mut fired = Vec::new();
        for (i, member) in ["a", "b", "a", "c", "d", "e"].iter().enumerate() {
            let seen = windows.observe("r", "k", member, i as i64, 1_000, 3).await;
            fired.push(seen.fired);
        }
        // a, b, a (still two), c: the third distinct fires; d and e do not again.
        assert_eq!(fired, [false, false, false, true, false, false]);
        let seen = windows.observe("r", "k", "f", 2_000, 1_000, 3).await;
        assert!(
            !seen.fired,
            "the window forgot everything before 1000: one member"
        );
        for (i, member) in ["g", "h"].iter().enumerate() {
            let seen = windows
                .observe("r", "k", member, 2_001 + i as i64, 1_000, 3)
                .await;
            assert_eq!(seen.fired, i == 1);
            if seen.fired {
                assert_eq!((seen.count, seen.first_seen_ms), (3, 2_000));
            }
        }
    }

    /// A flood within one millisecond holds no more than the threshold, and fires once.
    #[tokio::test]
    async fn members_seen_in_the_same_millisecond_stay_bounded() {
        let windows = Windows::new(None, "t:");
        let mut fired = 0;
        for i in 0..1_000 {
            let seen = windows.observe("r", "k", &i.to_string(), 7, 1_000, 3).await;
            assert!(seen.count <= 3, "{seen:?}");
            fired += usize::from(seen.fired);
        }
        assert_eq!(fired, 1);
        let memory = windows.memory();
        assert!(memory.sets.values().all(|(members, _)| members.len() <= 3));
    }

    #[tokio::test]
    async fn windows_count_apart_and_the_trailing_ones_add_up() {
        let windows = Windows::new(None, "t:");
        for _ in 0..3 {
            windows.count_in_window("spike", 500, 1_000, 60).await;
        }
        assert_eq!(
            windows.count_in_window("spike", 1_500, 1_000, 60).await,
            (1, 3)
        );
        assert_eq!(
            windows.count_in_window("spike", 61_500, 1_000, 60).await,
            (1, 1)
        );
    }
}
