//! The command line: `serve` (the default, what pm2 and systemd run), `migrate`, `check-config`,
//! `gen-secret`, `import-users`, `import-fluxstudio`, `users set-type`, `users email-collisions`, `users
//! linked-with-password`, `users revoke-password`, `cleanup`, `events`, `mail`,
//! `alerts` and `healthcheck`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod alerts;
mod check_config;
mod events;
mod import_fluxstudio;
mod mail;

use crate::app::App;
use crate::auth::operator::PasswordRevocation;
use crate::auth::service::DisabledBy;
use crate::config::{Settings, StorageKind};
use crate::db::{Database, Schema, Schemas};
use crate::domain::{Email, UserType};
use crate::security_log::{self, EventType, SecurityEvent};
use crate::store::postgres::{self, PgStore};
use crate::store::{ImportOutcome, Store, StoreError, UserStore, json_file};
use crate::telemetry::LogDrops;

/// Exit codes, documented in docs/OPERATIONS.md: scripts and supervisors can tell a bad config
/// from a crash.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    /// EX_CONFIG: fix the configuration; restarting will not help.
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "flux-auth",
    version,
    about = "FluxStudio's authentication service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default when no command is given).
    Serve,
    /// Apply the database migrations to DATABASE_URL (and SECURITY_LOG_DATABASE_URL), then exit.
    /// Another application's tables, and an existing security_events table, are left as they are.
    Migrate,
    /// Check the configuration and list every problem with how to fix it.
    CheckConfig,
    /// Print a new random JWT_SECRET (384 bits, base64url).
    GenSecret,
    /// Print a new random TOTP_ENCRYPTION_KEY (an AES-256 key: 32 bytes, base64).
    GenTotpKey,
    /// Copy users from the old service's users.json into Postgres (DATABASE_URL). Idempotent:
    /// users whose id or email is already there are skipped.
    ImportUsers {
        /// Path to the old users.json ({"users":[...]}).
        file: PathBuf,
    },
    /// Bring FluxStudio's users and live sessions from its Postgres database into flux-auth.
    ///
    /// Reads public.users and public.refresh_tokens of FLUXSTUDIO_DATABASE_URL (default
    /// DATABASE_URL) and writes flux-auth's tables in DATABASE_URL: ids kept, emails
    /// canonicalised (accounts that collide are reported, not merged), bcrypt hashes kept,
    /// provider columns as identities, preferences as settings, two-factor secrets encrypted
    /// under TOTP_ENCRYPTION_KEY (without it, users with two-factor on are kept for a later run),
    /// live refresh tokens as sessions. Idempotent and resumable: run it again to pick up what is
    /// new. Progress on stderr; every skipped row and a summary on stdout.
    ImportFluxstudio {
        /// Report what would be imported and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Delete sessions that ended long ago and security events past their retention, once.
    Cleanup,
    /// Read the security log: tail, export, stats, or replay a spool folder.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Mail: send a test message, or list the outbox.
    Mail {
        #[command(subcommand)]
        command: mail::MailCommand,
    },
    /// Alerts: post a signed test alert to every configured webhook.
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// Exit 0 if a flux-auth instance answers on its port (for Docker HEALTHCHECK), else 1.
    Healthcheck {
        /// Port to check; defaults to PORT from the configuration.
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Set a user's type: client, designer or admin (admin is only ever granted here).
    SetType {
        email: String,
        #[arg(value_parser = ["client", "designer", "admin"])]
        user_type: String,
    },
    /// List accounts that cannot sign in by email until an operator resolves them.
    ///
    /// Those whose email is another spelling of an earlier account's mailbox (same canonical
    /// key), and those whose email has no key (accepted by the old service, not valid today).
    EmailCollisions,
    /// List accounts that both a provider identity and a password open.
    ///
    /// Those whose email is unverified are marked: an address registered by someone else, then
    /// entered by its owner through the provider (Google), leaves the registrant's password and
    /// sessions in the owner's account. `revoke-password` removes them.
    LinkedWithPassword,
    /// Remove an account's password and end its sessions; it keeps its provider sign-in.
    ///
    /// Removes the password of an account that a provider identity signs in to, ends every
    /// session, denies every access token issued so far (shared through Redis when REDIS_URL is
    /// set) and records mass_token_revocation (reason password_revoked, by cli). Refused for an
    /// account without a provider identity, which nothing else would open. Safe to repeat.
    RevokePassword {
        /// The account: its email (any spelling) or its id.
        account: String,
    },
    /// Turn off an account's two-factor sign-in, for a user who lost both device and backup codes.
    ///
    /// Deletes the account's TOTP secret and backup codes and records mfa_disabled (by:
    /// operator); the user signs in with the password alone and may set two-factor up again.
    /// Sessions are left alone. Check who is asking before running it. Safe to repeat.
    #[command(name = "2fa-off")]
    TwoFactorOff {
        /// The account: its email (any spelling) or its id.
        account: String,
    },
}

/// Runs the command; `log` counts the log lines the writer dropped (for `/metrics`).
pub async fn run(cli: Cli, settings: Settings, log: LogDrops) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings, log).await,
        Command::Migrate => migrate(&settings).await,
        Command::ImportFluxstudio { dry_run } => import_fluxstudio::run(&settings, dry_run).await,
        Command::CheckConfig => return check_config::check_config(&settings),
        Command::GenSecret => {
            println!("{}", crate::config::generate_secret());
            Ok(())
        }
        Command::GenTotpKey => {
            println!("{}", crate::auth::two_factor::cipher::generate_key());
            Ok(())
        }
        Command::ImportUsers { file } => import_users(&settings, &file).await,
        Command::Cleanup => cleanup(settings).await,
        Command::Events { command } => events::run(&settings, command).await,
        Command::Mail { command } => mail::run(&settings, command).await,
        Command::Alerts { command } => alerts::run(&settings, command).await,
        Command::Users {
            command: UsersCommand::SetType { email, user_type },
        } => set_type(&settings, &email, &user_type).await,
        Command::Users {
            command: UsersCommand::EmailCollisions,
        } => email_collisions(&settings).await,
        Command::Users {
            command: UsersCommand::LinkedWithPassword,
        } => linked_with_password(&settings).await,
        Command::Users {
            command: UsersCommand::RevokePassword { account },
        } => revoke_password(settings, &account).await,
        Command::Users {
            command: UsersCommand::TwoFactorOff { account },
        } => two_factor_off(settings, &account).await,
        Command::Healthcheck { port } => return healthcheck(port.unwrap_or(settings.port)).await,
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            let config = e.downcast_ref::<crate::config::ConfigError>().is_some();
            eprintln!("flux-auth: {e:#}");
            ExitCode::from(if config { exit::CONFIG } else { exit::FAILURE })
        }
    }
}

