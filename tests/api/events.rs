//! Reading the security log back: the admin query with filters and cursor paging,
//! stats, NDJSON/CSV export, the live SSE stream, timelines, a user's own history, on both
//! sinks (JSON-lines files, Postgres); canaries never reach a sink; cleanup and retention.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// The two sinks: files as the log (no database), and Postgres (users in files, as the old
/// production setup).
async fn apps() -> Vec<TestApp> {
    let mut apps = vec![TestApp::try_spawn(Backend::File).await.unwrap()];
    if let Some(app) = TestApp::builder(Backend::File)
        .events_in_postgres()
        .try_spawn()
        .await
    {
        apps.push(app);
    }
    apps
}

async fn admin_token(app: &TestApp) -> String {
    let email = unique_email();
    let auth = app.signed_up(&email).await;
    make_admin(app, &email).await;
    auth["accessToken"].as_str().unwrap().to_owned()
}

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let response = app.get_auth(path, token).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn admin_query_filters_and_pages_newest_first_without_gaps_or_duplicates() {
    for app in apps().await {
        let token = admin_token(&app).await;
        let victim = unique_email();
        let victim_auth = app.signed_up(&victim).await;
        let victim_id = victim_auth["user"]["id"].as_str().unwrap().to_owned();
        for _ in 0..5 {
            app.login(&victim, "not the right password").await;
        }
        app.events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "failed_login_attempt")
                .count()
                == 5
        })
        .await;

        let mut seen = Vec::new();
        let mut path = format!(
            "/api/admin/security/events?type=failed_login_attempt&userId={victim_id}&limit=2"
        );
        loop {
            let page = get_json(&app, &path, &token).await;
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= 2);
            seen.extend(events.iter().cloned());
            match page["nextCursor"].as_str() {
                Some(cursor) => {
                    path = format!(
                        "/api/admin/security/events?type=failed_login_attempt&userId={victim_id}&limit=2&cursor={cursor}"
                    )
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        let ids: std::collections::HashSet<&str> =
            seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 5, "no duplicates across pages");
        let times: Vec<&str> = seen
            .iter()
            .map(|e| e["createdAt"].as_str().unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {times:?}"
        );
        assert!(
            seen.iter()
                .all(|e| e["eventType"] == "failed_login_attempt"
                    && e["userId"] == victim_id.as_str())
        );
        assert_eq!(seen[0]["severity"], "warning");

        let bad = app
            .get_auth("/api/admin/security/events?severity=extreme", &token)
            .await;
        assert_error(bad, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        let bad = app
            .get_auth("/api/admin/security/events?cursor=%%%", &token)
            .await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let bad = app
            .get_auth("/api/admin/security/events?from=yesterday", &token)
            .await;
        assert_error(bad, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;

        let timeline = get_json(
            &app,
            &format!("/api/admin/security/users/{victim_id}/timeline"),
            &token,
        )
        .await;
        let types: Vec<&str> = timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"signup_success") && types.contains(&"failed_login_attempt"),
            "{types:?}"
        );
    }
}

#[tokio::test]
async fn non_admins_get_403_and_anonymous_401_on_every_admin_route() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let user = app.signed_up(&unique_email()).await;
    let token = user["accessToken"].as_str().unwrap();
    for path in [
        "/api/admin/security/events",
        "/api/admin/security/events/stats",
        "/api/admin/security/events/export",
        "/api/admin/security/events/stream",
        "/api/admin/security/users/x/timeline",
        "/api/admin/security/blocked",
    ] {
        assert_error(
            app.get_auth(path, token).await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(anonymous, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_MISSING").await;
    }
}

#[tokio::test]
async fn users_see_only_their_own_history() {
    for app in apps().await {
        let a = app.signed_up(&unique_email()).await;
        let b = app.signed_up(&unique_email()).await;
        let a_id = a["user"]["id"].as_str().unwrap();
        app.events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "token_generated")
                .count()
                == 2
        })
        .await;
        let mine = get_json(
            &app,
            "/api/auth/security-events",
            a["accessToken"].as_str().unwrap(),
        )
        .await;
        let events = mine["events"].as_array().unwrap();
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| e["userId"] == a_id), "{events:?}");
        let theirs = get_json(
            &app,
            "/api/auth/security-events",
            b["accessToken"].as_str().unwrap(),
        )
        .await;
        assert!(
            theirs["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["userId"] != a_id)
        );
    }
}

