//! The tests of a pool's connections: when an idle connection must be pinged before it is handed
//! out, and which failures say that a connection (not a statement) failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;

/// When the pool tests a connection (a ping, one round trip) before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionChecks {
    /// Before every acquire (sqlx's default). For pools off the request path.
    EveryAcquire,
    /// Only a connection that may be broken: one opened before the last connection-level failure
    /// the pool's users reported ([`Database::note_failure`]), or one idle for
    /// [`IDLE_CHECK_AFTER`] or longer. Its users retry reads once on such a failure.
    WhenSuspect,
}

/// A connection idle this long is tested before use even when no failure was reported: after a
/// quiet spell nothing else may have noticed that the database restarted. Under load connections
/// are reused within milliseconds and never tested.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_secs(2);

/// When the pool's users last saw a connection fail (for [`ConnectionChecks::WhenSuspect`]).
pub(super) struct ConnectionHealth {
    origin: Instant,
    /// Nanoseconds from `origin` to the last reported failure, plus one; 0: none yet.
    last_failure: AtomicU64,
}

impl ConnectionHealth {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_failure: AtomicU64::new(0),
        }
    }

    fn nanos_since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn note_failure(&self) {
        let at = self.nanos_since_origin().saturating_add(1);
        self.last_failure.fetch_max(at, Ordering::Relaxed);
    }

    /// Whether an idle connection must be tested before it is handed out.
    pub(super) fn suspect(&self, meta: &PoolConnectionMetadata) -> bool {
        if meta.idle_for >= IDLE_CHECK_AFTER {
            return true;
        }
        let last_failure = self.last_failure.load(Ordering::Relaxed);
        if last_failure == 0 {
            return false;
        }
        let age = u64::try_from(meta.age.as_nanos()).unwrap_or(u64::MAX);
        let opened = self.nanos_since_origin().saturating_sub(age);
        opened < last_failure
    }
}

/// A connection-level failure: the connection (or the server behind it) is gone, as opposed to
/// an error of the statement. The pool's own errors (timeout, closed) are not: they say nothing
/// about the connections it holds.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 57P01-57P05: the server shut the session (shutdown, crash, dropped database, idle
        // timeout); 08xxx: connection exceptions.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}
