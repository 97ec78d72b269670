//! The Redis key store: each operation is one atomic round trip (a Lua script or a single
//! command) with a timeout, and every key it writes has a TTL. Time comes from the caller's
//! clock, so every instance and the in-process fallback apply the same arithmetic.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::keystore::{Admission, Failure, FailureKeys, KeyStore, Verdict};

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

/// Raises KEYS[1] to ARGV[1] and its time to live to ARGV[2] ms, keeping whichever of each is
/// larger (a revocation only ever grows: a later logout-all cutoff, a later expiry), then
/// publishes ARGV[4] on the channel ARGV[3]. Returns 1 if published, 0 if Redis refused to (an ACL
/// without the channel): the value is stored either way. Two instances, or a copy after an outage
/// and a new revocation, writing one key in either order leave the larger value.
const RAISE_THEN_PUBLISH_SCRIPT: &str = r"
local value = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local held = redis.call('GET', KEYS[1])
if held then
  held = tonumber(held)
  if held and held > value then value = held end
  local left = redis.call('PTTL', KEYS[1])
  if left > ttl then ttl = left end
end
redis.call('SET', KEYS[1], value, 'PX', ttl)
local published = redis.pcall('PUBLISH', ARGV[3], ARGV[4])
if type(published) == 'table' and published.err then return 0 end
return 1
";

pub struct RedisStore {
    manager: ConnectionManager,
    timeout: Duration,
    admit: Script,
    failures: Script,
    raise_then_publish: Script,
}

/// `text` as a literal inside a SCAN/KEYS glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
            admit: Script::new(ADMIT_SCRIPT),
            failures: Script::new(FAILURES_SCRIPT),
            raise_then_publish: Script::new(RAISE_THEN_PUBLISH_SCRIPT),
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

    /// How long one operation may take before Redis counts as down.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.manager.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Raises `key` to `value` for `ttl_ms` at least (a larger value or a longer time to live
    /// already there is kept), then publishes `message` on `channel`, in one atomic round trip
    /// (see [`RAISE_THEN_PUBLISH_SCRIPT`]). In that order, a subscriber that reads the key space
    /// after subscribing misses no write: one it does not read was published after it
    /// subscribed. Returns whether the message was published; the value is stored either way
    /// (an ACL may forbid the channel).
    pub async fn raise_then_publish(
        &self,
        key: &str,
        value: i64,
        ttl_ms: i64,
        channel: &str,
        message: &str,
    ) -> anyhow::Result<bool> {
        let mut conn = self.manager.clone();
        let published: i64 = self
            .bounded(
                self.raise_then_publish
                    .key(key)
                    .arg(value)
                    .arg(ttl_ms.max(1))
                    .arg(channel)
                    .arg(message)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(published == 1)
    }

    /// Every key matching `prefix*` with its integer value and the milliseconds it has left;
    /// keys that are gone, not integers or without an expiry are left out. SCAN walks the key
    /// space in small steps, so Redis never blocks on it.
    pub async fn scan_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, i64, i64)>> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut conn = self.manager.clone();
        let mut cursor: u64 = 0;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.get(key).pttl(key);
                }
                let values: Vec<(Option<String>, i64)> =
                    self.bounded(pipe.query_async(&mut conn)).await?;
                for (key, (value, ttl)) in keys.into_iter().zip(values) {
                    if let Some(value) = value.and_then(|v| v.parse::<i64>().ok())
                        && ttl > 0
                    {
                        found.push((key, value, ttl));
                    }
                }
            }
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
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

    /// Makes the lock `key` run until `until_ms` at least (it has `ttl_ms` left).
    pub async fn extend_lock(&self, key: &str, until_ms: i64, ttl_ms: i64) -> anyhow::Result<()> {
        let mut conn = self.manager.clone();
        let _: i64 = self
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
        let mut conn = self.manager.clone();
        let (code, index, ms): (i64, i64, i64) =
            self.bounded(invocation.invoke_async(&mut conn)).await?;
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
        let mut conn = self.manager.clone();
        let flat: Vec<i64> = self.bounded(invocation.invoke_async(&mut conn)).await?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_itself_only_inside_a_glob() {
        assert_eq!(super::glob_escape("flux-auth:rv:"), "flux-auth:rv:");
        assert_eq!(super::glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }
}
