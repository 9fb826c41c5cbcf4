//! The STARTTLS acceptors: the configured certificate and key, or a
//! self-signed certificate generated for the listener's host name.
//!
//! Certificates may differ per connection (`peer`/`via` blocks and dynamic
//! parameters can set `tls_certificate`, `tls_private_key`, `hostname`), so
//! acceptors are cached per (host name, certificate, key). Like KumoMTA, a
//! cached acceptor is rebuilt after five minutes, so a rotated certificate
//! is picked up without a restart; if the rebuild fails, the previous
//! acceptor keeps serving and the error is logged.

use super::params::EsmtpParams;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_types::KeySource;
use tokio_rustls::TlsAcceptor;

/// How long an acceptor is used before its certificate is read again.
const REFRESH_AFTER: Duration = Duration::from_secs(300);

/// What an acceptor is built from.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AcceptorKey {
    hostname: String,
    certificate: Option<KeySource>,
    private_key: Option<KeySource>,
    /// `tls_required_client_ca`: client certificates are requested (not
    /// required) and must verify against these CAs when presented.
    client_ca: Option<KeySource>,
}

pub struct TlsAcceptorCache {
    default_hostname: String,
    acceptors: Mutex<HashMap<AcceptorKey, (Instant, TlsAcceptor)>>,
}

impl TlsAcceptorCache {
    /// Check the listener's top-level TLS settings now (so a bad
    /// certificate fails startup) and keep the acceptor.
    pub fn new(params: &EsmtpParams, default_hostname: &str) -> anyhow::Result<Self> {
        let cache = Self {
            default_hostname: default_hostname.to_string(),
            acceptors: Mutex::new(HashMap::new()),
        };
        cache.acceptor(params)?;
        Ok(cache)
    }

    /// The acceptor for a connection's effective parameters.
    pub fn acceptor(&self, params: &EsmtpParams) -> anyhow::Result<TlsAcceptor> {
        let key = AcceptorKey {
            hostname: params
                .hostname
                .clone()
                .unwrap_or_else(|| self.default_hostname.clone()),
            certificate: params.tls_certificate.clone(),
            private_key: params.tls_private_key.clone(),
            client_ca: params.tls_required_client_ca.clone(),
        };
        let previous = match self.acceptors.lock().get(&key) {
            Some((built, acceptor)) if built.elapsed() < REFRESH_AFTER => {
                return Ok(acceptor.clone());
            }
            Some((_, acceptor)) => Some(acceptor.clone()),
            None => None,
        };
        // Built outside the lock: reading key files and generating a
        // self-signed certificate take a while.
        let acceptor = match build(&key) {
            Ok(acceptor) => acceptor,
            Err(err) => match previous {
                Some(acceptor) => {
                    tracing::error!("reloading the listener TLS certificate failed: {err}");
                    // Retry in another five minutes, not on every STARTTLS.
                    self.acceptors
                        .lock()
                        .insert(key, (Instant::now(), acceptor.clone()));
                    return Ok(acceptor);
                }
                None => return Err(err),
            },
        };
        self.acceptors
            .lock()
            .insert(key, (Instant::now(), acceptor.clone()));
        Ok(acceptor)
    }
}

fn build(key: &AcceptorKey) -> anyhow::Result<TlsAcceptor> {
    let (certs, private_key) = match (&key.certificate, &key.private_key) {
        (Some(cert), Some(pkey)) => {
            let cert_pem = cert.load().map_err(anyhow::Error::msg)?;
            let key_pem = pkey.load().map_err(anyhow::Error::msg)?;
            let certs = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("tls_certificate: not a PEM certificate: {e}"))?;
            if certs.is_empty() {
                anyhow::bail!("tls_certificate: no PEM certificate found");
            }
            let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| anyhow::anyhow!("tls_private_key: not a PEM private key: {e}"))?;
            (certs, private_key)
        }
        (None, None) => self_signed(&key.hostname)?,
        _ => anyhow::bail!(
            "kumo.start_esmtp_listener: set both tls_certificate and tls_private_key, or neither"
        ),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &key.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = ca
                .load()
                .map_err(|e| anyhow::anyhow!("tls_required_client_ca: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    anyhow::anyhow!("tls_required_client_ca: not a PEM certificate: {e}")
                })?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("tls_required_client_ca: {e}"))?;
            }
            if roots.is_empty() {
                anyhow::bail!("tls_required_client_ca: no PEM certificate found");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| anyhow::anyhow!("tls_required_client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, private_key)
        .map_err(|e| anyhow::anyhow!("invalid TLS certificate or key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn self_signed(
    hostname: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| anyhow::anyhow!("cannot generate a self-signed certificate: {e}"))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((vec![cert], key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: serde_json::Value) -> EsmtpParams {
        serde_json::from_value(value).unwrap()
    }

    /// A scratch folder removed when dropped (no tempfile in this crate).
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!("tern-tls-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }

    #[test]
    fn acceptors_are_cached_per_certificate() {
        let dir = Scratch::new();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let base = params(json!({}));
        let cache = TlsAcceptorCache::new(&base, "mx.test").unwrap();
        let with_files = params(json!({ "tls_certificate": cert, "tls_private_key": key }));
        cache.acceptor(&with_files).unwrap();
        cache.acceptor(&with_files).unwrap();
        cache.acceptor(&base).unwrap();
        assert_eq!(cache.acceptors.lock().len(), 2);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let dir = Scratch::new();
        let (cert, _) = write_pair(dir.path(), "a.test");
        let err = TlsAcceptorCache::new(&params(json!({ "tls_certificate": cert })), "mx.test")
            .err()
            .unwrap();
        assert!(err.to_string().contains("set both"), "{err}");
        let err = TlsAcceptorCache::new(
            &params(json!({ "tls_required_client_ca": "/nonexistent" })),
            "mx.test",
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().starts_with("tls_required_client_ca:"),
            "{err}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let junk = junk.to_string_lossy().into_owned();
        let err = TlsAcceptorCache::new(
            &params(json!({ "tls_certificate": junk, "tls_private_key": junk })),
            "mx.test",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("tls_"), "{err}");
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_acceptor() {
        let dir = Scratch::new();
        let (cert, key) = write_pair(dir.path(), "a.test");
        let with_files = params(json!({ "tls_certificate": cert, "tls_private_key": key }));
        let cache = TlsAcceptorCache::new(&with_files, "mx.test").unwrap();
        // Age the entry past the refresh interval, then break the files.
        for (built, _) in cache.acceptors.lock().values_mut() {
            *built = Instant::now() - REFRESH_AFTER - Duration::from_secs(1);
        }
        std::fs::write(&cert, "garbage").unwrap();
        assert!(cache.acceptor(&with_files).is_ok());
        let fresh = TlsAcceptorCache::new(&with_files, "mx.test");
        assert!(fresh.is_err(), "the broken file is really broken");
    }
}
