//! Two-factor sign-in (TOTP, RFC 6238) and what it is built from: the secrets' encryption at rest
//! (`cipher`), the codes (`codes`: TOTP and backup codes) and the pending second steps of sign-ins
//! (`challenge`: the temp tokens). The flows that use them are in `auth::service::two_factor`.

pub mod challenge;
pub mod cipher;
pub mod codes;

pub use challenge::{Challenge, Challenges, SignInMethod};
pub use cipher::{CipherError, SecretCipher};

/// What the service holds for two-factor sign-in.
pub struct TwoFactor {
    /// `None` without `TOTP_ENCRYPTION_KEY`: setup answers 503, and so does a code check.
    pub cipher: Option<SecretCipher>,
    pub challenges: Challenges,
}