async fn serve(settings: Settings, log: LogDrops) -> anyhow::Result<()> {
    // Before anything can report ready: see `StopSignals`.
    let signals = crate::shutdown::StopSignals::listen()?;
    // Secrets are `SecretString`s: their Debug form is redacted.
    tracing::info!(config = ?settings, "effective configuration");
    let app = App::build_with_log(settings, log).await?;
    app.run_until_stopped(async move {
        let signal = signals.recv().await;
        tracing::info!(
            signal,
            "shutting down: finishing in-flight requests, then flushing security events"
        );
    })
    .await
}

async fn connect_now(url: &secrecy::SecretString, settings: &Settings) -> anyhow::Result<Database> {
    let db = Database::connect_lazy(
        url,
        &Schemas::from_settings(settings)?,
        2,
        Duration::from_millis(settings.database_connect_timeout_ms),
    )?;
    postgres::migrate(&db)
        .await
        .map_err(|e| anyhow::anyhow!("could not reach or migrate the database: {e}"))?;
    Ok(db)
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store_in_postgres = settings.storage_kind() == StorageKind::Postgres;
    let mut targets = Vec::new();
    if let Some(url) = &settings.database_url {
        // With STORAGE=file, DATABASE_URL holds only the security log.
        targets.push((
            url,
            if store_in_postgres {
                Schema::Full
            } else {
                Schema::SecurityEventsOnly
            },
        ));
    }
    if let Some(url) = &settings.security_log_database_url {
        targets.push((url, Schema::SecurityEventsOnly));
    }
    let mut done = 0;
    for (url, schema) in targets {
        let db = Database::connect_lazy(
            url,
            &Schemas::from_settings(settings)?,
            2,
            Duration::from_millis(settings.database_connect_timeout_ms),
        )?;
        match schema {
            Schema::Full => postgres::migrate(&db).await,
            Schema::SecurityEventsOnly => db.ensure_security_events().await,
        }
        .map_err(|e| anyhow::anyhow!("could not reach or migrate the database: {e}"))?;
        done += 1;
    }
    if done == 0 {
        anyhow::bail!("no database configured: set DATABASE_URL (or SECURITY_LOG_DATABASE_URL)");
    }
    println!(
        "migrations applied ({} migration files)",
        crate::db::MIGRATOR.iter().count()
    );
    Ok(())
}

