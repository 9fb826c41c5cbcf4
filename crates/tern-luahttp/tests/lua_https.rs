//! `kumo.http` over TLS: a minimal HTTPS server on 127.0.0.1 with a
//! self-signed certificate, reached with verification against a trust
//! root, refused with the default (Mozilla) roots, and reached again with
//! `accept_invalid_certs = true`.

use mlua::{Lua, MultiValue};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use std::sync::Arc;
use tern_luahttp::{HttpRegistrar, TrustRoots};
use tern_policy::engine::dispatch_in;
use tern_policy::{EngineOptions, PolicyEngine, PolicyError, lua_to_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serve `HTTP/1.1 200` with body `secure` to every TLS client; returns the
/// base URL and the certificate.
async fn spawn_https() -> (String, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}"), cert)
}

async fn check(registrar: HttpRegistrar, base: &str, body: &str) -> Result<Value, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.lua");
    std::fs::write(
        &path,
        format!("local kumo = require 'kumo'\nlocal BASE = '{base}'\n{body}"),
    )
    .unwrap();
    let mut options = EngineOptions::new(&path);
    options.package_dirs.clear();
    options.registrars.push(Arc::new(registrar));
    let lua = PolicyEngine::new(options).new_state().await?;
    let no_args = |_: &Lua| Ok(MultiValue::new());
    let value = dispatch_in(&lua, "check", no_args, |lua, values| {
        lua_to_json(lua, values.into_iter().next().unwrap_or(mlua::Value::Nil))
    })
    .await?;
    Ok(value.unwrap_or(Value::Null))
}

const FETCH: &str = r#"
kumo.on('check', function()
  return kumo.http.build_client({}):get(BASE .. '/'):send():text()
end)
"#;

const FETCH_INSECURE: &str = r#"
kumo.on('check', function()
  return kumo.http.build_client({ accept_invalid_certs = true }):get(BASE .. '/'):send():text()
end)
"#;

#[tokio::test]
async fn verified_against_the_configured_root() {
    let (base, cert) = spawn_https().await;
    let roots = TrustRoots::from_der([cert]).unwrap();
    let text = check(HttpRegistrar::with_trust_roots(roots), &base, FETCH)
        .await
        .unwrap();
    assert_eq!(text, "secure");
}

#[tokio::test]
async fn an_unknown_issuer_is_refused_by_default() {
    let (base, _) = spawn_https().await;
    let err = check(HttpRegistrar::default(), &base, FETCH)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kumo.http request:send"), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn accept_invalid_certs_skips_verification() {
    let (base, _) = spawn_https().await;
    let text = check(HttpRegistrar::default(), &base, FETCH_INSECURE)
        .await
        .unwrap();
    assert_eq!(text, "secure");
}
