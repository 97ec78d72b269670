//! Fills `users.email_key` (migration 006) for rows that have none, oldest first, and finds the
//! rows left without one because an earlier row holds their key.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgConnection;

use crate::domain::Email;
use crate::store::EmailCollision;

/// Rows updated per statement.
const CHUNK: usize = 1000;

/// Gives every keyless row its key, unless an earlier row (by `created_at`, then `id`) or a row
/// keyed meanwhile has it: those stay NULL and are what [`collisions`] reports.
pub(super) async fn backfill(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, email FROM users WHERE email_key IS NULL ORDER BY created_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = HashSet::new();
    let candidates: Vec<(String, String)> = rows
        .into_iter()
        .map(|(id, email)| (id, Email::key_of(&email)))
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
            // A row inserted meanwhile took one of these keys: one by one, skipping that one.
            Err(e) if is_unique_violation(&e) => {
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
                        Err(e) if is_unique_violation(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keyless rows whose key another row holds, with that row.
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
    let keys: Vec<String> = keyless.iter().map(|(_, e)| Email::key_of(e)).collect();
    let holders: HashMap<String, (String, String)> = sqlx::query_as::<_, (String, String, String)>(
        "SELECT email_key, id, email FROM users WHERE email_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(key, id, email)| (key, (id, email)))
    .collect();
    Ok(keyless
        .into_iter()
        .zip(keys)
        .filter_map(|((user_id, email), key)| {
            let (holder_id, holder_email) = holders.get(&key)?.clone();
            Some(EmailCollision {
                user_id,
                email,
                holder_id,
                holder_email,
            })
        })
        .collect())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
