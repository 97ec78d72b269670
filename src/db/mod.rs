//! The Postgres database handle that the user store and the security log both use: a pool that
//! connects lazily, the metrics its acquires are timed into, the tests of its connections, the
//! circuit of the pool that serves requests, and the embedded migrations.
//!
//! The pool connects lazily: if the database is down at start the service still starts, and a
//! background task keeps trying to connect and migrate ([`migrations`]); once that succeeds the
//! database is ready and stays so, reconnecting as the pool does.
//!
//! Every query takes its connection through [`Database::acquire`], which times the wait for the
//! pool (sqlx does not report it) into `db_pool_acquire_wait_seconds{pool}`.
//!
//! The pool that serves requests does not ping every connection before handing it out (sqlx's
//! default costs a round trip per acquire): see [`ConnectionChecks::WhenSuspect`]. It also has a
//! circuit ([`circuit::Circuit`]): while a probe finds the database unreachable, its users answer
//! at once instead of each waiting out the pool's acquire timeout. Each of its connections is
//! given `statement_timeout` (`DATABASE_STATEMENT_TIMEOUT_MS`, below the request timeout) and, on
//! Postgres 14 and later, `client_connection_check_interval` by a `SET` when it opens (not as
//! startup parameters, which a pooler such as PgBouncer refuses).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use secrecy::ExposeSecret;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

use crate::metrics::PoolMetrics;

mod checks;
pub mod circuit;
pub mod legacy_install;
pub mod migrations;
pub mod schemas;

pub use checks::{ConnectionChecks, IDLE_CHECK_AFTER, is_connection_error};
pub use migrations::{MIGRATOR, Schema};
pub use schemas::Schemas;

use checks::ConnectionHealth;
use circuit::Circuit;

/// A pool that connects on first use, a flag that turns true once migrations have run, and the
/// metrics its acquires are timed into.
#[derive(Clone)]
pub struct Database {
    /// For levels (size, idle) and tools. Queries go through [`Database::acquire`] instead, so
    /// their wait is measured.
    pub pool: PgPool,
    ready: Arc<AtomicBool>,
    metrics: PoolMetrics,
    health: Arc<ConnectionHealth>,
    /// The user store's pool only: see [`circuit`].
    circuit: Option<Arc<Circuit>>,
    /// flux-auth's schema, which every connection's `search_path` names, and the security log's.
    schemas: Schemas,
}

/// How often Postgres (14 and later) checks, while running a statement, that the client is still
/// connected: a request that gives up closes its connection (the user store's held writes), and
/// its statement is then ended and rolled back within this long instead of running on to commit.
pub const CLIENT_CHECK_INTERVAL: &str = "250ms";

/// What the user store's pool adds to [`Database::connect_lazy_checked`].
pub struct RequestPool {
    /// `statement_timeout` of every connection.
    pub statement_timeout: Duration,
}

impl Database {
    /// A pool whose acquire wait nobody scrapes (CLI commands, tools); the service uses
    /// [`Database::connect_lazy_observed`].
    pub fn connect_lazy(
        url: &secrecy::SecretString,
        schemas: &Schemas,
        max_connections: u32,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_observed(
            url,
            schemas,
            max_connections,
            timeout,
            PoolMetrics::unregistered(),
        )
    }

    /// A pool that observes every acquire into `metrics` (from [`crate::metrics::Metrics::pool`])
    /// and tests every connection before handing it out.
    pub fn connect_lazy_observed(
        url: &secrecy::SecretString,
        schemas: &Schemas,
        max_connections: u32,
        timeout: Duration,
        metrics: PoolMetrics,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_checked(
            url,
            schemas,
            max_connections,
            timeout,
            metrics,
            ConnectionChecks::EveryAcquire,
        )
    }

    /// [`Database::connect_lazy_observed`] with the given connection tests. With
    /// [`ConnectionChecks::WhenSuspect`] the users must report failures
    /// ([`Database::note_failure`]) and retry what is safe to retry.
    pub fn connect_lazy_checked(
        url: &secrecy::SecretString,
        schemas: &Schemas,
        max_connections: u32,
        timeout: Duration,
        metrics: PoolMetrics,
        checks: ConnectionChecks,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_with(
            url,
            schemas,
            max_connections,
            timeout,
            metrics,
            checks,
            None,
        )
    }

    /// The pool that serves requests (the user store's): [`ConnectionChecks::WhenSuspect`], a
    /// statement timeout on every connection, and a [`Circuit`].
    pub fn connect_lazy_for_requests(
        url: &secrecy::SecretString,
        schemas: &Schemas,
        max_connections: u32,
        timeout: Duration,
        metrics: PoolMetrics,
        requests: RequestPool,
    ) -> anyhow::Result<Self> {
        Self::connect_lazy_with(
            url,
            schemas,
            max_connections,
            timeout,
            metrics,
            ConnectionChecks::WhenSuspect,
            Some(requests),
        )
    }

