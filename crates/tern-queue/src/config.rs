//! Parameter tables for queues, egress sources, pools and paths
//! (`kumo.make_queue_config`, `kumo.make_egress_source`,
//! `kumo.make_egress_pool`, `kumo.make_egress_path`; spec §6.2, §8.1, §8.2,
//! §11.2).
//!
//! The policy crate deserializes the Lua table a handler returns straight
//! into these structs, so they follow KumoMTA's rules exactly: unknown keys
//! are an error naming the key, missing keys take KumoMTA's source-code
//! defaults, durations accept seconds or humantime strings.
//!
//! Some options parse but cannot be honoured by Tern yet (DANE, OpenSSL,
//! LMTP, proxies, xfer). Deserializing succeeds so the error can name the
//! option precisely; the caller must then call `validate()`, which returns
//! an "... is not supported by Tern yet" error for them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use tern_types::duration::{opt as opt_duration, req as duration};
use tern_types::{CidrSet, KeySource, LimitSpec, ThrottleSpec};

/// Name of the implicit pool and source used when `egress_pool` is unset.
pub const UNSPECIFIED: &str = "unspecified";

/// A configuration problem found by `validate()`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A KumoMTA option Tern recognises but cannot honour yet.
    #[error("{0} is not supported by Tern yet")]
    Unsupported(String),
    /// A value that is wrong regardless of implementation.
    #[error("{0}")]
    Invalid(String),
}

fn unsupported(what: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported(what.into())
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------------------
// Shared enums

/// When to re-run the config event for a cached queue or path config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfigRefreshStrategy {
    /// Every `refresh_interval`.
    #[default]
    Ttl,
    /// When the configuration epoch changes.
    Epoch,
}

/// What to release from memory for a message that is waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemoryReductionPolicy {
    #[default]
    ShrinkDataAndMeta,
    ShrinkData,
    NoShrink,
}

// ---------------------------------------------------------------------------
// Queue config

/// Timer structure named by `strategy`. Tern always uses its own
/// [`TimerWheel`](crate::timer::TimerWheel); the value is accepted for
/// compatibility.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueueStrategy {
    TimerWheel,
    SkipList,
    #[default]
    SingletonTimerWheel,
    SingletonTimerWheelV2,
}

/// One `shrink_policy` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueShrinkPolicy {
    #[serde(with = "duration")]
    pub interval: Duration,
    pub policy: MemoryReductionPolicy,
}

/// `kumo.make_queue_config { ... }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Pool name; `None` means the implicit pool `unspecified`.
    pub egress_pool: Option<String>,
    /// Base of the exponential backoff. Default 20 minutes.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
    /// Cap on a single retry delay. Default none.
    #[serde(with = "opt_duration")]
    pub max_retry_interval: Option<Duration>,
    /// Message lifetime from creation. Default 7 days.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Throttle on promotion from this scheduled queue to ready queues.
    pub max_message_rate: Option<ThrottleSpec>,
    pub protocol: DeliveryProtocol,
    /// How long an empty queue lingers. Default 10 minutes.
    #[serde(with = "duration")]
    pub reap_interval: Duration,
    /// TTL of this config. Default 1 minute.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    pub refresh_strategy: ConfigRefreshStrategy,
    pub strategy: QueueStrategy,
    #[serde(with = "opt_duration")]
    pub timerwheel_tick_interval: Option<Duration>,
    pub provider_name: Option<String>,
    pub shrink_policy: Vec<QueueShrinkPolicy>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            egress_pool: None,
            retry_interval: secs(20 * 60),
            max_retry_interval: None,
            max_age: secs(7 * 86400),
            max_message_rate: None,
            protocol: DeliveryProtocol::default(),
            reap_interval: secs(10 * 60),
            refresh_interval: secs(60),
            refresh_strategy: ConfigRefreshStrategy::Ttl,
            strategy: QueueStrategy::SingletonTimerWheel,
            timerwheel_tick_interval: None,
            provider_name: None,
            shrink_policy: Vec::new(),
        }
    }
}

impl QueueConfig {
    /// The pool to use (`unspecified` when unset).
    pub fn egress_pool_name(&self) -> &str {
        self.egress_pool.as_deref().unwrap_or(UNSPECIFIED)
    }

    /// `delay(n) = min(R * 2^n, M)` for this queue.
    pub fn delay_for_attempt(&self, attempt: u32) -> Duration {
        crate::backoff::delay_for_attempt(attempt, self.retry_interval, self.max_retry_interval)
    }

    /// The per-queue timer tick: as configured, else `retry_interval / 20`
    /// clamped to [1 s, 1 min].
    pub fn timerwheel_tick(&self) -> Duration {
        self.timerwheel_tick_interval
            .unwrap_or_else(|| (self.retry_interval / 20).clamp(secs(1), secs(60)))
    }

    /// The memory policy for a message due in `until_due`: the last
    /// `shrink_policy` entry whose interval is `<= until_due`, else
    /// `ShrinkDataAndMeta`.
    pub fn shrink_policy_for(&self, until_due: Duration) -> MemoryReductionPolicy {
        self.shrink_policy
            .iter()
            .rfind(|entry| until_due >= entry.interval)
            .map_or(MemoryReductionPolicy::ShrinkDataAndMeta, |entry| {
                entry.policy
            })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "retry_interval must be greater than zero".to_string(),
            ));
        }
        self.protocol.validate()
    }
}

