//! The tracing subscriber: JSON lines (for log shippers) or pretty (on a terminal), filtered by
//! `RUST_LOG`. Security events are mirrored under the `security` target.

mod json;

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use json::{JsonFields, JsonLine};

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn,hyper=warn";

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    // A second init (tests, embedded use) keeps the first subscriber; that is fine.
    let _ = if json {
        json_subscriber(filter, std::io::stdout).try_init()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(true)
            .finish()
            .try_init()
    };
}

/// The JSON-lines subscriber the service runs with, writing to `writer` (benchmarks and tests
/// give it their own).
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(filter).with(
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .with_ansi(false)
            .with_writer(writer),
    )
}
