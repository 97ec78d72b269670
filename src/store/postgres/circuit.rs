//! Whether the user store's database can be reached, so that requests fail fast while it cannot.
//!
//! Requests raise a suspicion (a connection-level failure, an acquire that fails or waits longer
//! than [`SUSPECT_AFTER`]); a suspicion starts the probe, if none runs: one task that opens a
//! connection of its own (not from the pool, whose acquire retries a refused connection for its
//! whole timeout) and runs `SELECT 1`, bounded by [`PROBE_TIMEOUT`]. A probe that fails opens the
//! circuit: from then on store calls answer `Unavailable` (503 with Retry-After) at once, and the
//! acquires already waiting give up. The probe then tries again with a back-off (from
//! [`FIRST_RETRY`] doubling to [`LAST_RETRY`]), still one at a time, and the first that answers
//! closes the circuit. A probe that answers at once leaves it closed: a busy pool (every
//! connection in use) or one connection broken by a restart is not an outage.
//!
//! Statement errors (a constraint, a statement timeout behind a lock) raise no suspicion.
//!
//! Others learn of the state through [`Circuit::reachable`], a `watch` that is `true` while the
//! circuit is closed: a task that waits for the database (the security-event writer) can wake at
//! the moment the probe finds it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

/// An acquire that has waited this long makes the probe run (it may just be a busy pool).
pub const SUSPECT_AFTER: Duration = Duration::from_millis(250);
/// How long a probe may take to connect and answer before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The first wait between failed probes; it doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_millis(500);

pub struct Circuit {
    /// True while open (the database cannot be reached); read on every store call.
    open: AtomicBool,
    /// True while a probe task runs.
    probing: AtomicBool,
    /// `true` while closed; see [`Circuit::reachable`].
    reachable: watch::Sender<bool>,
    /// How many times it opened.
    opened: AtomicU64,
    options: Arc<PgConnectOptions>,
    /// Called when the circuit opens (the pool's connections are suspect from then on).
    on_open: Box<dyn Fn() + Send + Sync>,
}

impl Circuit {
    pub fn new(options: Arc<PgConnectOptions>, on_open: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            reachable: watch::Sender::new(true),
            opened: AtomicU64::new(0),
            options,
            on_open,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// How many times the circuit has opened (metrics).
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
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

    /// Something suggests the database may be gone: start the probe unless one runs.
    pub fn suspect(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let circuit = self.clone();
        tokio::spawn(async move { circuit.probe_until_reachable().await });
    }

    async fn probe_until_reachable(self: Arc<Self>) {
        let mut wait = FIRST_RETRY;
        loop {
            match self.probe().await {
                Ok(()) => {
                    self.close();
                    self.probing.store(false, Ordering::Release);
                    return;
                }
                Err(e) => {
                    self.open(&e);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// A connection of its own, one round trip, closed again.
    async fn probe(&self) -> anyhow::Result<()> {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            sqlx::query("SELECT 1").execute(&mut conn).await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(())
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!("no answer within {PROBE_TIMEOUT:?}"),
        }
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
