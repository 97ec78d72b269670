//! The collectors `app` registers for the levels of the store, the password hasher and Redis,
//! read at scrape time from what those components expose (pool sizes, the circuit's counts,
//! `UserCache::stats`, `PasswordHasher::levels`, the Redis link's state).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::auth::revocation::RevocationList;
use crate::auth::service::AuthService;
use crate::db::Database;
use crate::db::circuit::ProbeOutcome;
use crate::limits::Limits;
use crate::mail::Outbox;
use crate::metrics::{counter, gauge};
use crate::redis_link::RedisLink;
use crate::store::postgres::user_cache::UserCache;

/// Writes `Debug` as the collector's name: the components it reads have no `Debug` of their own.
macro_rules! named_debug {
    ($($name:ident),+) => {
        $(impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        })+
    };
}

named_debug!(
    AlertCollector,
    HashCollector,
    MailRequestCollector,
    OutboxCollector,
    PoolCollector,
    RedisCollector,
    UserCacheCollector
);

/// The password hasher's queue and memory.
pub struct HashCollector(pub Arc<AuthService>);

impl Collector for HashCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let hashes = self.0.hasher.levels();
        gauge(
            &mut e,
            "password_hashes_in_flight",
            "Argon2 hashes being computed",
            hashes.in_flight as f64,
        )?;
        gauge(
            &mut e,
            "password_hashes_queued",
            "Argon2 hashes waiting for a worker",
            hashes.queued as f64,
        )?;
        gauge(
            &mut e,
            "password_hash_memory_bytes",
            "Argon2 memory held by the hashing threads (given back after 10 s without a hash)",
            hashes.memory_bytes as f64,
        )?;
        Ok(())
    }
}

/// One database pool (`pool` names it in the metric names) and its circuit, when it has one.
pub struct PoolCollector {
    pub pool: &'static str,
    pub db: Database,
}

