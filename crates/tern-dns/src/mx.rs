//! MX resolution for a routing domain (spec §9.1–9.2), with caching.
//!
//! [`classify_domain`] splits an optional `:port`, recognises domain
//! literals (`[1.2.3.4]`, `[IPv6:::1]`, `[::1]`) and otherwise lowercases and
//! fully qualifies the name. [`MxResolver::lookup_mx`] turns that into a
//! [`MailExchanger`]: hosts grouped by preference and sorted within each
//! preference, the implicit MX when the name has no MX records, the null MX,
//! and the site name from [`crate::site::factor_names`].
//!
//! The resolver keeps its own cache keyed by the qualified name (and port):
//! answers live for the record TTL, NXDOMAIN and other hard failures for the
//! negative TTL (300 s by default), SERVFAIL/timeouts for the shorter
//! transient TTL. Queries are bounded by a timeout and a concurrency limit,
//! and concurrent lookups of one name share a single query. Nothing is
//! global: the server builds one `MxResolver` per resolver configuration.

use crate::error::DnsError;
use crate::resolver::{IpLookupStrategy, Resolver, fully_qualify};
use crate::site::{factor_names, split_port};
use hickory_proto::rr::Name;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

/// The permanent failure a delivery to a null-MX domain gets.
pub const NULL_MX_RESPONSE: &str = "556 5.1.10 Recipient address has a null MX";

/// What a routing domain denotes once its syntax is understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A bracketed IP literal: no DNS.
    Literal { ip: IpAddr, port: Option<u16> },
    /// A DNS name, lowercased and fully qualified.
    Domain { name: Name, port: Option<u16> },
}

/// Classify a routing domain (§9.1).
pub fn classify_domain(domain: &str) -> Result<Destination, DnsError> {
    let text = domain.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| DnsError::invalid_name(domain, "domain literal has no closing ']'"))?;
        let outer_port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .and_then(|port| port.parse::<u16>().ok())
                    .ok_or_else(|| {
                        DnsError::invalid_name(domain, "unexpected text after domain literal")
                    })?,
            ),
        };
        let (ip, inner_port) =
            parse_literal(inner).map_err(|reason| DnsError::invalid_name(domain, reason))?;
        let port = match (inner_port, outer_port) {
            (Some(_), Some(_)) => {
                return Err(DnsError::invalid_name(
                    domain,
                    "a port may be given inside or outside the brackets, not both",
                ));
            }
            (inner, outer) => inner.or(outer),
        };
        return Ok(Destination::Literal { ip, port });
    }
    let (name, port) = split_port(text);
    let port = port.map(|p| p.parse::<u16>().expect("split_port checked the port"));
    Ok(Destination::Domain {
        name: fully_qualify(name)?,
        port,
    })
}

/// The inside of `[...]`: `IPv6:addr` (tag case-insensitive), a bare IPv6
/// address, or an IPv4 address optionally followed by `:port`.
fn parse_literal(inner: &str) -> Result<(IpAddr, Option<u16>), String> {
    if inner.len() >= 5 && inner[..5].eq_ignore_ascii_case("ipv6:") {
        let text = &inner[5..];
        return text
            .parse::<Ipv6Addr>()
            .map(|ip| (IpAddr::V6(ip), None))
            .map_err(|err| format!("invalid IPv6 literal '{text}': {err}"));
    }
    if let Ok(ip) = inner.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    let (address, port) = split_port(inner);
    match (address.parse::<IpAddr>(), port) {
        (Ok(ip), Some(port)) => Ok((ip, port.parse::<u16>().ok())),
        _ => Err(format!("'{inner}' is not an IP address")),
    }
}

/// The MTA-STS mode applied to a result. Tern does not fetch MTA-STS
/// policies yet, so this is always `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtaStsMode {
    #[default]
    None,
    Testing,
    Enforce,
}

