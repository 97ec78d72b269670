//! Access tokens: short-lived JWTs, HS256 pinned, `typ: at+jwt`, keys and `Validation` built once.
//!
//! `JWT_SECRET_PREVIOUS` verifies tokens signed before a rotation; the `kid` header (a digest of
//! the key, never the key) says which key signed a token, and only configured keys are ever used.
//!
//! A client sends the same access token with every request until it refreshes it, so a token
//! that passed every check is remembered by its exact text ([`VERIFIED_TOKENS`] at most, the
//! least used making room): the next request with it skips the signature, base64 and the two
//! JSON parses (a sixth of `/me`'s CPU), and only the time checks run again, so an expired token
//! is refused whether remembered or not. A token that failed is never remembered.
//!
//! Times (`exp`, `nbf`, `iat`) are checked here against the service's [`Clock`], in one place for
//! fresh and remembered tokens alike, never by jsonwebtoken (which reads the system time): a
//! token expires when the clock says so, the same moment its session does.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::UserRecord;

pub const TOKEN_TYPE_HEADER: &str = "at+jwt";
/// Longer bearer values are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
const LEEWAY_SECS: u64 = 30;
/// How many verified tokens are remembered (about 1 KB each with their claims).
pub const VERIFIED_TOKENS: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub sub: String,
    /// Same as `sub`; the old frontends read `id`.
    pub id: String,
    pub email: String,
    #[serde(rename = "userType")]
    pub user_type: String,
    #[serde(rename = "type")]
    pub token_type: String,
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iss: String,
    pub aud: String,
}

impl AccessClaims {
    /// Whether "every token issued until `revoked_at_ms`" (a logout-all, an admin's revocation
    /// of a user's sessions) covers this token: a logout-all at 12:00:00.300 rejects a token from
    /// 12:00:00.100 and one from .300, but not one from .500. A tie counts as covered: both times
    /// are in milliseconds, and a token from the same millisecond may well have been issued
    /// before the revocation (a refresh answered and a logout-all sent within one millisecond);
    /// the cost is that a login within that same millisecond must sign in again.
    pub fn predates(&self, revoked_at_ms: i64) -> bool {
        self.issued_at_ms() <= revoked_at_ms
    }

    /// When the token was issued, to the millisecond: from its time-ordered `jti` (UUIDv7).
    pub fn issued_at_ms(&self) -> i64 {
        self.jti
            .get_timestamp()
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs as i64 * 1000 + i64::from(nanos / 1_000_000)
            })
            .unwrap_or(self.iat * 1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    /// Whether the token's signature verified before it was refused: it was made with one of the
    /// service's keys and is refused for what it says (past its expiry, not yet valid, another
    /// issuer or audience, not an access token), not forged or garbled. Nobody can make more of
    /// these than the service issued.
    pub fn signature_verified(&self) -> bool {
        // jsonwebtoken checks the signature before the claims, and `verify_fully` checks the
        // token type and subject after `decode`: these are the reasons given only past it.
        matches!(
            self,
            Self::Expired
                | Self::Invalid(
                    "not yet valid"
                        | "issuer"
                        | "audience"
                        | "missing claim"
                        | "token type"
                        | "subject"
                )
        )
    }
}

