//! The `kumo.dns.*` Lua bindings: a thin layer over [`MxResolver`] and
//! [`Resolver`].
//!
//! The server builds one [`DnsHandle`] at startup (normally
//! [`DnsHandle::system`]), hands a clone to [`DnsRegistrar`], and registers
//! that with the policy engine. The policy's `init` (or `pre_init`) handler
//! then reconfigures DNS through the handle: `configure_resolver`,
//! `configure_test_resolver`, `define_resolver` and the `set_mx_*` knobs
//! replace the resolver stored in the handle, and the queue/delivery code
//! picks up the result with [`DnsHandle::current`]. Nothing is global: two
//! servers in one process (as in tests) have two handles.
//!
//! Lookups (`lookup_mx`, `lookup_addr`, `lookup_txt`, `lookup_ptr`,
//! `rbl_lookup`) are async Lua functions, so a policy waiting on DNS does not
//! block a runtime thread. They take an optional resolver name that selects
//! a resolver defined with `define_resolver`. A name that does not exist
//! (NXDOMAIN) raises a Lua error naming the domain; a name that exists but
//! has no records of the asked type gives an empty list. `lookup_addr` also
//! takes an optional third argument, the `ip_lookup_strategy` name
//! (`"Ipv4AndIpv6"` by default).
//!
//! Not provided (each raises "kumo.dns.<name> is not supported by Tern yet"
//! through the namespace's metatable): `configure_unbound_resolver`,
//! `configure_test_mta_sts`.

use crate::DnsConfig;
use crate::config::{ResolverSpec, TestResolverParams};
use crate::error::DnsError;
use crate::mx::{MailExchanger, MtaStsMode, MxResolver, MxSettings};
use crate::resolver::{IpLookupStrategy, Resolver};
use mlua::{Lua, Table, Value};
use parking_lot::RwLock;
use serde_json::{Map, Value as JsonValue};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tern_policy::events::current_event;
use tern_policy::{LuaRegistrar, from_lua_params, json_to_lua};
use tern_types::DurationSpec;

/// Events in which the policy may (re)configure DNS. `main` is the
/// `--script` mode entry point, which plays the role of `init` there.
const STARTUP_EVENTS: &[&str] = &["pre_init", "init", "main"];

struct HandleInner {
    /// The default resolver with its MX layer (cache, limits, settings).
    default: RwLock<Arc<MxResolver>>,
    /// Resolvers from `define_resolver`, each with its own MX layer.
    named: RwLock<HashMap<String, Arc<MxResolver>>>,
    /// `set_mta_sts_enabled`; recorded only, Tern does not fetch MTA-STS yet.
    mta_sts_enabled: AtomicBool,
}

/// The process's DNS state, shared by the policy bindings and the server.
/// Cloning is cheap; all clones see the same resolvers.
#[derive(Clone)]
pub struct DnsHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for DnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.inner.named.read().keys().cloned().collect();
        names.sort();
        f.debug_struct("DnsHandle")
            .field("default", &*self.inner.default.read())
            .field("named", &names)
            .finish()
    }
}

