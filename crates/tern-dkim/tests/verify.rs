//! `verify_dkim` against signatures made by Python's dkimpy, an
//! implementation that shares no code with Tern: both key types, every
//! canonicalization pair, `l=`, tampering, and each way the key lookup can
//! fail. Keys are served by Tern's in-memory test resolver, the same one
//! `kumo.dns.configure_test_resolver` builds, with the public keys that
//! `openssl` printed when the test keys were made.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::process::Command;
use support::{KEYS, dkimpy_sign, ed25519_seed, read_key, txt_record};
use tern_dkim::{Algorithm, Signer, SignerConfig, verify_dkim};
use tern_dns::{Resolver, TestResolverParams};
use tern_message::AuthenticationResult;

const NOW: u64 = 1_800_000_000;

const PLAIN: &[u8] = b"From: Alice <alice@example.com>\r\n\
To: bob@example.net\r\n\
Subject: Quarterly report\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@example.com>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
The numbers are attached.\r\n";

/// Folding, runs of white space, UTF-8 and a whitespace-only tail: the
/// places where simple and relaxed canonicalization differ.
const AWKWARD: &[u8] = b"From:   \"Alice  Example\"\t <alice@example.com>  \r\n\
To: bob@example.net,\r\n\tcarol@example.net\r\n\
Subject: Gr\xc3\xbc\xc3\x9fe   aus \t K\xc3\xb6ln \r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
\r\n\
  Indented   line with  runs  \t \r\n\
Caf\xc3\xa9\r\n\
\r\n\
 \r\n\t\r\n\r\n";

fn rsa_public_key(pem_file: &str) -> String {
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(format!("{KEYS}/{pem_file}"))
        .output()
        .expect("openssl is needed to print the 1024-bit test key");
    assert!(out.status.success());
    BASE64.encode(out.stdout)
}

/// Test zones: the keys under `example.com` and `other.example`, a revoked
/// key, a key of the wrong type, and a name that answers SERVFAIL.
fn resolver() -> Resolver {
    let rsa = format!("v=DKIM1; k=rsa; p={}", read_key("rsa2048.p.txt").trim());
    let ed = format!("v=DKIM1; k=ed25519; p={}", read_key("ed25519.p.txt").trim());
    let rsa1024 = format!("v=DKIM1; k=rsa; p={}", rsa_public_key("rsa1024.pkcs1.pem"));
    let mut zone = String::from("$ORIGIN example.com.\n");
    zone += &txt_record("rsa._domainkey.example.com", &rsa);
    zone += &txt_record("ed._domainkey.example.com", &ed);
    zone += &txt_record("rsa1024._domainkey.example.com", &rsa1024);
    zone += &txt_record("revoked._domainkey.example.com", "v=DKIM1; k=rsa; p=");
    zone += &txt_record("wrongtype._domainkey.example.com", &ed);
    zone += &txt_record("rsa._domainkey.other.example", &rsa);
    let mut params = TestResolverParams::from_zones(&[zone]);
    params.servfail = vec!["flaky._domainkey.example.com".to_string()];
    params.build().unwrap()
}

fn job(message: &[u8], selector: &str, algorithm: &str, extra: Value) -> Value {
    let key = if algorithm.starts_with("ed25519") {
        ed25519_seed()
    } else if selector == "rsa1024" {
        std::fs::read(format!("{KEYS}/rsa1024.pkcs1.pem")).unwrap()
    } else {
        std::fs::read(format!("{KEYS}/rsa2048.pkcs1.pem")).unwrap()
    };
    let mut job = json!({
        "message": BASE64.encode(message),
        "selector": selector,
        "domain": "example.com",
        "key": BASE64.encode(key),
        "algorithm": algorithm,
        "canonicalize": ["relaxed", "relaxed"],
        "include_headers": ["From", "To", "Subject", "Date"],
        "length": false,
    });
    job.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    job
}

fn verify(message: &[u8]) -> Vec<AuthenticationResult> {
    let resolver = resolver();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(verify_dkim(message, &resolver, NOW))
}

fn only(message: &[u8]) -> AuthenticationResult {
    let mut results = verify(message);
    assert_eq!(results.len(), 1, "{results:?}");
    results.remove(0)
}

fn assert_result(result: &AuthenticationResult, expected: &str, reason: Option<&str>) {
    assert_eq!(
        (result.result.as_str(), result.reason.as_deref()),
        (expected, reason),
        "{result:?}"
    );
}