/// The configured store, ready now (migrated, for Postgres) rather than in the background.
async fn open_store_now(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match (settings.storage_kind(), &settings.database_url) {
        (StorageKind::Postgres, Some(url)) => {
            Arc::new(PgStore::from_database(connect_now(url, settings).await?))
        }
        _ => Arc::new(json_file::FileStore::open(&settings.data_dir).await?),
    })
}

async fn import_users(settings: &Settings, file: &std::path::Path) -> anyhow::Result<()> {
    let url = settings
        .database_url
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("import-users writes to Postgres: set DATABASE_URL"))?;
    let users = json_file::read_users_file(file)?;
    let store = PgStore::from_database(connect_now(url, settings).await?);
    let total = users.len();
    let (mut inserted, mut skipped, mut invalid) = (0usize, 0usize, 0usize);
    for (i, mut user) in users.into_iter().enumerate() {
        match Email::parse(&user.email) {
            Ok(email) => user.email = email.as_str().to_owned(),
            Err(_) => {
                invalid += 1;
                eprintln!("skipping user {}: invalid email", user.id);
                continue;
            }
        }
        match store.import_user(&user).await {
            Ok(ImportOutcome::Inserted) => inserted += 1,
            Ok(ImportOutcome::Skipped) => skipped += 1,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "import stopped at user {} of {total}: {e}",
                    i + 1
                ));
            }
        }
        if (i + 1) % 500 == 0 || i + 1 == total {
            eprint!("\rimported {}/{total}", i + 1);
        }
    }
    eprintln!();
    println!(
        "{total} users read: {inserted} imported, {skipped} already present, {invalid} invalid"
    );
    Ok(())
}

