//! The Postgres store (sqlx, runtime-checked queries, so building never needs a database), on
//! the database handle of [`crate::db`].
//!
//! The store answers `Unavailable` (503) on routes that need the database until it is reachable
//! and migrated, and at once while its circuit is open (the database is known to be unreachable).
//!
//! The store's pool does not ping every connection before handing it out (see
//! [`crate::db::ConnectionChecks::WhenSuspect`]). A connection broken while idle (Postgres restarted, the
//! network cut) then fails its first query; reads are retried once on another connection
//! ([`read_retrying!`]), and the failure makes every older connection suspect, so it is tested
//! before its next use.
//!
//! A write that must not outlive its request runs on a [`Held`] connection, closed rather than
//! returned to the pool when the request gives up midway, so Postgres ends and rolls back the
//! statement still running on it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::{
    ImportOutcome, InvalidReason, NewSession, RotateOutcome, RotateRequest, Rotation,
    RotationDecision, SessionRecord, Store, StoreError, StoreResult, TokenRecord, decide_rotation,
};
use crate::config::Settings;
use crate::db::{Database, RequestPool, is_connection_error};
use crate::domain::{Email, UserRecord, UserType};
use crate::metrics::PoolMetrics;

/// Runs a read on a connection of the store's pool: `$conn` is bound to a fresh
/// [`PgStore::conn`] and `$read` (a future of `Result<_, sqlx::Error>` using `&mut *$conn`) runs
/// on it. After a connection-level failure the read runs once more on another connection: a
/// connection broken while idle fails its first query, and a read is safe to repeat, so a restart
/// or a network cut the database is back from costs no request an error. Evaluates to a
/// `StoreResult`; `?` on the acquire returns from the enclosing function.
macro_rules! read_retrying {
    ($store:expr, |$conn:ident| $read:expr) => {{
        let store: &PgStore = $store;
        let mut retried = false;
        loop {
            let mut $conn = store.conn().await?;
            match $read.await {
                Ok(value) => break Ok(value),
                Err(e) if !retried && is_connection_error(&e) => {
                    store.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => break Err(store.fail(e)),
            }
        }
    }};
}

/// `BEGIN` on `$conn` (a `PoolConnection` from [`PgStore::conn`]), evaluating to the transaction.
/// `BEGIN` is the connection's first statement, so like a read it is retried once, on another
/// connection, after a connection-level failure: nothing has run yet.
macro_rules! begin_retrying {
    ($store:expr, $conn:ident) => {{
        let store: &PgStore = $store;
        let mut retried = false;
        loop {
            let failure = match $conn.begin().await {
                Ok(tx) => break tx,
                Err(e) => e,
            };
            if retried || !is_connection_error(&failure) {
                return Err(store.fail(failure));
            }
            store.db.note_failure(&failure);
            retried = true;
            $conn = store.conn().await?;
        }
    }};
}

mod email_keys;
mod identities;
pub mod user_cache;

use user_cache::UserCache;

/// The connection of a write whose request may give up while a statement runs on it (the
/// request timeout, or a client that leaves: either drops the request's future). Returned to the
/// pool, such a connection would first wait for that statement to finish (sqlx pings it), and the
/// statement would commit after its request was answered 408: a refresh token rotated for a
/// client that never got the successor, whose retry then looks like a stolen token's reuse.
/// Dropped before [`Held::release`], it is closed instead, and Postgres ends the statement and
/// rolls it back when it sees the client gone ([`crate::db::CLIENT_CHECK_INTERVAL`]); on Postgres before 14,
/// when `statement_timeout` cancels it.
#[derive(Default)]
struct Held(Option<PoolConnection<Postgres>>);

impl Held {
    /// Keeps `conn` (a previous one goes back to the pool) and lends it out.
    fn hold(&mut self, conn: PoolConnection<Postgres>) -> &mut PgConnection {
        self.0.insert(conn)
    }

    /// The connection held.
    fn connection(&mut self) -> StoreResult<&mut PgConnection> {
        match self.0.as_mut() {
            Some(conn) => Ok(conn),
            None => Err(StoreError::Other(anyhow::anyhow!("no connection held"))),
        }
    }

    /// The write finished (or failed) without being abandoned: back to the pool as usual.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Runs the embedded migrations once, then fills the email keys they cannot (migration 006;
/// an account that cannot be keyed is logged, never a failure), marking the database ready on
/// success.
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.migration_connection().await?;
    crate::db::migrations::run_migrations(&mut conn).await?;
    email_keys::backfill(&mut conn).await?;
    // Only a report: the store works whether or not it can be made.
    let collisions = email_keys::collisions(&mut conn).await;
    drop(conn);
    match collisions {
        Ok(collisions) => super::warn_of_collisions(&collisions),
        Err(e) => tracing::warn!(error = %e,
            "could not list the accounts that cannot sign in by email \
             (flux-auth users email-collisions lists them)"),
    }
    db.assume_migrated();
    Ok(())
}

/// Keeps trying to [`migrate`] until it works; the store answers `Unavailable` meanwhile.
fn migrate_in_background(db: &Database) {
    let db = db.clone();
    crate::db::migrations::retry_in_background("users", move || {
        let db = db.clone();
        async move { migrate(&db).await }
    });
}

/// Maps sqlx errors to what callers can act on; the detail goes to the log, never to a client.
pub fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            let constraint = db.constraint().unwrap_or_default();
            StoreError::Conflict(if constraint.contains("email") {
                "email"
            } else {
                "id"
            })
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
        {
            // 57xxx: operator intervention (shutdown, cancel); 08xxx: connection exceptions.
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(anyhow::Error::new(e)),
    }
}

