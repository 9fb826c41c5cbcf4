//! The message object as a policy sees it at reception (spec §5.1–§5.3),
//! against the real server: what `smtp_server_message_received` changes
//! is what the spool holds and what the Reception record says.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use tern_types::SpoolId;

const HANDLER: &str = r#"
kumo.on('smtp_server_message_received', function(msg)
  local subject = msg:get_first_named_header_value('Subject')
  msg:set_meta('x_id', msg:id())
  msg:set_meta('x_attempts', msg:num_attempts())
  if subject == 'edit' then
    msg:set_sender('bounce@sender.example')
    msg:set_meta('tenant', 'acme')
    msg:set_meta('routing_domain', 'relay.example')
    msg:import_x_headers()
    msg:remove_x_headers({ 'x-campaign-id' })
    msg:prepend_header('X-First', 'first')
    msg:append_header('X-Last', 'last')
    msg:remove_all_named_headers('x-drop')
    msg:set_meta('x_queue', msg:queue_name())
  elseif subject == 'custom' then
    msg:set_meta('queue', 'custom-q')
    msg:set_meta('tenant', 'ignored')
  elseif subject == 'conformance' then
    -- MISSING_DATE_HEADER is both checked and fixed: it is fixed.
    local failed = msg:check_fix_conformance(
      'MISSING_DATE_HEADER|MISSING_COLON_VALUE', 'MISSING_DATE_HEADER')
    if failed then kumo.reject(552, '5.6.0 ' .. failed) end
  elseif subject == 'broken' then
    local failed = msg:check_fix_conformance('MISSING_COLON_VALUE', '')
    if failed then kumo.reject(552, '5.6.0 ' .. failed) end
  elseif subject == 'set data' then
    msg:set_data('Subject: replaced\r\n\r\nnew body\r\n')
  elseif subject == 'bad tenant' then
    msg:set_meta('tenant', 42)
  end
end)
"#;

fn policy() -> String {
    let closed_port = closed_port();
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.configure_local_logs {{
    log_dir = '{{dir}}/logs', max_segment_duration = '1s', headers = {{ 'Subject' }},
  }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
end)
{HANDLER}
{routed}"#,
        routed = routed(closed_port, "1h"),
    )
}

fn load(dir: &Path, name: &str, id: SpoolId) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spool = tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
        name,
        dir.join("spool").join(name),
        tern_spool::SpoolKind::LocalDisk,
    ))
    .unwrap();
    runtime
        .block_on(spool.load(id))
        .unwrap_or_else(|err| panic!("{name} of {id}: {err}"))
}

/// The Reception record of the message with this Subject.
fn reception<'a>(seen: &'a [Value], subject: &str) -> &'a Value {
    of_type(seen, "Reception")
        .into_iter()
        .find(|r| r["headers"]["Subject"] == subject)
        .unwrap_or_else(|| panic!("no Reception for {subject}: {seen:#?}"))
}

