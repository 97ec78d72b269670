//! One page of FluxStudio's rows written into flux-auth's tables: a multi-row statement per
//! table (the page's columns bound as arrays and unnested), so a page of 1,000 users or tokens
//! costs a handful of round trips, not thousands. Every statement leaves what is there alone
//! (`ON CONFLICT DO NOTHING`); the caller wraps each page in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::carry::{self, SealedTwoFactor, Skip};
use super::source::{SourceToken, SourceUser};
use super::{Progress, Report, Skipped, TotpSeal};
use crate::domain::{Email, IdentityRecord, UNSET_FINGERPRINT, UserRecord};
use crate::store::postgres::rows;

/// A user to be written, with what is written beside it.
struct Carried<'a> {
    row: &'a SourceUser,
    user: UserRecord,
    settings: Option<String>,
    settings_note: Option<Skip>,
    two_factor: Option<SealedTwoFactor>,
}

/// Imports a page of users: the users (with their settings and two-factor flag), then their
/// two-factor rows and provider identities. Users with two-factor on are held back without
/// `seal` (kept for later) unless an earlier run imported them.
pub(super) async fn users(
    conn: &mut PgConnection,
    page: &[SourceUser],
    seal: Option<&dyn TotpSeal>,
    now: DateTime<Utc>,
    report: &mut Report,
    progress: &mut impl FnMut(Progress),
) -> anyhow::Result<()> {
    report.users_read += page.len() as u64;
    let mut carried = Vec::with_capacity(page.len());
    let mut held = Vec::new();
    for row in page {
        let mut user = match carry::user(row, now) {
            Ok(user) => user,
            Err(reason) => {
                skip_user(report, progress, &row.id, reason);
                continue;
            }
        };
        let two_factor = match carry::two_factor(row, seal, now) {
            Ok(two_factor) => two_factor,
            Err(Skip::KeptForLater) => {
                held.push((row, user));
                continue;
            }
            Err(reason) => {
                skip_user(report, progress, &row.id, reason);
                continue;
            }
        };
        user.two_factor_enabled = two_factor.is_some();
        let (settings, settings_note) = carry::settings(row);
        carried.push(Carried {
            row,
            // Compact JSON of a bounded value: serialising cannot fail.
            settings: settings.map(|s| s.to_string()),
            settings_note,
            user,
            two_factor,
        });
    }

    let pairs: Vec<(UserRecord, Option<String>)> = carried
        .iter()
        .map(|c| (c.user.clone(), c.settings.clone()))
        .collect();
    let inserted: HashSet<String> = if pairs.is_empty() {
        HashSet::new()
    } else {
        rows::insert_users_if_absent(&pairs)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect()
    };
    let unsettled: Vec<&UserRecord> = carried
        .iter()
        .map(|c| &c.user)
        .filter(|u| !inserted.contains(&u.id))
        .chain(held.iter().map(|(_, user)| user))
        .collect();
    let found = already_there(conn, &unsettled).await?;

    let mut identities = Vec::new();
    let mut two_factor = Vec::new();
    for c in &carried {
        if inserted.contains(&c.user.id) {
            report.users_imported += 1;
            report.settings_imported += u64::from(c.settings.is_some());
            if let Some(note) = &c.settings_note {
                report.preferences_reported += 1;
                progress(Progress::Skipped(Skipped::new(
                    "preferences",
                    &c.row.id,
                    note.clone(),
                )));
            }
            if let Some(sealed) = &c.two_factor {
                report.two_factor_imported += 1;
                two_factor.push((c.user.id.as_str(), sealed));
            }
        } else {
            match found.get(&c.user.id) {
                Some(There::Collides(holder)) => {
                    report.email_collisions += 1;
                    skip_user(
                        report,
                        progress,
                        &c.row.id,
                        Skip::EmailCollides(holder.clone()),
                    );
                    continue;
                }
                Some(There::Present) => report.users_present += 1,
                // Not inserted, not there, no other owner of the mailbox: the Google account is
                // another user's.
                _ => {
                    skip_user(report, progress, &c.row.id, Skip::GoogleTaken);
                    continue;
                }
            }
        }
        identities.extend(carry::identities(c.row, &c.user, now));
    }
    for (row, user) in &held {
        if matches!(found.get(&user.id), Some(There::Present)) {
            report.users_present += 1;
            identities.extend(carry::identities(row, user, now));
        } else {
            report.users_kept_for_later += 1;
            progress(Progress::Skipped(Skipped::new(
                "users",
                &row.id,
                Skip::KeptForLater,
            )));
        }
    }
    insert_two_factor(conn, &two_factor, now).await?;
    report.identities_imported += insert_identities(conn, &identities).await?;
    Ok(())
}

