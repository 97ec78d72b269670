//! The bodies of the caller's session routes.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub success: bool,
    pub sessions: Vec<SessionView>,
}

/// A live session (refresh-token family) of the caller.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    pub created_at: String,
    pub last_used_at: String,
    /// The earlier of the absolute end and the idle end (last use plus the idle lifetime).
    pub expires_at: String,
    /// The session of the access token that asked.
    pub is_current: bool,
}
