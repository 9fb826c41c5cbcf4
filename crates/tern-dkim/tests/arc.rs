//! ARC (RFC 8617) against Python's dkimpy, which shares no code with Tern:
//! chains Tern seals must pass dkimpy's `arc_verify` (one set and two),
//! chains dkimpy seals must pass Tern's [`verify_arc`], and tampering with
//! the body, an ARC field or the set structure must fail in both. Keys are
//! served by Tern's in-memory test resolver to Tern and through dkimpy's
//! `dnsfunc` hook to dkimpy, from the same openssl-made records.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use support::{KEYS, dkimpy_arc_verify, dkimpy_sign, read_key, txt_record};
use tern_dkim::{Algorithm, Signer, SignerConfig, seal_arc, verify_arc};
use tern_dns::{Resolver, TestResolverParams};
use tern_message::AuthenticationResult;

/// Now: dkimpy refuses signatures whose `t=` lies in the future.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const MESSAGE: &[u8] =
    b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=example.com\r\n\
From: Alice <alice@example.com>\r\n\
To: list@example.net\r\n\
Subject: Quarterly   report\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
\r\n\
Hello list,\r\n\
\r\n\
The numbers are attached.\r\n";

fn resolver() -> Resolver {
    let rsa = format!("v=DKIM1; k=rsa; p={}", read_key("rsa2048.p.txt").trim());
    let ed = format!("v=DKIM1; k=ed25519; p={}", read_key("ed25519.p.txt").trim());
    let mut zone = String::from("$ORIGIN example.com.\n");
    zone += &txt_record("rsa._domainkey.example.com", &rsa);
    zone += &txt_record("ed._domainkey.example.com", &ed);
    TestResolverParams::from_zones(&[zone]).build().unwrap()
}

fn signer(algorithm: Algorithm) -> Signer {
    let (selector, key) = match algorithm {
        Algorithm::RsaSha256 => ("rsa", "rsa2048.pkcs8.pem"),
        Algorithm::Ed25519Sha256 => ("ed", "ed25519.pkcs8.pem"),
    };
    let config: SignerConfig = serde_json::from_value(json!({
        "domain": "example.com",
        "selector": selector,
        "headers": ["From", "To", "Subject", "Date"],
        "key": format!("{KEYS}/{key}"),
    }))
    .unwrap();
    Signer::new(&config, algorithm).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn verify(message: &[u8]) -> AuthenticationResult {
    block_on(verify_arc(message, &resolver()))
}

/// Seal `message` as `serv_id` would: the new set prepended.
fn seal(message: &[u8], algorithm: Algorithm, results: &[AuthenticationResult]) -> Vec<u8> {
    let set = block_on(seal_arc(
        message,
        &signer(algorithm),
        "mx.example.com",
        results,
        &resolver(),
        now(),
    ))
    .unwrap()
    .expect("the chain is intact, so a set is added");
    [set.as_bytes(), message].concat()
}

/// A dkimpy `arc_sign` job with the RSA key: it seals for `srv_id` using
/// that server's Authentication-Results header in the message.
fn dkimpy_job(message: &[u8], selector: &str, srv_id: &str) -> Value {
    let (key, algorithm) = (
        std::fs::read(format!("{KEYS}/rsa2048.pkcs1.pem")).unwrap(),
        "rsa-sha256",
    );
    json!({
        "message": BASE64.encode(message),
        "selector": selector,
        "domain": "example.com",
        "key": BASE64.encode(key),
        "algorithm": algorithm,
        "canonicalize": ["relaxed", "relaxed"],
        "include_headers": ["From", "To", "Subject", "Date"],
        "arc": { "srv_id": srv_id, "timestamp": now() },
    })
}

fn assert_arc(result: &AuthenticationResult, expected: &str) {
    assert_eq!(result.method, "arc");
    assert_eq!(result.result, expected, "{result:?}");
}

fn header_value<'a>(message: &'a str, prefix: &str) -> &'a str {
    message
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {message}"))
}

#[test]
fn no_arc_headers_is_none_without_props() {
    let result = verify(MESSAGE);
    assert_arc(&result, "none");
    assert!(result.reason.is_none() && result.props.is_empty());
}

