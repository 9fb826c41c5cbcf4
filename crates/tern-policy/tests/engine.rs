//! Behaviour of the policy engine seen from a policy file on disk.

use mlua::{IntoLuaMulti, Lua, MultiValue, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tern_policy::{EngineOptions, LuaRegistrar, PolicyEngine, PolicyError, from_lua_params};

fn write_policy(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("init.lua");
    std::fs::write(&path, text).unwrap();
    path
}

fn engine(path: PathBuf) -> PolicyEngine {
    PolicyEngine::new(EngineOptions::new(path))
}

fn no_args(_: &Lua) -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

async fn call_string(
    engine: &PolicyEngine,
    event: &str,
) -> Result<Option<Option<String>>, PolicyError> {
    engine
        .dispatch(event, no_args, |_, values| {
            Ok(match values.into_iter().next() {
                Some(Value::String(s)) => Some(s.to_string_lossy()),
                _ => None,
            })
        })
        .await
}

#[tokio::test]
async fn syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(&dir, "local kumo = require 'kumo'\n\nlocal x = = 1\n");
    let err = engine(path.clone())
        .new_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:3:", path.display())), "{err}");
}

#[tokio::test]
async fn runtime_error_at_top_level_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(&dir, "local kumo = require 'kumo'\nerror('boom')\n");
    let err = engine(path.clone())
        .new_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:2: boom", path.display())),
        "{err}"
    );
}

#[tokio::test]
async fn runtime_error_in_handler_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.on('init', function()\n  error('bad init')\nend)\n",
    );
    let err = call_string(&engine(path.clone()), "init")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:3: bad init", path.display())),
        "{err}"
    );
}

#[tokio::test]
async fn second_handler_for_single_event_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.on('get_egress_path_config', function() end)\nkumo.on('get_egress_path_config', function() end)\n",
    );
    let err = engine(path.clone())
        .new_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "get_egress_path_config event already has a handler defined at {}:2",
            path.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn multi_handler_chain_stops_at_first_value_including_nil() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        r#"local kumo = require 'kumo'
kumo.on('get_queue_config', function() end)
kumo.on('get_queue_config', function() return 'second' end)
kumo.on('get_queue_config', function() return 'third' end)
kumo.on('requeue_message', function() return nil end)
kumo.on('requeue_message', function() return 'never' end)
kumo.on('validate_config', function() end)
"#,
    );
    let engine = engine(path);
    assert_eq!(
        call_string(&engine, "get_queue_config").await.unwrap(),
        Some(Some("second".into()))
    );
    // an explicit nil is a value: the chain stops and the result is nil
    assert_eq!(
        call_string(&engine, "requeue_message").await.unwrap(),
        Some(None)
    );
    // nothing returned by any handler: not handled
    assert_eq!(call_string(&engine, "validate_config").await.unwrap(), None);
    assert_eq!(call_string(&engine, "no_such_event").await.unwrap(), None);
}

#[tokio::test]
async fn kumo_on_inside_an_event_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.on('init', function()\n  kumo.on('late', function() end)\nend)\n",
    );
    let err = call_string(&engine(path), "init")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be called at the top level"), "{err}");
}

#[tokio::test]
async fn edits_take_effect_after_use_limit_and_on_epoch_bump() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |v: &str| {
        format!(
            "local kumo = require 'kumo'\nkumo.set_max_lua_context_use_count(3)\nkumo.on('which', function() return '{v}' end)\nkumo.on('bump', function() kumo.bump_config_epoch() return 'ok' end)\n"
        )
    };
    let path = write_policy(&dir, &policy("one"));
    let engine = engine(path.clone());
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("one".into()))
    );
    std::fs::write(&path, policy("two")).unwrap();
    // the pooled state keeps answering with the old policy until its use limit
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(
            call_string(&engine, "which")
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(answers[0], "one", "{answers:?}");
    assert_eq!(answers.last().unwrap(), "two", "{answers:?}");

    // an epoch bump retires pooled states at once
    std::fs::write(&path, policy("three")).unwrap();
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("two".into()))
    );
    call_string(&engine, "bump").await.unwrap();
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("three".into()))
    );
}

#[tokio::test]
async fn memoize_caches_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count.txt");
    let path = write_policy(
        &dir,
        &format!(
            r#"local kumo = require 'kumo'
local calls = 0
local function load(key)
  local f = io.open('{counter}', 'a')
  f:write('x')
  f:close()
  return {{ key = key, value = 42 }}
end
local cached = kumo.memoize(load, {{ name = 'test_cache', ttl = '300ms', capacity = 10 }})
kumo.on('get', function(key) return cached(key).value end)
"#,
            counter = counter.display()
        ),
    );
    let engine = engine(path);
    let call = |key: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .dispatch(
                    "get",
                    move |lua| key.into_lua_multi(lua),
                    |_, v| Ok(v.into_iter().next().and_then(|v| v.as_i64())),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let calls = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.len())
            .unwrap_or(0)
    };
    assert_eq!(call("a").await, Some(42));
    assert_eq!(call("a").await, Some(42));
    assert_eq!(calls(), 1, "second call must be served from the cache");
    assert_eq!(call("b").await, Some(42));
    assert_eq!(calls(), 2, "a different key is a miss");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(call("a").await, Some(42));
    assert_eq!(calls(), 3, "an expired entry is repopulated");
}

