//! The client object returned by `kumo.http.build_client`.
//!
//! A client owns a connection pool, so a policy that keeps one (for
//! example in a custom Lua delivery constructor) reuses connections
//! between requests. `client:close()` drops the pool; later requests
//! through that client fail with a clear error.

use crate::request::HttpRequest;
use crate::tls::{TrustRoots, client_config};
use crate::{Shared, lua_error};
use mlua::{UserData, UserDataMethods};
use reqwest::{Method, Url};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The parameter table of `kumo.http.build_client`, with the documented
/// defaults. `connect_timeout` is a Tern addition (reqwest's connect
/// phase limit); the others are KumoMTA's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientParams {
    /// Sent as `User-Agent` on every request.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Log connection details at trace level (target `reqwest`).
    #[serde(default)]
    pub connection_verbose: bool,
    /// How long an idle pooled connection is kept (default 90 s).
    #[serde(
        default = "default_pool_idle_timeout",
        deserialize_with = "tern_types::duration::req::deserialize"
    )]
    pub pool_idle_timeout: Duration,
    /// Limit for a whole request, connection to end of body (default
    /// 60 s); `request:timeout()` overrides it per request.
    #[serde(
        default = "default_timeout",
        deserialize_with = "tern_types::duration::req::deserialize"
    )]
    pub timeout: Duration,
    /// Limit for establishing the connection (TCP and TLS); none by default.
    #[serde(default, deserialize_with = "tern_types::duration::opt::deserialize")]
    pub connect_timeout: Option<Duration>,
    /// Skip server certificate verification. For tests only.
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for ClientParams {
    fn default() -> Self {
        Self {
            user_agent: None,
            connection_verbose: false,
            pool_idle_timeout: default_pool_idle_timeout(),
            timeout: default_timeout(),
            connect_timeout: None,
            accept_invalid_certs: false,
        }
    }
}

/// `kumo.http` client userdata. `None` once closed.
pub(crate) struct HttpClient {
    client: Shared<Option<reqwest::Client>>,
}

impl HttpClient {
    pub(crate) fn build(params: &ClientParams, roots: &TrustRoots) -> Result<Self, String> {
        let tls = client_config(roots, params.accept_invalid_certs)?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connection_verbose(params.connection_verbose)
            .pool_idle_timeout(params.pool_idle_timeout)
            .timeout(params.timeout);
        if let Some(agent) = &params.user_agent {
            builder = builder.user_agent(agent.as_str());
        }
        if let Some(limit) = params.connect_timeout {
            builder = builder.connect_timeout(limit);
        }
        let client = builder.build().map_err(|err| crate::describe_error(&err))?;
        Ok(Self {
            client: Arc::new(parking_lot::Mutex::new(Some(client))),
        })
    }

    fn request(&self, method: Method, url: &str) -> mlua::Result<HttpRequest> {
        let name = method.as_str().to_ascii_lowercase();
        let client =
            self.client.lock().clone().ok_or_else(|| {
                lua_error(format!("kumo.http client:{name}: the client was closed"))
            })?;
        let parsed = Url::parse(url).map_err(|err| {
            lua_error(format!(
                "kumo.http client:{name}: invalid URL '{url}': {err}"
            ))
        })?;
        Ok(HttpRequest::new(
            client.request(method.clone(), parsed.clone()),
            method,
            parsed,
        ))
    }
}

impl UserData for HttpClient {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let verbs = [
            ("get", Method::GET),
            ("post", Method::POST),
            ("put", Method::PUT),
            ("patch", Method::PATCH),
            ("delete", Method::DELETE),
            ("head", Method::HEAD),
        ];
        for (name, method) in verbs {
            methods.add_method(name, move |_, this, url: String| {
                this.request(method.clone(), &url)
            });
        }
        methods.add_method("close", |_, this, ()| {
            this.client.lock().take();
            Ok(())
        });
    }
}
