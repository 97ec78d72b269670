//! The codes: TOTP (SHA-1, 6 digits, 30 s steps, one step either side accepted), the otpauth URL
//! and QR code an authenticator app scans, and the backup codes.

use base64::Engine;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Totp};

/// The name authenticator apps show next to the account.
pub const ISSUER: &str = "FluxStudio";
/// 160 bits, the length RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;
/// The shortest secret a code is checked against: 80 bits, the length FluxStudio's TOTP library
/// (otplib) made by default, so that its users' authenticators keep working once imported. New
/// secrets are always [`SECRET_BYTES`]; RFC 4226's 128-bit minimum applies to those.
pub const MIN_SECRET_BYTES: usize = 10;
/// The longest secret accepted from elsewhere (an import): 512 bits, SHA-1's block.
pub const MAX_SECRET_BYTES: usize = 64;
/// RFC 6238's time step; the stores count accepted steps in it.
pub const STEP_SECS: u64 = crate::store::two_factor::TOTP_STEP_SECS;
pub const BACKUP_CODE_COUNT: usize = 10;
/// Characters of a backup code, without the dashes: 12 of 32 symbols, 60 bits.
const BACKUP_CODE_CHARS: usize = 12;
/// FluxStudio's backup codes (`crypto.randomBytes(4)` in hex): 8 hex characters, 32 bits. They
/// are accepted from users whose codes were imported; wrong codes count toward the lockout like
/// any other, and the temp token dies after 5.
const LEGACY_BACKUP_CODE_CHARS: usize = 8;
/// Crockford's base32: no i, l, o or u, and those typed for 1, 1 and 0 are read as such, so a
/// code read off paper is typed back right.
const BACKUP_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Longest code text looked at; longer input is refused before any work.
pub const MAX_CODE_CHARS: usize = 32;

/// A new random TOTP secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    crate::auth::os_random()
}

fn totp(secret: &[u8], account: &str) -> Option<Totp> {
    let builder = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_issuer(Some(ISSUER))
        // A colon is the label's separator in the otpauth URL; an email never has one, but an
        // address the old service accepted might.
        .with_account_name(account.replace(':', ""));
    match secret.len() {
        // `build` refuses secrets under 128 bits: an imported 80-bit one is checked all the same.
        n if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&n) => None,
        n if n < 16 => Some(builder.build_noncompliant()),
        _ => builder.build().ok(),
    }
}

/// A secret as another service kept it, in base32 (RFC 4648, any case, spaces and padding
/// ignored): its bytes, or `None` when it is not base32 or shorter than [`MIN_SECRET_BYTES`] or
/// longer than [`MAX_SECRET_BYTES`].
pub fn secret_from_base32(text: &str) -> Option<Vec<u8>> {
    let text: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    // Base32 of MAX_SECRET_BYTES fills 104 characters at most: longer text is refused unread.
    if text.len() > MAX_SECRET_BYTES.div_ceil(5) * 8 {
        return None;
    }
    let bytes = totp_rs::Secret::try_from_base32(&text)
        .ok()?
        .as_bytes()
        .to_vec();
    (MIN_SECRET_BYTES..=MAX_SECRET_BYTES)
        .contains(&bytes.len())
        .then_some(bytes)
}

/// What setup shows: the secret in base32 (typed by hand), the otpauth URL and its QR code as a
/// PNG data URL.
pub struct Enrolment {
    pub secret_base32: String,
    pub otpauth_url: String,
    pub qr_data_url: String,
}

pub fn enrolment(secret: &[u8], account: &str) -> anyhow::Result<Enrolment> {
    let totp = totp(secret, account).ok_or_else(|| anyhow::anyhow!("TOTP parameters refused"))?;
    let url = totp.to_url()?;
    let png = totp.to_qr_png()?;
    Ok(Enrolment {
        secret_base32: totp_rs::Secret::from(secret.to_vec()).to_base32(),
        otpauth_url: url,
        qr_data_url: format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        ),
    })
}

/// What a submitted code is, once spaces and dashes are dropped and letters lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Totp(String),
    Backup(String),
}

