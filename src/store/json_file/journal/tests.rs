//! The journal as a whole: restarts, torn and corrupt lines, failed writes, compaction cut
//! short at every step, retired tokens, and a second process on the same folder.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::super::session_state::{Op, Sessions};
use super::codec::encode_line;
use super::load::load;
use super::snapshot::{SnapshotRecords, write_snapshot};
use super::*;
use crate::store::{SessionRecord, StoreError, StoreResult, TokenRecord};

fn session(user: &str) -> SessionRecord {
    let now = Utc::now();
    SessionRecord {
        id: Uuid::new_v4(),
        user_id: user.into(),
        device_name: "Chrome on macOS".into(),
        ip_address: "127.0.0.1".into(),
        user_agent: Some("Mozilla/5.0".into()),
        fingerprint: "f".repeat(64),
        created_at: now,
        last_used_at: now,
        expires_at: now + chrono::Duration::days(30),
        revoked_at: None,
        revoked_reason: None,
    }
}

async fn add(log: &SessionLog, user: &str) -> StoreResult<Uuid> {
    let s = session(user);
    let id = s.id;
    log.update(|tx| {
        tx.put_session(s);
        Ok(id)
    })
    .await
}

fn ids(log: &SessionLog) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = log.read().sessions().map(|e| e.rec.id).collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

fn append_raw(dir: &Path, name: &str, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join(name))
        .unwrap();
    file.write_all(bytes).unwrap();
}

#[test]
fn a_snapshot_loads_whatever_its_key_order_and_ignores_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = session("ann");
    let token = TokenRecord {
        id: Uuid::new_v4(),
        session_id: s.id,
        token_hash: "ab".repeat(32),
        created_at: s.created_at,
        rotated_at: None,
        replaced_by: None,
    };
    let file = serde_json::json!({ "tokens": [token], "note": {"x": [1]}, "sessions": [s] });
    fs::write(dir.path().join(SNAPSHOT), file.to_string()).unwrap();
    let loaded = load(dir.path()).unwrap();
    assert_eq!(loaded.state.seq, 0, "no seq: earlier versions' file");
    let found = loaded.state.token_by_hash(&"ab".repeat(32)).unwrap();
    assert_eq!(loaded.state.session(&found.session_id).unwrap().id, s.id);
    assert_eq!(loaded.state.open_sessions_of("ann").count(), 1);

    fs::write(dir.path().join(SNAPSHOT), b"{\"sessions\":[{\"id\":1}]}").unwrap();
    assert!(format!("{:#}", load(dir.path()).err().unwrap()).contains("corrupt"));
}

