//! Abuse protection: rate limits (GCRA per IP, per IP+account, per route), brute-force lockout
//! per account (5 failures, then 30 s doubling to 15 min) and per IP (password spraying).
//!
//! State lives in Redis when `REDIS_URL` is set, so every instance behind a load balancer shares
//! it; when Redis is absent or down the same rules run in-process (never unlimited), health says
//! `redis: error`, and everything moves back to Redis by itself when it answers again.

pub mod keystore;
pub mod memory;
pub mod redis_link;
pub mod redis_store;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keystore::{Failure, KeyStore, LockPolicy};
use memory::MemoryStore;
pub use redis_link::RedisLink;

use crate::clock::Clock;
use crate::config::{Settings, Switch};

/// One limit of API.md: how many requests per window, for which subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    LoginPerIp,
    LoginPerAccount,
    SignupPerIp,
    RefreshPerIp,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Self::LoginPerIp => "login_ip",
            Self::LoginPerAccount => "login_account",
            Self::SignupPerIp => "signup_ip",
            Self::RefreshPerIp => "refresh_ip",
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
    /// `account` or `ip`.
    pub kind: &'static str,
    pub subject: String,
    pub expires_in_secs: u64,
}

struct Rules {
    login_per_ip: (u32, u64),
    login_per_account: (u32, u64),
    signup_per_ip: (u32, u64),
    refresh_per_ip: (u32, u64),
    account_lock: LockPolicy,
    ip_lock: LockPolicy,
}

pub struct Limits {
    enabled: bool,
    redis: Option<Arc<RedisLink>>,
    memory: MemoryStore,
    clock: Clock,
    prefix: String,
    rules: Rules,
}

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
        if let Some(link) = $self.redis.as_ref().filter(|l| l.is_up()) {
            let $store: &dyn KeyStore = link.store();
            match $op.await {
                Ok(value) => result = Some(value),
                Err(e) => link.failed(&e),
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
            redis,
            memory: MemoryStore::default(),
            clock,
            prefix: settings.redis_key_prefix.clone(),
            rules: Rules {
                login_per_ip: (settings.login_limit_per_ip, 60),
                login_per_account: (settings.login_limit_per_account, 60),
                signup_per_ip: (settings.signup_limit_per_ip, 3600),
                refresh_per_ip: (settings.refresh_limit_per_ip, 60),
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
        }
    }

    /// Counts one request of `subject` against `limit`.
    pub async fn check(&self, limit: Limit, subject: &str) -> Result<(), Exceeded> {
        let (max, window_secs) = self.rule(limit);
        if !self.enabled || max == 0 {
            return Ok(());
        }
        let key = format!("{}rl:{}:{subject}", self.prefix, limit.name());
        let window_ms = (window_secs * 1000) as i64;
        let interval_ms = (window_ms / i64::from(max)).max(1);
        let now = self.clock.now_ms();
        let decision = on_backend!(self, |store| store.gcra(&key, now, interval_ms, window_ms));
        if decision.allowed {
            Ok(())
        } else {
            Err(Exceeded {
                limit,
                max,
                window_secs,
                retry_after_secs: ceil_secs(decision.retry_after_ms),
            })
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

    /// The remaining lockout of an account, if any.
    pub async fn account_locked(&self, account: &str) -> Option<Duration> {
        self.locked(self.account_keys(account).1).await
    }

    /// The remaining block of an address (password spraying), if any.
    pub async fn ip_blocked(&self, ip: &str) -> Option<Duration> {
        self.locked(self.ip_keys(ip).1).await
    }

    async fn locked(&self, lock_key: String) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let now = self.clock.now_ms();
        let remaining: i64 = on_backend!(self, |store| store.lock_remaining(&lock_key, now));
        (remaining > 0).then(|| Duration::from_millis(remaining as u64))
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
        let now = self.clock.now_ms();
        if let Some(account) = account {
            let (fail, lock) = self.account_keys(account);
            let policy = self.rules.account_lock;
            report.account = Some(on_backend!(self, |store| store
                .record_failure(&fail, &lock, now, policy)));
        }
        let (fail, lock) = self.ip_keys(ip);
        let policy = self.rules.ip_lock;
        report.ip = Some(on_backend!(self, |store| store
            .record_failure(&fail, &lock, now, policy)));
        report
    }

    /// A successful login resets the account's consecutive failures.
    pub async fn login_succeeded(&self, account: &str) {
        self.clear_account(account).await;
    }

    pub async fn clear_account(&self, account: &str) {
        let (fail, lock) = self.account_keys(account);
        let keys = [fail, lock];
        on_backend!(self, |store| store.delete(&keys));
    }

    /// Locked accounts and blocked addresses, soonest expiry first.
    pub async fn blocked(&self) -> Vec<Blocked> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for kind in ["account", "ip"] {
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

    /// Lifts a lock (`kind` is `account` or `ip`) and forgets its failures.
    pub async fn unblock(&self, kind: &str, subject: &str) {
        let (fail, lock) = match kind {
            "account" => self.account_keys(subject),
            _ => self.ip_keys(subject),
        };
        let keys = [fail, lock];
        on_backend!(self, |store| store.delete(&keys));
    }

    /// `ok`, `error` or `not_configured`.
    pub async fn health(&self) -> &'static str {
        match &self.redis {
            None => "not_configured",
            Some(link) if link.is_up() => "ok",
            Some(_) => "error",
        }
    }
}

fn ceil_secs(ms: i64) -> u64 {
    ((ms.max(0) + 999) / 1000).max(1) as u64
}
