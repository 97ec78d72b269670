//! Persistence of users, sessions and identities behind traits (one per kind of record, joined
//! in [`Store`]), with two backends chosen once at start: Postgres (sqlx) and JSON files (the old
//! service's `users.json`, the embedded default).
//!
//! A session is one refresh-token family: created at login, rotated on every refresh, revoked by
//! logout. Decisions that must be atomic (rotation, reuse detection, the session cap) are made
//! inside the store, so concurrent requests cannot fork a family on either backend.

pub mod json_file;
pub mod outbox;
pub mod postgres;
pub mod two_factor;

pub use crate::domain::IdentityRecord;
pub use two_factor::{TwoFactorRecord, TwoFactorStore};

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{Settings, StorageKind};
use crate::db::Database;
use crate::domain::{Email, UNSET_FINGERPRINT, UserRecord, UserType};
use outbox::OutboxStore;
use postgres::user_cache::UserCache;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A refresh-token family as stored. The raw refresh token is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: String,
    pub device_name: String,
    pub ip_address: String,
    pub user_agent: Option<String>,
    /// Hex SHA-256 device fingerprint of the client that created the session.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// The absolute end of the session; the idle limit is counted from `last_used_at`.
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

impl SessionRecord {
    pub fn is_live(&self, now: DateTime<Utc>, idle_ttl: chrono::Duration) -> bool {
        self.revoked_at.is_none() && now < self.expires_at && now < self.last_used_at + idle_ttl
    }
}

/// One refresh token of a family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: Uuid,
    pub session_id: Uuid,
    /// Hex SHA-256 of the raw token.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    /// Set when the token was rotated: it is dead from then on, apart from the grace window.
    pub rotated_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: SessionRecord,
    pub token: TokenRecord,
    /// The session starts with a password login: the user's `last_login` becomes the session's
    /// `created_at` in the same write (on Postgres, the same statement and commit).
    pub records_login: bool,
}

/// Everything the store needs to rotate a refresh token in one atomic step.
#[derive(Debug, Clone)]
pub struct RotateRequest {
    pub presented_hash: String,
    /// The successor's id and hash. The successor is derived from the presented token (see
    /// `auth::refresh`), so concurrent refreshes inside the grace window all get the same one.
    pub successor_id: Uuid,
    pub successor_hash: String,
    pub now: DateTime<Utc>,
    pub grace: chrono::Duration,
    pub idle_ttl: chrono::Duration,
    pub fingerprint: String,
    pub ip_address: String,
    pub reject_on_fingerprint_mismatch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RotateOutcome {
    /// The presented token was live and is now rotated to `successor`.
    Rotated {
        session: SessionRecord,
        old_token_id: Uuid,
        fingerprint_matched: bool,
    },
    /// The token was rotated moments ago (inside the grace window) to the same successor, which
    /// is still live: this request gets that successor too.
    Grace {
        session: SessionRecord,
        old_token_id: Uuid,
        fingerprint_matched: bool,
    },
    /// A rotated token came back after the grace window: the whole family is now revoked.
    ReuseDetected {
        session: SessionRecord,
        token_id: Uuid,
    },
    /// The fingerprint differed and policy is `reject`: the session is now revoked.
    FingerprintRejected {
        session: SessionRecord,
        token_id: Uuid,
    },
    /// Unknown token, or one whose session is revoked or expired.
    Invalid {
        reason: InvalidReason,
        session: Option<SessionRecord>,
        token_id: Option<Uuid>,
    },
}

/// A rotation's outcome together with what a backend could read in the same step, so the refresh
/// flow needs no further queries. Fields a backend leaves `None` the caller looks up itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub outcome: RotateOutcome,
    /// The session's user on `Rotated` and `Grace`, read with the token; `None` when the backend
    /// did not read it, or found no such user (the caller then asks [`UserStore::user_by_id`]).
    pub user: Option<UserRecord>,
    /// On `Grace`: the id the shared successor is stored under (the first request's id, not this
    /// request's unused `successor_id`).
    pub stored_successor_id: Option<Uuid>,
}

