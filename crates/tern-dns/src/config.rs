//! Resolver configuration as the policy writes it (spec §10).
//!
//! * [`ResolverConfigParams`] is the `kumo.dns.configure_resolver` table:
//!   `name_servers`, `domain`, `search`, `options`.
//! * [`TestResolverParams`] is the `kumo.dns.configure_test_resolver`
//!   argument: an array of zone strings, or `{ zones = {...}, servfail = {...} }`.
//! * [`ResolverSpec`] is any of the structured forms that
//!   `configure_resolver`/`define_resolver` accept: the plain table above,
//!   `"HickorySystemConfig"`, `{ Hickory = {...} }`, `{ Test = {...} }`,
//!   `{ Aggregate = {...} }` (and `{ Unbound = {...} }`, which is rejected).
//!
//! All of them deserialize with serde, so the policy layer can convert a Lua
//! value straight into them; unknown keys are errors, and options that Tern
//! cannot honour fail with "<key> is not supported by Tern yet" rather than
//! being silently ignored. `build()` turns each into a [`Resolver`].

use crate::error::DnsError;
use crate::resolver::{Resolver, fully_qualify};
use crate::test_resolver::TestResolver;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolveHosts,
    ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use tern_types::DurationSpec;

/// `kumo.dns.configure_resolver { name_servers = {...}, domain = ?, search = ?, options = {...} }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfigParams {
    #[serde(deserialize_with = "list")]
    pub name_servers: Vec<NameServer>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "list")]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: ResolverOptions,
}

/// Transport(s) used to reach one name server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameServerProtocol {
    Udp,
    Tcp,
    /// UDP, retrying over TCP on the same server when a reply is truncated.
    #[default]
    UdpThenTcp,
}

/// One `name_servers` entry: `"IP:PORT"` or
/// `{ socket_addr, protocol, trust_negative_responses, bind_addr }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameServer {
    pub socket_addr: SocketAddr,
    pub protocol: NameServerProtocol,
    /// Accept NXDOMAIN from this server without asking the others.
    pub trust_negative_responses: bool,
    pub bind_addr: Option<SocketAddr>,
}

impl NameServer {
    /// A UDP-then-TCP server at `socket_addr`, as the simple string form gives.
    pub fn new(socket_addr: SocketAddr) -> Self {
        Self {
            socket_addr,
            protocol: NameServerProtocol::UdpThenTcp,
            trust_negative_responses: true,
            bind_addr: None,
        }
    }
}

fn parse_socket_addr(field: &str, text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map_err(|err| format!("{field} '{text}' is not an IP:PORT address: {err}"))
}

impl<'de> Deserialize<'de> for NameServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            socket_addr: String,
            #[serde(default)]
            protocol: NameServerProtocol,
            #[serde(default = "yes")]
            trust_negative_responses: bool,
            #[serde(default)]
            bind_addr: Option<String>,
        }

        struct NameServerVisitor;
        impl<'de> Visitor<'de> for NameServerVisitor {
            type Value = NameServer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an \"IP:PORT\" string or a { socket_addr = \"IP:PORT\", ... } table")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<NameServer, E> {
                parse_socket_addr("name server", text)
                    .map(NameServer::new)
                    .map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NameServer, A::Error> {
                let detailed = Detailed::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let socket_addr = parse_socket_addr("socket_addr", &detailed.socket_addr)
                    .map_err(de::Error::custom)?;
                let bind_addr = detailed
                    .bind_addr
                    .as_deref()
                    .map(|text| parse_socket_addr("bind_addr", text))
                    .transpose()
                    .map_err(de::Error::custom)?;
                Ok(NameServer {
                    socket_addr,
                    protocol: detailed.protocol,
                    trust_negative_responses: detailed.trust_negative_responses,
                    bind_addr,
                })
            }
        }
        deserializer.deserialize_any(NameServerVisitor)
    }
}

fn yes() -> bool {
    true
}

/// `use_hosts_file`: `"Always" | "Auto" | "Never"` (older policies: a boolean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseHostsFile {
    Always,
    Auto,
    Never,
}

