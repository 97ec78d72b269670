//! What the store tests build on: records and sessions made to order, a store opened through
//! the library on either backend (or on a Postgres database of the test's own) and waited on
//! until it answers, and `users.json` as the old service wrote it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flux_auth::auth::refresh::hash_token;
use flux_auth::config::{Settings, StorageKind};
use flux_auth::domain::{UserRecord, UserType};
use flux_auth::metrics::PoolMetrics;
use flux_auth::store::postgres::PgStore;
use flux_auth::store::{
    self, NewSession, RotateRequest, SessionRecord, Store, TokenRecord, UserStore,
};
use futures::future::join_all;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

pub(super) const FINGERPRINT: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Now, at whole milliseconds: the precision both backends keep.
pub(super) fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

pub(super) fn fresh_hash() -> String {
    hash_token(&Uuid::new_v4().to_string())
}

pub(super) fn user_record(id: &str, email: &str, created_at: DateTime<Utc>) -> UserRecord {
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
        updated_at: created_at,
        last_login: None,
        two_factor_enabled: false,
        extra: serde_json::Map::new(),
    }
}

pub(super) fn new_session(user_id: &str, created_at: DateTime<Utc>) -> NewSession {
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
pub(super) async fn open_store(
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

pub(super) async fn open_ready(settings: &Settings) -> Arc<dyn Store> {
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

/// A Postgres store (pool of `connections`) on its own database at `url`, ready, with one user.
pub(super) async fn postgres_store_with_user(
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

pub(super) fn rotate_request(
    presented_hash: &str,
    successor_hash: &str,
    now: DateTime<Utc>,
) -> RotateRequest {
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

/// An address as the service parses it, for the store's lookups.
pub(super) fn email(address: &str) -> flux_auth::domain::Email {
    flux_auth::domain::Email::parse(address).unwrap()
}

/// A bcrypt hash the way the old service made it (of the trimmed, HTML-escaped password).
pub(crate) fn legacy_bcrypt(password: &str) -> String {
    let escaped = flux_auth::auth::passwords::legacy_escape(password.trim());
    bcrypt::hash(escaped, 4).unwrap()
}

/// Three users as the old service wrote them: timestamp-string ids, one numeric id, bcrypt
/// hashes under `password`, and fields this service does not know.
pub(super) fn old_users_json(hash: &str) -> Value {
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

pub(super) fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

pub(super) fn user_in<'a>(file: &'a Value, id: &str) -> &'a Value {
    file["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| json_id(&u["id"]) == id)
        .unwrap_or_else(|| panic!("user {id} missing from {file}"))
}

/// An id as the old file held it: a string or a number.
pub(super) fn json_id(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Opens `n` connections in the store's pool and puts them back idle.
pub(super) async fn fill_pool(store: &PgStore, n: usize) {
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
