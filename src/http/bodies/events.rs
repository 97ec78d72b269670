//! The bodies of the security-event routes, and their query parameters as the document describes
//! them (the handlers read every parameter through one `EventQuery`).

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::security_log::query::{EventView, Stats};

/// One page of security events, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    pub success: bool,
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStats {
    pub success: bool,
    pub stats: Stats,
}

/// Filters of the admin event routes; all optional, combined with "and".
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct EventFilterParams {
    /// An event type, e.g. `login_failed`.
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// `info`, `low`, `warning`, `high` or `critical`.
    pub severity: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    /// ISO-8601 time, inclusive.
    pub from: Option<String>,
    /// ISO-8601 time, exclusive.
    pub to: Option<String>,
}

/// Cursor paging, newest first.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Events per page (100 by default).
    pub limit: Option<usize>,
}

/// The window of `GET /api/admin/security/events/stats` (the last 24 hours by default).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowParams {
    /// ISO-8601 time; `to` minus 24 hours by default.
    pub from: Option<String>,
    /// ISO-8601 time; now by default.
    pub to: Option<String>,
}

/// The format of `GET /api/admin/security/events/export`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `ndjson` (the default) or `csv`.
    pub format: Option<String>,
}

/// The filter of `GET /api/admin/security/events/stream`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StreamParams {
    /// Only events at least this severe (`info` by default).
    pub min_severity: Option<String>,
}
