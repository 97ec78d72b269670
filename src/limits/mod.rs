//! Abuse protection: rate limits (GCRA per IP, per IP+account, per route), brute-force lockout
//! per account (5 failures, then 30 s doubling to 15 min) and per IP (password spraying).
//!
//! State lives in Redis when `REDIS_URL` is set, so every instance behind a load balancer shares
//! it; when Redis is absent or down the same rules run in-process (never unlimited), health says
//! `redis: error`, and everything moves back to Redis by itself when it answers again. Lockouts
//! and address blocks started in-process meanwhile are copied to Redis then
//! ([`Limits::replay`]), so they hold on every instance; the in-process counters of failures and
//! of rate limits are not (a fresh window starts in Redis).

pub mod keystore;
pub mod memory;
pub mod pending;
pub mod redis_store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keystore::{Admission, Failure, FailureKeys, KeyStore, LockPolicy, Rate, Verdict};
use memory::MemoryStore;
use pending::Pending;
use redis_store::RedisKeys;

use crate::clock::Clock;
use crate::config::{Settings, Switch};
use crate::redis_link::RedisLink;

/// One limit of docs/API.md: how many requests per window, for which subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    LoginPerIp,
    LoginPerAccount,
    SignupPerIp,
    RefreshPerIp,
    RefreshPerSession,
    /// Refused bearer tokens per address; a valid token is never counted.
    BearerFailurePerIp,
    /// Forgot-password requests per address.
    ForgotPasswordPerIp,
    /// Resend-verification requests per address.
    ResendVerificationPerIp,
    /// Mails asked for one account (per route); over it the request is answered alike, unmailed.
    MailPerAccount,
    /// Verification mails to one account: one a minute.
    VerificationMailGap,
    /// Reset-password and verify-email requests per address.
    OneTimeTokenPerIp,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Self::LoginPerIp => "login_ip",
            Self::LoginPerAccount => "login_account",
            Self::SignupPerIp => "signup_ip",
            Self::RefreshPerIp => "refresh_ip",
            Self::RefreshPerSession => "refresh_session",
            Self::BearerFailurePerIp => "bearer_failure_ip",
            Self::ForgotPasswordPerIp => "forgot_password_ip",
            Self::ResendVerificationPerIp => "resend_verification_ip",
            Self::MailPerAccount => "mail_account",
            Self::VerificationMailGap => "verification_mail_gap",
            Self::OneTimeTokenPerIp => "one_time_token_ip",
        }
    }
}

/// A request over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: Limit,
    pub max: u32,
    pub window_secs: u64,
    pub retry_after_secs: u64,
}

/// Why a request is refused before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is blocked for password spraying, for this long.
    IpBlocked(Duration),
    Exceeded(Exceeded),
}

/// The failure counters after one failed login.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailureReport {
    /// The account's count (None when a lock was running) and the lock this failure started.
    pub account: Option<Failure>,
    pub ip: Option<Failure>,
    pub account_threshold: i64,
    pub ip_threshold: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `account`, `ip` (every login refused) or `signup` (the address's signups refused).
    pub kind: &'static str,
    pub subject: String,
    pub expires_in_secs: u64,
}

struct Rules {
    login_per_ip: (u32, u64),
    login_per_account: (u32, u64),
    signup_per_ip: (u32, u64),
    refresh_per_ip: (u32, u64),
    refresh_per_session: (u32, u64),
    bearer_failure_per_ip: (u32, u64),
    forgot_password_per_ip: (u32, u64),
    resend_verification_per_ip: (u32, u64),
    mail_per_account: (u32, u64),
    one_time_token_per_ip: (u32, u64),
    account_lock: LockPolicy,
    ip_lock: LockPolicy,
}

pub struct Limits {
    enabled: bool,
    redis: Option<RedisKeys>,
    memory: MemoryStore,
    /// Locks started in-process while Redis was away (key and end in ms), waiting to be copied
    /// to it. Past [`MAX_PENDING_LOCKS`] the copy is of every live lock the in-process store
    /// holds (bounded by its own size): more writes, none lost. A lock leaves only once Redis has
    /// it (or it is lifted), so Redis failing again mid-copy loses nothing.
    pending: std::sync::Mutex<Pending<i64>>,
    clock: Clock,
    prefix: String,
    rules: Rules,
}

