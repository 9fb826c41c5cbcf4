//! Turning a [`LogRecord`] into the text a logger or a log hook emits:
//! the record's JSON, or the output of its `per_record` template.
//!
//! Both the segment writer ([`crate::writer`]) and log hooks
//! ([`crate::hook`]) use [`RecordFormatter`], so a template behaves the
//! same in a file and in a hook message. Template variables are the
//! record's fields, plus `log_record` holding the whole record (spec
//! §12.1). `headers` in a template looks names up case-insensitively, so
//! KumoMTA's documented `{{ headers['x-foobar'] }}` finds a header captured
//! as `X-FooBar`; `log_record.headers` keeps the names as captured.

use crate::config::PerRecordConfig;
use crate::record::{LogRecord, RecordType};
use minijinja::value::{Enumerator, Object, Value as TemplateValue};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Why a record could not be formatted.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("log template for {kind} failed: {source:#}")]
    Template {
        kind: RecordType,
        #[source]
        source: minijinja::Error,
    },
    #[error("log record {kind} is not serialisable: {source}")]
    Json {
        kind: RecordType,
        #[source]
        source: serde_json::Error,
    },
}

/// A template that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("log template for {kind} does not compile: {source}")]
pub struct TemplateError {
    pub kind: RecordType,
    #[source]
    pub source: minijinja::Error,
}

/// Compiled `per_record` templates, one optional template per record type.
pub struct RecordFormatter {
    templates: minijinja::Environment<'static>,
    has_template: [bool; RecordType::ALL.len()],
}

impl std::fmt::Debug for RecordFormatter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = RecordType::ALL
            .iter()
            .filter(|k| self.has_template[**k as usize])
            .map(|k| k.as_str())
            .collect();
        f.debug_struct("RecordFormatter")
            .field("templates", &kinds)
            .finish()
    }
}

impl RecordFormatter {
    /// Compile the template of every enabled record type; `settings`
    /// gives the effective `per_record` entry of a type.
    pub fn new(
        settings: impl Fn(RecordType) -> PerRecordConfig,
    ) -> Result<RecordFormatter, TemplateError> {
        let mut templates = minijinja::Environment::new();
        let mut has_template = [false; RecordType::ALL.len()];
        for kind in RecordType::ALL {
            let config = settings(kind);
            if !config.enable {
                continue;
            }
            if let Some(source) = config.template {
                templates
                    .add_template_owned(kind.as_str(), source)
                    .map_err(|source| TemplateError { kind, source })?;
                has_template[kind as usize] = true;
            }
        }
        Ok(RecordFormatter {
            templates,
            has_template,
        })
    }

    /// Whether records of `kind` are rendered through a template.
    pub fn has_template(&self, kind: RecordType) -> bool {
        self.has_template[kind as usize]
    }

    /// Append the record's text to `out`: the template output as rendered,
    /// or the JSON record. No line break is added.
    pub fn format(&self, record: &LogRecord, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let kind = record.kind;
        if !self.has_template(kind) {
            return record
                .write_json(out)
                .map_err(|source| FormatError::Json { kind, source });
        }
        let whole = TemplateValue::from_serialize(record);
        let context = minijinja::value::merge_maps([
            whole.clone(),
            minijinja::context! {
                headers => TemplateValue::from_object(HeaderLookup(record.headers.clone())),
                log_record => whole,
            },
        ]);
        self.templates
            .get_template(kind.as_str())
            .and_then(|t| t.render_captured_to(context, out))
            .map(|_| ())
            .map_err(|source| FormatError::Template { kind, source })
    }
}

/// The `headers` template variable: a map whose lookups ignore case.
#[derive(Debug)]
struct HeaderLookup(Map<String, Value>);

impl Object for HeaderLookup {
    fn get_value(self: &Arc<Self>, key: &TemplateValue) -> Option<TemplateValue> {
        let name = key.as_str()?;
        let value = self.0.get(name).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })?;
        Some(TemplateValue::from_serialize(value))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .keys()
                .map(|k| TemplateValue::from(k.as_str()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageInfo, Response};
    use serde_json::json;
    use tern_types::SpoolId;
    use uuid::Uuid;

    fn bounce() -> LogRecord {
        let recipients = ["rcpt@example.com"];
        let mut headers = Map::new();
        headers.insert("X-FooBar".into(), json!("foo"));
        headers.insert("Subject".into(), json!("Hi"));
        LogRecord::bounce(
            Uuid::nil(),
            MessageInfo {
                id: SpoolId::new(),
                sender: "s@example.com",
                recipients: &recipients,
                queue: "example.com",
                size: 10,
                num_attempts: 1,
                reception_protocol: Some("ESMTP"),
            },
            "src->example.com@smtp_client",
            Response::new(550, None, "no such user"),
        )
        .with_headers(headers)
    }

    fn formatter(template: &str) -> RecordFormatter {
        RecordFormatter::new(|kind| PerRecordConfig {
            template: (kind == RecordType::Bounce).then(|| template.to_string()),
            ..PerRecordConfig::default()
        })
        .unwrap()
    }

    fn render(template: &str, record: &LogRecord) -> String {
        let mut out = Vec::new();
        formatter(template).format(record, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn documented_template_variables() {
        let record = bounce();
        let age = record.event_time.timestamp() - record.created_time.timestamp();
        assert_eq!(
            render(
                "Bounce! id={{ id }}, from={{ sender }} code={{ response.code }} age={{ timestamp - created }}",
                &record
            ),
            format!(
                "Bounce! id={}, from=s@example.com code=550 age={age}",
                record.id.unwrap()
            )
        );
    }

    #[test]
    fn headers_are_found_in_any_case_and_log_record_keeps_names() {
        let record = bounce();
        assert_eq!(
            render(
                "{{ headers['x-foobar'] }}/{{ headers['X-FooBar'] }}/{{ headers.subject }}/{{ headers['absent'] is undefined }}",
                &record
            ),
            "foo/foo/Hi/True"
        );
        let whole: Value =
            serde_json::from_str(&render("{{ log_record | tojson }}", &record)).unwrap();
        assert_eq!(
            whole,
            serde_json::from_str::<Value>(&record.to_json()).unwrap()
        );
        assert_eq!(
            render("{% for name in headers %}{{ name }};{% endfor %}", &record),
            "X-FooBar;Subject;"
        );
        let headers: Value =
            serde_json::from_str(&render("{{ headers | tojson }}", &record)).unwrap();
        assert_eq!(headers, json!({"X-FooBar": "foo", "Subject": "Hi"}));
    }

    #[test]
    fn types_without_a_template_are_json() {
        let mut record = bounce();
        record.kind = RecordType::Delivery;
        assert_eq!(render("ignored", &record), record.to_json());
    }

    #[test]
    fn template_errors_name_the_type() {
        let err = RecordFormatter::new(|_| PerRecordConfig {
            template: Some("{{ broken".into()),
            ..PerRecordConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("Reception"), "{err}");

        let mut out = Vec::new();
        let err = formatter("{{ response.code + 'x' }}")
            .format(&bounce(), &mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("log template for Bounce failed"),
            "{err}"
        );
    }
}
