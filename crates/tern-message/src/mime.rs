//! A small MIME structure walker and the body-editing features built on it:
//! `append_text_plain`, `append_text_html` and `check_fix_conformance`.
//!
//! The walker records byte offsets only (entity, header block, body) and
//! never copies the message, so an edit rewrites just the part it touches
//! and every other byte stays as received. Transfer encodings are decoded
//! and re-applied here (base64, quoted-printable, 7bit/8bit); charsets other
//! than UTF-8 are decoded with `mail-parser`'s charset tables.

use crate::headers::{self, HeaderBlock, HeaderField, decode_value};
use crate::message::Message;
use base64::Engine;
use std::ops::Range;

/// Nesting deeper than this is treated as an opaque leaf (defends against
/// pathological inputs).
const MAX_DEPTH: usize = 32;

/// One MIME entity, by offsets into the message bytes.
#[derive(Debug, Clone)]
pub struct Part {
    /// The whole entity (headers and body).
    pub entity: Range<usize>,
    /// Header fields, offsets absolute.
    pub fields: Vec<HeaderField>,
    /// Where new header fields of this part are inserted.
    pub header_end: usize,
    pub body: Range<usize>,
    pub crlf: bool,
    pub content_type: ContentType,
    /// Lowercased Content-Transfer-Encoding, empty when absent.
    pub transfer_encoding: String,
    pub is_attachment: bool,
    pub children: Vec<Part>,
}

/// A parsed Content-Type value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Lowercased `type/subtype`.
    pub mime_type: String,
    /// Parameters in order; names lowercased, values unquoted.
    pub params: Vec<(String, String)>,
    /// Whether the part had a Content-Type header at all.
    pub explicit: bool,
}

impl ContentType {
    fn default_text() -> Self {
        Self {
            mime_type: "text/plain".into(),
            params: Vec::new(),
            explicit: false,
        }
    }

    pub fn parse(value: &str) -> Self {
        let mut pieces = split_params(value).into_iter();
        let mime_type = pieces
            .next()
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| t.contains('/'))
            .unwrap_or_else(|| "text/plain".into());
        let params = pieces
            .filter_map(|piece| {
                let (name, value) = piece.split_once('=')?;
                let value = value.trim();
                let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
                    None => value.to_string(),
                };
                Some((name.trim().to_ascii_lowercase(), value))
            })
            .collect();
        Self {
            mime_type,
            params,
            explicit: true,
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_multipart(&self) -> bool {
        self.mime_type.starts_with("multipart/")
    }

    /// Render as a header value, replacing (or adding) one parameter.
    fn render_with(&self, name: &str, value: &str) -> String {
        let mut out = self.mime_type.clone();
        let mut replaced = false;
        for (n, v) in &self.params {
            let v = if n == name {
                replaced = true;
                value
            } else {
                v.as_str()
            };
            out.push_str(&format!(
                "; {n}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        if !replaced {
            out.push_str(&format!("; {name}=\"{value}\""));
        }
        out
    }
}

/// Split at `;` outside double quotes.
pub(crate) fn split_params(value: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (idx, ch) in value.char_indices() {
        match ch {
            '\\' if quoted && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(&value[start..idx]);
                start = idx + 1;
            }
            _ => {}
        }
        escaped = false;
    }
    pieces.push(&value[start..]);
    pieces
}

impl Part {
    /// Parse the entity `data[range]` and, for multiparts, its children.
    pub fn parse(data: &[u8], range: Range<usize>) -> Self {
        Self::parse_at_depth(data, range, 0)
    }

    fn parse_at_depth(data: &[u8], range: Range<usize>, depth: usize) -> Self {
        let base = range.start;
        let block = HeaderBlock::parse(&data[range.clone()]);
        let shift = |r: &Range<usize>| r.start + base..r.end + base;
        let fields: Vec<HeaderField> = block
            .fields
            .iter()
            .map(|f| HeaderField {
                start: f.start + base,
                end: f.end + base,
                name: shift(&f.name),
                value: shift(&f.value),
                has_colon: f.has_colon,
                name_ends_with_space: f.name_ends_with_space,
            })
            .collect();
        let find = |name: &str| {
            fields
                .iter()
                .find(|f| f.has_colon && f.is_named(data, name))
                .map(|f| decode_value(f.raw_value(data)))
        };
        let content_type = find("Content-Type")
            .map(|v| ContentType::parse(&v))
            .unwrap_or_else(ContentType::default_text);
        let transfer_encoding = find("Content-Transfer-Encoding")
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let is_attachment = find("Content-Disposition")
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("attachment"));
        let body = block.body_start + base..range.end;
        let mut part = Part {
            entity: range,
            fields,
            header_end: block.header_end + base,
            body,
            crlf: block.crlf,
            content_type,
            transfer_encoding,
            is_attachment,
            children: Vec::new(),
        };
        if part.content_type.is_multipart()
            && depth < MAX_DEPTH
            && let Some(boundary) = part.content_type.param("boundary").map(str::to_string)
        {
            part.children = split_multipart(data, part.body.clone(), boundary.as_bytes())
                .into_iter()
                .map(|child| Self::parse_at_depth(data, child, depth + 1))
                .collect();
        }
        part
    }

    /// Depth-first search for the first leaf matching `pred`.
    pub fn find_leaf(&self, pred: &dyn Fn(&Part) -> bool) -> Option<&Part> {
        if self.children.is_empty() {
            return pred(self).then_some(self);
        }
        self.children.iter().find_map(|child| child.find_leaf(pred))
    }

    /// Every leaf part, in order.
    pub fn leaves(&self) -> Vec<&Part> {
        if self.children.is_empty() {
            return vec![self];
        }
        self.children.iter().flat_map(|c| c.leaves()).collect()
    }

    /// Every part (this one first, then descendants).
    pub fn all_parts(&self) -> Vec<&Part> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.all_parts());
        }
        out
    }

    fn eol(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    fn charset(&self) -> Option<String> {
        self.content_type
            .param("charset")
            .map(|c| c.to_ascii_lowercase())
    }

    /// The body with its transfer encoding removed.
    pub fn decoded_body(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let raw = &data[self.body.clone()];
        match self.transfer_encoding.as_str() {
            "base64" => {
                let compact: Vec<u8> = raw
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                base64_engine()
                    .decode(&compact)
                    .map_err(|err| format!("cannot decode base64 part: {err}"))
            }
            "quoted-printable" => {
                mail_parser::decoders::quoted_printable::quoted_printable_decode(raw)
                    .ok_or_else(|| "cannot decode quoted-printable part".to_string())
            }
            _ => Ok(raw.to_vec()),
        }
    }
}

