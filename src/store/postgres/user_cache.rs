//! Recently read users, kept in memory so that an authenticated request (`/me`, every bearer
//! route) does not cost a Postgres round trip — and dropped as soon as their row changes.
//!
//! Postgres announces the changes: migration 005 puts triggers on `users` that notify the channel
//! [`CHANNEL`] with the user's id on each UPDATE and DELETE (`*` on TRUNCATE, and for an id too
//! long for a notification), whoever makes it — this instance, another one, the CLI, an
//! operator's SQL. [`UserCache::follow`] holds a `LISTEN` on it and drops each announced user.
//! Kept users are served only while the feed is known to be current:
//! - Every second the instance sends a heartbeat of its own (numbered, on [`HEARTBEAT_CHANNEL`])
//!   from a second connection. Postgres delivers notifications in commit order, so when one comes
//!   back every change committed before it was sent has been heard. Kept users are served only
//!   while the last heartbeat to come back was sent less than [`PATIENCE`] ago: a link that stalls
//!   (a partition, a frozen primary) stops the serving by itself, on the request path.
//! - A lost `LISTEN` connection stops the following at once, since what was announced meanwhile
//!   is lost; it is made again with a backoff, and everything kept before is dropped when it is.
//! - While the store finds the database unreachable (its circuit is open), kept users are served
//!   anyway, each until its time to live runs out ([`UserCache::get_during_outage`]): nobody can
//!   change a row through this instance then, a change made elsewhere shows within the same
//!   `USER_CACHE_TTL_SECS` as an unannounced one, and `/me` and the bearer routes keep answering
//!   for the users seen in the last minute instead of all failing with 503.
//! - Nothing is served unless both triggers are there and enabled (checked with every
//!   heartbeat): `RUN_MIGRATIONS=false` before migration 005 is applied, or a trigger disabled.
//!
//! What Postgres does not announce cannot be heard: a session with
//! `session_replication_role = replica` (a `pg_restore --disable-triggers`, logical replication
//! into this database) fires no trigger, nor does a change made while a trigger is disabled
//! between two heartbeats. Such a change shows when the entry expires (`USER_CACHE_TTL_SECS`).
//!
//! A read that raced a change cannot leave the old row behind: each change (and each reset) bumps
//! a generation, and a row read before the bump is not kept ([`Ticket`]). At most
//! `USER_CACHE_USERS` are kept (quick_cache, the least used making room), each for at most
//! `USER_CACHE_TTL_SECS`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::domain::UserRecord;

/// The channel migration 005's triggers notify.
pub const CHANNEL: &str = "flux_auth_users";
/// Each instance's heartbeats: `<instance nonce>:<number>:<ms since the instance's origin>`.
pub const HEARTBEAT_CHANNEL: &str = "flux_auth_users_heartbeat";
/// The payload that means every user changed.
const EVERYONE: &str = "*";
/// How often a heartbeat is sent (and the longest a heartbeat query may take).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How old the last heartbeat to come back may be while kept users are served.
pub const PATIENCE: Duration = Duration::from_secs(3);

pub struct UserCache {
    /// Each user with when it was read (milliseconds since `origin`), for the time to live.
    entries: quick_cache::sync::Cache<String, (Arc<UserRecord>, u64)>,
    ttl_ms: u64,
    /// Bumped by every change heard and every reset: a row read before the bump may be old.
    generation: AtomicU64,
    /// True while a `LISTEN` has been current since everything kept was read.
    following: AtomicBool,
    /// Milliseconds since `origin` until which kept users may be served: when the last of this
    /// instance's heartbeats to come back was sent, plus [`PATIENCE`].
    fresh_until: AtomicU64,
    origin: Instant,
    /// Tells this instance's heartbeats from the others'.
    nonce: u64,
    heartbeats_sent: AtomicU64,
    /// The number of the last of this instance's heartbeats to come back.
    heartbeat_heard: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    changes: AtomicU64,
}

/// Taken before a user is read from Postgres; the row is kept only if nothing changed meanwhile.
pub struct Ticket(u64);

/// What the cache has done, for `/metrics`.
pub struct UserCacheStats {
    pub following: bool,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub changes: u64,
    pub heartbeats_sent: u64,
    pub heartbeat_heard: u64,
}

