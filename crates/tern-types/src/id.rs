//! Spool ids: version-1 UUIDs rendered as 32 lowercase hex digits.
//!
//! A v1 UUID carries its creation time, so the log fields `created` and
//! `created_time` and the message age used for expiry are derived from the
//! id alone: nothing else has to be stored to know how old a message is.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpoolId(Uuid);

fn node_bytes() -> &'static [u8; 6] {
    static NODE: OnceLock<[u8; 6]> = OnceLock::new();
    NODE.get_or_init(|| {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] |= 0x01; // multicast bit: marks a random, not a MAC, node id
        bytes
    })
}

impl SpoolId {
    pub fn new() -> Self {
        Self(Uuid::now_v1(node_bytes()))
    }

    /// An id whose timestamp is `created`: used by tests and by tools that
    /// synthesise aged messages.
    pub fn with_created(created: SystemTime) -> Self {
        let since = created.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        let mut node = *node_bytes();
        // vary the node part so that ids made in one tick stay distinct
        let extra: [u8; 5] = rand::random();
        node[1..].copy_from_slice(&extra);
        Self(Uuid::new_v1(ts, &node))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Creation time recovered from the UUID timestamp.
    pub fn created(&self) -> SystemTime {
        match self.0.get_timestamp() {
            Some(ts) => {
                let (secs, nanos) = ts.to_unix();
                UNIX_EPOCH + Duration::new(secs, nanos)
            }
            None => UNIX_EPOCH,
        }
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.created()).unwrap_or_default()
    }
}

impl Default for SpoolId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

impl FromStr for SpoolId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|err| format!("invalid spool id '{s}': {err}"))
    }
}

impl serde::Serialize for SpoolId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpoolId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_32_hex_and_round_trips() {
        let id = SpoolId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(text.parse::<SpoolId>().unwrap(), id);
        assert_eq!(id.uuid().get_version_num(), 1);
    }

    #[test]
    fn creation_time_is_recoverable() {
        let before = SystemTime::now();
        let id = SpoolId::new();
        let created = id.created();
        let drift = created
            .duration_since(before)
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(2), "{drift:?}");

        let old = SystemTime::now() - Duration::from_secs(3600);
        let aged = SpoolId::with_created(old);
        let age = aged.age(SystemTime::now());
        assert!(
            age >= Duration::from_secs(3599) && age < Duration::from_secs(3700),
            "{age:?}"
        );
    }

    #[test]
    fn ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(SpoolId::new()));
        }
    }
}
