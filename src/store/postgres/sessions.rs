//! Sessions and their refresh tokens: the statements behind creating a session and finding one.

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::store::{NewSession, SessionRecord};

use super::rows::SessionRow;

/// The statement behind `Store::create_session`.
pub(super) async fn create_session(
    conn: &mut PgConnection,
    new: &NewSession,
    max_live: usize,
    idle_ttl: chrono::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let (s, t) = (&new.session, &new.token);
    sqlx::query_scalar(
        "WITH session AS ( \
           INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, \
             created_at, last_used_at, expires_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING id), \
         token AS ( \
           INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, rotated_at, replaced_by) \
           SELECT $10, id, $11, $12, $13, $14 FROM session), \
         login AS ( \
           UPDATE users SET last_login = $7 WHERE $15 AND id = $2), \
         evicted AS ( \
           UPDATE auth_sessions SET revoked_at = $7, revoked_reason = 'session_limit' WHERE id IN ( \
             SELECT id FROM auth_sessions WHERE user_id = $2 AND id <> $1 AND revoked_at IS NULL \
               AND expires_at > $7 AND last_used_at > $16 \
             ORDER BY created_at DESC, id DESC OFFSET $17) \
           RETURNING id) \
         SELECT id FROM evicted",
    )
    .bind(s.id)
    .bind(&s.user_id)
    .bind(&s.device_name)
    .bind(&s.ip_address)
    .bind(&s.user_agent)
    .bind(&s.fingerprint)
    .bind(s.created_at)
    .bind(s.last_used_at)
    .bind(s.expires_at)
    .bind(t.id)
    .bind(&t.token_hash)
    .bind(t.created_at)
    .bind(t.rotated_at)
    .bind(t.replaced_by)
    .bind(new.records_login)
    .bind(s.created_at - idle_ttl)
    .bind(others_kept(max_live))
    .fetch_all(conn)
    .await
}

/// How many of a user's other live sessions stay when one more must fit under `max_live` (an
/// `OFFSET`: `usize::MAX`, no cap, saturates instead of wrapping to a negative number).
pub(super) fn others_kept(max_live: usize) -> i64 {
    i64::try_from(max_live.saturating_sub(1)).unwrap_or(i64::MAX)
}

pub(super) async fn session_by_id(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> Result<Option<SessionRecord>, sqlx::Error> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "SELECT ",
        session_columns!(),
        " FROM auth_sessions WHERE id = $1"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(SessionRecord::from))
}

pub(super) async fn session_by_token_hash(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<(SessionRecord, Uuid)>, sqlx::Error> {
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        // `::bpchar`: see ROTATION_READ.
        "SELECT session_id, id FROM refresh_tokens WHERE token_hash = $1::bpchar",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((session_id, token_id)) = row else {
        return Ok(None);
    };
    // On the same connection: one acquire, and never two connections held at once.
    Ok(session_by_id(conn, session_id)
        .await?
        .map(|s| (s, token_id)))
}
