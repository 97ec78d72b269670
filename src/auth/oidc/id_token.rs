//! ID-token checks (OIDC Core §3.1.3.7 and Google's "Verify the Google ID token"): the header
//! must say RS256 with a `kid`, the signature must verify against that provider key, and the
//! claims must name us, be current, carry a verified email, and match the nonce and hosted
//! domain when those apply. The claim checks are a pure function of the claims and "now".

use base64::Engine;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;

use super::jwks::ProviderKey;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Clock skew tolerated between the provider and us, in seconds.
pub const LEEWAY_SECS: i64 = 60;
/// Google ID tokens are 1–2 KiB; longer input is refused before any parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// Why a credential was refused. `reason()` goes into the `oauth_failed` event; the client only
/// learns the broad class (see `ApiError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    AlgorithmNotAllowed,
    MissingKid,
    UnknownKid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    UntrustedAudience,
    AzpMismatch,
    MissingClaim(&'static str),
    Expired,
    IssuedInFuture,
    NonceMismatch,
    EmailMissing,
    EmailNotVerified,
    HostedDomainMismatch,
    Replayed,
    /// The token endpoint refused the authorization code (used, expired or not ours).
    CodeRejected,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_token",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UntrustedAudience => "untrusted_audience",
            Self::AzpMismatch => "azp_mismatch",
            Self::MissingClaim("sub") => "missing_sub",
            Self::MissingClaim("exp") => "missing_exp",
            Self::MissingClaim("iat") => "missing_iat",
            Self::MissingClaim(_) => "missing_claim",
            Self::Expired => "expired",
            Self::IssuedInFuture => "issued_in_future",
            Self::NonceMismatch => "nonce_mismatch",
            Self::EmailMissing => "email_missing",
            Self::EmailNotVerified => "email_not_verified",
            Self::HostedDomainMismatch => "hosted_domain_mismatch",
            Self::Replayed => "token_replayed",
            Self::CodeRejected => "code_rejected",
        }
    }
}

/// What the claims must satisfy, built once from the settings.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// Every accepted spelling of the issuer.
    pub issuers: Vec<String>,
    /// The spelling identities are stored under.
    pub canonical_issuer: String,
    pub client_ids: Vec<String>,
    pub hosted_domain: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedIdToken {
    pub issuer: String,
    pub subject: String,
    /// Lower-cased.
    pub email: String,
    pub hosted_domain: Option<String>,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims as sent; every one optional so that a missing one is a clear rejection.
#[derive(Debug, Deserialize)]
pub struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    nonce: Option<String>,
    email: Option<String>,
    /// A boolean, though Google has sent the string "true".
    email_verified: Option<serde_json::Value>,
    hd: Option<String>,
    name: Option<String>,
    picture: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Reads the header without trusting it: only RS256 or ES256 with a `kid` goes further. `alg:
/// none`, HS256 "signed" with the provider's public key and every other algorithm stop here; the
/// key the `kid` names then decides which of the two is checked ([`verify_signature`]).
pub fn header_kid(token: &str) -> Result<String, Rejection> {
    if token.len() > MAX_CREDENTIAL_BYTES || token.split('.').count() != 3 {
        return Err(Rejection::Malformed);
    }
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Rejection::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)?;
    if !matches!(header.alg.as_deref(), Some("RS256" | "ES256")) {
        return Err(Rejection::AlgorithmNotAllowed);
    }
    header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(Rejection::MissingKid)
}