#[test]
fn tern_sealed_chains_of_one_and_two_pass_in_dkimpy_and_tern() {
    let spf = AuthenticationResult::new("spf", "pass");
    let one = seal(MESSAGE, Algorithm::RsaSha256, std::slice::from_ref(&spf));
    let text = String::from_utf8_lossy(&one).into_owned();
    let flat = text.replace("\r\n\t", " ");
    assert!(flat.starts_with("ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.com; s=rsa;"));
    assert!(header_value(&flat, "ARC-Message-Signature: ").starts_with(
        "ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=rsa;"
    ));
    assert_eq!(
        header_value(&text, "ARC-Authentication-Results: "),
        "ARC-Authentication-Results: i=1; mx.example.com;"
    );
    let first = verify(&one);
    assert_arc(&first, "pass");
    assert_eq!(first.props["header.oldest-pass"], "0");

    // The second hop records the first hop's ARC result, as a policy would.
    let two = seal(&one, Algorithm::RsaSha256, &[first.clone(), spf.clone()]);
    let text = String::from_utf8_lossy(&two).into_owned();
    assert!(text.starts_with("ARC-Seal: i=2; a=rsa-sha256; cv=pass;"));
    assert!(text.contains("ARC-Authentication-Results: i=2; mx.example.com;\r\n\tarc=pass"));
    assert_arc(&verify(&two), "pass");

    let dkimpy = dkimpy_arc_verify(&[one.clone(), two]);
    for (label, (cv, reason)) in ["one set", "two sets"].iter().zip(&dkimpy) {
        assert_eq!(cv.as_deref(), Some("pass"), "dkimpy on {label}: {reason}");
    }

    // dkimpy's ARC code knows only rsa-sha256, so an Ed25519 set is
    // checked by Tern alone (its Ed25519 verification is the DKIM one,
    // which tests/verify.rs checks against dkimpy's DKIM signatures).
    let ed = seal(&one, Algorithm::Ed25519Sha256, &[first, spf]);
    let text = String::from_utf8_lossy(&ed).into_owned();
    assert!(text.starts_with("ARC-Seal: i=2; a=ed25519-sha256; cv=pass;"));
    assert!(text.contains("ARC-Message-Signature: i=2; a=ed25519-sha256;"));
    assert_arc(&verify(&ed), "pass");
    assert_arc(&verify(&edit(&ed, "The numbers", "The NUMBERS")), "fail");
}

#[test]
fn dkimpy_sealed_chains_pass_in_tern() {
    // Hop 1 (cv=none). dkimpy's arc_sign only takes RSA keys (it parses
    // every key as PEM), so Ed25519 is covered by Tern-made sets.
    let hop1 = dkimpy_sign(&[dkimpy_job(MESSAGE, "rsa", "mx.example.com")]);
    assert!(hop1[0].starts_with(b"ARC-Seal: i=1"));
    assert_arc(&verify(&hop1[0]), "pass");
    // Hop 2: a list server changes the body, then seals with cv=pass (its
    // Authentication-Results says arc=pass). Only the newest AMS has to
    // cover the message as delivered, so the chain still passes.
    let mut changed = b"Authentication-Results: list.example.com; arc=pass\r\n".to_vec();
    changed.extend_from_slice(&hop1[0]);
    changed.extend_from_slice(b"--\r\nYou are subscribed to list@example.net\r\n");
    let hop2 = dkimpy_sign(&[dkimpy_job(&changed, "rsa", "list.example.com")]);
    assert!(hop2[0].starts_with(b"ARC-Seal: i=2"));
    assert_arc(&verify(&hop2[0]), "pass");
    let dkimpy = dkimpy_arc_verify(&hop2);
    assert_eq!(dkimpy[0].0.as_deref(), Some("pass"), "{}", dkimpy[0].1);

    // Tern can extend a dkimpy chain, and dkimpy accepts the result.
    let hop3 = seal(
        &hop2[0],
        Algorithm::RsaSha256,
        &[AuthenticationResult::new("arc", "pass")],
    );
    assert!(hop3.starts_with(b"ARC-Seal: i=3; a=rsa-sha256; cv=pass;"));
    assert_arc(&verify(&hop3), "pass");
    let dkimpy = dkimpy_arc_verify(&[hop3]);
    assert_eq!(dkimpy[0].0.as_deref(), Some("pass"), "{}", dkimpy[0].1);
}

