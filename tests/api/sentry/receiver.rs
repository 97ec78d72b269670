//! A Sentry-compatible ingestion endpoint on loopback: accepts `POST /api/<project>/envelope/`
//! (and the older `/store/`), gzip or not, answers 200 as Sentry does, and keeps every body it
//! received, decoded, for the test to read. It can also take the first envelopes and never
//! answer them, as a hung endpoint does.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

use crate::helpers::*;

/// The project id in the receiver's DSN.
pub const PROJECT: &str = "42";
/// The public key in the receiver's DSN (a secret of the deployment, never logged).
pub const KEY: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// `X-Sentry-Auth`.
    pub auth: String,
    /// The body, gunzipped when it came gzipped.
    pub body: String,
    /// `(type, payload)` of each item (a `/store/` body is one `event`).
    pub items: Vec<(String, Value)>,
}

pub struct SentryReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SentryReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SentryReceiver {
    pub async fn start() -> SentryReceiver {
        Self::start_hanging(0).await
    }

    /// An endpoint that reads the first `hang` envelopes and never answers them (nor keeps
    /// them); it answers the rest.
    pub async fn start_hanging(hang: usize) -> SentryReceiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/api/{project}/envelope/", post(envelope))
            .route("/api/{project}/store/", post(store))
            .with_state((received.clone(), Arc::new(AtomicUsize::new(hang))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SentryReceiver {
            addr,
            received,
            server,
        }
    }

    /// The DSN that sends here, over plain HTTP.
    pub fn dsn(&self) -> String {
        format!("http://{KEY}@{}/{PROJECT}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every item of `kind` (`event`, `transaction`) received so far.
    pub fn items(&self, kind: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .flat_map(|r| r.items)
            .filter(|(ty, _)| ty == kind)
            .map(|(_, payload)| payload)
            .collect()
    }

    /// Waits for an event whose `request_id` tag is `request_id`.
    pub async fn event_of(&self, request_id: &str) -> Value {
        eventually(
            &format!("an event tagged with request {request_id}"),
            MIRROR_PATIENCE,
            || async {
                self.items("event")
                    .into_iter()
                    .find(|e| e["tags"]["request_id"] == request_id)
            },
        )
        .await
    }
}

/// What was received, and how many envelopes are still to be left unanswered.
type Shared = State<(Arc<Mutex<Vec<Received>>>, Arc<AtomicUsize>)>;

async fn envelope(
    State((received, hang)): Shared,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let hung = hang
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if hung {
        std::future::pending::<()>().await;
    }
    let body = decoded(&headers, &body);
    let items = envelope_items(body.as_bytes());
    keep(&received, &project, "envelope", &headers, body, items)
}

async fn store(
    State((received, _)): Shared,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = decoded(&headers, &body);
    let event = serde_json::from_str(&body).unwrap_or(Value::Null);
    keep(
        &received,
        &project,
        "store",
        &headers,
        body,
        vec![("event".into(), event)],
    )
}

fn keep(
    received: &Mutex<Vec<Received>>,
    project: &str,
    endpoint: &str,
    headers: &HeaderMap,
    body: String,
    items: Vec<(String, Value)>,
) -> StatusCode {
    let auth = headers
        .get("x-sentry-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received.lock().unwrap().push(Received {
        path: format!("/api/{project}/{endpoint}/"),
        auth,
        body,
        items,
    });
    StatusCode::OK
}

fn decoded(headers: &HeaderMap, body: &[u8]) -> String {
    let gzipped = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if gzipped {
        let mut text = String::new();
        flate2::read::GzDecoder::new(body)
            .read_to_string(&mut text)
            .expect("a gzip body");
        text
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}

/// An envelope's items: after the header line, each item is a header line (JSON, with the
/// payload's `length` when given) and its payload (that many bytes, else up to the newline).
fn envelope_items(body: &[u8]) -> Vec<(String, Value)> {
    let mut items = Vec::new();
    let Some(start) = body.iter().position(|b| *b == b'\n') else {
        return items;
    };
    let mut rest = &body[start + 1..];
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let header: Value = serde_json::from_slice(&rest[..end]).expect("an item header");
        rest = rest.get(end + 1..).unwrap_or_default();
        let length = match header["length"].as_u64() {
            Some(length) => length as usize,
            None => rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len()),
        };
        let payload = serde_json::from_slice(&rest[..length]).unwrap_or(Value::Null);
        items.push((
            header["type"].as_str().unwrap_or_default().to_owned(),
            payload,
        ));
        rest = rest.get(length..).unwrap_or_default();
        rest = rest.strip_prefix(b"\n").unwrap_or(rest);
    }
    items
}
