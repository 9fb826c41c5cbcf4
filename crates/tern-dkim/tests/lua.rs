//! `kumo.dkim.*`, `msg:dkim_sign`, `msg:dkim_verify` and ARC (`msg:arc_verify`,
//! `msg:arc_seal`) seen from a real policy file run by the
//! policy engine. Every signed message is verified by Python's dkimpy
//! (`pip install dkimpy pynacl dnspython`), through the helper shared with
//! `tests/dkimpy.rs`.

mod support;

use mlua::{IntoLuaMulti, Lua, MultiValue, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::{KEYS, dkimpy, dkimpy_arc_verify};
use tern_dkim::{DkimRegistrar, LuaSigner, Signer};
use tern_dns::{DnsHandle, MxResolver, MxSettings, TestResolverParams};
use tern_message::Message;
use tern_policy::{EngineOptions, PolicyEngine, PolicyError};
use tern_types::{EnvelopeAddress, SpoolId};

const MESSAGE: &str = "From: Alice <alice@example.com>\r\n\
To: bob@example.net\r\n\
Subject: Quarterly report\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
\r\n\
Numbers are up.\r\n";

/// The seed's example: the selector comes from a JSON file loaded at the
/// top level, the domain from the From header.
const POLICY: &str = r#"
local kumo = require 'kumo'
local DKIM_CONFIG = kumo.json_load '@DIR@/dkim_config.json'

kumo.on('sign_rsa', function(msg)
  local domain = msg:from_header().domain
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = domain,
    selector = DKIM_CONFIG[domain],
    headers = { 'From', 'To', 'Subject' },
    key = '@DIR@/key.pem',
  }
  msg:dkim_sign(signer)
end)

kumo.on('sign_ed', function(msg)
  msg:dkim_sign(kumo.dkim.ed25519_signer {
    domain = msg:from_header().domain,
    selector = 'ed',
    headers = { 'From', 'To', 'Subject', 'Date' },
    key = '@DIR@/ed.pem',
    body_canonicalization = 'Simple',
    expiration = '1h',
    ttl = 60,
  })
end)

kumo.on('sign_pooled', function(msg)
  kumo.dkim.set_signing_threads(2)
  local signer = kumo.dkim.ed25519_signer {
    domain = 'example.com', selector = 'ed', headers = { 'From' }, key = '@DIR@/ed.pem',
  }
  msg:dkim_sign(signer)
  msg:dkim_sign(kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From', 'Subject' }, key = '@DIR@/key.pem',
  })
end)

kumo.on('missing_key', function(msg)
  kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From' }, key = '@DIR@/missing.pem',
  }
end)

kumo.on('unknown_param', function(msg)
  kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From' }, key = '@DIR@/key.pem',
    oversign = true,
  }
end)

kumo.on('bad_signer', function(msg)
  msg:dkim_sign('rsa')
end)

kumo.on('bad_threads', function(msg)
  kumo.dkim.set_signing_threads(0)
end)

kumo.on('make_signer', function(msg)
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From' }, key = '@DIR@/key.pem',
  }
  assert(signer.domain == 'example.com' and signer.selector == 'rsa')
  assert(signer.algorithm == 'rsa-sha256')
  assert(tostring(signer) == 'DkimSigner(d=example.com, s=rsa, a=rsa-sha256)')
  return signer
end)

kumo.on('verify', function(msg)
  local results = msg:dkim_verify()
  assert(#results == 1, 'one signature, one result')
  local r = results[1]
  assert(r.method == 'dkim' and r.props['header.d'] == 'example.com' and r.props['header.s'] == 'rsa')
  msg:add_authentication_results('mx.example.net', results)
  return r.result .. ' ' .. tostring(r.reason)
end)

kumo.on('verify_alt', function(msg)
  local r = msg:dkim_verify('alt')[1]
  return r.result .. ' ' .. tostring(r.reason)
end)

kumo.on('verify_unknown_resolver', function(msg)
  msg:dkim_verify('nope')
end)

-- One ARC hop, as in KumoMTA's arc_seal example: verify, record the
-- results, then seal with them.
kumo.on('arc_hop', function(msg)
  local results = msg:dkim_verify()
  local arc = msg:arc_verify()
  assert(arc.method == 'arc')
  table.insert(results, arc)
  msg:add_authentication_results('mx.example.net', results)
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From', 'To', 'Subject' },
    key = '@DIR@/key.pem',
  }
  msg:arc_seal(signer, 'mx.example.net', results)
  return arc.result .. ' ' .. tostring(arc.reason) .. ' ' .. tostring(arc.props['header.oldest-pass'])
end)

