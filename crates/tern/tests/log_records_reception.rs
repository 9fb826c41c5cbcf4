//! The `Reception` and `Rejection` records of a real server (spec §12.2,
//! §12.3): every field, its JSON type and its format, as a tool written
//! against KumoMTA's logs reads them.

mod common;

use common::*;
use serde_json::{Value, json};
use tern_types::SpoolId;

const NODE_ID: &str = "d8e014c7-eaeb-4683-a56e-61324e91b1fc";

/// A policy whose logger captures some meta keys and headers, and whose
/// queues send to a closed port an hour apart (the messages stay put).
fn policy() -> String {
    let closed_port = closed_port();
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.configure_local_logs {{
    log_dir = '{{dir}}/logs', max_segment_duration = '1s',
    meta = {{ 'tenant', 'x_*' }}, headers = {{ 'Subject', 'X-Rep*' }},
  }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
end)
kumo.on('smtp_server_rcpt_to', function(rcpt)
  if rcpt.user == 'blocked' then
    kumo.reject(550, '5.1.1 no such user')
  end
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', 'acme')
  msg:set_meta('campaign', 'welcome')
  msg:set_meta('x_flag', true)
  msg:set_meta('unlogged', 'not captured')
  if msg:get_first_named_header_value('Subject') == 'two' then
    msg:set_recipient({{ 'a@Two.example', 'b@two.example' }})
  end
end)
{routed}"#,
        routed = routed(closed_port, "1h"),
    )
}

fn start() -> tern_testkit::TernServer {
    tern_testkit::Builder::new(policy())
        .binary(env!("CARGO_BIN_EXE_tern"))
        .env("KUMO_NODE_ID", NODE_ID)
        .start()
        .unwrap()
}

fn id_of(reply: &str) -> String {
    reply
        .trim()
        .strip_prefix("250 OK ids=")
        .unwrap_or_else(|| panic!("{reply:?}"))
        .to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, and the whole seconds it names.
fn rfc3339_nanos_seconds(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("{value}"));
    let bytes = text.as_bytes();
    assert_eq!(bytes.len(), 30, "{text}");
    assert!(text.ends_with('Z') && bytes[19] == b'.', "{text}");
    assert!(bytes[20..29].iter().all(u8::is_ascii_digit), "{text}");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("{text}: {err}"))
        .timestamp()
}

/// The parts every record shares: field order, which optional fields are
/// absent, the two time stamps, node id and session id.
fn assert_common_shape(record: &Value) {
    let keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // No TLS on these sessions, no provider: only session_id follows.
    let mut expected = RECORD_FIELDS.to_vec();
    expected.push("session_id");
    assert_eq!(keys, expected, "{record}");

    let timestamp = record["timestamp"].as_i64().expect("integer timestamp");
    assert_eq!(rfc3339_nanos_seconds(&record["event_time"]), timestamp);
    let created = record["created"].as_i64().expect("integer created");
    assert_eq!(rfc3339_nanos_seconds(&record["created_time"]), created);
    assert!(created <= timestamp, "{record}");
    let now = chrono::Utc::now().timestamp();
    assert!(now - timestamp < 120, "{record}");

    assert_eq!(record["nodeid"], NODE_ID, "{record}");
    let session = record["session_id"].as_str().expect("session_id");
    assert!(uuid_shaped(session), "{record}");
    assert_eq!(record["num_attempts"], 0, "{record}");
    assert_eq!(record["bounce_classification"], "Uncategorized");
    for null in [
        "egress_pool",
        "egress_source",
        "source_address",
        "feedback_report",
        "delivery_protocol",
    ] {
        assert_eq!(record[null], Value::Null, "{null} in {record}");
    }
    assert_eq!(record["reception_protocol"], "ESMTP", "{record}");
}

fn uuid_shaped(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        })
}

