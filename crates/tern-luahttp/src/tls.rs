//! The rustls client configurations behind `kumo.http` clients.
//!
//! reqwest is built without a TLS provider of its own, so every client
//! gets a configuration made here with the `ring` provider: either one
//! that verifies the server against [`TrustRoots`], or (for
//! `accept_invalid_certs = true`) one that accepts any certificate but
//! still checks the handshake signatures, so the connection is at least
//! encrypted to whoever holds the presented key.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The certificate authorities `kumo.http` clients trust. The default is
/// the Mozilla set from `webpki-roots`.
#[derive(Clone)]
pub struct TrustRoots(Arc<RootCertStore>);

impl Default for TrustRoots {
    fn default() -> Self {
        Self(Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }))
    }
}

impl std::fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustRoots({} authorities)", self.0.len())
    }
}

impl TrustRoots {
    /// Trust exactly these DER certificates (for tests with a private CA).
    pub fn from_der(
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let mut store = RootCertStore::empty();
        for certificate in certificates {
            store
                .add(certificate)
                .map_err(|err| format!("unusable trust root: {err}"))?;
        }
        Ok(Self(Arc::new(store)))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for one client.
pub fn client_config(
    roots: &TrustRoots,
    accept_invalid_certs: bool,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS set-up failed: {err}"))?;
    let mut config = if accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots.0.clone())
            .with_no_client_auth()
    };
    // Only HTTP/1.1 is built into the client.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `accept_invalid_certs = true`: any certificate chain and name is
/// accepted; signatures over the handshake are still verified.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
