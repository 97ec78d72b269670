//! Typed settings. Defaults are compiled in; `config/default.toml` (or `CONFIG_FILE`) overrides
//! them when present; environment variables (and `.env`) override both. Every setting's env name
//! is its field name in upper case (`jwt_secret` ← `JWT_SECRET`), and secrets may also come from
//! `<NAME>_FILE`. Secrets are `SecretString`, redacted in `Debug`.
//!
//! Each setting is declared once, below: its doc, name, type and default. This module depends on
//! nothing else in the crate; the components that read a setting check what only they know
//! (the OpenID settings: `auth::oidc::setting_problems`).

mod declare;
mod load;
mod problems;
mod secret;
#[cfg(test)]
mod tests;
mod values;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use secrecy::SecretString;

pub use declare::Kind;
pub use problems::MIN_SECRET_BYTES;
pub use secret::{generate_secret, resolve_jwt_secret};
pub use values::{Durability, Environment, FingerprintPolicy, LogFormat, StorageKind, Switch};

/// A setting's accepted range and default.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub min: usize,
    pub default: usize,
    pub max: usize,
}

/// How many log lines may wait for stdout (`LOG_BUFFER_LINES`). A line is a few hundred bytes,
/// so the default holds a few MB: seconds of a request flood, or of a log reader that stalls.
pub const LOG_BUFFER_LINES: Bounds = Bounds {
    min: 1_000,
    default: 16_384,
    max: 1_000_000,
};