fn skip_user(report: &mut Report, progress: &mut impl FnMut(Progress), id: &str, reason: Skip) {
    report.users_skipped += 1;
    progress(Progress::Skipped(Skipped::new("users", id, reason)));
}

/// What holds a user that was not inserted.
enum There {
    /// The same id: an earlier run imported it.
    Present,
    /// Another account has the same mailbox: its id.
    Collides(String),
}

async fn already_there(
    conn: &mut PgConnection,
    users: &[&UserRecord],
) -> Result<HashMap<String, There>, sqlx::Error> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let keys: Vec<Option<String>> = users.iter().map(|u| Email::key_of(&u.email)).collect();
    let found: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT c.id, EXISTS (SELECT 1 FROM users u WHERE u.id = c.id), \
         (SELECT u.id FROM users u WHERE u.email_key = c.key AND u.id <> c.id LIMIT 1) \
         FROM UNNEST($1::text[], $2::text[]) AS c (id, key)",
    )
    .bind(ids)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|(id, present, holder)| {
            // Another account's mailbox first: a user imported before whose address FluxStudio
            // has since changed to someone else's is reported, not counted as present.
            let there = match (holder, present) {
                (Some(holder), _) => There::Collides(holder),
                (None, true) => There::Present,
                (None, false) => return None,
            };
            Some((id, there))
        })
        .collect())
}

