//! Typed settings. Defaults are compiled in; `config/default.toml` (or `CONFIG_FILE`) overrides
//! them when present; environment variables (and `.env`) override both. Every setting's env name
//! is its field name in upper case (`jwt_secret` ← `JWT_SECRET`), and secrets may also come from
//! `<NAME>_FILE`. Secrets are `SecretString`, redacted in `Debug`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Postgres,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FingerprintPolicy {
    /// Record `device_fingerprint_mismatch` and rotate as usual.
    Log,
    /// Record the event, revoke the session and answer 401.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `record()` never waits; a SIGKILL can lose the events of the last linger interval.
    Async,
    /// A request waits until its event is durable in Postgres or the spool (group commit).
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub node_env: Environment,
    pub log_format: LogFormat,
    /// Log lines that may wait for stdout before new ones are dropped (`telemetry::init`).
    pub log_buffer_lines: usize,

    pub jwt_secret: Option<SecretString>,
    /// Accepted for verification only, so rotating `JWT_SECRET` logs nobody out.
    pub jwt_secret_previous: Option<SecretString>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl_secs: u64,
    pub refresh_idle_ttl_secs: u64,
    pub refresh_absolute_ttl_secs: u64,
    pub refresh_reuse_grace_secs: u64,
    pub max_sessions_per_user: u32,
    pub fingerprint_policy: FingerprintPolicy,
    pub trusted_proxies: Vec<IpNet>,

    pub storage: Option<StorageKind>,
    pub database_url: Option<SecretString>,
    pub database_max_connections: u32,
    pub database_connect_timeout_ms: u64,
    /// The longest one statement of the user store may run (lock waits included) before Postgres
    /// cancels it; below `request_timeout_ms`, so no statement outlives its request.
    pub database_statement_timeout_ms: u64,
    pub run_migrations: bool,
    /// Users kept in memory by the Postgres store (0: none), each for at most `user_cache_ttl_secs`;
    /// dropped as soon as Postgres announces a change to their row.
    pub user_cache_users: u64,
    pub user_cache_ttl_secs: u64,
    pub data_dir: PathBuf,

    pub security_log_database_url: Option<SecretString>,
    pub security_log_dir: Option<PathBuf>,
    pub security_log_durability: Durability,
    pub security_log_queue_capacity: usize,
    pub security_log_batch_size: usize,
    pub security_log_linger_ms: u64,
    pub security_log_spool_max_bytes: u64,
    /// Days security events are kept, by severity (info and low share the first).
    pub security_log_retention_days_info: u32,
    pub security_log_retention_days_warning: u32,
    pub security_log_retention_days_high: u32,
    pub security_log_retention_days_critical: u32,
    /// How often expired sessions and old events are deleted.
    pub cleanup_interval_secs: u64,
    /// Refused bearer tokens from one address recorded one by one per window; past it they are
    /// counted into one summary event per window (0: every one recorded).
    pub token_failure_log_threshold: u32,
    pub token_failure_log_window_secs: u64,

    pub redis_url: Option<SecretString>,
    pub redis_key_prefix: String,
    pub redis_timeout_ms: u64,
    /// `off` disables every rate limit and lockout (load tests, trusted networks); logged loudly.
    pub rate_limits: Switch,
    pub login_limit_per_ip: u32,
    pub login_limit_per_account: u32,
    pub signup_limit_per_ip: u32,
    pub refresh_limit_per_ip: u32,
    pub refresh_limit_per_session: u32,
    /// Bearer tokens from one address per minute refused before their signature verified, before
    /// the next such refusal is a 429 (0: off). Tokens the service signed are never counted.
    pub bearer_failure_limit_per_ip: u32,
    pub lockout_threshold: u32,
    pub lockout_base_secs: u64,
    pub lockout_max_secs: u64,
    pub ip_failure_threshold: u32,
    pub ip_block_secs: u64,

    pub google_client_id: Vec<String>,
    /// Needed by the authorization-code flow (`/api/auth/google/authorize`), not by ID-token sign-in.
    pub google_client_secret: Option<SecretString>,
    /// Where the provider sends the browser back: this service's `/api/auth/google/callback`.
    pub google_redirect_uri: Option<String>,
    /// Where browser flows end, with the tokens in the URL fragment.
    pub frontend_url: Option<String>,
    /// When set, only accounts of this Google Workspace domain (the `hd` claim) may sign in.
    pub google_hosted_domain: Option<String>,
    /// Another OpenID provider in Google's place (discovery at `{issuer}/.well-known/openid-configuration`).
    pub oidc_issuer_url: Option<String>,
    pub cors_origins: Vec<String>,
    /// Serve `/metrics` on this address instead of the API port (e.g. 127.0.0.1:9464).
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub hsts: bool,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// Time a connection has to send a complete request head, from its accept and from the end of
    /// its previous response (so also its idle keep-alive time).
    pub header_read_timeout_ms: u64,
    /// Connections open at once (lowered to fit the open-file limit; `server::connection_cap`).
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 /64), peers in `trusted_proxies` apart;
    /// 0 turns the per-address cap off.
    pub max_connections_per_ip: usize,
    /// How often an open admin event stream checks that its token is still valid, unrevoked and
    /// an admin's.
    pub event_stream_recheck_ms: u64,

    pub password_min_length: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Hashes computed at once; 0 means one per CPU core.
    pub password_hash_concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3001,
            node_env: Environment::Development,
            log_format: LogFormat::Auto,
            log_buffer_lines: crate::telemetry::LOG_BUFFER_LINES.default,
            jwt_secret: None,
            jwt_secret_previous: None,
            jwt_issuer: "flux-auth".into(),
            jwt_audience: "fluxstudio".into(),
            access_token_ttl_secs: 900,
            refresh_idle_ttl_secs: 7 * 24 * 3600,
            refresh_absolute_ttl_secs: 30 * 24 * 3600,
            refresh_reuse_grace_secs: 10,
            max_sessions_per_user: 10,
            fingerprint_policy: FingerprintPolicy::Log,
            trusted_proxies: Vec::new(),
            storage: None,
            database_url: None,
            database_max_connections: 10,
            database_connect_timeout_ms: 3000,
            database_statement_timeout_ms: 5000,
            run_migrations: true,
            user_cache_users: 10_000,
            user_cache_ttl_secs: 60,
            data_dir: PathBuf::from("data"),
            security_log_database_url: None,
            security_log_dir: None,
            security_log_durability: Durability::Async,
            security_log_queue_capacity: 8192,
            security_log_batch_size: 500,
            // Short on purpose: each batch's insert is a burst of database CPU, and with the
            // database on the request's cores a 5 ms linger doubled the p99 at 2,000 events/s
            // where 1 ms added a third (BENCHMARKS.md, "Security log").
            security_log_linger_ms: 1,
            security_log_spool_max_bytes: 1 << 30,
            security_log_retention_days_info: 90,
            security_log_retention_days_warning: 180,
            security_log_retention_days_high: 365,
            security_log_retention_days_critical: 365,
            cleanup_interval_secs: 3600,
            token_failure_log_threshold: 20,
            token_failure_log_window_secs: 60,
            redis_url: None,
            redis_key_prefix: "flux-auth:".into(),
            redis_timeout_ms: 250,
            rate_limits: Switch::On,
            login_limit_per_ip: 100,
            login_limit_per_account: 10,
            signup_limit_per_ip: 5,
            refresh_limit_per_ip: 600,
            refresh_limit_per_session: 60,
            bearer_failure_limit_per_ip: 600,
            lockout_threshold: 5,
            lockout_base_secs: 30,
            lockout_max_secs: 900,
            ip_failure_threshold: 50,
            ip_block_secs: 900,
            google_client_id: Vec::new(),
            google_client_secret: None,
            google_redirect_uri: None,
            frontend_url: None,
            google_hosted_domain: None,
            oidc_issuer_url: None,
            cors_origins: Vec::new(),
            metrics_addr: None,
            hsts: false,
            body_limit_bytes: 16 * 1024,
            request_timeout_ms: 15_000,
            shutdown_timeout_ms: 1_200,
            header_read_timeout_ms: 10_000,
            max_connections: 4096,
            max_connections_per_ip: 256,
            event_stream_recheck_ms: 2_000,
            password_min_length: 8,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_hash_concurrency: 0,
        }
    }
}

