//! Abuse protection (docs/SECURITY.md F1–F7): rate limits, lockouts and revocations in real Redis,
//! each test under its own key prefix; the in-process fallback when Redis is unreachable.

use std::time::Duration;

use flux_auth::config::Switch;
use redis::AsyncCommands;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::forwarder::Forwarder;
use crate::helpers::*;

/// An app with limits on and Redis at `redis` (the real one unless a test points it elsewhere).
async fn limited_app(
    backend: Backend,
    tweak: impl FnOnce(&mut flux_auth::config::Settings) + 'static,
) -> Option<TestApp> {
    if !redis_available().await {
        return None;
    }
    TestApp::builder(backend)
        .settings(move |s| {
            s.rate_limits = Switch::On;
            s.redis_url = Some(SecretString::from(redis_url()));
            tweak(s);
        })
        .try_spawn()
        .await
}

/// A forwarder to the test Redis, so a test can cut it or count what an app sends it.
async fn redis_forwarder() -> Forwarder {
    Forwarder::start("127.0.0.1:6379".parse().unwrap()).await
}

/// A Redis URL that reaches Redis through `forwarder`.
fn redis_via(forwarder: &Forwarder) -> SecretString {
    SecretString::from(format!("redis://{}", forwarder.addr()))
}

/// A file-store instance reaching Redis through `forwarder`.
async fn file_app_via(forwarder: &Forwarder) -> TestApp {
    let redis = redis_via(forwarder);
    TestApp::builder(Backend::File)
        .settings(move |s| s.redis_url = Some(redis))
        .spawn()
        .await
}

/// Another instance beside `first`: the same settings, database and key prefix, on a port and
/// folder of its own, reaching Redis through `forwarder` when given.
async fn second_instance(first: &TestApp, forwarder: Option<&Forwarder>) -> TestApp {
    let mut settings = first.settings.clone();
    settings.port = 0;
    if let Some(forwarder) = forwarder {
        settings.redis_url = Some(redis_via(forwarder));
    }
    TestApp::start(
        settings,
        tempfile::tempdir().unwrap(),
        None,
        Backend::Postgres,
    )
    .await
}

async fn prefixed_keys(app: &TestApp) -> Vec<String> {
    let mut conn = redis_conn().await;
    conn.keys(format!("{}*", app.settings.redis_key_prefix))
        .await
        .unwrap()
}

