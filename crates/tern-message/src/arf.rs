//! RFC 5965 Abuse Reporting Format (ARF) feedback reports:
//! `msg:parse_rfc5965()` and the `feedback_report` object of `Feedback` log
//! records.
//!
//! A feedback report is a `multipart/report; report-type=feedback-report`
//! message whose children are a human-readable part, a
//! `message/feedback-report` part (one header-like block of fields such as
//! `Feedback-Type`, `User-Agent`, `Version`, `Original-Rcpt-To`) and,
//! usually, the reported message (`message/rfc822`) or its headers
//! (`text/rfc822-headers`).
//!
//! [`ArfReport`] serialises to KumoMTA's JSON shape for the log record, so
//! the field names (including upstream's `original_rcpto_to`) are part of
//! the log format. Fields RFC 5965 does not name are kept in `extensions`.
//!
//! When the reported message carries the supplemental trace header that
//! Tern's listener adds at reception (`X-KumoRef` by default: base64 of a
//! JSON object marked with `"_@_": "\\_/"`), the decoded object, without
//! the marker, becomes `supplemental_trace`; that is how a complaint finds
//! its way back to the original recipient.

use crate::headers::HeaderBlock;
use crate::mimepart::{DecodedBody, MimePart};
use crate::report::{RemoteMta, fields_of, mta};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use std::collections::BTreeMap;
use tern_types::EnvelopeAddress;

/// Key of the marker that identifies a supplemental trace object.
const TRACE_MARKER_KEY: &str = "_@_";
/// Value of that marker (the JSON string `\_/`).
const TRACE_MARKER_VALUE: &str = "\\_/";

/// A parsed ARF report, in the JSON shape of KumoMTA's `feedback_report`.
/// Absent optional fields serialise as `null`, absent lists as `[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArfReport {
    pub feedback_type: String,
    pub user_agent: String,
    pub version: String,

    /// `Arrival-Date` (or, without it, `Received-Date`) in UTC; `None` when
    /// absent or not an RFC 2822 date.
    #[serde(default)]
    pub arrival_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub incidents: Option<u32>,
    #[serde(default)]
    pub original_envelope_id: Option<String>,
    /// The envelope sender without angle brackets (`""` for `<>`).
    #[serde(default)]
    pub original_mail_from: Option<String>,
    #[serde(default)]
    pub reporting_mta: Option<RemoteMta>,
    #[serde(default)]
    pub source_ip: Option<String>,

    #[serde(default)]
    pub authentication_results: Vec<String>,
    /// `Original-Rcpt-To` addresses without angle brackets. The misspelt
    /// name is KumoMTA's and is kept for log compatibility.
    #[serde(default)]
    pub original_rcpto_to: Vec<String>,
    #[serde(default)]
    pub reported_domain: Vec<String>,
    #[serde(default)]
    pub reported_uri: Vec<String>,

    /// Every other field of the feedback part: lowercased name → values in
    /// the order they appeared.
    pub extensions: BTreeMap<String, Vec<String>>,

    /// The returned message or headers, with CRLF line ends turned into LF.
    pub original_message: Option<String>,
    /// The decoded supplemental trace header of the returned message,
    /// without its marker key.
    pub supplemental_trace: Option<JsonValue>,
}

/// The fields of the feedback part, taken out one by one; what is left at
/// the end becomes `extensions`.
struct FeedbackFields(BTreeMap<String, Vec<String>>);

impl FeedbackFields {
    fn parse(block: &[u8]) -> Self {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in fields_of(block) {
            fields.entry(name).or_default().push(value);
        }
        Self(fields)
    }

    /// A field that may appear at most once. `field` is its canonical
    /// spelling, used in error messages.
    fn single(&mut self, field: &str) -> Result<Option<String>, String> {
        match self.0.remove(&field.to_ascii_lowercase()) {
            None => Ok(None),
            Some(mut values) if values.len() == 1 => Ok(values.pop()),
            Some(values) => Err(format!(
                "{field} appears {} times but may appear only once",
                values.len()
            )),
        }
    }

