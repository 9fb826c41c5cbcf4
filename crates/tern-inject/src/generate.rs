//! Turning one injection request into one message per recipient.
//!
//! [`Generator::new`] does the per-request work once: it validates the
//! content, compiles every template, decodes and encodes attachments, and
//! formats the date. [`Generator::generate`] then renders the templates
//! for one recipient and assembles that recipient's message. Errors of
//! the request as a whole ([`RequestError`], HTTP 422) are separated from
//! errors of one recipient (a `String` that lands in `errors`).

use crate::encode::{Boundaries, mailbox_text, write_mailbox_header};
use crate::mime::{self, Part, StandardHeaders, rebuild_message, write_header};
use crate::request::{BuilderContent, Content, InjectRequest, Recipient};
use crate::template::{Escape, TemplateId, Templates, Vars};
use base64::Engine;
use serde_json::Value;

/// Why a whole request cannot be expanded (HTTP 422).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A template failed to compile.
    #[error("failed parsing field {field} as template: {message}")]
    Template { field: String, message: String },
    /// A builder field is invalid.
    #[error("{0}")]
    Content(String),
    /// A feature Tern does not implement.
    #[error("{0} is not supported by Tern yet")]
    Unsupported(String),
}

struct CompiledBuilder<'r> {
    text: Option<TemplateId>,
    amp: Option<TemplateId>,
    html: Option<TemplateId>,
    subject: Option<TemplateId>,
    from: Option<(TemplateId, Option<TemplateId>)>,
    reply_to: Option<(TemplateId, Option<TemplateId>)>,
    headers: Vec<(&'r str, TemplateId)>,
    has_to: bool,
    has_mime_version: bool,
    has_date: bool,
    has_message_id: bool,
    inline: Vec<Vec<u8>>,
    attached: Vec<Vec<u8>>,
}

enum Compiled<'r> {
    Rfc822(TemplateId),
    Builder(Box<CompiledBuilder<'r>>),
}

/// The per-request state shared by all recipients.
pub struct Generator<'r> {
    templates: Templates<'r>,
    compiled: Compiled<'r>,
    date: String,
    hostname: String,
    boundaries: Boundaries,
    size_hint: usize,
}

impl<'r> Generator<'r> {
    /// Validate and compile `request`. `hostname` is used on the right of
    /// generated Message-IDs. `deferred_generation` is the caller's
    /// business: this always expands.
    pub fn new(request: &'r InjectRequest, hostname: &str) -> Result<Self, RequestError> {
        let mut templates = Templates::new(request.template_dialect, &request.substitutions);
        let (compiled, size_hint) = match &request.content {
            Content::Rfc822(text) => {
                let id = templates.add("content", text, Escape::None)?;
                (Compiled::Rfc822(id), text.len() + text.len() / 4 + 256)
            }
            Content::Builder(builder) => {
                let compiled = compile_builder(builder, &mut templates)?;
                let attachments: usize = compiled
                    .inline
                    .iter()
                    .chain(&compiled.attached)
                    .map(Vec::len)
                    .sum();
                let text: usize = [
                    &builder.text_body,
                    &builder.html_body,
                    &builder.amp_html_body,
                ]
                .iter()
                .filter_map(|b| b.as_ref().map(String::len))
                .sum();
                (
                    Compiled::Builder(Box::new(compiled)),
                    attachments + text + text / 4 + 1024,
                )
            }
        };
        Ok(Self {
            templates,
            compiled,
            date: chrono::Utc::now()
                .format("%a, %d %b %Y %H:%M:%S +0000")
                .to_string(),
            hostname: hostname.to_string(),
            boundaries: Boundaries::new(),
            size_hint,
        })
    }