pub struct PgStore {
    db: Database,
    /// Users read recently, while Postgres's announcements of their changes are followed; `None`
    /// when `USER_CACHE_USERS=0`, and for the CLI commands that open the store alone
    /// (`from_database`), which serve no requests.
    users: Option<Arc<UserCache>>,
    /// `REQUEST_TIMEOUT_MS`: no write of a request happens later than this after its start.
    request_timeout: chrono::Duration,
}

impl PgStore {
    /// The store's pool observes its acquires into `metrics` (`pool="users"`).
    pub fn open(settings: &Settings, metrics: PoolMetrics) -> anyhow::Result<Self> {
        let url = settings
            .database_url
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("STORAGE=postgres needs DATABASE_URL"))?;
        // Every request takes a connection: no ping before each (see ConnectionChecks).
        let db = Database::connect_lazy_for_requests(
            url,
            settings.database_max_connections,
            Duration::from_millis(settings.database_connect_timeout_ms),
            metrics,
            RequestPool {
                statement_timeout: Duration::from_millis(settings.database_statement_timeout_ms),
            },
        )?;
        if settings.run_migrations {
            migrate_in_background(&db);
        } else {
            db.assume_migrated();
        }
        let users = (settings.user_cache_users > 0).then(|| {
            Arc::new(UserCache::new(
                settings.user_cache_users,
                Duration::from_secs(settings.user_cache_ttl_secs),
            ))
        });
        Ok(Self {
            db,
            users,
            request_timeout: chrono::Duration::milliseconds(settings.request_timeout_ms as i64),
        })
    }

    pub fn from_database(db: Database) -> Self {
        Self {
            db,
            users: None,
            request_timeout: chrono::Duration::milliseconds(
                Settings::default().request_timeout_ms as i64,
            ),
        }
    }

    /// The latest moment, by the instance's clock, at which `request` can still write: its
    /// time plus the request timeout (it is answered 408 then, and its statement rolled back).
    fn latest_write(&self, request: &RotateRequest) -> DateTime<Utc> {
        request.now + self.request_timeout
    }

    /// Drops this instance's copy of a user it just changed, so its next request reads the change
    /// without waiting for Postgres's announcement (which every instance, this one too, then hears).
    fn changed_here(&self, user_id: &str) {
        if let Some(users) = &self.users {
            users.forget(user_id);
        }
    }

    /// A connection for one operation (timed, see [`Database::acquire`]); `Unavailable` until
    /// the database is migrated, and when the pool cannot hand one over in time.
    /// Answers `Unavailable` at once while the circuit is open (the database is known to be
    /// unreachable).
    async fn conn(&self) -> StoreResult<PoolConnection<Postgres>> {
        if !self.db.is_ready() {
            return Err(StoreError::Unavailable(
                "database not ready (connecting or migrating)".into(),
            ));
        }
        if self.db.fails_fast() {
            return Err(StoreError::Unavailable(
                "database unreachable (circuit open)".into(),
            ));
        }
        // Whatever kept the pool from handing over a connection (a timeout, or the server
        // refusing a new one: too many connections, authentication), no statement ran: the
        // store is unavailable, not wrong.
        self.db.acquire().await.map_err(|e| {
            self.db.note_failure(&e);
            StoreError::Unavailable(e.to_string())
        })
    }

    /// [`map_err`], reporting a connection-level failure to the pool (see [`crate::db::ConnectionChecks`]).
    fn fail(&self, e: sqlx::Error) -> StoreError {
        self.db.note_failure(&e);
        map_err(e)
    }
}

// Column lists as macros so queries stay `&'static str` (sqlx refuses dynamic SQL strings).
/// The account of a mailbox: `$1` its canonical key, `$2` the address as sent. A row without a
/// key yet (written by an older version during a rolling upgrade, or by hand, and keyed at the
/// next migration) is found by its exact address; a keyed row wins.
macro_rules! by_email {
    () => {
        "(email_key = $1 OR (email_key IS NULL AND email = $2)) ORDER BY email_key IS NULL LIMIT 1"
    };
}

