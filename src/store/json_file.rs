//! The JSON-file store: `users.json` in the old service's shape (`{"users":[...]}`) and the
//! refresh-token families in `sessions.json` plus `sessions.journal`, all in `DATA_DIR`.
//!
//! `users.json` is a [`GroupFile`]: changes apply in order to the latest state, and a write makes
//! that state durable (temp file, fsync, rename, folder fsync) and only then publishes it and
//! answers. The sessions are a [`SessionLog`]: `sessions.json` is a snapshot and each commit
//! appends its changes, and only those, to `sessions.journal` (one line, one fdatasync), which is
//! folded into a new snapshot from time to time, off the request path (see `journal.rs`). Either
//! way a crash or a failed write never leaves an acknowledged change unsaved or an unsaved change
//! visible, concurrent requests never lose each other's updates, changes that arrive during a
//! write share the next one (group commit), and reads never wait for a write.

use std::path::Path;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::{
    IdentityStore, ImportOutcome, InvalidReason, NewSession, RotateOutcome, RotateRequest,
    RotationDecision, SessionRecord, SessionStore, Store, StoreError, StoreResult, TokenRecord,
    UserStore, decide_rotation,
};
use crate::domain::{Email, UserRecord, UserType, format_timestamp};
use crate::durable_file;

mod group_commit;
mod identities;
mod journal;
mod session_state;
mod users;

use group_commit::GroupFile;
use journal::SessionLog;
pub use journal::{compact_sessions, read_sessions};
use session_state::{Sessions, Tx, ended_at};
use users::Users;

pub struct FileStore {
    /// users.json. When an operator changes the file (`flux-auth users set-type`) the running
    /// service notices by its identity ([`FileStamp`]) and reloads it.
    users: GroupFile<Users>,
    /// sessions.json and sessions.journal.
    sessions: SessionLog,
}

/// users.json as the old service wrote it, pretty-printed: byte for byte what
/// `serde_json::to_writer_pretty` gives for `{"users": [...]}`, assembled from each user's
/// entry, which is encoded only when the user is new or changed (see `users.rs`). Runs on every
/// commit of users.json.
fn encode_users(users: &Users) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + users.len() * 512);
    out.extend_from_slice(b"{\n  \"users\": [");
    let mut empty = true;
    for entry in users.entries(encode_user) {
        out.extend_from_slice(if empty { b"\n" } else { b",\n" });
        out.extend_from_slice(entry?);
        empty = false;
    }
    if !empty {
        out.extend_from_slice(b"\n  ");
    }
    out.extend_from_slice(b"]\n}");
    Ok(out)
}

/// One user's entry in users.json: the user pretty-printed, every line four spaces deeper, as it
/// sits inside `{"users": [...]}`. Only the formatting puts line breaks in JSON (strings escape
/// theirs), so indenting after each one is exact.
fn encode_user(user: &UserRecord) -> anyhow::Result<Vec<u8>> {
    const INDENT: &[u8] = b"    ";
    let flat = serde_json::to_vec_pretty(&FileUserOut::from(user)).context("serialising a user")?;
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 4);
    out.extend_from_slice(INDENT);
    for &byte in &flat {
        out.push(byte);
        if byte == b'\n' {
            out.extend_from_slice(INDENT);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: std::time::SystemTime,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok()?,
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A user as the old service wrote it. Unknown fields are kept in `extra` and written back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileUser {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_type: Option<String>,
    /// The old service called the hash `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    google_id: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_login: Option<String>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A [`FileUser`] to write, borrowed from the record: the same fields, in the same order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileUserOut<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    user_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    google_id: Option<&'a str>,
    email_verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar: Option<&'a str>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_login: Option<String>,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UsersFile<T> {
    users: T,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string or number, got {other}"
        ))),
    }
}

