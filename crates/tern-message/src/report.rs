//! RFC 3464 delivery status notifications: `msg:parse_rfc3464()`.
//!
//! The report is found as the first `message/delivery-status` part of the
//! message's MIME tree; its body is a sequence of header-like blocks
//! separated by blank lines: the per-message fields, then one block per
//! recipient. The result serialises to the Lua table shape KumoMTA
//! documents (`per_message.reporting_mta.{mta_type,name}`,
//! `per_recipient[i].status.{class,subject,detail}`, ...).

use crate::headers::{HeaderBlock, decode_value};
use crate::mimepart::{DecodedBody, MimePart};
use serde::{Deserialize, Serialize};

/// `type; value` fields such as `Reporting-MTA: dns; mx.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMta {
    pub mta_type: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub recipient_type: String,
    pub recipient: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiagnosticCode {
    pub diagnostic_type: String,
    pub diagnostic: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PerMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_envelope_id: Option<String>,
    pub reporting_mta: RemoteMta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsn_gateway: Option<RemoteMta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_from_mta: Option<RemoteMta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival_date: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PerRecipient {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_recipient: Option<Recipient>,
    pub final_recipient: Recipient,
    pub action: String,
    pub status: ReportStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_mta: Option<RemoteMta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostic_code: Option<DiagnosticCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_log_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub will_retry_until: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub per_message: PerMessage,
    pub per_recipient: Vec<PerRecipient>,
}

/// The fields of one block: lowercased name and decoded value.
pub(crate) fn fields_of(block: &[u8]) -> Vec<(String, String)> {
    let parsed = HeaderBlock::parse(block);
    parsed
        .fields
        .iter()
        .filter(|f| f.has_colon)
        .map(|f| {
            (
                f.name(block).to_ascii_lowercase(),
                decode_value(f.raw_value(block)),
            )
        })
        .collect()
}

/// Split the report body into blocks of fields, skipping blank lines.
fn blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        while let Some(stripped) = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
        {
            rest = stripped;
        }
        if rest.iter().all(u8::is_ascii_whitespace) {
            return out;
        }
        let block = HeaderBlock::parse(rest);
        let fields = fields_of(&rest[..block.header_end]);
        if !fields.is_empty() {
            out.push(fields);
        }
        if block.body_start >= rest.len() || block.body_start == 0 {
            return out;
        }
        rest = &rest[block.body_start..];
    }
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn typed_pair(value: &str, field: &str) -> Result<(String, String), String> {
    let (kind, rest) = value
        .split_once(';')
        .ok_or_else(|| format!("{field}: '{value}' is not of the form 'type; value'"))?;
    Ok((kind.trim().to_ascii_lowercase(), rest.trim().to_string()))
}

pub(crate) fn mta(value: Option<&str>, field: &str) -> Result<Option<RemoteMta>, String> {
    value
        .map(|v| typed_pair(v, field).map(|(mta_type, name)| RemoteMta { mta_type, name }))
        .transpose()
}

fn recipient(value: Option<&str>, field: &str) -> Result<Option<Recipient>, String> {
    value
        .map(|v| {
            typed_pair(v, field).map(|(recipient_type, recipient)| Recipient {
                recipient_type,
                recipient,
            })
        })
        .transpose()
}

