//! Error tracking, end to end: the binary with `SENTRY_DSN` pointing at a Sentry-compatible
//! endpoint on loopback ([`receiver`]). A real internal error (the database refusing a write)
//! and a real panic arrive as events tagged with the request id, route and status, and none of
//! the secrets sent with the request (password, tokens, cookie, email) arrive with them; a 4xx is
//! not reported; without a DSN there is no client and nothing is sent; an endpoint that never
//! answers delays the next report by the send timeout, not for good. Each process is stopped
//! before what it sent is checked in full: its exit sends whatever was still queued, so what the
//! endpoint holds then is all it will ever get.

mod receiver;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use receiver::{KEY, SentryReceiver};

/// The secrets a request carries, which must never reach the endpoint.
struct Canaries {
    email: String,
    password: String,
    access: String,
    refresh: String,
    cookie: String,
}

impl Canaries {
    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("email", &self.email),
            ("password", &self.password),
            ("access token", &self.access),
            ("refresh token", &self.refresh),
            ("cookie", &self.cookie),
        ]
    }
}

/// Signs up a user on `server`: its email, password and tokens become the canaries.
async fn signed_up(client: &Client, server: &FluxAuth) -> Canaries {
    let email = unique_email();
    let password = format!("canary {} password", random_secret());
    let response = client
        .post(server.url("/api/auth/signup"))
        .header("user-agent", UA)
        .json(&json!({ "email": email, "password": password, "name": "Canary" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{}", server.logs());
    let auth: Value = response.json().await.unwrap();
    Canaries {
        email,
        password,
        access: auth["accessToken"].as_str().unwrap().to_owned(),
        refresh: auth["refreshToken"].as_str().unwrap().to_owned(),
        cookie: format!("cookie-{}", random_secret()),
    }
}

/// A request carrying every canary: the access token as a bearer, the refresh token and the
/// cookie canary as cookies, the refresh token and email in the query too.
fn with_canaries(
    client: &Client,
    method: reqwest::Method,
    url: &str,
    request_id: &str,
    c: &Canaries,
) -> reqwest::RequestBuilder {
    client
        .request(method, url)
        .query(&[("token", c.refresh.as_str()), ("email", c.email.as_str())])
        .header("user-agent", UA)
        .header("x-request-id", request_id)
        .bearer_auth(&c.access)
        .header(
            "cookie",
            format!("refreshToken={}; session={}", c.refresh, c.cookie),
        )
}

/// Stops `server` (SIGTERM) and checks that nothing the endpoint ever received holds a canary.
async fn stop_and_check_no_secret_left(
    server: &mut FluxAuth,
    endpoint: &SentryReceiver,
    c: &Canaries,
) {
    let (status, _) = server.stop("TERM").await;
    assert!(status.success(), "{}", server.logs());
    for received in endpoint.received() {
        for (what, canary) in c.all() {
            assert!(
                !received.body.contains(canary),
                "the {what} reached the endpoint in {}: {}",
                received.path,
                received.body
            );
        }
        // The local part of the address alone is enough to identify someone.
        let local = c.email.split('@').next().unwrap();
        assert!(!received.body.contains(local), "{}", received.body);
    }
}

/// Whether `pid` runs Sentry's sending thread (`sentry-transport`, cut to 15 bytes by the
/// kernel): there only when a client was started.
fn has_sentry_thread(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .any(|name| name.trim() == "sentry-transpor")
}

/// Makes every new session of the database's users fail with an error whose message quotes the
/// user's email address, as a constraint violation's detail does: a real internal error, with
/// personal data in its cause.
async fn refuse_sessions_quoting_the_email(db: &TestDb) {
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION refuse_sessions() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'session refused for %', \
            (SELECT email FROM flux_auth.users WHERE id = NEW.user_id); END $$; \
         CREATE TRIGGER refuse_sessions BEFORE INSERT ON flux_auth.auth_sessions \
         FOR EACH ROW EXECUTE FUNCTION refuse_sessions();",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// On Postgres: a sign-in whose session the database refuses is a 500, reported once as an
/// event tagged with its request id, route and status, its cause scrubbed of the user's address;
/// the 401 and 400 before it are not reported; the DSN's key never appears in the logs.
#[tokio::test]
async fn an_internal_error_is_reported_with_its_request_and_without_secrets() {
    if !postgres_available().await {
        return;
    }
    let endpoint = SentryReceiver::start().await;
    let db = TestDb::create().await;
    let mut server = Launch::in_temp_dir()
        .env("DATABASE_URL", &db.url)
        .env("SENTRY_DSN", endpoint.dsn())
        .env("SENTRY_ENVIRONMENT", "staging")
        .start()
        .await;
    assert!(has_sentry_thread(server.pid));
    let client = Client::new();
    eventually("the database ready", PROCESS_PATIENCE, || async {
        let ready = client.get(server.url("/health/ready")).send().await.ok()?;
        (ready.status() == StatusCode::OK).then_some(())
    })
    .await;
    let c = signed_up(&client, &server).await;
    let login = |request_id: &str, password: &str| {
        with_canaries(
            &client,
            reqwest::Method::POST,
            &server.url("/api/auth/login"),
            request_id,
            &c,
        )
        .json(&json!({ "email": c.email, "password": password }))
    };

    let wrong = login("sentry-401", "not the password")
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::UNAUTHORIZED, "AUTH_INVALID_CREDENTIALS").await;
    let invalid = login("sentry-400", "").send().await.unwrap();
    assert!(invalid.status().is_client_error(), "{}", invalid.status());

    refuse_sessions_quoting_the_email(&db).await;
    let failed = login("sentry-500", &c.password).send().await.unwrap();
    let body = assert_error(failed, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR").await;
    assert_eq!(body["requestId"], "sentry-500");

    let event = endpoint.event_of("sentry-500").await;
    // Sentry leaves the level out when it is the default, error.
    assert!(
        matches!(event["level"].as_str(), None | Some("error")),
        "{event}"
    );
    assert_eq!(event["tags"]["route"], "/api/auth/login", "{event}");
    assert_eq!(event["tags"]["status"], "500", "{event}");
    assert_eq!(event["tags"]["method"], "POST", "{event}");
    assert_eq!(event["environment"], "staging", "{event}");
    assert_eq!(event["release"], "flux-auth@0.1.0", "{event}");
    let cause = event["contexts"]["Rust Tracing Fields"]["cause"]
        .as_str()
        .unwrap_or_else(|| panic!("the cause is in the event: {event}"));
    assert!(
        cause.contains("session refused for [email]"),
        "the cause, scrubbed: {cause}"
    );
    let received = endpoint.received();
    assert!(received[0].path.ends_with("/envelope/"));
    assert!(received[0].auth.contains(&format!("sentry_key={KEY}")));

    stop_and_check_no_secret_left(&mut server, &endpoint, &c).await;
    let events = endpoint.items("event");
    for quiet in ["sentry-401", "sentry-400"] {
        assert!(
            events.iter().all(|e| e["tags"]["request_id"] != quiet),
            "{quiet} was reported: {events:?}"
        );
    }
    assert!(
        !server.logs().contains(KEY),
        "the DSN's key was logged:\n{}",
        server.logs()
    );
}

/// A handler that panics (the debug route) is answered 500 in the Error shape, and the panic is
/// reported tagged with its request id, route and status. With every request traced, the
/// transactions (which carry the URL, query and all) arrive scrubbed too.
#[tokio::test]
async fn a_panic_is_reported_with_its_request_and_without_secrets() {
    let endpoint = SentryReceiver::start().await;
    let mut server = Launch::in_temp_dir()
        .env("SENTRY_DSN", endpoint.dsn())
        .env("SENTRY_TRACES_SAMPLE_RATE", "1")
        .env("DEBUG_PANIC_ROUTE", "true")
        .start()
        .await;
    assert!(has_sentry_thread(server.pid));
    let client = Client::new();
    let c = signed_up(&client, &server).await;

    let response = with_canaries(
        &client,
        reqwest::Method::GET,
        &server.url("/api/debug/panic"),
        "sentry-panic",
        &c,
    )
    .send()
    .await
    .unwrap();
    let body = assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
    )
    .await;
    assert_eq!(body["requestId"], "sentry-panic");

    let event = endpoint.event_of("sentry-panic").await;
    let exception = &event["exception"]["values"][0];
    assert_eq!(exception["mechanism"]["type"], "panic", "{event}");
    assert!(
        exception["value"]
            .as_str()
            .is_some_and(|v| v.contains("a panic requested from /api/debug/panic")),
        "{event}"
    );
    assert_eq!(event["tags"]["route"], "/api/debug/panic", "{event}");
    assert_eq!(event["tags"]["status"], "500", "{event}");
    assert_eq!(event["environment"], "development", "{event}");

    // The server goes on serving after the panic.
    let live = client.get(server.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    stop_and_check_no_secret_left(&mut server, &endpoint, &c).await;
    let transactions = endpoint.items("transaction");
    assert!(
        transactions.iter().any(|t| t["request"]["url"]
            .as_str()
            .is_some_and(|u| u.contains("/api/debug/panic"))),
        "the panicking request's transaction arrived: {transactions:?}"
    );
}

/// An endpoint that takes a report and never answers holds the sending thread for
/// `SEND_TIMEOUT` only: the report after it arrives.
#[tokio::test]
async fn an_endpoint_that_never_answers_holds_up_the_next_report_only_for_the_send_timeout() {
    let endpoint = SentryReceiver::start_hanging(1).await;
    let mut server = Launch::in_temp_dir()
        .env("SENTRY_DSN", endpoint.dsn())
        .env("DEBUG_PANIC_ROUTE", "true")
        .start()
        .await;
    let client = Client::new();
    for id in ["sentry-unanswered", "sentry-after-it"] {
        let response = client
            .get(server.url("/api/debug/panic"))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(flux_auth::telemetry::error_tracking::SEND_TIMEOUT < MIRROR_PATIENCE);
    // Each panic is reported twice: the panic itself (first, from the panic hook) and the error
    // line the service logs for it.
    let panic_of = |id: &'static str| {
        let endpoint = &endpoint;
        move || async move {
            endpoint.items("event").into_iter().find(|e| {
                e["tags"]["request_id"] == id
                    && e["exception"]["values"][0]["mechanism"]["type"] == "panic"
            })
        }
    };
    let event = eventually(
        "the later panic's report",
        MIRROR_PATIENCE,
        panic_of("sentry-after-it"),
    )
    .await;
    assert_eq!(event["tags"]["route"], "/api/debug/panic", "{event}");
    // The report left unanswered was the first panic's, and it is not sent again.
    assert!(panic_of("sentry-unanswered")().await.is_none());
    let (status, _) = server.stop("TERM").await;
    assert!(status.success(), "{}", server.logs());
}

/// Without `SENTRY_DSN` no client is started (no sending thread) and a 5xx sends nothing, though
/// the other Sentry settings are set.
#[tokio::test]
async fn without_a_dsn_nothing_is_sent() {
    let endpoint = SentryReceiver::start().await;
    let mut server = Launch::in_temp_dir()
        .env("SENTRY_ENVIRONMENT", "staging")
        .env("SENTRY_TRACES_SAMPLE_RATE", "1")
        .env("DEBUG_PANIC_ROUTE", "true")
        .start()
        .await;
    let client = Client::new();
    let response = client
        .get(server.url("/api/debug/panic"))
        .header("x-request-id", "no-dsn")
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
    )
    .await;
    assert!(!has_sentry_thread(server.pid));
    let (status, _) = server.stop("TERM").await;
    assert!(status.success(), "{}", server.logs());
    assert!(endpoint.received().is_empty());
}

/// `check-config` names where errors go without the DSN's key, and refuses a malformed DSN, a
/// sample rate outside 0..=1 and the panic route in production, without echoing the DSN.
#[tokio::test]
async fn check_config_reports_the_error_tracking_settings() {
    let dir = tempfile::tempdir().unwrap();
    let secret = random_secret();
    let base = [("JWT_SECRET", secret.as_str())];
    let dsn = format!("https://{KEY}@errors.example.com/7");
    let ok = run_cli(
        dir.path(),
        &[base[0], ("SENTRY_DSN", dsn.as_str())],
        &["check-config"],
    )
    .await;
    let out = text(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", text(&ok.stderr));
    assert!(
        out.contains(
            "errors:       reported to Sentry at https://errors.example.com:443 (project 7"
        ),
        "{out}"
    );
    assert!(!out.contains(KEY), "{out}");

    let unset = run_cli(dir.path(), &base, &["check-config"]).await;
    assert!(text(&unset.stdout).contains("errors:       not reported (SENTRY_DSN unset)"));

    let malformed = format!("{KEY}-not-a-dsn");
    let bad = run_cli(
        dir.path(),
        &[
            base[0],
            ("SENTRY_DSN", malformed.as_str()),
            ("SENTRY_TRACES_SAMPLE_RATE", "1.5"),
            ("NODE_ENV", "production"),
            ("DEBUG_PANIC_ROUTE", "true"),
        ],
        &["check-config"],
    )
    .await;
    let err = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(78), "{err}");
    assert!(err.contains("SENTRY_DSN is not a valid DSN"), "{err}");
    assert!(
        err.contains("SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1"),
        "{err}"
    );
    assert!(err.contains("DEBUG_PANIC_ROUTE"), "{err}");
    assert!(
        !err.contains(KEY) && !text(&bad.stdout).contains(KEY),
        "{err}"
    );
}