pub(crate) fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Child entity ranges of a multipart body. The line break before each
/// delimiter line belongs to the delimiter, not to the preceding part.
fn split_multipart(data: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut children = Vec::new();
    let mut child_start: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let line_end =
            memchr::memchr(b'\n', &data[pos..body.end]).map_or(body.end, |i| pos + i + 1);
        let line = &data[pos..line_end];
        if line.len() >= 2 + boundary.len()
            && line.starts_with(b"--")
            && line[2..].starts_with(boundary)
        {
            let rest = &line[2 + boundary.len()..];
            let closing = rest.starts_with(b"--");
            if let Some(start) = child_start.take() {
                let mut end = pos;
                if end > start && data[end - 1] == b'\n' {
                    end -= 1;
                    if end > start && data[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                children.push(start..end.max(start));
            }
            if closing {
                return children;
            }
            child_start = Some(line_end);
        }
        pos = line_end;
    }
    // Missing close delimiter: the last part runs to the end.
    if let Some(start) = child_start {
        children.push(start..body.end);
    }
    children
}

/// Quoted-printable encode text, keeping its line structure; lines are
/// soft-wrapped at 76 columns.
pub fn quoted_printable_encode(input: &[u8], eol: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 10);
    let mut lines = input.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let is_last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0;
        for (idx, &byte) in line.iter().enumerate() {
            let at_end = idx + 1 == line.len();
            let literal =
                matches!(byte, 33..=60 | 62..=126) || (matches!(byte, b' ' | b'\t') && !at_end);
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft-break '='.
            if col + width > 75 {
                out.push(b'=');
                out.extend_from_slice(eol.as_bytes());
                col = 0;
            }
            if literal {
                out.push(byte);
            } else {
                out.extend_from_slice(format!("={byte:02X}").as_bytes());
            }
            col += width;
        }
        if !is_last {
            out.extend_from_slice(eol.as_bytes());
        }
    }
    out
}

/// Base64 encode, wrapped at 76 columns, ending with a line break.
pub fn base64_encode_wrapped(input: &[u8], eol: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(input);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(eol.as_bytes());
    }
    out
}

