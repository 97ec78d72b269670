//! Error tracking: internal errors (the 5xx path's ERROR log), other ERROR logs and panics become
//! Sentry events, tagged with the request id, route and status, when `SENTRY_DSN` is set. Without
//! it no client exists: no thread, no layer, nothing sent.
//!
//! Any Sentry-compatible ingestion endpoint works (self-hosted Sentry, GlitchTip, Relay): events
//! go as envelopes over HTTP(S) from a thread of their own (rustls), so a slow or unreachable
//! endpoint never holds a request; past a queue of 30 envelopes, new ones are dropped. Nothing
//! leaves unscrubbed ([`scrub`]), and no default PII (client addresses, cookies, bodies) is
//! collected. At exit, what is still queued is sent for at most [`FLUSH_TIMEOUT`].

mod scrub;

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sentry::protocol::{Envelope, EnvelopeItem};
use sentry::{ClientOptions, Transport, TransportFactory, TransportOptions};
use tracing::{Level, Subscriber};
use tracing_subscriber::registry::LookupSpan;

pub use scrub::{FILTERED, Scrubber};

use crate::config::Settings;

/// The longest the process waits at exit for queued events to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest one report's POST may take, connecting included. Without it an endpoint that
/// accepts the connection and never answers holds the one sending thread for good: the reports
/// queued behind it (30 at most) wait, and every later one is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Breadcrumbs (WARN logs) kept per scope and sent with an event.
const MAX_BREADCRUMBS: usize = 20;

/// The release events are filed under when `SENTRY_RELEASE` is unset.
pub const DEFAULT_RELEASE: &str = concat!(env!("CARGO_PKG_NAME"), "@", env!("CARGO_PKG_VERSION"));

/// The Sentry client, for as long as the process runs: dropping it sends what is still queued
/// (for at most [`FLUSH_TIMEOUT`]) and stops the sending thread.
pub struct ErrorTracking {
    _client: sentry::ClientInitGuard,
}

/// What is wrong with the error-tracking settings. The DSN is never repeated: its key is a secret.
pub fn setting_problems(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(dsn) = &settings.sentry_dsn
        && dsn.expose_secret().parse::<sentry::types::Dsn>().is_err()
    {
        problems.push(
            "SENTRY_DSN is not a valid DSN: expected https://<key>@<host>/<project> (http:// for \
             an endpoint on a private network)."
                .into(),
        );
    }
    let rate = settings.sentry_traces_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        problems.push(format!(
            "SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1 (default 0), not {rate}."
        ));
    }
    if settings.debug_panic_route && settings.is_production() {
        problems.push(
            "DEBUG_PANIC_ROUTE serves a route that panics on request; it is for testing error \
             tracking and must be off when NODE_ENV=production."
                .into(),
        );
    }
    problems
}

/// Where errors are reported, for `check-config`: the endpoint's host and project, never its key.
pub fn describe(settings: &Settings) -> String {
    let dsn = settings
        .sentry_dsn
        .as_ref()
        .and_then(|dsn| dsn.expose_secret().parse::<sentry::types::Dsn>().ok());
    match dsn {
        Some(dsn) => format!(
            "reported to Sentry at {}://{}:{} (project {}, traces sampled: {})",
            dsn.scheme(),
            dsn.host(),
            dsn.port(),
            dsn.project_id(),
            settings.sentry_traces_sample_rate
        ),
        None => "not reported (SENTRY_DSN unset)".into(),
    }
}

/// Starts the Sentry client when `SENTRY_DSN` is set and valid; `None` otherwise (a malformed DSN
/// is reported by `check-config` and refused at start, with the other settings' problems).
pub fn init(settings: &Settings) -> Option<ErrorTracking> {
    let dsn = settings
        .sentry_dsn
        .as_ref()?
        .expose_secret()
        .parse::<sentry::types::Dsn>()
        .ok()?;
    let scrubber = Arc::new(Scrubber::new().ok()?);
    let environment = settings
        .sentry_environment
        .clone()
        .unwrap_or_else(|| environment_name(settings).into());
    let release = settings
        .sentry_release
        .clone()
        .unwrap_or_else(|| DEFAULT_RELEASE.into());
    let (events, crumbs) = (scrubber.clone(), scrubber.clone());
    let rate = settings.sentry_traces_sample_rate.clamp(0.0, 1.0) as f32;
    let mut options = ClientOptions::new()
        .send_default_pii(false)
        .max_breadcrumbs(MAX_BREADCRUMBS)
        .shutdown_timeout(FLUSH_TIMEOUT);
    if rate > 0.0 {
        options = options.traces_sample_rate(rate);
    }
    options.dsn = Some(dsn);
    options.environment = Some(environment.into());
    options.release = Some(release.into());
    options.before_send = Some(Arc::new(move |event| {
        events.item(&event).map(mark_panic_answered)
    }));
    options.before_breadcrumb = Some(Arc::new(move |crumb| crumbs.item(&crumb)));
    options.transport = Some(Arc::new(Scrubbing(scrubber)));
    Some(ErrorTracking {
        _client: sentry::init(options),
    })
}

