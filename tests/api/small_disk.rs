//! `SmallDisk`: a tmpfs of a few pages mounted over a folder, so a test can fill the disk under a
//! running service (the security-event spool, the JSON-file store) and free it again.

use std::path::{Path, PathBuf};

/// A tmpfs of a few pages mounted over `dir` for as long as it lives: a disk the test can fill.
/// Mounting needs root (CAP_SYS_ADMIN): without it the test is skipped, or fails under `CI`.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, bytes: usize) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        if !output.status.success() {
            let why = String::from_utf8_lossy(&output.stderr);
            assert!(
                std::env::var_os("CI").is_none(),
                "the full-disk test mounts a small tmpfs, which needs root, as CI has: {why}"
            );
            eprintln!("!!! SKIPPED: could not mount a small tmpfs ({why}); run the tests as root");
            return None;
        }
        Some(SmallDisk {
            dir: dir.to_owned(),
        })
    }

    /// Writes a file until the disk refuses more; returns it, to delete to free the space.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let page = [0u8; 4096];
        loop {
            match file.write(&page) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return path,
                Err(e) => panic!("filling the small disk: {e}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: the service may still hold a file open on it while the test unwinds.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
