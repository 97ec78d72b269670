//! Passwords of the old service: its transform (trim, then HTML-escape) and its bcrypt hashes.

use super::Verification;

/// The PHC identifier of an argon2id hash of [`legacy_transform`] of the password: what an old
/// service's bcrypt hash is upgraded to at the first login. Keeping the transform keeps the
/// password as the user knew it (the old service ignored surrounding spaces), and applying it
/// only to these hashes keeps every password set here exact.
pub const LEGACY_ARGON2ID: &str = "argon2id-legacy";
pub(super) const ARGON2ID_PREFIX: &str = "$argon2id$";
pub(super) const LEGACY_ARGON2ID_PREFIX: &str = "$argon2id-legacy$";

/// Whether `stored` is a hash of the old service's transform of the password (bcrypt, or its
/// upgrade).
pub(super) fn uses_legacy_transform(stored: &str) -> bool {
    stored.starts_with("$2") || stored.starts_with(LEGACY_ARGON2ID_PREFIX)
}

/// What the old service hashed: `escape(trim(password))` (express-validator).
pub(super) fn legacy_transform(password: &str) -> String {
    legacy_escape(password.trim())
}

/// The old service hashed `escape(trim(password))` (express-validator) with bcryptjs.
pub(super) fn verify_legacy_bcrypt(password: &str, stored: &str) -> Verification {
    let candidate = legacy_transform(password);
    match bcrypt::verify(candidate.as_bytes(), stored) {
        Ok(true) => Verification::ValidNeedsRehash,
        _ => Verification::Invalid,
    }
}

/// validator.js `escape()`, which express-validator applied to passwords before bcrypt.
pub fn legacy_escape(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '/' => out.push_str("&#x2F;"),
            '\\' => out.push_str("&#x5C;"),
            '`' => out.push_str("&#96;"),
            c => out.push(c),
        }
    }
    out
}