fn environment_name(settings: &Settings) -> &'static str {
    use crate::config::Environment;
    match settings.node_env {
        Environment::Development => "development",
        Environment::Production => "production",
        Environment::Test => "test",
    }
}

/// A panic inside a request is answered 500 (the router catches it); its event says so, as an
/// internal error's does.
fn mark_panic_answered(
    mut event: sentry::protocol::Event<'static>,
) -> sentry::protocol::Event<'static> {
    let panicked = event
        .exception
        .iter()
        .any(|e| e.mechanism.as_ref().is_some_and(|m| m.ty == "panic"));
    if panicked && event.tags.contains_key("request_id") {
        event
            .tags
            .entry("status".into())
            .or_insert_with(|| "500".into());
    }
    event
}

/// The tracing layer that makes ERROR logs events and WARN logs breadcrumbs (INFO and below are
/// left alone: the request line alone would cost every request a breadcrumb). Tracing spans
/// become Sentry spans only when transactions are sampled at all (`SENTRY_TRACES_SAMPLE_RATE`
/// above 0); otherwise each would cost every request a transaction that is never sent.
pub fn tracing_layer<S>(settings: &Settings) -> sentry::integrations::tracing::SentryLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use sentry::integrations::tracing::EventFilter;
    let traced = settings.sentry_traces_sample_rate > 0.0;
    sentry::integrations::tracing::layer()
        .event_filter(|metadata| match *metadata.level() {
            Level::ERROR => EventFilter::Event,
            Level::WARN => EventFilter::Breadcrumb,
            _ => EventFilter::Ignore,
        })
        .span_filter(move |metadata| traced && *metadata.level() <= Level::INFO)
}

/// `router` with a Sentry hub of its own per request (so tags and breadcrumbs stay with their
/// request, and a panic is reported with them), and, when transactions are sampled, the
/// request's transaction. Unchanged without `SENTRY_DSN`.
pub fn around(router: axum::Router, settings: &Settings) -> axum::Router {
    use sentry::integrations::tower::{NewSentryLayer, SentryHttpLayer};
    if settings.sentry_dsn.is_none() {
        return router;
    }
    let router = if settings.sentry_traces_sample_rate > 0.0 {
        router.layer(SentryHttpLayer::default().enable_transaction())
    } else {
        router
    };
    router.layer(NewSentryLayer::<axum::extract::Request>::new_from_top())
}

/// Tags what the current request's events will carry: its id, route (the canonical path) and
/// method. Does nothing without a Sentry client.
pub fn tag_request(request_id: &str, route: &str, method: &str) {
    sentry::configure_scope(|scope| {
        scope.set_tag("request_id", request_id);
        scope.set_tag("route", route);
        scope.set_tag("method", method);
    });
}

/// Tags the current request's status, once known (before its internal error is logged).
pub fn tag_status(status: u16) {
    sentry::configure_scope(|scope| scope.set_tag("status", status));
}

/// Makes the HTTP transport, behind [`Scrubbed`].
struct Scrubbing(Arc<Scrubber>);

impl TransportFactory for Scrubbing {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        let agent = agent(&options);
        let http = sentry::transports::UreqHttpTransportOptions::from(options)
            .with_agent(agent)
            .build();
        Arc::new(Scrubbed {
            http,
            scrubber: self.0.clone(),
        })
    }
}

/// The agent sentry's transport would make (rustls, the proxy for the DSN's scheme), with
/// [`SEND_TIMEOUT`].
fn agent(options: &TransportOptions) -> ureq::Agent {
    let proxy = match (
        options.dsn.scheme(),
        &options.http_proxy,
        &options.https_proxy,
    ) {
        (sentry::types::Scheme::Https, _, Some(proxy)) | (_, Some(proxy), _) => {
            ureq::Proxy::new(proxy).ok()
        }
        _ => None,
    };
    ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .disable_verification(options.accept_invalid_certs)
                .build(),
        )
        .proxy(proxy)
        .timeout_global(Some(SEND_TIMEOUT))
        .build()
        .new_agent()
}

/// The HTTP transport, with every event and transaction scrubbed on the way in: transactions
/// (request URLs, span data) have no `before_send` of their own.
struct Scrubbed {
    http: sentry::transports::UreqHttpTransport,
    scrubber: Arc<Scrubber>,
}

impl Transport for Scrubbed {
    fn send_envelope(&self, envelope: Envelope) {
        let mut scrubbed = Envelope::new().with_headers(envelope.headers().clone());
        for item in envelope.into_items() {
            match item {
                EnvelopeItem::Event(event) => {
                    if let Some(event) = self.scrubber.item(&event) {
                        scrubbed.add_item(EnvelopeItem::Event(event));
                    }
                }
                EnvelopeItem::Transaction(transaction) => {
                    if let Some(transaction) = self.scrubber.item(&transaction) {
                        scrubbed.add_item(EnvelopeItem::Transaction(transaction));
                    }
                }
                other => scrubbed.add_item(other),
            }
        }
        if scrubbed.items().next().is_some() {
            self.http.send_envelope(scrubbed);
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        self.http.flush(timeout)
    }

    fn shutdown(&self, timeout: Duration) -> bool {
        self.http.shutdown(timeout)
    }
}