    /// The message for one recipient (CRLF line endings), or why it could
    /// not be generated.
    pub fn generate(&self, recipient: &Recipient) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(self.size_hint);
        self.generate_into(&mut out, recipient)?;
        Ok(out)
    }

    /// As [`Generator::generate`], appending to `out`, which may already
    /// hold trace header lines to put in front of the message. On error
    /// `out` holds a partial message and must be discarded.
    pub fn generate_into(&self, out: &mut Vec<u8>, recipient: &Recipient) -> Result<(), String> {
        let to_header = mailbox_text(recipient.name.as_deref(), &recipient.email);
        let ctx = self.templates.vars(recipient, &to_header);
        let standard = StandardHeaders {
            date: &self.date,
            hostname: &self.hostname,
        };
        out.reserve(self.size_hint);
        match &self.compiled {
            Compiled::Rfc822(id) => {
                let text = self.templates.render(*id, &ctx)?;
                rebuild_message(out, text.as_bytes(), &standard)
            }
            Compiled::Builder(b) => self.build(out, b, recipient, &ctx, &standard),
        }
    }

    /// A capacity that fits most generated messages of this request.
    pub fn size_hint(&self) -> usize {
        self.size_hint
    }

    fn build(
        &self,
        out: &mut Vec<u8>,
        b: &CompiledBuilder<'_>,
        recipient: &Recipient,
        ctx: &Vars,
        standard: &StandardHeaders<'_>,
    ) -> Result<(), String> {
        let render = |id: TemplateId| self.templates.render(id, ctx);
        for (name, id) in &b.headers {
            write_header(out, name, &render(*id)?);
        }
        if !b.has_to {
            write_mailbox_header(out, "To", recipient.name.as_deref(), &recipient.email);
        }
        if let Some(id) = b.subject {
            write_header(out, "Subject", &render(id)?);
        }
        for (header, field, spec) in [
            ("From", "from", &b.from),
            ("Reply-To", "reply_to", &b.reply_to),
        ] {
            if let Some((email, name)) = spec {
                let email = header_address(field, &render(*email)?)?;
                let name = name.map(render).transpose()?;
                write_mailbox_header(out, header, name.as_deref(), &email);
            }
        }
        standard.write_missing(out, b.has_mime_version, b.has_date, b.has_message_id);

        let mut bodies = Vec::with_capacity(3);
        for (id, content_type) in [
            (b.text, "text/plain"),
            (b.amp, "text/x-amp-html"),
            (b.html, "text/html"),
        ] {
            if let Some(id) = id {
                bodies.push(Part::Text {
                    content_type,
                    body: render(id)?,
                });
            }
        }
        let mut root = if bodies.len() == 1 {
            bodies.pop().expect("one body")
        } else {
            Part::Multipart {
                subtype: "alternative",
                children: bodies,
            }
        };
        if !b.inline.is_empty() {
            let mut children = vec![root];
            children.extend(b.inline.iter().map(|a| Part::Encoded(a)));
            root = Part::Multipart {
                subtype: "related",
                children,
            };
        }
        if !b.attached.is_empty() {
            let mut children = vec![root];
            children.extend(b.attached.iter().map(|a| Part::Encoded(a)));
            root = Part::Multipart {
                subtype: "mixed",
                children,
            };
        }
        root.write(out, &self.boundaries);
        Ok(())
    }
}

/// The (rendered) `email` of `from` / `reply_to` as an addr-spec, or why
/// this recipient's message cannot be built: as in KumoMTA, an address
/// that does not parse fails the recipient instead of producing a
/// malformed header.
fn header_address(field: &str, email: &str) -> Result<String, String> {
    let invalid = |why: String| format!("{field}.email: invalid address: {why}");
    if email.chars().any(char::is_control) {
        return Err(invalid(format!(
            "'{}' contains control characters",
            email.escape_debug()
        )));
    }
    let parsed = tern_types::EnvelopeAddress::parse(email).map_err(invalid)?;
    if parsed.is_null() {
        return Err(invalid("empty address".into()));
    }
    Ok(parsed.email().to_string())
}

