//! Assembling MIME messages: the part tree of the builder form and the
//! parse-and-rebuild of complete RFC 5322 messages (spec §4.3).
//!
//! Parts are written straight into one output buffer. Attachments are the
//! same for every recipient of a request, so they are encoded once
//! ([`Part::Encoded`]) and copied into each generated message.

use crate::encode::{
    self, Boundaries, HARD_LINE_LIMIT, TransferEncoding, write_address_header, write_body,
    write_crlf_normalised, write_unstructured_header,
};

/// Header names whose values are mailbox lists.
const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-sender",
];

pub fn is_address_header(name: &str) -> bool {
    ADDRESS_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Write `name: value` with the encoding rules that suit the header.
/// Line breaks in the value are unfolded first, so a substituted value
/// cannot start a header line of its own.
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let unfolded;
    let value = if value.contains(['\r', '\n']) {
        unfolded = value.replace(['\r', '\n'], " ");
        unfolded.as_str()
    } else {
        value
    };
    if is_address_header(name) {
        write_address_header(out, name, value);
    } else {
        write_unstructured_header(out, name, value);
    }
}

/// One node of a message's MIME tree.
pub enum Part<'a> {
    /// A complete part (its MIME headers, a blank line, its encoded body).
    Encoded(&'a [u8]),
    /// A leaf whose body is encoded now.
    Text {
        content_type: &'static str,
        body: String,
    },
    /// `multipart/<subtype>` around the children, in order.
    Multipart {
        subtype: &'static str,
        children: Vec<Part<'a>>,
    },
}

