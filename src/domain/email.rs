//! A validated email address: the address as sent (trimmed, lower-cased), kept for display and
//! mail, and the canonical key that accounts are compared by.
//!
//! One mailbox has many spellings: `josé` precomposed or as `e` + U+0301, a full-width domain
//! (`ｘ.com`), a Unicode domain or its `xn--` form, `"alice"` quoted. The key folds them: the
//! local part NFKC-normalised and lower-cased, the domain through IDNA (UTS 46: mapped, lower-cased,
//! punycode). Quoted local parts are refused in new input (nothing needs them, and they are where
//! parsers disagree); an address read back from a store is unquoted when keyed, so an old account
//! with one still meets its unquoted twin.
//!
//! A key is a valid address itself: what the checks refuse in an address (a quote, white space,
//! an invisible character, a local part past 64 bytes, a key past 254) is refused in the key too,
//! since folding can produce it (a full-width quote becomes `"`, U+00A8 a space and a combining
//! mark, U+FDFA eighteen characters). An address stored under laxer rules whose key would break
//! one of them has no key ([`Email::key_of`] is `None`).

use unicode_normalization::UnicodeNormalization;

use super::{ValidationError, is_forbidden_char};

/// RFC 5321 caps a path at 256 octets including the angle brackets: 254 for the address.
pub const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email {
    /// Trimmed and lower-cased: what is stored and shown.
    address: String,
    /// What accounts are compared by; see the module documentation.
    key: String,
}

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
        if trimmed.chars().any(refused_in_address) {
            return Err(invalid());
        }
        let address = trimmed.to_lowercase();
        let (local, domain) = address.rsplit_once('@').ok_or_else(invalid)?;
        if !local_part_ok(local) {
            return Err(invalid());
        }
        let key = canonical_key(local, domain).ok_or_else(invalid)?;
        Ok(Self { address, key })
    }

    /// The key of an address read back from a store, which was validated when it was written
    /// (perhaps by the old service, with laxer rules). A quoted local part is unquoted first.
    /// `None` when the address has no key under today's rules (see the module documentation):
    /// such an account cannot be found by email, and is reported with the accounts that share a
    /// mailbox (`flux-auth users email-collisions`). A key, when there is one, is at most
    /// [`MAX_EMAIL_LEN`] bytes.
    pub fn key_of(stored: &str) -> Option<String> {
        if let Ok(email) = Self::parse(stored) {
            return Some(email.key);
        }
        let address = stored.trim().to_lowercase();
        let (local, domain) = address.rsplit_once('@')?;
        let local = local
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or(local);
        canonical_key(local, domain)
    }

    /// The address as sent: trimmed and lower-cased, otherwise untouched.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The canonical key: equal for every spelling of one mailbox.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The domain in its canonical (ASCII, lower-case) form.
    pub fn domain(&self) -> &str {
        self.key
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or_default()
    }
}

/// Characters no address (nor key) may hold: controls and invisible ones, white space, quotes.
fn refused_in_address(c: char) -> bool {
    is_forbidden_char(c) || c.is_whitespace() || c == '"'
}

fn local_part_ok(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
}

/// NFKC, lower case, NFKC again (lower-casing can leave a sequence that is not normalised).
fn fold(text: &str) -> String {
    text.nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect()
}