macro_rules! user_columns {
    () => {
        "id, email, name, user_type, password_hash, google_id, email_verified, avatar, created_at, last_login"
    };
}
macro_rules! session_columns {
    () => {
        "id, user_id, device_name, ip_address, user_agent, fingerprint, created_at, last_used_at, expires_at, \
         revoked_at, revoked_reason"
    };
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    user_type: String,
    password_hash: Option<String>,
    google_id: Option<String>,
    email_verified: bool,
    avatar: Option<String>,
    created_at: DateTime<Utc>,
    last_login: Option<DateTime<Utc>>,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            email: r.email,
            name: r.name,
            user_type: UserType::parse(&r.user_type).unwrap_or(UserType::Client),
            password_hash: r.password_hash,
            google_id: r.google_id,
            email_verified: r.email_verified,
            avatar: r.avatar,
            created_at: r.created_at,
            last_login: r.last_login,
            extra: serde_json::Map::new(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: String,
    device_name: String,
    ip_address: String,
    user_agent: Option<String>,
    fingerprint: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_reason: Option<String>,
}

impl From<SessionRow> for SessionRecord {
    fn from(r: SessionRow) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            device_name: r.device_name,
            ip_address: r.ip_address,
            user_agent: r.user_agent,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_reason: r.revoked_reason,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    session_id: Uuid,
    token_hash: String,
    created_at: DateTime<Utc>,
    rotated_at: Option<DateTime<Utc>>,
    replaced_by: Option<Uuid>,
}

impl From<TokenRow> for TokenRecord {
    fn from(r: TokenRow) -> Self {
        Self {
            id: r.id,
            session_id: r.session_id,
            token_hash: r.token_hash,
            created_at: r.created_at,
            rotated_at: r.rotated_at,
            replaced_by: r.replaced_by,
        }
    }
}

/// The statement behind `Store::create_session`.
async fn create_session(
    conn: &mut PgConnection,
    new: &NewSession,
    max_live: usize,
    idle_ttl: chrono::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (s, t) = (&new.session, &new.token);
    sqlx::query_scalar(
        "WITH session AS ( \
           INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, \
             created_at, last_used_at, expires_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING id), \
         token AS ( \
           INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, rotated_at, replaced_by) \
           SELECT $10, id, $11, $12, $13, $14 FROM session), \
         login AS ( \
           UPDATE users SET last_login = $7 WHERE $15 AND id = $2), \
         evicted AS ( \
           UPDATE auth_sessions SET revoked_at = $7, revoked_reason = 'session_limit' WHERE id IN ( \
             SELECT id FROM auth_sessions WHERE user_id = $2 AND id <> $1 AND revoked_at IS NULL \
               AND expires_at > $7 AND last_used_at > $16 \
             ORDER BY created_at DESC, id DESC OFFSET $17) \
           RETURNING id) \
         SELECT id FROM evicted",
    )
    .bind(s.id)
    .bind(&s.user_id)
    .bind(&s.device_name)
    .bind(&s.ip_address)
    .bind(&s.user_agent)
    .bind(&s.fingerprint)
    .bind(s.created_at)
    .bind(s.last_used_at)
    .bind(s.expires_at)
    .bind(t.id)
    .bind(&t.token_hash)
    .bind(t.created_at)
    .bind(t.rotated_at)
    .bind(t.replaced_by)
    .bind(new.records_login)
    .bind(s.created_at - idle_ttl)
    .bind(others_kept(max_live))
    .fetch_all(conn)
    .await
}

/// How many of a user's other live sessions stay when one more must fit under `max_live` (an
/// `OFFSET`: `usize::MAX`, no cap, saturates instead of wrapping to a negative number).
fn others_kept(max_live: usize) -> i64 {
    i64::try_from(max_live.saturating_sub(1)).unwrap_or(i64::MAX)
}

async fn session_by_id(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> Result<Option<SessionRecord>, sqlx::Error> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "SELECT ",
        session_columns!(),
        " FROM auth_sessions WHERE id = $1"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(SessionRecord::from))
}

async fn session_by_token_hash(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<(SessionRecord, Uuid)>, sqlx::Error> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        // `::bpchar`: see ROTATION_READ.
        "SELECT session_id, id FROM refresh_tokens WHERE token_hash = $1::bpchar",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((session_id, token_id)) = row else {
        return Ok(None);
    };
    // On the same connection: one acquire, and never two connections held at once.
    Ok(session_by_id(conn, session_id)
        .await?
        .map(|s| (s, token_id)))
}

// ---------------------------------------------------------------------------------------------
// Refresh-token rotation: the common case in one statement; otherwise one read, then one
// conditional write.
//
// A live token of a live session is rotated by one statement ([`ROTATION_FAST`]) that checks
// what `decide_rotation` would check on the rows it locks, and writes what the decision would
// write. When it writes nothing, the long way runs. The read takes the presented token with its
// session, the token it was rotated to and the session's user, in one statement (one snapshot);
// `decide_rotation` decides on them; the decision's writes then run as one statement that
// applies only if what the decision rests on still holds (a compare-and-swap). If it does not (a
// concurrent refresh rotated the token first, a logout revoked the session), the state is read
// again and decided again. Without a write (grace, invalid) the read is the decision's snapshot. So a refresh costs one round trip, and
// anything else two or three, on one connection, without a transaction; concurrent refreshes
// serialise exactly as they did under row locks: one rotates, the others see it rotated.

