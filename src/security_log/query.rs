//! Reading security events back, from Postgres or (when the files are the log) from the
//! JSON-lines files: filtered pages newest first with an opaque cursor, counts by type and
//! severity, and a streamed export.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use uuid::Uuid;

use super::event::SecurityEvent;
use super::spool::{self, Spool};
use crate::db::Database;
use crate::domain::format_timestamp;

/// Most events one page returns.
pub const MAX_PAGE: usize = 500;

/// Where events are read from: the database when the log has one, else the files.
#[derive(Clone)]
pub enum EventSource {
    Postgres(Database),
    Files(Arc<Spool>),
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub severity: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only events strictly older than this position (newest-first paging).
    pub before: Option<Cursor>,
}

/// A position in the newest-first order: (created_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// An event as the API shows it. Types are strings: rows written by the old service may carry
/// types this version does not know, and they are still shown.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: Uuid,
    pub event_type: String,
    pub severity: String,
    pub user_id: Option<String>,
    pub token_id: Option<Uuid>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub metadata: Option<serde_json::Value>,
    #[serde(serialize_with = "iso")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

fn iso<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*at))
}

impl From<SecurityEvent> for EventView {
    fn from(e: SecurityEvent) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type.as_str().to_owned(),
            severity: e.severity.as_str().to_owned(),
            user_id: e.user_id,
            token_id: e.token_id,
            ip_address: e.ip_address,
            user_agent: e.user_agent,
            metadata: Some(serde_json::Value::Object(e.metadata)),
            created_at: e.created_at,
        }
    }
}

impl EventView {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }

    fn matches(&self, f: &EventFilter) -> bool {
        f.event_type.as_ref().is_none_or(|t| *t == self.event_type)
            && f.severity.as_ref().is_none_or(|s| *s == self.severity)
            && f.user_id
                .as_ref()
                .is_none_or(|u| Some(u) == self.user_id.as_ref())
            && f.ip
                .as_ref()
                .is_none_or(|ip| Some(ip) == self.ip_address.as_ref())
            && f.from.is_none_or(|from| self.created_at >= from)
            && f.to.is_none_or(|to| self.created_at < to)
            && f.before
                .is_none_or(|c| (self.created_at, self.id) < (c.created_at, c.id))
    }
}

pub struct Page {
    pub events: Vec<EventView>,
    pub next_cursor: Option<String>,
}

const SELECT: &str = "SELECT id, event_type, severity, user_id, token_id, ip_address, user_agent, metadata, \
     created_at FROM {table} WHERE ($1::text IS NULL OR event_type = $1) \
     AND ($2::text IS NULL OR severity = $2) AND ($3::text IS NULL OR user_id = $3) \
     AND ($4::text IS NULL OR ip_address = $4) AND ($5::timestamptz IS NULL OR created_at >= $5) \
     AND ($6::timestamptz IS NULL OR created_at < $6) \
     AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))";

macro_rules! filtered {
    ($sql:expr, $f:expr) => {
        sqlx::query_as::<_, EventView>($sql)
            .bind($f.event_type.clone())
            .bind($f.severity.clone())
            .bind($f.user_id.clone())
            .bind($f.ip.clone())
            .bind($f.from)
            .bind($f.to)
            .bind($f.before.map(|c| c.created_at))
            .bind($f.before.map(|c| c.id).unwrap_or_default())
    };
}

impl EventSource {
    /// One page, newest first, at most `limit` (capped at [`MAX_PAGE`]) events.
    pub async fn page(&self, filter: &EventFilter, limit: usize) -> anyhow::Result<Page> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut events = match self {
            Self::Postgres(db) => {
                filtered!(
                    sqlx::AssertSqlSafe(format!(
                        "{} ORDER BY created_at DESC, id DESC LIMIT {}",
                        SELECT.replace("{table}", &db.schemas().security_events()),
                        limit + 1
                    )),
                    filter
                )
                .fetch_all(&mut *db.acquire().await?)
                .await?
            }
            Self::Files(spool) => {
                let spool = spool.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || newest_from_files(&spool, &filter, limit + 1))
                    .await??
            }
        };
        let next_cursor = (events.len() > limit).then(|| {
            events.truncate(limit);
            events.last().map(|e| e.cursor().encode())
        });
        Ok(Page {
            events,
            next_cursor: next_cursor.flatten(),
        })
    }

    /// Counts by type and by severity between `from` and `to`: in Postgres from the hourly
    /// rollups (and the table for the partial hours at the edges) once they are complete,
    /// else from the table.
    pub async fn stats(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<Stats> {
        let rows: Vec<(String, String, i64)> = match self {
            Self::Postgres(db) => match super::rollups::counts(db, from, to).await? {
                Some(rows) => rows,
                None => {
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT event_type, severity, count(*) FROM {} \
                     WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2",
                        db.schemas().security_events()
                    )))
                    .bind(from)
                    .bind(to)
                    .fetch_all(&mut *db.acquire().await?)
                    .await?
                }
            },
            Self::Files(spool) => {
                let spool = spool.clone();
                tokio::task::spawn_blocking(move || {
                    let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
                    let filter = EventFilter {
                        from: Some(from),
                        to: Some(to),
                        ..Default::default()
                    };
                    for_each_file_event(&spool, |e| {
                        if e.matches(&filter) {
                            *counts
                                .entry((e.event_type.clone(), e.severity.clone()))
                                .or_default() += 1;
                        }
                        true
                    })?;
                    Ok::<_, std::io::Error>(
                        counts.into_iter().map(|((t, s), n)| (t, s, n)).collect(),
                    )
                })
                .await??
            }
        };
        let mut stats = Stats {
            from: format_timestamp(from),
            to: format_timestamp(to),
            ..Stats::default()
        };
        for (event_type, severity, n) in rows {
            stats.total += n;
            *stats.by_type.entry(event_type).or_default() += n;
            *stats.by_severity.entry(severity).or_default() += n;
        }
        Ok(stats)
    }

    /// Every matching event, oldest first, as a stream (for exports of any size).
    pub fn export(&self, filter: EventFilter) -> BoxStream<'static, anyhow::Result<EventView>> {
        match self {
            Self::Postgres(db) => {
                let pool = db.pool.clone();
                Box::pin(async_stream(pool, db.schemas().security_events(), filter))
            }
            Self::Files(spool) => {
                let spool = spool.clone();
                let events = match collect_files(&spool, &filter) {
                    Ok(mut events) => {
                        events.sort_by_key(|e| (e.created_at, e.id));
                        events.into_iter().map(Ok).collect::<Vec<_>>()
                    }
                    Err(e) => vec![Err(anyhow::Error::new(e))],
                };
                Box::pin(futures::stream::iter(events))
            }
        }
    }
}