/// An RFC 5322 date as RFC 3339 UTC; unreadable dates are kept as written.
fn date(value: Option<&str>) -> Option<String> {
    value.map(|v| {
        chrono::DateTime::parse_from_rfc2822(v.trim())
            .map(|d| {
                d.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_else(|_| v.trim().to_string())
    })
}

fn status(value: &str) -> Result<ReportStatus, String> {
    let code = value.split_whitespace().next().unwrap_or("");
    let mut parts = code.split('.');
    let bad = || format!("Status: '{value}' is not an enhanced status code");
    let class = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let subject = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let detail = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(ReportStatus {
        class,
        subject,
        detail,
    })
}

fn find_status_part(part: &MimePart) -> Option<&MimePart> {
    if part.media_type() == "message/delivery-status" {
        return Some(part);
    }
    part.children().iter().find_map(find_status_part)
}

/// Parse `data` as a delivery status notification: `Ok(None)` when the
/// message holds no `message/delivery-status` part, an error when it does
/// but the report is malformed.
pub fn parse_rfc3464(data: bytes::Bytes) -> Result<Option<DeliveryReport>, String> {
    let root = MimePart::parse(data);
    let Some(part) = find_status_part(&root) else {
        return Ok(None);
    };
    let body = match part.body() {
        Ok(DecodedBody::Binary(bytes)) => bytes,
        Ok(DecodedBody::Text(text)) => text.into_bytes(),
        Err(_) => part.raw_body(),
    };
    let malformed = |why: String| format!("malformed RFC 3464 report: {why}");
    let mut blocks = blocks(&body).into_iter();
    let message = blocks
        .next()
        .ok_or_else(|| malformed("the delivery-status part is empty".into()))?;
    let per_message = PerMessage {
        original_envelope_id: get(&message, "original-envelope-id").map(str::to_string),
        reporting_mta: mta(get(&message, "reporting-mta"), "Reporting-MTA")
            .map_err(malformed)?
            .ok_or_else(|| malformed("Reporting-MTA is missing".into()))?,
        dsn_gateway: mta(get(&message, "dsn-gateway"), "DSN-Gateway").map_err(malformed)?,
        received_from_mta: mta(get(&message, "received-from-mta"), "Received-From-MTA")
            .map_err(malformed)?,
        arrival_date: date(get(&message, "arrival-date")),
    };
    let mut per_recipient = Vec::new();
    for fields in blocks {
        per_recipient.push(PerRecipient {
            original_recipient: recipient(get(&fields, "original-recipient"), "Original-Recipient")
                .map_err(malformed)?,
            final_recipient: recipient(get(&fields, "final-recipient"), "Final-Recipient")
                .map_err(malformed)?
                .ok_or_else(|| malformed("Final-Recipient is missing".into()))?,
            action: get(&fields, "action")
                .map(|a| a.trim().to_ascii_lowercase())
                .ok_or_else(|| malformed("Action is missing".into()))?,
            status: status(
                get(&fields, "status").ok_or_else(|| malformed("Status is missing".into()))?,
            )
            .map_err(malformed)?,
            remote_mta: mta(get(&fields, "remote-mta"), "Remote-MTA").map_err(malformed)?,
            diagnostic_code: get(&fields, "diagnostic-code")
                .map(|v| typed_pair(v, "Diagnostic-Code"))
                .transpose()
                .map_err(malformed)?
                .map(|(diagnostic_type, diagnostic)| DiagnosticCode {
                    diagnostic_type,
                    diagnostic,
                }),
            last_attempt_date: date(get(&fields, "last-attempt-date")),
            final_log_id: get(&fields, "final-log-id").map(str::to_string),
            will_retry_until: date(get(&fields, "will-retry-until")),
        });
    }
    Ok(Some(DeliveryReport {
        per_message,
        per_recipient,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@cs.utk.edu\r\nSubject: failed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"RAA14128.773615765/CS.UTK.EDU\"\r\n\r\n--RAA14128.773615765/CS.UTK.EDU\r\n\r\nThe original message was received.\r\n--RAA14128.773615765/CS.UTK.EDU\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; cs.utk.edu\r\n\r\nOriginal-Recipient: rfc822;louisl@larry.slip.umd.edu\r\nFinal-Recipient: rfc822;louisl@larry.slip.umd.edu\r\nAction: failed\r\nStatus: 4.0.0\r\nDiagnostic-Code: smtp; 426 connection timed out\r\nLast-Attempt-Date: Thu, 7 Jul 1994 17:15:49 -0400\r\n\r\n--RAA14128.773615765/CS.UTK.EDU--\r\n";

    #[test]
    fn parses_the_rfc_example() {
        let report = parse_rfc3464(bytes::Bytes::from_static(DSN.as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(report.per_message.reporting_mta.mta_type, "dns");
        assert_eq!(report.per_message.reporting_mta.name, "cs.utk.edu");
        assert_eq!(report.per_recipient.len(), 1);
        let r = &report.per_recipient[0];
        assert_eq!(r.final_recipient.recipient, "louisl@larry.slip.umd.edu");
        assert_eq!(r.action, "failed");
        assert_eq!(
            r.status,
            ReportStatus {
                class: 4,
                subject: 0,
                detail: 0
            }
        );
        assert_eq!(
            r.diagnostic_code.as_ref().unwrap().diagnostic,
            "426 connection timed out"
        );
        assert_eq!(r.last_attempt_date.as_deref(), Some("1994-07-07T21:15:49Z"));
    }

    #[test]
    fn not_a_report_and_malformed_reports() {
        assert_eq!(
            parse_rfc3464(bytes::Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n")).unwrap(),
            None
        );
        let broken = DSN.replace("Status: 4.0.0", "Status: soon");
        let err = parse_rfc3464(broken.into()).unwrap_err();
        assert!(err.contains("enhanced status code"), "{err}");
        let broken = DSN.replace("Reporting-MTA: dns; cs.utk.edu", "X: y");
        assert!(parse_rfc3464(broken.into()).is_err());
        let empty = "Content-Type: message/delivery-status\r\n\r\n\r\n";
        assert!(parse_rfc3464(empty.into()).is_err());
    }
}
