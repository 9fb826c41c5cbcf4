//! The parameters of `kumo.start_esmtp_listener` (§3.1) and how the
//! effective set for one connection is computed from the top level, the
//! `peer` and `via` CIDR blocks and `smtp_server_get_dynamic_parameters`.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::time::Duration;
use tern_smtp::InvalidLineEndings;
use tern_types::{CidrMap, CidrSet, KeySource, duration};

fn default_listen() -> String {
    "127.0.0.1:2025".into()
}
fn default_max_connections() -> usize {
    32768
}
fn default_banner() -> String {
    "KumoMTA".into()
}
fn default_relay_hosts() -> CidrSet {
    CidrSet::new(["127.0.0.1", "::1"]).expect("valid defaults")
}
fn default_max_message_size() -> usize {
    20 * 1024 * 1024
}
fn default_max_recipients_per_message() -> usize {
    1024
}
fn default_max_messages_per_connection() -> usize {
    10000
}
fn default_data_buffer_size() -> usize {
    128 * 1024
}
fn default_client_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_data_processing_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_line_length() -> usize {
    998
}
fn yes() -> bool {
    true
}
fn default_header_name() -> String {
    "X-KumoRef".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeaders {
    #[serde(default = "yes")]
    pub received_header: bool,
    #[serde(default = "yes")]
    pub supplemental_header: bool,
    #[serde(default = "default_header_name")]
    pub header_name: String,
    #[serde(default)]
    pub include_meta_names: Vec<String>,
}

impl Default for TraceHeaders {
    fn default() -> Self {
        Self {
            received_header: true,
            supplemental_header: true,
            header_name: default_header_name(),
            include_meta_names: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum BatchHandling {
    #[default]
    BifurcateAlways,
    BatchByDomain,
}

/// The effective listener parameters of one connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpParams {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_banner")]
    pub banner: String,
    #[serde(default = "default_relay_hosts")]
    pub relay_hosts: CidrSet,
    #[serde(default)]
    pub tls_certificate: Option<KeySource>,
    #[serde(default)]
    pub tls_private_key: Option<KeySource>,
    #[serde(default)]
    pub tls_required_client_ca: Option<KeySource>,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_recipients_per_message")]
    pub max_recipients_per_message: usize,
    #[serde(default = "default_max_messages_per_connection")]
    pub max_messages_per_connection: usize,
    #[serde(default = "default_data_buffer_size")]
    pub data_buffer_size: usize,
    #[serde(default = "default_client_timeout", with = "duration::req")]
    pub client_timeout: Duration,
    #[serde(default = "default_data_processing_timeout", with = "duration::req")]
    pub data_processing_timeout: Duration,
    #[serde(default)]
    pub invalid_line_endings: InvalidLineEndings,
    #[serde(default = "default_line_length")]
    pub line_length_hard_limit: usize,
    #[serde(default)]
    pub deferred_spool: bool,
    #[serde(default)]
    pub deferred_queue: bool,
    #[serde(default)]
    pub trace_headers: TraceHeaders,
    #[serde(default)]
    pub batch_handling: BatchHandling,
    #[serde(default)]
    pub meta: Map<String, Value>,
    #[serde(default)]
    pub peer: Option<Map<String, Value>>,
    #[serde(default)]
    pub via: Option<Map<String, Value>>,
    #[serde(default)]
    pub allow_xclient: bool,
    #[serde(default)]
    pub require_proxy_protocol: bool,
}

/// Keys that may only appear at the top level of the listener table.
const TOP_LEVEL_ONLY: &[&str] = &["listen", "max_connections"];

/// One layer of listener parameters: the top-level table, a `peer` or
/// `via` block, or the table `smtp_server_get_dynamic_parameters`
/// returned. A layer may hold `peer` and `via` blocks of its own, which
/// are applied after it (§3.1: blocks apply recursively), and its `meta`
/// is merged into what earlier layers set rather than replacing it.
#[derive(Clone, Debug, Default)]
struct Layer {
    /// Every key except `peer`, `via` and `meta`.
    keys: Map<String, Value>,
    meta: Map<String, Value>,
    peer: CidrMap<Layer>,
    via: CidrMap<Layer>,
}

impl Layer {
    /// Split `table` into a layer; `what` names it in errors. Nested
    /// blocks must not set top-level-only keys.
    fn parse(table: &Map<String, Value>, what: &str, nested: bool) -> Result<Self, String> {
        if nested {
            for forbidden in TOP_LEVEL_ONLY {
                if table.contains_key(*forbidden) {
                    return Err(format!(
                        "kumo.start_esmtp_listener: `{forbidden}` cannot be set inside {what}"
                    ));
                }
            }
        }
        let mut keys = table.clone();
        let meta = match keys.remove("meta") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(meta)) => meta,
            Some(_) => {
                return Err(format!(
                    "kumo.start_esmtp_listener: `meta` in {what} must be a table"
                ));
            }
        };
        let peer = Self::blocks(keys.remove("peer"), &format!("{what} `peer`"))?;
        let via = Self::blocks(keys.remove("via"), &format!("{what} `via`"))?;
        Ok(Self {
            keys,
            meta,
            peer,
            via,
        })
    }

    fn blocks(raw: Option<Value>, what: &str) -> Result<CidrMap<Layer>, String> {
        let mut map = CidrMap::default();
        let entries = match raw {
            None | Some(Value::Null) => return Ok(map),
            Some(Value::Object(entries)) => entries,
            Some(_) => {
                return Err(format!(
                    "kumo.start_esmtp_listener: {what} must be a table keyed by CIDR"
                ));
            }
        };
        for (key, block) in entries {
            let inner = format!("{what}[\"{key}\"]");
            let Value::Object(block) = block else {
                return Err(format!(
                    "kumo.start_esmtp_listener: {inner} must be a table"
                ));
            };
            let layer = Self::parse(&block, &inner, true)?;
            map.insert(&key, layer)
                .map_err(|e| format!("kumo.start_esmtp_listener: {what} key: {e}"))?;
        }
        Ok(map)
    }

    /// Apply this layer, then its matching `peer` block, then its matching
    /// `via` block (so `via` wins over `peer`).
    fn apply(
        &self,
        peer: IpAddr,
        local: IpAddr,
        keys: &mut Map<String, Value>,
        meta: &mut Map<String, Value>,
    ) {
        for (k, v) in &self.keys {
            keys.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.meta {
            meta.insert(k.clone(), v.clone());
        }
        if let Some(block) = self.peer.get(peer) {
            block.apply(peer, local, keys, meta);
        }
        if let Some(block) = self.via.get(local) {
            block.apply(peer, local, keys, meta);
        }
    }

    /// Every nested block, depth first, for checking them at startup.
    fn all_blocks(&self, out: &mut Vec<Layer>) {
        for block in self.peer.values().chain(self.via.values()) {
            out.push(block.clone());
            block.all_blocks(out);
        }
    }
}

/// A listener's configuration as written by the policy, ready to produce
/// the effective parameters for each connection.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    top: Layer,
    pub base: EsmtpParams,
}

fn parse(keys: Map<String, Value>, meta: Map<String, Value>) -> Result<EsmtpParams, String> {
    let mut table = keys;
    table.insert("meta".into(), Value::Object(meta));
    serde_json::from_value(Value::Object(table.clone())).map_err(|e| {
        format!(
            "kumo.start_esmtp_listener: {e}, while processing {}",
            Value::Object(table)
        )
    })
}

impl ListenerConfig {
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(raw) = value else {
            return Err("kumo.start_esmtp_listener expects a table".into());
        };
        let top = Layer::parse(raw, "the listener table", false)?;
        let base = parse(top.keys.clone(), top.meta.clone())?;
        // Surface errors in the blocks at startup, not at the first
        // connection: each block is checked on top of the top level.
        let mut blocks = Vec::new();
        top.all_blocks(&mut blocks);
        for block in blocks {
            let mut keys = top.keys.clone();
            let mut meta = top.meta.clone();
            keys.extend(block.keys);
            meta.extend(block.meta);
            parse(keys, meta)?;
        }
        Ok(Self { top, base })
    }

    /// The parameters for a connection from `peer` to `local`, with any
    /// overrides from `smtp_server_get_dynamic_parameters` applied last
    /// (its own `peer`/`via` blocks included).
    pub fn effective(
        &self,
        peer: IpAddr,
        local: IpAddr,
        dynamic: Option<&Map<String, Value>>,
    ) -> Result<EsmtpParams, String> {
        // Nested blocks apply only inside a matching block, so when no
        // top-level block matches, the parsed top level is the answer.
        let untouched = self.top.peer.get(peer).is_none() && self.top.via.get(local).is_none();
        if dynamic.is_none() && untouched {
            return Ok(self.base.clone());
        }
        let mut keys = Map::new();
        let mut meta = Map::new();
        self.top.apply(peer, local, &mut keys, &mut meta);
        if let Some(dynamic) = dynamic {
            let layer = Layer::parse(
                dynamic,
                "the table returned by smtp_server_get_dynamic_parameters",
                true,
            )?;
            layer.apply(peer, local, &mut keys, &mut meta);
        }
        parse(keys, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> Result<ListenerConfig, String> {
        ListenerConfig::from_json(&value)
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = config(json!({})).unwrap();
        assert_eq!(c.base.listen, "127.0.0.1:2025");
        assert_eq!(c.base.max_connections, 32768);
        assert_eq!(c.base.banner, "KumoMTA");
        assert!(!c.base.allow_xclient);
        assert!(!c.base.require_proxy_protocol);
        assert_eq!(c.base.client_timeout, Duration::from_secs(60));
        assert_eq!(c.base.hostname, None);
        assert_eq!(c.base.max_message_size, 20 * 1024 * 1024);
        assert_eq!(c.base.max_recipients_per_message, 1024);
        assert_eq!(c.base.max_messages_per_connection, 10_000);
        assert_eq!(c.base.data_buffer_size, 128 * 1024);
        assert_eq!(c.base.data_processing_timeout, Duration::from_secs(300));
        assert_eq!(c.base.invalid_line_endings, InvalidLineEndings::Deny);
        assert_eq!(c.base.line_length_hard_limit, 998);
        assert!(!c.base.deferred_spool);
        assert!(!c.base.deferred_queue);
        assert!(c.base.tls_certificate.is_none() && c.base.tls_private_key.is_none());
        assert!(c.base.tls_required_client_ca.is_none());
        assert_eq!(c.base.batch_handling, BatchHandling::BifurcateAlways);
        assert!(c.base.meta.is_empty() && c.base.peer.is_none() && c.base.via.is_none());
        let trace = &c.base.trace_headers;
        assert!(trace.received_header && trace.supplemental_header);
        assert_eq!(trace.header_name, "X-KumoRef");
        assert!(trace.include_meta_names.is_empty());
        let relays: Vec<std::net::IpAddr> =
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        for ip in relays {
            assert!(c.base.relay_hosts.contains(ip), "{ip}");
        }
        assert!(!c.base.relay_hosts.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn peer_block_scopes_xclient_and_proxy_protocol() {
        let c = config(json!({
            "peer": { "10.0.0.0/8": { "allow_xclient": true, "require_proxy_protocol": true } },
            "via": { "192.0.2.1": { "banner": "via" } },
        }))
        .unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let trusted = c
            .effective("10.1.2.3".parse().unwrap(), local, None)
            .unwrap();
        assert!(trusted.allow_xclient && trusted.require_proxy_protocol);
        let stranger = c
            .effective("192.0.2.9".parse().unwrap(), local, None)
            .unwrap();
        assert!(!stranger.allow_xclient && !stranger.require_proxy_protocol);
        let via = c
            .effective(
                "192.0.2.9".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(via.banner, "via");
    }

    #[test]
    fn meta_is_merged_across_layers_and_blocks_nest() {
        let c = config(json!({
            "meta": { "x_top": 1, "x_shared": "top" },
            "peer": { "10.0.0.0/8": {
                "meta": { "x_peer": 2, "x_shared": "peer" },
                "banner": "peer",
                "via": { "192.0.2.1": { "banner": "peer+via", "meta": { "x_via": 3 } } },
            } },
        }))
        .unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let p = c.effective(inside, local, None).unwrap();
        assert_eq!(p.banner, "peer");
        assert_eq!(
            Value::Object(p.meta.clone()),
            json!({ "x_top": 1, "x_peer": 2, "x_shared": "peer" })
        );
        let nested = c
            .effective(inside, "192.0.2.1".parse().unwrap(), None)
            .unwrap();
        assert_eq!(nested.banner, "peer+via");
        assert_eq!(nested.meta["x_via"], json!(3));
        assert_eq!(nested.meta["x_top"], json!(1));
        let dynamic = json!({ "meta": { "x_dyn": true } });
        let d = c.effective(local, local, dynamic.as_object()).unwrap();
        assert_eq!(
            Value::Object(d.meta),
            json!({ "x_top": 1, "x_shared": "top", "x_dyn": true })
        );
        let bad = json!({ "max_connections": 5 });
        let err = c.effective(local, local, bad.as_object()).unwrap_err();
        assert!(
            err.contains("`max_connections` cannot be set inside"),
            "{err}"
        );
    }

    #[test]
    fn top_level_only_keys_are_refused_in_blocks() {
        let err = config(json!({ "peer": { "10.0.0.0/8": { "listen": "0:25" } } })).unwrap_err();
        assert!(err.contains("`listen` cannot be set inside"), "{err}");
    }

    #[test]
    fn unknown_options_are_refused_and_deferred_queue_is_per_block() {
        let c = config(json!({ "peer": { "10.0.0.0/8": { "deferred_queue": true } } })).unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(c.effective(inside, local, None).unwrap().deferred_queue);
        assert!(!c.effective(local, local, None).unwrap().deferred_queue);
        // log_oob / log_arf belong to kumo.make_listener_domain, not here.
        let err = config(json!({ "log_oob": true })).unwrap_err();
        assert!(err.contains("unknown field `log_oob`"), "{err}");
        let c = config(json!({})).unwrap();
        let dynamic = json!({ "no_such_option": true });
        assert!(c.effective(local, local, dynamic.as_object()).is_err());
    }
}