fn parse_time(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl From<FileUser> for UserRecord {
    fn from(u: FileUser) -> Self {
        let email_verified = u.email_verified || u.google_id.is_some();
        Self {
            created_at: parse_time(u.created_at.as_deref()).unwrap_or(DateTime::UNIX_EPOCH),
            last_login: parse_time(u.last_login.as_deref()),
            user_type: u
                .user_type
                .as_deref()
                .and_then(UserType::parse)
                .unwrap_or(UserType::Client),
            email: u.email.trim().to_lowercase(),
            id: u.id,
            name: u.name,
            password_hash: u.password.filter(|h| !h.is_empty()),
            google_id: u.google_id,
            email_verified,
            avatar: u.avatar,
            extra: u.extra,
        }
    }
}

impl<'a> From<&'a UserRecord> for FileUserOut<'a> {
    fn from(u: &'a UserRecord) -> Self {
        Self {
            id: &u.id,
            email: &u.email,
            name: &u.name,
            user_type: u.user_type.as_str(),
            password: u.password_hash.as_deref(),
            google_id: u.google_id.as_deref(),
            email_verified: u.email_verified,
            avatar: u.avatar.as_deref(),
            created_at: format_timestamp(u.created_at),
            last_login: u.last_login.map(format_timestamp),
            extra: &u.extra,
        }
    }
}

/// Reads the old service's `users.json`; used at start and by `import-users`.
pub fn read_users_file(path: &Path) -> anyhow::Result<Vec<UserRecord>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let file: UsersFile<Vec<FileUser>> = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a users.json of the form {{\"users\":[...]}}",
            path.display()
        )
    })?;
    Ok(file.users.into_iter().map(UserRecord::from).collect())
}

impl FileStore {
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        durable_file::ensure_private_dir(dir)
            .with_context(|| format!("could not create data folder {}", dir.display()))?;
        let users_path = dir.join("users.json");
        let users = if users_path.exists() {
            read_users_file(&users_path)?
        } else {
            Vec::new()
        };
        let sessions = SessionLog::open(dir)?;
        {
            let state = sessions.read();
            tracing::debug!(
                sessions = state.session_count(),
                tokens = state.token_count(),
                seq = state.seq,
                "sessions loaded"
            );
        }
        let users = Users::new(users);
        super::warn_of_collisions(&users.collisions());
        Ok(Self {
            users: GroupFile::new(users_path, users, encode_users),
            sessions,
        })
    }

    /// Applies `change` to the users (re-read first if users.json was replaced by someone
    /// else); returns once the change is on disk. `change` must not alter the users when it
    /// returns an error.
    async fn update_users<T>(
        &self,
        change: impl FnOnce(&mut Users) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.reload_users_if_replaced().await?;
        self.users.update(change).await
    }

    /// The users, re-read first if users.json was replaced by someone else (the CLI).
    async fn users(&self) -> StoreResult<std::sync::Arc<Users>> {
        self.reload_users_if_replaced().await?;
        Ok(self.users.read())
    }

    async fn reload_users_if_replaced(&self) -> StoreResult<()> {
        let reloaded = self
            .users
            .reload_if_replaced(|path| read_users_file(path).map(Users::new))
            .await
            .map_err(StoreError::Other)?;
        if reloaded {
            let users = self.users.read().len();
            tracing::info!(users, "users.json changed on disk; reloaded");
        }
        Ok(())
    }

    /// Applies `change` to the sessions; returns once it is on disk. `change` must not alter
    /// them when it returns an error.
    async fn update_sessions<T>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.sessions.update(change).await
    }
}

#[async_trait]
impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl UserStore for FileStore {
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        self.update_users(|users| {
            if users.holder_of(&user.email).is_some() {
                return Err(StoreError::Conflict("email"));
            }
            if users.by_id(&user.id).is_some() {
                return Err(StoreError::Conflict("id"));
            }
            users.push(user.clone());
            Ok(())
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>> {
        Ok(self.users().await?.by_email(email.key()).cloned())
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        Ok(self.users().await?.by_id(id).cloned())
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            user.password_hash = Some(hash.to_owned());
            Ok(())
        })
        .await
    }

    async fn remove_password(&self, user_id: &str) -> StoreResult<()> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            user.password_hash = None;
            Ok(())
        })
        .await
    }

    async fn set_last_login(&self, user_id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            user.last_login = Some(at);
            Ok(())
        })
        .await
    }

    async fn set_user_type(&self, email: &Email, user_type: UserType) -> StoreResult<UserRecord> {
        self.update_users(|users| {
            let user = users
                .by_email_mut(email.key())
                .ok_or(StoreError::NotFound)?;
            user.user_type = user_type;
            Ok(user.clone())
        })
        .await
    }

    async fn import_user(&self, user: &UserRecord) -> StoreResult<ImportOutcome> {
        self.update_users(|users| {
            if users.by_id(&user.id).is_some() || users.holder_of(&user.email).is_some() {
                return Ok(ImportOutcome::Skipped);
            }
            users.push(user.clone());
            Ok(ImportOutcome::Inserted)
        })
        .await
    }

    async fn email_collisions(&self) -> StoreResult<Vec<super::EmailCollision>> {
        Ok(self.users().await?.collisions())
    }
}