impl<'de> Deserialize<'de> for UseHostsFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(Self::Always),
            Raw::Bool(false) => Ok(Self::Never),
            Raw::Text(text) => match text.as_str() {
                "Always" => Ok(Self::Always),
                "Auto" => Ok(Self::Auto),
                "Never" => Ok(Self::Never),
                other => Err(de::Error::custom(format!(
                    "use_hosts_file: unknown value '{other}', expected Always, Auto or Never"
                ))),
            },
        }
    }
}

/// `ip_strategy` option of the hickory resolver (its own dual-stack lookup;
/// MX host resolution uses the egress path's `ip_lookup_strategy` instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ResolverIpStrategy {
    Ipv4Only,
    Ipv6Only,
    Ipv4AndIpv6,
    Ipv6AndIpv4,
    Ipv4thenIpv6,
    Ipv6thenIpv4,
}

/// `server_ordering_strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ServerOrdering {
    QueryStatistics,
    RoundRobin,
    UserProvidedOrder,
}

/// The `options` table. Every key is optional; absent keys keep hickory's
/// defaults (which match the documented KumoMTA defaults).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResolverOptions {
    pub attempts: Option<usize>,
    pub cache_size: Option<u64>,
    pub case_randomization: Option<bool>,
    pub edns0: Option<bool>,
    pub ip_strategy: Option<ResolverIpStrategy>,
    pub ndots: Option<usize>,
    pub negative_max_ttl: Option<DurationSpec>,
    pub negative_min_ttl: Option<DurationSpec>,
    pub num_concurrent_reqs: Option<usize>,
    pub positive_max_ttl: Option<DurationSpec>,
    pub positive_min_ttl: Option<DurationSpec>,
    pub preserve_intermediates: Option<bool>,
    pub recursion_desired: Option<bool>,
    pub server_ordering_strategy: Option<ServerOrdering>,
    pub timeout: Option<DurationSpec>,
    pub trust_anchor_file: Option<String>,
    pub try_tcp_on_error: Option<bool>,
    pub use_hosts_file: Option<UseHostsFile>,
    pub validate: Option<bool>,
}

impl ResolverOptions {
    /// Translate into hickory's options, rejecting what Tern cannot do.
    pub fn to_hickory(&self) -> Result<ResolverOpts, DnsError> {
        // DNSSEC validation needs hickory's dnssec feature and a trust-anchor
        // story that Tern does not have yet.
        if self.validate == Some(true) {
            return Err(not_supported("validate"));
        }
        if self.trust_anchor_file.is_some() {
            return Err(not_supported("trust_anchor_file"));
        }
        let mut opts = ResolverOpts::default();
        if let Some(value) = self.attempts {
            opts.attempts = value;
        }
        if let Some(value) = self.cache_size {
            opts.cache_size = value;
        }
        if let Some(value) = self.case_randomization {
            opts.case_randomization = value;
        }
        if let Some(value) = self.edns0 {
            opts.edns0 = value;
        }
        if let Some(value) = self.ip_strategy {
            opts.ip_strategy = match value {
                ResolverIpStrategy::Ipv4Only => LookupIpStrategy::Ipv4Only,
                ResolverIpStrategy::Ipv6Only => LookupIpStrategy::Ipv6Only,
                ResolverIpStrategy::Ipv4AndIpv6 => LookupIpStrategy::Ipv4AndIpv6,
                ResolverIpStrategy::Ipv6AndIpv4 => LookupIpStrategy::Ipv6AndIpv4,
                ResolverIpStrategy::Ipv4thenIpv6 => LookupIpStrategy::Ipv4thenIpv6,
                ResolverIpStrategy::Ipv6thenIpv4 => LookupIpStrategy::Ipv6thenIpv4,
            };
        }
        if let Some(value) = self.ndots {
            opts.ndots = value;
        }
        opts.negative_max_ttl = self.negative_max_ttl.map(|d| d.0).or(opts.negative_max_ttl);
        opts.negative_min_ttl = self.negative_min_ttl.map(|d| d.0).or(opts.negative_min_ttl);
        opts.positive_max_ttl = self.positive_max_ttl.map(|d| d.0).or(opts.positive_max_ttl);
        opts.positive_min_ttl = self.positive_min_ttl.map(|d| d.0).or(opts.positive_min_ttl);
        if let Some(value) = self.num_concurrent_reqs {
            opts.num_concurrent_reqs = value;
        }
        if let Some(value) = self.preserve_intermediates {
            opts.preserve_intermediates = value;
        }
        if let Some(value) = self.recursion_desired {
            opts.recursion_desired = value;
        }
        if let Some(value) = self.server_ordering_strategy {
            opts.server_ordering_strategy = match value {
                ServerOrdering::QueryStatistics => ServerOrderingStrategy::QueryStatistics,
                ServerOrdering::RoundRobin => ServerOrderingStrategy::RoundRobin,
                ServerOrdering::UserProvidedOrder => ServerOrderingStrategy::UserProvidedOrder,
            };
        }
        if let Some(value) = self.timeout {
            opts.timeout = value.0;
        }
        if let Some(value) = self.try_tcp_on_error {
            opts.try_tcp_on_error = value;
        }
        if let Some(value) = self.use_hosts_file {
            opts.use_hosts_file = match value {
                UseHostsFile::Always => ResolveHosts::Always,
                UseHostsFile::Auto => ResolveHosts::Auto,
                UseHostsFile::Never => ResolveHosts::Never,
            };
        }
        Ok(opts)
    }
}

