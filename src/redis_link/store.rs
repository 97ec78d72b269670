//! Redis commands with a timeout each: one round trip per operation (a Lua script or a single
//! command), for the components that keep shared state in Redis.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

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

/// Commands over one shared connection, each bounded by the same timeout.
pub struct RedisStore {
    manager: ConnectionManager,
    timeout: Duration,
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
            raise_then_publish: Script::new(RAISE_THEN_PUBLISH_SCRIPT),
        })
    }

    /// A connection (a cheap handle to the shared one, reconnecting by itself).
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// `op`, or an error once it has taken longer than the timeout.
    pub async fn bounded<T>(
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

    /// Whether `key` exists, whatever its value.
    pub async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        let mut conn = self.manager.clone();
        let found: i64 = self
            .bounded(redis::cmd("EXISTS").arg(key).query_async(&mut conn))
            .await?;
        Ok(found > 0)
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_itself_only_inside_a_glob() {
        assert_eq!(super::glob_escape("flux-auth:rv:"), "flux-auth:rv:");
        assert_eq!(super::glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }
}
