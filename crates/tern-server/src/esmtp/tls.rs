//! The STARTTLS acceptor: the configured certificate and key, or a
//! self-signed certificate generated at startup for the listener's host
//! name.

use super::params::EsmtpParams;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

pub struct TlsAcceptorCache {
    acceptor: TlsAcceptor,
}

impl TlsAcceptorCache {
    pub fn new(params: &EsmtpParams, default_hostname: &str) -> anyhow::Result<Self> {
        let hostname = params
            .hostname
            .clone()
            .unwrap_or_else(|| default_hostname.to_string());
        let (certs, key) = match (&params.tls_certificate, &params.tls_private_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = cert.load().map_err(anyhow::Error::msg)?;
                let key_pem = key.load().map_err(anyhow::Error::msg)?;
                let certs = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("tls_certificate: not a PEM certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| anyhow::anyhow!("tls_private_key: not a PEM private key: {e}"))?;
                (certs, key)
            }
            (None, None) => self_signed(&hostname)?,
            _ => anyhow::bail!(
                "kumo.start_esmtp_listener: set both tls_certificate and tls_private_key, or neither"
            ),
        };
        if params.tls_required_client_ca.is_some() {
            anyhow::bail!(
                "kumo.start_esmtp_listener: tls_required_client_ca is not supported by Tern yet"
            );
        }
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("invalid TLS certificate or key: {e}"))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
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
