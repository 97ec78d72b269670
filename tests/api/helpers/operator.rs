//! What an operator does to a running app's users: granting admin or changing a user's type with
//! the CLI or SQL, and waiting until an app that keeps users in memory has heard the change.

use super::{Backend, MIRROR_PATIENCE, TestApp, eventually, metric, run_cli_blocking};

/// Grants admin as an operator would: the CLI on the file store, SQL on Postgres.
pub async fn make_admin(app: &TestApp, email: &str) {
    set_user_type(app, email, "admin").await;
}

/// Changes a user's type as an operator would: the CLI on the file store, SQL on Postgres.
pub async fn set_user_type(app: &TestApp, email: &str, user_type: &'static str) {
    if app.backend == Backend::Postgres {
        let sql = format!("UPDATE users SET user_type = '{user_type}' WHERE email = $1");
        change_users_by_sql(app, &sql, email).await;
        return;
    }
    let data_dir = app.data_dir();
    let envs = [
        ("DATA_DIR", data_dir.display().to_string()),
        (
            "SECURITY_LOG_DIR",
            data_dir.join("cli-events").display().to_string(),
        ),
    ];
    let args = ["users", "set-type", email, user_type].map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        let args = args.each_ref().map(String::as_str);
        run_cli_blocking(&envs, &args)
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `sql` (one `$1`, bound to `value`) on the app's database behind its back, as an operator
/// would, and returns the rows it touched. When the app keeps users in memory, first waits until
/// it follows Postgres's announcements of user changes, and after the change until it has heard
/// everything committed before it: Postgres delivers notifications in commit order, so once a
/// heartbeat the app sent after the change has come back, so has the change's announcement.
pub async fn change_users_by_sql(app: &TestApp, sql: &str, value: &str) -> u64 {
    let cached = metric(app, "flux_auth_user_cache_following")
        .await
        .is_some();
    if cached {
        user_cache_following(app, 1.0).await;
    }
    let pool = app.db.as_ref().expect("a Postgres app").pool().await;
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(value)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    if cached {
        user_cache_caught_up(app).await;
    }
    done.rows_affected()
}

/// Waits until the app has heard every user change committed before this call (see
/// [`change_users_by_sql`]).
pub async fn user_cache_caught_up(app: &TestApp) {
    let sent = metric(app, "flux_auth_user_cache_heartbeats_sent_total")
        .await
        .expect("the app keeps users in memory");
    eventually(
        "a heartbeat sent after the change to come back",
        MIRROR_PATIENCE,
        || async {
            (metric(app, "flux_auth_user_cache_heartbeat_heard").await >= Some(sent + 1.0))
                .then_some(())
        },
    )
    .await;
}

/// Waits until `flux_auth_user_cache_following` is `expected` (1: users served from memory).
pub async fn user_cache_following(app: &TestApp, expected: f64) {
    eventually("the user cache's feed state", MIRROR_PATIENCE, || async {
        (metric(app, "flux_auth_user_cache_following").await == Some(expected)).then_some(())
    })
    .await;
}
