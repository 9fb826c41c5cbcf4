//! The `Resolver`: one value that answers MX, A/AAAA, TXT and PTR queries,
//! whichever backend is behind it.
//!
//! Backends are the hickory resolver (configured from `/etc/resolv.conf` or
//! from a `kumo.dns.configure_resolver` table, see [`crate::config`]), the
//! in-memory [`TestResolver`] built from zone-file text, and an aggregate that
//! asks several resolvers in turn. The server holds one `Arc<Resolver>` and
//! swaps it when the policy reconfigures DNS in `init`; nothing here is global.
//!
//! Every lookup returns typed records together with the answer's TTL (so the
//! MX cache can expire entries on time) and whether the answer was DNSSEC
//! validated, or a [`DnsError`] that tells NXDOMAIN, NODATA and transient
//! failures apart.

use crate::error::DnsError;
use crate::test_resolver::TestResolver;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Records of one answer, with the time they may be cached for.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    /// The smallest TTL among the returned records.
    pub ttl: Duration,
    /// True when the answer was DNSSEC validated (test zones marked `secure`).
    pub is_secure: bool,
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnMut(T) -> Option<U>) -> Answer<U> {
        Answer {
            records: self.records.into_iter().filter_map(f).collect(),
            ttl: self.ttl,
            is_secure: self.is_secure,
        }
    }
}

/// One MX record: preference and exchange host (lowercased, fully
/// qualified, with its trailing dot; `"."` for a null MX).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// Which address families to ask for, and in what order (the egress path's
/// `ip_lookup_strategy`, spec §11.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpLookupStrategy {
    /// A and AAAA in parallel; IPv4 addresses first.
    #[default]
    Ipv4AndIpv6,
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
    /// AAAA first; A only if AAAA produced nothing.
    Ipv6ThenIpv4,
    /// A first; AAAA only if A produced nothing.
    Ipv4ThenIpv6,
}

/// A DNS resolver: hickory (system or configured), in-memory test zones, or
/// an ordered aggregate of resolvers.
pub enum Resolver {
    Hickory(Box<TokioResolver>),
    Test(TestResolver),
    /// Asked in order; the first resolver that produces records wins.
    Aggregate(Vec<Resolver>),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hickory(_) => f.write_str("Resolver::Hickory"),
            Self::Test(test) => write!(f, "Resolver::Test({} names)", test.name_count()),
            Self::Aggregate(list) => f.debug_tuple("Resolver::Aggregate").field(list).finish(),
        }
    }
}

/// Parse a domain name, lowercase it and make it fully qualified (the MX
/// code never wants search-list expansion).
pub fn fully_qualify(domain: &str) -> Result<Name, DnsError> {
    let trimmed = domain.trim();
    if trimmed.is_empty() {
        return Err(DnsError::invalid_name(domain, "empty name"));
    }
    let mut name = Name::from_str_relaxed(trimmed)
        .map_err(|err| DnsError::invalid_name(domain, err))?
        .to_lowercase();
    name.set_fqdn(true);
    Ok(name)
}

/// The `in-addr.arpa.`/`ip6.arpa.` name for an address.
pub fn ptr_name(ip: IpAddr) -> Name {
    let mut name = Name::from(ip);
    name.set_fqdn(true);
    name
}

impl Resolver {
    /// Hickory configured from the system (`/etc/resolv.conf`), with caching.
    pub fn system() -> Result<Self, DnsError> {
        let builder = TokioResolver::builder_tokio().map_err(|err| {
            DnsError::config(format!(
                "reading the system DNS configuration failed: {err}"
            ))
        })?;
        let resolver = builder.build().map_err(|err| {
            DnsError::config(format!("building the system resolver failed: {err}"))
        })?;
        Ok(Self::Hickory(Box::new(resolver)))
    }

