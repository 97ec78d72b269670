//! Revocation state that access tokens are checked against on every authenticated request: denied
//! token ids (`jti`, on logout), denied sessions (`sid`, when a session is revoked from another
//! device) and a per-user "tokens valid after" time (logout-all). Entries live only as long as an
//! access token can, so the state stays small. This is the in-process implementation; the Redis
//! one shares the same state between instances, and keeps a copy of it in memory while it can.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::auth::tokens::AccessClaims;
use crate::clock::Clock;
use crate::limits::pending::Pending;

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
    /// Whether checks are answered from an in-memory copy kept current from Redis (metrics).
    fn mirrored(&self) -> bool {
        false
    }
    /// Revocations made here that Redis does not have yet (metrics).
    fn waiting_for_redis(&self) -> usize {
        0
    }
}

/// Entries are pruned when the map grows past this many, so memory is bounded by the number of
/// revocations within one access-token lifetime.
const PRUNE_AT: usize = 4096;

pub struct InProcessRevocations {
    state: Mutex<State>,
    /// Entries end by this clock, the one tokens expire by.
    clock: Clock,
}

#[derive(Default)]
struct State {
    /// key → (value, expiry)
    entries: HashMap<String, (i64, DateTime<Utc>)>,
    next_prune: usize,
}

impl InProcessRevocations {
    pub fn new(clock: Clock) -> Self {
        Self {
            state: Mutex::default(),
            clock,
        }
    }

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
        let now = self.clock.now();
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
        let now = self.clock.now();
        // One key buffer for the three lookups: this runs on every authenticated request.
        let mut key = String::with_capacity(64);
        let mut get = |kind: &str, id: &dyn std::fmt::Display| {
            key.clear();
            let _ = write!(key, "{kind}:{id}");
            Self::get(&state, &key, now)
        };
        if get("jti", &claims.jti).is_some() {
            return Ok(Some(Revoked::Token));
        }
        if get("sid", &claims.sid).is_some() {
            return Ok(Some(Revoked::Session));
        }
        if let Some(revoked_at_ms) = get("user", &claims.sub)
            && claims.predates(revoked_at_ms)
        {
            return Ok(Some(Revoked::AllSessions));
        }
        Ok(None)
    }
}

/// Revocations shared through Redis, with the in-process list always written too: a logout
/// during a Redis outage still takes effect on this instance, and the entries written meanwhile
/// are copied to Redis (and published) as soon as it is back ([`SharedRevocations::replay`]), so
/// the other instances learn of them without waiting for another revocation. A revocation made
/// while that copy runs goes to Redis on its own, never waiting for the copy: Redis keeps the
/// larger of two writes of one key, so the order of the two does not matter.
///
/// Every write is also published on a channel. While [`SharedRevocations::mirror`] holds a
/// subscription to it (and has read what Redis held when it subscribed), the in-process list is a
/// complete copy and checks are answered from memory, without a round trip per request. Another
/// instance's revocation then takes effect here as soon as its message arrives (the time of one
/// pub/sub delivery, far inside the access-token lifetime docs/SECURITY.md D1 allows). Without the
/// subscription, every check asks Redis.
pub struct SharedRevocations {
    local: InProcessRevocations,
    redis: Arc<crate::redis_link::RedisLink>,
    prefix: String,
    channel: String,
    /// Revocations made here that Redis does not have yet, with their value and expiry. Past
    /// [`MAX_PENDING`] keys the copy after the outage is of every live revocation this instance
    /// holds (its own and those it heard of): more writes, none lost. Entries leave only once
    /// Redis has taken them, so an outage that comes back mid-copy loses nothing either.
    pending: Mutex<Pending<(i64, DateTime<Utc>)>>,
    /// True while the in-process list is a complete copy of Redis's (see `mirror`).
    mirrored: AtomicBool,
    /// Set once Redis has refused a publish, so that is logged once.
    publish_refused: AtomicBool,
}

/// A published revocation longer than this is not ours; it is ignored rather than stored.
const MAX_MESSAGE: usize = 512;

/// Keys (about 80 bytes each) kept for the copy after an outage before it copies everything.
const MAX_PENDING: usize = 100_000;

