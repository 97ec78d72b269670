//! Bad input (docs/SECURITY.md I1–I6), malformed Authorization headers (C7) and HTTP hardening (J1,
//! J3, J5): every rejection is the Error shape, none is a 500, and nothing is stored half-way.

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Body, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// Every route that takes a JSON body.
const JSON_ROUTES: [&str; 7] = [
    "/api/auth/signup",
    "/api/auth/login",
    "/api/auth/refresh",
    "/api/auth/verify-email",
    "/api/auth/resend-verification",
    "/api/auth/forgot-password",
    "/api/auth/reset-password",
];

/// A body each JSON route would accept as well formed.
fn valid_body(route: &str) -> Value {
    match route {
        "/api/auth/signup" => json!({ "email": unique_email(), "password": PASSWORD, "name": "N" }),
        "/api/auth/login" => json!({ "email": unique_email(), "password": PASSWORD }),
        "/api/auth/verify-email" => json!({ "token": "0".repeat(64) }),
        "/api/auth/resend-verification" | "/api/auth/forgot-password" => {
            json!({ "email": unique_email() })
        }
        "/api/auth/reset-password" => json!({ "token": "0".repeat(64), "password": PASSWORD }),
        _ => json!({ "refreshToken": "r".repeat(43) }),
    }
}

/// POSTs `body` as is, with `content_type` when given (reqwest adds none of its own).
async fn post_raw(
    app: &TestApp,
    route: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Response {
    let mut request = app
        .client
        .post(app.url(route))
        .header("user-agent", UA)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

async fn post_json_text(app: &TestApp, route: &str, body: impl Into<Body>) -> Response {
    post_raw(app, route, Some("application/json"), body).await
}

/// How many users the store holds.
async fn user_count(app: &TestApp) -> usize {
    match app.backend {
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n as usize
        }
        Backend::File => match std::fs::read(app.data_dir().join("users.json")) {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap()["users"]
                .as_array()
                .unwrap()
                .len(),
            Err(_) => 0,
        },
    }
}

async fn assert_still_serving(app: &TestApp) {
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn i2_malformed_json_is_400_invalid_json() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for route in JSON_ROUTES {
        for body in [
            "",
            "{",
            "not json",
            r#"{"email":"a@b.co",}"#,
            "{'email':'a'}",
            r#"{"a":1} {"b":2}"#,
        ] {
            let response = post_json_text(&app, route, body).await;
            assert_error(response, StatusCode::BAD_REQUEST, "INVALID_JSON").await;
        }
    }
}

#[tokio::test]
async fn i2_missing_or_wrong_content_type_is_415_and_nothing_is_stored() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for route in JSON_ROUTES {
        let body = valid_body(route).to_string();
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            None,
        ] {
            let response = post_raw(&app, route, content_type, body.clone()).await;
            assert_error(
                response,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
            )
            .await;
        }
    }
    assert_eq!(user_count(&app).await, 0);
    // A charset parameter or `+json` is still JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let body = valid_body("/api/auth/signup").to_string();
        let response = post_raw(&app, "/api/auth/signup", Some(content_type), body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
    }
}