#[async_trait]
impl SessionStore for FileStore {
    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        _batch: usize,
    ) -> StoreResult<u64> {
        // One journal line removes them all; batching buys nothing here.
        let cutoff = now - session_state::retention();
        let any = self
            .sessions
            .read()
            .sessions()
            .any(|e| ended_at(&e.rec, idle_ttl) <= cutoff);
        if !any {
            return Ok(0);
        }
        self.update_sessions(|tx| Ok(tx.prune(now, idle_ttl, true)))
            .await
    }

    async fn create_session(
        &self,
        new: &NewSession,
        max_live: usize,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<Uuid>> {
        let now = new.session.created_at;
        if new.records_login {
            self.set_last_login(&new.session.user_id, now).await?;
        }
        self.update_sessions(|tx| {
            tx.prune(now, idle_ttl, false);
            // A repeat of the same session (a retry) stores nothing again.
            if tx.state().session(&new.session.id).is_none() {
                tx.put_session(new.session.clone());
                tx.put_token(new.token.clone());
            }
            Ok(evict(
                tx,
                &new.session.user_id,
                new.session.id,
                max_live,
                idle_ttl,
                now,
            ))
        })
        .await
    }

    async fn evict_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        max_live: usize,
        idle_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        // Most sign-ins are under the cap: then nothing is written (or waited for).
        let over = self
            .sessions
            .read()
            .open_sessions_of(user_id)
            .filter(|e| e.rec.id != keep && e.rec.is_live(now, idle_ttl))
            .count()
            > max_live.saturating_sub(1);
        if !over {
            return Ok(Vec::new());
        }
        self.update_sessions(|tx| Ok(evict(tx, user_id, keep, max_live, idle_ttl, now)))
            .await
    }

    async fn rotate_refresh_token(&self, request: &RotateRequest) -> StoreResult<RotateOutcome> {
        // Decide under the read lock first: most outcomes write nothing, and a write re-checks.
        let decision = decide(&self.sessions.read(), request);
        match decision {
            Decided::Final(outcome) => return Ok(*outcome),
            Decided::NeedsWrite => {}
        }
        self.update_sessions(|tx| {
            let state = tx.state();
            let Some(token) = state.token_by_hash(&request.presented_hash) else {
                return Ok(invalid(InvalidReason::Unknown, None, None));
            };
            let Some(session) = state.session(&token.session_id).cloned() else {
                return Ok(invalid(InvalidReason::Unknown, None, Some(token.id)));
            };
            let successor = token.replaced_by.and_then(|id| state.token(&id)).cloned();
            let mut session = SessionRecord::clone(&session);
            Ok(
                match decide_rotation(&token, &session, successor.as_deref(), request) {
                    RotationDecision::Rotate {
                        fingerprint_matched,
                    } => {
                        session.last_used_at = request.now;
                        session.ip_address = request.ip_address.clone();
                        tx.put_session(session.clone());
                        let mut old = TokenRecord::clone(&token);
                        old.rotated_at = Some(request.now);
                        old.replaced_by = Some(request.successor_id);
                        tx.put_token(old);
                        tx.put_token(request.successor_in(token.session_id));
                        RotateOutcome::Rotated {
                            session,
                            old_token_id: token.id,
                            fingerprint_matched,
                        }
                    }
                    RotationDecision::Grace {
                        fingerprint_matched,
                    } => RotateOutcome::Grace {
                        session,
                        old_token_id: token.id,
                        fingerprint_matched,
                    },
                    RotationDecision::Reuse => {
                        session.revoked_at = Some(request.now);
                        session.revoked_reason = Some("token_reuse".into());
                        tx.put_session(session.clone());
                        RotateOutcome::ReuseDetected {
                            session,
                            token_id: token.id,
                        }
                    }
                    RotationDecision::RejectFingerprint => {
                        session.revoked_at = Some(request.now);
                        session.revoked_reason = Some("fingerprint_mismatch".into());
                        tx.put_session(session.clone());
                        RotateOutcome::FingerprintRejected {
                            session,
                            token_id: token.id,
                        }
                    }
                    RotationDecision::Invalid(reason) => {
                        invalid(reason, Some(session), Some(token.id))
                    }
                },
            )
        })
        .await
    }

    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<(SessionRecord, Uuid)>> {
        let state = self.sessions.read();
        let Some(token) = state.token_by_hash(token_hash) else {
            return Ok(None);
        };
        Ok(state
            .session(&token.session_id)
            .map(|s| (SessionRecord::clone(s), token.id)))
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let open = |state: &Sessions| {
            state
                .session(&session_id)
                .filter(|s| s.user_id == user_id && s.revoked_at.is_none())
                .map(|s| SessionRecord::clone(s))
        };
        if open(&self.sessions.read()).is_none() {
            return Ok(false);
        }
        self.update_sessions(|tx| match open(tx.state()) {
            Some(mut session) => {
                session.revoked_at = Some(now);
                session.revoked_reason = Some(reason.to_owned());
                tx.put_session(session);
                Ok(true)
            }
            None => Ok(false),
        })
        .await
    }

    async fn revoke_all_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<u64> {
        self.update_sessions(|tx| {
            let open: Vec<SessionRecord> = tx
                .state()
                .open_sessions_of(user_id)
                .map(|e| SessionRecord::clone(&e.rec))
                .collect();
            let count = open.len() as u64;
            for mut session in open {
                session.revoked_at = Some(now);
                session.revoked_reason = Some(reason.to_owned());
                tx.put_session(session);
            }
            Ok(count)
        })
        .await
    }

    async fn live_sessions(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> StoreResult<Vec<SessionRecord>> {
        let state = self.sessions.read();
        let mut live: Vec<_> = state
            .open_sessions_of(user_id)
            .filter(|e| e.rec.is_live(now, idle_ttl))
            .collect();
        // Most recently used first; arrival breaks ties, as the old file order did.
        live.sort_unstable_by_key(|e| (std::cmp::Reverse(e.rec.last_used_at), e.ord));
        Ok(live
            .into_iter()
            .map(|e| SessionRecord::clone(&e.rec))
            .collect())
    }

    async fn sessions_revoked_since(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>> {
        let state = self.sessions.read();
        Ok(state
            .sessions()
            .filter_map(|e| {
                e.rec
                    .revoked_at
                    .filter(|at| *at >= since)
                    .map(|at| (e.rec.id, at))
            })
            .collect())
    }

    async fn session(&self, session_id: Uuid) -> StoreResult<Option<SessionRecord>> {
        Ok(self
            .sessions
            .read()
            .session(&session_id)
            .map(|s| SessionRecord::clone(s)))
    }
}

#[async_trait]
impl IdentityStore for FileStore {
    async fn user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        self.fs_user_by_identity(issuer, subject).await
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<super::IdentityRecord>> {
        self.fs_identities_of(user_id).await
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &super::IdentityRecord,
    ) -> StoreResult<()> {
        self.fs_insert_user_with_identity(user, identity).await
    }

    async fn link_identity(&self, identity: &super::IdentityRecord) -> StoreResult<()> {
        self.fs_link_identity(identity).await
    }

    async fn linked_with_password(&self) -> StoreResult<Vec<UserRecord>> {
        self.fs_linked_with_password().await
    }

    async fn touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.fs_touch_identity(issuer, subject, email, at).await
    }
}