pub struct IssuedAccessToken {
    pub token: String,
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

pub struct AccessTokens {
    encoding: EncodingKey,
    kid: String,
    /// (kid, key): the current key first, then the previous one.
    decoding: Vec<(String, DecodingKey)>,
    validation: Validation,
    /// `validation` without the issuer and audience: reads a token's times when those are
    /// refused, since its times are checked first (see [`AccessTokens::times_first`]).
    times_only: Validation,
    /// Tokens that passed every check, by their text (see the module's comment). No expiry is
    /// needed: every hit checks the token's own times. (moka, tried first, cost ~4 µs per insert,
    /// more than the verification it saves.)
    verified: quick_cache::sync::Cache<String, Arc<AccessClaims>>,
    issuer: String,
    audience: String,
    ttl_secs: i64,
    clock: Clock,
}

/// A token's times, for [`AccessTokens::times_first`] and FluxStudio's tokens.
#[derive(Deserialize)]
pub(super) struct TokenTimes {
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
}

fn key_id(secret: &SecretString) -> String {
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    format!("hs-{}", hex::encode(&digest[..6]))
}

impl AccessTokens {
    pub fn new(
        secret: &SecretString,
        previous: Option<&SecretString>,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
        clock: Clock,
    ) -> Self {
        let kid = key_id(secret);
        let mut decoding = vec![(
            kid.clone(),
            DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        )];
        if let Some(prev) = previous {
            decoding.push((
                key_id(prev),
                DecodingKey::from_secret(prev.expose_secret().as_bytes()),
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Times are checked against the clock, by `check_times`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut times_only = validation.clone();
        times_only.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        Self {
            encoding: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            kid,
            decoding,
            validation,
            times_only,
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs: ttl_secs as i64,
            clock,
        }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn issue(
        &self,
        user: &UserRecord,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> anyhow::Result<IssuedAccessToken> {
        // Time-ordered by the clock: the token's issue time is read back from it (`predates`).
        let jti = time_ordered_id(self.clock.now());
        let expires_at = now + chrono::Duration::seconds(self.ttl_secs);
        let claims = AccessClaims {
            sub: user.id.clone(),
            id: user.id.clone(),
            email: user.email.clone(),
            user_type: user.user_type.as_str().to_owned(),
            token_type: "access".into(),
            sid: session_id,
            jti,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(TOKEN_TYPE_HEADER.into());
        header.kid = Some(self.kid.clone());
        let token = encode(&header, &claims, &self.encoding)?;
        Ok(IssuedAccessToken {
            token,
            jti,
            expires_at,
        })
    }

    /// Verifies signature, algorithm, `typ`, `kid`, expiry, issuer, audience and token type; a
    /// token verified before is found by its text and only its times are checked again.
    pub fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid("malformed"));
        }
        let now = self.clock.now().timestamp();
        if let Some(claims) = self.verified.get(token) {
            check_times(&claims.times(), now)?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_fully(token, now)?);
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn verify_fully(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        let parse_header = || decode_header(token).map_err(|_| TokenError::Invalid("malformed"));
        // Every authenticated request runs this. With one key (no rotation under way) the header
        // is not parsed on its own first: `decode` parses it anyway, and it is checked from the
        // result. With a previous key too, its `kid` picks the key. A token that fails is
        // diagnosed header first, so its reason is the same either way.
        let key = match self.decoding.as_slice() {
            [(_, key)] => key,
            _ => self.check_header(&parse_header()?)?,
        };
        let data =
            decode::<AccessClaims>(token, key, &self.validation).map_err(
                |e| match parse_header().and_then(|header| self.check_header(&header)) {
                    Err(header_error) => header_error,
                    Ok(key) => self
                        .times_first(token, key, &e, now)
                        .unwrap_or_else(|| decode_error(&e)),
                },
            )?;
        self.check_header(&data.header)?;
        let claims = data.claims;
        check_times(&claims.times(), now)?;
        if claims.token_type != "access" {
            return Err(TokenError::Invalid("token type"));
        }
        if claims.sub != claims.id || claims.sub.is_empty() {
            return Err(TokenError::Invalid("subject"));
        }
        Ok(claims)
    }

    /// A refusal for the token's times, when `decode` refused a token whose signature and
    /// required claims hold for something jsonwebtoken checks after the times it no longer checks
    /// (issuer, audience, the claims' shape): times are judged before those, so an expired token
    /// is called expired whatever else is wrong with it. Runs only for signed tokens refused
    /// anyway, never for a forged one.
    fn times_first(
        &self,
        token: &str,
        key: &DecodingKey,
        refusal: &jsonwebtoken::errors::Error,
        now: i64,
    ) -> Option<TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        if !matches!(
            refusal.kind(),
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::Json(_)
        ) {
            return None;
        }
        let times = decode::<TokenTimes>(token, key, &self.times_only)
            .ok()?
            .claims;
        check_times(&times, now).err()
    }

    /// The header's algorithm and `typ`, and the key its `kid` names.
    fn check_header(&self, header: &Header) -> Result<&DecodingKey, TokenError> {
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid("algorithm"));
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(TOKEN_TYPE_HEADER))
        {
            return Err(TokenError::Invalid("typ"));
        }
        // jku, x5u and embedded jwk headers are never read: keys come from configuration only.
        let kid = header.kid.as_deref().unwrap_or_default();
        self.decoding
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, key)| key)
            .ok_or(TokenError::Invalid("kid"))
    }
}

impl AccessClaims {
    fn times(&self) -> TokenTimes {
        TokenTimes {
            exp: self.exp,
            nbf: self.nbf,
            iat: Some(self.iat),
        }
    }
}

/// The token's times at `now` (the clock's, seconds since the epoch), each with the leeway:
/// expiry, then not-before, then an issue time in the future (a token from a clock ahead of
/// this one).
pub(super) fn check_times(times: &TokenTimes, now: i64) -> Result<(), TokenError> {
    let leeway = LEEWAY_SECS as i64;
    if times.exp < now.saturating_sub(leeway) {
        return Err(TokenError::Expired);
    }
    let future = |at: Option<i64>| at.is_some_and(|at| at > now.saturating_add(leeway));
    if future(times.nbf) || future(times.iat) {
        return Err(TokenError::Invalid("not yet valid"));
    }
    Ok(())
}