/// The MX answer for a routing domain, shaped like `kumo.dns.lookup_mx`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MailExchanger {
    /// The fully qualified name that was resolved (`"example.com."`), or the
    /// literal as given (`"[127.0.0.1]"`).
    pub domain_name: String,
    /// Hosts in preference order, sorted alphabetically within a preference,
    /// each with `:port` appended when the domain carried one.
    pub hosts: Vec<String>,
    pub site_name: String,
    /// Preference → hosts at that preference.
    pub by_pref: BTreeMap<u16, Vec<String>>,
    pub is_domain_literal: bool,
    /// DNSSEC validated.
    pub is_secure: bool,
    /// False for literals and the implicit MX.
    pub is_mx: bool,
    pub mta_sts: MtaStsMode,
    /// The `:port` given with the domain, if any.
    #[serde(skip)]
    pub port: Option<u16>,
    #[serde(skip)]
    expires: Option<Instant>,
}

impl MailExchanger {
    /// The result for an IP literal: no DNS, site name is the bare IP.
    pub fn literal(domain: &str, ip: IpAddr, port: Option<u16>) -> Self {
        let host = match port {
            Some(port) => SocketAddr::new(ip, port).to_string(),
            None => ip.to_string(),
        };
        Self {
            domain_name: domain.trim().to_string(),
            hosts: vec![host.clone()],
            site_name: ip.to_string(),
            by_pref: BTreeMap::from([(1, vec![host])]),
            is_domain_literal: true,
            is_secure: false,
            is_mx: false,
            mta_sts: MtaStsMode::None,
            port,
            expires: None,
        }
    }

    /// Build from MX records (`(preference, exchange)` with exchanges
    /// lowercased and fully qualified). An empty list gives the implicit MX.
    pub fn from_records(
        name: &Name,
        port: Option<u16>,
        records: impl IntoIterator<Item = (u16, String)>,
        is_secure: bool,
    ) -> Self {
        let with_port = |host: String| match port {
            Some(port) if host != "." => format!("{host}:{port}"),
            _ => host,
        };
        let mut by_pref: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (preference, exchange) in records {
            by_pref.entry(preference).or_default().push(exchange);
        }
        let is_mx = !by_pref.is_empty();
        if !is_mx {
            by_pref.insert(1, vec![name.to_ascii()]);
        }
        for hosts in by_pref.values_mut() {
            hosts.sort();
            hosts.dedup();
            for host in hosts.iter_mut() {
                *host = with_port(std::mem::take(host));
            }
        }
        let hosts: Vec<String> = by_pref.values().flatten().cloned().collect();
        // The null MX "." names no site; if it is (wrongly) mixed with real
        // hosts, leave it out of the name rather than make every label optional.
        let named: Vec<&str> = hosts
            .iter()
            .map(String::as_str)
            .filter(|host| *host != ".")
            .collect();
        let site_name = factor_names(&named);
        Self {
            domain_name: name.to_ascii(),
            hosts,
            site_name,
            by_pref,
            is_domain_literal: false,
            is_secure,
            is_mx,
            mta_sts: MtaStsMode::None,
            port,
            expires: None,
        }
    }

    /// `MX 0 .`: the domain accepts no mail; deliveries bounce with
    /// [`NULL_MX_RESPONSE`].
    pub fn is_null_mx(&self) -> bool {
        self.hosts.len() == 1 && self.hosts[0] == "."
    }

    /// True once the DNS TTL of this answer has passed.
    pub fn has_expired(&self) -> bool {
        self.expires
            .is_some_and(|deadline| deadline <= Instant::now())
    }

    /// When this answer stops being valid (`None` for literals).
    pub fn expires(&self) -> Option<Instant> {
        self.expires
    }

