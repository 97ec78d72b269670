//! Micro-benchmarks of the per-request CPU work (BENCHMARKS.md, "Micro-benchmarks"):
//! `cargo bench --bench micro`.
//!
//! - `tokens`: issuing and verifying an access token (`AccessTokens`, HS256, keys built once).
//! - `fingerprint`: `DeviceFingerprint::compute` for an IPv4 and an IPv6 client.
//! - `refresh_token`: the successor HMAC and the SHA-256 a refresh stores.
//! - `event`: building a `token_refreshed` event from a request, and its serde_json encoding (what
//!   the spool and the log mirror write).
//! - `password_policy`: the strength check a signup runs before hashing (zxcvbn against common
//!   passwords and the user's own details), with the password `flux-load` signs up with.
//!
//! - `request_log_line`: the request span and the one JSON line each request logs (what
//!   `request_context` does), into `io::sink`, with the service's formatter (`telemetry`) and,
//!   as the baseline in the same run, with tracing-subscriber's JSON formatter flattened, with
//!   the current span.
//!
//! - `sessions_page`: `describe_user_agent` (woothee) for the usual clients, and the body of
//!   `GET /api/auth/sessions` for five sessions, built and encoded as the handler does, against the
//!   body with only the older fields (no user agent read), in the same run.
//!
//! - `anomaly_rules`: `Anomalies::evaluate` for one event, as the rule engine's consumer calls it
//!   for every event the log records, with every rule on (the defaults) and in-process counts: a
//!   failed login (three rules: credential stuffing, account targeted, the failure spike), a
//!   reused token (one rule), a type no rule watches; a failed login with the rules off
//!   (`ANOMALY_RULES=off`), and with the counts in Redis when `REDIS_URL` answers (three round
//!   trips per failed login). 4,096 events over 1,000 addresses and 1,000 accounts, built outside
//!   the timing; the first iterations fill the windows, later ones prune them as they run.
//!
//! `record()`, the spool and the Postgres insert are in `benches/security_log/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::IpAddr;

use chrono::Utc;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use flux_auth::auth::refresh::{RefreshTokens, hash_token};
use flux_auth::auth::tokens::AccessTokens;
use flux_auth::clock::Clock;
use flux_auth::domain::{ClientInfo, DeviceFingerprint, UserRecord, UserType};
use flux_auth::security_log::event::RequestContext;
use flux_auth::security_log::{EventType, SecurityEvent};
use secrecy::SecretString;
use uuid::Uuid;

const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn secret() -> SecretString {
    SecretString::from("micro-bench-secret-5f0c1f2e9a8b7c6d5e4f3a2b1c0d9e8f7a6b")
}

fn user() -> UserRecord {
    UserRecord {
        id: Uuid::new_v4().to_string(),
        email: "someone@example.com".into(),
        name: "Some One".into(),
        user_type: UserType::Client,
        password_hash: None,
        google_id: None,
        email_verified: false,
        avatar: None,
        created_at: Utc::now(),
        last_login: None,
        updated_at: Utc::now(),
        two_factor_enabled: false,
        extra: Default::default(),
    }
}

