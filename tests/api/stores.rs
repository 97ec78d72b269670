//! Stores and resilience: one store scenario through the `Store` trait on both backends, the old
//! service's `users.json` shape, `kill -9` durability of the file store, Postgres unreachable at
//! start and cut under load (through a `Forwarder`), and the `import-users` / `users set-type` CLI.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flux_auth::app::App;
use flux_auth::auth::refresh::hash_token;
use flux_auth::config::{Settings, StorageKind, Switch};
use flux_auth::domain::{UserRecord, UserType};
use flux_auth::metrics::PoolMetrics;
use flux_auth::store::postgres::PgStore;
use flux_auth::store::{
    self, ImportOutcome, InvalidReason, NewSession, RotateOutcome, RotateRequest, SessionRecord,
    SessionStore, Store, StoreError, TokenRecord, UserStore,
};
use futures::future::join_all;
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::forwarder::{Forwarder, postgres_addr, via};
use crate::helpers::*;

// ---------------------------------------------------------------------------------------------
// One scenario, both backends, through the library's `Store` trait.

const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Now, at whole milliseconds: the precision both backends keep.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn fresh_hash() -> String {
    hash_token(&Uuid::new_v4().to_string())
}

fn user_record(id: &str, email: &str, created_at: DateTime<Utc>) -> UserRecord {
    UserRecord {
        id: id.to_owned(),
        email: email.to_owned(),
        name: "Ann Lee".into(),
        user_type: UserType::Client,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into()),
        google_id: None,
        email_verified: false,
        avatar: None,
        created_at,
        last_login: None,
        extra: serde_json::Map::new(),
    }
}

fn new_session(user_id: &str, created_at: DateTime<Utc>) -> NewSession {
    let session_id = Uuid::new_v4();
    NewSession {
        session: SessionRecord {
            id: session_id,
            user_id: user_id.to_owned(),
            device_name: "Chrome on macOS".into(),
            ip_address: "127.0.0.1".into(),
            user_agent: Some(UA.into()),
            fingerprint: FINGERPRINT.into(),
            created_at,
            last_used_at: created_at,
            expires_at: created_at + chrono::Duration::days(30),
            revoked_at: None,
            revoked_reason: None,
        },
        token: TokenRecord {
            id: Uuid::now_v7(),
            session_id,
            token_hash: fresh_hash(),
            created_at,
            rotated_at: None,
            replaced_by: None,
        },
        records_login: false,
    }
}

/// The store of `backend` in a fresh folder or database, ready (migrated) to use. The folder or
/// database is returned so the test keeps it alive, and so the store can be opened again.
async fn open_store(
    backend: Backend,
    dir: &Path,
) -> Option<(Arc<dyn Store>, Settings, Option<TestDb>)> {
    let mut settings = test_settings(dir);
    let db = match backend {
        Backend::File => {
            settings.storage = Some(StorageKind::File);
            None
        }
        Backend::Postgres => {
            if !postgres_available().await {
                return None;
            }
            let db = TestDb::create().await;
            settings.storage = Some(StorageKind::Postgres);
            settings.database_url = Some(SecretString::from(db.url.clone()));
            Some(db)
        }
    };
    let store = open_ready(&settings).await;
    Some((store, settings, db))
}

