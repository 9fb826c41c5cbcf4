//! The HTTP listener (`kumo.start_http_listener`, §4.1) and its routes.
//!
//! Each listener binds at startup (plain or HTTPS, see [`tls`]), and every
//! request passes through [`auth`] (trusted hosts, `Authorization`
//! validated by the policy, the default ACL) before reaching a route:
//! `POST /api/inject/v1` ([`inject`]), `GET /api/check-liveness/v1`, and
//! `GET /api-docs/openapi.json` ([`openapi`]), `GET /metrics` and
//! `GET /metrics.json` (the server's [`tern_metrics::Registry`]),
//! `GET /api/admin/memory/stats`, and the bounce and suspend rules of
//! [`admin`]. Request bodies are read
//! with the listener's `request_body_limit` and may be gzip/deflate
//! compressed ([`body`]).

pub mod admin;
pub mod auth;
pub mod body;
pub mod inject;
pub mod openapi;
pub mod tls;

use crate::state::ServerState;
use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tern_types::{CidrSet, KeySource};

pub use openapi::openapi_spec;

fn default_listen() -> String {
    "127.0.0.1:8000".to_string()
}

fn default_trusted_hosts() -> CidrSet {
    CidrSet::new(["127.0.0.1", "::1"]).expect("valid default trusted hosts")
}

fn default_body_limit() -> usize {
    2 * 1024 * 1024
}

/// The parameter table of `kumo.start_http_listener`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerParams {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub use_tls: bool,
    #[serde(default)]
    pub tls_certificate: Option<KeySource>,
    #[serde(default)]
    pub tls_private_key: Option<KeySource>,
    #[serde(default = "default_trusted_hosts")]
    pub trusted_hosts: CidrSet,
    #[serde(default = "default_body_limit")]
    pub request_body_limit: usize,
}

impl HttpListenerParams {
    pub fn validate(&self) -> Result<SocketAddr, String> {
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            return Err(
                "kumo.start_http_listener: set both tls_certificate and tls_private_key, or neither"
                    .into(),
            );
        }
        self.listen.parse().map_err(|e| {
            format!(
                "kumo.start_http_listener: invalid listen address '{}': {e}",
                self.listen
            )
        })
    }
}

/// One running listener: its parameters and what its routes share.
pub struct HttpListener {
    pub state: Arc<ServerState>,
    pub params: HttpListenerParams,
    /// The bound address (`received_via`, ACL resource names).
    pub local: SocketAddr,
    /// `hostname`, or the machine's.
    pub hostname: String,
    auth_cache: auth::AuthCache,
}

/// The peer of a connection, for plain and TLS listeners alike.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// `GET /api/check-liveness/v1`: 200 when ready to accept messages, 503
/// with the reason otherwise.
/// Both spools' free space and health count, as for SMTP.
async fn check_liveness(State(listener): State<Arc<HttpListener>>) -> Response {
    match listener.state.refusal() {
        Some(refusal) => (StatusCode::SERVICE_UNAVAILABLE, refusal.liveness_text()).into_response(),
        None => (StatusCode::OK, "OK").into_response(),
    }
}

/// `GET /api/admin/memory/stats`: usage, limits and the load-shedding
/// state, as indented JSON for people.
async fn memory_stats(State(listener): State<Arc<HttpListener>>) -> Response {
    let stats = listener.state.memory.stats();
    match serde_json::to_string_pretty(&stats) {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

/// Retire every pooled Lua state and re-evaluate epoch-refreshed
/// configuration, as a change to a monitored file would.
async fn bump_config_epoch(State(listener): State<Arc<HttpListener>>) -> Response {
    let epoch = listener.state.engine.epoch().bump();
    tracing::info!("configuration epoch bumped to {epoch} by an admin request");
    (StatusCode::OK, "").into_response()
}

async fn machine_info(State(listener): State<Arc<HttpListener>>) -> Response {
    let state = &listener.state;
    let info = crate::machine::machine_info(&state.hostname, &state.node_id, state.started);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        info.to_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct MetricsQuery {
    /// Put before every metric name (KumoMTA's `?prefix=kumomta_`), so
    /// the series are easy to tell apart in a shared Prometheus.
    #[serde(default)]
    prefix: String,
}

async fn metrics_text(
    State(listener): State<Arc<HttpListener>>,
    axum::extract::Query(query): axum::extract::Query<MetricsQuery>,
) -> Response {
    if !tern_metrics::valid_prefix(&query.prefix) {
        return inject::json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "prefix {:?} is not a valid start of a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                query.prefix
            ),
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        listener.state.metrics.render_text(&query.prefix),
    )
        .into_response()
}

async fn metrics_json(State(listener): State<Arc<HttpListener>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        listener.state.metrics.render_json().to_string(),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_spec(),
    )
        .into_response()
}

/// Authenticate and authorize every request; the handler finds the
/// [`auth::AuthInfo`] in the request extensions.
async fn authenticate(
    State(listener): State<Arc<HttpListener>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer_ip = peer.0.ip().to_canonical();
    let trusted = listener.params.trusted_hosts.contains(peer_ip);
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let info = match auth::authenticate(
        &listener.state.engine,
        &listener.auth_cache,
        trusted,
        peer_ip,
        authorization.as_deref(),
    )
    .await
    {
        Ok(info) => info,
        Err((status, text)) => return refusal(status, text),
    };
    if let Err((status, text)) = auth::authorize(
        &info,
        &listener.local.to_string(),
        request.method().as_str(),
        request.uri().path(),
    ) {
        return refusal(status, text);
    }
    request.extensions_mut().insert(info);
    next.run(request).await
}

fn refusal(status: u16, text: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, text).into_response()
}

