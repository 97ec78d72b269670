//! The Postgres pool after a network cut: idle connections broken by the cut cost a retry, not
//! an error, on reads and on refreshes.

use std::time::Duration;

use flux_auth::store::{RotateOutcome, SessionStore, Store, StoreError, UserStore};

use super::fixtures::*;
use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;

/// Waits until no connection of the store's pool is open on the server any more (through the cut
/// forwarder): its idle connections are all broken.
async fn until_backends_gone(db: &TestDb) {
    eventually(
        "the relayed connections to close",
        Duration::from_secs(20),
        || async {
            let pool = db.pool().await;
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'flux-auth'",
            )
            .bind(&db.name)
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            (open == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn postgres_idle_connections_broken_by_a_cut_cost_reads_and_refreshes_no_error() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let (store, user) =
        postgres_store_with_user(dir.path(), &via(&db.url, forwarder.addr()), 6).await;
    let base = now_ms();
    let new = new_session(&user.id, base);
    store
        .create_session(&new, 100, chrono::Duration::days(7))
        .await
        .unwrap();

    // Every idle connection breaks while nothing runs; the database is back at once. Reads and a
    // refresh (whose first statement is a read) go through: a broken connection is retried.
    fill_pool(store.as_ref(), 4).await;
    forwarder.cut();
    until_backends_gone(&db).await;
    forwarder.restore();
    assert_eq!(
        store.user_by_id(&user.id).await.unwrap().as_ref(),
        Some(&user)
    );
    let rotation = store
        .rotate_refresh_token_with_user(&rotate_request(
            &new.token.token_hash,
            &fresh_hash(),
            base + secs(1),
        ))
        .await
        .unwrap();
    assert!(
        matches!(rotation.outcome, RotateOutcome::Rotated { .. }),
        "{rotation:?}"
    );
    assert_eq!(rotation.user.as_ref(), Some(&user));
    store.ping().await.unwrap();

    // The same with a refresh first, then with a transaction first (BEGIN is retried: nothing
    // ran yet).
    let again = new_session(&user.id, base);
    store
        .create_session(&again, 100, chrono::Duration::days(7))
        .await
        .unwrap();
    fill_pool(store.as_ref(), 4).await;
    forwarder.cut();
    until_backends_gone(&db).await;
    forwarder.restore();
    let rotation = store
        .rotate_refresh_token(&rotate_request(
            &again.token.token_hash,
            &fresh_hash(),
            base + secs(1),
        ))
        .await
        .unwrap();
    assert!(
        matches!(rotation, RotateOutcome::Rotated { .. }),
        "{rotation:?}"
    );
    fill_pool(store.as_ref(), 4).await;
    forwarder.cut();
    until_backends_gone(&db).await;
    forwarder.restore();
    let evicted = store
        .create_session(&new_session(&user.id, base), 100, chrono::Duration::days(7))
        .await
        .unwrap();
    assert!(evicted.is_empty());

    // A write first (not repeated: it may have been applied) fails at most once, as 503; the
    // failure makes every older connection suspect, so nothing after it fails.
    fill_pool(store.as_ref(), 4).await;
    forwarder.cut();
    until_backends_gone(&db).await;
    forwarder.restore();
    let first = store.set_last_login(&user.id, base + secs(3)).await;
    assert!(
        matches!(first, Ok(()) | Err(StoreError::Unavailable(_))),
        "{first:?}"
    );
    for _ in 0..4 {
        store
            .set_last_login(&user.id, base + secs(3))
            .await
            .unwrap();
        assert_eq!(
            store
                .revoke_all_sessions("nobody", base, "test")
                .await
                .unwrap(),
            0
        );
    }
    let user_now = store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(user_now.last_login, Some(base + secs(3)));
}