/// One `mx_list` entry: a host name, `"[ip]"` literal (either with an
/// optional `:port`), or `{ name = "label", addr = "ip[:port]" }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MxListEntry {
    Name(String),
    Labeled(LabeledMx),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledMx {
    pub name: String,
    pub addr: String,
}

impl MxListEntry {
    /// The label used in the `mx_list:` site name: the entry string, or
    /// `addr` for a `{name, addr}` entry.
    pub fn label(&self) -> &str {
        match self {
            MxListEntry::Name(name) => name,
            MxListEntry::Labeled(entry) => &entry.addr,
        }
    }
}

/// `protocol = { smtp = { ... } }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpProtocol {
    /// Explicit next hops in order; empty means resolve the MX.
    #[serde(default)]
    pub mx_list: Vec<MxListEntry>,
    #[serde(default)]
    pub treat_mx_list_as_secure: bool,
}

/// `protocol = { maildir_path = "...", dir_mode = n, file_mode = n }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirProtocol {
    /// A template (see spec §22).
    pub maildir_path: String,
    #[serde(default)]
    pub dir_mode: Option<u32>,
    #[serde(default)]
    pub file_mode: Option<u32>,
}

/// `protocol = { custom_lua = { ... } }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomLuaProtocol {
    /// Name of the event that builds the connection object.
    pub constructor: String,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub min_batch_size: usize,
    #[serde(default, with = "duration")]
    pub max_batch_latency: Duration,
}

fn one() -> usize {
    1
}

/// The `protocol` value of a queue config. The shapes are told apart by
/// their keys, as in KumoMTA.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryProtocol {
    Smtp(SmtpProtocol),
    Maildir(MaildirProtocol),
    CustomLua(CustomLuaProtocol),
    /// Inter-node transfer: parsed so `validate()` can reject it by name.
    Xfer(serde_json::Value),
}

impl Default for DeliveryProtocol {
    fn default() -> Self {
        DeliveryProtocol::Smtp(SmtpProtocol::default())
    }
}

impl DeliveryProtocol {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            DeliveryProtocol::Xfer(_) => Err(unsupported("protocol xfer (inter-node transfer)")),
            DeliveryProtocol::CustomLua(lua) if lua.batch_size == 0 => Err(ConfigError::Invalid(
                "protocol custom_lua: batch_size must be at least 1".to_string(),
            )),
            DeliveryProtocol::CustomLua(lua) if lua.constructor.is_empty() => Err(
                ConfigError::Invalid("protocol custom_lua: constructor is empty".to_string()),
            ),
            _ => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for DeliveryProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(D::Error::custom(format!(
                "invalid protocol {value}: expected a table such as {{ smtp = {{...}} }}, \
                 {{ maildir_path = \"...\" }} or {{ custom_lua = {{ constructor = \"...\" }} }}"
            )));
        };
        let only = |map: &serde_json::Map<String, serde_json::Value>, key: &str| match map
            .keys()
            .find(|k| k.as_str() != key)
        {
            Some(extra) => Err(D::Error::custom(format!(
                "protocol: unknown field `{extra}` next to `{key}`"
            ))),
            None => Ok(()),
        };
        let nested = |what: &str, err: serde_json::Error| {
            D::Error::custom(format!("protocol {what}: {err}"))
        };
        if let Some(mut inner) = map.remove("smtp") {
            only(&map, "smtp")?;
            // A Lua empty table arrives as an empty map when it passes
            // through a generic value; `mx_list = {}` means "no list".
            if let Some(list) = inner.get_mut("mx_list")
                && list.as_object().is_some_and(|m| m.is_empty())
            {
                *list = serde_json::Value::Array(Vec::new());
            }
            return serde_json::from_value(inner)
                .map(DeliveryProtocol::Smtp)
                .map_err(|e| nested("smtp", e));
        }
        if let Some(inner) = map.remove("custom_lua") {
            only(&map, "custom_lua")?;
            return serde_json::from_value(inner)
                .map(DeliveryProtocol::CustomLua)
                .map_err(|e| nested("custom_lua", e));
        }
        if let Some(inner) = map.remove("xfer") {
            only(&map, "xfer")?;
            return Ok(DeliveryProtocol::Xfer(inner));
        }
        if map.contains_key("maildir_path") {
            return serde_json::from_value(serde_json::Value::Object(map))
                .map(DeliveryProtocol::Maildir)
                .map_err(|e| nested("maildir", e));
        }
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        Err(D::Error::custom(format!(
            "invalid protocol with keys [{}]: expected smtp, maildir_path or custom_lua",
            keys.join(", ")
        )))
    }
}

impl Serialize for DeliveryProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            DeliveryProtocol::Smtp(smtp) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("smtp", smtp)?;
                map.end()
            }
            DeliveryProtocol::CustomLua(lua) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("custom_lua", lua)?;
                map.end()
            }
            DeliveryProtocol::Xfer(xfer) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("xfer", xfer)?;
                map.end()
            }
            DeliveryProtocol::Maildir(maildir) => maildir.serialize(s),
        }
    }
}

// ---------------------------------------------------------------------------
// Egress sources and pools