impl UserCache {
    pub fn new(max_users: u64, ttl: Duration) -> Self {
        Self {
            // quick_cache wants a capacity of at least one; 0 users means no cache at all, and
            // never gets here (see PgStore::open).
            entries: quick_cache::sync::Cache::new(
                usize::try_from(max_users.max(1)).unwrap_or(usize::MAX),
            ),
            ttl_ms: ttl.as_millis() as u64,
            generation: AtomicU64::new(0),
            following: AtomicBool::new(false),
            fresh_until: AtomicU64::new(0),
            origin: Instant::now(),
            nonce: rand::random(),
            heartbeats_sent: AtomicU64::new(0),
            heartbeat_heard: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether kept users may be served now (and new ones kept).
    fn current(&self) -> bool {
        self.current_at(self.now_ms())
    }

    fn current_at(&self, now_ms: u64) -> bool {
        self.following.load(Ordering::SeqCst) && now_ms <= self.fresh_until.load(Ordering::SeqCst)
    }

    /// The kept copy of a user, while the change feed is current.
    pub fn get(&self, id: &str) -> Option<UserRecord> {
        // One clock read for both checks: this runs on every authenticated request.
        let now = self.now_ms();
        if !self.current_at(now) {
            return None;
        }
        let found = self
            .entries
            .get(id)
            .filter(|(_, read_at)| now.saturating_sub(*read_at) < self.ttl_ms)
            .map(|(user, _)| UserRecord::clone(&user));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The kept copy of a user whatever the state of the feed, if it was read less than the time
    /// to live ago: for while the database cannot be reached at all (see the module's doc), never
    /// otherwise.
    pub fn get_during_outage(&self, id: &str) -> Option<UserRecord> {
        let now = self.now_ms();
        let found = self
            .entries
            .get(id)
            .filter(|(_, read_at)| now.saturating_sub(*read_at) < self.ttl_ms)
            .map(|(user, _)| UserRecord::clone(&user));
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Taken before reading a user; `None` while the feed is not current (nothing will be kept).
    pub fn ticket(&self) -> Option<Ticket> {
        self.current()
            .then(|| Ticket(self.generation.load(Ordering::SeqCst)))
    }

    /// Keeps a user read under `ticket`, unless a change (or a reset) came in since it was taken.
    pub fn keep(&self, ticket: Ticket, user: &UserRecord) {
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        self.entries
            .insert(user.id.clone(), (Arc::new(user.clone()), self.now_ms()));
        // A change heard between the check and the insert may have removed the entry before it
        // was there: look again, and take it out if so (at worst a fresh row, which costs a read).
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            self.entries.remove(user.id.as_str());
        }
    }

    /// This instance changed a user's row: its copy goes now, before Postgres's announcement.
    pub fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(id);
    }

    /// Postgres announced that a user's row changed (or `*`: every row).
    fn changed(&self, id: &str) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        if id == EVERYONE {
            self.reset();
        } else {
            self.forget(id);
        }
    }

    /// A heartbeat came back; this instance's own make the feed current up to their sending.
    fn heard(&self, payload: &str) {
        let mut parts = payload.split(':');
        let (Some(nonce), Some(number), Some(sent_ms), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(nonce), Ok(number), Ok(sent_ms)) = (
            u64::from_str_radix(nonce, 16),
            number.parse::<u64>(),
            sent_ms.parse::<u64>(),
        ) else {
            return;
        };
        if nonce != self.nonce {
            return;
        }
        self.heartbeat_heard.fetch_max(number, Ordering::SeqCst);
        self.fresh_until
            .fetch_max(sent_ms + PATIENCE.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next heartbeat's payload.
    fn next_heartbeat(&self) -> String {
        let number = self.heartbeats_sent.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{:x}:{number}:{}", self.nonce, self.now_ms())
    }

    /// Forgets everything, and every read in flight.
    fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    fn start_following(&self) {
        self.reset();
        self.following.store(true, Ordering::SeqCst);
    }

    /// Returns whether it had been following. What was kept stays, unserved except during an
    /// outage ([`UserCache::get_during_outage`]), until the feed is made again (which drops it)
    /// or it ages out; reads in flight are not kept.
    fn stop_following(&self) -> bool {
        let was = self.following.swap(false, Ordering::SeqCst);
        // Only a heartbeat that comes back on the next `LISTEN` makes that one current.
        self.fresh_until.store(0, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        was
    }

    pub fn stats(&self) -> UserCacheStats {
        UserCacheStats {
            following: self.current(),
            entries: self.entries.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            heartbeats_sent: self.heartbeats_sent.load(Ordering::SeqCst),
            heartbeat_heard: self.heartbeat_heard.load(Ordering::SeqCst),
        }
    }

    /// Follows the change feed until `stop`, making it again with a backoff (200 ms doubling to
    /// 5 s) whenever it breaks. `connect_timeout` bounds each connect.
    pub async fn follow(
        self: Arc<Self>,
        db: Database,
        connect_timeout: Duration,
        stop: CancellationToken,
    ) {
        // A pool of its own, for the `LISTEN` (held for good) and the heartbeats: neither may
        // wait for, nor take, a connection of the store's, least of all when it is busiest.
        // Its connections get the store's `search_path`: the heartbeat's `users` is flux-auth's.
        let pool = db.companion_pool(2, connect_timeout);
        let mut wait = Duration::from_millis(200);
        let mut told_of_triggers = false;
        loop {
            let outcome = self.follow_once(&db, &pool, &stop).await;
            let was_following = self.stop_following();
            match outcome {
                Ok(()) => break,
                Err(Broken::Triggers) if !told_of_triggers => {
                    told_of_triggers = true;
                    tracing::warn!(
                        "the triggers that announce user changes (migration 005) are missing or disabled: users are read from the database on every request; run `flux-auth migrate` or enable them"
                    );
                }
                Err(Broken::Triggers) => {}
                Err(Broken::Feed(e)) if was_following => {
                    wait = Duration::from_millis(200);
                    tracing::warn!(
                        error = %e,
                        "user change feed from Postgres lost: users are read from the database on every request until it is back"
                    );
                }
                Err(Broken::Feed(e)) => {
                    tracing::debug!(error = %e, "user change feed not established");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// One `LISTEN`, from its start until it breaks (`Err`) or `stop` (`Ok`).
    async fn follow_once(
        self: &Arc<Self>,
        db: &Database,
        pool: &sqlx::PgPool,
        stop: &CancellationToken,
    ) -> Result<(), Broken> {
        if !db.is_ready() {
            return Err(Broken::Feed(anyhow::anyhow!(
                "the database is not migrated yet"
            )));
        }
        let feed = |e: sqlx::Error| Broken::Feed(e.into());
        let mut listener = PgListener::connect_with(pool).await.map_err(feed)?;
        // A lost connection ends this `LISTEN` (below) rather than being made again quietly:
        // what was announced while it was down is lost, and only a new start accounts for that.
        listener.eager_reconnect(false);
        listener
            .listen_all([CHANNEL, HEARTBEAT_CHANNEL])
            .await
            .map_err(feed)?;
        let reader = {
            let cache = self.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(note)) if note.channel() == HEARTBEAT_CHANNEL => {
                            cache.heard(note.payload());
                        }
                        Ok(Some(note)) => cache.changed(note.payload()),
                        Ok(None) | Err(_) => {
                            cache.stop_following();
                            return;
                        }
                    }
                }
            }))
        };
        let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = self.now_ms();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            if reader.0.is_finished() {
                return Err(Broken::Feed(anyhow::anyhow!(
                    "the LISTEN connection was lost"
                )));
            }
            match tokio::time::timeout(HEARTBEAT_EVERY, heartbeat(pool, &self.next_heartbeat()))
                .await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Broken::Feed(anyhow::anyhow!(
                        "a heartbeat took more than {HEARTBEAT_EVERY:?}"
                    )));
                }
            }
            let now = self.now_ms();
            let fresh = now <= self.fresh_until.load(Ordering::SeqCst);
            if fresh && !self.following.load(Ordering::SeqCst) {
                // A heartbeat sent on this `LISTEN` came back: it is current from now on.
                self.start_following();
                tracing::info!(
                    "following user changes from Postgres: authenticated requests read users from memory"
                );
            } else if !fresh && now.saturating_sub(started) > PATIENCE.as_millis() as u64 {
                return Err(Broken::Feed(anyhow::anyhow!(
                    "no heartbeat came back through the LISTEN connection within {PATIENCE:?}"
                )));
            }
        }
    }
}

