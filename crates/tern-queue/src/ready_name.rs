//! Ready-queue names (spec §8.4): `<egress_source>-><site_name>@<protocol label>`.
//!
//! The name is what delivery log records carry as `site` and what
//! `suspend-ready-q` targets, so it must be byte-for-byte KumoMTA's. The
//! site part is the MX-derived site name for SMTP (computed by the DNS
//! crate), `mx_list:<labels>` for an explicit `mx_list`, and the routing
//! domain for non-SMTP protocols.

use crate::config::{DeliveryProtocol, MxListEntry};

/// Protocol label for SMTP delivery.
pub const SMTP_CLIENT: &str = "smtp_client";
/// Protocol label for the HTTP injection generator queue.
pub const HTTP_GENERATOR: &str = "httpinject:generator";
/// Protocol label for deferred SMTP injection.
pub const DEFER_SMTP_INJECT: &str = "defersmtpinject";
/// Protocol label for inter-node transfer.
pub const XFER: &str = "xfer";
/// Protocol label for the null queue.
pub const NULL: &str = "null";

/// `source->site@label`.
pub fn ready_queue_name(source: &str, site: &str, protocol_label: &str) -> String {
    let mut name = String::with_capacity(source.len() + site.len() + protocol_label.len() + 3);
    name.push_str(source);
    name.push_str("->");
    name.push_str(site);
    name.push('@');
    name.push_str(protocol_label);
    name
}

/// The protocol label for a custom Lua constructor: `lua:<constructor>`.
pub fn lua_label(constructor: &str) -> String {
    format!("lua:{constructor}")
}

/// Site name for an explicit `mx_list`: `mx_list:` followed by the entry
/// labels joined with commas.
pub fn mx_list_site_name(entries: &[MxListEntry]) -> String {
    let labels: Vec<&str> = entries.iter().map(MxListEntry::label).collect();
    format!("mx_list:{}", labels.join(","))
}

impl DeliveryProtocol {
    /// The ready-queue protocol label, or `None` for Maildir (which has no
    /// ready queue) and for protocols Tern does not deliver.
    pub fn ready_queue_label(&self) -> Option<String> {
        match self {
            DeliveryProtocol::Smtp(_) => Some(SMTP_CLIENT.to_string()),
            DeliveryProtocol::CustomLua(lua) => Some(lua_label(&lua.constructor)),
            DeliveryProtocol::Maildir(_) | DeliveryProtocol::Xfer(_) => None,
        }
    }
}

/// The parts of a ready-queue name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyQueueName<'a> {
    pub source: &'a str,
    pub site: &'a str,
    pub protocol_label: &'a str,
}

/// Split a ready-queue name back into its parts (source up to the first
/// `->`, label after the last `@`).
pub fn parse_ready_queue_name(name: &str) -> Option<ReadyQueueName<'_>> {
    let (source, rest) = name.split_once("->")?;
    let (site, protocol_label) = rest.rsplit_once('@')?;
    Some(ReadyQueueName {
        source,
        site,
        protocol_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_names() {
        assert_eq!(
            ready_queue_name(
                "ip-1",
                "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com",
                SMTP_CLIENT
            ),
            "ip-1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
        );
        assert_eq!(
            ready_queue_name("unspecified", "webhook", &lua_label("make.webhook")),
            "unspecified->webhook@lua:make.webhook"
        );
    }

    #[test]
    fn mx_list_site_uses_entry_strings_and_addr() {
        let entries: Vec<MxListEntry> = serde_json::from_value(serde_json::json!([
            "smart.host.local",
            {"name": "mx.example.com", "addr": "10.0.0.1"},
            "[10.0.0.2]:2525"
        ]))
        .unwrap();
        assert_eq!(
            mx_list_site_name(&entries),
            "mx_list:smart.host.local,10.0.0.1,[10.0.0.2]:2525"
        );
    }

    #[test]
    fn protocol_labels() {
        let smtp = DeliveryProtocol::default();
        assert_eq!(smtp.ready_queue_label().as_deref(), Some("smtp_client"));
        let lua: DeliveryProtocol =
            serde_json::from_value(serde_json::json!({"custom_lua": {"constructor": "make.x"}}))
                .unwrap();
        assert_eq!(lua.ready_queue_label().as_deref(), Some("lua:make.x"));
        let maildir: DeliveryProtocol =
            serde_json::from_value(serde_json::json!({"maildir_path": "/tmp/m"})).unwrap();
        assert_eq!(maildir.ready_queue_label(), None);
    }

    #[test]
    fn parses_names_back() {
        let parsed = parse_ready_queue_name("ip-1->mx_list:a@b,c@smtp_client").unwrap();
        assert_eq!(parsed.source, "ip-1");
        assert_eq!(parsed.site, "mx_list:a@b,c");
        assert_eq!(parsed.protocol_label, "smtp_client");
        assert!(parse_ready_queue_name("no arrow").is_none());
    }
}