impl From<RotateOutcome> for Rotation {
    fn from(outcome: RotateOutcome) -> Self {
        Self {
            outcome,
            user: None,
            stored_successor_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Unknown,
    Revoked,
    Expired,
    /// Rotated inside the grace window, but its successor has moved on already.
    Superseded,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_token",
            Self::Revoked => "session_revoked",
            Self::Expired => "session_expired",
            Self::Superseded => "token_superseded",
        }
    }
}

/// What a rotation attempt finds, decided in one place for both backends; each backend loads the
/// rows under its lock or transaction, asks this, and applies the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationDecision {
    Rotate { fingerprint_matched: bool },
    Grace { fingerprint_matched: bool },
    Reuse,
    RejectFingerprint,
    Invalid(InvalidReason),
}

/// Whether the device refreshing is the session's. A session imported from the old service has
/// no fingerprint yet ([`UNSET_FINGERPRINT`]): the rotation gives it the device's.
pub fn fingerprint_matches(session: &SessionRecord, request: &RotateRequest) -> bool {
    session.fingerprint == request.fingerprint || session.fingerprint == UNSET_FINGERPRINT
}

/// `successor` is the token the presented one was rotated to, when it was.
pub fn decide_rotation(
    token: &TokenRecord,
    session: &SessionRecord,
    successor: Option<&TokenRecord>,
    request: &RotateRequest,
) -> RotationDecision {
    use RotationDecision::*;
    if session.revoked_at.is_some() {
        return Invalid(InvalidReason::Revoked);
    }
    if !session.is_live(request.now, request.idle_ttl) {
        return Invalid(InvalidReason::Expired);
    }
    let fingerprint_matched = fingerprint_matches(session, request);
    if !fingerprint_matched && request.reject_on_fingerprint_mismatch {
        return RejectFingerprint;
    }
    match token.rotated_at {
        None => Rotate {
            fingerprint_matched,
        },
        Some(rotated_at) if request.now - rotated_at <= request.grace => match successor {
            // The successor is derived from the presented token, so equal hashes mean this
            // client really holds the parent and gets the same child as the first request.
            Some(next)
                if next.rotated_at.is_none() && next.token_hash == request.successor_hash =>
            {
                Grace {
                    fingerprint_matched,
                }
            }
            _ => Invalid(InvalidReason::Superseded),
        },
        Some(_) => Reuse,
    }
}

impl RotateRequest {
    /// The successor token record, in the family of the presented token.
    pub fn successor_in(&self, session_id: Uuid) -> TokenRecord {
        TokenRecord {
            id: self.successor_id,
            session_id,
            token_hash: self.successor_hash.clone(),
            created_at: self.now,
            rotated_at: None,
            replaced_by: None,
        }
    }
}

/// An account that cannot be found by email: either its address is another spelling of an
/// earlier account's mailbox (same canonical key, [`crate::domain::Email::key`]), and the earlier
/// account (the holder) answers for that mailbox; or its address has no key (one accepted under
/// laxer rules that today's refuse, [`crate::domain::Email::key_of`]; on Postgres also a row whose
/// key the database would not store). Kept, found by id, never by email. Reported by `flux-auth
/// users email-collisions` and at start, for an operator to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailCollision {
    pub user_id: String,
    pub email: String,
    /// The earlier account that holds the mailbox; `None` when this account has no key.
    pub holder: Option<KeyHolder>,
}

/// The account that holds a mailbox another account's address also spells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub id: String,
    pub email: String,
}

/// One warning per account that cannot be found by email: the operator decides what to do with
/// it (see docs/OPERATIONS.md, "Moving from the old service").
pub fn warn_of_collisions(collisions: &[EmailCollision]) {
    for c in collisions {
        match &c.holder {
            Some(holder) => tracing::warn!(
                user_id = %c.user_id, email = %c.email, holder_id = %holder.id,
                holder_email = %holder.email,
                "two accounts share one mailbox: the later one cannot sign in by email \
                 (flux-auth users email-collisions lists them)"
            ),
            None => tracing::warn!(
                user_id = %c.user_id, email = %c.email,
                "an account's address has no email key: it cannot sign in by email \
                 (flux-auth users email-collisions lists them)"
            ),
        }
    }
}

