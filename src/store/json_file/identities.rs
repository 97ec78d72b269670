//! Provider identities on the file store. They live in the user's own entry of `users.json`, so
//! a user and its identities are written in one durable step and can never disagree:
//!
//! ```json
//! { "id": "…", "email": "ann@gmail.com", "googleId": "1234",
//!   "identities": [ { "issuer": "https://accounts.google.com", "subject": "1234",
//!                     "email": "ann@gmail.com", "createdAt": "…", "lastUsedAt": "…" } ] }
//! ```
//!
//! `googleId` is the old service's field: it is still written for Google's issuer (so a rollback
//! to the old service keeps its Google users), and a user that has only `googleId` (created by
//! the old service) is found by it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::FileStore;
use crate::domain::GOOGLE_ISSUER;
use crate::domain::UserRecord;
use crate::store::{IdentityRecord, StoreError, StoreResult};

const IDENTITIES_KEY: &str = "identities";

/// An identity as stored inside its user's entry (the user id is the entry's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileIdentity {
    issuer: String,
    subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
}

fn stored(user: &UserRecord) -> Vec<FileIdentity> {
    user.extra
        .get(IDENTITIES_KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn store_back(user: &mut UserRecord, identities: &[FileIdentity]) -> StoreResult<()> {
    let value = serde_json::to_value(identities)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("serialising identities: {e}")))?;
    user.extra.insert(IDENTITIES_KEY.to_owned(), value);
    Ok(())
}

fn has_stored(user: &UserRecord, issuer: &str, subject: &str) -> bool {
    stored(user)
        .iter()
        .any(|i| i.issuer == issuer && i.subject == subject)
}

fn has_legacy(user: &UserRecord, issuer: &str, subject: &str) -> bool {
    issuer == GOOGLE_ISSUER && user.google_id.as_deref() == Some(subject)
}

fn has_identity(user: &UserRecord, issuer: &str, subject: &str) -> bool {
    has_stored(user, issuer, subject) || has_legacy(user, issuer, subject)
}

fn identities_in(user: &UserRecord) -> Vec<IdentityRecord> {
    let mut out: Vec<IdentityRecord> = stored(user)
        .into_iter()
        .map(|i| IdentityRecord {
            issuer: i.issuer,
            subject: i.subject,
            user_id: user.id.clone(),
            email: i.email,
            created_at: i.created_at,
            last_used_at: i.last_used_at,
        })
        .collect();
    if let Some(google_id) = &user.google_id
        && !out.iter().any(|i| i.is_google() && &i.subject == google_id)
    {
        out.push(IdentityRecord::from_legacy_google_id(
            google_id,
            &user.id,
            user.created_at,
        ));
    }
    out
}

fn add_identity(user: &mut UserRecord, identity: &IdentityRecord) -> StoreResult<()> {
    let mut identities = stored(user);
    identities.push(FileIdentity {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        created_at: identity.created_at,
        last_used_at: identity.last_used_at,
    });
    if identity.is_google() && user.google_id.is_none() {
        user.google_id = Some(identity.subject.clone());
    }
    store_back(user, &identities)
}

impl FileStore {
    pub(super) async fn fs_user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        let users = self.users().await?;
        // A stored identity wins over a legacy googleId.
        Ok(users
            .iter()
            .find(|u| has_stored(u, issuer, subject))
            .or_else(|| users.iter().find(|u| has_legacy(u, issuer, subject)))
            .cloned())
    }

    pub(super) async fn fs_identities_of(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>> {
        Ok(self
            .users()
            .await?
            .by_id(user_id)
            .map(identities_in)
            .unwrap_or_default())
    }

    pub(super) async fn fs_insert_user_with_identity(
        &self,
        user: &UserRecord,
        identity: &IdentityRecord,
    ) -> StoreResult<()> {
        self.update_users(|users| {
            if users.holder_of(&user.email).is_some() {
                return Err(StoreError::Conflict("email"));
            }
            if users
                .iter()
                .any(|u| has_identity(u, &identity.issuer, &identity.subject))
            {
                return Err(StoreError::Conflict("identity"));
            }
            if users.by_id(&user.id).is_some() {
                return Err(StoreError::Conflict("id"));
            }
            let mut user = user.clone();
            add_identity(&mut user, identity)?;
            users.push(user);
            Ok(())
        })
        .await
    }

    /// In file order, which is the order the accounts were created in.
    pub(super) async fn fs_linked_with_password(&self) -> StoreResult<Vec<UserRecord>> {
        Ok(self
            .users()
            .await?
            .iter()
            .filter(|u| u.password_hash.is_some() && !identities_in(u).is_empty())
            .cloned()
            .collect())
    }

    pub(super) async fn fs_link_identity(&self, identity: &IdentityRecord) -> StoreResult<()> {
        self.update_users(|users| {
            if users
                .iter()
                .any(|u| has_identity(u, &identity.issuer, &identity.subject))
            {
                return Err(StoreError::Conflict("identity"));
            }
            let user = users
                .by_id_mut(&identity.user_id)
                .ok_or(StoreError::NotFound)?;
            add_identity(user, identity)
        })
        .await
    }

    pub(super) async fn fs_touch_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let known = self
            .users()
            .await?
            .iter()
            .any(|u| has_identity(u, issuer, subject));
        if !known {
            return Ok(());
        }
        self.update_users(|users| {
            let Some(user) = users.find_mut(|u| has_identity(u, issuer, subject)) else {
                return Ok(());
            };
            let mut identities = stored(user);
            match identities
                .iter_mut()
                .find(|i| i.issuer == issuer && i.subject == subject)
            {
                Some(identity) => {
                    identity.last_used_at = at;
                    if let Some(email) = email {
                        identity.email = Some(email.to_owned());
                    }
                }
                // Linked only by the old service's googleId: record it properly from now on.
                None => identities.push(FileIdentity {
                    issuer: issuer.to_owned(),
                    subject: subject.to_owned(),
                    email: email.map(str::to_owned),
                    created_at: user.created_at,
                    last_used_at: at,
                }),
            }
            store_back(user, &identities)
        })
        .await
    }
}
