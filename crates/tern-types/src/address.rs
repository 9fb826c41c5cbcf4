//! Envelope addresses (`MAIL FROM` / `RCPT TO`): `local@domain`, the null
//! sender `<>`, quoted local parts and domain literals such as
//! `user@[10.0.0.1]`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeAddress {
    /// The whole address as given (without angle brackets); empty for `<>`.
    text: String,
    /// Byte offset of the `@` that separates local part and domain.
    at: Option<usize>,
}

impl EnvelopeAddress {
    pub fn null_sender() -> Self {
        Self::default()
    }

    pub fn is_null(&self) -> bool {
        self.text.is_empty()
    }

    /// Parse an address, with or without angle brackets.
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        let inner = match trimmed.strip_prefix('<') {
            Some(rest) => rest
                .strip_suffix('>')
                .ok_or_else(|| format!("'{input}': missing closing '>'"))?,
            None => trimmed,
        };
        if inner.is_empty() {
            return Ok(Self::null_sender());
        }
        // Source routes (@a,@b:user@domain) are obsolete; accept and drop them.
        let inner = match inner.strip_prefix('@') {
            Some(_) => inner
                .split_once(':')
                .map(|(_, rest)| rest)
                .ok_or_else(|| format!("'{input}': malformed source route"))?,
            None => inner,
        };
        let at = local_part_end(inner).ok_or_else(|| format!("'{input}': missing '@domain'"))?;
        let local = &inner[..at];
        let domain = &inner[at + 1..];
        if local.is_empty() {
            return Err(format!("'{input}': empty local part"));
        }
        validate_domain(domain).map_err(|why| format!("'{input}': {why}"))?;
        Ok(Self {
            text: inner.to_string(),
            at: Some(at),
        })
    }

    pub fn user(&self) -> &str {
        match self.at {
            Some(at) => &self.text[..at],
            None => "",
        }
    }

    pub fn domain(&self) -> &str {
        match self.at {
            Some(at) => &self.text[at + 1..],
            None => "",
        }
    }

    pub fn email(&self) -> &str {
        &self.text
    }

    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }
}

/// Find the `@` that ends the local part, honouring a quoted local part.
fn local_part_end(text: &str) -> Option<usize> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut escaped = false;
        for (idx, ch) in rest.char_indices() {
            match ch {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    let close = idx + 1;
                    return (text.as_bytes().get(close + 1) == Some(&b'@')).then_some(close + 1);
                }
                _ => escaped = false,
            }
        }
        None
    } else {
        let at = text.rfind('@')?;
        let local = &text[..at];
        let ok = local.chars().all(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(
                    c,
                    '<' | '>' | '(' | ')' | ',' | ';' | '"' | '[' | ']' | '\\'
                )
        });
        ok.then_some(at)
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain".into());
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let body = literal
            .strip_suffix(']')
            .ok_or("unterminated domain literal")?;
        let ip_text = match body.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &body[5..],
            _ => body,
        };
        ip_text
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("invalid domain literal [{body}]"))?;
        return Ok(());
    }
    for label in domain.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid domain '{domain}'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("invalid domain '{domain}'"));
        }
        // Letters, digits and hyphens; non-ASCII is allowed for SMTPUTF8 (IDN).
        if !label
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("invalid domain '{domain}'"));
        }
    }
    Ok(())
}

impl fmt::Display for EnvelopeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for EnvelopeAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for EnvelopeAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        EnvelopeAddress::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let a = EnvelopeAddress::parse("<User@Example.com>").unwrap();
        assert_eq!(
            (a.user(), a.domain(), a.email()),
            ("User", "Example.com", "User@Example.com")
        );
        let q = EnvelopeAddress::parse("\"john doe\"@example.com").unwrap();
        assert_eq!(q.user(), "\"john doe\"");
        let lit = EnvelopeAddress::parse("x@[10.0.0.1]").unwrap();
        assert_eq!(lit.domain(), "[10.0.0.1]");
        assert!(EnvelopeAddress::parse("x@[IPv6:::1]").is_ok());
        assert!(EnvelopeAddress::parse("<>").unwrap().is_null());
        assert_eq!(
            EnvelopeAddress::parse("<@relay.example:u@d.example>")
                .unwrap()
                .email(),
            "u@d.example"
        );
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "x@example.com:2025",
            "no-at-sign",
            "@example.com",
            "x@",
            "x@-bad.com",
            "x@a..b",
            "<x@y.com",
            "x@[999.1.1.1]",
        ] {
            assert!(EnvelopeAddress::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
