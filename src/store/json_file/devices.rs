//! The devices each user signed in from, in `known_devices.json` beside `users.json` (which
//! keeps the old service's shape): per user, the hashes of their devices' fingerprints, at most
//! the cap, rewritten whole at each group commit like `users.json`.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::FileStore;
use super::whole_file::WholeFile;
use crate::store::{DeviceSeen, DeviceStore, StoreError, StoreResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Device {
    fingerprint_hash: String,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// User id → their devices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct KnownDevices {
    users: BTreeMap<String, Vec<Device>>,
}

/// A known device's `last_seen` is written again only when it is older than this, so a
/// returning device costs no write at each sign-in.
const TOUCH_AFTER: chrono::Duration = chrono::Duration::hours(24);

fn encode(devices: &KnownDevices) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(devices)?)
}

pub(super) fn open(dir: &Path) -> anyhow::Result<WholeFile<KnownDevices>> {
    let path = dir.join("known_devices.json");
    let devices = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not valid JSON ({e}); move it aside to start with no known devices",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KnownDevices::default(),
        Err(e) => anyhow::bail!("could not read {}: {e}", path.display()),
    };
    Ok(WholeFile::new(path, devices, encode))
}

#[async_trait]
impl DeviceStore for FileStore {
    async fn remember_device(
        &self,
        user_id: &str,
        fingerprint_hash: &str,
        at: DateTime<Utc>,
        cap: usize,
    ) -> StoreResult<DeviceSeen> {
        if self.users().await?.by_id(user_id).is_none() {
            return Ok(DeviceSeen::First);
        }
        let fresh = self.devices.read().users.get(user_id).is_some_and(|known| {
            known
                .iter()
                .any(|d| d.fingerprint_hash == fingerprint_hash && at - d.last_seen < TOUCH_AFTER)
        });
        if fresh {
            return Ok(DeviceSeen::Known);
        }
        self.devices
            .update(|devices| {
                let known = devices.users.entry(user_id.to_owned()).or_default();
                if let Some(device) = known
                    .iter_mut()
                    .find(|d| d.fingerprint_hash == fingerprint_hash)
                {
                    device.last_seen = device.last_seen.max(at);
                    return Ok(DeviceSeen::Known);
                }
                let seen = if known.is_empty() {
                    DeviceSeen::First
                } else {
                    DeviceSeen::New
                };
                known.push(Device {
                    fingerprint_hash: fingerprint_hash.to_owned(),
                    first_seen: at,
                    last_seen: at,
                });
                if known.len() > cap.max(1) {
                    known.sort_by_key(|d| std::cmp::Reverse(d.last_seen));
                    known.truncate(cap.max(1));
                }
                Ok::<_, StoreError>(seen)
            })
            .await
    }
}