/// How an environment value is read into the settings table.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Secret,
    Number,
    Flag,
    List,
}

/// Every setting that env can set, by field name. `check-config` and `.env.example` follow it.
const KEYS: &[(&str, Kind)] = &[
    ("host", Kind::Text),
    ("port", Kind::Number),
    ("node_env", Kind::Text),
    ("log_format", Kind::Text),
    ("log_buffer_lines", Kind::Number),
    ("jwt_secret", Kind::Secret),
    ("jwt_secret_previous", Kind::Secret),
    ("jwt_issuer", Kind::Text),
    ("jwt_audience", Kind::Text),
    ("access_token_ttl_secs", Kind::Number),
    ("refresh_idle_ttl_secs", Kind::Number),
    ("refresh_absolute_ttl_secs", Kind::Number),
    ("refresh_reuse_grace_secs", Kind::Number),
    ("max_sessions_per_user", Kind::Number),
    ("fingerprint_policy", Kind::Text),
    ("trusted_proxies", Kind::List),
    ("storage", Kind::Text),
    ("database_url", Kind::Secret),
    ("database_max_connections", Kind::Number),
    ("database_connect_timeout_ms", Kind::Number),
    ("database_statement_timeout_ms", Kind::Number),
    ("run_migrations", Kind::Flag),
    ("user_cache_users", Kind::Number),
    ("user_cache_ttl_secs", Kind::Number),
    ("data_dir", Kind::Text),
    ("security_log_database_url", Kind::Secret),
    ("security_log_dir", Kind::Text),
    ("security_log_durability", Kind::Text),
    ("security_log_queue_capacity", Kind::Number),
    ("security_log_batch_size", Kind::Number),
    ("security_log_linger_ms", Kind::Number),
    ("security_log_spool_max_bytes", Kind::Number),
    ("security_log_retention_days_info", Kind::Number),
    ("security_log_retention_days_warning", Kind::Number),
    ("security_log_retention_days_high", Kind::Number),
    ("security_log_retention_days_critical", Kind::Number),
    ("cleanup_interval_secs", Kind::Number),
    ("token_failure_log_threshold", Kind::Number),
    ("token_failure_log_window_secs", Kind::Number),
    ("redis_url", Kind::Secret),
    ("redis_key_prefix", Kind::Text),
    ("redis_timeout_ms", Kind::Number),
    ("rate_limits", Kind::Text),
    ("login_limit_per_ip", Kind::Number),
    ("login_limit_per_account", Kind::Number),
    ("signup_limit_per_ip", Kind::Number),
    ("refresh_limit_per_ip", Kind::Number),
    ("refresh_limit_per_session", Kind::Number),
    ("bearer_failure_limit_per_ip", Kind::Number),
    ("lockout_threshold", Kind::Number),
    ("lockout_base_secs", Kind::Number),
    ("lockout_max_secs", Kind::Number),
    ("ip_failure_threshold", Kind::Number),
    ("ip_block_secs", Kind::Number),
    ("google_client_id", Kind::List),
    ("google_client_secret", Kind::Secret),
    ("google_redirect_uri", Kind::Text),
    ("frontend_url", Kind::Text),
    ("google_hosted_domain", Kind::Text),
    ("oidc_issuer_url", Kind::Text),
    ("cors_origins", Kind::List),
    ("metrics_addr", Kind::Text),
    ("hsts", Kind::Flag),
    ("body_limit_bytes", Kind::Number),
    ("request_timeout_ms", Kind::Number),
    ("shutdown_timeout_ms", Kind::Number),
    ("header_read_timeout_ms", Kind::Number),
    ("max_connections", Kind::Number),
    ("max_connections_per_ip", Kind::Number),
    ("event_stream_recheck_ms", Kind::Number),
    ("password_min_length", Kind::Number),
    ("argon2_memory_kib", Kind::Number),
    ("argon2_iterations", Kind::Number),
    ("argon2_parallelism", Kind::Number),
    ("password_hash_concurrency", Kind::Number),
];

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
    /// Loads from the process environment (after `.env`, when present) and the config file.
    pub fn load() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the values it fails to set.
        let _ = dotenvy::dotenv();
        Self::from_env(std::env::vars().collect())
    }

    /// Builds settings from an explicit environment map, so tests never touch the process env.
    pub fn from_env(env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        let set = |name: &str| env.get(name).filter(|v| !v.is_empty());
        let file = set("CONFIG_FILE").map(PathBuf::from).or_else(|| {
            let default = PathBuf::from("config/default.toml");
            default.exists().then_some(default)
        });
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            table = text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        for (key, kind) in KEYS {
            let name = key.to_uppercase();
            // An empty value is "not set" (an empty list for lists), so `JWT_SECRET=` in a .env
            // does not hide JWT_SECRET_FILE.
            let direct = env
                .get(&name)
                .filter(|v| !v.is_empty() || matches!(kind, Kind::List));
            let value = match direct {
                Some(v) => Some(v.clone()),
                None if matches!(kind, Kind::Secret) => match set(&format!("{name}_FILE")) {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|source| ConfigError::Read {
                                path: path.into(),
                                source,
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                },
                None => None,
            };
            let Some(value) = value else { continue };
            if value.is_empty() && !matches!(kind, Kind::List) {
                continue; // `JWT_SECRET=` in a .env means "not set", as it did for the old service
            }
            table.insert((*key).to_owned(), env_value(&name, &value, *kind)?);
        }
        // The plural spelling some deployments use for the same list.
        if !table.contains_key("google_client_id")
            && let Some(ids) = set("GOOGLE_CLIENT_IDS")
        {
            table.insert(
                "google_client_id".into(),
                env_value("GOOGLE_CLIENT_IDS", ids, Kind::List)?,
            );
        }
        if !table.contains_key("redis_url")
            && let Some(host) = env.get("REDIS_HOST").filter(|h| !h.is_empty())
        {
            {
                let port = set("REDIS_PORT").map(String::as_str).unwrap_or("6379");
                let auth = match env.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
                    Some(password) => format!(":{password}@"),
                    None => String::new(),
                };
                table.insert(
                    "redis_url".into(),
                    format!("redis://{auth}{host}:{port}").into(),
                );
            }
        }
        let settings: Settings = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        Ok(settings)
    }

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

    /// Every problem at once, each with what to do about it; empty when the settings can run.
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
        if self.storage == Some(StorageKind::Postgres) && self.database_url.is_none() {
            problems.push("STORAGE=postgres needs DATABASE_URL (postgres://user@host/db).".into());
        }
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
        let lines = crate::telemetry::LOG_BUFFER_LINES;
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
        problems.extend(crate::auth::oidc::setting_problems(self));
        for origin in &self.cors_origins {
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "CORS_ORIGINS entry {origin:?} must be an exact origin such as https://app.example.com (no *)."
                ));
            }
        }
        problems
    }

    /// The setting names env understands, in upper case (for `.env.example` and `check-config`).
    pub fn env_names() -> impl Iterator<Item = String> {
        KEYS.iter().map(|(k, _)| k.to_uppercase())
    }
}