    /// Look up raw records of one type for an already-qualified name.
    pub async fn lookup(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Answer<RData>, DnsError> {
        match self {
            Self::Hickory(resolver) => hickory_lookup(resolver, name, record_type).await,
            Self::Test(test) => {
                if let Some(delay) = test.delay() {
                    tokio::time::sleep(delay).await;
                }
                test.lookup(name, record_type)
            }
            Self::Aggregate(list) => {
                let mut last_error = DnsError::NxDomain {
                    name: name.to_string(),
                };
                for resolver in list {
                    match Box::pin(resolver.lookup(name, record_type)).await {
                        Ok(answer) => return Ok(answer),
                        Err(err) => last_error = err,
                    }
                }
                Err(last_error)
            }
        }
    }

    /// MX records for `name` (made fully qualified), exchanges lowercased.
    pub async fn resolve_mx(&self, name: &str) -> Result<Answer<MxRecord>, DnsError> {
        let name = fully_qualify(name)?;
        let answer = self.lookup(&name, RecordType::MX).await?;
        Ok(answer.map(|rdata| match rdata {
            RData::MX(mx) => {
                let mut exchange = mx.exchange.to_lowercase();
                exchange.set_fqdn(true);
                Some(MxRecord {
                    preference: mx.preference,
                    exchange: exchange.to_ascii(),
                })
            }
            _ => None,
        }))
    }

    /// Addresses for a host name according to `strategy`. An IP address in
    /// text form is returned as is, without DNS.
    pub async fn resolve_ip(
        &self,
        name: &str,
        strategy: IpLookupStrategy,
    ) -> Result<Answer<IpAddr>, DnsError> {
        if let Ok(ip) = name.trim().parse::<IpAddr>() {
            return Ok(Answer {
                records: vec![ip],
                ttl: Duration::from_secs(u32::MAX as u64),
                is_secure: false,
            });
        }
        let name = fully_qualify(name)?;
        match strategy {
            IpLookupStrategy::Ipv4Only => self.addresses(&name, RecordType::A).await,
            IpLookupStrategy::Ipv6Only => self.addresses(&name, RecordType::AAAA).await,
            IpLookupStrategy::Ipv4AndIpv6 => {
                let (v4, v6) = tokio::join!(
                    self.addresses(&name, RecordType::A),
                    self.addresses(&name, RecordType::AAAA)
                );
                merge_parallel(v4, v6)
            }
            IpLookupStrategy::Ipv4ThenIpv6 => {
                self.first_then(&name, RecordType::A, RecordType::AAAA)
                    .await
            }
            IpLookupStrategy::Ipv6ThenIpv4 => {
                self.first_then(&name, RecordType::AAAA, RecordType::A)
                    .await
            }
        }
    }

    /// TXT records for `name`; each record's strings are concatenated.
    pub async fn resolve_txt(&self, name: &str) -> Result<Answer<String>, DnsError> {
        let name = fully_qualify(name)?;
        let answer = self.lookup(&name, RecordType::TXT).await?;
        Ok(answer.map(|rdata| match rdata {
            RData::TXT(txt) => {
                let mut text = String::new();
                for part in txt.txt_data.iter() {
                    text.push_str(&String::from_utf8_lossy(part));
                }
                Some(text)
            }
            _ => None,
        }))
    }

    /// PTR names (fully qualified, trailing dot) for an address.
    pub async fn resolve_ptr(&self, ip: IpAddr) -> Result<Answer<String>, DnsError> {
        let answer = self.lookup(&ptr_name(ip), RecordType::PTR).await?;
        Ok(answer.map(|rdata| match rdata {
            RData::PTR(ptr) => Some(ptr.0.to_ascii()),
            _ => None,
        }))
    }

    async fn addresses(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Answer<IpAddr>, DnsError> {
        let answer = self.lookup(name, record_type).await?;
        Ok(answer.map(|rdata| match rdata {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        }))
    }

    async fn first_then(
        &self,
        name: &Name,
        first: RecordType,
        second: RecordType,
    ) -> Result<Answer<IpAddr>, DnsError> {
        match self.addresses(name, first).await {
            Ok(answer) if !answer.records.is_empty() => Ok(answer),
            Ok(_) | Err(_) => self.addresses(name, second).await,
        }
    }
}

/// Combine parallel A and AAAA results: any addresses win; otherwise report
/// the most useful error (NODATA beats NXDOMAIN if either family exists, a
/// transient failure beats both because it may hide records).
fn merge_parallel(
    v4: Result<Answer<IpAddr>, DnsError>,
    v6: Result<Answer<IpAddr>, DnsError>,
) -> Result<Answer<IpAddr>, DnsError> {
    match (v4, v6) {
        (Ok(mut a), Ok(b)) => {
            a.ttl = a.ttl.min(b.ttl);
            a.is_secure &= b.is_secure;
            a.records.extend(b.records);
            Ok(a)
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        (Err(a), Err(b)) => Err(if a.is_transient() {
            a
        } else if b.is_transient() || a.is_nxdomain() {
            b
        } else {
            a
        }),
    }
}

async fn hickory_lookup(
    resolver: &TokioResolver,
    name: &Name,
    record_type: RecordType,
) -> Result<Answer<RData>, DnsError> {
    let started = Instant::now();
    let lookup = resolver
        .lookup(name.clone(), record_type)
        .await
        .map_err(|err| map_hickory_error(name, record_type, err, started.elapsed()))?;
    let records: Vec<RData> = lookup
        .answers()
        .iter()
        .filter(|record| record.record_type() == record_type)
        .map(|record| record.data.clone())
        .collect();
    if records.is_empty() {
        // Only intermediates (e.g. a CNAME chain) and no record of the type.
        return Err(DnsError::NoData {
            name: name.to_string(),
            record_type: record_type.to_string(),
        });
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(Instant::now());
    Ok(Answer {
        records,
        ttl,
        is_secure: false,
    })
}

fn map_hickory_error(
    name: &Name,
    record_type: RecordType,
    err: NetError,
    elapsed: Duration,
) -> DnsError {
    let name_text = name.to_string();
    match err {
        NetError::Dns(HickoryDnsError::NoRecordsFound(no_records)) => {
            match no_records.response_code {
                ResponseCode::NXDomain => DnsError::NxDomain { name: name_text },
                ResponseCode::NoError => DnsError::NoData {
                    name: name_text,
                    record_type: record_type.to_string(),
                },
                code => DnsError::ServFail {
                    name: name_text,
                    detail: code.to_string(),
                },
            }
        }
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => DnsError::ServFail {
            name: name_text,
            detail: code.to_string(),
        },
        NetError::Timeout => DnsError::Timeout {
            name: name_text,
            elapsed,
        },
        other => DnsError::Other {
            name: name_text,
            detail: other.to_string(),
        },
    }
}