/// Convert every line ending to `eol`.
pub(crate) fn normalise_line_endings(input: &[u8], eol: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 20);
    let mut idx = 0;
    while idx < input.len() {
        match input[idx] {
            b'\r' => {
                out.extend_from_slice(eol.as_bytes());
                if input.get(idx + 1) == Some(&b'\n') {
                    idx += 1;
                }
            }
            b'\n' => out.extend_from_slice(eol.as_bytes()),
            other => out.push(other),
        }
        idx += 1;
    }
    out
}

pub(crate) fn has_long_line(body: &[u8]) -> bool {
    body.split(|b| *b == b'\n')
        .any(|line| line.strip_suffix(b"\r").unwrap_or(line).len() > MAX_LINE_LENGTH)
}

/// Longest body line (without its line ending) accepted by the
/// `LINE_TOO_LONG` check: the 78 columns RFC 5322 recommends.
pub const MAX_LINE_LENGTH: usize = 78;

/// A replacement of `range` in the message bytes.
struct Edit {
    range: Range<usize>,
    bytes: Vec<u8>,
}

fn apply_edits(data: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let mut out = Vec::with_capacity(data.len() + 256);
    let mut copied = 0;
    for edit in edits {
        if edit.range.start < copied {
            continue; // overlapping edit: the earlier one wins
        }
        out.extend_from_slice(&data[copied..edit.range.start]);
        out.extend_from_slice(&edit.bytes);
        copied = edit.range.end;
    }
    out.extend_from_slice(&data[copied..]);
    out
}

/// Re-encode a leaf's body with `new_body` (decoded bytes), choosing a
/// transfer encoding that keeps the part 7-bit safe; returns the edits.
fn reencode_leaf(data: &[u8], part: &Part, new_body: &[u8], charset_to_utf8: bool) -> Vec<Edit> {
    let eol = part.eol();
    let is_text = part.content_type.mime_type.starts_with("text/");
    let (encoding, encoded) = match part.transfer_encoding.as_str() {
        "base64" => ("base64", base64_encode_wrapped(new_body, eol)),
        "quoted-printable" => ("quoted-printable", quoted_printable_encode(new_body, eol)),
        _ => {
            let normalised = if is_text {
                normalise_line_endings(new_body, eol)
            } else {
                new_body.to_vec()
            };
            if normalised.is_ascii() && !has_long_line(&normalised) {
                ("", normalised)
            } else if is_text {
                (
                    "quoted-printable",
                    quoted_printable_encode(&normalised, eol),
                )
            } else {
                ("base64", base64_encode_wrapped(new_body, eol))
            }
        }
    };
    let mut edits = vec![Edit {
        range: part.body.clone(),
        bytes: encoded,
    }];
    let mut new_headers = String::new();
    if !encoding.is_empty() && encoding != part.transfer_encoding {
        for field in part
            .fields
            .iter()
            .filter(|f| f.has_colon && f.is_named(data, "Content-Transfer-Encoding"))
        {
            edits.push(Edit {
                range: field.start..field.end,
                bytes: Vec::new(),
            });
        }
        new_headers.push_str(&headers::render_header(
            "Content-Transfer-Encoding",
            encoding,
            false,
            eol,
        ));
    }
    if charset_to_utf8 {
        for field in part
            .fields
            .iter()
            .filter(|f| f.has_colon && f.is_named(data, "Content-Type"))
        {
            edits.push(Edit {
                range: field.start..field.end,
                bytes: Vec::new(),
            });
        }
        let value = part.content_type.render_with("charset", "utf-8");
        new_headers.push_str(&headers::render_header("Content-Type", &value, false, eol));
    }
    if !new_headers.is_empty() {
        edits.push(Edit {
            range: part.header_end..part.header_end,
            bytes: new_headers.into_bytes(),
        });
    }
    edits
}

/// Which text part an append targets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Plain,
    Html,
}

