//! Connection-limit specs: an integer, or a string with digit separators
//! (`"1,000"`), optionally prefixed `local:` to stay node-local.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub limit: usize,
    pub force_local: bool,
}

impl LimitSpec {
    pub const fn new(limit: usize) -> Self {
        Self {
            limit,
            force_local: false,
        }
    }
}

impl FromStr for LimitSpec {
    type Err = String;
    fn from_str(input: &str) -> Result<Self, String> {
        let (force_local, text) = match input.trim().strip_prefix("local:") {
            Some(rest) => (true, rest),
            None => (false, input.trim()),
        };
        let digits: String = text.chars().filter(|c| *c != ',' && *c != '_').collect();
        let limit = digits.parse::<usize>().map_err(|_| {
            format!(
                "invalid limit '{input}': expected an integer such as 10, \"1,000\" or \"local:20\""
            )
        })?;
        Ok(Self { limit, force_local })
    }
}

impl<'de> Deserialize<'de> for LimitSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(limit) => Ok(Self::new(limit)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for LimitSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.force_local {
            s.collect_str(&format_args!("local:{}", self.limit))
        } else {
            s.serialize_u64(self.limit as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            serde_json::from_str::<LimitSpec>("32").unwrap(),
            LimitSpec::new(32)
        );
        assert_eq!("1,000".parse::<LimitSpec>().unwrap().limit, 1000);
        assert_eq!("1_000".parse::<LimitSpec>().unwrap().limit, 1000);
        let l: LimitSpec = "local:20".parse().unwrap();
        assert!(l.force_local && l.limit == 20);
        assert!("lots".parse::<LimitSpec>().is_err());
    }
}
