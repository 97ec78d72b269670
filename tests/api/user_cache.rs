//! The Postgres store's in-memory copy of users: authenticated requests read users from memory,
//! and every change to a user's row shows on the next request — whether this instance, another
//! one or an operator's SQL made it — because Postgres announces it (migration 005). While that
//! announcement cannot be heard, users are read from the database.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;

const HITS: &str = "flux_auth_user_cache_hits_total";

async fn me_json(app: &TestApp, token: &str) -> Value {
    let response = app.me(token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn rename_by_sql(app: &TestApp, id: &str, name: &str) {
    let sql = format!("UPDATE users SET name = '{name}' WHERE id = $1");
    assert_eq!(change_users_by_sql(app, &sql, id).await, 1);
}

#[tokio::test]
async fn users_are_read_from_memory_and_every_change_to_their_row_shows_on_the_next_request() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    user_cache_following(&app, 1.0).await;
    let email = unique_email();
    let signed_up = app.signed_up(&email).await;
    let token = signed_up["accessToken"].as_str().unwrap();
    let id = signed_up["user"]["id"].as_str().unwrap().to_owned();

    me_json(&app, token).await;
    let hits = metric(&app, HITS).await.unwrap();
    assert_eq!(
        me_json(&app, token).await["name"],
        signed_up["user"]["name"]
    );
    assert_eq!(
        metric(&app, HITS).await.unwrap(),
        hits + 1.0,
        "the second /me is answered from memory"
    );

    // An operator's SQL: shown once Postgres's announcement is heard (the helper waits for it).
    rename_by_sql(&app, &id, "Renamed By Operator").await;
    assert_eq!(me_json(&app, token).await["name"], "Renamed By Operator");

    // This instance's own change shows at once: a login, then /me on the same instance.
    let login: Value = app.login(&email, PASSWORD).await.json().await.unwrap();
    assert_eq!(
        me_json(&app, token).await["lastLogin"],
        login["user"]["lastLogin"]
    );

    // Authorization follows the row too: made admin, then removed.
    let admin_route = "/api/admin/security/events";
    assert_eq!(
        app.get_auth(admin_route, token).await.status(),
        StatusCode::FORBIDDEN
    );
    make_admin(&app, &email).await;
    assert_eq!(
        app.get_auth(admin_route, token).await.status(),
        StatusCode::OK
    );
    let app = app.delete_user(&id).await;
    assert_error(
        app.me(token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    assert_error(
        app.get_auth(admin_route, token).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
}

#[tokio::test]
async fn a_change_made_on_one_instance_shows_on_another() {
    let Some(first) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let mut settings = first.settings.clone();
    settings.port = 0;
    let second = TestApp::start(
        settings,
        tempfile::tempdir().unwrap(),
        None,
        Backend::Postgres,
    )
    .await;
    user_cache_following(&second, 1.0).await;
    let email = unique_email();
    let token = first.signed_up(&email).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = me_json(&second, &token).await;
    let hits = metric(&second, HITS).await.unwrap();
    assert_eq!(me_json(&second, &token).await, before);
    assert!(
        metric(&second, HITS).await.unwrap() > hits,
        "kept by the second"
    );

    let login: Value = first.login(&email, PASSWORD).await.json().await.unwrap();
    assert_ne!(login["user"]["lastLogin"], before["lastLogin"]);
    let seen = eventually(
        "the second instance to show the login",
        MIRROR_PATIENCE,
        || async {
            let me = me_json(&second, &token).await;
            (me["lastLogin"] == login["user"]["lastLogin"]).then_some(me)
        },
    )
    .await;
    assert_eq!(seen["id"], before["id"]);
}

/// A Postgres app whose database connections all go through a forwarder (the test's own SQL
/// does not), once it follows the change feed; `None` when Postgres is absent outside CI.
async fn app_behind_a_forwarder() -> Option<(Forwarder, TestApp)> {
    if !postgres_available().await {
        return None;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let addr = forwarder.addr();
    let app = TestApp::builder(Backend::Postgres)
        .settings(move |s| {
            let url = s.database_url.as_ref().unwrap().expose_secret().to_owned();
            s.database_url = Some(SecretString::from(via(&url, addr)));
        })
        .spawn()
        .await;
    user_cache_following(&app, 1.0).await;
    Some((forwarder, app))
}

/// Changes made while the instance cannot hear Postgres's announcements (its connections cut) are
/// not announced to it; once the feed is back, what it kept before must not be served.
#[tokio::test]
async fn what_was_kept_before_the_feed_broke_is_not_served_after_it_is_back() {
    let Some((forwarder, app)) = app_behind_a_forwarder().await else {
        return;
    };
    let signed_up = app.signed_up(&unique_email()).await;
    let token = signed_up["accessToken"].as_str().unwrap();
    let id = signed_up["user"]["id"].as_str().unwrap();
    me_json(&app, token).await;

    forwarder.cut();
    user_cache_following(&app, 0.0).await;
    // Written straight to Postgres, not through the forwarder: the app hears nothing of it.
    let pool = app.db.as_ref().unwrap().pool().await;
    sqlx::query("UPDATE users SET name = 'Changed During The Cut' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    forwarder.restore();
    user_cache_following(&app, 1.0).await;
    assert_eq!(me_json(&app, token).await["name"], "Changed During The Cut");
}

/// A link to Postgres that stalls rather than breaks (a partition, a frozen primary) closes no
/// connection, and delivers no announcement: kept users must stop being served by themselves,
/// once the last heartbeat to come back is too old, and not only when the TTL runs out.
#[tokio::test]
async fn a_stalled_link_stops_kept_users_from_being_served() {
    let Some((forwarder, app)) = app_behind_a_forwarder().await else {
        return;
    };
    let signed_up = app.signed_up(&unique_email()).await;
    let token = signed_up["accessToken"].as_str().unwrap();
    let id = signed_up["user"]["id"].as_str().unwrap();
    // Kept: once the signup's own announcements are heard, a second /me is answered from memory.
    user_cache_caught_up(&app).await;
    me_json(&app, token).await;
    let hits = metric(&app, HITS).await.unwrap();
    me_json(&app, token).await;
    assert_eq!(metric(&app, HITS).await.unwrap(), hits + 1.0);

    // Every chunk, both ways, now waits longer than this test waits for anything: the change's
    // announcement, the heartbeats and the reads are all stuck.
    forwarder.slow(Duration::from_secs(30));
    let pool = app.db.as_ref().unwrap().pool().await;
    sqlx::query("UPDATE users SET name = 'Changed During The Stall' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Answered from memory with the old name until the last heartbeat is too old; then /me
    // waits for the stalled database instead (cut short here by the client).
    eventually(
        "kept users to stop being served",
        MIRROR_PATIENCE,
        || async {
            let answer = app
                .client
                .get(app.url("/api/auth/me"))
                .bearer_auth(token)
                .timeout(Duration::from_millis(1500))
                .send()
                .await;
            match answer {
                Ok(response) if response.status() == StatusCode::OK => {
                    let me: Value = response.json().await.unwrap();
                    assert_eq!(
                        me["name"], "Test User",
                        "the stalled link delivered the change"
                    );
                    None
                }
                _ => Some(()),
            }
        },
    )
    .await;
    forwarder.slow(Duration::ZERO);
    eventually("the change to show", Duration::from_secs(45), || async {
        let response = app.me(token).await;
        if response.status() != StatusCode::OK {
            return None;
        }
        let me: Value = response.json().await.unwrap();
        (me["name"] == "Changed During The Stall").then_some(())
    })
    .await;
}

/// Without the triggers that announce changes (migration 005 not applied where
/// `RUN_MIGRATIONS=false`, or disabled by hand), nothing would ever be heard: the cache is not used.
#[tokio::test]
async fn without_the_announcing_trigger_users_are_read_from_the_database() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    user_cache_following(&app, 1.0).await;
    let signed_up = app.signed_up(&unique_email()).await;
    let token = signed_up["accessToken"].as_str().unwrap();
    let id = signed_up["user"]["id"].as_str().unwrap();
    me_json(&app, token).await;

    let pool = app.db.as_ref().unwrap().pool().await;
    sqlx::query("ALTER TABLE users DISABLE TRIGGER users_changed_notify")
        .execute(&pool)
        .await
        .unwrap();
    user_cache_following(&app, 0.0).await;
    sqlx::query("UPDATE users SET name = 'Unannounced' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(me_json(&app, token).await["name"], "Unannounced");
    let hits = metric(&app, HITS).await.unwrap();
    me_json(&app, token).await;
    assert_eq!(
        metric(&app, HITS).await.unwrap(),
        hits,
        "nothing from memory"
    );

    sqlx::query("ALTER TABLE users ENABLE TRIGGER users_changed_notify")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    // Heartbeats retry with a backoff of at most 5 s.
    eventually(
        "the cache to be used again",
        Duration::from_secs(20),
        || async {
            (metric(&app, "flux_auth_user_cache_following").await == Some(1.0)).then_some(())
        },
    )
    .await;
    rename_by_sql(&app, id, "Announced Again").await;
    assert_eq!(me_json(&app, token).await["name"], "Announced Again");
}
