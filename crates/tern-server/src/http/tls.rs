//! HTTPS for the HTTP listener: the rustls acceptor (configured
//! certificate and key, or a self-signed certificate for the listener's
//! host name) and an axum [`Listener`] that hands axum connections whose
//! TLS handshake has already completed.
//!
//! Handshakes run in their own tasks so that one slow client cannot hold
//! up the accept loop; finished streams reach axum through a channel.

use super::HttpListenerParams;
use axum::serve::Listener;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Build the acceptor for `params` (its host name, or `default_hostname`,
/// names the self-signed certificate).
pub fn acceptor(
    params: &HttpListenerParams,
    default_hostname: &str,
) -> anyhow::Result<TlsAcceptor> {
    let (certs, key) = match (&params.tls_certificate, &params.tls_private_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = cert.load().map_err(anyhow::Error::msg)?;
            let key_pem = key.load().map_err(anyhow::Error::msg)?;
            let certs = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("tls_certificate: not a PEM certificate: {e}"))?;
            if certs.is_empty() {
                anyhow::bail!("tls_certificate: no certificate found in the PEM data");
            }
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| anyhow::anyhow!("tls_private_key: not a PEM private key: {e}"))?;
            (certs, key)
        }
        (None, None) => {
            let hostname = params.hostname.as_deref().unwrap_or(default_hostname);
            let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
                .map_err(|e| anyhow::anyhow!("cannot generate a self-signed certificate: {e}"))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            ));
            (vec![certified.cert.der().clone()], key)
        }
        _ => anyhow::bail!(
            "kumo.start_http_listener: set both tls_certificate and tls_private_key, or neither"
        ),
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| anyhow::anyhow!("invalid TLS certificate or key: {e}"))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An axum listener yielding TLS streams.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Start accepting on `tcp`; stops when `shutdown` turns true or the
    /// listener is dropped.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor, shutdown: watch::Receiver<bool>) -> Self {
        let local = tcp.local_addr().expect("bound listener has an address");
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, acceptor, tx, shutdown));
        Self { ready, local }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: watch::Receiver<bool>,
) {
    let stop = crate::state::wait_for_shutdown(shutdown);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            _ = tx.closed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!("http listener accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(err)) => tracing::debug!("TLS handshake with {peer} failed: {err}"),
                Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept loop ended (shutdown): axum stops serving through
            // its graceful-shutdown signal, so never return.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
