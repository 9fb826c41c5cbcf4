//! CIDR sets and maps as used by `relay_hosts`, `trusted_hosts`,
//! `prohibited_hosts` and the listener's `peer`/`via` blocks.
//!
//! Entries are IP literals or CIDR blocks; a block with host bits set
//! (`192.168.1.1/24`) is rejected, as upstream does. Lookups pick the
//! longest matching prefix.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("'{text}' is not an IP address or CIDR block"))?;
    if net.trunc() != net {
        return Err(format!(
            "'{text}' has host bits set; did you mean '{}'?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A set of addresses and networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    nets: Vec<IpNet>,
}

impl CidrSet {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(entries: I) -> Result<Self, String> {
        let nets = entries
            .into_iter()
            .map(|e| parse_net(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn entries(&self) -> &[IpNet] {
        &self.nets
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:1.2.3.4`) match IPv4 entries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl<'de> Deserialize<'de> for CidrSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // An empty Lua table (`relay_hosts = {}`) arrives as an empty map.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Empty(BTreeMap<String, serde_json::Value>),
        }
        match Raw::deserialize(d)? {
            Raw::List(entries) => CidrSet::new(entries).map_err(serde::de::Error::custom),
            Raw::Empty(map) if map.is_empty() => Ok(CidrSet::default()),
            Raw::Empty(_) => Err(serde::de::Error::custom(
                "expected a list of IP addresses or CIDR blocks",
            )),
        }
    }
}

impl Serialize for CidrSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.nets.iter().map(|n| n.to_string()))
    }
}

/// A map keyed by CIDR blocks; `get` returns the value of the longest
/// prefix that contains the address.
#[derive(Clone, Debug, PartialEq)]
pub struct CidrMap<T> {
    entries: Vec<(IpNet, T)>,
}

impl<T> Default for CidrMap<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> CidrMap<T> {
    pub fn insert(&mut self, key: &str, value: T) -> Result<(), String> {
        let net = parse_net(key)?;
        self.entries.retain(|(n, _)| *n != net);
        self.entries.push((net, value));
        // Longest prefix first, so the first hit is the best one.
        self.entries
            .sort_by_key(|entry| std::cmp::Reverse(entry.0.prefix_len()));
        Ok(())
    }

    pub fn get(&self, ip: IpAddr) -> Option<&T> {
        let ip = canonical(ip);
        self.entries
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for CidrMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, T>::deserialize(d)?;
        let mut map = CidrMap::default();
        for (key, value) in raw {
            map.insert(&key, value).map_err(serde::de::Error::custom)?;
        }
        Ok(map)
    }
}

impl<T: Serialize> Serialize for CidrMap<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k.to_string(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_an_empty_set() {
        let set: CidrSet = serde_json::from_str("{}").unwrap();
        assert!(set.is_empty());
        let set: CidrSet = serde_json::from_str("[]").unwrap();
        assert!(set.is_empty());
        assert!(serde_json::from_str::<CidrSet>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn set_matches_literals_and_blocks() {
        let set = CidrSet::new(["127.0.0.1", "10.0.0.0/8", "::1"]).unwrap();
        assert!(set.contains("127.0.0.1".parse().unwrap()));
        assert!(set.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(set.contains("10.2.3.4".parse().unwrap()));
        assert!(set.contains("::1".parse().unwrap()));
        assert!(!set.contains("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_rejected() {
        assert!(CidrSet::new(["192.168.1.0/24"]).is_ok());
        let err = CidrSet::new(["192.168.1.1/24"]).unwrap_err();
        assert!(err.contains("192.168.1.0/24"), "{err}");
        assert!(CidrSet::new(["not-an-ip"]).is_err());
    }

    #[test]
    fn map_uses_longest_prefix() {
        let mut map = CidrMap::default();
        map.insert("10.0.0.0/8", "wide").unwrap();
        map.insert("10.1.0.0/16", "narrow").unwrap();
        assert_eq!(map.get("10.1.2.3".parse().unwrap()), Some(&"narrow"));
        assert_eq!(map.get("10.2.2.3".parse().unwrap()), Some(&"wide"));
        assert_eq!(map.get("11.0.0.1".parse().unwrap()), None);
    }
}