    fn connect_lazy_with(
        url: &secrecy::SecretString,
        schemas: &Schemas,
        max_connections: u32,
        timeout: Duration,
        metrics: PoolMetrics,
        checks: ConnectionChecks,
        requests: Option<RequestPool>,
    ) -> anyhow::Result<Self> {
        // Only startup parameters a pooler tracks (PgBouncer refuses any other, `options` and
        // `extra_float_digits` among them): settings are made with `SET` once connected. The
        // service reads no float as text, so the server's default float format is fine.
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?
            .application_name("flux-auth")
            .extra_float_digits(None);
        let health = Arc::new(ConnectionHealth::new());
        let mut pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(timeout);
        if checks == ConnectionChecks::WhenSuspect {
            let health = health.clone();
            pool = pool
                .test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    let suspect = health.suspect(&meta).then(|| health.clone());
                    Box::pin(async move {
                        if let Some(health) = suspect {
                            // An error makes sqlx close this connection and try the next one (or
                            // open a new one), within the acquire timeout.
                            if let Err(e) = conn.ping().await {
                                health.note_failure();
                                return Err(e);
                            }
                        }
                        Ok(true)
                    })
                });
        }
        let set_search_path = schemas.set_search_path();
        let statement_timeout_ms = requests.as_ref().map(|r| r.statement_timeout.as_millis());
        pool = pool.after_connect(move |conn, _meta| {
            // One round trip for all. Postgres before 14 does not know the check interval: there
            // the statement timeout alone bounds a statement whose request gave up.
            let mut set = set_search_path.clone();
            if let Some(ms) = statement_timeout_ms {
                set.push_str(&format!("; SET statement_timeout = '{ms}ms'"));
                if conn.server_version_num().is_some_and(|v| v >= 140_000) {
                    set.push_str(&format!(
                        "; SET client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'"
                    ));
                }
            }
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        });
        let pool = pool.connect_lazy_with(options);
        let circuit = requests.map(|_| {
            let health = health.clone();
            Arc::new(Circuit::new(
                pool.clone(),
                Box::new(move || health.note_failure()),
            ))
        });
        Ok(Self {
            pool,
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            health,
            circuit,
            schemas: schemas.clone(),
        })
    }

    /// A separate pool to the same database, whose connections get the same `search_path` and
    /// nothing else (no statement timeout, no checks): for a connection held for good, such as
    /// the user cache's `LISTEN`.
    pub fn companion_pool(&self, max_connections: u32, acquire_timeout: Duration) -> PgPool {
        let set_search_path = self.schemas.set_search_path();
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _meta| {
                let set = set_search_path.clone();
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with((*self.pool.connect_options()).clone())
    }

    /// flux-auth's schema and the security log's.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    /// The circuit of the pool that serves requests; `None` for other pools.
    pub fn circuit(&self) -> Option<&Arc<Circuit>> {
        self.circuit.as_ref()
    }

    /// `true` while the database is reachable as far as the store knows (its circuit is closed),
    /// changing as soon as the store's probe finds it gone or back: for tasks that wait for the
    /// database to return. `None` for pools without a circuit.
    pub fn reachable(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.circuit.as_ref().map(|c| c.reachable())
    }

    /// Whether the circuit is open: the database is known to be unreachable.
    pub fn is_unreachable(&self) -> bool {
        self.circuit.as_ref().is_some_and(|c| c.is_open())
    }

    /// Whether a store call must be answered `Unavailable` at once because the circuit is open;
    /// counted as such (`db_users_failed_fast_total`).
    pub fn fails_fast(&self) -> bool {
        self.circuit.as_ref().is_some_and(|c| c.fails_fast())
    }

    /// Ends the circuit's probe, if one runs, and starts none after (shutdown).
    pub fn stop_probing(&self) {
        if let Some(circuit) = &self.circuit {
            circuit.stop();
        }
    }

    /// Reports a failed query: after a connection-level failure every connection opened before
    /// it is tested before its next use (with [`ConnectionChecks::WhenSuspect`]).
    pub fn note_failure(&self, e: &sqlx::Error) {
        if is_connection_error(e) {
            self.health.note_failure();
            if let Some(circuit) = &self.circuit {
                circuit.suspect();
            }
        }
    }

    /// A connection from the pool, timing the wait: seconds into `db_pool_acquire_wait_seconds`
    /// when one is handed over (idle, or newly opened), a count in `db_pool_acquire_errors` when
    /// none is (pool timeout, pool closed, connect failed, or the wait abandoned by its caller).
    /// The error is sqlx's, for the caller to map.
    ///
    /// With a circuit: an acquire that waits longer than [`circuit::SUSPECT_AFTER`] or fails
    /// starts the probe, and one still waiting when the circuit opens gives up at once
    /// (`PoolTimedOut`).
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let started = Instant::now();
        let attempt = Attempt(Some(&self.metrics.errors));
        let conn = match &self.circuit {
            None => self.pool.acquire().await?,
            Some(circuit) => {
                let acquire = self.pool.acquire();
                let opened = circuit.opened();
                let suspect_after = tokio::time::sleep(circuit::SUSPECT_AFTER);
                tokio::pin!(acquire, opened, suspect_after);
                let mut suspected = false;
                let acquired = loop {
                    tokio::select! {
                        biased;
                        acquired = &mut acquire => break acquired,
                        () = &mut opened => break Err(sqlx::Error::PoolTimedOut),
                        () = &mut suspect_after, if !suspected => {
                            suspected = true;
                            circuit.suspect();
                        }
                    }
                };
                if acquired.is_err() {
                    circuit.suspect();
                }
                acquired?
            }
        };
        attempt.succeeded();
        self.metrics
            .wait_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(conn)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether the database answers `SELECT 1` on a connection of the pool.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }
}

/// Counts an acquire as failed unless it succeeded, so a wait dropped midway (the security-log
/// writer's 2 s batch timeout is shorter than the pool's, a client hanging up) is not lost.
struct Attempt<'a>(Option<&'a Counter>);

impl Attempt<'_> {
    fn succeeded(mut self) {
        self.0 = None;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(errors) = self.0 {
            errors.inc();
        }
    }
}
