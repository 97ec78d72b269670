//! The refresh-token rotation engine.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::held::Held;
use super::rows::{TokenRow, UserRow};
use crate::db::is_connection_error;
use crate::domain::UserRecord;
use crate::store::{
    InvalidReason, RotateOutcome, RotateRequest, Rotation, RotationDecision, SessionRecord,
    StoreError, StoreResult, TokenRecord, decide_rotation,
};

// ---------------------------------------------------------------------------------------------
// Refresh-token rotation: the common case in one statement; otherwise one read, then one
// conditional write.
//
// A live token of a live session is rotated by one statement ([`ROTATION_FAST`]) that checks
// what `decide_rotation` would check on the rows it locks, and writes what the decision would
// write. When it writes nothing, the long way runs. The read takes the presented token with its
// session, the token it was rotated to and the session's user, in one statement (one snapshot);
// `decide_rotation` decides on them; the decision's writes then run as one statement that
// applies only if what the decision rests on still holds (a compare-and-swap). If it does not (a
// concurrent refresh rotated the token first, a logout revoked the session), the state is read
// again and decided again. Without a write (grace, invalid) the read is the decision's snapshot. So a refresh costs one round trip, and
// anything else two or three, on one connection, without a transaction; concurrent refreshes
// serialise exactly as they did under row locks: one rotates, the others see it rotated.

/// The columns of a [`RotationRow`] from `t` (the token), `s` (its session), `n` (its successor)
/// and `u` (the user).
macro_rules! rotation_columns {
    () => {
        concat!(
            "t.id, t.session_id, t.token_hash, t.created_at, t.rotated_at, t.replaced_by, ",
            "s.id AS s_id, s.user_id AS s_user_id, s.device_name AS s_device_name, ",
            "s.ip_address AS s_ip_address, s.user_agent AS s_user_agent, s.fingerprint AS s_fingerprint, ",
            "s.created_at AS s_created_at, s.last_used_at AS s_last_used_at, ",
            "s.expires_at AS s_expires_at, s.revoked_at AS s_revoked_at, ",
            "s.revoked_reason AS s_revoked_reason, ",
            "n.id AS n_id, n.token_hash AS n_token_hash, n.created_at AS n_created_at, ",
            "n.rotated_at AS n_rotated_at, n.replaced_by AS n_replaced_by, ",
            "u.id AS u_id, u.email AS u_email, u.name AS u_name, u.user_type AS u_user_type, ",
            "u.password_hash AS u_password_hash, u.google_id AS u_google_id, ",
            "u.email_verified AS u_email_verified, u.avatar AS u_avatar, ",
            "u.created_at AS u_created_at, u.last_login AS u_last_login, ",
            "u.updated_at AS u_updated_at, u.two_factor_enabled AS u_two_factor_enabled ",
        )
    };
}

/// The rotation state of a presented token. `token_hash` is CHAR(64) and sqlx sends a String as
/// text: compared as text, Postgres casts the column and scans the whole table (refresh got slower
/// with every token ever issued, BENCHMARKS.md). Casting the parameter keeps the unique index in
/// use. The left joins are all by primary key.
const ROTATION_READ: &str = concat!(
    "SELECT ",
    rotation_columns!(),
    "FROM refresh_tokens t ",
    "LEFT JOIN auth_sessions s ON s.id = t.session_id ",
    "LEFT JOIN refresh_tokens n ON n.id = t.replaced_by ",
    "LEFT JOIN users u ON u.id = s.user_id ",
    "WHERE t.token_hash = $1::bpchar"
);

