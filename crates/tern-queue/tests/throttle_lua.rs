//! `kumo.make_throttle` seen from a policy: the `throttle()` figures, one
//! state shared by objects of the same name across pooled Lua states,
//! `sleep_if_throttled`, `explain`, and a clear error for a bad spec.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_policy::{EngineOptions, PolicyEngine};
use tern_queue::{ThrottleLuaRegistrar, Throttles};

fn engine(dir: &tempfile::TempDir, policy: &str, registry: &Arc<Throttles>) -> PolicyEngine {
    let path: PathBuf = dir.path().join("init.lua");
    std::fs::write(&path, format!("local kumo = require 'kumo'\n{policy}")).unwrap();
    let mut options = EngineOptions::new(path);
    options
        .registrars
        .push(Arc::new(ThrottleLuaRegistrar::new(registry.clone())));
    PolicyEngine::new(options)
}

async fn call(engine: &PolicyEngine, event: &str) -> String {
    engine
        .dispatch(
            event,
            |_| Ok(mlua::MultiValue::new()),
            |_, values| Ok(format!("{:?}", values.into_iter().collect::<Vec<_>>())),
        )
        .await
        .unwrap()
        .unwrap_or_default()
}

#[tokio::test]
async fn throttle_reports_and_counts_per_name() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Throttles::new());
    let engine = engine(
        &dir,
        r#"
kumo.on('check', function()
  local r = kumo.make_throttle('per-tenant-a', '3/minute'):throttle()
  return string.format('%s %d %d %s %s', tostring(r.throttled), r.limit, r.remaining,
    tostring(r.retry_after ~= nil), tostring(r.reset_after > 0))
end)
kumo.on('other', function()
  local r = kumo.make_throttle('per-tenant-b', '3/minute'):throttle()
  return tostring(r.throttled)
end)
kumo.on('explain', function()
  return kumo.make_throttle('x', '60/minute,max_burst=1'):explain()
end)
"#,
        &registry,
    );
    assert!(
        call(&engine, "check")
            .await
            .contains("false 3 2 false true")
    );
    assert!(
        call(&engine, "check")
            .await
            .contains("false 3 1 false true")
    );
    assert!(
        call(&engine, "check")
            .await
            .contains("false 3 0 false true")
    );
    // The fourth is refused, with a retry time, and not counted.
    assert!(call(&engine, "check").await.contains("true 3 0 true true"));
    // Another name is another throttle.
    assert!(call(&engine, "other").await.contains("false"));
    let explained = call(&engine, "explain").await;
    assert!(
        explained.contains("lua-user-throttle-x") && explained.contains("60/minute"),
        "{explained}"
    );
    assert_eq!(registry.local().len(), 2, "explain() does not count");
}

#[tokio::test]
async fn sleep_if_throttled_waits_for_the_next_slot() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Throttles::new());
    let engine = engine(
        &dir,
        r#"
kumo.on('wait', function()
  return tostring(kumo.make_throttle('pace', '5/s,max_burst=1'):sleep_if_throttled())
end)
kumo.on('bad', function()
  return kumo.make_throttle('bad', 'lots/minute')
end)
"#,
        &registry,
    );
    let start = Instant::now();
    assert!(
        call(&engine, "wait").await.contains("false"),
        "first passes"
    );
    assert!(call(&engine, "wait").await.contains("true"), "second waits");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(180), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");

    let err = engine
        .dispatch("bad", |_| Ok(mlua::MultiValue::new()), |_, _| Ok(()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kumo.make_throttle") && err.contains("lots/minute"),
        "{err}"
    );
}