#[tokio::test]
async fn f5_fifty_parallel_wrong_passwords_count_exactly_fifty_and_every_key_has_a_ttl() {
    let Some(app) = limited_app(Backend::File, |s| {
        s.lockout_threshold = 100;
        s.login_limit_per_ip = 1000;
        s.login_limit_per_account = 1000;
        s.ip_failure_threshold = 1000;
    })
    .await
    else {
        return;
    };
    let email = unique_email();
    app.signed_up(&email).await;
    let attempts = (0..50).map(|_| app.login(&email, "not the password at all"));
    let statuses = futures::future::join_all(attempts).await;
    assert!(
        statuses
            .iter()
            .all(|r| r.status() == StatusCode::UNAUTHORIZED)
    );
    let mut conn = redis_conn().await;
    let count: i64 = conn
        .get(format!(
            "{}fail:account:{email}",
            app.settings.redis_key_prefix
        ))
        .await
        .unwrap();
    assert_eq!(count, 50);
    let keys = prefixed_keys(&app).await;
    assert!(!keys.is_empty());
    for key in keys {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn f1_f2_f3_lockout_after_five_failures_grows_and_opens_again() {
    let Some(app) = limited_app(Backend::File, |_| {}).await else {
        return;
    };
    let email = unique_email();
    app.signed_up(&email).await;
    for _ in 0..5 {
        assert_eq!(
            app.login(&email, "wrong password one").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Locked: even the right password gets the same generic answer, from any case of the email.
    let locked = app.login(&email.to_uppercase(), PASSWORD).await;
    let locked_body =
        assert_error(locked, StatusCode::UNAUTHORIZED, "AUTH_INVALID_CREDENTIALS").await;
    let wrong = assert_error(
        app.login(&unique_email(), PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
    assert_eq!(locked_body["message"], wrong["message"]);
    let events = app.events_of("account_locked").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].severity.as_str(), "high");
    assert_eq!(events[0].metadata["lockedForSecs"], 30);
    assert_eq!(app.events_of("brute_force_detected").await.len(), 1);

    // Attempts during the lock are not counted; once it has passed, the password works again.
    let state_clock = app.clock();
    state_clock.advance(Duration::from_secs(31));
    assert_eq!(
        app.login(&email, "wrong password two").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The sixth counted failure locks for twice as long.
    let events = app
        .events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "account_locked")
                .count()
                == 2
        })
        .await;
    let second = events
        .iter()
        .filter(|e| e.event_type.as_str() == "account_locked")
        .nth(1)
        .unwrap();
    assert_eq!(second.metadata["lockedForSecs"], 60);
    state_clock.advance(Duration::from_secs(61));
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    // Success reset the count: four more failures do not lock.
    for _ in 0..4 {
        app.login(&email, "wrong again").await;
    }
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn f4_login_limit_answers_429_with_retry_after_and_ignores_spoofed_forwarded_for() {
    let Some(app) = limited_app(Backend::File, |s| {
        s.login_limit_per_ip = 3;
        s.lockout_threshold = 100;
    })
    .await
    else {
        return;
    };
    for i in 0..3 {
        let response = app
            .client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({ "email": unique_email(), "password": "whatever it is" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({ "email": unique_email(), "password": "whatever it is" }))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(response.headers()["ratelimit-limit"], "3");
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    assert_eq!(body["retryAfter"], retry_after);
    let events = app.events_of("rate_limit_exceeded").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata["reason"], "login_ip");
    assert_eq!(
        events[0].ip_address.as_deref(),
        Some("127.0.0.1"),
        "the spoofed header was not believed"
    );
}

#[tokio::test]
async fn f4_forwarded_for_from_a_trusted_proxy_is_honoured() {
    let Some(app) = limited_app(Backend::File, |s| {
        s.login_limit_per_ip = 2;
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
    else {
        return;
    };
    let from = |ip: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", format!("6.6.6.6, {ip}"))
            .json(&json!({ "email": unique_email(), "password": "whatever it is" }))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            from("192.0.2.10").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from("192.0.2.10").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("192.0.2.11").await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "another client behind the proxy"
    );
    let limited = app.events_of("rate_limit_exceeded").await;
    assert_eq!(limited[0].ip_address.as_deref(), Some("192.0.2.10"));
}

#[tokio::test]
async fn signup_is_limited_per_address_per_hour() {
    let Some(app) = limited_app(Backend::File, |_| {}).await else {
        return;
    };
    for _ in 0..5 {
        assert_eq!(
            app.signup(&unique_email(), PASSWORD, "N").await.status(),
            StatusCode::CREATED
        );
    }
    let response = app.signup(&unique_email(), PASSWORD, "N").await;
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 60 && retry <= 3600, "{retry}");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
}

#[tokio::test]
async fn refresh_is_limited_per_session_and_per_address() {
    let Some(app) = limited_app(Backend::File, |s| {
        s.refresh_limit_per_session = 3;
        s.refresh_limit_per_ip = 5;
    })
    .await
    else {
        return;
    };
    let email = unique_email();
    let first = app.signed_up(&email).await;
    let second = app.logged_in(&email).await;
    let mut a = first["refreshToken"].as_str().unwrap().to_owned();
    let tag = a[..11].to_owned();
    for _ in 0..3 {
        let response = app.refresh(&a).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        a = body["refreshToken"].as_str().unwrap().to_owned();
        assert!(a.starts_with(&tag), "a successor keeps its session's tag");
    }
    // The session's fourth refresh in a minute is refused, and the token is not spent by it.
    let response = app.refresh(&a).await;
    assert_eq!(response.headers()["ratelimit-limit"], "3");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    // Another session of the same user on the same address is not affected...
    let b = second["refreshToken"].as_str().unwrap();
    assert_eq!(app.refresh(b).await.status(), StatusCode::OK);
    // ...until the address's own limit (5 a minute here) is used up.
    let response = app.refresh(b).await;
    assert_eq!(response.headers()["ratelimit-limit"], "5");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;

    let events = app
        .events_where(|evs| {
            count_of(evs, "rate_limit_exceeded") == 2 && count_of(evs, "token_refreshed") == 4
        })
        .await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "rate_limit_exceeded")
        .map(|e| e.metadata["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["refresh_session", "refresh_ip"]);
    assert_eq!(count_of(&events, "token_refreshed"), 4);
    let keys = prefixed_keys(&app).await;
    assert!(
        keys.iter()
            .any(|k| k.ends_with(&format!("rl:refresh_session:{tag}"))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn f7_password_spraying_blocks_the_address_and_leaves_unknown_emails_free() {
    let Some(app) = limited_app(Backend::File, |s| {
        s.ip_failure_threshold = 8;
        s.login_limit_per_ip = 1000;
        s.signup_limit_per_ip = 1000;
    })
    .await
    else {
        return;
    };
    let target = unique_email();
    for _ in 0..8 {
        assert_eq!(
            app.login(&unique_email(), "spray password 1")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login(&target, "spray password 1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let detected = app.events_of("brute_force_detected").await;
    assert_eq!(detected[0].metadata["reason"], "ip_failure_threshold");
    // Nothing was kept against the unknown emails: the target can sign up and, once the address
    // block is lifted, log in at once.
    assert_eq!(
        app.signup(&target, PASSWORD, "T").await.status(),
        StatusCode::CREATED
    );
    app.clock().advance(Duration::from_secs(901));
    assert_eq!(app.login(&target, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_instances_share_limits_lockouts_and_logouts_through_redis() {
    let Some(first) = limited_app(Backend::Postgres, |s| s.login_limit_per_ip = 4).await else {
        return;
    };
    let second = second_instance(&first, None).await;

    let email = unique_email();
    let auth = first.signed_up(&email).await;
    let token = auth["accessToken"].as_str().unwrap();
    assert_eq!(second.me(token).await.status(), StatusCode::OK);
    assert_eq!(first.logout(token).await.status(), StatusCode::OK);
    // The second instance hears of the logout through Redis's revocation channel (or asks Redis
    // per request while it has no copy); either way within one delivery, not at once.
    gone_from(&second, token).await;

    for app in [&first, &second, &first, &second] {
        assert_eq!(
            app.login(&email, "wrong password x").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        second.login(&email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "4 per minute across both"
    );
}

/// Waits until `app` refuses `token` as revoked (the way it answers a revoked token).
async fn gone_from(app: &TestApp, token: &str) {
    let status = eventually(
        "the revocation to reach the instance",
        MIRROR_PATIENCE,
        || async {
            let response = app.me(token).await;
            (response.status() != StatusCode::OK).then_some(response)
        },
    )
    .await;
    assert_error(status, StatusCode::UNAUTHORIZED, "AUTH_TOKEN_INVALID").await;
}

async fn mirrored(app: &TestApp, expected: f64) {
    eventually("the revocation mirror's state", MIRROR_PATIENCE, || async {
        (metric(app, "flux_auth_revocations_mirrored").await == Some(expected)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_instance_mirrors_revocations_from_redis_and_answers_me_from_memory() {
    let Some(first) = limited_app(Backend::Postgres, |_| {}).await else {
        return;
    };
    // The second instance reaches Redis through a forwarder that counts what it sends.
    let forwarder = redis_forwarder().await;
    let second = second_instance(&first, Some(&forwarder)).await;
    mirrored(&first, 1.0).await;
    mirrored(&second, 1.0).await;

    let email = unique_email();
    let sessions = [
        first.signed_up(&email).await,
        first.logged_in(&email).await,
        first.logged_in(&email).await,
        first.logged_in(&email).await,
    ];
    let token = |i: usize| sessions[i]["accessToken"].as_str().unwrap();
    // A checked request costs no Redis round trip while the copy is current: 50 of them send
    // less than one 3-key MGET each would (the link's pings are a few bytes a second).
    let before = forwarder.sent();
    for _ in 0..50 {
        assert_eq!(second.me(token(0)).await.status(), StatusCode::OK);
    }
    let sent = forwarder.sent() - before;
    assert!(
        sent < 1_000,
        "{sent} bytes sent to Redis for 50 checked requests"
    );

    // Each kind of revocation made on the first instance reaches the second: one token (logout),
    // one session (deleted from another device), every token issued before logout-all.
    assert_eq!(first.logout(token(0)).await.status(), StatusCode::OK);
    gone_from(&second, token(0)).await;
    let sid = session_of(token(1)).to_string();
    let deleted = first
        .client
        .delete(first.url(&format!("/api/auth/sessions/{sid}")))
        .bearer_auth(token(2))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    gone_from(&second, token(1)).await;
    assert_eq!(second.me(token(2)).await.status(), StatusCode::OK);
    let all = first
        .post_json_auth("/api/auth/logout-all", token(3), &json!({}))
        .await;
    assert_eq!(all.status(), StatusCode::OK);
    gone_from(&second, token(2)).await;
    gone_from(&second, token(3)).await;
}

#[tokio::test]
async fn an_instance_that_loses_the_revocation_feed_reads_what_it_missed_when_back() {
    let Some(first) = limited_app(Backend::Postgres, |_| {}).await else {
        return;
    };
    let forwarder = redis_forwarder().await;
    let second = second_instance(&first, Some(&forwarder)).await;
    mirrored(&second, 1.0).await;
    let auth = first.signed_up(&unique_email()).await;
    let token = auth["accessToken"].as_str().unwrap();
    assert_eq!(second.me(token).await.status(), StatusCode::OK);

    forwarder.cut();
    mirrored(&second, 0.0).await;
    // A revocation the second instance cannot hear: written to Redis as an instance does, with
    // no message reaching it. (Written here rather than by a logout, whose revoked session the
    // second instance could also read back from Postgres.)
    let jti = jwt_claims(token)["jti"].as_str().unwrap().to_owned();
    let key = format!("{}rv:jti:{jti}", second.settings.redis_key_prefix);
    let mut conn = redis_conn().await;
    let _: () = conn.pset_ex(&key, 1, 60_000).await.unwrap();
    forwarder.restore();
    mirrored(&second, 1.0).await;
    // Answered from memory again (the copy is current), so the revocation came from the key
    // space read when the subscription was made again.
    assert_error(
        second.me(token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    // And it holds when Redis then goes away.
    forwarder.cut();
    assert_error(
        second.me(token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
}

/// A subscription whose connection stays open but stops answering (a network that drops packets)
/// is caught by its ping: the instance goes back to asking Redis, and subscribes again later.
#[tokio::test]
async fn a_revocation_feed_that_stops_answering_is_dropped_and_made_again() {
    if !redis_available().await {
        return;
    }
    let forwarder = redis_forwarder().await;
    let app = file_app_via(&forwarder).await;
    mirrored(&app, 1.0).await;
    // Every chunk now waits far longer than the Redis timeout (250 ms), in both directions.
    forwarder.slow(Duration::from_secs(2));
    mirrored(&app, 0.0).await;
    forwarder.slow(Duration::ZERO);
    // Retried with a backoff of at most 5 s.
    eventually(
        "the feed to be made again",
        Duration::from_secs(20),
        || async {
            (metric(&app, "flux_auth_revocations_mirrored").await == Some(1.0)).then_some(())
        },
    )
    .await;
}

/// Redis 7 gives a new ACL user no pub/sub channel unless told: revocations must still be stored
/// in Redis and hold on every instance, which then asks Redis per request.
#[tokio::test]
async fn without_the_revocation_channel_revocations_still_go_through_redis() {
    if !redis_available().await {
        return;
    }
    let user = format!("flux-test-{}", uuid::Uuid::new_v4().simple());
    let mut admin = redis_conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">channel-less")
        .arg("~*")
        .arg("+@all")
        .arg("resetchannels")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut url = url::Url::parse(&redis_url()).unwrap();
    url.set_username(&user).unwrap();
    url.set_password(Some("channel-less")).unwrap();
    let via = url.to_string();
    let first = limited_app(Backend::Postgres, move |s| {
        s.redis_url = Some(SecretString::from(via))
    })
    .await
    .unwrap();
    let second = second_instance(&first, None).await;

    let auth = first.signed_up(&unique_email()).await;
    let token = auth["accessToken"].as_str().unwrap();
    assert_eq!(second.me(token).await.status(), StatusCode::OK);
    assert_eq!(first.logout(token).await.status(), StatusCode::OK);
    // No subscription, so no copy: the second instance asks Redis, which has the revocation.
    assert_error(
        second.me(token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    let keys = prefixed_keys(&first).await;
    assert!(keys.iter().any(|k| k.contains("rv:jti:")), "{keys:?}");
    for app in [&first, &second] {
        assert_eq!(
            metric(app, "flux_auth_revocations_mirrored").await,
            Some(0.0)
        );
        assert_eq!(metric(app, "flux_auth_redis_up").await, Some(1.0));
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn f6_redis_unreachable_limits_hold_in_process_and_move_back() {
    if !redis_available().await {
        return;
    }
    let forwarder = redis_forwarder().await;
    let redis = redis_via(&forwarder);
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.rate_limits = Switch::On;
            s.redis_url = Some(redis);
            s.login_limit_per_ip = 3;
            s.lockout_threshold = 100;
        })
        .spawn()
        .await;
    let health: Value = app.health().await;
    assert_eq!(health["checks"]["redis"], "ok");
    forwarder.cut();
    for _ in 0..3 {
        assert_eq!(
            app.login(&unique_email(), "pw pw pw pw").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login(&unique_email(), "pw pw pw pw").await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "never unlimited"
    );
    let health: Value = app.health().await;
    assert_eq!(health["checks"]["redis"], "error");
    assert_eq!(health["status"], "degraded");
    forwarder.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health: Value = app.health().await;
        if health["checks"]["redis"] == "ok" {
            assert_eq!(health["status"], "ok");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never came back: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back on Redis: a fresh window there.
    assert_eq!(
        app.login(&unique_email(), "pw pw pw pw").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(!prefixed_keys(&app).await.is_empty());
}

#[tokio::test]
async fn logout_during_a_redis_outage_still_revokes_and_reaches_redis_afterwards() {
    if !redis_available().await {
        return;
    }
    let forwarder = redis_forwarder().await;
    let app = file_app_via(&forwarder).await;
    let auth = app.signed_up(&unique_email()).await;
    let token = auth["accessToken"].as_str().unwrap().to_owned();
    forwarder.cut();
    assert_eq!(app.logout(&token).await.status(), StatusCode::OK);
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED);
    forwarder.restore();
    // Once Redis is back, the outage's revocation is copied over, and a new one goes straight
    // to Redis.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let other = app.signed_up(&unique_email()).await;
    loop {
        let health: Value = app.health().await;
        if health["checks"]["redis"] == "ok" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.logout(other["accessToken"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    eventually("both logouts in Redis", MIRROR_PATIENCE, || async {
        let keys = prefixed_keys(&app).await;
        let jti_keys = keys.iter().filter(|k| k.contains("rv:jti:")).count();
        (jti_keys == 2).then_some(())
    })
    .await;
}

/// What waits to be copied to Redis (revocations and lockouts made during an outage).
async fn pending_writes(app: &TestApp) -> f64 {
    metric(app, "flux_auth_redis_pending_writes")
        .await
        .expect("redis_pending_writes")
}

/// A logout made while the revocations of an outage are being copied to Redis is answered
/// without waiting for that copy: it stores its own revocation and nothing else, and the copy
/// goes on behind it.
#[tokio::test]
async fn a_logout_does_not_wait_for_the_copy_of_an_outage_to_redis() {
    if !redis_available().await {
        return;
    }
    let forwarder = redis_forwarder().await;
    let redis = redis_via(&forwarder);
    let app = TestApp::builder(Backend::File)
        .settings(move |s| {
            s.redis_url = Some(redis);
            // The slow round trips below are not Redis failing.
            s.redis_timeout_ms = 5000;
        })
        .spawn()
        .await;
    let mut tokens = Vec::new();
    for _ in 0..11 {
        let auth = app.signed_up(&unique_email()).await;
        tokens.push(auth["accessToken"].as_str().unwrap().to_owned());
    }
    let last = tokens.pop().unwrap();

    forwarder.cut();
    for token in &tokens {
        assert_eq!(app.logout(token).await.status(), StatusCode::OK);
    }
    let queued = pending_writes(&app).await;
    assert!(queued >= 10.0, "{queued} revocations wait for Redis");
    // From now on every round trip to Redis takes 0.3 s: copying the outage takes seconds.
    forwarder.slow(Duration::from_millis(150));
    forwarder.restore();
    eventually("the copy to begin", MIRROR_PATIENCE, || async {
        (pending_writes(&app).await < queued).then_some(())
    })
    .await;
    assert_eq!(app.logout(&last).await.status(), StatusCode::OK);
    let left = pending_writes(&app).await;
    assert!(
        left > 0.0,
        "the logout was answered only once the copy had ended"
    );
    eventually("the copy to end", Duration::from_secs(30), || async {
        (pending_writes(&app).await == 0.0).then_some(())
    })
    .await;
    forwarder.slow(Duration::ZERO);
    let keys = prefixed_keys(&app).await;
    let jti_keys = keys.iter().filter(|k| k.contains("rv:jti:")).count();
    assert_eq!(jti_keys, 11, "{keys:?}");
}

/// Two writes of one revocation to Redis leave the larger whatever their order: a copy made
/// after an outage that reaches Redis after a newer revocation of the same key (a later
/// logout-all cutoff, a later expiry) does not lower it.
#[tokio::test]
async fn a_revocation_written_to_redis_never_lowers_one_already_there() {
    if !redis_available().await {
        return;
    }
    let store = flux_auth::redis_link::RedisStore::new(
        redis::Client::open(redis_url()).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let prefix = format!("flux-test-{}:", uuid::Uuid::new_v4().simple());
    let (key, channel) = (format!("{prefix}rv:user:u"), format!("{prefix}revocations"));
    let mut conn = redis_conn().await;
    /// The key's value and milliseconds to live.
    async fn held(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> (i64, i64) {
        let value: i64 = conn.get(key).await.unwrap();
        let ttl: i64 = conn.pttl(key).await.unwrap();
        (value, ttl)
    }

    assert!(
        store
            .raise_then_publish(&key, 200, 60_000, &channel, "m")
            .await
            .unwrap()
    );
    // An older cutoff with a shorter life, arriving late.
    store
        .raise_then_publish(&key, 100, 1_000, &channel, "m")
        .await
        .unwrap();
    let (value, ttl) = held(&mut conn, &key).await;
    assert_eq!(value, 200);
    assert!(ttl > 1_000, "{ttl}");
    // A newer cutoff raises it, and keeps the longer life.
    store
        .raise_then_publish(&key, 300, 1_000, &channel, "m")
        .await
        .unwrap();
    let (value, ttl) = held(&mut conn, &key).await;
    assert_eq!(value, 300);
    assert!(ttl > 1_000, "{ttl}");
    let _: () = conn.del(&key).await.unwrap();
}

#[tokio::test]
async fn admins_list_and_lift_lockouts_and_others_get_403() {
    let Some(app) = limited_app(Backend::File, |_| {}).await else {
        return;
    };
    let victim = unique_email();
    app.signed_up(&victim).await;
    for _ in 0..5 {
        app.login(&victim, "wrong password z").await;
    }
    let admin_email = unique_email();
    let admin = app.signed_up(&admin_email).await;
    let user_token = admin["accessToken"].as_str().unwrap().to_owned();
    assert_error(
        app.get_auth("/api/admin/security/blocked", &user_token)
            .await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;

    make_admin(&app, &admin_email).await;
    let listing: Value = app
        .get_auth("/api/admin/security/blocked", &user_token)
        .await
        .json()
        .await
        .unwrap();
    let entry = listing["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["subject"] == victim.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["type"], "account");
    assert!(entry["expiresInSecs"].as_u64().unwrap() <= 30);
    let key = entry["key"].as_str().unwrap();
    let lifted = app
        .client
        .delete(app.url(&format!("/api/admin/security/blocked/{key}")))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), StatusCode::OK);
    assert_eq!(app.login(&victim, PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(app.events_of("lockout_lifted").await.len(), 1);
    let again = app
        .client
        .delete(app.url(&format!("/api/admin/security/blocked/{key}")))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_error(again, StatusCode::NOT_FOUND, "BLOCK_NOT_FOUND").await;
}

/// A logout made on an instance while it cannot reach Redis reaches the other instances as soon as
/// Redis is back, without waiting for some later revocation to carry it over.
#[tokio::test]
async fn a_logout_made_during_a_redis_outage_reaches_the_other_instances_when_redis_is_back() {
    let Some(first) = limited_app(Backend::Postgres, |_| {}).await else {
        return;
    };
    let forwarder = redis_forwarder().await;
    let cut_off = second_instance(&first, Some(&forwarder)).await;
    mirrored(&first, 1.0).await;
    let auth = first.signed_up(&unique_email()).await;
    let token = auth["accessToken"].as_str().unwrap();
    assert_eq!(cut_off.me(token).await.status(), StatusCode::OK);

    forwarder.cut();
    assert_eq!(cut_off.logout(token).await.status(), StatusCode::OK);
    assert_error(
        cut_off.me(token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    assert_eq!(
        first.me(token).await.status(),
        StatusCode::OK,
        "the other instance cannot know yet"
    );
    forwarder.restore();
    gone_from(&first, token).await;
}

/// A lockout started on an instance while it cannot reach Redis holds on the other instances once
/// Redis is back.
#[tokio::test]
async fn a_lockout_started_during_a_redis_outage_holds_on_the_other_instances_when_redis_is_back() {
    let Some(first) = limited_app(Backend::Postgres, |s| {
        s.lockout_threshold = 3;
        s.login_limit_per_account = 1000;
        s.login_limit_per_ip = 1000;
    })
    .await
    else {
        return;
    };
    let forwarder = redis_forwarder().await;
    let cut_off = second_instance(&first, Some(&forwarder)).await;
    let email = unique_email();
    first.signed_up(&email).await;

    forwarder.cut();
    for _ in 0..3 {
        assert_eq!(
            cut_off.login(&email, "not the password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_error(
        cut_off.login(&email, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
    forwarder.restore();
    // Watched in Redis rather than by signing in: a successful sign-in would lift the lock.
    eventually("the lockout to reach Redis", MIRROR_PATIENCE, || async {
        prefixed_keys(&first)
            .await
            .iter()
            .any(|k| k.contains("lock:account:"))
            .then_some(())
    })
    .await;
    assert_error(
        first.login(&email, PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_INVALID_CREDENTIALS",
    )
    .await;
}
