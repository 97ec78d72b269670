//! FluxStudio's access tokens, honoured for the few minutes after the switch from the old service
//! so that nobody signed in is logged out, when the operator opts in with
//! `LEGACY_ACCESS_TOKENS_UNTIL` (at most [`MAX_WINDOW`] after the service starts: FluxStudio's
//! tokens live 15 minutes).
//!
//! Such a token is HS256 under the same `JWT_SECRET`, shaped `{id, email, userType, type:
//! "access", jti, iat, exp}` with no `kid`, `iss`, `aud`, `sub` nor `sid`. It is accepted only
//! while the service's clock is before the setting's time, only with `type: "access"` (never a
//! `2fa_pending` one), only within its own `exp`, and only if FluxStudio's Redis has no
//! `revoked_token:<jti>` (an unanswered look-up refuses it: the client then refreshes, with the
//! refresh token the import carried over). It is tried only after this service's own verification
//! refused the token as not one of its own ([`not_ours`]), never for an expired token of its own,
//! and a token of this service can never pass here (it has a `kid` and `typ: at+jwt`).
//!
//! An accepted token becomes [`AccessClaims`] for the FluxStudio user id it names (the import
//! keeps ids), so revocation (logout, logout-all) and the user check work on it as on any other.
//! It has no session: its `sid` is derived from its `jti`, so a logout with it revokes that token
//! only.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::tokens::{
    AccessClaims, MAX_TOKEN_BYTES, TOKEN_TYPE_HEADER, TokenError, TokenTimes, check_times,
};
use crate::clock::Clock;
use crate::config::Settings;
use crate::redis_link::RedisLink;

/// The latest `LEGACY_ACCESS_TOKENS_UNTIL` may be after the service starts: the lifetime of
/// FluxStudio's access tokens, so the setting covers the tokens issued before the switch and no
/// more.
pub const MAX_WINDOW: chrono::Duration = chrono::Duration::minutes(15);
/// FluxStudio's Redis key of a revoked access token, before its `jti`.
pub const REVOKED_KEY_PREFIX: &str = "revoked_token:";
/// The `iss` the claims of an accepted FluxStudio token carry (the token itself has none).
pub const LEGACY_ISSUER: &str = "fluxstudio";
/// Tokens whose first acceptance was recorded, remembered by `jti` (the least used making room):
/// about 50 bytes each.
const SEEN_TOKENS: usize = 100_000;
/// Longest `jti` looked up in Redis.
const MAX_JTI_CHARS: usize = 128;

/// Whether this service's refusal of a token says it was made by someone else or for something
/// else (its header, key, signature, issuer, audience or required claims), never that it is one
/// of this service's past its time: only such a token may be one of FluxStudio's.
pub fn not_ours(refusal: &TokenError) -> bool {
    matches!(
        refusal,
        TokenError::Invalid("typ" | "kid" | "signature" | "issuer" | "audience" | "missing claim")
    )
}

/// `LEGACY_ACCESS_TOKENS_UNTIL` read as an RFC 3339 time.
pub fn until(settings: &Settings) -> Result<Option<DateTime<Utc>>, String> {
    settings
        .legacy_access_tokens_until
        .as_deref()
        .map(str::trim)
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    format!(
                        "LEGACY_ACCESS_TOKENS_UNTIL must be an RFC 3339 time such as \
                         2026-01-31T09:15:00Z, not {raw:?}."
                    )
                })
        })
        .transpose()
}