#[test]
fn dkimpy_signatures_pass_for_both_key_types_and_every_canonicalization() {
    let mut jobs = Vec::new();
    let mut labels = Vec::new();
    for (selector, algorithm) in [("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")] {
        for canon in [
            ["relaxed", "relaxed"],
            ["simple", "simple"],
            ["relaxed", "simple"],
            ["simple", "relaxed"],
        ] {
            for length in [false, true] {
                for (name, message) in [("plain", PLAIN), ("awkward", AWKWARD)] {
                    jobs.push(job(
                        message,
                        selector,
                        algorithm,
                        json!({ "canonicalize": canon, "length": length }),
                    ));
                    labels.push(format!("{algorithm} {canon:?} l={length} {name}"));
                }
            }
        }
    }
    let signed = dkimpy_sign(&jobs);
    for (message, label) in signed.iter().zip(&labels) {
        let result = only(message);
        assert_result(&result, "pass", None);
        assert_eq!(result.method, "dkim");
        let props = &result.props;
        assert_eq!(props["header.d"], "example.com", "{label}");
        assert_eq!(props["header.i"], "@example.com", "{label}");
        assert_eq!(props["header.b"].len(), 8, "{label}");
        let algorithm = label.split(' ').next().unwrap();
        assert_eq!(props["header.a"], algorithm, "{label}");
        assert_eq!(
            props["header.s"],
            if algorithm == "rsa-sha256" {
                "rsa"
            } else {
                "ed"
            },
            "{label}"
        );
    }
}

#[test]
fn a_changed_body_fails_unless_it_is_beyond_l() {
    let jobs = [
        job(PLAIN, "rsa", "rsa-sha256", json!({})),
        job(
            PLAIN,
            "ed",
            "ed25519-sha256",
            json!({"canonicalize": ["simple", "simple"]}),
        ),
        job(PLAIN, "rsa", "rsa-sha256", json!({"length": true})),
    ];
    let signed = dkimpy_sign(&jobs);
    for message in &signed[..2] {
        let tampered = replace(message, b"numbers", b"Numbers");
        assert_result(&only(&tampered), "fail", Some("body hash did not verify"));
    }
    // l= covers the body as signed: text appended later is not covered,
    // a change inside is.
    let mut appended = signed[2].clone();
    appended.extend_from_slice(b"-- \r\nAppended by a list server\r\n");
    assert_result(&only(&appended), "pass", None);
    let tampered = replace(&signed[2], b"numbers", b"Numbers");
    assert_result(&only(&tampered), "fail", Some("body hash did not verify"));
    // A body cut below l= cannot pass either.
    let cut = replace(&signed[2], b"The numbers are attached.\r\n", b"");
    let result = only(&cut);
    assert_eq!(result.result, "fail", "{result:?}");
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .starts_with("body is shorter than l="),
        "{result:?}"
    );
}

#[test]
fn a_changed_signed_header_fails_and_an_unsigned_one_does_not() {
    let jobs = [
        job(PLAIN, "rsa", "rsa-sha256", json!({})),
        job(PLAIN, "ed", "ed25519-sha256", json!({})),
    ];
    for message in dkimpy_sign(&jobs) {
        let tampered = replace(&message, b"Subject: Quarterly", b"Subject: Yearly");
        assert_result(&only(&tampered), "fail", Some("signature did not verify"));
        // Message-ID is not in h=.
        let unsigned = replace(&message, b"<1@example.com>", b"<2@example.com>");
        assert_result(&only(&unsigned), "pass", None);
        // An added From makes the message ambiguous: permerror.
        let twice = replace(&message, b"To: ", b"From: mallory@evil.example\r\nTo: ");
        let result = only(&twice);
        assert_eq!(result.result, "permerror", "{result:?}");
    }
}

#[test]
fn key_lookup_failures_are_permanent_or_temporary_as_upstream() {
    let jobs: Vec<Value> = ["missing", "revoked", "flaky", "wrongtype"]
        .iter()
        .map(|selector| job(PLAIN, selector, "rsa-sha256", json!({})))
        .collect();
    let signed = dkimpy_sign(&jobs);
    let result = only(&signed[0]);
    assert_eq!(result.result, "permerror", "{result:?}");
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .starts_with("no key for signature"),
        "{result:?}"
    );
    assert_eq!(result.props["header.s"], "missing");
    assert_result(&only(&signed[1]), "permerror", Some("key revoked"));
    let result = only(&signed[2]);
    assert_eq!(result.result, "temperror", "{result:?}");
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .starts_with("key unavailable"),
        "{result:?}"
    );
    let result = only(&signed[3]);
    assert_eq!(result.result, "permerror", "{result:?}");
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .contains("inappropriate key algorithm"),
        "{result:?}"
    );
}

#[test]
fn legacy_keys_and_algorithms() {
    let jobs = [
        job(PLAIN, "rsa1024", "rsa-sha256", json!({})),
        job(PLAIN, "rsa", "rsa-sha1", json!({})),
    ];
    let signed = dkimpy_sign(&jobs);
    // 1024-bit RSA keys still verify (RFC 8301 sets that floor).
    assert_result(&only(&signed[0]), "pass", None);
    // rsa-sha1 must not be considered valid (RFC 8301 §3.1).
    assert_result(
        &only(&signed[1]),
        "permerror",
        Some("unsupported hash algorithm: rsa-sha1"),
    );
}