#[tokio::test]
async fn stats_count_by_type_and_severity() {
    for app in apps().await {
        let token = admin_token(&app).await;
        for _ in 0..3 {
            app.login(&unique_email(), "no such user here").await;
        }
        app.events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "login_failed")
                .count()
                == 3
        })
        .await;
        let stats = get_json(&app, "/api/admin/security/events/stats", &token).await;
        assert_eq!(stats["stats"]["byType"]["login_failed"], 3, "{stats}");
        assert_eq!(stats["stats"]["byType"]["signup_success"], 1);
        let by_severity = stats["stats"]["bySeverity"].as_object().unwrap();
        let total: i64 = by_severity.values().map(|v| v.as_i64().unwrap()).sum();
        assert_eq!(stats["stats"]["total"], total);
        let empty = get_json(
            &app,
            "/api/admin/security/events/stats?from=2001-01-01T00:00:00Z&to=2001-01-02T00:00:00Z",
            &token,
        )
        .await;
        assert_eq!(empty["stats"]["total"], 0);
    }
}

#[tokio::test]
async fn export_streams_ndjson_and_csv_with_formula_cells_defused() {
    for app in apps().await {
        let token = admin_token(&app).await;
        let response = app
            .client
            .post(app.url("/api/auth/login"))
            .header("user-agent", "=HYPERLINK(\"http://evil.example\")")
            .json(&json!({ "email": unique_email(), "password": "whatever pw" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        app.events_of("login_failed").await;

        let ndjson = app
            .get_auth(
                "/api/admin/security/events/export?type=login_failed",
                &token,
            )
            .await;
        assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
        let text = ndjson.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["eventType"], "login_failed");

        let csv = app
            .get_auth(
                "/api/admin/security/events/export?format=csv&type=login_failed",
                &token,
            )
            .await;
        assert!(
            csv.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = csv.text().await.unwrap();
        let mut rows = text.lines();
        assert!(rows.next().unwrap().starts_with("id,created_at,event_type"));
        let row = rows.next().unwrap();
        assert!(
            row.contains("\"'=HYPERLINK(\"\"http://evil.example\"\")\""),
            "{row}"
        );
        assert!(rows.next().is_none());
        let bad = app
            .get_auth("/api/admin/security/events/export?format=xml", &token)
            .await;
        assert_error(bad, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    }
}

/// Reads server-sent events until `want` matches one, bounded in time.
async fn next_event<B: AsRef<[u8]>>(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buf: &mut String,
    want: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if let Some(data) = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                {
                    let value: Value = serde_json::from_str(data).unwrap();
                    if want(&value) {
                        return value;
                    }
                }
            }
            let chunk = stream.next().await.expect("stream ended").unwrap();
            buf.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    })
    .await
    .expect("event did not arrive")
}

#[tokio::test]
async fn live_stream_delivers_events_filtered_by_minimum_severity_and_replays_after_reconnect() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let token = admin_token(&app).await;
    let response = app
        .get_auth(
            "/api/admin/security/events/stream?minSeverity=warning",
            &token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    let mut buf = String::new();
    let email = unique_email();
    app.signed_up(&email).await; // info events: filtered out
    app.login(&email, "wrong password here").await;
    let event = next_event(&mut stream, &mut buf, |_| true).await;
    assert_eq!(
        event["eventType"], "failed_login_attempt",
        "the first event at warning or above"
    );
    let last_id = event["id"].as_str().unwrap().to_owned();
    drop(stream);

    // While disconnected, two more failures; reconnecting with Last-Event-ID replays them.
    app.login(&email, "wrong password again").await;
    app.login(&email, "and once more wrong").await;
    app.events_where(|e| {
        e.iter()
            .filter(|e| e.event_type.as_str() == "failed_login_attempt")
            .count()
            == 3
    })
    .await;
    let response = app
        .client
        .get(app.url("/api/admin/security/events/stream?minSeverity=warning"))
        .bearer_auth(&token)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut buf = String::new();
    let first = next_event(&mut stream, &mut buf, |_| true).await;
    let second = next_event(&mut stream, &mut buf, |_| true).await;
    assert_eq!(first["eventType"], "failed_login_attempt");
    assert_eq!(second["eventType"], "failed_login_attempt");
    assert!(
        first["id"].as_str().unwrap() > last_id.as_str()
            && second["id"].as_str() > first["id"].as_str()
    );
}

#[tokio::test]
async fn g3_canaries_never_reach_a_sink() {
    for mut app in apps().await {
        let password = format!("canary-password-{}", uuid::Uuid::new_v4().simple());
        let email = unique_email();
        let signup = app.signup(&email, &password, "Canary").await;
        assert_eq!(signup.status(), StatusCode::CREATED);
        let body: Value = signup.json().await.unwrap();
        let access = body["accessToken"].as_str().unwrap().to_owned();
        let refresh = body["refreshToken"].as_str().unwrap().to_owned();
        let refreshed: Value = app.refresh(&refresh).await.json().await.unwrap();
        app.login(&email, &format!("{password}-wrong")).await;
        let bad_cookie = app
            .client
            .get(app.url("/api/auth/me"))
            .header("authorization", "Bearer canary-bearer-value.x.y")
            .header("cookie", "session=canary-cookie-value")
            .send()
            .await
            .unwrap();
        assert_eq!(bad_cookie.status(), StatusCode::UNAUTHORIZED);
        app.stop().await;
        let mut everything = String::new();
        for event in app.events().await {
            everything.push_str(&serde_json::to_string(&event).unwrap());
        }
        for entry in std::fs::read_dir(app.settings.security_log_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            everything.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        assert!(
            everything.contains("failed_login_attempt"),
            "the sink was read"
        );
        for canary in [
            password.as_str(),
            access.as_str(),
            refresh.as_str(),
            refreshed["refreshToken"].as_str().unwrap(),
            "canary-bearer-value",
            "canary-cookie-value",
        ] {
            assert!(
                !everything.contains(canary),
                "a secret reached the security log"
            );
        }
    }
}

#[tokio::test]
async fn cleanup_deletes_long_ended_sessions_and_expired_events_in_postgres() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let a = app.signed_up(&unique_email()).await;
    let b = app.signed_up(&unique_email()).await;
    let pool = app.db.as_ref().unwrap().pool().await;
    // One session revoked 8 days ago, one live; one event older than its retention, one not.
    let user_a = a["user"]["id"].as_str().unwrap();
    sqlx::query(
        "UPDATE auth_sessions SET revoked_at = now() - interval '8 days' WHERE user_id = $1",
    )
    .bind(user_a)
    .execute(&pool)
    .await
    .unwrap();
    app.events_of("token_generated").await;
    sqlx::query(
        "INSERT INTO security_events (id, event_type, severity, created_at) VALUES \
         (gen_random_uuid(), 'login_success', 'info', now() - interval '91 days'), \
         (gen_random_uuid(), 'token_reuse_detected', 'critical', now() - interval '91 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = flux_auth::cleanup::run_once(&app.state).await;
    assert_eq!(report.sessions_deleted, 1);
    assert_eq!(
        report.events_deleted, 1,
        "info expires after 90 days, critical is kept a year"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tokens, 1, "the deleted session's tokens went with it");
    assert_eq!(
        app.refresh(b["refreshToken"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let cleanup = app.events_of("token_cleanup").await;
    assert_eq!(cleanup[0].metadata["sessionsDeleted"], 1);
}

#[tokio::test]
async fn cleanup_on_the_file_store_prunes_sessions_and_rewrites_old_event_files() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    app.signed_up(&unique_email()).await;
    // An old events file: one info event past retention and one critical event within it.
    let mut old_info = flux_auth::security_log::SecurityEvent::new(
        flux_auth::security_log::EventType::LoginSuccess,
    );
    old_info.created_at = chrono::Utc::now() - chrono::Duration::days(100);
    let mut old_critical = flux_auth::security_log::SecurityEvent::new(
        flux_auth::security_log::EventType::TokenReuseDetected,
    );
    old_critical.created_at = chrono::Utc::now() - chrono::Duration::days(100);
    let dir = app.settings.security_log_dir();
    let path = dir.join("events-20000101T000000.000000Z-old.jsonl");
    let lines = format!(
        "{}\n{}\n",
        serde_json::to_string(&old_info).unwrap(),
        serde_json::to_string(&old_critical).unwrap()
    );
    std::fs::write(&path, lines).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(100 * 86_400))
        .unwrap();
    drop(file);
    let report = flux_auth::cleanup::run_once(&app.state).await;
    assert_eq!(report.events_deleted, 1);
    let kept = flux_auth::security_log::spool::read_file(&path).unwrap();
    assert_eq!(kept.events, vec![old_critical]);
}

#[tokio::test]
async fn events_cli_exports_counts_and_replays_a_spool_into_postgres() {
    let mut app = TestApp::try_spawn(Backend::File).await.unwrap();
    for _ in 0..3 {
        app.login(&unique_email(), "nobody has this one").await;
    }
    app.stop().await;
    let dir = app.settings.security_log_dir().display().to_string();
    let envs = [("SECURITY_LOG_DIR", dir.clone())];
    let export = tokio::task::spawn_blocking({
        let envs = envs.clone();
        move || run_cli_blocking(&envs, &["events", "export", "--type", "login_failed"])
    })
    .await
    .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|e| e["eventType"] == "login_failed"));
    let stats = tokio::task::spawn_blocking({
        let envs = envs.clone();
        move || run_cli_blocking(&envs, &["events", "stats"])
    })
    .await
    .unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["byType"]["login_failed"], 3, "{stats}");
    let bad = tokio::task::spawn_blocking(move || {
        run_cli_blocking(&envs, &["events", "export", "--from", "yesterday"])
    })
    .await
    .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));

    // Replay that folder into a database: every event once, files gone, a second run is a no-op.
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let url = db.url.clone();
    let replay = tokio::task::spawn_blocking({
        let (dir, url) = (dir.clone(), url.clone());
        move || {
            run_cli_blocking(
                &[("SECURITY_LOG_DATABASE_URL", url)],
                &["events", "replay", &dir],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let pool = db.pool().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM security_events WHERE event_type = 'login_failed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 3);
    assert!(
        events_from_files(std::path::Path::new(&dir)).is_empty(),
        "replayed files are deleted"
    );
    let again = tokio::task::spawn_blocking(move || {
        run_cli_blocking(
            &[("SECURITY_LOG_DATABASE_URL", url)],
            &["events", "replay", &dir],
        )
    })
    .await
    .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("no spool files"));
}

/// An admin on `backend` whose event streams re-check their access every 200 ms: the app, the
/// admin's email and their AuthResponse.
async fn stream_app(backend: Backend) -> Option<(TestApp, String, Value)> {
    let app = TestApp::builder(backend)
        .settings(|s| s.event_stream_recheck_ms = 200)
        .try_spawn()
        .await?;
    let email = unique_email();
    let auth = app.signed_up(&email).await;
    make_admin(&app, &email).await;
    Some((app, email, auth))
}

/// Opens the live stream with `token` and shows that it delivers: an event recorded after a few
/// re-checks arrives.
async fn open_stream(
    app: &TestApp,
    token: &str,
) -> (
    impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<>,
    String,
) {
    let response = app
        .get_auth("/api/admin/security/events/stream", token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut buf = String::new();
    // Let several re-checks pass (200 ms apart) before the event, so it arrives after them.
    eventually(
        "three re-checks of the stream's access",
        Duration::from_secs(10),
        || async {
            metric(app, "flux_auth_admin_event_stream_rechecks_total")
                .await
                .filter(|checks| *checks >= 3.0)
        },
    )
    .await;
    let email = unique_email();
    app.signed_up(&email).await;
    next_event(&mut stream, &mut buf, |e| {
        e["eventType"] == "signup_success"
    })
    .await;
    (stream, buf)
}

/// Waits (at most 10 s) for the stream to end, reading what is left of it.
async fn stream_ends(
    mut stream: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    what: &str,
) {
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "{what}: the event stream is still open");
}

#[tokio::test]
async fn the_event_stream_ends_soon_after_its_admin_logs_out_on_both_stores() {
    for backend in BACKENDS {
        let Some((app, _, auth)) = stream_app(backend).await else {
            continue;
        };
        let token = auth["accessToken"].as_str().unwrap();
        let (stream, _) = open_stream(&app, token).await;
        assert_eq!(app.logout(token).await.status(), StatusCode::OK);
        stream_ends(stream, &format!("{backend:?}, after logout")).await;
        // A new stream with that token is refused; a fresh login streams again.
        let response = app
            .get_auth("/api/admin/security/events/stream", token)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{backend:?}");
    }
}

#[tokio::test]
async fn the_event_stream_ends_soon_after_its_admin_is_demoted_on_both_stores() {
    for backend in BACKENDS {
        let Some((app, email, _)) = stream_app(backend).await else {
            continue;
        };
        // A token issued while the user is an admin.
        let token = app.logged_in(&email).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let (stream, _) = open_stream(&app, &token).await;
        set_user_type(&app, &email, "client").await;
        stream_ends(stream, &format!("{backend:?}, after demotion")).await;
        let response = app
            .get_auth("/api/admin/security/events/stream", &token)
            .await;
        assert_error(response, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
}

#[tokio::test]
async fn the_event_stream_ends_when_its_token_expires_on_both_stores() {
    for backend in BACKENDS {
        let Some((app, email, auth)) = stream_app(backend).await else {
            continue;
        };
        // A token that expires 3 s from now, signed as the service signs its own.
        let settings = &app.settings;
        let tokens = flux_auth::auth::tokens::AccessTokens::new(
            &secrecy::SecretString::from(JWT_SECRET),
            None,
            &settings.jwt_issuer,
            &settings.jwt_audience,
            60,
            app.clock(),
        );
        let user = app
            .state
            .auth
            .store
            .user_by_email(&flux_auth::domain::Email::parse(&email).unwrap())
            .await
            .unwrap()
            .unwrap();
        let sid = session_of(auth["accessToken"].as_str().unwrap());
        let issued_at = app.clock().now() - chrono::Duration::seconds(57);
        let short = tokens.issue(&user, sid, issued_at).unwrap().token;
        let (stream, _) = open_stream(&app, &short).await;
        stream_ends(stream, &format!("{backend:?}, after expiry")).await;
    }
}
