//! Durations as policies write them: a number of seconds, or a humantime
//! string such as `"5 minutes"`, `"1h 30m"` or `"7 days"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// Parse a duration string. A bare number is seconds (integer or float);
/// anything else is handed to humantime, which understands `"10s"`,
/// `"5 minutes"`, `"1m"` (minutes), `"500ms"` and combinations.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<f64>() {
        return seconds_to_duration(secs);
    }
    humantime::parse_duration(trimmed).map_err(|err| format!("invalid duration '{text}': {err}"))
}

fn seconds_to_duration(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "invalid duration {secs}: must be a non-negative number of seconds"
        ));
    }
    // `from_secs_f64` panics past about 584 billion years; a policy or
    // request that asks for that gets an error instead.
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {secs}: too long"))
}

/// A `Duration` that deserializes from either a number of seconds or a
/// humantime string, and serializes as a humantime string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    pub fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl From<DurationSpec> for Duration {
    fn from(spec: DurationSpec) -> Duration {
        spec.0
    }
}

impl std::ops::Deref for DurationSpec {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let duration = match Raw::deserialize(deserializer)? {
            Raw::Int(secs) => Duration::from_secs(secs),
            Raw::Float(secs) => seconds_to_duration(secs).map_err(serde::de::Error::custom)?,
            Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom)?,
        };
        Ok(Self(duration))
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// serde helper for `Option<Duration>` fields: `#[serde(with = "tern_types::duration::opt")]`.
pub mod opt {
    use super::DurationSpec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<DurationSpec>::deserialize(d)?.map(|spec| spec.0))
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        value.map(DurationSpec).serialize(s)
    }
}

/// serde helper for required `Duration` fields: `#[serde(with = "tern_types::duration::req")]`.
pub mod req {
    use super::DurationSpec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(DurationSpec::deserialize(d)?.0)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        DurationSpec(*value).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_seconds() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        let spec: DurationSpec = serde_json::from_str("90").unwrap();
        assert_eq!(spec.0, Duration::from_secs(90));
        let spec: DurationSpec = serde_json::from_str("0.25").unwrap();
        assert_eq!(spec.0, Duration::from_millis(250));
    }

    #[test]
    fn absurdly_long_durations_are_errors_not_panics() {
        assert!(parse_duration("1e20").unwrap_err().contains("too long"));
        assert!(serde_json::from_str::<DurationSpec>("1e300").is_err());
    }

    #[test]
    fn humantime_strings() {
        for (text, secs) in [
            ("10s", 10),
            ("5 minutes", 300),
            ("1m", 60),
            ("1h 30m", 5400),
            ("7 days", 604800),
            ("20 mins", 1200),
            ("1 hour", 3600),
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_secs(secs),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn rejects_garbage_and_negative() {
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("-5").is_err());
        assert!(serde_json::from_str::<DurationSpec>("-1").is_err());
    }
}
