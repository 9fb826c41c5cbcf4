//! Accepting ESMTP connections, with the `max_connections` refusal.

use super::params::ListenerConfig;
use super::session::Session;
use crate::state::ServerState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub struct Listener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub active: AtomicUsize,
    pub tls: super::tls::TlsAcceptorCache,
}

/// Bind now; serve in the background until shutdown.
pub async fn start(config: ListenerConfig, state: Arc<ServerState>) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = config.base.listen.parse().map_err(|e| {
        anyhow::anyhow!(
            "kumo.start_esmtp_listener: invalid listen address '{}': {e}",
            config.base.listen
        )
    })?;
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the smtp listener on {addr}: {e}"))?;
    let local_addr = socket.local_addr()?;
    let tls = super::tls::TlsAcceptorCache::new(&config.base, &state.hostname)?;
    let listener = Arc::new(Listener {
        config,
        local_addr,
        active: AtomicUsize::new(0),
        tls,
    });
    let mut shutdown = state.shutdown_signal();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("smtp accept on {local_addr} failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let listener = listener.clone();
            let state = state.clone();
            let count = listener.active.fetch_add(1, Ordering::AcqRel) + 1;
            tokio::spawn(async move {
                if count > listener.config.base.max_connections {
                    let hostname = listener.config.base.hostname.as_deref();
                    refuse_too_many(stream, hostname.unwrap_or(&state.hostname)).await;
                } else {
                    Session::run(stream, peer, listener.clone(), state).await;
                }
                listener.active.fetch_sub(1, Ordering::AcqRel);
            });
        }
    });
    Ok(local_addr)
}

/// `421 4.3.2 <hostname> too many concurrent sessions`, with the
/// listener's own `hostname` (the connection is refused before any
/// `peer`/`via` block is looked at).
async fn refuse_too_many(mut stream: tokio::net::TcpStream, hostname: &str) {
    let reply = tern_smtp::Reply::too_many_sessions(hostname).to_bytes();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.write_all(&reply)).await;
}