#[test]
fn several_signatures_get_one_result_each_with_distinct_header_b() {
    let first = dkimpy_sign(&[job(PLAIN, "ed", "ed25519-sha256", json!({}))]).remove(0);
    let second = dkimpy_sign(&[job(&first, "rsa", "rsa-sha256", json!({}))]).remove(0);
    let results = verify(&second);
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].props["header.a"], "rsa-sha256");
    assert_eq!(results[1].props["header.a"], "ed25519-sha256");
    assert!(results.iter().all(|r| r.result == "pass"), "{results:?}");
    assert_ne!(results[0].props["header.b"], results[1].props["header.b"]);

    // A signature for another domain verifies but does not pass for the
    // From domain: KumoMTA reports it as "policy".
    let other = dkimpy_sign(&[job(
        PLAIN,
        "rsa",
        "rsa-sha256",
        json!({"domain": "other.example"}),
    )])
    .remove(0);
    let result = only(&other);
    assert_result(&result, "policy", Some("mail-from-mismatch-signing-domain"));
    assert_eq!(
        result.props["policy.dkim-rules"],
        "mail-from-mismatch-signing-domain"
    );
    assert_eq!(result.props["header.d"], "other.example");

    // At most ten signatures are looked at.
    let mut many = second.clone();
    for _ in 0..11 {
        let top: Vec<u8> =
            second[..second.windows(7).position(|w| w == b"\r\nDKIM-").unwrap() + 2].to_vec();
        many.splice(0..0, top);
    }
    assert_eq!(verify(&many).len(), 10);
}

#[test]
fn unsigned_and_malformed_messages() {
    assert!(verify(PLAIN).is_empty(), "no signature, no result");
    assert_result(
        &only(b"To: bob@example.net\r\n\r\nbody\r\n"),
        "permerror",
        Some("From header is missing"),
    );
    assert_result(
        &only(b"From: a@example.com, b@example.com\r\n\r\nbody\r\n"),
        "permerror",
        Some("From header must have a single sender, found 2"),
    );
    let garbage = b"DKIM-Signature: v=1; a=rsa-sha256; v=2\r\nFrom: a@example.com\r\n\r\nx\r\n";
    let result = only(garbage);
    assert_result(
        &result,
        "permerror",
        Some("signature syntax error: duplicate tag v"),
    );
    let missing = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; b=AAAA\r\n\
From: a@example.com\r\n\r\nx\r\n";
    let result = only(missing);
    assert_result(
        &result,
        "permerror",
        Some("signature missing required tag (bh)"),
    );
    assert_eq!(result.props["header.d"], "example.com");
}

fn tern_signer(canon: (&str, &str), extra: Value) -> Signer {
    let mut table = json!({
        "domain": "example.com",
        "selector": "ed",
        "headers": ["From", "To", "Subject"],
        "key": format!("{KEYS}/ed25519.pkcs8.pem"),
        "header_canonicalization": canon.0,
        "body_canonicalization": canon.1,
    });
    table
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let config: SignerConfig = serde_json::from_value(table).unwrap();
    Signer::new(&config, Algorithm::Ed25519Sha256).unwrap()
}

#[test]
fn tern_signatures_verify_and_x_expires() {
    for canon in [
        ("Relaxed", "Relaxed"),
        ("Simple", "Simple"),
        ("Simple", "Relaxed"),
    ] {
        for message in [
            PLAIN,
            AWKWARD,
            b"From: alice@example.com\nSubject: lf\n\nline  \n\n",
        ] {
            let signer = tern_signer(canon, json!({ "over_sign": true, "body_length": true }));
            let mut signed = signer.sign_at(message, NOW).unwrap().into_bytes();
            signed.extend_from_slice(message);
            assert_result(&only(&signed), "pass", None);
        }
    }
    let signer = tern_signer(("Relaxed", "Relaxed"), json!({ "expiration": 3600 }));
    let sign_at = |t: u64| {
        let mut signed = signer.sign_at(PLAIN, t).unwrap().into_bytes();
        signed.extend_from_slice(PLAIN);
        signed
    };
    // Expired, but within the 15 minutes allowed for clock skew.
    assert_result(&only(&sign_at(NOW - 3600 - 600)), "pass", None);
    assert_result(
        &only(&sign_at(NOW - 3600 - 1000)),
        "permerror",
        Some("signature expired"),
    );
}

fn replace(message: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = message
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the message", String::from_utf8_lossy(from)));
    let mut out = message[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&message[at + from.len()..]);
    out
}
