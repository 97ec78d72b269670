//! Whether the user store's database can be reached, so that requests fail fast while it cannot.
//!
//! Requests raise a suspicion (a connection-level failure, an acquire that fails or waits longer
//! than [`SUSPECT_AFTER`]); a suspicion starts the probe, if none runs: one task that asks whether
//! the database answers. A probe that finds it unreachable opens the circuit: from then on store
//! calls answer `Unavailable` (503 with Retry-After) at once, and the acquires already waiting
//! give up. The probe then tries again with a back-off (from [`FIRST_RETRY`] doubling to
//! [`LAST_RETRY`]), still one at a time, and the first that finds the database answering closes
//! the circuit. The probe ends when the circuit closes, or at shutdown ([`Circuit::stop`]).
//!
//! "Unreachable" means that nothing answers, not that something answered with an error. A probe
//! (see [`Circuit::probe`]):
//! 1. runs `SELECT 1` on an idle connection of the pool, if there is one: if it answers, the
//!    database does, whatever a new connection would meet;
//! 2. opens a connection of its own (not through the pool, whose acquire retries a refused
//!    connection for its whole timeout) and runs `SELECT 1`, within [`PROBE_TIMEOUT`]. The server
//!    answering the connection with an error of its own (too many connections, a failed
//!    authentication, an unknown database) is an answer: the database is reachable, the pool's
//!    connections keep serving, and a busy pool on a Postgres at `max_connections` is not an
//!    outage. Only a connection exception (SQLSTATE class 08, as a pooler sends when it cannot
//!    reach Postgres) or a server shutting down or starting (57P) counts as no answer;
//! 3. while that connection is being tried, and for what is left of [`PROBE_TIMEOUT`] if it fails
//!    other than by being refused (a slow handshake, a pooler out of client slots), it also
//!    waits for a connection from the pool, in the pool's queue like any request: one that comes
//!    back from a request and answers `SELECT 1` also settles it, the database is reachable. A
//!    connection refused outright (nothing listens) settles it the other way at once.
//!
//! Statement errors (a constraint, a statement timeout behind a lock) raise no suspicion.
//!
//! Others learn of the state through [`Circuit::reachable`], a `watch` that is `true` while the
//! circuit is closed: a task that waits for the database (the security-event writer) can wake at
//! the moment the probe finds it back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An acquire that has waited this long makes the probe run (it may just be a busy pool).
pub const SUSPECT_AFTER: Duration = Duration::from_millis(250);
/// How long a probe's own connection may take to connect and answer; a pooled connection has as
/// long to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The first wait between failed probes; it doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_millis(500);
/// How long a probe waits before asking the pool again for a connection after the pool failed
/// to hand one over.
const RETURNED_POLL: Duration = Duration::from_millis(10);
/// A new connection the server refuses with an error is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A connection (pooled or new) answered `SELECT 1`.
    Answered,
    /// The server answered the probe's new connection with an error of its own: reachable.
    Refused,
    /// Nothing answered.
    Unreachable,
}