/// What trips an automatic source suspension.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuspendTrigger {
    /// The first matching failure.
    #[default]
    Immediate,
    /// `N` matching failures within a rolling period, e.g. `"3/1m"`.
    Threshold(ThrottleSpec),
}

/// `suspend_when_unplumbed` / `suspend_when_proxy_unhealthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendRule {
    #[serde(default)]
    pub trigger: SuspendTrigger,
    #[serde(with = "duration")]
    pub duration: Duration,
}

fn sixty_seconds() -> Duration {
    secs(60)
}

/// `kumo.make_egress_source { ... }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSource {
    pub name: String,
    /// Local address to bind before connecting.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    #[serde(default)]
    pub ehlo_domain: Option<String>,
    /// Forced destination port (beats `mx_list` ports and `smtp_port`).
    #[serde(default)]
    pub remote_port: Option<u16>,
    #[serde(default)]
    pub ha_proxy_server: Option<String>,
    #[serde(default)]
    pub ha_proxy_source_address: Option<IpAddr>,
    #[serde(default)]
    pub socks5_proxy_server: Option<String>,
    #[serde(default)]
    pub socks5_proxy_source_address: Option<IpAddr>,
    #[serde(default)]
    pub socks5_proxy_username: Option<String>,
    #[serde(default)]
    pub socks5_proxy_password: Option<KeySource>,
    #[serde(default)]
    pub suspend_when_unplumbed: Option<SuspendRule>,
    #[serde(default)]
    pub suspend_when_proxy_unhealthy: Option<SuspendRule>,
    /// Cache lifetime of this definition. Default 60 s.
    #[serde(default = "sixty_seconds", with = "duration")]
    pub ttl: Duration,
}

impl EgressSource {
    /// The built-in source `unspecified`: kernel-chosen address and the
    /// machine's host name for EHLO.
    pub fn unspecified() -> Self {
        Self::named(UNSPECIFIED)
    }

    /// A source with every option at its default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            source_address: None,
            ehlo_domain: None,
            remote_port: None,
            ha_proxy_server: None,
            ha_proxy_source_address: None,
            socks5_proxy_server: None,
            socks5_proxy_source_address: None,
            socks5_proxy_username: None,
            socks5_proxy_password: None,
            suspend_when_unplumbed: None,
            suspend_when_proxy_unhealthy: None,
            ttl: sixty_seconds(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::Invalid(
                "egress source name must not be empty".to_string(),
            ));
        }
        let proxy_options = [
            ("ha_proxy_server", self.ha_proxy_server.is_some()),
            (
                "ha_proxy_source_address",
                self.ha_proxy_source_address.is_some(),
            ),
            ("socks5_proxy_server", self.socks5_proxy_server.is_some()),
            (
                "socks5_proxy_source_address",
                self.socks5_proxy_source_address.is_some(),
            ),
            (
                "socks5_proxy_username",
                self.socks5_proxy_username.is_some(),
            ),
            (
                "socks5_proxy_password",
                self.socks5_proxy_password.is_some(),
            ),
            (
                "suspend_when_proxy_unhealthy",
                self.suspend_when_proxy_unhealthy.is_some(),
            ),
        ];
        if let Some((option, _)) = proxy_options.iter().find(|(_, set)| *set) {
            return Err(unsupported(format!(
                "egress source '{}': {option} (HAProxy/SOCKS5 proxying)",
                self.name
            )));
        }
        Ok(())
    }
}

/// One member of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPoolEntry {
    pub name: String,
    /// Relative share; 0 excludes the source. Default 1.
    #[serde(default = "one_u32")]
    pub weight: u32,
}

fn one_u32() -> u32 {
    1
}

/// `kumo.make_egress_pool { ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPool {
    pub name: String,
    #[serde(default)]
    pub entries: Vec<EgressPoolEntry>,
    #[serde(default = "sixty_seconds", with = "duration")]
    pub ttl: Duration,
}

impl EgressPool {
    /// The implicit pool `unspecified` with its single source.
    pub fn unspecified() -> Self {
        Self {
            name: UNSPECIFIED.to_string(),
            entries: vec![EgressPoolEntry {
                name: UNSPECIFIED.to_string(),
                weight: 1,
            }],
            ttl: sixty_seconds(),
        }
    }

    /// Entry weights in order, for [`WeightedRoundRobin`](crate::wrr::WeightedRoundRobin).
    pub fn weights(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.weight).collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::Invalid(
                "egress pool name must not be empty".to_string(),
            ));
        }
        if let Some(entry) = self.entries.iter().find(|e| e.name.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "egress pool '{}': entry with weight {} has an empty name",
                self.name, entry.weight
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Egress path

/// `enable_tls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tls {
    /// STARTTLS when advertised, certificate verified; a failed handshake
    /// fails the attempt on that host.
    #[default]
    Opportunistic,
    /// STARTTLS when advertised, no verification.
    OpportunisticInsecure,
    /// STARTTLS must be advertised and verify.
    Required,
    /// STARTTLS must be advertised; no verification.
    RequiredInsecure,
    Disabled,
}

impl Tls {
    /// Is a connection without STARTTLS a failure?
    pub fn is_required(self) -> bool {
        matches!(self, Tls::Required | Tls::RequiredInsecure)
    }

