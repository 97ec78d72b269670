//! The spool: JSON-lines files of security events in `SECURITY_LOG_DIR`, one event per line.
//!
//! With a database the spool holds batches the database could not take, until the writer replays
//! them; without one it is the event log itself. Every append is followed by `fdatasync` before
//! the batch counts as persisted. After a failed write or sync the file is abandoned, never synced
//! again and trusted (a second fsync can report success after the kernel dropped the data), cut
//! back to what was synced before, and the batch is written again to a fresh file. The folder is
//! 0700 and files 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::NaiveDate;

use super::event::SecurityEvent;
use crate::clock::Clock;
use crate::durable_file;

/// A file is closed and a new one started past this size, so replay works in bounded pieces.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    current: Mutex<Option<OpenFile>>,
    /// Names new files and starts one each day.
    clock: Clock,
}

struct OpenFile {
    file: File,
    path: PathBuf,
    bytes: u64,
    day: NaiveDate,
}

/// What reading a spool file found.
#[derive(Debug, Default)]
pub struct SpoolRead {
    pub events: Vec<SecurityEvent>,
    /// Lines that did not parse: a torn last line after a crash, or damage. Skipped and counted.
    pub bad_lines: usize,
}

impl Spool {
    pub fn open(dir: &Path, clock: Clock) -> io::Result<Self> {
        durable_file::ensure_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            current: Mutex::new(None),
            clock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the events and syncs them to disk; `Ok` means they survive a crash.
    pub fn append<'a>(
        &self,
        events: impl IntoIterator<Item = &'a SecurityEvent>,
    ) -> io::Result<usize> {
        let mut buf = Vec::with_capacity(4096);
        let mut count = 0;
        for event in events {
            serde_json::to_writer(&mut buf, event)?;
            buf.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let mut guard = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let today = self.clock.now().date_naive();
        let rotate = match guard.as_ref() {
            Some(open) => open.day != today || open.bytes >= MAX_FILE_BYTES,
            None => true,
        };
        if rotate {
            *guard = Some(self.new_file(today)?);
        }
        let Some(open) = guard.as_mut() else {
            return Err(io::Error::other("spool file missing"));
        };
        let result = open
            .file
            .write_all(&buf)
            .and_then(|()| open.file.sync_data());
        match result {
            Ok(()) => {
                open.bytes += buf.len() as u64;
                Ok(count)
            }
            Err(e) => {
                // Never trust this descriptor again; the caller retries into a new file. First
                // cut off whatever this append left behind (a partial line when the disk filled
                // mid-write, or the whole batch when only the sync failed): the retry writes the
                // batch again, and where the spool is the log a second copy would be a duplicate
                // event in it. A file that held nothing before is removed instead, so a disk that
                // stays full does not collect one empty file per failed batch.
                if let Some(open) = guard.take() {
                    let _ = if open.bytes == 0 {
                        fs::remove_file(&open.path)
                    } else {
                        open.file.set_len(open.bytes)
                    };
                }
                Err(e)
            }
        }
    }

    fn new_file(&self, day: NaiveDate) -> io::Result<OpenFile> {
        let now = self.clock.now();
        let name = format!(
            "events-{}-{}.jsonl",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            uuid::Uuid::now_v7().simple()
        );
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        durable_file::sync_dir(&self.dir)?;
        Ok(OpenFile {
            file,
            path,
            bytes: 0,
            day,
        })
    }

    /// Closes the file being written, so that every spool file on disk is complete and can be
    /// replayed.
    pub fn seal(&self) {
        let mut guard = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = None;
    }

    /// Spool files on disk in the order they were written, excluding the one open for append.
    pub fn sealed_files(&self) -> io::Result<Vec<PathBuf>> {
        let open = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|o| o.path.clone());
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_spool_file(p) && Some(p) != open.as_ref())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every spool file including the one being written, oldest first (for reading the log).
    pub fn all_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_spool_file(p))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Total size of the spool files, for the size alarm.
    pub fn bytes_on_disk(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| is_spool_file(&e.path()))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Whether a small synced write succeeds in the spool's folder now (a full or failing disk
    /// refuses it). The probe file is removed again; its name is not a spool file's.
    pub fn writable(&self) -> io::Result<()> {
        let path = self
            .dir
            .join(format!(".writable-{}", uuid::Uuid::now_v7().simple()));
        let result = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&[b'\n'; 512])?;
                file.sync_data()
            });
        let _ = fs::remove_file(&path);
        result
    }

    /// Deletes a replayed file durably.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        durable_file::sync_dir(&self.dir)
    }
}

pub fn is_spool_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("events-") && n.ends_with(".jsonl"))
}

/// Reads every complete event of a spool file; lines that do not parse are skipped and counted.
pub fn read_file(path: &Path) -> io::Result<SpoolRead> {
    let reader = BufReader::new(File::open(path)?);
    let mut out = SpoolRead::default();
    for line in reader.split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<SecurityEvent>(&line) {
            Ok(event) => out.events.push(event),
            Err(_) => out.bad_lines += 1,
        }
    }
    Ok(out)
}

/// Counts the lines waiting in sealed spool files (at start, for health and metrics): events, and
/// torn lines that replay will skip. Blank lines are not counted, as `read_file` skips them.
pub fn count_lines(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| File::open(p).ok())
        .map(|f| {
            BufReader::new(f)
                .split(b'\n')
                .filter(|l| {
                    l.as_ref()
                        .is_ok_and(|l| !l.iter().all(u8::is_ascii_whitespace))
                })
                .count() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security_log::EventType;

    #[test]
    fn appends_seals_reads_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), crate::clock::Clock::default()).unwrap();
        let events: Vec<SecurityEvent> = (0..3)
            .map(|_| SecurityEvent::new(EventType::LoginSuccess))
            .collect();
        assert_eq!(spool.append(&events).unwrap(), 3);
        assert!(
            spool.sealed_files().unwrap().is_empty(),
            "the open file is not offered for replay"
        );
        spool.seal();
        let files = spool.sealed_files().unwrap();
        assert_eq!(files.len(), 1);
        // Simulate a crash mid-write: half a line at the end.
        let mut f = OpenOptions::new().append(true).open(&files[0]).unwrap();
        f.write_all(br#"{"id":"0190"#).unwrap();
        let read = read_file(&files[0]).unwrap();
        assert_eq!(read.events, events);
        assert_eq!(read.bad_lines, 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        spool.remove(&files[0]).unwrap();
        assert!(spool.sealed_files().unwrap().is_empty());
    }
}
