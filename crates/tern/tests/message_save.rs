//! `msg:save()` against the real server: on a `deferred_spool` listener
//! nothing is written at reception, so a `kill -9` loses every message
//! except the ones the policy saved itself.

mod common;

use common::*;
use std::path::Path;
use tern_spool::{Spool, SpoolConfig, SpoolError, SpoolKind};
use tern_types::SpoolId;

fn stored(dir: &Path, name: &str, id: SpoolId) -> Option<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spool = Spool::open(&SpoolConfig::new(
        name,
        dir.join("spool").join(name),
        SpoolKind::LocalDisk,
    ))
    .unwrap();
    match runtime.block_on(spool.load(id)) {
        Ok(bytes) => Some(bytes),
        Err(SpoolError::NotFound(_)) => None,
        Err(err) => panic!("loading {id} from {name}: {err}"),
    }
}

#[test]
fn saved_messages_survive_kill_9_on_a_deferred_spool_listener() {
    // Delivery goes nowhere and is retried only after an hour, so both
    // messages stay queued in memory until the kill.
    let closed_port = closed_port();
    let policy = format!(
        r#"{head}
kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('Subject') == 'keep me' then
    msg:set_meta('x_saved', true)
    msg:save()
  end
end)
{routed}"#,
        head = policy_head_with_listener(
            "LocalDisk",
            "relay_hosts = { '127.0.0.1' }, deferred_spool = true"
        ),
        routed = routed(closed_port, "1h"),
    );
    let server = start_tern(policy);
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let mut ids = Vec::new();
    for subject in ["keep me", "not saved"] {
        let (code, reply) = smtp
            .send_message("s@example.com", "r@example.com", &body(subject))
            .unwrap();
        assert_eq!(code, 250, "{reply}");
        let id: SpoolId = reply.split("ids=").nth(1).unwrap().trim().parse().unwrap();
        ids.push(id);
    }
    let dir = server.kill9();

    let data = stored(dir.path(), "data", ids[0]).expect("the saved message's data");
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("Subject: keep me\r\n"), "{text}");
    let meta = stored(dir.path(), "meta", ids[0]).expect("the saved message's meta");
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    // Saved after the handler changed it.
    assert_eq!(meta["meta"]["x_saved"], true, "{meta}");

    assert_eq!(stored(dir.path(), "data", ids[1]), None);
    assert_eq!(stored(dir.path(), "meta", ids[1]), None);
}
