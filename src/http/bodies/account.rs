//! The bodies of the account routes: email verification, password reset and change.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::service::{PasswordChange, PasswordReset};

/// `{email}`: resend-verification and forgot-password.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmailRequest {
    #[schema(value_type = String, required = true, max_length = 254, format = Email)]
    pub email: Option<String>,
}

/// `{token}`: verify-email, with the token of the link.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyEmailRequest {
    #[schema(value_type = String, required = true, max_length = 128)]
    pub token: Option<String>,
}

/// `{token, password}`: reset-password, with the token of the link.
// No `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
pub struct ResetPasswordRequest {
    #[schema(value_type = String, required = true, max_length = 128)]
    pub token: Option<String>,
    /// The new password: the signup policy applies.
    #[schema(value_type = String, required = true, max_length = 128)]
    pub password: Option<String>,
}

/// `{currentPassword, newPassword}`: change-password.
// No `Debug`: it holds passwords.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, required = true, max_length = 128)]
    pub current_password: Option<String>,
    /// The signup policy applies.
    #[schema(value_type = String, required = true, max_length = 128)]
    pub new_password: Option<String>,
}

impl ResetPasswordRequest {
    pub fn reset(&self) -> PasswordReset<'_> {
        PasswordReset {
            token: self.token.as_deref(),
            password: self.password.as_deref(),
        }
    }
}

impl ChangePasswordRequest {
    pub fn change(&self) -> PasswordChange<'_> {
        PasswordChange {
            current_password: self.current_password.as_deref(),
            new_password: self.new_password.as_deref(),
        }
    }
}

/// verify-email's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifiedBody {
    pub success: bool,
    #[schema(example = "Email verified")]
    pub message: &'static str,
    /// Always true.
    pub verified: bool,
}