/// The columns of a [`RotationRow`] from `t` (the token), `s` (its session), `n` (its successor)
/// and `u` (the user).
macro_rules! rotation_columns {
    () => {
        concat!(
            "t.id, t.session_id, t.token_hash, t.created_at, t.rotated_at, t.replaced_by, ",
            "s.id AS s_id, s.user_id AS s_user_id, s.device_name AS s_device_name, ",
            "s.ip_address AS s_ip_address, s.user_agent AS s_user_agent, s.fingerprint AS s_fingerprint, ",
            "s.created_at AS s_created_at, s.last_used_at AS s_last_used_at, ",
            "s.expires_at AS s_expires_at, s.revoked_at AS s_revoked_at, ",
            "s.revoked_reason AS s_revoked_reason, ",
            "n.id AS n_id, n.token_hash AS n_token_hash, n.created_at AS n_created_at, ",
            "n.rotated_at AS n_rotated_at, n.replaced_by AS n_replaced_by, ",
            "u.id AS u_id, u.email AS u_email, u.name AS u_name, u.user_type AS u_user_type, ",
            "u.password_hash AS u_password_hash, u.google_id AS u_google_id, ",
            "u.email_verified AS u_email_verified, u.avatar AS u_avatar, ",
            "u.created_at AS u_created_at, u.last_login AS u_last_login ",
        )
    };
}

/// The rotation state of a presented token. `token_hash` is CHAR(64) and sqlx sends a String as
/// text: compared as text, Postgres casts the column and scans the whole table (refresh got slower
/// with every token ever issued, BENCHMARKS.md). Casting the parameter keeps the unique index in
/// use. The left joins are all by primary key.
const ROTATION_READ: &str = concat!(
    "SELECT ",
    rotation_columns!(),
    "FROM refresh_tokens t ",
    "LEFT JOIN auth_sessions s ON s.id = t.session_id ",
    "LEFT JOIN refresh_tokens n ON n.id = t.replaced_by ",
    "LEFT JOIN users u ON u.id = s.user_id ",
    "WHERE t.token_hash = $1::bpchar"
);

/// The common refresh in one round trip: a live token of a live session (unrevoked, not past its
/// end or its idle limit, its fingerprint matching when mismatches are rejected) is rotated, its
/// successor inserted and its session touched, as [`ROTATION_WRITE`] does, with the conditions
/// under which `decide_rotation` answers `Rotate` checked on the locked rows. Returns the read's
/// row for what was rotated (as it was before the write), or no row when nothing was: every other
/// case (grace, reuse, a rejected fingerprint, an unknown or dead token) then takes the long way,
/// read and decide.
///
/// The token's `rotated_at`, from which the grace window is measured, is when the row was
/// written (`clock_timestamp()`, after any wait for a lock), not when the request began: a
/// refresh that waited behind a lock commits a rotation whose retry, moments later, is inside the
/// grace window and gets the same successor, where measuring from the request's start would have
/// called the retry a stolen token's reuse. It is Postgres's clock, compared with the instance's
/// when the token comes back, so the hosts' clocks must agree (NTP) to well within the window;
/// never earlier than the request's own time (`$2`), so a Postgres clock running behind costs no
/// more than measuring from the request does, and never later than the latest moment the request
/// could still write (`$9`: its time plus the request timeout, by the instance's clock), so a
/// Postgres clock running ahead lengthens the window by that much at most, not by its drift.
const ROTATION_FAST: &str = concat!(
    "WITH t AS MATERIALIZED ( \
       SELECT * FROM refresh_tokens WHERE token_hash = $1::bpchar AND rotated_at IS NULL), \
     s AS MATERIALIZED ( \
       SELECT * FROM auth_sessions WHERE id = (SELECT session_id FROM t) AND revoked_at IS NULL \
         AND expires_at > $2 AND last_used_at > $6 AND (NOT $7 OR fingerprint = $8) \
       FOR UPDATE), \
     rotated AS ( \
       UPDATE refresh_tokens SET rotated_at = least(greatest($2, clock_timestamp()), $9), \
         replaced_by = $3 \
       WHERE id = (SELECT id FROM t) AND rotated_at IS NULL AND session_id IN (SELECT id FROM s) \
       RETURNING id, session_id), \
     successor AS ( \
       INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
       SELECT $3, session_id, $4, $2 FROM rotated), \
     touched AS ( \
       UPDATE auth_sessions SET last_used_at = $2, ip_address = $5 \
       WHERE id IN (SELECT session_id FROM rotated)) \
     SELECT ",
    rotation_columns!(),
    "FROM rotated r JOIN t ON t.id = r.id JOIN s ON s.id = r.session_id ",
    "LEFT JOIN refresh_tokens n ON false ",
    "LEFT JOIN users u ON u.id = s.user_id"
);

