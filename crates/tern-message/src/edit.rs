//! Header access and editing on a [`Message`]: the methods a policy calls
//! (`get_first_named_header_value`, `append_header`, `import_x_headers`,
//! `from_header`, `import_scheduling_header`, ...).
//!
//! Reads parse the header block of a cheap `Bytes` clone of the body; edits
//! build new bytes with [`crate::headers`] and store them through
//! `Message::edit_data`, so the message lock is never held while parsing.

use crate::address::AddressHeader;
use crate::headers::{self, HeaderBlock, decode_value};
use crate::message::Message;
use crate::scheduling;
use serde::Deserialize;
use serde_json::Value;

/// Which matching header instances `import_headers` captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMatch {
    First,
    #[default]
    Last,
    All,
}

/// How `import_headers` derives the meta key from a header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyTransform {
    #[default]
    SnakeCase,
    KebabCase,
    CamelCase,
    PascalCase,
}

/// One entry of `msg:import_headers(SPECS)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportHeaderSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_mode: ImportMatch,
    #[serde(default)]
    pub transform: KeyTransform,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub remove: bool,
}

impl ImportHeaderSpec {
    fn validate(&self) -> Result<(), String> {
        let stars = self.name.matches('*').count();
        let wildcard = self.name.ends_with('*');
        if self.name.is_empty() || self.name == "*" {
            return Err(format!(
                "import_headers: name '{}' is not a usable pattern",
                self.name
            ));
        }
        if stars > 1 || (stars == 1 && !wildcard) {
            return Err(format!(
                "import_headers: name '{}': only a single trailing '*' wildcard is supported",
                self.name
            ));
        }
        if wildcard && self.target.is_some() {
            return Err(format!(
                "import_headers: target cannot be used with the wildcard pattern '{}'",
                self.name
            ));
        }
        Ok(())
    }

    fn matches(&self, header: &str) -> bool {
        match self.name.strip_suffix('*') {
            Some(prefix) => {
                header.len() >= prefix.len()
                    && header.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            None => header.eq_ignore_ascii_case(&self.name),
        }
    }

    fn key_for(&self, header: &str) -> String {
        match &self.target {
            Some(target) => target.clone(),
            None => transform_name(header, self.transform),
        }
    }
}

/// Derive a meta key from a header name.
pub fn transform_name(name: &str, transform: KeyTransform) -> String {
    let words = name
        .split(['-', '_', ' '])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase);
    let capitalise = |word: String| {
        let mut chars = word.chars();
        match chars.next() {
            Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
            None => word,
        }
    };
    match transform {
        KeyTransform::SnakeCase => words.collect::<Vec<_>>().join("_"),
        KeyTransform::KebabCase => words.collect::<Vec<_>>().join("-"),
        KeyTransform::PascalCase => words.map(capitalise).collect(),
        KeyTransform::CamelCase => words
            .enumerate()
            .map(|(idx, w)| if idx == 0 { w } else { capitalise(w) })
            .collect(),
    }
}

/// The key `import_x_headers` uses: lowercase, `-` becomes `_`.
fn x_header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

fn is_x_header(name: &str) -> bool {
    name.len() > 2 && name.as_bytes()[..2].eq_ignore_ascii_case(b"x-")
}

impl Message {
    /// Decoded value of the first header called `name`, `None` if absent.
    pub fn get_first_named_header_value(&self, name: &str) -> Option<String> {
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        block
            .named(&data, name)
            .next()
            .map(|field| decode_value(field.raw_value(&data)))
    }

    /// Decoded values of every header called `name`, in order.
    pub fn get_all_named_header_values(&self, name: &str) -> Vec<String> {
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        block
            .named(&data, name)
            .map(|field| decode_value(field.raw_value(&data)))
            .collect()
    }

    /// Every header as `(name, decoded value)`, in order. Lines without a
    /// colon are not headers and are skipped.
    pub fn get_all_headers(&self) -> Vec<(String, String)> {
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        block
            .fields
            .iter()
            .filter(|field| field.has_colon)
            .map(|field| {
                (
                    field.name(&data).to_string(),
                    decode_value(field.raw_value(&data)),
                )
            })
            .collect()
    }

