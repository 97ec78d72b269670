//! The sessions of the file store on disk: a snapshot, `sessions.json`, and a journal of the
//! changes since, `sessions.journal`, with group commit.
//!
//! **Files.** `sessions.json` is `{"seq":N,"sessions":[…],"tokens":[…]}`: the state after journal
//! batch `N` (a file without `seq`, as earlier versions wrote it, is batch 0). `sessions.journal`
//! holds one JSON line per batch:
//!
//! ```text
//! {"seq":N+1,"ops":[{"session":{…}},{"token":{…}},{"dropSession":"…"}],"sum":"<16 hex>"}
//! ```
//!
//! `sum` is the first 64 bits of the SHA-256 of the line up to `,"sum"`, so a line cut short or
//! filled with zeros by a crash is recognised. On start the snapshot is read, then the journal
//! (`sessions.journal.old` first, when a compaction was cut short): a batch is applied when its
//! `seq` is the next one, and skipped when it is not newer than the state (already in the
//! snapshot, or written by a second process that lost a race, which then failed its requests);
//! a missing batch (a gap) or an unreadable line followed by good ones is corruption and stops
//! the start. An unreadable last line is a write that a crash cut short: it is ignored, and cut
//! off before the next append. Starting never writes.
//!
//! **Group commit.** Changes apply in order to the pending state under a short lock with no I/O,
//! recording their ops. One write at a time appends the ops gathered since the last one as one
//! line, fdatasyncs it (and the folder, when the journal is new), and only then applies them to
//! the published state that readers see and answers their requests. A write that fails is cut
//! off the file again; its changes and any made on top of them are dropped (the pending state
//! goes back to the published one) and their requests fail. A commit costs what it changed.
//!
//! **Compaction.** Once the journal is past [`COMPACT_MIN_BYTES`] and [`COMPACT_FACTOR`] times
//! the snapshot, the writer renames it to `sessions.journal.old`, starts a new one (folder
//! fsync), and leaves a blocking thread to write the snapshot of the state at that point (temp
//! file, fsync, rename, folder fsync) and then delete the old journal; appends carry on meanwhile.
//! A crash anywhere in that leaves a snapshot and journals whose batches still follow on.
//!
//! **A second process** on the same folder (the CLI while the service runs) finds the journal
//! changed under it (another file, or another length, than its last write left), loads the
//! folder again and fails the batch it was about to write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::Context;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::session_state::{HashKey, Op, OpIn, OpOut, RetiredToken, Sessions, Tx};
use crate::durable_file;
use crate::store::{SessionRecord, StoreError, StoreResult, TokenRecord};

pub(super) const SNAPSHOT: &str = "sessions.json";
pub(super) const JOURNAL: &str = "sessions.journal";
pub(super) const OLD_JOURNAL: &str = "sessions.journal.old";

/// The journal is compacted once it is past both this many bytes…
pub(super) const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// …and this many times the snapshot.
pub(super) const COMPACT_FACTOR: u64 = 2;

// ---------------------------------------------------------------------------------------------
// Lines.

#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    ops: Vec<OpOut<'a>>,
}

#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    ops: Vec<OpIn>,
}

const SUM_KEY: &[u8] = b",\"sum\":\"";
const SUM_HEX: usize = 16;
/// `,"sum":"` + 16 hex digits + `"}`.
const TAIL: usize = SUM_KEY.len() + SUM_HEX + 2;

fn checksum(body: &[u8]) -> String {
    hex::encode(&Sha256::digest(body)[..SUM_HEX / 2])
}

/// One batch as a journal line, newline included.
fn encode_line(seq: u64, ops: &[Op]) -> anyhow::Result<Vec<u8>> {
    let line = LineOut {
        seq,
        ops: ops.iter().map(OpOut::from).collect(),
    };
    let mut buf = serde_json::to_vec(&line).context("serialising a journal line")?;
    // `{"seq":…,"ops":[…]}` becomes `{"seq":…,"ops":[…],"sum":"…"}`.
    buf.pop();
    let sum = checksum(&buf);
    buf.extend_from_slice(SUM_KEY);
    buf.extend_from_slice(sum.as_bytes());
    buf.extend_from_slice(b"\"}\n");
    Ok(buf)
}