fn compile_builder<'r>(
    builder: &'r BuilderContent,
    templates: &mut Templates<'r>,
) -> Result<CompiledBuilder<'r>, RequestError> {
    if builder.text_body.is_none() && builder.html_body.is_none() {
        return Err(RequestError::Content(
            "at least one of text_body and/or html_body must be given".into(),
        ));
    }
    let mut add_opt = |field: &str, source: &'r Option<String>, escape: Escape| {
        source
            .as_deref()
            .map(|s| templates.add(field, s, escape))
            .transpose()
    };
    let text = add_opt("text_body", &builder.text_body, Escape::None)?;
    let amp = add_opt("amp_html_body", &builder.amp_html_body, Escape::Html)?;
    let html = add_opt("html_body", &builder.html_body, Escape::Html)?;
    let subject = add_opt("subject", &builder.subject, Escape::None)?;
    let mut address = |field: &str, spec: &'r Option<crate::request::AddressSpec>| {
        spec.as_ref()
            .map(|a| -> Result<_, RequestError> {
                let email = templates.add(&format!("{field}.email"), &a.email, Escape::None)?;
                let name = a
                    .name
                    .as_deref()
                    .map(|n| templates.add(&format!("{field}.name"), n, Escape::None))
                    .transpose()?;
                Ok((email, name))
            })
            .transpose()
    };
    let from = address("from", &builder.from)?;
    let reply_to = address("reply_to", &builder.reply_to)?;

    let overridden = |name: &str| {
        (builder.subject.is_some() && name.eq_ignore_ascii_case("Subject"))
            || (builder.from.is_some() && name.eq_ignore_ascii_case("From"))
            || (builder.reply_to.is_some() && name.eq_ignore_ascii_case("Reply-To"))
    };
    let mut headers = Vec::with_capacity(builder.headers.len());
    let (mut has_to, mut has_mime_version, mut has_date, mut has_message_id) =
        (false, false, false, false);
    for (name, value) in &builder.headers {
        if name.is_empty() || !name.bytes().all(|b| b > 0x20 && b < 0x7f && b != b':') {
            return Err(RequestError::Content(format!(
                "header name '{name}' is not a valid header field name"
            )));
        }
        if name.eq_ignore_ascii_case("Content-Type")
            || name.eq_ignore_ascii_case("Content-Transfer-Encoding")
        {
            return Err(RequestError::Content(format!(
                "header '{name}' is set by the builder from the parts and cannot be given in headers"
            )));
        }
        let Value::String(value) = value else {
            return Err(RequestError::Content(format!(
                "header '{name}' must have a string value"
            )));
        };
        if overridden(name) {
            continue;
        }
        has_to |= name.eq_ignore_ascii_case("To");
        has_mime_version |= name.eq_ignore_ascii_case("Mime-Version");
        has_date |= name.eq_ignore_ascii_case("Date");
        has_message_id |= name.eq_ignore_ascii_case("Message-ID");
        let id = templates.add(&format!("headers.{name}"), value, Escape::None)?;
        headers.push((name.as_str(), id));
    }

    let mut inline = Vec::new();
    let mut attached = Vec::new();
    for (i, a) in builder.attachments.iter().enumerate() {
        let decoded;
        let data: &[u8] = if a.base64 {
            // Tolerate line breaks inside the base64 text, as mail does.
            let compact: Vec<u8> = a
                .data
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            decoded = base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map_err(|err| {
                    RequestError::Content(format!(
                        "attachments[{i}]: data is not valid base64: {err}"
                    ))
                })?;
            &decoded
        } else {
            a.data.as_bytes()
        };
        let encoded = mime::encode_attachment(
            data,
            &a.content_type,
            a.file_name.as_deref(),
            a.content_id.as_deref(),
        )
        .map_err(|err| RequestError::Content(format!("attachments[{i}]: {err}")))?;
        if a.content_id.is_some() {
            inline.push(encoded);
        } else {
            attached.push(encoded);
        }
    }
    Ok(CompiledBuilder {
        text,
        amp,
        html,
        subject,
        from,
        reply_to,
        headers,
        has_to,
        has_mime_version,
        has_date,
        has_message_id,
        inline,
        attached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> InjectRequest {
        serde_json::from_value(json).unwrap()
    }

    fn generate_one(req: &InjectRequest) -> String {
        let generator = Generator::new(req, "mx.example.com").unwrap();
        String::from_utf8(generator.generate(&req.recipients[0]).unwrap()).unwrap()
    }

    #[test]
    fn substitution_precedence() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": "Subject: {{ greeting }} {{ name }}\n\n{{ email }} {{ who }} {{ to_header }} [{{ nothing }}]\n",
            "substitutions": {"greeting": "Hi", "who": "global", "name": "global-name"},
            "recipients": [{"email": "r@example.com", "name": "Rita",
                            "substitutions": {"who": "local"}}]
        }));
        let out = generate_one(&req);
        assert!(out.starts_with("Subject: Hi Rita\r\n"), "{out}");
        assert!(
            out.contains("\r\n\r\nr@example.com local \"Rita\" <r@example.com> []\r\n"),
            "{out}"
        );
    }

    #[test]
    fn static_dialect_does_not_expand() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "template_dialect": "Static",
            "content": "Subject: {{ x }}\n\n{% raw %}\n",
            "recipients": [{"email": "r@example.com"}]
        }));
        assert!(generate_one(&req).starts_with("Subject: {{ x }}\r\n"));
    }

    #[test]
    fn handlebars_builder_per_recipient() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "template_dialect": "Handlebars",
            "content": {
                "subject": "{{brand}} deal for {{name}} & co",
                "text_body": "Hi {{name}}, code {{code}} <{{email}}>[{{missing}}]\n",
                "html_body": "<p>Hi {{name}}, code {{code}} {{{link}}}</p>\n",
                "from": {"email": "news@example.com", "name": "{{brand}} News"},
                "headers": {"X-Campaign": "{{brand}}-{{code}}"}
            },
            "substitutions": {"brand": "Acme", "code": "G", "link": "<i>x</i>"},
            "recipients": [
                {"email": "a@example.com", "name": "Al <A&B>", "substitutions": {"code": "A-1"}},
                {"email": "b@example.com", "substitutions": {"brand": "Bobco"}}
            ]
        }));
        let generator = Generator::new(&req, "mx.example.com").unwrap();
        let render =
            |i: usize| String::from_utf8(generator.generate(&req.recipients[i]).unwrap()).unwrap();
        let a = render(0);
        // Headers and the text part are not HTML: nothing is escaped.
        assert!(
            a.contains("Subject: Acme deal for Al <A&B> & co\r\n"),
            "{a}"
        );
        assert!(a.contains("X-Campaign: Acme-A-1\r\n"), "{a}");
        assert!(
            a.contains("From: \"Acme News\" <news@example.com>\r\n"),
            "{a}"
        );
        assert!(
            a.contains("Hi Al <A&B>, code A-1 <a@example.com>[]\r\n"),
            "{a}"
        );
        // The HTML part escapes {{x}} but not {{{x}}}.
        assert!(
            a.contains("<p>Hi Al &lt;A&amp;B&gt;, code A-1 <i>x</i></p>\r\n"),
            "{a}"
        );
        let b = render(1);
        // (the header writer folds the double space left by the missing name)
        assert!(b.contains("Subject: Bobco deal for & co\r\n"), "{b}");
        assert!(b.contains("X-Campaign: Bobco-G\r\n"), "{b}");
        assert!(b.contains("Hi , code G <b@example.com>[]\r\n"), "{b}");
    }

    #[test]
    fn handlebars_complete_message() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "template_dialect": "Handlebars",
            "content": "To: {{{to_header}}}\nSubject: Hello {{name}}\n\n{{#each items}}- {{this}} for {{name}}\n{{/each}}",
            "substitutions": {"items": ["a", "b"]},
            "recipients": [{"email": "r@example.com", "name": "Rita & Co"}]
        }));
        let out = generate_one(&req);
        assert!(
            out.starts_with("To: \"Rita & Co\" <r@example.com>\r\n"),
            "{out}"
        );
        assert!(out.contains("Subject: Hello Rita & Co\r\n"), "{out}");
        assert!(
            out.ends_with("\r\n\r\n- a for Rita & Co\r\n- b for Rita & Co\r\n"),
            "{out}"
        );
    }

    #[test]
    fn handlebars_syntax_error_is_a_template_error() {
        for content in [
            serde_json::json!("Subject: {{#if x}}\n\nbody"),
            serde_json::json!({"text_body": "ok", "html_body": "<p>{{name</p>"}),
        ] {
            let req = request(serde_json::json!({
                "envelope_sender": "s@example.com", "template_dialect": "Handlebars",
                "content": content, "recipients": [{"email": "r@example.com"}]
            }));
            match Generator::new(&req, "h") {
                Err(RequestError::Template { field, message }) => {
                    assert!(field == "content" || field == "html_body", "{field}");
                    assert!(!message.is_empty());
                }
                other => panic!("expected a template error, got {:?}", other.err()),
            }
        }
    }

    #[test]
    fn handlebars_render_error_fails_only_the_recipient() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com", "template_dialect": "Handlebars",
            "content": {"text_body": "{{ name or 'Fred' }}"},
            "recipients": [{"email": "r@example.com", "name": "John"}]
        }));
        let generator = Generator::new(&req, "h").unwrap();
        let err = generator.generate(&req.recipients[0]).unwrap_err();
        assert!(err.contains("Helper not found"), "{err}");
    }

    #[test]
    fn jinja_html_body_escapes_like_kumomta() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"text_body": "{{ x }}", "html_body": "<p>{{ x }} {{ x|safe }}</p>"},
            "substitutions": {"x": "<A&B>"},
            "recipients": [{"email": "r@example.com"}]
        }));
        let out = generate_one(&req);
        assert!(out.contains("\r\n\r\n<A&B>\r\n"), "{out}");
        assert!(out.contains("<p>&lt;A&amp;B&gt; <A&B></p>"), "{out}");
    }

    #[test]
    fn template_syntax_error_names_the_field() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"text_body": "ok", "html_body": "{% if %}"},
            "recipients": [{"email": "r@example.com"}]
        }));
        match Generator::new(&req, "h") {
            Err(RequestError::Template { field, .. }) => assert_eq!(field, "html_body"),
            _ => panic!("expected a template error"),
        }
    }

    #[test]
    fn runtime_template_error_fails_the_recipient() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": "Subject: {{ \"a\" + 1 }}\n\nx",
            "recipients": [{"email": "r@example.com"}]
        }));
        let generator = Generator::new(&req, "h").unwrap();
        assert!(generator.generate(&req.recipients[0]).is_err());
    }

    #[test]
    fn builder_needs_a_body() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"subject": "x"},
            "recipients": [{"email": "r@example.com"}]
        }));
        assert_eq!(
            Generator::new(&req, "h").err().unwrap().to_string(),
            "at least one of text_body and/or html_body must be given"
        );
    }

    #[test]
    fn builder_full_structure() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {
                "text_body": "Hello {{ name }}",
                "html_body": "<p>Hello {{ name }} <img src=\"cid:px\"></p>",
                "subject": "Sale for {{ name }} \u{2603}",
                "from": {"email": "news@example.com", "name": "News {{ brand }}"},
                "reply_to": {"email": "help@example.com"},
                "headers": {"X-Campaign": "c-{{ brand }}", "Subject": "ignored"},
                "attachments": [
                    {"data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
                     "base64": true, "content_type": "image/gif", "content_id": "px",
                     "file_name": "pixel.gif"},
                    {"data": "a,b\n1,2\n", "content_type": "text/csv", "file_name": "data.csv"}
                ]
            },
            "substitutions": {"brand": "Acme"},
            "recipients": [{"email": "r@example.com", "name": "Ren\u{e9}"}]
        }));
        let out = generate_one(&req);
        assert!(out.is_ascii());
        assert!(
            out.starts_with("X-Campaign: c-Acme\r\nTo: =?UTF-8?B?"),
            "{out}"
        );
        assert!(!out.contains("ignored"));
        assert!(
            out.contains("Subject: Sale for Ren=?UTF-8?B?")
                || out.contains("Subject: Sale for =?UTF-8?B?"),
            "{out}"
        );
        assert!(
            out.contains("From: \"News Acme\" <news@example.com>\r\n"),
            "{out}"
        );
        assert!(out.contains("Reply-To: help@example.com\r\n"), "{out}");
        assert!(out.contains("Mime-Version: 1.0\r\nDate: "));
        assert!(out.contains("Message-ID: <"));
        let mixed = out.find("multipart/mixed").unwrap();
        let related = out.find("multipart/related").unwrap();
        let alternative = out.find("multipart/alternative").unwrap();
        assert!(mixed < related && related < alternative);
        let text = out.find("Content-Type: text/plain").unwrap();
        let html = out.find("Content-Type: text/html").unwrap();
        assert!(text < html);
        assert!(out.contains("Hello Ren=C3=A9"), "{out}");
        assert!(out.contains("Content-ID: <px>"));
        assert!(out.contains("Content-Disposition: attachment;\r\n\tfilename=\"data.csv\""));
    }

    #[test]
    fn explicit_to_header_suppresses_the_generated_one() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"text_body": "x", "headers": {"to": "list@example.com"}},
            "recipients": [{"email": "r@example.com"}]
        }));
        let out = generate_one(&req);
        assert_eq!(
            out.matches("to: ").count() + out.matches("To: ").count(),
            1,
            "{out}"
        );
        assert!(out.contains("to: list@example.com\r\n"));
    }

    #[test]
    fn invalid_base64_attachment_is_a_request_error() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"text_body": "x", "attachments": [
                {"data": "***", "base64": true, "content_type": "image/gif"}]},
            "recipients": [{"email": "r@example.com"}]
        }));
        let err = Generator::new(&req, "h").err().unwrap().to_string();
        assert!(
            err.starts_with("attachments[0]: data is not valid base64"),
            "{err}"
        );
    }

    #[test]
    fn single_text_body_is_not_multipart() {
        let req = request(serde_json::json!({
            "envelope_sender": "s@example.com",
            "content": {"html_body": "<b>x</b>"},
            "recipients": [{"email": "r@example.com"}]
        }));
        let out = generate_one(&req);
        assert!(!out.contains("multipart"));
        assert!(out.contains("Content-Type: text/html;\r\n\tcharset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n<b>x</b>\r\n"));
    }
}