#[tokio::test]
async fn restart_replays_the_journal_onto_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let mut expected = Vec::new();
    for i in 0..20 {
        expected.push(add(&log, &format!("user-{}", i % 3)).await.unwrap());
    }
    assert!(
        !dir.path().join(SNAPSHOT).exists(),
        "no snapshot needed yet"
    );
    let reopened = SessionLog::open(dir.path()).unwrap();
    assert_eq!(ids(&reopened), sorted(expected.clone()));
    assert_eq!(reopened.read().seq, 20);
    assert_eq!(reopened.read().open_sessions_of("user-1").count(), 7);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.path().join(JOURNAL))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_torn_last_line_is_ignored_then_cut_off_before_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let first = add(&log, "ann").await.unwrap();
    drop(log);
    // A crash in the middle of the next append: half a line, or zeros.
    for torn in [
        &b"{\"seq\":2,\"ops\":[{\"session\":{\"id\""[..],
        &[0u8; 300][..],
    ] {
        let before = fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        append_raw(dir.path(), JOURNAL, torn);
        let log = SessionLog::open(dir.path()).unwrap();
        assert_eq!(ids(&log), vec![first]);
        // Opening wrote nothing.
        assert_eq!(
            fs::metadata(dir.path().join(JOURNAL)).unwrap().len(),
            before + torn.len() as u64
        );
        let second = add(&log, "ann").await.unwrap();
        let reopened = SessionLog::open(dir.path()).unwrap();
        assert_eq!(ids(&reopened), sorted(vec![first, second]));
        // The torn bytes are gone: the file is whole lines only.
        let text = fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(text.lines().all(|l| l.starts_with("{\"seq\":")), "{text}");
        // Back to one session for the next round.
        let log = SessionLog::open(dir.path()).unwrap();
        log.update(|tx| {
            tx.record_for_test(Op::DropSession(second));
            Ok(())
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn an_unreadable_line_before_whole_ones_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    add(&log, "ann").await.unwrap();
    drop(log);
    let good = fs::read(dir.path().join(JOURNAL)).unwrap();
    let mut bytes = good.clone();
    bytes.extend_from_slice(b"{\"seq\":2,\"ops\":[],\"sum\":\"0000000000000000\"}\n");
    bytes.extend_from_slice(&good);
    fs::write(dir.path().join(JOURNAL), &bytes).unwrap();
    let error = SessionLog::open(dir.path()).err().unwrap();
    assert!(format!("{error:#}").contains("corrupt"), "{error:#}");

    // A missing batch is corruption too.
    let line = encode_line(5, &[]).unwrap();
    let mut bytes = good.clone();
    bytes.extend_from_slice(&line);
    fs::write(dir.path().join(JOURNAL), &bytes).unwrap();
    let error = SessionLog::open(dir.path()).err().unwrap();
    assert!(format!("{error:#}").contains("missing"), "{error:#}");
}

#[tokio::test]
async fn a_failed_write_fails_its_requests_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let kept = add(&log, "ann").await.unwrap();
    let len = fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
    log.fail_next_write();
    let failed = add(&log, "ann").await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(ids(&log), vec![kept], "readers never saw it");
    assert_eq!(
        fs::metadata(dir.path().join(JOURNAL)).unwrap().len(),
        len,
        "the half line was cut off again"
    );
    // The pending state went back too: the next change is on top of `kept` only.
    let next = add(&log, "ann").await.unwrap();
    assert_eq!(ids(&log), sorted(vec![kept, next]));
    let reopened = SessionLog::open(dir.path()).unwrap();
    assert_eq!(ids(&reopened), sorted(vec![kept, next]));
    assert_eq!(reopened.read().seq, 2);
}

#[tokio::test]
async fn concurrent_changes_share_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SessionLog::open(dir.path()).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { add(&log, &format!("u{}", i % 5)).await.unwrap() })
        })
        .collect();
    let mut expected = Vec::new();
    for task in tasks {
        expected.push(task.await.unwrap());
    }
    let lines = fs::read_to_string(dir.path().join(JOURNAL))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 200, "{lines}");
    let reopened = SessionLog::open(dir.path()).unwrap();
    assert_eq!(ids(&reopened), sorted(expected));
    assert_eq!(reopened.read().seq, lines as u64);
}

#[tokio::test]
async fn compaction_past_the_bound_keeps_every_change_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let mut compactions = log.compactions();
    let mut expected = Vec::new();
    // Each line is ~500 bytes: enough of them pass the 1 MiB bound, and the compaction
    // (rename, then the snapshot) starts after the write that crossed it.
    while *compactions.borrow() == 0 && !dir.path().join(OLD_JOURNAL).exists() {
        expected.push(add(&log, "ann").await.unwrap());
        assert!(expected.len() < 20_000, "no compaction");
    }
    compactions.wait_for(|n| *n >= 1).await.unwrap();
    // Changes after the compaction started land in the new journal.
    for _ in 0..10 {
        expected.push(add(&log, "bob").await.unwrap());
    }
    assert!(!dir.path().join(OLD_JOURNAL).exists());
    let snapshot: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join(SNAPSHOT)).unwrap()).unwrap();
    assert!(snapshot["seq"].as_u64().unwrap() > 0);
    assert!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len() < COMPACT_MIN_BYTES);
    let reopened = SessionLog::open(dir.path()).unwrap();
    assert_eq!(ids(&reopened), sorted(expected.clone()));
    assert_eq!(reopened.read().seq, expected.len() as u64);
}