    /// Resolve every host to addresses for a connection plan (§9.5):
    /// preference groups lowest first, addresses shuffled within a group,
    /// IP hosts used directly, hosts that fail to resolve skipped.
    pub async fn resolve_addresses(
        &self,
        resolver: &Resolver,
        strategy: IpLookupStrategy,
    ) -> ResolvedAddresses {
        if self.is_null_mx() {
            return ResolvedAddresses::NullMx;
        }
        let mut plan = Vec::new();
        let mut failures = Vec::new();
        for hosts in self.by_pref.values() {
            let mut group = Vec::new();
            for host in hosts {
                if host == "." {
                    continue;
                }
                let (name, port) = split_host_port(host);
                match resolver.resolve_ip(name, strategy).await {
                    Ok(answer) => {
                        group.extend(answer.records.into_iter().map(|addr| ResolvedAddress {
                            name: name.to_string(),
                            addr,
                            port,
                        }))
                    }
                    Err(err) => {
                        tracing::warn!("failed to resolve MX host {name}: {err}");
                        failures.push((name.to_string(), err));
                    }
                }
            }
            shuffle(&mut group);
            plan.extend(group);
        }
        ResolvedAddresses::Addresses { plan, failures }
    }
}

/// Split `host:port`, `[v6]:port` or `v4:port` into host and port.
pub fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        // `[::1]:25`: hand back the address text without brackets.
        let text = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let text = text.trim_start_matches('[').trim_end_matches(']');
        return (text, Some(addr.port()));
    }
    let (name, port) = split_port(host);
    (name, port.and_then(|p| p.parse().ok()))
}

fn shuffle<T>(items: &mut [T]) {
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand::rng());
}

/// One address of a connection plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAddress {
    /// The MX host name the address came from (or the IP text).
    pub name: String,
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// The connection plan for a [`MailExchanger`].
#[derive(Clone, Debug, PartialEq)]
pub enum ResolvedAddresses {
    NullMx,
    Addresses {
        /// Lowest preference first, shuffled within a preference.
        plan: Vec<ResolvedAddress>,
        /// Hosts that could not be resolved (skipped).
        failures: Vec<(String, DnsError)>,
    },
}

/// Knobs of the MX layer (`kumo.dns.set_mx_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxSettings {
    /// `set_mx_timeout`: whole-lookup timeout, including waiting for a slot.
    pub timeout: Duration,
    /// `set_mx_concurrency_limit`: MX queries in flight at once.
    pub concurrency_limit: usize,
    /// `set_mx_negative_cache_ttl`: how long NXDOMAIN (and other hard
    /// failures, and implicit-MX answers) are cached.
    pub negative_cache_ttl: Duration,
    /// `set_mx_transient_negative_cache_ttl`: how long SERVFAIL/timeouts are cached.
    pub transient_negative_cache_ttl: Duration,
    /// Maximum cached names (`dns_resolver_mx` holds 64k).
    pub cache_capacity: usize,
}

impl Default for MxSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            concurrency_limit: 128,
            negative_cache_ttl: Duration::from_secs(300),
            transient_negative_cache_ttl: Duration::from_secs(30),
            cache_capacity: 64 * 1024,
        }
    }
}

type MxResult = Result<Arc<MailExchanger>, DnsError>;

struct CacheEntry {
    value: MxResult,
    expires: Instant,
}

