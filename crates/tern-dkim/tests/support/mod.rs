//! Shared by the integration tests: the dkimpy cross-check.
//!
//! `dkimpy` hands signed messages to Python's `dkimpy` (through
//! `tests/dkimpy_verify.py`) with the test keys' DNS records, which were
//! produced by `openssl` when the keys were generated, not by this crate.
//! Missing Python modules fail loudly: `pip install dkimpy pynacl dnspython authres` (`authres` for dkimpy's ARC sealing).

#![allow(dead_code)] // each test binary uses a different part

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

pub const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

pub fn read_key(name: &str) -> String {
    std::fs::read_to_string(format!("{KEYS}/{name}")).unwrap()
}

/// DNS TXT records for the selectors the tests use, from openssl's output.
pub fn records() -> Value {
    json!({
        "rsa._domainkey.example.com": format!("v=DKIM1; k=rsa; p={}", read_key("rsa2048.p.txt").trim()),
        "ed._domainkey.example.com": format!("v=DKIM1; k=ed25519; p={}", read_key("ed25519.p.txt").trim()),
    })
}

/// Run dkimpy over `messages`; one list of per-signature verdicts each.
pub fn dkimpy(messages: &[Vec<u8>]) -> Vec<Vec<(bool, String)>> {
    let python = std::env::var("TERN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let request = json!({
        "records": records(),
        "messages": messages.iter().map(|m| BASE64.encode(m)).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkimpy_verify.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {python} ({err}); the DKIM cross-check needs Python 3 with: pip install dkimpy pynacl dnspython"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "dkimpy verifier failed ({}): {}\nInstall the verifier with: pip install dkimpy pynacl dnspython",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Vec<Value>> = serde_json::from_slice(&output.stdout).unwrap();
    results
        .into_iter()
        .map(|verdicts| {
            verdicts
                .into_iter()
                .map(|v| {
                    (
                        v["ok"].as_bool().unwrap(),
                        v["log"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

/// The seed of the Ed25519 test key (the last 32 bytes of its PKCS#8 DER).
pub fn ed25519_seed() -> Vec<u8> {
    let der = std::fs::read(format!("{KEYS}/ed25519.pkcs8.der")).unwrap();
    der[der.len() - 32..].to_vec()
}

/// Run `tests/dkimpy_sign.py` over `jobs` (see that script for their
/// shape); the signed messages come back in order.
pub fn dkimpy_sign(jobs: &[Value]) -> Vec<Vec<u8>> {
    let python = std::env::var("TERN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut child = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dkimpy_sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {python} ({err}); install: pip install dkimpy pynacl dnspython")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "jobs": jobs }).to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "dkimpy signer failed ({}): {}\nInstall it with: pip install dkimpy pynacl dnspython",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let signed: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    signed.iter().map(|m| BASE64.decode(m).unwrap()).collect()
}

/// A zone-file TXT record for `name`, split into strings of at most 255
/// characters as a real zone must.
pub fn txt_record(name: &str, text: &str) -> String {
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(200)
        .map(|chunk| format!("\"{}\"", std::str::from_utf8(chunk).unwrap()))
        .collect();
    format!("{name}. 60 TXT {}\n", strings.join(" "))
}

/// Run dkimpy's `arc_verify` (through `tests/dkimpy_arc_verify.py`) over
/// `messages`: each chain's `cv` (`None` when dkimpy reports the chain as
/// ended by an earlier `cv=fail`) and dkimpy's reason.
pub fn dkimpy_arc_verify(messages: &[Vec<u8>]) -> Vec<(Option<String>, String)> {
    let python = std::env::var("TERN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let request = json!({
        "records": records(),
        "messages": messages.iter().map(|m| BASE64.encode(m)).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/dkimpy_arc_verify.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {python} ({err}); install: pip install dkimpy pynacl dnspython authres"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "dkimpy arc_verify failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    results
        .into_iter()
        .map(|v| {
            (
                v["cv"].as_str().map(str::to_string),
                v["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
