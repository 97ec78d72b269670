//! Operability: `/metrics` as Prometheus scrapes it, the JSON request log and what it
//! must never contain, request ids, `/openapi.json` against the router and against the bodies
//! the service sends, and systemd's readiness protocol on the real binary. (`flux-auth
//! healthcheck` is covered in `ops.rs`.)

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Upper bound for anything these tests wait on, so a broken binary fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

// ---- Prometheus / OpenMetrics text ---------------------------------------------------------------

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `label="value",...}` (after the `{`): the labels, and the rest of the line after the `}`.
fn parse_labels(mut rest: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_owned());
        }
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_label_name(name), "label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses an exposition, asserting its syntax: `# HELP`/`# TYPE`/`# UNIT` comments, `# EOF` last
/// (OpenMetrics), and every other line `name{labels} value`, optionally with a timestamp.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("# EOF"), "OpenMetrics ends with # EOF");
    let mut samples = Vec::new();
    for line in lines {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let kind = words.next().unwrap_or_default();
            let name = words.next().unwrap_or_default();
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT") && is_metric_name(name),
                "bad comment line {line:?}"
            );
            if kind == "TYPE" {
                let metric_type = words.next().unwrap_or_default();
                assert!(
                    matches!(
                        metric_type,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "info"
                            | "stateset"
                            | "gaugehistogram"
                            | "unknown"
                    ),
                    "bad type in {line:?}"
                );
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad metric name in {line:?}");
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(inner) => parse_labels(inner, line),
            None => (BTreeMap::new(), line[name_end..].to_owned()),
        };
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"))
            .split(' ');
        let value = fields.next().unwrap_or_default();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value {other:?} in {line:?}")),
        };
        if let Some(timestamp) = fields.next() {
            assert!(
                timestamp.parse::<f64>().is_ok(),
                "bad timestamp in {line:?}"
            );
        }
        assert!(fields.next().is_none(), "trailing text in {line:?}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`; 0 when there is none yet (a
/// labelled counter appears at its first increment).
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(matching.len() <= 1, "{name}{labels:?} is ambiguous");
    matching.first().map_or(0.0, |s| s.value)
}

