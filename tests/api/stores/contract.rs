//! The `Store` contract, one scenario through the library's trait run on both backends: users,
//! sessions and refresh rotation, imports, a login's session with its `last_login`, and eviction
//! past the session cap, each giving the same answers on the JSON files and on Postgres.

use chrono::{DateTime, Utc};
use flux_auth::domain::{UserRecord, UserType};
use flux_auth::store::{
    ImportOutcome, InvalidReason, NewSession, RotateOutcome, RotateRequest, SessionRecord, Store,
    StoreError,
};
use futures::future::join_all;
use uuid::Uuid;

use super::fixtures::*;
use crate::helpers::*;

#[tokio::test]
async fn store_scenario_behaves_identically_on_both_backends() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let Some((store, settings, _db)) = open_store(backend, dir.path()).await else {
            continue;
        };
        let base = now_ms();
        let ann_id = Uuid::new_v4().to_string();
        users_scenario(store.as_ref(), &ann_id, base).await;
        sessions_scenario(store.as_ref(), &ann_id, base).await;
        import_scenario(store.as_ref(), base).await;

        // Everything acknowledged is there when the store is opened again.
        let reopened = open_ready(&settings).await;
        let ann = reopened.user_by_id(&ann_id).await.unwrap().unwrap();
        assert_eq!(ann.user_type, UserType::Admin, "{backend:?}");
        assert_eq!(ann.last_login, Some(base + secs(1)), "{backend:?}");
        assert!(
            reopened
                .user_by_id("1760390026607")
                .await
                .unwrap()
                .is_some(),
            "{backend:?}"
        );
        assert!(
            reopened
                .live_sessions(&ann_id, base + secs(60), chrono::Duration::days(7))
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}"
        );
    }
}

/// A password login's session carries the user's `last_login` in the same write, and a repeated
/// `create_session` (what a retry after a lost connection sends) stores nothing twice and
/// revokes nothing more.
#[tokio::test]
async fn create_session_records_the_login_and_a_repeat_changes_nothing_on_both_backends() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let Some((store, _settings, _db)) = open_store(backend, dir.path()).await else {
            continue;
        };
        let (base, idle, cap) = (now_ms(), chrono::Duration::days(7), 2);
        let ann = user_record(&Uuid::new_v4().to_string(), "ann@example.com", base);
        store.insert_user(&ann).await.unwrap();
        let last_login = || async {
            let user = store.user_by_id(&ann.id).await.unwrap().unwrap();
            user.last_login
        };

        // What `create_session` evicted; `NewSession`s are cloned in, like `live` below.
        let evicted = |new: NewSession| {
            let store = store.clone();
            async move { store.create_session(&new, cap, idle).await.unwrap() }
        };
        let none = Vec::<Uuid>::new();

        let login = NewSession {
            records_login: true,
            ..new_session(&ann.id, base)
        };
        assert_eq!(evicted(login.clone()).await, none, "{backend:?}");
        assert_eq!(last_login().await, Some(base), "{backend:?}");
        let other = new_session(&ann.id, base + secs(1));
        assert_eq!(evicted(other.clone()).await, none, "{backend:?}");
        assert_eq!(last_login().await, Some(base), "{backend:?}: not a login");

        // The repeat: no second row, no eviction (the cap of two is exactly full).
        assert_eq!(evicted(login.clone()).await, none, "{backend:?}");
        let live = |at| {
            let store = store.clone();
            let id = ann.id.clone();
            async move { store.live_sessions(&id, at, idle).await.unwrap() }
        };
        assert_eq!(
            live(base + secs(2)).await,
            vec![other.session.clone(), login.session.clone()],
            "{backend:?}"
        );

        // A third evicts the oldest; repeating it evicts nothing more, and never itself.
        let third = new_session(&ann.id, base + secs(2));
        assert_eq!(
            evicted(third.clone()).await,
            vec![login.session.id],
            "{backend:?}"
        );
        assert_eq!(evicted(third.clone()).await, none, "{backend:?}");
        assert_eq!(
            live(base + secs(3)).await,
            vec![third.session.clone(), other.session.clone()],
            "{backend:?}"
        );
        let found = store
            .session_by_token_hash(&third.token.token_hash)
            .await
            .unwrap();
        assert_eq!(
            found.map(|(session, token_id)| (session.id, token_id)),
            Some((third.session.id, third.token.id)),
            "{backend:?}"
        );
    }
}

