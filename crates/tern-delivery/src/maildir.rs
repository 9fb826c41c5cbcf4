//! Maildir delivery (spec §22): store a message as one file in a Maildir.
//!
//! The queue's `maildir_path` is a MiniJinja template; the queue runtime
//! passes the variables (`meta`, `queue`, `campaign`, `tenant`, `domain`,
//! `routing_domain`, `local_part`, `domain_part`, `email`,
//! `sender_local_part`, `sender_domain_part`, `sender_email`), one call per
//! recipient. The Maildir (`tmp/`, `new/`, `cur/`) is created when missing,
//! with `dir_mode`; the message is written to `tmp/`, synced, renamed into
//! `new/`, and the `new/` directory is synced so the rename survives a
//! crash. `file_mode` sets the file's permissions. Both modes are applied
//! explicitly, so the process umask does not narrow them.
//!
//! This is blocking file I/O: call it from `spawn_blocking`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tern_queue::config::MaildirProtocol;

/// Why a message could not be stored (a transient failure: retried about a
/// minute later).
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("maildir_path template {template:?}: {reason}")]
    Template { template: String, reason: String },
    #[error("maildir {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError {
    let path = path.to_path_buf();
    move |error| MaildirError::Io {
        action,
        path,
        error,
    }
}

/// Expand the `maildir_path` template with `vars`.
pub fn render_maildir_path(
    template: &str,
    vars: &serde_json::Map<String, serde_json::Value>,
) -> Result<PathBuf, MaildirError> {
    let fail = |reason: String| MaildirError::Template {
        template: template.to_string(),
        reason,
    };
    let env = minijinja::Environment::new();
    let rendered = env
        .render_str(template, minijinja::Value::from_serialize(vars))
        .map_err(|err| fail(err.to_string()))?;
    if rendered.trim().is_empty() {
        return Err(fail("expands to an empty path".to_string()));
    }
    Ok(PathBuf::from(rendered))
}

/// Write one message into the Maildir named by `proto.maildir_path` and
/// return the path of the file in `new/`.
pub fn deliver_maildir(
    proto: &MaildirProtocol,
    vars: &serde_json::Map<String, serde_json::Value>,
    data: &[u8],
) -> Result<PathBuf, MaildirError> {
    let root = render_maildir_path(&proto.maildir_path, vars)?;
    ensure_maildir(&root, proto.dir_mode)?;

    let name = unique_name();
    let tmp_path = root.join("tmp").join(&name);
    let new_dir = root.join("new");
    let new_path = new_dir.join(&name);

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    if let Some(mode) = proto.file_mode {
        options.mode(mode);
    }
    let mut file = options
        .open(&tmp_path)
        .map_err(io_error("create", &tmp_path))?;
    let written = (|| {
        if let Some(mode) = proto.file_mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(data)?;
        file.sync_all()
    })();
    drop(file);
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(MaildirError::Io {
            action: "write",
            path: tmp_path,
            error,
        });
    }
    if let Err(error) = fs::rename(&tmp_path, &new_path) {
        let _ = fs::remove_file(&tmp_path);
        return Err(MaildirError::Io {
            action: "rename into new/",
            path: new_path,
            error,
        });
    }
    File::open(&new_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync", &new_dir))?;
    Ok(new_path)
}

/// Create `root` and its `tmp`, `new`, `cur` when `new` is missing.
fn ensure_maildir(root: &Path, dir_mode: Option<u32>) -> Result<(), MaildirError> {
    if root.join("new").is_dir() && root.join("tmp").is_dir() {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    if let Some(mode) = dir_mode {
        builder.mode(mode);
    }
    for dir in [
        root.to_path_buf(),
        root.join("tmp"),
        root.join("new"),
        root.join("cur"),
    ] {
        builder.create(&dir).map_err(io_error("create", &dir))?;
        if let Some(mode) = dir_mode {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .map_err(io_error("chmod", &dir))?;
        }
    }
    Ok(())
}

/// `<secs>.M<micros>P<pid>R<random>.<host>`: the classic Maildir shape,
/// unique across processes and calls.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}R{:016x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        rand::random::<u64>(),
        hostname()
    )
}

/// The host name with the characters Maildir reserves replaced.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = raw
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_string(),
            ':' => "\\072".to_string(),
            c => c.to_string(),
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn template_expansion() {
        let v =
            vars(json!({"domain_part": "example.com", "local_part": "joe", "meta": {"x": "y"}}));
        assert_eq!(
            render_maildir_path("/m/{{ domain_part }}/{{ local_part }}/{{ meta.x }}", &v).unwrap(),
            PathBuf::from("/m/example.com/joe/y")
        );
        let err = render_maildir_path("/m/{{ oops", &v).unwrap_err();
        assert!(err.to_string().contains("maildir_path template"), "{err}");
        let err = render_maildir_path("{{ missing }}", &v).unwrap_err();
        assert!(err.to_string().contains("empty path"), "{err}");
    }

    #[test]
    fn names_are_unique_and_clean() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'), "{a}");
    }
}
