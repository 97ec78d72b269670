//! The limits' key store in Redis, over the shared link: each operation is one atomic round trip
//! (a Lua script or a single command) with a timeout, and every key it writes has a TTL. Time
//! comes from the caller's clock, so every instance and the in-process fallback apply the same
//! arithmetic.

use std::sync::Arc;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::keystore::{Admission, Failure, FailureKeys, KeyStore, Verdict};
use crate::redis_link::RedisLink;

/// [`Admission`] in one round trip. KEYS: the block (if any), one per rate, the lock (if any).
/// ARGV: now, has block, number of rates, has lock, then interval and window per rate.
/// Returns `{0, 0, locked ms}` (admitted), `{1, 0, remaining ms}` (blocked) or
/// `{2, rate index, retry after ms}` (limited).
const ADMIT_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local nrates = tonumber(ARGV[3])
local k = 1
if ARGV[2] == '1' then
  local until_ms = tonumber(redis.call('GET', KEYS[1]) or 0)
  if until_ms > now then return {1, 0, until_ms - now} end
  k = 2
end
for i = 1, nrates do
  local interval = tonumber(ARGV[3 + 2 * i])
  local window = tonumber(ARGV[4 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[k]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - window
  if now < allow_at then return {2, i - 1, allow_at - now} end
  redis.call('SET', KEYS[k], new_tat, 'PX', new_tat - now)
  k = k + 1
end
local locked = 0
if ARGV[4] == '1' then
  local until_ms = tonumber(redis.call('GET', KEYS[k]) or 0)
  if until_ms > now then locked = until_ms - now end
end
return {0, 0, locked}
";

/// Counts a failure against each (failure counter, lock) pair of KEYS unless its lock is running,
/// and starts (or extends) the lock at the threshold. ARGV: now, then per pair threshold, base,
/// max, memory, grows. Returns count (-1 when a lock was running) and lock ms per pair.
const FAILURES_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local fail_key = KEYS[2 * i - 1]
  local lock_key = KEYS[2 * i]
  local a = 1 + 5 * (i - 1)
  local threshold = tonumber(ARGV[a + 1])
  local base = tonumber(ARGV[a + 2])
  local max = tonumber(ARGV[a + 3])
  local memory = tonumber(ARGV[a + 4])
  local grows = ARGV[a + 5] == '1'
  local until_ms = tonumber(redis.call('GET', lock_key) or 0)
  if until_ms > now then
    out[#out + 1] = -1
    out[#out + 1] = until_ms - now
  else
    local count = redis.call('INCR', fail_key)
    redis.call('PEXPIRE', fail_key, memory)
    local lock = 0
    if count >= threshold then
      lock = base
      if grows then
        local doublings = count - threshold
        if doublings > 20 then doublings = 20 end
        lock = base * (2 ^ doublings)
        if lock > max then lock = max end
      end
      lock = math.floor(lock)
      if lock > 0 then redis.call('SET', lock_key, now + lock, 'PX', lock) end
    end
    out[#out + 1] = count
    out[#out + 1] = lock
  end
end
return out
";

/// Sets KEYS[1] to ARGV[1] (a lock's end, ms) for ARGV[2] ms unless it holds a later end
/// already: a lock copied from an instance's in-process store never shortens one in Redis.
const EXTEND_LOCK_SCRIPT: &str = r"
local until_ms = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or 0) < until_ms then
  redis.call('SET', KEYS[1], until_ms, 'PX', ARGV[2])
end
return 1
";

/// The rate-limit and lockout scripts over the shared Redis link, loaded once.
#[derive(Clone)]
pub struct RedisKeys {
    pub link: Arc<RedisLink>,
    admit: Script,
    failures: Script,
}

impl RedisKeys {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self {
            link,
            admit: Script::new(ADMIT_SCRIPT),
            failures: Script::new(FAILURES_SCRIPT),
        }
    }

    /// Makes the lock `key` run until `until_ms` at least (it has `ttl_ms` left).
    pub async fn extend_lock(&self, key: &str, until_ms: i64, ttl_ms: i64) -> anyhow::Result<()> {
        let store = self.link.store();
        let mut conn = store.connection();
        let _: i64 = store
            .bounded(
                Script::new(EXTEND_LOCK_SCRIPT)
                    .key(key)
                    .arg(until_ms)
                    .arg(ttl_ms.max(1))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for RedisKeys {
    async fn admit(&self, admission: &Admission, now_ms: i64) -> anyhow::Result<Verdict> {
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .arg(now_ms)
            .arg(i64::from(admission.block.is_some()))
            .arg(admission.rates.len())
            .arg(i64::from(admission.lock.is_some()));
        if let Some(block) = &admission.block {
            invocation.key(block);
        }
        for rate in &admission.rates {
            invocation
                .key(&rate.key)
                .arg(rate.interval_ms)
                .arg(rate.window_ms);
        }
        if let Some(lock) = &admission.lock {
            invocation.key(lock);
        }
        let store = self.link.store();
        let mut conn = store.connection();
        let (code, index, ms): (i64, i64, i64) =
            store.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(match code {
            0 => Verdict::Admitted { locked_ms: ms },
            1 => Verdict::Blocked { remaining_ms: ms },
            _ => Verdict::Limited {
                index: usize::try_from(index).unwrap_or_default(),
                retry_after_ms: ms,
            },
        })
    }

    async fn record_failures(
        &self,
        entries: &[FailureKeys],
        now_ms: i64,
    ) -> anyhow::Result<Vec<Failure>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.failures.prepare_invoke();
        invocation.arg(now_ms);
        for e in entries {
            let p = e.policy;
            invocation
                .key(&e.fail_key)
                .key(&e.lock_key)
                .arg(p.threshold)
                .arg(p.base_ms)
                .arg(p.max_ms)
                .arg(p.memory_ms)
                .arg(i64::from(p.grows));
        }
        let store = self.link.store();
        let mut conn = store.connection();
        let flat: Vec<i64> = store.bounded(invocation.invoke_async(&mut conn)).await?;
        anyhow::ensure!(
            flat.len() == entries.len() * 2,
            "failure script answered {} values for {} entries",
            flat.len(),
            entries.len()
        );
        Ok(flat
            .chunks_exact(2)
            .map(|pair| Failure {
                count: (pair[0] >= 0).then_some(pair[0]),
                lock_ms: pair[1],
            })
            .collect())
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let store = self.link.store();
        let mut conn = store.connection();
        store.bounded(conn.del::<_, ()>(keys)).await
    }

    async fn extend_lock(&self, key: &str, until_ms: i64, now_ms: i64) -> anyhow::Result<()> {
        RedisKeys::extend_lock(self, key, until_ms, until_ms - now_ms).await
    }

    async fn locks(&self, prefix: &str, now_ms: i64) -> anyhow::Result<Vec<(String, i64)>> {
        let store = self.link.store();
        let mut conn = store.connection();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        // Bounded: an admin listing never walks more than 100 pages.
        for _ in 0..100 {
            let (next, batch): (u64, Vec<String>) = store
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = store.get_many(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| {
                v.filter(|until| *until > now_ms)
                    .map(|until| (k, until - now_ms))
            })
            .collect())
    }
}