declare::settings! {
    host: IpAddr = IpAddr::from([0, 0, 0, 0]),
    port: u16 = 3001,
    node_env: Environment = Environment::Development,
    log_format: LogFormat = LogFormat::Auto,
    /// Log lines that may wait for stdout before new ones are dropped (`telemetry::init`).
    log_buffer_lines: usize = LOG_BUFFER_LINES.default,

    jwt_secret: Option<SecretString> = None,
    /// Accepted for verification only, so rotating `JWT_SECRET` logs nobody out.
    jwt_secret_previous: Option<SecretString> = None,
    jwt_issuer: String = "flux-auth".into(),
    jwt_audience: String = "fluxstudio".into(),
    access_token_ttl_secs: u64 = 900,
    refresh_idle_ttl_secs: u64 = 7 * 24 * 3600,
    refresh_absolute_ttl_secs: u64 = 30 * 24 * 3600,
    refresh_reuse_grace_secs: u64 = 10,
    max_sessions_per_user: u32 = 10,
    fingerprint_policy: FingerprintPolicy = FingerprintPolicy::Log,
    trusted_proxies: Vec<IpNet> = Vec::new(),

    storage: Option<StorageKind> = None,
    database_url: Option<SecretString> = None,
    database_max_connections: u32 = 10,
    database_connect_timeout_ms: u64 = 3000,
    /// The longest one statement of the user store may run (lock waits included) before Postgres
    /// cancels it; below `request_timeout_ms`, so no statement outlives its request.
    database_statement_timeout_ms: u64 = 5000,
    run_migrations: bool = true,
    /// Users kept in memory by the Postgres store (0: none), each for at most `user_cache_ttl_secs`;
    /// dropped as soon as Postgres announces a change to their row.
    user_cache_users: u64 = 10_000,
    user_cache_ttl_secs: u64 = 60,
    data_dir: PathBuf = PathBuf::from("data"),

    security_log_database_url: Option<SecretString> = None,
    security_log_dir: Option<PathBuf> = None,
    security_log_durability: Durability = Durability::Async,
    security_log_queue_capacity: usize = 8192,
    security_log_batch_size: usize = 500,
    // Short on purpose: each batch's insert is a burst of database CPU, and with the
    // database on the request's cores a 5 ms linger doubled the p99 at 2,000 events/s
    // where 1 ms added a third (BENCHMARKS.md, "Security log").
    security_log_linger_ms: u64 = 1,
    security_log_spool_max_bytes: u64 = 1 << 30,
    /// Days security events are kept, by severity (info and low share the first).
    security_log_retention_days_info: u32 = 90,
    security_log_retention_days_warning: u32 = 180,
    security_log_retention_days_high: u32 = 365,
    security_log_retention_days_critical: u32 = 365,
    /// How often expired sessions and old events are deleted.
    cleanup_interval_secs: u64 = 3600,
    /// Refused bearer tokens from one address recorded one by one per window; past it they are
    /// counted into one summary event per window (0: every one recorded).
    token_failure_log_threshold: u32 = 20,
    token_failure_log_window_secs: u64 = 60,

    redis_url: Option<SecretString> = None,
    redis_key_prefix: String = "flux-auth:".into(),
    redis_timeout_ms: u64 = 250,
    /// `off` disables every rate limit and lockout (load tests, trusted networks); logged loudly.
    rate_limits: Switch = Switch::On,
    login_limit_per_ip: u32 = 100,
    login_limit_per_account: u32 = 10,
    signup_limit_per_ip: u32 = 5,
    refresh_limit_per_ip: u32 = 600,
    refresh_limit_per_session: u32 = 60,
    /// Bearer tokens from one address per minute refused before their signature verified, before
    /// the next such refusal is a 429 (0: off). Tokens the service signed are never counted.
    bearer_failure_limit_per_ip: u32 = 600,
    lockout_threshold: u32 = 5,
    lockout_base_secs: u64 = 30,
    lockout_max_secs: u64 = 900,
    ip_failure_threshold: u32 = 50,
    ip_block_secs: u64 = 900,

    google_client_id: Vec<String> = Vec::new(),
    /// Needed by the authorization-code flow (`/api/auth/google/authorize`), not by ID-token sign-in.
    google_client_secret: Option<SecretString> = None,
    /// Where the provider sends the browser back: this service's `/api/auth/google/callback`.
    google_redirect_uri: Option<String> = None,
    /// Where browser flows end, with the tokens in the URL fragment.
    frontend_url: Option<String> = None,
    /// When set, only accounts of this Google Workspace domain (the `hd` claim) may sign in.
    google_hosted_domain: Option<String> = None,
    /// Another OpenID provider in Google's place (discovery at `{issuer}/.well-known/openid-configuration`).
    oidc_issuer_url: Option<String> = None,
    cors_origins: Vec<String> = Vec::new(),
    /// Serve `/metrics` on this address instead of the API port (e.g. 127.0.0.1:9464).
    metrics_addr: Option<std::net::SocketAddr> = None,
    hsts: bool = false,
    body_limit_bytes: usize = 16 * 1024,
    request_timeout_ms: u64 = 15_000,
    shutdown_timeout_ms: u64 = 1_200,
    /// Time a connection has to send a complete request head, from its accept and from the end of
    /// its previous response (so also its idle keep-alive time).
    header_read_timeout_ms: u64 = 10_000,
    /// Connections open at once (lowered to fit the open-file limit; `server::connection_cap`).
    max_connections: usize = 4096,
    /// Connections open at once from one address (an IPv6 /64), peers in `trusted_proxies` apart;
    /// 0 turns the per-address cap off.
    max_connections_per_ip: usize = 256,
    /// How often an open admin event stream checks that its token is still valid, unrevoked and
    /// an admin's.
    event_stream_recheck_ms: u64 = 2_000,

    password_min_length: usize = 8,
    argon2_memory_kib: u32 = 19_456,
    argon2_iterations: u32 = 2,
    argon2_parallelism: u32 = 1,
    /// Hashes computed at once; 0 means one per CPU core.
    password_hash_concurrency: usize = 0,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{name}={value:?} is not {expected}")]
    BadValue {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
}

impl Settings {
    pub fn is_production(&self) -> bool {
        self.node_env == Environment::Production
    }

    /// The user store: explicit `STORAGE`, else Postgres when `DATABASE_URL` is set.
    pub fn storage_kind(&self) -> StorageKind {
        self.storage.unwrap_or(if self.database_url.is_some() {
            StorageKind::Postgres
        } else {
            StorageKind::File
        })
    }

    /// The security log's database: its own URL, else the user store's.
    pub fn security_log_database_url(&self) -> Option<&SecretString> {
        self.security_log_database_url
            .as_ref()
            .or(self.database_url.as_ref())
    }

    pub fn security_log_dir(&self) -> PathBuf {
        self.security_log_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("security-events"))
    }

    /// The setting names env understands, in upper case (for `.env.example` and `check-config`).
    pub fn env_names() -> impl Iterator<Item = String> {
        KEYS.iter().map(|(k, _)| k.to_uppercase())
    }

    /// Every setting's TOML key (its field name) and the kind of value env gives it.
    pub fn keys() -> impl Iterator<Item = (&'static str, Kind)> {
        KEYS.iter().copied()
    }
}