    fn required(&mut self, field: &str) -> Result<String, String> {
        match self.single(field)? {
            Some(value) if !value.is_empty() => Ok(value),
            Some(_) => Err(format!("{field} is empty")),
            None => Err(format!("{field} is missing")),
        }
    }

    fn multiple(&mut self, field: &str) -> Vec<String> {
        self.0
            .remove(&field.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// Arrival-Date, falling back to Received-Date (an older name for the
    /// same thing). An unreadable or repeated date is treated as absent:
    /// the report is still worth logging without it.
    fn arrival_date(&mut self) -> Option<DateTime<Utc>> {
        match self.single("Arrival-Date") {
            Ok(Some(value)) => parse_date(&value),
            Ok(None) => self
                .single("Received-Date")
                .ok()
                .flatten()
                .and_then(|value| parse_date(&value)),
            Err(_) => None,
        }
    }
}

/// An RFC 2822 date. Some reporters write the obsolete zone name `UTC`,
/// which chrono does not know; it means the same as `+0000`.
fn parse_date(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let parsed = DateTime::parse_from_rfc2822(value).or_else(|err| {
        match value.strip_suffix("UTC").filter(|rest| rest.ends_with(' ')) {
            Some(rest) => DateTime::parse_from_rfc2822(&format!("{rest}+0000")),
            None => Err(err),
        }
    });
    parsed.ok().map(|date| date.with_timezone(&Utc))
}

/// An envelope address field written as `<user@domain>` or `user@domain`,
/// returned without angle brackets.
fn envelope_address(value: &str, field: &str) -> Result<String, String> {
    EnvelopeAddress::parse(value)
        .map(|address| address.to_string())
        .map_err(|why| format!("{field}: {why}"))
}

/// The bytes of a part that returns the reported message or its headers;
/// `None` for other parts and for returned content that cannot be decoded.
fn returned_content(part: &MimePart) -> Option<Vec<u8>> {
    match part.media_type().as_str() {
        // message/rfc822 may only use an identity transfer encoding.
        "message/rfc822" => Some(part.raw_body()),
        "text/rfc822-headers" | "message/global" | "message/global-headers" => {
            part.body().ok().map(DecodedBody::into_bytes)
        }
        _ => None,
    }
}

/// The first `X-` header of `message` whose value is Tern's (or KumoMTA's)
/// supplemental trace: base64 (folding ignored) of a JSON object with the
/// marker key. The object is returned without the marker.
fn supplemental_trace(message: &[u8]) -> Option<JsonValue> {
    let block = HeaderBlock::parse(message);
    block
        .fields
        .iter()
        .filter(|field| {
            field.has_colon
                && field
                    .name(message)
                    .get(..2)
                    .is_some_and(|prefix| prefix.eq_ignore_ascii_case("x-"))
        })
        .find_map(|field| decode_trace(field.raw_value(message)))
}

fn decode_trace(raw_value: &[u8]) -> Option<JsonValue> {
    let compact: Vec<u8> = raw_value
        .iter()
        .copied()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()?;
    let JsonValue::Object(mut object) = serde_json::from_slice(&decoded).ok()? else {
        return None;
    };
    // Any other base64 JSON in an X- header is not ours.
    if object.get(TRACE_MARKER_KEY)?.as_str()? != TRACE_MARKER_VALUE {
        return None;
    }
    object.shift_remove(TRACE_MARKER_KEY);
    Some(JsonValue::Object(object))
}

fn is_feedback_report(root: &MimePart) -> bool {
    root.content_type().is_some_and(|content_type| {
        content_type.value.eq_ignore_ascii_case("multipart/report")
            && content_type
                .param("report-type")
                .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("feedback-report"))
    })
}

/// Parse `data` as an ARF feedback report.
///
/// `Ok(None)` when the message is not `multipart/report;
/// report-type=feedback-report` or has no `message/feedback-report` part;
/// an error (`malformed RFC 5965 report: ...`) when the feedback part lacks
/// `Feedback-Type`, `User-Agent` or `Version`, repeats a single-valued
/// field, or has an unreadable `Incidents`, `Reporting-MTA`,
/// `Original-Mail-From` or `Original-Rcpt-To`.
pub fn parse_rfc5965(data: bytes::Bytes) -> Result<Option<ArfReport>, String> {
    let root = MimePart::parse(data);
    if !is_feedback_report(&root) {
        return Ok(None);
    }
    let Some(feedback) = root
        .children()
        .iter()
        .find(|part| part.media_type() == "message/feedback-report")
    else {
        return Ok(None);
    };

    // With several returned parts, the last one that decodes wins.
    let returned = root.children().iter().filter_map(returned_content).last();
    let supplemental_trace = returned.as_deref().and_then(supplemental_trace);
    let original_message =
        returned.map(|bytes| String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));

