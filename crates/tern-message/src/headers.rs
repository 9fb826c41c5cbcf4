//! The RFC 5322 header block of a message: locating header fields by byte
//! offset, decoding their values, and producing edited copies of the bytes.
//!
//! Everything here works on a byte slice and returns new bytes; nothing
//! touches a [`crate::Message`]. Header fields are located by offsets so that
//! edits leave every other byte of the message (including folding and the
//! body) exactly as it was, which keeps DKIM signatures over untouched
//! headers valid.
//!
//! Parsing is tolerant: bare-LF line endings are accepted, a line without a
//! colon is kept as a malformed field (the conformance check reports it), and
//! a message without the empty separator line is all header.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use std::ops::Range;

/// One header field (possibly folded over several lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// Offset of the first byte of the field.
    pub start: usize,
    /// Offset just past the line terminator of its last line.
    pub end: usize,
    /// The name, without surrounding whitespace.
    pub name: Range<usize>,
    /// The raw value: after the colon up to (not including) the final line
    /// terminator; empty when the field had no colon.
    pub value: Range<usize>,
    /// False for a line that had no colon at all.
    pub has_colon: bool,
    /// True when whitespace sat between the name and the colon.
    pub name_ends_with_space: bool,
}

impl HeaderField {
    pub fn name<'a>(&self, data: &'a [u8]) -> &'a str {
        std::str::from_utf8(&data[self.name.clone()]).unwrap_or("")
    }

    pub fn raw_value<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.value.clone()]
    }

    pub fn is_named(&self, data: &[u8], name: &str) -> bool {
        data[self.name.clone()].eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The parsed header block of an entity.
#[derive(Debug, Clone)]
pub struct HeaderBlock {
    pub fields: Vec<HeaderField>,
    /// Offset where the blank separator line starts (or the end of the data
    /// when there is none): new headers are appended here.
    pub header_end: usize,
    /// Offset of the first body byte.
    pub body_start: usize,
    /// Whether the block uses CRLF (true) or bare LF line endings; decides
    /// the terminator of inserted headers.
    pub crlf: bool,
}

impl HeaderBlock {
    /// Parse the header block at the start of `data`.
    pub fn parse(data: &[u8]) -> Self {
        let mut fields: Vec<HeaderField> = Vec::new();
        let mut pos = 0;
        let mut crlf = None;
        let mut header_end = data.len();
        let mut body_start = data.len();
        while pos < data.len() {
            let line_end = match memchr::memchr(b'\n', &data[pos..]) {
                Some(idx) => pos + idx + 1,
                None => data.len(),
            };
            let line = &data[pos..line_end];
            let content = trim_eol(line);
            if crlf.is_none() && line.ends_with(b"\n") {
                crlf = Some(line.ends_with(b"\r\n"));
            }
            if content.is_empty() {
                header_end = pos;
                body_start = line_end;
                break;
            }
            let continuation = matches!(content[0], b' ' | b'\t');
            if continuation && let Some(last) = fields.last_mut() {
                last.end = line_end;
                last.value.end = pos + content.len();
                pos = line_end;
                continue;
            }
            let field = match memchr::memchr(b':', content) {
                Some(colon) => {
                    let raw_name = &content[..colon];
                    let trimmed = trim_ascii_end(raw_name);
                    HeaderField {
                        start: pos,
                        end: line_end,
                        name: pos..pos + trimmed.len(),
                        value: pos + colon + 1..pos + content.len(),
                        has_colon: true,
                        name_ends_with_space: trimmed.len() != raw_name.len(),
                    }
                }
                None => HeaderField {
                    start: pos,
                    end: line_end,
                    name: pos..pos + trim_ascii_end(content).len(),
                    value: pos + content.len()..pos + content.len(),
                    has_colon: false,
                    name_ends_with_space: false,
                },
            };
            fields.push(field);
            pos = line_end;
        }
        Self {
            fields,
            header_end,
            body_start,
            crlf: crlf.unwrap_or(true),
        }
    }

    pub fn line_ending(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    /// Fields with the given name (case-insensitive), in order.
    pub fn named<'a>(
        &'a self,
        data: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a HeaderField> + 'a {
        self.fields
            .iter()
            .filter(move |field| field.has_colon && field.is_named(data, name))
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let keep = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |idx| idx + 1);
    &bytes[..keep]
}

/// Decode an unstructured header value: unfold, decode RFC 2047 encoded
/// words to UTF-8, trim. Bytes that are not valid UTF-8 are replaced rather
/// than failing, so there is always a value.
pub fn decode_value(raw: &[u8]) -> String {
    if raw.is_ascii() && !raw.windows(2).any(|w| w == b"=?") && !raw.contains(&b'\n') {
        // Fast path: nothing to unfold or decode.
        return String::from_utf8_lossy(raw.trim_ascii()).into_owned();
    }
    let mut buf = Vec::with_capacity(raw.len() + 2);
    buf.extend_from_slice(raw);
    buf.extend_from_slice(b"\r\n");
    match MessageStream::new(&buf).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        HeaderValue::Empty => String::new(),
        _ => unfold(raw),
    }
}