    /// Must the peer certificate verify?
    pub fn verifies_certificate(self) -> bool {
        matches!(self, Tls::Opportunistic | Tls::Required)
    }

    /// Should STARTTLS be attempted when advertised?
    pub fn attempts_starttls(self) -> bool {
        !matches!(self, Tls::Disabled)
    }
}

/// `ip_lookup_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpLookupStrategy {
    Ipv4Only,
    Ipv6Only,
    #[default]
    Ipv4AndIpv6,
    Ipv6ThenIpv4,
    Ipv4ThenIpv6,
}

/// `reconnect_strategy`: what to do after a 421, timeout or I/O error in
/// the middle of a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReconnectStrategy {
    TerminateSession,
    ReconnectSameHost,
    #[default]
    ConnectNextHost,
}

/// `dispatcher_wakeup_strategy` / `maintainer_wakeup_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WakeupStrategy {
    #[default]
    Aggressive,
    Relaxed,
}

/// rustls cipher suite names accepted by `rustls_cipher_suites`.
pub const RUSTLS_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The default `prohibited_hosts`: loopback and unspecified addresses.
pub fn default_prohibited_hosts() -> CidrSet {
    CidrSet::new(["127.0.0.0/8", "::1", "0.0.0.0", "::"]).unwrap_or_default()
}

/// `kumo.make_egress_path { ... }`: shaping for one (source, site) path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressPathConfig {
    // --- concurrency and rate ---
    /// Concurrent connections on this path. Default 32.
    pub connection_limit: LimitSpec,
    pub additional_connection_limits: BTreeMap<String, LimitSpec>,
    pub max_connection_rate: Option<ThrottleSpec>,
    pub max_message_rate: Option<ThrottleSpec>,
    pub additional_message_rate_throttles: BTreeMap<String, ThrottleSpec>,
    pub source_selection_rate: Option<ThrottleSpec>,
    pub additional_source_selection_rates: BTreeMap<String, ThrottleSpec>,
    /// Default 1024.
    pub max_deliveries_per_connection: usize,
    /// Default 100.
    pub max_recipients_per_batch: usize,
    /// Ready queue capacity. Default 1024.
    pub max_ready: usize,
    /// Default 100.
    pub consecutive_connection_failures_before_delay: usize,

    // --- TLS and authentication ---
    pub enable_tls: Tls,
    /// Default true. Tern does not fetch MTA-STS policies yet (see
    /// [`EgressPathConfig::warnings`]).
    pub enable_mta_sts: bool,
    pub enable_dane: bool,
    pub opportunistic_tls_reconnect_on_failed_handshake: bool,
    #[serde(with = "opt_duration")]
    pub remember_broken_tls: Option<Duration>,
    pub tls_prefer_openssl: bool,
    pub openssl_cipher_list: Option<String>,
    pub openssl_cipher_suites: Option<String>,
    pub openssl_options: Option<String>,
    pub rustls_cipher_suites: Vec<String>,
    pub tls_certificate: Option<KeySource>,
    pub tls_private_key: Option<KeySource>,
    pub smtp_auth_plain_username: Option<String>,
    pub smtp_auth_plain_password: Option<KeySource>,
    pub allow_smtp_auth_plain_without_tls: bool,
    pub allow_smtp_auth_plain_without_valid_certificate: bool,

    // --- timeouts ---
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub banner_timeout: Duration,
    #[serde(with = "duration")]
    pub ehlo_timeout: Duration,
    #[serde(with = "duration")]
    pub starttls_timeout: Duration,
    /// The TLS handshake after `220` to STARTTLS. Default 60 s.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    #[serde(with = "duration")]
    pub auth_timeout: Duration,
    #[serde(with = "duration")]
    pub mail_from_timeout: Duration,
    #[serde(with = "duration")]
    pub rcpt_to_timeout: Duration,
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    #[serde(with = "duration")]
    pub data_dot_timeout: Duration,
    #[serde(with = "duration")]
    pub rset_timeout: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Default: see [`EgressPathConfig::effective_system_shutdown_timeout`].
    #[serde(with = "opt_duration")]
    pub system_shutdown_timeout: Option<Duration>,

    // --- hosts and routing ---
    pub smtp_port: u16,
    pub ehlo_domain: Option<String>,
    pub prohibited_hosts: CidrSet,
    pub skip_hosts: CidrSet,
    pub ip_lookup_strategy: IpLookupStrategy,
    pub reconnect_strategy: ReconnectStrategy,
    pub try_next_host_on_transport_error: bool,
    pub use_lmtp: bool,
    pub enable_pipelining: bool,
    pub enable_rset: bool,
    pub ignore_8bit_checks: bool,
    /// Addresses kept per MX host. Default 10.
    pub max_mx_addresses_per_host: usize,
    /// Addresses kept in the whole connection plan. Default 50.
    pub max_mx_plan_size: usize,

    // --- housekeeping ---
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    pub refresh_strategy: ConfigRefreshStrategy,
    pub provider_name: Option<String>,
    pub dispatcher_wakeup_strategy: WakeupStrategy,
    pub maintainer_wakeup_strategy: WakeupStrategy,
    pub low_memory_reduction_policy: MemoryReductionPolicy,
    pub no_memory_reduction_policy: MemoryReductionPolicy,
    pub readyq_pool_name: Option<String>,
    /// Default: see [`EgressPathConfig::effective_watchdog_timeout`].
    #[serde(with = "opt_duration")]
    pub dispatcher_progress_watchdog_timeout: Option<Duration>,
    pub aggressive_connection_opening: bool,
    /// Deprecated upstream and without effect; accepted for compatibility.
    pub suspended: bool,
}

