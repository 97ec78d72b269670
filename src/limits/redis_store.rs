//! The Redis key store: each operation is one atomic round trip (a Lua script or a single
//! command) with a timeout, and every key it writes has a TTL. Time comes from the caller's
//! clock, so every instance and the in-process fallback apply the same arithmetic.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::keystore::{Failure, Gcra, KeyStore, LockPolicy};

const GCRA_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, 0, new_tat - now}
";

/// Counts a failure unless a lock is running; starts (or extends) the lock at the threshold.
const FAILURE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local threshold = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local memory = tonumber(ARGV[5])
local grows = ARGV[6] == '1'
local until_ms = tonumber(redis.call('GET', KEYS[2]) or 0)
if until_ms > now then
  return {-1, until_ms - now}
end
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], memory)
if count < threshold then
  return {count, 0}
end
local lock = base
if grows then
  local doublings = count - threshold
  if doublings > 20 then doublings = 20 end
  lock = base * (2 ^ doublings)
  if lock > max then lock = max end
end
lock = math.floor(lock)
redis.call('SET', KEYS[2], now + lock, 'PX', lock)
return {count, lock}
";

pub struct RedisStore {
    manager: ConnectionManager,
    timeout: Duration,
    gcra: Script,
    failure: Script,
}

impl RedisStore {
    /// Connects lazily: creating the store never waits on the network.
    pub fn new(client: redis::Client, timeout: Duration) -> anyhow::Result<Self> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            manager,
            timeout,
            gcra: Script::new(GCRA_SCRIPT),
            failure: Script::new(FAILURE_SCRIPT),
        })
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!("redis did not answer within {:?}", self.timeout),
        }
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.manager.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    pub async fn set_px(&self, key: &str, value: i64, ttl_ms: i64) -> anyhow::Result<()> {
        let mut conn = self.manager.clone();
        self.bounded(conn.pset_ex::<_, _, ()>(key, value, ttl_ms.max(1) as u64))
            .await
    }

    /// Values of `keys` (missing ones as `None`) in one round trip.
    pub async fn get_many(&self, keys: &[String]) -> anyhow::Result<Vec<Option<i64>>> {
        let mut conn = self.manager.clone();
        self.bounded(redis::cmd("MGET").arg(keys).query_async(&mut conn))
            .await
    }

    /// Stores `value` under `key` for `ttl_ms` unless `key` exists; true when it was stored.
    /// (Single-use sign-in state and replay markers.)
    pub async fn set_nx_px(&self, key: &str, value: &str, ttl_ms: i64) -> anyhow::Result<bool> {
        let mut conn = self.manager.clone();
        let stored: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(stored.is_some())
    }

    /// Reads and deletes `key` in one atomic step, so a value can be taken once only.
    pub async fn take(&self, key: &str) -> anyhow::Result<Option<String>> {
        // A script rather than GETDEL, which Redis before 6.2 lacks.
        let script = Script::new(
            "local v = redis.call('GET', KEYS[1]) if v then redis.call('DEL', KEYS[1]) end return v",
        );
        let mut conn = self.manager.clone();
        self.bounded(script.key(key).invoke_async(&mut conn)).await
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn gcra(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        window_ms: i64,
    ) -> anyhow::Result<Gcra> {
        let mut conn = self.manager.clone();
        let (allowed, retry, used): (i64, i64, i64) = self
            .bounded(
                self.gcra
                    .key(key)
                    .arg(now_ms)
                    .arg(interval_ms)
                    .arg(window_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(Gcra {
            allowed: allowed == 1,
            retry_after_ms: retry,
            used_ms: used,
        })
    }

    async fn record_failure(
        &self,
        fail_key: &str,
        lock_key: &str,
        now_ms: i64,
        policy: LockPolicy,
    ) -> anyhow::Result<Failure> {
        let mut conn = self.manager.clone();
        let (count, lock): (i64, i64) = self
            .bounded(
                self.failure
                    .key(fail_key)
                    .key(lock_key)
                    .arg(now_ms)
                    .arg(policy.threshold)
                    .arg(policy.base_ms)
                    .arg(policy.max_ms)
                    .arg(policy.memory_ms)
                    .arg(if policy.grows { "1" } else { "0" })
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(Failure {
            count: (count >= 0).then_some(count),
            lock_ms: lock,
        })
    }

    async fn lock_remaining(&self, lock_key: &str, now_ms: i64) -> anyhow::Result<i64> {
        let mut conn = self.manager.clone();
        let until: Option<i64> = self.bounded(conn.get(lock_key)).await?;
        Ok(until.map_or(0, |u| (u - now_ms).max(0)))
    }

    async fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.manager.clone();
        self.bounded(conn.del::<_, ()>(keys)).await
    }

    async fn locks(&self, prefix: &str, now_ms: i64) -> anyhow::Result<Vec<(String, i64)>> {
        let mut conn = self.manager.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        // Bounded: an admin listing never walks more than 100 pages.
        for _ in 0..100 {
            let (next, batch): (u64, Vec<String>) = self
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
        let values = self.get_many(&keys).await?;
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