impl Collector for PoolCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (pool, db) = (self.pool, &self.db);
        let size = db.pool.size() as f64;
        let idle = db.pool.num_idle() as f64;
        let name = format!("db_pool_{pool}_connections");
        gauge(&mut e, &name, "Open database connections", size)?;
        gauge(
            &mut e,
            &format!("db_pool_{pool}_idle"),
            "Idle database connections",
            idle,
        )?;
        if let Some(circuit) = db.circuit() {
            gauge(
                &mut e,
                &format!("db_{pool}_unreachable"),
                "1 while the store's probe finds the database unreachable and store calls answer 503 at once",
                f64::from(u8::from(circuit.is_open())),
            )?;
            counter(
                &mut e,
                &format!("db_{pool}_unreachable_episodes"),
                "Times the store's probe found the database unreachable after it had been reachable",
                circuit.times_opened(),
            )?;
            counter(
                &mut e,
                &format!("db_{pool}_failed_fast"),
                "Store calls answered 503 at once, without waiting for a connection, because the database was known to be unreachable",
                circuit.times_failed_fast(),
            )?;
            let name = format!("db_{pool}_probes");
            let mut probes = e.encode_descriptor(
                &name,
                "Probes of the database by what they found: answered (a connection answered), refused (the server refused a new connection with an error: reachable), unreachable",
                None,
                MetricType::Counter,
            )?;
            for outcome in ProbeOutcome::ALL {
                ConstCounter::new(circuit.probes(outcome))
                    .encode(probes.encode_family(&[("outcome", outcome.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Redis's state and the writes waiting for it (revocations and lockouts).
pub struct RedisCollector {
    pub link: Arc<RedisLink>,
    pub revocations: Arc<dyn RevocationList>,
    pub limits: Arc<Limits>,
}

impl Collector for RedisCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let link = &self.link;
        gauge(
            &mut e,
            "redis_up",
            "1 while Redis answers",
            f64::from(u8::from(link.is_up())),
        )?;
        gauge(
            &mut e,
            "revocations_mirrored",
            "1 while revocation checks are answered from an in-memory copy kept current from Redis (0: Redis is asked per request)",
            f64::from(u8::from(self.revocations.mirrored())),
        )?;
        gauge(
            &mut e,
            "redis_pending_writes",
            "Revocations and lockouts made while Redis was unreachable, waiting to be copied to it",
            (self.revocations.waiting_for_redis() + self.limits.locks_waiting_for_redis()) as f64,
        )?;
        Ok(())
    }
}

/// The Postgres store's cache of users and its change feed.
pub struct UserCacheCollector(pub Arc<UserCache>);

impl Collector for UserCacheCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        gauge(
            &mut e,
            "user_cache_following",
            "1 while Postgres's announcements of user changes are followed and users are served from memory (0: read from the database per request)",
            f64::from(u8::from(stats.following)),
        )?;
        gauge(
            &mut e,
            "user_cache_entries",
            "Users kept in memory",
            stats.entries as f64,
        )?;
        counter(
            &mut e,
            "user_cache_hits",
            "User lookups answered from memory",
            stats.hits,
        )?;
        counter(
            &mut e,
            "user_cache_misses",
            "User lookups read from the database while the cache was in use",
            stats.misses,
        )?;
        counter(
            &mut e,
            "user_cache_changes",
            "User changes announced by Postgres (every instance's, the CLI's, direct SQL)",
            stats.changes,
        )?;
        counter(
            &mut e,
            "user_cache_heartbeats_sent",
            "Heartbeats sent on the user change feed (one a second), numbered from 1",
            stats.heartbeats_sent,
        )?;
        gauge(
            &mut e,
            "user_cache_heartbeat_heard",
            "The number of the last heartbeat that came back: every user change committed before it was sent has been heard",
            stats.heartbeat_heard as f64,
        )?;
        Ok(())
    }
}

/// The alerts: this instance's counts, and the outbox's levels of kind `alert`.
pub struct AlertCollector(pub Arc<crate::alerts::Alerts>);

impl Collector for AlertCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let alerts = &self.0;
        let stats = &alerts.stats;
        for (name, help, value) in [
            (
                "alerts_queued",
                "Alerts this instance queued for its webhooks (one the store already held included)",
                stats.queued.load(Relaxed),
            ),
            (
                "alerts_sent",
                "Alert deliveries a webhook accepted",
                stats.sent.load(Relaxed),
            ),
            (
                "alerts_retried",
                "Alert deliveries that failed and will be retried",
                stats.retried.load(Relaxed),
            ),
            (
                "alerts_dead",
                "Alert deliveries given up on (alert_delivery_failed)",
                stats.dead.load(Relaxed),
            ),
            (
                "alerts_suppressed",
                "Alerts not queued: over ALERT_MAX_PER_MINUTE",
                alerts.suppressed.load(Relaxed),
            ),
            (
                "alerts_events_missed",
                "Security events the alerts fell behind on and skipped",
                alerts.missed.load(Relaxed),
            ),
        ] {
            counter(&mut e, name, help, value)?;
        }
        gauge(
            &mut e,
            "alerts_pending",
            "Alert deliveries waiting in the outbox",
            stats.pending_now.load(Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "alerts_dead_messages",
            "Dead alert deliveries in the outbox",
            stats.dead_now.load(Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "alerts_oldest_pending_age_seconds",
            "How long the oldest waiting alert has waited",
            alerts.oldest_pending_age_secs() as f64,
        )
    }
}

/// The mail outbox: this instance's counts, and the outbox's levels as its sender last saw them.
pub struct OutboxCollector(pub Arc<Outbox>);

impl Collector for OutboxCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.0.stats;
        counter(
            &mut e,
            "mail_queued",
            "Messages this instance queued in the outbox",
            stats.queued.load(Relaxed),
        )?;
        counter(
            &mut e,
            "mail_sent",
            "Messages delivered",
            stats.sent.load(Relaxed),
        )?;
        counter(
            &mut e,
            "mail_retried",
            "Delivery attempts that failed and will be retried",
            stats.retried.load(Relaxed),
        )?;
        counter(
            &mut e,
            "mail_dead",
            "Messages given up on (email_send_failed)",
            stats.dead.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "mail_pending",
            "Messages waiting in the outbox",
            stats.pending_now.load(Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "mail_dead_messages",
            "Dead messages in the outbox",
            stats.dead_now.load(Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "mail_oldest_pending_age_seconds",
            "How long the oldest waiting message has waited",
            self.0.oldest_pending_age_secs() as f64,
        )
    }
}

/// The queue of forgot-password and resend-verification lookups waiting after their answer.
pub struct MailRequestCollector(pub Arc<AuthService>);

impl Collector for MailRequestCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let levels = self.0.mail_requests.levels();
        gauge(
            &mut e,
            "mail_requests_waiting",
            "Forgot-password and resend-verification requests answered and waiting for their lookup",
            levels.waiting as f64,
        )?;
        gauge(
            &mut e,
            "mail_requests_capacity",
            "How many such requests may wait (MAIL_REQUEST_QUEUE)",
            levels.capacity as f64,
        )?;
        counter(
            &mut e,
            "mail_requests_accepted",
            "Forgot-password and resend-verification requests queued for their lookup",
            levels.accepted,
        )?;
        counter(
            &mut e,
            "mail_requests_dropped",
            "Such requests answered but dropped because the queue was full (no lookup, no mail)",
            levels.dropped,
        )
    }
}
