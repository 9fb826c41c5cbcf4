//! `msg:dkim_verify()` and `msg:add_authentication_results()` end to end:
//! the policy publishes a public key in a test DNS zone, Python signs
//! messages with dkimpy and sends them with smtplib, and the spooled
//! messages must carry the `Authentication-Results` header the policy
//! added: `dkim=pass` for the intact message, `dkim=fail` for the one whose
//! body was changed after signing.

use base64::Engine;
use std::process::Command;
use tern_testkit::Builder;

const POLICY: &str = r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:0',
    hostname = 'mx.tern.test',
    trace_headers = { received_header = false, supplemental_header = false },
  }
  kumo.dns.configure_test_resolver { [[
$ORIGIN example.com.
s2048._domainkey 300 TXT @TXT@
]] }
end)
kumo.on('smtp_server_message_received', function(msg)
  local results = msg:dkim_verify()
  msg:set_meta('dkim_result', results[1].result)
  msg:add_authentication_results(msg:get_meta('hostname'), results)
end)
"#;

/// Signs with dkimpy, optionally changes the body afterwards, and sends
/// over SMTP; prints the final reply to DATA.
const SEND: &str = r#"
import dkim, smtplib, sys
host, port, key_path, tamper = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == 'tamper'
message = (b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
           b"Subject: verified\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n"
           b"Hello Bob,\r\n\r\nthe numbers are up.\r\n")
signature = dkim.sign(message, b"s2048", b"example.com", open(key_path, "rb").read(),
                      canonicalize=(b"relaxed", b"relaxed"),
                      include_headers=[b"From", b"To", b"Subject", b"Date"])
signed = signature + message
if tamper:
    signed = signed.replace(b"up.", b"down.")
smtp = smtplib.SMTP(host, port)
smtp.ehlo("client.example.com")
smtp.mail("alice@example.com")
smtp.rcpt("bob@example.net")
code, reply = smtp.data(signed)
print(code, reply.decode())
smtp.quit()
"#;

fn openssl(args: &[&str], path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn received_messages_get_authentication_results_from_dkim_verify() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key.pem");
    openssl(&["genrsa", "-out"], &key);
    let public = openssl(&["rsa", "-pubout", "-outform", "DER", "-in"], &key);
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    // A zone-file TXT record: strings of at most 255 characters.
    let txt: Vec<String> = format!("v=DKIM1; k=rsa; p={p}")
        .as_bytes()
        .chunks(200)
        .map(|chunk| format!("\"{}\"", std::str::from_utf8(chunk).unwrap()))
        .collect();

    let server = Builder::new(POLICY.replace("@TXT@", &txt.join(" ")))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let addr = server.listener("smtp");
    let send = |mode: &str| -> tern_types::SpoolId {
        let out = Command::new("python3")
            .arg("-c")
            .arg(SEND)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&key)
            .arg(mode)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && text.starts_with("250 "),
            "{text}{} (pip install dkimpy)",
            String::from_utf8_lossy(&out.stderr)
        );
        text.split("ids=").nth(1).unwrap().trim().parse().unwrap()
    };
    let intact = send("intact");
    let tampered = send("tamper");
    let dir = server.stop();

    let spool = |name: &str| {
        tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
            name,
            dir.path().join("spool").join(name),
            tern_spool::SpoolKind::LocalDisk,
        ))
        .unwrap()
    };
    let (data, meta) = (spool("data"), spool("meta"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = |id| {
        let bytes = runtime.block_on(data.load(id)).unwrap();
        let meta = runtime.block_on(meta.load(id)).unwrap();
        (
            String::from_utf8(bytes.to_vec()).unwrap(),
            String::from_utf8(meta.to_vec()).unwrap(),
        )
    };

    let (message, meta) = load(intact);
    assert!(
        message.starts_with(
            "Authentication-Results: mx.tern.test;\r\n\tdkim=pass\r\n\theader.a=rsa-sha256\r\n\theader.b="
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "\r\n\theader.d=example.com\r\n\theader.i=@example.com\r\n\theader.s=s2048\r\nDKIM-Signature: "
        ),
        "{message}"
    );
    assert!(meta.contains(r#""dkim_result":"pass""#), "{meta}");

    let (message, meta) = load(tampered);
    assert!(
        message.starts_with(
            "Authentication-Results: mx.tern.test;\r\n\tdkim=fail reason=\"body hash did not verify\"\r\n"
        ),
        "{message}"
    );
    assert!(meta.contains(r#""dkim_result":"fail""#), "{meta}");
}
