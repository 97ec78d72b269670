//! What a store holds, read and changed behind the app's back whichever the backend: sessions,
//! refresh tokens and their times, users, and every stored byte for "never stored" checks.

use serde_json::Value;

use super::{Backend, TestApp, change_users_by_sql};

/// Every file under `dir`, concatenated (lossy UTF-8): for "this never reaches the disk" checks.
pub fn files_text(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&files_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

/// A session as stored, whichever the backend.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub id: uuid::Uuid,
    pub user_id: String,
    pub fingerprint: String,
    pub revoked_reason: Option<String>,
}

/// A refresh token as stored: its id, family and hash, and whether it was rotated.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub id: uuid::Uuid,
    pub session_id: uuid::Uuid,
    pub token_hash: String,
    pub rotated: bool,
}

/// When a session was created, last used, and ends (absolutely).
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl TestApp {
    /// Edits the JSON-file store while no app is running, then starts a new app on it.
    async fn edit_data_file(self, file: &str, edit: impl FnOnce(&mut Value)) -> TestApp {
        assert_eq!(self.backend, Backend::File);
        let mut app = self;
        app.stop().await;
        if file == "sessions.json" {
            // Fold the journal into sessions.json first, so that the edit is the whole state.
            flux_auth::store::json_file::compact_sessions(&app.data_dir()).unwrap();
        }
        let path = app.data_dir().join(file);
        let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut value);
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        app.restart_with(|_| {}).await
    }

    /// Rewrites the times of stored sessions: SQL on Postgres; on files the app is stopped,
    /// `sessions.json` edited and a new app started on the same folder. Use the returned app.
    pub async fn with_session_times(self, edits: &[(uuid::Uuid, SessionTimes)]) -> TestApp {
        if self.backend == Backend::Postgres {
            let pool = self.db.as_ref().unwrap().pool().await;
            for (id, t) in edits {
                let done = sqlx::query(
                    "UPDATE auth_sessions SET created_at = $2, last_used_at = $3, expires_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(t.created_at)
                .bind(t.last_used_at)
                .bind(t.expires_at)
                .execute(&pool)
                .await
                .unwrap();
                assert_eq!(done.rows_affected(), 1, "session {id}");
            }
            pool.close().await;
            return self;
        }
        self.edit_data_file("sessions.json", |file| {
            for (id, t) in edits {
                let session = file["sessions"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|s| s["id"] == id.to_string())
                    .unwrap_or_else(|| panic!("session {id}"));
                session["createdAt"] = t.created_at.to_rfc3339().into();
                session["lastUsedAt"] = t.last_used_at.to_rfc3339().into();
                session["expiresAt"] = t.expires_at.to_rfc3339().into();
            }
        })
        .await
    }

    /// Deletes a user from the store behind the service's back (an operator removing an account).
    pub async fn delete_user(self, id: &str) -> TestApp {
        if self.backend == Backend::Postgres {
            let done = change_users_by_sql(&self, "DELETE FROM users WHERE id = $1", id).await;
            assert_eq!(done, 1);
            return self;
        }
        self.edit_data_file("users.json", |file| {
            let users = file["users"].as_array_mut().unwrap();
            let before = users.len();
            users.retain(|u| u["id"] != id);
            assert_eq!(users.len(), before - 1);
        })
        .await
    }

    pub async fn stored_sessions(&self) -> Vec<StoredSession> {
        match self.backend {
            Backend::Postgres => {
                let pool = self.db.as_ref().unwrap().pool().await;
                let rows: Vec<(uuid::Uuid, String, String, Option<String>)> = sqlx::query_as(
                    "SELECT id, user_id, fingerprint, revoked_reason FROM auth_sessions",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                pool.close().await;
                rows.into_iter()
                    .map(|(id, user_id, fingerprint, revoked_reason)| StoredSession {
                        id,
                        user_id,
                        fingerprint,
                        revoked_reason,
                    })
                    .collect()
            }
            Backend::File => self.sessions_file()["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| StoredSession {
                    id: s["id"].as_str().unwrap().parse().unwrap(),
                    user_id: s["userId"].as_str().unwrap().to_owned(),
                    fingerprint: s["fingerprint"].as_str().unwrap().to_owned(),
                    revoked_reason: s["revokedReason"].as_str().map(str::to_owned),
                })
                .collect(),
        }
    }

    pub async fn stored_refresh_tokens(&self) -> Vec<StoredToken> {
        match self.backend {
            Backend::Postgres => {
                let pool = self.db.as_ref().unwrap().pool().await;
                let rows: Vec<(uuid::Uuid, uuid::Uuid, String, bool)> = sqlx::query_as(
                    "SELECT id, session_id, token_hash, rotated_at IS NOT NULL FROM refresh_tokens",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                pool.close().await;
                rows.into_iter()
                    .map(|(id, session_id, token_hash, rotated)| StoredToken {
                        id,
                        session_id,
                        token_hash,
                        rotated,
                    })
                    .collect()
            }
            Backend::File => self.sessions_file()["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| StoredToken {
                    id: t["id"].as_str().unwrap().parse().unwrap(),
                    session_id: t["sessionId"].as_str().unwrap().parse().unwrap(),
                    token_hash: t["tokenHash"].as_str().unwrap().to_owned(),
                    rotated: !t["rotatedAt"].is_null(),
                })
                .collect(),
        }
    }

    /// Every row of the service's tables as text (empty on the file store, whose data is files).
    pub async fn stored_text(&self) -> String {
        let Some(db) = &self.db else {
            return String::new();
        };
        let pool = db.pool().await;
        let mut text = String::new();
        for table in [
            "users",
            "auth_sessions",
            "refresh_tokens",
            "security_events",
        ] {
            let sql = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t");
            let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap_or_default();
            text.push_str(&rows);
        }
        pool.close().await;
        text
    }

    /// The file store's sessions as `{"sessions":[...],"tokens":[...]}`: sessions.json with
    /// sessions.journal applied.
    fn sessions_file(&self) -> Value {
        flux_auth::store::json_file::read_sessions(&self.data_dir()).unwrap()
    }
}
