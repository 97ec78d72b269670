//! Loading the sessions from their files: the snapshot, then the old and the current journal,
//! batch by batch; and the two operations on a folder no service is using (reading it, folding
//! the journal into the snapshot).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;

use super::super::session_state::{Op, Sessions};
use super::codec::{Decoded, decode_line};
use super::file::JournalFile;
use super::snapshot::{SnapshotRecords, TokensOut, read_snapshot, write_snapshot};
use super::{JOURNAL, OLD_JOURNAL, SNAPSHOT};
use crate::durable_file;

/// The sessions as the files hold them, and what the writer needs to know of the files.
pub(super) struct Loaded {
    pub state: Sessions,
    pub(super) snapshot_len: u64,
    pub(super) old_len: u64,
    pub(super) journal: JournalFile,
}

/// Reads the snapshot, then the old and the current journal. Never writes.
pub(super) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let snapshot_path = dir.join(SNAPSHOT);
    let (mut state, snapshot_len) = match File::open(&snapshot_path) {
        Ok(file) => {
            let len = file.metadata()?.len();
            let state = read_snapshot(BufReader::with_capacity(1 << 16, file))
                .with_context(|| format!("{} is corrupt", snapshot_path.display()))?;
            (state, len)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Sessions::default(), 0),
        Err(e) => {
            return Err(e).with_context(|| format!("could not read {}", snapshot_path.display()));
        }
    };
    let old_path = dir.join(OLD_JOURNAL);
    let old_len = match File::open(&old_path) {
        Ok(file) => replay(BufReader::new(file), &mut state, &old_path)?.1,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("could not read {}", old_path.display())),
    };
    let journal_path = dir.join(JOURNAL);
    let journal = match OpenOptions::new()
        .read(true)
        .append(true)
        .open(&journal_path)
    {
        Ok(file) => {
            let (good, len) = replay(BufReader::new(&file), &mut state, &journal_path)?;
            if good < len {
                tracing::warn!(
                    path = %journal_path.display(),
                    ignored_bytes = len - good,
                    "the journal ends in a write cut short by a crash; it is ignored"
                );
            }
            JournalFile {
                inode: file.metadata()?.ino(),
                file: Some(file),
                good_len: good,
                seen_len: Some(len),
                dir_sync_due: false,
                path: journal_path,
                #[cfg(test)]
                fail_next_write: false,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => JournalFile {
            file: None,
            inode: 0,
            good_len: 0,
            seen_len: Some(0),
            dir_sync_due: false,
            path: journal_path,
            #[cfg(test)]
            fail_next_write: false,
        },
        Err(e) => {
            return Err(e).with_context(|| format!("could not open {}", journal_path.display()));
        }
    };
    state.retire_all_rotated();
    Ok(Loaded {
        state,
        snapshot_len,
        old_len,
        journal,
    })
}

/// Applies the batches of a journal that follow on from `state`, line by line; returns the
/// length of its readable part (all of it, unless its end is torn) and its whole length.
fn replay(
    mut reader: impl BufRead,
    state: &mut Sessions,
    path: &Path,
) -> anyhow::Result<(u64, u64)> {
    let mut offset = 0u64;
    let mut torn_at: Option<u64> = None;
    let mut number = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("could not read {}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        let start = offset;
        offset += read as u64;
        if line.pop() != Some(b'\n') {
            // No newline: a write cut short.
            torn_at.get_or_insert(start);
            break;
        }
        let decoded = decode_line(&line)
            .with_context(|| format!("{} line {number} is corrupt", path.display()))?;
        let batch = match decoded {
            Decoded::Torn => {
                torn_at.get_or_insert(start);
                continue;
            }
            Decoded::Line(batch) => batch,
        };
        if let Some(torn) = torn_at {
            anyhow::bail!(
                "{} is corrupt: the line at byte {torn} is unreadable but line {number} after it \
                 is whole",
                path.display()
            );
        }
        if batch.seq <= state.seq {
            // Already in the snapshot, or a stale batch of a process that lost a race.
            continue;
        }
        anyhow::ensure!(
            batch.seq == state.seq + 1,
            "{} is corrupt: line {number} is batch {} but the next is {} (batches are missing)",
            path.display(),
            batch.seq,
            state.seq + 1
        );
        for op in batch.ops {
            state.apply(&Op::from(op));
        }
        state.seq = batch.seq;
    }
    Ok((torn_at.unwrap_or(offset), offset))
}

/// The sessions of `dir` in the shape earlier versions kept in `sessions.json`
/// (`{"sessions":[…],"tokens":[…]}`): the snapshot with the journal applied. Read-only.
pub fn read_sessions(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let loaded = load(dir)?;
    let records = SnapshotRecords::of(&loaded.state);
    Ok(serde_json::json!({
        "sessions": serde_json::to_value(records.sessions.iter().map(|s| s.as_ref()).collect::<Vec<_>>())?,
        "tokens": serde_json::to_value(TokensOut { live: &records.tokens, retired: &records.retired })?,
    }))
}

/// Folds the journal into `sessions.json` and removes it, for a folder no service is using (to
/// edit `sessions.json` by hand, or before running an older version that reads only that file).
pub fn compact_sessions(dir: &Path) -> anyhow::Result<()> {
    let loaded = load(dir)?;
    write_snapshot(dir, &SnapshotRecords::of(&loaded.state))?;
    for name in [JOURNAL, OLD_JOURNAL] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("could not remove {name}")),
        }
    }
    durable_file::sync_dir(dir)?;
    Ok(())
}
