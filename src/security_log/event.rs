//! Security events: the types of docs/API.md's table, their severities, and builders that fill in the
//! request's context. User-controlled strings are escaped and capped here, once, so every sink
//! (Postgres, spool, log mirror) gets the same safe text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{ClientInfo, MAX_USER_AGENT_CHARS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    SignupSuccess,
    SignupFailed,
    LoginSuccess,
    LoginFailed,
    FailedLoginAttempt,
    OauthSuccess,
    OauthFailed,
    AppleSuccess,
    AppleFailed,
    TokenGenerated,
    TokenRefreshed,
    TokenRevoked,
    MassTokenRevocation,
    TokenVerificationFailed,
    TokenReuseDetected,
    DeviceFingerprintMismatch,
    Logout,
    RateLimitExceeded,
    BruteForceDetected,
    AccountLocked,
    PasswordRehashed,
    /// A session imported from FluxStudio refreshed for the first time: its device's
    /// fingerprint is adopted.
    LegacySessionAdopted,
    /// A FluxStudio access token accepted (`LEGACY_ACCESS_TOKENS_UNTIL`), recorded once per
    /// token.
    LegacyAccessTokenAccepted,
    UserTypeChanged,
    /// The caller changed their own name or avatar.
    ProfileUpdated,
    LockoutLifted,
    MfaEnabled,
    MfaDisabled,
    MfaChallengeFailed,
    MfaBackupCodeUsed,
    TokenCleanup,
    ServiceStarted,
    ServiceStopped,
    /// Events the log lost (its database and spool both refused them), reported once it can
    /// write again.
    SecurityEventsDropped,
    EmailVerificationSent,
    EmailVerified,
    PasswordResetRequested,
    PasswordResetCompleted,
    PasswordChanged,
    ChangePasswordFailed,
    /// An outbox message given up on (retried for the whole period, or refused for good).
    EmailSendFailed,
    /// An alert given up on: its webhook refused it for good, or for the whole retry period.
    AlertDeliveryFailed,
    /// Anomaly rules (`anomaly`), each recorded once per window and key when it fires.
    CredentialStuffingSuspected,
    AccountTargeted,
    LoginFailureSpike,
    SignupBurst,
    TokenTheftSuspected,
    NewDeviceLogin,
}

