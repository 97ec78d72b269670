//! `flux-auth import-fluxstudio [--dry-run]`: FluxStudio's users and live sessions from its
//! Postgres database into flux-auth's tables (see `store::postgres::fluxstudio`), with progress on
//! stderr, each skipped row and a summary on stdout. Two-factor secrets are encrypted here, under
//! `TOTP_ENCRYPTION_KEY`, so the key never reaches the store.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::auth::two_factor::SecretCipher;
use crate::auth::two_factor::codes::{self, Code};
use crate::clock::Clock;
use crate::config::Settings;
use crate::db::{Database, Schemas};
use crate::store::postgres::{self, fluxstudio};

/// FluxStudio's two-factor as flux-auth keeps it: the secret under the configured key, backup
/// codes hashed as sign-in looks them up.
struct Seal(SecretCipher);

impl fluxstudio::TotpSeal for Seal {
    fn seal_secret(&self, user_id: &str, base32: &str) -> Option<String> {
        let secret = codes::secret_from_base32(base32)?;
        Some(self.0.encrypt(user_id, &secret))
    }

    fn backup_code_hash(&self, user_id: &str, code: &str) -> Option<String> {
        match codes::classify(code)? {
            Code::Backup(normalised) => Some(codes::backup_code_hash(user_id, &normalised)),
            Code::Totp(_) => None,
        }
    }
}

pub async fn run(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let seal = SecretCipher::from_settings(
        settings.totp_encryption_key.as_ref(),
        settings.totp_encryption_key_previous.as_ref(),
    )?
    .map(Seal);
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
    let seal = seal.as_ref().map(|s| s as &dyn fluxstudio::TotpSeal);
    let report = fluxstudio::import(&source, &target, dry_run, Clock::default().now(), seal, |p| {
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
        "{}users: {} read, {verb} {}, {} already present, {} skipped ({} email collisions), \
         {} kept for later",
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
        r.users_kept_for_later,
    );
    println!("provider identities: {verb} {}", r.identities_imported);
    println!(
        "settings: {verb} for {} users from their preferences ({} reported above)",
        r.settings_imported, r.preferences_reported,
    );
    println!(
        "two-factor: {verb} for {} users (secrets encrypted, backup codes hashed)",
        r.two_factor_imported
    );
    if r.users_kept_for_later > 0 {
        println!(
            "kept for later: {} users with two-factor on, with their sessions; set \
             TOTP_ENCRYPTION_KEY and run again to import them",
            r.users_kept_for_later
        );
    }
    println!(
        "refresh tokens: {} read, {verb} {} as sessions, {} already present, {} skipped",
        r.tokens_read, r.sessions_imported, r.sessions_present, r.tokens_skipped,
    );
    println!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