/// A UUIDv7 whose time is `at` (to the millisecond), the rest random.
fn time_ordered_id(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let timestamp =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    Uuid::new_v7(timestamp)
}

fn decode_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Invalid("signature"),
        ErrorKind::InvalidAlgorithm => TokenError::Invalid("algorithm"),
        ErrorKind::InvalidIssuer => TokenError::Invalid("issuer"),
        ErrorKind::InvalidAudience => TokenError::Invalid("audience"),
        ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
        _ => TokenError::Invalid("malformed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserType;

    fn user() -> UserRecord {
        UserRecord {
            id: "u1".into(),
            email: "a@example.com".into(),
            name: "A".into(),
            user_type: UserType::Client,
            password_hash: None,
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: Utc::now(),
            last_login: None,
            updated_at: Utc::now(),
            two_factor_enabled: false,
            extra: Default::default(),
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.repeat(40))
    }

    #[test]
    fn issues_and_verifies_and_previous_key_still_verifies() {
        let old = AccessTokens::new(&secret("o"), None, "iss", "aud", 900, Clock::default());
        let issued = old.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        let rotated = AccessTokens::new(
            &secret("n"),
            Some(&secret("o")),
            "iss",
            "aud",
            900,
            Clock::default(),
        );
        let claims = rotated.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.exp - claims.iat, 900);
        let stranger = AccessTokens::new(&secret("x"), None, "iss", "aud", 900, Clock::default());
        assert_eq!(
            stranger.verify(&issued.token),
            Err(TokenError::Invalid("kid"))
        );
    }

    /// With one key the header is checked after `decode`, on success and on failure alike: a
    /// wrong `typ` is named as such whether or not the signature holds.
    #[test]
    fn header_problems_are_named_first_with_one_key_or_two() {
        let one = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, Clock::default());
        let two = AccessTokens::new(
            &secret("k"),
            Some(&secret("o")),
            "iss",
            "aud",
            900,
            Clock::default(),
        );
        let issued = one.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        let claims = jwt_claims(&issued.token);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(one.kid.clone());
        header.typ = Some("JWT".into());
        let signed = encode(&header, &claims, &one.encoding).unwrap();
        let forged = encode(&header, &claims, &EncodingKey::from_secret(b"another key")).unwrap();
        for tokens in [&one, &two] {
            assert_eq!(tokens.verify(&signed), Err(TokenError::Invalid("typ")));
            assert_eq!(tokens.verify(&forged), Err(TokenError::Invalid("typ")));
            assert_eq!(tokens.verify(&issued.token).unwrap().sub, "u1");
        }
        header.typ = Some(TOKEN_TYPE_HEADER.into());
        header.kid = Some("../../x".into());
        let unknown_kid = encode(&header, &claims, &one.encoding).unwrap();
        assert_eq!(one.verify(&unknown_kid), Err(TokenError::Invalid("kid")));
        // The signature's first character: all six of its bits are signature bits.
        let (signed_part, signature) = issued.token.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{signed_part}.{first}{}", &signature[1..]);
        assert_eq!(one.verify(&tampered), Err(TokenError::Invalid("signature")));
    }

    fn jwt_claims(token: &str) -> serde_json::Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A remembered token is answered from memory, with its times checked again exactly where
    /// jsonwebtoken draws the line; anything else, even one character off, is verified in full.
    #[test]
    fn a_remembered_token_still_expires_and_nothing_else_is_taken_for_it() {
        let tokens = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, Clock::default());
        let issued = tokens.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        let first = tokens.verify(&issued.token).unwrap();
        assert!(Arc::ptr_eq(&first, &tokens.verify(&issued.token).unwrap()));

        let now = 2_000_000_000;
        let mut times = TokenTimes {
            exp: now - LEEWAY_SECS as i64,
            nbf: None,
            iat: Some(now - 900),
        };
        assert_eq!(check_times(&times, now), Ok(()));
        times.exp -= 1;
        assert_eq!(check_times(&times, now), Err(TokenError::Expired));
        times.exp = now + 900;
        times.nbf = Some(now + LEEWAY_SECS as i64);
        assert_eq!(check_times(&times, now), Ok(()));
        times.nbf = Some(now + LEEWAY_SECS as i64 + 1);
        let not_yet = Err(TokenError::Invalid("not yet valid"));
        assert_eq!(check_times(&times, now), not_yet);
        times.nbf = None;
        times.iat = Some(now + LEEWAY_SECS as i64);
        assert_eq!(check_times(&times, now), Ok(()));
        times.iat = Some(now + LEEWAY_SECS as i64 + 1);
        assert_eq!(check_times(&times, now), not_yet);

        // The remembered entry is what the next request gets: once its time is up, it is expired.
        let mut lapsed = (*first).clone();
        lapsed.exp = Utc::now().timestamp() - 1000;
        tokens
            .verified
            .insert(issued.token.clone(), Arc::new(lapsed));
        assert_eq!(tokens.verify(&issued.token), Err(TokenError::Expired));

        let (signed_part, signature) = issued.token.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{signed_part}.{first}{}", &signature[1..]);
        assert_eq!(
            tokens.verify(&tampered),
            Err(TokenError::Invalid("signature"))
        );
        assert!(
            tokens.verified.get(&tampered).is_none(),
            "a failure is not remembered"
        );
    }

    #[test]
    fn wrong_audience_and_expiry_are_rejected() {
        let a = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, Clock::default());
        let b = AccessTokens::new(&secret("k"), None, "iss", "other", 900, Clock::default());
        let t = a.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        assert_eq!(b.verify(&t.token), Err(TokenError::Invalid("audience")));
        let old = a
            .issue(
                &user(),
                Uuid::new_v4(),
                Utc::now() - chrono::Duration::seconds(2000),
            )
            .unwrap();
        assert_eq!(a.verify(&old.token), Err(TokenError::Expired));
    }

    /// Refusals of tokens the service signed are told apart from forged or garbled ones.
    #[test]
    fn only_refusals_past_the_signature_say_it_verified() {
        let a = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, Clock::default());
        let other_audience =
            AccessTokens::new(&secret("k"), None, "iss", "other", 900, Clock::default());
        let forger = AccessTokens::new(
            &secret("someone else's key"),
            None,
            "iss",
            "aud",
            900,
            Clock::default(),
        );
        let expired = a
            .issue(
                &user(),
                Uuid::new_v4(),
                Utc::now() - chrono::Duration::seconds(2000),
            )
            .unwrap();
        let live = a.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        let forged = forger.issue(&user(), Uuid::new_v4(), Utc::now()).unwrap();
        let verified = |tokens: &AccessTokens, token: &str| {
            tokens.verify(token).unwrap_err().signature_verified()
        };
        assert!(verified(&a, &expired.token), "expired");
        assert!(verified(&other_audience, &live.token), "another audience");
        assert!(!verified(&a, &forged.token), "another key");
        assert!(!verified(&a, "not.a.jwt"), "garbled");
        let (signed_part, _) = live.token.rsplit_once('.').unwrap();
        assert!(
            !verified(&a, &format!("{signed_part}.AAAA")),
            "bad signature"
        );
    }

    /// Expiry follows the service's clock, not the system's: moved past the lifetime and the
    /// leeway, a token is expired, remembered or not, and an expired token is called expired
    /// before its audience or issuer is judged, as jsonwebtoken judged it.
    #[test]
    fn tokens_expire_by_the_clock_and_expiry_is_named_first() {
        let clock = Clock::default();
        let tokens = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, clock.clone());
        let elsewhere = AccessTokens::new(&secret("k"), None, "iss", "other", 900, clock.clone());
        let issued = tokens.issue(&user(), Uuid::new_v4(), clock.now()).unwrap();
        let unseen = tokens.issue(&user(), Uuid::new_v4(), clock.now()).unwrap();
        assert!(tokens.verify(&issued.token).is_ok());
        assert_eq!(
            elsewhere.verify(&issued.token),
            Err(TokenError::Invalid("audience"))
        );
        let issued_at = issued.expires_at - chrono::Duration::seconds(900);
        assert_eq!(
            tokens.verify(&issued.token).unwrap().issued_at_ms(),
            issued_at.timestamp_millis(),
            "the jti's time is the clock's"
        );

        clock.advance(std::time::Duration::from_secs(900 + LEEWAY_SECS));
        assert!(tokens.verify(&issued.token).is_ok(), "inside the leeway");
        clock.advance(std::time::Duration::from_secs(2));
        assert_eq!(tokens.verify(&issued.token), Err(TokenError::Expired));
        assert_eq!(tokens.verify(&unseen.token), Err(TokenError::Expired));
        assert_eq!(elsewhere.verify(&issued.token), Err(TokenError::Expired));

        // Issued by a clock ahead of this one, past the leeway: not valid yet.
        let ahead = Clock::default();
        ahead.advance(std::time::Duration::from_secs(3600));
        let early = AccessTokens::new(&secret("k"), None, "iss", "aud", 900, ahead.clone());
        let token = early.issue(&user(), Uuid::new_v4(), ahead.now()).unwrap();
        assert_eq!(
            AccessTokens::new(&secret("k"), None, "iss", "aud", 900, Clock::default())
                .verify(&token.token),
            Err(TokenError::Invalid("not yet valid"))
        );
    }
}
