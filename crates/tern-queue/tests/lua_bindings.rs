//! The `kumo.make_*` constructors seen from a policy file: handlers return
//! the objects, the engine dispatches the events, and the conversion
//! helpers take the Rust structs back out.

use mlua::{IntoLua, Lua, MultiValue, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_policy::{EngineOptions, PolicyEngine, PolicyError};
use tern_queue::config::{DeliveryProtocol, Tls};
use tern_queue::lua::first_config;
use tern_queue::{
    EgressPathConfig, EgressPool, EgressSource, QueueConfig, QueueLuaRegistrar,
    egress_path_config_from_lua, egress_pool_from_lua, egress_source_from_lua,
    queue_config_from_lua,
};

fn engine(dir: &tempfile::TempDir, policy: &str) -> PolicyEngine {
    let path: PathBuf = dir.path().join("init.lua");
    std::fs::write(&path, format!("local kumo = require 'kumo'\n{policy}")).unwrap();
    let mut options = EngineOptions::new(path);
    options.registrars.push(Arc::new(QueueLuaRegistrar));
    PolicyEngine::new(options)
}

fn strings(args: &'static [&'static str]) -> impl FnOnce(&Lua) -> mlua::Result<MultiValue> {
    move |lua| {
        args.iter()
            .map(|s| s.into_lua(lua))
            .collect::<mlua::Result<MultiValue>>()
    }
}

async fn dispatch<T>(
    engine: &PolicyEngine,
    event: &str,
    args: &'static [&'static str],
    convert: fn(Value) -> mlua::Result<T>,
) -> Result<Option<T>, PolicyError> {
    engine
        .dispatch(event, strings(args), move |_, values| {
            first_config(values, convert)
        })
        .await
        .map(Option::flatten)
}

#[tokio::test]
async fn handlers_return_objects_that_convert_to_the_structs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    egress_pool = 'pool-' .. domain,
    retry_interval = '5m',
    max_retry_interval = 3600,
    protocol = { smtp = { mx_list = { 'mx.' .. domain } } },
  }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name, source_address = '10.0.0.1', ehlo_domain = 'mta.example.com' }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-1' }, { name = 'ip-2', weight = 3 } } }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  return kumo.make_egress_path { enable_tls = 'Required', connection_limit = 5, idle_timeout = '30s' }
