//! How an email leaves: SMTP through lettre (implicit TLS, or STARTTLS required unless the host
//! is loopback; SendGrid's relay when `SENDGRID_API_KEY` is set), or, in development without
//! SMTP, an `.eml` file under `<data_dir>/outbox/` with its link logged.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::sender::{CONCURRENCY, Delivery, DeliveryError};
use super::smtp_pool::{SmtpEndpoint, SmtpPool};
use crate::config::Settings;
use crate::store::outbox::OutboxMessage;

/// The outbox kind of email messages.
pub const EMAIL: &str = "email";

const SENDGRID_HOST: &str = "smtp.sendgrid.net";
/// SendGrid's port, with STARTTLS.
const SUBMISSION_PORT: u16 = 587;
/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// An email as the outbox keeps it until it is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailBody {
    pub to_name: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The link the message carries, logged when messages go to files (development only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The sender's address and name.
#[derive(Debug, Clone)]
pub struct From {
    pub name: String,
    pub address: String,
}

impl From {
    pub fn of(settings: &Settings) -> Self {
        Self {
            name: settings
                .smtp_from_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| "FluxStudio".into()),
            address: settings
                .smtp_from
                .clone()
                .or_else(|| settings.email_from.clone())
                .filter(|a| !a.trim().is_empty())
                .unwrap_or_else(|| "noreply@fluxstudio.art".into()),
        }
    }
}

/// Where SMTP goes, as the settings say; `None` when no SMTP is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub implicit_tls: bool,
    pub user: Option<String>,
    /// Whether a password is set (the password itself stays in the settings).
    pub has_password: bool,
}

impl SmtpTarget {
    pub fn of(settings: &Settings) -> Option<Self> {
        if let Some(host) = settings.smtp_host.clone().filter(|h| !h.trim().is_empty()) {
            return Some(Self {
                host,
                port: settings.smtp_port,
                implicit_tls: settings.smtp_secure,
                user: settings.smtp_user.clone(),
                has_password: password(settings).is_some(),
            });
        }
        settings.sendgrid_api_key.as_ref().map(|_| Self {
            host: SENDGRID_HOST.into(),
            port: SUBMISSION_PORT,
            implicit_tls: false,
            user: Some("apikey".into()),
            has_password: true,
        })
    }

    /// Plain SMTP is allowed to a loopback host only (a local relay or a test sink).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// What is wrong with the mail settings, each with its fix (for `check-config` and start).
pub fn setting_problems(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let from = From::of(settings);
    if from.address.parse::<lettre::Address>().is_err() {
        problems.push(format!(
            "SMTP_FROM (or EMAIL_FROM) {:?} is not an email address: set one like \
             noreply@fluxstudio.art",
            from.address
        ));
    }
    if from.name.contains(['\r', '\n']) {
        problems.push("SMTP_FROM_NAME must be one line".into());
    }
    problems
}

fn password(settings: &Settings) -> Option<String> {
    settings
        .smtp_pass
        .as_ref()
        .or(settings.smtp_password.as_ref())
        .map(|s| s.expose_secret().to_owned())
}

/// A configured way to send email.
pub enum Mailer {
    Smtp {
        pool: SmtpPool,
        from: From,
    },
    /// Development without SMTP: one `.eml` file per message.
    Files {
        dir: PathBuf,
        from: From,
    },
}

impl Mailer {
    /// SMTP when configured; else files in development, and nothing in production (messages
    /// wait in the outbox until SMTP is configured; `check-config` says so).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let from = From::of(settings);
        match SmtpTarget::of(settings) {
            Some(target) => {
                let params = TlsParameters::new(target.host.clone())?;
                let tls = if target.implicit_tls {
                    Tls::Wrapper(params)
                } else if target.is_loopback() {
                    // Loopback: STARTTLS when the server offers it, plain otherwise.
                    Tls::Opportunistic(params)
                } else {
                    Tls::Required(params)
                };
                let secret = if settings.smtp_host.is_some() {
                    password(settings)
                } else {
                    settings
                        .sendgrid_api_key
                        .as_ref()
                        .map(|s| s.expose_secret().to_owned())
                };
                let credentials = match (target.user.clone(), secret) {
                    (Some(user), Some(secret)) => Some(Credentials::new(user, secret)),
                    _ => None,
                };
                let endpoint = SmtpEndpoint {
                    host: target.host,
                    port: target.port,
                    tls,
                    credentials,
                    timeout: SMTP_TIMEOUT,
                };
                Ok(Some(Self::Smtp {
                    pool: SmtpPool::new(endpoint, CONCURRENCY),
                    from,
                }))
            }
            None if settings.is_production() => Ok(None),
            None => Ok(Some(Self::Files {
                dir: settings.data_dir.join("outbox"),
                from,
            })),
        }
    }

    fn from(&self) -> &From {
        match self {
            Self::Smtp { from, .. } | Self::Files { from, .. } => from,
        }
    }

    /// `smtp` or `files`.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Smtp { .. } => "smtp",
            Self::Files { .. } => "files",
        }
    }

    /// The message as MIME, refused when an address or header would not be safe.
    fn build(&self, to: &str, body: &EmailBody) -> Result<Message, DeliveryError> {
        let from = self.from();
        let from: Mailbox = Mailbox::new(
            Some(from.name.clone()),
            from.address
                .parse()
                .map_err(|_| DeliveryError::permanent("SMTP_FROM is not a valid address"))?,
        );
        let to_name = body.to_name.replace(['\r', '\n'], " ");
        let to = Mailbox::new(
            (!to_name.trim().is_empty()).then_some(to_name),
            to.parse()
                .map_err(|_| DeliveryError::permanent("the recipient is not a valid address"))?,
        );
        Message::builder()
            .from(from)
            .to(to)
            .subject(body.subject.replace(['\r', '\n'], " "))
            .multipart(MultiPart::alternative_plain_html(
                body.text.clone(),
                body.html.clone(),
            ))
            .map_err(|e| DeliveryError::permanent(format!("could not build the message: {e}")))
    }

    /// Sends one message now (`flux-auth mail test`, and the sender).
    pub async fn send(&self, id: &str, to: &str, body: &EmailBody) -> Result<(), DeliveryError> {
        let message = self.build(to, body)?;
        match self {
            Self::Smtp { pool, .. } => pool.send(message.envelope(), &message.formatted()).await,
            Self::Files { dir, .. } => {
                let path = dir.join(format!("{id}.eml"));
                let bytes = message.formatted();
                let dir = dir.clone();
                let written = tokio::task::spawn_blocking(move || {
                    crate::durable_file::ensure_private_dir(&dir)?;
                    std::fs::write(&path, bytes)?;
                    Ok::<_, std::io::Error>(path)
                })
                .await
                .map_err(|e| DeliveryError::transient(format!("writer stopped: {e}")))?
                .map_err(|e| DeliveryError::transient(format!("could not write the .eml: {e}")))?;
                // Development only: the link is the point of the file, so `cargo run` shows it.
                tracing::info!(
                    file = %written.display(),
                    to,
                    subject = %body.subject,
                    link = body.link.as_deref().unwrap_or("-"),
                    "mail written to a file (no SMTP configured)"
                );
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl Delivery for Mailer {
    fn kind(&self) -> &'static str {
        EMAIL
    }

    async fn deliver(&self, message: &OutboxMessage) -> Result<(), DeliveryError> {
        let body: EmailBody = serde_json::from_str(message.body.as_deref().unwrap_or_default())
            .map_err(|_| DeliveryError::permanent("the stored message is unreadable"))?;
        self.send(&message.id.to_string(), &message.recipient, &body)
            .await
    }
}