fn append_text(data: &[u8], kind: TextKind, content: &str) -> Result<Option<Vec<u8>>, String> {
    let root = Part::parse(data, 0..data.len());
    let wanted = match kind {
        TextKind::Plain => "text/plain",
        TextKind::Html => "text/html",
    };
    let Some(part) = root.find_leaf(&|p| !p.is_attachment && p.content_type.mime_type == wanted)
    else {
        return Ok(None);
    };
    let body = part.decoded_body(data)?;
    let charset = part.charset();
    let utf8_compatible = matches!(
        charset.as_deref(),
        None | Some("utf-8" | "utf8" | "us-ascii" | "ascii")
    );
    // Non-UTF-8 bodies receiving non-ASCII text are converted to UTF-8.
    let (mut text, to_utf8) = if utf8_compatible || content.is_ascii() {
        (body, false)
    } else {
        let decoder = charset
            .as_deref()
            .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()));
        let decoded = match decoder {
            Some(decode) => decode(&body),
            None => String::from_utf8_lossy(&body).into_owned(),
        };
        (decoded.into_bytes(), true)
    };
    match kind {
        TextKind::Plain => text.extend_from_slice(content.as_bytes()),
        TextKind::Html => {
            let lower = text.to_ascii_lowercase();
            match memchr::memmem::rfind(&lower, b"</body>") {
                Some(at) => {
                    text.splice(at..at, content.bytes());
                }
                None => text.extend_from_slice(content.as_bytes()),
            }
        }
    }
    let edits = reencode_leaf(data, part, &text, to_utf8);
    Ok(Some(apply_edits(data, edits)))
}

/// The conformance labels, in the order they are reported.
pub const LABELS: [(&str, u16); 8] = [
    ("MISSING_COLON_VALUE", 1),
    ("NON_CANONICAL_LINE_ENDINGS", 1 << 1),
    ("NAME_ENDS_WITH_SPACE", 1 << 2),
    ("LINE_TOO_LONG", 1 << 3),
    ("NEEDS_TRANSFER_ENCODING", 1 << 4),
    ("MISSING_DATE_HEADER", 1 << 5),
    ("MISSING_MESSAGE_ID_HEADER", 1 << 6),
    ("MISSING_MIME_VERSION", 1 << 7),
];

const MISSING_COLON_VALUE: u16 = 1;
const NON_CANONICAL_LINE_ENDINGS: u16 = 1 << 1;
const NAME_ENDS_WITH_SPACE: u16 = 1 << 2;
const LINE_TOO_LONG: u16 = 1 << 3;
const NEEDS_TRANSFER_ENCODING: u16 = 1 << 4;
const MISSING_DATE_HEADER: u16 = 1 << 5;
const MISSING_MESSAGE_ID_HEADER: u16 = 1 << 6;
const MISSING_MIME_VERSION: u16 = 1 << 7;

/// Parse `"A|B|C"` into a label set; an unknown label is an error naming it.
pub fn parse_labels(text: &str) -> Result<u16, String> {
    let mut bits = 0;
    for label in text.split('|').map(str::trim).filter(|l| !l.is_empty()) {
        let bit = LABELS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(label))
            .map(|(_, bit)| *bit)
            .ok_or_else(|| format!("unknown conformance label '{label}'"))?;
        bits |= bit;
    }
    Ok(bits)
}

/// Render a label set as `"A|B"`.
pub fn format_labels(bits: u16) -> String {
    LABELS
        .iter()
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join("|")
}

fn has_non_canonical_line_endings(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(idx, &byte)| match byte {
        b'\n' => idx == 0 || data[idx - 1] != b'\r',
        b'\r' => data.get(idx + 1) != Some(&b'\n'),
        _ => false,
    })
}

fn leaf_is_encoded(part: &Part) -> bool {
    matches!(
        part.transfer_encoding.as_str(),
        "base64" | "quoted-printable"
    )
}

/// Find the conformance issues of a message.
pub fn detect_issues(data: &[u8]) -> u16 {
    let root = Part::parse(data, 0..data.len());
    let mut issues = 0;
    if has_non_canonical_line_endings(data) {
        issues |= NON_CANONICAL_LINE_ENDINGS;
    }
    for part in root.all_parts() {
        for field in &part.fields {
            if !field.has_colon {
                issues |= MISSING_COLON_VALUE;
            }
            if field.name_ends_with_space {
                issues |= NAME_ENDS_WITH_SPACE;
            }
            if !data[field.start..field.end].is_ascii() {
                issues |= NEEDS_TRANSFER_ENCODING;
            }
        }
    }
    for leaf in root.leaves() {
        if leaf.content_type.is_multipart() || leaf_is_encoded(leaf) {
            continue;
        }
        let body = &data[leaf.body.clone()];
        if !body.is_ascii() {
            issues |= NEEDS_TRANSFER_ENCODING;
        }
        if has_long_line(body) {
            issues |= LINE_TOO_LONG;
        }
    }
    let top = |name: &str| {
        root.fields
            .iter()
            .find(|f| f.has_colon && f.is_named(data, name))
            .map(|f| decode_value(f.raw_value(data)))
    };
    if top("Date").is_none() {
        issues |= MISSING_DATE_HEADER;
    }
    if top("Message-ID").is_none() {
        issues |= MISSING_MESSAGE_ID_HEADER;
    }
    if top("MIME-Version").as_deref().map(str::trim) != Some("1.0") {
        issues |= MISSING_MIME_VERSION;
    }
    issues
}