fn secret_problem(name: &str, secret: &SecretString) -> Option<String> {
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

fn env_value(name: &str, value: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let bad = |expected| ConfigError::BadValue {
        name: name.into(),
        value: value.into(),
        expected,
    };
    Ok(match kind {
        Kind::Text | Kind::Secret => toml::Value::String(value.to_owned()),
        Kind::Number => {
            toml::Value::Integer(value.trim().parse().map_err(|_| bad("a whole number"))?)
        }
        Kind::Flag => toml::Value::Boolean(match value.trim().to_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

/// Returns the signing secret: the configured one, or in development one generated on first
/// start and kept in `DATA_DIR/.jwt-secret` (mode 0600) so restarts keep sessions valid.
pub fn resolve_jwt_secret(settings: &Settings) -> Result<SecretString, ConfigError> {
    if let Some(secret) = &settings.jwt_secret {
        return Ok(secret.clone());
    }
    if settings.is_production() {
        return Err(ConfigError::Problems(vec![
            "JWT_SECRET is required when NODE_ENV=production.".into(),
        ]));
    }
    let path = settings.data_dir.join(".jwt-secret");
    let read_err = |source| ConfigError::Read {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = SecretString::from(text.trim().to_owned());
            if let Some(problem) = secret_problem(&path.display().to_string(), &secret) {
                return Err(ConfigError::Problems(vec![problem]));
            }
            return Ok(secret);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(e)),
    }
    std::fs::create_dir_all(&settings.data_dir).map_err(read_err)?;
    let secret = generate_secret();
    write_private_file(&path, secret.as_bytes()).map_err(read_err)?;
    tracing::warn!(
        path = %path.display(),
        "JWT_SECRET is not set: generated a random development secret and saved it; set JWT_SECRET in production"
    );
    Ok(SecretString::from(secret))
}

/// 48 random bytes from the OS, base64url: 64 characters, 384 bits.
pub fn generate_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 48] = crate::auth::os_random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.insert("CONFIG_FILE".into(), "/dev/null".into());
        map
    }

    #[test]
    fn env_names_override_defaults() {
        let s = Settings::from_env(env(&[
            ("PORT", "4000"),
            ("CORS_ORIGINS", "https://a.example, https://b.example"),
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
            ("RUN_MIGRATIONS", "false"),
        ]))
        .unwrap();
        assert_eq!(s.port, 4000);
        assert_eq!(
            s.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(s.trusted_proxies.len(), 1);
        assert!(!s.run_migrations);
        assert_eq!(s.storage_kind(), StorageKind::File);
    }

    #[test]
    fn weak_secrets_are_problems() {
        for weak in [
            "short",
            "your-super-secret-jwt-key-change-this-in-production",
            &"a".repeat(40),
        ] {
            let s = Settings::from_env(env(&[("JWT_SECRET", weak)])).unwrap();
            assert!(!s.problems().is_empty(), "{weak} accepted");
        }
        let good = generate_secret();
        let s = Settings::from_env(env(&[("JWT_SECRET", &good)])).unwrap();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn the_per_address_connection_cap_is_bounded_and_0_turns_it_off() {
        let secret = generate_secret();
        let with = |value: &str| {
            Settings::from_env(env(&[
                ("JWT_SECRET", &secret),
                ("MAX_CONNECTIONS_PER_IP", value),
            ]))
            .unwrap()
        };
        assert_eq!(Settings::default().max_connections_per_ip, 256);
        for fine in ["0", "1", "1000000"] {
            assert!(with(fine).problems().is_empty(), "{fine}");
        }
        assert!(
            with("1000001")
                .problems()
                .iter()
                .any(|p| p.contains("MAX_CONNECTIONS_PER_IP"))
        );
    }

    #[test]
    fn production_requires_a_secret() {
        let s = Settings::from_env(env(&[("NODE_ENV", "production")])).unwrap();
        assert!(
            s.problems()
                .iter()
                .any(|p| p.contains("JWT_SECRET is required"))
        );
    }

    #[test]
    fn the_security_log_linger_is_bounded() {
        let good = generate_secret();
        let ok = Settings::from_env(env(&[
            ("JWT_SECRET", &good),
            ("SECURITY_LOG_LINGER_MS", "1000"),
        ]))
        .unwrap();
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let long = Settings::from_env(env(&[
            ("JWT_SECRET", &good),
            ("SECURITY_LOG_LINGER_MS", "1001"),
        ]))
        .unwrap();
        assert!(
            long.problems()
                .iter()
                .any(|p| p.contains("SECURITY_LOG_LINGER_MS must be at most 1000"))
        );
    }

    #[test]
    fn the_connection_and_stream_settings_are_bounded() {
        let good = generate_secret();
        for (name, value) in [
            ("HEADER_READ_TIMEOUT_MS", "99"),
            ("HEADER_READ_TIMEOUT_MS", "60001"),
            ("MAX_CONNECTIONS", "15"),
            ("EVENT_STREAM_RECHECK_MS", "10001"),
        ] {
            let s = Settings::from_env(env(&[("JWT_SECRET", &good), (name, value)])).unwrap();
            assert!(
                s.problems().iter().any(|p| p.starts_with(name)),
                "{name}={value} accepted"
            );
        }
        let defaults = Settings::from_env(env(&[("JWT_SECRET", &good)])).unwrap();
        assert!(defaults.problems().is_empty(), "{:?}", defaults.problems());
    }

    #[test]
    fn the_token_failure_settings_are_bounded() {
        let good = generate_secret();
        let problems = |pairs: &[(&str, &str)]| {
            let mut all = vec![("JWT_SECRET", good.as_str())];
            all.extend_from_slice(pairs);
            Settings::from_env(env(&all)).unwrap().problems()
        };
        assert!(problems(&[]).is_empty());
        assert!(problems(&[("TOKEN_FAILURE_LOG_THRESHOLD", "0")]).is_empty());
        for bad in [
            ("TOKEN_FAILURE_LOG_THRESHOLD", "10001"),
            ("TOKEN_FAILURE_LOG_WINDOW_SECS", "0"),
            ("TOKEN_FAILURE_LOG_WINDOW_SECS", "3601"),
            ("BEARER_FAILURE_LIMIT_PER_IP", "100001"),
        ] {
            assert_eq!(problems(&[bad]).len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn redis_host_variables_build_a_url() {
        let s =
            Settings::from_env(env(&[("REDIS_HOST", "cache"), ("REDIS_PORT", "6380")])).unwrap();
        assert_eq!(s.redis_url.unwrap().expose_secret(), "redis://cache:6380");
    }
}