/// Verifies the signature with `key`, in the key's algorithm (a header naming another is refused),
/// and returns the claims, unchecked as yet.
pub fn verify_signature(token: &str, key: &ProviderKey) -> Result<RawClaims, Rejection> {
    // Only the signature and algorithm here; every claim is checked by `check_claims`, against
    // our clock, with reasons of our own.
    let mut validation = Validation::new(key.algorithm);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidKeyFormat => Rejection::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                Rejection::AlgorithmNotAllowed
            }
            _ => Rejection::Malformed,
        })
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The claim checks, in the order of OIDC Core §3.1.3.7. `nonce` is the one this flow set.
pub fn check_claims(
    claims: RawClaims,
    policy: &ClaimPolicy,
    now: i64,
    nonce: Option<&str>,
) -> Result<VerifiedIdToken, Rejection> {
    let iss = claims.iss.as_deref().ok_or(Rejection::WrongIssuer)?;
    if !policy.issuers.iter().any(|i| i == iss) {
        return Err(Rejection::WrongIssuer);
    }
    // Every audience must be one of ours: a token also minted for another party is not ours alone.
    let audiences = match &claims.aud {
        Some(Audience::One(a)) => vec![a.as_str()],
        Some(Audience::Many(list)) => list.iter().map(String::as_str).collect(),
        None => Vec::new(),
    };
    let ours = |a: &str| policy.client_ids.iter().any(|c| c == a);
    if audiences.is_empty() || !audiences.iter().any(|a| ours(a)) {
        return Err(Rejection::WrongAudience);
    }
    if !audiences.iter().all(|a| ours(a)) {
        return Err(Rejection::UntrustedAudience);
    }
    match claims.azp.as_deref() {
        Some(azp) if !ours(azp) => return Err(Rejection::AzpMismatch),
        None if audiences.len() > 1 => return Err(Rejection::AzpMismatch),
        _ => {}
    }
    let exp = claims.exp.ok_or(Rejection::MissingClaim("exp"))? as i64;
    let iat = claims.iat.ok_or(Rejection::MissingClaim("iat"))? as i64;
    if exp + LEEWAY_SECS <= now {
        return Err(Rejection::Expired);
    }
    if iat > now + LEEWAY_SECS {
        return Err(Rejection::IssuedInFuture);
    }
    if let Some(expected) = nonce
        && !claims.nonce.as_deref().is_some_and(|n| equal(n, expected))
    {
        return Err(Rejection::NonceMismatch);
    }
    let subject = claims
        .sub
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or(Rejection::MissingClaim("sub"))?;
    let email = claims
        .email
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .ok_or(Rejection::EmailMissing)?;
    let verified = match &claims.email_verified {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    };
    if !verified {
        return Err(Rejection::EmailNotVerified);
    }
    let hd = claims.hd.map(|h| h.to_ascii_lowercase());
    if let Some(required) = &policy.hosted_domain
        && hd.as_deref() != Some(required.as_str())
    {
        return Err(Rejection::HostedDomainMismatch);
    }
    Ok(VerifiedIdToken {
        issuer: policy.canonical_issuer.clone(),
        subject,
        email,
        hosted_domain: hd,
        name: claims.name,
        picture: claims.picture,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            issuers: vec![
                "https://accounts.google.com".into(),
                "accounts.google.com".into(),
            ],
            canonical_issuer: "https://accounts.google.com".into(),
            client_ids: vec!["ours".into(), "ours-too".into()],
            hosted_domain: None,
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn claims(patch: serde_json::Value) -> RawClaims {
        let mut base = json!({
            "iss": "accounts.google.com", "sub": "1234", "aud": "ours", "exp": NOW + 600,
            "iat": NOW - 10, "email": "Ann@Gmail.com", "email_verified": true,
        });
        for (k, v) in patch.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn check(patch: serde_json::Value) -> Result<VerifiedIdToken, Rejection> {
        check_claims(claims(patch), &policy(), NOW, None)
    }

    #[test]
    fn a_good_token_passes_and_is_normalised() {
        let t = check(json!({})).unwrap();
        assert_eq!(t.issuer, "https://accounts.google.com");
        assert_eq!(t.email, "ann@gmail.com");
        assert!(
            check(json!({"email_verified": "true", "aud": ["ours", "ours-too"], "azp": "ours"}))
                .is_ok()
        );
    }

    #[test]
    fn each_claim_is_checked() {
        use Rejection::*;
        assert_eq!(
            check(json!({"iss": "https://evil.example"})),
            Err(WrongIssuer)
        );
        assert_eq!(check(json!({"aud": "theirs"})), Err(WrongAudience));
        assert_eq!(
            check(json!({"aud": ["ours", "theirs"], "azp": "ours"})),
            Err(UntrustedAudience)
        );
        assert_eq!(
            check(json!({"aud": ["ours", "ours-too"]})),
            Err(AzpMismatch)
        );
        assert_eq!(check(json!({"azp": "theirs"})), Err(AzpMismatch));
        assert_eq!(check(json!({"exp": NOW - LEEWAY_SECS})), Err(Expired));
        assert!(
            check(json!({"exp": NOW - LEEWAY_SECS + 1})).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            check(json!({"iat": NOW + LEEWAY_SECS + 1})),
            Err(IssuedInFuture)
        );
        assert_eq!(
            check(json!({"email_verified": false})),
            Err(EmailNotVerified)
        );
        assert_eq!(
            check(json!({"email_verified": "yes"})),
            Err(EmailNotVerified)
        );
        assert_eq!(check(json!({"email": null})), Err(EmailMissing));
        assert_eq!(check(json!({"sub": ""})), Err(MissingClaim("sub")));
        let nonce = check_claims(claims(json!({"nonce": "n1"})), &policy(), NOW, Some("n2"));
        assert_eq!(nonce, Err(NonceMismatch));
        let missing = check_claims(claims(json!({})), &policy(), NOW, Some("n2"));
        assert_eq!(missing, Err(NonceMismatch));
        assert!(check_claims(claims(json!({"nonce": "n2"})), &policy(), NOW, Some("n2")).is_ok());
        let hd = ClaimPolicy {
            hosted_domain: Some("example.com".into()),
            ..policy()
        };
        assert_eq!(
            check_claims(claims(json!({})), &hd, NOW, None),
            Err(HostedDomainMismatch)
        );
        assert!(check_claims(claims(json!({"hd": "Example.com"})), &hd, NOW, None).is_ok());
    }

    #[test]
    fn only_rs256_with_a_kid_gets_past_the_header() {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let token = |h: serde_json::Value| format!("{}.{}.sig", b64(h), b64(json!({})));
        assert_eq!(
            header_kid(&token(json!({"alg": "RS256", "kid": "k"}))),
            Ok("k".into())
        );
        assert_eq!(
            header_kid(&token(json!({"alg": "none", "kid": "k"}))),
            Err(Rejection::AlgorithmNotAllowed)
        );
        assert_eq!(
            header_kid(&token(json!({"alg": "HS256", "kid": "k"}))),
            Err(Rejection::AlgorithmNotAllowed)
        );
        assert_eq!(
            header_kid(&token(json!({"alg": "RS256"}))),
            Err(Rejection::MissingKid)
        );
        assert_eq!(header_kid("a.b"), Err(Rejection::Malformed));
        assert_eq!(
            header_kid(&"x".repeat(MAX_CREDENTIAL_BYTES + 1)),
            Err(Rejection::Malformed)
        );
    }
}
