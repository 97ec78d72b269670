//! The JSON-file store: `users.json` in the old service's shape (`{"users":[...]}`) and the
//! refresh-token families in `sessions.json` plus `sessions.journal`, all in `DATA_DIR`.
//!
//! Both commit in groups, through one engine (`group_commit.rs`): changes apply in order to the
//! latest state, and a write makes them durable and only then publishes them and answers.
//! `users.json` is a [`WholeFile`]: each write replaces it (temp file, fsync, rename, folder
//! fsync). The sessions are a [`SessionLog`]: `sessions.json` is a snapshot and each commit
//! appends its changes, and only those, to `sessions.journal` (one line, one fdatasync), which is
//! folded into a new snapshot from time to time, off the request path (see `journal/`). Either
//! way a crash or a failed write never leaves an acknowledged change unsaved or an unsaved change
//! visible, concurrent requests never lose each other's updates, changes that arrive during a
//! write share the next one (group commit), and reads never wait for a write.

use std::path::Path;

use anyhow::Context;

use crate::durable_file;
use crate::store::{StoreError, StoreResult};

mod devices;
mod group_commit;
mod identities;
mod journal;
mod outbox;
mod session_rules;
mod session_state;
mod store_impl;
mod two_factor;
mod users;
mod users_file;
mod whole_file;

use journal::SessionLog;
pub use journal::{compact_sessions, read_sessions};
use session_state::Tx;
use users::Users;
use users_file::encode_users;
pub use users_file::read_users_file;
use whole_file::WholeFile;

pub struct FileStore {
    /// users.json. When an operator changes the file (`flux-auth users set-type`) the running
    /// service notices by its identity (see `whole_file.rs`) and reloads it.
    users: WholeFile<Users>,
    /// sessions.json and sessions.journal.
    sessions: SessionLog,
    /// The outbox messages this process's sender holds, until when: in memory only, since one
    /// process writes the folder and a restart's sender may take them all again at once.
    outbox_leases:
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, chrono::DateTime<chrono::Utc>>>,
    /// known_devices.json.
    devices: WholeFile<devices::KnownDevices>,
}

impl FileStore {
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        durable_file::ensure_private_dir(dir)
            .with_context(|| format!("could not create data folder {}", dir.display()))?;
        let users_path = dir.join("users.json");
        let users = if users_path.exists() {
            read_users_file(&users_path)?
        } else {
            Vec::new()
        };
        let sessions = SessionLog::open(dir)?;
        {
            let state = sessions.read();
            tracing::debug!(
                sessions = state.session_count(),
                tokens = state.token_count(),
                seq = state.seq,
                "sessions loaded"
            );
        }
        let users = Users::new(users);
        crate::store::warn_of_collisions(&users.collisions());
        Ok(Self {
            users: WholeFile::new(users_path, users, encode_users),
            sessions,
            outbox_leases: Default::default(),
            devices: devices::open(dir)?,
        })
    }

    /// Applies `change` to the users (re-read first if users.json was replaced by someone
    /// else); returns once the change is on disk. `change` must not alter the users when it
    /// returns an error.
    async fn update_users<T>(
        &self,
        change: impl FnOnce(&mut Users) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.reload_users_if_replaced().await?;
        self.users.update(change).await
    }

    /// The users, re-read first if users.json was replaced by someone else (the CLI).
    async fn users(&self) -> StoreResult<std::sync::Arc<Users>> {
        self.reload_users_if_replaced().await?;
        Ok(self.users.read())
    }

    async fn reload_users_if_replaced(&self) -> StoreResult<()> {
        let reloaded = self
            .users
            .reload_if_replaced(|path| read_users_file(path).map(Users::new))
            .await
            .map_err(StoreError::Other)?;
        if reloaded {
            let users = self.users.read().len();
            tracing::info!(users, "users.json changed on disk; reloaded");
        }
        Ok(())
    }

    /// Applies `change` to the sessions; returns once it is on disk. `change` must not alter
    /// them when it returns an error.
    async fn update_sessions<T>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.sessions.update(change).await
    }
}
