//! `kumo.http` seen from a policy: a real HTTP server on 127.0.0.1 (axum)
//! answers requests made from Lua event handlers run by the policy engine.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use mlua::{Lua, MultiValue};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_luahttp::HttpRegistrar;
use tern_policy::engine::dispatch_in;
use tern_policy::{EngineOptions, PolicyEngine, PolicyError, lua_to_json};

/// Echo the request as JSON: method, path, query, selected headers, body.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| Value::String(v.to_str().unwrap_or("?").to_string()))
            .unwrap_or(Value::Null)
    };
    axum::Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "authorization": header("authorization"),
        "content_type": header("content-type"),
        "user_agent": header("user-agent"),
        "x_one": header("x-one"),
        "x_two": header("x-two"),
        "x_three": header("x-three"),
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn spawn_server() -> String {
    let app = Router::new()
        .route("/echo", any(echo))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/latin1",
            get(|| async {
                (
                    [
                        ("content-type", "text/plain; charset=iso-8859-1"),
                        ("x-repeated", "a"),
                    ],
                    b"caf\xe9".to_vec(),
                )
            }),
        )
        .route(
            "/repeated",
            get(|| async {
                let mut headers = HeaderMap::new();
                headers.append("x-repeated", "first".parse().unwrap());
                headers.append("x-repeated", "second".parse().unwrap());
                (headers, "ok")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

struct Policy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// A policy whose `BASE` global is the test server's URL.
fn policy(base: &str, body: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.lua");
    std::fs::write(
        &path,
        format!("local kumo = require 'kumo'\nlocal BASE = '{base}'\n{body}"),
    )
    .unwrap();
    Policy { _dir: dir, path }
}

fn no_args(_: &Lua) -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

/// Load the policy and dispatch `check`; its first result as JSON.
async fn check(policy: &Policy) -> Result<Value, PolicyError> {
    let mut options = EngineOptions::new(&policy.path);
    options.package_dirs.clear();
    options.registrars.push(Arc::new(HttpRegistrar::default()));
    let lua = PolicyEngine::new(options).new_state().await?;
    let value = dispatch_in(&lua, "check", no_args, |lua, values| {
        lua_to_json(lua, values.into_iter().next().unwrap_or(mlua::Value::Nil))
    })
    .await?;
    Ok(value.unwrap_or(Value::Null))
}

async fn run(body: &str) -> Result<Value, PolicyError> {
    let base = spawn_server().await;
    check(&policy(&base, body)).await
}

#[tokio::test]
async fn get_with_headers_and_json_response() {
    let result = run(r#"
kumo.on('check', function()
  local client = kumo.http.build_client { user_agent = 'tern-test/1' }
  local response = client:get(BASE .. '/echo?x=1')
    :header('X-One', 'one')
    :headers { ['X-Two'] = 'two', ['x-three'] = 'three' }
    :bearer_auth('sekrit')
    :send()
  local headers = response:headers()
  local body = response:json()
  return {
    code = response:status_code(),
    reason = response:status_reason(),
    success = response:status_is_success(),
    client_error = response:status_is_client_error(),
    content_type = headers['Content-Type'],
    content_type_lower = headers['content-type'],
    length_matches = response:content_length() == #response:bytes(),
    echo = body,
  }
end)
"#)
    .await
    .unwrap();
    assert_eq!(result["code"], 200);
    assert_eq!(result["reason"], "OK");
    assert_eq!(result["success"], true);
    assert_eq!(result["client_error"], false);
    assert_eq!(result["content_type"], "application/json");
    assert_eq!(result["content_type_lower"], "application/json");
    assert_eq!(result["length_matches"], true);
    let echo = &result["echo"];
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["x_one"], "one");
    assert_eq!(echo["x_two"], "two");
    assert_eq!(echo["x_three"], "three");
    assert_eq!(echo["authorization"], "Bearer sekrit");
    assert_eq!(echo["user_agent"], "tern-test/1");
}

#[tokio::test]
async fn post_json_body_with_basic_auth() {
    let result = run(r#"
kumo.on('check', function()
  local request = kumo.http.build_client({}):post(BASE .. '/echo')
  request:header('Content-Type', 'application/json')
  request:basic_auth('user', 'pass')
  request:body(kumo.json_encode { key = 'value' })
  local response = request:send()
  return response:json()
end)
"#)
    .await
    .unwrap();
    assert_eq!(result["method"], "POST");
    assert_eq!(result["content_type"], "application/json");
    // base64("user:pass")
    assert_eq!(result["authorization"], "Basic dXNlcjpwYXNz");
    assert_eq!(result["body"], r#"{"key":"value"}"#);
}

#[tokio::test]
async fn basic_auth_without_password_and_other_verbs() {
    let result = run(r#"
kumo.on('check', function()
  local client = kumo.http.build_client {}
  local put = client:put(BASE .. '/echo'):basic_auth('only'):body('x'):send():json()
  local patch = client:patch(BASE .. '/echo'):send():json()
  local delete = client:delete(BASE .. '/echo'):send():json()
  local head = client:head(BASE .. '/echo'):send()
  return {
    put = put.method, put_auth = put.authorization,
    patch = patch.method, delete = delete.method,
    head = head:status_code(), head_body = head:text(),
  }
end)
"#)
    .await
    .unwrap();
    assert_eq!(result["put"], "PUT");
    // base64("only:")
    assert_eq!(result["put_auth"], "Basic b25seTo=");
    assert_eq!(result["patch"], "PATCH");
    assert_eq!(result["delete"], "DELETE");
    assert_eq!(result["head"], 200);
    assert_eq!(result["head_body"], "");
}

#[tokio::test]
async fn form_bodies() {
    let result = run(r#"
kumo.on('check', function()
  local client = kumo.http.build_client {}
  local url_encoded = client:post(BASE .. '/echo')
    :form_url_encoded { b = 'x y', a = 'é&=' }:send():json()
  local multipart = client:post(BASE .. '/echo')
    :form_multipart_data { text = 'hello', blob = '\xff\x00\xfe' }:send():json()
  return { url_encoded = url_encoded, multipart = multipart }
end)
"#)
    .await
    .unwrap();
    assert_eq!(
        result["url_encoded"]["content_type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(result["url_encoded"]["body"], "a=%C3%A9%26%3D&b=x+y");
    let content_type = result["multipart"]["content_type"].as_str().unwrap();
    assert!(
        content_type.starts_with("multipart/form-data; boundary="),
        "{content_type}"
    );
    let body = result["multipart"]["body"].as_str().unwrap();
    assert!(
        body.contains("name=\"text\"\r\n\r\nhello\r\n"),
        "text part missing: {body:?}"
    );
    assert!(
        body.contains("name=\"blob\"\r\nContent-Type: application/octet-stream\r\n"),
        "binary part not typed as octet-stream: {body:?}"
    );
}

#[tokio::test]
async fn server_error_is_a_response_not_an_error() {
    let result = run(r#"
kumo.on('check', function()
  local response = kumo.http.build_client({}):get(BASE .. '/fail'):send()
  return {
    code = response:status_code(),
    reason = response:status_reason(),
    success = response:status_is_success(),
    server_error = response:status_is_server_error(),
    text = response:text(),
    again = response:text(),
  }
end)
"#)
    .await
    .unwrap();
    assert_eq!(
        result,
        json!({
            "code": 500, "reason": "Internal Server Error", "success": false,
            "server_error": true, "text": "boom", "again": "boom",
        })
    );
}

#[tokio::test]
async fn text_decodes_charset_and_headers_iterate() {
    let result = run(r#"
kumo.on('check', function()
  local client = kumo.http.build_client {}
  local latin = client:get(BASE .. '/latin1'):send()
  local repeated = client:get(BASE .. '/repeated'):send()
  local seen = {}
  for name, value in pairs(repeated:headers()) do
    if name == 'x-repeated' then table.insert(seen, value) end
  end
  return {
    text = latin:text(),
    raw_length = #latin:bytes(),
    first = repeated:headers()['X-Repeated'],
    all = seen,
    missing = repeated:headers()['x-absent'] == nil,
  }
end)
"#)
    .await
    .unwrap();
    assert_eq!(result["text"], "café");
    assert_eq!(result["raw_length"], 4);
    assert_eq!(result["first"], "first");
    assert_eq!(result["all"], json!(["first", "second"]));
    assert_eq!(result["missing"], true);
}

#[tokio::test]
async fn request_and_client_timeouts() {
    let started = std::time::Instant::now();
    let result = run(r#"
kumo.on('check', function()
  local ok1, err1 = pcall(function()
    return kumo.http.build_client({}):get(BASE .. '/slow'):timeout('200ms'):send()
  end)
  local ok2, err2 = pcall(function()
    return kumo.http.build_client({ timeout = 0.2 }):get(BASE .. '/slow'):send()
  end)
  return { ok1 = ok1, err1 = tostring(err1), ok2 = ok2, err2 = tostring(err2) }
end)
"#)
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeouts not applied"
    );
    assert_eq!(result["ok1"], false);
    assert_eq!(result["ok2"], false);
    for key in ["err1", "err2"] {
        let text = result[key].as_str().unwrap();
        assert!(text.contains("timed out"), "{key}: {text}");
        assert!(text.contains("GET http://127.0.0.1:"), "{key}: {text}");
    }
}

#[tokio::test]
async fn connection_refused_is_a_clear_lua_error() {
    // Take a free port and close it again, so nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let err = check(&policy(
        &base,
        r#"
kumo.on('check', function()
  return kumo.http.build_client({}):get(BASE .. '/x'):send():status_code()
end)
"#,
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("kumo.http request:send"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn misuse_gives_clear_errors() {
    let result = run(r#"
local function err(f)
  local ok, e = pcall(f)
  assert(not ok, 'expected an error')
  return tostring(e)
end
kumo.on('check', function()
  local client = kumo.http.build_client {}
  local sent = client:get(BASE .. '/echo')
  sent:send()
  local closed = kumo.http.build_client {}
  closed:close()
  return {
    websocket = err(function() return kumo.http.connect_websocket(BASE) end),
    unknown_param = err(function() return kumo.http.build_client { bogus = 1 } end),
    bad_duration = err(function() return kumo.http.build_client { timeout = 'soon' } end),
    bad_url = err(function() return client:get('not a url') end),
    bad_header = err(function() return client:get(BASE):header('bad name', 'v') end),
    bad_value = err(function() return client:get(BASE):header('X-A', 'a\r\nX-B: b') end),
    bad_form = err(function() return client:post(BASE):form_url_encoded { a = {} } end),
    twice = err(function() return sent:send() end),
    closed = err(function() return closed:get(BASE) end),
  }
end)
"#)
    .await
    .unwrap();
    let text = |key: &str| result[key].as_str().unwrap().to_string();
    assert!(
        text("websocket").contains("kumo.http.connect_websocket is not supported by Tern yet"),
        "{}",
        text("websocket")
    );
    assert!(text("unknown_param").contains("kumo.http.build_client"));
    assert!(text("unknown_param").contains("bogus"));
    assert!(text("bad_duration").contains("kumo.http.build_client"));
    assert!(text("bad_url").contains("invalid URL 'not a url'"));
    assert!(text("bad_header").contains("'bad name' is not a valid header name"));
    assert!(text("bad_value").contains("not a valid header value"));
    assert!(text("bad_form").contains("the value of 'a' must be a string"));
    assert!(text("twice").contains("already sent"));
    assert!(text("closed").contains("the client was closed"));
}

#[tokio::test]
async fn build_url_from_lua() {
    let result = run(r#"
kumo.on('check', function()
  return {
    documented = kumo.http.build_url('https://example.com/?existing=value', { a = 1, b = 2 }),
    plain = kumo.http.build_url('http://h/p', {}),
  }
end)
"#)
    .await
    .unwrap();
    assert_eq!(
        result["documented"],
        "https://example.com/?existing=value&a=1&b=2"
    );
    assert_eq!(result["plain"], "http://h/p");
}
