//! `flux-auth check-config`: every problem with the configuration, or what it sets up.

use std::process::ExitCode;

use super::exit;
use crate::config::Settings;

pub fn check_config(settings: &Settings) -> ExitCode {
    let now = crate::clock::Clock::default().now();
    let problems = crate::app::setting_problems(settings, now);
    if problems.is_empty() {
        println!("configuration OK");
        println!("  storage:      {:?}", settings.storage_kind());
        println!(
            "  security log: {}",
            if settings.security_log_database_url().is_some() {
                "postgresql"
            } else {
                "files"
            }
        );
        println!(
            "  redis:        {}",
            if settings.redis_url.is_some() {
                "configured"
            } else {
                "not configured (in-process limits)"
            }
        );
        match crate::mail::transport::SmtpTarget::of(settings) {
            Some(t) => println!("  mail:         smtp {}:{}", t.host, t.port),
            None if settings.is_production() => println!(
                "  warning: no SMTP configured: verification and reset mail waits in the outbox \
                 and is never sent; set SMTP_HOST (SMTP_PORT, SMTP_USER, SMTP_PASS) or SENDGRID_API_KEY"
            ),
            None => println!(
                "  mail:         no SMTP: .eml files under {} (development)",
                settings.data_dir.join("outbox").display()
            ),
        }
        println!(
            "  two-factor:   {}",
            if settings.totp_encryption_key.is_some() {
                "available"
            } else {
                "unavailable: TOTP_ENCRYPTION_KEY is unset, so setup answers 503 and users who \
                 have it on cannot finish signing in (generate one with `flux-auth gen-totp-key`)"
            }
        );
        println!(
            "  errors:       {}",
            crate::telemetry::error_tracking::describe(settings)
        );
        match crate::auth::fluxstudio_tokens::until(settings) {
            Ok(Some(until)) if until > now => println!(
                "  FluxStudio's access tokens: accepted until {} (LEGACY_ACCESS_TOKENS_UNTIL)",
                until.to_rfc3339()
            ),
            Ok(Some(_)) => println!(
                "  note: LEGACY_ACCESS_TOKENS_UNTIL has passed and has no effect: FluxStudio's \
                 access tokens are refused; remove the setting"
            ),
            _ => {}
        }
        if settings.jwt_secret.is_none() {
            println!(
                "  note: JWT_SECRET unset; a development secret is kept in {}",
                settings.data_dir.join(".jwt-secret").display()
            );
        }
        ExitCode::from(exit::OK)
    } else {
        eprintln!("{} configuration problem(s):", problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(exit::CONFIG)
    }
}
