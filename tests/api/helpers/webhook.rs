//! A webhook receiver on loopback (axum) that keeps what it receives and checks each request as
//! docs/OPERATIONS.md tells a receiver to: the HMAC-SHA256 of `<t>.<body>` with the shared secret,
//! compared in constant time, `t` within five minutes. It can be made to answer 500 for a number
//! of requests, as a receiver that is down does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

use super::{eventually, random_secret};

/// The replay window a receiver allows.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub body: Value,
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub alert_id: Option<String>,
    /// Whether the signature checked out (and its time was within the window).
    pub verified: bool,
    /// Whether the receiver accepted it (it answered 500 while failing).
    pub accepted: bool,
    pub at: Instant,
}

struct Shared {
    secret: String,
    received: Mutex<Vec<Delivered>>,
    /// Requests still to answer 500.
    failing: AtomicUsize,
}

#[derive(Clone)]
pub struct WebhookReceiver {
    pub port: u16,
    pub secret: String,
    shared: Arc<Shared>,
}

/// Checks `X-Flux-Signature: t=<t>,v1=<hex>` over `<t>.<body>` as a receiver would.
pub fn verify(secret: &str, signature: &str, body: &[u8], now: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > REPLAY_WINDOW_SECS {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&v1).is_ok()
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let signature = header("x-flux-signature");
    let now = chrono::Utc::now().timestamp();
    let verified = signature
        .as_deref()
        .is_some_and(|s| verify(&shared.secret, s, &body, now));
    let accepted = shared
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_err();
    shared.received.lock().unwrap().push(Delivered {
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature,
        timestamp: header("x-flux-timestamp"),
        alert_id: header("x-flux-alert-id"),
        verified,
        accepted,
        at: Instant::now(),
    });
    if accepted {
        (StatusCode::OK, "ok: alert received")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "receiver down")
    }
}

impl WebhookReceiver {
    /// A receiver on a free loopback port with a new secret.
    pub async fn start() -> Self {
        let secret = random_secret();
        let shared = Arc::new(Shared {
            secret: secret.clone(),
            received: Mutex::new(Vec::new()),
            failing: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            port,
            secret,
            shared,
        }
    }

    /// The URL alerts are posted to (`slack+` forces Slack's shape).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The app's settings pointed at this receiver (JSON shape).
    pub fn configure(&self, settings: &mut flux_auth::config::Settings) {
        self.configure_url(settings, &self.url());
    }

    pub fn configure_url(&self, settings: &mut flux_auth::config::Settings, urls: &str) {
        settings.alert_webhook_urls = Some(urls.to_owned().into());
        settings.alert_webhook_secret = Some(self.secret.clone().into());
        settings.alert_poll_ms = 50;
        settings.alert_retry_base_ms = 100;
    }

    /// The environment a spawned binary needs to post here.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("ALERT_WEBHOOK_URLS", self.url()),
            ("ALERT_WEBHOOK_SECRET", self.secret.clone()),
        ]
    }

    /// Answer 500 to the next `count` requests.
    pub fn fail_next(&self, count: usize) {
        self.shared.failing.store(count, Ordering::SeqCst);
    }

    /// Every request so far, accepted or not.
    pub fn requests(&self) -> Vec<Delivered> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests it accepted.
    pub fn accepted(&self) -> Vec<Delivered> {
        self.requests().into_iter().filter(|d| d.accepted).collect()
    }

    /// Waits until `count` requests have been accepted.
    pub async fn wait_for(&self, count: usize) -> Vec<Delivered> {
        eventually(
            &format!("{count} accepted alert(s)"),
            Duration::from_secs(20),
            || async {
                let accepted = self.accepted();
                (accepted.len() >= count).then_some(accepted)
            },
        )
        .await
    }
}
