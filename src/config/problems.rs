//! `check-config`'s problems: every mistake in the settings at once, each with what to do about it.

use secrecy::{ExposeSecret, SecretString};

use super::{LOG_BUFFER_LINES, Settings, StorageKind};

/// Values that have shipped in examples and tutorials; a secret equal to one is no secret.
const KNOWN_WEAK_SECRETS: &[&str] = &[
    "secret",
    "changeme",
    "change-me",
    "your-secret-key",
    "your_jwt_secret",
    "your-super-secret-jwt-key-change-this-in-production",
    "fluxstudio-secret-key",
    "flux-auth-development-secret-change-me",
    "please-change-this-secret-in-production-32b",
];

pub const MIN_SECRET_BYTES: usize = 32;

/// The default of `DATABASE_SCHEMA`.
pub const DEFAULT_DATABASE_SCHEMA: &str = "flux_auth";
/// The default of `SECURITY_EVENTS_SCHEMA`.
pub const DEFAULT_SECURITY_EVENTS_SCHEMA: &str = "public";

/// Whether `name` is a plain identifier: a lower-case letter or `_`, then lower-case letters,
/// digits and `_`, at most 63 bytes (Postgres's limit). Such a name means the same quoted or not.
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// What is wrong with `DATABASE_SCHEMA`, with what to do.
pub fn database_schema_problem(name: &str) -> Option<String> {
    if !is_plain_identifier(name) || name.starts_with("pg_") {
        return Some(format!(
            "DATABASE_SCHEMA must be a plain lower-case identifier (letters, digits, _; at most 63; \
             not starting with pg_), not {name:?}; the default is {DEFAULT_DATABASE_SCHEMA}."
        ));
    }
    if name == "public" {
        return Some(format!(
            "DATABASE_SCHEMA must not be public: flux-auth's tables live in a schema of their own, \
             apart from the application's tables; keep the default {DEFAULT_DATABASE_SCHEMA}."
        ));
    }
    None
}

/// What is wrong with `SECURITY_EVENTS_SCHEMA`, with what to do.
pub fn security_events_schema_problem(name: &str) -> Option<String> {
    (!is_plain_identifier(name) || name.starts_with("pg_")).then(|| {
        format!(
            "SECURITY_EVENTS_SCHEMA must be a plain lower-case identifier (letters, digits, _; at \
             most 63; not starting with pg_), not {name:?}; the default is {DEFAULT_SECURITY_EVENTS_SCHEMA}."
        )
    })
}