/// The two-factor rows of users inserted in this page (whose flag the users' statement set).
async fn insert_two_factor(
    conn: &mut PgConnection,
    rows: &[(&str, &SealedTwoFactor)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Backup-code hashes are hex: a comma joins and splits them safely.
    sqlx::query(
        "INSERT INTO two_factor (user_id, secret, enabled_at, backup_codes, updated_at) \
         SELECT user_id, secret, enabled_at, \
         CASE WHEN codes = '' THEN '{}'::text[] ELSE string_to_array(codes, ',') END, $5 \
         FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[]) \
           AS t (user_id, secret, enabled_at, codes) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, s)| s.secret.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(_, s)| s.enabled_at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, s)| s.backup_codes.join(","))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_identities(
    conn: &mut PgConnection,
    identities: &[IdentityRecord],
) -> Result<u64, sqlx::Error> {
    if identities.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO user_identities (issuer, subject, user_id, email, created_at, last_used_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
           $5::timestamptz[], $6::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(
        identities
            .iter()
            .map(|i| i.issuer.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        identities
            .iter()
            .map(|i| i.subject.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        identities
            .iter()
            .map(|i| i.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        identities
            .iter()
            .map(|i| i.email.clone())
            .collect::<Vec<_>>(),
    )
    .bind(identities.iter().map(|i| i.created_at).collect::<Vec<_>>())
    .bind(
        identities
            .iter()
            .map(|i| i.last_used_at)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Imports a page of refresh tokens: the live ones whose user is there become sessions, each
/// with its token under the token's SHA-256, in one statement.
pub(super) async fn tokens(
    conn: &mut PgConnection,
    page: &[SourceToken],
    now: DateTime<Utc>,
    report: &mut Report,
    progress: &mut impl FnMut(Progress),
) -> anyhow::Result<()> {
    report.tokens_read += page.len() as u64;
    let mut live = Vec::with_capacity(page.len());
    for token in page {
        match carry::token_state(token, now) {
            Ok(()) => live.push(token),
            Err(reason) => {
                report.tokens_skipped += 1;
                progress(Progress::Skipped(Skipped::new(
                    "refresh_tokens",
                    &label(token),
                    reason,
                )));
            }
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    let hashes: Vec<String> = live
        .iter()
        .map(|t| hex::encode(Sha256::digest(t.token.as_bytes())))
        .collect();
    // The session's id comes from the token's hash: the same token is the same session on every
    // run.
    let session_ids = hashes
        .iter()
        .map(|h| Ok(Uuid::from_slice(&hex::decode(&h[..32])?)?))
        .collect::<anyhow::Result<Vec<Uuid>>>()?;
    let created: Vec<DateTime<Utc>> = live
        .iter()
        .map(|t| t.created_at.unwrap_or(now).min(now))
        .collect();
    let last_used: Vec<DateTime<Utc>> = live
        .iter()
        .zip(&created)
        .map(|(t, c)| t.last_used_at.unwrap_or(*c).min(now))
        .collect();
    let outcomes: Vec<(i64, bool, bool)> = sqlx::query_as(
        "WITH page AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::uuid[]) \
             WITH ORDINALITY AS p (session_id, user_id, device_name, ip_address, user_agent, \
             created_at, last_used_at, expires_at, token_hash, token_id, n) \
         ), owned AS ( \
           SELECT * FROM page WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = page.user_id) \
         ), sessions AS ( \
           INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, \
             fingerprint, created_at, last_used_at, expires_at) \
           SELECT session_id, user_id, device_name, ip_address, user_agent, $11, created_at, \
             last_used_at, expires_at FROM owned ORDER BY n \
           ON CONFLICT DO NOTHING RETURNING id \
         ), tokens AS ( \
           INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
           SELECT o.token_id, o.session_id, o.token_hash, o.created_at \
           FROM owned o JOIN sessions s ON s.id = o.session_id \
           ON CONFLICT DO NOTHING \
         ) \
         SELECT p.n, o.n IS NOT NULL, s.id IS NOT NULL FROM page p \
         LEFT JOIN owned o ON o.n = p.n LEFT JOIN sessions s ON s.id = p.session_id",
    )
    .bind(&session_ids)
    .bind(live.iter().map(|t| t.user_id.as_str()).collect::<Vec<_>>())
    .bind(
        live.iter()
            .map(|t| {
                t.device_name
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .unwrap_or("Unknown device")
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        live.iter()
            .map(|t| t.ip_address.as_deref().unwrap_or("0.0.0.0"))
            .collect::<Vec<_>>(),
    )
    .bind(
        live.iter()
            .map(|t| t.user_agent.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(&created)
    .bind(&last_used)
    .bind(live.iter().map(|t| t.expires_at).collect::<Vec<_>>())
    .bind(&hashes)
    .bind(live.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(UNSET_FINGERPRINT)
    .fetch_all(&mut *conn)
    .await?;
    for (n, owned, inserted) in outcomes {
        let Some(token) = usize::try_from(n - 1).ok().and_then(|i| live.get(i)) else {
            continue;
        };
        if !owned {
            report.tokens_skipped += 1;
            progress(Progress::Skipped(Skipped::new(
                "refresh_tokens",
                &label(token),
                Skip::UserNotImported,
            )));
        } else if inserted {
            report.sessions_imported += 1;
        } else {
            report.sessions_present += 1;
        }
    }
    Ok(())
}

/// Never the token itself in a report: its first 8 characters tell rows apart.
fn label(token: &SourceToken) -> String {
    token.token.chars().take(8).collect()
}
