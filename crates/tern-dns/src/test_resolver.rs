//! An in-memory resolver built from zone-file text
//! (`kumo.dns.configure_test_resolver`, spec §10).
//!
//! Policies and tests use it for hermetic DNS: every answer comes from the
//! zones given, names in no zone answer NXDOMAIN, names listed as `servfail`
//! answer SERVFAIL, and a zone marked `secure` produces answers flagged as
//! DNSSEC validated. Zone text is parsed by hickory's zone-file parser; the
//! lookup logic (exact match, CNAME chasing, `*` wildcards, NODATA for names
//! that exist without the asked type or that are empty non-terminals) is
//! implemented here so the behaviour stays small and predictable.

use crate::config::TestResolverParams;
use crate::error::DnsError;
use crate::resolver::{Answer, fully_qualify};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How many CNAMEs a lookup follows before giving up (loops are errors).
const MAX_CNAME_CHAIN: usize = 8;

#[derive(Default)]
struct Node {
    rrsets: HashMap<RecordType, Vec<Record>>,
    secure: bool,
}

/// Zone data held in memory and answered without sockets.
pub struct TestResolver {
    nodes: HashMap<Name, Node>,
    /// Every owner name plus its ancestors inside its zone: a name here
    /// exists, so a missing type is NODATA rather than NXDOMAIN.
    existing: HashSet<Name>,
    servfail: HashSet<Name>,
    /// Artificial latency per query, for tests of timeouts and concurrency.
    delay: Option<Duration>,
    /// Queries answered so far, so tests can observe caching.
    queries: AtomicUsize,
}

impl TestResolver {
    /// Build from the parsed `configure_test_resolver` parameters.
    pub fn new(params: &TestResolverParams) -> Result<Self, DnsError> {
        let mut resolver = Self {
            nodes: HashMap::new(),
            existing: HashSet::new(),
            servfail: HashSet::new(),
            delay: None,
            queries: AtomicUsize::new(0),
        };
        for (index, zone) in params.zones.iter().enumerate() {
            resolver.add_zone(&zone.zone, zone.secure).map_err(|err| {
                DnsError::config(format!("test resolver zone #{}: {err}", index + 1))
            })?;
        }
        for name in &params.servfail {
            resolver.servfail.insert(fully_qualify(name)?);
        }
        Ok(resolver)
    }

    /// Build from plain (insecure) zone texts.
    pub fn from_zones<S: AsRef<str>>(zones: &[S]) -> Result<Self, DnsError> {
        Self::new(&TestResolverParams::from_zones(zones))
    }

