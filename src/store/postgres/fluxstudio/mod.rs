//! `flux-auth import-fluxstudio`: FluxStudio's users and live refresh tokens (its `public.users`
//! and `public.refresh_tokens`) brought into flux-auth's tables.
//!
//! Both tables are read in pages by key (never whole), and each page is written in one
//! transaction with one statement per table (`write`); every write leaves what is there alone
//! (`ON CONFLICT DO NOTHING`), so a run that stops midway is resumed by running again, and a
//! second run adds only what is new (sessions opened in FluxStudio since). Users are read oldest
//! first: of two accounts whose emails are one mailbox once canonicalised, the older is imported
//! and the other reported, never merged. `preferences` become the user's settings; a user with
//! two-factor on comes with its secret encrypted and its backup codes hashed by the caller's
//! [`TotpSeal`] (this module never holds the key), or, without one, is kept for a later run.
//! A live token becomes a session under the SHA-256 of the raw token, with the token's expiry
//! and an unset fingerprint that its first refresh adopts (`auth::service::refresh`).
//!
//! `--dry-run` does all of it inside one transaction that is rolled back (flux-auth's tables made
//! in it if the database has none yet), so it reports exactly what a run would do and changes
//! nothing.

mod carry;
mod source;
mod write;

pub use carry::{Skip, is_legacy_token, unescape_html};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::db::Database;

/// How FluxStudio's two-factor secrets come in, given by the caller that holds the key.
pub trait TotpSeal: Send + Sync {
    /// FluxStudio's `totp_secret` (base32, plain) encrypted for `user_id`; `None` when it is not
    /// a secret codes can be checked against.
    fn seal_secret(&self, user_id: &str, base32: &str) -> Option<String>;
    /// A backup code of FluxStudio's (plain) as sign-in looks it up for `user_id`; `None` for one
    /// sign-in would never accept (dropped).
    fn backup_code_hash(&self, user_id: &str, code: &str) -> Option<String>;
}

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
    /// Users imported with settings made from their `preferences`.
    pub settings_imported: u64,
    /// Users imported whose `preferences` were carried in part or not at all (each reported).
    pub preferences_reported: u64,
    /// Users imported with their two-factor sign-in.
    pub two_factor_imported: u64,
    /// Users with two-factor on left for a run that can encrypt their secrets.
    pub users_kept_for_later: u64,
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
/// `dry_run`). `now` decides which tokens are live; without `seal`, users with two-factor on are
/// kept for later.
pub async fn import(
    source: &PgPool,
    target: &Database,
    dry_run: bool,
    now: DateTime<Utc>,
    seal: Option<&dyn TotpSeal>,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Report> {
    let columns = source::Columns::read(source).await?;
    let mut reader = source::Reader::open(source, &columns).await?;
    let mut conn = target.migration_connection().await?;
    let mut report = Report::default();
    if dry_run {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        make_tables_if_missing(&mut conn, target).await?;
    }
    // Each page is written while the next one is read.
    let mut page = reader.users().await?;
    while !page.is_empty() {
        begin_page(&mut conn, dry_run).await?;
        let (next, written) = tokio::join!(
            reader.users(),
            write::users(&mut conn, &page, seal, now, &mut report, &mut progress),
        );
        written?;
        end_page(&mut conn, dry_run).await?;
        progress(Progress::Users(report.users_read));
        page = next?;
    }
    let mut page = reader.tokens().await?;
    while !page.is_empty() {
        begin_page(&mut conn, dry_run).await?;
        let (next, written) = tokio::join!(
            reader.tokens(),
            write::tokens(&mut conn, &page, now, &mut report, &mut progress),
        );
        written?;
        end_page(&mut conn, dry_run).await?;
        progress(Progress::Tokens(report.tokens_read));
        page = next?;
    }
    reader.close().await?;
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

impl Skipped {
    fn new(table: &'static str, id: &str, reason: Skip) -> Self {
        Self {
            table,
            id: id.to_owned(),
            reason,
        }
    }
}
