//! The file store's sessions in memory, indexed: sessions by id, tokens by id and by hash, each
//! session's tokens, and each user's unrevoked sessions. The state changes only through [`Op`]s
//! (whole-record upserts and removals), which is what the journal records: the same ops applied
//! in the same order to the same state give the same state, on the pending and the published
//! copy alike, and on restart.
//!
//! Records sit behind `Arc`s that the pending and the published copy (and a compaction's
//! snapshot) share, so a change costs one new record, never a copy of the state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::outbox::{OneTimeToken, OutboxMessage, TokenPurpose};
use crate::store::two_factor::TOTP_STEP_SECS;
use crate::store::{ENDED_SESSION_RETENTION_DAYS, SessionRecord, TokenRecord};

mod ops;
mod outbox_index;
mod retired;
#[cfg(test)]
mod tests;
mod tx;

pub(super) use ops::{Op, OpIn, OpOut, TotpStep};
pub(super) use outbox_index::KindIndex;
use outbox_index::OutboxIndex;
pub(super) use retired::{Retired, RetiredToken};
pub(super) use tx::Tx;

/// How many TOTP steps (of 30 s: a day) a user's last accepted step is kept in the journal.
const TOTP_STEPS_KEPT: i64 = 24 * 60 * 60 / TOTP_STEP_SECS as i64;

/// A record and when it first entered the state (its place in the snapshot, and the tie-break
/// wherever the old `Vec` order decided).
#[derive(Debug)]
pub(super) struct Entry<T> {
    pub ord: u64,
    pub rec: Arc<T>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            ord: self.ord,
            rec: self.rec.clone(),
        }
    }
}

/// When the next prune can find something, as far as the sessions seen since the last full scan
/// tell (a lower bound: refreshes only move session ends later). Kept on the pending copy only;
/// `None` means unknown, so the next prune scans.
#[derive(Debug, Clone, Copy)]
pub(super) struct PruneHint {
    pub due: DateTime<Utc>,
    pub idle_ttl: chrono::Duration,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Sessions {
    sessions: HashMap<Uuid, Entry<SessionRecord>>,
    tokens: HashMap<Uuid, Entry<TokenRecord>>,
    by_hash: HashMap<HashKey, Uuid>,
    /// Token ids per session id (also for tokens whose session is gone: orphans).
    family: HashMap<Uuid, Vec<Uuid>>,
    /// Unrevoked sessions per user (revocation is final; expired ones stay until pruned).
    open_by_user: HashMap<String, HashSet<Uuid>>,
    /// Shared between the copies (cloning `Sessions` clones the `Arc`).
    retired: Arc<Retired>,
    next_ord: u64,
    /// One-time tokens by hash, and each user's token hash per purpose (one each).
    one_time: HashMap<String, Arc<OneTimeToken>>,
    one_time_of: HashMap<(String, TokenPurpose), String>,
    /// The outbox (the mail sender's queue; see `store::outbox`).
    outbox: HashMap<Uuid, Arc<OutboxMessage>>,
    /// The pending outbox by due time and age, and the dead counted.
    outbox_index: OutboxIndex,
    /// The last TOTP step accepted per user (see [`TotpStep`]).
    totp_steps: HashMap<String, Arc<TotpStep>>,
    /// The sequence number of the last journal batch in this state.
    pub seq: u64,
    pub prune_hint: Option<PruneHint>,
}

/// A token hash as a map key: its 32 bytes rather than 64 hex digits on the heap (the index is
/// kept twice, and there is one entry per token ever issued).
pub(super) type HashKey = [u8; 32];

fn hash_key(hash: &str) -> HashKey {
    let mut key = [0u8; 32];
    if hex::decode_to_slice(hash, &mut key).is_err() {
        // Not a hex SHA-256 (never written by this service): a digest of it still keys it.
        key = Sha256::digest(hash.as_bytes()).into();
    }
    key
}

/// Halves a map's table once it is under a quarter full (never below a small floor, so a store
/// that breathes around a few hundred tokens does not rehash back and forth).
fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

fn shrink_if_sparse_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to(v.len() * 2);
    }
}

/// When a session ended (or ends): revoked, or its absolute or idle end.
pub(super) fn ended_at(s: &SessionRecord, idle_ttl: chrono::Duration) -> DateTime<Utc> {
    s.revoked_at
        .unwrap_or_else(|| s.expires_at.min(s.last_used_at + idle_ttl))
}