    /// Make every query take `delay` (tokio time) before it is answered.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The artificial latency set by [`Self::with_delay`].
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// How many queries this resolver has answered (errors included).
    pub fn query_count(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// Number of distinct owner names loaded.
    pub fn name_count(&self) -> usize {
        self.nodes.len()
    }

    fn add_zone(&mut self, text: &str, secure: bool) -> Result<(), String> {
        let (origin, records) = Parser::new(text, None, None)
            .parse()
            .map_err(|err| format!("invalid zone text: {err}"))?;
        let origin = origin.to_lowercase();
        for rrset in records.values() {
            for record in rrset.records_without_rrsigs() {
                let mut owner = record.name.to_lowercase();
                owner.set_fqdn(true);
                self.mark_existing(&owner, &origin);
                let node = self.nodes.entry(owner).or_default();
                node.secure |= secure;
                let list = node.rrsets.entry(record.record_type()).or_default();
                if !list.iter().any(|existing| existing.data == record.data) {
                    list.push(record.clone());
                }
            }
        }
        Ok(())
    }

    fn mark_existing(&mut self, owner: &Name, origin: &Name) {
        let mut current = owner.clone();
        loop {
            let inside_zone = origin.zone_of(&current);
            self.existing.insert(current.clone());
            if !inside_zone || current.is_root() || current == *origin {
                break;
            }
            current = current.base_name();
        }
    }

    /// The node answering for `name`: the exact owner, else a `*` wildcard
    /// at the closest existing ancestor.
    fn find_node(&self, name: &Name) -> Option<&Node> {
        if let Some(node) = self.nodes.get(name) {
            return Some(node);
        }
        if self.existing.contains(name) {
            return None;
        }
        let mut ancestor = name.base_name();
        loop {
            if self.existing.contains(&ancestor) {
                let wildcard = Name::from_ascii("*")
                    .ok()
                    .and_then(|star| star.append_domain(&ancestor).ok())?;
                return self.nodes.get(&wildcard);
            }
            if ancestor.is_root() {
                return None;
            }
            ancestor = ancestor.base_name();
        }
    }

    /// Answer one query.
    pub fn lookup(&self, name: &Name, record_type: RecordType) -> Result<Answer<RData>, DnsError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut current = name.to_lowercase();
        current.set_fqdn(true);
        let mut ttl = u32::MAX;
        let mut secure = true;
        for _ in 0..=MAX_CNAME_CHAIN {
            if self.servfail.contains(&current) {
                return Err(DnsError::ServFail {
                    name: current.to_string(),
                    detail: "SERVFAIL (configured in the test resolver)".to_string(),
                });
            }
            let Some(node) = self.find_node(&current) else {
                return Err(if self.existing.contains(&current) {
                    DnsError::NoData {
                        name: current.to_string(),
                        record_type: record_type.to_string(),
                    }
                } else {
                    DnsError::NxDomain {
                        name: current.to_string(),
                    }
                });
            };
            secure &= node.secure;
            if let Some(records) = node.rrsets.get(&record_type) {
                for record in records {
                    ttl = ttl.min(record.ttl);
                }
                return Ok(Answer {
                    records: records.iter().map(|record| record.data.clone()).collect(),
                    ttl: Duration::from_secs(u64::from(ttl)),
                    is_secure: secure,
                });
            }
            match node
                .rrsets
                .get(&RecordType::CNAME)
                .and_then(|list| list.first())
            {
                Some(record) if record_type != RecordType::CNAME => {
                    let RData::CNAME(target) = &record.data else {
                        break;
                    };
                    ttl = ttl.min(record.ttl);
                    current = target.0.to_lowercase();
                    current.set_fqdn(true);
                }
                _ => {
                    return Err(DnsError::NoData {
                        name: current.to_string(),
                        record_type: record_type.to_string(),
                    });
                }
            }
        }
        Err(DnsError::ServFail {
            name: name.to_string(),
            detail: format!("CNAME chain longer than {MAX_CNAME_CHAIN} or looping"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TestZone;

    fn name(text: &str) -> Name {
        fully_qualify(text).unwrap()
    }

    const ZONE: &str = r#"
$ORIGIN example.com.
@       600 MX 10 mx.example.com.
mx      300 A  127.0.0.1
mx      300 AAAA ::1
alias   60  CNAME mx.example.com.
loop1   60  CNAME loop2.example.com.
loop2   60  CNAME loop1.example.com.
a.b.c   60  TXT "deep"
*.wild  60  A  10.0.0.1
txt     60  TXT "v=spf1 " "-all"
"#;

    #[test]
    fn exact_nodata_nxdomain() {
        let resolver = TestResolver::from_zones(&[ZONE]).unwrap();
        let answer = resolver
            .lookup(&name("mx.example.com"), RecordType::A)
            .unwrap();
        assert_eq!(answer.records.len(), 1);
        assert_eq!(answer.ttl, Duration::from_secs(300));
        assert!(!answer.is_secure);
        let err = resolver
            .lookup(&name("mx.example.com"), RecordType::MX)
            .unwrap_err();
        assert!(err.is_nodata(), "{err:?}");
        let err = resolver
            .lookup(&name("nope.example.com"), RecordType::A)
            .unwrap_err();
        assert!(err.is_nxdomain(), "{err:?}");
        let err = resolver
            .lookup(&name("other.org"), RecordType::A)
            .unwrap_err();
        assert!(err.is_nxdomain(), "{err:?}");
    }

    #[test]
    fn empty_non_terminal_is_nodata() {
        let resolver = TestResolver::from_zones(&[ZONE]).unwrap();
        let err = resolver
            .lookup(&name("b.c.example.com"), RecordType::A)
            .unwrap_err();
        assert!(err.is_nodata(), "{err:?}");
    }

    #[test]
    fn cname_is_followed_and_loops_fail() {
        let resolver = TestResolver::from_zones(&[ZONE]).unwrap();
        let answer = resolver
            .lookup(&name("ALIAS.example.com"), RecordType::A)
            .unwrap();
        assert_eq!(answer.ttl, Duration::from_secs(60));
        assert!(matches!(answer.records[0], RData::A(_)));
        let err = resolver
            .lookup(&name("loop1.example.com"), RecordType::A)
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[test]
    fn wildcard_matches_below_existing_name() {
        let resolver = TestResolver::from_zones(&[ZONE]).unwrap();
        let answer = resolver
            .lookup(&name("x.wild.example.com"), RecordType::A)
            .unwrap();
        assert_eq!(answer.records.len(), 1);
    }

    #[test]
    fn servfail_and_secure_zones() {
        let params = TestResolverParams {
            zones: vec![TestZone {
                zone: "$ORIGIN secure.example.\n@ 60 A 192.0.2.1\n".to_string(),
                secure: true,
            }],
            servfail: vec!["broken.example".to_string()],
        };
        let resolver = TestResolver::new(&params).unwrap();
        assert!(
            resolver
                .lookup(&name("secure.example"), RecordType::A)
                .unwrap()
                .is_secure
        );
        let err = resolver
            .lookup(&name("broken.example"), RecordType::MX)
            .unwrap_err();
        assert!(matches!(err, DnsError::ServFail { .. }), "{err:?}");
    }

    #[test]
    fn bad_zone_text_is_a_clear_error() {
        let err = TestResolver::from_zones(&["$ORIGIN example.com.\n@ 60 MX not-a-number\n"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("zone #1"), "{err}");
    }
}
