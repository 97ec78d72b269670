//! Refresh rotation (C8–C12) on both stores: the response shape, rotation, hashed storage, reuse
//! detection, concurrent refreshes, session lifetimes, device fingerprints and the session cap.

use chrono::{Duration, Utc};
use flux_auth::config::FingerprintPolicy;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const OTHER_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";

async fn refresh_as(app: &TestApp, refresh_token: &str, user_agent: &str) -> Response {
    app.client
        .post(app.url("/api/auth/refresh"))
        .header("user-agent", user_agent)
        .json(&json!({ "refreshToken": refresh_token }))
        .send()
        .await
        .unwrap()
}

/// Refreshes and returns the body, asserting success.
async fn refreshed(app: &TestApp, refresh_token: &str) -> Value {
    let response = app.refresh(refresh_token).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", app.backend);
    response.json().await.unwrap()
}

fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
}

/// A strict app: no grace window, so a rotated token is dead at once.
async fn strict_app(backend: Backend) -> Option<TestApp> {
    TestApp::builder(backend)
        .settings(|s| s.refresh_reuse_grace_secs = 0)
        .try_spawn()
        .await
}

#[tokio::test]
async fn c8_refresh_rotates_to_a_new_pair_in_both_response_shapes() {
    for backend in BACKENDS {
        let Some(app) = strict_app(backend).await else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        let rt0 = text(&signup, "refreshToken");
        let response = app.refresh(rt0).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], true);
        assert_eq!(body["token"], body["accessToken"]);
        assert_eq!(body["expiresIn"], 900);
        assert_eq!(body["tokenType"], "Bearer");
        assert_eq!(body["activityExtended"], false);
        let data = &body["data"];
        for key in [
            "accessToken",
            "token",
            "refreshToken",
            "expiresIn",
            "expiresAt",
            "tokenType",
        ] {
            assert_eq!(data[key], body[key], "{backend:?}: data.{key}");
        }
        let (at1, rt1) = (text(&body, "accessToken"), text(&body, "refreshToken"));
        assert_ne!(rt1, rt0);
        assert_ne!(at1, text(&signup, "accessToken"));
        let (old, new) = (jwt_claims(text(&signup, "accessToken")), jwt_claims(at1));
        assert_eq!(new["sid"], old["sid"], "same session");
        assert_ne!(new["jti"], old["jti"]);
        assert_eq!(
            body["expiresAt"].as_i64().unwrap() / 1000,
            new["exp"].as_i64().unwrap()
        );
        assert_eq!(app.me(at1).await.status(), StatusCode::OK);

        // The old token is dead; the new one works.
        assert_error(
            app.refresh(rt0).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_REUSED",
        )
        .await;

        let events = app.events_of("token_refreshed").await;
        assert_eq!(events.len(), 1, "{backend:?}");
        let generated = &app.events_of("token_generated").await[0];
        let tokens = app.stored_refresh_tokens().await;
        let live: Vec<_> = tokens.iter().filter(|t| !t.rotated).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(
            events[0].metadata["oldTokenId"],
            generated.metadata["tokenId"]
        );
        assert_eq!(events[0].metadata["tokenId"], live[0].id.to_string());
        assert_eq!(events[0].token_id, Some(live[0].id));
    }
}

#[tokio::test]
async fn c8_only_a_sha256_of_each_refresh_token_is_stored() {
    for backend in BACKENDS {
        let Some(mut app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        let rt0 = text(&signup, "refreshToken").to_owned();
        let body = refreshed(&app, &rt0).await;
        let rt1 = text(&body, "refreshToken").to_owned();
        for token in [&rt0, &rt1] {
            // An 11-character session tag (64 bits), then the 256-bit secret.
            let (tag, secret) = token.split_at(11);
            let decode = |part: &str| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part)
                    .expect("base64url")
            };
            assert_eq!(decode(tag).len(), 8, "64-bit tag");
            assert_eq!(decode(secret).len(), 32, "256 bits");
            assert_eq!(tag, &rt0[..11], "a successor keeps the session's tag");
        }
        let mut stored: Vec<String> = app
            .stored_refresh_tokens()
            .await
            .into_iter()
            .map(|t| t.token_hash)
            .collect();
        let mut expected = vec![sha256_hex(&rt0), sha256_hex(&rt1)];
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected, "{backend:?}");

        app.events_of("token_refreshed").await;
        let secrets = [
            rt0.as_str(),
            rt1.as_str(),
            text(&signup, "accessToken"),
            text(&body, "accessToken"),
        ];
        let dump = app.stored_text().await;
        app.stop().await;
        let on_disk = files_text(app.dir.path());
        for secret in secrets {
            assert!(
                !dump.contains(secret),
                "{backend:?}: a raw token is in the database"
            );
            assert!(
                !on_disk.contains(secret),
                "{backend:?}: a raw token is on disk"
            );
        }
        assert!(dump.contains(&sha256_hex(&rt1)) || on_disk.contains(&sha256_hex(&rt1)));
    }
}

