//! `kumo.dns.*` seen from a policy file: the bindings are installed through
//! the policy engine, configured in `init`, and queried from event handlers
//! against in-memory test zones (no sockets).

use mlua::{Lua, MultiValue};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_dns::{DnsHandle, DnsRegistrar, MxResolver, MxSettings, TestResolverParams};
use tern_policy::engine::dispatch_in;
use tern_policy::{EngineOptions, PolicyEngine, PolicyError, lua_to_json};

const ZONES: &str = r#"
local ZONE = [[
$ORIGIN example.com.
@        600 MX 20 Backup.Example.com.
@        600 MX 10 mx2.example.com.
@        600 MX 10 MX1.example.com.
@        600 TXT "v=spf1 " "-all"
mx1      300 A    192.0.2.1
mx2      300 A    192.0.2.2
mx2      300 AAAA 2001:db8::2
backup   300 A    192.0.2.3

$ORIGIN example.net.
@        300 A    192.0.2.10

$ORIGIN 2.0.192.in-addr.arpa.
1        300 PTR  mx1.example.com.

$ORIGIN bl.example.
2.0.0.127 300 A   127.0.0.2
2.0.0.127 300 TXT "Listed: see https://bl.example/127.0.0.2"
3.0.0.127 300 A   127.0.0.3
]]
"#;

struct Policy {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handle: DnsHandle,
}

/// A handle whose default resolver answers nothing useful, so a test can
/// tell whether the policy's configuration took effect.
fn empty_handle() -> DnsHandle {
    let resolver = TestResolverParams::default().build().unwrap();
    DnsHandle::new(MxResolver::new(Arc::new(resolver), MxSettings::default()))
}

fn policy(body: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.lua");
    std::fs::write(
        &path,
        format!("local kumo = require 'kumo'\n{ZONES}\n{body}"),
    )
    .unwrap();
    Policy {
        _dir: dir,
        path,
        handle: empty_handle(),
    }
}

impl Policy {
    fn engine(&self) -> PolicyEngine {
        let mut options = EngineOptions::new(&self.path);
        options.package_dirs.clear();
        options
            .registrars
            .push(Arc::new(DnsRegistrar::new(self.handle.clone())));
        PolicyEngine::new(options)
    }

    /// Load the policy into a fresh state and run `pre_init` and `init` there.
    async fn start(&self) -> Result<Lua, PolicyError> {
        let lua = self.engine().new_state().await?;
        for event in ["pre_init", "init"] {
            dispatch_in(&lua, event, no_args, |_, _| Ok(())).await?;
        }
        Ok(lua)
    }
}

fn no_args(_: &Lua) -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

/// Dispatch `event` and return its first result as JSON.
async fn call(lua: &Lua, event: &str) -> Result<Value, PolicyError> {
    let value = dispatch_in(lua, event, no_args, |lua, values| {
        lua_to_json(lua, values.into_iter().next().unwrap_or(mlua::Value::Nil))
    })
    .await?;
    Ok(value.unwrap_or(Value::Null))
}

const INIT_WITH_ZONES: &str = r#"
kumo.on('init', function()
  kumo.dns.configure_test_resolver { ZONE }
end)
"#;

#[tokio::test]
async fn lookup_mx_returns_the_documented_table() {
    let policy = policy(&format!(
        "{INIT_WITH_ZONES}\n{}",
        r#"
kumo.on('check', function()
  local mx = kumo.dns.lookup_mx 'Example.COM'
  return {
    domain_name = mx.domain_name,
    hosts = mx.hosts,
    site_name = mx.site_name,
    pref10 = table.concat(mx.by_pref[10], ','),
    pref20 = table.concat(mx.by_pref[20], ','),
    pref_string_key = mx.by_pref['10'] == nil,
    is_domain_literal = mx.is_domain_literal,
    is_secure = mx.is_secure,
    is_mx = mx.is_mx,
    mta_sts = mx.mta_sts,
  }
end)
"#
    ));
    let lua = policy.start().await.unwrap();
    assert_eq!(
        call(&lua, "check").await.unwrap(),
        json!({
            "domain_name": "example.com.",
            "hosts": ["mx1.example.com.", "mx2.example.com.", "backup.example.com."],
            "site_name": "(mx1|mx2|backup).example.com",
            "pref10": "mx1.example.com.,mx2.example.com.",
            "pref20": "backup.example.com.",
            "pref_string_key": true,
            "is_domain_literal": false,
            "is_secure": false,
            "is_mx": true,
            "mta_sts": "None",
        })
    );
}