async fn open_ready(settings: &Settings) -> Arc<dyn Store> {
    let store = store::open(settings, &flux_auth::metrics::Metrics::default())
        .await
        .expect("store opens")
        .store;
    eventually("the store to be ready", Duration::from_secs(20), || {
        let store = store.clone();
        async move { store.ping().await.ok() }
    })
    .await;
    store
}

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
    assert_eq!(
        promoted,
        UserRecord {
            user_type: UserType::Admin,
            password_hash: Some(new_hash.into()),
            last_login: Some(base + secs(1)),
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

// ---------------------------------------------------------------------------------------------
// The old service's users.json.

/// A bcrypt hash the way the old service made it (of the trimmed, HTML-escaped password).
/// An address as the service parses it, for the store's lookups.
fn email(address: &str) -> flux_auth::domain::Email {
    flux_auth::domain::Email::parse(address).unwrap()
}

pub(crate) fn legacy_bcrypt(password: &str) -> String {
    let escaped = flux_auth::auth::passwords::legacy_escape(password.trim());
    bcrypt::hash(escaped, 4).unwrap()
}

/// Three users as the old service wrote them: timestamp-string ids, one numeric id, bcrypt
/// hashes under `password`, and fields this service does not know.
fn old_users_json(hash: &str) -> Value {
    json!({ "users": [
        { "id": "1760390026607", "email": "ann@example.com", "name": "Ann Lee", "userType": "designer",
          "password": hash, "createdAt": "2025-10-13T21:13:46.607Z",
          "preferences": { "theme": "dark", "notifications": { "email": true, "push": false } },
          "onboardingComplete": true },
        { "id": 1760390099000_u64, "email": "Bob@Example.com", "name": "Bob", "password": hash,
          "createdAt": "2025-10-13T21:14:59.000Z", "projects": ["p-1", "p-2"] },
        { "id": "1760390111222", "email": "carol@example.com", "name": "Carol", "userType": "client",
          "googleId": "109876543210", "emailVerified": true, "avatar": "https://example.com/c.png",
          "createdAt": "2025-10-13T21:15:11.222Z", "lastLogin": "2025-10-20T08:00:00.000Z",
          "preferences": { "theme": "light" } }
    ]})
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn user_in<'a>(file: &'a Value, id: &str) -> &'a Value {
    file["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| json_id(&u["id"]) == id)
        .unwrap_or_else(|| panic!("user {id} missing from {file}"))
}

/// An id as the old file held it: a string or a number.
fn json_id(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn file_store_reads_and_writes_the_old_users_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::File);
    let original = old_users_json(&legacy_bcrypt(PASSWORD));
    std::fs::create_dir_all(&settings.data_dir).unwrap();
    let users_path = settings.data_dir.join("users.json");
    std::fs::write(&users_path, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    let mut app = TestApp::start(settings, dir, None, Backend::File).await;

    for (email, id) in [
        ("ann@example.com", "1760390026607"),
        ("BOB@example.com", "1760390099000"),
    ] {
        let response = app.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{email}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], id, "{email}");
    }
    let ann = app.login("ann@example.com", PASSWORD).await;
    let ann: Value = ann.json().await.unwrap();
    assert_eq!(ann["user"]["userType"], "designer");
    let carol = app.login("carol@example.com", PASSWORD).await;
    assert_eq!(carol.status(), StatusCode::UNAUTHORIZED, "Google-only user");
    let new_user = app.signed_up("dave@example.com").await;
    let rehashed = app
        .events_where(|e| {
            e.iter()
                .filter(|e| e.event_type.as_str() == "password_rehashed")
                .count()
                == 2
        })
        .await;
    assert_eq!(
        rehashed
            .iter()
            .filter(|e| e.event_type.as_str() == "password_rehashed")
            .count(),
        2,
        "bcrypt hashes are upgraded once each"
    );
    app.stop().await;

    let written = read_json(&users_path);
    let users = written["users"].as_array().unwrap();
    assert_eq!(users.len(), 4, "{written}");
    let ids: Vec<String> = users.iter().map(|u| json_id(&u["id"])).collect();
    assert_eq!(
        ids,
        [
            "1760390026607",
            "1760390099000",
            "1760390111222",
            new_user["user"]["id"].as_str().unwrap()
        ]
    );

    let (ann_before, ann_after) = (&original["users"][0], user_in(&written, "1760390026607"));
    assert_eq!(ann_after["preferences"], ann_before["preferences"]);
    assert_eq!(ann_after["onboardingComplete"], true);
    assert_eq!(ann_after["createdAt"], ann_before["createdAt"]);
    assert_eq!(ann_after["userType"], "designer");
    assert!(
        ann_after["password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id-legacy$"),
        "the upgraded hash stays under the old key: {ann_after}"
    );
    assert!(ann_after["lastLogin"].is_string());

    let bob = user_in(&written, "1760390099000");
    assert_eq!(bob["projects"], json!(["p-1", "p-2"]));
    assert_eq!(bob["email"], "bob@example.com");
    assert_eq!(bob["name"], "Bob");

    // A user nobody touched is written back exactly as it was.
    assert_eq!(user_in(&written, "1760390111222"), &original["users"][2]);

    let dave = user_in(&written, new_user["user"]["id"].as_str().unwrap());
    assert_eq!(dave["email"], "dave@example.com");
    assert!(dave["password"].as_str().unwrap().starts_with("$argon2id$"));

    let leftovers: Vec<PathBuf> = std::fs::read_dir(users_path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// The real binary: kill -9 during signups, and the CLI.

/// The `flux-auth` binary with a clean environment: only what the test sets.
fn binary(work: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flux-auth"));
    command
        .env_clear()
        .current_dir(work)
        .env("CONFIG_FILE", "/dev/null")
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary serving on a free port of loopback; killed when dropped.
struct Server {
    child: tokio::process::Child,
    address: String,
    log: PathBuf,
}

impl Server {
    async fn start(work: &Path, data_dir: &Path, secret: &str, name: &str) -> Server {
        let port = free_port();
        let log = work.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = binary(work)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("JWT_SECRET", secret)
            .env("DATA_DIR", data_dir)
            .env("RATE_LIMITS", "off")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start flux-auth");
        let mut server = Server {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = Client::new();
        let live = server.url("/health/live");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("flux-auth exited with {status}: {}", server.log_text());
            }
            if let Ok(r) = client.get(&live).send().await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "flux-auth did not answer: {}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test]
async fn kill_9_during_signups_loses_no_acknowledged_user() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let secret = random_secret();
    let mut server = Server::start(work.path(), &data_dir, &secret, "first").await;

    let client = Client::new();
    let acked = Arc::new(AtomicUsize::new(0));
    let signups: Vec<JoinHandle<(String, Option<StatusCode>)>> = (0..60)
        .map(|i| {
            let (client, acked) = (client.clone(), acked.clone());
            let url = server.url("/api/auth/signup");
            let email = format!("crash-{i}@example.com");
            tokio::spawn(async move {
                let sent = client
                    .post(url)
                    .header("user-agent", UA)
                    .json(&json!({ "email": email, "password": PASSWORD, "name": "Crash Test" }))
                    .send()
                    .await;
                let status = sent.ok().map(|r| r.status());
                if status == Some(StatusCode::CREATED) {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                (email, status)
            })
        })
        .collect();
    eventually("ten acknowledged signups", Duration::from_secs(60), || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) >= 10).then_some(()) }
    })
    .await;
    server.child.start_kill().unwrap();
    let status = server.child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status}");

    let mut acknowledged = Vec::new();
    for signup in join_all(signups).await {
        let (email, status) = signup.unwrap();
        match status {
            Some(StatusCode::CREATED) => acknowledged.push(email),
            None => {} // cut off by the kill
            Some(other) => panic!("signup of {email} answered {other}"),
        }
    }
    eprintln!(
        "{} of 60 signups acknowledged before kill -9",
        acknowledged.len()
    );

    let file = read_json(&data_dir.join("users.json"));
    let emails: Vec<&str> = file["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = emails.iter().copied().collect();
    assert_eq!(unique.len(), emails.len(), "no duplicate users: {emails:?}");
    for email in &acknowledged {
        assert!(unique.contains(email.as_str()), "acknowledged {email} lost");
    }

    let server = Server::start(work.path(), &data_dir, &secret, "restarted").await;
    let logins = join_all(acknowledged.iter().map(|email| {
        client
            .post(server.url("/api/auth/login"))
            .header("user-agent", UA)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
    }))
    .await;
    for (email, login) in acknowledged.iter().zip(logins) {
        assert_eq!(
            login.unwrap().status(),
            StatusCode::OK,
            "{email} after restart: {}",
            server.log_text()
        );
    }
}

pub(crate) async fn run_cli(work: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = binary(work);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.args(args).output().await.expect("run flux-auth")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn import_users_is_idempotent_and_imported_users_log_in() {
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let mut old = old_users_json(&legacy_bcrypt(PASSWORD));
    old["users"].as_array_mut().unwrap().insert(
        1,
        json!({ "id": "1760390055555", "email": "not-an-email", "name": "Broken" }),
    );
    let file = work.path().join("old-users.json");
    std::fs::write(&file, serde_json::to_vec(&old).unwrap()).unwrap();
    let envs = [("DATABASE_URL", db.url.as_str())];
    let path = file.to_str().unwrap();

    let first = run_cli(work.path(), &envs, &["import-users", path]).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("4 users read: 3 imported, 0 already present, 1 invalid"),
        "{}",
        text(&first.stdout)
    );
    let second = run_cli(work.path(), &envs, &["import-users", path]).await;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("4 users read: 0 imported, 3 already present, 1 invalid"),
        "{}",
        text(&second.stdout)
    );

    let pool = db.pool().await;
    let rows: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, email, user_type, password_hash FROM users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let summary: Vec<(&str, &str, &str, bool)> = rows
        .iter()
        .map(|(id, email, user_type, hash)| {
            (
                id.as_str(),
                email.as_str(),
                user_type.as_str(),
                hash.as_deref().is_some_and(|h| h.starts_with("$2")),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("1760390026607", "ann@example.com", "designer", true),
            ("1760390099000", "bob@example.com", "client", true),
            ("1760390111222", "carol@example.com", "client", false),
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(db.url.clone()));
    let mut app = TestApp::start(settings, dir, Some(db), Backend::Postgres).await;
    for (email, id) in [
        ("ann@example.com", "1760390026607"),
        ("bob@example.com", "1760390099000"),
    ] {
        let response = app.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{email}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["user"]["id"], id);
    }
    let wrong = app
        .login("ann@example.com", "not the password at all")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn users_set_type_changes_users_json_and_refuses_unknown_emails() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let users_path = data_dir.join("users.json");
    let original = old_users_json(&legacy_bcrypt(PASSWORD));
    std::fs::write(&users_path, serde_json::to_vec_pretty(&original).unwrap()).unwrap();
    let envs = [("DATA_DIR", data_dir.to_str().unwrap())];

    let done = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "Ann@Example.com", "admin"],
    )
    .await;
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(
        text(&done.stdout).contains("ann@example.com is now admin"),
        "{}",
        text(&done.stdout)
    );
    let written = read_json(&users_path);
    let ann = user_in(&written, "1760390026607");
    assert_eq!(ann["userType"], "admin");
    assert_eq!(ann["preferences"], original["users"][0]["preferences"]);
    assert_eq!(ann["password"], original["users"][0]["password"]);
    assert_eq!(user_in(&written, "1760390111222"), &original["users"][2]);
    let changed: Vec<_> = events_from_files(&data_dir.join("security-events"))
        .into_iter()
        .filter(|e| e.event_type.as_str() == "user_type_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].user_id.as_deref(), Some("1760390026607"));

    let before = std::fs::read(&users_path).unwrap();
    let unknown = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "nobody@example.com", "admin"],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("no user with email nobody@example.com"),
        "{}",
        text(&unknown.stderr)
    );
    let bad_type = run_cli(
        work.path(),
        &envs,
        &["users", "set-type", "ann@example.com", "root"],
    )
    .await;
    assert!(!bad_type.status.success());
    assert!(
        text(&bad_type.stderr).contains("admin"),
        "{}",
        text(&bad_type.stderr)
    );
    assert_eq!(
        std::fs::read(&users_path).unwrap(),
        before,
        "failures change nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Postgres outages, through a Forwarder.

/// The app served without waiting for its database (which `TestApp::start` does).
struct Served {
    address: String,
    client: Client,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    fn run(app: App) -> Served {
        let stop = CancellationToken::new();
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        Served {
            address,
            client: Client::new(),
            stop,
            handle: Some(handle),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn health(&self) -> Value {
        let response = self.get("/health").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("user-agent", UA)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    fn running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().expect("stopped cleanly");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn assert_unavailable(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 0)),
        "Retry-After: {retry_after:?}"
    );
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn postgres_down_at_start_serves_degraded_and_recovers_by_itself() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    forwarder.cut();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.storage = Some(StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(via(&db.url, forwarder.addr())));
    settings.database_connect_timeout_ms = 1000;
    let app = App::build(settings)
        .await
        .expect("starts with the database unreachable");
    let served = Served::run(app);

    let health = served.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["database"], "error", "{health}");
    assert_eq!(health["checks"]["storageType"], "postgresql", "{health}");
    assert!(
        !health.to_string().contains(&db.name),
        "no connection string in health"
    );
    assert_eq!(served.get("/health/live").await.status(), StatusCode::OK);
    assert_eq!(
        served.get("/health/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let email = unique_email();
    let credentials = json!({ "email": email, "password": PASSWORD, "name": "Outage" });
    assert_unavailable(served.post("/api/auth/signup", &credentials).await).await;
    assert_unavailable(served.post("/api/auth/login", &credentials).await).await;

    forwarder.restore();
    eventually(
        "/health/ready to turn 200",
        Duration::from_secs(60),
        || async { (served.get("/health/ready").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let signup = served.post("/api/auth/signup", &credentials).await;
    assert_eq!(signup.status(), StatusCode::CREATED);
    let login = served.post("/api/auth/login", &credentials).await;
    assert_eq!(login.status(), StatusCode::OK);
    let health = eventually("/health to say ok", Duration::from_secs(60), || async {
        let health = served.health().await;
        (health["status"] == "ok").then_some(health)
    })
    .await;
    assert_eq!(health["checks"]["database"], "ok", "{health}");
    assert!(served.running(), "recovered without a restart");

    // The same once it is running: a cut answers 503 (never 500), and the service comes back.
    forwarder.cut();
    let another = json!({ "email": unique_email(), "password": PASSWORD, "name": "Outage" });
    assert_unavailable(served.post("/api/auth/signup", &another).await).await;
    assert_unavailable(served.post("/api/auth/login", &credentials).await).await;
    assert_eq!(
        served.get("/health/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(served.health().await["status"], "degraded");
    forwarder.restore();
    eventually(
        "/health/ready to turn 200 again",
        Duration::from_secs(60),
        || async { (served.get("/health/ready").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let login = served.post("/api/auth/login", &credentials).await;
    assert_eq!(login.status(), StatusCode::OK);

    let pool = db.pool().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(users, 1);
    served.stop().await;
}

/// `(event_type, severity, user_id, ip_address, requestId, created_at)` of the rows recorded for
/// the given request ids.
type EventRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);

async fn rows_for(db: &TestDb, request_ids: &[String]) -> Vec<EventRow> {
    let pool = db.pool().await;
    let rows = sqlx::query_as(
        "SELECT event_type, severity, user_id, ip_address, metadata->>'requestId', created_at \
         FROM security_events WHERE metadata->>'requestId' = ANY($1) ORDER BY created_at, id",
    )
    .bind(request_ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

async fn post_with_id(
    app: &TestApp,
    path: &str,
    body: &Value,
    request_id: &str,
    expected: StatusCode,
) -> Value {
    let response = app
        .client
        .post(app.url(path))
        .header("user-agent", UA)
        .header("x-request-id", request_id)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, expected, "{path} {request_id}: {body}");
    body
}

#[tokio::test]
async fn events_reach_postgres_and_survive_a_database_outage_through_the_spool() {
    if !postgres_available().await {
        return;
    }
    let forwarder = Forwarder::start(postgres_addr().await).await;
    let through = forwarder.addr();
    let Some(mut app) = TestApp::builder(Backend::File)
        .events_in_postgres()
        .settings(move |s| {
            let direct = s
                .security_log_database_url
                .as_ref()
                .expect("events_in_postgres sets the log database")
                .expose_secret()
                .to_owned();
            s.security_log_database_url = Some(SecretString::from(via(&direct, through)));
            s.database_connect_timeout_ms = 1000;
            s.rate_limits = Switch::Off;
        })
        .try_spawn()
        .await
    else {
        return;
    };
    let db = app.db.take().expect("the events database");
    let started = Utc::now();
    let email = unique_email();
    let credentials = json!({ "email": email, "password": PASSWORD, "name": "Spool Test" });
    let signup = post_with_id(
        &app,
        "/api/auth/signup",
        &credentials,
        "stores-signup",
        StatusCode::CREATED,
    )
    .await;
    let user_id = signup["user"]["id"].as_str().unwrap().to_owned();
    let login = post_with_id(
        &app,
        "/api/auth/login",
        &credentials,
        "stores-login",
        StatusCode::OK,
    )
    .await;

    let ids = ["stores-signup".to_owned(), "stores-login".to_owned()];
    let rows = eventually("signup and login rows", Duration::from_secs(10), || async {
        let rows = rows_for(&db, &ids).await;
        (rows.len() >= 4).then_some(rows)
    })
    .await;
    let finished = Utc::now();
    for (event_type, request_id) in [
        ("signup_success", "stores-signup"),
        ("token_generated", "stores-signup"),
        ("login_success", "stores-login"),
        ("token_generated", "stores-login"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.0 == event_type && r.4.as_deref() == Some(request_id))
            .unwrap_or_else(|| panic!("no {event_type} row for {request_id}: {rows:?}"));
        assert_eq!(row.1, "info", "{row:?}");
        assert_eq!(row.2.as_deref(), Some(user_id.as_str()), "{row:?}");
        assert_eq!(row.3.as_deref(), Some("127.0.0.1"), "{row:?}");
        assert!(
            row.5 >= started - secs(1) && row.5 <= finished + secs(1),
            "created_at {} is when it happened",
            row.5
        );
    }

    // The database goes away: logins carry on unchanged and their events go to the spool.
    forwarder.cut();
    let outage_ids: Vec<String> = (0..30).map(|i| format!("stores-outage-{i}")).collect();
    let logins = join_all(
        outage_ids
            .iter()
            .map(|id| post_with_id(&app, "/api/auth/login", &credentials, id, StatusCode::OK)),
    )
    .await;
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<String>>()
    };
    for body in &logins {
        assert_eq!(keys(body), keys(&login), "same AuthResponse shape");
        assert_eq!(body["user"]["id"], login["user"]["id"]);
        assert_eq!(body["user"]["email"], login["user"]["email"]);
    }
    let spool_dir = app.settings.security_log_dir();
    let spooled = eventually(
        "the outage's logins in the spool",
        Duration::from_secs(30),
        || async {
            let events = events_from_files(&spool_dir);
            let logged: HashSet<&str> = events
                .iter()
                .filter(|e| e.event_type.as_str() == "login_success")
                .filter_map(|e| e.metadata.get("requestId").and_then(Value::as_str))
                .collect();
            outage_ids
                .iter()
                .all(|id| logged.contains(id.as_str()))
                .then_some(events)
        },
    )
    .await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["database"], "error", "{health}");
    assert!(
        health["checks"]["securityLog"]["spooled"]
            .as_i64()
            .is_some_and(|n| n > 0),
        "{health}"
    );

    // Back again: the spool drains by itself, every event once.
    forwarder.restore();
    let spooled_ids: Vec<Uuid> = spooled.iter().map(|e| e.id).collect();
    eventually("the spool to drain", Duration::from_secs(60), || async {
        let pool = db.pool().await;
        let present: i64 =
            sqlx::query_scalar("SELECT count(*) FROM security_events WHERE id = ANY($1)")
                .bind(&spooled_ids)
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        let health = app.client.get(app.url("/health")).send().await.unwrap();
        let health: Value = health.json().await.unwrap();
        (present == spooled_ids.len() as i64
            && health["checks"]["securityLog"]["spooled"] == 0
            && health["status"] == "ok")
            .then_some(())
    })
    .await;
    let rows = rows_for(&db, &outage_ids).await;
    for id in &outage_ids {
        let logged: Vec<&EventRow> = rows
            .iter()
            .filter(|r| r.0 == "login_success" && r.4.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(logged.len(), 1, "login {id} recorded once: {logged:?}");
    }
    let pool = db.pool().await;
    let table_ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM security_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let distinct: HashSet<&Uuid> = table_ids.iter().collect();
    assert_eq!(distinct.len(), table_ids.len(), "each event id once");
    assert!(
        events_from_files(&spool_dir).is_empty(),
        "replayed spool files are deleted"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Postgres rotation: one read, then a compare-and-swap write; a lost race is decided again.

/// A Postgres store (pool of `connections`) on its own database at `url`, ready, with one user.
async fn postgres_store_with_user(
    dir: &Path,
    url: &str,
    connections: u32,
) -> (Arc<PgStore>, UserRecord) {
    let mut settings = test_settings(dir);
    settings.storage = Some(StorageKind::Postgres);
    settings.database_url = Some(SecretString::from(url.to_owned()));
    settings.database_max_connections = connections;
    // Generous: a loaded machine can take seconds to open a connection.
    settings.database_connect_timeout_ms = 15_000;
    let store =
        Arc::new(PgStore::open(&settings, PoolMetrics::unregistered()).expect("store opens"));
    eventually("the store to be ready", Duration::from_secs(20), || {
        let store = store.clone();
        async move { store.ping().await.ok() }
    })
    .await;
    let user = user_record(&Uuid::new_v4().to_string(), &unique_email(), now_ms());
    store.insert_user(&user).await.unwrap();
    (store, user)
}

fn rotate_request(presented_hash: &str, successor_hash: &str, now: DateTime<Utc>) -> RotateRequest {
    RotateRequest {
        presented_hash: presented_hash.to_owned(),
        successor_id: Uuid::now_v7(),
        successor_hash: successor_hash.to_owned(),
        now,
        grace: secs(10),
        idle_ttl: chrono::Duration::days(7),
        fingerprint: FINGERPRINT.into(),
        ip_address: "127.0.0.3".into(),
        reject_on_fingerprint_mismatch: false,
    }
}

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

/// Opens `n` connections in the store's pool and puts them back idle.
async fn fill_pool(store: &PgStore, n: usize) {
    let database = store.database();
    let held: Vec<_> = join_all((0..n).map(|_| database.acquire()))
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    drop(held);
    eventually(
        "the connections back idle",
        Duration::from_secs(20),
        || async { (database.pool.num_idle() >= n).then_some(()) },
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