/// The routes of one listener.
pub fn router(listener: Arc<HttpListener>) -> Router {
    Router::new()
        .route("/api/check-liveness/v1", get(check_liveness))
        .route("/api/inject/v1", post(inject::inject))
        .route("/api-docs/openapi.json", get(openapi_json))
        .route("/api/admin/memory/stats", get(memory_stats))
        .route(
            "/api/admin/bounce/v1",
            post(admin::bounce_create)
                .get(admin::bounce_list)
                .delete(admin::bounce_cancel),
        )
        .route(
            "/api/admin/suspend/v1",
            post(admin::suspend_create)
                .get(admin::suspend_list)
                .delete(admin::suspend_cancel),
        )
        .route(
            "/api/admin/suspend-ready-q/v1",
            post(admin::suspend_ready_create)
                .get(admin::suspend_ready_list)
                .delete(admin::suspend_ready_cancel),
        )
        .route("/api/admin/rebind/v1", post(admin::rebind))
        .route("/api/admin/inspect-message/v1", get(admin::inspect_message))
        .route("/api/admin/inspect-sched-q/v1", get(admin::inspect_sched_q))
        .route("/api/admin/bump-config-epoch", post(bump_config_epoch))
        .route(
            "/api/admin/set_diagnostic_log_filter/v1",
            post(admin::set_diagnostic_log_filter),
        )
        .route("/api/machine-info", get(machine_info))
        .route("/metrics", get(metrics_text))
        .route("/metrics.json", get(metrics_json))
        .layer(middleware::from_fn_with_state(
            listener.clone(),
            authenticate,
        ))
        .with_state(listener)
}

/// Bind the listener now (so the port is known and errors surface at
/// startup) and serve it in the background until shutdown.
pub async fn start(
    params: &HttpListenerParams,
    state: Arc<ServerState>,
) -> anyhow::Result<SocketAddr> {
    let addr = params.validate().map_err(anyhow::Error::msg)?;
    let acceptor = if params.use_tls {
        Some(tls::acceptor(params, &state.hostname)?)
    } else {
        None
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the http listener on {addr}: {e}"))?;
    let local = tcp.local_addr()?;
    let listener = Arc::new(HttpListener {
        hostname: params
            .hostname
            .clone()
            .unwrap_or_else(|| state.hostname.clone()),
        params: params.clone(),
        local,
        state: state.clone(),
        auth_cache: Default::default(),
    });
    let app = router(listener).into_make_service_with_connect_info::<PeerAddr>();
    let shutdown = state.shutdown_signal();
    match acceptor {
        None => {
            tokio::spawn(async move {
                let result = axum::serve(tcp, app)
                    .with_graceful_shutdown(crate::state::wait_for_shutdown(shutdown))
                    .await;
                if let Err(err) = result {
                    tracing::error!("http listener on {local} failed: {err}");
                }
            });
        }
        Some(acceptor) => {
            let tls = tls::TlsListener::new(tcp, acceptor, shutdown.clone());
            tokio::spawn(async move {
                let result = axum::serve(tls, app)
                    .with_graceful_shutdown(crate::state::wait_for_shutdown(shutdown))
                    .await;
                if let Err(err) = result {
                    tracing::error!("https listener on {local} failed: {err}");
                }
            });
        }
    }
    Ok(local)
}
