//! Connection plans (spec §9.5): the ordered list of addresses a ready-queue
//! session walks when it opens a connection.
//!
//! A plan is built from a [`MailExchanger`] (MX answer) or from an explicit
//! `mx_list` of a queue's SMTP protocol. Each MX host is resolved according
//! to the path's `ip_lookup_strategy`; hosts that fail to resolve are skipped
//! (and logged); preference groups are kept lowest first and the addresses
//! inside one preference are shuffled, so load spreads over equal MX hosts.
//! Then the path's rules apply, in this order:
//!
//! 1. any address in `prohibited_hosts` fails the whole plan
//!    (`550 5.4.4`, a bounce: delivering there could loop mail back to us);
//! 2. addresses in `skip_hosts` are removed (nothing left: `451 4.4.4`);
//! 3. `max_mx_addresses_per_host` and `max_mx_plan_size` cap the list.
//!
//! The destination port is `source.remote_port`, else the port carried by
//! the MX entry (`example.com:2525` routing domains, `mx_list` entries with a
//! port), else `path.smtp_port`.

use crate::response::DeliveryResponse;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use tern_dns::mx::split_host_port;
use tern_dns::{Destination, MailExchanger, MxResolver, NULL_MX_RESPONSE, classify_domain};
use tern_queue::config::{EgressPathConfig, EgressSource, IpLookupStrategy, MxListEntry};
use tern_smtp::EnhancedCode;

/// One address to connect to, with the host name it came from (used for
/// SNI, certificate verification and logs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlannedHost {
    /// The MX host name (fully qualified, trailing dot), the `name` of a
    /// labelled `mx_list` entry, or the IP text for literals.
    pub name: String,
    pub addr: SocketAddr,
}

impl std::fmt::Display for PlannedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.addr)
    }
}

/// The hosts of one session, in the order to try them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPlan {
    pub hosts: Vec<PlannedHost>,
}

impl ConnectionPlan {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }
}

/// The response of a failed plan; `command` is always `None`.
pub type PlanResponse = DeliveryResponse;

/// Why no plan could be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `MX 0 .`: the domain accepts no mail.
    #[error("{}", NULL_MX_RESPONSE)]
    NullMx,
    /// An address of the MX is in `prohibited_hosts`.
    #[error("550 5.4.4 {addr} is on the list of prohibited_hosts {prohibited}")]
    Prohibited {
        addr: IpAddr,
        /// The configured list, as written in the response.
        prohibited: String,
    },
    /// Every address was on `skip_hosts`.
    #[error("451 4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list")]
    AllSkipped,
    /// No host resolved to any address.
    #[error("451 4.4.4 MX didn't resolve to any hosts")]
    NoAddresses,
    /// An `mx_list` entry or host name that cannot be used at all.
    #[error("451 4.4.4 {0}")]
    Dns(String),
}

impl PlanError {
    /// The exact response for the log record.
    pub fn response(&self) -> PlanResponse {
        let (code, enhanced, content) = match self {
            PlanError::NullMx => (
                556,
                EnhancedCode::new(5, 1, 10),
                "Recipient address has a null MX".to_string(),
            ),
            PlanError::Prohibited { addr, prohibited } => (
                550,
                EnhancedCode::new(5, 4, 4),
                format!("{addr} is on the list of prohibited_hosts {prohibited}"),
            ),
            PlanError::AllSkipped => (
                451,
                EnhancedCode::new(4, 4, 4),
                "KumoMTA internal: MX consisted solely of hosts on the skip_hosts list".to_string(),
            ),
            PlanError::NoAddresses => (
                451,
                EnhancedCode::new(4, 4, 4),
                "MX didn't resolve to any hosts".to_string(),
            ),
            PlanError::Dns(text) => (451, EnhancedCode::new(4, 4, 4), text.clone()),
        };
        DeliveryResponse::internal(code, Some(enhanced), content)
    }

    /// Bounce (null MX, prohibited host) rather than transient failure.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PlanError::NullMx | PlanError::Prohibited { .. })
    }
}