async fn scrape(client: &Client, url: &str) -> Vec<Sample> {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse_exposition(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_text_and_count_the_requests_sent() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let metrics = app.url("/metrics");
    let before = scrape(&app.client, &metrics).await;
    for name in [
        "flux_auth_process_uptime_seconds",
        "flux_auth_process_resident_memory_bytes",
        "flux_auth_security_log_queue_depth",
        "flux_auth_password_hashes_in_flight",
    ] {
        assert!(before.iter().any(|s| s.name == name), "{name} missing");
    }

    // Three logins for an email nobody has: 401s, `login_failed` events, failed-login outcomes.
    let email = unique_email();
    for _ in 0..3 {
        let response = app.login(&email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let after = scrape(&app.client, &metrics).await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    // No hash before the logins, so no argon2 memory; each login verified against the dummy
    // hash, so one or more whole blocks of the configured cost are held now.
    let block = f64::from(flux_auth::config::Settings::default().argon2_memory_kib) * 1024.0;
    assert_eq!(
        sample(&before, "flux_auth_password_hash_memory_bytes", &[]),
        0.0
    );
    let held = sample(&after, "flux_auth_password_hash_memory_bytes", &[]);
    assert!(held >= block && held % block == 0.0, "{held} bytes held");
    let login = [
        ("route", "/api/auth/login"),
        ("method", "POST"),
        ("status", "401"),
    ];
    assert_eq!(moved("flux_auth_http_requests_total", &login), 3.0);
    assert_eq!(
        moved(
            "flux_auth_http_request_duration_seconds_count",
            &[("route", "/api/auth/login"), ("method", "POST")]
        ),
        3.0
    );
    assert_eq!(
        moved(
            "flux_auth_security_events_total",
            &[("event_type", "login_failed"), ("severity", "warning")]
        ),
        3.0
    );
    assert_eq!(
        moved(
            "flux_auth_auth_outcomes_total",
            &[("outcome", "login_failure")]
        ),
        3.0
    );
    assert_eq!(
        moved(
            "flux_auth_auth_outcomes_total",
            &[("outcome", "login_success")]
        ),
        0.0
    );
    // The first scrape is itself a request, counted by the time the second one is answered.
    assert_eq!(
        moved(
            "flux_auth_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn with_metrics_addr_metrics_leave_the_api_port_for_their_own_listener() {
    let metrics_port = free_port();
    let app = TestApp::builder(Backend::File)
        .settings(move |s| s.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into()))
        .spawn()
        .await;

    let on_api = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(on_api, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    let listener = format!("http://127.0.0.1:{metrics_port}");
    let samples = scrape(&app.client, &format!("{listener}/metrics")).await;
    assert!(
        samples
            .iter()
            .any(|s| s.name == "flux_auth_process_uptime_seconds"),
        "the metrics listener serves the registry"
    );
    // The metrics listener serves metrics only, not the API.
    let api_there = app
        .client
        .get(format!("{listener}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(api_there.status(), StatusCode::NOT_FOUND);
}

/// `db_pool_acquire_wait_seconds{pool}` is a histogram whose `_count` moves with every query
/// (each takes its connection through the timed acquire) on each of the two Postgres pools, and
/// `db_pool_acquire_errors_total{pool}` is there from the start, at 0.
#[tokio::test]
async fn db_pool_acquire_wait_is_observed_for_every_query_on_both_pools() {
    const WAIT: &str = "flux_auth_db_pool_acquire_wait_seconds";
    const ERRORS: &str = "flux_auth_db_pool_acquire_errors_total";
    const POOLS: [&str; 2] = ["users", "security_log"];
    // Logins of an email nobody has: one query each (the user by email).
    const LOGINS: usize = 5;
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let metrics = app.url("/metrics");
    let before = scrape(&app.client, &metrics).await;
    let has = |samples: &[Sample], name: &str, pool: &str| {
        samples
            .iter()
            .any(|s| s.name == name && s.labels.get("pool").map(String::as_str) == Some(pool))
    };
    for pool in POOLS {
        for name in [
            format!("{WAIT}_count"),
            format!("{WAIT}_sum"),
            format!("{WAIT}_bucket"),
            ERRORS.to_owned(),
        ] {
            assert!(has(&before, &name, pool), "{name}{{pool={pool:?}}} missing");
        }
    }

    // A signup: the user by email, its insert, and the session's transaction (3 acquires).
    app.signed_up(&unique_email()).await;
    let email = unique_email();
    for _ in 0..LOGINS {
        let response = app.login(&email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Once the events are in the table, the sink has acquired from the security-log pool.
    let events = app
        .events_where(|events| {
            events
                .iter()
                .filter(|e| e.event_type.as_str() == "login_failed")
                .count()
                >= LOGINS
        })
        .await;
    assert!(
        events
            .iter()
            .filter(|e| e.event_type.as_str() == "login_failed")
            .count()
            >= LOGINS,
        "the login_failed events did not reach the security log's database"
    );
    let after = scrape(&app.client, &metrics).await;

    let value =
        |samples: &[Sample], name: &str, pool: &str| sample(samples, name, &[("pool", pool)]);
    let moved = |name: &str, pool: &str| value(&after, name, pool) - value(&before, name, pool);
    let users = moved(&format!("{WAIT}_count"), "users");
    assert!(
        users >= (3 + LOGINS) as f64,
        "users pool: {users} acquires for at least {} queries",
        3 + LOGINS
    );
    let security_log = moved(&format!("{WAIT}_count"), "security_log");
    assert!(
        security_log >= 1.0,
        "security_log pool: {security_log} acquires after the sink wrote"
    );
    for pool in POOLS {
        let sum = value(&after, &format!("{WAIT}_sum"), pool);
        assert!(sum.is_finite() && sum >= 0.0, "{pool}: _sum {sum}");
        assert!(
            moved(&format!("{WAIT}_sum"), pool) >= 0.0,
            "{pool}: _sum went down"
        );
        // Buckets are cumulative, from 10 us up, and +Inf holds every observation.
        let mut buckets: Vec<(f64, f64)> = after
            .iter()
            .filter(|s| {
                s.name == format!("{WAIT}_bucket")
                    && s.labels.get("pool").map(String::as_str) == Some(pool)
            })
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            (buckets[0].0 - 0.00001).abs() < 1e-12,
            "{pool}: {buckets:?}"
        );
        assert!(
            buckets
                .iter()
                .any(|(le, _)| (5.0..f64::INFINITY).contains(le)),
            "{pool}: no bucket at or above 5 s: {buckets:?}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{pool}: buckets not cumulative: {buckets:?}"
        );
        let (last_le, last_count) = *buckets.last().unwrap();
        assert!(last_le.is_infinite(), "{pool}: no +Inf bucket");
        assert_eq!(
            last_count,
            value(&after, &format!("{WAIT}_count"), pool),
            "{pool}: +Inf bucket != _count"
        );
        assert_eq!(
            value(&after, ERRORS, pool),
            0.0,
            "{pool}: acquire errors with a healthy database"
        );
    }
}

/// A wait that ends without a connection is counted, whether the pool timed out or the caller
/// gave up first (the security-log writer's batch timeout is shorter than the pool's); only
/// waits that got a connection go into the histogram.
#[tokio::test]
async fn db_pool_acquire_errors_count_pool_timeouts_and_abandoned_waits() {
    use flux_auth::db::Database;
    use flux_auth::metrics::{Metrics, POOL_USERS};
    if !postgres_available().await {
        return;
    }
    let test_db = TestDb::create().await;
    let metrics = Metrics::default();
    let db = Database::connect_lazy_observed(
        &secrecy::SecretString::from(test_db.url.clone()),
        &flux_auth::db::Schemas::default(),
        1,
        Duration::from_secs(1),
        metrics.pool(POOL_USERS),
    )
    .unwrap();
    let pool = metrics.pool(POOL_USERS);
    let held = db.acquire().await.expect("the only connection");
    assert_eq!(pool.errors.get(), 0);

    let timed_out = db.acquire().await;
    assert!(
        matches!(timed_out, Err(sqlx::Error::PoolTimedOut)),
        "{timed_out:?}"
    );
    assert_eq!(pool.errors.get(), 1, "a pool timeout is counted");

    let abandoned = tokio::time::timeout(Duration::from_millis(20), db.acquire()).await;
    assert!(abandoned.is_err(), "the wait outlived its caller's timeout");
    assert_eq!(pool.errors.get(), 2, "an abandoned wait is counted");

    drop(held);
    let again = db.acquire().await.expect("the connection, returned");
    drop(again);
    assert_eq!(pool.errors.get(), 2);
    let (sum, count) = histogram_sum_count(&metrics);
    assert_eq!(
        count, 2.0,
        "only the acquires that got a connection are timed"
    );
    assert!(sum.is_finite() && sum >= 0.0, "{sum}");
    db.pool.close().await;
}

/// `_sum` and `_count` of `db_pool_acquire_wait_seconds{pool="users"}`, as a scrape shows them.
fn histogram_sum_count(metrics: &flux_auth::metrics::Metrics) -> (f64, f64) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register(
        "db_pool_acquire_wait_seconds",
        "wait",
        metrics.db_pool_acquire_wait.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let samples = parse_exposition(&text);
    let users = [("pool", "users")];
    (
        sample(&samples, "db_pool_acquire_wait_seconds_sum", &users),
        sample(&samples, "db_pool_acquire_wait_seconds_count", &users),
    )
}

// ---- the binary: JSON logs, request ids, sd_notify -----------------------------------------------

/// A request id the service generated: a UUID.
fn assert_generated_id(id: &str, sent: &str) {
    assert_ne!(id, sent, "a malformed X-Request-Id is replaced");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id:?} is not a UUID");
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_request_ids_and_never_credentials() {
    let mut instance = Launch::in_temp_dir().start().await;
    let client = Client::new();
    let canary_token = format!("canary-token-{}", uuid::Uuid::new_v4().simple());
    let canary_cookie = format!("canary-cookie-{}", uuid::Uuid::new_v4().simple());
    let canary_password = format!("canary password {}", uuid::Uuid::new_v4().simple());

    // A well-formed id is echoed, in the header and the error body, and carries into the log.
    let sent_id = format!("ops-check-{}", uuid::Uuid::new_v4().simple());
    let me = client
        .get(instance.url("/api/auth/me"))
        .header("x-request-id", &sent_id)
        .header("authorization", format!("Bearer {canary_token}"))
        .header("cookie", format!("session={canary_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(&me), sent_id);
    let body = assert_error(me, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_INVALID").await;
    assert_eq!(body["requestId"], sent_id.as_str());

    // No id: one is generated and returned.
    let login = client
        .post(instance.url("/api/auth/login"))
        .header("cookie", format!("session={canary_cookie}"))
        .json(&json!({ "email": unique_email(), "password": canary_password }))
        .send()
        .await
        .unwrap();
    let login_id = request_id(&login);
    assert_generated_id(&login_id, "");
    let body = assert_error(login, StatusCode::UNAUTHORIZED, "AUTH_INVALID_CREDENTIALS").await;
    assert_eq!(body["requestId"], login_id.as_str());

    // Malformed ids (spaces; 200 characters) are replaced, not echoed.
    let mut replaced = Vec::new();
    for bad in ["has spaces in it".to_owned(), "a".repeat(200)] {
        let response = client
            .get(instance.url("/health/live"))
            .header("x-request-id", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let id = request_id(&response);
        assert_generated_id(&id, &bad);
        replaced.push((bad, id));
    }

    assert_eq!(
        instance.stop("TERM").await.0.code(),
        Some(0),
        "{}",
        instance.logs()
    );
    let stdout = instance.stdout_text();
    let stderr = instance.stderr_text();

    let mut lines = Vec::new();
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON value ({e}): {line:?}"));
        assert!(value.is_object(), "not a JSON object: {line:?}");
        lines.push(value);
    }
    assert!(lines.len() >= 5, "too few log lines:\n{stdout}");

    // The request line: id, route, method, status, latency, client IP.
    let request_line = |id: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["span"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no request line for {id}:\n{stdout}"))
    };
    let line = request_line(&sent_id);
    assert_eq!(line["route"], "/api/auth/me", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["status"], 401, "{line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    assert!(line["latency_ms"].is_number(), "{line}");
    assert!(
        line["timestamp"].is_string() && line["level"] == "INFO",
        "{line}"
    );
    assert_eq!(request_line(&login_id)["route"], "/api/auth/login");
    for (bad, id) in &replaced {
        request_line(id);
        assert!(
            !stdout.contains(bad.as_str()),
            "the malformed id was logged"
        );
    }
    // The login's security event is mirrored in the log (by the writer, off the request path),
    // carrying the request's id.
    assert!(
        lines.iter().any(|l| l["event_type"] == "login_failed"
            && l["metadata"]
                .as_str()
                .is_some_and(|m| m.contains(login_id.as_str()))),
        "{stdout}"
    );

    for (what, canary) in [
        ("Authorization token", &canary_token),
        ("cookie", &canary_cookie),
        ("password", &canary_password),
    ] {
        assert!(!stdout.contains(canary.as_str()), "the {what} is in stdout");
        assert!(!stderr.contains(canary.as_str()), "the {what} is in stderr");
    }
}

/// A log reader that stops reading (pm2 busy, a full pipe) does not stop the service: lines wait
/// in a bounded buffer, then are dropped and counted; requests go on being answered; no line is
/// lost without being counted, and every line that reaches stdout is whole.
#[tokio::test]
async fn a_log_reader_that_stops_reading_does_not_stop_the_service() {
    // stdout is a pipe that nobody reads until the end: the kernel holds 64 KiB of it (a few
    // hundred lines), the writer thread a batch it cannot write (up to 1,000 lines), and 1,000
    // more may wait.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut instance = Launch::in_temp_dir()
        .env("LOG_BUFFER_LINES", "1000")
        .stdout(writer)
        .start()
        .await;

    // Several times what the pipe and the buffers hold, one log line each. When a request's line
    // was written on the worker that served it, the first request to meet the full pipe never
    // got its answer, nor did any after it.
    let requests = 6_000;
    let client = Client::new();
    let url = instance.url("/health/live");
    let answered = tokio::time::timeout(PATIENCE, async {
        futures::stream::iter(0..requests)
            .map(|_| {
                let request = client.get(&url).send();
                async move { request.await.map(|r| r.status()) }
            })
            .buffer_unordered(16)
            .filter(|status| std::future::ready(matches!(status, Ok(StatusCode::OK))))
            .count()
            .await
    })
    .await
    .unwrap_or_else(|_| panic!("requests stalled behind a full stdout\n{}", instance.logs()));
    assert_eq!(answered, requests, "{}", instance.logs());

    // The reader comes back: what waited is written, then the metrics request's line.
    let drained = std::thread::spawn(move || std::io::read_to_string(reader).unwrap());
    let dropped = metric_at(
        &client,
        &instance.url("/metrics"),
        "flux_auth_log_lines_dropped_total",
    )
    .await
    .expect("/metrics has flux_auth_log_lines_dropped_total") as usize;
    assert_eq!(
        instance.stop("TERM").await.0.code(),
        Some(0),
        "{}",
        instance.logs()
    );
    let stdout = drained.join().unwrap();

    let mut written = 0;
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a torn or broken line ({e}): {line:?}"));
        if value["message"] == "request" && value["route"] == "/health/live" {
            written += 1;
        }
    }
    // Every request logged one line: written, or dropped and counted. The liveness polls before
    // the run add a few written lines; other lines dropped could only add to the count.
    assert!(dropped > 0, "nothing was dropped: the pipe never filled?");
    assert!(
        written < requests,
        "{written} of {requests} lines were written"
    );
    assert!(
        written + dropped >= requests,
        "{} lines were lost without being counted ({written} written, {dropped} dropped)",
        requests - written - dropped
    );
    // Shutdown's own lines come after the drain: nothing is held back at exit.
    assert!(
        stdout.lines().last().is_some_and(|l| l.contains("stopped")),
        "the last line is not the shutdown's:\n{}",
        stdout.lines().last().unwrap_or_default()
    );
}

/// Receives one notification (bounded by `PATIENCE`).
async fn notification(socket: &tokio::net::UnixDatagram, instance: &FluxAuth) -> String {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no sd_notify message\n{}", instance.logs()))
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn under_notify_socket_it_sends_ready_then_stopping_on_sigterm_and_exits_0() {
    let sockets = tempfile::tempdir().unwrap();
    let path: PathBuf = sockets.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let mut instance = Launch::in_temp_dir().env("NOTIFY_SOCKET", &path).spawn();

    assert_eq!(notification(&socket, &instance).await, "READY=1");
    // READY means serving: no polling needed.
    let live = Client::new()
        .get(instance.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    instance.signal("TERM").await;
    assert_eq!(notification(&socket, &instance).await, "STOPPING=1");
    let status = instance.exit("SIGTERM").await;
    assert_eq!(status.code(), Some(0), "{}", instance.logs());
}

// ---- /openapi.json -------------------------------------------------------------------------------

async fn openapi(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/openapi.json is not JSON: {e}"))
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.push(r);
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_serves() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let doc = openapi(&app).await;
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let served: BTreeSet<(String, String)> = flux_auth::http::routes()
        .iter()
        .map(|r| (r.path.to_owned(), r.method.as_str().to_ascii_lowercase()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| !matches!(k.as_str(), "parameters" | "summary" | "description"))
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    let mut operation_ids = HashSet::new();
    for (path, method) in &documented {
        let operation = &doc["paths"][path][method];
        let id = operation["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id), "operationId {id} twice");
        let responses = operation["responses"].as_object().unwrap();
        // (Apple sign-in is the one route that only ever answers 501, as the old service did.)
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3') || s == "501"),
            "{method} {path} documents no answer but errors"
        );
        // Every error is documented with the Error shape, and says which codes it carries.
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
                assert!(
                    response["description"].as_str().unwrap().contains('`'),
                    "{method} {path} {status} names no code"
                );
            }
        }
        // Each path parameter is declared.
        for name in path.split('{').skip(1).filter_map(|s| s.split_once('}')) {
            let declared = operation["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name.0 && p["in"] == "path"));
            assert!(declared, "{method} {path}: {{{}}} undeclared", name.0);
        }
    }

    // Each alias: named by its route's operation, and served as the route itself (the same answer
    // to the same request, never the 404 or 405 of a path the router does not know).
    let mut aliased = 0;
    for route in flux_auth::http::routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        let named = &doc["paths"][route.path][&method]["x-aliases"];
        if route.aliases.is_empty() {
            assert!(named.is_null(), "{method} {}: {named}", route.path);
            continue;
        }
        assert_eq!(named, &json!(route.aliases), "{method} {}", route.path);
        let concrete = |path: &str| path.replace("{id}", "x").replace("{sid}", "x");
        let status_at = |path: String| {
            let request = app.client.request(route.method.clone(), app.url(&path));
            async move { request.send().await.unwrap().status() }
        };
        let canonical = status_at(concrete(route.path)).await;
        for alias in &route.aliases {
            let status = status_at(concrete(alias)).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {alias}: {status}"
            );
            assert_eq!(status, canonical, "{method} {alias} against {}", route.path);
            aliased += 1;
        }
    }
    assert!(aliased > 20, "{aliased} aliases");
    for unknown in ["/auth/nope", "/2fa/nope", "/api/2fa/nope"] {
        let response = app.client.get(app.url(unknown)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{unknown}");
    }
    // The mechanism is by prefix: a route added under one gets its alias.
    assert_eq!(
        flux_auth::http::aliases_of("/api/2fa/setup"),
        vec!["/2fa/setup".to_owned()]
    );
    assert_eq!(
        flux_auth::http::aliases_of("/api/auth/x/{id}"),
        vec!["/auth/x/{id}".to_owned()]
    );
    assert!(flux_auth::http::aliases_of("/api/admin/security/users").is_empty());

    let mut found = Vec::new();
    refs(&doc, &mut found);
    for r in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

// ---- documented schemas against real bodies ----

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).unwrap()),
        None => schema,
    }
}

/// The properties and required keys of an object schema, `allOf` parts (serde's `flatten`)
/// merged; `None` for a schema that says nothing about properties.
fn object_shape(
    doc: &Value,
    schema: &Value,
) -> Option<(BTreeMap<String, Value>, BTreeSet<String>)> {
    let schema = resolve(doc, schema);
    let mut properties = BTreeMap::new();
    let mut required = BTreeSet::new();
    let mut any = false;
    if let Some(own) = schema["properties"].as_object() {
        any = true;
        properties.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(own) = schema["required"].as_array() {
        required.extend(own.iter().map(|k| k.as_str().unwrap().to_owned()));
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        if let Some((p, r)) = object_shape(doc, part) {
            any = true;
            properties.extend(p);
            required.extend(r);
        }
    }
    any.then_some((properties, required))
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Whether `value` is what `schema` documents: types, enums, every key documented, every
/// required key present, recursively.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return if options.iter().any(|s| conforms(doc, s, value, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: {value} matches none of its {key}"))
            };
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !value.is_null()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(fields) = value {
        let extra = &schema["additionalProperties"];
        if let Some((properties, required)) = object_shape(doc, schema) {
            for key in &required {
                if !fields.contains_key(key) {
                    return Err(format!("{at}: required key {key} missing"));
                }
            }
            for (key, field) in fields {
                match properties.get(key) {
                    Some(s) => conforms(doc, s, field, &format!("{at}.{key}"))?,
                    None if extra.is_object() => {
                        conforms(doc, extra, field, &format!("{at}.{key}"))?
                    }
                    None => return Err(format!("{at}: key {key} is not documented")),
                }
            }
        } else if extra.is_object() {
            for (key, field) in fields {
                conforms(doc, extra, field, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, element) in items.iter().enumerate() {
            conforms(doc, item, element, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts that `response` has a status documented for `method path` and a body its schema
/// describes; returns the body.
async fn assert_documented(
    doc: &Value,
    method: &str,
    path: &str,
    response: reqwest::Response,
) -> Value {
    let status = response.status().as_u16().to_string();
    let body: Value = response.json().await.unwrap();
    let documented = &doc["paths"][path][method]["responses"][&status];
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which is not documented: {body}"
    );
    let schema = &documented["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} documents no JSON body"
    );
    if let Err(why) = conforms(doc, schema, &body, &format!("{method} {path} {status}")) {
        panic!("{why}\nbody: {body}");
    }
    body
}

#[tokio::test]
async fn openapi_schemas_match_the_bodies_the_service_sends() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let doc = openapi(&app).await;
    let email = unique_email();

    let signup = assert_documented(
        &doc,
        "post",
        "/api/auth/signup",
        app.signup(&email, PASSWORD, "Schema Check").await,
    )
    .await;
    // At least the top-level keys, spelled out: what the frontends read.
    let keys: BTreeSet<&str> = signup
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let (documented, _) =
        object_shape(&doc, &doc["components"]["schemas"]["AuthResponse"]).unwrap();
    let documented: BTreeSet<&str> = documented.keys().map(String::as_str).collect();
    let google_only: BTreeSet<&str> = ["isNewUser"].into();
    assert_eq!(keys, &documented - &google_only);
    // The check itself catches a key the document lacks and a required key the body lacks.
    let schema = &doc["paths"]["/api/auth/signup"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"];
    let mut extra = signup.clone();
    extra["surprise"] = json!(true);
    assert!(conforms(&doc, schema, &extra, "extra").is_err());
    let mut missing = signup.clone();
    missing["user"].as_object_mut().unwrap().remove("email");
    assert!(conforms(&doc, schema, &missing, "missing").is_err());

    let login = assert_documented(
        &doc,
        "post",
        "/api/auth/login",
        app.login(&email, PASSWORD).await,
    )
    .await;
    let token = login["accessToken"].as_str().unwrap().to_owned();
    assert_documented(&doc, "get", "/api/auth/me", app.me(&token).await).await;
    let refresh_token = login["refreshToken"].as_str().unwrap();
    let refreshed = assert_documented(
        &doc,
        "post",
        "/api/auth/refresh",
        app.refresh(refresh_token).await,
    )
    .await;
    let token = refreshed["accessToken"].as_str().unwrap().to_owned();
    assert_documented(
        &doc,
        "get",
        "/api/auth/token-info",
        app.get_auth("/api/auth/token-info", &token).await,
    )
    .await;
    assert_documented(
        &doc,
        "get",
        "/api/auth/sessions",
        app.get_auth("/api/auth/sessions", &token).await,
    )
    .await;
    // The events of this user (signup, login, refresh) are written within milliseconds.
    app.events_of("token_refreshed").await;
    let own = assert_documented(
        &doc,
        "get",
        "/api/auth/security-events",
        app.get_auth("/api/auth/security-events", &token).await,
    )
    .await;
    assert!(!own["events"].as_array().unwrap().is_empty(), "{own}");

    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/api/csrf-token",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_documented(&doc, "get", path, response).await;
    }

    // Errors: the Error shape, with the statuses each route documents.
    assert_documented(
        &doc,
        "post",
        "/api/auth/signup",
        app.signup(&email, PASSWORD, "Again").await,
    )
    .await;
    assert_documented(
        &doc,
        "post",
        "/api/auth/login",
        app.login(&email, "not the password").await,
    )
    .await;
    assert_documented(&doc, "get", "/api/auth/me", app.me("not-a-token").await).await;
    let wrong_type = app
        .client
        .post(app.url("/api/auth/login"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_documented(&doc, "post", "/api/auth/login", wrong_type).await;

    assert_documented(
        &doc,
        "post",
        "/api/auth/logout-all",
        app.post_json_auth("/api/auth/logout-all", &token, &json!({}))
            .await,
    )
    .await;
    assert_documented(&doc, "post", "/api/auth/logout", app.logout(&token).await).await;
}