fn not_supported(key: &str) -> DnsError {
    DnsError::config(format!("{key} is not supported by Tern yet"))
}

impl ResolverConfigParams {
    /// The hickory configuration these parameters describe.
    pub fn to_hickory(&self) -> Result<(ResolverConfig, ResolverOpts), DnsError> {
        if self.name_servers.is_empty() {
            return Err(DnsError::config(
                "configure_resolver: name_servers must list at least one server",
            ));
        }
        let domain = self.domain.as_deref().map(fully_qualify).transpose()?;
        let search = self
            .search
            .iter()
            .map(|name| fully_qualify(name))
            .collect::<Result<Vec<_>, _>>()?;
        let servers = self
            .name_servers
            .iter()
            .map(|server| {
                let mut config = match server.protocol {
                    NameServerProtocol::Udp => NameServerConfig::udp(server.socket_addr.ip()),
                    NameServerProtocol::Tcp => NameServerConfig::tcp(server.socket_addr.ip()),
                    NameServerProtocol::UdpThenTcp => {
                        NameServerConfig::udp_and_tcp(server.socket_addr.ip())
                    }
                };
                config.trust_negative_responses = server.trust_negative_responses;
                for connection in &mut config.connections {
                    connection.port = server.socket_addr.port();
                    connection.bind_addr = server.bind_addr;
                }
                debug_assert!(
                    config
                        .connections
                        .iter()
                        .all(|c: &ConnectionConfig| matches!(
                            c.protocol,
                            ProtocolConfig::Udp | ProtocolConfig::Tcp
                        ))
                );
                config
            })
            .collect();
        let options = self.options.to_hickory()?;
        Ok((ResolverConfig::from_parts(domain, search, servers), options))
    }

    /// Build a caching hickory resolver from these parameters.
    pub fn build(&self) -> Result<Resolver, DnsError> {
        let (config, options) = self.to_hickory()?;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|err| DnsError::config(format!("building the DNS resolver failed: {err}")))?;
        Ok(Resolver::Hickory(Box::new(resolver)))
    }
}

/// One test zone: zone-file text, optionally marked DNSSEC-secure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestZone {
    pub zone: String,
    pub secure: bool,
}

impl<'de> Deserialize<'de> for TestZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            zone: String,
            #[serde(default)]
            secure: bool,
        }
        struct ZoneVisitor;
        impl<'de> Visitor<'de> for ZoneVisitor {
            type Value = TestZone;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("zone-file text or a { zone = \"...\", secure = true } table")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TestZone, E> {
                Ok(TestZone {
                    zone: text.to_string(),
                    secure: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TestZone, A::Error> {
                let detailed = Detailed::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TestZone {
                    zone: detailed.zone,
                    secure: detailed.secure,
                })
            }
        }
        deserializer.deserialize_any(ZoneVisitor)
    }
}