/// An address found during resolution, before the path rules apply.
struct Candidate {
    name: String,
    ip: IpAddr,
    port: Option<u16>,
}

fn dns_strategy(strategy: IpLookupStrategy) -> tern_dns::IpLookupStrategy {
    match strategy {
        IpLookupStrategy::Ipv4Only => tern_dns::IpLookupStrategy::Ipv4Only,
        IpLookupStrategy::Ipv6Only => tern_dns::IpLookupStrategy::Ipv6Only,
        IpLookupStrategy::Ipv4AndIpv6 => tern_dns::IpLookupStrategy::Ipv4AndIpv6,
        IpLookupStrategy::Ipv6ThenIpv4 => tern_dns::IpLookupStrategy::Ipv6ThenIpv4,
        IpLookupStrategy::Ipv4ThenIpv6 => tern_dns::IpLookupStrategy::Ipv4ThenIpv6,
    }
}

/// Resolve one host name into `group`, at most `per_host` addresses (in
/// DNS order). A failure is logged and leaves the group unchanged.
async fn resolve_host_into(
    group: &mut Vec<Candidate>,
    resolver: &MxResolver,
    path: &EgressPathConfig,
    name: &str,
    port: Option<u16>,
) {
    let strategy = dns_strategy(path.ip_lookup_strategy);
    match resolver.resolver().resolve_ip(name, strategy).await {
        Ok(answer) => {
            let keep = match path.max_mx_addresses_per_host {
                0 => usize::MAX,
                n => n,
            };
            group.extend(answer.records.into_iter().take(keep).map(|ip| Candidate {
                name: name.to_string(),
                ip,
                port,
            }));
        }
        Err(err) => tracing::warn!("skipping MX host {name}: {err}"),
    }
}

fn shuffle<T>(items: &mut [T]) {
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand::rng());
}

/// Build the plan for an MX answer: preference groups lowest first,
/// addresses shuffled within a preference, then the path rules.
pub async fn plan_for_mx(
    mx: &MailExchanger,
    resolver: &MxResolver,
    path: &EgressPathConfig,
    source: &EgressSource,
) -> Result<ConnectionPlan, PlanError> {
    if mx.is_null_mx() {
        return Err(PlanError::NullMx);
    }
    let mut groups = Vec::with_capacity(mx.by_pref.len());
    for hosts in mx.by_pref.values() {
        let mut group = Vec::new();
        for host in hosts.iter().filter(|host| host.as_str() != ".") {
            let (name, port) = split_host_port(host);
            resolve_host_into(&mut group, resolver, path, name, port.or(mx.port)).await;
        }
        shuffle(&mut group);
        groups.push(group);
    }
    apply_path_rules(groups, path, source)
}

/// Build the plan for an explicit `mx_list`: entries in the order given
/// (each entry is its own preference level), names resolved, `[ip]`
/// literals and `{ name, addr }` entries used directly.
pub async fn plan_for_mx_list(
    list: &[MxListEntry],
    resolver: &MxResolver,
    path: &EgressPathConfig,
    source: &EgressSource,
) -> Result<ConnectionPlan, PlanError> {
    let mut groups = Vec::with_capacity(list.len());
    for entry in list {
        let mut group = Vec::new();
        match entry {
            MxListEntry::Name(text) => match classify_domain(text) {
                Ok(Destination::Literal { ip, port }) => group.push(Candidate {
                    name: ip.to_string(),
                    ip,
                    port,
                }),
                Ok(Destination::Domain { name, port }) => {
                    resolve_host_into(&mut group, resolver, path, &name.to_ascii(), port).await
                }
                Err(err) => return Err(PlanError::Dns(format!("invalid mx_list entry: {err}"))),
            },
            MxListEntry::Labeled(labeled) => {
                let (ip, port) = parse_address(&labeled.addr).ok_or_else(|| {
                    PlanError::Dns(format!(
                        "invalid mx_list entry {{ name = {:?}, addr = {:?} }}: addr must be an IP address, optionally with a port",
                        labeled.name, labeled.addr
                    ))
                })?;
                group.push(Candidate {
                    name: labeled.name.clone(),
                    ip,
                    port,
                });
            }
        }
        shuffle(&mut group);
        groups.push(group);
    }
    apply_path_rules(groups, path, source)
}

