//! Accepting ESMTP connections, with the `max_connections` refusal, and
//! the listener's metrics (kept here so a session records them with one
//! atomic add, without looking anything up).

use super::params::ListenerConfig;
use super::session::Session;
use crate::state::ServerState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tern_metrics::{Counter, Gauge, GaugeHold, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub struct Listener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub active: AtomicUsize,
    pub tls: super::tls::TlsAcceptorCache,
    pub metrics: ListenerMetrics,
}

/// One series under `service="esmtp_listener"` (every listener together)
/// and one under `service="esmtp_listener:<ip:port>"` (this one), as
/// KumoMTA reports them.
pub struct Pair<T>(T, T);

impl Pair<Counter> {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.add(n);
        self.1.add(n);
    }
}

impl Pair<Gauge> {
    fn hold(&self) -> (GaugeHold, GaugeHold) {
        (self.0.hold(), self.1.hold())
    }
}

/// The metrics a listener and its sessions record.
pub struct ListenerMetrics {
    /// `connection_count`: sessions open now.
    pub connections: Pair<Gauge>,
    /// `total_connection_count`: sessions ever started.
    pub total_connections: Pair<Counter>,
    /// `total_connections_denied`: connections refused before the banner
    /// (`max_connections`, shutting down, load shedding, spool not ready,
    /// disk too full, spool unhealthy).
    pub denied: Pair<Counter>,
    /// `total_messages_received`: messages answered with a `250`.
    pub received: Pair<Counter>,
    /// `smtp_server_rejections`: Rejection records logged.
    pub rejections: Pair<Counter>,
}

impl ListenerMetrics {
    pub fn new(registry: &Registry, local: SocketAddr) -> Self {
        let this = format!("esmtp_listener:{local}");
        let counter = |name, help| {
            Pair(
                registry.counter(name, help, &[("service", "esmtp_listener")]),
                registry.counter(name, help, &[("service", &this)]),
            )
        };
        let gauge = |name, help| {
            Pair(
                registry.gauge(name, help, &[("service", "esmtp_listener")]),
                registry.gauge(name, help, &[("service", &this)]),
            )
        };
        Self {
            connections: gauge("connection_count", "number of connections open now"),
            total_connections: counter(
                "total_connection_count",
                "number of connections made since the server started",
            ),
            denied: counter(
                "total_connections_denied",
                "number of connections refused before the banner (limits, load shedding, spool state)",
            ),
            received: counter(
                "total_messages_received",
                "number of messages accepted since the server started",
            ),
            rejections: counter(
                "smtp_server_rejections",
                "number of Rejection records logged by the SMTP server",
            ),
        }
    }
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
        metrics: ListenerMetrics::new(&state.metrics, local_addr),
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
                let _open = listener.metrics.connections.hold();
                listener.metrics.total_connections.inc();
                if count > listener.config.base.max_connections {
                    listener.metrics.denied.inc();
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