impl EventType {
    pub const ALL: [EventType; 48] = [
        Self::SignupSuccess,
        Self::SignupFailed,
        Self::LoginSuccess,
        Self::LoginFailed,
        Self::FailedLoginAttempt,
        Self::OauthSuccess,
        Self::OauthFailed,
        Self::AppleSuccess,
        Self::AppleFailed,
        Self::TokenGenerated,
        Self::TokenRefreshed,
        Self::TokenRevoked,
        Self::MassTokenRevocation,
        Self::TokenVerificationFailed,
        Self::TokenReuseDetected,
        Self::DeviceFingerprintMismatch,
        Self::Logout,
        Self::RateLimitExceeded,
        Self::BruteForceDetected,
        Self::AccountLocked,
        Self::PasswordRehashed,
        Self::LegacySessionAdopted,
        Self::LegacyAccessTokenAccepted,
        Self::UserTypeChanged,
        Self::ProfileUpdated,
        Self::LockoutLifted,
        Self::MfaEnabled,
        Self::MfaDisabled,
        Self::MfaChallengeFailed,
        Self::MfaBackupCodeUsed,
        Self::TokenCleanup,
        Self::ServiceStarted,
        Self::ServiceStopped,
        Self::SecurityEventsDropped,
        Self::EmailVerificationSent,
        Self::EmailVerified,
        Self::PasswordResetRequested,
        Self::PasswordResetCompleted,
        Self::PasswordChanged,
        Self::ChangePasswordFailed,
        Self::EmailSendFailed,
        Self::AlertDeliveryFailed,
        Self::CredentialStuffingSuspected,
        Self::AccountTargeted,
        Self::LoginFailureSpike,
        Self::SignupBurst,
        Self::TokenTheftSuspected,
        Self::NewDeviceLogin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignupSuccess => "signup_success",
            Self::SignupFailed => "signup_failed",
            Self::LoginSuccess => "login_success",
            Self::LoginFailed => "login_failed",
            Self::FailedLoginAttempt => "failed_login_attempt",
            Self::OauthSuccess => "oauth_success",
            Self::OauthFailed => "oauth_failed",
            Self::AppleSuccess => "apple_success",
            Self::AppleFailed => "apple_failed",
            Self::TokenGenerated => "token_generated",
            Self::TokenRefreshed => "token_refreshed",
            Self::TokenRevoked => "token_revoked",
            Self::MassTokenRevocation => "mass_token_revocation",
            Self::TokenVerificationFailed => "token_verification_failed",
            Self::TokenReuseDetected => "token_reuse_detected",
            Self::DeviceFingerprintMismatch => "device_fingerprint_mismatch",
            Self::Logout => "logout",
            Self::RateLimitExceeded => "rate_limit_exceeded",
            Self::BruteForceDetected => "brute_force_detected",
            Self::AccountLocked => "account_locked",
            Self::PasswordRehashed => "password_rehashed",
            Self::LegacySessionAdopted => "legacy_session_adopted",
            Self::LegacyAccessTokenAccepted => "legacy_access_token_accepted",
            Self::UserTypeChanged => "user_type_changed",
            Self::ProfileUpdated => "profile_updated",
            Self::LockoutLifted => "lockout_lifted",
            Self::MfaEnabled => "mfa_enabled",
            Self::MfaDisabled => "mfa_disabled",
            Self::MfaChallengeFailed => "mfa_challenge_failed",
            Self::MfaBackupCodeUsed => "mfa_backup_code_used",
            Self::TokenCleanup => "token_cleanup",
            Self::ServiceStarted => "service_started",
            Self::ServiceStopped => "service_stopped",
            Self::SecurityEventsDropped => "security_events_dropped",
            Self::EmailVerificationSent => "email_verification_sent",
            Self::EmailVerified => "email_verified",
            Self::PasswordResetRequested => "password_reset_requested",
            Self::PasswordResetCompleted => "password_reset_completed",
            Self::PasswordChanged => "password_changed",
            Self::ChangePasswordFailed => "change_password_failed",
            Self::EmailSendFailed => "email_send_failed",
            Self::AlertDeliveryFailed => "alert_delivery_failed",
            Self::CredentialStuffingSuspected => "credential_stuffing_suspected",
            Self::AccountTargeted => "account_targeted",
            Self::LoginFailureSpike => "login_failure_spike",
            Self::SignupBurst => "signup_burst",
            Self::TokenTheftSuspected => "token_theft_suspected",
            Self::NewDeviceLogin => "new_device_login",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    /// The events the anomaly rules record when they fire.
    pub fn is_anomaly(self) -> bool {
        matches!(
            self,
            Self::CredentialStuffingSuspected
                | Self::AccountTargeted
                | Self::LoginFailureSpike
                | Self::SignupBurst
                | Self::TokenTheftSuspected
                | Self::NewDeviceLogin
        )
    }

    /// The severity docs/API.md assigns to this type.
    pub fn severity(self) -> Severity {
        match self {
            Self::SignupSuccess
            | Self::LoginSuccess
            | Self::OauthSuccess
            | Self::AppleSuccess
            | Self::TokenGenerated
            | Self::TokenRefreshed
            | Self::TokenRevoked
            | Self::Logout
            | Self::PasswordRehashed
            | Self::ProfileUpdated
            | Self::LegacySessionAdopted
            | Self::LegacyAccessTokenAccepted
            | Self::MfaEnabled
            | Self::TokenCleanup
            | Self::ServiceStarted
            | Self::ServiceStopped
            | Self::EmailVerificationSent
            | Self::EmailVerified
            | Self::PasswordResetRequested
            | Self::PasswordResetCompleted
            | Self::PasswordChanged
            | Self::NewDeviceLogin => Severity::Info,
            Self::SignupFailed
            | Self::LoginFailed
            | Self::FailedLoginAttempt
            | Self::OauthFailed
            | Self::AppleFailed
            | Self::MassTokenRevocation
            | Self::TokenVerificationFailed
            | Self::DeviceFingerprintMismatch
            | Self::RateLimitExceeded
            | Self::UserTypeChanged
            | Self::LockoutLifted
            | Self::ChangePasswordFailed
            | Self::EmailSendFailed
            | Self::AlertDeliveryFailed
            | Self::AccountTargeted
            | Self::SignupBurst
            | Self::MfaDisabled
            | Self::MfaChallengeFailed
            | Self::MfaBackupCodeUsed => Severity::Warning,
            Self::BruteForceDetected
            | Self::AccountLocked
            | Self::SecurityEventsDropped
            | Self::CredentialStuffingSuspected
            | Self::LoginFailureSpike => Severity::High,
            Self::TokenReuseDetected | Self::TokenTheftSuspected => Severity::Critical,
        }
    }

    /// The OWASP Logging Vocabulary name, carried in `metadata.owasp` for SIEM rules.
    pub fn owasp_name(self) -> &'static str {
        match self {
            Self::SignupSuccess => "user_created",
            Self::SignupFailed => "input_validation_fail",
            Self::LoginSuccess | Self::OauthSuccess | Self::AppleSuccess => "authn_login_success",
            Self::LoginFailed
            | Self::FailedLoginAttempt
            | Self::OauthFailed
            | Self::AppleFailed => "authn_login_fail",
            Self::TokenGenerated | Self::TokenRefreshed => "authn_token_created",
            Self::TokenRevoked | Self::MassTokenRevocation => "authn_token_revoked",
            Self::TokenVerificationFailed => "authn_token_invalid",
            Self::TokenReuseDetected => "authn_token_reuse",
            Self::DeviceFingerprintMismatch => "session_hijack_suspected",
            Self::Logout => "session_logout",
            Self::RateLimitExceeded => "excess_rate_limit_exceeded",
            Self::BruteForceDetected => "authn_login_fail_max",
            Self::AccountLocked => "authn_login_lock",
            Self::PasswordRehashed => "authn_password_change",
            Self::LegacySessionAdopted => "authn_token_created",
            // A credential of the old service admitted in place of a sign-in here.
            Self::LegacyAccessTokenAccepted => "authn_login_success",
            Self::UserTypeChanged => "authz_change",
            Self::ProfileUpdated => "user_updated",
            Self::LockoutLifted => "authz_admin",
            Self::MfaEnabled => "authn_mfa_enabled",
            Self::MfaDisabled => "authn_mfa_disabled",
            Self::MfaChallengeFailed => "authn_mfa_fail",
            Self::MfaBackupCodeUsed => "authn_mfa_recovery_code_used",
            Self::TokenCleanup => "sys_monitor_cleanup",
            Self::ServiceStarted => "sys_startup",
            Self::ServiceStopped => "sys_shutdown",
            Self::SecurityEventsDropped => "sys_monitor_disabled",
            Self::EmailVerificationSent | Self::PasswordResetRequested => "user_updated",
            Self::EmailVerified => "user_updated",
            Self::PasswordResetCompleted | Self::PasswordChanged => "authn_password_change",
            Self::ChangePasswordFailed => "authn_password_change_fail",
            Self::EmailSendFailed | Self::AlertDeliveryFailed => "sys_monitor_disabled",
            Self::CredentialStuffingSuspected | Self::AccountTargeted | Self::LoginFailureSpike => {
                "authn_login_fail_max"
            }
            Self::SignupBurst => "excess_rate_limit_exceeded",
            Self::TokenTheftSuspected => "authn_token_reuse",
            Self::NewDeviceLogin => "authn_login_success",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Warning,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Warning => "warning",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Info,
            Self::Low,
            Self::Warning,
            Self::High,
            Self::Critical,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// One security event, as every sink stores it. Tokens appear only as their id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityEvent {
    pub id: Uuid,
    pub event_type: EventType,
    pub severity: Severity,
    pub user_id: Option<String>,
    pub token_id: Option<Uuid>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
}

/// The request an event came from: who, from where, on which route.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub route: String,
    pub method: String,
    pub client: ClientInfo,
}

impl SecurityEvent {
    /// A new event of `event_type` with its default severity and a time-ordered id. Its
    /// `created_at` is stamped by the service's clock when it is recorded
    /// ([`super::SecurityLogger`]), or by whoever writes it without the logger.
    pub fn new(event_type: EventType) -> Self {
        let mut metadata = Map::new();
        metadata.insert("owasp".into(), event_type.owasp_name().into());
        Self {
            id: Uuid::now_v7(),
            event_type,
            severity: event_type.severity(),
            user_id: None,
            token_id: None,
            ip_address: None,
            user_agent: None,
            metadata,
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    /// An event about a request: fills ip, user agent, fingerprint, device, request id and route.
    pub fn from_request(event_type: EventType, ctx: &RequestContext) -> Self {
        let mut event = Self::new(event_type);
        event.ip_address = Some(ctx.client.ip.to_string());
        event.user_agent = ctx
            .client
            .user_agent
            .as_deref()
            .map(|ua| sanitize(ua, MAX_USER_AGENT_CHARS));
        event.meta("deviceFingerprint", ctx.client.fingerprint().as_str());
        event.meta("deviceName", ctx.client.device_name());
        event.meta("requestId", ctx.request_id.as_str());
        event.meta("route", ctx.route.as_str());
        event.meta("method", ctx.method.as_str());
        event
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(sanitize(&user_id.into(), 255));
        self
    }

    pub fn token(mut self, token_id: Uuid) -> Self {
        self.token_id = Some(token_id);
        self
    }

    pub fn email(mut self, email: &str) -> Self {
        self.meta("email", sanitize(email, 254));
        self
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.meta("reason", sanitize(reason, 200));
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.meta(key, value);
        self
    }

    fn meta(&mut self, key: &str, value: impl Into<Value>) {
        self.metadata.insert(key.to_owned(), value.into());
    }
}

/// Escapes characters that could forge or hide log lines (CR, LF, ESC, DEL, C1 controls, NUL,
/// U+2028/U+2029, bidi controls) as `\u{..}` and caps the result at `max_chars` characters,
/// escapes included (so hostile input cannot grow an event), marking a cut.
pub fn sanitize(raw: &str, max_chars: usize) -> String {
    const MARKER: &str = "…[truncated]";
    let mut out = String::with_capacity(raw.len().min(max_chars * 4) + MARKER.len());
    let mut count = 0;
    for c in raw.chars() {
        let escaped = crate::domain::is_forbidden_char(c).then(|| format!("\\u{{{:x}}}", c as u32));
        let width = escaped.as_ref().map_or(1, String::len);
        if count + width > max_chars {
            out.push_str(MARKER);
            return out;
        }
        count += width;
        match escaped {
            Some(escape) => out.push_str(&escape),
            None => out.push(c),
        }
    }
    out
}

/// The event's metadata as compact JSON, serialised from the map in place (the writer did it
/// twice per event through a cloned `Value`: the log line and the database row).
pub fn metadata_json(event: &SecurityEvent) -> String {
    // A map with string keys always serialises; the fallback only keeps this infallible.
    serde_json::to_string(&event.metadata).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard's feed filter offers each type once, and only types that exist.
    #[test]
    fn the_dashboard_filter_lists_every_type_once() {
        let ui = include_str!("../dashboard/assets/ui.js");
        let start = ui.find("EVENT_TYPES = [").expect("EVENT_TYPES in ui.js");
        let list = &ui[start..start + ui[start..].find("];").expect("end of EVENT_TYPES")];
        let mut listed: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
        listed.sort_unstable();
        let mut all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        all.sort_unstable();
        assert_eq!(listed, all);
    }

    #[test]
    fn sanitize_escapes_controls_and_caps() {
        let s = sanitize("a\r\nb\x1b[31mc\u{7f}\u{9b}\u{2028}\0", 100);
        assert_eq!(s, "a\\u{d}\\u{a}b\\u{1b}[31mc\\u{7f}\\u{9b}\\u{2028}\\u{0}");
        let long = sanitize(&"x".repeat(10_000), 512);
        assert!(long.starts_with(&"x".repeat(512)) && long.ends_with("…[truncated]"));
        // Escapes count towards the cap: 2,000 controls do not become 12,000 characters.
        let hostile = sanitize(&"\u{85}".repeat(2000), 512);
        assert!(hostile.chars().count() <= 512 + "…[truncated]".chars().count());
        assert!(hostile.starts_with("\\u{85}") && hostile.ends_with("…[truncated]"));
    }

    #[test]
    fn every_type_round_trips_and_has_its_severity() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::TokenReuseDetected.severity(), Severity::Critical);
        assert_eq!(EventType::AccountLocked.severity(), Severity::High);
    }
}