const MAX_PENDING_LOCKS: usize = 100_000;

/// The kinds of lock the dashboard lists and lifts: an account's lockout, an address's block
/// (its logins), an address's signup block.
pub const BLOCK_KINDS: [&str; 3] = ["account", "ip", "signup"];

/// Limits IPv6 clients per /64 (one customer's allocation), IPv4 per address.
pub fn ip_subject(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Runs a key-store operation on Redis when it is up, else (or when it fails) in-process.
macro_rules! on_backend {
    ($self:ident, |$store:ident| $op:expr) => {{
        let mut result = None;
        if let Some(redis) = $self.redis.as_ref().filter(|r| r.link.is_up()) {
            let $store: &dyn KeyStore = redis;
            match $op.await {
                Ok(value) => result = Some(value),
                Err(e) => redis.link.failed(&e),
            }
        }
        match result {
            Some(value) => value,
            None => {
                let $store: &dyn KeyStore = &$self.memory;
                // The in-process store cannot fail.
                $op.await.unwrap_or_default()
            }
        }
    }};
}

impl Limits {
    pub fn new(settings: &Settings, redis: Option<Arc<RedisLink>>, clock: Clock) -> Self {
        let secs = |s: u64| (s as i64) * 1000;
        Self {
            enabled: settings.rate_limits == Switch::On,
            redis: redis.map(RedisKeys::new),
            memory: MemoryStore::default(),
            pending: std::sync::Mutex::new(Pending::new(MAX_PENDING_LOCKS)),
            clock,
            prefix: settings.redis_key_prefix.clone(),
            rules: Rules {
                login_per_ip: (settings.login_limit_per_ip, 60),
                login_per_account: (settings.login_limit_per_account, 60),
                signup_per_ip: (settings.signup_limit_per_ip, 3600),
                refresh_per_ip: (settings.refresh_limit_per_ip, 60),
                refresh_per_session: (settings.refresh_limit_per_session, 60),
                bearer_failure_per_ip: (settings.bearer_failure_limit_per_ip, 60),
                // docs/API.md: 5 an hour per address, 3 an hour per account, 20 token uses an
                // hour per address.
                forgot_password_per_ip: (5, 3600),
                resend_verification_per_ip: (5, 3600),
                mail_per_account: (3, 3600),
                one_time_token_per_ip: (20, 3600),
                account_lock: LockPolicy {
                    threshold: settings.lockout_threshold as i64,
                    base_ms: secs(settings.lockout_base_secs),
                    max_ms: secs(settings.lockout_max_secs),
                    memory_ms: 12 * 3600 * 1000,
                    grows: true,
                },
                ip_lock: LockPolicy {
                    threshold: settings.ip_failure_threshold as i64,
                    base_ms: secs(settings.ip_block_secs),
                    max_ms: secs(settings.ip_block_secs),
                    memory_ms: 10 * 60 * 1000,
                    grows: false,
                },
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn rule(&self, limit: Limit) -> (u32, u64) {
        match limit {
            Limit::LoginPerIp => self.rules.login_per_ip,
            Limit::LoginPerAccount => self.rules.login_per_account,
            Limit::SignupPerIp => self.rules.signup_per_ip,
            Limit::RefreshPerIp => self.rules.refresh_per_ip,
            Limit::RefreshPerSession => self.rules.refresh_per_session,
            Limit::BearerFailurePerIp => self.rules.bearer_failure_per_ip,
            Limit::ForgotPasswordPerIp => self.rules.forgot_password_per_ip,
            Limit::ResendVerificationPerIp => self.rules.resend_verification_per_ip,
            Limit::MailPerAccount => self.rules.mail_per_account,
            Limit::VerificationMailGap => (1, 60),
            Limit::OneTimeTokenPerIp => self.rules.one_time_token_per_ip,
        }
    }

    /// Counts one request of `subject` against `limit`.
    pub async fn check(&self, limit: Limit, subject: &str) -> Result<(), Exceeded> {
        match self.admit(None, &[(limit, subject)], None).await {
            Err(Refusal::Exceeded(exceeded)) => Err(exceeded),
            _ => Ok(()),
        }
    }

    /// Everything a login is checked against, in one round trip: the address's spraying block,
    /// the per-address limit, and — once the request names an account — the per-address+account
    /// limit; answers the account's remaining lockout, if any.
    pub async fn admit_login(
        &self,
        ip: &str,
        account: Option<&str>,
    ) -> Result<Option<Duration>, Refusal> {
        let pair = account.map(|a| format!("{ip}|{a}"));
        let mut rates = vec![(Limit::LoginPerIp, ip)];
        if let Some(pair) = &pair {
            rates.push((Limit::LoginPerAccount, pair));
        }
        let block = Some(self.ip_keys(ip).1);
        let lock = account.map(|a| self.account_keys(a).1);
        self.admit(block, &rates, lock).await
    }

    /// A signup from `ip`, in one round trip: the address's signup block, then its limit.
    pub async fn admit_signup(&self, ip: &str) -> Result<(), Refusal> {
        let block = Some(self.lock_key("signup", ip));
        self.admit(block, &[(Limit::SignupPerIp, ip)], None)
            .await
            .map(|_| ())
    }

    /// The account's remaining lockout, counting no request (the second step of a sign-in was
    /// counted by [`Limits::admit_login`] already).
    pub async fn account_locked(&self, account: &str) -> Option<Duration> {
        let lock = Some(self.account_keys(account).1);
        self.admit(None, &[], lock).await.ok().flatten()
    }

    /// The refresh limits in one round trip: per address, and per session once the token names
    /// one.
    pub async fn admit_refresh(&self, ip: &str, session: Option<&str>) -> Result<(), Exceeded> {
        let mut rates = vec![(Limit::RefreshPerIp, ip)];
        if let Some(session) = session {
            rates.push((Limit::RefreshPerSession, session));
        }
        match self.admit(None, &rates, None).await {
            Err(Refusal::Exceeded(exceeded)) => Err(exceeded),
            _ => Ok(()),
        }
    }

    async fn admit(
        &self,
        block: Option<String>,
        limits: &[(Limit, &str)],
        lock: Option<String>,
    ) -> Result<Option<Duration>, Refusal> {
        if !self.enabled {
            return Ok(None);
        }
        // A limit set to 0 is off; the rest are counted in the order given.
        let counted: Vec<(Limit, &str, u32, u64)> = limits
            .iter()
            .filter_map(|&(limit, subject)| {
                let (max, window_secs) = self.rule(limit);
                (max > 0).then_some((limit, subject, max, window_secs))
            })
            .collect();
        let admission = Admission {
            block,
            rates: counted
                .iter()
                .map(|&(limit, subject, max, window_secs)| {
                    let window_ms = (window_secs * 1000) as i64;
                    Rate {
                        key: format!("{}rl:{}:{subject}", self.prefix, limit.name()),
                        interval_ms: (window_ms / i64::from(max)).max(1),
                        window_ms,
                    }
                })
                .collect(),
            lock,
        };
        let now = self.clock.now_ms();
        match on_backend!(self, |store| store.admit(&admission, now)) {
            Verdict::Admitted { locked_ms } => {
                Ok((locked_ms > 0).then(|| Duration::from_millis(locked_ms as u64)))
            }
            Verdict::Blocked { remaining_ms } => Err(Refusal::IpBlocked(Duration::from_millis(
                remaining_ms.max(0) as u64,
            ))),
            Verdict::Limited {
                index,
                retry_after_ms,
            } => {
                // An index the backend was not sent would be a bug: refuse as the first limit.
                let (limit, _, max, window_secs) = counted
                    .get(index)
                    .or(counted.first())
                    .copied()
                    .unwrap_or((Limit::LoginPerIp, "", 0, 0));
                Err(Refusal::Exceeded(Exceeded {
                    limit,
                    max,
                    window_secs,
                    retry_after_secs: ceil_secs(retry_after_ms),
                }))
            }
        }
    }

    fn account_keys(&self, account: &str) -> (String, String) {
        (
            format!("{}fail:account:{account}", self.prefix),
            format!("{}lock:account:{account}", self.prefix),
        )
    }

    fn ip_keys(&self, ip: &str) -> (String, String) {
        (
            format!("{}fail:ip:{ip}", self.prefix),
            format!("{}lock:ip:{ip}", self.prefix),
        )
    }

    /// The lock of `kind` (one of [`BLOCK_KINDS`]) on `subject`.
    fn lock_key(&self, kind: &str, subject: &str) -> String {
        format!("{}lock:{kind}:{subject}", self.prefix)
    }

    /// Starts (or extends) a lock of `kind` (`ip`: every login from the address refused with a
    /// 429; `signup`: its signups) for `duration`, as the lockouts are: in Redis, or in-process
    /// while it is away and copied to it when it is back. Shown and lifted with the others
    /// ([`Self::blocked`], [`Self::unblock`]). Does nothing while limits are off.
    pub async fn block(&self, kind: &'static str, subject: &str, duration: Duration) {
        if !self.enabled || duration.is_zero() {
            return;
        }
        let key = self.lock_key(kind, subject);
        let now = self.clock.now_ms();
        let until = now + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2);
        let mut in_redis = false;
        if let Some(redis) = self.redis.as_ref().filter(|r| r.link.is_up()) {
            match KeyStore::extend_lock(redis, &key, until, now).await {
                Ok(()) => in_redis = true,
                Err(e) => redis.link.failed(&e),
            }
        }
        if !in_redis {
            let _ = self.memory.extend_lock(&key, until, now).await;
            if self.redis.is_some() {
                self.lock_pending(key, until);
            }
        }
    }

    /// Counts a failed login: against the account (only for accounts that exist, so failures on
    /// unknown emails leave nothing behind) and against the address.
    pub async fn login_failed(&self, account: Option<&str>, ip: &str) -> FailureReport {
        let mut report = FailureReport {
            account_threshold: self.rules.account_lock.threshold,
            ip_threshold: self.rules.ip_lock.threshold,
            ..FailureReport::default()
        };
        if !self.enabled {
            return report;
        }
        let mut entries = Vec::with_capacity(2);
        if let Some(account) = account {
            let (fail_key, lock_key) = self.account_keys(account);
            entries.push(FailureKeys {
                fail_key,
                lock_key,
                policy: self.rules.account_lock,
            });
        }
        let (fail_key, lock_key) = self.ip_keys(ip);
        entries.push(FailureKeys {
            fail_key,
            lock_key,
            policy: self.rules.ip_lock,
        });
        let now = self.clock.now_ms();
        // Both counters in one round trip.
        let mut in_redis = None;
        if let Some(redis) = self.redis.as_ref().filter(|r| r.link.is_up()) {
            match redis.record_failures(&entries, now).await {
                Ok(failures) => in_redis = Some(failures),
                Err(e) => redis.link.failed(&e),
            }
        }
        let mut failures: Vec<Failure> = match in_redis {
            Some(failures) => failures,
            None => {
                let failures = self
                    .memory
                    .record_failures(&entries, now)
                    .await
                    .unwrap_or_default();
                if self.redis.is_some() {
                    // Started here while Redis is away: copied to it once it is back.
                    for (entry, failure) in entries.iter().zip(&failures) {
                        if failure.count.is_some() && failure.lock_ms > 0 {
                            self.lock_pending(entry.lock_key.clone(), now + failure.lock_ms);
                        }
                    }
                }
                failures
            }
        };
        // A backend that answered the wrong number of results counted nothing we can report.
        failures.resize(entries.len(), Failure::default());
        report.ip = failures.pop();
        report.account = failures.pop().filter(|_| account.is_some());
        report
    }

    /// A successful login resets the account's consecutive failures.
    pub async fn login_succeeded(&self, account: &str) {
        self.clear_account(account).await;
    }

    pub async fn clear_account(&self, account: &str) {
        let (fail, lock) = self.account_keys(account);
        self.lifted(&lock).await;
        let keys = [fail, lock];
        on_backend!(self, |store| store.delete(&keys));
    }

    /// A lock is lifted: it must not come back from the in-process store, or from the copy to
    /// Redis after an outage.
    async fn lifted(&self, lock_key: &str) {
        if self.redis.is_some() {
            self.pending_locks().remove(lock_key);
            let _ = self.memory.delete(&[lock_key.to_owned()]).await;
        }
    }

    fn pending_locks(&self) -> std::sync::MutexGuard<'_, Pending<i64>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pending(&self, key: String, until_ms: i64) {
        self.pending_locks().add(key, until_ms);
    }

    /// Locks started in-process that Redis does not have yet (metrics).
    pub fn locks_waiting_for_redis(&self) -> usize {
        match self.pending_locks().waiting() {
            (_, true) => MAX_PENDING_LOCKS,
            (keys, false) => keys,
        }
    }

    /// Copies the locks started in-process during a Redis outage to Redis each time the link's
    /// probe finds it back, until `stop`. A lock is only ever extended there, never shortened.
    pub async fn replay(&self, stop: tokio_util::sync::CancellationToken) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let mut recoveries = redis.link.recoveries();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = recoveries.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            self.copy_locks(&redis).await;
        }
    }

    async fn copy_locks(&self, redis: &RedisKeys) {
        let now = self.clock.now_ms();
        let snapshot = self.pending_locks().snapshot();
        let mut locks = snapshot.entries.clone();
        if snapshot.everything {
            let prefix = format!("{}lock:", self.prefix);
            let live = self.memory.locks(&prefix, now).await.unwrap_or_default();
            locks.extend(live.into_iter().map(|(k, ms)| (k, now + ms)));
        }
        let mut copied = 0;
        for (key, until) in locks {
            // Lifted since the copy began (a successful sign-in, an admin): not written back.
            let lifted = !snapshot.everything && !self.pending_locks().contains(&key);
            if until > now && !lifted {
                if let Err(e) = redis.extend_lock(&key, until, until - now).await {
                    redis.link.failed(&e);
                    self.pending_locks().copy_failed(&snapshot);
                    return;
                }
                copied += 1;
            }
            self.pending_locks().copied(&key, until);
        }
        if copied > 0 {
            tracing::info!(
                locks = copied,
                "lockouts started while Redis was unreachable are now in Redis"
            );
        }
    }

    /// Locked accounts and blocked addresses, soonest expiry first.
    pub async fn blocked(&self) -> Vec<Blocked> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for kind in BLOCK_KINDS {
            let prefix = format!("{}lock:{kind}:", self.prefix);
            let locks: Vec<(String, i64)> = on_backend!(self, |store| store.locks(&prefix, now));
            out.extend(locks.into_iter().map(|(key, ms)| Blocked {
                kind,
                subject: key.trim_start_matches(&prefix).to_owned(),
                expires_in_secs: ceil_secs(ms),
            }));
        }
        out.sort_by_key(|b| b.expires_in_secs);
        out
    }

    /// Lifts a lock (`kind` is one of [`BLOCK_KINDS`]) and forgets its failures.
    pub async fn unblock(&self, kind: &str, subject: &str) {
        let (fail, lock) = match kind {
            "account" => self.account_keys(subject),
            "signup" => (String::new(), self.lock_key(kind, subject)),
            _ => self.ip_keys(subject),
        };
        self.lifted(&lock).await;
        let keys: Vec<String> = [fail, lock].into_iter().filter(|k| !k.is_empty()).collect();
        on_backend!(self, |store| store.delete(&keys));
    }

    /// `ok`, `error` or `not_configured`.
    pub async fn health(&self) -> &'static str {
        match &self.redis {
            None => "not_configured",
            Some(redis) if redis.link.is_up() => "ok",
            Some(_) => "error",
        }
    }
}

fn ceil_secs(ms: i64) -> u64 {
    ((ms.max(0) + 999) / 1000).max(1) as u64
}