/// `kumo.dns.configure_test_resolver(ZONES)`: either an array of zones or
/// `{ zones = {...}, servfail = { "owner.name", ... } }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestResolverParams {
    pub zones: Vec<TestZone>,
    /// Owner names for which every query answers SERVFAIL.
    pub servfail: Vec<String>,
}

impl TestResolverParams {
    pub fn from_zones<S: AsRef<str>>(zones: &[S]) -> Self {
        Self {
            zones: zones
                .iter()
                .map(|zone| TestZone {
                    zone: zone.as_ref().to_string(),
                    secure: false,
                })
                .collect(),
            servfail: Vec::new(),
        }
    }

    pub fn build(&self) -> Result<Resolver, DnsError> {
        Ok(Resolver::Test(TestResolver::new(self)?))
    }
}

impl<'de> Deserialize<'de> for TestResolverParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            #[serde(default, deserialize_with = "list")]
            zones: Vec<TestZone>,
            #[serde(default, deserialize_with = "list")]
            servfail: Vec<String>,
        }
        struct ParamsVisitor;
        impl<'de> Visitor<'de> for ParamsVisitor {
            type Value = TestResolverParams;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of zones or a { zones = {...}, servfail = {...} } table")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let zones =
                    Vec::<TestZone>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(TestResolverParams {
                    zones,
                    servfail: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let detailed = Detailed::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TestResolverParams {
                    zones: detailed.zones,
                    servfail: detailed.servfail,
                })
            }
        }
        deserializer.deserialize_any(ParamsVisitor)
    }
}

/// Any resolver configuration accepted by `configure_resolver` and
/// `define_resolver`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResolverSpec {
    /// `"HickorySystemConfig"`: hickory configured from `/etc/resolv.conf`.
    HickorySystemConfig,
    /// The plain `{ name_servers = ... }` table, or `{ Hickory = {...} }`.
    Hickory(Box<ResolverConfigParams>),
    /// `{ Test = { zones = ..., servfail = ... } }`.
    Test(TestResolverParams),
    /// `{ Aggregate = { cfg1, cfg2, ... } }`: asked in order.
    Aggregate(Vec<ResolverSpec>),
}

impl ResolverSpec {
    pub fn build(&self) -> Result<Resolver, DnsError> {
        match self {
            Self::HickorySystemConfig => Resolver::system(),
            Self::Hickory(params) => params.build(),
            Self::Test(params) => params.build(),
            Self::Aggregate(list) => Ok(Resolver::Aggregate(
                list.iter().map(Self::build).collect::<Result<_, _>>()?,
            )),
        }
    }

    /// Interpret an already-converted value (the shape check needs to look
    /// at the keys before choosing a form).
    pub fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::String(text) if text == "HickorySystemConfig" => Ok(Self::HickorySystemConfig),
            Value::String(text) => Err(format!(
                "unknown resolver configuration '{text}'; expected \"HickorySystemConfig\" or a table"
            )),
            Value::Object(map) if map.len() == 1 => {
                let (key, inner) = map.into_iter().next().expect("one entry");
                match key.as_str() {
                    "Hickory" => params_from(inner).map(|p| Self::Hickory(Box::new(p))),
                    "Test" => serde_json::from_value(empty_object_as_array(inner))
                        .map(Self::Test)
                        .map_err(|err| format!("Test resolver: {err}")),
                    "Unbound" => {
                        Err("the Unbound resolver is not supported by Tern yet".to_string())
                    }
                    "Aggregate" => aggregate_from(inner),
                    _ => {
                        let mut map = serde_json::Map::new();
                        map.insert(key, inner);
                        params_from(Value::Object(map)).map(|p| Self::Hickory(Box::new(p)))
                    }
                }
            }
            other @ Value::Object(_) => params_from(other).map(|p| Self::Hickory(Box::new(p))),
            other => Err(format!(
                "invalid resolver configuration {other}; expected a string or a table"
            )),
        }
    }
}

fn params_from(value: Value) -> Result<ResolverConfigParams, String> {
    serde_json::from_value(value).map_err(|err| format!("resolver configuration: {err}"))
}

