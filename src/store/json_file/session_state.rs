//! The file store's sessions in memory, indexed: sessions by id, tokens by id and by hash, each
//! session's tokens, and each user's unrevoked sessions. The state changes only through [`Op`]s
//! (whole-record upserts and removals), which is what the journal records: the same ops applied
//! in the same order to the same state give the same state, on the pending and the published
//! copy alike, and on restart.
//!
//! Records sit behind `Arc`s that the pending and the published copy (and a compaction's
//! snapshot) share, so a change costs one new record, never a copy of the state.
//!
//! Rotated tokens are *retired* once their rotation is durable: a rotated token never changes
//! again and is only ever looked up by hash (reuse detection, the grace window, logout with an
//! old token), so it leaves both copies' indexes for one map the copies share, keyed by hash,
//! without its hash string. Nearly all of a busy store's tokens are rotated ones (one per
//! refresh, kept until the session ends), so this is most of its memory. Rotation decisions are
//! the same either way: a retired token keeps its rotation time and successor, and a successor
//! that is itself retired has been rotated, which already rules out the grace answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{ENDED_SESSION_RETENTION_DAYS, SessionRecord, TokenRecord};

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

/// One change to the sessions.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Inserts or replaces a session.
    Session(Arc<SessionRecord>),
    /// Inserts or replaces a token (by id; its hash and session never change).
    Token(Arc<TokenRecord>),
    /// Removes a session and all its tokens.
    DropSession(Uuid),
    /// Removes one token.
    DropToken(Uuid),
}

/// An op as the journal writes it: `{"session":{…}}`, `{"token":{…}}`, `{"dropSession":"…"}`,
/// `{"dropToken":"…"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum OpOut<'a> {
    Session(&'a SessionRecord),
    Token(&'a TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum OpIn {
    Session(SessionRecord),
    Token(TokenRecord),
    DropSession(Uuid),
    DropToken(Uuid),
}

impl<'a> From<&'a Op> for OpOut<'a> {
    fn from(op: &'a Op) -> Self {
        match op {
            Op::Session(s) => Self::Session(s),
            Op::Token(t) => Self::Token(t),
            Op::DropSession(id) => Self::DropSession(*id),
            Op::DropToken(id) => Self::DropToken(*id),
        }
    }
}

