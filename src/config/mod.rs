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
pub use problems::{
    DEFAULT_DATABASE_SCHEMA, DEFAULT_SECURITY_EVENTS_SCHEMA, MIN_SECRET_BYTES,
    database_schema_problem, is_plain_identifier, security_events_schema_problem,
};
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
    /// Address to listen on; 0.0.0.0 is every interface.
    host: IpAddr = IpAddr::from([0, 0, 0, 0]),
    /// Port to listen on; 0 picks a free port.
    port: u16 = 3001,
    /// development | production | test; production requires `JWT_SECRET`.
    node_env: Environment = Environment::Development,
    /// auto (pretty on a terminal, JSON lines otherwise) | json | pretty.
    log_format: LogFormat = LogFormat::Auto,
    /// Log lines that may wait for stdout before new ones are dropped (`telemetry::init`).
    log_buffer_lines: usize = LOG_BUFFER_LINES.default,

    /// Sentry (or a compatible ingestion endpoint) that internal errors, ERROR logs and panics
    /// are reported to, `https://<key>@<host>/<project>`; unset: nothing is reported. The key is a
    /// secret.
    sentry_dsn: Option<SecretString> = None,
    /// The environment events are filed under; unset: `NODE_ENV`.
    sentry_environment: Option<String> = None,
    /// The release events are filed under; unset: `flux-auth@<version>`.
    sentry_release: Option<String> = None,
    /// The share of requests traced as Sentry transactions (0..=1; 0: none).
    sentry_traces_sample_rate: f64 = 0.0,
    /// Serve `GET /api/debug/panic`, which panics, to see a panic reach error tracking end to
    /// end; refused when `NODE_ENV=production`.
    debug_panic_route: bool = false,

    /// Signing key of the access tokens, at least 32 random bytes.
    jwt_secret: Option<SecretString> = None,
    /// Accepted for verification only, so rotating `JWT_SECRET` logs nobody out.
    jwt_secret_previous: Option<SecretString> = None,
    /// AES-256 key (32 bytes, base64) that two-factor secrets are encrypted under; unset: no
    /// two-factor setup (503).
    totp_encryption_key: Option<SecretString> = None,
    /// The previous `TOTP_ENCRYPTION_KEY` during a rotation: still decrypts, never encrypts.
    totp_encryption_key_previous: Option<SecretString> = None,
    /// `iss` of the access tokens issued and accepted.
    jwt_issuer: String = "flux-auth".into(),
    /// `aud` of the access tokens issued and accepted.
    jwt_audience: String = "fluxstudio".into(),
    /// Access-token lifetime (60..3600).
    access_token_ttl_secs: u64 = 900,
    /// A session ends after this long unused.
    refresh_idle_ttl_secs: u64 = 7 * 24 * 3600,
    /// A session ends this long after sign-in, however much it is used.
    refresh_absolute_ttl_secs: u64 = 30 * 24 * 3600,
    /// Concurrent refreshes with one token within this window get the same successor.
    refresh_reuse_grace_secs: u64 = 10,
    /// Live sessions per user; the oldest are revoked beyond it.
    max_sessions_per_user: u32 = 10,
    /// What a refresh from another device fingerprint does.
    fingerprint_policy: FingerprintPolicy = FingerprintPolicy::Log,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<IpNet> = Vec::new(),

    /// postgres | file; unset: postgres when `DATABASE_URL` is set.
    storage: Option<StorageKind> = None,
    /// Postgres for users and sessions (and, by default, security events).
    database_url: Option<SecretString> = None,
    /// The Postgres pool's size.
    database_max_connections: u32 = 10,
    /// How long to wait for a Postgres connection.
    database_connect_timeout_ms: u64 = 3000,
    /// The longest one statement of the user store may run (lock waits included) before Postgres
    /// cancels it; below `request_timeout_ms`, so no statement outlives its request.
    database_statement_timeout_ms: u64 = 5000,
    /// FluxStudio's database, which `import-fluxstudio` reads; unset: `DATABASE_URL`.
    fluxstudio_database_url: Option<SecretString> = None,
    /// Until this RFC 3339 time, FluxStudio's access tokens (HS256 under `JWT_SECRET`, not
    /// revoked in FluxStudio's Redis) are accepted, so nobody is signed out at the switch; at
    /// most 15 minutes after the start. Unset: never.
    legacy_access_tokens_until: Option<String> = None,
    /// The Postgres schema of flux-auth's tables (a plain identifier, never `public`): every
    /// connection's `search_path`, so the tables of an application sharing the database are
    /// never touched.
    database_schema: String = DEFAULT_DATABASE_SCHEMA.into(),
    /// The Postgres schema of `security_events`, where other tools read it.
    security_events_schema: String = DEFAULT_SECURITY_EVENTS_SCHEMA.into(),
    /// Apply the embedded migrations at start.
    run_migrations: bool = true,
    /// Users kept in memory by the Postgres store (0: none), each for at most `user_cache_ttl_secs`;
    /// dropped as soon as Postgres announces a change to their row.
    user_cache_users: u64 = 10_000,
    /// The longest a user is served from memory.
    user_cache_ttl_secs: u64 = 60,
    /// Folder of the JSON-file store, the development secret and, by default, the spool.
    data_dir: PathBuf = PathBuf::from("data"),

    /// A database of its own for security events; unset: `DATABASE_URL`.
    security_log_database_url: Option<SecretString> = None,
    /// Folder of the JSON-lines spool; unset: `<data_dir>/security-events`.
    security_log_dir: Option<PathBuf> = None,
    /// Whether a request waits until its event is durable.
    security_log_durability: Durability = Durability::Async,
    /// Events held in memory before they spill straight to the spool.
    security_log_queue_capacity: usize = 8192,
    /// Events per database write.
    security_log_batch_size: usize = 500,
    /// How long the writer waits to fill a batch.
    // Short on purpose: each batch's insert is a burst of database CPU, and with the
    // database on the request's cores a 5 ms linger doubled the p99 at 2,000 events/s
    // where 1 ms added a third (BENCHMARKS.md, "Security log").
    security_log_linger_ms: u64 = 1,
    /// Spool size that raises an alarm; events are still written past it.
    security_log_spool_max_bytes: u64 = 1 << 30,
    /// Days security events are kept, by severity (info and low share the first).
    security_log_retention_days_info: u32 = 90,
    /// Days warning events are kept.
    security_log_retention_days_warning: u32 = 180,
    /// Days high-severity events are kept.
    security_log_retention_days_high: u32 = 365,
    /// Days critical events are kept.
    security_log_retention_days_critical: u32 = 365,
    /// How often expired sessions and old events are deleted.
    cleanup_interval_secs: u64 = 3600,
    /// Refused bearer tokens from one address recorded one by one per window; past it they are
    /// counted into one summary event per window (0: every one recorded).
    token_failure_log_threshold: u32 = 20,
    /// The window of `token_failure_log_threshold`.
    token_failure_log_window_secs: u64 = 60,

    /// Redis for state shared by every instance; unset: in-process state.
    redis_url: Option<SecretString> = None,
    /// Prefix of every Redis key this service writes.
    redis_key_prefix: String = "flux-auth:".into(),
    /// How long one Redis call may take before the request uses in-process state.
    redis_timeout_ms: u64 = 250,
    /// `off` disables every rate limit and lockout (load tests, trusted networks); logged loudly.
    rate_limits: Switch = Switch::On,
    /// Logins per minute from one address.
    login_limit_per_ip: u32 = 100,
    /// Logins per minute for one address and account.
    login_limit_per_account: u32 = 10,
    /// Signups per hour from one address.
    signup_limit_per_ip: u32 = 5,
    /// Refreshes per minute from one address.
    refresh_limit_per_ip: u32 = 600,
    /// Refreshes per minute for one session.
    refresh_limit_per_session: u32 = 60,
    /// Bearer tokens from one address per minute refused before their signature verified, before
    /// the next such refusal is a 429 (0: off). Tokens the service signed are never counted.
    bearer_failure_limit_per_ip: u32 = 600,
    /// Consecutive failed logins after which an account is locked.
    lockout_threshold: u32 = 5,
    /// The first lock's length, doubling with each further failure.
    lockout_base_secs: u64 = 30,
    /// The longest lock.
    lockout_max_secs: u64 = 900,
    /// Failed logins from one address across accounts before it is blocked.
    ip_failure_threshold: u32 = 50,
    /// How long such an address is blocked.
    ip_block_secs: u64 = 900,

    /// `off` turns every anomaly rule off (docs/OPERATIONS.md, "Anomaly rules").
    anomaly_rules: Switch = Switch::On,
    /// `credential_stuffing_suspected`: distinct accounts one address fails to sign in to within
    /// the window (0: rule off).
    anomaly_credential_stuffing_threshold: u32 = 10,
    /// The window of `anomaly_credential_stuffing_threshold`.
    anomaly_credential_stuffing_window_secs: u64 = 600,
    /// How long the address is then blocked (its logins answered 429, liftable in the
    /// dashboard); 0: the rule only records.
    anomaly_credential_stuffing_block_secs: u64 = 3600,
    /// `account_targeted`: distinct addresses failing to sign in to one account within the window
    /// (0: rule off).
    anomaly_account_targeted_threshold: u32 = 5,
    /// The window of `anomaly_account_targeted_threshold`.
    anomaly_account_targeted_window_secs: u64 = 3600,
    /// `login_failure_spike`: failed logins per window, service-wide, that fire the rule whatever
    /// the trailing average (0: rule off).
    anomaly_login_failure_spike_floor: u32 = 100,
    /// ... and how many times the trailing average of the last 60 windows they must exceed.
    anomaly_login_failure_spike_factor: u32 = 5,
    /// The window of `login_failure_spike` (its trailing average covers 60 of them).
    anomaly_login_failure_spike_window_secs: u64 = 60,
    /// `signup_burst`: signup attempts from one address within the window (0: rule off).
    anomaly_signup_burst_threshold: u32 = 50,
    /// The window of `anomaly_signup_burst_threshold`.
    anomaly_signup_burst_window_secs: u64 = 60,
    /// How long the address's signups are then refused (429, liftable in the dashboard); 0: the
    /// rule only records.
    anomaly_signup_burst_block_secs: u64 = 1800,
    /// `token_theft_suspected`: sessions whose rotated refresh token came back within the window,
    /// service-wide (0: rule off).
    anomaly_token_theft_threshold: u32 = 3,
    /// The window of `anomaly_token_theft_threshold`.
    anomaly_token_theft_window_secs: u64 = 600,
    /// `new_device_login`: a sign-in from a device its user never signed in from.
    anomaly_new_device_login: Switch = Switch::On,
    /// Devices remembered per user for `new_device_login` (the least recently seen go).
    anomaly_known_devices_per_user: usize = 20,
    /// Mail the user a notice (device, address, time) when `new_device_login` fires for them.
    new_device_notice: Switch = Switch::On,

    /// OAuth client ids whose ID tokens are accepted; empty: no Google sign-in.
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
    /// Services ids (`aud`) whose Sign in with Apple identity tokens are accepted; empty: no Apple
    /// sign-in (501).
    apple_client_id: Vec<String> = Vec::new(),
    /// Another issuer in Apple's place (discovery at `{issuer}/.well-known/openid-configuration`),
    /// for tests against a local provider.
    apple_issuer_url: Option<String> = None,
    /// Exact origins allowed by CORS.
    cors_origins: Vec<String> = Vec::new(),
    /// Serve `/metrics` on this address instead of the API port (e.g. 127.0.0.1:9464).
    metrics_addr: Option<std::net::SocketAddr> = None,
    /// Send `Strict-Transport-Security` (only behind HTTPS).
    hsts: bool = false,
    /// Largest request body accepted on the API (413 above it).
    body_limit_bytes: usize = 16 * 1024,
    /// A request that takes longer is answered 408.
    request_timeout_ms: u64 = 15_000,
    /// How long in-flight requests may take to finish at shutdown.
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

    /// SMTP server for mail; unset (and no `SENDGRID_API_KEY`): development writes `.eml` files
    /// under `<data_dir>/outbox/`, production keeps messages queued.
    smtp_host: Option<String> = None,
    /// SMTP port (587: STARTTLS; 465 with `SMTP_SECURE=true`).
    smtp_port: u16 = 587,
    /// true: implicit TLS; false: STARTTLS, required unless the host is loopback.
    smtp_secure: bool = false,
    /// SMTP user name.
    smtp_user: Option<String> = None,
    /// SMTP password (`SMTP_PASSWORD` is read too).
    smtp_pass: Option<SecretString> = None,
    /// SMTP password, the other name FluxStudio uses.
    smtp_password: Option<SecretString> = None,
    /// SendGrid API key: mail goes through SendGrid's SMTP relay (smtp.sendgrid.net:587, user apikey).
    sendgrid_api_key: Option<SecretString> = None,
    /// Sender address (`EMAIL_FROM` is read too); default noreply@fluxstudio.art.
    smtp_from: Option<String> = None,
    /// Sender address, the other name FluxStudio uses.
    email_from: Option<String> = None,
    /// Sender display name; default FluxStudio.
    smtp_from_name: Option<String> = None,
    /// Password logins of accounts whose email is unverified are refused (403) until verified.
    require_email_verification: bool = false,
    /// The first retry of an undelivered message waits this long, doubling each time (at most 1 h).
    mail_retry_base_ms: u64 = 5_000,
    /// A message still undelivered this long after it was queued is given up (dead).
    mail_retry_for_secs: u64 = 24 * 3600,
    /// How often the mail sender looks for due messages when nothing woke it.
    mail_poll_ms: u64 = 1_000,
    /// Forgot-password and resend-verification requests waiting for their account lookup and
    /// mail, answered already (16..100000). Over it a request is answered alike and dropped
    /// (`flux_auth_mail_requests_dropped_total`): memory stays bounded under a flood.
    mail_request_queue: usize = 1_024,

    /// Webhooks that alerts are posted to, comma-separated (at most 10): `https://…`, a Slack
    /// incoming webhook (`https://hooks.slack.com/…`, sent Slack's shape), or any URL prefixed
    /// `slack+` to force Slack's shape. A secret: Slack's URLs are credentials.
    alert_webhook_urls: Option<SecretString> = None,
    /// HMAC-SHA256 key of `X-Flux-Signature` (at least 32 random bytes); required with
    /// `ALERT_WEBHOOK_URLS`.
    alert_webhook_secret: Option<SecretString> = None,
    /// Events at or above this severity are alerted (info | low | warning | high | critical);
    /// every anomaly rule's firing is alerted whatever its severity.
    alert_min_severity: String = "high".into(),
    /// An event that is not a rule's firing alerts once per type and address (or user) per this
    /// window; a rule's firing, once per rule and key per the rule's window.
    alert_dedup_window_secs: u64 = 600,
    /// Alerts this instance queues per minute at most; the rest are counted and logged, not sent.
    alert_max_per_minute: u32 = 60,
    /// How long one webhook request may take.
    alert_timeout_ms: u64 = 5_000,
    /// The first retry of an undelivered alert waits this long, doubling each time (at most 1 h).
    alert_retry_base_ms: u64 = 2_000,
    /// An alert still undelivered this long after it was queued is given up (dead).
    alert_retry_for_secs: u64 = 6 * 3600,
    /// How often the alert sender looks for due alerts when nothing woke it.
    alert_poll_ms: u64 = 1_000,
    /// This service's public address (`https://auth.example.com`): alerts link to its dashboard
    /// (`/admin`); unset: no link.
    public_url: Option<String> = None,

    /// Shortest password accepted, in code points (8..64).
    password_min_length: usize = 8,
    /// argon2id memory cost.
    argon2_memory_kib: u32 = 19_456,
    /// argon2id iterations.
    argon2_iterations: u32 = 2,
    /// argon2id lanes.
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
