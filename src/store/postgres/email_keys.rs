//! Fills `users.email_key` (migration 006) for rows that have none, oldest first, and finds the
//! rows left without one: because an earlier row holds their key, because their address has no
//! key ([`Email::key_of`]), or because the database would not store it.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgConnection;

use crate::domain::Email;
use crate::store::{EmailCollision, KeyHolder};

/// Rows updated per statement.
const CHUNK: usize = 1000;

/// Gives every keyless row its key, unless an earlier row (by `created_at`, then `id`) or a row
/// keyed meanwhile has it, or its address has none: those stay NULL and are what [`collisions`]
/// reports. One row never fails the whole: a row whose key the database refuses (a constraint or
/// trigger of its own, bad data) is logged, skipped and reported the same way. An error that says
/// nothing about a row ([`is_transient`]: the connection, a database out of space or shutting
/// down) is returned, and the migration tried again: keys left unfilled would let a new signup
/// take a mailbox an old account has.
pub(super) async fn backfill(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, email FROM users WHERE email_key IS NULL ORDER BY created_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = HashSet::new();
    let candidates: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|(id, email)| Some((id, Email::key_of(&email)?)))
        .filter(|(_, key)| claimed.insert(key.clone()))
        .collect();
    for chunk in candidates.chunks(CHUNK) {
        let (ids, keys): (Vec<&str>, Vec<&str>) =
            chunk.iter().map(|(i, k)| (i.as_str(), k.as_str())).unzip();
        let all_at_once = sqlx::query(
            "UPDATE users u SET email_key = v.key \
             FROM unnest($1::text[], $2::text[]) AS v(id, key) \
             WHERE u.id = v.id AND u.email_key IS NULL \
               AND NOT EXISTS (SELECT 1 FROM users o WHERE o.email_key = v.key)",
        )
        .bind(&ids)
        .bind(&keys)
        .execute(&mut *conn)
        .await;
        match all_at_once {
            Ok(_) => {}
            Err(e) if is_transient(&e) => return Err(e),
            // A row inserted meanwhile took one of these keys, or the database refuses one row:
            // one by one, skipping those.
            Err(_) => {
                for (id, key) in chunk {
                    let one = sqlx::query(
                        "UPDATE users SET email_key = $2 WHERE id = $1 AND email_key IS NULL",
                    )
                    .bind(id)
                    .bind(key)
                    .execute(&mut *conn)
                    .await;
                    match one {
                        Ok(_) => {}
                        Err(e) if is_transient(&e) => return Err(e),
                        Err(e) if is_unique_violation(&e) => {}
                        Err(e) => tracing::warn!(
                            user_id = %id, error = %e,
                            "the database refused an account's email key; the account stays \
                             without one and cannot sign in by email \
                             (flux-auth users email-collisions lists it)"
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Keyless rows, each with the row that holds its key if one does (oldest first).
pub(super) async fn collisions(
    conn: &mut PgConnection,
) -> Result<Vec<EmailCollision>, sqlx::Error> {
    let keyless: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, email FROM users WHERE email_key IS NULL ORDER BY created_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    if keyless.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Option<String>> = keyless.iter().map(|(_, e)| Email::key_of(e)).collect();
    let wanted: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    let holders: HashMap<String, KeyHolder> = sqlx::query_as::<_, (String, String, String)>(
        "SELECT email_key, id, email FROM users WHERE email_key = ANY($1)",
    )
    .bind(&wanted)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(key, id, email)| (key, KeyHolder { id, email }))
    .collect();
    Ok(keyless
        .into_iter()
        .zip(keys)
        .map(|((user_id, email), key)| EmailCollision {
            user_id,
            email,
            holder: key.and_then(|k| holders.get(&k).cloned()),
        })
        .collect())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// An error that says nothing about the row being written: anything but an error the database
/// sent, or one of the SQLSTATE classes of a connection (08), a transaction rolled back for
/// concurrency (40), resources (53), a lock not available (55), an operator's intervention (57)
/// or the system (58). Any other error the database sends about a row comes back the same for
/// that row every time.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref().and_then(|c| c.get(..2)),
            Some("08" | "40" | "53" | "55" | "57" | "58")
        ),
        _ => true,
    }
}
