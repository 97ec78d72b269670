//! `flux-auth import-fluxstudio [--dry-run]`: FluxStudio's users and live sessions from its
//! Postgres database into flux-auth's tables (see `store::postgres::fluxstudio`), with progress on
//! stderr, each skipped row and a summary on stdout.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::clock::Clock;
use crate::config::Settings;
use crate::db::{Database, Schemas};
use crate::store::postgres::{self, fluxstudio};

pub async fn run(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let target_url = settings
        .database_url
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("import-fluxstudio writes to Postgres: set DATABASE_URL"))?;
    let source_url = settings
        .fluxstudio_database_url
        .as_ref()
        .unwrap_or(target_url);
    let options: PgConnectOptions = source_url
        .expose_secret()
        .parse()
        .map_err(|_| anyhow::anyhow!("FLUXSTUDIO_DATABASE_URL is not a valid postgres:// URL"))?;
    // FluxStudio's tables are named with their schema; this connection changes nothing.
    let source = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(settings.database_connect_timeout_ms))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET default_transaction_read_only = on")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options.application_name("flux-auth import-fluxstudio"));
    let target = Database::connect_lazy(
        target_url,
        &Schemas::from_settings(settings)?,
        2,
        Duration::from_millis(settings.database_connect_timeout_ms),
    )?;
    if !dry_run {
        postgres::migrate(&target)
            .await
            .map_err(|e| anyhow::anyhow!("could not reach or migrate the database: {e}"))?;
    }
    let started = Instant::now();
    let report = fluxstudio::import(&source, &target, dry_run, Clock::default().now(), |p| {
        match p {
            fluxstudio::Progress::Skipped(s) => {
                println!("skipped {} {}: {}", s.table, s.id, s.reason);
            }
            fluxstudio::Progress::Users(n) => eprintln!("users read: {n}"),
            fluxstudio::Progress::Tokens(n) => eprintln!("refresh tokens read: {n}"),
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("import stopped: {e}; nothing of the page it was on was kept, and running it again resumes"))?;
    source.close().await;
    let r = &report;
    let verb = if dry_run { "would import" } else { "imported" };
    println!(
        "{}users: {} read, {verb} {}, {} already present, {} skipped ({} email collisions)",
        if dry_run {
            "dry run, nothing changed. "
        } else {
            ""
        },
        r.users_read,
        r.users_imported,
        r.users_present,
        r.users_skipped,
        r.email_collisions,
    );
    println!("provider identities: {verb} {}", r.identities_imported);
    println!(
        "refresh tokens: {} read, {verb} {} as sessions, {} already present, {} skipped",
        r.tokens_read, r.sessions_imported, r.sessions_present, r.tokens_skipped,
    );
    println!(
        "not carried (counted only): preferences of {} users, two-factor secrets of {} users \
         (those users sign in without a second factor until they set it up again)",
        r.preferences_kept_for_later, r.totp_kept_for_later,
    );
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