/// Replace the first occurrence of `from` with `to`.
fn edit(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in message");
    text.replacen(from, to, 1).into_bytes()
}

#[test]
fn tampering_fails_in_tern_and_dkimpy() {
    let one = seal(MESSAGE, Algorithm::RsaSha256, &[]);
    // RSA throughout: dkimpy's ARC code knows no other algorithm, and a
    // set it cannot check would make its verdicts below meaningless.
    let two = seal(
        &one,
        Algorithm::RsaSha256,
        &[AuthenticationResult::new("arc", "pass")],
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "body changed after the last seal",
            edit(&two, "The numbers", "The NUMBERS"),
            "The ARC-Message-Signature for instance 2 failed to validate: body hash did not verify",
        ),
        (
            "signed header changed",
            edit(&two, "Subject: Quarterly", "Subject: Yearly"),
            "The ARC-Message-Signature for instance 2 failed to validate: signature did not verify",
        ),
        (
            "first hop's results rewritten",
            edit(
                &two,
                "ARC-Authentication-Results: i=1; mx.example.com; none",
                "ARC-Authentication-Results: i=1; mx.example.com; spf=pass",
            ),
            "The ARC-Seal for instance 1 failed to validate: signature did not verify",
        ),
        (
            "cv rewritten",
            edit(
                &two,
                "i=2; a=rsa-sha256; cv=pass",
                "i=2; a=rsa-sha256; cv=fail",
            ),
            "The ARC-Seal for instance 2 is marked as failing its chain validation",
        ),
        (
            "a set renumbered",
            edit(
                &two,
                "ARC-Authentication-Results: i=1;",
                "ARC-Authentication-Results: i=3;",
            ),
            "The ARC Set with instance 1 is missing some of its constituent headers",
        ),
    ];
    // The untouched chain passes in dkimpy, so its failures below are
    // about the edits.
    let mut messages = vec![two.clone()];
    for (label, message, reason) in cases.iter() {
        let result = verify(message);
        assert_arc(&result, "fail");
        assert_eq!(result.reason.as_deref(), Some(*reason), "{label}");
        messages.push(message.clone());
    }
    let dkimpy = dkimpy_arc_verify(&messages);
    assert_eq!(dkimpy[0].0.as_deref(), Some("pass"), "{}", dkimpy[0].1);
    for ((label, _, _), (cv, reason)) in cases.iter().zip(&dkimpy[1..]) {
        // dkimpy reports an earlier cv=fail as "chain ended" (None).
        assert_ne!(
            cv.as_deref(),
            Some("pass"),
            "dkimpy passed {label}: {reason}"
        );
    }
    // The seal of set 1 verified before set 2's did not.
    let after_first = verify(&edit(
        &two,
        "ARC-Authentication-Results: i=2; mx.example.com;",
        "ARC-Authentication-Results: i=2; mx2.example.com;",
    ));
    assert_eq!(after_first.props["header.oldest-pass"], "1");
}

#[test]
fn a_failed_chain_is_not_sealed() {
    let one = seal(MESSAGE, Algorithm::RsaSha256, &[]);
    let broken = edit(&one, "The numbers", "The NUMBERS");
    let set = block_on(seal_arc(
        &broken,
        &signer(Algorithm::RsaSha256),
        "mx.example.com",
        &[],
        &resolver(),
        now(),
    ))
    .unwrap();
    assert!(set.is_none());
}

#[test]
fn a_signer_listing_arc_seal_is_refused() {
    let config: SignerConfig = serde_json::from_value(json!({
        "domain": "example.com",
        "selector": "ed",
        "headers": ["From", "ARC-Seal"],
        "key": format!("{KEYS}/ed25519.pkcs8.pem"),
    }))
    .unwrap();
    let signer = Signer::new(&config, Algorithm::Ed25519Sha256).unwrap();
    let err = block_on(seal_arc(MESSAGE, &signer, "mx", &[], &resolver(), now()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must not sign ARC-Seal"), "{err}");
}
