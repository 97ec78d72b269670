//! Recently read users, kept in memory so that an authenticated request (`/me`, every bearer
//! route) does not cost a Postgres round trip — and dropped the moment their row changes.
//!
//! Postgres itself announces every change: migration 005 puts a trigger on `users` that notifies
//! the channel [`CHANNEL`] with the user's id on each UPDATE and DELETE (`*` on TRUNCATE), whoever
//! makes it — this instance, another one, the CLI, an operator's SQL. [`UserCache::follow`] holds a
//! `LISTEN` on that channel and drops each announced user. Entries are served only while that
//! feed is known to work:
//! - it is proven every second by a heartbeat (an empty notification sent through the store's
//!   pool, which must come back through the `LISTEN` connection), so a connection that died
//!   without a word is noticed within [`HEARTBEAT_MISSES`] seconds;
//! - while it is down every read goes to Postgres, and what was kept is dropped, since the
//!   changes made meanwhile were not heard;
//! - it is not started at all unless the triggers are there and enabled (`RUN_MIGRATIONS=false`
//!   with migration 005 not applied yet), checked with every heartbeat.
//!
//! A read that raced a change cannot leave the old row behind: each change (and each reset) bumps
//! a generation, and a row read before the bump is not kept ([`Ticket`]). An entry also expires
//! after `USER_CACHE_TTL_SECS` whatever happens, and at most `USER_CACHE_USERS` are kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::domain::UserRecord;

/// The channel migration 005's triggers notify.
pub const CHANNEL: &str = "flux_auth_users";
/// The payload a TRUNCATE sends: every user changed.
const EVERYONE: &str = "*";
/// Heartbeats sent without one coming back before the feed counts as broken.
const HEARTBEAT_MISSES: u32 = 3;

pub struct UserCache {
    entries: moka::sync::Cache<String, UserRecord>,
    /// Bumped by every change heard and every reset: a row read before the bump may be old.
    generation: AtomicU64,
    /// True while the change feed is known to work; only then are entries served or kept.
    following: AtomicBool,
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
}

impl UserCache {
    pub fn new(max_users: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_users)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
            following: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// The kept copy of a user, while the change feed works.
    pub fn get(&self, id: &str) -> Option<UserRecord> {
        if !self.following.load(Ordering::SeqCst) {
            return None;
        }
        let found = self.entries.get(id);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Taken before reading a user; `None` while the feed is down (nothing will be kept).
    pub fn ticket(&self) -> Option<Ticket> {
        self.following
            .load(Ordering::SeqCst)
            .then(|| Ticket(self.generation.load(Ordering::SeqCst)))
    }

    /// Keeps a user read under `ticket`, unless a change (or a reset) came in since it was taken.
    pub fn keep(&self, ticket: Ticket, user: &UserRecord) {
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        self.entries.insert(user.id.clone(), user.clone());
        // A change heard between the check and the insert may have removed the entry before it
        // was there: look again, and take it out if so (at worst a fresh row, which costs a read).
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            self.entries.invalidate(user.id.as_str());
        }
    }

    /// This instance changed a user's row: its copy goes now, before Postgres's announcement.
    pub fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(id);
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

    /// Forgets everything, and every read in flight.
    fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    fn start_following(&self) {
        self.reset();
        self.following.store(true, Ordering::SeqCst);
    }

    /// Returns whether it had been following.
    fn stop_following(&self) -> bool {
        let was = self.following.swap(false, Ordering::SeqCst);
        self.reset();
        was
    }

    pub fn stats(&self) -> UserCacheStats {
        UserCacheStats {
            following: self.following.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
        }
    }

    /// Follows the change feed until `stop`, reconnecting with a backoff (200 ms doubling to
    /// 5 s) whenever it breaks. `connect_timeout` bounds the `LISTEN` connection's connect.
    pub async fn follow(
        self: Arc<Self>,
        db: Database,
        connect_timeout: Duration,
        every: Duration,
        stop: CancellationToken,
    ) {
        // Its own one-connection pool: the `LISTEN` holds its connection for good, which must not
        // come out of the store's.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with((*db.pool.connect_options()).clone());
        let mut wait = Duration::from_millis(200);
        loop {
            let outcome = self.follow_once(&db, &listen_pool, every, &stop).await;
            let was_following = self.stop_following();
            match outcome {
                Ok(()) => break,
                Err(e) if was_following => {
                    wait = Duration::from_millis(200);
                    tracing::warn!(
                        error = %e,
                        "user change feed from Postgres lost: users are read from the database on every request until it is back"
                    );
                }
                Err(e) => tracing::debug!(error = %e, "user change feed not established"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        listen_pool.close().await;
    }

    /// One `LISTEN`, from its start until it breaks (`Err`) or `stop` (`Ok`).
    async fn follow_once(
        self: &Arc<Self>,
        db: &Database,
        listen_pool: &sqlx::PgPool,
        every: Duration,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        if !db.is_ready() {
            anyhow::bail!("the database is not migrated yet");
        }
        let mut listener = PgListener::connect_with(listen_pool).await?;
        listener.listen(CHANNEL).await?;
        let origin = Instant::now();
        // Milliseconds since `origin` when a heartbeat last came back.
        let heard = Arc::new(AtomicU64::new(0));
        let reader = {
            let (cache, heard) = (self.clone(), heard.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(note)) if note.payload().is_empty() => {
                            heard.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Ok(Some(note)) => cache.changed(note.payload()),
                        // The connection was lost and made again (sqlx re-listens): whatever was
                        // announced in between is lost, so everything kept goes.
                        Ok(None) => cache.reset(),
                        Err(e) => return e,
                    }
                }
            }))
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let patience = (every * HEARTBEAT_MISSES).as_millis() as u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            if reader.0.is_finished() {
                anyhow::bail!("the LISTEN connection failed");
            }
            heartbeat(db).await?;
            let now = origin.elapsed().as_millis() as u64;
            let last = heard.load(Ordering::Relaxed);
            if last > 0 && !self.following.load(Ordering::SeqCst) {
                // The first heartbeat came back: the feed works, from now on.
                self.start_following();
                tracing::info!(
                    "following user changes from Postgres: authenticated requests read users from memory"
                );
            } else if now.saturating_sub(last) > patience {
                anyhow::bail!(
                    "no heartbeat came back through the LISTEN connection in {patience} ms"
                );
            }
        }
    }
}

/// Sends a heartbeat through the store's pool, and checks that the triggers that announce user
/// changes are there and enabled (without them no change would ever be heard).
async fn heartbeat(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.acquire().await?;
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger, pg_notify($1, '') \
         WHERE tgrelid = 'users'::regclass AND tgenabled <> 'D' \
         AND tgname IN ('users_changed_notify', 'users_truncated_notify')",
    )
    .bind(CHANNEL)
    .fetch_one(&mut *conn)
    .await
    .inspect_err(|e| db.note_failure(e))?;
    if triggers != 2 {
        anyhow::bail!(
            "the triggers of migration 005 on `users` are missing or disabled: run `flux-auth migrate`"
        );
    }
    Ok(())
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
            extra: serde_json::Map::new(),
        }
    }

    fn following() -> UserCache {
        let cache = UserCache::new(100, Duration::from_secs(60));
        cache.start_following();
        cache
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
        // Back up: what was kept before is gone, since changes made meanwhile were not heard.
        cache.start_following();
        assert!(cache.get("u1").is_none());
        assert!(cache.get("u2").is_none());
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