    /// Append `name: value` to the end of the header block.
    pub fn append_header(&self, name: &str, value: &str, encode: bool) -> Result<(), String> {
        headers::validate_name(name)?;
        self.edit_data(|data| {
            Ok::<_, String>(Some(headers::append_header(data, name, value, encode)))
        })?;
        Ok(())
    }

    /// Insert `name: value` at the top of the message.
    pub fn prepend_header(&self, name: &str, value: &str, encode: bool) -> Result<(), String> {
        headers::validate_name(name)?;
        self.edit_data(|data| {
            Ok::<_, String>(Some(headers::prepend_header(data, name, value, encode)))
        })?;
        Ok(())
    }

    /// Remove every header called `name`.
    pub fn remove_all_named_headers(&self, name: &str) {
        let _ = self.edit_data(|data| {
            Ok::<_, ()>(headers::remove_fields(data, |f| {
                f.has_colon && f.is_named(data, name)
            }))
        });
    }

    /// Copy headers into meta (spec §5.1): every `X-*` header when `names`
    /// is `None`, else just the named ones. The key is the lowercased name
    /// with `-` turned into `_`. When a header occurs several times the last
    /// one wins, or the first with `first_named`.
    pub fn import_x_headers(&self, names: Option<&[String]>, first_named: bool) {
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        let mut found: Vec<(String, Value)> = Vec::new();
        for field in block.fields.iter().filter(|f| f.has_colon) {
            let name = field.name(&data);
            let wanted = match names {
                None => is_x_header(name),
                Some(list) => list.iter().any(|n| n.eq_ignore_ascii_case(name)),
            };
            if !wanted {
                continue;
            }
            let key = x_header_key(name);
            let value = Value::String(decode_value(field.raw_value(&data)));
            match found.iter_mut().find(|(k, _)| *k == key) {
                Some(existing) if !first_named => existing.1 = value,
                Some(_) => {}
                None => found.push((key, value)),
            }
        }
        self.set_meta_many(found);
    }

    /// Remove every `X-*` header, or only the named ones.
    pub fn remove_x_headers(&self, names: Option<&[String]>) {
        let _ = self.edit_data(|data| {
            Ok::<_, ()>(headers::remove_fields(data, |field| {
                if !field.has_colon {
                    return false;
                }
                let name = field.name(data);
                match names {
                    None => is_x_header(name),
                    Some(list) => list.iter().any(|n| n.eq_ignore_ascii_case(name)),
                }
            }))
        });
    }

    /// `msg:import_headers(SPECS)`: the first spec matching a header wins;
    /// matched values go to meta as a string (`first`/`last`) or an array
    /// (`all`); `remove = true` strips the matched headers.
    pub fn import_headers(&self, specs: &[ImportHeaderSpec]) -> Result<(), String> {
        for spec in specs {
            spec.validate()?;
        }
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        let mut found: Vec<(String, Value)> = Vec::new();
        let mut remove_starts = Vec::new();
        for field in block.fields.iter().filter(|f| f.has_colon) {
            let name = field.name(&data);
            let Some(spec) = specs.iter().find(|spec| spec.matches(name)) else {
                continue;
            };
            let key = spec.key_for(name);
            let value = decode_value(field.raw_value(&data));
            let slot = match found.iter().position(|(k, _)| *k == key) {
                Some(idx) => &mut found[idx].1,
                None => {
                    let initial = match spec.match_mode {
                        ImportMatch::All => Value::Array(Vec::new()),
                        _ => Value::Null,
                    };
                    found.push((key, initial));
                    &mut found.last_mut().expect("just pushed").1
                }
            };
            match (spec.match_mode, slot) {
                (ImportMatch::All, Value::Array(items)) => items.push(Value::String(value)),
                (ImportMatch::First, slot) if !slot.is_null() => {}
                (_, slot) => *slot = Value::String(value),
            }
            if spec.remove {
                remove_starts.push(field.start);
            }
        }
        self.set_meta_many(found);
        if !remove_starts.is_empty() {
            // Remove by name+value identity on the current bytes: re-parse and
            // drop the fields the specs chose.
            self.edit_data(|current| {
                let same = current.as_ptr() == data.as_ptr() && current.len() == data.len();
                Ok::<_, String>(headers::remove_fields(current, |field| {
                    if same {
                        remove_starts.contains(&field.start)
                    } else {
                        field.has_colon
                            && specs
                                .iter()
                                .find(|spec| spec.matches(field.name(current)))
                                .is_some_and(|spec| spec.remove)
                    }
                }))
            })?;
        }
        Ok(())
    }