/// The common refresh in one round trip: a live token of a live session (unrevoked, not past its
/// end or its idle limit, its fingerprint matching when mismatches are rejected) is rotated, its
/// successor inserted and its session touched, as [`ROTATION_WRITE`] does, with the conditions
/// under which `decide_rotation` answers `Rotate` checked on the locked rows. Returns the read's
/// row for what was rotated (as it was before the write), or no row when nothing was: every other
/// case (grace, reuse, a rejected fingerprint, an unknown or dead token) then takes the long way,
/// read and decide.
///
/// The token's `rotated_at`, from which the grace window is measured, is when the row was
/// written (`clock_timestamp()`, after any wait for a lock), not when the request began: a
/// refresh that waited behind a lock commits a rotation whose retry, moments later, is inside the
/// grace window and gets the same successor, where measuring from the request's start would have
/// called the retry a stolen token's reuse. It is Postgres's clock, compared with the instance's
/// when the token comes back, so the hosts' clocks must agree (NTP) to well within the window;
/// never earlier than the request's own time (`$2`), so a Postgres clock running behind costs no
/// more than measuring from the request does, and never later than the latest moment the request
/// could still write (`$9`: its time plus the request timeout, by the instance's clock), so a
/// Postgres clock running ahead lengthens the window by that much at most, not by its drift.
/// Both bounds are the service's [`crate::clock::Clock`]: a clock moved ahead of the system's
/// (as tests move it) makes the time the request's own, as the file store records it.
const ROTATION_FAST: &str = concat!(
    "WITH t AS MATERIALIZED ( \
       SELECT * FROM refresh_tokens WHERE token_hash = $1::bpchar AND rotated_at IS NULL), \
     s AS MATERIALIZED ( \
       SELECT * FROM auth_sessions WHERE id = (SELECT session_id FROM t) AND revoked_at IS NULL \
         AND expires_at > $2 AND last_used_at > $6 \
         AND (NOT $7 OR fingerprint = $8 OR fingerprint = '0000000000000000000000000000000000000000000000000000000000000000') \
       FOR UPDATE), \
     rotated AS ( \
       UPDATE refresh_tokens SET rotated_at = least(greatest($2, clock_timestamp()), $9), \
         replaced_by = $3 \
       WHERE id = (SELECT id FROM t) AND rotated_at IS NULL AND session_id IN (SELECT id FROM s) \
       RETURNING id, session_id), \
     successor AS ( \
       INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
       SELECT $3, session_id, $4, $2 FROM rotated), \
     touched AS ( \
       UPDATE auth_sessions SET last_used_at = $2, ip_address = $5, \
         fingerprint = CASE WHEN fingerprint = '0000000000000000000000000000000000000000000000000000000000000000' THEN $8 ELSE fingerprint END \
       WHERE id IN (SELECT session_id FROM rotated)) \
     SELECT ",
    rotation_columns!(),
    "FROM rotated r JOIN t ON t.id = r.id JOIN s ON s.id = r.session_id ",
    "LEFT JOIN refresh_tokens n ON false ",
    "LEFT JOIN users u ON u.id = s.user_id"
);

/// The writes of a rotation in one statement, applied only while the token is unrotated and its
/// session unrevoked: the session row is locked first (as every writer of sessions and tokens
/// locks them: session, then token), re-checked on its latest version, then the token is marked
/// rotated (re-checked likewise by the UPDATE), the successor inserted and the session touched.
/// A concurrent rotation or revocation that committed first leaves `rotated` empty, and nothing
/// is written. Returns how many tokens were rotated: 1 or 0. `rotated_at` is the time of the
/// write, bounded as in [`ROTATION_FAST`] (`$8` the latest moment the request could write).
const ROTATION_WRITE: &str = "WITH live AS MATERIALIZED ( \
       SELECT id FROM auth_sessions WHERE id = $4 AND revoked_at IS NULL FOR UPDATE), \
     rotated AS ( \
       UPDATE refresh_tokens SET rotated_at = least(greatest($2, clock_timestamp()), $8), \
         replaced_by = $3 \
       WHERE id = $1 AND rotated_at IS NULL AND session_id IN (SELECT id FROM live) \
       RETURNING session_id), \
     successor AS ( \
       INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
       SELECT $3, session_id, $5, $6 FROM rotated), \
     touched AS ( \
       UPDATE auth_sessions SET last_used_at = $2, ip_address = $7, \
         fingerprint = CASE WHEN fingerprint = '0000000000000000000000000000000000000000000000000000000000000000' THEN $9 ELSE fingerprint END \
       WHERE id IN (SELECT session_id FROM rotated)) \
     SELECT count(*) FROM rotated";