/// Apply the fixes in `fix` (a label set already intersected with the
/// detected issues) and return the rewritten bytes.
fn apply_fixes(data: &[u8], fix: u16, message_id: &str) -> Vec<u8> {
    let mut current = if fix & NON_CANONICAL_LINE_ENDINGS != 0 {
        normalise_line_endings(data, "\r\n")
    } else {
        data.to_vec()
    };
    let root = Part::parse(&current, 0..current.len());
    let mut edits = Vec::new();
    let mut transfer_encoded = false;
    for part in root.all_parts() {
        let eol = part.eol();
        for field in &part.fields {
            if !field.has_colon {
                if fix & MISSING_COLON_VALUE != 0 {
                    edits.push(Edit {
                        range: field.start..field.end,
                        bytes: Vec::new(),
                    });
                }
                continue;
            }
            let fix_name = field.name_ends_with_space && fix & NAME_ENDS_WITH_SPACE != 0;
            let fix_8bit =
                fix & NEEDS_TRANSFER_ENCODING != 0 && !current[field.start..field.end].is_ascii();
            if fix_name || fix_8bit {
                let name = field.name(&current);
                let bytes = if fix_8bit {
                    let value = decode_value(field.raw_value(&current));
                    headers::render_header(name, &value, true, eol).into_bytes()
                } else {
                    let mut bytes = name.as_bytes().to_vec();
                    bytes.push(b':');
                    bytes.extend_from_slice(&current[field.value.start..field.end]);
                    bytes
                };
                edits.push(Edit {
                    range: field.start..field.end,
                    bytes,
                });
            }
        }
    }
    if fix & (LINE_TOO_LONG | NEEDS_TRANSFER_ENCODING) != 0 {
        for leaf in root.leaves() {
            if leaf.content_type.is_multipart()
                || leaf_is_encoded(leaf)
                || leaf.content_type.mime_type.starts_with("message/")
            {
                continue;
            }
            let body = &current[leaf.body.clone()];
            let needs = (fix & NEEDS_TRANSFER_ENCODING != 0 && !body.is_ascii())
                || (fix & LINE_TOO_LONG != 0 && has_long_line(body));
            if !needs {
                continue;
            }
            let is_text = leaf.content_type.mime_type.starts_with("text/");
            let encoding = if is_text {
                "quoted-printable"
            } else {
                "base64"
            };
            let forced = Part {
                transfer_encoding: encoding.into(),
                ..leaf.clone()
            };
            // A text part without a charset that carries UTF-8 gets one.
            let add_charset = is_text
                && leaf.charset().is_none()
                && std::str::from_utf8(body).is_ok()
                && !body.is_ascii();
            let mut leaf_edits = reencode_leaf(&current, &forced, body, add_charset);
            // reencode_leaf saw the forced encoding as already present, so add
            // the header change here.
            for field in leaf
                .fields
                .iter()
                .filter(|f| f.has_colon && f.is_named(&current, "Content-Transfer-Encoding"))
            {
                leaf_edits.push(Edit {
                    range: field.start..field.end,
                    bytes: Vec::new(),
                });
            }
            leaf_edits.push(Edit {
                range: leaf.header_end..leaf.header_end,
                bytes: headers::render_header(
                    "Content-Transfer-Encoding",
                    encoding,
                    false,
                    leaf.eol(),
                )
                .into_bytes(),
            });
            edits.extend(merge_insertions(leaf_edits));
            transfer_encoded = true;
        }
    }
    current = apply_edits(&current, edits);

    let add =
        |data: Vec<u8>, name: &str, value: &str| headers::append_header(&data, name, value, false);
    let top_block = HeaderBlock::parse(&current);
    let has_top = |name: &str| top_block.named(&current, name).next().is_some();
    let mime_version_ok = top_block
        .named(&current, "MIME-Version")
        .next()
        .is_some_and(|f| decode_value(f.raw_value(&current)) == "1.0");
    let need_date = fix & MISSING_DATE_HEADER != 0 && !has_top("Date");
    let need_id = fix & MISSING_MESSAGE_ID_HEADER != 0 && !has_top("Message-ID");
    let need_mime = (fix & MISSING_MIME_VERSION != 0 || transfer_encoded) && !mime_version_ok;
    if need_mime {
        current = headers::remove_fields(&current, |f| {
            f.has_colon && f.is_named(&current, "MIME-Version")
        })
        .unwrap_or(current);
        current = add(current, "MIME-Version", "1.0");
    }
    if need_date {
        current = add(current, "Date", &chrono::Utc::now().to_rfc2822());
    }
    if need_id {
        current = add(current, "Message-ID", message_id);
    }
    current
}