/// Every point a compaction can be cut at leaves files that load to the same state.
#[tokio::test]
async fn a_compaction_cut_short_anywhere_loads_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(add(&log, "ann").await.unwrap());
    }
    drop(log);
    let before = fs::read(dir.path().join(JOURNAL)).unwrap();
    let records = SnapshotRecords::of(&load(dir.path()).unwrap().state);
    let later = dir.path().join("later");
    fs::create_dir(&later).unwrap();
    // Two more batches after the rotation point, as the new journal would hold them.
    {
        fs::copy(dir.path().join(JOURNAL), later.join(JOURNAL)).unwrap();
        let log = SessionLog::open(&later).unwrap();
        expected.push(add(&log, "ann").await.unwrap());
        expected.push(add(&log, "ann").await.unwrap());
    }
    let all = fs::read(later.join(JOURNAL)).unwrap();
    let after = &all[before.len()..];
    let expected = sorted(expected);

    let case = |name: &str, old: Option<&[u8]>, journal: Option<&[u8]>, snapshot: bool| {
        let d = dir.path().join(name);
        fs::create_dir(&d).unwrap();
        if let Some(old) = old {
            fs::write(d.join(OLD_JOURNAL), old).unwrap();
        }
        if let Some(journal) = journal {
            fs::write(d.join(JOURNAL), journal).unwrap();
        }
        if snapshot {
            write_snapshot(&d, &records).unwrap();
        }
        let loaded = load(&d).unwrap();
        let mut ids: Vec<Uuid> = loaded.state.sessions().map(|e| e.rec.id).collect();
        ids.sort();
        assert_eq!(ids, expected, "{name}");
        assert_eq!(loaded.state.seq, 7, "{name}");
    };
    // Renamed; the new journal not made yet (then appended to).
    case("renamed", Some(&before), Some(after), false);
    // Snapshot written, old journal not deleted yet.
    case("snapshot-written", Some(&before), Some(after), true);
    // Old journal deleted.
    case("old-deleted", None, Some(after), true);
    // Snapshot written but the journal was never rotated (the fallback after a failure).
    case("not-rotated", None, Some(&all), true);
    // The old format: no `seq` in the snapshot, everything in the journal.
    case("whole-journal", None, Some(&all), false);
}

