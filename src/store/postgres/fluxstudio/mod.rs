//! `flux-auth import-fluxstudio`: FluxStudio's users and live refresh tokens (its `public.users`
//! and `public.refresh_tokens`) brought into flux-auth's tables.
//!
//! Both tables are read in pages by key (never whole), and each page is written in one
//! transaction; every write leaves what is there alone (`ON CONFLICT DO NOTHING`), so a run that
//! stops midway is resumed by running again, and a second run adds only what is new (sessions
//! opened in FluxStudio since). Users are read oldest first: of two accounts whose emails are one
//! mailbox once canonicalised, the older is imported and the other reported, never merged.
//! A live token becomes a session under the SHA-256 of the raw token, with the token's expiry
//! and an unset fingerprint that its first refresh adopts (`auth::service::refresh`).
//!
//! `--dry-run` does all of it inside one transaction that is rolled back (flux-auth's tables made
//! in it if the database has none yet), so it reports exactly what a run would do and changes
//! nothing.

mod carry;
mod source;

pub use carry::{Later, Skip, is_legacy_token, unescape_html};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::rows::{self, INSERT_USER_IF_ABSENT};
use crate::db::Database;
use crate::domain::{Email, UNSET_FINGERPRINT};

/// What a run did, or (dry run) would do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub users_read: u64,
    pub users_imported: u64,
    pub users_present: u64,
    pub identities_imported: u64,
    pub tokens_read: u64,
    pub sessions_imported: u64,
    pub sessions_present: u64,
    pub preferences_kept_for_later: u64,
    pub totp_kept_for_later: u64,
    pub users_skipped: u64,
    pub tokens_skipped: u64,
    /// Of the users skipped, those whose mailbox another account holds.
    pub email_collisions: u64,
}

/// A row not imported: its table, its id (a token's first 8 characters, never the token), and
/// why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub table: &'static str,
    pub id: String,
    pub reason: Skip,
}

/// What the CLI is told as the run goes: each row skipped (reported as it is met, so the report
/// takes no memory), and how far it is.
pub enum Progress {
    Skipped(Skipped),
    Users(u64),
    Tokens(u64),
}

