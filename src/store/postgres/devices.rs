//! The devices each user signed in from (`known_devices`, migration 011): one statement that
//! remembers the device, answers whether it was new, and keeps the user's set within its cap.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::PgStore;
use crate::store::{DeviceSeen, DeviceStore, StoreResult};

/// `$1` user, `$2` fingerprint hash, `$3` now, `$4` how many other devices to keep. Answers the
/// devices the user had before, and whether this one was inserted (NULL: no such user). The
/// delete sees the table as it was before the statement, so it keeps the `$4` most recently seen
/// of the others, and the new one makes the cap.
const REMEMBER: &str = "\
WITH prior AS (SELECT count(*) AS n FROM known_devices WHERE user_id = $1),
seen AS (
    INSERT INTO known_devices (user_id, fingerprint_hash, first_seen, last_seen)
    SELECT $1, $2, $3, $3 WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)
    ON CONFLICT (user_id, fingerprint_hash)
    DO UPDATE SET last_seen = GREATEST(known_devices.last_seen, EXCLUDED.last_seen)
    RETURNING (xmax = 0) AS inserted
),
pruned AS (
    DELETE FROM known_devices WHERE user_id = $1 AND fingerprint_hash IN (
        SELECT fingerprint_hash FROM known_devices
        WHERE user_id = $1 AND fingerprint_hash <> $2
        ORDER BY last_seen DESC OFFSET $4
    )
)
SELECT (SELECT n FROM prior), (SELECT inserted FROM seen)";

#[async_trait]
impl DeviceStore for PgStore {
    async fn remember_device(
        &self,
        user_id: &str,
        fingerprint_hash: &str,
        at: DateTime<Utc>,
        cap: usize,
    ) -> StoreResult<DeviceSeen> {
        let mut conn = self.conn().await?;
        let keep_others = i64::try_from(cap.max(1) - 1).unwrap_or(i64::MAX);
        let (prior, inserted): (i64, Option<bool>) = sqlx::query_as(REMEMBER)
            .bind(user_id)
            .bind(fingerprint_hash)
            .bind(at)
            .bind(keep_others)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(match inserted {
            None => DeviceSeen::First,
            Some(false) => DeviceSeen::Known,
            Some(true) if prior == 0 => DeviceSeen::First,
            Some(true) => DeviceSeen::New,
        })
    }
}
