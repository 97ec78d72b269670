//! The bodies of the admin routes: locks, and another user's account and sessions.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::UserView;

#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedList {
    pub success: bool,
    pub blocked: Vec<BlockedEntry>,
}

/// A locked account or a blocked address.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockedEntry {
    /// `account:<email>`, `ip:<address>` or `signup:<address>`: what `DELETE .../blocked/{key}` takes.
    pub key: String,
    #[serde(rename = "type")]
    pub kind: BlockKind,
    pub subject: String,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    Account,
    /// The address's logins (password spraying, or `credential_stuffing_suspected`).
    Ip,
    /// The address's signups (`signup_burst`).
    Signup,
}

impl BlockKind {
    /// The kind of a lock as the limits name it: `account`, `ip` or `signup`.
    pub fn of(kind: &str) -> Self {
        if kind == "ip" {
            Self::Ip
        } else if kind == "signup" {
            Self::Signup
        } else {
            Self::Account
        }
    }
}

/// The body of a search.
#[derive(Debug, Serialize, ToSchema)]
pub struct FoundUser {
    pub success: bool,
    pub user: UserView,
    /// Whether the user's sign-ins need a second factor (TOTP or a backup code).
    #[serde(rename = "twoFactorEnabled")]
    #[schema(rename = "twoFactorEnabled")]
    pub two_factor_enabled: bool,
    pub sessions: Vec<AdminSessionView>,
}

/// A live session of the user, as an admin sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSessionView {
    pub id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub created_at: String,
    pub last_used_at: String,
    /// The earlier of the absolute end and the idle end (last use plus the idle lifetime).
    pub expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedAll {
    pub success: bool,
    #[schema(example = "All sessions revoked")]
    pub message: &'static str,
    /// Sessions that were live and are now ended.
    pub sessions_revoked: u64,
}
