//! Signing secrets for tests: one fixed for apps whose tokens a test builds or checks, and a fresh
//! one per run for a spawned binary.

use rand::Rng;

/// The strong secret `TestApp` signs with (and a spawned binary, where a test needs to know it).
pub const JWT_SECRET: &str = "test-secret-5f0c1f2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

/// A strong secret of 40 random alphanumeric characters, new for each call.
pub fn random_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}
