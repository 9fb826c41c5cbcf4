//! TLS for the SMTP client: the rustls configurations STARTTLS uses and the
//! [`TlsInfo`] recorded after a handshake.
//!
//! Two shapes are needed (spec §11.2 `enable_tls`): a verifying client
//! (`Opportunistic`, `Required`) that checks the peer certificate against
//! the webpki root set and the MX host name, and a non-verifying one
//! (`OpportunisticInsecure`, `RequiredInsecure`) that accepts any
//! certificate but still checks the handshake signatures. Both are built
//! once and shared; a path with `rustls_cipher_suites` or a client
//! certificate gets its own configuration, built when it connects.

use crate::plan::PlannedHost;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, OnceLock};
use tern_queue::config::EgressPathConfig;

/// What a log record says about the TLS session of a delivery (feeds
/// tern-log's `with_tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// rustls cipher suite name, e.g. `TLS13_AES_256_GCM_SHA384`: KumoMTA
    /// logs rustls names for rustls sessions (spec §12.2), and reception
    /// logs the same form.
    pub cipher: String,
    /// `TLSv1_3` or `TLSv1_2` (rustls names).
    pub protocol_version: String,
    /// Subject of the peer certificate as `KEY=value` parts
    /// (`["CN=mx.example.com"]`), when it could be read.
    pub peer_subject_name: Option<Vec<String>>,
}

impl TlsInfo {
    pub(crate) fn from_connection(conn: &rustls::ClientConnection) -> Self {
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|suite| format!("{:?}", suite.suite()))
            .unwrap_or_default();
        let protocol_version = conn
            .protocol_version()
            .map(|version| format!("{version:?}"))
            .unwrap_or_default();
        let peer_subject_name = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| subject_parts(cert.as_ref()));
        Self {
            cipher,
            protocol_version,
            peer_subject_name,
        }
    }
}

/// The certificate subject as `KEY=value` strings, in certificate order
/// (the `tls_peer_subject_name` of log records; reception uses it too).
pub fn subject_parts(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for attribute in cert.subject().iter_attributes() {
        let key = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
            .map(str::to_string)
            .unwrap_or_else(|_| attribute.attr_type().to_id_string());
        let value = attribute.as_str().unwrap_or("?");
        parts.push(format!("{key}={value}"));
    }
    Some(parts)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn webpki_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(roots)
        })
        .clone()
}

/// Accepts any certificate, but still checks that the peer holds the key
/// (handshake signatures), as `*Insecure` modes ask.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for a path. `verify` picks the verifying or
/// accept-anything flavour.
pub(crate) fn client_config(
    path: &EgressPathConfig,
    verify: bool,
) -> Result<Arc<ClientConfig>, String> {
    let custom = !path.rustls_cipher_suites.is_empty() || path.tls_certificate.is_some();
    if !custom {
        static VERIFIED: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        let cell = if verify { &VERIFIED } else { &INSECURE };
        return cell.get_or_init(|| build_config(path, verify)).clone();
    }
    build_config(path, verify)
}

fn build_config(path: &EgressPathConfig, verify: bool) -> Result<Arc<ClientConfig>, String> {
    let mut provider = (*provider()).clone();
    if !path.rustls_cipher_suites.is_empty() {
        provider.cipher_suites.retain(|suite| {
            let name = format!("{:?}", suite.suite());
            path.rustls_cipher_suites.contains(&name)
        });
        if provider.cipher_suites.is_empty() {
            return Err(format!(
                "rustls_cipher_suites {:?} leaves no usable cipher suite",
                path.rustls_cipher_suites
            ));
        }
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS protocol versions: {err}"))?;
    let builder = if verify {
        builder.with_root_certificates(webpki_roots())
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    let config = match (&path.tls_certificate, &path.tls_private_key) {
        (Some(cert), Some(key)) => {
            let (certs, key) = load_client_identity(cert, key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| format!("tls_certificate/tls_private_key: {err}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn load_client_identity(
    cert: &tern_types::KeySource,
    key: &tern_types::KeySource,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let cert_pem = cert
        .load()
        .map_err(|err| format!("tls_certificate: {err}"))?;
    let key_pem = key
        .load()
        .map_err(|err| format!("tls_private_key: {err}"))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("tls_certificate: invalid PEM: {err}"))?;
    if certs.is_empty() {
        return Err("tls_certificate holds no PEM certificate".to_string());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|err| format!("tls_private_key: invalid PEM: {err}"))?
        .ok_or_else(|| "tls_private_key holds no PEM private key".to_string())?;
    Ok((certs, key))
}

/// The name to send as SNI and verify the certificate against: the MX host
/// name without its trailing dot, or the IP address when the host is one.
pub(crate) fn server_name(host: &PlannedHost) -> ServerName<'static> {
    let name = host.name.trim_end_matches('.');
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ServerName::IpAddress(ip.into());
    }
    match ServerName::try_from(name.to_string()) {
        Ok(name) => name,
        Err(_) => ServerName::IpAddress(host.addr.ip().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_uses_the_host_name_without_the_dot() {
        let host = |name: &str| PlannedHost {
            name: name.to_string(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        assert_eq!(
            server_name(&host("mx.example.com.")),
            ServerName::try_from("mx.example.com").unwrap()
        );
        assert!(matches!(
            server_name(&host("10.1.2.3")),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name(&host("not a name!")),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn unknown_cipher_filter_is_an_error() {
        let path = EgressPathConfig {
            rustls_cipher_suites: vec!["NOPE".to_string()],
            ..EgressPathConfig::default()
        };
        let err = client_config(&path, true).unwrap_err();
        assert!(err.contains("no usable cipher suite"), "{err}");
    }

    #[test]
    fn subject_of_a_generated_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
        let parts = subject_parts(cert.cert.der()).unwrap();
        assert_eq!(parts, vec!["CN=rcgen self signed cert".to_string()]);
    }
}