/// What is wrong with `LEGACY_ACCESS_TOKENS_UNTIL` at `now` (when the service starts, or
/// `check-config` runs). A time already past is no problem: the setting then has no effect
/// (`check-config` says to remove it).
pub fn setting_problems(settings: &Settings, now: DateTime<Utc>) -> Vec<String> {
    let until = match until(settings) {
        Ok(Some(until)) if until > now => until,
        Ok(_) => return Vec::new(),
        Err(problem) => return vec![problem],
    };
    let mut problems = Vec::new();
    if until > now + MAX_WINDOW {
        problems.push(format!(
            "LEGACY_ACCESS_TOKENS_UNTIL={} is more than 15 minutes from now ({}): FluxStudio's \
             access tokens live 15 minutes, so set it at most 15 minutes after the switch, or \
             leave it unset.",
            until.to_rfc3339(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if settings.jwt_secret.is_none() {
        problems.push(
            "LEGACY_ACCESS_TOKENS_UNTIL needs JWT_SECRET set to FluxStudio's, which its access \
             tokens are signed with."
                .into(),
        );
    }
    if settings.redis_url.is_none() {
        problems.push(
            "LEGACY_ACCESS_TOKENS_UNTIL needs REDIS_URL: FluxStudio's Redis, where the access \
             tokens it revoked are (revoked_token:<jti>); without it those would be accepted."
                .into(),
        );
    }
    problems
}

/// What became of a token offered as one of FluxStudio's.
pub enum Outcome {
    /// Not one of FluxStudio's (or the time to accept them has passed): the refusal of this
    /// service's own verification stands.
    NotLegacy,
    /// FluxStudio's, signed with the secret, and refused for what it says or because it was
    /// revoked: the user it names and why.
    Refused {
        user_id: String,
        error: TokenError,
    },
    Accepted(Arc<AccessClaims>),
}

/// FluxStudio's claims; the ones it never sets are read only to refuse tokens that have them.
#[derive(Deserialize)]
struct Claims {
    id: String,
    #[serde(rename = "type")]
    token_type: String,
    email: Option<String>,
    #[serde(rename = "userType")]
    user_type: Option<String>,
    jti: Option<String>,
    iat: Option<i64>,
    exp: i64,
    sub: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
    sid: Option<serde_json::Value>,
}

pub struct FluxStudioTokens {
    key: DecodingKey,
    validation: Validation,
    until: DateTime<Utc>,
    redis: Arc<RedisLink>,
    clock: Clock,
    /// Tokens whose first acceptance was recorded (see [`FluxStudioTokens::first_use`]).
    seen: quick_cache::sync::Cache<Uuid, ()>,
}

impl FluxStudioTokens {
    /// The verifier while `LEGACY_ACCESS_TOKENS_UNTIL` is ahead of the clock; `None` when it is
    /// unset or past, or without Redis (which `setting_problems` refuses while it is ahead).
    /// Assumes `setting_problems` is empty.
    pub fn from_settings(
        settings: &Settings,
        secret: &SecretString,
        redis: Option<Arc<RedisLink>>,
        clock: Clock,
    ) -> Option<Self> {
        let until = until(settings).ok().flatten()?;
        if until <= clock.now() {
            tracing::warn!(
                "LEGACY_ACCESS_TOKENS_UNTIL has passed: FluxStudio's access tokens are refused; \
                 remove the setting"
            );
            return None;
        }
        let redis = redis?;
        tracing::warn!(
            until = %until.to_rfc3339(),
            "FluxStudio's access tokens are accepted until LEGACY_ACCESS_TOKENS_UNTIL"
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        // Times are checked against the clock, as for this service's own tokens.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Some(Self {
            key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            validation,
            until,
            redis,
            clock,
            seen: quick_cache::sync::Cache::new(SEEN_TOKENS),
        })
    }

    pub fn until(&self) -> DateTime<Utc> {
        self.until
    }

    /// Verifies `token` as one of FluxStudio's (see the module's comment).
    pub async fn verify(&self, token: &str) -> Outcome {
        let now = self.clock.now();
        if now >= self.until || token.len() > MAX_TOKEN_BYTES {
            return Outcome::NotLegacy;
        }
        let Ok(header) = decode_header(token) else {
            return Outcome::NotLegacy;
        };
        let ours = header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(TOKEN_TYPE_HEADER));
        if ours || header.kid.is_some() {
            return Outcome::NotLegacy;
        }
        let Ok(data) = decode::<Claims>(token, &self.key, &self.validation) else {
            return Outcome::NotLegacy;
        };
        let claims = data.claims;
        let foreign = claims.sub.is_some()
            || claims.iss.is_some()
            || claims.aud.is_some()
            || claims.sid.is_some();
        if foreign || claims.id.is_empty() {
            return Outcome::NotLegacy;
        }
        let refused = |error| Outcome::Refused {
            user_id: claims.id.clone(),
            error,
        };
        if claims.token_type != "access" {
            return refused(TokenError::Invalid("token type"));
        }
        let (Some(jti), Some(email), Some(iat)) = (&claims.jti, &claims.email, claims.iat) else {
            return refused(TokenError::Invalid("missing claim"));
        };
        if jti.is_empty() || jti.chars().count() > MAX_JTI_CHARS {
            return refused(TokenError::Invalid("missing claim"));
        }
        let times = TokenTimes {
            exp: claims.exp,
            nbf: None,
            iat: Some(iat),
        };
        if let Err(e) = check_times(&times, now.timestamp()) {
            return refused(e);
        }
        match self.revoked_in_fluxstudio(jti).await {
            Some(false) => {}
            Some(true) => return refused(TokenError::Invalid("token_revoked")),
            None => return refused(TokenError::Invalid("revocation_unknown")),
        }
        Outcome::Accepted(Arc::new(AccessClaims {
            sub: claims.id.clone(),
            id: claims.id.clone(),
            email: email.clone(),
            user_type: claims.user_type.clone().unwrap_or_default(),
            token_type: "access".into(),
            sid: derived_id("sid", jti),
            jti: Uuid::try_parse(jti).unwrap_or_else(|_| derived_id("jti", jti)),
            iat,
            exp: claims.exp,
            nbf: None,
            iss: LEGACY_ISSUER.into(),
            aud: String::new(),
        }))
    }

    /// Whether FluxStudio revoked the token: `None` when Redis cannot say.
    async fn revoked_in_fluxstudio(&self, jti: &str) -> Option<bool> {
        if !self.redis.is_up() {
            return None;
        }
        match self
            .redis
            .store()
            .exists(&format!("{REVOKED_KEY_PREFIX}{jti}"))
            .await
        {
            Ok(revoked) => Some(revoked),
            Err(e) => {
                self.redis.failed(&e);
                None
            }
        }
    }

    /// True the first time an accepted token is seen here: its acceptance is recorded once, not
    /// on each of its requests (a client sends its token with every call, so an event per
    /// request would flood the log during the window while saying nothing more; one per token
    /// counts the clients still holding FluxStudio tokens, which is what the cutover watches).
    pub fn first_use(&self, claims: &AccessClaims) -> bool {
        if self.seen.get(&claims.jti).is_some() {
            return false;
        }
        self.seen.insert(claims.jti, ());
        true
    }
}

/// A stable id for FluxStudio's `jti` (any string) in `kind`'s space: a UUIDv8 from its SHA-256.
fn derived_id(kind: &str, jti: &str) -> Uuid {
    let digest = Sha256::digest(format!("fluxstudio-{kind}:{jti}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(until: &str) -> Settings {
        Settings {
            legacy_access_tokens_until: Some(until.into()),
            jwt_secret: Some(SecretString::from("k".repeat(40))),
            redis_url: Some(SecretString::from("redis://127.0.0.1:6379")),
            ..Settings::default()
        }
    }

    #[test]
    fn the_window_is_at_most_fifteen_minutes_from_now_and_a_past_time_is_no_problem() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let problems = |until: &str| setting_problems(&settings(until), now);
        assert!(problems("2026-12-07T10:15:00Z").is_empty());
        assert!(problems("2026-12-07T11:14:59+01:00").is_empty());
        assert!(
            problems("2026-12-07T09:00:00Z").is_empty(),
            "past: no effect"
        );
        assert!(problems("2026-12-07T10:15:01Z")[0].contains("more than 15 minutes"));
        assert!(problems("tomorrow")[0].contains("RFC 3339"));
        let mut without = settings("2026-12-07T10:05:00Z");
        without.redis_url = None;
        without.jwt_secret = None;
        assert_eq!(setting_problems(&without, now).len(), 2);
    }

    #[test]
    fn only_refusals_of_another_maker_are_tried_as_fluxstudio_tokens() {
        assert!(not_ours(&TokenError::Invalid("typ")));
        assert!(not_ours(&TokenError::Invalid("signature")));
        assert!(!not_ours(&TokenError::Expired));
        assert!(!not_ours(&TokenError::Invalid("not yet valid")));
        assert!(!not_ours(&TokenError::Invalid("malformed")));
        assert_ne!(derived_id("sid", "a"), derived_id("jti", "a"));
        assert_eq!(derived_id("sid", "a"), derived_id("sid", "a"));
    }
}
