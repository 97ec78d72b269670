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