async fn users_scenario(store: &dyn Store, ann_id: &str, base: DateTime<Utc>) {
    let kind = store.kind();
    let ann = user_record(ann_id, "ann@example.com", base);
    store.insert_user(&ann).await.unwrap();
    let twin = user_record(&Uuid::new_v4().to_string(), "ann@example.com", base);
    let conflict = store.insert_user(&twin).await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict("email"))),
        "{kind}: {conflict:?}"
    );
    assert_eq!(store.user_by_id(ann_id).await.unwrap(), Some(ann.clone()));
    assert_eq!(
        store
            .user_by_email(&email("ann@example.com"))
            .await
            .unwrap(),
        Some(ann.clone()),
        "{kind}"
    );
    assert_eq!(store.user_by_id(&twin.id).await.unwrap(), None, "{kind}");
    assert_eq!(
        store
            .user_by_email(&email("nobody@example.com"))
            .await
            .unwrap(),
        None
    );

    let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$bmV3aGFzaA";
    store.set_password_hash(ann_id, new_hash).await.unwrap();
    let stored = store.user_by_id(ann_id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash.as_deref(), Some(new_hash), "{kind}");
    assert!(
        matches!(
            store.set_password_hash("no-such-id", new_hash).await,
            Err(StoreError::NotFound)
        ),
        "{kind}"
    );
    store.set_last_login(ann_id, base + secs(1)).await.unwrap();

    let promoted = store
        .set_user_type(&email("ann@example.com"), UserType::Admin)
        .await
        .unwrap();
    // `updated_at` is the store's own clock on Postgres (the password and type changes above set
    // it to the database's now()); the file store leaves it to the flows that pass a time.
    assert!(promoted.updated_at >= ann.updated_at, "{kind}");
    assert_eq!(
        promoted,
        UserRecord {
            user_type: UserType::Admin,
            password_hash: Some(new_hash.into()),
            last_login: Some(base + secs(1)),
            updated_at: promoted.updated_at,
            ..ann.clone()
        },
        "{kind}"
    );
    assert_eq!(
        store
            .user_by_email(&email("ann@example.com"))
            .await
            .unwrap(),
        Some(promoted),
        "{kind}"
    );
    assert!(
        matches!(
            store
                .set_user_type(&email("nobody@example.com"), UserType::Admin)
                .await,
            Err(StoreError::NotFound)
        ),
        "{kind}"
    );

    // Concurrent signups of one email: exactly one account. Of different emails: none lost.
    let same: Vec<UserRecord> = (0..12)
        .map(|_| user_record(&Uuid::new_v4().to_string(), "race@example.com", base))
        .collect();
    let results = join_all(same.iter().map(|u| store.insert_user(u))).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{kind}: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::Conflict("email")))),
        "{kind}: {results:?}"
    );
    let many: Vec<UserRecord> = (0..12)
        .map(|i| {
            user_record(
                &Uuid::new_v4().to_string(),
                &format!("many-{i}@example.com"),
                base,
            )
        })
        .collect();
    for result in join_all(many.iter().map(|u| store.insert_user(u))).await {
        result.unwrap();
    }
    for user in &many {
        assert_eq!(
            store
                .user_by_email(&email(&user.email))
                .await
                .unwrap()
                .as_ref(),
            Some(user),
            "{kind}"
        );
    }
}

