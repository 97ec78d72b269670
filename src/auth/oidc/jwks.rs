//! The provider's signing keys (JWKS), by `kid`, cached for as long as its `Cache-Control:
//! max-age` says. An unknown `kid` triggers one refetch (keys rotate), but at most one per
//! `REFETCH_COOLDOWN_SECS`, so a flood of made-up `kid`s cannot make us hammer the provider.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use super::provider::{ProviderUnavailable, get_json};
use crate::clock::Clock;

/// Used when the response has no usable `max-age`.
const DEFAULT_MAX_AGE_SECS: i64 = 3600;
/// A provider asking for less (or `no-store`) still gets this much, or every sign-in would fetch.
const MIN_MAX_AGE_SECS: i64 = 60;
const MAX_MAX_AGE_SECS: i64 = 24 * 3600;
/// At most one fetch per this long for unknown `kid`s (and after a failed fetch).
pub const REFETCH_COOLDOWN_SECS: i64 = 30;
/// How long past its max-age a key set still serves while the provider cannot be reached.
const STALE_GRACE_SECS: i64 = 3600;
/// Keys below this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
const MAX_KEYS: usize = 64;

/// A provider's signing key and the one algorithm it verifies: RS256 for an RSA key, ES256 for a
/// P-256 key. A token is checked with the algorithm of the key its `kid` names, never with the
/// one its header claims, so no token can pick a weaker check.
pub struct ProviderKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No such key, even after the refetch the cooldown allowed.
    UnknownKid,
    Unavailable(String),
}

#[derive(Default)]
struct KeySet {
    source: Option<Url>,
    keys: HashMap<String, Arc<ProviderKey>>,
    expires_at: Option<DateTime<Utc>>,
    /// Last attempt, successful or not: the cooldown counts from it.
    attempted_at: Option<DateTime<Utc>>,
}

impl KeySet {
    fn fresh(&self, source: &Url, now: DateTime<Utc>) -> bool {
        self.source.as_ref() == Some(source) && self.expires_at.is_some_and(|e| now < e)
    }

    /// A key of this set, even a little past its max-age: keys we already trust stay usable
    /// through a short provider outage, but not for longer than `STALE_GRACE_SECS`.
    fn stale_key(&self, source: &Url, kid: &str, now: DateTime<Utc>) -> Option<Arc<ProviderKey>> {
        let within_grace = self
            .expires_at
            .is_some_and(|e| now < e + chrono::Duration::seconds(STALE_GRACE_SECS));
        if self.source.as_ref() != Some(source) || !within_grace {
            return None;
        }
        self.keys.get(kid).cloned()
    }

    fn cooling_down(&self, now: DateTime<Utc>) -> bool {
        self.attempted_at
            .is_some_and(|at| now < at + chrono::Duration::seconds(REFETCH_COOLDOWN_SECS))
    }
}

pub struct JwksCache {
    current: RwLock<Arc<KeySet>>,
    /// One fetch at a time; requests that needed it wait, then read its result.
    fetching: tokio::sync::Mutex<()>,
    clock: Clock,
}

