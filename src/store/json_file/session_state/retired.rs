//! Retired tokens.
//!
//! Rotated tokens are *retired* once their rotation is durable: a rotated token never changes
//! again and is only ever looked up by hash (reuse detection, the grace window, logout with an
//! old token), so it leaves both copies' indexes for one map the copies share, keyed by hash,
//! without its hash string. Nearly all of a busy store's tokens are rotated ones (one per
//! refresh, kept until the session ends), so this is most of its memory. Rotation decisions are
//! the same either way: a retired token keeps its rotation time and successor, and a successor
//! that is itself retired has been rotated, which already rules out the grace answer.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::DateTime;
use indexmap::IndexMap;
use uuid::Uuid;

use super::{HashKey, Op, Sessions, hash_key, shrink_if_sparse, shrink_if_sparse_vec};
use crate::store::TokenRecord;

/// A retired token: a rotated [`TokenRecord`] without its hash, which is its key in [`Retired`].
/// 64 bytes: times as nanoseconds since the epoch, and no successor as the nil id. One is kept
/// per refresh until its session ends, so its size is most of a busy file store's memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetiredToken {
    id: Uuid,
    pub(super) session_id: Uuid,
    created_at_ns: i64,
    rotated_at_ns: i64,
    /// Nil when the token has no successor (a rotation that revoked its session).
    replaced_by: Uuid,
}

impl RetiredToken {
    /// `None` for a token this layout cannot hold exactly (not rotated, a time outside
    /// 1677–2262, a nil successor: only ever in a hand-edited file); such a token stays live.
    pub(super) fn of(t: &TokenRecord) -> Option<Self> {
        if t.replaced_by.is_some_and(|next| next.is_nil()) {
            return None;
        }
        Some(Self {
            id: t.id,
            session_id: t.session_id,
            created_at_ns: t.created_at.timestamp_nanos_opt()?,
            rotated_at_ns: t.rotated_at?.timestamp_nanos_opt()?,
            replaced_by: t.replaced_by.unwrap_or_else(Uuid::nil),
        })
    }

    pub fn record(&self, key: &HashKey) -> TokenRecord {
        TokenRecord {
            id: self.id,
            session_id: self.session_id,
            token_hash: hex::encode(key),
            created_at: DateTime::from_timestamp_nanos(self.created_at_ns),
            rotated_at: Some(DateTime::from_timestamp_nanos(self.rotated_at_ns)),
            replaced_by: (!self.replaced_by.is_nil()).then_some(self.replaced_by),
        }
    }
}

/// Retired tokens by hash. An `IndexMap` keeps its entries in one vector and indexes them with a
/// table of positions (9 bytes a slot). A `HashMap` keeps the entries (97 bytes) in its slots,
/// up to half of which are empty after each doubling, and holds the old and the new table at
/// once while it grows: at 250,000 tokens its table is 51 MB, where the vector's used part and
/// the positions take 31 MB.
pub(crate) type RetiredMap = IndexMap<HashKey, RetiredToken>;

/// The retired tokens, shared by the pending and the published copy (and a reload replaces it
/// with the loaded state's own).
#[derive(Debug, Default)]
pub(crate) struct Retired(RwLock<RetiredMap>);

impl Retired {
    pub fn read(&self) -> RwLockReadGuard<'_, RetiredMap> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RetiredMap> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sessions {
    /// Retires every rotated token (after a load).
    pub fn retire_all_rotated(&mut self) {
        let rotated: Vec<Uuid> = self
            .tokens
            .values()
            .filter(|e| e.rec.rotated_at.is_some())
            .map(|e| e.rec.id)
            .collect();
        self.retire(&rotated);
    }

    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    /// Moves the rotated tokens among `ids` out of this copy's indexes into the shared retired
    /// map; returns the ids it moved, for [`Self::forget_retired`] on the other copy. A token
    /// that lost its hash to an older duplicate (old files only) stays.
    pub fn retire(&mut self, ids: &[Uuid]) -> Vec<Uuid> {
        let mut moved = Vec::new();
        {
            let mut retired = self.retired.write();
            for id in ids {
                let Some(entry) = self.tokens.get(id) else {
                    continue;
                };
                let t = &entry.rec;
                let key = hash_key(&t.token_hash);
                let Some(token) = RetiredToken::of(t) else {
                    continue;
                };
                if self.by_hash.get(&key) != Some(id) || retired.contains_key(&key) {
                    continue;
                }
                retired.insert(key, token);
                moved.push(*id);
            }
        }
        self.forget_retired(&moved);
        moved
    }

    /// Takes tokens that were retired (through the other copy) out of this copy's indexes.
    pub fn forget_retired(&mut self, ids: &[Uuid]) {
        let mut families: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        for id in ids {
            if let Some(session) = self.forget_token(*id) {
                families.entry(session).or_default().insert(*id);
            }
        }
        for (session, gone) in families {
            if let Some(ids) = self.family.get_mut(&session) {
                ids.retain(|t| !gone.contains(t));
                if ids.is_empty() {
                    self.family.remove(&session);
                } else {
                    shrink_if_sparse_vec(ids);
                }
            }
        }
        // A burst of refreshes leaves the maps sized for every token of its grace window; once
        // those are retired the tables would stay that big (in both copies) if not shrunk.
        shrink_if_sparse(&mut self.tokens);
        shrink_if_sparse(&mut self.by_hash);
    }

    /// After `ops` became durable: removes the retired tokens of the sessions and tokens they
    /// dropped. Retired entries leave only then, so a write that fails (and takes the pending
    /// copy back to the published one) cannot have cost them.
    pub fn sweep_retired(&self, ops: &[Op]) {
        let mut sessions = HashSet::new();
        let mut tokens = HashSet::new();
        for op in ops {
            match op {
                Op::DropSession(id) => {
                    sessions.insert(*id);
                }
                Op::DropToken(id) => {
                    tokens.insert(*id);
                }
                _ => {}
            }
        }
        if sessions.is_empty() && tokens.is_empty() {
            return;
        }
        let mut retired = self.retired.write();
        if !retired.is_empty() {
            retired.retain(|_, t| !sessions.contains(&t.session_id) && !tokens.contains(&t.id));
            if retired.capacity() > 1024 && retired.len() < retired.capacity() / 4 {
                let len = retired.len();
                retired.shrink_to(len * 2);
            }
        }
    }
}
