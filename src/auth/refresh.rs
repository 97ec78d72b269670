//! Refresh tokens: opaque, stored only as SHA-256. A token is a session tag (64 bits) followed by
//! 256 secret bits from the OS CSPRNG, both unpadded base64url.
//!
//! The tag is random per session and kept by every successor: it names the session to the
//! per-session refresh limit before any lookup, so that limit costs no database round trip. It
//! carries no authority — the whole token is what is hashed and looked up — and an attacker who
//! does not hold a token of the session does not know it.
//!
//! A token's successor is not random but `tag ‖ HMAC(key, token)`: only a holder of the token (and
//! the server) can compute it, and every concurrent refresh of one token inside the grace window
//! gets the same successor without the server ever storing a raw token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The session tag: 8 bytes in unpadded base64url.
const TAG_CHARS: usize = 11;
/// The secret part: 32 bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;
/// A whole token.
pub const TOKEN_CHARS: usize = TAG_CHARS + SECRET_CHARS;
/// Tokens issued before session tags (the secret part alone) are still accepted; their successors
/// carry a tag derived from them.
const UNTAGGED_CHARS: usize = SECRET_CHARS;

pub struct RefreshTokens {
    /// Keyed once; cloned per use.
    successor_mac: Hmac<Sha256>,
}

impl RefreshTokens {
    pub fn new(secret: &SecretString) -> anyhow::Result<Self> {
        // A key of its own, derived from the signing secret, so the JWT key is never used for two
        // purposes.
        let mut hasher = Sha256::new();
        hasher.update(b"flux-auth/refresh-successor/v1\0");
        hasher.update(secret.expose_secret().as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let successor_mac =
            Hmac::<Sha256>::new_from_slice(&key).map_err(|e| anyhow::anyhow!("hmac key: {e}"))?;
        Ok(Self { successor_mac })
    }

    /// The first token of a new session.
    pub fn generate(&self) -> String {
        let tag: [u8; 8] = super::os_random();
        let secret: [u8; 32] = super::os_random();
        let mut token = URL_SAFE_NO_PAD.encode(tag);
        URL_SAFE_NO_PAD.encode_string(secret, &mut token);
        token
    }

    /// The token that replaces `token` (well formed): same session tag, secret `HMAC(key, token)`.
    pub fn successor(&self, token: &str) -> String {
        let mut successor = self.session_tag(token);
        let mut mac = self.successor_mac.clone();
        mac.update(token.as_bytes());
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut successor);
        successor
    }

    /// The session tag of a well-formed token: its first characters, or for an untagged token one
    /// derived from it (what its successor will carry).
    pub fn session_tag(&self, token: &str) -> String {
        if token.len() == TOKEN_CHARS {
            return token[..TAG_CHARS].to_owned();
        }
        let mut mac = self.successor_mac.clone();
        mac.update(b"session-tag\0");
        mac.update(token.as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..8])
    }

    /// True when `token` has the shape of one of ours; anything else is refused before lookup.
    /// FluxStudio's tokens (128 hex characters), imported as sessions by `import-fluxstudio`,
    /// are accepted too: their successors are ours.
    pub fn well_formed(token: &str) -> bool {
        ((token.len() == TOKEN_CHARS || token.len() == UNTAGGED_CHARS)
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            || crate::store::postgres::fluxstudio::is_legacy_token(token)
    }
}

/// Hex SHA-256, the only form of a refresh token that is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_successors_deterministic() {
        let r = RefreshTokens::new(&SecretString::from("k".repeat(40))).unwrap();
        let a = r.generate();
        let b = r.generate();
        assert_ne!(a, b);
        assert!(RefreshTokens::well_formed(&a));
        assert_eq!(r.successor(&a), r.successor(&a));
        assert_ne!(r.successor(&a), r.successor(&b));
        assert!(RefreshTokens::well_formed(&r.successor(&a)));
        assert!(!RefreshTokens::well_formed("short"));
        assert_eq!(hash_token(&a).len(), 64);
    }

    #[test]
    fn the_session_tag_is_kept_by_every_successor_and_given_to_untagged_tokens() {
        let r = RefreshTokens::new(&SecretString::from("k".repeat(40))).unwrap();
        let first = r.generate();
        assert_eq!(first.len(), TOKEN_CHARS);
        let tag = r.session_tag(&first);
        assert_eq!(tag.len(), TAG_CHARS);
        let second = r.successor(&first);
        let third = r.successor(&second);
        assert_eq!(r.session_tag(&second), tag);
        assert_eq!(r.session_tag(&third), tag);
        assert_ne!(
            r.session_tag(&r.generate()),
            tag,
            "each session its own tag"
        );

        let untagged = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(RefreshTokens::well_formed(&untagged));
        let next = r.successor(&untagged);
        assert_eq!(next.len(), TOKEN_CHARS);
        assert_eq!(r.session_tag(&next), r.session_tag(&untagged));
        assert_eq!(r.session_tag(&r.successor(&next)), r.session_tag(&untagged));
    }
}