#[tokio::test]
async fn json_load_of_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nlocal DATA = kumo.json_load '/no/such/dkim_config.json'\n",
    );
    let err = engine(path).new_state().await.unwrap_err().to_string();
    assert!(err.contains("/no/such/dkim_config.json"), "{err}");
    assert!(err.contains("kumo.json_load"), "{err}");
}

#[tokio::test]
async fn seed_example_selector_table_is_readable_in_realtime_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dkim_config.json");
    std::fs::write(
        &data,
        r#"{ "example.com": "s1024", "example.org": "dkim2023" // comment
    }"#,
    )
    .unwrap();
    let path = write_policy(
        &dir,
        &format!(
            "local kumo = require 'kumo'\nlocal DKIM_CONFIG = kumo.json_load '{}'\nkumo.on('pick', function(domain) return DKIM_CONFIG[domain] end)\n",
            data.display()
        ),
    );
    let engine = engine(path);
    let selector = engine
        .dispatch(
            "pick",
            |lua| "example.org".into_lua_multi(lua),
            |_, v| {
                Ok(v.into_iter()
                    .next()
                    .and_then(|v| v.as_string().map(|s| s.to_string_lossy())))
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(selector.as_deref(), Some("dkim2023"));
}

#[tokio::test]
async fn unknown_kumo_function_is_named_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.make_teapot { size = 1 }\n",
    );
    let err = engine(path).new_state().await.unwrap_err().to_string();
    assert!(
        err.contains("kumo.make_teapot is not supported by Tern yet"),
        "{err}"
    );
}

#[tokio::test]
async fn require_finds_modules_next_to_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mymodule.lua"),
        "return { answer = 'forty-two' }",
    )
    .unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nlocal m = require 'mymodule'\nkumo.on('answer', function() return m.answer end)\n",
    );
    assert_eq!(
        call_string(&engine(path), "answer").await.unwrap(),
        Some(Some("forty-two".into()))
    );
}

#[tokio::test]
async fn rejection_is_recoverable_from_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.on('check', function() kumo.reject(552, '5.6.0 nope') end)\n",
    );
    let err = call_string(&engine(path), "check").await.unwrap_err();
    let rejection = err.rejection().expect("a rejection");
    assert_eq!(
        (rejection.code, rejection.message.as_str()),
        (552, "5.6.0 nope")
    );
    assert!(!rejection.closes_connection());
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Sample {
    name: String,
    #[serde(default)]
    weight: u32,
}

#[tokio::test]
async fn strict_parameter_tables_name_the_unknown_key_and_function() {
    let dir = tempfile::tempdir().unwrap();
    let registrar: Arc<dyn LuaRegistrar> = Arc::new(|lua: &Lua, kumo: &mlua::Table| {
        kumo.raw_set(
            "make_sample",
            lua.create_function(|lua, params: Value| {
                let sample: Sample = from_lua_params(lua, params, "kumo.make_sample")?;
                Ok(sample.name)
            })?,
        )
    });
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.make_sample { name = 'a', wieght = 3 }\n",
    );
    let mut options = EngineOptions::new(path);
    options.registrars.push(registrar);
    let err = PolicyEngine::new(options)
        .new_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kumo.make_sample"), "{err}");
    assert!(err.contains("wieght"), "{err}");
}

/// Part V.1 #4: every dispatch borrows its own pooled state, so a global
/// set by one running handler is invisible to a handler running at the
/// same time in another state.
#[tokio::test]
async fn globals_mutated_in_events_are_not_shared_between_pooled_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        r#"local kumo = require 'kumo'
kumo.on('count', function()
  COUNTER = (COUNTER or 0) + 1
  kumo.sleep(0.2)
  return tostring(COUNTER)
end)
"#,
    );
    let engine = engine(path);
    let (a, b) = tokio::join!(call_string(&engine, "count"), call_string(&engine, "count"));
    assert_eq!(a.unwrap(), Some(Some("1".into())));
    assert_eq!(b.unwrap(), Some(Some("1".into())));
    assert_eq!(engine.states_created(), 2, "one state per concurrent event");
}