#[test]
fn reception_records_have_every_field_in_its_documented_form() {
    let server = start();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.example").unwrap();
    let mut ids = Vec::new();
    for (from, subject) in [
        ("s@example.com", "one"),
        ("s@example.com", "two"),
        ("", "null sender"),
    ] {
        let body =
            format!("Subject: {subject}\r\nX-Rep: 1\r\nX-Other: o\r\nX-Rep: 2\r\n\r\nhi\r\n");
        let (code, reply) = smtp
            .send_message(from, "r@One.example", body.as_bytes())
            .unwrap();
        assert_eq!(code, 250, "{reply}");
        ids.push(id_of(&reply));
    }
    smtp.command("QUIT").unwrap();
    let logs = server.dir().join("logs");
    wait_for_records(&logs, std::time::Duration::from_secs(30), |r| {
        count(r, "Reception") >= 3
    });
    let dir = server.stop();
    let seen = records(&dir.path().join("logs"));
    let receptions = of_type(&seen, "Reception");
    assert_eq!(receptions.len(), 3, "{seen:#?}");
    let by_id = |id: &str| {
        *receptions
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no Reception for {id}: {receptions:#?}"))
    };

    let one = by_id(&ids[0]);
    assert_common_shape(one);
    assert_eq!(one["type"], "Reception");
    let id: SpoolId = ids[0].parse().unwrap();
    assert_eq!(ids[0].len(), 32);
    assert!(
        ids[0]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // `created` is the creation time inside the v1 UUID.
    let created = chrono::DateTime::<chrono::Utc>::from(id.created()).timestamp();
    assert_eq!(one["created"], created, "{one}");
    assert_eq!(one["sender"], "s@example.com");
    assert_eq!(
        one["recipient"], "r@One.example",
        "a single recipient is a string"
    );
    assert_eq!(one["queue"], "welcome:acme@one.example");
    assert_eq!(one["site"], "");
    let stored = spooled_data(dir.path(), id);
    assert_eq!(
        one["size"],
        stored.len() as u64,
        "size is the spooled bytes"
    );
    assert_eq!(
        one["response"],
        json!({ "code": 250, "enhanced_code": null, "content": "", "command": null })
    );
    assert_eq!(
        one["peer_address"],
        json!({ "name": "client.example", "addr": "127.0.0.1" })
    );
    // Only what the logger asked for, with repeated headers as an array.
    assert_eq!(one["meta"], json!({ "tenant": "acme", "x_flag": true }));
    assert_eq!(
        one["headers"],
        json!({ "Subject": "one", "X-Rep": ["1", "2"] })
    );

    let two = by_id(&ids[1]);
    assert_common_shape(two);
    assert_eq!(
        two["recipient"],
        json!(["a@Two.example", "b@two.example"]),
        "several recipients are an array"
    );
    assert_eq!(two["queue"], "welcome:acme@two.example");
    assert_eq!(two["session_id"], one["session_id"], "one session");

    let null_sender = by_id(&ids[2]);
    assert_common_shape(null_sender);
    assert_eq!(
        null_sender["sender"], "",
        "the null sender is an empty string"
    );
}

#[test]
fn rejection_records_have_every_field_in_its_documented_form() {
    let server = start();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO rejected.example").unwrap();
    // Before any transaction.
    assert_eq!(smtp.command("VRFY x").unwrap().0, 502);
    assert_eq!(smtp.command("MAIL FROM:<s@example.com>").unwrap().0, 250);
    let (code, reply) = smtp.command("RCPT TO:<blocked@example.com>").unwrap();
    assert_eq!((code, reply.as_str()), (550, "550 5.1.1 no such user\r\n"));
    smtp.command("QUIT").unwrap();
    let seen = wait_for_records(
        &server.dir().join("logs"),
        std::time::Duration::from_secs(30),
        |r| count(r, "Rejection") >= 2,
    );
    let rejections = of_type(&seen, "Rejection");
    assert_eq!(rejections.len(), 2, "{seen:#?}");
    for record in &rejections {
        assert_common_shape(record);
        assert_eq!(record["id"], "", "{record}");
        assert_eq!(record["queue"], "", "{record}");
        assert_eq!(record["site"], "", "{record}");
        assert_eq!(record["size"], 0, "{record}");
        assert_eq!(record["meta"], json!({}), "{record}");
        assert_eq!(record["headers"], json!({}), "{record}");
        assert_eq!(
            record["peer_address"],
            json!({ "name": "rejected.example", "addr": "127.0.0.1" })
        );
        let response = record["response"].as_object().unwrap();
        let keys: Vec<&str> = response.keys().map(String::as_str).collect();
        assert_eq!(keys, ["code", "enhanced_code", "content", "command"]);
    }
    assert_eq!(rejections[0]["session_id"], rejections[1]["session_id"]);

    let outside = rejections[0];
    assert_eq!(outside["response"]["code"], 502);
    assert_eq!(outside["sender"], "", "no transaction: empty sender");
    assert_eq!(outside["recipient"], json!([]), "no recipient: empty list");

    let refused = rejections[1];
    assert_eq!(refused["sender"], "s@example.com");
    assert_eq!(refused["recipient"], "blocked@example.com");
    assert_eq!(
        refused["response"]["enhanced_code"],
        json!({ "class": 5, "subject": 1, "detail": 1 })
    );
    assert_eq!(refused["response"]["code"], 550);
    assert_eq!(refused["response"]["content"], "no such user");
}

/// The body stored for `id` in the data spool (after the server stopped).
fn spooled_data(dir: &std::path::Path, id: SpoolId) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spool = tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
        "data",
        dir.join("spool").join("data"),
        tern_spool::SpoolKind::LocalDisk,
    ))
    .unwrap();
    runtime.block_on(spool.load(id)).unwrap()
}
