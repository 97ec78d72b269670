//! Value types with no I/O: what an email, a name, a user and a client are.

mod client;
mod email;
mod identity;
pub mod settings;
mod user;
mod user_agent;

pub use client::{
    ClientInfo, DeviceFingerprint, MAX_USER_AGENT_CHARS, UNSET_FINGERPRINT, device_name,
};
pub use email::Email;
pub use identity::{GOOGLE_ISSUER, IdentityRecord};
pub use user::{Name, User, UserRecord, UserType, UserView, format_timestamp, parse_avatar};
pub use user_agent::{UserAgentSummary, describe as describe_user_agent};

/// Why a value from a client was refused; `field` names the JSON field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// True for characters that must never appear in an identifier: C0/C1 controls, DEL, and the
/// invisible or direction-changing characters that make two strings look alike.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width and direction marks
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{2060}'..='\u{2064}' // word joiner and invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}' // byte-order mark
        )
}