#[tokio::test]
async fn i1_bodies_over_16_kib_are_413_with_or_without_content_length() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let padded = |size: usize| {
        let head = r#"{"email":"nobody@example.com","password":"x","pad":""#;
        format!("{head}{}\"}}", " ".repeat(size - head.len() - 2))
    };
    // Exactly at the limit is read (and fails as a login); one byte more is not.
    assert_eq!(padded(16 * 1024).len(), 16 * 1024);
    let response = post_json_text(&app, "/api/auth/login", padded(16 * 1024)).await;
    assert_error(
        response,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
    for route in JSON_ROUTES {
        let response = post_json_text(&app, route, padded(16 * 1024 + 1)).await;
        assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;

        // Chunked transfer encoding, no Content-Length: 64 chunks of 1 KiB.
        let mut chunks = vec![br#"{"email":"nobody@example.com","pad":""#.to_vec()];
        chunks.extend((0..64).map(|_| vec![b'x'; 1024]));
        chunks.push(br#""}"#.to_vec());
        let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let response = post_json_text(&app, route, Body::wrap_stream(stream)).await;
        assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    }
    assert_eq!(user_count(&app).await, 0);
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn i2_wrong_types_are_400_naming_the_field() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    for (route, body, field) in [
        (
            "/api/auth/signup",
            json!({ "email": 123, "password": PASSWORD, "name": "N" }),
            "email",
        ),
        (
            "/api/auth/signup",
            json!({ "email": email, "password": ["x"], "name": "N" }),
            "password",
        ),
        (
            "/api/auth/signup",
            json!({ "email": email, "password": PASSWORD, "name": { "first": "N" } }),
            "name",
        ),
        (
            "/api/auth/signup",
            json!({ "email": email, "password": PASSWORD, "name": "N", "userType": 1 }),
            "userType",
        ),
        (
            "/api/auth/login",
            json!({ "email": 123, "password": PASSWORD }),
            "email",
        ),
        (
            "/api/auth/login",
            json!({ "email": email, "password": 12345678 }),
            "password",
        ),
        (
            "/api/auth/login",
            json!({ "email": true, "password": false }),
            "email",
        ),
        (
            "/api/auth/refresh",
            json!({ "refreshToken": 123 }),
            "refreshToken",
        ),
        (
            "/api/auth/refresh",
            json!({ "refreshToken": { "token": "x" } }),
            "refreshToken",
        ),
    ] {
        let response = app.post_json(route, &body).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_eq!(error["field"], field, "{route} {body}");
        let message = error["message"].as_str().unwrap();
        assert!(
            !message.contains("123") && !message.contains("invalid type"),
            "{message}"
        );
    }
    // Not an object at all: a generic 400 without a field.
    for route in JSON_ROUTES {
        for body in ["null", "42", r#""text""#, "[]"] {
            let error = assert_error(
                post_json_text(&app, route, body).await,
                StatusCode::BAD_REQUEST,
                "INVALID_BODY",
            )
            .await;
            assert!(error.get("field").is_none(), "{route} {body}: {error}");
        }
    }
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn i3_duplicate_keys_are_400_not_last_wins() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let victim = app.signed_up("victim@example.com").await;
    for (route, body, field) in [
        (
            "/api/auth/signup",
            format!(
                r#"{{"email":"{}","password":"{PASSWORD}","name":"N","email":"{}"}}"#,
                unique_email(),
                unique_email()
            ),
            "email",
        ),
        (
            "/api/auth/login",
            format!(
                r#"{{"email":"nobody@example.com","password":"{PASSWORD}","email":"victim@example.com"}}"#
            ),
            "email",
        ),
        (
            "/api/auth/login",
            format!(
                r#"{{"email":"victim@example.com","password":"wrong","password":"{PASSWORD}"}}"#
            ),
            "password",
        ),
        (
            "/api/auth/refresh",
            format!(
                r#"{{"refreshToken":"x","refreshToken":"{}"}}"#,
                victim["refreshToken"].as_str().unwrap()
            ),
            "refreshToken",
        ),
    ] {
        let response = post_json_text(&app, route, body.clone()).await;
        let error = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_eq!(error["field"], field, "{body}");
    }
    assert_eq!(user_count(&app).await, 1);
    // The refresh token in the rejected body was not rotated: it still works.
    assert_eq!(
        app.refresh(victim["refreshToken"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn i3_json_nested_10000_levels_is_400_without_crashing() {
    // A body limit that lets the whole document reach the parser.
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.body_limit_bytes = 256 * 1024)
        .try_spawn()
        .await
        .unwrap();
    let depth = 10_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!(
        r#"{{"x":{}0{}}}"#,
        r#"{"x":"#.repeat(depth),
        "}".repeat(depth)
    );
    let unclosed = format!(r#"{{"email":"a@b.co","x":{}"#, "[".repeat(depth));
    for route in JSON_ROUTES {
        for (body, code) in [
            (&arrays, "INVALID_BODY"),
            (&objects, "VALIDATION_ERROR"),
            (&unclosed, "INVALID_JSON"),
        ] {
            let response = post_json_text(&app, route, body.clone()).await;
            assert_error(response, StatusCode::BAD_REQUEST, code).await;
        }
    }
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn i4_nul_surrogates_bidi_zero_width_and_huge_emails_are_400_and_nothing_is_stored() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let long_email = format!("{}@example.com", "a".repeat(10_000));
        for (email, code) in [
            (r#""nul\u0000@example.com""#.to_owned(), "VALIDATION_ERROR"),
            (r#""lone\ud800@example.com""#.to_owned(), "INVALID_JSON"),
            (
                r#""bidi\u202Emoc.elpmaxe@x.com""#.to_owned(),
                "VALIDATION_ERROR",
            ),
            (
                r#""zero\u200Bwidth@example.com""#.to_owned(),
                "VALIDATION_ERROR",
            ),
            (format!(r#""{long_email}""#), "VALIDATION_ERROR"),
        ] {
            let signup = format!(r#"{{"email":{email},"password":"{PASSWORD}","name":"N"}}"#);
            let login = format!(r#"{{"email":{email},"password":"{PASSWORD}"}}"#);
            for (route, body) in [("/api/auth/signup", signup), ("/api/auth/login", login)] {
                let response = post_json_text(&app, route, body).await;
                let error = assert_error(response, StatusCode::BAD_REQUEST, code).await;
                if code == "VALIDATION_ERROR" {
                    assert_eq!(error["field"], "email", "{backend:?} {route} {email:.40}");
                }
            }
        }
        for name in [
            r#""N\u0000""#,
            r#""\u202Eevil""#,
            r#""a\u200Bb""#,
            r#""x\ud800""#,
        ] {
            let body = format!(
                r#"{{"email":"{}","password":"{PASSWORD}","name":{name}}}"#,
                unique_email()
            );
            let response = post_json_text(&app, "/api/auth/signup", body).await;
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{backend:?} {name}"
            );
        }
        let response =
            post_json_text(&app, "/api/auth/refresh", r#"{"refreshToken":"\u0000"}"#).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_INVALID").await;
        assert_eq!(user_count(&app).await, 0, "{backend:?}");
        assert_still_serving(&app).await;
    }
}

#[tokio::test]
async fn i6_unknown_routes_are_json_404_and_wrong_methods_405_with_allow() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for path in [
        "/nope",
        "/api/auth/nope",
        "/api/auth/login/extra",
        "/api/auth/../../etc/passwd",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    }
    for (method, path, allowed) in [
        (reqwest::Method::PUT, "/api/auth/login", "POST"),
        (reqwest::Method::GET, "/api/auth/signup", "POST"),
        (reqwest::Method::DELETE, "/api/auth/me", "GET"),
        (reqwest::Method::TRACE, "/api/auth/login", "POST"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let allow = response
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: {allow}"
        );
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        )
        .await;
    }
}

async fn get_with_headers(app: &TestApp, headers: HeaderMap) -> Response {
    let request = app.client.get(app.url("/health/live")).headers(headers);
    request.send().await.unwrap()
}

/// `count` headers of `each` bytes.
fn filler_headers(count: usize, each: usize) -> HeaderMap {
    (0..count)
        .map(|i| {
            let name = reqwest::header::HeaderName::try_from(format!("x-h-{i}")).unwrap();
            (name, HeaderValue::from_str(&"h".repeat(each)).unwrap())
        })
        .collect()
}

/// Whether `response` is hyper's own refusal: the status, `connection: close` and an empty body
/// (hyper writes these itself, before any layer of the service runs, so they cannot carry the
/// Error shape).
async fn assert_bare_refusal(response: Response, status: StatusCode, what: &str) {
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(response.headers()["connection"], "close", "{what}");
    assert_eq!(response.text().await.unwrap(), "", "{what}");
}

#[tokio::test]
async fn i5_more_than_100_headers_or_a_head_over_16_kib_is_431() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    // hyper counts headers while reading the head: reqwest adds `host` and `accept`, so 98 + 2
    // headers are fine and 99 + 2 one too many.
    assert_eq!(
        get_with_headers(&app, filler_headers(98, 1)).await.status(),
        StatusCode::OK
    );
    let response = get_with_headers(&app, filler_headers(99, 1)).await;
    assert_bare_refusal(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "101 headers",
    )
    .await;

    // The head limit is 16 KiB, in one header or spread over many, answered in the Error shape.
    assert_eq!(
        get_with_headers(&app, filler_headers(1, 15 * 1024))
            .await
            .status(),
        StatusCode::OK
    );
    for (count, each) in [(1, 17 * 1024), (20, 1024), (1, 31 * 1024)] {
        let response = get_with_headers(&app, filler_headers(count, each)).await;
        assert_error(
            response,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HEADERS_TOO_LARGE",
        )
        .await;
    }
    // Past twice the limit hyper stops reading and refuses the head itself.
    for size in [33 * 1024, 70 * 1024, 1024 * 1024] {
        let response = get_with_headers(&app, filler_headers(1, size)).await;
        assert_bare_refusal(
            response,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("{size} bytes"),
        )
        .await;
    }
    assert_still_serving(&app).await;
}

/// Sends `head` over a fresh connection in pieces of `piece` bytes and returns the whole answer.
async fn raw_exchange(app: &TestApp, head: &[u8], piece: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    socket.set_nodelay(true).unwrap();
    for chunk in head.chunks(piece) {
        if socket.write_all(chunk).await.is_err() {
            break; // refused part-way: the answer is already waiting
        }
        tokio::task::yield_now().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn i5_a_long_header_split_across_many_reads_is_431_in_the_error_shape() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let head = format!(
        "GET /health/live HTTP/1.1\r\nhost: x\r\nx-long: {}\r\nconnection: close\r\n\r\n",
        "h".repeat(20 * 1024)
    );
    let answer = raw_exchange(&app, head.as_bytes(), 512).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    assert!(
        answer.contains(r#""code":"HEADERS_TOO_LARGE""#),
        "{answer:.400}"
    );
}

#[tokio::test]
async fn i1_a_declared_length_over_the_limit_is_413_at_once_without_the_body() {
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.request_timeout_ms = 60_000)
        .spawn()
        .await;
    for route in [
        "/api/auth/login",
        "/api/auth/signup",
        "/api/auth/refresh",
        "/api/auth/me",
    ] {
        let method = if route == "/api/auth/me" {
            "GET"
        } else {
            "POST"
        };
        let head = format!(
            "{method} {route} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 99999999999\r\n\r\n{{}}"
        );
        // The answer comes without the body ever arriving (the test waits at most 10 s; the
        // request timeout is a minute).
        let answer = raw_exchange(&app, head.as_bytes(), head.len()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{route}: {answer:.200}");
        assert!(
            answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#),
            "{route}: {answer:.400}"
        );
    }
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn bad_header_bytes_are_refused_by_hyper_with_a_bare_400() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    // A header value with a NUL byte, and a request line that is not HTTP: hyper's bare 400.
    for head in [
        "GET /health/live HTTP/1.1\r\nhost: x\r\nx-bad: a\0b\r\n\r\n".to_owned(),
        "GET /health/live\0 HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
    ] {
        let answer = raw_exchange(&app, head.as_bytes(), head.len()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.200}");
        assert!(answer.ends_with("\r\n\r\n"), "a body: {answer:.400}");
    }
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn bodiless_logout_post_is_not_415() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let user = app.signed_up(&unique_email()).await;
    let response = app.logout(user["accessToken"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
}

/// J1: the headers every token response and every error carries.
fn assert_hardening_headers(headers: &HeaderMap, what: &str) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
        ("referrer-policy", "no-referrer"),
        ("content-type", "application/json; charset=utf-8"),
    ] {
        assert_eq!(
            headers.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{what}: {name}"
        );
    }
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    // J5: nothing that names the software or its version.
    for name in ["server", "x-powered-by"] {
        assert!(headers.get(name).is_none(), "{what}: {name} header");
    }
}

#[tokio::test]
async fn j1_j5_security_headers_on_token_responses_and_errors() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    let signup = app.signup(&email, PASSWORD, "N").await;
    assert_eq!(signup.status(), StatusCode::CREATED);
    assert_hardening_headers(signup.headers(), "signup");
    let login = app.login(&email, PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert_hardening_headers(login.headers(), "login");
    let body: Value = login.json().await.unwrap();
    let refresh = app.refresh(body["refreshToken"].as_str().unwrap()).await;
    assert_eq!(refresh.status(), StatusCode::OK);
    assert_hardening_headers(refresh.headers(), "refresh");
    let me = app.me(body["accessToken"].as_str().unwrap()).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_hardening_headers(me.headers(), "me");

    let errors = [
        ("bad login", app.login(&email, "wrong password here").await),
        (
            "404",
            app.client.get(app.url("/nope")).send().await.unwrap(),
        ),
        ("415", post_raw(&app, "/api/auth/login", None, "{}").await),
        ("400", post_json_text(&app, "/api/auth/login", "{").await),
    ];
    for (what, response) in errors {
        assert!(response.status().is_client_error(), "{what}");
        assert_hardening_headers(response.headers(), what);
    }
}

#[tokio::test]
async fn a_request_over_the_timeout_is_408_in_the_error_shape_with_the_headers() {
    // A login costs an argon2 hash (milliseconds), so 1 ms cuts it off; the timeout is the
    // innermost layer and the request middleware still envelopes and labels its 408.
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.request_timeout_ms = 1)
        .try_spawn()
        .await
        .unwrap();
    let response = app.login(&unique_email(), PASSWORD).await;
    assert_hardening_headers(response.headers(), "408");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = assert_error(response, StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT").await;
    assert_eq!(body["requestId"], id.as_str(), "{body}");
}

#[tokio::test]
async fn j3_cors_echoes_only_allowlisted_origins_never_star() {
    const ALLOWED: &str = "https://app.fluxstudio.art";
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.cors_origins = vec![ALLOWED.into()])
        .try_spawn()
        .await
        .unwrap();
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let vary = |r: &Response| {
        r.headers()
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",")
    };

    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let evil = app
        .client
        .post(app.url("/api/auth/login"))
        .header("origin", "https://evil.example")
        .json(&json!({ "email": unique_email(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());

    let good = preflight(ALLOWED).await.unwrap();
    assert!(good.status().is_success(), "{}", good.status());
    assert_eq!(good.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(good.headers()["access-control-allow-credentials"], "true");
    assert!(vary(&good).contains("origin"), "{}", vary(&good));
    let methods = good.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");

    let actual = app
        .client
        .post(app.url("/api/auth/login"))
        .header("origin", ALLOWED)
        .json(&json!({ "email": unique_email(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(actual.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(actual.headers()["access-control-allow-credentials"], "true");
    assert!(vary(&actual).contains("origin"), "{}", vary(&actual));
    // Same-looking origins are not the allowlisted one.
    for origin in [
        "https://app.fluxstudio.art.evil.example",
        "http://app.fluxstudio.art",
        "null",
    ] {
        let response = preflight(origin).await.unwrap();
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}"
        );
    }
}

/// The refusals made before a request reaches the routes (a declared body over the limit, a path
/// that is not text, a head over 16 KiB) carry the CORS headers the origin would get on any other
/// answer, so a browser on an allowed origin can read the JSON error.
#[tokio::test]
async fn j3_early_refusals_carry_the_cors_headers_of_an_allowed_origin() {
    const ALLOWED: &str = "https://app.fluxstudio.art";
    let app = TestApp::builder(Backend::File)
        .settings(|s| {
            s.cors_origins = vec![ALLOWED.into()];
            s.request_timeout_ms = 60_000;
        })
        .try_spawn()
        .await
        .unwrap();
    for origin in [ALLOWED, "https://evil.example"] {
        let allowed = origin == ALLOWED;
        let head = format!(
            "POST /api/auth/login HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\n\
             content-type: application/json\r\ncontent-length: 99999999999\r\n\r\n"
        );
        let answer = raw_exchange(&app, head.as_bytes(), head.len()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.200}");
        assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert_eq!(
            lower.contains(&format!("\r\naccess-control-allow-origin: {origin}\r\n")),
            allowed,
            "413 for {origin}: {answer}"
        );
        if allowed {
            assert!(
                lower.contains("\r\naccess-control-allow-credentials: true\r\n"),
                "{answer}"
            );
        }

        let not_text = app
            .client
            .get(app.url("/api/admin/security/users/%00/timeline"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        let long_head = app
            .client
            .get(app.url("/health/live"))
            .header("origin", origin)
            .header("x-long", "h".repeat(20 * 1024))
            .send()
            .await
            .unwrap();
        for (response, status, code) in [
            (not_text, StatusCode::BAD_REQUEST, "INVALID_PARAMETER"),
            (
                long_head,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
            ),
        ] {
            let headers = response.headers().clone();
            assert_eq!(
                headers
                    .get("access-control-allow-origin")
                    .map(|v| v.to_str().unwrap().to_owned()),
                allowed.then(|| origin.to_owned()),
                "{status} for {origin}"
            );
            if allowed {
                assert_eq!(headers["access-control-allow-credentials"], "true");
                let exposed = headers["access-control-expose-headers"]
                    .to_str()
                    .unwrap()
                    .to_ascii_lowercase();
                assert!(exposed.contains("x-request-id"), "{exposed}");
            }
            assert_error(response, status, code).await;
        }
    }
}

#[tokio::test]
async fn c7_malformed_authorization_headers_are_401_with_www_authenticate() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let user = app.signed_up(&unique_email()).await;
    let valid = user["accessToken"].as_str().unwrap();
    let big = format!("Bearer {}", "a".repeat(64 * 1024));
    let segments: Vec<&str> = valid.split('.').collect();
    let two = format!("Bearer {}.{}", segments[0], segments[1]);
    let four = format!("Bearer {valid}.{}", segments[2]);
    let doubled = format!("Bearer Bearer {valid}");
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("empty", HeaderValue::from_static("")),
        ("scheme alone", HeaderValue::from_static("Bearer")),
        ("scheme and space", HeaderValue::from_static("Bearer ")),
        ("basic", HeaderValue::from_static("Basic x")),
        ("doubled bearer", HeaderValue::from_str(&doubled).unwrap()),
        ("two segments", HeaderValue::from_str(&two).unwrap()),
        ("four segments", HeaderValue::from_str(&four).unwrap()),
        ("not base64", HeaderValue::from_static("Bearer !!!.@@@.###")),
        (
            "not UTF-8",
            HeaderValue::from_bytes(b"Bearer \xff\xfe.\xfd").unwrap(),
        ),
    ];
    for (what, value) in cases {
        let response = app
            .client
            .get(app.url("/api/auth/me"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let challenge = response.headers().get("www-authenticate").cloned();
        assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_INVALID").await;
        let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
        assert!(challenge.to_str().unwrap().starts_with("Bearer"), "{what}");
    }
    // A 64 KB token makes the head larger than any this service reads: 431, not 401 (hyper's
    // bare refusal, since it is also over twice the head limit).
    let response = app
        .client
        .get(app.url("/api/auth/me"))
        .header("authorization", HeaderValue::from_str(&big).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // The genuine token still works, so the failures above were about the headers.
    assert_eq!(app.me(valid).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn c7_a_token_in_the_query_string_is_ignored() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let user = app.signed_up(&unique_email()).await;
    let token = user["accessToken"].as_str().unwrap();
    for path in ["/api/auth/me", "/api/auth/token-info"] {
        let response = app
            .client
            .get(app.url(&format!("{path}?access_token={token}&token={token}")))
            .send()
            .await
            .unwrap();
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{path}"
        );
        assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_MISSING").await;
    }
}

/// Query parameters each route reads (others read none: `x` stands in).
fn query_params(path: &str) -> &'static [&'static str] {
    const FILTER: &[&str] = &[
        "type", "severity", "userId", "ip", "from", "to", "cursor", "limit",
    ];
    match path {
        "/api/admin/security/events" | "/api/admin/security/users/{id}/timeline" => FILTER,
        "/api/admin/security/events/export" => &["format", "type", "userId", "ip"],
        "/api/admin/security/events/stats" => &["from", "to"],
        "/api/admin/security/events/stream" => &["minSeverity"],
        "/api/admin/security/users" => &["query"],
        "/api/auth/security-events" => &["cursor", "limit"],
        "/api/auth/google/callback" => &["code", "state", "error"],
        _ => &["x"],
    }
}

#[tokio::test]
async fn i4_nul_or_invalid_text_in_any_path_or_query_parameter_is_400_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let token = app.signed_up(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        make_admin(&app, &email).await;
        let mut tried = 0;
        for route in flux_auth::http::routes() {
            let method = reqwest::Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
            for bad in ["%00", "a%00b", "%FF", "%C3%28"] {
                let mut targets = Vec::new();
                if route.path.contains('{') {
                    let path: String = route
                        .path
                        .split('/')
                        .map(|part| if part.starts_with('{') { bad } else { part })
                        .collect::<Vec<_>>()
                        .join("/");
                    targets.push(path);
                }
                let plain = route
                    .path
                    .replace("{id}", "1")
                    .replace("{sid}", "1")
                    .replace("{key}", "ip:1");
                for param in query_params(route.path) {
                    targets.push(format!("{plain}?{param}={bad}"));
                }
                for target in targets {
                    let response = app
                        .client
                        .request(method.clone(), app.url(&target))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let what = format!("{backend:?} {method} {target}");
                    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
                    assert_error(response, StatusCode::BAD_REQUEST, "INVALID_PARAMETER").await;
                    tried += 1;
                }
            }
        }
        assert!(tried > 100, "{tried} requests");
        assert_still_serving(&app).await;
        // The admin routes still answer ordinary input.
        let found = app
            .get_auth(&format!("/api/admin/security/users?query={email}"), &token)
            .await;
        assert_eq!(found.status(), StatusCode::OK, "{backend:?}");
    }
}

#[tokio::test]
async fn unknown_methods_share_one_metrics_label() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/api/auth/me"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("INVENTED"),
        "a client's method name is a label value"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("flux_auth_http_requests_total{")
                && l.contains(r#"method="other""#)
                && l.contains(r#"status="405""#)),
        "{text}"
    );
}