/// Revokes a session that is still live (reuse detected, fingerprint rejected); 0 rows when a
/// concurrent writer revoked it first.
const REVOKE_LIVE_SESSION: &str = "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 \
     WHERE id = $1 AND revoked_at IS NULL";

/// How often a rotation reads and decides before giving up. Every lost compare-and-swap leaves the
/// token rotated or the session revoked, both for good, and a revoked session needs no write: the
/// third decision is final. One more for safety.
const ROTATION_ATTEMPTS: usize = 4;

/// One row of [`ROTATION_READ`]: the token, then the left-joined session (`s_`), successor (`n_`)
/// and user (`u_`), all NULL when absent.
#[derive(sqlx::FromRow)]
struct RotationRow {
    #[sqlx(flatten)]
    token: TokenRow,
    s_id: Option<Uuid>,
    s_user_id: Option<String>,
    s_device_name: Option<String>,
    s_ip_address: Option<String>,
    s_user_agent: Option<String>,
    s_fingerprint: Option<String>,
    s_created_at: Option<DateTime<Utc>>,
    s_last_used_at: Option<DateTime<Utc>>,
    s_expires_at: Option<DateTime<Utc>>,
    s_revoked_at: Option<DateTime<Utc>>,
    s_revoked_reason: Option<String>,
    n_id: Option<Uuid>,
    n_token_hash: Option<String>,
    n_created_at: Option<DateTime<Utc>>,
    n_rotated_at: Option<DateTime<Utc>>,
    n_replaced_by: Option<Uuid>,
    u_id: Option<String>,
    u_email: Option<String>,
    u_name: Option<String>,
    u_user_type: Option<String>,
    u_password_hash: Option<String>,
    u_google_id: Option<String>,
    u_email_verified: Option<bool>,
    u_avatar: Option<String>,
    u_created_at: Option<DateTime<Utc>>,
    u_last_login: Option<DateTime<Utc>>,
    u_updated_at: Option<DateTime<Utc>>,
    u_two_factor_enabled: Option<bool>,
}

struct RotationState {
    token: TokenRecord,
    session: Option<SessionRecord>,
    successor: Option<TokenRecord>,
    user: Option<UserRecord>,
}

impl From<RotationRow> for RotationState {
    fn from(r: RotationRow) -> Self {
        let token = TokenRecord::from(r.token);
        // The NOT NULL columns of a joined row are all present when its key is.
        let session = match (
            r.s_id,
            r.s_user_id,
            r.s_device_name,
            r.s_ip_address,
            r.s_fingerprint,
            r.s_created_at,
            r.s_last_used_at,
            r.s_expires_at,
        ) {
            (
                Some(id),
                Some(user_id),
                Some(device_name),
                Some(ip_address),
                Some(fingerprint),
                Some(created_at),
                Some(last_used_at),
                Some(expires_at),
            ) => Some(SessionRecord {
                id,
                user_id,
                device_name,
                ip_address,
                user_agent: r.s_user_agent,
                fingerprint,
                created_at,
                last_used_at,
                expires_at,
                revoked_at: r.s_revoked_at,
                revoked_reason: r.s_revoked_reason,
            }),
            _ => None,
        };
        let successor = match (r.n_id, r.n_token_hash, r.n_created_at) {
            (Some(id), Some(token_hash), Some(created_at)) => Some(TokenRecord {
                id,
                session_id: token.session_id,
                token_hash,
                created_at,
                rotated_at: r.n_rotated_at,
                replaced_by: r.n_replaced_by,
            }),
            _ => None,
        };
        let user = match (
            r.u_id,
            r.u_email,
            r.u_name,
            r.u_user_type,
            r.u_email_verified,
            r.u_created_at,
        ) {
            (
                Some(id),
                Some(email),
                Some(name),
                Some(user_type),
                Some(email_verified),
                Some(created_at),
            ) => Some(UserRecord::from(UserRow {
                id,
                email,
                name,
                user_type,
                password_hash: r.u_password_hash,
                google_id: r.u_google_id,
                email_verified,
                avatar: r.u_avatar,
                created_at,
                last_login: r.u_last_login,
                updated_at: r.u_updated_at.unwrap_or(created_at),
                two_factor_enabled: r.u_two_factor_enabled.unwrap_or(false),
            })),
            _ => None,
        };
        Self {
            token,
            session,
            successor,
            user,
        }
    }
}

