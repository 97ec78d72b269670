//! Reading security events: the admin's query, stats, export and live stream, a user's timeline,
//! and a signed-in user's own history.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use uuid::Uuid;

use super::bodies::errors::{AdminErrors, BearerErrors, Unavailable};
use super::bodies::events::{
    EventFilterParams, EventStats, EventsPage, ExportParams, PageParams, StreamParams, WindowParams,
};
use super::extract::{AdminUser, AuthUser, BearerToken};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::security_log::Severity;
use crate::security_log::query::{
    CSV_HEADER, Cursor, EventFilter, EventSource, EventView, csv_line, ndjson_line,
};
use crate::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventQuery {
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub severity: Option<String>,
    pub min_severity: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    pub format: Option<String>,
}

fn bad(field: &'static str, message: &str) -> ApiError {
    ApiError::Validation {
        field,
        message: message.to_owned(),
    }
}

fn time(raw: &Option<String>, field: &'static str) -> ApiResult<Option<DateTime<Utc>>> {
    raw.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    bad(
                        field,
                        "must be an ISO-8601 time such as 2026-01-31T12:00:00Z",
                    )
                })
        })
        .transpose()
}

fn short(raw: &Option<String>, field: &'static str) -> ApiResult<Option<String>> {
    match raw {
        Some(s) if s.len() > 255 || s.chars().any(char::is_control) => {
            Err(bad(field, "is not a valid value"))
        }
        Some(s) if s.is_empty() => Ok(None),
        other => Ok(other.clone()),
    }
}

impl EventQuery {
    fn filter(&self) -> ApiResult<EventFilter> {
        if let Some(s) = &self.severity
            && Severity::parse(s).is_none()
        {
            return Err(bad(
                "severity",
                "must be info, low, warning, high or critical",
            ));
        }
        let before = match &self.cursor {
            Some(c) => Some(
                Cursor::decode(c).ok_or_else(|| bad("cursor", "is not a cursor from this API"))?,
            ),
            None => None,
        };
        Ok(EventFilter {
            event_type: short(&self.event_type, "type")?,
            severity: self.severity.clone(),
            user_id: short(&self.user_id, "userId")?,
            ip: short(&self.ip, "ip")?,
            from: time(&self.from, "from")?,
            to: time(&self.to, "to")?,
            before,
        })
    }
}

pub fn source(state: &AppState) -> EventSource {
    match &state.security_db {
        Some(db) => EventSource::Postgres(db.clone()),
        None => EventSource::Files(state.spool.clone()),
    }
}

async fn page(
    state: &AppState,
    filter: EventFilter,
    limit: Option<usize>,
) -> ApiResult<Json<EventsPage>> {
    let page = source(state)
        .page(&filter, limit.unwrap_or(100))
        .await
        .map_err(unavailable)?;
    Ok(Json(EventsPage {
        success: true,
        events: page.events,
        next_cursor: page.next_cursor,
    }))
}

/// The log's database is down: say so (503), do not pretend there are no events.
fn unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %e, "security events could not be read");
    ApiError::Unavailable { retry_after: 5 }
}