fn aggregate_from(value: Value) -> Result<ResolverSpec, String> {
    let entries: Vec<Value> = match value {
        Value::Array(items) => items,
        // A Lua table mixing `Test = {...}` keys with array entries arrives
        // as a map: each named entry is one `{ Name = ... }` configuration.
        Value::Object(map) => map
            .into_iter()
            .map(|(key, inner)| {
                if key.parse::<usize>().is_ok() {
                    inner
                } else {
                    let mut single = serde_json::Map::new();
                    single.insert(key, inner);
                    Value::Object(single)
                }
            })
            .collect(),
        other => {
            return Err(format!(
                "Aggregate: expected a list of resolvers, got {other}"
            ));
        }
    };
    entries
        .into_iter()
        .map(ResolverSpec::from_value)
        .collect::<Result<Vec<_>, _>>()
        .map(ResolverSpec::Aggregate)
}

fn empty_object_as_array(value: Value) -> Value {
    match value {
        Value::Object(map) if map.is_empty() => Value::Array(Vec::new()),
        other => other,
    }
}

impl<'de> Deserialize<'de> for ResolverSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(de::Error::custom)
    }
}

/// Deserialize a list, also accepting an empty table (Lua cannot tell an
/// empty array from an empty map) and nil.
fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(Vec::new()),
                Some(_) => Err(de::Error::custom(
                    "expected a list, found a table with keys",
                )),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
    }
    deserializer.deserialize_any(ListVisitor(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn params(value: Value) -> Result<ResolverConfigParams, String> {
        serde_json::from_value(value).map_err(|err| err.to_string())
    }

    #[test]
    fn simple_and_detailed_name_servers() {
        let parsed = params(json!({
            "name_servers": [
                "10.0.0.1:53",
                {
                    "socket_addr": "10.0.0.20:5353",
                    "protocol": "tcp",
                    "trust_negative_responses": false,
                    "bind_addr": "10.0.0.2:0"
                },
                { "socket_addr": "[::1]:53", "protocol": "udp" }
            ],
            "domain": "corp.example",
            "search": {},
            "options": { "edns0": true, "use_hosts_file": "Never", "timeout": "2s",
                         "positive_max_ttl": 60, "ip_strategy": "Ipv4thenIpv6",
                         "server_ordering_strategy": "RoundRobin", "validate": false }
        }))
        .unwrap();
        assert_eq!(
            parsed.name_servers[0],
            NameServer::new("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(parsed.name_servers[1].protocol, NameServerProtocol::Tcp);
        assert!(!parsed.name_servers[1].trust_negative_responses);
        assert_eq!(
            parsed.name_servers[1].bind_addr,
            Some("10.0.0.2:0".parse().unwrap())
        );
        assert_eq!(parsed.name_servers[2].protocol, NameServerProtocol::Udp);
        assert!(parsed.search.is_empty());

        let (config, opts) = parsed.to_hickory().unwrap();
        assert_eq!(opts.timeout, Duration::from_secs(2));
        assert_eq!(opts.positive_max_ttl, Some(Duration::from_secs(60)));
        assert_eq!(opts.use_hosts_file, ResolveHosts::Never);
        assert_eq!(opts.ip_strategy, LookupIpStrategy::Ipv4thenIpv6);
        assert_eq!(config.domain().unwrap().to_string(), "corp.example.");
        let servers = config.name_servers();
        assert_eq!(
            servers[0].connections.len(),
            2,
            "udp_then_tcp is both transports"
        );
        assert!(servers[0].connections.iter().all(|c| c.port == 53));
        assert_eq!(servers[1].connections.len(), 1);
        assert_eq!(servers[1].connections[0].protocol, ProtocolConfig::Tcp);
        assert_eq!(servers[1].connections[0].port, 5353);
        assert!(!servers[1].trust_negative_responses);
    }

    #[test]
    fn bad_input_is_rejected_clearly() {
        let err = params(json!({ "name_servers": ["10.0.0.1:53"], "bogus": 1 })).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = params(json!({ "name_servers": ["10.0.0.1:53"], "options": { "ndot": 1 } }))
            .unwrap_err();
        assert!(err.contains("ndot"), "{err}");
        let err = params(json!({ "name_servers": ["10.0.0.1"] })).unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
        let err = params(
            json!({ "name_servers": [{ "socket_addr": "10.0.0.1:53", "protocol": "tls" }] }),
        )
        .unwrap_err();
        assert!(err.contains("tls"), "{err}");
        let err = params(json!({ "name_servers": [{ "socket_addr": "10.0.0.1:53", "port": 1 }] }))
            .unwrap_err();
        assert!(err.contains("port"), "{err}");
        let empty = params(json!({ "name_servers": [] })).unwrap();
        assert!(
            empty
                .build()
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
    }

    #[test]
    fn unsupported_options_say_so() {
        for (key, value) in [
            ("validate", json!(true)),
            ("trust_anchor_file", json!("/x")),
        ] {
            let parsed =
                params(json!({ "name_servers": ["127.0.0.1:53"], "options": { key: value } }))
                    .unwrap();
            let err = parsed.build().unwrap_err().to_string();
            assert_eq!(err, format!("{key} is not supported by Tern yet"));
        }
    }

    #[test]
    fn test_resolver_params_both_forms() {
        let zone = "$ORIGIN example.com.\n@ 600 MX 10 mx.example.com.\n";
        let list: TestResolverParams = serde_json::from_value(json!([zone])).unwrap();
        assert_eq!(list, TestResolverParams::from_zones(&[zone]));
        let table: TestResolverParams = serde_json::from_value(json!({
            "zones": [zone, { "zone": zone, "secure": true }],
            "servfail": ["broken.example"]
        }))
        .unwrap();
        assert_eq!(table.zones.len(), 2);
        assert!(table.zones[1].secure);
        assert_eq!(table.servfail, ["broken.example"]);
        let err =
            serde_json::from_value::<TestResolverParams>(json!({ "zone": [zone] })).unwrap_err();
        assert!(err.to_string().contains("zone"), "{err}");
    }

    #[test]
    fn structured_resolver_specs() {
        let spec: ResolverSpec = serde_json::from_value(json!("HickorySystemConfig")).unwrap();
        assert_eq!(spec, ResolverSpec::HickorySystemConfig);
        let plain: ResolverSpec =
            serde_json::from_value(json!({ "name_servers": ["127.0.0.1:53"] })).unwrap();
        let wrapped: ResolverSpec =
            serde_json::from_value(json!({ "Hickory": { "name_servers": ["127.0.0.1:53"] } }))
                .unwrap();
        assert_eq!(plain, wrapped);
        let test: ResolverSpec = serde_json::from_value(
            json!({ "Test": { "zones": ["$ORIGIN a.example.\n@ 1 A 127.0.0.1\n"] } }),
        )
        .unwrap();
        assert!(matches!(test, ResolverSpec::Test(_)));
        let aggregate: ResolverSpec = serde_json::from_value(json!({
            "Aggregate": [ { "Test": { "zones": [] } }, "HickorySystemConfig" ]
        }))
        .unwrap();
        let ResolverSpec::Aggregate(list) = aggregate else {
            panic!("aggregate expected")
        };
        assert_eq!(list.len(), 2);
        let err = serde_json::from_value::<ResolverSpec>(json!({ "Unbound": {} })).unwrap_err();
        assert!(
            err.to_string().contains("not supported by Tern yet"),
            "{err}"
        );
        let err = serde_json::from_value::<ResolverSpec>(json!("Nope")).unwrap_err();
        assert!(err.to_string().contains("Nope"), "{err}");
    }

    #[tokio::test]
    async fn configured_resolver_builds() {
        let parsed = params(json!({ "name_servers": ["127.0.0.1:53"] })).unwrap();
        assert!(matches!(parsed.build().unwrap(), Resolver::Hickory(_)));
        let spec: ResolverSpec = serde_json::from_value(json!({
            "Test": ["$ORIGIN a.example.\n@ 1 A 127.0.0.1\n"]
        }))
        .unwrap();
        let resolver = spec.build().unwrap();
        let answer = resolver
            .resolve_ip("a.example", crate::IpLookupStrategy::Ipv4Only)
            .await
            .unwrap();
        assert_eq!(
            answer.records,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