impl Default for EgressPathConfig {
    fn default() -> Self {
        Self {
            connection_limit: LimitSpec::new(32),
            additional_connection_limits: BTreeMap::new(),
            max_connection_rate: None,
            max_message_rate: None,
            additional_message_rate_throttles: BTreeMap::new(),
            source_selection_rate: None,
            additional_source_selection_rates: BTreeMap::new(),
            max_deliveries_per_connection: 1024,
            max_recipients_per_batch: 100,
            max_ready: 1024,
            consecutive_connection_failures_before_delay: 100,

            enable_tls: Tls::Opportunistic,
            enable_mta_sts: true,
            enable_dane: false,
            opportunistic_tls_reconnect_on_failed_handshake: false,
            remember_broken_tls: None,
            tls_prefer_openssl: false,
            openssl_cipher_list: None,
            openssl_cipher_suites: None,
            openssl_options: None,
            rustls_cipher_suites: Vec::new(),
            tls_certificate: None,
            tls_private_key: None,
            smtp_auth_plain_username: None,
            smtp_auth_plain_password: None,
            allow_smtp_auth_plain_without_tls: false,
            allow_smtp_auth_plain_without_valid_certificate: false,

            connect_timeout: secs(60),
            banner_timeout: secs(60),
            ehlo_timeout: secs(300),
            starttls_timeout: secs(5),
            tls_handshake_timeout: secs(60),
            auth_timeout: secs(60),
            mail_from_timeout: secs(300),
            rcpt_to_timeout: secs(300),
            data_timeout: secs(300),
            data_dot_timeout: secs(300),
            rset_timeout: secs(5),
            idle_timeout: secs(5),
            system_shutdown_timeout: None,

            smtp_port: 25,
            ehlo_domain: None,
            prohibited_hosts: default_prohibited_hosts(),
            skip_hosts: CidrSet::default(),
            ip_lookup_strategy: IpLookupStrategy::Ipv4AndIpv6,
            reconnect_strategy: ReconnectStrategy::ConnectNextHost,
            try_next_host_on_transport_error: false,
            use_lmtp: false,
            enable_pipelining: true,
            enable_rset: true,
            ignore_8bit_checks: false,
            max_mx_addresses_per_host: 10,
            max_mx_plan_size: 50,

            refresh_interval: secs(60),
            refresh_strategy: ConfigRefreshStrategy::Ttl,
            provider_name: None,
            dispatcher_wakeup_strategy: WakeupStrategy::Aggressive,
            maintainer_wakeup_strategy: WakeupStrategy::Aggressive,
            low_memory_reduction_policy: MemoryReductionPolicy::ShrinkDataAndMeta,
            no_memory_reduction_policy: MemoryReductionPolicy::ShrinkDataAndMeta,
            readyq_pool_name: None,
            dispatcher_progress_watchdog_timeout: None,
            aggressive_connection_opening: false,
            suspended: false,
        }
    }
}

