//! Revocation state that access tokens are checked against on every authenticated request: denied
//! token ids (`jti`, on logout), denied sessions (`sid`, when a session is revoked from another
//! device) and a per-user "tokens valid after" time (logout-all). Entries live only as long as an
//! access token can, so the state stays small. This is the in-process implementation; the Redis
//! one shares the same state between instances.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::auth::tokens::AccessClaims;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Session,
    /// Issued before the user's last logout-all.
    AllSessions,
}

impl Revoked {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token_revoked",
            Self::Session => "session_revoked",
            Self::AllSessions => "all_sessions_revoked",
        }
    }
}

#[async_trait]
pub trait RevocationList: Send + Sync + 'static {
    /// `ok` in health, or why not (`error`).
    fn backend(&self) -> &'static str;
    async fn revoke_token(&self, jti: &str, until: DateTime<Utc>) -> anyhow::Result<()>;
    async fn revoke_session(&self, sid: &str, until: DateTime<Utc>) -> anyhow::Result<()>;
    async fn revoke_user_tokens_before(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<()>;
    /// One look-up for all three checks.
    async fn check(&self, claims: &AccessClaims) -> anyhow::Result<Option<Revoked>>;
}

/// Entries are pruned when the map grows past this many, so memory is bounded by the number of
/// revocations within one access-token lifetime.
const PRUNE_AT: usize = 4096;

#[derive(Default)]
pub struct InProcessRevocations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// key → (value, expiry)
    entries: HashMap<String, (i64, DateTime<Utc>)>,
    next_prune: usize,
}

impl InProcessRevocations {
    /// Live entries as (key, value, expiry), for copying to Redis after an outage.
    fn entries(&self, now: DateTime<Utc>) -> Vec<(String, i64, DateTime<Utc>)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .entries
            .iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(k, (v, exp))| (k.clone(), *v, *exp))
            .collect()
    }

    fn put(&self, key: String, value: i64, until: DateTime<Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        if state.entries.len() >= state.next_prune.max(PRUNE_AT) {
            state.entries.retain(|_, (_, exp)| *exp > now);
            state.next_prune = state.entries.len() * 2;
        }
        let entry = state.entries.entry(key).or_insert((value, until));
        entry.0 = entry.0.max(value);
        entry.1 = entry.1.max(until);
    }

    fn get(state: &State, key: &str, now: DateTime<Utc>) -> Option<i64> {
        state
            .entries
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| *v)
    }
}

#[async_trait]
impl RevocationList for InProcessRevocations {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    async fn revoke_token(&self, jti: &str, until: DateTime<Utc>) -> anyhow::Result<()> {
        self.put(format!("jti:{jti}"), 1, until);
        Ok(())
    }

    async fn revoke_session(&self, sid: &str, until: DateTime<Utc>) -> anyhow::Result<()> {
        self.put(format!("sid:{sid}"), 1, until);
        Ok(())
    }

    async fn revoke_user_tokens_before(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.put(format!("user:{user_id}"), at.timestamp_millis(), until);
        Ok(())
    }

    async fn check(&self, claims: &AccessClaims) -> anyhow::Result<Option<Revoked>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        if Self::get(&state, &format!("jti:{}", claims.jti), now).is_some() {
            return Ok(Some(Revoked::Token));
        }
        if Self::get(&state, &format!("sid:{}", claims.sid), now).is_some() {
            return Ok(Some(Revoked::Session));
        }
        if let Some(after_ms) = Self::get(&state, &format!("user:{}", claims.sub), now)
            && claims.issued_at_ms() < after_ms
        {
            return Ok(Some(Revoked::AllSessions));
        }
        Ok(None)
    }
}

/// Revocations shared through Redis, with the in-process list always written too: a logout
/// during a Redis outage still takes effect on this instance, and the entries written meanwhile
/// are copied to Redis once it is back, so the other instances learn of them.
pub struct SharedRevocations {
    local: InProcessRevocations,
    redis: std::sync::Arc<crate::limits::RedisLink>,
    prefix: String,
    /// Set when a write could not reach Redis; cleared once the local list has been copied over.
    behind: std::sync::atomic::AtomicBool,
}

impl SharedRevocations {
    pub fn new(redis: std::sync::Arc<crate::limits::RedisLink>, prefix: &str) -> Self {
        Self {
            local: InProcessRevocations::default(),
            redis,
            prefix: format!("{prefix}rv:"),
            behind: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn put(&self, key: String, value: i64, until: DateTime<Utc>) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        self.local.put(key.clone(), value, until);
        if !self.redis.is_up() {
            self.behind.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if self.behind.swap(false, Ordering::Relaxed) {
            self.catch_up().await;
        }
        let ttl = (until - Utc::now()).num_milliseconds();
        if let Err(e) = self
            .redis
            .store()
            .set_px(&format!("{}{key}", self.prefix), value, ttl)
            .await
        {
            self.redis.failed(&e);
            self.behind.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies every live local entry to Redis (after an outage).
    async fn catch_up(&self) {
        let now = Utc::now();
        for (key, value, until) in self.local.entries(now) {
            let ttl = (until - now).num_milliseconds();
            if let Err(e) = self
                .redis
                .store()
                .set_px(&format!("{}{key}", self.prefix), value, ttl)
                .await
            {
                self.redis.failed(&e);
                self.behind
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    }
}

#[async_trait]
impl RevocationList for SharedRevocations {
    fn backend(&self) -> &'static str {
        if self.redis.is_up() {
            "redis"
        } else {
            "in-process"
        }
    }

    async fn revoke_token(&self, jti: &str, until: DateTime<Utc>) -> anyhow::Result<()> {
        self.put(format!("jti:{jti}"), 1, until).await
    }

    async fn revoke_session(&self, sid: &str, until: DateTime<Utc>) -> anyhow::Result<()> {
        self.put(format!("sid:{sid}"), 1, until).await
    }

    async fn revoke_user_tokens_before(
        &self,
        user_id: &str,
        at: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.put(format!("user:{user_id}"), at.timestamp_millis(), until)
            .await
    }

    async fn check(&self, claims: &AccessClaims) -> anyhow::Result<Option<Revoked>> {
        if let Some(revoked) = self.local.check(claims).await? {
            return Ok(Some(revoked));
        }
        if !self.redis.is_up() {
            return Ok(None);
        }
        let keys = [
            format!("{}jti:{}", self.prefix, claims.jti),
            format!("{}sid:{}", self.prefix, claims.sid),
            format!("{}user:{}", self.prefix, claims.sub),
        ];
        match self.redis.store().get_many(&keys).await {
            Ok(values) => Ok(revoked_from(
                values.first().copied().flatten(),
                values.get(1).copied().flatten(),
                values.get(2).copied().flatten(),
                claims,
            )),
            Err(e) => {
                // Fail to the local list, which every instance also writes: never fail open on
                // what this instance knows, never fail a request because Redis blinked.
                self.redis.failed(&e);
                Ok(None)
            }
        }
    }
}

fn revoked_from(
    jti: Option<i64>,
    sid: Option<i64>,
    user: Option<i64>,
    claims: &AccessClaims,
) -> Option<Revoked> {
    if jti.is_some() {
        Some(Revoked::Token)
    } else if sid.is_some() {
        Some(Revoked::Session)
    } else if user.is_some_and(|after_ms| claims.issued_at_ms() < after_ms) {
        Some(Revoked::AllSessions)
    } else {
        None
    }
}