fn tokens(c: &mut Criterion) {
    let access = AccessTokens::new(
        &secret(),
        None,
        "flux-auth",
        "fluxstudio",
        900,
        Clock::default(),
    );
    let user = user();
    let session = Uuid::now_v7();
    let mut group = c.benchmark_group("tokens");
    group.bench_function("issue", |b| {
        b.iter(|| access.issue(black_box(&user), session, Utc::now()).unwrap())
    });
    // A token seen for the first time: verified in full (and remembered). Each iteration gets a
    // new token, issued outside the timing.
    group.bench_function("verify_first_time", |b| {
        b.iter_batched(
            || access.issue(&user, session, Utc::now()).unwrap().token,
            |token| access.verify(black_box(&token)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // The same token again, as every request of a session sends it: remembered, times checked.
    let token = access.issue(&user, session, Utc::now()).unwrap().token;
    group.bench_function("verify", |b| {
        b.iter(|| access.verify(black_box(&token)).unwrap())
    });
    // The previous key is tried only by kid, so a rotation costs nothing per request.
    let rotated = AccessTokens::new(
        &secret(),
        Some(&SecretString::from(
            "micro-bench-previous-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
        )),
        "flux-auth",
        "fluxstudio",
        900,
        Clock::default(),
    );
    group.bench_function("verify_with_previous_key_configured", |b| {
        b.iter(|| rotated.verify(black_box(&token)).unwrap())
    });
    group.finish();
}

fn fingerprint(c: &mut Criterion) {
    let v4: IpAddr = "203.0.113.57".parse().unwrap();
    let v6: IpAddr = "2001:db8:85a3:1:2:8a2e:370:7334".parse().unwrap();
    let mut group = c.benchmark_group("fingerprint");
    group.bench_function("ipv4", |b| {
        b.iter(|| DeviceFingerprint::compute(black_box(UA), black_box("en-GB,en;q=0.9"), v4))
    });
    group.bench_function("ipv6", |b| {
        b.iter(|| DeviceFingerprint::compute(black_box(UA), black_box("en-GB,en;q=0.9"), v6))
    });
    group.finish();
}

fn refresh_token(c: &mut Criterion) {
    let refresh = RefreshTokens::new(&secret()).unwrap();
    let token = refresh.generate();
    let mut group = c.benchmark_group("refresh_token");
    group.bench_function("successor", |b| {
        b.iter(|| refresh.successor(black_box(&token)))
    });
    group.bench_function("hash", |b| b.iter(|| hash_token(black_box(&token))));
    group.finish();
}

fn context() -> RequestContext {
    RequestContext {
        request_id: Uuid::new_v4().to_string(),
        route: "/api/auth/refresh".into(),
        method: "POST".into(),
        client: ClientInfo::new(
            "203.0.113.57".parse().unwrap(),
            Some(UA.into()),
            Some("en-GB,en;q=0.9".into()),
        ),
    }
}

fn refreshed(ctx: &RequestContext) -> SecurityEvent {
    SecurityEvent::from_request(EventType::TokenRefreshed, ctx)
        .user("0b7f4c2e-7d7a-4a86-9b43-1f0f3c1d2e5a")
        .token(Uuid::now_v7())
        .with("oldTokenId", Uuid::now_v7().to_string())
        .with("tokenId", Uuid::now_v7().to_string())
        .with("sessionId", Uuid::now_v7().to_string())
        .with("concurrent", false)
}

fn event(c: &mut Criterion) {
    let ctx = context();
    let built = refreshed(&ctx);
    let mut group = c.benchmark_group("event");
    group.bench_function("build_token_refreshed", |b| {
        b.iter(|| refreshed(black_box(&ctx)))
    });
    group.bench_function("serialize_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&built)).unwrap())
    });
    let bytes = serde_json::to_vec(&built).unwrap();
    group.bench_function("deserialize_json", |b| {
        b.iter(|| serde_json::from_slice::<SecurityEvent>(black_box(&bytes)).unwrap())
    });
    group.finish();
}

/// CPU a signup spends besides the hash: its ceiling is cores / (hash + this + the rest).
fn password_policy(c: &mut Criterion) {
    let breached = flux_auth::auth::breached::BreachedPasswords::load().unwrap();
    let mut group = c.benchmark_group("password_policy");
    group.bench_function("check_new_passphrase", |b| {
        b.iter(|| {
            flux_auth::auth::password_policy::check_new(
                black_box("violet tractor hums at dawn"),
                black_box("load-123@example.com"),
                black_box("Load Tester"),
                8,
                &breached,
            )
        })
    });
    group.bench_function("check_new_common_rejected", |b| {
        b.iter(|| {
            flux_auth::auth::password_policy::check_new(
                black_box("Password123!"),
                black_box("someone@example.com"),
                black_box("Some One"),
                8,
                &breached,
            )
        })
    });
    // The breached-list lookup alone (three binary searches when nothing matches), and the
    // list's load at start.
    group.bench_function("breached_matches_miss", |b| {
        b.iter(|| breached.matches(black_box("violet tractor hums at dawn")))
    });
    group.bench_function("breached_load", |b| {
        b.iter(flux_auth::auth::breached::BreachedPasswords::load)
    });
    group.finish();
}

/// One request's logging, as `request_context` does it: the span with the request id, the line
/// with method, route, status, latency and client address inside it.
fn log_one_request() {
    let span = tracing::info_span!("request", request_id = %Uuid::new_v4());
    span.in_scope(|| {
        tracing::info!(method = "GET", route = "/api/auth/me", status = 200u16,
            latency_ms = 0.183_f64, client_ip = %IpAddr::from([203, 0, 113, 7]), "request");
    });
}

fn request_log_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_log_line");
    let ours = flux_auth::telemetry::json_subscriber(
        tracing_subscriber::EnvFilter::new(flux_auth::telemetry::DEFAULT_FILTER),
        std::io::sink,
    );
    tracing::subscriber::with_default(ours, || {
        group.bench_function("JsonLine", |b| b.iter(log_one_request));
    });
    let stock = tracing_subscriber::fmt()
        .with_env_filter(flux_auth::telemetry::DEFAULT_FILTER)
        .with_target(true)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(stock, || {
        group.bench_function("tracing_subscriber_json", |b| b.iter(log_one_request));
    });
    group.finish();
}

const SESSION_AGENTS: [(&str, &str); 4] = [
    ("desktop_chrome", UA),
    (
        "iphone_safari",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
         Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    ),
    (
        "android_chrome",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/124.0.0.0 Mobile Safari/537.36",
    ),
    ("cli", "flux-cli/1.4.2 node/20.11.1"),
];

/// The session view before the sessions page's fields: what the route encoded until then.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OlderSessionView {
    id: Uuid,
    device_name: String,
    ip_address: String,
    created_at: String,
    last_used_at: String,
    expires_at: String,
    is_current: bool,
}

fn sessions_page(c: &mut Criterion) {
    use flux_auth::domain::{describe_user_agent, format_timestamp};
    use flux_auth::http::bodies::sessions::{SessionList, SessionView};
    let mut group = c.benchmark_group("sessions_page");
    for (name, agent) in SESSION_AGENTS {
        group.bench_function(format!("describe_user_agent/{name}"), |b| {
            b.iter(|| describe_user_agent(black_box(agent)))
        });
    }
    let now = Utc::now();
    // As stored: the device name is written when the session starts, the user agent beside it.
    let sessions: Vec<(Uuid, &str, String)> = (0..5)
        .map(|i| {
            let agent = SESSION_AGENTS[i % SESSION_AGENTS.len()].1;
            (Uuid::now_v7(), agent, flux_auth::domain::device_name(agent))
        })
        .collect();
    group.bench_function("list_5/older_fields", |b| {
        b.iter(|| {
            let views: Vec<OlderSessionView> = sessions
                .iter()
                .map(|(id, _, device_name)| OlderSessionView {
                    id: *id,
                    device_name: device_name.clone(),
                    ip_address: "203.0.113.57".into(),
                    created_at: format_timestamp(now),
                    last_used_at: format_timestamp(now),
                    expires_at: format_timestamp(now),
                    is_current: false,
                })
                .collect();
            serde_json::to_vec(&views).unwrap()
        })
    });
    group.bench_function("list_5/with_page_fields", |b| {
        b.iter(|| {
            let views: Vec<SessionView> = sessions
                .iter()
                .map(|(id, agent, device_name)| {
                    let found = describe_user_agent(agent);
                    let last_used_at = format_timestamp(now);
                    SessionView {
                        id: *id,
                        device_name: device_name.clone(),
                        ip_address: "203.0.113.57".into(),
                        ip: "203.0.113.57".into(),
                        created_at: format_timestamp(now),
                        last_active: last_used_at.clone(),
                        last_used_at,
                        expires_at: format_timestamp(now),
                        is_current: false,
                        device: found.device,
                        browser: found.browser,
                        os: found.os,
                        location: None,
                    }
                })
                .collect();
            serde_json::to_vec(&SessionList {
                success: true,
                sessions: views,
            })
            .unwrap()
        })
    });
    group.finish();
}

/// An app on the file store in a folder of its own, for its rule engine.
fn anomaly_app(
    rt: &tokio::runtime::Runtime,
    rules: bool,
    redis: Option<&str>,
) -> (flux_auth::app::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = flux_auth::config::Settings {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        jwt_secret: Some(secret()),
        storage: Some(flux_auth::config::StorageKind::File),
        data_dir: dir.path().join("data"),
        security_log_dir: Some(dir.path().join("events")),
        anomaly_rules: if rules {
            flux_auth::config::Switch::On
        } else {
            flux_auth::config::Switch::Off
        },
        redis_url: redis.map(SecretString::from),
        redis_key_prefix: format!("flux-micro-{}:", Uuid::new_v4().simple()),
        ..Default::default()
    };
    let app = rt
        .block_on(flux_auth::app::App::build(settings))
        .expect("app builds");
    (app, dir)
}

fn failed_logins() -> Vec<SecurityEvent> {
    (0..4096u32)
        .map(|i| {
            let mut e = SecurityEvent::new(EventType::LoginFailed)
                .reason("invalid_password")
                .with("email", format!("user{}@example.com", (i * 7) % 1000));
            e.ip_address = Some(format!("198.51.{}.{}", (i % 1000) / 250, i % 250));
            e
        })
        .collect()
}

fn anomaly_rules(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _context = rt.enter();
    let logins = failed_logins();
    let reuses: Vec<SecurityEvent> = (0..4096)
        .map(|i| {
            SecurityEvent::new(EventType::TokenReuseDetected)
                .with("sessionId", Uuid::now_v7().to_string())
                .user(format!("user-{}", i % 1000))
        })
        .collect();
    let refreshed: Vec<SecurityEvent> = (0..4096).map(|_| refreshed(&context())).collect();
    let mut group = c.benchmark_group("anomaly_rules");
    let mut bench = |name: &str, app: &flux_auth::app::App, events: &[SecurityEvent]| {
        let anomalies = app.state().anomalies.clone();
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % events.len();
                futures::executor::block_on(anomalies.evaluate(black_box(&events[i])))
            })
        });
    };
    let (on, _on_dir) = anomaly_app(&rt, true, None);
    let (off, _off_dir) = anomaly_app(&rt, false, None);
    bench("failed_login", &on, &logins);
    bench("failed_login/rules_off", &off, &logins);
    bench("token_reuse_detected", &on, &reuses);
    bench("unwatched_type", &on, &refreshed);
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let (with_redis, _redis_dir) = anomaly_app(&rt, true, Some(&redis_url));
    if rt.block_on(with_redis.state().limits.health()) == "ok" {
        bench("failed_login/redis", &with_redis, &logins);
    } else {
        eprintln!("anomaly_rules/failed_login/redis skipped: Redis did not answer at {redis_url}");
    }
    group.finish();
}

criterion_group!(
    benches,
    anomaly_rules,
    request_log_line,
    tokens,
    fingerprint,
    refresh_token,
    event,
    password_policy,
    sessions_page
);
criterion_main!(benches);
