//! `flux-auth events tail|export|stats|replay`: the security log from the command line, read
//! from the same sink the service writes (the security log's database, else the files).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use futures::StreamExt;

use crate::config::Settings;
use crate::db::Database;
use crate::security_log::postgres_sink::PgSink;
use crate::security_log::query::{
    CSV_HEADER, EventFilter, EventSource, EventView, csv_line, ndjson_line,
};
use crate::security_log::spool::{self, Spool};
use crate::security_log::{SecurityEvent, Severity};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the newest events, then new ones as they are written (NDJSON), until Ctrl-C.
    Tail {
        /// How many recent events to print first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Only events at or above this severity (info, low, warning, high, critical).
        #[arg(long)]
        min_severity: Option<String>,
    },
    /// Write matching events to stdout, oldest first.
    Export {
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Counts by type and severity over a window (default: the last 24 hours).
    Stats {
        /// Start of the window (RFC 3339, e.g. 2026-01-31T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End of the window (RFC 3339).
        #[arg(long)]
        to: Option<String>,
    },
    /// Replay the spool files of DIR into the security log's database, oldest first; each file is
    /// deleted once all its events are committed. Safe to repeat: event ids make it idempotent.
    Replay {
        /// A spool folder (by default the service's is SECURITY_LOG_DIR).
        dir: PathBuf,
    },
    /// Build what makes the events API fast on the security log's database, as the service does
    /// at start unless RUN_MIGRATIONS=false: the hourly rollups (a trigger on security_events,
    /// and every stored hour counted) and the indexes (built CONCURRENTLY), then exit.
    Prepare,
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Event type, e.g. login_failed.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Exact severity.
    #[arg(long)]
    severity: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    /// Start (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// End (RFC 3339).
    #[arg(long)]
    to: Option<String>,
}

fn time(raw: Option<&str>, name: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                anyhow::anyhow!("--{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z")
            })
    })
    .transpose()
}

/// The sink the service writes: its database (connected and with its table), else the files.
async fn source(settings: &Settings) -> anyhow::Result<EventSource> {
    match settings.security_log_database_url() {
        Some(url) => Ok(EventSource::Postgres(database(url, settings).await?)),
        None => Ok(EventSource::Files(Arc::new(Spool::open(
            &settings.security_log_dir(),
            crate::clock::Clock::default(),
        )?))),
    }
}

async fn database(url: &secrecy::SecretString, settings: &Settings) -> anyhow::Result<Database> {
    let db = Database::connect_lazy(
        url,
        &crate::db::Schemas::from_settings(settings)?,
        2,
        Duration::from_millis(settings.database_connect_timeout_ms),
    )?;
    db.ensure_security_events()
        .await
        .map_err(|e| anyhow::anyhow!("could not reach the security log database: {e}"))?;
    Ok(db)
}

pub async fn run(settings: &Settings, command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail { last, min_severity } => tail(settings, last, min_severity).await,
        EventsCommand::Export { format, filter } => export(settings, &format, filter).await,
        EventsCommand::Stats { from, to } => {
            let to =
                time(to.as_deref(), "to")?.unwrap_or_else(|| crate::clock::Clock::default().now());
            let from = time(from.as_deref(), "from")?.unwrap_or(to - chrono::Duration::hours(24));
            let stats = source(settings).await?.stats(from, to).await?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
        EventsCommand::Replay { dir } => replay(settings, &dir).await,
        EventsCommand::Prepare => prepare(settings).await,
    }
}

async fn prepare(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.security_log_database_url().ok_or_else(|| {
        anyhow::anyhow!("no security log database: set DATABASE_URL (or SECURITY_LOG_DATABASE_URL)")
    })?;
    let db = database(url, settings).await?;
    crate::security_log::rollups::ensure(&db).await?;
    println!("security event rollups: trigger ready; counting the stored hours");
    crate::security_log::rollups::backfill(&db, &tokio_util::sync::CancellationToken::new())
        .await?;
    println!("security event rollups ready");
    crate::security_log::indexes::ensure(&db).await?;
    println!("security event indexes ready");
    Ok(())
}

