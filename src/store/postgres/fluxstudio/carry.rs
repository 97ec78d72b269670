//! What each FluxStudio row becomes in flux-auth: a user record, its settings, its two-factor
//! sign-in, provider identities, a session. Each part of a user that is carried over is one
//! function here.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::TotpSeal;
use super::source::{SourceToken, SourceUser};
use crate::domain::settings::{self, SettingsError};
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
    /// Another account already signs in with the same Google account.
    GoogleTaken,
    Expired,
    Revoked,
    UserNotImported,
    UnrecognisedToken,
    /// Two-factor is on and no key to encrypt its secret was given: the user is imported, with
    /// it, by a run that has one.
    KeptForLater,
    /// Two-factor is on with a secret no authenticator code can match: not imported, since the
    /// account would sign in without its second factor.
    TwoFactorUnusable,
    /// `preferences` over the settings' cap: the user is imported with default settings.
    PreferencesTooLarge,
    /// These categories of `preferences` are not objects or nest too deep: the user is imported
    /// with the others.
    PreferencesDropped(Vec<&'static str>),
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
            Self::GoogleTaken => {
                f.write_str("its Google account signs in to another account (not merged)")
            }
            Self::Expired => f.write_str("expired"),
            Self::Revoked => f.write_str("revoked"),
            Self::UserNotImported => f.write_str("its user is not imported"),
            Self::UnrecognisedToken => f.write_str("not a 128-hex FluxStudio token"),
            Self::KeptForLater => f.write_str(
                "kept for later: two-factor is on, and its secret is imported only with \
                 TOTP_ENCRYPTION_KEY set (a run with it imports the account and its sessions)",
            ),
            Self::TwoFactorUnusable => f.write_str(
                "two-factor is on but its secret is not base32 of 80 to 512 bits (not imported: \
                 it would sign in without its second factor)",
            ),
            Self::PreferencesTooLarge => write!(
                f,
                "over {} bytes as settings (the account is imported with default settings)",
                settings::MAX_STORED_BYTES
            ),
            Self::PreferencesDropped(categories) => write!(
                f,
                "{} not an object or nested over {} levels (dropped; the rest imported)",
                categories.join(", "),
                settings::MAX_DEPTH
            ),
        }
    }
}

/// A user's two-factor sign-in as it is stored: the secret encrypted, the backup codes hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedTwoFactor {
    pub secret: String,
    pub backup_codes: Vec<String>,
    pub enabled_at: DateTime<Utc>,
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
        // Set by the caller with the two-factor row it writes beside the user's.
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

/// `preferences` → settings, as a `PUT` of them would store them; what cannot be carried is
/// said in the second part (the user is imported all the same).
pub fn settings(row: &SourceUser) -> (Option<Value>, Option<Skip>) {
    if row.preferences_too_large {
        return (None, Some(Skip::PreferencesTooLarge));
    }
    let Some(preferences) = &row.preferences else {
        return (None, None);
    };
    match settings::from_preferences(preferences) {
        Ok((settings, dropped)) if dropped.is_empty() => (settings, None),
        Ok((settings, dropped)) => (settings, Some(Skip::PreferencesDropped(dropped))),
        Err(SettingsError::TooLarge) => (None, Some(Skip::PreferencesTooLarge)),
        // `from_preferences` drops what is invalid rather than refusing it.
        Err(SettingsError::Invalid(_)) => (None, None),
    }
}

/// `totp_secret` (base32, plain) and `totp_backup_codes` (plain) of a user with two-factor on →
/// the secret encrypted and the codes hashed by `seal`. `Ok(None)` for a user without two-factor;
/// refused without `seal` (kept for later) or with a secret that is not one.
pub fn two_factor(
    row: &SourceUser,
    seal: Option<&dyn TotpSeal>,
    now: DateTime<Utc>,
) -> Result<Option<SealedTwoFactor>, Skip> {
    let Some(secret) = &row.totp_secret else {
        return Ok(None);
    };
    let seal = seal.ok_or(Skip::KeptForLater)?;
    let secret = seal
        .seal_secret(&row.id, secret)
        .ok_or(Skip::TwoFactorUnusable)?;
    let mut backup_codes: Vec<String> = row
        .totp_backup_codes
        .iter()
        .flatten()
        .filter_map(|code| seal.backup_code_hash(&row.id, code))
        .collect();
    backup_codes.sort();
    backup_codes.dedup();
    Ok(Some(SealedTwoFactor {
        secret,
        backup_codes,
        enabled_at: row.totp_enabled_at.unwrap_or(now).min(now),
    }))
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