impl JwksCache {
    pub fn new(clock: Clock) -> Self {
        Self {
            current: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(()),
            clock,
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The key `kid` of the set at `source`.
    pub async fn key(
        &self,
        http: &reqwest::Client,
        source: &Url,
        kid: &str,
    ) -> Result<Arc<ProviderKey>, KeyError> {
        let set = self.snapshot();
        if set.fresh(source, self.clock.now())
            && let Some(key) = set.keys.get(kid)
        {
            return Ok(key.clone());
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Whoever held the lock may just have fetched what we need.
        let set = self.snapshot();
        let now = self.clock.now();
        let fresh = set.fresh(source, now);
        if fresh && let Some(key) = set.keys.get(kid) {
            return Ok(key.clone());
        }
        if set.cooling_down(now) {
            // Fetched (or tried) moments ago: answer from what we have.
            return match set.stale_key(source, kid, now) {
                Some(key) => Ok(key),
                None if fresh => Err(KeyError::UnknownKid),
                None => Err(KeyError::Unavailable("key fetch failed moments ago".into())),
            };
        }
        match fetch(http, source, now).await {
            Ok(fetched) => {
                let found = fetched.keys.get(kid).cloned();
                self.publish(fetched);
                found.ok_or(KeyError::UnknownKid)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not fetch the provider's signing keys");
                let stale_key = set.stale_key(source, kid, now);
                self.publish(KeySet {
                    source: set.source.clone(),
                    keys: set.keys.clone(),
                    expires_at: set.expires_at,
                    attempted_at: Some(now),
                });
                stale_key.ok_or(KeyError::Unavailable(e.0))
            }
        }
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

async fn fetch(
    http: &reqwest::Client,
    source: &Url,
    now: DateTime<Utc>,
) -> Result<KeySet, ProviderUnavailable> {
    let (set, headers): (JwkSet, _) = get_json(http, source).await?;
    let max_age = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age_secs)
        .unwrap_or(DEFAULT_MAX_AGE_SECS)
        .clamp(MIN_MAX_AGE_SECS, MAX_MAX_AGE_SECS);
    let keys: HashMap<String, Arc<ProviderKey>> = set
        .keys
        .iter()
        .take(MAX_KEYS)
        .filter_map(usable_key)
        .collect();
    tracing::debug!(
        keys = keys.len(),
        max_age,
        "fetched the provider's signing keys"
    );
    Ok(KeySet {
        source: Some(source.clone()),
        keys,
        expires_at: Some(now + chrono::Duration::seconds(max_age)),
        attempted_at: Some(now),
    })
}

/// `max-age` of one Cache-Control value; `no-store`/`no-cache` count as 0 (then clamped).
fn max_age_secs(header: &str) -> Option<i64> {
    let mut found = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            found = value.trim_matches('"').parse::<i64>().ok();
        }
    }
    found
}

/// An RSA signing key for RS256 with a `kid`, of at least 2048 bits; anything else is skipped.
fn usable_key(jwk: &serde_json::Value) -> Option<(String, Arc<ProviderKey>)> {
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    if field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let kid = field("kid").filter(|k| !k.is_empty() && k.len() <= 256)?;
    let key = match field("kty")? {
        "RSA" => {
            if field("alg").is_some_and(|a| a != "RS256") {
                return None;
            }
            let (n, e) = (field("n")?, field("e")?);
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n.trim_end_matches('='))
                .ok()?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return None;
            }
            ProviderKey {
                key: DecodingKey::from_rsa_components(n, e).ok()?,
                algorithm: Algorithm::RS256,
            }
        }
        // Sign in with Apple may sign with P-256 (ES256).
        "EC" => {
            if field("crv") != Some("P-256") || field("alg").is_some_and(|a| a != "ES256") {
                return None;
            }
            ProviderKey {
                key: DecodingKey::from_ec_components(field("x")?, field("y")?).ok()?,
                algorithm: Algorithm::ES256,
            }
        }
        _ => return None,
    };
    Some((kid.to_owned(), Arc::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age_secs("public, max-age=19204, must-revalidate"),
            Some(19204)
        );
        assert_eq!(max_age_secs("no-store"), Some(0));
        assert_eq!(max_age_secs("public"), None);
        assert_eq!(max_age_secs("max-age=abc"), None);
    }

    #[test]
    fn weak_or_foreign_keys_are_skipped() {
        let small = serde_json::json!({"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"});
        assert!(usable_key(&small).is_none());
        let ec = serde_json::json!({"kty":"EC","kid":"b","crv":"P-384","x":"AA","y":"AA"});
        assert!(usable_key(&ec).is_none());
        let p256 = serde_json::json!({"kty":"EC","kid":"e","crv":"P-256","x":"AA","y":"AA"});
        assert_eq!(
            usable_key(&p256).map(|(_, k)| k.algorithm),
            Some(Algorithm::ES256)
        );
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let ok =
            serde_json::json!({"kty":"RSA","kid":"c","n":n,"e":"AQAB","alg":"RS256","use":"sig"});
        assert_eq!(usable_key(&ok).map(|(k, _)| k).as_deref(), Some("c"));
        let enc = serde_json::json!({"kty":"RSA","kid":"d","n":n,"e":"AQAB","use":"enc"});
        assert!(usable_key(&enc).is_none());
    }
}