    let body = match feedback.body() {
        Ok(body) => body.into_bytes(),
        Err(_) => feedback.raw_body(),
    };
    let malformed = |why: String| format!("malformed RFC 5965 report: {why}");
    let mut fields = FeedbackFields::parse(&body);

    let feedback_type = fields.required("Feedback-Type").map_err(malformed)?;
    let user_agent = fields.required("User-Agent").map_err(malformed)?;
    let version = fields.required("Version").map_err(malformed)?;
    let arrival_date = fields.arrival_date();
    let incidents = fields
        .single("Incidents")
        .map_err(malformed)?
        .map(|value| {
            value
                .parse::<u32>()
                .map_err(|_| malformed(format!("Incidents: '{value}' is not a count")))
        })
        .transpose()?;
    let original_envelope_id = fields.single("Original-Envelope-Id").map_err(malformed)?;
    let original_mail_from = fields
        .single("Original-Mail-From")
        .map_err(malformed)?
        .map(|value| envelope_address(&value, "Original-Mail-From").map_err(malformed))
        .transpose()?;
    let reporting_mta = mta(
        fields
            .single("Reporting-MTA")
            .map_err(malformed)?
            .as_deref(),
        "Reporting-MTA",
    )
    .map_err(malformed)?;
    let source_ip = fields.single("Source-IP").map_err(malformed)?;
    let authentication_results = fields.multiple("Authentication-Results");
    let original_rcpto_to = fields
        .multiple("Original-Rcpt-To")
        .iter()
        .map(|value| envelope_address(value, "Original-Rcpt-To").map_err(malformed))
        .collect::<Result<Vec<_>, _>>()?;
    let reported_domain = fields.multiple("Reported-Domain");
    let reported_uri = fields.multiple("Reported-URI");

    Ok(Some(ArfReport {
        feedback_type,
        user_agent,
        version,
        arrival_date,
        incidents,
        original_envelope_id,
        original_mail_from,
        reporting_mta,
        source_ip,
        authentication_results,
        original_rcpto_to,
        reported_domain,
        reported_uri,
        extensions: fields.0,
        original_message,
        supplemental_trace,
    }))
}