/// What `PATCH /api/auth/me` changes: each field only when present; `avatar: Some(None)` removes
/// the avatar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub name: Option<String>,
    pub avatar: Option<Option<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Inserted,
    /// The id or email is already there; the existing user is left as it is.
    Skipped,
}

/// The whole store, as the service holds it (`Arc<dyn Store>`): users, sessions and identities
/// of one backend, and its health.
#[async_trait]
pub trait Store:
    UserStore + SessionStore + IdentityStore + OutboxStore + DeviceStore + TwoFactorStore + 'static
{
    /// `postgresql` or `file`, as `/health` reports it.
    fn kind(&self) -> &'static str;
    /// Cheap liveness probe for health checks.
    async fn ping(&self) -> StoreResult<()>;
}

/// User accounts.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a new user; `Conflict("email")` when an account has the email's canonical key.
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// The account for `email`'s mailbox: found by its canonical key, whatever the spelling.
    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>>;
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()>;
    /// Removes the user's password (none left is no error); `NotFound` when the user is gone.
    async fn remove_password(&self, user_id: &str) -> StoreResult<()>;
    async fn set_last_login(&self, user_id: &str, at: DateTime<Utc>) -> StoreResult<()>;
    async fn set_user_type(&self, email: &Email, user_type: UserType) -> StoreResult<UserRecord>;
    /// Inserts an imported user unless its id or its email's canonical key exists (idempotent
    /// re-runs).
    async fn import_user(&self, user: &UserRecord) -> StoreResult<ImportOutcome>;
    /// Accounts that cannot be found by email: those that share their mailbox with an earlier
    /// account, and those whose address has no key (see [`EmailCollision`]).
    async fn email_collisions(&self) -> StoreResult<Vec<EmailCollision>>;
    /// Applies `change` and sets `updated_at` to `at`; returns the user as changed, `NotFound`
    /// when the user is gone. Every instance's copy of the user is dropped (on Postgres, by the
    /// change announcement).
    async fn update_profile(
        &self,
        user_id: &str,
        change: &ProfileChange,
        at: DateTime<Utc>,
    ) -> StoreResult<UserRecord>;
    /// The user's stored settings, as last saved (`None`: never saved); `NotFound` when the user
    /// is gone.
    async fn user_settings(&self, user_id: &str) -> StoreResult<Option<serde_json::Value>>;
    /// Replaces the user's stored settings whole and sets `updated_at` to `at`; `NotFound` when
    /// the user is gone.
    async fn set_user_settings(
        &self,
        user_id: &str,
        settings: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// Sessions (refresh-token families) and their tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session and its first token (and the user's `last_login` when
    /// `records_login`). When the user then has more than `max_live` live sessions, the oldest
    /// others are revoked, never the new one; their ids are returned. Creating the same session
    /// again (same ids) stores nothing twice and revokes nothing more, so a retry is safe.
    async fn create_session(
        &self,
        new: &NewSession,
        max_live: usize,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<Uuid>>;
    /// Revokes (reason `session_limit`) the user's oldest live sessions other than `keep`, so
    /// that with `keep` at most `max_live` are live at `now`; returns their ids. A sign-in calls
    /// this only once its events are kept, so a sign-in that is withdrawn evicts nothing. A
    /// repeat revokes nothing more.
    async fn evict_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        max_live: usize,
        idle_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>>;
    async fn rotate_refresh_token(&self, request: &RotateRequest) -> StoreResult<RotateOutcome>;
    /// [`SessionStore::rotate_refresh_token`], plus the session's user and the stored
    /// successor's id when the backend reads them in the same step (Postgres: one query for all
    /// of it). The default reads neither; the refresh flow then looks them up itself.
    async fn rotate_refresh_token_with_user(
        &self,
        request: &RotateRequest,
    ) -> StoreResult<Rotation> {
        Ok(self.rotate_refresh_token(request).await?.into())
    }
    /// The session a (live or rotated) refresh token belongs to, with that token's id.
    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(SessionRecord, Uuid)>>;
    /// Revokes one session of the user; false when it was not the user's live session.
    async fn revoke_session(
        &self,
        user_id: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool>;
    /// Revokes every live session of the user but `keep`; returns their ids.
    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        reason: &str,
    ) -> StoreResult<Vec<Uuid>>;
    /// Revokes every live session of the user; returns how many.
    async fn revoke_all_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<u64>;
    async fn live_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<SessionRecord>>;
    async fn session(&self, session_id: Uuid) -> StoreResult<Option<SessionRecord>>;
    /// Sessions revoked at or after `since` (with when), so that a restarted instance without
    /// Redis can deny their still-unexpired access tokens again.
    async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>>;
    /// Deletes up to `batch` sessions (and their tokens) that ended (revoked, expired or idle)
    /// more than [`ENDED_SESSION_RETENTION_DAYS`] ago; returns how many. Callers loop until a
    /// batch comes back short, so no statement holds locks for long.
    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        batch: usize,
    ) -> StoreResult<u64>;
}