#[tokio::test]
async fn c9_replaying_a_rotated_token_revokes_the_whole_family() {
    for backend in BACKENDS {
        let Some(app) = strict_app(backend).await else {
            continue;
        };
        let email = unique_email();
        let signup = app.signed_up(&email).await;
        let other_session = app.logged_in(&email).await;
        let mut chain = vec![text(&signup, "refreshToken").to_owned()];
        let mut access = String::new();
        for _ in 0..3 {
            let body = refreshed(&app, chain.last().unwrap()).await;
            chain.push(text(&body, "refreshToken").to_owned());
            access = text(&body, "accessToken").to_owned();
        }
        assert_eq!(app.me(&access).await.status(), StatusCode::OK);

        assert_error(
            app.refresh(&chain[0]).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_REUSED",
        )
        .await;
        assert_error(
            app.refresh(&chain[3]).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_INVALID",
        )
        .await;
        assert_eq!(
            app.me(&access).await.status(),
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        // Only that family: the user's other session lives on.
        refreshed(&app, text(&other_session, "refreshToken")).await;

        let sid = session_of(&access);
        let session = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert_eq!(session.revoked_reason.as_deref(), Some("token_reuse"));
        let events = app
            .events_where(|e| count_of(e, "token_verification_failed") >= 2)
            .await;
        let reuse: Vec<_> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "token_reuse_detected")
            .collect();
        assert_eq!(reuse.len(), 1, "{backend:?}");
        assert_eq!(reuse[0].severity.as_str(), "critical");
        assert_eq!(reuse[0].user_id.as_deref(), signup["user"]["id"].as_str());
        assert_eq!(reuse[0].metadata["sessionId"], sid.to_string());
    }
}

#[tokio::test]
async fn c10_parallel_refreshes_share_one_successor_without_forking_the_family() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        let rt0 = text(&signup, "refreshToken");
        let sid = session_of(text(&signup, "accessToken"));
        let responses = futures::future::join_all((0..10).map(|_| app.refresh(rt0))).await;
        let mut successors = Vec::new();
        for response in responses {
            assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
            successors.push(response.json::<Value>().await.unwrap()["refreshToken"].clone());
        }
        assert!(
            successors.iter().all(|s| *s == successors[0]),
            "{backend:?}: {successors:?}"
        );

        let family: Vec<_> = app
            .stored_refresh_tokens()
            .await
            .into_iter()
            .filter(|t| t.session_id == sid)
            .collect();
        assert_eq!(
            family.len(),
            2,
            "{backend:?}: exactly one rotation persisted"
        );
        let child = family.iter().find(|t| !t.rotated).unwrap();
        let session = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert_eq!(
            session.revoked_reason, None,
            "{backend:?}: family not revoked"
        );

        let events = app
            .events_where(|e| count_of(e, "token_refreshed") >= 10)
            .await;
        assert_eq!(count_of(&events, "token_reuse_detected"), 0);
        for event in events
            .iter()
            .filter(|e| e.event_type.as_str() == "token_refreshed")
        {
            assert_eq!(
                event.metadata["tokenId"],
                child.id.to_string(),
                "{backend:?}: the persisted child"
            );
        }
        refreshed(&app, successors[0].as_str().unwrap()).await;
    }
}

#[tokio::test]
async fn c11_idle_timeout_and_absolute_lifetime_end_the_session() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let email = unique_email();
        let mut sessions = vec![app.signed_up(&email).await];
        for _ in 0..2 {
            sessions.push(app.logged_in(&email).await);
        }
        let sid = |i: usize| session_of(text(&sessions[i], "accessToken"));
        let now = Utc::now();
        let app = app
            .with_session_times(&[
                // Idle for 8 days (limit 7).
                (
                    sid(0),
                    SessionTimes {
                        created_at: now - Duration::days(8),
                        last_used_at: now - Duration::days(8),
                        expires_at: now + Duration::days(22),
                    },
                ),
                // Used an hour ago, but created 31 days ago (limit 30).
                (
                    sid(1),
                    SessionTimes {
                        created_at: now - Duration::days(31),
                        last_used_at: now - Duration::hours(1),
                        expires_at: now - Duration::days(1),
                    },
                ),
                // Idle for 6 days, 25 days old: still inside both limits.
                (
                    sid(2),
                    SessionTimes {
                        created_at: now - Duration::days(25),
                        last_used_at: now - Duration::days(6),
                        expires_at: now + Duration::days(5),
                    },
                ),
            ])
            .await;
        for (i, what) in [(0, "idle timeout"), (1, "absolute lifetime")] {
            let response = app.refresh(text(&sessions[i], "refreshToken")).await;
            let body =
                assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_EXPIRED").await;
            assert!(
                !body["message"].as_str().unwrap().is_empty(),
                "{backend:?} {what}"
            );
        }
        refreshed(&app, text(&sessions[2], "refreshToken")).await;
        let events = app
            .events_where(|e| count_of(e, "token_verification_failed") >= 2)
            .await;
        let expired = events
            .iter()
            .filter(|e| {
                e.metadata
                    .get("reason")
                    .is_some_and(|r| r == "session_expired")
            })
            .count();
        assert_eq!(expired, 2, "{backend:?}");
    }
}