/// `None` for input that can be neither kind of code (empty, too long, other characters).
pub fn classify(raw: &str) -> Option<Code> {
    if raw.chars().count() > MAX_CODE_CHARS {
        return None;
    }
    let text: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        })
        .collect();
    let ours =
        text.len() == BACKUP_CODE_CHARS && text.bytes().all(|b| BACKUP_ALPHABET.contains(&b));
    let fluxstudios =
        text.len() == LEGACY_BACKUP_CODE_CHARS && text.bytes().all(|b| b.is_ascii_hexdigit());
    if text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()) {
        Some(Code::Totp(text))
    } else if ours || fluxstudios {
        Some(Code::Backup(text))
    } else {
        None
    }
}

/// The time step the code is valid for at `now_secs` (the current step or one either side),
/// compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    totp(secret, "")?.check(code, now_secs)
}

/// The code of `step`: what an authenticator shows during it (tests compute codes with this).
pub fn code_at(secret: &[u8], now_secs: u64) -> Option<String> {
    Some(totp(secret, "")?.generate(now_secs).to_string())
}

/// Ten new backup codes, as shown to the user (`xxxx-xxxx-xxxx`).
pub fn new_backup_codes() -> Vec<String> {
    (0..BACKUP_CODE_COUNT)
        .map(|_| {
            let bytes: [u8; BACKUP_CODE_CHARS] = crate::auth::os_random();
            let chars: Vec<char> = bytes
                .iter()
                // 256 is a multiple of 32: every symbol is equally likely.
                .map(|b| BACKUP_ALPHABET[(*b as usize) % BACKUP_ALPHABET.len()] as char)
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// How a backup code is stored: SHA-256 of the user id and the normalised code, hex. The user id
/// salts it, so one table of hashes cannot be matched against every account at once; 60 random
/// bits make a guess per account impractical.
pub fn backup_code_hash(user_id: &str, normalised: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(user_id.as_bytes());
    hasher.update(b":");
    hasher.update(normalised.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_one_step_either_side_and_no_further() {
        let secret = new_secret();
        let now = 1_900_000_000;
        let code = code_at(&secret, now).unwrap();
        assert_eq!(matching_step(&secret, &code, now), Some(now / STEP_SECS));
        assert!(matching_step(&secret, &code, now + STEP_SECS).is_some());
        assert!(matching_step(&secret, &code, now - STEP_SECS).is_some());
        assert_eq!(matching_step(&secret, &code, now + 3 * STEP_SECS), None);
    }

    #[test]
    fn backup_codes_are_recognised_in_any_spelling() {
        let codes = new_backup_codes();
        assert_eq!(codes.len(), BACKUP_CODE_COUNT);
        for code in &codes {
            assert_eq!(code.len(), 14);
            let Some(Code::Backup(normalised)) = classify(&code.to_uppercase()) else {
                panic!("{code} not recognised");
            };
            assert_eq!(normalised, code.replace('-', ""));
        }
        assert_eq!(classify(" 123 456 "), Some(Code::Totp("123456".into())));
        assert_eq!(classify("12345"), None);
        assert_eq!(classify(&"1".repeat(40)), None);
        assert_eq!(classify("<script>"), None);
        // FluxStudio's: 8 hex characters, any case.
        assert_eq!(classify("A1B2c3d4"), Some(Code::Backup("a1b2c3d4".into())));
        assert_eq!(classify("a1b2c3dg"), None);
    }

    #[test]
    fn imported_80_bit_secrets_are_checked_and_shorter_ones_refused() {
        let secret = secret_from_base32("jbsw y3dp ehpk 3pxp").unwrap();
        assert_eq!(secret, b"Hello!\xde\xad\xbe\xef");
        let now = 1_900_000_000;
        let code = code_at(&secret, now).unwrap();
        assert_eq!(matching_step(&secret, &code, now), Some(now / STEP_SECS));
        assert_eq!(secret_from_base32("JBSWY3DP"), None, "40 bits");
        assert_eq!(secret_from_base32("not base32!"), None);
        assert_eq!(secret_from_base32(&"A".repeat(200)), None);
        assert_eq!(code_at(&secret[..8], now), None);
    }

    #[test]
    fn enrolment_gives_an_otpauth_url_and_a_png() {
        let e = enrolment(&new_secret(), "ann@example.com").unwrap();
        assert!(
            e.otpauth_url
                .starts_with("otpauth://totp/FluxStudio:ann%40example.com?")
        );
        assert!(e.qr_data_url.starts_with("data:image/png;base64,iVBOR"));
        assert_eq!(e.secret_base32.len(), 32);
    }
}
