//! The supplemental trace header (§3.10) that both ingress paths (SMTP
//! and HTTP injection) prepend, so a feedback report about the message
//! can later be traced back to its recipient and metadata (see
//! `tern_message::parse_rfc5965`, which decodes it again).

use base64::Engine;
use serde_json::{Map, Value};

/// Characters of base64 per line of the folded header.
const LINE: usize = 64;

/// The header value: base64 of `{"_@_":"\\_/","recipient":...}` plus each
/// of `include_meta_names` that `meta` knows, folded at the usual header
/// width (the token has no spaces, so it is cut into lines here).
pub fn supplemental_value(
    recipient: Value,
    include_meta_names: &[String],
    meta: impl Fn(&str) -> Option<Value>,
) -> String {
    let mut object = Map::new();
    object.insert("_@_".into(), "\\_/".into());
    object.insert("recipient".into(), recipient);
    for name in include_meta_names {
        if let Some(value) = meta(name) {
            object.insert(name.clone(), value);
        }
    }
    let token = base64::engine::general_purpose::STANDARD.encode(Value::Object(object).to_string());
    fold(&token)
}

/// `token` in `LINE`-character pieces joined by CRLF + tab: a header value
/// that unfolds back to the token once whitespace is removed.
fn fold(token: &str) -> String {
    let mut out = String::with_capacity(token.len() + 3 * (token.len() / LINE + 1));
    for (i, piece) in token.as_bytes().chunks(LINE).enumerate() {
        if i > 0 {
            out.push_str("\r\n\t");
        }
        // base64 is ASCII, so every piece is valid UTF-8.
        out.push_str(std::str::from_utf8(piece).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_folds_and_decodes_back() {
        let names = vec!["tenant".to_string(), "absent".to_string()];
        let value = supplemental_value(
            "someone.with.a.long.address@example.com".into(),
            &names,
            |name| (name == "tenant").then(|| Value::from("acme-corporation-tenant")),
        );
        let lines: Vec<&str> = value.split("\r\n").collect();
        assert!(lines.len() > 1, "{value}");
        assert!(lines.iter().all(|l| l.trim().len() <= LINE), "{value}");
        assert!(lines[1..].iter().all(|l| l.starts_with('\t')), "{value}");
        let token: String = value.split_whitespace().collect();
        let json = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap();
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json["_@_"], "\\_/");
        assert_eq!(json["recipient"], "someone.with.a.long.address@example.com");
        assert_eq!(json["tenant"], "acme-corporation-tenant");
        assert!(json.get("absent").is_none());
    }
}
