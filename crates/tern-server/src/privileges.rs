//! `--user`: drop root privileges before any thread is spawned (§1.1).

use std::ffi::CString;

pub fn drop_privileges(user: Option<&str>) -> anyhow::Result<()> {
    let euid = unsafe { libc::geteuid() };
    match (euid, user) {
        (0, None) => anyhow::bail!(
            "tern serve is running as root: pass --user NAME to choose the user to run as \
             (use --user root to stay root)"
        ),
        (0, Some("root")) => Ok(()),
        (0, Some(name)) => {
            let (uid, gid) = lookup_user(name)?;
            unsafe {
                if libc::setgid(gid) != 0 {
                    anyhow::bail!(
                        "setgid({gid}) for user {name} failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
                if libc::setuid(uid) != 0 {
                    anyhow::bail!(
                        "setuid({uid}) for user {name} failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            Ok(())
        }
        (_, None) => Ok(()),
        (uid, Some(name)) => {
            let (wanted, _) = lookup_user(name)?;
            if wanted != uid {
                anyhow::bail!(
                    "--user {name} (uid {wanted}) does not match the current user (uid {uid}); only root can switch users"
                );
            }
            Ok(())
        }
    }
}

fn lookup_user(name: &str) -> anyhow::Result<(libc::uid_t, libc::gid_t)> {
    let cname = CString::new(name).map_err(|_| anyhow::anyhow!("invalid user name '{name}'"))?;
    let entry = unsafe { libc::getpwnam(cname.as_ptr()) };
    if entry.is_null() {
        anyhow::bail!("--user {name}: no such user");
    }
    let entry = unsafe { &*entry };
    Ok((entry.pw_uid, entry.pw_gid))
}

/// Raise the soft limit on open files (`ulimit -Sn`) to the hard limit.
/// Every SMTP connection, outbound connection, spool file and log segment
/// is a descriptor, and the usual soft limit of 1024 would make `accept`
/// fail long before `max_connections` (32768 by default) is reached.
/// Returns the limit now in force. Called before privileges are dropped,
/// like KumoMTA does at startup.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(limit.rlim_cur)
}
