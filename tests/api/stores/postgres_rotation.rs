//! Refresh rotation on Postgres: one read, then a compare-and-swap write; a rotation that loses a
//! race to another rotation or to a logout-all is decided again, so one token never gets two
//! live successors.

use std::time::Duration;

use flux_auth::store::{self, InvalidReason, RotateOutcome, RotateRequest, SessionStore};
use futures::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::fixtures::*;
use crate::helpers::*;

/// `(id, token_hash, rotated, replaced_by)` of a session's tokens, oldest first.
async fn family_of(db: &TestDb, session_id: Uuid) -> Vec<(Uuid, String, bool, Option<Uuid>)> {
    let pool = db.pool().await;
    let rows = sqlx::query_as(
        "SELECT id, token_hash::text, rotated_at IS NOT NULL, replaced_by FROM refresh_tokens \
         WHERE session_id = $1 ORDER BY created_at, rotated_at NULLS LAST",
    )
    .bind(session_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// Holds the session's row lock in a transaction of its own until `release`, so that rotations
/// started meanwhile read, decide, and then wait inside their compare-and-swap write.
struct SessionLock {
    conn: sqlx::PgConnection,
    db_name: String,
}

impl SessionLock {
    async fn take(db: &TestDb, session_id: Uuid) -> SessionLock {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT 1 FROM auth_sessions WHERE id = $1 FOR UPDATE")
            .bind(session_id)
            .execute(&mut conn)
            .await
            .unwrap();
        SessionLock {
            conn,
            db_name: db.name.clone(),
        }
    }

    /// Waits until `n` other backends of this database wait for a lock: the rotations have read
    /// their state and are blocked in their writes. Observed, not timed. Returns early when one
    /// of `tasks` ended (it failed: the caller's join shows how).
    async fn until_waiting<T>(&mut self, n: i64, tasks: &[JoinHandle<T>]) {
        let db_name = self.db_name.clone();
        let conn = &mut self.conn;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tasks.iter().any(JoinHandle::is_finished) {
                return;
            }
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&db_name)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            if waiting >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} of {n} rotations waiting"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Commits, after running `statement` (bound to the session id) under the lock.
    async fn release_after(mut self, statement: Option<(&'static str, Uuid)>) {
        if let Some((sql, session_id)) = statement {
            sqlx::query(sql)
                .bind(session_id)
                .execute(&mut self.conn)
                .await
                .unwrap();
        }
        sqlx::query("COMMIT").execute(&mut self.conn).await.unwrap();
    }
}

#[tokio::test]
async fn postgres_rotations_that_lose_the_race_take_the_winners_successor() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let (store, user) = postgres_store_with_user(dir.path(), &db.url, 8).await;
    let base = now_ms();
    let new = new_session(&user.id, base);
    store
        .create_session(&new, 10, chrono::Duration::days(7))
        .await
        .unwrap();
    let successor_hash = fresh_hash();
    let requests: Vec<RotateRequest> = (0..3)
        .map(|_| rotate_request(&new.token.token_hash, &successor_hash, base + secs(1)))
        .collect();

    // All three read the token unrotated and decide to rotate it; all three then wait for the
    // session row, and only one write can apply.
    fill_pool(store.as_ref(), 3).await;
    let mut lock = SessionLock::take(&db, new.session.id).await;
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|request| {
            let store = store.clone();
            tokio::spawn(async move { store.rotate_refresh_token_with_user(&request).await })
        })
        .collect();
    lock.until_waiting(3, &tasks).await;
    lock.release_after(None).await;
    let rotations: Vec<store::Rotation> = join_all(tasks)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();

    let winners: Vec<usize> = (0..3)
        .filter(|&i| matches!(rotations[i].outcome, RotateOutcome::Rotated { .. }))
        .collect();
    assert_eq!(winners.len(), 1, "{rotations:?}");
    let winner_id = requests[winners[0]].successor_id;
    for (i, rotation) in rotations.iter().enumerate() {
        assert_eq!(rotation.user.as_ref(), Some(&user), "the user comes along");
        if i == winners[0] {
            continue;
        }
        assert!(
            matches!(&rotation.outcome, RotateOutcome::Grace { old_token_id, fingerprint_matched: true, .. }
                if *old_token_id == new.token.id),
            "{rotation:?}"
        );
        assert_eq!(
            rotation.stored_successor_id,
            Some(winner_id),
            "the stored child"
        );
    }
    let family = family_of(&db, new.session.id).await;
    assert_eq!(
        family,
        vec![
            (
                new.token.id,
                new.token.token_hash.clone(),
                true,
                Some(winner_id)
            ),
            (winner_id, successor_hash.clone(), false, None),
        ],
        "exactly one rotation stored"
    );
    let session = store.session(new.session.id).await.unwrap().unwrap();
    assert_eq!(session.last_used_at, base + secs(1));
    assert_eq!(session.ip_address, "127.0.0.3");
    assert_eq!(session.revoked_at, None);
}