    /// The first header called `name`, parsed as an address list; `None`
    /// when absent.
    pub fn get_address_header(&self, name: &str) -> Result<Option<AddressHeader>, String> {
        let data = self.data();
        let block = HeaderBlock::parse(&data);
        match block.named(&data, name).next() {
            Some(field) => AddressHeader::parse(field.raw_value(&data)).map(Some),
            None => Ok(None),
        }
    }

    pub fn from_header(&self) -> Result<Option<AddressHeader>, String> {
        self.get_address_header("From")
    }

    pub fn to_header(&self) -> Result<Option<AddressHeader>, String> {
        self.get_address_header("To")
    }

    /// Parse the header `name` as JSON scheduling parameters (spec §21),
    /// validate and store them, optionally removing the header. Returns the
    /// stored value, or `None` when the header is absent.
    pub fn import_scheduling_header(
        &self,
        name: &str,
        remove: bool,
    ) -> Result<Option<Value>, String> {
        let Some(text) = self.get_first_named_header_value(name) else {
            return Ok(None);
        };
        let value: Value = serde_json::from_str(&text)
            .map_err(|err| format!("header {name}: invalid scheduling JSON '{text}': {err}"))?;
        let value = scheduling::validate(value).map_err(|err| format!("header {name}: {err}"))?;
        self.set_scheduling(Some(value.clone()));
        if remove {
            self.remove_all_named_headers(name);
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use tern_types::{EnvelopeAddress, SpoolId};

    fn msg(data: &'static str) -> Message {
        Message::new(
            SpoolId::new(),
            EnvelopeAddress::parse("s@example.com").unwrap(),
            vec![EnvelopeAddress::parse("r@example.net").unwrap()],
            Default::default(),
            Bytes::from_static(data.as_bytes()),
        )
    }

    const DATA: &str = "X-Campaign-ID: 12345\r\nX-Mailer: foobar\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\tterrace\r\nFrom: \"Doe, J\" <j@example.com>\r\nTo: a@x.com, b@y.com\r\nX-Mailer: second\r\n\r\nThe body\r\n";

    #[test]
    fn reads_headers() {
        let m = msg(DATA);
        assert_eq!(
            m.get_first_named_header_value("subject").as_deref(),
            Some("caf\u{e9} terrace")
        );
        assert_eq!(m.get_first_named_header_value("Missing"), None);
        assert_eq!(
            m.get_all_named_header_values("x-mailer"),
            vec!["foobar", "second"]
        );
        let all = m.get_all_headers();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], ("X-Campaign-ID".into(), "12345".into()));
    }

    #[test]
    fn edits_headers() {
        let m = msg(DATA);
        m.append_header("X-End", "e", false).unwrap();
        m.prepend_header("X-Start", "s", false).unwrap();
        let all = m.get_all_headers();
        assert_eq!(all.first().unwrap().0, "X-Start");
        assert_eq!(all.last().unwrap().0, "X-End");
        m.remove_all_named_headers("x-mailer");
        assert!(m.get_all_named_header_values("X-Mailer").is_empty());
        assert!(m.data().ends_with(b"X-End: e\r\n\r\nThe body\r\n"));
        assert!(m.append_header("Bad Name", "v", false).is_err());
    }

