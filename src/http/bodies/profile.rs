//! The bodies of the caller's own account routes: the profile update and the settings.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::service::ProfileEdit;

/// `PATCH /api/auth/me`. Either field may be left out (it is then left alone); unknown fields are
/// ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ProfileUpdate {
    /// 1 to 100 characters once trimmed.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100)]
    pub name: Option<Value>,
    /// An `https` URL of at most 2,048 characters, or null to remove the avatar.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, example = "https://cdn.example.com/ada.png")]
    pub avatar: Option<Value>,
}

/// A field that is present, `null` included (`Some(Value::Null)`): `avatar: null` removes the
/// avatar, while a missing `avatar` leaves it alone (and `name: null` is refused, not ignored).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl ProfileUpdate {
    pub fn edit(&self) -> ProfileEdit<'_> {
        ProfileEdit {
            name: self.name.as_ref(),
            avatar: self.avatar.as_ref(),
        }
    }
}

/// The settings FluxStudio's settings page keeps. Each category is an object whose inner keys are
/// kept as sent (the page stores `notifications.frequency` and `notifications.quietHours`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Defaults `{push: true, emailDigest: true}`.
    #[schema(value_type = Object)]
    pub notifications: Value,
    /// Defaults `{darkMode: false, language: "en"}`.
    #[schema(value_type = Object)]
    pub appearance: Value,
    /// Defaults `{autoSave: true}`.
    #[schema(value_type = Object)]
    pub performance: Value,
}

/// `PUT /api/auth/settings`: each category sent replaces the stored one whole; categories not
/// sent are kept; other keys are dropped.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SettingsUpdate {
    /// `{notifications?, appearance?, performance?}`, each an object; at most 4 KiB stored.
    #[serde(default)]
    #[schema(value_type = Object, required = true)]
    pub settings: Option<Value>,
}

/// `GET /api/auth/settings`: the defaults merged per category with what is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsBody {
    pub success: bool,
    #[schema(value_type = Settings)]
    pub settings: Value,
}

/// `PUT /api/auth/settings`: the settings as `GET` now shows them.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsSaved {
    pub success: bool,
    #[schema(value_type = Settings)]
    pub settings: Value,
    #[schema(example = "Settings saved")]
    pub message: &'static str,
}
