//! Cross-check: every signature tern-dkim makes must verify in Python's
//! `dkimpy`, an implementation that shares no code with ours, and tampering
//! with a signed part must make it fail there.
//!
//! The public keys handed to dkimpy were produced by `openssl` when the test
//! keys were generated (`tests/keys/*.p.txt`), not by this crate. All
//! messages of a test go to one Python process (`tests/dkimpy_verify.py`)
//! so the suite stays fast. Missing Python modules fail the test loudly:
//! CI installs them with `pip install dkimpy pynacl dnspython`.

mod support;

use serde_json::{Value, json};
use support::{KEYS, dkimpy, records};
use tern_dkim::{Algorithm, Signer, SignerConfig};

fn config(selector: &str, key_file: &str, extra: Value) -> SignerConfig {
    let mut table = json!({
        "domain": "example.com",
        "selector": selector,
        "headers": ["From", "To", "Subject", "Date", "Message-ID", "Reply-To"],
        "key": if key_file.starts_with('/') { key_file.to_string() } else { format!("{KEYS}/{key_file}") },
    });
    table
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(table).unwrap()
}

fn rsa(extra: Value) -> Signer {
    Signer::new(
        &config("rsa", "rsa2048.pkcs1.pem", extra),
        Algorithm::RsaSha256,
    )
    .unwrap()
}

fn ed(extra: Value) -> Signer {
    Signer::new(
        &config("ed", "ed25519.pkcs8.pem", extra),
        Algorithm::Ed25519Sha256,
    )
    .unwrap()
}

fn signed(signer: &Signer, message: &[u8]) -> Vec<u8> {
    let mut out = signer.sign(message).unwrap().into_bytes();
    out.extend_from_slice(message);
    out
}

const PLAIN: &[u8] = b"From: Alice <alice@example.com>\r\n\
To: bob@example.net\r\n\
Subject: Quarterly report\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@example.com>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
The numbers are attached.\r\n";

/// Folded headers, odd whitespace, 8-bit UTF-8 in a header and the body,
/// and a body that ends in blank and whitespace-only lines.
fn awkward() -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(b"From:   \"Alice  Example\"\t <alice@example.com>  \r\n");
    message.extend_from_slice(
        b"To: bob@example.net,\r\n\tcarol@example.net,\r\n    dave@example.net\r\n",
    );
    message.extend_from_slice("Subject: Gr\u{fc}\u{df}e   aus \t K\u{f6}ln \r\n".as_bytes());
    message.extend_from_slice(b"Subject: a second subject\r\n");
    message.extend_from_slice(b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n");
    message.extend_from_slice(b"X-Unsigned: whatever\r\n\r\n");
    message.extend_from_slice("  Indented   line with  runs  \t \r\n".as_bytes());
    message.extend_from_slice(
        "Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e \u{2014} \u{1f600}\r\n".as_bytes(),
    );
    message.extend_from_slice(b"\r\n\r\nafter two blank lines\t\r\n");
    message.extend_from_slice(b" \r\n\t\r\n  \t  \r\n\r\n\r\n");
    message
}