    #[test]
    fn import_and_remove_x_headers() {
        let m = msg(DATA);
        m.import_x_headers(None, false);
        assert_eq!(m.get_meta("x_campaign_id"), Some(json!("12345")));
        assert_eq!(m.get_meta("x_mailer"), Some(json!("second")));
        assert_eq!(m.get_meta("subject"), None);

        let m = msg(DATA);
        m.import_x_headers(Some(&["x-mailer".to_string(), "Subject".to_string()]), true);
        assert_eq!(m.get_meta("x_mailer"), Some(json!("foobar")));
        assert_eq!(m.get_meta("subject"), Some(json!("caf\u{e9} terrace")));
        assert_eq!(m.get_meta("x_campaign_id"), None);

        m.remove_x_headers(Some(&["x-campaign-id".to_string()]));
        assert!(m.get_first_named_header_value("X-Campaign-ID").is_none());
        assert!(m.get_first_named_header_value("X-Mailer").is_some());
        m.remove_x_headers(None);
        assert!(m.get_first_named_header_value("X-Mailer").is_none());
        assert!(m.get_first_named_header_value("Subject").is_some());
    }

    #[test]
    fn import_headers_specs() {
        let m = msg(DATA);
        let specs: Vec<ImportHeaderSpec> = serde_json::from_value(json!([
            {"name": "X-Campaign-ID", "target": "campaign_id"},
            {"name": "X-*", "match": "all", "transform": "camel_case", "remove": true},
            {"name": "Subject", "match": "first", "transform": "pascal_case"},
        ]))
        .unwrap();
        m.import_headers(&specs).unwrap();
        assert_eq!(m.get_meta("campaign_id"), Some(json!("12345")));
        assert_eq!(m.get_meta("xMailer"), Some(json!(["foobar", "second"])));
        assert_eq!(m.get_meta("Subject"), Some(json!("caf\u{e9} terrace")));
        // Only the wildcard spec removes; X-Campaign-ID matched the first spec.
        assert!(m.get_first_named_header_value("X-Mailer").is_none());
        assert!(m.get_first_named_header_value("X-Campaign-ID").is_some());

        for bad in [
            json!([{"name": "*"}]),
            json!([{"name": "X-*-Y"}]),
            json!([{"name": "X-*", "target": "t"}]),
        ] {
            let specs: Vec<ImportHeaderSpec> = serde_json::from_value(bad).unwrap();
            assert!(m.import_headers(&specs).is_err());
        }
        assert!(
            serde_json::from_value::<ImportHeaderSpec>(json!({"name": "a", "bogus": 1})).is_err()
        );
        assert_eq!(
            transform_name("X-Campaign-Id", KeyTransform::KebabCase),
            "x-campaign-id"
        );
        assert_eq!(
            transform_name("X-Campaign-Id", KeyTransform::SnakeCase),
            "x_campaign_id"
        );
    }

    #[test]
    fn address_headers() {
        let m = msg(DATA);
        let from = m.from_header().unwrap().unwrap();
        assert_eq!(from.domain().unwrap(), "example.com");
        assert_eq!(from.name().unwrap(), Some("Doe, J"));
        let to = m.to_header().unwrap().unwrap();
        assert_eq!(to.list().len(), 2);
        assert!(to.email().is_err());
        assert!(m.get_address_header("Cc").unwrap().is_none());
    }

    #[test]
    fn scheduling_header() {
        let m = msg(
            "X-Schedule: {\"dow\":\"Mon,Wed\",\"tz\":\"America/Phoenix\",\"start\":\"09:00:00\",\"end\":\"17:00:00\"}\r\nSubject: s\r\n\r\nb\r\n",
        );
        assert_eq!(m.import_scheduling_header("X-Missing", true).unwrap(), None);
        let value = m
            .import_scheduling_header("X-Schedule", true)
            .unwrap()
            .unwrap();
        assert_eq!(value["tz"], json!("America/Phoenix"));
        assert_eq!(m.scheduling(), Some(value));
        assert!(m.get_first_named_header_value("X-Schedule").is_none());

        let bad = msg("X-Schedule: {\"dow\":\"Mon\"}\r\n\r\n");
        assert!(bad.import_scheduling_header("X-Schedule", false).is_err());
        let bad = msg("X-Schedule: not json\r\n\r\n");
        assert!(
            bad.import_scheduling_header("X-Schedule", false)
                .unwrap_err()
                .contains("invalid scheduling JSON")
        );
    }
}
