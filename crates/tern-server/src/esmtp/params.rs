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
const TOP_LEVEL_ONLY: &[&str] = &["listen", "max_connections", "peer", "via"];

/// A listener's configuration as written by the policy, ready to produce
/// the effective parameters for each connection.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    raw: Map<String, Value>,
    pub base: EsmtpParams,
    peer: CidrMap<Map<String, Value>>,
    via: CidrMap<Map<String, Value>>,
}

fn parse(raw: &Map<String, Value>) -> Result<EsmtpParams, String> {
    let params: EsmtpParams = serde_json::from_value(Value::Object(raw.clone())).map_err(|e| {
        format!(
            "kumo.start_esmtp_listener: {e}, while processing {}",
            Value::Object(raw.clone())
        )
    })?;
    Ok(params)
}

fn overlay(base: &mut Map<String, Value>, block: &Map<String, Value>) {
    for (k, v) in block {
        base.insert(k.clone(), v.clone());
    }
}

fn cidr_blocks(raw: Option<&Value>, what: &str) -> Result<CidrMap<Map<String, Value>>, String> {
    let mut map = CidrMap::default();
    let Some(value) = raw else { return Ok(map) };
    let Value::Object(entries) = value else {
        return Err(format!(
            "kumo.start_esmtp_listener: `{what}` must be a table keyed by CIDR"
        ));
    };
    for (key, block) in entries {
        let Value::Object(block) = block else {
            return Err(format!(
                "kumo.start_esmtp_listener: `{what}[\"{key}\"]` must be a table"
            ));
        };
        for forbidden in TOP_LEVEL_ONLY {
            if block.contains_key(*forbidden) {
                return Err(format!(
                    "kumo.start_esmtp_listener: `{forbidden}` cannot be set inside `{what}[\"{key}\"]`"
                ));
            }
        }
        map.insert(key, block.clone())
            .map_err(|e| format!("kumo.start_esmtp_listener: `{what}` key: {e}"))?;
    }
    Ok(map)
}

impl ListenerConfig {
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let Value::Object(raw) = value else {
            return Err("kumo.start_esmtp_listener expects a table".into());
        };
        let base = parse(raw)?;
        let peer = cidr_blocks(raw.get("peer"), "peer")?;
        let via = cidr_blocks(raw.get("via"), "via")?;
        let mut raw = raw.clone();
        raw.remove("peer");
        raw.remove("via");
        let config = Self {
            raw,
            base,
            peer,
            via,
        };
        // Surface errors in the blocks at startup, not at the first connection.
        for block in config.peer.values().chain(config.via.values()) {
            let mut merged = config.raw.clone();
            overlay(&mut merged, block);
            parse(&merged)?;
        }
        Ok(config)
    }

    /// The parameters for a connection from `peer` to `local`, with any
    /// overrides from `smtp_server_get_dynamic_parameters` applied last.
    pub fn effective(
        &self,
        peer: IpAddr,
        local: IpAddr,
        dynamic: Option<&Map<String, Value>>,
    ) -> Result<EsmtpParams, String> {
        let peer_block = self.peer.get(peer);
        let via_block = self.via.get(local);
        if peer_block.is_none() && via_block.is_none() && dynamic.is_none() {
            return Ok(self.base.clone());
        }
        let mut merged = self.raw.clone();
        for block in [peer_block, via_block, dynamic].into_iter().flatten() {
            overlay(&mut merged, block);
        }
        parse(&merged)
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
