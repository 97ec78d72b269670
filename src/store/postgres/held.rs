//! A connection that a write holds while its request may still give up.

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;

use crate::store::{StoreError, StoreResult};

/// The connection of a write whose request may give up while a statement runs on it (the
/// request timeout, or a client that leaves: either drops the request's future). Returned to the
/// pool, such a connection would first wait for that statement to finish (sqlx pings it), and the
/// statement would commit after its request was answered 408: a refresh token rotated for a
/// client that never got the successor, whose retry then looks like a stolen token's reuse.
/// Dropped before [`Held::release`], it is closed instead, and Postgres ends the statement and
/// rolls it back when it sees the client gone ([`crate::db::CLIENT_CHECK_INTERVAL`]); on
/// Postgres before 14, when `statement_timeout` cancels it.
#[derive(Default)]
pub(super) struct Held(Option<PoolConnection<Postgres>>);

impl Held {
    /// Keeps `conn` (a previous one goes back to the pool) and lends it out.
    pub(super) fn hold(&mut self, conn: PoolConnection<Postgres>) -> &mut PgConnection {
        self.0.insert(conn)
    }

    /// The connection held.
    pub(super) fn connection(&mut self) -> StoreResult<&mut PgConnection> {
        match self.0.as_mut() {
            Some(conn) => Ok(conn),
            None => Err(StoreError::Other(anyhow::anyhow!("no connection held"))),
        }
    }

    /// The write finished (or failed) without being abandoned: back to the pool as usual.
    pub(super) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}