enum Decoded {
    Line(LineIn),
    /// Not a whole line with a matching checksum.
    Torn,
}

/// A line without its newline. A line whose checksum matches but whose content does not parse
/// is an error, not a torn write.
fn decode_line(line: &[u8]) -> anyhow::Result<Decoded> {
    if line.len() <= TAIL {
        return Ok(Decoded::Torn);
    }
    let (body, tail) = line.split_at(line.len() - TAIL);
    let (key, rest) = tail.split_at(SUM_KEY.len());
    let (sum, end) = rest.split_at(SUM_HEX);
    if key != SUM_KEY || end != b"\"}" || sum != checksum(body).as_bytes() {
        return Ok(Decoded::Torn);
    }
    let mut json = Vec::with_capacity(body.len() + 1);
    json.extend_from_slice(body);
    json.push(b'}');
    Ok(Decoded::Line(serde_json::from_slice(&json).context(
        "a journal line with a valid checksum is unreadable",
    )?))
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Reads a snapshot (`{"seq":…,"sessions":[…],"tokens":[…]}`, every key optional) straight into
/// a state, record by record: neither the file nor its records are held in between.
fn read_snapshot(reader: impl Read) -> serde_json::Result<Sessions> {
    let mut state = Sessions::default();
    let mut de = serde_json::Deserializer::from_reader(reader);
    de.deserialize_map(SnapshotVisitor(&mut state))?;
    de.end()?;
    Ok(state)
}

struct SnapshotVisitor<'a>(&'a mut Sessions);

impl<'de> Visitor<'de> for SnapshotVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("{\"seq\":…,\"sessions\":[…],\"tokens\":[…]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "seq" => self.0.seq = map.next_value()?,
                "sessions" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |s: SessionRecord| Op::Session(Arc::new(s)),
                })?,
                "tokens" => map.next_value_seed(Records {
                    state: &mut *self.0,
                    op: |t: TokenRecord| Op::Token(Arc::new(t)),
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An array of records, each applied to the state as it is read.
struct Records<'a, T> {
    state: &'a mut Sessions,
    op: fn(T) -> Op,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Records<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Records<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = seq.next_element::<T>()? {
            self.state.apply(&(self.op)(record));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    seq: u64,
    sessions: Vec<&'a SessionRecord>,
    tokens: TokensOut<'a>,
}

/// The live tokens, then the retired ones as whole records (the snapshot's format does not know
/// about retirement: a retired token loads as the rotated token it is).
struct TokensOut<'a> {
    live: &'a [Arc<TokenRecord>],
    retired: &'a [(HashKey, RetiredToken)],
}

impl Serialize for TokensOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.live.len() + self.retired.len()))?;
        for t in self.live {
            seq.serialize_element(t.as_ref())?;
        }
        for (key, t) in self.retired {
            seq.serialize_element(&t.record(key))?;
        }
        seq.end()
    }
}

/// What a snapshot is written from: the state's records, taken under its lock and written
/// without it.
struct SnapshotRecords {
    seq: u64,
    sessions: Vec<Arc<SessionRecord>>,
    tokens: Vec<Arc<TokenRecord>>,
    retired: Vec<(HashKey, RetiredToken)>,
}

impl SnapshotRecords {
    fn of(state: &Sessions) -> Self {
        let (sessions, tokens) = state.records();
        let retired = state
            .retired()
            .read()
            .iter()
            .map(|(k, t)| (*k, *t))
            .collect();
        Self {
            seq: state.seq,
            sessions,
            tokens,
            retired,
        }
    }
}