impl DnsHandle {
    /// A handle whose default resolver is `resolver`.
    pub fn new(resolver: MxResolver) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                default: RwLock::new(Arc::new(resolver)),
                named: RwLock::new(HashMap::new()),
                mta_sts_enabled: AtomicBool::new(true),
            }),
        }
    }

    /// A handle built from a [`DnsConfig`].
    pub fn from_config(config: &DnsConfig) -> Result<Self, DnsError> {
        Ok(Self::new(config.build()?))
    }

    /// The upstream default: hickory configured from `/etc/resolv.conf`.
    pub fn system() -> Result<Self, DnsError> {
        Self::from_config(&DnsConfig::default())
    }

    /// The default resolver as it is now. Callers keep the `Arc` for one
    /// unit of work; a later reconfiguration does not affect it.
    pub fn current(&self) -> Arc<MxResolver> {
        self.inner.default.read().clone()
    }

    /// The resolver defined as `name` with `define_resolver`.
    pub fn named(&self, name: &str) -> Option<Arc<MxResolver>> {
        self.inner.named.read().get(name).cloned()
    }

    /// The named resolver, or the default one for `None`.
    pub fn select(&self, name: Option<&str>) -> Result<Arc<MxResolver>, String> {
        match name {
            None => Ok(self.current()),
            Some(name) => self.named(name).ok_or_else(|| {
                format!("no resolver named '{name}' has been defined with kumo.dns.define_resolver")
            }),
        }
    }

    /// Replace the default resolver, keeping the current MX settings (the
    /// MX cache starts empty).
    pub fn replace_resolver(&self, resolver: Resolver) {
        let mut default = self.inner.default.write();
        let replacement = default.with_resolver(Arc::new(resolver));
        *default = Arc::new(replacement);
    }

    /// Define (or redefine) a named alternate resolver, with the current
    /// MX settings.
    pub fn define(&self, name: &str, resolver: Resolver) {
        // Lock in the same order as `update_settings`, so a concurrent
        // settings change cannot leave this resolver with stale settings.
        let default = self.inner.default.read();
        let mx = Arc::new(MxResolver::new(
            Arc::new(resolver),
            default.settings().clone(),
        ));
        self.inner.named.write().insert(name.to_string(), mx);
    }

    /// The MX settings in effect.
    pub fn settings(&self) -> MxSettings {
        self.inner.default.read().settings().clone()
    }

    /// Change the MX settings of the default and every named resolver
    /// (their MX caches start empty).
    pub fn update_settings(&self, change: impl FnOnce(&mut MxSettings)) {
        let mut default = self.inner.default.write();
        let mut settings = default.settings().clone();
        change(&mut settings);
        *default = Arc::new(MxResolver::new(
            default.resolver().clone(),
            settings.clone(),
        ));
        let mut named = self.inner.named.write();
        for mx in named.values_mut() {
            *mx = Arc::new(MxResolver::new(mx.resolver().clone(), settings.clone()));
        }
    }

    /// What the policy asked with `set_mta_sts_enabled` (default true).
    /// Tern does not fetch or apply MTA-STS policies yet.
    pub fn mta_sts_enabled(&self) -> bool {
        self.inner.mta_sts_enabled.load(Ordering::Relaxed)
    }
}

/// Installs `kumo.dns` in every Lua state of the policy engine.
#[derive(Clone, Debug)]
pub struct DnsRegistrar {
    handle: DnsHandle,
}

impl DnsRegistrar {
    pub fn new(handle: DnsHandle) -> Self {
        Self { handle }
    }

    pub fn handle(&self) -> &DnsHandle {
        &self.handle
    }
}

impl LuaRegistrar for DnsRegistrar {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        let dns = tern_policy::kumo_module::namespace(lua, kumo, "dns")?;
        register_configuration(lua, &dns, &self.handle)?;
        register_lookups(lua, &dns, &self.handle)?;
        register_helpers(lua, &dns)?;
        Ok(())
    }
}

fn runtime(message: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(message.into())
}

/// Configuration changes are only allowed while the server starts up: a
/// change made from a per-message event would apply to one Lua state's
/// whim and reset every cache.
fn require_startup(lua: &Lua, function: &str) -> mlua::Result<()> {
    match current_event(lua) {
        Some(event) if STARTUP_EVENTS.contains(&event.as_str()) => Ok(()),
        Some(event) => Err(runtime(format!(
            "kumo.dns.{function} may only be called from the init event, not from '{event}'"
        ))),
        None => Err(runtime(format!(
            "kumo.dns.{function} may only be called from the init event, \
             not at the top level of the policy"
        ))),
    }
}

fn duration_arg(lua: &Lua, value: Value, function: &str) -> mlua::Result<Duration> {
    from_lua_params::<DurationSpec>(lua, value, &format!("kumo.dns.{function}")).map(|d| d.0)
}