/// Several zero-width insertions at one offset would be dropped by
/// `apply_edits`' overlap rule; fold them into one.
fn merge_insertions(edits: Vec<Edit>) -> Vec<Edit> {
    let mut out: Vec<Edit> = Vec::with_capacity(edits.len());
    for edit in edits {
        if edit.range.is_empty()
            && let Some(existing) = out
                .iter_mut()
                .find(|e| e.range.is_empty() && e.range.start == edit.range.start)
        {
            existing.bytes.extend_from_slice(&edit.bytes);
            continue;
        }
        out.push(edit);
    }
    out
}

impl Message {
    /// Append `text` to the primary `text/plain` part (decoding and
    /// re-applying its transfer encoding). Returns false when the message
    /// has no text/plain part.
    pub fn append_text_plain(&self, text: &str) -> Result<bool, String> {
        self.edit_data(|data| append_text(data, TextKind::Plain, text))
    }

    /// Insert `html` before `</body>` of the primary `text/html` part, or
    /// append it when there is no body tag. Returns false when the message
    /// has no text/html part.
    pub fn append_text_html(&self, html: &str) -> Result<bool, String> {
        self.edit_data(|data| append_text(data, TextKind::Html, html))
    }

    /// `msg:check_fix_conformance(CHECKS, FIXES)`: when a detected issue is
    /// in `checks`, return `Some("Message has conformance issues: ...")`;
    /// otherwise fix the detected issues listed in `fixes` and return `None`.
    /// A label in both lists is fixed, not reported, as KumoMTA does: a
    /// policy that names an issue as fixable never wants it rejected.
    pub fn check_fix_conformance(
        &self,
        checks: &str,
        fixes: &str,
    ) -> Result<Option<String>, String> {
        let fixes = parse_labels(fixes)?;
        let checks = parse_labels(checks)? & !fixes;
        let message_id = format!("<{}@{}>", self.id(), message_id_domain(self));
        let mut report = None;
        self.edit_data(|data| {
            let issues = detect_issues(data);
            if issues & checks != 0 {
                report = Some(format!(
                    "Message has conformance issues: {}",
                    format_labels(issues & checks)
                ));
                return Ok::<_, String>(None);
            }
            let to_fix = issues & fixes;
            if to_fix == 0 {
                return Ok(None);
            }
            Ok(Some(apply_fixes(data, to_fix, &message_id)))
        })?;
        Ok(report)
    }
}