/// The writes of a rotation in one statement, applied only while the token is unrotated and its
/// session unrevoked: the session row is locked first (as every writer of sessions and tokens
/// locks them: session, then token), re-checked on its latest version, then the token is marked
/// rotated (re-checked likewise by the UPDATE), the successor inserted and the session touched.
/// A concurrent rotation or revocation that committed first leaves `rotated` empty, and nothing
/// is written. Returns how many tokens were rotated: 1 or 0. `rotated_at` is the time of the
/// write, bounded as in [`ROTATION_FAST`] (`$8` the latest moment the request could write).
const ROTATION_WRITE: &str = "WITH live AS MATERIALIZED ( \
       SELECT id FROM auth_sessions WHERE id = $4 AND revoked_at IS NULL FOR UPDATE), \
     rotated AS ( \
       UPDATE refresh_tokens SET rotated_at = least(greatest($2, clock_timestamp()), $8), \
         replaced_by = $3 \
       WHERE id = $1 AND rotated_at IS NULL AND session_id IN (SELECT id FROM live) \
       RETURNING session_id), \
     successor AS ( \
       INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
       SELECT $3, session_id, $5, $6 FROM rotated), \
     touched AS ( \
       UPDATE auth_sessions SET last_used_at = $2, ip_address = $7 \
       WHERE id IN (SELECT session_id FROM rotated)) \
     SELECT count(*) FROM rotated";

/// Revokes a session that is still live (reuse detected, fingerprint rejected); 0 rows when a
/// concurrent writer revoked it first.
const REVOKE_LIVE_SESSION: &str = "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 \
     WHERE id = $1 AND revoked_at IS NULL";

/// How often a rotation reads and decides before giving up. Every lost compare-and-swap leaves the
/// token rotated or the session revoked, both for good, and a revoked session needs no write: the
/// third decision is final. One more for safety.
const ROTATION_ATTEMPTS: usize = 4;

/// One row of [`ROTATION_READ`]: the token, then the left-joined session (`s_`), successor (`n_`)
/// and user (`u_`), all NULL when absent.
#[derive(sqlx::FromRow)]
struct RotationRow {
    #[sqlx(flatten)]
    token: TokenRow,
    s_id: Option<Uuid>,
    s_user_id: Option<String>,
    s_device_name: Option<String>,
    s_ip_address: Option<String>,
    s_user_agent: Option<String>,
    s_fingerprint: Option<String>,
    s_created_at: Option<DateTime<Utc>>,
    s_last_used_at: Option<DateTime<Utc>>,
    s_expires_at: Option<DateTime<Utc>>,
    s_revoked_at: Option<DateTime<Utc>>,
    s_revoked_reason: Option<String>,
    n_id: Option<Uuid>,
    n_token_hash: Option<String>,
    n_created_at: Option<DateTime<Utc>>,
    n_rotated_at: Option<DateTime<Utc>>,
    n_replaced_by: Option<Uuid>,
    u_id: Option<String>,
    u_email: Option<String>,
    u_name: Option<String>,
    u_user_type: Option<String>,
    u_password_hash: Option<String>,
    u_google_id: Option<String>,
    u_email_verified: Option<bool>,
    u_avatar: Option<String>,
    u_created_at: Option<DateTime<Utc>>,
    u_last_login: Option<DateTime<Utc>>,
}

struct RotationState {
    token: TokenRecord,
    session: Option<SessionRecord>,
    successor: Option<TokenRecord>,
    user: Option<UserRecord>,
}

impl From<RotationRow> for RotationState {
    fn from(r: RotationRow) -> Self {
        let token = TokenRecord::from(r.token);
        // The NOT NULL columns of a joined row are all present when its key is.
        let session = match (
            r.s_id,
            r.s_user_id,
            r.s_device_name,
            r.s_ip_address,
            r.s_fingerprint,
            r.s_created_at,
            r.s_last_used_at,
            r.s_expires_at,
        ) {
            (
                Some(id),
                Some(user_id),
                Some(device_name),
                Some(ip_address),
                Some(fingerprint),
                Some(created_at),
                Some(last_used_at),
                Some(expires_at),
            ) => Some(SessionRecord {
                id,
                user_id,
                device_name,
                ip_address,
                user_agent: r.s_user_agent,
                fingerprint,
                created_at,
                last_used_at,
                expires_at,
                revoked_at: r.s_revoked_at,
                revoked_reason: r.s_revoked_reason,
            }),
            _ => None,
        };
        let successor = match (r.n_id, r.n_token_hash, r.n_created_at) {
            (Some(id), Some(token_hash), Some(created_at)) => Some(TokenRecord {
                id,
                session_id: token.session_id,
                token_hash,
                created_at,
                rotated_at: r.n_rotated_at,
                replaced_by: r.n_replaced_by,
            }),
            _ => None,
        };
        let user = match (
            r.u_id,
            r.u_email,
            r.u_name,
            r.u_user_type,
            r.u_email_verified,
            r.u_created_at,
        ) {
            (
                Some(id),
                Some(email),
                Some(name),
                Some(user_type),
                Some(email_verified),
                Some(created_at),
            ) => Some(UserRecord::from(UserRow {
                id,
                email,
                name,
                user_type,
                password_hash: r.u_password_hash,
                google_id: r.u_google_id,
                email_verified,
                avatar: r.u_avatar,
                created_at,
                last_login: r.u_last_login,
            })),
            _ => None,
        };
        Self {
            token,
            session,
            successor,
            user,
        }
    }
}

