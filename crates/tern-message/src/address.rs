//! Parsed address headers (`From`, `To`, `Cc`, ...): the AddressHeader
//! object of the policy API.
//!
//! A header holds a list of mailboxes and groups; [`AddressHeader::list`]
//! flattens groups into their members. The single-address accessors
//! (`user`, `domain`, `email`, `name`) error when the header is not exactly
//! one mailbox, because silently picking one of several addresses would let a
//! policy check the wrong one. Parsing (quoted display names, RFC 2047
//! encoded words, comments, groups) is done by `mail-parser`.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use serde::Serialize;

/// One mailbox: optional display name and the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: Option<String>,
}

impl Mailbox {
    /// The address (`user@domain`); an error for a mailbox without one.
    pub fn email(&self) -> Result<&str, String> {
        self.address
            .as_deref()
            .ok_or_else(|| "mailbox has no address".to_string())
    }

    /// The local part, with RFC 5322 quoting removed.
    pub fn user(&self) -> Result<String, String> {
        let email = self.email()?;
        let local = match email.rfind('@') {
            Some(at) => &email[..at],
            None => email,
        };
        Ok(unquote_local_part(local))
    }

    /// The domain; an error when the address has no `@`.
    pub fn domain(&self) -> Result<&str, String> {
        let email = self.email()?;
        email
            .rfind('@')
            .map(|at| &email[at + 1..])
            .ok_or_else(|| format!("address '{email}' has no domain"))
    }

    /// JSON rendition used by Lua's `tostring`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn unquote_local_part(local: &str) -> String {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for ch in inner.chars() {
                if ch == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(ch);
            }
            out
        }
        None => local.to_string(),
    }
}

/// A parsed address header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressHeader {
    mailboxes: Vec<Mailbox>,
}

impl AddressHeader {
    /// Parse a raw (possibly folded) header value.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let mut buf = Vec::with_capacity(raw.len() + 2);
        buf.extend_from_slice(raw);
        buf.extend_from_slice(b"\r\n");
        let owned = |addr: &mail_parser::Addr<'_>| Mailbox {
            name: addr
                .name
                .as_ref()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            address: addr
                .address
                .as_ref()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty()),
        };
        let mailboxes = match MessageStream::new(&buf).parse_address() {
            HeaderValue::Address(Address::List(list)) => list.iter().map(owned).collect(),
            HeaderValue::Address(Address::Group(groups)) => groups
                .iter()
                .flat_map(|group| group.addresses.iter().map(owned))
                .collect(),
            HeaderValue::Empty => Vec::new(),
            _ => {
                return Err(format!(
                    "cannot parse '{}' as an address list",
                    String::from_utf8_lossy(raw).trim()
                ));
            }
        };
        Ok(Self { mailboxes })
    }

    /// Every mailbox, groups flattened.
    pub fn list(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// The only mailbox; an error when there are none or several.
    pub fn single(&self) -> Result<&Mailbox, String> {
        match self.mailboxes.as_slice() {
            [only] => Ok(only),
            [] => Err("address header holds no address".into()),
            many => Err(format!(
                "address header holds {} addresses, not a single address; use .list",
                many.len()
            )),
        }
    }

    pub fn user(&self) -> Result<String, String> {
        self.single()?.user()
    }

    pub fn domain(&self) -> Result<&str, String> {
        self.single()?.domain()
    }

    pub fn email(&self) -> Result<&str, String> {
        self.single()?.email()
    }

    pub fn name(&self) -> Result<Option<&str>, String> {
        Ok(self.single()?.name.as_deref())
    }

    /// JSON rendition used by Lua's `tostring`: an array of
    /// `{"name": ..., "address": ...}` objects.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.mailboxes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_mailbox_forms() {
        let h = AddressHeader::parse(b" \"Doe, John\" <John.Doe@Example.com>").unwrap();
        assert_eq!(h.name().unwrap(), Some("Doe, John"));
        assert_eq!(h.email().unwrap(), "John.Doe@Example.com");
        assert_eq!(h.user().unwrap(), "John.Doe");
        assert_eq!(h.domain().unwrap(), "Example.com");

        let bare = AddressHeader::parse(b" user@example.com").unwrap();
        assert_eq!(bare.name().unwrap(), None);
        assert_eq!(bare.domain().unwrap(), "example.com");

        let encoded = AddressHeader::parse(b" =?UTF-8?B?SsO8cmdlbg==?= <j@example.de>").unwrap();
        assert_eq!(encoded.name().unwrap(), Some("J\u{fc}rgen"));

        let folded = AddressHeader::parse(b" Someone\r\n <some@example.org>").unwrap();
        assert_eq!(folded.email().unwrap(), "some@example.org");
    }

    #[test]
    fn quoted_local_part_is_unquoted_for_user() {
        let h = AddressHeader::parse(b" <\"john doe\"@example.com>").unwrap();
        assert_eq!(h.user().unwrap(), "john doe");
        assert_eq!(h.domain().unwrap(), "example.com");
    }

    #[test]
    fn lists_and_groups() {
        let h = AddressHeader::parse(b" a@x.com, \"B\" <b@y.com>").unwrap();
        assert_eq!(h.list().len(), 2);
        assert_eq!(h.list()[1].name.as_deref(), Some("B"));
        let err = h.domain().unwrap_err();
        assert!(err.contains("2 addresses"), "{err}");

        let g = AddressHeader::parse(b" Team: a@x.com, b@y.com;, c@z.com").unwrap();
        let emails: Vec<_> = g.list().iter().map(|m| m.email().unwrap()).collect();
        assert_eq!(emails, ["a@x.com", "b@y.com", "c@z.com"]);
        assert_eq!(
            AddressHeader::parse(b" a@x.com").unwrap().to_json(),
            r#"[{"name":null,"address":"a@x.com"}]"#
        );
    }
}
