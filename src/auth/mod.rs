//! The service layer: passwords, tokens, revocation and the flows that combine them with the
//! store and the security log. No HTTP types here.

pub mod admin;
pub mod breached;
pub mod error;
pub mod fluxstudio_tokens;
pub mod oidc;
pub mod one_time;
pub mod operator;
pub mod password_policy;
pub mod passwords;
pub mod refresh;
pub mod revocation;
pub mod service;
pub mod tokens;
pub mod two_factor;

pub use error::AuthError;
pub use service::AuthService;

/// `N` bytes from the operating system's CSPRNG. Should the OS source ever fail, the thread RNG
/// (ChaCha seeded from the OS) is used rather than failing the request.
pub fn os_random<const N: usize>() -> [u8; N] {
    use rand::{RngCore, TryRngCore};
    let mut bytes = [0u8; N];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::rng().fill_bytes(&mut bytes);
    }
    bytes
}
