//! `kumo.http` for Tern policies: an HTTP client usable from Lua.
//!
//! Policies use it for webhooks (custom Lua delivery, §22 of the spec),
//! for calling out to an API from an event, or for fetching data at
//! startup. The Lua surface follows KumoMTA's documentation:
//!
//! * `kumo.http.build_client { PARAMS }` returns a [client](client) with
//!   `get`/`post`/`put` (plus `patch`, `delete` and `head`) and `close`;
//! * each of those returns a [request](request) whose methods (`header`,
//!   `headers`, `basic_auth`, `bearer_auth`, `body`, `form_url_encoded`,
//!   `form_multipart_data`, `timeout`) configure it and return the same
//!   request, so calls chain; `request:send()` is async (it yields the
//!   policy's coroutine, never a runtime thread) and returns a
//!   [response](response);
//! * `kumo.http.build_url(base, params)` appends query parameters.
//!
//! `kumo.http.connect_websocket` is not provided: like every unknown name
//! in the namespace it raises `kumo.http.connect_websocket is not supported
//! by Tern yet`.
//!
//! The transport is `reqwest` on `rustls` with the `ring` provider (the
//! one TLS stack of the workspace). Server certificates are checked
//! against the Mozilla roots from `webpki-roots` unless the client was
//! built with `accept_invalid_certs = true`. Nothing here is global: the
//! registrar owns the trust roots and hands them to every client.

mod client;
mod request;
mod response;
mod tls;
mod url_params;

use mlua::{Lua, Table, Value};
use std::sync::Arc;
use tern_policy::{LuaRegistrar, from_lua_params};

pub use client::ClientParams;
pub use tls::{TrustRoots, client_config};
pub use url_params::build_url;

/// Installs `kumo.http` in every Lua state of the policy engine.
///
/// `HttpRegistrar::default()` trusts the Mozilla roots; tests that run an
/// HTTPS server with their own certificate authority use
/// [`HttpRegistrar::with_trust_roots`].
#[derive(Clone, Debug, Default)]
pub struct HttpRegistrar {
    roots: TrustRoots,
}

impl HttpRegistrar {
    /// A registrar whose clients trust `roots` instead of the Mozilla set.
    pub fn with_trust_roots(roots: TrustRoots) -> Self {
        Self { roots }
    }
}

impl LuaRegistrar for HttpRegistrar {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        let http = tern_policy::kumo_module::namespace(lua, kumo, "http")?;

        let roots = self.roots.clone();
        http.raw_set(
            "build_client",
            lua.create_function(move |lua, params: Option<Value>| {
                let params: ClientParams = match params {
                    None | Some(Value::Nil) => ClientParams::default(),
                    Some(value) => from_lua_params(lua, value, "kumo.http.build_client")?,
                };
                let client = client::HttpClient::build(&params, &roots).map_err(|err| {
                    mlua::Error::runtime(format!("kumo.http.build_client: {err}"))
                })?;
                Ok(client)
            })?,
        )?;

        http.raw_set(
            "build_url",
            lua.create_function(|_, (base, params): (String, Option<Table>)| {
                let mut pairs = Vec::new();
                if let Some(params) = params {
                    for entry in params.pairs::<Value, Value>() {
                        let (key, value) = entry?;
                        pairs.push((
                            scalar_text(&key, "kumo.http.build_url: parameter name")?,
                            scalar_text(&value, "kumo.http.build_url: parameter value")?,
                        ));
                    }
                }
                build_url(&base, pairs)
                    .map_err(|err| mlua::Error::runtime(format!("kumo.http.build_url: {err}")))
            })?,
        )?;
        Ok(())
    }
}

/// The text of a string or number, as Lua's `tostring` would give it;
/// anything else is an error naming `what`.
pub(crate) fn scalar_text(value: &Value, what: &str) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(mlua::Error::runtime(format!(
            "{what} must be a string or a number, not a {}",
            other.type_name()
        ))),
    }
}

/// Shared by the bindings: a Lua runtime error with the given text.
pub(crate) fn lua_error(message: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(message.into())
}

/// Describe a transport error with its whole cause chain, so a policy sees
/// "connection refused" rather than reqwest's generic "error sending
/// request".
pub(crate) fn describe_error(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "the request timed out".to_string()
    } else if err.is_connect() {
        "could not connect".to_string()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Hyper and reqwest wrap the same io error several times; only
        // add a layer that says something new.
        if !cause_text.is_empty() && !text.contains(&cause_text) && cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
            last = cause_text;
        }
        source = cause.source();
    }
    text
}

pub(crate) type Shared<T> = Arc<parking_lot::Mutex<T>>;
