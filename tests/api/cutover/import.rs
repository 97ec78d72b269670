//! `flux-auth import-fluxstudio` on FluxStudio's database (both shapes): the dry run changes
//! nothing and reports what a run does, collisions included; the run brings exactly the live
//! users, their provider identities and live sessions; every imported user logs in with the
//! password that worked in FluxStudio; a second run adds nothing.

use reqwest::StatusCode;
use secrecy::SecretString;

use super::fluxstudio::*;
use crate::helpers::*;

async fn import(url: &str, dry_run: bool) -> String {
    let work = tempfile::tempdir().unwrap();
    let mut args = vec!["import-fluxstudio"];
    if dry_run {
        args.push("--dry-run");
    }
    let envs = [
        ("DATABASE_URL", url),
        ("TOTP_ENCRYPTION_KEY", crate::two_factor::TOTP_KEY),
    ];
    let out = run_cli(work.path(), &envs, &args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("users read: 8"),
        "{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn schema_exists(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT to_regnamespace('flux_auth') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn fluxstudio_users_and_live_sessions_are_imported_once_and_log_in() {
    for variant in VARIANTS {
        let Some(db) = fluxstudio_db(variant).await else {
            return;
        };
        let pool = db.pool().await;
        let before = dump_public(&db.url);

        let dry = import(&db.url, true).await;
        assert!(
            dry.contains(
                "dry run, nothing changed. users: 8 read, would import 6, 0 already present, \
                 2 skipped (1 email collisions)"
            ),
            "{variant:?}: {dry}"
        );
        assert!(
            dry.contains(
                "skipped users cm1x2y3z4carol0002: the email is another spelling of account \
                 cm1x2y3z4carol0001's mailbox (not merged)"
            ),
            "{dry}"
        );
        assert!(dry.contains("skipped users cm1x2y3z4gone00001: the account is deactivated"));
        assert!(dry.contains(
            "refresh tokens: 7 read, would import 4 as sessions, 0 already present, 3 skipped"
        ));
        assert!(dry.contains("provider identities: would import 2"), "{dry}");
        assert!(
            dry.contains("settings: would import for 6 users from their preferences"),
            "{dry}"
        );
        assert!(
            dry.contains("two-factor: would import for 1 users"),
            "{dry}"
        );
        for token in tokens() {
            assert!(!dry.contains(&token.token), "a raw token in the report");
        }
        assert!(
            !schema_exists(&pool).await,
            "{variant:?}: the dry run made the schema"
        );
        assert!(
            before == dump_public(&db.url),
            "{variant:?}: the dry run changed public"
        );

        let run = import(&db.url, false).await;
        assert!(
            run.contains("users: 8 read, imported 6, 0 already present, 2 skipped"),
            "{run}"
        );
        assert!(run.contains("refresh tokens: 7 read, imported 4 as sessions"));
        assert!(
            before == dump_public(&db.url),
            "{variant:?}: the import changed public"
        );
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM flux_auth.users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        let mut expected: Vec<String> = USERS
            .iter()
            .map(|u| u.id.to_owned())
            .filter(|id| id != INACTIVE_ID && id != "cm1x2y3z4carol0002")
            .collect();
        expected.sort();
        assert_eq!(ids, expected, "{variant:?}");
        let hashes: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM flux_auth.refresh_tokens ORDER BY 1")
                .fetch_all(&pool)
                .await
                .unwrap();
        let mut live: Vec<String> = live_tokens()
            .iter()
            .map(|t| flux_auth::auth::refresh::hash_token(&t.token))
            .collect();
        live.sort();
        assert_eq!(
            hashes, live,
            "{variant:?}: sessions under the hash of each live token"
        );
        let identities: Vec<(String, String)> =
            sqlx::query_as("SELECT issuer, user_id FROM flux_auth.user_identities ORDER BY issuer")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            identities,
            [
                ("https://accounts.google.com".into(), USERS[4].id.into()),
                ("https://appleid.apple.com".into(), USERS[5].id.into()),
            ]
        );

        let again = import(&db.url, false).await;
        assert!(
            again.contains("users: 8 read, imported 0, 6 already present, 2 skipped"),
            "{again}"
        );
        assert!(
            again.contains("imported 0 as sessions, 4 already present"),
            "{again}"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.database_url = Some(SecretString::from(db.url.clone()));
        let app = TestApp::start(settings, dir, None, Backend::Postgres).await;
        for (email, password) in [
            ("alice.smith@example.com", ALICE_PASSWORD),
            ("ALICE.SMITH@example.com", ALICE_PASSWORD.trim()),
            ("bob@example.com", BOB_PASSWORD),
            ("carol@example.com", BOB_PASSWORD),
            ("tess@example.com", TOTP_PASSWORD),
        ] {
            let login = app.login(email, password).await;
            assert_eq!(login.status(), StatusCode::OK, "{variant:?} {email}");
        }
        let alice: serde_json::Value = app
            .login("alice.smith@example.com", ALICE_PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(alice["user"]["name"], "O'Brien & Co");
        assert_eq!(alice["user"]["id"], USERS[0].id);
        let refused = app.login("gone@example.com", BOB_PASSWORD).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

        // Every live FluxStudio refresh token refreshes once, then rotates as flux-auth's do.
        for token in live_tokens() {
            let first = app.refresh(&token.token).await;
            assert_eq!(first.status(), StatusCode::OK, "{variant:?}");
            let body: serde_json::Value = first.json().await.unwrap();
            let next = body["refreshToken"].as_str().unwrap().to_owned();
            assert_ne!(next, token.token);
            let me = app.me(body["token"].as_str().unwrap()).await;
            assert_eq!(me.status(), StatusCode::OK);
            let second = app.refresh(&next).await;
            assert_eq!(second.status(), StatusCode::OK, "the successor rotates");
        }
        for token in tokens()
            .into_iter()
            .filter(|t| t.state != TokenState::Live || t.user_id == INACTIVE_ID)
        {
            let refused = app.refresh(&token.token).await;
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{:?}",
                token.state
            );
        }
        let live = live_tokens().len() as i64;
        let adopted = eventually("legacy_session_adopted events", MIRROR_PATIENCE, || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM public.security_events \
                 WHERE event_type = 'legacy_session_adopted'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (n >= live).then_some(n)
        })
        .await;
        assert_eq!(adopted, live, "{variant:?}: one adoption per session");
        let fingerprints: Vec<String> =
            sqlx::query_scalar("SELECT fingerprint FROM flux_auth.auth_sessions")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert!(
            fingerprints
                .iter()
                .all(|f| f != flux_auth::domain::UNSET_FINGERPRINT),
            "every session took its device's fingerprint"
        );
        pool.close().await;
    }
}