/// `10.0.0.1`, `10.0.0.1:25`, `[10.0.0.1]`, `[::1]:25`, `::1`, `[IPv6:::1]`.
fn parse_address(text: &str) -> Option<(IpAddr, Option<u16>)> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some((addr.ip(), Some(addr.port())));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some((ip, None));
    }
    match classify_domain(text) {
        Ok(Destination::Literal { ip, port }) => Some((ip, port)),
        _ => None,
    }
}

fn render_cidr_set(set: &tern_types::CidrSet) -> String {
    let entries: Vec<String> = set.entries().iter().map(ToString::to_string).collect();
    format!("[{}]", entries.join(", "))
}

fn apply_path_rules(
    groups: Vec<Vec<Candidate>>,
    path: &EgressPathConfig,
    source: &EgressSource,
) -> Result<ConnectionPlan, PlanError> {
    let candidates: Vec<Candidate> = groups.into_iter().flatten().collect();
    if candidates.is_empty() {
        return Err(PlanError::NoAddresses);
    }
    if let Some(bad) = candidates
        .iter()
        .find(|c| path.prohibited_hosts.contains(c.ip))
    {
        return Err(PlanError::Prohibited {
            addr: bad.ip,
            prohibited: render_cidr_set(&path.prohibited_hosts),
        });
    }
    let limit = match path.max_mx_plan_size {
        0 => usize::MAX,
        n => n,
    };
    let mut seen = HashSet::new();
    let hosts: Vec<PlannedHost> = candidates
        .into_iter()
        .filter(|c| !path.skip_hosts.contains(c.ip))
        .map(|c| {
            let port = source.remote_port.or(c.port).unwrap_or(path.smtp_port);
            PlannedHost {
                name: c.name,
                addr: SocketAddr::new(c.ip, port),
            }
        })
        .filter(|host| seen.insert(host.addr))
        .take(limit)
        .collect();
    if hosts.is_empty() {
        return Err(PlanError::AllSkipped);
    }
    Ok(ConnectionPlan { hosts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_exact() {
        let r = PlanError::NullMx.response();
        assert_eq!(
            r.to_single_line(),
            "556 5.1.10 Recipient address has a null MX"
        );
        assert!(PlanError::NullMx.is_permanent());
        let prohibited = PlanError::Prohibited {
            addr: "127.0.0.1".parse().unwrap(),
            prohibited: render_cidr_set(&tern_queue::config::default_prohibited_hosts()),
        };
        assert!(prohibited.is_permanent());
        let line = prohibited.response().to_single_line();
        assert!(
            line.starts_with("550 5.4.4 127.0.0.1 is on the list of prohibited_hosts [127.0.0.0/8"),
            "{line}"
        );
        assert_eq!(
            PlanError::AllSkipped.response().to_single_line(),
            "451 4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list"
        );
        assert_eq!(
            PlanError::NoAddresses.response().to_single_line(),
            "451 4.4.4 MX didn't resolve to any hosts"
        );
        assert!(!PlanError::NoAddresses.is_permanent());
        assert!(!PlanError::AllSkipped.is_permanent());
        // Display matches the response line.
        assert_eq!(
            PlanError::NoAddresses.to_string(),
            PlanError::NoAddresses.response().to_single_line()
        );
    }

    #[test]
    fn address_forms() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(parse_address("10.0.0.1"), Some((v4, None)));
        assert_eq!(parse_address("10.0.0.1:2525"), Some((v4, Some(2525))));
        assert_eq!(parse_address("[10.0.0.1]"), Some((v4, None)));
        assert_eq!(parse_address("[::1]:25"), Some((v6, Some(25))));
        assert_eq!(parse_address("[IPv6:::1]"), Some((v6, None)));
        assert_eq!(parse_address("mx.example.com"), None);
    }
}
