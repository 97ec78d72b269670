use std::process::ExitCode;

use clap::Parser;
use flux_auth::cli::{self, Cli};
use flux_auth::config::Settings;

/// Measured (BENCHMARKS.md): with glibc malloc, allocation was ~22% of the CPU of `/me` under load,
/// much of it lock contention between the runtime's worker threads; mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("flux-auth: configuration error: {e}");
            return ExitCode::from(cli::exit::CONFIG);
        }
    };
    // Both held to the end. Dropped in reverse: the log lines still buffered are written out,
    // then the error events still queued are sent (for at most a second).
    let errors = flux_auth::telemetry::error_tracking::init(&settings);
    let log = match flux_auth::telemetry::init(&settings, errors.as_ref()) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("flux-auth: could not start the log writer thread: {e}");
            return ExitCode::from(cli::exit::FAILURE);
        }
    };
    cli::run(cli, settings, log.drops()).await
}