async fn tail(
    settings: &Settings,
    last: usize,
    min_severity: Option<String>,
) -> anyhow::Result<()> {
    let min = match min_severity.as_deref() {
        None => Severity::Info,
        Some(s) => Severity::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--min-severity must be info, low, warning, high or critical")
        })?,
    };
    let source = source(settings).await?;
    let passes = |e: &EventView| Severity::parse(&e.severity).is_none_or(|s| s >= min);
    let mut out = std::io::stdout().lock();
    let first = source.page(&EventFilter::default(), last.max(1)).await?;
    let mut newest = first.events.first().map(EventView::cursor);
    for event in first.events.iter().rev().filter(|e| passes(e)).take(last) {
        out.write_all(&ndjson_line(event))?;
    }
    out.flush()?;
    drop(out);
    let stop = crate::shutdown::StopSignals::listen()?.recv();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // Everything newer than the last event printed, in pages, newest first; print oldest first.
        let mut fresh = Vec::new();
        let mut filter = EventFilter::default();
        loop {
            let page = source
                .page(&filter, crate::security_log::query::MAX_PAGE)
                .await?;
            let mut done = page.next_cursor.is_none();
            for event in page.events {
                if newest.is_some_and(|n| (event.created_at, event.id) <= (n.created_at, n.id)) {
                    done = true;
                    break;
                }
                fresh.push(event);
            }
            match (done, fresh.last()) {
                (false, Some(oldest)) => filter.before = Some(oldest.cursor()),
                _ => break,
            }
        }
        if let Some(top) = fresh.first() {
            newest = Some(top.cursor());
        }
        let mut out = std::io::stdout().lock();
        for event in fresh.iter().rev().filter(|e| passes(e)) {
            out.write_all(&ndjson_line(event))?;
        }
        out.flush()?;
    }
}

async fn export(settings: &Settings, format: &str, f: FilterArgs) -> anyhow::Result<()> {
    let csv = match format {
        "ndjson" | "json" => false,
        "csv" => true,
        _ => anyhow::bail!("--format must be ndjson or csv"),
    };
    let filter = EventFilter {
        event_type: f.event_type,
        severity: f.severity,
        user_id: f.user_id,
        ip: f.ip,
        from: time(f.from.as_deref(), "from")?,
        to: time(f.to.as_deref(), "to")?,
        before: None,
    };
    let mut rows = source(settings).await?.export(filter);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if csv {
        out.write_all(CSV_HEADER.as_bytes())?;
    }
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        let event = row?;
        out.write_all(&if csv {
            csv_line(&event)
        } else {
            ndjson_line(&event)
        })?;
        count += 1;
    }
    out.flush()?;
    eprintln!("{count} events exported");
    Ok(())
}

async fn replay(settings: &Settings, dir: &Path) -> anyhow::Result<()> {
    let url = settings.security_log_database_url().ok_or_else(|| {
        anyhow::anyhow!("replay writes to Postgres: set SECURITY_LOG_DATABASE_URL or DATABASE_URL")
    })?;
    let sink = PgSink {
        db: database(url, settings).await?,
    };
    let spool = Spool::open(dir, crate::clock::Clock::default())?;
    let files = spool.sealed_files()?;
    if files.is_empty() {
        println!("no spool files in {}", dir.display());
        return Ok(());
    }
    let (mut events, mut bad) = (0usize, 0usize);
    for (i, path) in files.iter().enumerate() {
        let read = spool::read_file(path)?;
        bad += read.bad_lines;
        for chunk in read.events.chunks(settings.security_log_batch_size.max(1)) {
            let refs: Vec<&SecurityEvent> = chunk.iter().collect();
            sink.insert(&refs).await.map_err(|e| {
                anyhow::anyhow!(
                    "stopped at {} (kept; run again to resume): {e}",
                    path.display()
                )
            })?;
        }
        spool.remove(path)?;
        events += read.events.len();
        eprintln!(
            "[{}/{}] {}: {} events",
            i + 1,
            files.len(),
            path.display(),
            read.events.len()
        );
    }
    println!(
        "replayed {events} events from {} files ({bad} unreadable lines skipped)",
        files.len()
    );
    Ok(())
}
