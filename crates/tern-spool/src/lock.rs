//! The spool's exclusive lock: `<path>/lock`, held with `flock` for the
//! lifetime of the open spool and holding the owner's pid.
//!
//! `flock` locks belong to an open file description, so a second open of the
//! same spool fails both from another process and from the same process.
//! The kernel drops the lock when the process dies (even by `kill -9`), so a
//! stale lock file never blocks a restart.

use crate::SpoolError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct SpoolLock {
    // Kept open: closing the file would release the lock.
    _file: File,
    path: PathBuf,
}

impl SpoolLock {
    /// Takes the lock for the spool directory `dir` (which must exist).
    pub fn acquire(dir: &Path) -> Result<Self, SpoolError> {
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| {
                SpoolError::io(format!("cannot open lock file {}", path.display()), err)
            })?;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown" } else { holder };
                return Err(SpoolError::Locked {
                    path: dir.to_path_buf(),
                    pid: holder.to_string(),
                });
            }
            return Err(SpoolError::io(
                format!("cannot lock {}", path.display()),
                err,
            ));
        }
        let record = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(record.as_bytes()))
            .map_err(|err| {
                SpoolError::io(format!("cannot write pid to {}", path.display()), err)
            })?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