/// Imports from `source` (FluxStudio's database) into `target` (flux-auth's, migrated unless
/// `dry_run`). `now` decides which tokens are live.
pub async fn import(
    source: &PgPool,
    target: &Database,
    dry_run: bool,
    now: DateTime<Utc>,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Report> {
    let columns = source::Columns::read(source).await?;
    let mut read = source.acquire().await?;
    let mut conn = target.migration_connection().await?;
    let mut report = Report::default();
    if dry_run {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        make_tables_if_missing(&mut conn, target).await?;
    }
    let users_sql = columns.users_page_sql();
    // 0001-01-01: what rows without a creation time sort as.
    let floor = DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut after = (floor, String::new());
    loop {
        let page = source::users_page(&mut read, &users_sql, &after).await?;
        let Some(last) = page.last() else { break };
        after = (last.sort_key, last.id.clone());
        begin_page(&mut conn, dry_run).await?;
        for row in &page {
            import_user(&mut conn, row, now, &mut report, &mut progress).await?;
        }
        end_page(&mut conn, dry_run).await?;
        progress(Progress::Users(report.users_read));
    }
    if columns.has_tokens() {
        let tokens_sql = columns.tokens_page_sql();
        let mut after = String::new();
        loop {
            let page = source::tokens_page(&mut read, &tokens_sql, &after).await?;
            let Some(last) = page.last() else { break };
            after = last.token.clone();
            begin_page(&mut conn, dry_run).await?;
            for token in &page {
                import_token(&mut conn, token, now, &mut report, &mut progress).await?;
            }
            end_page(&mut conn, dry_run).await?;
            progress(Progress::Tokens(report.tokens_read));
        }
    }
    if dry_run {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
    }
    Ok(report)
}

/// Each page is one transaction; in a dry run all of them are in the one rolled back at the end.
/// On an error the connection is closed (it is the migration connection), which rolls back.
async fn begin_page(conn: &mut PgConnection, dry_run: bool) -> Result<(), sqlx::Error> {
    if !dry_run {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    }
    Ok(())
}

async fn end_page(conn: &mut PgConnection, dry_run: bool) -> Result<(), sqlx::Error> {
    if !dry_run {
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    }
    Ok(())
}

/// A dry run on a database flux-auth has not migrated yet: the migrations' tables, made inside
/// the transaction that is rolled back. `security_events` is not needed and not made.
async fn make_tables_if_missing(conn: &mut PgConnection, target: &Database) -> anyhow::Result<()> {
    let own = target.schemas().own();
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("\"{own}\".users"))
        .fetch_one(&mut *conn)
        .await?;
    if migrated {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{own}\""
    )))
    .execute(&mut *conn)
    .await?;
    for m in crate::db::MIGRATOR.iter() {
        if m.sql.as_str().contains("security_events") {
            continue;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_owned()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn import_user(
    conn: &mut PgConnection,
    row: &source::SourceUser,
    now: DateTime<Utc>,
    report: &mut Report,
    progress: &mut impl FnMut(Progress),
) -> anyhow::Result<()> {
    report.users_read += 1;
    let user = match carry::user(row, now) {
        Ok(user) => user,
        Err(reason) => {
            report.users_skipped += 1;
            progress(Progress::Skipped(Skipped::new("users", &row.id, reason)));
            return Ok(());
        }
    };
    let inserted = rows::insert_user(&user, INSERT_USER_IF_ABSENT)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    if !inserted {
        // Already imported (same id), or the mailbox is another account's.
        let holder: Option<String> =
            sqlx::query_scalar("SELECT id FROM users WHERE email_key = $1 AND id <> $2")
                .bind(Email::key_of(&user.email))
                .bind(&user.id)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(holder) = holder {
            report.users_skipped += 1;
            report.email_collisions += 1;
            progress(Progress::Skipped(Skipped::new(
                "users",
                &row.id,
                Skip::EmailCollides(holder),
            )));
            return Ok(());
        }
        report.users_present += 1;
    } else {
        report.users_imported += 1;
    }
    for identity in carry::identities(row, &user, now) {
        let done = sqlx::query(
            "INSERT INTO user_identities (issuer, subject, user_id, email, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(&identity.user_id)
        .bind(&identity.email)
        .bind(identity.created_at)
        .bind(identity.last_used_at)
        .execute(&mut *conn)
        .await?;
        report.identities_imported += done.rows_affected();
    }
    for later in [carry::preferences(row), carry::totp(row)]
        .into_iter()
        .flatten()
    {
        match later {
            Later::Preferences => report.preferences_kept_for_later += 1,
            Later::Totp => report.totp_kept_for_later += 1,
        }
    }
    Ok(())
}

async fn import_token(
    conn: &mut PgConnection,
    token: &source::SourceToken,
    now: DateTime<Utc>,
    report: &mut Report,
    progress: &mut impl FnMut(Progress),
) -> anyhow::Result<()> {
    report.tokens_read += 1;
    // Never the token itself in a report: its first 8 characters tell rows apart.
    let label: String = token.token.chars().take(8).collect();
    if let Err(reason) = carry::token_state(token, now) {
        report.tokens_skipped += 1;
        progress(Progress::Skipped(Skipped::new(
            "refresh_tokens",
            &label,
            reason,
        )));
        return Ok(());
    }
    let user_there: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(&token.user_id)
        .fetch_one(&mut *conn)
        .await?;
    if !user_there {
        report.tokens_skipped += 1;
        progress(Progress::Skipped(Skipped::new(
            "refresh_tokens",
            &label,
            Skip::UserNotImported,
        )));
        return Ok(());
    }
    let hash = hex::encode(Sha256::digest(token.token.as_bytes()));
    // The session's id comes from the token's hash: the same token is the same session on
    // every run.
    let session_id = Uuid::from_slice(&hex::decode(&hash[..32])?)?;
    let created = token.created_at.unwrap_or(now).min(now);
    let last_used = token.last_used_at.unwrap_or(created).min(now);
    let done = sqlx::query(
        "INSERT INTO auth_sessions (id, user_id, device_name, ip_address, user_agent, fingerprint, \
         created_at, last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT DO NOTHING",
    )
    .bind(session_id)
    .bind(&token.user_id)
    .bind(
        token
            .device_name
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or("Unknown device"),
    )
    .bind(token.ip_address.as_deref().unwrap_or("0.0.0.0"))
    .bind(&token.user_agent)
    .bind(UNSET_FINGERPRINT)
    .bind(created)
    .bind(last_used)
    .bind(token.expires_at)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        report.sessions_present += 1;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(session_id)
    .bind(&hash)
    .bind(created)
    .execute(&mut *conn)
    .await?;
    report.sessions_imported += 1;
    Ok(())
}

impl Skipped {
    fn new(table: &'static str, id: &str, reason: Skip) -> Self {
        Self {
            table,
            id: id.to_owned(),
            reason,
        }
    }
}
