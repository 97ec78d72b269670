//! Tokens as a client sees them: the claims of an issued JWT, hand-built JWT segments, and the
//! hash under which a refresh token is stored.

use serde_json::Value;

/// Unpadded base64url of a JSON value: one segment of a hand-built JWT.
pub fn b64url_json(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The claims of a JWT the server issued, read without verifying it.
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The session (refresh-token family) of an access token: its `sid` claim.
pub fn session_of(access_token: &str) -> uuid::Uuid {
    jwt_claims(access_token)["sid"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sid claim")
}

/// Hex SHA-256: the only stored form of a refresh token.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