/// A complete report in the shape of RFC 5965 §3.5, around `original` (the
/// returned message). Shared with the Lua binding tests.
#[cfg(test)]
pub(crate) fn example_report(original: &str) -> String {
    let head = "From: <fbl@mailbox.example>\r\n\
        Date: Tue, 14 Jan 2025 10:02:11 -0500\r\n\
        Subject: Complaint about a message from bulk@news.example.org\r\n\
        To: <fbl@fbl.example.org>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/report; report-type=feedback-report;\r\n\
        \tboundary=\"=_fbl_7f3a\"\r\n\
        \r\n\
        This is a multi-part message in MIME format.\r\n\
        --=_fbl_7f3a\r\n\
        Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
        Content-Transfer-Encoding: 7bit\r\n\
        \r\n\
        A subscriber of mailbox.example marked the attached message, received\r\n\
        from 198.51.100.7, as spam.\r\n\
        \r\n\
        --=_fbl_7f3a\r\n\
        Content-Type: message/feedback-report\r\n\
        \r\n\
        Feedback-Type: abuse\r\n\
        User-Agent: MailboxFBL/3.2\r\n\
        Version: 1\r\n\
        Original-Mail-From: <bounces+42@news.example.org>\r\n\
        Original-Rcpt-To: <alice@mailbox.example>\r\n\
        Arrival-Date: Tue, 14 Jan 2025 09:30:00 -0500\r\n\
        Reporting-MTA: dns; mx1.mailbox.example\r\n\
        Source-IP: 198.51.100.7\r\n\
        Authentication-Results: mx1.mailbox.example;\r\n\
        \x20   spf=pass smtp.mailfrom=news.example.org\r\n\
        Reported-Domain: news.example.org\r\n\
        Reported-URI: https://news.example.org/unsubscribe?u=42\r\n\
        Reported-URI: mailto:unsubscribe@news.example.org\r\n\
        Incidents: 3\r\n\
        X-Complaint-Source: spam-button\r\n\
        \r\n\
        --=_fbl_7f3a\r\n\
        Content-Type: message/rfc822\r\n\
        Content-Disposition: inline\r\n\
        \r\n";
    format!("{head}{original}\r\n--=_fbl_7f3a--\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORIGINAL: &str = "From: News <bulk@news.example.org>\r\n\
        To: <alice@mailbox.example>\r\n\
        Subject: Our January offers\r\n\
        X-Mailer: Mailgen 5\r\n\
        Message-ID: <offer-42@news.example.org>\r\n\
        \r\n\
        Buy now.\r\n";

    /// The supplemental header exactly as the listener writes it
    /// (tern-server `supplemental_header`): a compact JSON object with the
    /// marker first, base64 encoded, prepended with `encode = true`.
    fn with_trace_header(original: &str, trace: serde_json::Map<String, JsonValue>) -> String {
        let mut object = serde_json::Map::new();
        object.insert(TRACE_MARKER_KEY.into(), TRACE_MARKER_VALUE.into());
        object.extend(trace);
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(JsonValue::Object(object).to_string());
        let data = crate::headers::prepend_header(original.as_bytes(), "X-KumoRef", &encoded, true);
        String::from_utf8(data).unwrap()
    }

    fn parse(text: &str) -> Result<Option<ArfReport>, String> {
        parse_rfc5965(bytes::Bytes::from(text.to_string()))
    }

    #[test]
    fn parses_a_complete_report_and_its_trace_header() {
        // A long meta value makes the listener fold the base64 token.
        let campaign = "spring-".repeat(120);
        let mut trace = serde_json::Map::new();
        trace.insert("recipient".into(), "alice@mailbox.example".into());
        trace.insert("campaign".into(), campaign.clone().into());
        let original = with_trace_header(ORIGINAL, trace);
        let kumo_ref = original.split("\r\nTo:").next().unwrap();
        assert!(
            kumo_ref.contains("\r\n "),
            "the test header should be folded: {kumo_ref}"
        );

        let report = parse(&example_report(&original)).unwrap().unwrap();
        assert_eq!(report.feedback_type, "abuse");
        assert_eq!(report.user_agent, "MailboxFBL/3.2");
        assert_eq!(report.version, "1");
        assert_eq!(
            report.arrival_date.unwrap().to_rfc3339(),
            "2025-01-14T14:30:00+00:00"
        );
        assert_eq!(report.incidents, Some(3));
        assert_eq!(report.original_envelope_id, None);
        assert_eq!(
            report.original_mail_from.as_deref(),
            Some("bounces+42@news.example.org")
        );
        assert_eq!(
            report.reporting_mta,
            Some(RemoteMta {
                mta_type: "dns".into(),
                name: "mx1.mailbox.example".into()
            })
        );
        assert_eq!(report.source_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(
            report.authentication_results,
            ["mx1.mailbox.example; spf=pass smtp.mailfrom=news.example.org"]
        );
        assert_eq!(report.original_rcpto_to, ["alice@mailbox.example"]);
        assert_eq!(report.reported_domain, ["news.example.org"]);
        assert_eq!(
            report.reported_uri,
            [
                "https://news.example.org/unsubscribe?u=42",
                "mailto:unsubscribe@news.example.org"
            ]
        );
        assert_eq!(
            report.extensions,
            BTreeMap::from([(
                "x-complaint-source".to_string(),
                vec!["spam-button".to_string()]
            )])
        );
        let returned = report.original_message.as_deref().unwrap();
        assert!(returned.starts_with("X-KumoRef: "), "{returned}");
        assert!(returned.ends_with("\n\nBuy now.\n"), "{returned}");
        assert!(!returned.contains('\r'));
        assert_eq!(
            report.supplemental_trace,
            Some(json!({"recipient": "alice@mailbox.example", "campaign": campaign}))
        );
    }

    #[test]
    fn trace_header_folded_at_line_width_with_tabs_and_any_x_name() {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(r#"{"_@_":"\\_/","recipient":["a@mailbox.example","b@mailbox.example"]}"#);
        let (first, rest) = encoded.split_at(40);
        let original = format!("x-fbl-ref: {first}\r\n\t{rest}\r\nSubject: hi\r\n\r\nbody\r\n");
        let report = parse(&example_report(&original)).unwrap().unwrap();
        assert_eq!(
            report.supplemental_trace,
            Some(json!({"recipient": ["a@mailbox.example", "b@mailbox.example"]}))
        );
    }

    #[test]
    fn other_x_headers_are_not_a_trace() {
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        for header in [
            // Base64 JSON without the marker.
            format!("X-Data: {}", encode(r#"{"recipient":"a@b.example"}"#)),
            // The marker key with another value.
            format!(
                "X-Data: {}",
                encode(r#"{"_@_":"x","recipient":"a@b.example"}"#)
            ),
            // A JSON array, and something that is not base64 at all.
            format!("X-Data: {}", encode(r#"["_@_"]"#)),
            "X-Data: not base64!".to_string(),
            // Ours, but not an X- header.
            format!(
                "Kumo-Ref: {}",
                encode(r#"{"_@_":"\\_/","recipient":"a@b.example"}"#)
            ),
        ] {
            let original = format!("{header}\r\nSubject: hi\r\n\r\nbody\r\n");
            let report = parse(&example_report(&original)).unwrap().unwrap();
            assert_eq!(report.supplemental_trace, None, "{header}");
            assert!(report.original_message.is_some());
        }
    }

    #[test]
    fn json_has_kumomta_field_names_and_nulls() {
        let minimal = "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n\
            --b\r\nContent-Type: message/feedback-report\r\n\r\n\
            Feedback-Type: abuse\r\nUser-Agent: Gen/1\r\nVersion: 1\r\n\r\n--b--\r\n";
        let report = parse(minimal).unwrap().unwrap();
        let value = serde_json::to_value(&report).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "feedback_type",
                "user_agent",
                "version",
                "arrival_date",
                "incidents",
                "original_envelope_id",
                "original_mail_from",
                "reporting_mta",
                "source_ip",
                "authentication_results",
                "original_rcpto_to",
                "reported_domain",
                "reported_uri",
                "extensions",
                "original_message",
                "supplemental_trace",
            ]
        );
        assert_eq!(value["arrival_date"], JsonValue::Null);
        assert_eq!(value["reporting_mta"], JsonValue::Null);
        assert_eq!(value["original_message"], JsonValue::Null);
        assert_eq!(value["supplemental_trace"], JsonValue::Null);
        assert_eq!(value["original_rcpto_to"], json!([]));
        assert_eq!(value["extensions"], json!({}));

        let full = parse(&example_report(ORIGINAL)).unwrap().unwrap();
        let value = serde_json::to_value(&full).unwrap();
        assert_eq!(value["arrival_date"], "2025-01-14T14:30:00Z");
        assert_eq!(
            value["reporting_mta"],
            json!({"mta_type": "dns", "name": "mx1.mailbox.example"})
        );
        assert_eq!(value["incidents"], 3);
        let back: ArfReport = serde_json::from_value(value).unwrap();
        assert_eq!(back, full);
    }

    #[test]
    fn other_messages_are_not_reports() {
        assert_eq!(parse("Subject: hi\r\n\r\nbody\r\n").unwrap(), None);
        let dsn = "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
            --b\r\nContent-Type: message/delivery-status\r\n\r\n\
            Reporting-MTA: dns; mx.example.com\r\n\r\n\
            Final-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
        assert_eq!(parse(dsn).unwrap(), None);
        assert!(crate::report::parse_rfc3464(dsn.into()).unwrap().is_some());
        // Claims to be a feedback report but has no feedback part.
        let no_part = "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nspam\r\n--b--\r\n";
        assert_eq!(parse(no_part).unwrap(), None);
        // A feedback part that is not inside a feedback report.
        let bare = "Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n";
        assert_eq!(parse(bare).unwrap(), None);
    }

    #[test]
    fn malformed_feedback_parts_are_errors() {
        let good = example_report(ORIGINAL);
        for (from, to, expect) in [
            ("Feedback-Type: abuse\r\n", "", "Feedback-Type is missing"),
            (
                "User-Agent: MailboxFBL/3.2\r\n",
                "",
                "User-Agent is missing",
            ),
            ("Version: 1\r\n", "", "Version is missing"),
            ("Version: 1\r\n", "Version:\r\n", "Version is empty"),
            (
                "Version: 1\r\n",
                "Version: 1\r\nVersion: 2\r\n",
                "Version appears 2 times",
            ),
            ("Incidents: 3", "Incidents: many", "Incidents: 'many'"),
            (
                "Reporting-MTA: dns; mx1.mailbox.example",
                "Reporting-MTA: mx1.mailbox.example",
                "Reporting-MTA",
            ),
            (
                "Original-Rcpt-To: <alice@mailbox.example>",
                "Original-Rcpt-To: <alice",
                "Original-Rcpt-To",
            ),
            (
                "Original-Mail-From: <bounces+42@news.example.org>",
                "Original-Mail-From: nobody",
                "Original-Mail-From",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let err = parse(&good.replacen(from, to, 1)).unwrap_err();
            assert!(err.starts_with("malformed RFC 5965 report: "), "{err}");
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }

    #[test]
    fn dates_fall_back_and_tolerate_the_utc_zone_name() {
        let good = example_report(ORIGINAL);
        let arrival = "Arrival-Date: Tue, 14 Jan 2025 09:30:00 -0500";
        let with = |line: &str| {
            parse(&good.replacen(arrival, line, 1))
                .unwrap()
                .unwrap()
                .arrival_date
                .map(|d| d.to_rfc3339())
        };
        assert_eq!(
            with("Received-Date: Wed, 15 Jan 2025 08:00:00 +0100").as_deref(),
            Some("2025-01-15T07:00:00+00:00")
        );
        assert_eq!(
            with("Arrival-Date: Thu, 02 Jul 2026 18:55:38 UTC").as_deref(),
            Some("2026-07-02T18:55:38+00:00")
        );
        assert_eq!(with("Arrival-Date: yesterday"), None);
        assert_eq!(with("X-Nothing: here"), None);
    }

    #[test]
    fn returned_headers_part_is_transfer_decoded() {
        let good = example_report(ORIGINAL);
        let report = good
            .replacen(
                "Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n",
                "Content-Type: text/rfc822-headers; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
                1,
            )
            .replacen("Subject: Our January offers", "Subject: caf=C3=A9 offers", 1);
        let report = parse(&report).unwrap().unwrap();
        let returned = report.original_message.unwrap();
        assert!(returned.contains("Subject: café offers\n"), "{returned}");
    }
}
