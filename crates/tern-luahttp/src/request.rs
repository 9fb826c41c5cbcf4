//! The request object returned by `client:get(url)` and friends.
//!
//! Every configuring method checks its input at once (a bad header name is
//! reported by the `header` call, not later by `send`) and returns the
//! request itself, so policies can chain calls. `send()` is async and may
//! be called once.

use crate::response::HttpResponse;
use crate::{describe_error, lua_error, scalar_text};
use mlua::{AnyUserData, Lua, Table, UserData, UserDataMethods, UserDataRef, Value};
use parking_lot::Mutex;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder, Url};
use tern_policy::from_lua_params;
use tern_types::DurationSpec;

/// `kumo.http` request userdata. The builder is `None` once sent.
pub(crate) struct HttpRequest {
    method: Method,
    url: Url,
    builder: Mutex<Option<RequestBuilder>>,
}

impl HttpRequest {
    pub(crate) fn new(builder: RequestBuilder, method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            builder: Mutex::new(Some(builder)),
        }
    }

    /// Run `change` on the pending builder. Inputs are checked before
    /// this is called, so the change itself cannot fail.
    fn apply(
        &self,
        function: &str,
        change: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> mlua::Result<()> {
        let mut slot = self.builder.lock();
        let builder = slot.take().ok_or_else(|| {
            lua_error(format!(
                "kumo.http request:{function}: the request was already sent"
            ))
        })?;
        *slot = Some(change(builder));
        Ok(())
    }

    fn context(&self, function: &str) -> String {
        format!(
            "kumo.http request:{function} ({} {})",
            self.method, self.url
        )
    }

    async fn send(&self) -> mlua::Result<HttpResponse> {
        let builder = self.builder.lock().take().ok_or_else(|| {
            lua_error(format!(
                "{}: the request was already sent",
                self.context("send")
            ))
        })?;
        let response = builder.send().await.map_err(|err| {
            lua_error(format!(
                "{}: {}",
                self.context("send"),
                describe_error(&err)
            ))
        })?;
        Ok(HttpResponse::new(response))
    }
}

fn header_pair(
    function: &str,
    name: &str,
    value: &[u8],
) -> mlua::Result<(HeaderName, HeaderValue)> {
    let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        lua_error(format!(
            "kumo.http request:{function}: '{name}' is not a valid header name"
        ))
    })?;
    let header_value = HeaderValue::from_bytes(value).map_err(|_| {
        lua_error(format!(
            "kumo.http request:{function}: the value of '{name}' is not a valid header value \
             (control characters such as line breaks are not allowed)"
        ))
    })?;
    Ok((header_name, header_value))
}

/// The key/value pairs of a parameter table, sorted by key so the encoded
/// body does not depend on Lua's table order.
fn sorted_pairs(table: Table, what: &str) -> mlua::Result<Vec<(String, mlua::LuaString)>> {
    let mut pairs = Vec::new();
    for entry in table.pairs::<Value, Value>() {
        let (key, value) = entry?;
        let key = scalar_text(&key, &format!("{what}: a key"))?;
        let value = match value {
            Value::String(s) => s,
            other => {
                return Err(lua_error(format!(
                    "{what}: the value of '{key}' must be a string, not a {}",
                    other.type_name()
                )));
            }
        };
        pairs.push((key, value));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(pairs)
}

/// Borrow the request behind `ud` for a chaining method.
fn borrow(ud: &AnyUserData) -> mlua::Result<UserDataRef<HttpRequest>> {
    ud.borrow::<HttpRequest>()
}

impl UserData for HttpRequest {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_function(
            "header",
            |_, (ud, name, value): (AnyUserData, String, mlua::LuaString)| {
                let (name, value) = header_pair("header", &name, &value.as_bytes())?;
                borrow(&ud)?.apply("header", |b| b.header(name, value))?;
                Ok(ud)
            },
        );

        methods.add_function("headers", |_, (ud, headers): (AnyUserData, Table)| {
            let mut pairs = Vec::new();
            for entry in headers.pairs::<String, mlua::LuaString>() {
                let (name, value) = entry?;
                pairs.push(header_pair("headers", &name, &value.as_bytes())?);
            }
            borrow(&ud)?.apply("headers", |mut b| {
                for (name, value) in pairs {
                    b = b.header(name, value);
                }
                b
            })?;
            Ok(ud)
        });

        methods.add_function(
            "basic_auth",
            |_, (ud, user, password): (AnyUserData, String, Option<String>)| {
                borrow(&ud)?.apply("basic_auth", |b| b.basic_auth(user, password))?;
                Ok(ud)
            },
        );

        methods.add_function("bearer_auth", |_, (ud, token): (AnyUserData, String)| {
            borrow(&ud)?.apply("bearer_auth", |b| b.bearer_auth(token))?;
            Ok(ud)
        });

        methods.add_function("body", |_, (ud, body): (AnyUserData, mlua::LuaString)| {
            let body = body.as_bytes().to_vec();
            borrow(&ud)?.apply("body", |b| b.body(body))?;
            Ok(ud)
        });

        methods.add_function(
            "form_url_encoded",
            |_, (ud, params): (AnyUserData, Table)| {
                let what = "kumo.http request:form_url_encoded";
                let mut form = Vec::new();
                for (key, value) in sorted_pairs(params, what)? {
                    let value = value.to_str().map_err(|_| {
                        lua_error(format!("{what}: the value of '{key}' is not UTF-8 text"))
                    })?;
                    form.push((key, value.to_string()));
                }
                borrow(&ud)?.apply("form_url_encoded", |b| b.form(&form))?;
                Ok(ud)
            },
        );

        methods.add_function(
            "form_multipart_data",
            |_, (ud, params): (AnyUserData, Table)| {
                let what = "kumo.http request:form_multipart_data";
                let mut form = Form::new();
                for (key, value) in sorted_pairs(params, what)? {
                    form = match value.to_str() {
                        Ok(text) => form.text(key, text.to_string()),
                        Err(_) => {
                            let part = Part::bytes(value.as_bytes().to_vec())
                                .mime_str("application/octet-stream")
                                .map_err(|err| lua_error(format!("{what}: {err}")))?;
                            form.part(key, part)
                        }
                    };
                }
                borrow(&ud)?.apply("form_multipart_data", |b| b.multipart(form))?;
                Ok(ud)
            },
        );

        methods.add_function("timeout", |lua: &Lua, (ud, limit): (AnyUserData, Value)| {
            let limit: DurationSpec = from_lua_params(lua, limit, "kumo.http request:timeout")?;
            borrow(&ud)?.apply("timeout", |b| b.timeout(limit.0))?;
            Ok(ud)
        });

        methods.add_async_method("send", |_, this, ()| async move { this.send().await });
    }
}
