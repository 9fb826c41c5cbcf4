//! The error type shared by every lookup in this crate.
//!
//! Delivery treats DNS outcomes differently (KumoMTA spec §7.5, §9.2): a name
//! that does not exist (NXDOMAIN) is cached for the long negative TTL, a name
//! that exists but has no records of the asked type (NODATA) turns into an
//! implicit MX, and a server failure or timeout is transient and cached only
//! briefly. So the variants keep those three cases apart, and the error is
//! `Clone` because one MX answer (or failure) is shared by every caller that
//! waited on the same query.

use std::time::Duration;

/// Why a DNS lookup produced no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (RCODE NXDOMAIN).
    #[error("NXDOMAIN: {name} does not exist")]
    NxDomain { name: String },
    /// The name exists but has no records of the requested type.
    #[error("no {record_type} records for {name}")]
    NoData { name: String, record_type: String },
    /// The server answered SERVFAIL (or another failure code such as REFUSED).
    #[error("DNS server failure for {name}: {detail}")]
    ServFail { name: String, detail: String },
    /// No answer arrived in time.
    #[error("DNS lookup for {name} timed out after {elapsed:?}")]
    Timeout { name: String, elapsed: Duration },
    /// The input could not be turned into a DNS name or address.
    #[error("invalid domain '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    /// The resolver configuration is invalid or asks for something unsupported.
    #[error("{0}")]
    Config(String),
    /// Any other resolver failure (I/O error, malformed response, ...).
    #[error("DNS lookup for {name} failed: {detail}")]
    Other { name: String, detail: String },
}

impl DnsError {
    /// True when the name does not exist at all.
    pub fn is_nxdomain(&self) -> bool {
        matches!(self, Self::NxDomain { .. })
    }

    /// True when the name exists but has no records of the requested type.
    pub fn is_nodata(&self) -> bool {
        matches!(self, Self::NoData { .. })
    }

    /// True for failures that may clear up on their own (SERVFAIL, timeout,
    /// I/O trouble), as opposed to an authoritative negative answer or a
    /// malformed input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ServFail { .. } | Self::Timeout { .. } | Self::Other { .. }
        )
    }

    /// The internal site label a scheduled queue uses (for metrics) when its
    /// MX cannot be resolved: `NXDOMAIN:<domain>` or `DNSFAIL:<domain>`.
    pub fn failure_site_label(&self, domain: &str) -> String {
        if self.is_nxdomain() {
            format!("NXDOMAIN:{domain}")
        } else {
            format!("DNSFAIL:{domain}")
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config(message.into())
    }

    pub(crate) fn invalid_name(name: &str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_and_site_labels() {
        let nx = DnsError::NxDomain {
            name: "a.example.".into(),
        };
        assert!(nx.is_nxdomain() && !nx.is_transient() && !nx.is_nodata());
        assert_eq!(nx.failure_site_label("a.example"), "NXDOMAIN:a.example");
        let fail = DnsError::ServFail {
            name: "a.example.".into(),
            detail: "SERVFAIL".into(),
        };
        assert!(fail.is_transient() && !fail.is_nxdomain());
        assert_eq!(fail.failure_site_label("a.example"), "DNSFAIL:a.example");
        let nodata = DnsError::NoData {
            name: "a.example.".into(),
            record_type: "MX".into(),
        };
        assert!(nodata.is_nodata() && !nodata.is_transient());
    }
}