async fn sessions_scenario(store: &dyn Store, ann_id: &str, base: DateTime<Utc>) {
    let kind = store.kind();
    let idle = chrono::Duration::days(7);
    let cap = 3;

    // Four sessions under a cap of three: the fourth evicts the oldest.
    let mut sessions: Vec<NewSession> = Vec::new();
    for i in 0..4 {
        let new = new_session(ann_id, base + secs(i));
        let evicted = store.create_session(&new, cap, idle).await.unwrap();
        let expected = if i < 3 {
            vec![]
        } else {
            vec![sessions[0].session.id]
        };
        assert_eq!(evicted, expected, "{kind}: session {i}");
        sessions.push(new);
    }
    let [s0, s1, s2, s3] = [0, 1, 2, 3].map(|i| sessions[i].clone());
    let evicted = store.session(s0.session.id).await.unwrap().unwrap();
    assert_eq!(evicted.revoked_at, Some(base + secs(3)), "{kind}");
    assert_eq!(
        evicted.revoked_reason.as_deref(),
        Some("session_limit"),
        "{kind}"
    );
    assert_eq!(
        store
            .live_sessions(ann_id, base + secs(4), idle)
            .await
            .unwrap(),
        vec![s3.session.clone(), s2.session.clone(), s1.session.clone()],
        "{kind}: newest first"
    );

    // Rotation of s1: Rotated, then Grace (same successor) inside the window, Superseded for a
    // different successor, then ReuseDetected after the window, which revokes the family.
    let rotated_at = base + secs(10);
    let successor_id = Uuid::now_v7();
    let successor_hash = fresh_hash();
    let request = RotateRequest {
        presented_hash: s1.token.token_hash.clone(),
        successor_id,
        successor_hash: successor_hash.clone(),
        now: rotated_at,
        grace: secs(10),
        idle_ttl: idle,
        fingerprint: FINGERPRINT.into(),
        ip_address: "127.0.0.2".into(),
        reject_on_fingerprint_mismatch: false,
    };
    let mut rotated_session = SessionRecord {
        last_used_at: rotated_at,
        ip_address: "127.0.0.2".into(),
        ..s1.session.clone()
    };
    assert_eq!(
        store.rotate_refresh_token(&request).await.unwrap(),
        RotateOutcome::Rotated {
            session: rotated_session.clone(),
            old_token_id: s1.token.id,
            fingerprint_matched: true,
        },
        "{kind}"
    );
    // The exact request again, as a retry after a lost connection sends it: the same successor.
    assert_eq!(
        store.rotate_refresh_token(&request).await.unwrap(),
        RotateOutcome::Grace {
            session: rotated_session.clone(),
            old_token_id: s1.token.id,
            fingerprint_matched: true,
        },
        "{kind}"
    );
    let in_grace = RotateRequest {
        now: rotated_at + secs(5),
        ..request.clone()
    };
    assert_eq!(
        store.rotate_refresh_token(&in_grace).await.unwrap(),
        RotateOutcome::Grace {
            session: rotated_session.clone(),
            old_token_id: s1.token.id,
            fingerprint_matched: true,
        },
        "{kind}"
    );
    let other_successor = RotateRequest {
        successor_hash: fresh_hash(),
        successor_id: Uuid::now_v7(),
        ..in_grace.clone()
    };
    assert_eq!(
        store.rotate_refresh_token(&other_successor).await.unwrap(),
        RotateOutcome::Invalid {
            reason: InvalidReason::Superseded,
            session: Some(rotated_session.clone()),
            token_id: Some(s1.token.id),
        },
        "{kind}"
    );
    assert_eq!(
        store.session_by_token_hash(&successor_hash).await.unwrap(),
        Some((rotated_session.clone(), successor_id)),
        "{kind}"
    );
    let replay = RotateRequest {
        now: rotated_at + secs(11),
        ..request.clone()
    };
    rotated_session.revoked_at = Some(replay.now);
    rotated_session.revoked_reason = Some("token_reuse".into());
    assert_eq!(
        store.rotate_refresh_token(&replay).await.unwrap(),
        RotateOutcome::ReuseDetected {
            session: rotated_session.clone(),
            token_id: s1.token.id,
        },
        "{kind}"
    );
    let successor_after_reuse = RotateRequest {
        presented_hash: successor_hash.clone(),
        successor_hash: fresh_hash(),
        successor_id: Uuid::now_v7(),
        now: rotated_at + secs(12),
        ..request.clone()
    };
    assert_eq!(
        store
            .rotate_refresh_token(&successor_after_reuse)
            .await
            .unwrap(),
        RotateOutcome::Invalid {
            reason: InvalidReason::Revoked,
            session: Some(rotated_session.clone()),
            token_id: Some(successor_id),
        },
        "{kind}: the whole family is revoked"
    );
    let unknown = RotateRequest {
        presented_hash: fresh_hash(),
        ..request.clone()
    };
    assert_eq!(
        store.rotate_refresh_token(&unknown).await.unwrap(),
        RotateOutcome::Invalid {
            reason: InvalidReason::Unknown,
            session: None,
            token_id: None,
        },
        "{kind}"
    );

    // A different device under the reject policy revokes s2.
    let stranger = RotateRequest {
        presented_hash: s2.token.token_hash.clone(),
        fingerprint: "f".repeat(64),
        reject_on_fingerprint_mismatch: true,
        now: base + secs(20),
        ..request.clone()
    };
    let rejected = store.rotate_refresh_token(&stranger).await.unwrap();
    assert!(
        matches!(&rejected, RotateOutcome::FingerprintRejected { session, token_id }
            if session.id == s2.session.id && *token_id == s2.token.id
                && session.revoked_reason.as_deref() == Some("fingerprint_mismatch")),
        "{kind}: {rejected:?}"
    );

    // Revoking one session, then all of them.
    let (s4, s5) = (
        new_session(ann_id, base + secs(21)),
        new_session(ann_id, base + secs(22)),
    );
    for new in [&s4, &s5] {
        assert_eq!(
            store.create_session(new, cap, idle).await.unwrap(),
            Vec::<Uuid>::new(),
            "{kind}"
        );
    }
    let at = base + secs(30);
    assert!(
        !store
            .revoke_session("someone-else", s3.session.id, at, "user_revoked")
            .await
            .unwrap(),
        "{kind}: not another user's session"
    );
    assert!(
        store
            .revoke_session(ann_id, s3.session.id, at, "user_revoked")
            .await
            .unwrap(),
        "{kind}"
    );
    assert!(
        !store
            .revoke_session(ann_id, s3.session.id, at, "user_revoked")
            .await
            .unwrap(),
        "{kind}: already revoked"
    );
    assert_eq!(
        store
            .live_sessions(ann_id, at, idle)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![s5.session.id, s4.session.id],
        "{kind}"
    );
    assert_eq!(
        store
            .revoke_all_sessions(ann_id, at, "logout_all")
            .await
            .unwrap(),
        2,
        "{kind}"
    );
    assert_eq!(
        store
            .revoke_all_sessions(ann_id, at, "logout_all")
            .await
            .unwrap(),
        0,
        "{kind}"
    );
    assert!(
        store
            .live_sessions(ann_id, at, idle)
            .await
            .unwrap()
            .is_empty(),
        "{kind}"
    );
    let ended = store.session(s4.session.id).await.unwrap().unwrap();
    assert_eq!(
        ended.revoked_reason.as_deref(),
        Some("logout_all"),
        "{kind}"
    );
}

