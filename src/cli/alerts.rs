//! `flux-auth alerts test`: a signed test alert to every configured webhook, now, with what each
//! answered.

use std::time::Duration;

use clap::Subcommand;

use crate::alerts::webhook::judge;
use crate::alerts::{Alert, Webhooks, receivers};
use crate::clock::Clock;
use crate::config::{ConfigError, Settings};

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Post a signed test alert to each webhook of ALERT_WEBHOOK_URLS, one after the other, now
    /// (not through the outbox), and print each webhook's status and answer (truncated). Exits 1
    /// when a webhook did not accept it.
    Test,
}

pub async fn run(settings: &Settings, command: AlertsCommand) -> anyhow::Result<()> {
    match command {
        AlertsCommand::Test => test(settings).await,
    }
}

async fn test(settings: &Settings) -> anyhow::Result<()> {
    let mut problems = settings.problems();
    problems.extend(crate::alerts::setting_problems(settings));
    let alert_problems: Vec<String> = problems
        .into_iter()
        .filter(|p| p.starts_with("ALERT_") || p.starts_with("PUBLIC_URL"))
        .collect();
    if !alert_problems.is_empty() {
        return Err(ConfigError::Problems(alert_problems).into());
    }
    let receivers = receivers::from_settings(settings).map_err(ConfigError::Problems)?;
    let (Some(secret), false) = (&settings.alert_webhook_secret, receivers.is_empty()) else {
        return Err(ConfigError::Invalid(
            "no webhook to test: set ALERT_WEBHOOK_URLS and ALERT_WEBHOOK_SECRET".into(),
        )
        .into());
    };
    let clock = Clock::default();
    let webhooks = Webhooks::new(
        receivers,
        secret.clone(),
        Duration::from_millis(settings.alert_timeout_ms),
        clock.clone(),
    )?;
    let dashboard = settings
        .public_url
        .as_deref()
        .map(|u| format!("{}/admin", u.trim_end_matches('/')));
    let alert = Alert::test(
        clock.now(),
        &crate::alerts::instance_name(),
        dashboard.as_deref(),
    );
    let mut failed = 0;
    for receiver in &webhooks.receivers {
        let format = match receiver.format {
            crate::alerts::Format::Json => "json",
            crate::alerts::Format::Slack => "slack",
        };
        match webhooks.post(receiver, &alert).await {
            Ok(answer) => {
                let verdict = match judge(&answer) {
                    Ok(()) => "accepted",
                    Err(e) if e.permanent => "refused",
                    Err(_) => "failed (would be retried)",
                };
                if verdict != "accepted" {
                    failed += 1;
                }
                println!(
                    "{} ({format}): HTTP {} {verdict}; answered: {}",
                    receiver.id,
                    answer.status,
                    answer.body.trim()
                );
            }
            Err(e) => {
                failed += 1;
                println!("{} ({format}): not delivered: {e}", receiver.id);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} webhook(s) did not accept the test alert",
            webhooks.receivers.len()
        );
    }
    Ok(())
}
