//! The bodies of the Google sign-in routes and of Sign in with Apple.

use serde::Deserialize;
use utoipa::ToSchema;

/// `POST /api/auth/google`.
// The credential is checked by the sign-in, so that a missing one is refused naming the field
// and recorded. (A `//` comment: a doc comment would become the schema's description.)
#[derive(Debug, Deserialize, ToSchema)]
pub struct GoogleSignInBody {
    /// A Google ID token from Google Identity Services.
    #[schema(value_type = String, required = true)]
    pub credential: Option<String>,
}

/// What Google Identity Services posts in redirect mode; `g_csrf_token` must equal the cookie of
/// the same name.
// The handler reads the form field by field (a repeated field is refused): this type documents
// the form.
#[derive(ToSchema)]
pub struct GisCallbackForm {
    pub credential: String,
    pub g_csrf_token: String,
}

/// `POST /api/auth/apple`: what Sign in with Apple JS (or the app) hands the frontend.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppleSignInBody {
    /// The identity token (a JWT signed by Apple).
    #[schema(value_type = String, required = true)]
    pub identity_token: Option<String>,
    /// Sent by Apple on the first sign-in only: the name, used for an account this sign-in
    /// creates. Its `email` is ignored: the email comes from the token alone.
    pub user: Option<AppleUser>,
    /// The nonce the client put in the authorization request, when it did; the token must carry
    /// the same.
    pub nonce: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppleUser {
    pub name: Option<AppleName>,
    /// Ignored (the token's email is the one used).
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppleName {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

impl AppleSignInBody {
    /// "First Last" from the body's `user`, when it has one.
    pub fn name(&self) -> Option<String> {
        let name = self.user.as_ref()?.name.as_ref()?;
        let full = [name.first_name.as_deref(), name.last_name.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        (!full.is_empty()).then_some(full)
    }
}