async fn import_scenario(store: &dyn Store, base: DateTime<Utc>) {
    let kind = store.kind();
    let legacy = UserRecord {
        password_hash: Some("$2a$10$abcdefghijklmnopqrstuuN0aLbuh5P0rDMFuNIkvQ0H2T4y1lTK6".into()),
        user_type: UserType::Designer,
        ..user_record("1760390026607", "legacy@example.com", base)
    };
    assert_eq!(
        store.import_user(&legacy).await.unwrap(),
        ImportOutcome::Inserted,
        "{kind}"
    );
    assert_eq!(
        store.import_user(&legacy).await.unwrap(),
        ImportOutcome::Skipped,
        "{kind}"
    );
    let same_email = user_record("1760390026608", "legacy@example.com", base);
    assert_eq!(
        store.import_user(&same_email).await.unwrap(),
        ImportOutcome::Skipped,
        "{kind}"
    );
    let same_id = user_record("1760390026607", "other@example.com", base);
    assert_eq!(
        store.import_user(&same_id).await.unwrap(),
        ImportOutcome::Skipped,
        "{kind}"
    );
    assert_eq!(
        store.user_by_id("1760390026607").await.unwrap(),
        Some(legacy),
        "{kind}"
    );
    assert_eq!(store.user_by_id("1760390026608").await.unwrap(), None);
    assert_eq!(
        store
            .user_by_email(&email("other@example.com"))
            .await
            .unwrap(),
        None
    );
}

/// What a sign-in runs once its events are kept: the user's oldest live sessions past the cap are
/// revoked, never the one it keeps (its own, whatever its age among them); a repeat revokes
/// nothing more. A session created with no cap evicts nothing.
#[tokio::test]
async fn evicting_past_the_cap_keeps_the_given_session_and_a_repeat_changes_nothing_on_both_backends()
 {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let Some((store, _settings, _db)) = open_store(backend, dir.path()).await else {
            continue;
        };
        let base = now_ms();
        let idle = chrono::Duration::days(7);
        let user = user_record(&Uuid::new_v4().to_string(), &unique_email(), base);
        store.insert_user(&user).await.unwrap();
        let sessions: Vec<NewSession> = (0..4)
            .map(|i| new_session(&user.id, base + secs(i)))
            .collect();
        for new in &sessions {
            let evicted = store.create_session(new, usize::MAX, idle).await.unwrap();
            assert!(evicted.is_empty(), "{backend:?}: no cap, no eviction");
        }
        let [s0, s1, s2, s3] = [0, 1, 2, 3].map(|i| sessions[i].session.clone());
        let now = base + secs(10);
        let mut evicted = store
            .evict_sessions(&user.id, s0.id, 2, idle, now)
            .await
            .unwrap();
        evicted.sort();
        let mut expected = vec![s1.id, s2.id];
        expected.sort();
        assert_eq!(evicted, expected, "{backend:?}");
        let again = store
            .evict_sessions(&user.id, s0.id, 2, idle, now)
            .await
            .unwrap();
        assert!(again.is_empty(), "{backend:?}: {again:?}");
        assert_eq!(
            store.live_sessions(&user.id, now, idle).await.unwrap(),
            vec![s3, s0],
            "{backend:?}: newest first"
        );
        let revoked = store.session(s1.id).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_reason.as_deref(), Some("session_limit"));
        assert_eq!(revoked.revoked_at, Some(now), "{backend:?}");
    }
}