/// A resolver plus the MX cache, limits and settings; the server keeps one
/// (in an `Arc`) and replaces it when DNS is reconfigured.
pub struct MxResolver {
    resolver: Arc<Resolver>,
    settings: MxSettings,
    slots: Semaphore,
    cache: Mutex<HashMap<String, CacheEntry>>,
    in_flight: Mutex<HashMap<String, Arc<OnceCell<MxResult>>>>,
}

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxResolver")
            .field("resolver", &self.resolver)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MxResolver {
    pub fn new(resolver: Arc<Resolver>, settings: MxSettings) -> Self {
        let slots = Semaphore::new(settings.concurrency_limit.max(1));
        Self {
            resolver,
            settings,
            slots,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The underlying resolver, for A/AAAA/TXT/PTR lookups.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub fn settings(&self) -> &MxSettings {
        &self.settings
    }

    /// A new MX layer with the same settings over another resolver (its
    /// cache starts empty, since the old answers came from the old resolver).
    pub fn with_resolver(&self, resolver: Arc<Resolver>) -> Self {
        Self::new(resolver, self.settings.clone())
    }

    /// Forget every cached answer.
    pub fn clear_cache(&self) {
        self.cache.lock().clear();
    }

    /// Number of cached names, expired ones included until they are evicted.
    pub fn cached_len(&self) -> usize {
        self.cache.lock().len()
    }

    /// `kumo.dns.lookup_mx` / the scheduled queue's MX resolution.
    pub async fn lookup_mx(&self, domain: &str) -> MxResult {
        let (name, port) = match classify_domain(domain)? {
            Destination::Literal { ip, port } => {
                return Ok(Arc::new(MailExchanger::literal(domain, ip, port)));
            }
            Destination::Domain { name, port } => (name, port),
        };
        let key = match port {
            Some(port) => format!("{name}:{port}"),
            None => name.to_string(),
        };
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let cell = self
            .in_flight
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            // Another caller may have finished between our miss and now.
            let result = match self.cached(&key) {
                Some(hit) => hit,
                None => self.query_and_cache(&key, &name, port).await,
            };
            self.in_flight.lock().remove(&key);
            result
        })
        .await
        .clone()
    }

    fn cached(&self, key: &str) -> Option<MxResult> {
        let cache = self.cache.lock();
        let entry = cache.get(key)?;
        (entry.expires > Instant::now()).then(|| entry.value.clone())
    }

    async fn query_and_cache(&self, key: &str, name: &Name, port: Option<u16>) -> MxResult {
        let mut got_slot = false;
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.settings.timeout, async {
            let _permit = self
                .slots
                .acquire()
                .await
                .expect("semaphore is never closed");
            got_slot = true;
            self.resolver.resolve_mx(&name.to_ascii()).await
        })
        .await;
        let now = Instant::now();
        let (result, cache_until): (MxResult, Option<Instant>) = match outcome {
            Ok(Ok(answer)) if !answer.records.is_empty() => {
                let mut mx = MailExchanger::from_records(
                    name,
                    port,
                    answer
                        .records
                        .into_iter()
                        .map(|r| (r.preference, r.exchange)),
                    answer.is_secure,
                );
                let expires = now + answer.ttl;
                mx.expires = Some(expires);
                (Ok(Arc::new(mx)), Some(expires))
            }
            // No MX records but the name exists: implicit MX (§9.2).
            Ok(Ok(_)) | Ok(Err(DnsError::NoData { .. })) => {
                let mut mx = MailExchanger::from_records(name, port, [], false);
                let expires = now + self.settings.negative_cache_ttl;
                mx.expires = Some(expires);
                (Ok(Arc::new(mx)), Some(expires))
            }
            Ok(Err(err)) => {
                let ttl = if err.is_transient() {
                    self.settings.transient_negative_cache_ttl
                } else {
                    self.settings.negative_cache_ttl
                };
                (Err(err), Some(now + ttl))
            }
            Err(_elapsed) => {
                let err = DnsError::Timeout {
                    name: name.to_string(),
                    elapsed: started.elapsed(),
                };
                // A lookup that never got a slot says nothing about the
                // domain: do not cache it, the next attempt retries at once.
                let until = got_slot.then(|| now + self.settings.transient_negative_cache_ttl);
                (Err(err), until)
            }
        };
        if let Some(expires) = cache_until {
            self.store(key, result.clone(), expires, now);
        }
        result
    }

    fn store(&self, key: &str, value: MxResult, expires: Instant, now: Instant) {
        let mut cache = self.cache.lock();
        if cache.len() >= self.settings.cache_capacity && !cache.contains_key(key) {
            cache.retain(|_, entry| entry.expires > now);
            if cache.len() >= self.settings.cache_capacity
                && let Some(victim) = cache.keys().next().cloned()
            {
                cache.remove(&victim);
            }
        }
        cache.insert(key.to_string(), CacheEntry { value, expires });
    }
}