end)
"#,
    );

    let queue = dispatch(
        &engine,
        "get_queue_config",
        &["example.com"],
        queue_config_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(queue.egress_pool.as_deref(), Some("pool-example.com"));
    assert_eq!(queue.retry_interval, Duration::from_secs(300));
    assert_eq!(queue.max_retry_interval, Some(Duration::from_secs(3600)));
    // Defaults for the keys the handler did not set.
    assert_eq!(queue.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(queue.refresh_interval, Duration::from_secs(60));
    let DeliveryProtocol::Smtp(smtp) = &queue.protocol else {
        panic!("{:?}", queue.protocol)
    };
    assert_eq!(smtp.mx_list[0].label(), "mx.example.com");

    let source = dispatch(
        &engine,
        "get_egress_source",
        &["ip-1"],
        egress_source_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(source.name, "ip-1");
    assert_eq!(source.source_address, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(source.ehlo_domain.as_deref(), Some("mta.example.com"));
    assert_eq!(source.ttl, Duration::from_secs(60));

    let pool = dispatch(
        &engine,
        "get_egress_pool",
        &["pool-a"],
        egress_pool_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pool.name, "pool-a");
    assert_eq!(pool.weights(), vec![1, 3]);

    let path = dispatch(
        &engine,
        "get_egress_path_config",
        &["example.com", "ip-1", "mx.example.com"],
        egress_path_config_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(path.enable_tls, Tls::Required);
    assert_eq!(path.connection_limit.limit, 5);
    assert_eq!(path.idle_timeout, Duration::from_secs(30));
    let defaults = EgressPathConfig::default();
    assert_eq!(path.max_ready, defaults.max_ready);
    assert_eq!(path.connect_timeout, defaults.connect_timeout);
}

#[tokio::test]
async fn empty_constructors_give_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        r#"
kumo.on('get_queue_config', function() return kumo.make_queue_config {} end)
kumo.on('get_egress_path_config', function() return kumo.make_egress_path {} end)
kumo.on('get_egress_source', function(name) return kumo.make_egress_source { name = name } end)
kumo.on('get_egress_pool', function(name) return kumo.make_egress_pool { name = name } end)
"#,
    );
    let queue = dispatch(&engine, "get_queue_config", &[], queue_config_from_lua)
        .await
        .unwrap();
    assert_eq!(queue, Some(QueueConfig::default()));
    let path = dispatch(
        &engine,
        "get_egress_path_config",
        &[],
        egress_path_config_from_lua,
    )
    .await
    .unwrap();
    assert_eq!(path, Some(EgressPathConfig::default()));
    let source = dispatch(&engine, "get_egress_source", &["s"], egress_source_from_lua)
        .await
        .unwrap();
    assert_eq!(source, Some(EgressSource::named("s")));
    let pool = dispatch(&engine, "get_egress_pool", &["p"], egress_pool_from_lua)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pool,
        EgressPool {
            name: "p".into(),
            entries: vec![],
            ttl: Duration::from_secs(60)
        }
    );
}

#[tokio::test]
async fn plain_tables_and_nil_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        r#"
kumo.on('get_queue_config', function(domain)
  if domain == 'none.example' then return nil end
  return { max_age = '1 day', egress_pool = 'p' }
end)
kumo.on('get_egress_path_config', function() return { max_ready = 7 } end)
"#,
    );
    let queue = dispatch(
        &engine,
        "get_queue_config",
        &["x.example"],
        queue_config_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(queue.max_age, Duration::from_secs(86400));
    assert_eq!(queue.egress_pool.as_deref(), Some("p"));
    let none = dispatch(
        &engine,
        "get_queue_config",
        &["none.example"],
        queue_config_from_lua,
    )
    .await
    .unwrap();
    assert_eq!(none, None);
    let path = dispatch(
        &engine,
        "get_egress_path_config",
        &[],
        egress_path_config_from_lua,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(path.max_ready, 7);
}

#[tokio::test]
async fn bad_plain_tables_and_wrong_types_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        r#"
kumo.on('get_queue_config', function() return { max_agee = 5 } end)
kumo.on('get_egress_source', function() return 'ip-1' end)
kumo.on('get_egress_pool', function() return kumo.make_egress_source { name = 'oops' } end)
kumo.on('get_egress_path_config', function() return { enable_dane = true } end)
"#,
    );
    let err = dispatch(&engine, "get_queue_config", &[], queue_config_from_lua)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_agee"), "{err}");
    let err = dispatch(&engine, "get_egress_source", &[], egress_source_from_lua)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected a EgressSource") && err.contains("string"),
        "{err}"
    );
    let err = dispatch(&engine, "get_egress_pool", &[], egress_pool_from_lua)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("EgressPool") && err.contains("userdata"),
        "{err}"
    );
    let err = dispatch(
        &engine,
        "get_egress_path_config",
        &[],
        egress_path_config_from_lua,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("enable_dane") && err.contains("not supported by Tern yet"),
        "{err}"
    );
}

