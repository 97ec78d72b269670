//! Connections (docs/SECURITY.md I5, slowloris): a request head must arrive within the head
//! timeout, an idle keep-alive connection is closed after it, and at the connection cap the service
//! sheds connections (logged, counted) instead of running out of file descriptors, so
//! `/health/live` keeps answering.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Waits (at most `limit`) for the server to close `socket`, discarding what it sends.
async fn closed_within(socket: &mut (impl AsyncRead + Unpin), limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Whether `socket` is still open: the server has neither closed it nor sent anything.
async fn still_open(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    // Nothing to read within 50 ms: neither an answer nor the end of the stream.
    tokio::time::timeout(Duration::from_millis(50), socket.read(&mut buf))
        .await
        .is_err()
}

/// The exposition at `url`, fetched on a connection of its own (closed after).
async fn scrape(url: &str) -> String {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The value of `series` (a name with its labels, as exposed) in `text`; the test fails when the
/// series is missing.
fn value_of(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{series} is not in the exposition:\n{text}"))
}

/// [`value_of`] `series` in a scrape of `url`.
async fn series_at(url: &str, series: &str) -> f64 {
    value_of(&scrape(url).await, series)
}

/// `GET path` on `socket` (keep-alive); returns the status once the whole answer has arrived.
async fn request_on(socket: &mut TcpStream, path: &str) -> u16 {
    exchange(socket, path).await.0
}

/// `GET path` on `socket` (keep-alive): the status and the body.
async fn exchange(socket: &mut TcpStream, path: &str) -> (u16, String) {
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            socket.read(&mut byte).await.unwrap(),
            1,
            "closed mid-answer"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    socket.read_exact(&mut body).await.unwrap();
    (
        head[9..12].parse().unwrap(),
        String::from_utf8(body).unwrap(),
    )
}

#[tokio::test]
async fn slow_or_silent_clients_and_idle_keep_alive_connections_are_closed_after_the_head_timeout()
{
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.header_read_timeout_ms = 500)
        .spawn()
        .await;
    let limit = Duration::from_secs(5);
    // Sends nothing at all.
    let mut silent = connect(app.port).await;
    // Sends a request line, then a header line every 200 ms, never finishing the head: each read
    // is prompt, the head is not.
    let mut dripping = connect(app.port).await;
    let drip = tokio::spawn(async move {
        let _ = dripping.write_all(b"GET /health/live HTTP/1.1\r\n").await;
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if dripping
                .write_all(format!("x-drip-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return true; // closed by the server
            }
        }
        closed_within(&mut dripping, Duration::ZERO).await
    });
    // Asks once with keep-alive, gets its answer, then stays idle.
    let mut idle = connect(app.port).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    assert!(
        closed_within(&mut silent, limit).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut idle, limit).await,
        "an idle keep-alive connection stayed open"
    );
    assert!(drip.await.unwrap(), "a dripping head stayed open for 10 s");
    let timed_out = series_at(
        &app.url("/metrics"),
        r#"flux_auth_http_connections_timed_out_total{listener="api"}"#,
    )
    .await;
    assert!(timed_out >= 3.0, "timeouts not counted: {timed_out}");
    // A prompt client is not affected.
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn at_the_connection_cap_idle_connections_make_way_and_busy_ones_are_kept() {
    let app = TestApp::builder(Backend::File)
        .settings(|s| {
            s.max_connections = 16;
            s.header_read_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    make_admin(&app, &email).await;
    // A connection with a response in progress: the admin event stream.
    let stream = app
        .get_auth("/api/admin/security/events/stream", &token)
        .await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();

    // Slow clients: each has sent half a request head and waits.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut socket = connect(app.port).await;
        socket
            .write_all(b"GET /health/live HTTP/1.1\r\n")
            .await
            .unwrap();
        slow.push(socket);
    }
    // A new client is still served: it displaces the oldest idle connection.
    for _ in 0..5 {
        let response = app
            .client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut open = 0;
    for socket in &mut slow {
        if still_open(socket).await {
            open += 1;
        }
    }
    assert!(
        open < 16,
        "{open} slow connections still open at a cap of 16"
    );
    let metrics = app.url("/metrics");
    let shed = series_at(
        &metrics,
        r#"flux_auth_http_connections_shed_total{listener="api",reason="idle"}"#,
    )
    .await;
    assert!(shed >= 25.0, "{shed} connections displaced");
    // At the cap, counting the scrape's own connection.
    assert_eq!(
        series_at(
            &metrics,
            r#"flux_auth_http_connections_open{listener="api"}"#
        )
        .await,
        16.0
    );
    // The stream was not displaced: it still delivers.
    app.signed_up(&unique_email()).await;
    let delivered = tokio::time::timeout(Duration::from_secs(10), async {
        use futures::StreamExt;
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("signup_success") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(delivered, Ok(true), "the event stream was cut");
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_is_refused_and_counted() {
    let app = TestApp::builder(Backend::File)
        .settings(|s| {
            s.max_connections = 16;
            s.header_read_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    make_admin(&app, &email).await;
    // Sixteen event streams, each on its own connection, fill the cap with busy connections.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let client = reqwest::Client::new();
        let response = client
            .get(app.url("/api/admin/security/events/stream"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = reqwest::Client::new()
        .get(app.url("/health/live"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a 17th connection was served: {refused:?}"
    );
    drop(streams);
    // With the streams gone, connections are served again, and the refusal was counted.
    let text = eventually(
        "a connection to be served again",
        Duration::from_secs(10),
        || async {
            let response = reqwest::Client::new()
                .get(app.url("/metrics"))
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        },
    )
    .await;
    let refused = value_of(
        &text,
        r#"flux_auth_http_connections_shed_total{listener="api",reason="refused"}"#,
    );
    assert!(refused >= 1.0, "refusals counted: {refused}");
}

#[tokio::test]
async fn under_a_512_file_limit_600_slow_clients_are_shed_and_the_service_keeps_working() {
    // The real binary, as a supervisor with LimitNOFILE=512 would run it.
    let mut service = Launch::in_temp_dir()
        .launched_by("prlimit", &["--nofile=512:512"])
        .env("JWT_SECRET", JWT_SECRET)
        .env("HEADER_READ_TIMEOUT_MS", "60000")
        // Every client here is 127.0.0.1: the cap under test is the one the file limit sets.
        .env("MAX_CONNECTIONS_PER_IP", "0")
        .start()
        .await;
    let port = service.port;
    let client = reqwest::Client::new();
    let base = service.base.clone();

    let mut slow = Vec::new();
    for _ in 0..600 {
        let mut socket = connect(port).await;
        socket
            .write_all(b"GET /health/live HTTP/1.1\r\nx-a: b\r\n")
            .await
            .unwrap();
        slow.push(socket);
    }
    // Still alive, still serving, still able to open its own files (users.json, the event spool).
    let response = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let signup = client
        .post(format!("{base}/api/auth/signup"))
        .json(&serde_json::json!({ "email": unique_email(), "password": PASSWORD, "name": "N" }))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);
    let shed = metric_at(
        &client,
        &format!("{base}/metrics"),
        r#"flux_auth_http_connections_shed_total{listener="api",reason="idle"}"#,
    )
    .await;
    assert!(shed.is_some_and(|n| n >= 200.0), "shed: {shed:?}");
    let text = service.stdout_text();
    assert!(
        text.contains("MAX_CONNECTIONS lowered to fit the open-file limit"),
        "{text}"
    );
    assert!(text.contains("connection limit reached"), "{text}");
    drop(slow);
    service.child.kill().await.unwrap();
}

#[tokio::test]
async fn with_metrics_addr_each_listener_counts_its_own_connections() {
    let metrics_port = free_port();
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into());
            s.header_read_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    const API_OPEN: &str = r#"flux_auth_http_connections_open{listener="api"}"#;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect(app.port).await);
    }
    // Every scrape comes in on the metrics listener, on a connection of its own.
    eventually(
        "the five API connections to be counted",
        Duration::from_secs(10),
        || async { (series_at(&metrics, API_OPEN).await == 5.0).then_some(()) },
    )
    .await;
    let text = scrape(&metrics).await;
    assert_eq!(
        value_of(
            &text,
            r#"flux_auth_http_connections_open{listener="metrics"}"#
        ),
        1.0
    );
    // Each listener's counters are there from the start.
    for listener in ["api", "metrics"] {
        for series in [
            format!(
                r#"flux_auth_http_connections_shed_total{{listener="{listener}",reason="idle"}}"#
            ),
            format!(
                r#"flux_auth_http_connections_shed_total{{listener="{listener}",reason="refused"}}"#
            ),
            format!(r#"flux_auth_http_connections_timed_out_total{{listener="{listener}"}}"#),
            format!(r#"flux_auth_http_accept_errors_total{{listener="{listener}"}}"#),
        ] {
            assert_eq!(value_of(&text, &series), 0.0, "{series}");
        }
    }
    drop(held);
    eventually(
        "the API connections to be counted closed",
        Duration::from_secs(10),
        || async { (series_at(&metrics, API_OPEN).await == 0.0).then_some(()) },
    )
    .await;
}

/// An app capped at 16 connections whose metrics are scraped on a listener of their own (so that
/// scraping takes no API connection), with heads and requests given a minute: the app and the
/// scrape URL.
async fn capped_app() -> (TestApp, String) {
    let metrics_port = free_port();
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.max_connections = 16;
            s.header_read_timeout_ms = 60_000;
            s.request_timeout_ms = 60_000;
            s.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into());
        })
        .spawn()
        .await;
    (app, format!("http://127.0.0.1:{metrics_port}/metrics"))
}

/// Waits until the API listener has `n` connections open.
async fn api_connections(metrics: &str, n: f64) {
    eventually(
        &format!("{n} API connections open"),
        Duration::from_secs(10),
        || async {
            let open = series_at(
                metrics,
                r#"flux_auth_http_connections_open{listener="api"}"#,
            )
            .await;
            (open == n).then_some(())
        },
    )
    .await;
}

const SHED_IDLE: &str = r#"flux_auth_http_connections_shed_total{listener="api",reason="idle"}"#;
const SHED_REFUSED: &str =
    r#"flux_auth_http_connections_shed_total{listener="api",reason="refused"}"#;

#[tokio::test]
async fn at_the_cap_connections_trickling_a_request_body_make_way_for_new_ones() {
    let (app, metrics) = capped_app().await;
    // Sixteen clients each send a complete head declaring a 1000-byte body, then trickle the body
    // a byte every 200 ms: with a request timeout of a minute, each would hold its connection.
    let mut readers = Vec::new();
    let mut trickles = Vec::new();
    for _ in 0..16 {
        let socket = connect(app.port).await;
        let (reader, mut writer) = socket.into_split();
        writer
            .write_all(
                b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                  content-length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
        readers.push(reader);
        trickles.push(tokio::spawn(async move {
            for _ in 0..300 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }));
    }
    api_connections(&metrics, 16.0).await;
    // A new client is served: the connection waiting longest for its request makes way.
    let response = reqwest::Client::new()
        .get(app.url("/health/live"))
        .send()
        .await
        .expect("a new connection is served at the cap");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        closed_within(&mut readers[0], Duration::from_secs(5)).await,
        "the first trickling connection was kept"
    );
    let text = scrape(&metrics).await;
    assert_eq!(value_of(&text, SHED_IDLE), 1.0);
    assert_eq!(value_of(&text, SHED_REFUSED), 0.0);
    for trickle in trickles {
        trickle.abort();
    }
}

#[tokio::test]
async fn at_the_cap_the_connection_idle_longest_makes_way_so_a_recently_used_old_one_stays() {
    let (app, metrics) = capped_app().await;
    // An old keep-alive connection, as a reverse proxy keeps in its pool: opened first.
    let mut old = connect(app.port).await;
    assert_eq!(request_on(&mut old, "/health/live").await, 200);
    // A slow client, accepted after it, still sending its head a line at a time.
    let (mut slow, mut slow_writer) = connect(app.port).await.into_split();
    slow_writer
        .write_all(b"GET /health/live HTTP/1.1\r\n")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        for i in 0..90 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("x-drip-{i}: y\r\n");
            if slow_writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // Fourteen new connections fill the cap.
    let mut fresh = Vec::new();
    for _ in 0..14 {
        fresh.push(connect(app.port).await);
    }
    api_connections(&metrics, 16.0).await;
    // The old connection is used again: now it is the one that has waited least.
    assert_eq!(request_on(&mut old, "/health/live").await, 200);

    // One more: the slow head, waiting longest, makes way; the old connection stays.
    let mut newcomers = vec![connect(app.port).await];
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "the slow head was kept"
    );
    // Ten more: the first ten of the fourteen make way, in the order they came.
    for _ in 0..10 {
        newcomers.push(connect(app.port).await);
    }
    for (i, socket) in fresh.iter_mut().enumerate().take(10) {
        assert!(
            closed_within(socket, Duration::from_secs(5)).await,
            "new connection {i} was kept"
        );
    }
    for socket in &mut fresh[10..] {
        assert!(still_open(socket).await);
    }
    assert_eq!(series_at(&metrics, SHED_IDLE).await, 11.0);
    assert_eq!(request_on(&mut old, "/health/live").await, 200);
    drip.abort();
}

/// A connection to `port` from the loopback address `local`: to the service, another client than
/// 127.0.0.1.
async fn connect_from(local: [u8; 4], port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((local, 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

const SHED_IP_IDLE: &str =
    r#"flux_auth_http_connections_shed_total{listener="api",reason="ip_idle"}"#;
const SHED_IP_REFUSED: &str =
    r#"flux_auth_http_connections_shed_total{listener="api",reason="ip_refused"}"#;

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip_and_makes_way_among_its_own() {
    let metrics_port = free_port();
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.max_connections = 64;
            s.max_connections_per_ip = 16;
            s.header_read_timeout_ms = 60_000;
            s.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
            s.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into());
        })
        .spawn()
        .await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Another client's idle connection, opened first: the one waiting longest of all.
    let mut other = connect_from([127, 0, 0, 2], app.port).await;
    // Sixteen from 127.0.0.1 reach its cap; each of ten more closes that address's connection
    // waiting longest, well under MAX_CONNECTIONS.
    let mut own = Vec::new();
    for _ in 0..16 {
        own.push(connect(app.port).await);
    }
    api_connections(&metrics, 17.0).await;
    for _ in 0..10 {
        own.push(connect(app.port).await);
    }
    for (i, socket) in own.iter_mut().enumerate() {
        if i < 10 {
            assert!(
                closed_within(socket, Duration::from_secs(5)).await,
                "connection {i} from 127.0.0.1 was kept"
            );
        } else {
            assert!(still_open(socket).await, "connection {i} was closed");
        }
    }
    assert!(
        still_open(&mut other).await,
        "another address's connection was closed"
    );
    api_connections(&metrics, 17.0).await;
    let text = scrape(&metrics).await;
    assert_eq!(value_of(&text, SHED_IP_IDLE), 10.0);
    assert_eq!(value_of(&text, SHED_IDLE), 0.0);

    // A trusted proxy carries many clients: its connections are not counted per address.
    let mut proxied = Vec::new();
    for _ in 0..20 {
        proxied.push(connect_from([127, 0, 0, 3], app.port).await);
    }
    api_connections(&metrics, 37.0).await;
    assert_eq!(series_at(&metrics, SHED_IP_IDLE).await, 10.0);
}

#[tokio::test]
async fn when_every_connection_of_an_address_is_serving_its_next_one_is_refused_and_others_served()
{
    let metrics_port = free_port();
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.max_connections_per_ip = 4;
            s.metrics_addr = Some(([127, 0, 0, 1], metrics_port).into());
        })
        .spawn()
        .await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let email = unique_email();
    let token = app.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    make_admin(&app, &email).await;
    let from = |local: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(local))
            .build()
            .unwrap()
    };
    // Four event streams from 127.0.0.2, each on its own connection: all serving.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = from([127, 0, 0, 2])
            .get(app.url("/api/admin/security/events/stream"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = from([127, 0, 0, 2])
        .get(app.url("/health/live"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a fifth connection was served: {refused:?}"
    );
    let elsewhere = from([127, 0, 0, 4])
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::OK);
    let text = scrape(&metrics).await;
    assert_eq!(value_of(&text, SHED_IP_REFUSED), 1.0);
    assert_eq!(value_of(&text, SHED_REFUSED), 0.0);
    drop(streams);
}

#[tokio::test]
async fn when_accepts_fail_for_want_of_file_descriptors_the_service_pauses_counts_and_recovers() {
    // Under a limit of 20 open files the cap is 10 connections (half the limit), but the
    // service's own files (the runtime, the listener, the log, the event spool: about 14) take
    // more than the other half, so accepts fail for want of a descriptor before the cap is
    // reached.
    let mut service = Launch::in_temp_dir()
        .launched_by("prlimit", &["--nofile=20:20"])
        .env("JWT_SECRET", JWT_SECRET)
        .env("HEADER_READ_TIMEOUT_MS", "60000")
        .spawn();
    let port = service.port;
    // A connection opened while descriptors are free, kept for the rest of the test.
    let mut kept = eventually("the service to answer", Duration::from_secs(30), || async {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        (request_on(&mut socket, "/health/live").await == 200).then_some(socket)
    })
    .await;

    // Twenty more: the kernel completes each connection, the service cannot accept them all.
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(connect(port).await);
    }
    // Asked on the kept connection (a new one would wait in the queue too).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let (status, text) = exchange(&mut kept, "/metrics").await;
        assert_eq!(status, 200);
        let failed = value_of(
            &text,
            r#"flux_auth_http_accept_errors_total{listener="api"}"#,
        );
        if failed >= 1.0 {
            break failed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed accept counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The service is up and serves the connections it has.
    assert_eq!(request_on(&mut kept, "/health/live").await, 200);
    let text = service.stdout_text();
    assert!(
        text.contains("could not accept a connection"),
        "{failed} failed accepts, none logged: {text}"
    );

    // With the flood gone, descriptors are free again and new connections are served.
    drop(flood);
    eventually(
        "a new connection to be served",
        Duration::from_secs(10),
        || async {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let response = client
                .get(format!("http://127.0.0.1:{port}/health/live"))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    assert_eq!(request_on(&mut kept, "/health/live").await, 200);
    service.child.kill().await.unwrap();
}