impl SharedRevocations {
    pub fn new(redis: Arc<crate::redis_link::RedisLink>, prefix: &str, clock: Clock) -> Self {
        Self {
            local: InProcessRevocations::new(clock),
            redis,
            prefix: format!("{prefix}rv:"),
            channel: format!("{prefix}revocations"),
            pending: Mutex::new(Pending::new(MAX_PENDING)),
            mirrored: AtomicBool::new(false),
            publish_refused: AtomicBool::new(false),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<(i64, DateTime<Utc>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a revocation here and in Redis, or here and in the list for Redis when Redis is
    /// unreachable. Never waits for the copy of an outage's revocations: a request publishes its
    /// own and nothing else.
    async fn put(&self, key: String, value: i64, until: DateTime<Utc>) -> anyhow::Result<()> {
        self.local.put(key.clone(), value, until);
        if !self.redis.is_up() {
            self.pending().add(key, (value, until));
            return Ok(());
        }
        if let Err(e) = self
            .publish(&key, value, until, self.local.clock.now())
            .await
        {
            self.redis.failed(&e);
            self.pending().add(key, (value, until));
        }
        Ok(())
    }

    /// Revocations made here that Redis does not have yet (metrics); "everything" counts as one
    /// per live local entry.
    pub fn waiting_for_redis(&self) -> usize {
        match self.pending().waiting() {
            (keys, true) => keys + self.local.entries(self.local.clock.now()).len(),
            (keys, false) => keys,
        }
    }

    /// Copies the revocations made during a Redis outage to Redis (and publishes them) each time
    /// the link's probe finds Redis back, until `stop`.
    pub async fn replay(&self, stop: CancellationToken) {
        let mut recoveries = self.redis.recoveries();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = recoveries.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if !self.pending().is_empty() {
                self.catch_up().await;
            }
        }
    }

    /// Stores one entry in Redis and tells the other instances' mirrors about it.
    async fn publish(
        &self,
        key: &str,
        value: i64,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let message = format!("{key}\n{value}\n{}", until.timestamp_millis());
        let published = self
            .redis
            .store()
            .raise_then_publish(
                &format!("{}{key}", self.prefix),
                value,
                (until - now).num_milliseconds(),
                &self.channel,
                &message,
            )
            .await?;
        if !published && !self.publish_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                channel = %self.channel,
                "Redis refused to publish on the revocation channel (an ACL without it?): revocations are stored, and instances without the channel check Redis on every request"
            );
        }
        Ok(())
    }

    /// Copies the pending revocations to Redis, each taken off the list once Redis has it (unless
    /// a newer value of it was recorded meanwhile, which waits for the next copy); stops at the
    /// first failure (the rest wait for the next recovery). Only [`SharedRevocations::replay`]
    /// runs it, one copy at a time.
    async fn catch_up(&self) {
        let now = self.local.clock.now();
        let snapshot = self.pending().snapshot();
        let mut entries = snapshot.entries.clone();
        if snapshot.everything {
            entries.extend(
                self.local
                    .entries(now)
                    .into_iter()
                    .map(|(key, value, until)| (key, (value, until))),
            );
        }
        let mut copied = 0;
        for (key, (value, until)) in entries {
            // Expired meanwhile: nothing left to copy.
            if until > now {
                if let Err(e) = self.publish(&key, value, until, now).await {
                    self.redis.failed(&e);
                    self.pending().copy_failed(&snapshot);
                    return;
                }
                copied += 1;
            }
            self.pending().copied(&key, (value, until));
        }
        if copied > 0 {
            tracing::info!(
                revocations = copied,
                "revocations made while Redis was unreachable are now in Redis"
            );
        }
    }

    /// Keeps the in-process list a complete copy of Redis's until `stop`: subscribes to the
    /// revocation channel, then reads every entry Redis holds (a write landing in between arrives
    /// both ways, and entries only ever add up), then applies each published one. When the
    /// subscription fails or stops answering a ping (every `every`), checks go back to Redis
    /// until it is established again.
    pub async fn mirror(&self, every: Duration, stop: CancellationToken) {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.follow(every, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    if self.mirrored.swap(false, Ordering::Relaxed) {
                        // It had been working: this is a new outage, retried from the start.
                        wait = Duration::from_millis(200);
                        tracing::warn!(
                            error = %e,
                            "revocation feed from Redis lost: checking Redis on every request until it is back"
                        );
                    } else {
                        tracing::debug!(error = %e, "revocation feed from Redis not established");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One subscription, from its start until it fails (`Err`) or `stop` (`Ok`).
    async fn follow(&self, every: Duration, stop: &CancellationToken) -> anyhow::Result<()> {
        use futures::StreamExt;
        let (mut sink, mut messages) = self.redis.subscribe(&self.channel).await?;
        let held = self.redis.store().scan_prefix(&self.prefix).await?;
        let now = self.local.clock.now();
        let entries = held.len();
        for (key, value, ttl_ms) in held {
            if let Some(key) = key.strip_prefix(&self.prefix) {
                let until = now + chrono::Duration::milliseconds(ttl_ms);
                self.local.put(key.to_owned(), value, until);
            }
        }
        self.mirrored.store(true, Ordering::Relaxed);
        tracing::info!(
            entries,
            "revocations mirrored from Redis: checks are answered in memory"
        );
        let timeout = self.redis.store().timeout();
        let mut ping = tokio::time::interval(every);
        ping.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.mirrored.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                message = messages.next() => match message {
                    Some(message) => self.apply(message.get_payload_bytes()),
                    None => anyhow::bail!("the subscription's connection closed"),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => anyhow::bail!("the subscription did not answer a ping within {timeout:?}"),
                    }
                }
            }
        }
    }

