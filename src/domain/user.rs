//! Users as stored, and the public view of a user that responses carry.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{ValidationError, is_forbidden_char};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserType {
    Client,
    Designer,
    Admin,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Designer => "designer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "client" => Some(Self::Client),
            "designer" => Some(Self::Designer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// What signup accepts: `admin` is granted by an operator, never chosen by the user.
    pub fn parse_self_assigned(raw: Option<&str>) -> Result<Self, ValidationError> {
        match raw.map(str::trim) {
            None | Some("") | Some("client") => Ok(Self::Client),
            Some("designer") => Ok(Self::Designer),
            Some(_) => Err(ValidationError::new(
                "userType",
                "userType must be client or designer",
            )),
        }
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new("name", "Name is required"));
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::new(
                "name",
                "Name must be at most 100 characters",
            ));
        }
        if trimmed.chars().any(is_forbidden_char) {
            return Err(ValidationError::new(
                "name",
                "Name contains characters that are not allowed",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An avatar: an `https` URL with a host, at most 2,048 characters, no whitespace or control
/// characters (it ends up in an `<img src>` of every FluxStudio page that shows the user).
pub fn parse_avatar(raw: &str) -> Result<String, ValidationError> {
    const MAX_CHARS: usize = 2048;
    let refuse = |message: &str| Err(ValidationError::new("avatar", message));
    if raw.chars().count() > MAX_CHARS {
        return refuse("avatar must be at most 2048 characters");
    }
    if raw
        .chars()
        .any(|c| c.is_whitespace() || is_forbidden_char(c))
    {
        return refuse("avatar must be an https URL without spaces");
    }
    match url::Url::parse(raw) {
        Ok(url) if url.scheme() == "https" && url.host_str().is_some_and(|h| !h.is_empty()) => {
            Ok(raw.to_owned())
        }
        _ => refuse("avatar must be an https URL, or null to remove it"),
    }
}

/// A user as the stores keep it. `extra` carries fields of the old `users.json` that this service
/// does not use, so the file store writes them back untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub name: String,
    pub user_type: UserType,
    /// PHC string (argon2id) or a legacy bcrypt hash; `None` for accounts that only use Google.
    pub password_hash: Option<String>,
    pub google_id: Option<String>,
    pub email_verified: bool,
    pub avatar: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The last change to the account itself (name, avatar, password, type, settings); not a
    /// sign-in.
    pub updated_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
    /// Whether sign-in asks for a second factor.
    pub two_factor_enabled: bool,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub type User = UserRecord;

/// What responses show of a user: never a hash, never `googleId`, never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(title = "User")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub user_type: UserType,
    /// The same value as `userType`, for the clients that read `role`.
    pub role: UserType,
    pub created_at: String,
    pub updated_at: String,
    pub email_verified: bool,
    pub two_factor_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_login: Option<String>,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            user_type: user.user_type,
            role: user.user_type,
            created_at: format_timestamp(user.created_at),
            updated_at: format_timestamp(user.updated_at),
            email_verified: user.email_verified,
            two_factor_enabled: user.two_factor_enabled,
            avatar: user.avatar.clone(),
            last_login: user.last_login.map(format_timestamp),
        }
    }
}

/// The timestamp format of the old service (`Date.prototype.toISOString`): UTC, milliseconds, `Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_is_never_self_assigned() {
        assert!(UserType::parse_self_assigned(Some("admin")).is_err());
        assert_eq!(
            UserType::parse_self_assigned(None).unwrap(),
            UserType::Client
        );
        assert_eq!(
            UserType::parse_self_assigned(Some("designer")).unwrap(),
            UserType::Designer
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::parse("  Ada ").unwrap().into_inner(), "Ada");
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse(&"x".repeat(101)).is_err());
        assert!(Name::parse("a\u{1b}[31m").is_err());
        assert_eq!(
            Name::parse("<b>Ada</b>").unwrap().into_inner(),
            "<b>Ada</b>"
        );
    }

    #[test]
    fn avatars_are_https_urls_of_bounded_length() {
        assert!(parse_avatar("https://cdn.example.com/a.png").is_ok());
        for bad in [
            "http://cdn.example.com/a.png",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://",
            "https://cdn.example.com/a b.png",
            "/relative.png",
            "",
        ] {
            assert_eq!(parse_avatar(bad).unwrap_err().field, "avatar", "{bad}");
        }
        let long = format!("https://cdn.example.com/{}", "a".repeat(2048));
        assert!(parse_avatar(&long).is_err());
    }
}