kumo.on('arc_verify', function(msg)
  local arc = msg:arc_verify()
  return arc.result .. ' ' .. tostring(arc.reason)
end)

kumo.on('arc_seal_alt', function(msg)
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = 'example.com', selector = 'rsa', headers = { 'From' }, key = '@DIR@/key.pem',
  }
  msg:arc_seal(signer, 'mx.example.net', {}, 'alt')
  return msg:arc_verify('alt').result
end)

kumo.on('arc_seal_bad_signer', function(msg)
  msg:arc_seal('rsa', 'mx.example.net', {})
end)

kumo.on('unknown_function', function(msg)
  kumo.dkim.arc_signer {}
end)
"#;

struct Setup {
    _dir: tempfile::TempDir,
    engine: PolicyEngine,
    registrar: DkimRegistrar,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = dir.path();
    std::fs::copy(format!("{KEYS}/rsa2048.pkcs1.pem"), path.join("key.pem")).unwrap();
    std::fs::copy(format!("{KEYS}/ed25519.pkcs8.pem"), path.join("ed.pem")).unwrap();
    std::fs::write(
        path.join("dkim_config.json"),
        r#"{"example.com": "rsa", "other.example": "nope"}"#,
    )
    .unwrap();
    let policy: PathBuf = path.join("init.lua");
    std::fs::write(
        &policy,
        POLICY.replace("@DIR@", path.to_str().expect("utf-8 temp dir")),
    )
    .unwrap();
    // The key the policy signs with is published in the default resolver;
    // the resolver defined as "alt" knows no keys.
    let zone = format!(
        "$ORIGIN example.com.\n{}",
        support::txt_record(
            "rsa._domainkey.example.com",
            &format!(
                "v=DKIM1; k=rsa; p={}",
                support::read_key("rsa2048.p.txt").trim()
            )
        )
    );
    let test_resolver = |zones: &[String]| TestResolverParams::from_zones(zones).build().unwrap();
    let dns = DnsHandle::new(MxResolver::new(
        Arc::new(test_resolver(&[zone])),
        MxSettings::default(),
    ));
    dns.define("alt", test_resolver(&[]));
    let registrar = DkimRegistrar::default().with_dns(dns);
    let mut options = EngineOptions::new(policy);
    options.registrars.push(Arc::new(registrar.clone()));
    Setup {
        _dir: dir,
        engine: PolicyEngine::new(options),
        registrar,
    }
}

fn message() -> Message {
    Message::new(
        SpoolId::new(),
        EnvelopeAddress::parse("alice@example.com").unwrap(),
        vec![EnvelopeAddress::parse("bob@example.net").unwrap()],
        serde_json::Map::new(),
        bytes::Bytes::from_static(MESSAGE.as_bytes()),
    )
}

/// Dispatch `event` with `msg` as its argument; the first returned value,
/// if it is a signer, comes back.
async fn run(
    engine: &PolicyEngine,
    event: &str,
    msg: &Message,
) -> Result<Option<Arc<Signer>>, PolicyError> {
    let msg = msg.clone();
    let result = engine
        .dispatch(
            event,
            move |lua: &Lua| (msg,).into_lua_multi(lua),
            |_, values: MultiValue| match values.into_iter().next() {
                Some(Value::UserData(signer)) => Ok(signer.borrow::<LuaSigner>()?.0.clone()),
                other => Err(mlua::Error::runtime(format!("not a signer: {other:?}"))),
            },
        )
        .await?;
    Ok(result)
}

fn assert_all_verify(signed: &[u8], signatures: usize) {
    let verdicts = dkimpy(&[signed.to_vec()]);
    assert_eq!(verdicts[0].len(), signatures, "{verdicts:?}");
    for (ok, log) in &verdicts[0] {
        assert!(ok, "dkimpy rejected the signature: {log}");
    }
}

#[tokio::test]
async fn rsa_signer_from_the_seed_example_verifies() {
    let setup = setup();
    let msg = message();
    run(&setup.engine, "sign_rsa", &msg).await.unwrap();
    let signed = msg.data();
    let text = String::from_utf8_lossy(&signed);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{text}"
    );
    assert!(
        text.contains("s=rsa;") && text.contains("d=example.com;"),
        "{text}"
    );
    assert!(
        text.ends_with(MESSAGE),
        "the original message follows the header"
    );
    assert_all_verify(&signed, 1);
    assert_eq!(setup.registrar.signing_threads(), None, "signed inline");
}