/// [`ROTATION_FAST`]: the rotation when the presented token was live, `None` when nothing was
/// written.
async fn rotate_live(
    conn: &mut PgConnection,
    request: &RotateRequest,
    latest_write: DateTime<Utc>,
) -> Result<Option<Rotation>, sqlx::Error> {
    let row: Option<RotationRow> = sqlx::query_as(ROTATION_FAST)
        .bind(&request.presented_hash)
        .bind(request.now)
        .bind(request.successor_id)
        .bind(&request.successor_hash)
        .bind(&request.ip_address)
        .bind(request.now - request.idle_ttl)
        .bind(request.reject_on_fingerprint_mismatch)
        .bind(&request.fingerprint)
        .bind(latest_write)
        .fetch_optional(conn)
        .await?;
    let Some(RotationState {
        token,
        session: Some(session),
        successor: None,
        user,
    }) = row.map(RotationState::from)
    else {
        return Ok(None);
    };
    // The statement's conditions are `decide_rotation`'s for `Rotate`; the tests run this check.
    debug_assert!(
        matches!(
            decide_rotation(&token, &session, None, request),
            RotationDecision::Rotate { .. }
        ),
        "the one-statement rotation and decide_rotation disagree"
    );
    let fingerprint_matched = crate::store::fingerprint_matches(&session, request);
    Ok(Some(rotated(
        session,
        token.id,
        fingerprint_matched,
        user,
        request,
    )))
}

/// The answer for a token just rotated: its session as the write left it (touched now, from
/// the request's address).
fn rotated(
    mut session: SessionRecord,
    old_token_id: Uuid,
    fingerprint_matched: bool,
    user: Option<UserRecord>,
    request: &RotateRequest,
) -> Rotation {
    session.last_used_at = request.now;
    session.ip_address = request.ip_address.clone();
    Rotation {
        outcome: RotateOutcome::Rotated {
            session,
            old_token_id,
            fingerprint_matched,
        },
        user,
        stored_successor_id: None,
    }
}

async fn rotation_state(
    conn: &mut PgConnection,
    presented_hash: &str,
) -> Result<Option<RotationState>, sqlx::Error> {
    let row: Option<RotationRow> = sqlx::query_as(ROTATION_READ)
        .bind(presented_hash)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(RotationState::from))
}

impl PgStore {
    pub(super) async fn rotate(&self, request: &RotateRequest) -> StoreResult<Rotation> {
        // If the request gives up midway, `held` closes its connection (see `Held`).
        let mut held = Held::default();
        let rotation = self.rotate_on(&mut held, request).await;
        held.release();
        rotation
    }

