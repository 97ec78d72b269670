//! The tracing subscriber: JSON lines (for log shippers) or pretty (on a terminal), filtered by
//! `RUST_LOG`. Security events are mirrored under the `security` target.

pub mod error_tracking;
mod json;
pub mod writer;

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub use error_tracking::ErrorTracking;
use json::{JsonFields, JsonLine};
pub use writer::{LogDrops, LogOutput};

use crate::config::{LOG_BUFFER_LINES, LogFormat, Settings};

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn,hyper=warn";

/// Installs the subscriber, its lines written to stdout by a thread of their own (see
/// [`writer`]): up to `LOG_BUFFER_LINES` may wait there, and beyond that they are dropped and
/// counted (`flux_auth_log_lines_dropped_total`). Security events do not depend on these lines:
/// the security log writes its own database rows and spool files. With `errors` (a Sentry client),
/// ERROR lines are also reported there ([`error_tracking::tracing_layer`]). Keep the returned
/// [`LogOutput`] until the process ends: dropping it writes out the lines still waiting.
pub fn init(settings: &Settings, errors: Option<&ErrorTracking>) -> std::io::Result<LogOutput> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    // Out of range is refused with the other settings' problems; until then, clamped.
    let limit = settings
        .log_buffer_lines
        .clamp(LOG_BUFFER_LINES.min, LOG_BUFFER_LINES.max);
    let (writer, output) = writer::start(std::io::stdout(), limit)?;
    let errors = errors.map(|_| error_tracking::tracing_layer(settings));
    let registry = tracing_subscriber::registry().with(filter).with(errors);
    // A second init (tests, embedded use) keeps the first subscriber; that is fine.
    let _ = if json {
        registry.with(json_layer(writer)).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_writer(writer),
            )
            .try_init()
    };
    Ok(output)
}

/// The JSON-lines subscriber the service runs with, writing to `writer` (benchmarks and tests
/// give it their own).
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(filter)
        .with(json_layer(writer))
}

fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields)
        .event_format(JsonLine)
        .with_ansi(false)
        .with_writer(writer)
}

/// `/metrics` reads the lines dropped at scrape time.
impl prometheus_client::collector::Collector for LogDrops {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        crate::metrics::counter(
            &mut e,
            "log_lines_dropped",
            "Log lines dropped because stdout could not keep up",
            self.count(),
        )
    }
}
