//! `sessions.journal` as the writer knows it: where its last whole line ends, appending a line
//! durably, cutting off a torn write, noticing another process's writes, and renaming it aside
//! for a compaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::durable_file;

pub(super) struct JournalFile {
    pub(super) path: PathBuf,
    /// `None` until the journal exists.
    pub(super) file: Option<File>,
    pub(super) inode: u64,
    /// Where the last whole line ends: the next line goes here.
    pub(super) good_len: u64,
    /// The length the file had when we last looked (`None` after a write failed midway): any
    /// other length means another process wrote to it. Past `good_len` it is a torn write.
    pub(super) seen_len: Option<u64>,
    /// The journal was created (or renamed) since the folder was last fsynced.
    pub(super) dir_sync_due: bool,
    /// Tests: the next append writes half its line and fails.
    #[cfg(test)]
    pub(super) fail_next_write: bool,
}

pub(super) enum AppendError {
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
    pub(super) fn append(&mut self, line: &[u8]) -> Result<(), AppendError> {
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
    pub(super) fn rotate(&mut self, old: &Path) -> io::Result<Rotation> {
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

pub(super) enum Rotation {
    Rotated,
    /// A compaction failed or was cut short: its snapshot is still to be written.
    OldJournalLeft,
    NotNow,
}