#[test]
fn reception_policy_edits_reach_the_spool_and_the_log() {
    let server = start_tern(policy());
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.example").unwrap();
    let mut send = |subject: &str, headers: &str| {
        let body = format!("Subject: {subject}\r\n{headers}\r\nbody\r\n");
        smtp.send_message("s@example.com", "r@One.example", body.as_bytes())
            .unwrap()
    };
    let mut ids = std::collections::HashMap::new();
    for (subject, headers) in [
        (
            "edit",
            "X-Campaign-ID: 42\r\nX-Drop: a\r\nx-drop: b\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
        ),
        ("custom", ""),
        ("conformance", "Message-ID: <1@x>\r\n"),
        ("set data", ""),
    ] {
        let (code, reply) = send(subject, headers);
        assert_eq!(code, 250, "{subject}: {reply}");
        let id: SpoolId = reply
            .trim()
            .strip_prefix("250 OK ids=")
            .unwrap()
            .parse()
            .unwrap();
        ids.insert(subject, id);
    }
    let (code, reply) = send("broken", "Broken header line\r\n");
    assert_eq!(
        (code, reply.as_str()),
        (
            552,
            "552 5.6.0 Message has conformance issues: MISSING_COLON_VALUE\r\n"
        )
    );
    // A control key that is not a string cannot name a queue: the message
    // is refused, not filed under some other queue.
    let (code, reply) = send("bad tenant", "");
    assert!((400..500).contains(&code), "{reply}");
    let logs = server.dir().join("logs");
    wait_for_records(&logs, std::time::Duration::from_secs(30), |r| {
        count(r, "Reception") >= 4 && count(r, "Rejection") >= 2
    });
    let dir = server.stop();
    let seen = records(&dir.path().join("logs"));
    assert_eq!(count(&seen, "Reception"), 4, "{seen:#?}");
    let meta_of = |subject: &str| -> Value {
        serde_json::from_slice(&load(dir.path(), "meta", ids[subject])).unwrap()
    };
    let data_of =
        |subject: &str| String::from_utf8(load(dir.path(), "data", ids[subject])).unwrap();

    // Envelope, meta keys, queue name and header edits.
    let edit = reception(&seen, "edit");
    assert_eq!(edit["id"], ids["edit"].to_string());
    assert_eq!(edit["sender"], "bounce@sender.example");
    assert_eq!(edit["queue"], "acme@one.example!relay.example");
    let meta = meta_of("edit");
    assert_eq!(meta["sender"], "bounce@sender.example");
    assert_eq!(meta["recipient"], "r@One.example");
    assert_eq!(meta["meta"]["x_id"], ids["edit"].to_string());
    assert_eq!(meta["meta"]["x_attempts"], 0);
    assert_eq!(meta["meta"]["x_campaign_id"], "42");
    assert_eq!(meta["meta"]["x_queue"], "acme@one.example!relay.example");
    assert_eq!(meta["meta"]["reception_protocol"], "ESMTP");
    let data = data_of("edit");
    // Prepended above the Received header (the supplemental trace header
    // is added after the event, above both).
    assert!(
        data.contains("X-First: first\r\nReceived: from client.example"),
        "{data}"
    );
    assert!(data.ends_with("X-Last: last\r\n\r\nbody\r\n"), "{data}");
    for gone in ["X-Campaign-ID", "X-Drop", "x-drop"] {
        assert!(!data.contains(gone), "{gone} left in {data}");
    }
    assert_eq!(edit["size"], data.len() as u64);

    // `queue` wins over tenant/campaign, verbatim.
    assert_eq!(reception(&seen, "custom")["queue"], "custom-q");
    assert_eq!(meta_of("custom")["meta"]["tenant"], "ignored");

    let fixed = data_of("conformance");
    assert!(
        fixed.contains("\r\nDate: ") || fixed.starts_with("Date: "),
        "{fixed}"
    );

    // The whole message replaced; only the supplemental trace header is
    // added after the event.
    let data = data_of("set data");
    assert!(data.starts_with("X-KumoRef: "), "{data}");
    assert!(
        data.ends_with("\r\nSubject: replaced\r\n\r\nnew body\r\n"),
        "{data}"
    );
    assert_eq!(data.lines().count(), 4, "{data}");
    let replaced = of_type(&seen, "Reception")
        .into_iter()
        .find(|r| r["id"] == ids["set data"].to_string())
        .unwrap();
    assert_eq!(replaced["size"], data.len() as u64);
    assert_eq!(replaced["headers"], json!({ "Subject": "replaced" }));

    // Neither refused message was logged as received.
    let subjects: Vec<&Value> = of_type(&seen, "Reception")
        .iter()
        .map(|r| &r["headers"]["Subject"])
        .collect();
    assert!(
        !subjects.contains(&&json!("broken")) && !subjects.contains(&&json!("bad tenant")),
        "{subjects:?}"
    );
}
