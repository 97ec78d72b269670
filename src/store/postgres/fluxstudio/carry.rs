//! What each FluxStudio row becomes in flux-auth: a user record, provider identities, a session.
//! Each part of a user that is carried over is one function here; a part the import does not
//! carry (settings, two-factor secrets) is counted and reported, and a rerun that carries it
//! picks it up.

use chrono::{DateTime, Utc};

use super::source::{SourceToken, SourceUser};
use crate::domain::{Email, GOOGLE_ISSUER, IdentityRecord, UserRecord, UserType};

/// Apple's OpenID issuer, for FluxStudio's Apple sign-ins.
pub const APPLE_ISSUER: &str = "https://appleid.apple.com";

/// Why a row is not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    InvalidEmail,
    Deactivated,
    /// Another account holds the same mailbox (canonical key): its id.
    EmailCollides(String),
    Expired,
    Revoked,
    UserNotImported,
    UnrecognisedToken,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidEmail => f.write_str("the email is not a valid address"),
            Self::Deactivated => f.write_str("the account is deactivated (is_active = false)"),
            Self::EmailCollides(other) => write!(
                f,
                "the email is another spelling of account {other}'s mailbox (not merged)"
            ),
            Self::Expired => f.write_str("expired"),
            Self::Revoked => f.write_str("revoked"),
            Self::UserNotImported => f.write_str("its user is not imported"),
            Self::UnrecognisedToken => f.write_str("not a 128-hex FluxStudio token"),
        }
    }
}

/// A part of a user the import counts but does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// `preferences` → the account's settings.
    Preferences,
    /// `totp_secret` and backup codes → two-factor, encrypted.
    Totp,
}

/// FluxStudio's user as flux-auth's record: the email canonicalised (trimmed, lower-cased), the
/// name un-escaped for display, the bcrypt hash kept (verified the old way, re-hashed at the next
/// login), the avatar from either column.
pub fn user(row: &SourceUser, now: DateTime<Utc>) -> Result<UserRecord, Skip> {
    if !row.is_active {
        return Err(Skip::Deactivated);
    }
    let email = Email::parse(row.email.trim()).map_err(|_| Skip::InvalidEmail)?;
    let name = row
        .name
        .as_deref()
        .map(unescape_html)
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| {
            email
                .as_str()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned()
        });
    Ok(UserRecord {
        id: row.id.clone(),
        email: email.as_str().to_owned(),
        name,
        user_type: row
            .user_type
            .as_deref()
            .and_then(UserType::parse)
            .unwrap_or(UserType::Client),
        password_hash: row.password_hash.clone().filter(|h| !h.is_empty()),
        google_id: google_subject(row),
        email_verified: row.email_verified,
        avatar: row.avatar.clone().filter(|a| !a.is_empty()),
        created_at: row.created_at.unwrap_or(now),
        updated_at: now,
        last_login: row.last_login,
        // FluxStudio's TOTP secrets are not carried yet, so no imported account may ask for one.
        two_factor_enabled: false,
        extra: serde_json::Map::new(),
    })
}

fn google_subject(row: &SourceUser) -> Option<String> {
    row.google_id.clone().or_else(|| {
        (row.oauth_provider.as_deref() == Some("google"))
            .then(|| row.oauth_id.clone())
            .flatten()
    })
}

fn apple_subject(row: &SourceUser) -> Option<String> {
    row.apple_id.clone().or_else(|| {
        (row.oauth_provider.as_deref() == Some("apple"))
            .then(|| row.oauth_id.clone())
            .flatten()
    })
}

/// The provider identities a user's columns name: `google_id`/`apple_id`, or
/// `oauth_provider` with `oauth_id`.
pub fn identities(row: &SourceUser, user: &UserRecord, now: DateTime<Utc>) -> Vec<IdentityRecord> {
    [
        (GOOGLE_ISSUER, google_subject(row)),
        (APPLE_ISSUER, apple_subject(row)),
    ]
    .into_iter()
    .filter_map(|(issuer, subject)| {
        subject
            .filter(|s| !s.is_empty())
            .map(|subject| IdentityRecord {
                issuer: issuer.to_owned(),
                subject,
                user_id: user.id.clone(),
                email: Some(user.email.clone()),
                created_at: user.created_at,
                last_used_at: now,
            })
    })
    .collect()
}

/// `preferences`: counted, not carried by the import (a rerun that carries them picks them up).
pub fn preferences(row: &SourceUser) -> Option<Later> {
    row.has_preferences.then_some(Later::Preferences)
}

/// `totp_secret` and backup codes: counted, not carried by the import (a rerun that carries them
/// picks them up); until then the account signs in without a second factor.
pub fn totp(row: &SourceUser) -> Option<Later> {
    row.has_totp.then_some(Later::Totp)
}

/// A refresh token's fate: live ones become sessions.
pub fn token_state(token: &SourceToken, now: DateTime<Utc>) -> Result<(), Skip> {
    if !is_legacy_token(&token.token) {
        Err(Skip::UnrecognisedToken)
    } else if token.revoked {
        Err(Skip::Revoked)
    } else if token.expires_at <= now {
        Err(Skip::Expired)
    } else {
        Ok(())
    }
}

/// FluxStudio's refresh tokens: 64 random bytes as 128 lower-case hex characters.
pub fn is_legacy_token(token: &str) -> bool {
    token.len() == 128
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// validator.js `escape()` undone: what FluxStudio stored HTML-escaped, as typed.
pub fn unescape_html(input: &str) -> String {
    const ENTITIES: [(&str, char); 8] = [
        ("&amp;", '&'),
        ("&quot;", '"'),
        ("&#x27;", '\''),
        ("&lt;", '<'),
        ("&gt;", '>'),
        ("&#x2F;", '/'),
        ("&#x5C;", '\\'),
        ("&#96;", '`'),
    ];
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match ENTITIES.iter().find(|(e, _)| rest.starts_with(e)) {
            Some((entity, c)) => {
                out.push(*c);
                rest = &rest[entity.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unescaped_once() {
        assert_eq!(unescape_html("O&#x27;Brien &amp; Co"), "O'Brien & Co");
        assert_eq!(unescape_html("&amp;lt;"), "&lt;");
        assert_eq!(unescape_html("a & b &unknown;"), "a & b &unknown;");
        assert_eq!(
            unescape_html(&crate::auth::passwords::legacy_escape(
                "<a href=\"/x\">`\\'"
            )),
            "<a href=\"/x\">`\\'"
        );
    }

    #[test]
    fn only_128_lower_hex_is_a_legacy_token() {
        assert!(is_legacy_token(&"ab".repeat(64)));
        assert!(!is_legacy_token(&"AB".repeat(64)));
        assert!(!is_legacy_token(&"ab".repeat(63)));
        assert!(!is_legacy_token(&"zz".repeat(64)));
    }
}
