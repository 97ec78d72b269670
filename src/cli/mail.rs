//! `flux-auth mail test <address>` (one message through the configured transport, now) and
//! `flux-auth mail outbox` (pending and dead messages, without their bodies).

use clap::Subcommand;

use crate::config::Settings;
use crate::domain::Email;
use crate::mail::Template;
use crate::mail::transport::{EmailBody, Mailer, SmtpTarget};
use crate::store::outbox::OutboxState;

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Send one test message to ADDRESS through the configured transport (SMTP, or an .eml file
    /// in development without SMTP), now, and say what happened.
    Test {
        /// Where the test message goes.
        address: String,
    },
    /// List the outbox's pending and dead messages, oldest first (no bodies: no tokens).
    Outbox {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub async fn run(settings: &Settings, command: MailCommand) -> anyhow::Result<()> {
    match command {
        MailCommand::Test { address } => test(settings, &address).await,
        MailCommand::Outbox { limit } => outbox(settings, limit).await,
    }
}

async fn test(settings: &Settings, address: &str) -> anyhow::Result<()> {
    let to = Email::parse(address).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let Some(mailer) = Mailer::from_settings(settings)? else {
        anyhow::bail!(
            "no SMTP configured (NODE_ENV=production): set SMTP_HOST (with SMTP_PORT, SMTP_USER, \
             SMTP_PASS) or SENDGRID_API_KEY"
        );
    };
    match SmtpTarget::of(settings) {
        Some(t) => println!(
            "sending through SMTP {}:{} ({})",
            t.host,
            t.port,
            if t.implicit_tls {
                "implicit TLS"
            } else if t.is_loopback() {
                "loopback: STARTTLS when offered"
            } else {
                "STARTTLS required"
            }
        ),
        None => println!(
            "no SMTP configured: writing an .eml file under {}",
            settings.data_dir.join("outbox").display()
        ),
    }
    let template = Template::Test;
    let body = EmailBody {
        to_name: String::new(),
        subject: template.subject().into(),
        text: template.text(""),
        html: template.html(""),
        link: None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    match mailer.send(&id, to.as_str(), &body).await {
        Ok(()) => {
            println!("sent to {}", to.as_str());
            Ok(())
        }
        Err(e) => anyhow::bail!(
            "not sent ({}): {e}",
            if e.permanent {
                "refused: check the address and SMTP_FROM"
            } else {
                "check SMTP_HOST, SMTP_PORT, SMTP_SECURE and the credentials"
            }
        ),
    }
}

async fn outbox(settings: &Settings, limit: usize) -> anyhow::Result<()> {
    let store = super::open_store_now(settings).await?;
    let messages = store.outbox_messages(limit).await?;
    let summary = store.outbox_summary(crate::mail::transport::EMAIL).await?;
    for m in &messages {
        let when = match m.state {
            OutboxState::Pending => format!("next attempt {}", m.next_attempt_at.to_rfc3339()),
            _ => "given up".to_owned(),
        };
        println!(
            "{} {:7} {:20} {} created {} attempts {} {}{}",
            m.id,
            m.state.as_str(),
            m.template,
            m.recipient,
            m.created_at.to_rfc3339(),
            m.attempts,
            when,
            m.last_error
                .as_deref()
                .map(|e| format!(" last error: {e}"))
                .unwrap_or_default()
        );
    }
    println!("{} pending, {} dead (email)", summary.pending, summary.dead);
    Ok(())
}
