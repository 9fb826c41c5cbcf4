//! The policy crate turns the Lua tables that handlers return into these
//! config structs with mlua's serde support. These tests run real Lua
//! table constructors through that path, so Lua-specific shapes (integer
//! versus float numbers, empty tables, `['end']` keys, enum tables) are
//! covered, not just JSON.

use mlua::{Lua, LuaSerdeExt};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tern_queue::config::{DeliveryProtocol, SuspendTrigger, Tls};
use tern_queue::{EgressPathConfig, EgressPool, EgressSource, QueueConfig, Scheduling};

fn from_lua<T: DeserializeOwned>(source: &str) -> Result<T, String> {
    let lua = Lua::new();
    let value: mlua::Value = lua
        .load(format!("return {source}"))
        .eval()
        .map_err(|e| e.to_string())?;
    lua.from_value(value).map_err(|e| e.to_string())
}

#[test]
fn queue_config_from_lua() {
    let config: QueueConfig = from_lua(
        r#"{
            egress_pool = 'pool-a',
            retry_interval = '5 minutes',
            max_retry_interval = 3600,
            max_age = 86400.5,
            max_message_rate = '1,000/hr',
            protocol = { smtp = { mx_list = { 'mx.example.com', { name = 'b', addr = '10.0.0.1:2525' } } } },
            shrink_policy = { { interval = '0 s', policy = 'ShrinkData' } },
        }"#,
    )
    .unwrap();
    assert_eq!(config.retry_interval, Duration::from_secs(300));
    assert_eq!(config.max_retry_interval, Some(Duration::from_secs(3600)));
    assert_eq!(config.max_age, Duration::from_millis(86_400_500));
    let DeliveryProtocol::Smtp(smtp) = &config.protocol else {
        panic!("{:?}", config.protocol)
    };
    assert_eq!(smtp.mx_list[1].label(), "10.0.0.1:2525");

    let empty: QueueConfig = from_lua("{ protocol = { smtp = { mx_list = {} } } }").unwrap();
    assert_eq!(empty, QueueConfig::default());
    let empty: QueueConfig = from_lua("{}").unwrap();
    assert_eq!(empty, QueueConfig::default());

    let maildir: QueueConfig =
        from_lua("{ protocol = { maildir_path = '/tmp/m', dir_mode = tonumber('775', 8) } }")
            .unwrap();
    let DeliveryProtocol::Maildir(maildir) = maildir.protocol else {
        panic!("expected maildir")
    };
    assert_eq!(maildir.dir_mode, Some(0o775));

    let err = from_lua::<QueueConfig>("{ retry = 5 }").unwrap_err();
    assert!(err.contains("retry"), "{err}");
}

#[test]
fn egress_path_from_lua() {
    let config: EgressPathConfig = from_lua(
        r#"{
            connection_limit = 10,
            additional_connection_limits = { global = '1,000' },
            enable_tls = 'Required',
            prohibited_hosts = {},
            skip_hosts = { '192.0.2.0/24' },
            idle_timeout = '60s',
            smtp_auth_plain_username = 'user',
            smtp_auth_plain_password = { key_data = 'pw' },
            additional_message_rate_throttles = {},
        }"#,
    )
    .unwrap();
    assert_eq!(config.connection_limit.limit, 10);
    assert_eq!(config.additional_connection_limits["global"].limit, 1000);
    assert_eq!(config.enable_tls, Tls::Required);
    assert!(config.prohibited_hosts.is_empty());
    assert_eq!(config.idle_timeout, Duration::from_secs(60));
    assert!(config.validate().is_ok());

    let err = from_lua::<EgressPathConfig>("{ enable_tls = 'Sometimes' }").unwrap_err();
    assert!(err.contains("Sometimes"), "{err}");
}

#[test]
fn sources_and_pools_from_lua() {
    let source: EgressSource = from_lua(
        r#"{
            name = 'ip-1',
            source_address = '10.0.0.1',
            suspend_when_unplumbed = { trigger = { Threshold = '3/1m' }, duration = '5m' },
        }"#,
    )
    .unwrap();
    let rule = source.suspend_when_unplumbed.unwrap();
    assert!(matches!(rule.trigger, SuspendTrigger::Threshold(_)));
    assert_eq!(rule.duration, Duration::from_secs(300));

    let pool: EgressPool =
        from_lua("{ name = 'p', entries = { { name = 'ip-1' }, { name = 'ip-2', weight = 2 } } }")
            .unwrap();
    assert_eq!(pool.weights(), vec![1, 2]);
}

#[test]
fn scheduling_from_lua() {
    let sched: Scheduling = from_lua(
        r#"{
            dow = 'Mon,Wed',
            tz = 'America/Phoenix',
            start = '09:00:00',
            ['end'] = '17:00:00',
            first_attempt = '2030-03-01T17:00:00-08:00',
        }"#,
    )
    .unwrap();
    assert!(sched.window.is_some() && sched.first_attempt.is_some());
    let err = from_lua::<Scheduling>("{ dow = 'Mon' }").unwrap_err();
    assert!(err.contains("all four"), "{err}");
}