/// Waits until the store and the security log's database (migrated in the background) answer.
async fn databases_ready(core: &crate::app::Core) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while core.state.auth.store.ping().await.is_err()
        || core
            .state
            .security_db
            .as_ref()
            .is_some_and(|db| !db.is_ready())
    {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the database did not answer within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn cleanup(settings: Settings) -> anyhow::Result<()> {
    let core = crate::app::Core::build(settings, LogDrops::default()).await?;
    // The store migrates in the background; give it a moment to come up.
    databases_ready(&core).await?;
    let report = crate::cleanup::run_once(&core.state).await;
    core.shutdown().await;
    println!(
        "deleted {} ended sessions and {} expired security events",
        report.sessions_deleted, report.events_deleted
    );
    Ok(())
}

async fn set_type(settings: &Settings, email: &str, user_type: &str) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let user_type = UserType::parse(user_type)
        .ok_or_else(|| anyhow::anyhow!("user type must be client, designer or admin"))?;
    let store = open_store_now(settings).await?;
    let user = match store.set_user_type(&email, user_type).await {
        Ok(user) => user,
        Err(StoreError::NotFound) => anyhow::bail!("no user with email {email}"),
        Err(e) => return Err(e.into()),
    };
    let pipeline = security_log::start(
        settings,
        &crate::metrics::Metrics::default(),
        &crate::clock::Clock::default(),
    )?;
    // Give the log's database a moment, so the event lands in the table rather than the spool.
    if let Some(db) = &pipeline.database {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !db.is_ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pipeline
        .logger
        .record(
            SecurityEvent::new(EventType::UserTypeChanged)
                .user(&user.id)
                .email(&user.email)
                .with("userType", user_type.as_str())
                .with("by", "cli"),
        )
        .await;
    pipeline.stop.cancel();
    let _ = pipeline.writer.await;
    println!("{} is now {}", user.email, user_type.as_str());
    Ok(())
}

async fn email_collisions(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store_now(settings).await?;
    let collisions = store.email_collisions().await?;
    let mut shared = 0;
    for c in &collisions {
        match &c.holder {
            Some(holder) => {
                shared += 1;
                println!(
                    "{} <{}> shares its mailbox with {} <{}>",
                    c.user_id, c.email, holder.id, holder.email
                );
            }
            None => println!(
                "{} <{}> has no email key: the address is not valid today",
                c.user_id, c.email
            ),
        }
    }
    println!("{shared} account(s) share a mailbox with an earlier account");
    println!(
        "{} account(s) have an address without an email key",
        collisions.len() - shared
    );
    Ok(())
}

async fn linked_with_password(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store_now(settings).await?;
    let users = store.linked_with_password().await?;
    for user in &users {
        let issuers: Vec<String> = store
            .identities_of(&user.id)
            .await?
            .into_iter()
            .map(|i| i.issuer)
            .collect();
        println!(
            "{} <{}> has a password and signs in through {}; email {}",
            user.id,
            user.email,
            issuers.join(", "),
            if user.email_verified {
                "verified"
            } else {
                "unverified"
            }
        );
    }
    let unverified = users.iter().filter(|u| !u.email_verified).count();
    println!(
        "{} account(s) open to a provider identity and a password, {unverified} with an \
         unverified email",
        users.len()
    );
    if !users.is_empty() {
        println!(
            "the password may be that of whoever registered the address before its owner signed \
             in through the provider; `flux-auth users revoke-password <id>` removes it and ends \
             the account's sessions"
        );
    }
    Ok(())
}

async fn revoke_password(settings: Settings, account: &str) -> anyhow::Result<()> {
    let redis = settings.redis_url.is_some();
    let ttl = settings.access_token_ttl_secs;
    let core = crate::app::Core::build(settings, LogDrops::default()).await?;
    let outcome = async {
        databases_ready(&core).await?;
        let auth = &core.state.auth;
        let Some((user, _)) = auth.find_user_for_admin(account).await? else {
            anyhow::bail!("no account with the id or email {account}");
        };
        match auth.revoke_password(&user).await? {
            PasswordRevocation::NoOtherWayIn => anyhow::bail!(
                "{} <{}> has no provider identity: without its password nobody could sign in \
                 to it; nothing changed",
                user.id,
                user.email
            ),
            PasswordRevocation::Revoked {
                had_password,
                sessions_ended,
            } => println!(
                "{} <{}>: {}, {sessions_ended} session(s) ended; it signs in through its \
                 provider identity only",
                user.id,
                user.email,
                if had_password {
                    "password removed"
                } else {
                    "had no password"
                }
            ),
        }
        if auth.revocations.waiting_for_redis() > 0 {
            anyhow::bail!(
                "Redis did not take the cutoff for the account's access tokens: those already \
                 issued work until they expire (at most {ttl} s); run the command again once \
                 Redis answers"
            );
        }
        if !redis {
            eprintln!(
                "note: without REDIS_URL the running service does not learn of the cutoff: \
                 access tokens already issued work until they expire (at most {ttl} s) or the \
                 service restarts"
            );
        }
        anyhow::Ok(())
    }
    .await;
    core.shutdown().await;
    outcome
}

async fn two_factor_off(settings: Settings, account: &str) -> anyhow::Result<()> {
    let core = crate::app::Core::build(settings, LogDrops::default()).await?;
    let outcome = async {
        databases_ready(&core).await?;
        let auth = &core.state.auth;
        let Some((user, _)) = auth.find_user_for_admin(account).await? else {
            anyhow::bail!("no account with the id or email {account}");
        };
        let turned_off = auth
            .two_factor_disable_for(&user, DisabledBy::Operator, None, None)
            .await?;
        println!(
            "{} <{}>: {}",
            user.id,
            user.email,
            if turned_off {
                "two-factor sign-in turned off; the password alone signs in now"
            } else {
                "two-factor sign-in was not on; nothing changed"
            }
        );
        anyhow::Ok(())
    }
    .await;
    core.shutdown().await;
    outcome
}

/// A bare HTTP/1.1 GET of `/health/live` on localhost, so the image needs no curl.
async fn healthcheck(port: u16) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(true)) => ExitCode::from(exit::OK),
        _ => {
            eprintln!("flux-auth is not answering on port {port}");
            ExitCode::from(exit::FAILURE)
        }
    }
}