impl Settings {
    /// Every problem at once, each with what to do about it; empty when the settings can run.
    /// The components that read settings add their own (`auth::oidc::setting_problems`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.jwt_secret {
            Some(secret) => {
                if let Some(p) = secret_problem("JWT_SECRET", secret) {
                    problems.push(p);
                }
            }
            None if self.is_production() => problems.push(
                "JWT_SECRET is required when NODE_ENV=production. Generate one with \
                 `flux-auth gen-secret` and set JWT_SECRET (or JWT_SECRET_FILE)."
                    .into(),
            ),
            None => {}
        }
        if let Some(p) = self
            .jwt_secret_previous
            .as_ref()
            .and_then(|s| secret_problem("JWT_SECRET_PREVIOUS", s))
        {
            problems.push(p);
        }
        for (name, key) in [
            ("TOTP_ENCRYPTION_KEY", &self.totp_encryption_key),
            (
                "TOTP_ENCRYPTION_KEY_PREVIOUS",
                &self.totp_encryption_key_previous,
            ),
        ] {
            if key.as_ref().is_some_and(|k| !is_aes_key(k)) {
                problems.push(format!(
                    "{name} must be 32 random bytes in base64. Generate one with \
                     `flux-auth gen-totp-key`."
                ));
            }
        }
        if self.totp_encryption_key.is_none() && self.totp_encryption_key_previous.is_some() {
            problems.push(
                "TOTP_ENCRYPTION_KEY_PREVIOUS is set without TOTP_ENCRYPTION_KEY: set the new key \
                 too (`flux-auth gen-totp-key`)."
                    .into(),
            );
        }
        if self.storage == Some(StorageKind::Postgres) && self.database_url.is_none() {
            problems.push("STORAGE=postgres needs DATABASE_URL (postgres://user@host/db).".into());
        }
        problems.extend(database_schema_problem(&self.database_schema));
        problems.extend(security_events_schema_problem(&self.security_events_schema));
        if !(60..=3600).contains(&self.access_token_ttl_secs) {
            problems
                .push("ACCESS_TOKEN_TTL_SECS must be between 60 and 3600 (default 900).".into());
        }
        if self.refresh_idle_ttl_secs == 0
            || self.refresh_idle_ttl_secs > self.refresh_absolute_ttl_secs
        {
            problems.push(
                "REFRESH_IDLE_TTL_SECS must be positive and at most REFRESH_ABSOLUTE_TTL_SECS."
                    .into(),
            );
        }
        if self.refresh_absolute_ttl_secs > 90 * 24 * 3600 {
            problems.push(
                "REFRESH_ABSOLUTE_TTL_SECS must be at most 90 days (default 30 days).".into(),
            );
        }
        if self.refresh_reuse_grace_secs > 60 {
            problems.push("REFRESH_REUSE_GRACE_SECS must be at most 60 (default 10).".into());
        }
        if self.max_sessions_per_user == 0 || self.max_sessions_per_user > 1000 {
            problems.push("MAX_SESSIONS_PER_USER must be between 1 and 1000 (default 10).".into());
        }
        if !(16..=100_000).contains(&self.mail_request_queue) {
            problems
                .push("MAIL_REQUEST_QUEUE must be between 16 and 100000 (default 1024).".into());
        }
        if !(8..=64).contains(&self.password_min_length) {
            problems.push("PASSWORD_MIN_LENGTH must be between 8 and 64 (default 8).".into());
        }
        if self.argon2_memory_kib < 7168
            || self.argon2_iterations == 0
            || self.argon2_parallelism == 0
        {
            problems.push(
                "ARGON2_MEMORY_KIB must be at least 7168 and ARGON2_ITERATIONS, ARGON2_PARALLELISM \
                 at least 1 (defaults 19456, 2, 1)."
                    .into(),
            );
        }
        if !(1024..=1024 * 1024).contains(&self.body_limit_bytes) {
            problems
                .push("BODY_LIMIT_BYTES must be between 1024 and 1048576 (default 16384).".into());
        }
        if !(100..=60_000).contains(&self.header_read_timeout_ms) {
            problems.push(
                "HEADER_READ_TIMEOUT_MS must be between 100 and 60000 (default 10000).".into(),
            );
        }
        if !(16..=1_000_000).contains(&self.max_connections) {
            problems.push("MAX_CONNECTIONS must be between 16 and 1000000 (default 4096).".into());
        }
        if self.max_connections_per_ip > 1_000_000 {
            problems.push(
                "MAX_CONNECTIONS_PER_IP must be at most 1000000 (0 turns the per-address cap off; \
                 default 256)."
                    .into(),
            );
        }
        if !(100..=10_000).contains(&self.event_stream_recheck_ms) {
            problems.push(
                "EVENT_STREAM_RECHECK_MS must be between 100 and 10000 (default 2000).".into(),
            );
        }
        if self.cleanup_interval_secs < 60 {
            problems.push("CLEANUP_INTERVAL_SECS must be at least 60 (default 3600).".into());
        }
        if self.lockout_threshold == 0 || self.lockout_threshold > 100 {
            problems.push(
                "LOCKOUT_THRESHOLD must be between 1 and 100 (default 5; NIST caps it at 100)."
                    .into(),
            );
        }
        if self.lockout_base_secs == 0 || self.lockout_base_secs > self.lockout_max_secs {
            problems.push("LOCKOUT_BASE_SECS must be positive and at most LOCKOUT_MAX_SECS (defaults 30, 900).".into());
        }
        if self.user_cache_users > 1_000_000 || !(1..=86_400).contains(&self.user_cache_ttl_secs) {
            problems.push(
                "USER_CACHE_USERS must be at most 1000000 (0 turns the cache off; default 10000) and \
                 USER_CACHE_TTL_SECS between 1 and 86400 (default 60)."
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 {
            problems.push("REQUEST_TIMEOUT_MS must be positive (default 15000).".into());
        }
        // Only the Postgres store runs statements on a request's behalf.
        if self.storage_kind() == StorageKind::Postgres
            && (self.database_statement_timeout_ms < 100
                || self.database_statement_timeout_ms >= self.request_timeout_ms)
        {
            problems.push(
                "DATABASE_STATEMENT_TIMEOUT_MS must be at least 100 and below REQUEST_TIMEOUT_MS \
                 (defaults 5000 and 15000), so that no statement outlives its request."
                    .into(),
            );
        }
        if !(10..=5000).contains(&self.redis_timeout_ms) {
            problems.push("REDIS_TIMEOUT_MS must be between 10 and 5000 (default 250).".into());
        }
        if self.security_log_batch_size == 0 || self.security_log_queue_capacity == 0 {
            problems.push(
                "SECURITY_LOG_BATCH_SIZE and SECURITY_LOG_QUEUE_CAPACITY must be positive.".into(),
            );
        }
        let lines = LOG_BUFFER_LINES;
        if !(lines.min..=lines.max).contains(&self.log_buffer_lines) {
            problems.push(format!(
                "LOG_BUFFER_LINES must be between {} and {} (default {}).",
                lines.min, lines.max, lines.default
            ));
        }
        if self.token_failure_log_threshold > 10_000
            || !(1..=3600).contains(&self.token_failure_log_window_secs)
        {
            problems.push(
                "TOKEN_FAILURE_LOG_THRESHOLD must be at most 10000 (0 records every refused token; \
                 default 20) and TOKEN_FAILURE_LOG_WINDOW_SECS between 1 and 3600 (default 60)."
                    .into(),
            );
        }
        if self.bearer_failure_limit_per_ip > 100_000 {
            problems.push(
                "BEARER_FAILURE_LIMIT_PER_IP must be at most 100000 per minute (0 turns it off; \
                 default 600)."
                    .into(),
            );
        }
        // The linger bounds what a SIGKILL can lose in async mode, and shutdown waits it out.
        if self.security_log_linger_ms > 1000 {
            problems.push("SECURITY_LOG_LINGER_MS must be at most 1000 (default 1).".into());
        }
        for origin in &self.cors_origins {
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "CORS_ORIGINS entry {origin:?} must be an exact origin such as https://app.example.com (no *)."
                ));
            }
        }
        self.anomaly_problems(&mut problems);
        self.alert_problems(&mut problems);
        problems
    }

    /// The alerts' secret and bounds (their URLs and severity: `alerts::setting_problems`).
    fn alert_problems(&self, problems: &mut Vec<String>) {
        let urls = self
            .alert_webhook_urls
            .as_ref()
            .is_some_and(|u| !u.expose_secret().trim().is_empty());
        match &self.alert_webhook_secret {
            Some(secret) => problems.extend(secret_problem("ALERT_WEBHOOK_SECRET", secret)),
            None if urls => problems.push(
                "ALERT_WEBHOOK_SECRET is required with ALERT_WEBHOOK_URLS: every alert is signed                  with it. Generate one with `flux-auth gen-secret`."
                    .into(),
            ),
            None => {}
        }
        let bounds = [
            (
                "ALERT_DEDUP_WINDOW_SECS",
                self.alert_dedup_window_secs,
                1,
                ANOMALY_MAX_WINDOW_SECS,
            ),
            (
                "ALERT_MAX_PER_MINUTE",
                u64::from(self.alert_max_per_minute),
                1,
                10_000,
            ),
            ("ALERT_TIMEOUT_MS", self.alert_timeout_ms, 100, 60_000),
            (
                "ALERT_RETRY_BASE_MS",
                self.alert_retry_base_ms,
                10,
                3_600_000,
            ),
            (
                "ALERT_RETRY_FOR_SECS",
                self.alert_retry_for_secs,
                1,
                7 * 24 * 3600,
            ),
            ("ALERT_POLL_MS", self.alert_poll_ms, 10, 60_000),
        ];
        for (name, value, min, max) in bounds {
            if !(min..=max).contains(&value) {
                problems.push(format!("{name} must be between {min} and {max}."));
            }
        }
    }
}