#[tokio::test]
async fn ed25519_signer_verifies() {
    let setup = setup();
    let msg = message();
    run(&setup.engine, "sign_ed", &msg).await.unwrap();
    let signed = msg.data();
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"));
    // Options written in Lua reach the signer: duration strings included.
    let text = String::from_utf8_lossy(&signed);
    assert!(text.contains("c=relaxed/simple;"), "{text}");
    let header = text.split("\r\nFrom:").next().unwrap();
    let tag = |name: &str| -> u64 {
        header
            .split(';')
            .find_map(|part| part.trim().strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {header}"))
            .parse()
            .unwrap()
    };
    assert_eq!(tag("x") - tag("t"), 3600, "{text}");
    assert_all_verify(&signed, 1);
}

#[tokio::test]
async fn signing_pool_signs_and_both_signatures_verify() {
    let setup = setup();
    let msg = message();
    run(&setup.engine, "sign_pooled", &msg).await.unwrap();
    assert_eq!(setup.registrar.signing_threads(), Some(2));
    let signed = msg.data();
    // The RSA signature was added last, so it is on top.
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256;"));
    assert_all_verify(&signed, 2);
    // Calling it again with the same size keeps the pool.
    let pool_before = setup.registrar.pool.read().as_ref().map(|p| p as *const _);
    run(&setup.engine, "sign_pooled", &message()).await.unwrap();
    let pool_after = setup.registrar.pool.read().as_ref().map(|p| p as *const _);
    assert_eq!(pool_before, pool_after);
}

#[tokio::test]
async fn errors_are_clear() {
    let setup = setup();
    let msg = message();
    let err = run(&setup.engine, "missing_key", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kumo.dkim.rsa_sha256_signer"), "{err}");
    assert!(err.contains("missing.pem"), "the key file is named: {err}");

    let err = run(&setup.engine, "unknown_param", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kumo.dkim.rsa_sha256_signer"), "{err}");
    assert!(err.contains("oversign"), "the unknown key is named: {err}");

    let err = run(&setup.engine, "bad_signer", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("msg:dkim_sign expects a signer"), "{err}");

    let err = run(&setup.engine, "bad_threads", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kumo.dkim.set_signing_threads: needs at least 1 thread, got 0"),
        "{err}"
    );

    let err = run(&setup.engine, "unknown_function", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kumo.dkim.arc_signer is not supported by Tern yet"),
        "{err}"
    );
    // Nothing was signed along the way.
    assert_eq!(msg.data(), MESSAGE.as_bytes());
}

#[tokio::test]
async fn the_signer_cache_is_hit() {
    let setup = setup();
    let msg = message();
    let first = run(&setup.engine, "make_signer", &msg)
        .await
        .unwrap()
        .unwrap();
    // A second, separate Lua state of the same engine shares the cache.
    let second_state = setup.engine.new_state().await.unwrap();
    let second = tern_policy::engine::dispatch_in(
        &second_state,
        "make_signer",
        |lua| (msg.clone(),).into_lua_multi(lua),
        |_, values| match values.into_iter().next() {
            Some(Value::UserData(signer)) => Ok(signer.borrow::<LuaSigner>()?.0.clone()),
            _ => Err(mlua::Error::runtime("not a signer")),
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert!(Arc::ptr_eq(&first, &second), "same config, same signer");
    assert_eq!(setup.registrar.cache.len(), 1);
}

/// Dispatch `event`; its string result comes back.
async fn run_text(
    engine: &PolicyEngine,
    event: &str,
    msg: &Message,
) -> Result<String, PolicyError> {
    let msg = msg.clone();
    engine
        .dispatch(
            event,
            move |lua: &Lua| (msg,).into_lua_multi(lua),
            |_, values: MultiValue| match values.into_iter().next() {
                Some(Value::String(text)) => Ok(text.to_str()?.to_string()),
                other => Err(mlua::Error::runtime(format!("not a string: {other:?}"))),
            },
        )
        .await
        .map(Option::unwrap_or_default)
}

#[tokio::test]
async fn dkim_verify_from_a_policy_uses_the_named_resolver() {
    let setup = setup();
    let msg = message();
    // Unsigned: no results, so the policy's assertion trips.
    let err = run_text(&setup.engine, "verify", &msg).await.unwrap_err();
    assert!(
        err.to_string().contains("one signature, one result"),
        "{err}"
    );

    run(&setup.engine, "sign_rsa", &msg).await.unwrap();
    let verdict = run_text(&setup.engine, "verify", &msg).await.unwrap();
    assert_eq!(verdict, "pass nil");
    let data = String::from_utf8(msg.data().to_vec()).unwrap();
    assert!(
        data.starts_with("Authentication-Results: mx.example.net;\r\n\tdkim=pass\r\n\theader.a=rsa-sha256\r\n\theader.b="),
        "{data}"
    );
    assert!(data.contains("\theader.d=example.com\r\n\theader.i=@example.com\r\n\theader.s=rsa\r\nDKIM-Signature: "), "{data}");

    // The added header is not signed, so the signature still verifies;
    // the "alt" resolver has no key for it.
    let verdict = run_text(&setup.engine, "verify_alt", &msg).await.unwrap();
    assert!(
        verdict.starts_with("permerror no key for signature"),
        "{verdict}"
    );
    let err = run_text(&setup.engine, "verify_unknown_resolver", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("msg:dkim_verify: no resolver named 'nope'"),
        "{err}"
    );

    // A changed body is reported, not raised.
    let tampered = String::from_utf8(msg.data().to_vec())
        .unwrap()
        .replace("Numbers are up.", "Numbers are down.");
    msg.set_data(tampered.into_bytes().into());
    let verdict = run_text(&setup.engine, "verify_alt", &msg).await.unwrap();
    assert_eq!(verdict, "fail body hash did not verify");
}

fn count(msg: &Message, needle: &str) -> usize {
    String::from_utf8_lossy(&msg.data()).matches(needle).count()
}

#[tokio::test]
async fn arc_verify_and_seal_from_a_policy() {
    let setup = setup();
    let msg = message();
    // First hop: no chain yet, so cv=none.
    let verdict = run_text(&setup.engine, "arc_hop", &msg).await.unwrap();
    assert_eq!(verdict, "none nil nil");
    let data = String::from_utf8(msg.data().to_vec()).unwrap();
    assert!(
        data.starts_with("ARC-Seal: i=1; a=rsa-sha256; cv=none;"),
        "{data}"
    );
    assert!(
        data.contains("ARC-Authentication-Results: i=1; mx.example.net;\r\n\tarc=none\r\n"),
        "{data}"
    );
    // Second hop: the first set verifies, the new one says cv=pass.
    let verdict = run_text(&setup.engine, "arc_hop", &msg).await.unwrap();
    assert_eq!(verdict, "pass nil 0");
    assert!(
        msg.data()
            .starts_with(b"ARC-Seal: i=2; a=rsa-sha256; cv=pass;")
    );
    assert_eq!(
        run_text(&setup.engine, "arc_verify", &msg).await.unwrap(),
        "pass nil"
    );
    let dkimpy = dkimpy_arc_verify(&[msg.data().to_vec()]);
    assert_eq!(dkimpy[0].0.as_deref(), Some("pass"), "{}", dkimpy[0].1);

    // A resolver without the key: the chain fails there, so nothing is
    // added and the result says why.
    let before = count(&msg, "ARC-Seal:");
    assert_eq!(
        run_text(&setup.engine, "arc_seal_alt", &msg).await.unwrap(),
        "fail"
    );
    assert_eq!(count(&msg, "ARC-Seal:"), before);

    // A changed body breaks the chain: reported, and sealing adds nothing.
    let tampered = String::from_utf8(msg.data().to_vec())
        .unwrap()
        .replace("Numbers are up.", "Numbers are down.");
    msg.set_data(tampered.into_bytes().into());
    let verdict = run_text(&setup.engine, "arc_verify", &msg).await.unwrap();
    assert_eq!(
        verdict,
        "fail The ARC-Message-Signature for instance 2 failed to validate: body hash did not verify"
    );
    let verdict = run_text(&setup.engine, "arc_hop", &msg).await.unwrap();
    assert!(verdict.starts_with("fail "), "{verdict}");
    assert_eq!(count(&msg, "ARC-Seal:"), before);

    let err = run_text(&setup.engine, "arc_seal_bad_signer", &msg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("msg:arc_seal expects a signer"), "{err}");
}
