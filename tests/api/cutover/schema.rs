//! flux-auth's tables in their own schema: `migrate` on FluxStudio's database changes none of its
//! tables; an install whose tables are in `public` moves into the schema with its users and
//! sessions; a bookkeeping table that is not flux-auth's is left alone.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;

use super::fluxstudio::*;
use crate::helpers::*;

async fn tables_in(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrate_on_fluxstudios_database_changes_none_of_its_tables() {
    for variant in VARIANTS {
        let Some(db) = fluxstudio_db(variant).await else {
            return;
        };
        let pool = db.pool().await;
        if variant == Variant::Older {
            // Another application's sqlx bookkeeping in public: not flux-auth's, left alone.
            sqlx::raw_sql(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT \
                 NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT \
                 NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
                 INSERT INTO _sqlx_migrations VALUES (1, 'create projects', now(), true, '\\x00', 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
        }
        let before = dump_public(&db.url);
        let work = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            let out = run_cli(work.path(), &[("DATABASE_URL", &db.url)], &["migrate"]).await;
            assert!(out.status.success(), "{variant:?}: {}", text(&out.stderr));
        }
        let after = dump_public(&db.url);
        let changed: Vec<_> = after
            .lines()
            .zip(before.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(before == after, "{variant:?}: public changed: {changed:?}");
        let own = tables_in(&pool, "flux_auth").await;
        assert_eq!(
            own,
            [
                "_sqlx_migrations",
                "auth_sessions",
                "known_devices",
                "one_time_tokens",
                "outbox",
                "refresh_tokens",
                "two_factor",
                "user_identities",
                "users"
            ],
            "{variant:?}"
        );

        // The service signs up and in beside FluxStudio's users, in its own tables.
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        settings.database_url = Some(SecretString::from(db.url.clone()));
        let app = TestApp::start(settings, dir, None, Backend::Postgres).await;
        let email = unique_email();
        app.signed_up(&email).await;
        let body: Value = app.logged_in(&email).await;
        let me = app.me(body["token"].as_str().unwrap()).await;
        assert_eq!(me.status(), StatusCode::OK);
        let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM public.users")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(theirs as usize, USERS.len(), "{variant:?}");
        let ours: i64 = sqlx::query_scalar("SELECT count(*) FROM flux_auth.users")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ours, 1, "{variant:?}");
        // Its events are where other tools read them.
        eventually(
            "login_success in public.security_events",
            MIRROR_PATIENCE,
            || async {
                let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM public.security_events WHERE event_type = 'login_success'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
                (n > 0).then_some(())
            },
        )
        .await;
        pool.close().await;
    }
}

/// Puts a migrated database back as flux-auth left it before it had a schema of its own: what
/// the migrations after 006 add taken away, every table of migrations 001-006 and the bookkeeping
/// in `public`.
async fn as_an_install_in_public(pool: &sqlx::PgPool) {
    sqlx::raw_sql(
        "DROP TABLE flux_auth.known_devices, flux_auth.outbox, flux_auth.one_time_tokens, \
         flux_auth.two_factor; \
         ALTER TABLE flux_auth.users DROP COLUMN settings, DROP COLUMN two_factor_enabled; \
         DELETE FROM flux_auth._sqlx_migrations WHERE version > 6; \
         ALTER TABLE flux_auth.users SET SCHEMA public; \
         ALTER TABLE flux_auth.auth_sessions SET SCHEMA public; \
         ALTER TABLE flux_auth.refresh_tokens SET SCHEMA public; \
         ALTER TABLE flux_auth.user_identities SET SCHEMA public; \
         ALTER TABLE flux_auth._sqlx_migrations SET SCHEMA public; \
         ALTER FUNCTION flux_auth.flux_auth_user_changed() SET SCHEMA public; \
         DROP SCHEMA flux_auth",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_install_in_public_moves_into_its_schema_with_every_user_and_session() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let email = unique_email();
    let signed_up = app.signed_up(&email).await;
    let session = app.logged_in(&email).await;
    let user_id = signed_up["user"]["id"].as_str().unwrap().to_owned();
    let pool = app.db.as_ref().unwrap().pool().await;
    let mut app = app;
    app.stop().await;
    as_an_install_in_public(&pool).await;
    assert!(tables_in(&pool, "flux_auth").await.is_empty());
    let versions_before: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM public._sqlx_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();

    let app = app.restart_with(|_| {}).await;
    // The service builds the log's hourly counts beside it at start, in the background.
    eventually(
        "the security log's rollups",
        Duration::from_secs(20),
        || async {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT to_regclass('public.security_event_rollups_state')::text",
            )
            .fetch_one(&pool)
            .await
            .ok()
            .flatten();
            state
        },
    )
    .await;
    assert_eq!(
        tables_in(&pool, "public").await,
        [
            "security_event_rollups",
            "security_event_rollups_state",
            "security_events"
        ],
        "only the security log (its events and their hourly counts) stays in public"
    );
    let versions_after: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM flux_auth._sqlx_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    // Its bookkeeping moved as it was; the migrations after 006 then ran in the schema.
    assert_eq!(versions_before, versions_after[..versions_before.len()]);
    assert!(versions_after.len() > versions_before.len());
    // The user, the password, the session and its refresh token all came along.
    let refreshed = app.refresh(session["refreshToken"].as_str().unwrap()).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let again = app.logged_in(&email).await;
    assert_eq!(again["user"]["id"], user_id.as_str());
    let me = app.me(again["token"].as_str().unwrap()).await;
    assert_eq!(me.status(), StatusCode::OK);
    // The change feed's triggers moved with the table and still announce changes.
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'flux_auth.users'::regclass \
         AND tgname LIKE 'users_%_notify'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 2);
    pool.close().await;
}

#[tokio::test]
async fn a_bookkeeping_table_mixing_flux_auths_migrations_with_others_is_refused() {
    let Some(app) = TestApp::try_spawn(Backend::Postgres).await else {
        return;
    };
    let pool = app.db.as_ref().unwrap().pool().await;
    let url = app.db.as_ref().unwrap().url.clone();
    let mut app = app;
    app.stop().await;
    as_an_install_in_public(&pool).await;
    sqlx::raw_sql(
        "INSERT INTO public._sqlx_migrations VALUES (99, 'someone else', now(), true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = run_cli(work.path(), &[("DATABASE_URL", &url)], &["migrate"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not recognisably one flux-auth install"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        tables_in(&pool, "public")
            .await
            .contains(&"users".to_owned())
    );
    assert!(tables_in(&pool, "flux_auth").await.is_empty());
    pool.close().await;
}