/// `GET /api/admin/security/events`
#[utoipa::path(get, path = "/api/admin/security/events", tag = "admin", operation_id = "list_events", security(("bearer" = [])),
    params(EventFilterParams, PageParams),
    responses(
        (status = 200, description = "Matching events, newest first", body = EventsPage),
        (status = 400, description = "`VALIDATION_ERROR` naming the bad parameter", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn list(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<EventsPage>> {
    page(&state, q.filter()?, q.limit).await
}

/// `GET /api/admin/security/users/{id}/timeline`
#[utoipa::path(get, path = "/api/admin/security/users/{id}/timeline", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id"), EventFilterParams, PageParams),
    responses(
        (status = 200, description = "The user's events, newest first", body = EventsPage),
        (status = 400, description = "`VALIDATION_ERROR` naming the bad parameter", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn timeline(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Path(user_id): Path<String>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<EventsPage>> {
    let filter = EventFilter {
        user_id: short(&Some(user_id), "id")?,
        ..q.filter()?
    };
    page(&state, filter, q.limit).await
}

/// `GET /api/auth/security-events`: the caller's own recent history.
#[utoipa::path(get, path = "/api/auth/security-events", tag = "auth", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "The caller's events, newest first (at most 100 a page)", body = EventsPage),
        (status = 400, description = "`VALIDATION_ERROR`: a cursor not from this API", body = ErrorBody),
        BearerErrors, Unavailable,
    ))]
pub async fn own(
    State(state): State<AppState>,
    AuthUser(auth): AuthUser,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<EventsPage>> {
    let before = match &q.cursor {
        Some(c) => {
            Some(Cursor::decode(c).ok_or_else(|| bad("cursor", "is not a cursor from this API"))?)
        }
        None => None,
    };
    let filter = EventFilter {
        user_id: Some(auth.user.id.clone()),
        before,
        ..EventFilter::default()
    };
    page(&state, filter, q.limit.map(|l| l.min(100))).await
}

/// `GET /api/admin/security/events/stats?from&to` (default: the last 24 hours).
#[utoipa::path(get, path = "/api/admin/security/events/stats", tag = "admin", security(("bearer" = [])),
    params(WindowParams),
    responses(
        (status = 200, description = "Counts by type and severity over the window", body = EventStats),
        (status = 400, description = "`VALIDATION_ERROR`: a bad time, or `from` not before `to`", body = ErrorBody),
        AdminErrors, Unavailable,
    ))]
pub async fn stats(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<EventStats>> {
    let to = time(&q.to, "to")?.unwrap_or_else(|| state.clock.now());
    let from = time(&q.from, "from")?.unwrap_or(to - chrono::Duration::hours(24));
    if from >= to {
        return Err(bad("from", "must be before to"));
    }
    let stats = source(&state).stats(from, to).await.map_err(unavailable)?;
    Ok(Json(EventStats {
        success: true,
        stats,
    }))
}

/// `GET /api/admin/security/events/export?format=ndjson|csv`, streamed oldest first.
#[utoipa::path(get, path = "/api/admin/security/events/export", tag = "admin", security(("bearer" = [])),
    params(EventFilterParams, ExportParams),
    responses(
        (status = 200, description = "Every matching event, oldest first, as an attachment",
            content(
                (EventView = "application/x-ndjson"),
                (String = "text/csv; charset=utf-8"),
            )),
        (status = 400, description = "`VALIDATION_ERROR` naming the bad parameter", body = ErrorBody),
        AdminErrors,
    ))]
pub async fn export(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Query(q): Query<EventQuery>,
) -> ApiResult<Response> {
    let filter = EventFilter {
        before: None,
        ..q.filter()?
    };
    let csv = match q.format.as_deref() {
        None | Some("ndjson") | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(bad("format", "must be ndjson or csv")),
    };
    let rows = source(&state).export(filter);
    let (content_type, extension) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "ndjson")
    };
    let header_line = csv.then(|| Ok::<_, std::io::Error>(CSV_HEADER.as_bytes().to_vec()));
    let body = futures::stream::iter(header_line).chain(rows.map(move |row| match row {
        Ok(event) => Ok(if csv {
            csv_line(&event)
        } else {
            ndjson_line(&event)
        }),
        Err(e) => {
            tracing::warn!(error = %e, "export stopped");
            Err(std::io::Error::other("export stopped"))
        }
    }));
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"security-events.{extension}\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /api/admin/security/events/stream?minSeverity=`: server-sent events, live, for as long as
/// the caller's access lasts ([`access_ends`]). A client that reconnects with `Last-Event-ID`
/// first gets what it missed from the log, then the live feed.
#[utoipa::path(get, path = "/api/admin/security/events/stream", tag = "admin", security(("bearer" = [])),
    params(StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Replay what came after this event first")),
    responses(
        (status = 200, description = "Server-sent events named `security-event`, each an EventView in JSON, id = the event id. \
            The stream ends when the token expires, is revoked, or its user is no longer an admin (checked every few seconds); \
            reconnect with a fresh token and `Last-Event-ID`",
            body = String, content_type = "text/event-stream"),
        (status = 400, description = "`VALIDATION_ERROR`: an unknown severity", body = ErrorBody),
        AdminErrors,
    ))]