/// Unfold a raw value without decoding (the fallback representation).
pub fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
    }
    out.trim().to_string()
}

/// Check a header name: printable ASCII, no colon, no whitespace.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    if let Some(bad) = name.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
        return Err(format!(
            "header name '{name}' contains an invalid character {bad:?}"
        ));
    }
    Ok(())
}

/// Render `Name: value` plus the line ending. With `encode`, ASCII values are
/// folded at whitespace around 75 columns (and hard-wrapped at 900), and
/// non-ASCII values become RFC 2047 Q-encoded words.
pub fn render_header(name: &str, value: &str, encode: bool, eol: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 8);
    out.push_str(name);
    out.push(':');
    if !encode {
        out.push(' ');
        out.push_str(value);
    } else if value.is_ascii() {
        fold_ascii(&mut out, value, eol);
    } else {
        encode_rfc2047(&mut out, value, eol);
    }
    out.push_str(eol);
    out
}

const SOFT_WRAP: usize = 75;
const HARD_WRAP: usize = 900;

fn fold_ascii(out: &mut String, value: &str, eol: &str) {
    // Length of the current physical line so far.
    let mut line_len = out.len();
    for word in value.split_ascii_whitespace() {
        let fits = line_len + 1 + word.len() <= SOFT_WRAP;
        if !fits && line_len > 1 && out.ends_with(|c: char| c != ':') {
            out.push_str(eol);
            line_len = 0;
        }
        out.push(' ');
        line_len += 1;
        let mut rest = word;
        while line_len + rest.len() > HARD_WRAP {
            let take = HARD_WRAP - line_len;
            out.push_str(&rest[..take]);
            out.push_str(eol);
            out.push(' ');
            line_len = 1;
            rest = &rest[take..];
        }
        out.push_str(rest);
        line_len += rest.len();
    }
}

/// Append ` =?UTF-8?q?...?=` words (each at most 75 characters), folded.
pub fn encode_rfc2047(out: &mut String, value: &str, eol: &str) {
    const PREFIX: &str = "=?UTF-8?q?";
    const SUFFIX: &str = "?=";
    let overhead = PREFIX.len() + SUFFIX.len() + 1;
    // The first word shares its line with the header name.
    let first_line_used = out.rsplit(eol).next().map_or(0, str::len);
    let mut budget = SOFT_WRAP.saturating_sub(first_line_used + overhead).max(16);
    let mut word = String::new();
    let mut first = true;
    let flush = |word: &mut String, out: &mut String, first: &mut bool| {
        if word.is_empty() {
            return;
        }
        if !*first {
            out.push_str(eol);
        }
        out.push(' ');
        out.push_str(PREFIX);
        out.push_str(word);
        out.push_str(SUFFIX);
        word.clear();
        *first = false;
    };
    let mut utf8 = [0u8; 4];
    for ch in value.chars() {
        let mut encoded = String::new();
        for byte in ch.encode_utf8(&mut utf8).bytes() {
            match byte {
                b' ' => encoded.push('_'),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                    encoded.push(byte as char)
                }
                _ => encoded.push_str(&format!("={byte:02X}")),
            }
        }
        if word.len() + encoded.len() > budget {
            flush(&mut word, out, &mut first);
            budget = SOFT_WRAP - overhead;
        }
        word.push_str(&encoded);
    }
    flush(&mut word, out, &mut first);
}

/// A copy of `data` with `header` inserted at `at`.
fn splice(data: &[u8], at: usize, insert: &[u8], remove_to: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + insert.len());
    out.extend_from_slice(&data[..at]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&data[remove_to..]);
    out
}

/// Append a header at the end of the header block.
pub fn append_header(data: &[u8], name: &str, value: &str, encode: bool) -> Vec<u8> {
    let block = HeaderBlock::parse(data);
    let eol = block.line_ending();
    let mut rendered = String::new();
    let at = block.header_end;
    // A block that ends without a line terminator (no body, no trailing
    // newline) needs one before the new field.
    if at > 0 && at == data.len() && !data.ends_with(b"\n") {
        rendered.push_str(eol);
    }
    rendered.push_str(&render_header(name, value, encode, eol));
    splice(data, at, rendered.as_bytes(), at)
}

/// Insert a header at the very top of the message.
pub fn prepend_header(data: &[u8], name: &str, value: &str, encode: bool) -> Vec<u8> {
    let block = HeaderBlock::parse(data);
    let rendered = render_header(name, value, encode, block.line_ending());
    splice(data, 0, rendered.as_bytes(), 0)
}

