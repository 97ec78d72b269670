//! `AppState`: what every handler and middleware shares, built once by `app`.

mod probes;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::auth::oidc::GoogleSignIn;
use crate::auth::service::AuthService;
use crate::clock::Clock;
use crate::config::Settings;
use crate::db::Database;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::security_log::spool::Spool;

pub use probes::{Probes, SharedProbe};

/// The state every handler and middleware gets. One `Arc`, so the per-request clones axum makes
/// (each `State` extractor and `from_fn_with_state` layer) cost one atomic increment, not one per
/// field: cloning the fields one by one was ~4% of a `/me` request's CPU (BENCHMARKS.md).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

#[derive(Clone)]
pub struct SharedState {
    pub auth: Arc<AuthService>,
    pub metrics: Metrics,
    /// What `/metrics` serves.
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub settings: Arc<Settings>,
    pub limits: Arc<Limits>,
    /// The anomaly rules (the dashboard reads what they are set to).
    pub anomalies: Arc<crate::anomaly::Anomalies>,
    /// What alerts go to webhooks, and their counts.
    pub alerts: Arc<crate::alerts::Alerts>,
    pub clock: Clock,
    /// Google (or OpenID) sign-in; `None` when `GOOGLE_CLIENT_ID` is not set.
    pub google: Option<Arc<GoogleSignIn>>,
    /// Sign in with Apple; `None` when `APPLE_CLIENT_ID` is not set.
    pub apple: Option<Arc<GoogleSignIn>>,
    /// The user store's database, when it is Postgres (its probe is stopped at shutdown).
    pub store_db: Option<Database>,
    /// The security log's database, when it has one (for health).
    pub security_db: Option<Database>,
    /// The security event spool (the log itself when there is no database).
    pub spool: Arc<Spool>,
    pub started: Instant,
    /// `/health`'s and `/health/ready`'s database probes, one at a time (shared by concurrent
    /// callers).
    pub probes: Arc<Probes>,
    /// Cancelled when shutdown begins, so long-lived responses (event streams) end and let the
    /// server drain.
    pub stopping: CancellationToken,
    /// How mail leaves (the outbox's sender delivers through it); `None` in production without
    /// SMTP.
    pub mailer: Option<Arc<crate::mail::transport::Mailer>>,
}