/// Streams rows through a small bounded channel from a task that owns the query, so an export of
/// any size holds only a few rows in memory and stops when the client goes away.
fn async_stream(
    pool: sqlx::PgPool,
    table: String,
    filter: EventFilter,
) -> impl futures::Stream<Item = anyhow::Result<EventView>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let mut rows = filtered!(
            sqlx::AssertSqlSafe(format!(
                "{} ORDER BY created_at, id",
                SELECT.replace("{table}", &table)
            )),
            filter
        )
        .fetch(&pool);
        while let Some(row) = rows.next().await {
            if tx.send(row.map_err(anyhow::Error::new)).await.is_err() {
                return; // the client disconnected
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub from: String,
    pub to: String,
    pub total: i64,
    pub by_type: BTreeMap<String, i64>,
    pub by_severity: BTreeMap<String, i64>,
}

/// Calls `f` on every event of every file, newest file first, until it returns false.
fn for_each_file_event(spool: &Spool, mut f: impl FnMut(EventView) -> bool) -> std::io::Result<()> {
    let mut files = spool.all_files()?;
    files.reverse();
    for path in files {
        let read = spool::read_file(&path)?;
        for event in read.events.into_iter().rev() {
            if !f(EventView::from(event)) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn collect_files(spool: &Spool, filter: &EventFilter) -> std::io::Result<Vec<EventView>> {
    let mut out = Vec::new();
    for_each_file_event(spool, |e| {
        if e.matches(filter) {
            out.push(e);
        }
        true
    })?;
    Ok(out)
}

/// The newest `n` matching events from the files. Files are read newest first and reading stops
/// one file after `n` matches were found (a batch's events can straddle a file boundary).
fn newest_from_files(
    spool: &Spool,
    filter: &EventFilter,
    n: usize,
) -> std::io::Result<Vec<EventView>> {
    let mut files = spool.all_files()?;
    files.reverse();
    let mut found = Vec::new();
    let mut extra_file_read = false;
    for path in files {
        let read = spool::read_file(&path)?;
        found.extend(
            read.events
                .into_iter()
                .map(EventView::from)
                .filter(|e| e.matches(filter)),
        );
        if found.len() >= n {
            if extra_file_read {
                break;
            }
            extra_file_read = true;
        }
    }
    found.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
    found.truncate(n);
    Ok(found)
}

// Export formats, shared by the HTTP export and `flux-auth events export`.

pub const CSV_HEADER: &str =
    "id,created_at,event_type,severity,user_id,token_id,ip_address,user_agent,metadata\n";

pub fn ndjson_line(event: &EventView) -> Vec<u8> {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    line
}

/// RFC 4180 quoting, and a leading `'` on cells a spreadsheet would run as a formula.
fn csv_cell(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

pub fn csv_line(e: &EventView) -> Vec<u8> {
    let opt = |v: &Option<String>| v.as_deref().map(csv_cell).unwrap_or_default();
    let cells = [
        csv_cell(&e.id.to_string()),
        csv_cell(&crate::domain::format_timestamp(e.created_at)),
        csv_cell(&e.event_type),
        csv_cell(&e.severity),
        opt(&e.user_id),
        e.token_id
            .map(|t| csv_cell(&t.to_string()))
            .unwrap_or_default(),
        opt(&e.ip_address),
        opt(&e.user_agent),
        e.metadata
            .as_ref()
            .map(|m| csv_cell(&m.to_string()))
            .unwrap_or_default(),
    ];
    let mut line = cells.join(",").into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}