/// The sessions as the files hold them, and what the writer needs to know of the files.
pub(super) struct Loaded {
    pub state: Sessions,
    snapshot_len: u64,
    old_len: u64,
    journal: JournalFile,
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

/// Writes the snapshot durably (temp file, fsync, rename, folder fsync), streaming it; returns
/// its length.
fn write_snapshot(dir: &Path, records: &SnapshotRecords) -> anyhow::Result<u64> {
    let path = dir.join(SNAPSHOT);
    let tmp = dir.join(format!(".{SNAPSHOT}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(
            &mut out,
            &SnapshotOut {
                seq: records.seq,
                sessions: records.sessions.iter().map(|s| s.as_ref()).collect(),
                tokens: TokensOut {
                    live: &records.tokens,
                    retired: &records.retired,
                },
            },
        )?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let len = file.metadata()?.len();
        fs::rename(&tmp, &path)?;
        durable_file::sync_dir(dir)?;
        Ok::<_, anyhow::Error>(len)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("could not write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The journal file, as the writer knows it.

struct JournalFile {
    path: PathBuf,
    /// `None` until the journal exists.
    file: Option<File>,
    inode: u64,
    /// Where the last whole line ends: the next line goes here.
    good_len: u64,
    /// The length the file had when we last looked (`None` after a write failed midway): any
    /// other length means another process wrote to it. Past `good_len` it is a torn write.
    seen_len: Option<u64>,
    /// The journal was created (or renamed) since the folder was last fsynced.
    dir_sync_due: bool,
    /// Tests: the next append writes half its line and fails.
    #[cfg(test)]
    fail_next_write: bool,
}

enum AppendError {
    /// The journal is not as we left it: another process wrote, renamed or replaced it.
    Foreign,
    Io(anyhow::Error),
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        Self::Io(e.into())
    }
}

impl JournalFile {
    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// Whether the file at the journal's path is still ours, unchanged by anyone else.
    fn still_ours(&self) -> Result<bool, AppendError> {
        match (fs::symlink_metadata(&self.path), &self.file) {
            (Ok(meta), Some(file)) => {
                if meta.ino() != self.inode {
                    return Ok(false);
                }
                let len = file.metadata()?.len();
                Ok(self.seen_len.is_none_or(|seen| seen == len))
            }
            (Ok(_), None) => Ok(false),
            (Err(e), None) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            (Err(e), Some(_)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Appends one line and makes it durable.
    fn append(&mut self, line: &[u8]) -> Result<(), AppendError> {
        if !self.still_ours()? {
            return Err(AppendError::Foreign);
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = match OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.path)
                {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(AppendError::Foreign);
                    }
                    Err(e) => return Err(e.into()),
                };
                self.inode = file.metadata()?.ino();
                self.good_len = 0;
                self.seen_len = Some(0);
                self.dir_sync_due = true;
                self.file.insert(file)
            }
        };
        // A torn write (from a crash, or a failed write of ours) is cut off first, durably, so
        // that the new line cannot end up behind it.
        if self.seen_len != Some(self.good_len) {
            file.set_len(self.good_len)?;
            file.sync_all()?;
            self.seen_len = Some(self.good_len);
        }
        #[cfg(test)]
        let fail = std::mem::take(&mut self.fail_next_write);
        let written = (|| {
            #[cfg(test)]
            if fail {
                file.write_all(&line[..line.len() / 2])?;
                return Err(io::Error::other("injected write failure"));
            }
            file.write_all(line)?;
            let end = file.stream_position()?;
            if end != self.good_len + line.len() as u64 {
                // Someone appended between our check and our write: our line is behind theirs,
                // with a stale sequence number, and will be skipped when the journal is read.
                return Ok(false);
            }
            file.sync_data()?;
            Ok::<_, io::Error>(true)
        })();
        match written {
            Ok(true) => {}
            Ok(false) => {
                self.seen_len = None;
                return Err(AppendError::Foreign);
            }
            Err(e) => {
                // Take the line back off, so that it is neither read later nor in the way.
                self.seen_len = None;
                if file
                    .set_len(self.good_len)
                    .and_then(|()| file.sync_all())
                    .is_ok()
                {
                    self.seen_len = Some(self.good_len);
                }
                return Err(e.into());
            }
        }
        if self.dir_sync_due {
            durable_file::sync_dir(self.dir())?;
            self.dir_sync_due = false;
        }
        self.good_len += line.len() as u64;
        self.seen_len = Some(self.good_len);
        Ok(())
    }

    /// Renames the journal to the old journal and starts a new one, unless an old journal is
    /// still there or the journal is not as we left it.
    fn rotate(&mut self, old: &Path) -> io::Result<Rotation> {
        match fs::symlink_metadata(old) {
            Ok(_) => return Ok(Rotation::OldJournalLeft),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if self.file.is_none()
            || self.seen_len != Some(self.good_len)
            || !matches!(self.still_ours(), Ok(true))
        {
            return Ok(Rotation::NotNow);
        }
        fs::rename(&self.path, old)?;
        // From here on the journal is new, even if creating it fails: the next append makes it.
        self.file = None;
        self.inode = 0;
        self.good_len = 0;
        self.seen_len = Some(0);
        self.dir_sync_due = true;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)?;
        self.inode = file.metadata()?.ino();
        self.file = Some(file);
        durable_file::sync_dir(self.dir())?;
        self.dir_sync_due = false;
        Ok(Rotation::Rotated)
    }
}

enum Rotation {
    Rotated,
    /// A compaction failed or was cut short: its snapshot is still to be written.
    OldJournalLeft,
    NotNow,
}

// ---------------------------------------------------------------------------------------------
// The sessions with group commit.

struct Pending {
    /// The latest state: every change made, durable or not.
    state: Sessions,
    /// The ops of the changes in `state` that are in no write yet.
    ops: Vec<Op>,
    /// Requests whose changes are in `state` but in no write yet.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// A write task is running; it takes `ops` and `waiters` again when it is done.
    writing: bool,
}

struct Inner {
    dir: PathBuf,
    /// The durable state, which readers see.
    published: RwLock<Sessions>,
    pending: tokio::sync::Mutex<Pending>,
    /// Used by the write task only (and, for a moment, by a compaction that it starts).
    journal: Mutex<JournalFile>,
    compacting: AtomicBool,
    snapshot_len: AtomicU64,
    /// The journal's length, plus the old journal's while it is there.
    journal_len: AtomicU64,
    old_len: AtomicU64,
    /// After a failed compaction, the next waits until the journal has grown past this.
    retry_at: AtomicU64,
    /// How many compactions have finished.
    compactions: tokio::sync::watch::Sender<u64>,
}

pub(super) struct SessionLog {
    inner: Arc<Inner>,
}

impl SessionLog {
    /// Opens the sessions of `dir`. Reads only; nothing is written until a change is.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let loaded = load(dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                published: RwLock::new(loaded.state.clone()),
                pending: tokio::sync::Mutex::new(Pending {
                    state: loaded.state,
                    ops: Vec::new(),
                    waiters: Vec::new(),
                    writing: false,
                }),
                snapshot_len: AtomicU64::new(loaded.snapshot_len),
                journal_len: AtomicU64::new(loaded.journal.good_len + loaded.old_len),
                old_len: AtomicU64::new(loaded.old_len),
                journal: Mutex::new(loaded.journal),
                compacting: AtomicBool::new(false),
                retry_at: AtomicU64::new(0),
                compactions: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// The durable state. Hold it briefly, and never across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, Sessions> {
        self.inner.published()
    }

    /// Applies `change` to the latest state and returns once it is durable. `change` must not
    /// edit through the [`Tx`] when it returns an error.
    pub async fn update<R>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>,
    ) -> StoreResult<R> {
        let written = {
            let mut guard = self.inner.pending.lock().await;
            let pending = &mut *guard;
            let before = pending.ops.len();
            let out = change(&mut Tx::new(&mut pending.state, &mut pending.ops));
            debug_assert!(out.is_ok() || pending.ops.len() == before);
            let out = out?;
            // Even a change that altered nothing waits: its answer may rest on earlier changes
            // that are not durable yet.
            let (tx, rx) = oneshot::channel();
            pending.waiters.push(tx);
            if !pending.writing {
                pending.writing = true;
                // A task of its own, so a request that is cancelled mid-write cannot stop the
                // write that other requests are waiting for.
                tokio::spawn(self.inner.clone().write_until_done());
            }
            (out, rx)
        };
        let (out, rx) = written;
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "could not write the sessions journal: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(
                "the sessions journal writer stopped".into(),
            )),
        }
    }

    /// The number of compactions finished so far, and each new one.
    #[cfg(test)]
    fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.compactions.subscribe()
    }

    #[cfg(test)]
    fn fail_next_write(&self) {
        self.inner.journal().fail_next_write = true;
    }
}