    async fn rotate_on(&self, held: &mut Held, request: &RotateRequest) -> StoreResult<Rotation> {
        // The first statement is repeated on another connection after a connection-level failure,
        // even though it writes: the successor is derived from the presented token, so when the
        // first attempt was applied, the repeat finds the token rotated moments ago to that same
        // successor and the long way answers with it (grace). What follows is not repeated.
        let mut retried = false;
        loop {
            let conn = held.hold(self.conn().await?);
            match rotate_live(conn, request, self.latest_write(request)).await {
                Ok(Some(rotation)) => return Ok(rotation),
                Ok(None) => break,
                Err(e) if !retried && is_connection_error(&e) => {
                    self.db.note_failure(&e);
                    retried = true;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        let conn = held.connection()?;
        let mut state = rotation_state(conn, &request.presented_hash)
            .await
            .map_err(|e| self.fail(e))?;
        for _ in 0..ROTATION_ATTEMPTS {
            let Some(found) = state else {
                return Ok(RotateOutcome::Invalid {
                    reason: InvalidReason::Unknown,
                    session: None,
                    token_id: None,
                }
                .into());
            };
            if let Some(rotation) = self.apply_rotation(conn, found, request).await? {
                return Ok(rotation);
            }
            // Lost a race: decide again on what the winner left.
            state = rotation_state(conn, &request.presented_hash)
                .await
                .map_err(|e| self.fail(e))?;
        }
        Err(StoreError::Other(anyhow::anyhow!(
            "refresh token rotation lost {ROTATION_ATTEMPTS} races in a row"
        )))
    }

    /// Decides on `state` and applies the decision; `None` when its compare-and-swap found the
    /// state changed (nothing was written).
    async fn apply_rotation(
        &self,
        conn: &mut PgConnection,
        state: RotationState,
        request: &RotateRequest,
    ) -> StoreResult<Option<Rotation>> {
        let RotationState {
            token,
            session,
            successor,
            user,
        } = state;
        let Some(mut session) = session else {
            return Ok(Some(
                RotateOutcome::Invalid {
                    reason: InvalidReason::Unknown,
                    session: None,
                    token_id: Some(token.id),
                }
                .into(),
            ));
        };
        let rotation = match decide_rotation(&token, &session, successor.as_ref(), request) {
            RotationDecision::Rotate {
                fingerprint_matched,
            } => {
                let successor = request.successor_in(token.session_id);
                let written: i64 = sqlx::query_scalar(ROTATION_WRITE)
                    .bind(token.id)
                    .bind(request.now)
                    .bind(successor.id)
                    .bind(successor.session_id)
                    .bind(&successor.token_hash)
                    .bind(successor.created_at)
                    .bind(&request.ip_address)
                    .bind(self.latest_write(request))
                    .bind(&request.fingerprint)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.fail(e))?;
                if written == 0 {
                    return Ok(None);
                }
                rotated(session, token.id, fingerprint_matched, user, request)
            }
            RotationDecision::Grace {
                fingerprint_matched,
            } => Rotation {
                outcome: RotateOutcome::Grace {
                    session,
                    old_token_id: token.id,
                    fingerprint_matched,
                },
                user,
                stored_successor_id: successor.map(|s| s.id),
            },
            RotationDecision::Reuse => {
                if !self
                    .revoke_live(conn, &mut session, request.now, "token_reuse")
                    .await?
                {
                    return Ok(None);
                }
                RotateOutcome::ReuseDetected {
                    session,
                    token_id: token.id,
                }
                .into()
            }
            RotationDecision::RejectFingerprint => {
                if !self
                    .revoke_live(conn, &mut session, request.now, "fingerprint_mismatch")
                    .await?
                {
                    return Ok(None);
                }
                RotateOutcome::FingerprintRejected {
                    session,
                    token_id: token.id,
                }
                .into()
            }
            RotationDecision::Invalid(reason) => RotateOutcome::Invalid {
                reason,
                session: Some(session),
                token_id: Some(token.id),
            }
            .into(),
        };
        Ok(Some(rotation))
    }

    /// Revokes `session` if it is still live, updating the record; false when it was not.
    async fn revoke_live(
        &self,
        conn: &mut PgConnection,
        session: &mut SessionRecord,
        now: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(REVOKE_LIVE_SESSION)
            .bind(session.id)
            .bind(now)
            .bind(reason)
            .execute(conn)
            .await
            .map_err(|e| self.fail(e))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        session.revoked_at = Some(now);
        session.revoked_reason = Some(reason.to_owned());
        Ok(true)
    }
}