/// What is wrong with the secret `name`, if anything: too short, a published example, too few
/// distinct characters.
pub(super) fn secret_problem(name: &str, secret: &SecretString) -> Option<String> {
    let value = secret.expose_secret();
    let fix = "Generate one with `flux-auth gen-secret`.";
    if value.len() < MIN_SECRET_BYTES {
        return Some(format!(
            "{name} is {} bytes; it must be at least {MIN_SECRET_BYTES}. {fix}",
            value.len()
        ));
    }
    let lower = value.to_lowercase();
    if KNOWN_WEAK_SECRETS.iter().any(|weak| lower == *weak)
        || lower.contains("change") && lower.contains("secret")
    {
        return Some(format!(
            "{name} is a published example value, not a secret. {fix}"
        ));
    }
    let distinct: std::collections::HashSet<char> = value.chars().collect();
    if distinct.len() < 8 {
        return Some(format!(
            "{name} repeats too few characters to be random. {fix}"
        ));
    }
    None
}

/// The longest window an anomaly rule may count over, and the largest threshold: the state of a
/// rule is at most one threshold's worth of entries per key, for one window.
const ANOMALY_MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;
const ANOMALY_MAX_THRESHOLD: u32 = 100_000;

impl Settings {
    fn anomaly_problems(&self, problems: &mut Vec<String>) {
        let rules = [
            (
                "CREDENTIAL_STUFFING",
                self.anomaly_credential_stuffing_threshold,
                self.anomaly_credential_stuffing_window_secs,
            ),
            (
                "ACCOUNT_TARGETED",
                self.anomaly_account_targeted_threshold,
                self.anomaly_account_targeted_window_secs,
            ),
            (
                "LOGIN_FAILURE_SPIKE",
                self.anomaly_login_failure_spike_floor,
                self.anomaly_login_failure_spike_window_secs,
            ),
            (
                "SIGNUP_BURST",
                self.anomaly_signup_burst_threshold,
                self.anomaly_signup_burst_window_secs,
            ),
            (
                "TOKEN_THEFT",
                self.anomaly_token_theft_threshold,
                self.anomaly_token_theft_window_secs,
            ),
        ];
        for (rule, threshold, window) in rules {
            if !(1..=ANOMALY_MAX_WINDOW_SECS).contains(&window) {
                problems.push(format!(
                    "ANOMALY_{rule}_WINDOW_SECS must be between 1 and {ANOMALY_MAX_WINDOW_SECS}."
                ));
            }
            if threshold > ANOMALY_MAX_THRESHOLD {
                let name = if rule == "LOGIN_FAILURE_SPIKE" {
                    "FLOOR"
                } else {
                    "THRESHOLD"
                };
                problems.push(format!(
                    "ANOMALY_{rule}_{name} must be at most {ANOMALY_MAX_THRESHOLD} (0 turns the rule off)."
                ));
            }
        }
        if !(1..=1000).contains(&self.anomaly_known_devices_per_user) {
            problems.push(
                "ANOMALY_KNOWN_DEVICES_PER_USER must be between 1 and 1000 (default 20).".into(),
            );
        }
    }
}

/// 32 bytes in standard or URL-safe base64, padded or not: an AES-256 key.
pub fn is_aes_key(key: &SecretString) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = key.expose_secret().trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .any(|engine| engine.decode(text).is_ok_and(|bytes| bytes.len() == 32))
}