/// Remove every field for which `remove` returns true; `None` when nothing
/// matched (so the caller can skip storing identical bytes).
pub fn remove_fields(data: &[u8], mut remove: impl FnMut(&HeaderField) -> bool) -> Option<Vec<u8>> {
    let block = HeaderBlock::parse(data);
    let mut out = Vec::with_capacity(data.len());
    let mut copied_to = 0;
    let mut removed = false;
    for field in &block.fields {
        if remove(field) {
            out.extend_from_slice(&data[copied_to..field.start]);
            copied_to = field.end;
            removed = true;
        }
    }
    if !removed {
        return None;
    }
    out.extend_from_slice(&data[copied_to..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"Subject: hello\r\n  world\r\nFrom: a@b.com\r\nX-Thing: 1\r\nx-thing: 2\r\n\r\nbody\r\nX-Not: header\r\n";

    #[test]
    fn parses_folded_fields_and_body_offset() {
        let block = HeaderBlock::parse(SAMPLE);
        assert_eq!(block.fields.len(), 4);
        let subject = &block.fields[0];
        assert_eq!(subject.name(SAMPLE), "Subject");
        assert_eq!(subject.raw_value(SAMPLE), b" hello\r\n  world");
        assert_eq!(decode_value(subject.raw_value(SAMPLE)), "hello world");
        assert_eq!(&SAMPLE[block.body_start..block.body_start + 4], b"body");
        assert!(block.crlf);
        assert_eq!(block.named(SAMPLE, "X-THING").count(), 2);
    }

    #[test]
    fn tolerates_bare_lf() {
        let data = b"Subject: a\n b\nTo: x@y.com\n\nbody\n";
        let block = HeaderBlock::parse(data);
        assert!(!block.crlf);
        assert_eq!(block.fields.len(), 2);
        assert_eq!(decode_value(block.fields[0].raw_value(data)), "a b");
        let out = append_header(data, "X-New", "v", false);
        assert_eq!(out, b"Subject: a\n b\nTo: x@y.com\nX-New: v\n\nbody\n");
    }

    #[test]
    fn decodes_rfc2047() {
        assert_eq!(decode_value(b" =?UTF-8?B?w6l0w6k=?="), "\u{e9}t\u{e9}");
        assert_eq!(
            decode_value(b" =?iso-8859-1?q?caf=E9?= au =?utf-8?q?lait?="),
            "caf\u{e9} au lait"
        );
        // Adjacent encoded words are joined without the folding whitespace.
        assert_eq!(decode_value(b" =?utf-8?q?a?=\r\n =?utf-8?q?b?="), "ab");
        // Broken encoded words stay as they are.
        assert_eq!(decode_value(b" =?bogus"), "=?bogus");
    }

    #[test]
    fn records_malformed_lines() {
        let data = b"Subject\r\nName : v\r\n\r\n";
        let block = HeaderBlock::parse(data);
        assert!(!block.fields[0].has_colon);
        assert!(block.fields[1].name_ends_with_space);
        assert_eq!(block.fields[1].name(data), "Name");
    }

    #[test]
    fn append_and_prepend() {
        let out = append_header(SAMPLE, "X-Added", "yes", false);
        let block = HeaderBlock::parse(&out);
        assert_eq!(block.fields.last().unwrap().name(&out), "X-Added");
        assert!(out.ends_with(b"X-Added: yes\r\n\r\nbody\r\nX-Not: header\r\n"));
        let out = prepend_header(SAMPLE, "X-First", "1", false);
        assert!(out.starts_with(b"X-First: 1\r\nSubject: hello"));
        // headers-only data without a trailing newline
        let out = append_header(b"Subject: x", "To", "y@z.com", false);
        assert_eq!(out, b"Subject: x\r\nTo: y@z.com\r\n");
    }

    #[test]
    fn encode_folds_ascii_and_encodes_utf8() {
        let long = "word ".repeat(40);
        let rendered = render_header("Subject", long.trim(), true, "\r\n");
        for line in rendered.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 75, "{line:?}");
        }
        assert_eq!(
            decode_value(&rendered.as_bytes()["Subject:".len()..]),
            long.trim()
        );

        let rendered = render_header("Subject", "h\u{e9}llo w\u{f6}rld", true, "\r\n");
        assert_eq!(rendered, "Subject: =?UTF-8?q?h=C3=A9llo_w=C3=B6rld?=\r\n");
        let many = "\u{e9}".repeat(100);
        let rendered = render_header("Subject", &many, true, "\r\n");
        for line in rendered.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 75, "{line:?}");
        }
        assert_eq!(decode_value(&rendered.as_bytes()["Subject:".len()..]), many);

        let huge = "x".repeat(2000);
        let rendered = render_header("X", &huge, true, "\r\n");
        assert!(rendered.split("\r\n").all(|l| l.len() <= HARD_WRAP));
    }

    #[test]
    fn removes_fields_keeping_other_bytes() {
        let out = remove_fields(SAMPLE, |f| f.is_named(SAMPLE, "x-thing")).unwrap();
        assert_eq!(
            out,
            b"Subject: hello\r\n  world\r\nFrom: a@b.com\r\n\r\nbody\r\nX-Not: header\r\n"
        );
        assert!(remove_fields(SAMPLE, |f| f.is_named(SAMPLE, "nope")).is_none());
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("X-Ok").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("Bad Name").is_err());
        assert!(validate_name("Bad:").is_err());
    }
}