/// A rotated token leaves both copies' indexes for the retired map once its rotation is
/// written, is still found by hash as the rotated token it is, is in a snapshot written from
/// that state, and is retired again when the files are loaded.
#[tokio::test]
async fn retired_tokens_are_found_by_hash_after_a_restart_and_in_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let s = session("ann");
    let at = Utc::now() - chrono::Duration::seconds(1);
    let token = |hash: &str| TokenRecord {
        id: Uuid::now_v7(),
        session_id: s.id,
        token_hash: hash.repeat(32),
        created_at: at,
        rotated_at: None,
        replaced_by: None,
    };
    let (first, second) = (token("a1"), token("a2"));
    let mut rotated = first.clone();
    rotated.rotated_at = Some(at);
    rotated.replaced_by = Some(second.id);
    log.update(|tx| {
        tx.put_session(s.clone());
        tx.put_token(first.clone());
        Ok(())
    })
    .await
    .unwrap();
    log.update(|tx| {
        tx.put_token(rotated.clone());
        tx.put_token(second.clone());
        Ok(())
    })
    .await
    .unwrap();
    // The published copy retires before the write's requests are answered, the pending one
    // after, before the next write.
    add(&log, "bob").await.unwrap();

    let check = |state: &Sessions| {
        assert!(state.token(&first.id).is_none());
        let found = state.token_by_hash(&first.token_hash).unwrap();
        assert_eq!(
            (found.id, found.session_id, found.created_at),
            (first.id, s.id, at)
        );
        assert_eq!(
            (found.rotated_at, found.replaced_by),
            (Some(at), Some(second.id))
        );
        assert_eq!(found.token_hash, first.token_hash);
        assert_eq!(state.token(&second.id).unwrap().rotated_at, None);
        assert_eq!(state.token_count(), 2);
    };
    check(&log.read());
    check(&log.commit.state().await.state);

    let snapshot = dir.path().join("snapshot");
    fs::create_dir(&snapshot).unwrap();
    write_snapshot(&snapshot, &SnapshotRecords::of(&log.read())).unwrap();
    let snapshot: serde_json::Value =
        serde_json::from_slice(&fs::read(snapshot.join(SNAPSHOT)).unwrap()).unwrap();
    let tokens = snapshot["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().any(|t| t["id"] == first.id.to_string()
        && t["tokenHash"] == first.token_hash.as_str()
        && t["replacedBy"] == second.id.to_string()));
    check(&load(&dir.path().join("snapshot")).unwrap().state);
    drop(log);
    let reopened = SessionLog::open(dir.path()).unwrap();
    check(&reopened.read());
}

#[tokio::test]
async fn a_second_process_writing_is_noticed_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let service = SessionLog::open(dir.path()).unwrap();
    let first = add(&service, "ann").await.unwrap();
    // The CLI opens the same folder and writes.
    let cli = SessionLog::open(dir.path()).unwrap();
    let from_cli = add(&cli, "ann").await.unwrap();
    drop(cli);
    // The service's next write finds the journal changed: it fails, and loads the folder.
    let lost = add(&service, "ann").await;
    assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
    assert_eq!(ids(&service), sorted(vec![first, from_cli]));
    let next = add(&service, "ann").await.unwrap();
    let reopened = SessionLog::open(dir.path()).unwrap();
    assert_eq!(ids(&reopened), sorted(vec![first, from_cli, next]));
}

/// A user's last accepted TOTP step survives a restart from the journal and from a snapshot,
/// and the periodic prune forgets it once it is more than a day old (dropped on reload too).
#[tokio::test]
async fn totp_steps_survive_a_restart_and_a_snapshot_and_go_after_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let log = SessionLog::open(dir.path()).unwrap();
    let now = Utc::now();
    let step = now.timestamp() / 30;
    log.update(|tx| {
        tx.put_totp_step("ann", step - 1);
        tx.put_totp_step("ann", step);
        tx.put_totp_step("bob", step - 3000);
        Ok(())
    })
    .await
    .unwrap();
    let check = |state: &Sessions| {
        assert_eq!(state.totp_step("ann"), Some(step));
        assert_eq!(state.totp_step("bob"), Some(step - 3000));
        assert_eq!(state.totp_step("cid"), None);
    };
    check(&log.read());
    drop(log);
    let log = SessionLog::open(dir.path()).unwrap();
    check(&log.read());

    let snapshot = dir.path().join("snapshot");
    fs::create_dir(&snapshot).unwrap();
    write_snapshot(&snapshot, &SnapshotRecords::of(&log.read())).unwrap();
    check(&load(&snapshot).unwrap().state);

    // bob's step is more than a day (2,880 steps) old: it refuses nothing and goes.
    let pruned = log.update(|tx| Ok(tx.prune_totp_steps(now))).await.unwrap();
    assert_eq!(pruned, 1);
    log.update(|tx| {
        tx.drop_totp_step("ann");
        tx.drop_totp_step("nobody");
        Ok(())
    })
    .await
    .unwrap();
    drop(log);
    let log = SessionLog::open(dir.path()).unwrap();
    assert_eq!(log.read().totp_steps().count(), 0);
}
