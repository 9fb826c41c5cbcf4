//! The cost of one realtime event through the policy engine's context
//! pool: a `get_queue_config` handler that returns
//! `kumo.make_queue_config{...}`, converted to the Rust `QueueConfig`.
//!
//! Runs on a multi-thread tokio runtime with 1 and then 2 workers (one task
//! per worker) and prints calls per second and µs per call. To show where
//! the time goes it also times cheaper variants of the same round trip:
//! the pool checkout/checkin alone, a handler that returns nothing, a
//! handler that returns a number, and the constructor path without the
//! conversion back to Rust.
//!
//! `cargo run --release -p tern-queue --example dispatch_bench [seconds]`

use mlua::LuaSerdeExt;
use mlua::{IntoLua, Lua, MultiValue, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_policy::{EngineOptions, PolicyEngine, from_lua_params, lua_to_json};
use tern_queue::lua::first_config;
use tern_queue::{LuaQueueConfig, QueueConfig, QueueLuaRegistrar, queue_config_from_lua};

const POLICY: &str = r#"
local kumo = require 'kumo'
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    egress_pool = 'pool-1',
    retry_interval = '5m',
    max_retry_interval = '2h',
    max_age = '3 days',
  }
end)
-- Variants used to split the cost.
kumo.on('bench_nothing', function(domain, tenant, campaign, routing_domain) end)
kumo.on('bench_number', function(domain, tenant, campaign, routing_domain) return 42 end)
"#;

/// A struct with the same four keys as the benchmark table, all plain
/// strings: the floor of mlua's deserializer for this table.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct FourStrings {
    egress_pool: String,
    retry_interval: String,
    max_retry_interval: String,
    max_age: String,
}

fn queue_args(lua: &Lua) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        "example.com".into_lua(lua)?,
        "tenant-a".into_lua(lua)?,
        Value::Nil,
        Value::Nil,
    ]))
}

#[derive(Clone, Copy)]
enum Variant {
    /// `has_handler`: checkout, one handler-table lookup, checkin.
    PoolOnly,
    /// Handler called with 4 arguments, returns nothing.
    EmptyHandler,
    /// Handler returns a number, converted to i64.
    NumberHandler,
    /// The real thing minus the conversion: returns the userdata.
    ConstructorNoConvert,
    /// The real thing: `make_queue_config` and conversion to `QueueConfig`.
    Full,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::PoolOnly => "pool checkout + handler lookup + checkin",
            Variant::EmptyHandler => "dispatch, handler returns nothing",
            Variant::NumberHandler => "dispatch, handler returns 42",
            Variant::ConstructorNoConvert => "dispatch, make_queue_config, no convert",
            Variant::Full => "dispatch, make_queue_config -> QueueConfig",
        }
    }
}

async fn one_call(engine: &PolicyEngine, variant: Variant) {
    match variant {
        Variant::PoolOnly => {
            let found = engine.has_handler("get_queue_config").await.unwrap();
            assert!(found);
        }
        Variant::EmptyHandler => {
            let r = engine
                .dispatch("bench_nothing", queue_args, |_, _| Ok(()))
                .await
                .unwrap();
            assert!(r.is_none());
        }
        Variant::NumberHandler => {
            let r = engine
                .dispatch("bench_number", queue_args, |_, values| {
                    Ok(values.into_iter().next().and_then(|v| v.as_i64()))
                })
                .await
                .unwrap();
            assert_eq!(r, Some(Some(42)));
        }
        Variant::ConstructorNoConvert => {
            let r = engine
                .dispatch("get_queue_config", queue_args, |_, values| Ok(values.len()))
                .await
                .unwrap();
            assert_eq!(r, Some(1));
        }
        Variant::Full => {
            let config = engine
                .dispatch("get_queue_config", queue_args, |_, values| {
                    first_config(values, queue_config_from_lua)
                })
                .await
                .unwrap()
                .flatten()
                .unwrap();
            assert_eq!(config.retry_interval, Duration::from_secs(300));
        }
    }
}

