//! The signer parameter table of `kumo.dkim.rsa_sha256_signer { ... }` and
//! `kumo.dkim.ed25519_signer { ... }`, as a serde struct.
//!
//! The policy layer deserializes the Lua table straight into [`SignerConfig`];
//! unknown keys are rejected so that a typo in a policy is reported instead of
//! silently ignored. Defaults follow the KumoMTA documentation: relaxed/relaxed
//! canonicalization, no over-signing, no `x=`, `l=` or `r=` tags, and a cache
//! lifetime of 300 seconds. The same struct (plus the algorithm) is the key of
//! the [`crate::SignerCache`], which is why it is `Eq + Hash`.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tern_types::KeySource;

/// Which signing algorithm a signer uses: chosen by the Lua constructor
/// (`rsa_sha256_signer` or `ed25519_signer`), not by a table key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// `a=rsa-sha256`: RSASSA-PKCS1-v1_5 over SHA-256 (RFC 6376).
    RsaSha256,
    /// `a=ed25519-sha256`: Ed25519 over the SHA-256 digest (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The value of the `a=` tag.
    pub fn tag_value(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The value of the `k=` tag in the DNS key record.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

/// Header or body canonicalization (RFC 6376 §3.4). Policies write
/// `"Relaxed"` or `"Simple"`; the lowercase spellings used in `c=` are also
/// accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Canonicalization {
    #[default]
    #[serde(alias = "relaxed")]
    Relaxed,
    #[serde(alias = "simple")]
    Simple,
}

impl Canonicalization {
    /// The spelling used inside the `c=` tag.
    pub fn tag_value(self) -> &'static str {
        match self {
            Canonicalization::Relaxed => "relaxed",
            Canonicalization::Simple => "simple",
        }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(300)
}

/// The parameter table shared by both signer constructors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// `d=`: the signing domain.
    pub domain: String,
    /// `s=`: the selector; the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// Header names to sign (`h=`), in this order.
    pub headers: Vec<String>,
    /// Where the private key comes from.
    pub key: KeySource,
    #[serde(default)]
    pub header_canonicalization: Canonicalization,
    #[serde(default)]
    pub body_canonicalization: Canonicalization,
    /// Sign each listed header one more time than it occurs, so that a
    /// replayed copy cannot gain an extra instance of it.
    #[serde(default)]
    pub over_sign: bool,
    /// Signature lifetime: sets `x=` to `t=` plus this many seconds.
    #[serde(default, with = "tern_types::duration::opt")]
    pub expiration: Option<Duration>,
    /// Add `l=` with the length of the canonicalized body.
    #[serde(default)]
    pub body_length: bool,
    /// Add `r=y` (RFC 6651: the signer asks for failure reports).
    #[serde(default)]
    pub reporting: bool,
    /// `i=`: the Agent or User Identifier.
    #[serde(default)]
    pub agent_user_identifier: Option<String>,
    /// `atps=`: the RFC 6541 authorized third-party signature domain.
    #[serde(default)]
    pub atps: Option<String>,
    /// `atpsh=`: the RFC 6541 hash for `atps` (`sha256`, `sha1` or `none`).
    #[serde(default)]
    pub atpsh: Option<String>,
    /// How long a [`crate::SignerCache`] keeps the built signer (and so the
    /// parsed key) before reading the key source again.
    #[serde(default = "default_ttl", with = "tern_types::duration::req")]
    pub ttl: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_match_the_documented_table() {
        let config: SignerConfig = serde_json::from_value(json!({
            "domain": "example.com",
            "selector": "s1",
            "headers": ["From", "To"],
            "key": "/etc/dkim/example.com/s1.key",
        }))
        .unwrap();
        assert_eq!(config.header_canonicalization, Canonicalization::Relaxed);
        assert_eq!(config.body_canonicalization, Canonicalization::Relaxed);
        assert!(!config.over_sign && !config.body_length && !config.reporting);
        assert_eq!(config.expiration, None);
        assert_eq!(config.ttl, Duration::from_secs(300));
        assert_eq!(
            config.key,
            KeySource::File("/etc/dkim/example.com/s1.key".into())
        );
    }

    #[test]
    fn every_option_parses() {
        let config: SignerConfig = serde_json::from_value(json!({
            "domain": "example.com",
            "selector": "s1",
            "headers": ["From"],
            "key": {"key_data": "PEM"},
            "header_canonicalization": "Simple",
            "body_canonicalization": "relaxed",
            "over_sign": true,
            "expiration": "1 day",
            "body_length": true,
            "reporting": true,
            "agent_user_identifier": "@mail.example.com",
            "atps": "esp.example",
            "atpsh": "sha256",
            "ttl": "10m",
        }))
        .unwrap();
        assert_eq!(config.header_canonicalization, Canonicalization::Simple);
        assert_eq!(config.body_canonicalization, Canonicalization::Relaxed);
        assert_eq!(config.expiration, Some(Duration::from_secs(86400)));
        assert_eq!(config.ttl, Duration::from_secs(600));
        let seconds: SignerConfig = serde_json::from_value(json!({
            "domain": "d", "selector": "s", "headers": [], "key": "k",
            "expiration": 3600, "ttl": 5,
        }))
        .unwrap();
        assert_eq!(seconds.expiration, Some(Duration::from_secs(3600)));
        assert_eq!(seconds.ttl, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let err = serde_json::from_value::<SignerConfig>(json!({
            "domain": "d", "selector": "s", "headers": [], "key": "k", "oversign": true,
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("oversign"), "{err}");
        let err = serde_json::from_value::<SignerConfig>(json!({
            "domain": "d", "selector": "s", "headers": [], "key": "k",
            "body_canonicalization": "Loose",
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("Loose"), "{err}");
        let err = serde_json::from_value::<SignerConfig>(json!({
            "selector": "s", "headers": [], "key": "k",
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("domain"), "{err}");
    }
}