/// [`ROTATION_FAST`]: the rotation when the presented token was live, `None` when nothing was
/// written.
async fn rotate_live(
    conn: &mut PgConnection,
    request: &RotateRequest,
    latest_write: DateTime<Utc>,
) -> Result<Option<Rotation>, sqlx::Error> {
    let row: Option<RotationRow> = sqlx::query_as(ROTATION_FAST)
        .bind(&request.presented_hash)
        .bind(request.now)
        .bind(request.successor_id)
        .bind(&request.successor_hash)
        .bind(&request.ip_address)
        .bind(request.now - request.idle_ttl)
        .bind(request.reject_on_fingerprint_mismatch)
        .bind(&request.fingerprint)
        .bind(latest_write)
        .fetch_optional(conn)
        .await?;
    let Some(RotationState {
        token,
        session: Some(session),
        successor: None,
        user,
    }) = row.map(RotationState::from)
    else {
        return Ok(None);
    };
    // The statement's conditions are `decide_rotation`'s for `Rotate`; the tests run this check.
    debug_assert!(
        matches!(
            decide_rotation(&token, &session, None, request),
            RotationDecision::Rotate { .. }
        ),
        "the one-statement rotation and decide_rotation disagree"
    );
    let fingerprint_matched = session.fingerprint == request.fingerprint;
    Ok(Some(rotated(
        session,
        token.id,
        fingerprint_matched,
        user,
        request,
    )))
}

/// The answer for a token just rotated: its session as the write left it (touched now, from
/// the request's address).
fn rotated(
    mut session: SessionRecord,
    old_token_id: Uuid,
    fingerprint_matched: bool,
    user: Option<UserRecord>,
    request: &RotateRequest,
) -> Rotation {
    session.last_used_at = request.now;
    session.ip_address = request.ip_address.clone();
    Rotation {
        outcome: RotateOutcome::Rotated {
            session,
            old_token_id,
            fingerprint_matched,
        },
        user,
        stored_successor_id: None,
    }
}

async fn rotation_state(
    conn: &mut PgConnection,
    presented_hash: &str,
) -> Result<Option<RotationState>, sqlx::Error> {
    let row: Option<RotationRow> = sqlx::query_as(ROTATION_READ)
        .bind(presented_hash)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(RotationState::from))
}