#[tokio::test]
async fn implicit_mx_literal_and_nxdomain() {
    let policy = policy(&format!(
        "{INIT_WITH_ZONES}\n{}",
        r#"
kumo.on('implicit', function()
  local mx = kumo.dns.lookup_mx 'example.net'
  return { hosts = mx.hosts, site_name = mx.site_name, is_mx = mx.is_mx,
           pref1 = mx.by_pref[1][1] }
end)
kumo.on('literal', function()
  local mx = kumo.dns.lookup_mx '[192.0.2.7]'
  return { site_name = mx.site_name, is_domain_literal = mx.is_domain_literal }
end)
kumo.on('missing', function()
  local ok, err = pcall(kumo.dns.lookup_mx, 'nope.example')
  return { ok = ok, err = tostring(err) }
end)
"#
    ));
    let lua = policy.start().await.unwrap();
    assert_eq!(
        call(&lua, "implicit").await.unwrap(),
        json!({ "hosts": ["example.net."], "site_name": "example.net", "is_mx": false,
                "pref1": "example.net." })
    );
    assert_eq!(
        call(&lua, "literal").await.unwrap(),
        json!({ "site_name": "192.0.2.7", "is_domain_literal": true })
    );
    let missing = call(&lua, "missing").await.unwrap();
    assert_eq!(missing["ok"], json!(false));
    let err = missing["err"].as_str().unwrap();
    assert!(
        err.contains("lookup_mx('nope.example')") && err.contains("NXDOMAIN"),
        "{err}"
    );
}

#[tokio::test]
async fn address_txt_and_ptr_lookups() {
    let policy = policy(&format!(
        "{INIT_WITH_ZONES}\n{}",
        r#"
kumo.on('check', function()
  local ok, err = pcall(kumo.dns.lookup_addr, 'nope.example.com')
  return {
    mx2 = kumo.dns.lookup_addr 'mx2.example.com',
    mx1 = kumo.dns.lookup_addr 'mx1.example.com',
    mx2_v6 = kumo.dns.lookup_addr('mx2.example.com', nil, 'Ipv6Only'),
    mx1_v6_then_v4 = kumo.dns.lookup_addr('mx1.example.com', nil, 'Ipv6ThenIpv4'),
    bad_strategy = tostring(select(2, pcall(kumo.dns.lookup_addr, 'mx1.example.com', nil, 'Ipv5'))),
    txt = kumo.dns.lookup_txt 'example.com',
    no_txt = #kumo.dns.lookup_txt 'mx1.example.com',
    ptr = kumo.dns.lookup_ptr '192.0.2.1',
    missing_ok = ok,
    missing_err = tostring(err),
  }
end)
"#
    ));
    let lua = policy.start().await.unwrap();
    let result = call(&lua, "check").await.unwrap();
    assert_eq!(result["mx2"], json!(["192.0.2.2", "2001:db8::2"]));
    assert_eq!(result["mx1"], json!(["192.0.2.1"]));
    assert_eq!(result["mx2_v6"], json!(["2001:db8::2"]));
    assert_eq!(result["mx1_v6_then_v4"], json!(["192.0.2.1"]));
    assert!(
        result["bad_strategy"].as_str().unwrap().contains("Ipv5"),
        "{result}"
    );
    assert_eq!(result["txt"], json!(["v=spf1 -all"]));
    assert_eq!(result["no_txt"], json!(0), "NODATA is an empty list");
    assert_eq!(result["ptr"], json!(["mx1.example.com."]));
    assert_eq!(result["missing_ok"], json!(false));
    assert!(
        result["missing_err"]
            .as_str()
            .unwrap()
            .contains("nope.example.com"),
        "{result}"
    );
}