pub(super) fn retention() -> chrono::Duration {
    chrono::Duration::days(ENDED_SESSION_RETENTION_DAYS)
}

impl Sessions {
    /// The state of a snapshot: its sessions then its tokens, in file order.
    #[cfg(test)]
    pub fn from_records(seq: u64, sessions: Vec<SessionRecord>, tokens: Vec<TokenRecord>) -> Self {
        let mut state = Self {
            seq,
            ..Self::default()
        };
        state.sessions.reserve(sessions.len());
        state.tokens.reserve(tokens.len());
        state.by_hash.reserve(tokens.len());
        for s in sessions {
            state.apply(&Op::Session(Arc::new(s)));
        }
        for t in tokens {
            state.apply(&Op::Token(Arc::new(t)));
        }
        state
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Session(rec) => {
                match self.sessions.get_mut(&rec.id) {
                    Some(entry) => entry.rec = rec.clone(),
                    None => {
                        let ord = self.bump();
                        self.sessions.insert(
                            rec.id,
                            Entry {
                                ord,
                                rec: rec.clone(),
                            },
                        );
                    }
                }
                if rec.revoked_at.is_none() {
                    match self.open_by_user.get_mut(&rec.user_id) {
                        Some(set) => {
                            set.insert(rec.id);
                        }
                        None => {
                            self.open_by_user
                                .insert(rec.user_id.clone(), HashSet::from([rec.id]));
                        }
                    }
                } else {
                    self.close(&rec.user_id, rec.id);
                }
            }
            Op::Token(rec) => match self.tokens.get_mut(&rec.id) {
                Some(entry) => entry.rec = rec.clone(),
                None => {
                    let ord = self.bump();
                    self.tokens.insert(
                        rec.id,
                        Entry {
                            ord,
                            rec: rec.clone(),
                        },
                    );
                    // The first token with a hash wins, as the old linear search did.
                    self.by_hash
                        .entry(hash_key(&rec.token_hash))
                        .or_insert(rec.id);
                    self.family.entry(rec.session_id).or_default().push(rec.id);
                }
            },
            Op::DropSession(id) => {
                if let Some(entry) = self.sessions.remove(id) {
                    self.close(&entry.rec.user_id, *id);
                }
                for token in self.family.remove(id).unwrap_or_default() {
                    self.forget_token(token);
                }
            }
            Op::OneTime(rec) => {
                let key = (rec.user_id.clone(), rec.purpose);
                if let Some(old) = self.one_time_of.insert(key, rec.token_hash.clone()) {
                    self.one_time.remove(&old);
                }
                self.one_time.insert(rec.token_hash.clone(), rec.clone());
            }
            Op::DropOneTime(hash) => {
                if let Some(rec) = self.one_time.remove(hash) {
                    let key = (rec.user_id.clone(), rec.purpose);
                    if self.one_time_of.get(&key) == Some(hash) {
                        self.one_time_of.remove(&key);
                    }
                }
            }
            Op::Outgoing(rec) => {
                if let Some(old) = self.outbox.insert(rec.id, rec.clone()) {
                    self.outbox_index.remove(&old);
                }
                self.outbox_index.add(rec);
            }
            Op::DropOutgoing(id) => {
                if let Some(old) = self.outbox.remove(id) {
                    self.outbox_index.remove(&old);
                }
                shrink_if_sparse(&mut self.outbox);
            }
            Op::TotpStep(rec) => {
                self.totp_steps.insert(rec.user_id.clone(), rec.clone());
            }
            Op::DropTotpStep(user) => {
                self.totp_steps.remove(user);
                shrink_if_sparse(&mut self.totp_steps);
            }
            Op::DropToken(id) => {
                if let Some(session) = self.forget_token(*id)
                    && let Some(ids) = self.family.get_mut(&session)
                {
                    ids.retain(|t| t != id);
                    if ids.is_empty() {
                        self.family.remove(&session);
                    }
                }
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_ord += 1;
        self.next_ord
    }

    fn close(&mut self, user_id: &str, id: Uuid) {
        if let Some(set) = self.open_by_user.get_mut(user_id) {
            set.remove(&id);
            if set.is_empty() {
                self.open_by_user.remove(user_id);
            }
        }
    }

    /// Removes a token from the token maps (not from its family); returns its session.
    fn forget_token(&mut self, id: Uuid) -> Option<Uuid> {
        let entry = self.tokens.remove(&id)?;
        let key = hash_key(&entry.rec.token_hash);
        if self.by_hash.get(&key) == Some(&id) {
            self.by_hash.remove(&key);
        }
        Some(entry.rec.session_id)
    }

    pub fn session(&self, id: &Uuid) -> Option<&Arc<SessionRecord>> {
        self.sessions.get(id).map(|e| &e.rec)
    }

    pub fn token(&self, id: &Uuid) -> Option<&Arc<TokenRecord>> {
        self.tokens.get(id).map(|e| &e.rec)
    }

    /// A live token, or a retired one rebuilt from its entry (only a reused token is looked up
    /// that way, so the allocation is rare).
    pub fn token_by_hash(&self, hash: &str) -> Option<Arc<TokenRecord>> {
        let key = hash_key(hash);
        if let Some(token) = self.by_hash.get(&key).and_then(|id| self.token(id)) {
            return Some(token.clone());
        }
        self.retired
            .read()
            .get(&key)
            .map(|t| Arc::new(t.record(&key)))
    }

    /// The user's unrevoked sessions (live or not), with their order of arrival.
    pub fn open_sessions_of<'a>(
        &'a self,
        user_id: &str,
    ) -> impl Iterator<Item = &'a Entry<SessionRecord>> + 'a {
        self.open_by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.sessions.get(id))
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Entry<SessionRecord>> {
        self.sessions.values()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Live and retired tokens.
    pub fn token_count(&self) -> usize {
        self.tokens.len() + self.retired.read().len()
    }

    /// Session ids that have tokens, live or retired, but no session (left by an old file).
    pub fn orphan_families(&self) -> Vec<Uuid> {
        let mut orphans: HashSet<Uuid> = self
            .family
            .keys()
            .filter(|id| !self.sessions.contains_key(id))
            .copied()
            .collect();
        orphans.extend(
            self.retired
                .read()
                .values()
                .map(|t| t.session_id)
                .filter(|id| !self.sessions.contains_key(id)),
        );
        orphans.into_iter().collect()
    }

    pub fn one_time_token(&self, hash: &str) -> Option<&Arc<OneTimeToken>> {
        self.one_time.get(hash)
    }

    pub fn one_time_tokens(&self) -> impl Iterator<Item = &Arc<OneTimeToken>> {
        self.one_time.values()
    }

    /// The last TOTP step accepted for the user, as far as the journal knows.
    pub fn totp_step(&self, user_id: &str) -> Option<i64> {
        self.totp_steps.get(user_id).map(|s| s.step)
    }

    pub fn totp_steps(&self) -> impl Iterator<Item = &Arc<TotpStep>> {
        self.totp_steps.values()
    }

    /// The accepted steps more than [`TOTP_STEPS_KEPT`] before `now`'s.
    pub fn totp_steps_past(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Arc<TotpStep>> {
        let oldest = now.timestamp().div_euclid(TOTP_STEP_SECS as i64) - TOTP_STEPS_KEPT;
        self.totp_steps.values().filter(move |s| s.step < oldest)
    }

    pub fn outgoing(&self, id: &Uuid) -> Option<&Arc<OutboxMessage>> {
        self.outbox.get(id)
    }

    /// The pending and dead messages of `kind`, indexed.
    pub fn outbox_of(&self, kind: &str) -> Option<&KindIndex> {
        self.outbox_index.kind(kind)
    }

    /// The outbox, oldest first.
    pub fn outbox(&self) -> Vec<Arc<OutboxMessage>> {
        let mut all: Vec<Arc<OutboxMessage>> = self.outbox.values().cloned().collect();
        all.sort_by_key(|m| (m.created_at, m.id));
        all
    }

    /// Every record, in order of arrival: what a snapshot holds.
    pub fn records(&self) -> (Vec<Arc<SessionRecord>>, Vec<Arc<TokenRecord>>) {
        let mut sessions: Vec<&Entry<SessionRecord>> = self.sessions.values().collect();
        sessions.sort_unstable_by_key(|e| e.ord);
        let mut tokens: Vec<&Entry<TokenRecord>> = self.tokens.values().collect();
        tokens.sort_unstable_by_key(|e| e.ord);
        (
            sessions.into_iter().map(|e| e.rec.clone()).collect(),
            tokens.into_iter().map(|e| e.rec.clone()).collect(),
        )
    }
}
