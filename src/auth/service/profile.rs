//! The caller's own account: the profile (name, avatar) and the settings FluxStudio's pages keep.

use serde_json::Value;

use super::{AuthService, Authenticated};
use crate::auth::AuthError;
use crate::domain::settings::{self, SettingsError};
use crate::domain::{Name, UserRecord, ValidationError, parse_avatar};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::ProfileChange;

/// A profile change as sent: a field that is absent is left alone; `avatar: null` removes the
/// avatar.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileEdit<'a> {
    pub name: Option<&'a Value>,
    pub avatar: Option<&'a Value>,
}

impl ProfileEdit<'_> {
    fn validate(self) -> Result<ProfileChange, ValidationError> {
        let name = match self.name {
            None => None,
            Some(Value::String(raw)) => Some(Name::parse(raw)?.into_inner()),
            Some(_) => return Err(ValidationError::new("name", "name must be a string")),
        };
        let avatar = match self.avatar {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(raw)) => Some(Some(parse_avatar(raw)?)),
            Some(_) => {
                return Err(ValidationError::new(
                    "avatar",
                    "avatar must be an https URL, or null to remove it",
                ));
            }
        };
        Ok(ProfileChange { name, avatar })
    }
}

impl AuthService {
    /// `PATCH /api/auth/me`: the user as changed. Nothing sent, nothing written.
    pub async fn update_profile(
        &self,
        auth: &Authenticated,
        edit: ProfileEdit<'_>,
        ctx: &RequestContext,
    ) -> Result<UserRecord, AuthError> {
        let change = edit.validate()?;
        if change == ProfileChange::default() {
            return Ok(auth.user.clone());
        }
        let user = self
            .store
            .update_profile(&auth.user.id, &change, self.clock.now())
            .await?;
        // Which fields changed, never their values.
        let fields: Vec<&str> = [
            change.name.as_ref().map(|_| "name"),
            change.avatar.as_ref().map(|_| "avatar"),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.record_outcome(
            SecurityEvent::from_request(EventType::ProfileUpdated, ctx)
                .user(&user.id)
                .with("fields", fields),
        )
        .await?;
        Ok(user)
    }

    /// `GET /api/auth/settings`: the defaults merged per category with what is stored.
    pub async fn settings(&self, auth: &Authenticated) -> Result<Value, AuthError> {
        let stored = self.store.user_settings(&auth.user.id).await?;
        Ok(settings::merged(stored.as_ref()))
    }

    /// `PUT /api/auth/settings`: stores the categories sent (see [`settings::apply`]) and answers
    /// the settings as `GET` now shows them.
    pub async fn put_settings(
        &self,
        auth: &Authenticated,
        sent: Option<&Value>,
    ) -> Result<Value, AuthError> {
        let stored = self.store.user_settings(&auth.user.id).await?;
        let next = settings::apply(stored.as_ref(), sent).map_err(|e| match e {
            SettingsError::Invalid(why) => AuthError::InvalidSettings(why),
            SettingsError::TooLarge => AuthError::SettingsTooLarge,
        })?;
        self.store
            .set_user_settings(&auth.user.id, &next, self.clock.now())
            .await?;
        Ok(settings::merged(Some(&next)))
    }
}