/// `lua_count` counts pooled states in use and spare; retired states (here:
/// used up) stop being counted.
#[tokio::test]
async fn live_states_count_in_use_and_spare_states_until_retired() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        r#"local kumo = require 'kumo'
kumo.on('count', function()
  kumo.sleep(0.2)
  return 'x'
end)
"#,
    );
    let engine = engine(path);
    assert_eq!(engine.live_states(), 0);
    let during = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        (engine.live_states(), engine.spare_states())
    };
    let (_, _, (live, spare)) = tokio::join!(
        call_string(&engine, "count"),
        call_string(&engine, "count"),
        during
    );
    assert_eq!((live, spare), (2, 0), "two states in use");
    assert_eq!((engine.live_states(), engine.spare_states()), (2, 2));
    engine.limits().set_max_use_count(1);
    call_string(&engine, "count").await.unwrap();
    // The spares count as used up at the next checkout and are dropped;
    // the state made instead is dropped after its one use.
    assert_eq!(engine.live_states(), 0);
}

/// Part V.1 #5 / §1.5: the pool limits default to 300 s, 1024 uses and
/// 8192 spares, and a state older than the maximum age is retired so the
/// next event re-reads the policy file.
#[tokio::test]
async fn edits_take_effect_once_a_state_is_older_than_the_maximum_age() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |v: &str| {
        format!("local kumo = require 'kumo'\nkumo.on('which', function() return '{v}' end)\n")
    };
    let path = write_policy(&dir, &policy("one"));
    let engine = engine(path.clone());
    let limits = engine.limits();
    assert_eq!(limits.max_age(), std::time::Duration::from_secs(300));
    assert_eq!(limits.max_use_count(), 1024);
    assert_eq!(limits.max_spare(), 8192);
    limits.set_max_age(std::time::Duration::from_secs(1));
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("one".into()))
    );
    std::fs::write(&path, policy("two")).unwrap();
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("one".into())),
        "a young pooled state keeps the policy it loaded"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        call_string(&engine, "which").await.unwrap(),
        Some(Some("two".into()))
    );
}

/// Part V.1 #3: a single-handler event stops at its handler whatever it
/// returns; only the listed events chain.
#[tokio::test]
async fn only_the_listed_events_take_several_handlers() {
    // exactly the names of §1.4
    for event in [
        "pre_init",
        "validate_config",
        "get_queue_config",
        "should_enqueue_log_record",
        "requeue_message",
        "throttle_insert_ready_queue",
        "get_acl_definition",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_policy(
            &dir,
            &format!(
                "local kumo = require 'kumo'\nkumo.on('{event}', function() end)\nkumo.on('{event}', function() return 'b' end)\n"
            ),
        );
        assert_eq!(
            call_string(&engine(path), event).await.unwrap(),
            Some(Some("b".into())),
            "{event}"
        );
    }
    for event in [
        "init",
        "smtp_server_message_received",
        "http_message_generated",
        "get_egress_source",
        "get_egress_pool",
        "my_custom_event",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_policy(
            &dir,
            &format!(
                "local kumo = require 'kumo'\nkumo.on('{event}', function() end)\nkumo.on('{event}', function() return 'b' end)\n"
            ),
        );
        let err = engine(path).new_state().await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("{event} event already has a handler defined at")),
            "{event}: {err}"
        );
    }
}

/// KumoMTA events that Tern never fires cannot be registered: the policy
/// fails to load with the file and line of the `kumo.on` call, instead of
/// keeping a handler that would silently never run.
#[tokio::test]
async fn events_tern_never_fires_are_refused_at_registration() {
    for event in ["xfer_message_received"] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_policy(
            &dir,
            &format!("local kumo = require 'kumo'\n\nkumo.on('{event}', function() end)\n"),
        );
        let err = engine(path.clone())
            .new_state()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{}:3: kumo.on('{event}', ...)", path.display()))
                && err.contains("is not supported by Tern yet"),
            "{event}: {err}"
        );
    }
}

/// `has_handler` is asked on hot paths for every message: it answers from
/// the newest loaded state without checking one out (no use counted, no
/// state made), and follows a policy edit once a state has loaded it.
#[tokio::test]
async fn has_handler_needs_no_state_checkout_and_follows_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(
        &dir,
        "local kumo = require 'kumo'\nkumo.on('present', function() return 'x' end)\n",
    );
    let engine = engine(path.clone());
    engine.limits().set_max_use_count(2);
    assert_eq!(
        call_string(&engine, "present").await.unwrap(),
        Some(Some("x".into()))
    );
    assert_eq!(engine.states_created(), 1);
    for _ in 0..100 {
        assert!(engine.has_handler("present").await.unwrap());
        assert!(!engine.has_handler("absent").await.unwrap());
    }
    assert_eq!(engine.states_created(), 1, "no state was made to answer");
    assert_eq!(engine.spare_states(), 1, "and the spare was not used up");

    std::fs::write(
        &path,
        "local kumo = require 'kumo'\nkumo.on('present', function() return 'x' end)\nkumo.on('absent', function() end)\n",
    )
    .unwrap();
    engine.epoch().bump();
    call_string(&engine, "present").await.unwrap();
    assert!(
        engine.has_handler("absent").await.unwrap(),
        "the edit is seen"
    );
}