fn key_source_supported(option: &str, source: &Option<KeySource>) -> Result<(), ConfigError> {
    match source {
        Some(KeySource::Unsupported(map)) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            Err(unsupported(format!(
                "{option}: the key source form with keys [{}] (use a file path or {{ key_data = \"...\" }})",
                keys.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

impl EgressPathConfig {
    /// `system_shutdown_timeout`, or mail_from + rcpt_to + data + data_dot.
    pub fn effective_system_shutdown_timeout(&self) -> Duration {
        self.system_shutdown_timeout.unwrap_or_else(|| {
            self.mail_from_timeout
                .saturating_add(self.rcpt_to_timeout)
                .saturating_add(self.data_timeout)
                .saturating_add(self.data_dot_timeout)
        })
    }

    /// `dispatcher_progress_watchdog_timeout`, or for SMTP
    /// max(2 x the longest of mail_from/rcpt_to/data/data_dot, 60 s), and
    /// 600 s for Lua and internal protocols.
    pub fn effective_watchdog_timeout(&self, is_smtp: bool) -> Duration {
        if let Some(timeout) = self.dispatcher_progress_watchdog_timeout {
            return timeout;
        }
        if !is_smtp {
            return secs(600);
        }
        let longest = self
            .mail_from_timeout
            .max(self.rcpt_to_timeout)
            .max(self.data_timeout)
            .max(self.data_dot_timeout);
        longest.saturating_mul(2).max(secs(60))
    }

    /// Reject options Tern cannot honour and values that are wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enable_dane {
            return Err(unsupported("enable_dane = true (DANE/TLSA verification)"));
        }
        if self.tls_prefer_openssl {
            return Err(unsupported(
                "tls_prefer_openssl = true (Tern uses rustls only)",
            ));
        }
        for (option, set) in [
            ("openssl_cipher_list", self.openssl_cipher_list.is_some()),
            (
                "openssl_cipher_suites",
                self.openssl_cipher_suites.is_some(),
            ),
            ("openssl_options", self.openssl_options.is_some()),
        ] {
            if set {
                return Err(unsupported(format!("{option} (Tern uses rustls only)")));
            }
        }
        if self.use_lmtp {
            return Err(unsupported("use_lmtp = true (LMTP delivery)"));
        }
        if let Some(bad) = self
            .rustls_cipher_suites
            .iter()
            .find(|name| !RUSTLS_CIPHER_SUITES.contains(&name.as_str()))
        {
            return Err(ConfigError::Invalid(format!(
                "rustls_cipher_suites: unknown cipher suite '{bad}'; known suites are {}",
                RUSTLS_CIPHER_SUITES.join(", ")
            )));
        }
        key_source_supported("tls_certificate", &self.tls_certificate)?;
        key_source_supported("tls_private_key", &self.tls_private_key)?;
        key_source_supported("smtp_auth_plain_password", &self.smtp_auth_plain_password)?;
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_certificate and tls_private_key must be set together".to_string(),
            ));
        }
        if self.smtp_auth_plain_password.is_some() && self.smtp_auth_plain_username.is_none() {
            return Err(ConfigError::Invalid(
                "smtp_auth_plain_password is set without smtp_auth_plain_username".to_string(),
            ));
        }
        for (option, value) in [
            (
                "max_deliveries_per_connection",
                self.max_deliveries_per_connection,
            ),
            ("max_recipients_per_batch", self.max_recipients_per_batch),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{option} must be at least 1")));
            }
        }
        Ok(())
    }

    /// Options that are accepted but not acted on, for a startup warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.enable_mta_sts {
            warnings.push(
                "enable_mta_sts: Tern does not fetch MTA-STS policies yet; enable_tls applies as configured"
                    .to_string(),
            );
        }
        if self.suspended {
            warnings.push("suspended is deprecated and has no effect".to_string());
        }
        if self.remember_broken_tls.is_some() {
            warnings.push(
                "remember_broken_tls: Tern does not remember broken TLS yet; every connection tries STARTTLS"
                    .to_string(),
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queue(value: serde_json::Value) -> Result<QueueConfig, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    fn path(value: serde_json::Value) -> Result<EgressPathConfig, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn queue_defaults() {
        let config = queue(json!({})).unwrap();
        assert_eq!(config, QueueConfig::default());
        assert_eq!(config.retry_interval, secs(1200));
        assert_eq!(config.max_retry_interval, None);
        assert_eq!(config.max_age, secs(604_800));
        assert_eq!(config.reap_interval, secs(600));
        assert_eq!(config.refresh_interval, secs(60));
        assert_eq!(config.refresh_strategy, ConfigRefreshStrategy::Ttl);
        assert_eq!(config.strategy, QueueStrategy::SingletonTimerWheel);
        assert_eq!(config.egress_pool_name(), "unspecified");
        assert_eq!(
            config.protocol,
            DeliveryProtocol::Smtp(SmtpProtocol::default())
        );
        assert_eq!(config.timerwheel_tick(), secs(60));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn queue_durations_as_numbers_and_strings() {
        let config = queue(json!({
            "retry_interval": 5,
            "max_retry_interval": "1 hour",
            "max_age": "20 minutes",
            "timerwheel_tick_interval": 2.5,
            "max_message_rate": "100/s",
            "egress_pool": "pool-a",
            "refresh_strategy": "Epoch",
            "strategy": "SkipList",
        }))
        .unwrap();
        assert_eq!(config.retry_interval, secs(5));
        assert_eq!(config.max_retry_interval, Some(secs(3600)));
        assert_eq!(config.max_age, secs(1200));
        assert_eq!(config.timerwheel_tick(), Duration::from_millis(2500));
        assert_eq!(config.max_message_rate.as_ref().unwrap().limit, 100);
        assert_eq!(config.egress_pool_name(), "pool-a");
        assert_eq!(config.delay_for_attempt(2), secs(20));
        // Tick derived from a short retry interval clamps to 1 s.
        assert_eq!(
            queue(json!({"retry_interval": 5}))
                .unwrap()
                .timerwheel_tick(),
            secs(1)
        );
    }

    #[test]
    fn unknown_queue_key_is_named() {
        let err = queue(json!({"retry_intervals": "5m"})).unwrap_err();
        assert!(err.contains("retry_intervals"), "{err}");
        let err = queue(json!({"max_age": "forever"})).unwrap_err();
        assert!(err.contains("forever"), "{err}");
        let err = queue(json!({"max_message_rate": "10/seconds"})).unwrap_err();
        assert!(err.contains("seconds"), "{err}");
    }

    #[test]
    fn protocol_shapes() {
        let config = queue(json!({"protocol": {"smtp": {"mx_list": [
            "smart.host.local", {"name": "mx.example.com", "addr": "10.0.0.1"}
        ]}}}))
        .unwrap();
        let DeliveryProtocol::Smtp(smtp) = &config.protocol else {
            panic!("expected smtp: {:?}", config.protocol)
        };
        assert_eq!(smtp.mx_list.len(), 2);
        assert_eq!(smtp.mx_list[1].label(), "10.0.0.1");
        assert!(!smtp.treat_mx_list_as_secure);

        let config = queue(json!({"protocol": {
            "maildir_path": "/var/tmp/{{ domain_part }}", "dir_mode": 509, "file_mode": 436
        }}))
        .unwrap();
        assert_eq!(
            config.protocol,
            DeliveryProtocol::Maildir(MaildirProtocol {
                maildir_path: "/var/tmp/{{ domain_part }}".to_string(),
                dir_mode: Some(0o775),
                file_mode: Some(0o664),
            })
        );

        let config =
            queue(json!({"protocol": {"custom_lua": {"constructor": "make.webhook"}}})).unwrap();
        assert_eq!(
            config.protocol,
            DeliveryProtocol::CustomLua(CustomLuaProtocol {
                constructor: "make.webhook".to_string(),
                batch_size: 1,
                min_batch_size: 1,
                max_batch_latency: Duration::ZERO,
            })
        );

        // Round trip through serialization.
        let again: QueueConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn empty_lua_table_mx_list_is_an_empty_list() {
        let config = queue(json!({"protocol": {"smtp": {"mx_list": {}}}})).unwrap();
        assert_eq!(config.protocol, DeliveryProtocol::default());
    }

    #[test]
    fn protocol_errors() {
        let err = queue(json!({"protocol": {"smtp": {"mx_lst": []}}})).unwrap_err();
        assert!(err.contains("mx_lst"), "{err}");
        let err = queue(json!({"protocol": {"maildir_path": "/x", "mode": 1}})).unwrap_err();
        assert!(err.contains("mode"), "{err}");
        let err = queue(json!({"protocol": {"smtp": {}, "extra": 1}})).unwrap_err();
        assert!(err.contains("extra"), "{err}");
        let err = queue(json!({"protocol": {"carrier_pigeon": {}}})).unwrap_err();
        assert!(err.contains("carrier_pigeon"), "{err}");
        let err = queue(json!({"protocol": {"custom_lua": {}}})).unwrap_err();
        assert!(err.contains("constructor"), "{err}");

        let xfer = queue(json!({"protocol": {"xfer": {"target": "http://x"}}})).unwrap();
        let err = xfer.validate().unwrap_err().to_string();
        assert!(
            err.contains("xfer") && err.ends_with("is not supported by Tern yet"),
            "{err}"
        );
    }

    #[test]
    fn shrink_policy_picks_last_matching_entry() {
        let config = queue(json!({"shrink_policy": [
            {"interval": "0 s", "policy": "ShrinkData"},
            {"interval": "60 s", "policy": "ShrinkDataAndMeta"},
        ]}))
        .unwrap();
        assert_eq!(
            config.shrink_policy_for(secs(10)),
            MemoryReductionPolicy::ShrinkData
        );
        assert_eq!(
            config.shrink_policy_for(secs(60)),
            MemoryReductionPolicy::ShrinkDataAndMeta
        );
        assert_eq!(
            QueueConfig::default().shrink_policy_for(secs(1)),
            MemoryReductionPolicy::ShrinkDataAndMeta
        );
    }

    #[test]
    fn egress_source_parses_and_rejects_proxies() {
        let source: EgressSource = serde_json::from_value(json!({
            "name": "ip-1",
            "source_address": "10.0.0.1",
            "ehlo_domain": "mta1.example.com",
            "remote_port": 2525,
            "suspend_when_unplumbed": {"duration": "5m"},
            "ttl": "2m",
        }))
        .unwrap();
        assert_eq!(source.source_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(source.ttl, secs(120));
        let rule = source.suspend_when_unplumbed.clone().unwrap();
        assert_eq!(rule.trigger, SuspendTrigger::Immediate);
        assert_eq!(rule.duration, secs(300));
        assert!(source.validate().is_ok());

        let rule: SuspendRule =
            serde_json::from_value(json!({"trigger": {"Threshold": "3/1m"}, "duration": 60}))
                .unwrap();
        let SuspendTrigger::Threshold(spec) = rule.trigger else {
            panic!("expected threshold")
        };
        assert_eq!((spec.limit, spec.period), (3, secs(60)));

        let proxied: EgressSource = serde_json::from_value(json!({
            "name": "proxied",
            "ha_proxy_server": "10.1.1.1:5000",
            "ha_proxy_source_address": "192.0.2.1",
        }))
        .unwrap();
        let err = proxied.validate().unwrap_err().to_string();
        assert!(err.contains("ha_proxy_server") && err.contains("not supported by Tern yet"));

        let err = serde_json::from_value::<EgressSource>(json!({"source_address": "10.0.0.1"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("name"), "{err}");
        let err = serde_json::from_value::<EgressSource>(json!({"name": "x", "bind": "1.2.3.4"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bind"), "{err}");
        assert_eq!(EgressSource::unspecified().name, "unspecified");
    }

    #[test]
    fn egress_pool_defaults() {
        let pool: EgressPool = serde_json::from_value(json!({
            "name": "pool-a",
            "entries": [{"name": "ip-1"}, {"name": "ip-2", "weight": 3}, {"name": "ip-3", "weight": 0}],
        }))
        .unwrap();
        assert_eq!(pool.weights(), vec![1, 3, 0]);
        assert_eq!(pool.ttl, secs(60));
        assert!(pool.validate().is_ok());
        let err = serde_json::from_value::<EgressPool>(
            json!({"name": "p", "entries": [{"name": "a", "wieght": 2}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("wieght"), "{err}");
        assert_eq!(EgressPool::unspecified().weights(), vec![1]);
    }

    #[test]
    fn egress_path_defaults_match_the_source_code() {
        let config = path(json!({})).unwrap();
        assert_eq!(config, EgressPathConfig::default());
        assert_eq!(config.connection_limit, LimitSpec::new(32));
        assert_eq!(config.max_deliveries_per_connection, 1024);
        assert_eq!(config.max_recipients_per_batch, 100);
        assert_eq!(config.max_ready, 1024);
        assert_eq!(config.consecutive_connection_failures_before_delay, 100);
        assert_eq!(config.enable_tls, Tls::Opportunistic);
        assert!(config.enable_mta_sts && !config.enable_dane);
        let timeouts = [
            (config.connect_timeout, 60),
            (config.banner_timeout, 60),
            (config.ehlo_timeout, 300),
            (config.starttls_timeout, 5),
            (config.auth_timeout, 60),
            (config.mail_from_timeout, 300),
            (config.rcpt_to_timeout, 300),
            (config.data_timeout, 300),
            (config.data_dot_timeout, 300),
            (config.rset_timeout, 5),
            (config.idle_timeout, 5),
        ];
        for (index, (actual, expected)) in timeouts.into_iter().enumerate() {
            assert_eq!(actual, secs(expected), "timeout #{index}");
        }
        assert_eq!(config.effective_system_shutdown_timeout(), secs(1200));
        assert_eq!(config.effective_watchdog_timeout(true), secs(600));
        assert_eq!(config.effective_watchdog_timeout(false), secs(600));
        assert_eq!(config.smtp_port, 25);
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::"] {
            assert!(
                config.prohibited_hosts.contains(ip.parse().unwrap()),
                "{ip}"
            );
        }
        assert!(
            !config
                .prohibited_hosts
                .contains("10.0.0.1".parse().unwrap())
        );
        assert!(config.skip_hosts.is_empty());
        assert_eq!(config.ip_lookup_strategy, IpLookupStrategy::Ipv4AndIpv6);
        assert_eq!(
            config.reconnect_strategy,
            ReconnectStrategy::ConnectNextHost
        );
        assert!(config.enable_pipelining && config.enable_rset);
        assert!(!config.use_lmtp && !config.ignore_8bit_checks);
        assert!(!config.try_next_host_on_transport_error);
        assert_eq!(config.refresh_interval, secs(60));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn egress_path_overrides() {
        let config = path(json!({
            "connection_limit": "local:10",
            "additional_connection_limits": {"global": 1000},
            "max_message_rate": "100/s",
            "additional_message_rate_throttles": {"isp": "1,000/hr"},
            "enable_tls": "OpportunisticInsecure",
            "prohibited_hosts": [],
            "skip_hosts": ["10.0.0.0/8"],
            "idle_timeout": "60s",
            "data_timeout": 30,
            "smtp_port": 2525,
            "smtp_auth_plain_username": "user",
            "smtp_auth_plain_password": {"key_data": "secret"},
            "ip_lookup_strategy": "Ipv4Only",
            "reconnect_strategy": "TerminateSession",
            "rustls_cipher_suites": ["TLS13_AES_128_GCM_SHA256"],
            "dispatcher_wakeup_strategy": "Relaxed",
            "remember_broken_tls": "1h",
        }))
        .unwrap();
        assert!(config.connection_limit.force_local);
        assert_eq!(config.additional_connection_limits["global"].limit, 1000);
        assert_eq!(config.additional_message_rate_throttles["isp"].limit, 1000);
        assert!(!config.enable_tls.verifies_certificate());
        assert!(config.prohibited_hosts.is_empty());
        assert!(config.skip_hosts.contains("10.1.2.3".parse().unwrap()));
        assert_eq!(config.idle_timeout, secs(60));
        assert_eq!(config.data_timeout, secs(30));
        assert_eq!(config.effective_watchdog_timeout(true), secs(600));
        assert_eq!(config.smtp_port, 2525);
        assert_eq!(config.remember_broken_tls, Some(secs(3600)));
        assert!(config.validate().is_ok());
        let again: EgressPathConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn egress_path_errors() {
        let err = path(json!({"conection_limit": 5})).unwrap_err();
        assert!(err.contains("conection_limit"), "{err}");
        let err = path(json!({"enable_tls": "Always"})).unwrap_err();
        assert!(err.contains("Always"), "{err}");
        let err = path(json!({"prohibited_hosts": ["192.168.1.1/24"]})).unwrap_err();
        assert!(err.contains("host bits"), "{err}");

        for (options, needle) in [
            (json!({"enable_dane": true}), "enable_dane"),
            (json!({"tls_prefer_openssl": true}), "tls_prefer_openssl"),
            (json!({"openssl_options": "NO_TICKET"}), "openssl_options"),
            (json!({"use_lmtp": true}), "use_lmtp"),
            (
                json!({"smtp_auth_plain_username": "u",
                       "smtp_auth_plain_password": {"vault_mount": "m", "vault_path": "p"}}),
                "vault_mount",
            ),
        ] {
            let err = path(options).unwrap().validate().unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.ends_with("is not supported by Tern yet"),
                "{err}"
            );
        }
        let err = path(json!({"rustls_cipher_suites": ["RC4"]}))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("RC4"), "{err}");
        assert!(!EgressPathConfig::default().warnings().is_empty());
    }
}
