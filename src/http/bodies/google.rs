//! The bodies of the Google sign-in routes.

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
