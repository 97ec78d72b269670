//! One clock for everything that depends on time: moving the app's clock (as these tests do,
//! instead of waiting) expires access tokens, sessions and revocations together, stamps the
//! security events and decides what cleanup deletes, on both stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
}

const ACCESS_TTL: Duration = Duration::from_secs(900);
/// jsonwebtoken's leeway, which the service keeps for expiry.
const LEEWAY: Duration = Duration::from_secs(30);
const IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[tokio::test]
async fn the_clock_moved_past_the_token_lifetime_and_the_idle_limit_ends_access_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let clock = app.clock();
        let started = clock.now();
        let signup = app.signed_up(&unique_email()).await;
        let access = text(&signup, "accessToken");
        assert_eq!(app.me(access).await.status(), StatusCode::OK);

        // At the end of its lifetime the token is still inside the leeway; past it, expired,
        // although it was verified (and remembered) moments ago by the system's time.
        clock.advance(ACCESS_TTL);
        assert_eq!(app.me(access).await.status(), StatusCode::OK, "{backend:?}");
        clock.advance(LEEWAY + Duration::from_secs(1));
        assert_error(
            app.me(access).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_EXPIRED",
        )
        .await;

        // The session is inside its idle limit: a refresh gives a token that lives by the clock.
        let response = app.refresh(text(&signup, "refreshToken")).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let refreshed: Value = response.json().await.unwrap();
        let access = text(&refreshed, "accessToken");
        let moved = started + chrono::Duration::from_std(ACCESS_TTL + LEEWAY).unwrap();
        assert!(
            jwt_claims(access)["iat"].as_i64().unwrap() > moved.timestamp(),
            "{backend:?}: issued at the clock's time"
        );
        assert_eq!(app.me(access).await.status(), StatusCode::OK, "{backend:?}");

        // Idle past the limit, counted from that refresh: the session has ended.
        clock.advance(IDLE_TTL + Duration::from_secs(1));
        assert_error(
            app.me(access).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_EXPIRED",
        )
        .await;
        assert_error(
            app.refresh(text(&refreshed, "refreshToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_EXPIRED",
        )
        .await;

        let events = app
            .events_where(|e| {
                e.iter().any(|e| {
                    e.event_type.as_str() == "token_verification_failed"
                        && e.metadata
                            .get("reason")
                            .is_some_and(|r| r == "session_expired")
                })
            })
            .await;
        let expired = events
            .iter()
            .find(|e| {
                e.metadata
                    .get("reason")
                    .is_some_and(|r| r == "session_expired")
            })
            .unwrap();
        assert!(
            expired.created_at >= started + chrono::Duration::from_std(IDLE_TTL).unwrap(),
            "{backend:?}: the event is stamped by the clock ({})",
            expired.created_at
        );

        // Ended sessions are kept for a week, then cleanup deletes them: by the clock too.
        let report = flux_auth::cleanup::run_once(&app.state).await;
        assert_eq!(report.sessions_deleted, 0, "{backend:?}: ended just now");
        clock.advance(Duration::from_secs(
            flux_auth::store::ENDED_SESSION_RETENTION_DAYS as u64 * 24 * 3600 + 1,
        ));
        let report = flux_auth::cleanup::run_once(&app.state).await;
        assert_eq!(report.sessions_deleted, 1, "{backend:?}");
        let session = app.state.auth.store.session(session_of(access)).await;
        assert!(session.unwrap().is_none(), "{backend:?}");
    }
}

/// A logout-all revokes the tokens issued before it, by the clock's time; a sign-in after it,
/// with the clock ten minutes ahead of the system's, is not taken for one of them (a token's
/// issue time is read from its id, made by the same clock).
#[tokio::test]
async fn a_logout_all_on_a_moved_clock_revokes_earlier_tokens_only_on_both_stores() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let before = app.signed_up(&email).await;
        app.clock().advance(Duration::from_secs(600));
        let revoked = app
            .post_json_auth(
                "/api/auth/logout-all",
                text(&before, "accessToken"),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(revoked.status(), StatusCode::OK, "{backend:?}");
        let after = app.logged_in(&email).await;
        assert_eq!(
            app.me(text(&after, "accessToken")).await.status(),
            StatusCode::OK,
            "{backend:?}: signed in after the logout-all"
        );
        assert_error(
            app.me(text(&before, "accessToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_TOKEN_INVALID",
        )
        .await;
    }
}
