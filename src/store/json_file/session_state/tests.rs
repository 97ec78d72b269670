//! The sessions in memory: indexes, ops, retirement and prune.

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