impl From<OpIn> for Op {
    fn from(op: OpIn) -> Self {
        match op {
            OpIn::Session(s) => Self::Session(Arc::new(s)),
            OpIn::Token(t) => Self::Token(Arc::new(t)),
            OpIn::DropSession(id) => Self::DropSession(id),
            OpIn::DropToken(id) => Self::DropToken(id),
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

/// A retired token: a rotated [`TokenRecord`] without its hash, which is its key in [`Retired`].
/// 64 bytes: times as nanoseconds since the epoch, and no successor as the nil id. One is kept
/// per refresh until its session ends, so its size is most of a busy file store's memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetiredToken {
    id: Uuid,
    session_id: Uuid,
    created_at_ns: i64,
    rotated_at_ns: i64,
    /// Nil when the token has no successor (a rotation that revoked its session).
    replaced_by: Uuid,
}

impl RetiredToken {
    /// `None` for a token this layout cannot hold exactly (not rotated, a time outside
    /// 1677–2262, a nil successor: only ever in a hand-edited file); such a token stays live.
    fn of(t: &TokenRecord) -> Option<Self> {
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
pub(super) type RetiredMap = IndexMap<HashKey, RetiredToken>;

/// The retired tokens, shared by the pending and the published copy (and a reload replaces it
/// with the loaded state's own).
#[derive(Debug, Default)]
pub(super) struct Retired(RwLock<RetiredMap>);

impl Retired {
    pub fn read(&self) -> RwLockReadGuard<'_, RetiredMap> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RetiredMap> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
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
                Op::Session(_) | Op::Token(_) => {}
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

/// A change in progress on the pending state: every edit is applied at once and recorded as an
/// op for the journal.
pub(super) struct Tx<'a> {
    state: &'a mut Sessions,
    ops: &'a mut Vec<Op>,
}

impl<'a> Tx<'a> {
    pub fn new(state: &'a mut Sessions, ops: &'a mut Vec<Op>) -> Self {
        Self { state, ops }
    }

    pub fn state(&self) -> &Sessions {
        self.state
    }

    fn record(&mut self, op: Op) {
        self.state.apply(&op);
        self.ops.push(op);
    }

    #[cfg(test)]
    pub fn record_for_test(&mut self, op: Op) {
        self.record(op);
    }

    pub fn put_session(&mut self, session: SessionRecord) {
        if let Some(hint) = &mut self.state.prune_hint {
            hint.due = hint
                .due
                .min(ended_at(&session, hint.idle_ttl) + retention());
        }
        self.record(Op::Session(Arc::new(session)));
    }

    pub fn put_token(&mut self, token: TokenRecord) {
        self.record(Op::Token(Arc::new(token)));
    }

    /// Removes the sessions that ended more than the retention ago (and their tokens, and tokens
    /// whose session is gone), like the old full-file prune, but only when one can be due: the
    /// scan is skipped until the earliest end seen plus the retention. Returns how many sessions
    /// went.
    pub fn prune(&mut self, now: DateTime<Utc>, idle_ttl: chrono::Duration, force: bool) -> u64 {
        let skip = !force
            && self
                .state
                .prune_hint
                .is_some_and(|h| h.idle_ttl == idle_ttl && now < h.due);
        if skip {
            return 0;
        }
        let keep = retention();
        let mut due: Option<DateTime<Utc>> = None;
        let mut gone = Vec::new();
        for entry in self.state.sessions() {
            let until = ended_at(&entry.rec, idle_ttl) + keep;
            if now < until {
                due = Some(due.map_or(until, |d| d.min(until)));
            } else {
                gone.push(entry.rec.id);
            }
        }
        let orphans = self.state.orphan_families();
        let count = gone.len() as u64;
        for id in gone.into_iter().chain(orphans) {
            self.record(Op::DropSession(id));
        }
        self.state.prune_hint = Some(PruneHint {
            due: due.unwrap_or(DateTime::<Utc>::MAX_UTC),
            idle_ttl,
        });
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, at: DateTime<Utc>) -> SessionRecord {
        SessionRecord {
            id: Uuid::new_v4(),
            user_id: user.into(),
            device_name: "d".into(),
            ip_address: "127.0.0.1".into(),
            user_agent: None,
            fingerprint: "f".into(),
            created_at: at,
            last_used_at: at,
            expires_at: at + chrono::Duration::days(30),
            revoked_at: None,
            revoked_reason: None,
        }
    }

    fn token(session_id: Uuid, hash: &str, at: DateTime<Utc>) -> TokenRecord {
        TokenRecord {
            id: Uuid::new_v4(),
            session_id,
            token_hash: hash.into(),
            created_at: at,
            rotated_at: None,
            replaced_by: None,
        }
    }

    #[test]
    fn a_retired_token_reads_back_as_the_rotated_token_it_was() {
        let now = Utc::now();
        let mut t = token(
            Uuid::new_v4(),
            &"c1".repeat(32),
            now - chrono::Duration::minutes(1),
        );
        t.rotated_at = Some(now);
        let key = hash_key(&t.token_hash);
        // No successor (the rotation revoked its session), then one.
        assert_eq!(RetiredToken::of(&t).unwrap().record(&key), t);
        t.replaced_by = Some(Uuid::new_v4());
        assert_eq!(RetiredToken::of(&t).unwrap().record(&key), t);
        // What the layout cannot hold exactly stays a live token.
        let far = DateTime::from_timestamp(10_000_000_000, 0).unwrap(); // year 2286
        for odd in [
            TokenRecord {
                replaced_by: Some(Uuid::nil()),
                ..t.clone()
            },
            TokenRecord {
                rotated_at: None,
                ..t.clone()
            },
            TokenRecord {
                created_at: far,
                ..t.clone()
            },
        ] {
            assert!(RetiredToken::of(&odd).is_none(), "{odd:?}");
        }
    }

    #[test]
    fn indexes_follow_upserts_and_removals() {
        let now = Utc::now();
        let mut state = Sessions::default();
        let mut ops = Vec::new();
        let s = session("ann", now);
        let t1 = token(s.id, "h1", now);
        let t2 = token(s.id, "h2", now);
        {
            let mut tx = Tx::new(&mut state, &mut ops);
            tx.put_session(s.clone());
            tx.put_token(t1.clone());
            tx.put_token(t2.clone());
        }
        assert_eq!(state.token_by_hash("h2").map(|t| t.id), Some(t2.id));
        assert_eq!(state.open_sessions_of("ann").count(), 1);

        let mut revoked = s.clone();
        revoked.revoked_at = Some(now);
        {
            let mut tx = Tx::new(&mut state, &mut ops);
            tx.put_session(revoked);
            tx.record(Op::DropSession(s.id));
        }
        assert_eq!(state.open_sessions_of("ann").count(), 0);
        assert!(state.token_by_hash("h1").is_none());
        assert_eq!(state.token_count(), 0);
        assert_eq!(state.session_count(), 0);

        // The recorded ops rebuild the same state from scratch.
        let mut replayed = Sessions::default();
        for op in &ops {
            replayed.apply(op);
        }
        assert_eq!(replayed.session_count(), 0);
        assert_eq!(replayed.token_count(), 0);
        assert_eq!(ops.len(), 5);
    }

    /// A rotation as the store records it: the old token marked, its successor added.
    fn rotate(tx: &mut Tx<'_>, old: &TokenRecord, hash: &str, at: DateTime<Utc>) -> TokenRecord {
        let next = token(old.session_id, hash, at);
        let mut rotated = old.clone();
        rotated.rotated_at = Some(at);
        rotated.replaced_by = Some(next.id);
        tx.put_token(rotated);
        tx.put_token(next.clone());
        next
    }

    #[test]
    fn retired_tokens_leave_both_copies_but_are_still_found_by_hash_until_their_session_goes() {
        let now = Utc::now();
        let early = now - chrono::Duration::minutes(5);
        let s = session("ann", early);
        let other = session("bob", early);
        let t1 = token(s.id, &"a1".repeat(32), early);
        let b1 = token(other.id, &"b1".repeat(32), early);
        let mut pending = Sessions::default();
        let mut ops = Vec::new();
        let (t3, t2) = {
            let mut tx = Tx::new(&mut pending, &mut ops);
            tx.put_session(s.clone());
            tx.put_session(other.clone());
            tx.put_token(t1.clone());
            tx.put_token(b1.clone());
            let t2 = rotate(&mut tx, &t1, &"a2".repeat(32), early);
            (rotate(&mut tx, &t2, &"a3".repeat(32), now), t2)
        };
        rotate(
            &mut Tx::new(&mut pending, &mut ops),
            &b1,
            &"b2".repeat(32),
            early,
        );
        let mut published = pending.clone();
        assert_eq!(published.token_count(), 5);

        // t3 is live (not rotated), and the last id is unknown: neither moves.
        let moved = published.retire(&[t1.id, t2.id, t3.id, b1.id, Uuid::new_v4()]);
        assert_eq!(sorted(moved.clone()), sorted(vec![t1.id, t2.id, b1.id]));
        pending.forget_retired(&moved);
        for copy in [&pending, &published] {
            // Out of the indexes by id, in the count, and found by hash as the rotated tokens
            // they are, so a reuse is still a reuse.
            assert!(copy.token(&t1.id).is_none());
            assert_eq!(copy.token_count(), 5);
            let found = copy.token_by_hash(&t1.token_hash).unwrap();
            assert_eq!(found.id, t1.id);
            assert_eq!(found.session_id, s.id);
            assert_eq!(found.token_hash, t1.token_hash);
            assert_eq!(found.created_at, t1.created_at);
            assert_eq!(found.rotated_at, Some(early));
            assert_eq!(found.replaced_by, Some(t2.id));
            assert_eq!(copy.token_by_hash(&t2.token_hash).unwrap().id, t2.id);
            assert_eq!(copy.family[&s.id], vec![t3.id]);
        }
        // Retiring twice changes nothing.
        assert!(published.retire(&[t1.id]).is_empty());

        // Dropping a session takes its retired tokens once the drop is durable, not before.
        let mut drop_ops = Vec::new();
        Tx::new(&mut pending, &mut drop_ops).record(Op::DropSession(s.id));
        assert!(pending.token_by_hash(&t1.token_hash).is_some());
        for op in &drop_ops {
            published.apply(op);
        }
        published.sweep_retired(&drop_ops);
        for copy in [&pending, &published] {
            assert!(copy.token_by_hash(&t1.token_hash).is_none());
            assert!(copy.token_by_hash(&t3.token_hash).is_none());
            assert!(copy.token_by_hash(&b1.token_hash).is_some());
            assert_eq!(copy.token_count(), 2);
        }
    }

    /// A session whose tokens are all retired and whose record is gone (an old file's orphans)
    /// is still pruned.
    #[test]
    fn prune_finds_orphans_among_retired_tokens() {
        let now = Utc::now();
        let early = now - chrono::Duration::minutes(5);
        let orphan = token(Uuid::new_v4(), &"c1".repeat(32), early);
        let mut rotated = orphan.clone();
        rotated.rotated_at = Some(early);
        let mut state = Sessions::from_records(0, vec![], vec![rotated]);
        assert_eq!(state.retire(&[orphan.id]).len(), 1);
        assert!(state.family.is_empty());
        let mut ops = Vec::new();
        Tx::new(&mut state, &mut ops).prune(now, chrono::Duration::days(7), true);
        assert!(matches!(ops.as_slice(), [Op::DropSession(id)] if *id == orphan.session_id));
        state.sweep_retired(&ops);
        assert_eq!(state.token_count(), 0);
    }

    fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
        ids.sort();
        ids
    }

    #[test]
    fn prune_drops_long_ended_sessions_and_orphans_and_then_waits() {
        let now = Utc::now();
        let idle = chrono::Duration::days(7);
        let old = session("ann", now - chrono::Duration::days(40));
        let fresh = session("ann", now);
        let orphan = token(Uuid::new_v4(), "orphan", now);
        let mut state = Sessions::from_records(
            0,
            vec![old.clone(), fresh.clone()],
            vec![token(old.id, "h-old", now), orphan],
        );
        let mut ops = Vec::new();
        let mut tx = Tx::new(&mut state, &mut ops);
        assert_eq!(tx.prune(now, idle, false), 1);
        // Nothing can be due before the fresh session's end plus the retention: no scan.
        assert_eq!(tx.prune(now + chrono::Duration::days(1), idle, false), 0);
        assert!(state.session(&fresh.id).is_some());
        assert!(state.session(&old.id).is_none());
        assert_eq!(state.token_count(), 0);
        assert!(state.prune_hint.unwrap().due <= now + chrono::Duration::days(7) + retention());
    }
}
