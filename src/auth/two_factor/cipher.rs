//! TOTP secrets at rest: AES-256-GCM under `TOTP_ENCRYPTION_KEY`, so a copy of the database (or
//! of users.json) alone gives no usable secret. Each ciphertext is bound to its user (the user id
//! is the associated data): a secret copied onto another account does not decrypt there.
//! `TOTP_ENCRYPTION_KEY_PREVIOUS` still decrypts, so a key can be rotated without turning anyone's
//! two-factor sign-in off; secrets are written under the current key only.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

/// Marks the format of a stored secret: `v1:` then base64 of the 96-bit nonce and the ciphertext.
const PREFIX: &str = "v1:";
const NONCE_BYTES: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("{0} must be 32 bytes, base64 (generate one with `flux-auth gen-totp-key`)")]
    BadKey(&'static str),
    #[error("a stored two-factor secret does not decrypt with the configured keys")]
    Undecryptable,
}

pub struct SecretCipher {
    current: Aes256Gcm,
    previous: Option<Aes256Gcm>,
}

/// A key as configured: 32 bytes in standard or URL-safe base64, padded or not.
pub fn parse_key(name: &'static str, raw: &SecretString) -> Result<[u8; 32], CipherError> {
    let text = raw.expose_secret().trim();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .ok_or(CipherError::BadKey(name))
}

/// A new random key, base64: what `flux-auth gen-totp-key` prints.
pub fn generate_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(crate::auth::os_random::<32>())
}

impl SecretCipher {
    /// `None` without `TOTP_ENCRYPTION_KEY`: two-factor setup then answers 503.
    pub fn from_settings(
        current: Option<&SecretString>,
        previous: Option<&SecretString>,
    ) -> Result<Option<Self>, CipherError> {
        let Some(current) = current else {
            return Ok(None);
        };
        let current = parse_key("TOTP_ENCRYPTION_KEY", current)?;
        let previous = previous
            .map(|p| parse_key("TOTP_ENCRYPTION_KEY_PREVIOUS", p))
            .transpose()?;
        Ok(Some(Self::new(&current, previous.as_ref())))
    }

    pub fn new(current: &[u8; 32], previous: Option<&[u8; 32]>) -> Self {
        Self {
            current: Aes256Gcm::new(current.into()),
            previous: previous.map(|key| Aes256Gcm::new(key.into())),
        }
    }

    /// Encrypts `secret` for `user_id` under the current key, with a random nonce.
    pub fn encrypt(&self, user_id: &str, secret: &[u8]) -> String {
        let nonce: [u8; NONCE_BYTES] = crate::auth::os_random();
        let sealed = self
            .current
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: user_id.as_bytes(),
                },
            )
            // Only fails for inputs past AES-GCM's length limit (64 GiB); a secret is 20 bytes.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// The secret stored for `user_id`, under the current key or else the previous one.
    pub fn decrypt(&self, user_id: &str, stored: &str) -> Result<Vec<u8>, CipherError> {
        let raw = stored
            .strip_prefix(PREFIX)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .filter(|raw| raw.len() > NONCE_BYTES)
            .ok_or(CipherError::Undecryptable)?;
        let (nonce, sealed) = raw.split_at(NONCE_BYTES);
        let nonce = Nonce::from(
            <[u8; NONCE_BYTES]>::try_from(nonce).map_err(|_| CipherError::Undecryptable)?,
        );
        let payload = || Payload {
            msg: sealed,
            aad: user_id.as_bytes(),
        };
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find_map(|key| key.decrypt(&nonce, payload()).ok())
            .ok_or(CipherError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_decrypts_only_with_its_key_and_for_its_user() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let cipher = SecretCipher::new(&a, None);
        let stored = cipher.encrypt("u1", b"twenty bytes secret!");
        assert!(!stored.contains("twenty"));
        assert_eq!(
            cipher.decrypt("u1", &stored).unwrap(),
            b"twenty bytes secret!"
        );
        assert_eq!(
            cipher.decrypt("u2", &stored),
            Err(CipherError::Undecryptable)
        );
        assert_eq!(
            SecretCipher::new(&b, None).decrypt("u1", &stored),
            Err(CipherError::Undecryptable)
        );
        // Rotation: the old key still decrypts as the previous one.
        let rotated = SecretCipher::new(&b, Some(&a));
        assert_eq!(
            rotated.decrypt("u1", &stored).unwrap(),
            b"twenty bytes secret!"
        );
        assert_eq!(
            cipher.decrypt("u1", "v1:AAAA"),
            Err(CipherError::Undecryptable)
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        let key = generate_key();
        assert!(parse_key("K", &SecretString::from(key)).is_ok());
        assert_eq!(
            parse_key("K", &SecretString::from("short".to_owned())),
            Err(CipherError::BadKey("K"))
        );
    }
}