#[tokio::test]
async fn rbl_lookup_and_string_helpers() {
    let policy = policy(&format!(
        "{INIT_WITH_ZONES}\n{}",
        r#"
kumo.on('check', function()
  local listed, reason = kumo.dns.rbl_lookup('127.0.0.2', 'bl.example')
  local no_reason_ip, no_reason = kumo.dns.rbl_lookup('127.0.0.3:25', 'bl.example.')
  local clean, clean_reason = kumo.dns.rbl_lookup('10.9.8.7', 'bl.example')
  local ok, err = pcall(kumo.dns.rbl_lookup, 'not-an-ip', 'bl.example')
  return {
    listed = listed, reason = reason,
    no_reason_ip = no_reason_ip, no_reason = no_reason == nil,
    clean = clean == nil and clean_reason == nil,
    bad_ok = ok, bad_err = tostring(err),
    reverse = kumo.dns.reverse_ip '192.0.2.1',
    ptr_host = kumo.dns.ptr_host '192.0.2.1',
    ptr_host6 = kumo.dns.ptr_host '::1',
  }
end)
"#
    ));
    let lua = policy.start().await.unwrap();
    let result = call(&lua, "check").await.unwrap();
    assert_eq!(result["listed"], json!("127.0.0.2"));
    assert_eq!(
        result["reason"],
        json!("Listed: see https://bl.example/127.0.0.2")
    );
    assert_eq!(result["no_reason_ip"], json!("127.0.0.3"));
    assert_eq!(result["no_reason"], json!(true));
    assert_eq!(result["clean"], json!(true));
    assert_eq!(result["bad_ok"], json!(false));
    assert!(
        result["bad_err"].as_str().unwrap().contains("not-an-ip"),
        "{result}"
    );
    assert_eq!(result["reverse"], json!("1.2.0.192"));
    assert_eq!(result["ptr_host"], json!("1.2.0.192.in-addr.arpa"));
    assert_eq!(
        result["ptr_host6"],
        json!(format!("1{}.ip6.arpa", ".0".repeat(31)))
    );
}

#[tokio::test]
async fn named_resolvers_are_separate_from_the_default() {
    let policy = policy(
        r#"
kumo.on('init', function()
  kumo.dns.define_resolver('rbl', { Test = { zones = { ZONE } } })
end)
kumo.on('check', function()
  local listed = kumo.dns.rbl_lookup('127.0.0.2', 'bl.example', 'rbl')
  local mx = kumo.dns.lookup_mx('example.com', 'rbl')
  local default_ok = pcall(kumo.dns.lookup_mx, 'example.com')
  local unknown_ok, unknown_err = pcall(kumo.dns.lookup_addr, 'mx1.example.com', 'nope')
  return {
    listed = listed,
    site = mx.site_name,
    addr = kumo.dns.lookup_addr('mx1.example.com', 'rbl'),
    default_ok = default_ok,
    unknown_ok = unknown_ok,
    unknown_err = tostring(unknown_err),
  }
end)
"#,
    );
    let lua = policy.start().await.unwrap();
    let result = call(&lua, "check").await.unwrap();
    assert_eq!(result["listed"], json!("127.0.0.2"));
    assert_eq!(result["site"], json!("(mx1|mx2|backup).example.com"));
    assert_eq!(result["addr"], json!(["192.0.2.1"]));
    assert_eq!(result["default_ok"], json!(false), "default is still empty");
    assert_eq!(result["unknown_ok"], json!(false));
    assert!(
        result["unknown_err"]
            .as_str()
            .unwrap()
            .contains("no resolver named 'nope'"),
        "{result}"
    );
    assert!(policy.handle.named("rbl").is_some());
}

#[tokio::test]
async fn configuration_reaches_the_handle_and_other_states() {
    let policy = policy(
        r#"
kumo.on('pre_init', function()
  kumo.dns.set_mx_timeout '7s'
  kumo.dns.set_mx_concurrency_limit(3)
  kumo.dns.set_mx_negative_cache_ttl(600)
  kumo.dns.set_mx_transient_negative_cache_ttl '1m'
  kumo.dns.set_mta_sts_enabled(false)
end)
kumo.on('init', function()
  -- The structured form goes through configure_resolver as well.
  kumo.dns.configure_resolver { Test = { zones = { ZONE } } }
end)
kumo.on('check', function()
  return kumo.dns.lookup_mx('example.com').site_name
end)
"#,
    );
    let _init_state = policy.start().await.unwrap();
    let current = policy.handle.current();
    let settings = current.settings();
    assert_eq!(settings.timeout, Duration::from_secs(7));
    assert_eq!(settings.concurrency_limit, 3);
    assert_eq!(settings.negative_cache_ttl, Duration::from_secs(600));
    assert_eq!(
        settings.transient_negative_cache_ttl,
        Duration::from_secs(60)
    );
    assert!(!policy.handle.mta_sts_enabled());
    // The server's view of the resolver.
    let mx = current.lookup_mx("example.com").await.unwrap();
    assert_eq!(mx.site_name, "(mx1|mx2|backup).example.com");
    // A state created later (no init there) uses the same handle.
    let other = policy.engine().new_state().await.unwrap();
    assert_eq!(
        call(&other, "check").await.unwrap(),
        json!("(mx1|mx2|backup).example.com")
    );
}