fn register_configuration(lua: &Lua, dns: &Table, handle: &DnsHandle) -> mlua::Result<()> {
    let h = handle.clone();
    dns.raw_set(
        "configure_resolver",
        lua.create_function(move |lua, config: Value| {
            require_startup(lua, "configure_resolver")?;
            let spec: ResolverSpec = from_lua_params(lua, config, "kumo.dns.configure_resolver")?;
            let resolver = spec
                .build()
                .map_err(|err| runtime(format!("kumo.dns.configure_resolver: {err}")))?;
            h.replace_resolver(resolver);
            Ok(())
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "configure_test_resolver",
        lua.create_function(move |lua, zones: Value| {
            require_startup(lua, "configure_test_resolver")?;
            let params: TestResolverParams =
                from_lua_params(lua, zones, "kumo.dns.configure_test_resolver")?;
            let resolver = params
                .build()
                .map_err(|err| runtime(format!("kumo.dns.configure_test_resolver: {err}")))?;
            h.replace_resolver(resolver);
            Ok(())
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "define_resolver",
        lua.create_function(move |lua, (name, config): (String, Value)| {
            require_startup(lua, "define_resolver")?;
            let function = format!("kumo.dns.define_resolver('{name}')");
            let spec: ResolverSpec = from_lua_params(lua, config, &function)?;
            let resolver = spec
                .build()
                .map_err(|err| runtime(format!("{function}: {err}")))?;
            h.define(&name, resolver);
            Ok(())
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "set_mx_concurrency_limit",
        lua.create_function(move |lua, limit: i64| {
            require_startup(lua, "set_mx_concurrency_limit")?;
            let limit = usize::try_from(limit)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    runtime(format!(
                        "kumo.dns.set_mx_concurrency_limit: the limit must be at least 1, got {limit}"
                    ))
                })?;
            h.update_settings(|s| s.concurrency_limit = limit);
            Ok(())
        })?,
    )?;

    type SetDuration = fn(&mut MxSettings, Duration);
    let duration_setters: [(&str, SetDuration); 3] = [
        ("set_mx_timeout", |s, d| s.timeout = d),
        ("set_mx_negative_cache_ttl", |s, d| s.negative_cache_ttl = d),
        ("set_mx_transient_negative_cache_ttl", |s, d| {
            s.transient_negative_cache_ttl = d
        }),
    ];
    for (function, set) in duration_setters {
        let h = handle.clone();
        dns.raw_set(
            function,
            lua.create_function(move |lua, value: Value| {
                require_startup(lua, function)?;
                let duration = duration_arg(lua, value, function)?;
                h.update_settings(|s| set(s, duration));
                Ok(())
            })?,
        )?;
    }

    // Upstream enables MTA-STS by default and policies commonly call this
    // with `true`; Tern does not fetch MTA-STS policies yet, so the value
    // is recorded (see `DnsHandle::mta_sts_enabled`) and has no effect on
    // resolution. `false` therefore matches Tern's behaviour exactly.
    let h = handle.clone();
    dns.raw_set(
        "set_mta_sts_enabled",
        lua.create_function(move |lua, enabled: bool| {
            require_startup(lua, "set_mta_sts_enabled")?;
            h.inner.mta_sts_enabled.store(enabled, Ordering::Relaxed);
            Ok(())
        })?,
    )?;

    dns.raw_set(
        "load_resolv_conf",
        lua.create_function(|lua, path: Option<String>| {
            let path = path.unwrap_or_else(|| "/etc/resolv.conf".to_string());
            let text = std::fs::read_to_string(&path).map_err(|err| {
                runtime(format!("kumo.dns.load_resolv_conf: reading {path}: {err}"))
            })?;
            let config = parse_resolv_conf(&text)
                .map_err(|err| runtime(format!("kumo.dns.load_resolv_conf: {path}: {err}")))?;
            json_to_lua(lua, &config)
        })?,
    )?;
    Ok(())
}

fn lookup_error(function: &str, subject: &str, err: impl std::fmt::Display) -> mlua::Error {
    runtime(format!("kumo.dns.{function}('{subject}'): {err}"))
}

fn register_lookups(lua: &Lua, dns: &Table, handle: &DnsHandle) -> mlua::Result<()> {
    let h = handle.clone();
    dns.raw_set(
        "lookup_mx",
        lua.create_async_function(move |lua, (domain, resolver): (String, Option<String>)| {
            let selected = h.select(resolver.as_deref());
            async move {
                let mx = selected.map_err(|err| lookup_error("lookup_mx", &domain, err))?;
                let answer = mx
                    .lookup_mx(&domain)
                    .await
                    .map_err(|err| lookup_error("lookup_mx", &domain, err))?;
                mail_exchanger_to_lua(&lua, &answer)
            }
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "lookup_addr",
        lua.create_async_function(
            move |lua, (name, resolver, strategy): (String, Option<String>, Option<Value>)| {
                let selected = h.select(resolver.as_deref());
                let strategy = match strategy {
                    None | Some(Value::Nil) => Ok(IpLookupStrategy::default()),
                    Some(value) => from_lua_params::<IpLookupStrategy>(
                        &lua,
                        value,
                        "kumo.dns.lookup_addr: strategy",
                    ),
                };
                async move {
                    let mx = selected.map_err(|err| lookup_error("lookup_addr", &name, err))?;
                    let answer = mx.resolver().resolve_ip(&name, strategy?).await;
                    let addresses = records_or_empty(answer)
                        .map_err(|err| lookup_error("lookup_addr", &name, err))?;
                    Ok(addresses
                        .into_iter()
                        .map(|ip| ip.to_string())
                        .collect::<Vec<_>>())
                }
            },
        )?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "lookup_txt",
        lua.create_async_function(move |_, (name, resolver): (String, Option<String>)| {
            let selected = h.select(resolver.as_deref());
            async move {
                let mx = selected.map_err(|err| lookup_error("lookup_txt", &name, err))?;
                let answer = mx.resolver().resolve_txt(&name).await;
                records_or_empty(answer).map_err(|err| lookup_error("lookup_txt", &name, err))
            }
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "lookup_ptr",
        lua.create_async_function(move |_, (ip, resolver): (String, Option<String>)| {
            let selected = h.select(resolver.as_deref());
            async move {
                let mx = selected.map_err(|err| lookup_error("lookup_ptr", &ip, err))?;
                let addr = parse_ip(&ip).map_err(|err| lookup_error("lookup_ptr", &ip, err))?;
                let answer = mx.resolver().resolve_ptr(addr).await;
                records_or_empty(answer).map_err(|err| lookup_error("lookup_ptr", &ip, err))
            }
        })?,
    )?;

    let h = handle.clone();
    dns.raw_set(
        "rbl_lookup",
        lua.create_async_function(
            move |_, (ip, zone, resolver): (String, String, Option<String>)| {
                let selected = h.select(resolver.as_deref());
                async move {
                    let mx = selected.map_err(|err| lookup_error("rbl_lookup", &ip, err))?;
                    rbl_lookup(mx.resolver(), &ip, &zone)
                        .await
                        .map_err(|err| lookup_error("rbl_lookup", &ip, err))
                }
            },
        )?,
    )?;
    Ok(())
}

fn register_helpers(lua: &Lua, dns: &Table) -> mlua::Result<()> {
    dns.raw_set(
        "reverse_ip",
        lua.create_function(|_, ip: String| {
            parse_ip(&ip)
                .map(reverse_ip)
                .map_err(|err| lookup_error("reverse_ip", &ip, err))
        })?,
    )?;
    dns.raw_set(
        "ptr_host",
        lua.create_function(|_, ip: String| {
            parse_ip(&ip)
                .map(ptr_host)
                .map_err(|err| lookup_error("ptr_host", &ip, err))
        })?,
    )?;
    Ok(())
}

/// NODATA is an empty answer, not an error, for the list-returning lookups.
fn records_or_empty<T>(answer: Result<crate::Answer<T>, DnsError>) -> Result<Vec<T>, DnsError> {
    match answer {
        Ok(answer) => Ok(answer.records),
        Err(err) if err.is_nodata() => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

/// The `lookup_mx` table: `by_pref` has integer keys, `mta_sts` is the
/// mode's name.
fn mail_exchanger_to_lua(lua: &Lua, mx: &MailExchanger) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.raw_set("domain_name", mx.domain_name.as_str())?;
    table.raw_set(
        "hosts",
        lua.create_sequence_from(mx.hosts.iter().map(String::as_str))?,
    )?;
    table.raw_set("site_name", mx.site_name.as_str())?;
    let by_pref = lua.create_table()?;
    for (preference, hosts) in &mx.by_pref {
        by_pref.raw_set(
            *preference,
            lua.create_sequence_from(hosts.iter().map(String::as_str))?,
        )?;
    }
    table.raw_set("by_pref", by_pref)?;
    table.raw_set("is_domain_literal", mx.is_domain_literal)?;
    table.raw_set("is_secure", mx.is_secure)?;
    table.raw_set("is_mx", mx.is_mx)?;
    let mta_sts = match mx.mta_sts {
        MtaStsMode::None => "None",
        MtaStsMode::Testing => "Testing",
        MtaStsMode::Enforce => "Enforce",
    };
    table.raw_set("mta_sts", mta_sts)?;
    Ok(table)
}

/// An IP address as policies pass it: bare, bracketed (`[::1]`), or a
/// socket address with a port (`10.0.0.1:25`, `[::1]:25`).
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let trimmed = text.trim();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(addr.ip());
    }
    if let Some(inner) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Ok(ip);
    }
    Err(format!("'{text}' is not an IP address"))
}

/// The address with its octets (IPv4) or nibbles (IPv6) reversed and
/// joined with dots: `127.0.0.1` → `1.0.0.127`.
pub fn reverse_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut out = String::with_capacity(63);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push(HEX[nibble as usize] as char);
                }
            }
            out
        }
    }
}

/// The reverse-lookup name without trailing dot:
/// `1.0.0.127.in-addr.arpa`, `...ip6.arpa`.
pub fn ptr_host(ip: IpAddr) -> String {
    let suffix = match ip {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    format!("{}.{suffix}", reverse_ip(ip))
}

/// Query `<reversed ip>.<zone>`: the first A record and, if listed, the
/// first TXT record as the reason. Not listed (NXDOMAIN or no A record)
/// gives `(None, None)`; a failing lookup is an error.
pub async fn rbl_lookup(
    resolver: &Resolver,
    ip: &str,
    zone: &str,
) -> Result<(Option<String>, Option<String>), String> {
    let addr = parse_ip(ip)?;
    let zone = zone.trim().trim_end_matches('.');
    if zone.is_empty() {
        return Err("the RBL zone is empty".to_string());
    }
    let name = format!("{}.{zone}", reverse_ip(addr));
    let answer = match resolver.resolve_ip(&name, IpLookupStrategy::Ipv4Only).await {
        Ok(answer) => answer,
        Err(err) if err.is_nxdomain() || err.is_nodata() => return Ok((None, None)),
        Err(err) => return Err(err.to_string()),
    };
    let Some(listed) = answer.records.first() else {
        return Ok((None, None));
    };
    // A listing without a reason is still a listing; a failing TXT lookup
    // must not hide it.
    let reason = match resolver.resolve_txt(&name).await {
        Ok(txt) => txt.records.into_iter().next(),
        Err(_) => None,
    };
    Ok((Some(listed.to_string()), reason))
}

/// Parse `/etc/resolv.conf` text into the `configure_resolver` table shape:
/// `nameserver` → `name_servers` (`"IP:53"`), `domain`, `search`, and the
/// `ndots`, `timeout`, `attempts` and `edns0` options. Other directives and
/// options are ignored, as upstream does.
pub fn parse_resolv_conf(text: &str) -> Result<JsonValue, String> {
    let mut name_servers = Vec::new();
    let mut domain = None;
    let mut search = Vec::new();
    let mut options = Map::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => {
                let address = words
                    .next()
                    .ok_or_else(|| format!("line {}: nameserver without an address", number + 1))?;
                // Scoped IPv6 (`fe80::1%eth0`) has no socket-address form
                // that configure_resolver takes; report it rather than guess.
                let ip: IpAddr = address.parse().map_err(|_| {
                    format!("line {}: '{address}' is not an IP address", number + 1)
                })?;
                name_servers.push(JsonValue::String(SocketAddr::new(ip, 53).to_string()));
            }
            "domain" => domain = words.next().map(str::to_string),
            "search" => search = words.map(str::to_string).collect(),
            "options" => {
                for option in words {
                    let (key, value) = match option.split_once(':') {
                        Some((key, value)) => (key, Some(value)),
                        None => (option, None),
                    };
                    let number_value = || {
                        value.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
                            format!("line {}: option '{option}' needs a number", number + 1)
                        })
                    };
                    match key {
                        "ndots" | "attempts" => {
                            options.insert(key.to_string(), number_value()?.into());
                        }
                        "timeout" => {
                            options.insert("timeout".to_string(), number_value()?.into());
                        }
                        "edns0" => {
                            options.insert("edns0".to_string(), true.into());
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut config = Map::new();
    config.insert("name_servers".to_string(), name_servers.into());
    if let Some(domain) = domain {
        config.insert("domain".to_string(), domain.into());
    }
    config.insert(
        "search".to_string(),
        search.into_iter().map(JsonValue::String).collect(),
    );
    config.insert("options".to_string(), JsonValue::Object(options));
    Ok(JsonValue::Object(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reverse_and_ptr_host() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(reverse_ip(v4), "1.0.0.127");
        assert_eq!(ptr_host(v4), "1.0.0.127.in-addr.arpa");
        let v6: IpAddr = "::1".parse().unwrap();
        let expected = format!("1{}", ".0".repeat(31));
        assert_eq!(reverse_ip(v6), expected);
        assert_eq!(ptr_host(v6), format!("{expected}.ip6.arpa"));
        let v6: IpAddr = "2001:db8::ab".parse().unwrap();
        assert!(reverse_ip(v6).starts_with("b.a.0.0."), "{}", reverse_ip(v6));
        assert!(reverse_ip(v6).ends_with(".8.b.d.0.1.0.0.2"));
        // hickory's PTR name must agree with ours.
        assert_eq!(crate::ptr_name(v6).to_ascii(), format!("{}.", ptr_host(v6)));
    }

    #[test]
    fn ip_forms() {
        for text in ["10.0.0.1", "10.0.0.1:25", " 10.0.0.1 "] {
            assert_eq!(
                parse_ip(text).unwrap(),
                "10.0.0.1".parse::<IpAddr>().unwrap()
            );
        }
        for text in ["::1", "[::1]", "[::1]:25"] {
            assert_eq!(parse_ip(text).unwrap(), "::1".parse::<IpAddr>().unwrap());
        }
        assert!(parse_ip("example.com").unwrap_err().contains("example.com"));
    }

    #[test]
    fn resolv_conf() {
        let parsed = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.1\nnameserver ::1 ; trailing\n\
             domain corp.example\nsearch a.example b.example\n\
             options ndots:2 timeout:3 attempts:4 edns0 rotate trust-ad\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            json!({
                "name_servers": ["10.0.0.1:53", "[::1]:53"],
                "domain": "corp.example",
                "search": ["a.example", "b.example"],
                "options": { "ndots": 2, "timeout": 3, "attempts": 4, "edns0": true }
            })
        );
        // The result is what configure_resolver accepts.
        let spec: ResolverSpec = serde_json::from_value(parsed).unwrap();
        assert!(matches!(spec, ResolverSpec::Hickory(_)));
        assert!(
            parse_resolv_conf("nameserver\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            parse_resolv_conf("options ndots:x\n")
                .unwrap_err()
                .contains("ndots")
        );
    }

    #[test]
    fn handle_settings_survive_resolver_replacement() {
        let zone = "$ORIGIN a.example.\n@ 60 A 127.0.0.1\n";
        let test = || TestResolverParams::from_zones(&[zone]).build().unwrap();
        let handle = DnsHandle::new(MxResolver::new(Arc::new(test()), MxSettings::default()));
        handle.define("alt", test());
        handle.update_settings(|s| s.timeout = Duration::from_secs(9));
        handle.replace_resolver(test());
        assert_eq!(handle.current().settings().timeout, Duration::from_secs(9));
        assert_eq!(
            handle.named("alt").unwrap().settings().timeout,
            Duration::from_secs(9)
        );
        assert!(handle.select(Some("nope")).unwrap_err().contains("nope"));
        assert!(handle.mta_sts_enabled());
    }
}
