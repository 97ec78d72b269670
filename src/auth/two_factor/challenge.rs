//! The second step of a sign-in: a temp token (opaque, 256 random bits, so no route could ever
//! take it for an access token) standing for a user whose first factor passed. It lives 5
//! minutes, is taken once by a right code, and dies after 5 wrong ones. Kept where the OpenID
//! flows keep their pending state (Redis when configured, so any instance can finish a sign-in
//! another started; in-process otherwise), under the SHA-256 of the token.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::oidc::one_time::OneTimeStore;
use crate::clock::Clock;

pub const TEMP_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Wrong codes a temp token survives; the fifth kills it.
pub const MAX_WRONG_CODES: u32 = 5;
/// Longer input is no token of ours: refused before any lookup.
const MAX_TOKEN_CHARS: usize = 128;
const KIND: &str = "challenge";

/// How the first factor was passed: what the sign-in's success event says once the second step
/// is done, and whether the session records a password login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SignInMethod {
    Password,
    #[serde(rename_all = "camelCase")]
    Provider {
        provider: String,
        issuer: String,
        flow: String,
        is_new_user: bool,
        linked: bool,
    },
}

/// A pending second step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    pub user_id: String,
    pub method: SignInMethod,
    pub failures: u32,
    pub expires_at: DateTime<Utc>,
}

pub struct Challenges {
    store: OneTimeStore,
    clock: Clock,
}

impl Challenges {
    pub fn new(store: OneTimeStore, clock: Clock) -> Self {
        Self { store, clock }
    }

    /// A new temp token for the user; the challenge waits for it for 5 minutes.
    pub async fn issue(&self, user_id: &str, method: SignInMethod) -> String {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::auth::os_random::<32>());
        let challenge = Challenge {
            user_id: user_id.to_owned(),
            method,
            failures: 0,
            expires_at: self.clock.now()
                + chrono::Duration::seconds(TEMP_TOKEN_TTL.as_secs() as i64),
        };
        if let Ok(value) = serde_json::to_string(&challenge) {
            self.store.put(KIND, &token, &value, TEMP_TOKEN_TTL).await;
        }
        token
    }

    /// Takes the challenge of `token`: nobody else can take it while this request decides. A
    /// wrong code puts it back ([`Challenges::put_back`]); anything else ends it.
    pub async fn take(&self, token: &str) -> Option<Challenge> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let value = self.store.take(KIND, token).await?;
        let challenge: Challenge = serde_json::from_str(&value).ok()?;
        (challenge.expires_at > self.clock.now()).then_some(challenge)
    }

    /// Returns a challenge after a wrong code, counted; false when that was its last (the token
    /// is dead) or its time is up.
    pub async fn put_back(&self, token: &str, mut challenge: Challenge) -> bool {
        challenge.failures += 1;
        self.restore(token, challenge).await
    }

    /// Returns a challenge as it was taken (the request failed for a reason other than the code);
    /// false when it is dead.
    pub async fn restore(&self, token: &str, challenge: Challenge) -> bool {
        let left = (challenge.expires_at - self.clock.now()).num_milliseconds();
        if challenge.failures >= MAX_WRONG_CODES || left <= 0 {
            return false;
        }
        let Ok(value) = serde_json::to_string(&challenge) else {
            return false;
        };
        self.store
            .put(KIND, token, &value, Duration::from_millis(left as u64))
            .await;
        true
    }
}
