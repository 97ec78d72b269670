//! The command line: a run (the default), the baseline server the run starts, the argon2id
//! scaling table, and the database-outage run.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "flux-load",
    version,
    about = "Load harness for flux-auth: throughput, latency and memory against same-run ceilings",
    long_about = "Starts the release flux-auth binary on a free loopback port (RATE_LIMITS=off, \
MAX_CONNECTIONS_PER_IP=0), \
prepares users and tokens, and measures GET /api/auth/me, POST /api/auth/refresh, \
POST /api/auth/login, POST /api/auth/signup, GET /health and (on request) \
POST /api/auth/forgot-password for known and unknown addresses at each concurrency for a fixed \
duration: requests/s, p50/p99/p99.9 latency, errors, and the server's peak RSS and CPU. In the \
same run it measures a bare axum handler that verifies an HS256 token (the HTTP+JWT ceiling) and \
the argon2id hash time (the login ceiling: cores / hash time), the p99 of /me during a login \
flood, idle RSS, start-to-ready time, and the cost of rate limits (on vs off). Prints a table and \
writes <out>/results.md and <out>/results.json.\n\n\
Build first: cargo build --release --workspace\n\
Run:         target/release/flux-load --store both",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve a minimal SMTP sink on 127.0.0.1:<port> that accepts every message, and print how
    /// many arrived each second and the rate between the first and the last (the outbox's
    /// delivery rate when flux-auth's SMTP_HOST/SMTP_PORT point here). Runs until killed.
    SmtpSink {
        #[arg(long, default_value_t = 2525)]
        port: u16,
    },
    /// The time from the N-th credential-stuffing attempt to a webhook receiver (built in, on
    /// loopback) getting the alert: per round, failed logins for N distinct new accounts from a
    /// new address, N the rule's threshold; the stores' rounds alternate; a bare POST to the
    /// receiver is the baseline. Prints min/p50/p90/p99/max in milliseconds.
    AlertLatency {
        /// The flux-auth binary to start.
        #[arg(long, default_value = "target/release/flux-auth")]
        server: PathBuf,
        /// Which user store(s) to measure.
        #[arg(long, value_enum, default_value = "both")]
        store: Stores,
        /// Admin URL of the Postgres server (a database is created and dropped there).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Attacks measured per store.
        #[arg(long, default_value_t = 40)]
        rounds: usize,
        /// ANOMALY_CREDENTIAL_STUFFING_THRESHOLD: the attempts per attack.
        #[arg(long, default_value_t = 10)]
        threshold: u32,
    },
    /// Serve the bare axum + JWT baseline on 127.0.0.1:<port> until killed (the harness starts
    /// this itself, as a separate process shaped like flux-auth).
    BaselineServer {
        #[arg(long)]
        port: u16,
        /// Also serve /me-redis (one MGET per request) against this Redis.
        #[arg(long)]
        redis_url: Option<String>,
        /// Also serve /me-pg (one SELECT of the user per request) against this database.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Measure how argon2id's hash rate scales from one thread to one per core at several memory
    /// costs (the login ceiling, cores / hash time, assumes perfect scaling), and print a table.
    /// The smallest cost stays in each core's own cache: the control.
    HashScaling {
        /// Memory costs in KiB (the service's default is 19456).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "64,1024,4096,8192,12288,19456,32768,65536"
        )]
        memory_kib: Vec<u32>,
        /// Passes over the memory (the service's default is 2).
        #[arg(long, default_value_t = 2)]
        iterations: u32,
        /// Rounds over all memory costs, in alternating order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement (one thread, then all cores, per cost and round).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Server CPU per completed sign-in with two-factor on (POST /api/auth/login answering
    /// requires2FA, then POST /api/2fa/verify with a TOTP code computed from the secret) against a
    /// plain login, in alternating rounds on one server per store: the server process's utime +
    /// stime over each round divided by the sign-ins it completed. Each round signs every
    /// prepared user of its kind in once; a TOTP step is accepted once per user, so two-factor
    /// rounds wait for the clock's next 30 s step when a user has used the current and the next.
    TwoFactorCost {
        /// The flux-auth binary to start.
        #[arg(long, default_value = "target/release/flux-auth")]
        server: PathBuf,
        #[arg(long, value_enum, default_value = "both")]
        store: Stores,
        /// Admin URL of the Postgres server (a database is created and dropped there).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Redis for the service (the temp tokens of second steps live there); unset: none.
        #[arg(long)]
        redis_url: Option<String>,
        /// Users of each kind, each signed in once per round.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Rounds; each is one plain round and one two-factor round, in alternating order.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Sign-ins in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Requests answered before, during and after a database outage on STORAGE=postgres: the
    /// service reaches Postgres through a relay of this process's, which stops listening (as a
    /// stopped Postgres does) for the middle phase. Clients send refreshes, /me and logins
    /// throughout; per phase: answered per second, statuses, p50/p99 of 503s and of successes,
    /// unanswered requests. Writes <out>/outage.json.
    Outage {
        /// The flux-auth binary to start.
        #[arg(long, default_value = "target/release/flux-auth")]
        server: PathBuf,
        /// Admin URL of the Postgres server (a database is created and dropped there).
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Concurrent clients, each one keep-alive connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of each phase: before, during and after the outage.
        #[arg(long, default_value_t = 10.0)]
        phase_secs: f64,
        /// A request unanswered after this many seconds counts as unanswered.
        #[arg(long, default_value_t = 20.0)]
        client_timeout_secs: f64,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Extra environment for the server, KEY=VALUE (repeatable).
        #[arg(long = "server-env", value_parser = parse_env_pair)]
        server_env: Vec<(String, String)>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stores {
    File,
    Postgres,
    Both,
}

impl Stores {
    pub fn kinds(self) -> Vec<crate::server::StoreKind> {
        use crate::server::StoreKind;
        match self {
            Self::File => vec![StoreKind::File],
            Self::Postgres => vec![StoreKind::Postgres],
            Self::Both => vec![StoreKind::File, StoreKind::Postgres],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Scenario {
    Health,
    Me,
    Refresh,
    Login,
    /// Login with an email that has no account (401): the dummy-hash path.
    LoginUnknown,
    Signup,
    /// Forgot-password for an existing account (a reset mail queued after the answer).
    ForgotKnown,
    /// Forgot-password for an address without an account: must cost the same.
    ForgotUnknown,
    /// Both at once on one server: half the connections ask for addresses with an account,
    /// half for addresses without, and each half is reported on its own. What a client probing
    /// an address sees: the two kinds under the same load at the same time.
    ForgotMixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Me => "me",
            Self::Refresh => "refresh",
            Self::Login => "login",
            Self::LoginUnknown => "login-unknown",
            Self::Signup => "signup",
            Self::ForgotKnown => "forgot-known",
            Self::ForgotUnknown => "forgot-unknown",
            Self::ForgotMixed => "forgot-mixed",
        }
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The flux-auth binary to start.
    #[arg(long, default_value = "target/release/flux-auth")]
    pub server: PathBuf,
    /// Which user store to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub store: Stores,
    /// Seconds measured per point (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before each point, not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Concurrencies (connections, each with one request in flight).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub concurrency: Vec<usize>,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "health,me,refresh,login,login-unknown,signup"
    )]
    pub scenarios: Vec<Scenario>,
    /// Skip the mixed run (/me probed at a fixed rate during a login flood at the highest
    /// concurrency).
    #[arg(long)]
    pub no_mixed: bool,
    /// Skip the rate-limit cost run (login with an unknown user and refresh, limits on vs off).
    #[arg(long)]
    pub no_rate_limit_cost: bool,
    /// Seconds per point of the rate-limit cost run.
    #[arg(long, default_value_t = 5)]
    pub rate_limit_duration: u64,
    /// Admin URL of the Postgres server (a database is created and dropped per run).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// Redis for the service (revocations; rate limits in the cost run). Used when it answers.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Run the service without Redis (in-process revocations).
    #[arg(long)]
    pub no_redis: bool,
    /// Where results.md, results.json and the servers' data folders go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Write the servers' logs here (one file per server) instead of discarding them. A long
    /// run logs hundreds of megabytes: one line per request.
    #[arg(long)]
    pub server_logs: Option<PathBuf>,
    /// Read the servers' logs through a pipe and discard them, as pm2 or a container runtime
    /// reads a service's stdout (instead of the servers writing them to /dev/null).
    #[arg(long, conflicts_with = "server_logs")]
    pub server_logs_pipe: bool,
    /// Extra environment for the servers under test, KEY=VALUE (repeatable), e.g. RUST_LOG=warn
    /// to see what the per-request log line costs.
    #[arg(long = "server-env", value_parser = parse_env_pair)]
    pub server_env: Vec<(String, String)>,
    /// Upper bound on requests per worker and point.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
}

pub fn parse_env_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}