/// Evaluate `kumo.make_*` at the top level of a policy and return the
/// load error.
async fn load_error(snippet: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    engine(&dir, snippet)
        .new_state()
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn unknown_keys_name_the_key_and_the_function() {
    for (snippet, function, key) in [
        (
            "kumo.make_queue_config { retry_intervall = '1m' }",
            "kumo.make_queue_config",
            "retry_intervall",
        ),
        (
            "kumo.make_egress_source { name = 'a', bind = '1.2.3.4' }",
            "kumo.make_egress_source",
            "bind",
        ),
        (
            "kumo.make_egress_pool { name = 'p', entries = { { name = 'a', wieght = 2 } } }",
            "kumo.make_egress_pool",
            "wieght",
        ),
        (
            "kumo.make_egress_path { conection_limit = 3 }",
            "kumo.make_egress_path",
            "conection_limit",
        ),
    ] {
        let err = load_error(snippet).await;
        assert!(err.contains(function), "{snippet}: {err}");
        assert!(err.contains(key), "{snippet}: {err}");
    }
}

#[tokio::test]
async fn unsupported_options_fail_at_the_constructor() {
    let err =
        load_error("kumo.make_egress_source { name = 'x', socks5_proxy_server = '1.2.3.4:1080' }")
            .await;
    assert!(
        err.contains("kumo.make_egress_source")
            && err.contains("socks5_proxy_server")
            && err.contains("not supported by Tern yet"),
        "{err}"
    );
    let err = load_error("kumo.make_egress_path { enable_dane = true }").await;
    assert!(
        err.contains("kumo.make_egress_path")
            && err.contains("enable_dane")
            && err.contains("not supported by Tern yet"),
        "{err}"
    );
    let err =
        load_error("kumo.make_queue_config { protocol = { xfer = { target = 'http://x' } } }")
            .await;
    assert!(
        err.contains("kumo.make_queue_config") && err.contains("not supported by Tern yet"),
        "{err}"
    );
    // Invalid values fail too, with the function named.
    let err = load_error("kumo.make_queue_config { retry_interval = 0 }").await;
    assert!(
        err.contains("kumo.make_queue_config") && err.contains("retry_interval"),
        "{err}"
    );
    let err = load_error("kumo.make_egress_source 'x'").await;
    assert!(err.contains("expected a table"), "{err}");
}

#[tokio::test]
async fn fields_are_readable_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        r#"
local cfg = kumo.make_queue_config { egress_pool = 'p1', max_age = '2h' }
assert(cfg.egress_pool == 'p1', tostring(cfg.egress_pool))
assert(cfg.max_age == '2h', tostring(cfg.max_age))
assert(cfg.retry_interval == '20m', tostring(cfg.retry_interval))
assert(cfg.max_retry_interval == nil)
assert(cfg.no_such_field == nil)
assert(tostring(cfg):find('QueueConfig', 1, true))
local path = kumo.make_egress_path { connection_limit = 9 }
assert(path.enable_tls == 'Opportunistic', tostring(path.enable_tls))
local pool = kumo.make_egress_pool { name = 'p', entries = { { name = 'a', weight = 2 } } }
assert(pool.entries[1].weight == 2)
kumo.on('get_queue_config', function()
  local ok, err = pcall(function() cfg.max_age = 5 end)
  return tostring(err)
end)
"#,
    );
    let err = engine
        .dispatch(
            "get_queue_config",
            |_| Ok(MultiValue::new()),
            |_, values| match values.into_iter().next() {
                Some(Value::String(s)) => Ok(s.to_string_lossy()),
                other => Ok(format!("{other:?}")),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        err.contains("cannot set 'max_age'") && err.contains("read-only"),
        "{err}"
    );
}

#[tokio::test]
async fn userdata_converts_by_cloning_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, "");
    let lua = engine.new_state().await.unwrap();
    let value: Value = lua
        .load("return kumo.make_egress_pool { name = 'p', entries = { { name = 'a' } } }")
        .eval()
        .unwrap();
    let first = egress_pool_from_lua(value.clone()).unwrap();
    let second = egress_pool_from_lua(value.clone()).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.weights(), vec![1]);
    // FromLua on the wrapper works too.
    let wrapper: tern_queue::LuaEgressPool = lua.unpack(value).unwrap();
    assert_eq!(wrapper.0, first);
}
