//! Scheduled-queue names: `campaign:tenant@domain!routing_domain`.
//!
//! The name is both the key of a scheduled queue and the source of the
//! arguments passed to `get_queue_config(domain, tenant, campaign,
//! routing_domain)`, so formatting and parsing must round-trip.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct QueueName {
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    pub domain: String,
    pub routing_domain: Option<String>,
}

impl QueueName {
    /// Build the name from message meta values and the first recipient's
    /// domain (lowercased here).
    pub fn new(
        campaign: Option<&str>,
        tenant: Option<&str>,
        domain: &str,
        routing_domain: Option<&str>,
    ) -> Self {
        Self {
            campaign: campaign.map(str::to_string),
            tenant: tenant.map(str::to_string),
            domain: domain.to_ascii_lowercase(),
            routing_domain: routing_domain.map(str::to_string),
        }
    }

    /// Parse a queue name into its components. Names without `@` are just a
    /// domain (with an optional `!routing_domain`).
    pub fn parse(name: &str) -> Self {
        let (left, right) = match name.split_once('@') {
            Some((left, right)) => (Some(left), right),
            None => (None, name),
        };
        let (domain, routing_domain) = match right.split_once('!') {
            Some((d, r)) => (d.to_string(), Some(r.to_string())),
            None => (right.to_string(), None),
        };
        let (campaign, tenant) = match left {
            None => (None, None),
            Some(left) => match left.split_once(':') {
                Some((c, t)) => (Some(c.to_string()), Some(t.to_string())),
                None => (None, Some(left.to_string())),
            },
        };
        Self {
            campaign,
            tenant,
            domain,
            routing_domain,
        }
    }

    /// The domain used for routing: `routing_domain` if set, else `domain`.
    pub fn routing_domain_or_domain(&self) -> &str {
        self.routing_domain.as_deref().unwrap_or(&self.domain)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.campaign, &self.tenant) {
            (Some(c), Some(t)) => write!(f, "{c}:{t}@")?,
            (Some(c), None) => write!(f, "{c}:@")?,
            (None, Some(t)) => write!(f, "{t}@")?,
            (None, None) => {}
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.routing_domain {
            write!(f, "!{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_documented_examples() {
        assert_eq!(
            QueueName::new(Some("welcome"), Some("acme"), "Gmail.com", None).to_string(),
            "welcome:acme@gmail.com"
        );
        assert_eq!(
            QueueName::new(None, Some("acme"), "gmail.com", Some("outlook.com")).to_string(),
            "acme@gmail.com!outlook.com"
        );
        assert_eq!(
            QueueName::new(Some("promo"), None, "yahoo.com", None).to_string(),
            "promo:@yahoo.com"
        );
        assert_eq!(
            QueueName::new(None, None, "example.com", None).to_string(),
            "example.com"
        );
        assert_eq!(
            QueueName::new(None, None, "[10.0.0.1]", None).to_string(),
            "[10.0.0.1]"
        );
    }

    #[test]
    fn parse_round_trips() {
        for name in [
            "welcome:acme@gmail.com",
            "acme@gmail.com!outlook.com",
            "example.com",
            "[10.0.0.1]",
            "a:b@c.com!d.com",
            "x.com!y.com",
        ] {
            assert_eq!(QueueName::parse(name).to_string(), name);
        }
        let q = QueueName::parse("promo:@yahoo.com");
        assert_eq!(
            (q.campaign.as_deref(), q.tenant.as_deref()),
            (Some("promo"), Some(""))
        );
        let q = QueueName::parse("webhook");
        assert_eq!(
            (q.domain.as_str(), q.tenant, q.campaign),
            ("webhook", None, None)
        );
    }
}
