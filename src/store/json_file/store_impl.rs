//! The file store's answers to the `Store` trait: users through `users.json`, sessions through
//! their journal, identities inside each user's entry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::FileStore;
use super::session_rules::{Decided, decide, evict, invalid};
use super::session_state::{self, Sessions, ended_at};
use super::users_file::touch;
use crate::domain::{Email, UserRecord, UserType};
use crate::store::{
    IdentityStore, ImportOutcome, InvalidReason, NewSession, ProfileChange, RotateOutcome,
    RotateRequest, RotationDecision, SessionRecord, SessionStore, Store, StoreError, StoreResult,
    TokenRecord, UserStore, decide_rotation,
};

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

    async fn email_collisions(&self) -> StoreResult<Vec<crate::store::EmailCollision>> {
        Ok(self.users().await?.collisions())
    }

    async fn update_profile(
        &self,
        user_id: &str,
        change: &ProfileChange,
        at: DateTime<Utc>,
    ) -> StoreResult<UserRecord> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            if let Some(name) = &change.name {
                user.name.clone_from(name);
            }
            if let Some(avatar) = &change.avatar {
                user.avatar.clone_from(avatar);
            }
            touch(user, at);
            Ok(user.clone())
        })
        .await
    }

    async fn user_settings(&self, user_id: &str) -> StoreResult<Option<serde_json::Value>> {
        let users = self.users().await?;
        let user = users.by_id(user_id).ok_or(StoreError::NotFound)?;
        Ok(user.extra.get(SETTINGS_KEY).cloned())
    }

    async fn set_user_settings(
        &self,
        user_id: &str,
        settings: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.update_users(|users| {
            let user = users.by_id_mut(user_id).ok_or(StoreError::NotFound)?;
            user.extra.insert(SETTINGS_KEY.to_owned(), settings.clone());
            touch(user, at);
            Ok(())
        })
        .await
    }
}

/// The key of a user's settings in their users.json entry, where FluxStudio's own service kept
/// them.
const SETTINGS_KEY: &str = "settings";

#[async_trait]
impl SessionStore for FileStore {
    async fn delete_ended_sessions(
        &self,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        _batch: usize,
    ) -> StoreResult<u64> {
        // One journal line removes them all; batching buys nothing here. Two-factor sign-ins'
        // long-past time steps go in the same line (they are not sessions: not counted).
        let cutoff = now - session_state::retention();
        let (any, old_steps) = {
            let state = self.sessions.read();
            let any = state
                .sessions()
                .any(|e| ended_at(&e.rec, idle_ttl) <= cutoff);
            (any, state.totp_steps_past(now).next().is_some())
        };
        if !any && !old_steps {
            return Ok(0);
        }
        self.update_sessions(|tx| {
            tx.prune_totp_steps(now);
            Ok(if any {
                tx.prune(now, idle_ttl, true)
            } else {
                0
            })
        })
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

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: Uuid,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
        reason: &str,
    ) -> StoreResult<Vec<Uuid>> {
        self.update_sessions(|tx| {
            let others: Vec<SessionRecord> = tx
                .state()
                .open_sessions_of(user_id)
                .filter(|e| e.rec.id != keep && e.rec.is_live(now, idle_ttl))
                .map(|e| SessionRecord::clone(&e.rec))
                .collect();
            let ids = others.iter().map(|s| s.id).collect();
            for mut session in others {
                session.revoked_at = Some(now);
                session.revoked_reason = Some(reason.to_owned());
                tx.put_session(session);
            }
            Ok(ids)
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

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<crate::store::IdentityRecord>> {
        self.fs_identities_of(user_id).await
    }

    async fn insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &crate::store::IdentityRecord,
    ) -> StoreResult<()> {
        self.fs_insert_user_with_identity(user, identity).await
    }

    async fn link_identity(&self, identity: &crate::store::IdentityRecord) -> StoreResult<()> {
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