/// Provider identities (Google, or any OpenID provider) linked to users.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// The user that the provider identity (`issuer`, `subject`) signs in as. For Google's issuer a
    /// user whose legacy `google_id` (the old service's link) is `subject` counts too.
    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>>;
    /// The provider identities linked to a user, including a legacy `google_id`.
    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>>;
    /// Inserts a new user and its first identity in one atomic step: `Conflict("email")` when the
    /// email is taken, `Conflict("identity")` when the identity is linked already (a lost race).
    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &IdentityRecord,
    ) -> StoreResult<()>;
    /// Links an identity to an existing user: `Conflict("identity")` when it is linked to a user
    /// already, `NotFound` when the user is gone.
    async fn link_identity(&self, identity: &IdentityRecord) -> StoreResult<()>;
    /// Accounts that both a provider identity (a legacy `google_id` included) and a password
    /// open, oldest first: where a password of whoever registered the address before its owner
    /// entered the account through the provider can be (see docs/SECURITY.md, group E).
    async fn linked_with_password(&self) -> StoreResult<Vec<UserRecord>>;
    /// Records a sign-in through an identity: when, and the email the provider reports now. The
    /// account's own email is never changed here.
    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// What a sign-in's device was to its user (see [`DeviceStore::remember_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSeen {
    /// The user had no device remembered yet: their first sign-in, or the first since devices
    /// are remembered.
    First,
    Known,
    /// Never seen for this user, who has signed in from others.
    New,
}

/// The devices each user signed in from, as hashes of their fingerprints.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Remembers `fingerprint_hash` among `user_id`'s devices, seen `at`, keeping at most `cap`
    /// (the least recently seen go), and answers what it was. A user who does not exist has no
    /// devices (`First`, nothing kept).
    async fn remember_device(
        &self,
        user_id: &str,
        fingerprint_hash: &str,
        at: DateTime<Utc>,
        cap: usize,
    ) -> StoreResult<DeviceSeen>;
}

/// Ended sessions are kept this long (reuse detection, audit, the sessions history), then deleted.
pub const ENDED_SESSION_RETENTION_DAYS: i64 = 7;

/// The configured store, opened, with what the service runs beside it when it is Postgres.
pub struct OpenedStore {
    pub store: Arc<dyn Store>,
    /// The store's database (Postgres): its pool's metrics, its circuit (whose recovery wakes the
    /// security log's writer), its probe (stopped at shutdown).
    pub database: Option<Database>,
    /// The store's in-memory copy of recently read users (Postgres), whose change feed the
    /// service starts ([`UserCache::follow`]).
    pub user_cache: Option<Arc<UserCache>>,
}

/// Opens the configured store. A Postgres store that cannot connect yet still opens: it reports
/// `Unavailable` until the database answers and its migrations have run.
/// Its pool's acquire wait goes to `metrics` (`pool="users"`).
pub async fn open(
    settings: &Settings,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<OpenedStore> {
    Ok(match settings.storage_kind() {
        StorageKind::Postgres => {
            let store =
                postgres::PgStore::open(settings, metrics.pool(crate::metrics::POOL_USERS))?;
            OpenedStore {
                database: Some(store.database().clone()),
                user_cache: store.user_cache().cloned(),
                store: Arc::new(store),
            }
        }
        StorageKind::File => OpenedStore {
            store: Arc::new(json_file::FileStore::open(&settings.data_dir).await?),
            database: None,
            user_cache: None,
        },
    })
}
