//! `tls_required_client_ca`: the listener requests a client certificate
//! during STARTTLS; one that verifies against the CA puts its subject in
//! `tls_peer_subject_name` (conn meta and the Reception record). Clients
//! without a certificate are still served (requested, not required).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CLIENT: &str = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if sys.argv[2] != '-':
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))
s.starttls(context=ctx)
s.sendmail('a@example.com', [sys.argv[4]], 'Subject: cert\r\n\r\nbody\r\n')
s.quit()
"#;

#[test]
fn a_verified_client_certificate_names_its_subject() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Tern Test CA",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=client.test/O=Tern Tests",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{
    listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }},
    tls_required_client_ca = '{ca}',
  }}
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('queue', 'null')
end)
"#,
        ca = dir.join("ca.pem").display()
    );
    let server = start_tern(policy);
    let port = server.listener("smtp").port().to_string();
    let cert = dir.join("client.pem");
    let key = dir.join("client.key");
    for (cert, key, rcpt) in [
        (
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "with@example.com",
        ),
        ("-", "-", "without@example.com"),
    ] {
        let out = Command::new("python3")
            .args(["-c", CLIENT, &port, cert, key, rcpt])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{rcpt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Reception") >= 2
    });
    let reception = |rcpt: &str| {
        of_type(&seen, "Reception")
            .into_iter()
            .find(|r| r["recipient"] == rcpt)
            .unwrap()
            .clone()
    };
    let with = reception("with@example.com");
    let subject: Vec<&str> = with["tls_peer_subject_name"]
        .as_array()
        .unwrap_or_else(|| panic!("no subject in {with}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(subject.contains(&"CN=client.test"), "{subject:?}");
    assert!(subject.contains(&"O=Tern Tests"), "{subject:?}");
    let without = reception("without@example.com");
    assert!(without["tls_cipher"].is_string());
    assert!(!without["tls_peer_subject_name"].is_array(), "{without}");
}
