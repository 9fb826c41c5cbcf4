//! The HTTP listener (`kumo.start_http_listener`, §4.1).
//!
//! This module owns the listener parameters and the axum router. The
//! routes are added by the components that own them; the liveness check
//! lives here because it only reads the server state.

use crate::state::ServerState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tern_types::{CidrSet, KeySource};

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
        if self.use_tls {
            return Err(
                "kumo.start_http_listener: use_tls = true is not supported by Tern yet".into(),
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

async fn check_liveness(State(state): State<Arc<ServerState>>) -> (StatusCode, &'static str) {
    match state.ingress_refusal() {
        None => (StatusCode::OK, "OK"),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/api/check-liveness/v1", get(check_liveness))
        .with_state(state)
}

/// Bind the listener now (so the port is known and errors surface at
/// startup) and serve it in the background until shutdown.
pub async fn start(
    params: &HttpListenerParams,
    state: Arc<ServerState>,
) -> anyhow::Result<SocketAddr> {
    let addr = params.validate().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the http listener on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(state.clone());
    let shutdown = state.shutdown_signal();
    tokio::spawn(async move {
        let result = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(crate::state::wait_for_shutdown(shutdown))
        .await;
        if let Err(err) = result {
            tracing::error!("http listener on {local} failed: {err}");
        }
    });
    Ok(local)
}

/// The OpenAPI description of the HTTP API (`tern serve --dump-openapi-spec`).
pub fn openapi_spec() -> String {
    // Filled in with the injection API; until then only liveness is served.
    serde_json::json!({
        "openapi": "3.0.3",
        "info": { "title": "Tern HTTP API", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/api/check-liveness/v1": {
                "get": { "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } }
            }
        }
    })
    .to_string()
}
