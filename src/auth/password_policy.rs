//! What a new password must be: long enough (counted in code points), not absurdly long, not a
//! breached password (nor one of its first variations), not easily guessed, not the email. No
//! composition rules (NIST 800-63B).

use super::breached::BreachedPasswords;
use crate::domain::ValidationError;

/// Longest password accepted, in code points; also bounds the hashing work a request can cause.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Byte bound checked before anything else, so a megabyte of text costs nothing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks length bounds only: what login applies before hashing (old passwords may be weak).
pub fn check_length(password: &str, min_chars: usize) -> Result<(), ValidationError> {
    if password.len() > MAX_PASSWORD_BYTES || password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ValidationError::new(
            "password",
            "Password must be at most 128 characters",
        ));
    }
    if password.chars().count() < min_chars {
        return Err(ValidationError::new(
            "password",
            format!("Password must be at least {min_chars} characters"),
        ));
    }
    Ok(())
}

/// The full policy for a password being set.
pub fn check_new(
    password: &str,
    email: &str,
    name: &str,
    min_chars: usize,
    breached: &BreachedPasswords,
) -> Result<(), ValidationError> {
    check_length(password, min_chars)?;
    if password.trim().to_lowercase() == email.to_lowercase() {
        return Err(ValidationError::new(
            "password",
            "Password must not be your email address",
        ));
    }
    if breached.matches(password) {
        return Err(ValidationError::new(
            "password",
            "This password is common: it appears in lists of breached passwords. Try a longer \
             phrase of unrelated words.",
        ));
    }
    let local_part = email.split('@').next().unwrap_or_default();
    // zxcvbn ranks the password against frequency lists of common passwords, names and words, and
    // against the user's own details; a score under 2 means it falls to an online guessing attack.
    let estimate = zxcvbn::zxcvbn(password, &[email, local_part, name, "fluxstudio", "flux"]);
    if (estimate.score() as u8) < 2 {
        return Err(ValidationError::new(
            "password",
            "This password is too common or easy to guess. Try a longer phrase of unrelated words.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_code_points_not_bytes() {
        assert!(check_length("ééééééé", 8).is_err()); // 7 code points, 14 bytes
        assert!(check_length("éééééééé", 8).is_ok());
        assert!(check_length(&"a".repeat(129), 8).is_err());
        assert!(check_length(&"a".repeat(10_000), 8).is_err());
    }

    #[test]
    fn rejects_breached_passwords_with_a_common_breached_reason_and_no_composition_rule() {
        let breached = BreachedPasswords::load().unwrap();
        for known in ["Welcome@123", "Summer2024!", "correcthorsebatterystaple"] {
            let error = check_new(known, "a@example.com", "Ann", 8, &breached).unwrap_err();
            assert!(
                error.message.contains("common") && error.message.contains("breached"),
                "{known}: {}",
                error.message
            );
            for rule in ["upper", "digit", "symbol", "special", "number"] {
                assert!(
                    !error.message.to_lowercase().contains(rule),
                    "{}",
                    error.message
                );
            }
        }
    }

    #[test]
    fn rejects_common_passwords_and_the_email() {
        let breached = BreachedPasswords::load().unwrap();
        for weak in [
            "password",
            "123456789",
            "qwertyuiop",
            "iloveyou1",
            "password123",
            "sunshine",
        ] {
            assert!(
                check_new(weak, "a@example.com", "Ann", 8, &breached).is_err(),
                "{weak} accepted"
            );
        }
        let check = |password, email| check_new(password, email, "Ann", 8, &breached);
        assert!(check("ann.lee@example.com", "ann.lee@example.com").is_err());
        assert!(check("violet tractor hums at dawn", "a@example.com").is_ok());
        assert!(check("xK9#mQ2$vL7p", "a@example.com").is_ok());
    }
}