pub async fn stream(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    BearerToken(token): BearerToken,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let min = match q.min_severity.as_deref() {
        None | Some("") => Severity::Info,
        Some(s) => Severity::parse(s).ok_or_else(|| {
            bad(
                "minSeverity",
                "must be info, low, warning, high or critical",
            )
        })?,
    };
    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = state.auth.events.subscribe();
    let last_seen: Option<Uuid> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut backlog = Vec::new();
    if let Some(last) = last_seen {
        let page = source(&state)
            .page(
                &EventFilter::default(),
                crate::security_log::query::MAX_PAGE,
            )
            .await;
        if let Ok(page) = page {
            backlog = page.events.into_iter().filter(|e| e.id > last).collect();
            backlog.reverse();
        }
    }
    let replayed: std::collections::HashSet<Uuid> = backlog.iter().map(|e| e.id).collect();
    let passes = move |severity: &str| Severity::parse(severity).is_some_and(|s| s >= min);
    let backlog_stream = futures::stream::iter(
        backlog
            .into_iter()
            .filter(move |e| passes(&e.severity))
            .map(sse_event),
    );
    let live_stream = futures::stream::unfold(live, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => return Some((event, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "live event stream subscriber fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |event| {
        let keep = event.severity >= min && !replayed.contains(&event.id);
        async move { keep }
    })
    .map(|event| sse_event(EventView::from((*event).clone())));
    let until_shutdown = state.stopping.clone().cancelled_owned();
    let access_ends = access_ends(state.clone(), token, admin.claims.exp);
    let events = backlog_stream
        .chain(live_stream)
        .take_until(futures::future::select(
            Box::pin(until_shutdown),
            Box::pin(access_ends),
        ));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Resolves when the stream's reader may no longer read it: its token expires (at `exp`, without
/// the verification leeway) or, checked every `EVENT_STREAM_RECHECK_MS`, is revoked (logout,
/// logout-all, a revoked session), its user is gone or no longer an admin, or this cannot be
/// checked (fail closed). Each check is an ordinary authentication: the verified token, the
/// revocation list and the user are found in memory when the revocation mirror and the user cache
/// can answer, so an open stream costs no database read per check. The client reconnects with a
/// fresh token.
async fn access_ends(state: AppState, token: String, exp: i64) {
    let every = Duration::from_millis(state.settings.event_stream_recheck_ms);
    let left = exp.saturating_sub(state.clock.now().timestamp()).max(0);
    let expiry = tokio::time::sleep(Duration::from_secs(left.unsigned_abs()));
    tokio::pin!(expiry);
    let reason = loop {
        tokio::select! {
            () = &mut expiry => break "expired",
            () = tokio::time::sleep(every) => {}
        }
        let access = state.auth.authenticate(&token).await;
        state.metrics.event_stream_rechecks.inc();
        match access {
            Ok(auth) if auth.user.user_type == crate::domain::UserType::Admin => {}
            Ok(_) => break "not_admin",
            Err(_) => break "token_refused",
        }
    };
    tracing::info!(reason, "admin event stream closed: its access ended");
}

fn sse_event(event: EventView) -> Result<Event, Infallible> {
    let data = serde_json::to_string(&event).unwrap_or_default();
    Ok(Event::default()
        .id(event.id.to_string())
        .event("security-event")
        .data(data))
}