impl Part<'_> {
    /// Append the part: MIME headers, blank line, body (ending with
    /// CRLF). Returns true when the content itself ended with a line
    /// break, which then needs one more CRLF before a following boundary
    /// delimiter (the CRLF in front of a delimiter belongs to it).
    pub fn write(&self, out: &mut Vec<u8>, boundaries: &Boundaries) -> bool {
        match self {
            Part::Encoded(bytes) => {
                out.extend_from_slice(bytes);
                false
            }
            Part::Text { content_type, body } => {
                write_text_part(out, content_type, body.as_bytes());
                body.ends_with('\n')
            }
            Part::Multipart { subtype, children } => {
                let boundary = boundaries.next();
                out.extend_from_slice(b"Content-Type: multipart/");
                out.extend_from_slice(subtype.as_bytes());
                out.extend_from_slice(b";\r\n\tboundary=\"");
                out.extend_from_slice(boundary.as_bytes());
                out.extend_from_slice(b"\"\r\n\r\n");
                for child in children {
                    out.extend_from_slice(b"--");
                    out.extend_from_slice(boundary.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    if child.write(out, boundaries) {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"--");
                out.extend_from_slice(boundary.as_bytes());
                out.extend_from_slice(b"--\r\n");
                false
            }
        }
    }
}

/// A UTF-8 text leaf: `Content-Type: <type>; charset="utf-8"`, the
/// transfer encoding its content needs, and the body.
pub fn write_text_part(out: &mut Vec<u8>, content_type: &str, body: &[u8]) {
    let encoding = TransferEncoding::choose(body, true);
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b";\r\n\tcharset=\"utf-8\"\r\nContent-Transfer-Encoding: ");
    out.extend_from_slice(encoding.as_str().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    write_body(out, body, encoding);
}

/// Encode an attachment part once: content type (with `name`),
/// disposition (`inline` with a Content-ID, else `attachment`), the
/// transfer encoding its data needs, and the body.
pub fn encode_attachment(
    data: &[u8],
    content_type: &str,
    file_name: Option<&str>,
    content_id: Option<&str>,
) -> Result<Vec<u8>, String> {
    if content_type.is_empty()
        || !content_type.contains('/')
        || content_type.bytes().any(|b| !(0x20..0x7f).contains(&b))
    {
        return Err(format!(
            "attachment content_type '{content_type}' is not a MIME type"
        ));
    }
    let is_text = content_type.to_ascii_lowercase().starts_with("text/");
    let encoding = TransferEncoding::choose(data, is_text);
    let mut out = Vec::with_capacity(data.len() * 4 / 3 + 256);
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    if is_text && !content_type.to_ascii_lowercase().contains("charset") && !data.is_ascii() {
        out.extend_from_slice(b";\r\n\tcharset=\"utf-8\"");
    }
    if let Some(name) = file_name {
        out.extend_from_slice(b";\r\n\t");
        out.extend_from_slice(encode::file_name_param("name", name).as_bytes());
    }
    out.extend_from_slice(b"\r\nContent-Transfer-Encoding: ");
    out.extend_from_slice(encoding.as_str().as_bytes());
    out.extend_from_slice(b"\r\nContent-Disposition: ");
    out.extend_from_slice(if content_id.is_some() {
        b"inline".as_slice()
    } else {
        b"attachment".as_slice()
    });
    if let Some(name) = file_name {
        out.extend_from_slice(b";\r\n\t");
        out.extend_from_slice(encode::file_name_param("filename", name).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(id) = content_id {
        let id = id.trim_start_matches('<').trim_end_matches('>');
        if id.is_empty() || !id.is_ascii() || id.bytes().any(|b| b <= 0x20) {
            return Err(format!(
                "attachment content_id '{id}' must be printable ASCII without spaces"
            ));
        }
        out.extend_from_slice(b"Content-ID: <");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b">\r\n");
    }
    out.extend_from_slice(b"\r\n");
    write_body(&mut out, data, encoding);
    // Attachments always sit inside a multipart: keep a final line break
    // of text data apart from the CRLF that belongs to the next delimiter.
    if encoding != TransferEncoding::Base64 && data.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The headers every generated message ends up with when the content did
/// not set them.
pub struct StandardHeaders<'a> {
    /// RFC 5322 date of the request.
    pub date: &'a str,
    /// Host name used on the right of generated Message-IDs.
    pub hostname: &'a str,
}

impl StandardHeaders<'_> {
    pub fn write_missing(
        &self,
        out: &mut Vec<u8>,
        has_mime_version: bool,
        has_date: bool,
        has_message_id: bool,
    ) {
        if !has_mime_version {
            out.extend_from_slice(b"Mime-Version: 1.0\r\n");
        }
        if !has_date {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(self.date.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !has_message_id {
            out.extend_from_slice(b"Message-ID: <");
            out.extend_from_slice(uuid::Uuid::new_v4().simple().to_string().as_bytes());
            out.push(b'@');
            out.extend_from_slice(self.hostname.as_bytes());
            out.extend_from_slice(b">\r\n");
        }
    }
}

/// One header field of a parsed message, as raw bytes.
struct RawHeader<'a> {
    name: &'a str,
    /// Every physical line of the field, without line endings.
    lines: Vec<&'a [u8]>,
}

impl RawHeader<'_> {
    fn unfolded_value(&self) -> String {
        let mut value = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let text = String::from_utf8_lossy(line);
            let text = if i == 0 {
                text[self.name.len() + 1..].trim_start().to_string()
            } else {
                text.trim_start().to_string()
            };
            if !value.is_empty() && !text.is_empty() {
                value.push(' ');
            }
            value.push_str(text.trim_end());
        }
        value
    }

    fn needs_rewrite(&self) -> bool {
        self.lines
            .iter()
            .any(|l| !l.is_ascii() || l.len() > HARD_LINE_LIMIT)
    }

    fn write(&self, out: &mut Vec<u8>) {
        if self.needs_rewrite() {
            write_header(out, self.name, &self.unfolded_value());
        } else {
            for line in &self.lines {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Split a header block from its body. Accepts CRLF or bare LF.
fn parse_headers(data: &[u8]) -> Result<(Vec<RawHeader<'_>>, &[u8]), String> {
    let mut headers: Vec<RawHeader<'_>> = Vec::new();
    let mut pos = 0;
    loop {
        if pos >= data.len() {
            return Ok((headers, &data[data.len()..]));
        }
        let end = memchr::memchr(b'\n', &data[pos..])
            .map(|i| pos + i)
            .unwrap_or(data.len());
        let mut line = &data[pos..end];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let next = (end + 1).min(data.len());
        if line.is_empty() {
            return Ok((headers, &data[next..]));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match headers.last_mut() {
                Some(h) => h.lines.push(line),
                None => return Err("the message starts with a continuation line".into()),
            }
        } else {
            let colon = memchr::memchr(b':', line).ok_or_else(|| {
                format!(
                    "'{}' is not a header field (expected 'Name: value', then a blank line before the body)",
                    String::from_utf8_lossy(&line[..line.len().min(60)])
                )
            })?;
            let name = std::str::from_utf8(&line[..colon])
                .ok()
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b > 0x20 && b < 0x7f && b != b':'))
                .ok_or_else(|| {
                    format!(
                        "'{}' is not a valid header field name",
                        String::from_utf8_lossy(&line[..colon])
                    )
                })?;
            headers.push(RawHeader {
                name,
                lines: vec![line],
            });
        }
        pos = next;
    }
}

/// A MIME parameter value from a header value (`boundary`, `charset`).
fn param<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    for piece in value.split(';').skip(1) {
        let (key, val) = piece.split_once('=')?;
        if key.trim().eq_ignore_ascii_case(name) {
            let val = val.trim();
            return Some(
                val.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(val),
            );
        }
    }
    None
}

/// Parse a complete message and write it back with correct encodings:
/// non-ASCII or over-long header fields are re-encoded (RFC 2047),
/// 8-bit or long-lined bodies get quoted-printable or base64, multipart
/// bodies are rebuilt part by part, line endings become CRLF, and
/// Mime-Version, Date and Message-ID are added when missing.
pub fn rebuild_message(
    out: &mut Vec<u8>,
    message: &[u8],
    standard: &StandardHeaders<'_>,
) -> Result<(), String> {
    let (headers, body) = parse_headers(message)?;
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let (mime_version, date, message_id) = (has("Mime-Version"), has("Date"), has("Message-ID"));
    rebuild_entity(out, &headers, body, 0, |out| {
        standard.write_missing(out, mime_version, date, message_id)
    })
    .map(|_| ())
}

const MAX_DEPTH: usize = 32;

fn rebuild_entity(
    out: &mut Vec<u8>,
    headers: &[RawHeader<'_>],
    body: &[u8],
    depth: usize,
    extra_headers: impl FnOnce(&mut Vec<u8>),
) -> Result<bool, String> {
    if depth > MAX_DEPTH {
        return Err("MIME parts are nested too deeply".into());
    }
    let content_type = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Type"))
        .map(|h| h.unfolded_value());
    let cte = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Transfer-Encoding"))
        .map(|h| h.unfolded_value().trim().to_ascii_lowercase());
    let mime_type = content_type
        .as_deref()
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "text/plain".to_string());

    if mime_type.starts_with("multipart/") {
        let boundary = content_type
            .as_deref()
            .and_then(|ct| param(ct, "boundary"))
            .ok_or_else(|| format!("{mime_type} without a boundary parameter"))?
            .to_string();
        for h in headers {
            h.write(out);
        }
        extra_headers(out);
        out.extend_from_slice(b"\r\n");
        return rebuild_multipart(out, body, &boundary, depth).map(|_| false);
    }

    let already_encoded = matches!(cte.as_deref(), Some("base64" | "quoted-printable"));
    let is_message = mime_type.starts_with("message/");
    let encoding = if already_encoded || is_message {
        None
    } else {
        Some(TransferEncoding::choose(
            body,
            mime_type.starts_with("text/"),
        ))
    };
    let reencode = matches!(
        encoding,
        Some(TransferEncoding::QuotedPrintable | TransferEncoding::Base64)
    );
    for h in headers {
        if reencode && h.name.eq_ignore_ascii_case("Content-Transfer-Encoding") {
            continue;
        }
        if reencode
            && h.name.eq_ignore_ascii_case("Content-Type")
            && mime_type.starts_with("text/")
            && param(&h.unfolded_value(), "charset").is_none()
        {
            let value = format!("{}; charset=\"utf-8\"", h.unfolded_value());
            write_header(out, h.name, &value);
            continue;
        }
        h.write(out);
    }
    extra_headers(out);
    if reencode {
        let encoding = encoding.expect("reencode implies an encoding");
        if content_type.is_none() {
            out.extend_from_slice(b"Content-Type: text/plain;\r\n\tcharset=\"utf-8\"\r\n");
        }
        out.extend_from_slice(b"Content-Transfer-Encoding: ");
        out.extend_from_slice(encoding.as_str().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        write_body(out, body, encoding);
        // Base64 carries a final line break inside the encoding.
        Ok(encoding == TransferEncoding::QuotedPrintable && body.ends_with(b"\n"))
    } else {
        out.extend_from_slice(b"\r\n");
        if !body.is_empty() {
            write_crlf_normalised(out, body);
        }
        Ok(!already_encoded && (body.ends_with(b"\n") || body.ends_with(b"\r")))
    }
}

/// Rebuild a multipart body: preamble, each part (recursively), epilogue.
fn rebuild_multipart(
    out: &mut Vec<u8>,
    body: &[u8],
    boundary: &str,
    depth: usize,
) -> Result<(), String> {
    let delimiter = format!("--{boundary}");
    // Split the body into lines, remembering which are delimiters.
    let mut sections: Vec<(usize, usize)> = Vec::new(); // byte ranges between delimiters
    let mut start = 0usize;
    let mut pos = 0usize;
    let mut closed = false;
    let mut epilogue_start = body.len();
    while pos < body.len() {
        let end = memchr::memchr(b'\n', &body[pos..])
            .map(|i| pos + i)
            .unwrap_or(body.len());
        let line = &body[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let next = (end + 1).min(body.len());
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes()) {
            let rest_trimmed = rest.trim_ascii_end();
            if rest_trimmed.is_empty() || rest_trimmed == b"--" {
                // The line break before a delimiter belongs to it.
                let mut section_end = pos;
                if section_end > start && body[section_end - 1] == b'\n' {
                    section_end -= 1;
                    if section_end > start && body[section_end - 1] == b'\r' {
                        section_end -= 1;
                    }
                }
                sections.push((start, section_end));
                start = next;
                if rest_trimmed == b"--" {
                    closed = true;
                    epilogue_start = next;
                    break;
                }
            }
        }
        pos = next;
    }
    if !closed {
        // Tolerate a missing closing delimiter: the last part runs to the end.
        sections.push((start, body.len()));
        epilogue_start = body.len();
    }
    if sections.len() < 2 {
        return Err(format!(
            "multipart body has no part delimited by boundary '{boundary}'"
        ));
    }
    let (pre_start, pre_end) = sections[0];
    if pre_end > pre_start {
        write_crlf_normalised(out, &body[pre_start..pre_end]);
    }
    for &(s, e) in &sections[1..] {
        out.extend_from_slice(delimiter.as_bytes());
        out.extend_from_slice(b"\r\n");
        let (headers, part_body) = parse_headers(&body[s..e])?;
        if rebuild_entity(out, &headers, part_body, depth + 1, |_| {})? {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(delimiter.as_bytes());
    out.extend_from_slice(b"--\r\n");
    if epilogue_start < body.len() {
        write_crlf_normalised(out, &body[epilogue_start..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard() -> StandardHeaders<'static> {
        StandardHeaders {
            date: "Tue, 1 Jan 2030 00:00:00 +0000",
            hostname: "mx.example.com",
        }
    }

    fn rebuild(input: &str) -> String {
        let mut out = Vec::new();
        rebuild_message(&mut out, input.as_bytes(), &standard()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ascii_message_gets_crlf_and_standard_headers() {
        let out = rebuild("Subject: hello\n\nHello there\n");
        assert!(out.starts_with("Subject: hello\r\nMime-Version: 1.0\r\nDate: Tue, 1 Jan 2030"));
        assert!(out.contains("\r\nMessage-ID: <"));
        assert!(out.contains("@mx.example.com>\r\n\r\nHello there\r\n"));
        assert!(!out.contains("Content-Transfer-Encoding"));
    }

    #[test]
    fn existing_date_and_message_id_are_kept() {
        let out = rebuild("Date: x\nMessage-ID: <a@b>\nMime-Version: 1.0\n\nbody");
        assert_eq!(
            out,
            "Date: x\r\nMessage-ID: <a@b>\r\nMime-Version: 1.0\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn non_ascii_subject_and_body_are_encoded() {
        let out = rebuild(
            "Subject: Caf\u{e9}\nFrom: \"J\u{f6}rg\" <j@example.com>\n\nCaf\u{e9} cr\u{e8}me\n",
        );
        assert!(out.is_ascii(), "{out}");
        assert!(out.contains("Subject: =?UTF-8?B?"));
        assert!(out.contains("<j@example.com>"));
        assert!(out.contains("Content-Type: text/plain;\r\n\tcharset=\"utf-8\"\r\n"));
        assert!(out.contains(
            "Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 cr=C3=A8me\r\n"
        ));
    }

    #[test]
    fn charset_is_added_to_an_existing_text_type() {
        let out = rebuild("Content-Type: text/html\n\n<p>\u{e9}</p>\n");
        assert!(
            out.contains("Content-Type: text/html; charset=\"utf-8\"\r\n"),
            "{out}"
        );
        assert!(out.contains("quoted-printable"));
    }

    #[test]
    fn multipart_parts_are_rebuilt() {
        let input = "Content-Type: multipart/alternative; boundary=\"XX\"\n\npreamble\n--XX\nContent-Type: text/plain\n\nplain \u{e9}\n--XX\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\nPGI+aGk8L2I+\n--XX--\nepilogue\n";
        let out = rebuild(input);
        assert!(out.contains("--XX\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nplain =C3=A9\r\n--XX\r\n"), "{out}");
        assert!(
            out.contains(
                "Content-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--XX--\r\nepilogue\r\n"
            ),
            "{out}"
        );
        assert!(out.starts_with("Content-Type: multipart/alternative"));
        assert!(out.contains("Mime-Version: 1.0\r\n"));
    }

    #[test]
    fn trailing_newlines_of_parts_survive() {
        let input =
            "Content-Type: multipart/mixed; boundary=\"B\"\n\n--B\n\nkeep\n\n--B\n\nnone\n--B--\n";
        let out = rebuild(input);
        assert!(out.contains("\r\n\r\nkeep\r\n\r\n--B\r\n"), "{out}");
        assert!(out.contains("\r\n\r\nnone\r\n--B--\r\n"), "{out}");
        let boundaries = Boundaries::new();
        let tree = Part::Multipart {
            subtype: "alternative",
            children: vec![Part::Text {
                content_type: "text/plain",
                body: "line\n".into(),
            }],
        };
        let mut out = Vec::new();
        tree.write(&mut out, &boundaries);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\n\r\nline\r\n\r\n--=_tern_"), "{text}");
    }

    #[test]
    fn header_values_cannot_add_lines() {
        let mut out = Vec::new();
        write_header(&mut out, "To", "\"X\" <a@b.c\r\nBcc: evil@d.e>");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\r\nBcc"), "{text}");
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut out = Vec::new();
        assert!(rebuild_message(&mut out, b"not a header\n\nbody", &standard()).is_err());
        assert!(
            rebuild_message(
                &mut out,
                b"Content-Type: multipart/mixed\n\nbody",
                &standard()
            )
            .is_err()
        );
    }

    #[test]
    fn long_body_lines_get_quoted_printable() {
        let input = format!("Subject: x\n\n{}\n", "y".repeat(2000));
        let out = rebuild(&input);
        assert!(out.contains("Content-Transfer-Encoding: quoted-printable"));
        assert!(out.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn multipart_tree_writes_boundaries() {
        let boundaries = Boundaries::new();
        let attachment =
            encode_attachment(b"\x00\x01", "image/gif", Some("p.gif"), Some("img")).unwrap();
        let tree = Part::Multipart {
            subtype: "related",
            children: vec![
                Part::Text {
                    content_type: "text/html",
                    body: "<img src=\"cid:img\">".into(),
                },
                Part::Encoded(&attachment),
            ],
        };
        let mut out = Vec::new();
        tree.write(&mut out, &boundaries);
        let text = String::from_utf8(out).unwrap();
        let boundary = text
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(text.contains("Content-ID: <img>\r\n"));
        assert!(text.contains("Content-Disposition: inline;\r\n\tfilename=\"p.gif\""));
        assert!(text.contains("Content-Transfer-Encoding: base64\r\n"));
        assert!(text.contains("\r\n\r\nAAE=\r\n"));
    }
}