impl PgStore {
    /// [`Store::user_by_id`] from the database, kept in the cache if nothing changed meanwhile.
    async fn read_user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let ticket = self.users.as_ref().and_then(|users| users.ticket());
        let row: Option<UserRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn))?;
        let user = row.map(UserRecord::from);
        if let (Some(users), Some(ticket), Some(user)) = (&self.users, ticket, &user) {
            users.keep(ticket, user);
        }
        Ok(user)
    }

    async fn rotate(&self, request: &RotateRequest) -> StoreResult<Rotation> {
        // If the request gives up midway, `held` closes its connection (see `Held`).
        let mut held = Held::default();
        let rotation = self.rotate_on(&mut held, request).await;
        held.release();
        rotation
    }

    async fn rotate_on(&self, held: &mut Held, request: &RotateRequest) -> StoreResult<Rotation> {
        // The first statement is repeated on another connection after a connection-level failure,
        // even though it writes: the successor is derived from the presented token, so when the
        // first attempt was applied, the repeat finds the token rotated moments ago to that same
        // successor and the long way answers with it (grace). What follows is not repeated.
        let mut retried = false;
        loop {
            let conn = held.hold(self.conn().await?);
            match rotate_live(conn, request, self.latest_write(request)).await {
                Ok(Some(rotation)) => return Ok(rotation),
                Ok(None) => break,
                Err(e) if !retried && is_connection_error(&e) => {
                    self.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        let conn = held.connection()?;
        let mut state = rotation_state(conn, &request.presented_hash)
            .await
            .map_err(|e| self.fail(e))?;
        for _ in 0..ROTATION_ATTEMPTS {
            let Some(found) = state else {
                return Ok(RotateOutcome::Invalid {
                    reason: InvalidReason::Unknown,
                    session: None,
                    token_id: None,
                }
                .into());
            };
            if let Some(rotation) = self.apply_rotation(conn, found, request).await? {
                return Ok(rotation);
            }
            // Lost a race: decide again on what the winner left.
            state = rotation_state(conn, &request.presented_hash)
                .await
                .map_err(|e| self.fail(e))?;
        }
        Err(StoreError::Other(anyhow::anyhow!(
            "refresh token rotation lost {ROTATION_ATTEMPTS} races in a row"
        )))
    }

    /// Decides on `state` and applies the decision; `None` when its compare-and-swap found the
    /// state changed (nothing was written).
    async fn apply_rotation(
        &self,
        conn: &mut PgConnection,
        state: RotationState,
        request: &RotateRequest,
    ) -> StoreResult<Option<Rotation>> {
        let RotationState {
            token,
            session,
            successor,
            user,
        } = state;
        let Some(mut session) = session else {
            return Ok(Some(
                RotateOutcome::Invalid {
                    reason: InvalidReason::Unknown,
                    session: None,
                    token_id: Some(token.id),
                }
                .into(),
            ));
        };
        let rotation = match decide_rotation(&token, &session, successor.as_ref(), request) {
            RotationDecision::Rotate {
                fingerprint_matched,
            } => {
                let successor = request.successor_in(token.session_id);
                let written: i64 = sqlx::query_scalar(ROTATION_WRITE)
                    .bind(token.id)
                    .bind(request.now)
                    .bind(successor.id)
                    .bind(successor.session_id)
                    .bind(&successor.token_hash)
                    .bind(successor.created_at)
                    .bind(&request.ip_address)
                    .bind(self.latest_write(request))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))?;
                if written == 0 {
                    return Ok(None);
                }
                rotated(session, token.id, fingerprint_matched, user, request)
            }
            RotationDecision::Grace {
                fingerprint_matched,
            } => Rotation {
                outcome: RotateOutcome::Grace {
                    session,
                    old_token_id: token.id,
                    fingerprint_matched,
                },
                user,
                stored_successor_id: successor.map(|s| s.id),
            },
            RotationDecision::Reuse => {
                if !self
                    .revoke_live(conn, &mut session, request.now, "token_reuse")
                    .await?
                {
                    return Ok(None);
                }
                RotateOutcome::ReuseDetected {
                    session,
                    token_id: token.id,
                }
                .into()
            }
            RotationDecision::RejectFingerprint => {
                if !self
                    .revoke_live(conn, &mut session, request.now, "fingerprint_mismatch")
                    .await?
                {
                    return Ok(None);
                }
                RotateOutcome::FingerprintRejected {
                    session,
                    token_id: token.id,
                }
                .into()
            }
            RotationDecision::Invalid(reason) => RotateOutcome::Invalid {
                reason,
                session: Some(session),
                token_id: Some(token.id),
            }
            .into(),
        };
        Ok(Some(rotation))
    }

    /// Revokes `session` if it is still live, updating the record; false when it was not.
    async fn revoke_live(
        &self,
        conn: &mut PgConnection,
        session: &mut SessionRecord,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(REVOKE_LIVE_SESSION)
            .bind(session.id)
            .bind(now)
            .bind(reason)
            .execute(conn)
            .await
            .map_err(|e| self.fail(e))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        session.revoked_at = Some(now);
        session.revoked_reason = Some(reason.to_owned());
        Ok(true)
    }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn database(&self) -> Option<Database> {
        Some(self.db.clone())
    }

    fn user_cache(&self) -> Option<Arc<UserCache>> {
        self.users.clone()
    }

    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        batch: usize,
    ) -> StoreResult<u64> {
        let cutoff = now - chrono::Duration::days(super::ENDED_SESSION_RETENTION_DAYS);
        let mut conn = self.conn().await?;
        // SKIP LOCKED: never wait behind a refresh that holds a session row.
        let done = sqlx::query(
            "DELETE FROM auth_sessions WHERE id IN ( \
               SELECT id FROM auth_sessions \
               WHERE revoked_at < $1 OR expires_at < $1 OR last_used_at < $2 \
               LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(cutoff - idle_ttl)
        .bind(batch as i64)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        read_retrying!(self, |conn| sqlx::query("SELECT 1").execute(&mut *conn))?;
        Ok(())
    }

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login, email_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.user_type.as_str())
        .bind(&user.password_hash)
        .bind(&user.google_id)
        .bind(user.email_verified)
        .bind(&user.avatar)
        .bind(user.created_at)
        .bind(user.last_login)
        .bind(Email::key_of(&user.email))
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE ",
            by_email!()
        ))
        .bind(email.key())
        .bind(email.as_str())
        .fetch_optional(&mut *conn))?;
        Ok(row.map(UserRecord::from))
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        if let Some(users) = &self.users {
            if let Some(user) = users.get(id) {
                return Ok(Some(user));
            }
            // The database is known to be unreachable: a user read less than the cache's time
            // to live ago rather than a 503 (see user_cache).
            if self.db.is_unreachable()
                && let Some(user) = users.get_during_outage(id)
            {
                return Ok(Some(user));
            }
        }
        // Boxed on its own: the read's state (sqlx's futures) is large, and a hit should not pay
        // for moving it into this method's box on every call.
        Box::pin(self.read_user_by_id(id)).await
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .bind(hash)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn remove_password(&self, user_id: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        let done =
            sqlx::query("UPDATE users SET password_hash = NULL, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn set_last_login(&self, user_id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        sqlx::query("UPDATE users SET last_login = $2 WHERE id = $1")
            .bind(user_id)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        self.changed_here(user_id);
        Ok(())
    }

    async fn set_user_type(&self, email: &Email, user_type: UserType) -> StoreResult<UserRecord> {
        let mut conn = self.conn().await?;
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET user_type = $3, updated_at = now() WHERE id = (SELECT id FROM users WHERE ",
            by_email!(),
            ") RETURNING ",
            user_columns!()
        ))
        .bind(email.key())
        .bind(email.as_str())
        .bind(user_type.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        let user = row.map(UserRecord::from).ok_or(StoreError::NotFound)?;
        self.changed_here(&user.id);
        Ok(user)
    }

    async fn import_user(&self, user: &UserRecord) -> StoreResult<ImportOutcome> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "INSERT INTO users (id, email, name, user_type, password_hash, google_id, email_verified, avatar, \
             created_at, last_login, email_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(user.user_type.as_str())
        .bind(&user.password_hash)
        .bind(&user.google_id)
        .bind(user.email_verified)
        .bind(&user.avatar)
        .bind(user.created_at)
        .bind(user.last_login)
        .bind(Email::key_of(&user.email))
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(if done.rows_affected() == 1 {
            ImportOutcome::Inserted
        } else {
            ImportOutcome::Skipped
        })
    }

    async fn email_collisions(&self) -> StoreResult<Vec<super::EmailCollision>> {
        let mut conn = self.conn().await?;
        email_keys::collisions(&mut conn)
            .await
            .map_err(|e| self.fail(e))
    }

    async fn create_session(
        &self,
        new: &NewSession,
        max_live: usize,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<Uuid>> {
        // One statement, so one round trip and one commit per sign-in, `last_login` included.
        // Its parts see the same snapshot, so the eviction does not see the new session: it
        // keeps the newest `max_live - 1` others.
        //
        // The ids are the caller's, so the statement is idempotent: a repeat inserts nothing
        // (`ON CONFLICT`, and the token only with its new session) and revokes nothing more,
        // since the new session is excluded from the count. That makes it safe to repeat once
        // after a connection-level failure, when it may or may not have been applied (a pooled
        // connection that a restart of Postgres broke fails on first use).
        //
        // A sign-in that gives up midway must not store its session later: nobody has its token,
        // and it would count against (and evict from) the user's live sessions (see `Held`).
        let mut held = Held::default();
        let mut retried = false;
        let created = loop {
            let conn = held.hold(self.conn().await?);
            match create_session(conn, new, max_live, idle_ttl).await {
                Ok(evicted) => {
                    if new.records_login {
                        self.changed_here(&new.session.user_id);
                    }
                    break Ok(evicted);
                }
                Err(e) if !retried && is_connection_error(&e) => {
                    self.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => break Err(self.fail(e)),
            }
        };
        held.release();
        created
    }

    async fn evict_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        max_live: usize,
        idle_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        let mut conn = self.conn().await?;
        // `revoked_at IS NULL` again outside: a logout that ends one of them meanwhile keeps its
        // own reason.
        sqlx::query_scalar(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = 'session_limit' \
             WHERE revoked_at IS NULL AND id IN ( \
               SELECT id FROM auth_sessions WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL \
                 AND expires_at > $3 AND last_used_at > $4 \
               ORDER BY created_at DESC, id DESC OFFSET $5) \
             RETURNING id",
        )
        .bind(user_id)
        .bind(keep)
        .bind(now)
        .bind(now - idle_ttl)
        .bind(others_kept(max_live))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(e))
    }

    async fn rotate_refresh_token(&self, request: &RotateRequest) -> StoreResult<RotateOutcome> {
        Ok(self.rotate(request).await?.outcome)
    }

    async fn rotate_refresh_token_with_user(
        &self,
        request: &RotateRequest,
    ) -> StoreResult<Rotation> {
        self.rotate(request).await
    }

    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(SessionRecord, Uuid)>> {
        read_retrying!(self, |conn| session_by_token_hash(&mut conn, token_hash))
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $3, revoked_reason = $4 \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_all_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<u64> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    async fn live_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<SessionRecord>> {
        let rows: Vec<SessionRow> = read_retrying!(self, |conn| sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL \
             AND expires_at > $2 AND last_used_at > $3 ORDER BY last_used_at DESC"
        ))
        .bind(user_id)
        .bind(now)
        .bind(now - idle_ttl)
        .fetch_all(&mut *conn))?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>> {
        read_retrying!(self, |conn| sqlx::query_as(
            "SELECT id, revoked_at FROM auth_sessions WHERE revoked_at >= $1"
        )
        .bind(since)
        .fetch_all(&mut *conn))
    }

    async fn session(&self, session_id: Uuid) -> StoreResult<Option<SessionRecord>> {
        read_retrying!(self, |conn| session_by_id(&mut conn, session_id))
    }

    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        self.pg_user_by_identity(issuer, subject).await
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<super::IdentityRecord>> {
        self.pg_identities_of(user_id).await
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &super::IdentityRecord,
    ) -> StoreResult<()> {
        self.pg_insert_user_with_identity(user, identity).await
    }

    async fn link_identity(&self, identity: &super::IdentityRecord) -> StoreResult<()> {
        self.pg_link_identity(identity).await
    }

    async fn linked_with_password(&self) -> StoreResult<Vec<UserRecord>> {
        self.pg_linked_with_password().await
    }

    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.pg_touch_identity(issuer, subject, email, at).await
    }
}