enum Outcome {
    Written(u64),
    Foreign,
    Failed(anyhow::Error),
}

impl Inner {
    fn published(&self) -> RwLockReadGuard<'_, Sessions> {
        self.published.read().unwrap_or_else(|p| p.into_inner())
    }

    fn published_mut(&self) -> RwLockWriteGuard<'_, Sessions> {
        self.published.write().unwrap_or_else(|p| p.into_inner())
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, JournalFile> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes batches until no request is waiting.
    async fn write_until_done(self: Arc<Self>) {
        loop {
            let (ops, waiters) = {
                let mut pending = self.pending.lock().await;
                if pending.waiters.is_empty() {
                    pending.writing = false;
                    return;
                }
                (
                    std::mem::take(&mut pending.ops),
                    std::mem::take(&mut pending.waiters),
                )
            };
            if ops.is_empty() {
                // Nothing to write, and everything before is durable already.
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                continue;
            }
            let seq = self.published().seq + 1;
            let inner = self.clone();
            // Encoding and the fsync are blocking work: off the async workers.
            let (ops, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = match encode_line(seq, &ops) {
                    Ok(line) => match inner.journal().append(&line) {
                        Ok(()) => Outcome::Written(line.len() as u64),
                        Err(AppendError::Foreign) => Outcome::Foreign,
                        Err(AppendError::Io(e)) => Outcome::Failed(e),
                    },
                    Err(e) => Outcome::Failed(e),
                };
                (ops, outcome)
            })
            .await
            .unwrap_or_else(|e| {
                (
                    Vec::new(),
                    Outcome::Failed(anyhow::anyhow!("writer stopped: {e}")),
                )
            });
            match outcome {
                Outcome::Written(len) => {
                    // Rotated tokens are retired as soon as their rotation is durable: in the
                    // published copy here, in the pending one (which may hold newer changes, but
                    // never to a rotated token) below.
                    let rotated: Vec<Uuid> = ops
                        .iter()
                        .filter_map(|op| match op {
                            Op::Token(t) if t.rotated_at.is_some() => Some(t.id),
                            _ => None,
                        })
                        .collect();
                    let retired = {
                        let mut published = self.published_mut();
                        for op in &ops {
                            published.apply(op);
                        }
                        published.seq = seq;
                        published.sweep_retired(&ops);
                        published.retire(&rotated)
                    };
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                    self.journal_len.fetch_add(len, Ordering::SeqCst);
                    if !retired.is_empty() {
                        self.pending.lock().await.state.forget_retired(&retired);
                    }
                    self.maybe_compact().await;
                }
                Outcome::Foreign => {
                    tracing::warn!(dir = %self.dir.display(), "sessions.journal was changed by another process; reloading the sessions");
                    let message = "the sessions journal was changed by another process".to_owned();
                    self.reload_after_foreign_change(waiters, message).await;
                }
                Outcome::Failed(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "sessions journal write failed; its changes are dropped");
                    self.drop_pending(waiters, format!("{e:#}")).await;
                }
            }
        }
    }

    /// Drops every change that is not durable and fails its request: the pending state goes back
    /// to the published one.
    async fn drop_pending(
        &self,
        waiters: Vec<oneshot::Sender<Result<(), String>>>,
        message: String,
    ) {
        let mut pending = self.pending.lock().await;
        pending.state = self.published().clone();
        pending.ops.clear();
        let later = std::mem::take(&mut pending.waiters);
        for waiter in waiters.into_iter().chain(later) {
            let _ = waiter.send(Err(message.clone()));
        }
    }

    async fn reload_after_foreign_change(
        &self,
        waiters: Vec<oneshot::Sender<Result<(), String>>>,
        message: String,
    ) {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .map_err(|e| anyhow::anyhow!("reader stopped: {e}"))
            .and_then(|r| r);
        match loaded {
            Ok(loaded) => {
                // Under the pending lock, so that no change lands on the state being replaced.
                let mut pending = self.pending.lock().await;
                *self.published_mut() = loaded.state.clone();
                pending.state = loaded.state;
                pending.ops.clear();
                self.snapshot_len
                    .store(loaded.snapshot_len, Ordering::SeqCst);
                self.old_len.store(loaded.old_len, Ordering::SeqCst);
                self.journal_len
                    .store(loaded.journal.good_len + loaded.old_len, Ordering::SeqCst);
                *self.journal() = loaded.journal;
                let later = std::mem::take(&mut pending.waiters);
                for waiter in waiters.into_iter().chain(later) {
                    let _ = waiter.send(Err(message.clone()));
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "could not reload the sessions");
                self.drop_pending(waiters, format!("{message}; reloading failed: {e:#}"))
                    .await;
            }
        }
    }

    /// Starts a compaction when the journal is past its bound and none is running.
    async fn maybe_compact(self: &Arc<Self>) {
        let journal = self.journal_len.load(Ordering::SeqCst);
        let snapshot = self.snapshot_len.load(Ordering::SeqCst);
        if journal <= COMPACT_MIN_BYTES
            || journal <= COMPACT_FACTOR * snapshot
            || journal < self.retry_at.load(Ordering::SeqCst)
            || self.compacting.swap(true, Ordering::SeqCst)
        {
            return;
        }
        // Between two writes, so no append is in flight: rename the journal and start a new
        // one, and take the records of the state now (shared, not copied).
        let inner = self.clone();
        let started = tokio::task::spawn_blocking(move || {
            let old = inner.dir.join(OLD_JOURNAL);
            let rotated = inner.journal().rotate(&old);
            let records = SnapshotRecords::of(&inner.published());
            (rotated, records)
        })
        .await;
        let (rotated, records) = match started {
            Ok(started) => started,
            Err(e) => {
                self.compaction_failed(anyhow::anyhow!("compaction stopped: {e}"));
                return;
            }
        };
        match rotated {
            Ok(Rotation::Rotated) => {
                // The whole journal so far is the old journal now.
                self.old_len
                    .store(self.journal_len.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            // The new snapshot covers the old journal; the journal is rotated next time.
            Ok(Rotation::OldJournalLeft) => {}
            Ok(Rotation::NotNow) => {
                self.compaction_failed(anyhow::anyhow!("the journal is not ready to be rotated"));
                return;
            }
            Err(e) => {
                // Whether or not the rename happened, the files still add up; try again later.
                self.compaction_failed(anyhow::anyhow!("could not start a new journal: {e}"));
                return;
            }
        }
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match write_snapshot(&inner.dir, &records) {
                Ok(len) => {
                    let removed = fs::remove_file(inner.dir.join(OLD_JOURNAL));
                    if let Err(e) = removed
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        tracing::warn!(error = %e, "could not remove sessions.journal.old");
                    }
                    let old = inner.old_len.swap(0, Ordering::SeqCst);
                    inner.journal_len.fetch_sub(
                        old.min(inner.journal_len.load(Ordering::SeqCst)),
                        Ordering::SeqCst,
                    );
                    inner.snapshot_len.store(len, Ordering::SeqCst);
                    tracing::info!(
                        seq = records.seq,
                        sessions = records.sessions.len(),
                        tokens = records.tokens.len() + records.retired.len(),
                        bytes = len,
                        ms = started.elapsed().as_millis() as u64,
                        "sessions journal compacted into sessions.json"
                    );
                    inner.compacting.store(false, Ordering::SeqCst);
                    inner.compactions.send_modify(|n| *n += 1);
                }
                Err(e) => inner.compaction_failed(e),
            }
        });
    }

    fn compaction_failed(&self, e: anyhow::Error) {
        tracing::error!(dir = %self.dir.display(), error = %format!("{e:#}"), "sessions compaction failed; the journal keeps growing until the next attempt");
        self.retry_at.store(
            self.journal_len.load(Ordering::SeqCst) + COMPACT_MIN_BYTES,
            Ordering::SeqCst,
        );
        self.compacting.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

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
    fn lines_carry_a_checksum_that_catches_any_changed_byte() {
        let line = encode_line(7, &[Op::DropSession(Uuid::nil())]).unwrap();
        assert!(line.ends_with(b"\"}\n"));
        let text = std::str::from_utf8(&line).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["seq"], 7, "each line is plain JSON: {text}");
        let body = &line[..line.len() - 1];
        assert!(matches!(decode_line(body).unwrap(), Decoded::Line(l) if l.seq == 7));
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] ^= 0x01;
            assert!(
                !matches!(decode_line(&bad), Ok(Decoded::Line(_))),
                "byte {i} changed and still accepted"
            );
        }
        for cut in 0..body.len() {
            assert!(matches!(decode_line(&body[..cut]).unwrap(), Decoded::Torn));
        }
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
        check(&log.inner.pending.lock().await.state);

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
}