#[tokio::test]
async fn c12_fingerprint_mismatch_is_logged_by_default() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        let sid = session_of(text(&signup, "accessToken"));
        let stored = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert!(
            stored.fingerprint.len() == 64
                && stored.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
            "stored hashed: {}",
            stored.fingerprint
        );
        let same = refreshed(&app, text(&signup, "refreshToken")).await;
        let response = refresh_as(&app, text(&same, "refreshToken"), OTHER_UA).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{backend:?}: policy log lets it through"
        );
        let events = app
            .events_where(|e| count_of(e, "token_refreshed") >= 2)
            .await;
        let mismatches: Vec<_> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "device_fingerprint_mismatch")
            .collect();
        assert_eq!(
            mismatches.len(),
            1,
            "{backend:?}: only the refresh from the other device"
        );
        assert_eq!(mismatches[0].metadata["reason"], "logged");
        assert_eq!(
            mismatches[0].user_id.as_deref(),
            signup["user"]["id"].as_str()
        );
        assert_eq!(mismatches[0].metadata["sessionId"], sid.to_string());
    }
}

#[tokio::test]
async fn c12_fingerprint_mismatch_with_reject_policy_revokes_the_session() {
    for backend in BACKENDS {
        let Some(app) = TestApp::builder(backend)
            .settings(|s| s.fingerprint_policy = FingerprintPolicy::Reject)
            .try_spawn()
            .await
        else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        let (access, rt) = (text(&signup, "accessToken"), text(&signup, "refreshToken"));
        let response = refresh_as(&app, rt, OTHER_UA).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_INVALID").await;
        // The session is gone for the original device too.
        assert_error(
            app.refresh(rt).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_INVALID",
        )
        .await;
        assert_eq!(
            app.me(access).await.status(),
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        let sid = session_of(access);
        let session = app
            .stored_sessions()
            .await
            .into_iter()
            .find(|s| s.id == sid)
            .unwrap();
        assert_eq!(
            session.revoked_reason.as_deref(),
            Some("fingerprint_mismatch")
        );
        let mismatch = app.events_of("device_fingerprint_mismatch").await;
        assert_eq!(mismatch.len(), 1, "{backend:?}");
        assert_eq!(mismatch[0].metadata["reason"], "rejected");
    }
}

#[tokio::test]
async fn refresh_rejects_missing_malformed_and_unknown_tokens() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let signup = app.signed_up(&unique_email()).await;
        for body in [
            json!({}),
            json!({ "refreshToken": "" }),
            json!({ "refreshToken": null }),
        ] {
            let response = app.post_json("/api/auth/refresh", &body).await;
            let error = assert_error(response, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert_eq!(error["field"], "refreshToken", "{backend:?}: {body}");
        }
        let wrong_type = app
            .post_json("/api/auth/refresh", &json!({ "refreshToken": 42 }))
            .await;
        assert_eq!(wrong_type.status(), StatusCode::BAD_REQUEST);
        let unknown = "A".repeat(43);
        for garbage in [
            "garbage",
            unknown.as_str(),
            &"x".repeat(5000),
            "' OR 1=1 --",
            text(&signup, "accessToken"),
        ] {
            let response = app.refresh(garbage).await;
            assert!(response.headers().contains_key("www-authenticate"));
            assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_REFRESH_INVALID").await;
        }
        // None of that touched the real session.
        refreshed(&app, text(&signup, "refreshToken")).await;
    }
}

#[tokio::test]
async fn max_sessions_per_user_revokes_the_oldest_session() {
    for backend in BACKENDS {
        let Some(app) = TestApp::builder(backend)
            .settings(|s| s.max_sessions_per_user = 2)
            .try_spawn()
            .await
        else {
            continue;
        };
        let email = unique_email();
        let oldest = app.signed_up(&email).await;
        let second = app.logged_in(&email).await;
        let third = app.logged_in(&email).await;
        assert_error(
            app.refresh(text(&oldest, "refreshToken")).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_REFRESH_INVALID",
        )
        .await;
        assert_eq!(
            app.me(text(&oldest, "accessToken")).await.status(),
            StatusCode::UNAUTHORIZED
        );
        for kept in [&second, &third] {
            refreshed(&app, text(kept, "refreshToken")).await;
        }
        let revoked = app.events_of("token_revoked").await;
        assert_eq!(revoked.len(), 1, "{backend:?}");
        assert_eq!(revoked[0].metadata["reason"], "session_limit");
        assert_eq!(
            revoked[0].metadata["sessionId"],
            session_of(text(&oldest, "accessToken")).to_string()
        );
    }
}