/// Why a `LISTEN` ended.
enum Broken {
    /// The triggers are missing or disabled.
    Triggers,
    /// The connection, a query, or the heartbeats.
    Feed(anyhow::Error),
}

impl From<sqlx::Error> for Broken {
    fn from(e: sqlx::Error) -> Self {
        Self::Feed(e.into())
    }
}

/// Sends a heartbeat, and checks that the triggers that announce user changes are there and
/// enabled (`O`rigin and `A`lways fire in ordinary sessions; `D`isabled and `R`eplica-only do
/// not). Without them no change would be heard.
async fn heartbeat(pool: &sqlx::PgPool, payload: &str) -> Result<(), Broken> {
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger, pg_notify($1, $2) \
         WHERE tgrelid = 'users'::regclass AND tgenabled IN ('O', 'A') \
         AND tgname IN ('users_changed_notify', 'users_truncated_notify')",
    )
    .bind(HEARTBEAT_CHANNEL)
    .bind(payload)
    .fetch_one(pool)
    .await?;
    if triggers == 2 {
        Ok(())
    } else {
        Err(Broken::Triggers)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserType;

    fn user(id: &str, name: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            email: format!("{id}@example.com"),
            name: name.into(),
            user_type: UserType::Client,
            password_hash: None,
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: chrono::Utc::now(),
            last_login: None,
            updated_at: chrono::Utc::now(),
            two_factor_enabled: false,
            extra: serde_json::Map::new(),
        }
    }

    fn following() -> UserCache {
        let cache = UserCache::new(100, Duration::from_secs(60));
        cache.start_following();
        cache.heard(&cache.next_heartbeat());
        cache
    }

    /// Kept users are served only while this instance's last heartbeat to come back was sent
    /// less than PATIENCE ago; another instance's heartbeats do not count.
    #[test]
    fn kept_users_are_served_only_while_a_recent_heartbeat_of_its_own_came_back() {
        let mut cache = UserCache::new(100, Duration::from_secs(60));
        cache.origin = Instant::now() - Duration::from_secs(10);
        cache.start_following();
        let user = user("u1", "Ada");
        assert!(cache.ticket().is_none(), "no heartbeat back yet");
        cache.heard(&format!("{:x}:1:{}", cache.nonce ^ 1, cache.now_ms()));
        assert!(cache.ticket().is_none(), "another instance's heartbeat");
        // Sent 10 s ago and only heard now: the link stalled, nothing announced since then is known.
        cache.heard(&format!("{:x}:1:0", cache.nonce));
        assert!(cache.ticket().is_none(), "a heartbeat sent too long ago");
        assert_eq!(cache.stats().heartbeat_heard, 1);
        cache.heard(&cache.next_heartbeat());
        cache.keep(cache.ticket().unwrap(), &user);
        assert_eq!(cache.get("u1").unwrap().name, "Ada");
        for junk in ["", "x", "1:2", "zz:1:2", "1:2:3:4"] {
            cache.heard(junk);
        }
        assert_eq!(cache.get("u1").unwrap().name, "Ada");
        // Time passes without another heartbeat coming back.
        cache
            .fresh_until
            .store(cache.now_ms() - 1, Ordering::SeqCst);
        assert!(cache.get("u1").is_none());
        assert!(!cache.stats().following);
    }

    #[test]
    fn a_kept_user_is_served_until_its_row_changes() {
        let cache = following();
        assert!(cache.get("u1").is_none());
        cache.keep(cache.ticket().unwrap(), &user("u1", "Ada"));
        assert_eq!(cache.get("u1").unwrap().name, "Ada");
        cache.changed("u1");
        assert!(cache.get("u1").is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.changes), (1, 2, 1));
    }

    #[test]
    fn a_kept_user_expires_after_the_ttl() {
        let mut cache = UserCache::new(100, Duration::from_secs(1));
        cache.start_following();
        cache.heard(&cache.next_heartbeat());
        cache.keep(cache.ticket().unwrap(), &user("u1", "Ada"));
        assert!(cache.get("u1").is_some());
        // Five seconds pass, with heartbeats coming back all along.
        cache.origin -= Duration::from_secs(5);
        cache.heard(&cache.next_heartbeat());
        assert!(cache.ticket().is_some());
        assert!(cache.get("u1").is_none());
    }

    #[test]
    fn a_row_read_before_a_change_is_not_kept() {
        let cache = following();
        let ticket = cache.ticket().unwrap();
        // Another user's change counts too: the generation is one for all.
        cache.changed("someone-else");
        cache.keep(ticket, &user("u1", "old"));
        assert!(cache.get("u1").is_none());
    }

    #[test]
    fn nothing_is_served_or_kept_while_the_feed_is_down() {
        let cache = following();
        cache.keep(cache.ticket().unwrap(), &user("u1", "Ada"));
        let ticket = cache.ticket().unwrap();
        assert!(cache.stop_following());
        assert!(cache.get("u1").is_none());
        assert!(cache.ticket().is_none());
        cache.keep(ticket, &user("u2", "Bob"));
        // During an outage what was kept is served until it ages out; a read in flight was not.
        assert_eq!(cache.get_during_outage("u1").unwrap().name, "Ada");
        assert!(cache.get_during_outage("u2").is_none());
        // Back up: what was kept before is gone, since changes made meanwhile were not heard.
        cache.start_following();
        assert!(cache.get("u1").is_none());
        assert!(cache.get("u2").is_none());
        assert!(cache.get_during_outage("u1").is_none());
    }

    #[test]
    fn during_an_outage_a_kept_user_is_served_until_the_ttl_only() {
        let mut cache = UserCache::new(100, Duration::from_secs(60));
        cache.start_following();
        cache.heard(&cache.next_heartbeat());
        cache.keep(cache.ticket().unwrap(), &user("u1", "Ada"));
        cache.stop_following();
        assert_eq!(cache.get_during_outage("u1").unwrap().name, "Ada");
        cache.origin -= Duration::from_secs(61);
        assert!(cache.get_during_outage("u1").is_none());
    }

    #[test]
    fn a_truncate_forgets_everyone() {
        let cache = following();
        cache.keep(cache.ticket().unwrap(), &user("u1", "Ada"));
        cache.keep(cache.ticket().unwrap(), &user("u2", "Bob"));
        cache.changed(EVERYONE);
        assert!(cache.get("u1").is_none());
        assert!(cache.get("u2").is_none());
    }
}