/// Run `threads` tasks on a runtime with `threads` workers for `duration`;
/// returns total calls.
fn run(engine: &PolicyEngine, variant: Variant, threads: usize, duration: Duration) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Warm the pool so that every task finds a ready state.
        for _ in 0..threads * 2 {
            one_call(engine, variant).await;
        }
        let deadline = Instant::now() + duration;
        let tasks: Vec<_> = (0..threads)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let mut calls = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..256 {
                            one_call(&engine, variant).await;
                        }
                        calls += 256;
                    }
                    calls
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    })
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let duration = Duration::from_secs_f64(seconds);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.lua");
    std::fs::write(&path, POLICY).unwrap();
    let mut options = EngineOptions::new(path);
    options.registrars.push(Arc::new(QueueLuaRegistrar));
    let engine = PolicyEngine::new(options);

    println!(
        "{} s per run; states are retired after 1024 uses, so ~1 in 1024 calls loads the policy",
        seconds
    );
    println!(
        "{:<44} {:>7} {:>12} {:>10} {:>14}",
        "variant", "threads", "calls/s", "µs/call", "calls/s/thread"
    );
    for variant in [
        Variant::PoolOnly,
        Variant::EmptyHandler,
        Variant::NumberHandler,
        Variant::ConstructorNoConvert,
        Variant::Full,
    ] {
        for threads in [1, 2] {
            let start = Instant::now();
            let calls = run(&engine, variant, threads, duration);
            let elapsed = start.elapsed().as_secs_f64();
            let rate = calls as f64 / elapsed;
            // µs of wall time per call per thread (what one call costs a core).
            let micros = elapsed * 1e6 * threads as f64 / calls as f64;
            println!(
                "{:<44} {:>7} {:>12.0} {:>10.2} {:>14.0}",
                variant.label(),
                threads,
                rate,
                micros,
                rate / threads as f64
            );
        }
    }
    println!("Lua states created: {}", engine.states_created());

    // The conversion on its own, in one state.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let lua = runtime.block_on(engine.new_state()).unwrap();
    let make: mlua::Function = lua
        .load(
            "return function() return kumo.make_queue_config { egress_pool = 'pool-1', \
             retry_interval = '5m', max_retry_interval = '2h', max_age = '3 days' } end",
        )
        .eval()
        .unwrap();
    let value: Value = make.call(()).unwrap();
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        let config = queue_config_from_lua(value.clone()).unwrap();
        std::hint::black_box(config);
    }
    let convert = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        let value: Value = make.call(()).unwrap();
        std::hint::black_box(value);
    }
    let construct = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "in one state, no pool: make_queue_config{{4 keys}} called from Lua {construct:.2} µs; \
         userdata -> QueueConfig {convert:.3} µs"
    );

    // The pieces of make_queue_config, timed from Rust on the same table.
    let params: Value = lua
        .load(
            "return { egress_pool = 'pool-1', retry_interval = '5m', \
             max_retry_interval = '2h', max_age = '3 days' }",
        )
        .eval()
        .unwrap();
    let time = |label: &str, f: &dyn Fn()| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("  {label:<52} {micros:>7.3} µs");
    };
    time("tern_policy::from_lua_params::<QueueConfig>", &|| {
        let c: QueueConfig = from_lua_params(&lua, params.clone(), "f").unwrap();
        std::hint::black_box(c);
    });
    time("  of which lua_to_json (for the error text)", &|| {
        std::hint::black_box(lua_to_json(&lua, params.clone()).unwrap());
    });
    time("  of which mlua from_value -> QueueConfig", &|| {
        let c: QueueConfig = lua.from_value(params.clone()).unwrap();
        std::hint::black_box(c);
    });
    time("    of which 3 humantime duration parses", &|| {
        for text in ["5m", "2h", "3 days"] {
            std::hint::black_box(tern_types::parse_duration(text).unwrap());
        }
    });
    time("  (compare: mlua from_value -> 4 String fields)", &|| {
        let c: FourStrings = lua.from_value(params.clone()).unwrap();
        std::hint::black_box(c);
    });
    time("QueueConfig::validate", &|| {
        let config = std::hint::black_box(QueueConfig::default());
        assert!(config.validate().is_ok());
    });
    time("create_userdata(LuaQueueConfig)", &|| {
        let ud = lua
            .create_userdata(LuaQueueConfig(QueueConfig::default()))
            .unwrap();
        std::hint::black_box(ud);
    });
    let empty: mlua::Function = lua.load("return function() end").eval().unwrap();
    time("empty Lua function call from Rust", &|| {
        empty.call::<()>(()).unwrap();
    });
    let gc_start = Instant::now();
    lua.gc_collect().unwrap();
    println!(
        "  one full gc_collect after the runs: {:?}",
        gc_start.elapsed()
    );
}
