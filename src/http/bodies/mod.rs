//! The bodies of the API, as the handlers accept and answer them and as `/openapi.json`
//! documents them: the same types serve both, so the document cannot drift from the answers. Only
//! the event routes' query parameters, the Google redirect form and the shared error responses
//! are described for the document alone (the handlers read those through `EventQuery`, a field
//! map and `ApiError`). The operability test also compares each documented schema with the
//! bodies the service sends.

pub mod account;
pub mod admin;
pub mod auth;
pub mod errors;
pub mod events;
pub mod google;
pub mod health;
pub mod profile;
pub mod sessions;
pub mod two_factor;

use serde::Serialize;
use utoipa::ToSchema;

/// `{success, message}`: logout, session revocation, lifting a lock.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    pub success: bool,
    #[schema(example = "Logged out successfully")]
    pub message: &'static str,
}

impl MessageBody {
    pub fn ok(message: &'static str) -> Self {
        Self {
            success: true,
            message,
        }
    }
}