enum Decided {
    Final(Box<RotateOutcome>),
    NeedsWrite,
}

/// The read-only half of rotation: answers outright when nothing has to be written.
fn decide(state: &Sessions, request: &RotateRequest) -> Decided {
    let Some(token) = state.token_by_hash(&request.presented_hash) else {
        return Decided::Final(Box::new(invalid(InvalidReason::Unknown, None, None)));
    };
    let Some(session) = state.session(&token.session_id) else {
        return Decided::Final(Box::new(invalid(
            InvalidReason::Unknown,
            None,
            Some(token.id),
        )));
    };
    let successor = token.replaced_by.and_then(|id| state.token(&id));
    match decide_rotation(&token, session, successor.map(|t| t.as_ref()), request) {
        RotationDecision::Grace {
            fingerprint_matched,
        } => Decided::Final(Box::new(RotateOutcome::Grace {
            session: SessionRecord::clone(session),
            old_token_id: token.id,
            fingerprint_matched,
        })),
        RotationDecision::Invalid(reason) => Decided::Final(Box::new(invalid(
            reason,
            Some(SessionRecord::clone(session)),
            Some(token.id),
        ))),
        _ => Decided::NeedsWrite,
    }
}

/// Revokes the user's oldest live sessions other than `keep` (arrival breaks ties) so that,
/// with `keep`, at most `max_live` are live; returns their ids.
fn evict(
    tx: &mut Tx<'_>,
    user_id: &str,
    keep: Uuid,
    max_live: usize,
    idle_ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> Vec<Uuid> {
    let mut live: Vec<(DateTime<Utc>, u64, Uuid)> = tx
        .state()
        .open_sessions_of(user_id)
        .filter(|e| e.rec.id != keep && e.rec.is_live(now, idle_ttl))
        .map(|e| (e.rec.created_at, e.ord, e.rec.id))
        .collect();
    live.sort_unstable();
    let excess = live.len().saturating_sub(max_live.saturating_sub(1));
    let mut evicted = Vec::with_capacity(excess);
    for (_, _, id) in live.into_iter().take(excess) {
        let Some(session) = tx.state().session(&id) else {
            continue;
        };
        let mut session = SessionRecord::clone(session);
        session.revoked_at = Some(now);
        session.revoked_reason = Some("session_limit".into());
        tx.put_session(session);
        evicted.push(id);
    }
    evicted
}

fn invalid(
    reason: InvalidReason,
    session: Option<SessionRecord>,
    token_id: Option<Uuid>,
) -> RotateOutcome {
    RotateOutcome::Invalid {
        reason,
        session,
        token_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> UserRecord {
        UserRecord {
            id: id.into(),
            email: format!("user{id}@example.com"),
            name: name.into(),
            user_type: UserType::Client,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: Utc::now(),
            last_login: None,
            extra: serde_json::Map::new(),
        }
    }

    /// users.json as it was written before entries were kept: the whole file through
    /// serde_json's pretty printer.
    fn pretty(users: &Users) -> Vec<u8> {
        let all: Vec<FileUserOut> = users.iter().map(FileUserOut::from).collect();
        serde_json::to_vec_pretty(&UsersFile { users: all }).unwrap()
    }

    #[test]
    fn users_json_is_the_pretty_printers_byte_for_byte_and_follows_every_change() {
        let empty = Users::default();
        assert_eq!(encode_users(&empty).unwrap(), pretty(&empty));

        let mut odd = user("2", "Zoë \"quoted\"\nwith a line break");
        odd.extra = serde_json::json!({
            "preferences": { "theme": "dark", "tags": ["a", "b"], "none": {}, "nothing": [] },
            "note": "tab\there",
        })
        .as_object()
        .unwrap()
        .clone();
        let mut users = Users::new(vec![user("1", "Ann"), odd, user("3", "Bo")]);
        assert_eq!(encode_users(&users).unwrap(), pretty(&users));

        // A state published before a change keeps its own entries; the changed user and a new
        // one are encoded again.
        let published = users.clone();
        users.by_id_mut("2").unwrap().name = "Changed".into();
        users.by_email_mut("user3@example.com").unwrap().last_login = Some(Utc::now());
        users.push(user("4", "New"));
        let written = encode_users(&users).unwrap();
        assert_eq!(written, pretty(&users));
        assert!(String::from_utf8(written).unwrap().contains("\"Changed\""));
        assert_eq!(encode_users(&published).unwrap(), pretty(&published));

        // Changed in place (no other state shares the record): its kept entry must go too.
        drop(published);
        users.by_id_mut("1").unwrap().name = "Renamed in place".into();
        users.find_mut(|u| u.id == "4").unwrap().avatar = Some("https://a.example/4.png".into());
        let written = encode_users(&users).unwrap();
        assert_eq!(written, pretty(&users));
        let text = String::from_utf8(written).unwrap();
        assert!(
            text.contains("Renamed in place") && text.contains("4.png"),
            "{text}"
        );
    }
}
