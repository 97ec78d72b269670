//! Mail: the messages (`templates`), how they leave (`transport`: SMTP, or `.eml` files in
//! development) and the outbox's sender (`sender`). A request never talks SMTP: the flows
//! [`Outbox::send`] a message, which the store keeps durably (with the one-time token it carries,
//! in the same commit), and the sender task delivers it at least once.
//!
//! The outbox and its sender know nothing of email beyond [`transport::Mailer`], the one
//! [`sender::Delivery`] of kind `email`; another kind of outgoing message (a webhook) is another
//! `Delivery` with its own kind and body, on the same table, journal and sender loop.

pub mod sender;
mod smtp_pool;
pub mod templates;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Notify;
use url::Url;

use crate::clock::Clock;
use crate::config::Settings;
use crate::store::outbox::{OneTimeToken, OutboxMessage};
use crate::store::{Store, StoreResult};
pub use sender::OutboxStats;
pub use templates::Template;
use transport::{EMAIL, EmailBody};

/// Where links in mail start when `FRONTEND_URL` is not set.
pub const DEFAULT_FRONTEND_URL: &str = "https://fluxstudio.art";

/// What the flows queue mail through.
pub struct Outbox {
    store: Arc<dyn Store>,
    clock: Clock,
    frontend: Url,
    pub stats: Arc<OutboxStats>,
    /// Wakes the email sender when a message is queued.
    pub wake: Arc<Notify>,
    /// `smtp`, `files`, or `none` (production without SMTP: messages wait).
    pub transport: &'static str,
}

impl Outbox {
    /// How long the oldest waiting message has waited, by this outbox's clock.
    pub fn oldest_pending_age_secs(&self) -> u64 {
        self.stats.oldest_pending_age_secs(self.clock.now())
    }

    pub fn new(
        store: Arc<dyn Store>,
        clock: Clock,
        settings: &Settings,
        transport: &'static str,
    ) -> Self {
        let frontend = settings
            .frontend_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .unwrap_or_else(|| Url::parse(DEFAULT_FRONTEND_URL).unwrap_or_else(|_| unreachable!()));
        Self {
            store,
            clock,
            frontend,
            stats: Arc::default(),
            wake: Arc::new(Notify::new()),
            transport,
        }
    }

    /// The link to `path` of the web app carrying `token` for `email`.
    pub fn link(&self, path: &str, token: &str, email: &str) -> String {
        templates::link(&self.frontend, path, token, email)
    }

    /// The outbox message of `template` for `to` (named `name`).
    pub fn compose(&self, to: &str, name: &str, template: &Template) -> OutboxMessage {
        let body = EmailBody {
            to_name: name.to_owned(),
            subject: template.subject().to_owned(),
            text: template.text(name),
            html: template.html(name),
            link: template.link().map(str::to_owned),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        OutboxMessage::new(EMAIL, to, template.name(), body, self.clock.now())
    }

    /// Queues `template` for `to`, with the one-time token it carries in the same commit, and
    /// wakes the sender. Returns once the message is durable.
    pub async fn send(
        &self,
        to: &str,
        name: &str,
        template: &Template,
        token: Option<&OneTimeToken>,
    ) -> StoreResult<()> {
        let message = self.compose(to, name, template);
        self.store.enqueue(&[message], token).await?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }
}
