//! The seed's example end to end: a selector table loaded with
//! `kumo.json_load`, a message received over SMTP signed by its From
//! domain, and the spooled message verified by dkimpy.

mod common;

use std::process::Command;
use tern_testkit::Builder;

const POLICY: &str = r#"local kumo = require 'kumo'
local DKIM_CONFIG = kumo.json_load '{dir}/dkim_config.json'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', trace_headers = { received_header = false, supplemental_header = false } }
end)
kumo.on('smtp_server_message_received', function(msg)
  local domain = msg:from_header().domain
  local selector = DKIM_CONFIG[domain]
  if selector then
    msg:dkim_sign(kumo.dkim.rsa_sha256_signer {
      domain = domain,
      selector = selector,
      headers = { 'From', 'To', 'Subject' },
      key = '{dir}/key.pem',
    })
  end
end)
"#;

#[test]
fn messages_are_signed_by_from_domain_and_verify_in_dkimpy() {
    let keys = tempfile::tempdir().unwrap();
    let (key, p) = common::rsa_key(keys.path());

    let server = Builder::new(POLICY)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .file(
            "dkim_config.json",
            r#"{ "example.com": "s2048" // comment
        }"#,
        )
        .file("key.pem", std::fs::read(&key).unwrap())
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    let (code, reply) = smtp.send_message("a@example.com", "b@example.net", b"From: Alice <alice@example.com>\r\nTo: b@example.net\r\nSubject: signed\r\n\r\nHello \xc3\xa9t\xc3\xa9\r\n \r\n\t\r\n").unwrap();
    assert_eq!(code, 250, "{reply}");
    let id: tern_types::SpoolId = reply.split("ids=").nth(1).unwrap().trim().parse().unwrap();
    let dir = server.stop();

    let data = tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
        "data",
        dir.path().join("spool/data"),
        tern_spool::SpoolKind::LocalDisk,
    ))
    .unwrap();
    let bytes = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(data.load(id))
        .unwrap();
    assert!(
        bytes.starts_with(b"DKIM-Signature:"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let message = dir.path().join("signed.eml");
    std::fs::write(&message, &bytes).unwrap();
    let script = format!(
        r#"
import dkim, sys
msg = open('{msg}', 'rb').read()
txt = b'v=DKIM1; k=rsa; p={p}'
def dns(name, timeout=5):
    assert name == b's2048._domainkey.example.com.', name
    return txt
ok = dkim.verify(msg, dnsfunc=dns)
tampered = msg.replace(b'Hello', b'Hallo')
bad = dkim.verify(tampered, dnsfunc=dns)
print('verify', ok, bad)
"#,
        msg = message.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{} (pip install dkimpy)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "verify True False");
}
