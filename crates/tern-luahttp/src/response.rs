//! The response object returned by `request:send()`.
//!
//! Status and headers are captured when the response arrives. The body is
//! read on the first call to `bytes()`, `text()` or `json()` (async) and
//! kept, so those methods can be called more than once and in any order
//! (KumoMTA allows only one body read; allowing more breaks no policy).

use crate::{Shared, lua_error};
use bytes::Bytes;
use mlua::{Lua, MetaMethod, MultiValue, UserData, UserDataMethods, Value};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tern_policy::json_to_lua;

enum Body {
    /// Not read yet.
    Pending(reqwest::Response),
    /// Being read by another coroutine.
    Reading,
    Read(Bytes),
    /// Reading failed; the error is repeated to later callers.
    Failed(String),
}

/// `kumo.http` response userdata.
pub(crate) struct HttpResponse {
    status: StatusCode,
    headers: Arc<HeaderMap>,
    url: String,
    body: Shared<Body>,
}

impl HttpResponse {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            status: response.status(),
            headers: Arc::new(response.headers().clone()),
            url: response.url().to_string(),
            body: Arc::new(parking_lot::Mutex::new(Body::Pending(response))),
        }
    }

    /// The `Content-Length` header, when present and numeric.
    fn content_length(&self) -> Option<u64> {
        self.headers
            .get(CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn body(&self, function: &str) -> mlua::Result<Bytes> {
        let pending = {
            let mut body = self.body.lock();
            match std::mem::replace(&mut *body, Body::Reading) {
                Body::Pending(response) => response,
                Body::Read(bytes) => {
                    *body = Body::Read(bytes.clone());
                    return Ok(bytes);
                }
                Body::Failed(text) => {
                    *body = Body::Failed(text.clone());
                    return Err(lua_error(text));
                }
                Body::Reading => {
                    return Err(lua_error(format!(
                        "kumo.http response:{function} ({}): the body is being read by another call",
                        self.url
                    )));
                }
            }
        };
        // The lock is released while the body arrives.
        let outcome = pending.bytes().await;
        let mut body = self.body.lock();
        match outcome {
            Ok(bytes) => {
                *body = Body::Read(bytes.clone());
                Ok(bytes)
            }
            Err(err) => {
                let text = format!(
                    "kumo.http response:{function} ({}): reading the body failed: {}",
                    self.url,
                    crate::describe_error(&err)
                );
                *body = Body::Failed(text.clone());
                Err(lua_error(text))
            }
        }
    }

    async fn text(&self) -> mlua::Result<String> {
        let bytes = self.body("text").await?;
        Ok(decode_text(
            &bytes,
            self.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        ))
    }
}

/// Decode a body as text: a byte order mark wins, then the `charset`
/// parameter of the content type, then UTF-8; malformed sequences become
/// U+FFFD.
pub(crate) fn decode_text(bytes: &[u8], content_type: Option<&[u8]>) -> String {
    let encoding = content_type
        .and_then(charset_label)
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    let (text, _, _) = encoding.decode(bytes);
    text.into_owned()
}

fn charset_label(content_type: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(content_type);
    text.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

impl UserData for HttpResponse {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("status_code", |_, this, ()| Ok(this.status.as_u16()));
        methods.add_method("status_reason", |_, this, ()| {
            Ok(this.status.canonical_reason())
        });
        type Class = fn(&StatusCode) -> bool;
        let classes: [(&str, Class); 5] = [
            ("status_is_informational", StatusCode::is_informational),
            ("status_is_success", StatusCode::is_success),
            ("status_is_redirection", StatusCode::is_redirection),
            ("status_is_client_error", StatusCode::is_client_error),
            ("status_is_server_error", StatusCode::is_server_error),
        ];
        for (name, class) in classes {
            methods.add_method(name, move |_, this, ()| Ok(class(&this.status)));
        }
        methods.add_method("headers", |_, this, ()| {
            Ok(HeaderMapView(this.headers.clone()))
        });
        methods.add_method("content_length", |_, this, ()| Ok(this.content_length()));
        methods.add_async_method("bytes", |lua, this, ()| async move {
            let bytes = this.body("bytes").await?;
            lua.create_string(&bytes)
        });
        methods.add_async_method("text", |_, this, ()| async move { this.text().await });
        methods.add_async_method("json", |lua, this, ()| async move {
            let bytes = this.body("json").await?;
            let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|err| {
                lua_error(format!(
                    "kumo.http response:json ({}): the body is not valid JSON: {err}",
                    this.url
                ))
            })?;
            json_to_lua(&lua, &value)
        });
    }
}

/// The header map returned by `response:headers()`: indexing is
/// case-insensitive and gives the first value of a repeated header;
/// `pairs` visits every value (lower-case names).
#[derive(Clone)]
pub(crate) struct HeaderMapView(Arc<HeaderMap>);

impl UserData for HeaderMapView {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, name: mlua::LuaString| {
            let name = name.to_str()?;
            match this.0.get(&*name) {
                Some(value) => Ok(Value::String(lua.create_string(value.as_bytes())?)),
                None => Ok(Value::Nil),
            }
        });
        methods.add_meta_method(MetaMethod::Pairs, |lua: &Lua, this, ()| {
            let entries: Vec<(String, Vec<u8>)> = this
                .0
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect();
            let position = AtomicUsize::new(0);
            let next = lua.create_function(move |lua, _: MultiValue| {
                let index = position.fetch_add(1, Ordering::Relaxed);
                match entries.get(index) {
                    Some((name, value)) => Ok((
                        Value::String(lua.create_string(name)?),
                        Value::String(lua.create_string(value)?),
                    )),
                    None => Ok((Value::Nil, Value::Nil)),
                }
            })?;
            Ok((next, Value::Nil, Value::Nil))
        });
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.0.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_uses_charset_then_utf8() {
        assert_eq!(
            decode_text(b"caf\xe9", Some(b"text/plain; charset=ISO-8859-1")),
            "café"
        );
        assert_eq!(decode_text("café".as_bytes(), Some(b"text/plain")), "café");
        assert_eq!(decode_text("café".as_bytes(), None), "café");
        assert_eq!(decode_text(b"caf\xe9", None), "caf\u{fffd}");
        assert_eq!(
            decode_text(b"x", Some(b"text/plain; Charset=\"utf-8\"")),
            "x"
        );
    }

    #[test]
    fn byte_order_mark_wins() {
        assert_eq!(
            decode_text(b"\xff\xfeh\x00i\x00", Some(b"text/plain; charset=utf-8")),
            "hi"
        );
    }
}