/// `local@domain` folded, with the domain through IDNA and checked label by label; `None` for a
/// domain that is not a valid host name, or a folded local part or key that the checks of an
/// address would refuse.
fn canonical_key(local: &str, domain: &str) -> Option<String> {
    let local = fold(local);
    if local.chars().any(refused_in_address) {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) || !local_part_ok(&local) {
        return None;
    }
    let key = format!("{local}@{domain}");
    (key.len() <= MAX_EMAIL_LEN).then_some(key)
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let email = Email::parse("  Alice@X.com ").unwrap();
        assert_eq!(email.as_str(), "alice@x.com");
        assert_eq!(email.key(), "alice@x.com");
    }

    #[test]
    fn every_spelling_of_one_mailbox_has_one_key_and_keeps_its_own_address() {
        let composed = Email::parse("josé@x.com").unwrap();
        for other in [
            "jose\u{301}@x.com",
            "JOSÉ@X.COM",
            "josé@ｘ.com",
            "josé@Ｘ．ｃｏｍ",
        ] {
            let email = Email::parse(other).unwrap();
            assert_eq!(email.key(), composed.key(), "{other:?}");
        }
        assert_eq!(
            Email::parse("jose\u{301}@x.com").unwrap().as_str(),
            "jose\u{301}@x.com",
            "the address as sent is kept"
        );
        let idn = Email::parse("ann@Bücher.example").unwrap();
        assert_eq!(idn.key(), "ann@xn--bcher-kva.example");
        assert_eq!(idn.as_str(), "ann@bücher.example");
        assert_eq!(idn.domain(), "xn--bcher-kva.example");
        assert_eq!(
            Email::parse("ann@xn--bcher-kva.example").unwrap().key(),
            idn.key()
        );
        assert_eq!(
            Email::parse("ﬁ@x.com").unwrap().key(),
            "fi@x.com",
            "compatibility characters fold"
        );
    }

    #[test]
    fn quoted_local_parts_are_refused_and_unquoted_when_read_back() {
        assert!(Email::parse("\"alice\"@x.com").is_err());
        assert!(Email::parse("\"a b\"@x.com").is_err());
        assert_eq!(Email::key_of("\"alice\"@x.com").unwrap(), "alice@x.com");
        assert_eq!(Email::key_of("Bob@Example.com").unwrap(), "bob@example.com");
        assert_eq!(
            Email::key_of("jose\u{301}@x.com"),
            Email::key_of("josé@x.com")
        );
    }

    #[test]
    fn what_folding_produces_is_checked_like_the_address() {
        let ligatures = "\u{FDFA}".repeat(14);
        for bad in [
            "a\u{FF02}b@x.com",            // full-width quote: '"'
            "a\u{A8}b@x.com",              // diaeresis: a space and a combining mark
            "a\u{FF20}b@x.com",            // full-width '@'
            "a\u{2025}b@x.com",            // two-dot leader: ".."
            "\u{FE52}a@x.com",             // small full stop: a leading '.'
            &format!("{ligatures}@x.com"), // 42 bytes, 252 characters once folded
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
            assert_eq!(Email::key_of(bad), None, "{bad:?} has no key");
        }
        assert_eq!(Email::key_of("\"a\u{FF02}b\"@x.com"), None);
        assert_eq!(Email::key_of("\"a b\"@x.com"), None);
        assert_eq!(Email::key_of("plain"), None);
    }

    #[test]
    fn every_key_is_a_valid_address_that_fits() {
        // Characters that grow under NFKC or lower-casing, repeated up to the old 64-byte bound
        // of a local part, and domains up to the length limit.
        let growing = [
            '\u{FDFA}', '\u{3300}', '\u{FB03}', '\u{130}', '\u{1F1}', 'a',
        ];
        let domains = [
            "x.com".to_owned(),
            format!("{}.com", "d".repeat(63)),
            format!(
                "{}.{}.{}.com",
                "d".repeat(63),
                "e".repeat(63),
                "f".repeat(63)
            ),
        ];
        let mut keyed = 0;
        for c in growing {
            for n in 1..=64 / c.len_utf8() {
                for domain in &domains {
                    let stored = format!("{}@{domain}", c.to_string().repeat(n));
                    let Some(key) = Email::key_of(&stored) else {
                        continue;
                    };
                    assert!(
                        key.len() <= MAX_EMAIL_LEN,
                        "{stored:?}: {} bytes",
                        key.len()
                    );
                    let (local, _) = key.rsplit_once('@').unwrap();
                    assert!(local_part_ok(local), "{stored:?}");
                    assert!(!key.chars().any(refused_in_address), "{stored:?}");
                    keyed += 1;
                }
            }
        }
        assert!(keyed > 100, "only {keyed} keys made");
        let longest = format!("{}@{}", "a".repeat(58), domains[2]);
        assert_eq!(
            Email::key_of(&longest).map(|k| k.len()),
            Some(MAX_EMAIL_LEN)
        );
        assert_eq!(Email::key_of(&format!("a{longest}")), None);
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
            "a@x_y.com",
            "a@x.com.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("{}@x.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
