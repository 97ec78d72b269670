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

mod codec;
mod compaction;
mod file;
mod load;
mod snapshot;
#[cfg(test)]
mod tests;
mod writer;

pub use load::{compact_sessions, read_sessions};
pub(super) use writer::SessionLog;

const SNAPSHOT: &str = "sessions.json";
const JOURNAL: &str = "sessions.journal";
const OLD_JOURNAL: &str = "sessions.journal.old";

/// The journal is compacted once it is past both this many bytes…
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// …and this many times the snapshot.
const COMPACT_FACTOR: u64 = 2;
