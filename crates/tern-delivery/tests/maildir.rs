//! Maildir delivery: template expansion, tree creation, modes, content.

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use tern_delivery::deliver_maildir;
use tern_queue::config::MaildirProtocol;

fn vars() -> serde_json::Map<String, serde_json::Value> {
    json!({
        "meta": {"tenant_label": "t1"},
        "queue": "example.com",
        "domain": "example.com",
        "local_part": "joe",
        "domain_part": "example.com",
        "email": "joe@example.com",
        "sender_email": "s@tern.test",
    })
    .as_object()
    .unwrap()
    .clone()
}

#[test]
fn writes_into_new_with_modes() {
    let dir = tempfile::tempdir().unwrap();
    let proto = MaildirProtocol {
        maildir_path: format!(
            "{}/{{{{ domain_part }}}}/{{{{ local_part }}}}-{{{{ meta.tenant_label }}}}",
            dir.path().display()
        ),
        dir_mode: Some(0o775),
        file_mode: Some(0o664),
    };
    let data = b"Subject: hi\r\n\r\n.body\r\n";
    let written = deliver_maildir(&proto, &vars(), data).unwrap();
    let root = dir.path().join("example.com").join("joe-t1");
    assert_eq!(written.parent().unwrap(), root.join("new"));
    assert_eq!(std::fs::read(&written).unwrap(), data);
    for sub in ["tmp", "new", "cur"] {
        let mode = std::fs::metadata(root.join(sub))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o775, "{sub}");
    }
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o664);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);

    // A second message goes next to the first under another name.
    let second = deliver_maildir(&proto, &vars(), b"two\r\n").unwrap();
    assert_ne!(second, written);
    assert_eq!(std::fs::read_dir(root.join("new")).unwrap().count(), 2);
}

#[test]
fn default_modes_and_fixed_path() {
    let dir = tempfile::tempdir().unwrap();
    let proto = MaildirProtocol {
        maildir_path: dir.path().join("box").display().to_string(),
        dir_mode: None,
        file_mode: None,
    };
    let written = deliver_maildir(&proto, &vars(), b"x\r\n").unwrap();
    assert!(written.starts_with(dir.path().join("box").join("new")));
}

#[test]
fn unwritable_location_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let proto = MaildirProtocol {
        maildir_path: file.join("box").display().to_string(),
        dir_mode: None,
        file_mode: None,
    };
    let err = deliver_maildir(&proto, &vars(), b"x\r\n").unwrap_err();
    assert!(err.to_string().contains("maildir create"), "{err}");
}