impl ProbeOutcome {
    pub const ALL: [Self; 3] = [Self::Answered, Self::Refused, Self::Unreachable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A probe's finding, with what a log line needs.
enum Probe {
    Answered,
    Refused(sqlx::Error),
    Unreachable(anyhow::Error),
}

pub struct Circuit {
    /// True while open (the database cannot be reached); read on every store call.
    open: AtomicBool,
    /// True while a probe task runs.
    probing: AtomicBool,
    /// `true` while closed; see [`Circuit::reachable`].
    reachable: watch::Sender<bool>,
    /// How many times it opened.
    opened: AtomicU64,
    /// Store calls answered `Unavailable` at once because it was open.
    failed_fast: AtomicU64,
    /// Probes run, by [`ProbeOutcome`] (in the order of [`ProbeOutcome::ALL`]).
    probes: [AtomicU64; 3],
    /// The pool whose database it watches: its idle connections are probed first, and its
    /// connect options serve the probe's own connection.
    pool: PgPool,
    /// Called when the circuit opens (the pool's connections are suspect from then on).
    on_open: Box<dyn Fn() + Send + Sync>,
    /// Cancelled at shutdown: the probe ends and none starts again.
    stop: CancellationToken,
    /// When a refused connection was last logged.
    refusal_logged: Mutex<Option<Instant>>,
}

impl Circuit {
    pub fn new(pool: PgPool, on_open: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            reachable: watch::Sender::new(true),
            opened: AtomicU64::new(0),
            failed_fast: AtomicU64::new(0),
            probes: Default::default(),
            pool,
            on_open,
            stop: CancellationToken::new(),
            refusal_logged: Mutex::new(None),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a store call must be answered `Unavailable` at once (the circuit is open); each
    /// such call is counted ([`Circuit::times_failed_fast`]).
    pub fn fails_fast(&self) -> bool {
        let open = self.is_open();
        if open {
            self.failed_fast.fetch_add(1, Ordering::Relaxed);
        }
        open
    }

    /// How many times the circuit has opened (metrics).
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many store calls were answered `Unavailable` at once because it was open (metrics).
    pub fn times_failed_fast(&self) -> u64 {
        self.failed_fast.load(Ordering::Relaxed)
    }

    /// How many probes found `outcome` (metrics).
    pub fn probes(&self, outcome: ProbeOutcome) -> u64 {
        self.probes[outcome as usize].load(Ordering::Relaxed)
    }

    /// Whether a probe task runs now.
    pub fn is_probing(&self) -> bool {
        self.probing.load(Ordering::Acquire)
    }

    /// `true` while the database is reachable as far as the store knows; changes when the
    /// circuit opens and when the probe finds the database back.
    pub fn reachable(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// Resolves once the circuit is open (at once if it is).
    pub async fn opened(&self) {
        let mut reachable = self.reachable.subscribe();
        // The sender lives as long as `self`, so this cannot fail while borrowed.
        let _ = reachable.wait_for(|up| !up).await;
    }

    /// Ends the probe, if one runs, and starts none after (shutdown). The circuit stays as it is.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Something suggests the database may be gone: start the probe unless one runs.
    pub fn suspect(self: &Arc<Self>) {
        if self.stop.is_cancelled() || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let circuit = self.clone();
        tokio::spawn(async move { circuit.probe_until_reachable().await });
    }

    async fn probe_until_reachable(self: Arc<Self>) {
        let mut wait = FIRST_RETRY;
        loop {
            let probe = tokio::select! {
                () = self.stop.cancelled() => break,
                probe = self.probe() => probe,
            };
            match probe {
                Probe::Answered => {
                    self.count(ProbeOutcome::Answered);
                    self.close();
                    break;
                }
                Probe::Refused(e) => {
                    self.count(ProbeOutcome::Refused);
                    self.log_refusal(&e);
                    self.close();
                    break;
                }
                Probe::Unreachable(e) => {
                    self.count(ProbeOutcome::Unreachable);
                    self.open(&e);
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(LAST_RETRY);
        }
        self.probing.store(false, Ordering::Release);
    }

    fn count(&self, outcome: ProbeOutcome) {
        self.probes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the database answers: an idle pooled connection first, then a connection of its
    /// own while watching for a pooled one coming back (see the module's documentation).
    async fn probe(&self) -> Probe {
        if self.idle_connection_answers().await {
            return Probe::Answered;
        }
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        let returned = async {
            loop {
                if self.pooled_connection_answers().await {
                    return;
                }
                tokio::time::sleep(RETURNED_POLL).await;
            }
        };
        tokio::pin!(returned);
        let own = tokio::time::timeout_at(deadline, self.own_connection_answers());
        let failure = tokio::select! {
            () = &mut returned => return Probe::Answered,
            result = own => match result {
                Ok(Ok(())) => return Probe::Answered,
                Ok(Err(e)) if is_refusal(&e) => return Probe::Refused(e),
                Ok(Err(e)) if nothing_listens(&e) => return Probe::Unreachable(e.into()),
                Ok(Err(e)) => anyhow::Error::new(e),
                Err(_) => anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"),
            },
        };
        match tokio::time::timeout_at(deadline, returned).await {
            Ok(()) => Probe::Answered,
            Err(_) => Probe::Unreachable(failure),
        }
    }

    /// Whether an idle connection of the pool, if there is one, answers `SELECT 1` within
    /// [`PROBE_TIMEOUT`]; one that does not is closed.
    async fn idle_connection_answers(&self) -> bool {
        let Some(mut conn) = self.pool.try_acquire() else {
            return false;
        };
        let answer =
            tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn)).await;
        let answered = matches!(answer, Ok(Ok(_)));
        if !answered {
            conn.close_on_drop();
        }
        answered
    }

    /// Whether a connection of the pool answers `SELECT 1`, waiting in the pool's queue for one
    /// like any request (a busy pool hands one over as soon as a request gives it back; the
    /// caller bounds the wait). A connection that fails is closed.
    async fn pooled_connection_answers(&self) -> bool {
        let Ok(mut conn) = self.pool.acquire().await else {
            return false;
        };
        let answered = sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok();
        if !answered {
            conn.close_on_drop();
        }
        answered
    }

    /// A connection of its own, one round trip, closed again.
    async fn own_connection_answers(&self) -> Result<(), sqlx::Error> {
        let options = self.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    }

    fn log_refusal(&self, error: &sqlx::Error) {
        let mut logged = self
            .refusal_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
        tracing::warn!(
            error = %error,
            "the user database refused a new connection (it answers, so requests go on; at most one such line a minute)"
        );
    }

    fn open(&self, error: &anyhow::Error) {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        (self.on_open)();
        self.reachable.send_replace(false);
        tracing::warn!(error = %error, "user database unreachable: answering 503 at once until a probe reaches it");
    }

    fn close(&self) {
        if !self.open.swap(false, Ordering::AcqRel) {
            return;
        }
        self.reachable.send_replace(true);
        tracing::info!("user database reachable again");
    }

    /// Opens the circuit as a failed probe would (unit tests of its users).
    #[cfg(test)]
    pub fn force_open(&self) {
        self.open(&anyhow::anyhow!("forced open"));
    }
}

/// The server answered the connection with an error of its own: it is there, and says why it
/// will not take this connection (too many connections, authentication, an unknown database).
/// A connection exception (08, what a pooler answers when it cannot reach Postgres) and a server
/// shutting down, restarting or starting (57P) are not such an answer.
fn is_refusal(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Nothing accepts connections at the address (no server listens there).
fn nothing_listens(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
    ))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;

    /// A circuit on a pool whose server refuses every connection (nothing listens on port 1).
    fn unreachable_circuit() -> Arc<Circuit> {
        let options = PgConnectOptions::from_str("postgres://nobody@127.0.0.1:1/none").unwrap();
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy_with(options);
        Arc::new(Circuit::new(pool, Box::new(|| {})))
    }

    #[tokio::test]
    async fn the_probe_ends_when_stopped_while_the_database_is_unreachable() {
        let circuit = unreachable_circuit();
        circuit.suspect();
        circuit.opened().await;
        assert!(circuit.is_probing(), "the probe retries while it is open");
        circuit.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while circuit.is_probing() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe went on after stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        circuit.suspect();
        assert!(!circuit.is_probing(), "no probe starts after stop");
        assert!(circuit.is_open(), "stopping leaves the circuit as it was");
        assert!(circuit.fails_fast());
        assert_eq!(circuit.times_failed_fast(), 1);
        assert!(circuit.probes(ProbeOutcome::Unreachable) >= 1);
    }
}
