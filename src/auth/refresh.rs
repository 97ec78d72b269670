//! Refresh tokens: opaque, 256 bits from the OS CSPRNG, stored only as SHA-256.
//!
//! A token's successor is not random but `HMAC(key, token)`: only a holder of the token (and the
//! server) can compute it, and every concurrent refresh of one token inside the grace window gets
//! the same successor without the server ever storing a raw token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// 32 bytes in unpadded base64url.
pub const TOKEN_CHARS: usize = 43;

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

    pub fn generate(&self) -> String {
        let bytes: [u8; 32] = super::os_random();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn successor(&self, token: &str) -> String {
        let mut mac = self.successor_mac.clone();
        mac.update(token.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// True when `token` has the shape of one of ours; anything else is refused before lookup.
    pub fn well_formed(token: &str) -> bool {
        token.len() == TOKEN_CHARS
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
}
