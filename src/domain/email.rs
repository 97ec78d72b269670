//! A validated, normalised email address.

use super::{ValidationError, is_forbidden_char};

/// RFC 5321 caps a path at 256 octets including the angle brackets: 254 for the address.
pub const MAX_EMAIL_LEN: usize = 254;

/// An email address, trimmed and lower-cased, so that `Alice@X.com` and `alice@x.com` are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new("email", "Email is required"));
        }
        if trimmed.len() > MAX_EMAIL_LEN {
            return Err(ValidationError::new(
                "email",
                "Email must be at most 254 characters",
            ));
        }
        let invalid = || ValidationError::new("email", "Please enter a valid email address");
        if trimmed
            .chars()
            .any(|c| is_forbidden_char(c) || c.is_whitespace())
        {
            return Err(invalid());
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or_else(invalid)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(invalid());
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(invalid());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(invalid());
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    /// For values read back from a store, which were validated when they were written.
    pub fn from_trusted(stored: &str) -> Self {
        Self(stored.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        assert_eq!(
            Email::parse("  Alice@X.com ").unwrap().as_str(),
            "alice@x.com"
        );
    }

    #[test]
    fn rejects_malformed_and_hostile_values() {
        for bad in [
            "",
            "plain",
            "@x.com",
            "a@",
            "a@x",
            "a b@x.com",
            "a@x..com",
            "a\u{0}@x.com",
            "a\u{202E}@x.com",
            "a@-x.com",
            ".a@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("{}@x.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