/// The domain for a synthesised Message-ID: the envelope sender's domain,
/// else the machine's host name.
fn message_id_domain(msg: &Message) -> String {
    let sender = msg.sender();
    if !sender.domain().is_empty() {
        return sender.domain().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mail_parser::MessageParser;
    use tern_types::{EnvelopeAddress, SpoolId};

    fn msg(data: &str) -> Message {
        Message::new(
            SpoolId::new(),
            EnvelopeAddress::parse("s@sender.example").unwrap(),
            vec![EnvelopeAddress::parse("r@example.net").unwrap()],
            Default::default(),
            Bytes::copy_from_slice(data.as_bytes()),
        )
    }

    fn text_of(data: &[u8], html: bool) -> String {
        let parsed = MessageParser::default().parse(data).expect("parses");
        if html {
            parsed.body_html(0).unwrap().into_owned()
        } else {
            parsed.body_text(0).unwrap().into_owned()
        }
    }

    const ALTERNATIVE: &str = "From: a@b.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"XYZ\"\r\n\r\npreamble\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQK\r\n--XYZ\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><body><p>Hi=3D</p></BODY></html>\r\n--XYZ--\r\nepilogue\r\n";

    #[test]
    fn walks_multipart_structure() {
        let data = ALTERNATIVE.as_bytes();
        let root = Part::parse(data, 0..data.len());
        assert_eq!(root.content_type.mime_type, "multipart/alternative");
        assert_eq!(root.children.len(), 2);
        let plain = &root.children[0];
        assert_eq!(plain.transfer_encoding, "base64");
        assert_eq!(plain.decoded_body(data).unwrap(), b"Hello world\n");
        let html = &root.children[1];
        assert_eq!(
            &data[html.body.clone()],
            b"<html><body><p>Hi=3D</p></BODY></html>"
        );
    }

    #[test]
    fn appends_to_multipart_alternative() {
        let m = msg(ALTERNATIVE);
        assert!(m.append_text_plain("Footer \u{e9}\n").unwrap());
        assert!(m.append_text_html("<img src=\"x\">").unwrap());
        let data = m.data();
        assert_eq!(text_of(&data, false), "Hello world\nFooter \u{e9}\n");
        assert_eq!(
            text_of(&data, true),
            "<html><body><p>Hi=</p><img src=\"x\"></BODY></html>"
        );
        // Untouched bytes survive.
        assert!(data.starts_with(b"From: a@b.com\r\n"));
        assert!(data.ends_with(b"--XYZ--\r\nepilogue\r\n"));
    }

    #[test]
    fn appends_to_single_part_and_bare_lf() {
        let m = msg("Subject: x\r\n\r\nHello\r\n");
        assert!(m.append_text_plain("Bye\r\n").unwrap());
        assert_eq!(&m.data()[..], b"Subject: x\r\n\r\nHello\r\nBye\r\n");

        // 8-bit text into a 7-bit part switches it to quoted-printable.
        let m = msg("Subject: x\n\nHello\n");
        assert!(m.append_text_plain("caf\u{e9}\n").unwrap());
        let data = m.data();
        assert!(
            data.windows(43)
                .any(|w| w == b"Content-Transfer-Encoding: quoted-printable"),
            "{}",
            String::from_utf8_lossy(&data)
        );
        assert_eq!(text_of(&data, false), "Hello\ncaf\u{e9}\n");
        assert!(!data.windows(2).any(|w| w == b"\r\n"), "kept bare LF");

        // No html part: nothing to do.
        assert!(!m.append_text_html("<p>").unwrap());
    }

    #[test]
    fn html_without_body_tag_appends() {
        let m = msg("Content-Type: text/html\r\n\r\n<p>hi</p>");
        m.append_text_html("<img>").unwrap();
        assert!(m.data().ends_with(b"<p>hi</p><img>"));
    }

    #[test]
    fn non_utf8_charset_is_converted_when_needed() {
        let m = msg(
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n",
        );
        m.append_text_plain(" \u{fc}ber").unwrap();
        let data = m.data();
        assert!(
            String::from_utf8_lossy(&data).contains("charset=\"utf-8\""),
            "{}",
            String::from_utf8_lossy(&data)
        );
        assert_eq!(text_of(&data, false), "caf\u{e9}\r\n \u{fc}ber");
    }

    #[test]
    fn quoted_printable_round_trips() {
        let input = "a line with = and trailing space \nand a very long line ".to_string()
            + &"x".repeat(200)
            + "\n\u{e9}";
        let encoded = quoted_printable_encode(input.as_bytes(), "\r\n");
        assert!(encoded.split(|b| *b == b'\n').all(|l| l.len() <= 77));
        assert!(encoded.is_ascii());
        let decoded =
            mail_parser::decoders::quoted_printable::quoted_printable_decode(&encoded).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            input.replace('\n', "\r\n")
        );
    }

    const CONFORMING: &str = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\nSubject: ok\r\n\r\nshort body\r\n";

    #[test]
    fn detects_each_label() {
        assert_eq!(detect_issues(CONFORMING.as_bytes()), 0);
        let cases = [
            (
                CONFORMING.replace("Subject: ok", "Subject"),
                "MISSING_COLON_VALUE",
            ),
            (
                CONFORMING.replace("short body\r\n", "short body\n"),
                "NON_CANONICAL_LINE_ENDINGS",
            ),
            (
                CONFORMING.replace("Subject:", "Subject :"),
                "NAME_ENDS_WITH_SPACE",
            ),
            (
                CONFORMING.replace("short body", &"y".repeat(100)),
                "LINE_TOO_LONG",
            ),
            (
                CONFORMING.replace("short body", "caf\u{e9}"),
                "NEEDS_TRANSFER_ENCODING",
            ),
            (
                CONFORMING.replace("Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n", ""),
                "MISSING_DATE_HEADER",
            ),
            (
                CONFORMING.replace("Message-ID: <1@x>\r\n", ""),
                "MISSING_MESSAGE_ID_HEADER",
            ),
            (
                CONFORMING.replace("MIME-Version: 1.0", "MIME-Version: 2.0"),
                "MISSING_MIME_VERSION",
            ),
        ];
        for (data, label) in cases {
            assert_eq!(
                format_labels(detect_issues(data.as_bytes())),
                label,
                "{data:?}"
            );
        }
    }

    #[test]
    fn check_reports_and_leaves_data() {
        let data = CONFORMING.replace("short body", &"y".repeat(100));
        let m = msg(&data);
        let report = m
            .check_fix_conformance("LINE_TOO_LONG|MISSING_DATE_HEADER", "MISSING_DATE_HEADER")
            .unwrap();
        assert_eq!(
            report.as_deref(),
            Some("Message has conformance issues: LINE_TOO_LONG")
        );
        assert_eq!(&m.data()[..], data.as_bytes());
        let err = m.check_fix_conformance("BOGUS", "").unwrap_err();
        assert!(err.contains("BOGUS"), "{err}");
        assert_eq!(m.check_fix_conformance("", "").unwrap(), None);
    }

    #[test]
    fn an_issue_both_checked_and_fixed_is_fixed() {
        let data = CONFORMING.replace("short body", &"y".repeat(100));
        let m = msg(&data);
        let report = m
            .check_fix_conformance("LINE_TOO_LONG|MISSING_COLON_VALUE", "LINE_TOO_LONG")
            .unwrap();
        assert_eq!(report, None);
        assert_eq!(format_labels(detect_issues(&m.data())), "");
    }

    #[test]
    fn fixes_every_label() {
        let broken = "Subject : caf\u{e9}\nBroken header line\nFrom: a@b.com\n\nLine one \u{e9}\n"
            .to_string()
            + &"z".repeat(120)
            + "\n";
        let m = msg(&broken);
        let all = LABELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join("|");
        assert_eq!(m.check_fix_conformance("", &all).unwrap(), None);
        let data = m.data();
        assert_eq!(
            format_labels(detect_issues(&data)),
            "",
            "{}",
            String::from_utf8_lossy(&data)
        );
        assert_eq!(
            m.get_first_named_header_value("Subject").as_deref(),
            Some("caf\u{e9}")
        );
        assert_eq!(
            m.get_first_named_header_value("MIME-Version").as_deref(),
            Some("1.0")
        );
        assert!(m.get_first_named_header_value("Date").is_some());
        let id = m.get_first_named_header_value("Message-ID").unwrap();
        assert_eq!(id, format!("<{}@sender.example>", m.id()));
        let body = text_of(&data, false);
        assert_eq!(body, format!("Line one \u{e9}\r\n{}\r\n", "z".repeat(120)));
    }

    #[test]
    fn fixes_only_what_was_asked() {
        let data = CONFORMING
            .replace("Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n", "")
            .replace("short body", &"y".repeat(100));
        let m = msg(&data);
        m.check_fix_conformance("", "MISSING_DATE_HEADER").unwrap();
        let issues = detect_issues(&m.data());
        assert_eq!(format_labels(issues), "LINE_TOO_LONG");
    }

    #[test]
    fn fixes_multipart_leaves() {
        let data = "MIME-Version: 1.0\r\nDate: x\r\nMessage-ID: <a@b>\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nna\u{ef}ve\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\u{ff}\u{fe}\r\n--b1--\r\n";
        let m = msg(data);
        m.check_fix_conformance("", "NEEDS_TRANSFER_ENCODING")
            .unwrap();
        let fixed = m.data();
        assert!(fixed.is_ascii(), "{}", String::from_utf8_lossy(&fixed));
        assert_eq!(detect_issues(&fixed), 0);
        assert_eq!(text_of(&fixed, false), "na\u{ef}ve");
        let root = Part::parse(&fixed, 0..fixed.len());
        assert_eq!(root.children[1].transfer_encoding, "base64");
        assert_eq!(
            root.children[1].decoded_body(&fixed).unwrap(),
            "\u{ff}\u{fe}".as_bytes()
        );
    }
}