    /// Stores one published revocation (`key \n value \n until_ms`); anything else is ignored.
    fn apply(&self, payload: &[u8]) {
        let parsed = (payload.len() <= MAX_MESSAGE)
            .then(|| std::str::from_utf8(payload).ok())
            .flatten()
            .and_then(|text| {
                let mut parts = text.split('\n');
                let key = parts.next()?;
                let value = parts.next()?.parse::<i64>().ok()?;
                let until = DateTime::from_timestamp_millis(parts.next()?.parse().ok()?)?;
                let known = ["jti:", "sid:", "user:"]
                    .iter()
                    .any(|kind| key.starts_with(kind));
                (known && parts.next().is_none()).then(|| (key.to_owned(), value, until))
            });
        match parsed {
            Some((key, value, until)) => self.local.put(key, value, until),
            None => tracing::warn!("ignored a malformed message on the revocation channel"),
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
        if self.mirrored.load(Ordering::Relaxed) || !self.redis.is_up() {
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

    fn mirrored(&self) -> bool {
        self.mirrored.load(Ordering::Relaxed)
    }

    fn waiting_for_redis(&self) -> usize {
        SharedRevocations::waiting_for_redis(self)
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
    } else if user.is_some_and(|revoked_at_ms| claims.predates(revoked_at_ms)) {
        Some(Revoked::AllSessions)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_claims() -> AccessClaims {
        AccessClaims {
            sub: "user-1".into(),
            id: "user-1".into(),
            email: "a@example.com".into(),
            user_type: "client".into(),
            token_type: "access".into(),
            sid: uuid::Uuid::now_v7(),
            jti: uuid::Uuid::now_v7(),
            iat: Utc::now().timestamp(),
            exp: Utc::now().timestamp() + 900,
            nbf: None,
            iss: "flux-auth".into(),
            aud: "flux".into(),
        }
    }

    fn shared() -> SharedRevocations {
        // Never connected: `apply` only touches the in-process copy.
        let link = crate::redis_link::RedisLink::new(
            &secrecy::SecretString::from("redis://127.0.0.1:1"),
            Duration::from_millis(50),
            Default::default(),
        )
        .unwrap();
        SharedRevocations::new(Arc::new(link), "t:", Clock::default())
    }

    async fn local_verdict(list: &SharedRevocations, claims: &AccessClaims) -> Option<Revoked> {
        list.local.check(claims).await.unwrap()
    }

    #[tokio::test]
    async fn published_revocations_are_applied_and_anything_else_is_ignored() {
        let list = shared();
        let claims = fresh_claims();
        let until = (Utc::now() + chrono::Duration::minutes(5)).timestamp_millis();
        for junk in [
            format!("jti:{}\n1", claims.jti),
            format!("jti:{}\nx\n{until}", claims.jti),
            format!("jti:{}\n1\n{until}\nextra", claims.jti),
            format!("other:{}\n1\n{until}", claims.jti),
            format!("jti:{}{}\n1\n{until}", claims.jti, "x".repeat(MAX_MESSAGE)),
        ] {
            list.apply(junk.as_bytes());
            assert_eq!(local_verdict(&list, &claims).await, None, "{junk:?}");
        }
        list.apply(&[0xff, 0xfe]);

        // An expired entry is stored but never counts.
        let past = (Utc::now() - chrono::Duration::seconds(1)).timestamp_millis();
        list.apply(format!("jti:{}\n1\n{past}", claims.jti).as_bytes());
        assert_eq!(local_verdict(&list, &claims).await, None);

        list.apply(format!("sid:{}\n1\n{until}", claims.sid).as_bytes());
        assert_eq!(local_verdict(&list, &claims).await, Some(Revoked::Session));
        list.apply(format!("jti:{}\n1\n{until}", claims.jti).as_bytes());
        assert_eq!(local_verdict(&list, &claims).await, Some(Revoked::Token));

        // Logout-all: tokens issued before the time, or in its millisecond, are revoked; later
        // ones are not.
        let other = fresh_claims();
        let before = other.issued_at_ms() - 1;
        list.apply(format!("user:user-1\n{before}\n{until}").as_bytes());
        assert_eq!(local_verdict(&list, &other).await, None);
        let same = other.issued_at_ms();
        list.apply(format!("user:user-1\n{same}\n{until}").as_bytes());
        assert_eq!(
            local_verdict(&list, &other).await,
            Some(Revoked::AllSessions),
            "a token from the logout-all's own millisecond"
        );
        let after = other.issued_at_ms() + 1;
        list.apply(format!("user:user-1\n{after}\n{until}").as_bytes());
        assert_eq!(
            local_verdict(&list, &other).await,
            Some(Revoked::AllSessions)
        );
    }
}