#[tokio::test]
async fn postgres_rotation_that_loses_to_a_logout_all_stores_no_successor() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let (store, user) = postgres_store_with_user(dir.path(), &db.url, 4).await;
    let base = now_ms();
    let new = new_session(&user.id, base);
    store
        .create_session(&new, 10, chrono::Duration::days(7))
        .await
        .unwrap();
    let request = rotate_request(&new.token.token_hash, &fresh_hash(), base + secs(1));

    // The rotation reads the session live and decides to rotate; the logout commits first.
    let mut lock = SessionLock::take(&db, new.session.id).await;
    let task = {
        let (store, request) = (store.clone(), request.clone());
        tokio::spawn(async move { store.rotate_refresh_token_with_user(&request).await })
    };
    lock.until_waiting(1, std::slice::from_ref(&task)).await;
    lock.release_after(Some((
        "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = 'logout_all' WHERE id = $1",
        new.session.id,
    )))
    .await;
    let rotation = task.await.unwrap().unwrap();
    assert!(
        matches!(
            &rotation.outcome,
            RotateOutcome::Invalid {
                reason: InvalidReason::Revoked,
                token_id: Some(id),
                ..
            } if *id == new.token.id
        ),
        "{rotation:?}"
    );
    assert_eq!(rotation.user, None);
    assert_eq!(
        family_of(&db, new.session.id).await,
        vec![(new.token.id, new.token.token_hash.clone(), false, None)],
        "no successor, the token not rotated"
    );
    let session = store.session(new.session.id).await.unwrap().unwrap();
    assert_eq!(session.last_used_at, base, "not touched");
    assert_eq!(session.revoked_reason.as_deref(), Some("logout_all"));
}

#[tokio::test]
async fn postgres_many_concurrent_refreshes_of_one_token_get_one_successor() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let (store, user) = postgres_store_with_user(dir.path(), &db.url, 16).await;
    let base = now_ms();
    for round in 0..10 {
        let new = new_session(&user.id, base);
        store
            .create_session(&new, 100, chrono::Duration::days(7))
            .await
            .unwrap();
        let successor_hash = fresh_hash();
        let requests: Vec<RotateRequest> = (0..24)
            .map(|_| rotate_request(&new.token.token_hash, &successor_hash, base + secs(1)))
            .collect();
        let rotations: Vec<store::Rotation> = join_all(requests.iter().cloned().map(|request| {
            let store = store.clone();
            tokio::spawn(async move { store.rotate_refresh_token_with_user(&request).await })
        }))
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();
        let winners: Vec<usize> = (0..requests.len())
            .filter(|&i| matches!(rotations[i].outcome, RotateOutcome::Rotated { .. }))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {rotations:?}");
        let winner_id = requests[winners[0]].successor_id;
        for rotation in &rotations {
            assert!(
                matches!(
                    rotation.outcome,
                    RotateOutcome::Rotated { .. } | RotateOutcome::Grace { .. }
                ),
                "round {round}: {rotation:?}"
            );
            assert_eq!(rotation.user.as_ref(), Some(&user), "round {round}");
            if matches!(rotation.outcome, RotateOutcome::Grace { .. }) {
                assert_eq!(
                    rotation.stored_successor_id,
                    Some(winner_id),
                    "round {round}"
                );
            }
        }
        let family = family_of(&db, new.session.id).await;
        assert_eq!(family.len(), 2, "round {round}: {family:?}");
        assert_eq!(
            family[1],
            (winner_id, successor_hash.clone(), false, None),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn postgres_refresh_racing_a_logout_all_never_leaves_a_live_successor() {
    if !postgres_available().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create().await;
    let (store, user) = postgres_store_with_user(dir.path(), &db.url, 8).await;
    let base = now_ms();
    for round in 0..20 {
        let new = new_session(&user.id, base);
        store
            .create_session(&new, 100, chrono::Duration::days(7))
            .await
            .unwrap();
        let successor_hash = fresh_hash();
        let request = rotate_request(&new.token.token_hash, &successor_hash, base + secs(1));
        let rotate = {
            let (store, request) = (store.clone(), request.clone());
            tokio::spawn(async move { store.rotate_refresh_token_with_user(&request).await })
        };
        let logout = {
            let (store, user_id) = (store.clone(), user.id.clone());
            tokio::spawn(async move {
                store
                    .revoke_all_sessions(&user_id, base + secs(1), "logout_all")
                    .await
            })
        };
        let (rotation, revoked) = if round % 2 == 0 {
            (rotate.await, logout.await)
        } else {
            let revoked = logout.await;
            (rotate.await, revoked)
        };
        let (rotation, revoked) = (rotation.unwrap().unwrap(), revoked.unwrap().unwrap());
        assert_eq!(revoked, 1, "round {round}");
        let family = family_of(&db, new.session.id).await;
        let newest = match &rotation.outcome {
            RotateOutcome::Rotated { .. } => {
                assert_eq!(family.len(), 2, "round {round}: {family:?}");
                successor_hash.clone()
            }
            RotateOutcome::Invalid {
                reason: InvalidReason::Revoked,
                ..
            } => {
                assert_eq!(
                    family,
                    vec![(new.token.id, new.token.token_hash.clone(), false, None)],
                    "round {round}: no successor after the logout"
                );
                new.token.token_hash.clone()
            }
            other => panic!("round {round}: {other:?}"),
        };
        // Whichever came first, the family is dead now.
        let next = rotate_request(&newest, &fresh_hash(), base + secs(2));
        assert!(
            matches!(
                store.rotate_refresh_token(&next).await.unwrap(),
                RotateOutcome::Invalid {
                    reason: InvalidReason::Revoked,
                    ..
                }
            ),
            "round {round}"
        );
    }
}
