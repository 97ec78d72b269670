//! The bodies of two-factor sign-in: setup, verify-setup, disable and the second step of a
//! sign-in, and the answer of a first step that needs it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::AuthResponse;

/// `{code}`: a 6-digit TOTP code, or (disable, verify) a backup code.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeRequest {
    #[schema(value_type = String, required = true, example = "123456", max_length = 32)]
    pub code: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    /// From the first step's answer.
    #[schema(value_type = String, required = true)]
    pub temp_token: Option<String>,
    /// A 6-digit TOTP code or a backup code.
    #[schema(value_type = String, required = true, example = "123456", max_length = 32)]
    pub code: Option<String>,
}

/// A pending secret, shown once; two-factor is on only after verify-setup.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetupResponse {
    pub success: bool,
    /// The secret in base32, for typing into an authenticator by hand.
    pub secret: String,
    /// `otpauth://totp/FluxStudio:<email>?secret=…&issuer=FluxStudio&…`
    pub otpauth_url: String,
    /// The otpauth URL as a QR code: `data:image/png;base64,…`
    pub qr_code: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySetupResponse {
    pub success: bool,
    #[schema(example = "Two-factor authentication enabled")]
    pub message: &'static str,
    /// Ten single-use codes, shown this once; each signs in in place of a TOTP code.
    pub backup_codes: Vec<String>,
}

/// The first step of a sign-in passed and the user has two-factor sign-in on: no session yet;
/// post the temp token and a code to `/api/2fa/verify` within 5 minutes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecondFactorRequired {
    pub success: bool,
    #[serde(rename = "requires2FA")]
    #[schema(rename = "requires2FA")]
    pub requires_2fa: bool,
    /// Opaque, single use, 5 minutes, dies after 5 wrong codes; never an access token.
    pub temp_token: String,
}

/// A sign-in's answer: the session, or the second step it needs first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SignInResponse {
    Session(Box<AuthResponse>),
    SecondFactor(SecondFactorRequired),
}

impl SignInResponse {
    pub fn second_factor(temp_token: String) -> Self {
        Self::SecondFactor(SecondFactorRequired {
            success: true,
            requires_2fa: true,
            temp_token,
        })
    }
}