#[test]
fn every_key_form_and_canonicalization_verifies() {
    let seed_dir = tempfile::tempdir().unwrap();
    let der = std::fs::read(format!("{KEYS}/ed25519.pkcs8.der")).unwrap();
    let seed_path = seed_dir.path().join("seed.bin");
    std::fs::write(&seed_path, &der[der.len() - 32..]).unwrap();
    let seed_path = seed_path.to_str().unwrap().to_string();

    let canonicalizations = [
        ("Relaxed", "Relaxed"),
        ("Simple", "Simple"),
        ("Relaxed", "Simple"),
        ("Simple", "Relaxed"),
    ];
    let keys: [(&str, &str, Algorithm); 5] = [
        ("rsa", "rsa2048.pkcs1.pem", Algorithm::RsaSha256),
        ("rsa", "rsa2048.pkcs8.pem", Algorithm::RsaSha256),
        ("ed", "ed25519.pkcs8.pem", Algorithm::Ed25519Sha256),
        ("ed", "ed25519.pkcs8.der", Algorithm::Ed25519Sha256),
        ("ed", &seed_path, Algorithm::Ed25519Sha256),
    ];
    let bodies: [(&str, Vec<u8>); 5] = [
        ("plain", PLAIN.to_vec()),
        ("awkward", awkward()),
        (
            "empty body",
            b"From: alice@example.com\r\nSubject: x\r\n\r\n".to_vec(),
        ),
        (
            "bare LF",
            b"From: alice@example.com\nSubject: lf\n\tfolded\n\nline one  \n\n \nline two\n\n"
                .to_vec(),
        ),
        (
            "whitespace-only tail",
            b"From: alice@example.com\r\n\r\ntext\r\n \r\n\t\r\n".to_vec(),
        ),
    ];
    let mut labels = Vec::new();
    let mut messages = Vec::new();
    for (selector, key, algorithm) in &keys {
        for (header_c, body_c) in canonicalizations {
            let config = config(
                selector,
                key,
                json!({"header_canonicalization": header_c, "body_canonicalization": body_c}),
            );
            let signer = Signer::new(&config, *algorithm).unwrap();
            for (name, message) in &bodies {
                labels.push(format!("{key} {header_c}/{body_c} {name}"));
                messages.push(signed(&signer, message));
            }
        }
    }
    let results = dkimpy(&messages);
    let mut failures = Vec::new();
    for ((label, verdicts), message) in labels.iter().zip(&results).zip(&messages) {
        if verdicts.len() != 1 || !verdicts[0].0 {
            failures.push(format!(
                "{label}: {verdicts:?}\n{}",
                String::from_utf8_lossy(message)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "dkimpy rejected:\n{}",
        failures.join("\n\n")
    );
    assert_eq!(results.len(), 5 * 4 * 5);
}

#[test]
fn options_and_double_signatures_verify() {
    let extras = [
        json!({"over_sign": true}),
        json!({"body_length": true}),
        json!({"expiration": "1 hour", "reporting": true}),
        json!({"agent_user_identifier": "alice@mail.example.com"}),
        json!({"atps": "esp.example", "atpsh": "sha256"}),
        json!({"headers": ["from", "TO", "subject", "subject", "x-absent"]}),
        json!({"headers": (0..30).map(|i| format!("X-Long-Header-Name-{i}")).collect::<Vec<_>>(), "over_sign": true}),
    ];
    let mut messages = Vec::new();
    for extra in &extras {
        for signer in [rsa(extra.clone()), ed(extra.clone())] {
            messages.push(signed(&signer, &awkward()));
        }
    }
    // Two signatures on one message, as with an additional ESP signature.
    let inner = signed(&ed(json!({})), PLAIN);
    messages.push(signed(&rsa(json!({"over_sign": true})), &inner));

    let results = dkimpy(&messages);
    for (index, verdicts) in results.iter().enumerate() {
        assert!(
            !verdicts.is_empty() && verdicts.iter().all(|(ok, _)| *ok),
            "case {index} ({}): {verdicts:?}\n{}",
            extras
                .get(index / 2)
                .map(|e| e.to_string())
                .unwrap_or_default(),
            String::from_utf8_lossy(&messages[index])
        );
    }
    assert_eq!(results.last().unwrap().len(), 2, "both signatures checked");
}

/// Replace the first occurrence of `from` in `message` with `to`.
fn replace(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = message
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in message"));
    let mut out = message[..at].to_vec();
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&message[at + from.len()..]);
    out
}

#[test]
fn tampering_is_detected_and_unsigned_changes_are_not() {
    for signer in [rsa(json!({})), ed(json!({"over_sign": true}))] {
        let good = signed(&signer, PLAIN);
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("untouched", good.clone(), true),
            (
                "unsigned header added",
                replace(&good, "\r\nDate:", "\r\nX-Trace: added later\r\nDate:"),
                true,
            ),
            (
                "trailing blank line added to body",
                [good.as_slice(), b"\r\n"].concat(),
                true,
            ),
            (
                "body word changed",
                replace(&good, "numbers", "numberz"),
                false,
            ),
            (
                "body line appended",
                [good.as_slice(), b"P.S. wire the money\r\n"].concat(),
                false,
            ),
            (
                "signed Subject changed",
                replace(&good, "Quarterly report", "Quarterly rep0rt"),
                false,
            ),
            (
                "absent signed header (Reply-To) added",
                replace(
                    &good,
                    "\r\nDate:",
                    "\r\nReply-To: mallory@evil.example\r\nDate:",
                ),
                false,
            ),
        ];
        let messages: Vec<Vec<u8>> = cases.iter().map(|(_, m, _)| m.clone()).collect();
        let results = dkimpy(&messages);
        for ((name, _, expected), verdicts) in cases.iter().zip(&results) {
            assert_eq!(
                verdicts[0].0,
                *expected,
                "{:?} {name}: {verdicts:?}",
                signer.algorithm()
            );
        }
    }
}

#[test]
fn over_signing_blocks_an_added_instance_of_a_present_header() {
    // Added at the top, where a replaying sender would put it.
    let extra_subject = |m: &[u8]| {
        replace(
            m,
            "\r\nFrom: Alice",
            "\r\nSubject: Invoice overdue\r\nFrom: Alice",
        )
    };
    let over_signed = signed(&ed(json!({"over_sign": true})), PLAIN);
    let plain_signed = signed(&ed(json!({})), PLAIN);
    let results = dkimpy(&[extra_subject(&over_signed), extra_subject(&plain_signed)]);
    assert!(!results[0][0].0, "over-signed: an added Subject must fail");
    // Without over-signing the added Subject sits above the signed one,
    // which the verifier does not look at: the signature still holds. This
    // is the replay over_sign exists to prevent.
    assert!(results[1][0].0, "not over-signed: {:?}", results[1]);
}

#[test]
fn signer_dns_record_matches_openssl() {
    assert_eq!(
        rsa(json!({})).dns_txt_record(),
        records()["rsa._domainkey.example.com"].as_str().unwrap()
    );
    assert_eq!(
        ed(json!({})).dns_txt_record(),
        records()["ed._domainkey.example.com"].as_str().unwrap()
    );
}
