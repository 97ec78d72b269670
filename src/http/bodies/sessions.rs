//! The bodies of the caller's session routes.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub success: bool,
    pub sessions: Vec<SessionView>,
}

/// A live session (refresh-token family) of the caller. `deviceName`, `ipAddress` and
/// `lastUsedAt` are the older clients' names; `device`, `browser`, `os`, `ip`, `location` and
/// `lastActive` are what FluxStudio's sessions page reads.
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
    /// `Desktop`, `Mobile`, `Tablet` or `Unknown`, from the user agent that signed in.
    #[schema(example = "Desktop")]
    pub device: &'static str,
    /// `Unknown` when not recognised.
    #[schema(example = "Chrome")]
    pub browser: String,
    /// `Unknown` when not recognised.
    #[schema(example = "macOS")]
    pub os: String,
    /// The same as `ipAddress`.
    pub ip: String,
    /// Always null: no address is located.
    #[schema(value_type = Option<String>)]
    pub location: Option<String>,
    /// The same as `lastUsedAt`.
    pub last_active: String,
}

/// `DELETE /api/auth/sessions`: every other session of the caller is revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct OthersRevoked {
    pub success: bool,
    /// How many sessions were revoked.
    pub revoked: usize,
}
