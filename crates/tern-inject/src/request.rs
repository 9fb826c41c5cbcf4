//! The JSON body of `POST /api/inject/v1` (spec §4.3) as serde types.
//!
//! Field names, defaults and shapes follow KumoMTA's documented request.
//! Unknown top-level and recipient keys are ignored, as KumoMTA's request
//! parser does, so requests written for KumoMTA keep working; the nested
//! builder objects (`content`, attachments, addresses, `trace_headers`)
//! reject unknown keys, because a typo there would silently change the
//! generated message.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// One injection request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InjectRequest {
    /// The envelope sender (MAIL FROM) of every generated message.
    pub envelope_sender: String,
    /// One message is generated per recipient.
    pub recipients: Vec<Recipient>,
    /// A complete RFC 5322 message (a template), or a builder object.
    pub content: Content,
    /// Template variables shared by all recipients.
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    #[serde(default)]
    pub template_dialect: TemplateDialect,
    /// Queue the request itself and expand it later (§4.5).
    #[serde(default)]
    pub deferred_generation: bool,
    /// Do not write the generated messages to the spool before queueing.
    #[serde(default)]
    pub deferred_spool: bool,
    #[serde(default)]
    pub trace_headers: TraceHeaders,
}

/// One recipient of an injection request.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Recipient {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per-recipient template variables; they override the global ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitutions: Option<Map<String, Value>>,
    /// Stored on the generated message as meta `extra` when non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// The template engine applied to the content.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum TemplateDialect {
    /// MiniJinja (the default).
    #[default]
    Jinja,
    /// No expansion: the content is used as is.
    Static,
    /// Handlebars (the `handlebars` crate, with its string helpers).
    Handlebars,
}

/// `trace_headers` of an HTTP injection; note `received_header` defaults
/// to false here, unlike SMTP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeaders {
    #[serde(default)]
    pub received_header: bool,
    #[serde(default = "default_true")]
    pub supplemental_header: bool,
    #[serde(default = "default_header_name")]
    pub header_name: String,
    #[serde(default)]
    pub include_meta_names: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_header_name() -> String {
    "X-KumoRef".to_string()
}

impl Default for TraceHeaders {
    fn default() -> Self {
        Self {
            received_header: false,
            supplemental_header: true,
            header_name: default_header_name(),
            include_meta_names: Vec::new(),
        }
    }
}

/// The two forms of `content`.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// A complete RFC 5322 message, expanded as one template and then
    /// parsed and rebuilt with proper MIME encodings.
    Rfc822(String),
    /// Parts and headers from which the message is built.
    Builder(Box<BuilderContent>),
}

// A hand-written visitor instead of `#[serde(untagged)]` so that a typo
// inside the builder object reports the real field error rather than
// "data did not match any variant".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string holding an RFC 5322 message, or a content builder object")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Rfc822(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Rfc822(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Content, A::Error> {
                BuilderContent::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|b| Content::Builder(Box::new(b)))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// The builder form of `content`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amp_html_body: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Extra headers, name → value (each value is a template).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<AddressSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<AddressSpec>,
}

/// A `{email, name?}` pair for `From:` and `Reply-To:`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSpec {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One attachment; with `content_id` it is an inline part.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// UTF-8 text, or base64 when `base64` is true.
    pub data: String,
    pub content_type: String,
    #[serde(default)]
    pub base64: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// The `200 OK` answer of the injection endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

impl InjectResponse {
    /// Record a recipient that could not be generated or queued.
    pub fn fail(&mut self, email: &str, error: impl fmt::Display) {
        self.fail_count += 1;
        self.failed_recipients.push(email.to_string());
        self.errors.push(format!("{email}: {error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_content_and_defaults() {
        let req: InjectRequest = serde_json::from_str(
            r#"{"envelope_sender":"a@example.com","content":"Subject: hi\n\nbody",
                "recipients":[{"email":"b@example.com"}]}"#,
        )
        .unwrap();
        assert!(matches!(req.content, Content::Rfc822(ref s) if s.starts_with("Subject")));
        assert_eq!(req.template_dialect, TemplateDialect::Jinja);
        assert!(!req.trace_headers.received_header);
        assert!(req.trace_headers.supplemental_header);
        assert_eq!(req.trace_headers.header_name, "X-KumoRef");
        assert!(!req.deferred_generation);
    }

    #[test]
    fn builder_content_reports_the_real_field_error() {
        let err = serde_json::from_str::<InjectRequest>(
            r#"{"envelope_sender":"a@example.com","content":{"text_bdy":"x"},
                "recipients":[{"email":"b@example.com"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `text_bdy`"), "{err}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let err = serde_json::from_str::<InjectRequest>(
            r#"{"envelope_sender":"a@example.com","content":5,"recipients":[]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("RFC 5322"), "{err}");
        assert!(
            serde_json::from_str::<InjectRequest>(
                r#"{"envelope_sender":"a@example.com","content":"x","recipients":"b@example.com"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn dialects_parse_by_name() {
        for (name, dialect) in [
            ("Jinja", TemplateDialect::Jinja),
            ("Static", TemplateDialect::Static),
            ("Handlebars", TemplateDialect::Handlebars),
        ] {
            let parsed: TemplateDialect = serde_json::from_value(Value::from(name)).unwrap();
            assert_eq!(parsed, dialect);
        }
    }
}
