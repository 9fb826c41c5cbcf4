//! Free-space refusal: compares `statvfs` of the spool's filesystem with
//! `min_free_space` and `min_free_inodes`.
//!
//! Reception calls [`crate::Spool::check_free_space`] before accepting a
//! message; the error text slots into `421 4.3.2 <host> disk is too full.
//! Try later` (SMTP) and the HTTP 503 / liveness replies.

use crate::config::FreeThreshold;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What `statvfs` reported, in bytes and inodes available to unprivileged
/// users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub available_inodes: u64,
}

/// The reason text used for every refusal, so callers can build the
/// protocol reply around it.
pub const DISK_TOO_FULL: &str = "disk is too full";

pub fn free_space(path: &Path) -> std::io::Result<FreeSpace> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c_path is a
    // valid NUL-terminated string for the duration of the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok(FreeSpace {
        total_bytes: stat.f_blocks as u64 * block,
        available_bytes: stat.f_bavail as u64 * block,
        total_inodes: stat.f_files as u64,
        available_inodes: stat.f_favail as u64,
    })
}

/// `Ok` when both thresholds are met; otherwise a detailed reason for the
/// log (the reply itself uses [`DISK_TOO_FULL`]).
pub fn evaluate(
    space: &FreeSpace,
    min_space: FreeThreshold,
    min_inodes: FreeThreshold,
) -> Result<(), String> {
    let need_bytes = min_space.minimum(space.total_bytes);
    if space.available_bytes < need_bytes {
        return Err(format!(
            "{DISK_TOO_FULL}: {} bytes available, min_free_space requires {need_bytes}",
            space.available_bytes
        ));
    }
    // Some filesystems (btrfs, tmpfs with no limit) report no inode counts;
    // there is nothing to run out of, so only check when a total exists.
    if space.total_inodes > 0 {
        let need_inodes = min_inodes.minimum(space.total_inodes);
        if space.available_inodes < need_inodes {
            return Err(format!(
                "{DISK_TOO_FULL}: {} inodes available, min_free_inodes requires {need_inodes}",
                space.available_inodes
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(avail_bytes: u64, avail_inodes: u64) -> FreeSpace {
        FreeSpace {
            total_bytes: 1000,
            available_bytes: avail_bytes,
            total_inodes: 100,
            available_inodes: avail_inodes,
        }
    }

    #[test]
    fn thresholds_refuse_below_and_accept_at_or_above() {
        let ten = FreeThreshold::Percent(10.0);
        assert!(evaluate(&space(100, 10), ten, ten).is_ok());
        let err = evaluate(&space(99, 10), ten, ten).unwrap_err();
        assert!(
            err.starts_with(DISK_TOO_FULL) && err.contains("bytes"),
            "{err}"
        );
        let err = evaluate(&space(500, 9), ten, ten).unwrap_err();
        assert!(err.contains("inodes"), "{err}");
        assert!(evaluate(&space(500, 0), ten, FreeThreshold::Absolute(0)).is_ok());
        assert!(evaluate(&space(500, 50), FreeThreshold::Absolute(501), ten).is_err());
    }

    #[test]
    fn statvfs_reports_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let space = free_space(dir.path()).unwrap();
        assert!(space.total_bytes > 0);
        assert!(space.available_bytes <= space.total_bytes);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