#[tokio::test]
async fn configuration_outside_init_is_an_error() {
    let policy = policy(
        r#"
kumo.on('check', function()
  local calls = {
    configure_resolver = function() kumo.dns.configure_resolver { Test = { zones = { ZONE } } } end,
    configure_test_resolver = function() kumo.dns.configure_test_resolver { ZONE } end,
    define_resolver = function() kumo.dns.define_resolver('x', { Test = { zones = { ZONE } } }) end,
    set_mx_timeout = function() kumo.dns.set_mx_timeout '5s' end,
    set_mta_sts_enabled = function() kumo.dns.set_mta_sts_enabled(false) end,
  }
  local results = {}
  for name, f in pairs(calls) do
    local ok, err = pcall(f)
    results[name] = tostring(err)
  end
  return results
end)
"#,
    );
    let lua = policy.start().await.unwrap();
    let result = call(&lua, "check").await.unwrap();
    for name in [
        "configure_resolver",
        "configure_test_resolver",
        "define_resolver",
        "set_mx_timeout",
        "set_mta_sts_enabled",
    ] {
        let err = result[name].as_str().unwrap();
        assert!(
            err.contains(&format!(
                "kumo.dns.{name} may only be called from the init event"
            )) && err.contains("'check'"),
            "{name}: {err}"
        );
    }
    // Nothing was replaced or defined.
    assert!(
        policy
            .handle
            .current()
            .lookup_mx("example.com")
            .await
            .is_err()
    );
    assert!(policy.handle.named("x").is_none());
    assert!(policy.handle.mta_sts_enabled());

    let top_level = self::policy("kumo.dns.configure_test_resolver { ZONE }\n");
    let err = top_level
        .engine()
        .new_state()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not at the top level"), "{err}");
}

#[tokio::test]
async fn unknown_keys_and_bad_values_name_the_problem() {
    for (call_text, expected) in [
        (
            "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' }, bogus = 1 }",
            "bogus",
        ),
        (
            "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' }, options = { ndot = 1 } }",
            "ndot",
        ),
        (
            "kumo.dns.configure_test_resolver { zone = { ZONE } }",
            "zone",
        ),
        (
            "kumo.dns.define_resolver('x', { Unbound = { name_servers = { '127.0.0.1:53' } } })",
            "not supported by Tern yet",
        ),
        (
            "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:53' }, options = { validate = true } }",
            "validate is not supported by Tern yet",
        ),
        ("kumo.dns.set_mx_timeout 'soon'", "soon"),
        ("kumo.dns.set_mx_concurrency_limit(0)", "at least 1"),
        (
            "kumo.dns.configure_unbound_resolver {}",
            "not supported by Tern yet",
        ),
    ] {
        let policy = policy(&format!("kumo.on('init', function() {call_text} end)\n"));
        let err = policy.start().await.unwrap_err().to_string();
        assert!(err.contains(expected), "{call_text}: {err}");
    }
}

#[tokio::test]
async fn load_resolv_conf_feeds_configure_resolver() {
    let policy = policy(
        r#"
kumo.on('init', function()
  local cfg = kumo.dns.load_resolv_conf(RESOLV_CONF)
  cfg.options.positive_max_ttl = '1h'
  kumo.dns.configure_resolver(cfg)
  LOADED = cfg
end)
kumo.on('check', function() return LOADED end)
"#,
    );
    let conf = policy._dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\nsearch corp.example\noptions ndots:2 timeout:1\n",
    )
    .unwrap();
    let lua = policy.engine().new_state().await.unwrap();
    lua.globals()
        .set("RESOLV_CONF", conf.display().to_string())
        .unwrap();
    dispatch_in(&lua, "init", no_args, |_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(
        call(&lua, "check").await.unwrap(),
        json!({
            "name_servers": ["127.0.0.1:53"],
            "search": ["corp.example"],
            "options": { "ndots": 2, "timeout": 1, "positive_max_ttl": "1h" }
        })
    );
    assert!(matches!(
        **policy.handle.current().resolver(),
        tern_dns::Resolver::Hickory(_)
    ));
    let missing = self::policy(
        "kumo.on('init', function() kumo.dns.load_resolv_conf '/nonexistent/resolv.conf' end)\n",
    );
    let err = missing.start().await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/resolv.conf"), "{err}");
}
