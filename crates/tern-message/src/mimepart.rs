//! An owned, editable MIME tree: the Rust core behind `kumo.mimepart` and
//! `msg:parse_mime()`.
//!
//! [`MimePart::parse`] never fails: whatever the bytes hold (missing
//! boundaries, headers without colons, bad transfer encodings, absurd
//! nesting) becomes some tree, and problems surface only when a caller asks
//! for something that cannot be given (the decoded body of undecodable
//! base64, say) as an `Err`. Each parsed part remembers the exact bytes it
//! came from until something inside it changes, so rendering an unmodified
//! tree ([`MimePart::to_bytes`]) gives back the input byte for byte, and a
//! modified tree keeps every untouched sibling's bytes as they were.
//!
//! Building (the `new_*` constructors and [`MessageBuilder`]) produces
//! CRLF-terminated parts with the layout KumoMTA uses: `Content-Type` with
//! its parameters on folded lines, 7-bit text when possible, otherwise
//! quoted-printable for text and base64 for binary content.
//!
//! The Lua wrapper lives in [`crate::mimepart_lua`]; this module has no Lua.

use crate::headers::{
    HeaderBlock, HeaderField, decode_value, render_header, unfold, validate_name,
};
use crate::mime::{
    base64_encode_wrapped, base64_engine, has_long_line, normalise_line_endings,
    quoted_printable_encode, split_params,
};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Multiparts nested deeper than this are kept as opaque leaves.
const MAX_DEPTH: usize = 32;

/// The fixed `Date` used by a builder with stable content (test output).
const STABLE_DATE: &str = "Tue, 1 Jul 2003 10:52:37 +0200";

/// One header field. Parsed fields keep their exact bytes; new fields are
/// rendered when created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    name: String,
    raw_value: Bytes,
    raw: Bytes,
}

impl Header {
    fn from_field(data: &Bytes, field: &HeaderField) -> Self {
        let value = data.slice(field.value.clone());
        let skip = value
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        Self {
            name: String::from_utf8_lossy(&data[field.name.clone()]).into_owned(),
            raw_value: value.slice(skip..),
            raw: data.slice(field.start..field.end),
        }
    }

    /// A header whose value is folded (ASCII) or RFC 2047 encoded
    /// (non-ASCII) as `msg:append_header(name, value, true)` does.
    pub fn new_encoded(name: &str, value: &str, eol: &str) -> Result<Self, String> {
        validate_name(name)?;
        Ok(Self::from_rendered(
            name,
            render_header(name, value, true, eol),
        ))
    }

    /// A header with an already formatted value (which may contain folding
    /// line breaks, each followed by whitespace).
    pub fn new_raw(name: &str, raw_value: &str, eol: &str) -> Result<Self, String> {
        validate_name(name)?;
        let bytes = raw_value.as_bytes();
        let breaks_out = bytes.iter().enumerate().any(|(idx, &byte)| match byte {
            b'\r' => bytes.get(idx + 1) != Some(&b'\n'),
            b'\n' => !matches!(bytes.get(idx + 1), Some(b' ' | b'\t')),
            _ => false,
        });
        if breaks_out {
            return Err(format!(
                "invalid header: the value of {name} contains a line break that does not continue the header"
            ));
        }
        Ok(Self::from_rendered(
            name,
            format!("{name}: {raw_value}{eol}"),
        ))
    }

    fn from_rendered(name: &str, rendered: String) -> Self {
        let raw = Bytes::from(rendered);
        let mut start = name.len() + 1;
        while matches!(raw.get(start), Some(b' ' | b'\t')) {
            start += 1;
        }
        let mut end = raw.len();
        while end > start && matches!(raw[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        Self {
            name: name.to_string(),
            raw_value: raw.slice(start.min(end)..end),
            raw,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value as written: after the colon and its following blanks, up
    /// to the final line break, folding included.
    pub fn raw_value(&self) -> &[u8] {
        &self.raw_value
    }

    /// The whole field, line break included.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Unfolded, RFC 2047-decoded, trimmed value.
    pub fn unstructured(&self) -> String {
        decode_value(&self.raw_value)
    }

    /// The value as `value; name=param` (Content-Type and friends).
    pub fn mime_params(&self) -> Result<MimeParams, String> {
        MimeParams::parse(&self.raw_value)
    }

    /// The value as one `<id>`, returned without the angle brackets.
    pub fn message_id(&self) -> Result<String, String> {
        let text = unfold(&self.raw_value);
        parse_message_id(&text).ok_or_else(|| {
            format!(
                "invalid header: {}: '{text}' is not a message id in angle brackets",
                self.name
            )
        })
    }

    /// The value as a whitespace-separated list of `<id>`s.
    pub fn message_id_list(&self) -> Result<Vec<String>, String> {
        let text = unfold(&self.raw_value);
        text.split_whitespace()
            .map(|word| {
                parse_message_id(word).ok_or_else(|| {
                    format!(
                        "invalid header: {}: '{word}' is not a message id in angle brackets",
                        self.name
                    )
                })
            })
            .collect()
    }

    /// The value as a list of mailboxes and groups.
    pub fn address_list(&self) -> Result<Vec<Address>, String> {
        parse_address_list(&self.raw_value)
            .map_err(|why| format!("invalid header: {}: {why}", self.name))
    }

    /// The value as a list of mailboxes (groups are not allowed).
    pub fn mailbox_list(&self) -> Result<Vec<Mailbox>, String> {
        self.address_list()?
            .into_iter()
            .map(|address| match address {
                Address::Mailbox(mailbox) => Ok(mailbox),
                Address::Group(group) => Err(format!(
                    "invalid header: {}: group '{}' where only mailboxes are allowed",
                    self.name, group.name
                )),
            })
            .collect()
    }

    /// The value as exactly one mailbox.
    pub fn mailbox(&self) -> Result<Mailbox, String> {
        let mut list = self.mailbox_list()?;
        if list.len() != 1 {
            return Err(format!(
                "invalid header: {}: expected one mailbox, found {}",
                self.name,
                list.len()
            ));
        }
        Ok(list.remove(0))
    }
}

fn parse_message_id(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('<')?.strip_suffix('>')?;
    (!inner.is_empty() && !inner.contains(['<', '>', ' '])).then(|| inner.to_string())
}

/// A header value of the form `value; name="param"` (Content-Type,
/// Content-Disposition, Content-Transfer-Encoding). RFC 2231 extended and
/// continued parameters are decoded; parameter names are lowercased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MimeParams {
    pub value: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl MimeParams {
    pub fn new(value: &str) -> Self {
        Self {
            value: value.to_string(),
            parameters: BTreeMap::new(),
        }
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.parameters.insert(name.to_string(), value.to_string());
        self
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Parse a raw header value; errors only when there is no value at all.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let text = unfold(raw);
        let mut pieces = split_params(&text).into_iter();
        let value = pieces.next().unwrap_or("").trim();
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(format!("invalid header: '{text}' has no valid MIME value"));
        }
        let mut plain = BTreeMap::new();
        // name -> (index, extended, text) for RFC 2231 continuations.
        let mut continued: BTreeMap<String, Vec<(u32, bool, String)>> = BTreeMap::new();
        for piece in pieces {
            let Some((name, value)) = piece.split_once('=') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let value = unquote(value.trim());
            let (base, extended) = match name.strip_suffix('*') {
                Some(base) => (base.to_string(), true),
                None => (name.clone(), false),
            };
            if let Some((stem, index)) = base.rsplit_once('*')
                && let Ok(index) = index.parse::<u32>()
            {
                continued
                    .entry(stem.to_string())
                    .or_default()
                    .push((index, extended, value));
                continue;
            }
            let decoded = if extended {
                decode_rfc2231(&value, true).0
            } else if value.contains("=?") {
                decode_value(value.as_bytes())
            } else {
                value
            };
            plain.insert(base, decoded);
        }
        for (name, mut pieces) in continued {
            pieces.sort_by_key(|(index, _, _)| *index);
            let mut bytes = Vec::new();
            let mut charset = None;
            for (index, extended, text) in pieces {
                if extended {
                    let (decoded_bytes, found) = decode_rfc2231_bytes(&text, index == 0);
                    if found.is_some() {
                        charset = found;
                    }
                    bytes.extend_from_slice(&decoded_bytes);
                } else {
                    bytes.extend_from_slice(text.as_bytes());
                }
            }
            plain
                .entry(name)
                .or_insert_with(|| decode_charset(&bytes, charset.as_deref()));
        }
        Ok(Self {
            value: value.to_string(),
            parameters: plain,
        })
    }

    /// Render as a header value, each parameter on its own folded line.
    pub fn render(&self, eol: &str) -> String {
        let mut out = self.value.clone();
        for (name, value) in &self.parameters {
            out.push(';');
            out.push_str(eol);
            out.push('\t');
            out.push_str(name);
            if value.is_ascii() && !value.contains(['\r', '\n']) {
                out.push_str("=\"");
                for ch in value.chars() {
                    if matches!(ch, '"' | '\\') {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push('"');
            } else {
                out.push_str("*=UTF-8''");
                for byte in value.bytes() {
                    if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                        out.push(byte as char);
                    } else {
                        out.push_str(&format!("%{byte:02X}"));
                    }
                }
            }
        }
        out
    }
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for ch in inner.chars() {
                if ch == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(ch);
            }
            out
        }
        None => value.to_string(),
    }
}

/// Decode `charset'lang'percent-text` (or just percent-text when
/// `with_charset` is false) to bytes; returns the charset when present.
fn decode_rfc2231_bytes(text: &str, with_charset: bool) -> (Vec<u8>, Option<String>) {
    let (charset, encoded) = match with_charset
        .then(|| text.splitn(3, '\'').collect::<Vec<_>>())
        .filter(|parts| parts.len() == 3)
    {
        Some(parts) => (Some(parts[0].to_ascii_lowercase()), parts[2]),
        None => (None, text),
    };
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%'
            && idx + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[idx + 1..idx + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            idx += 3;
            continue;
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    (out, charset)
}

fn decode_rfc2231(text: &str, with_charset: bool) -> (String, Option<String>) {
    let (bytes, charset) = decode_rfc2231_bytes(text, with_charset);
    (decode_charset(&bytes, charset.as_deref()), charset)
}

/// Bytes in `charset` to UTF-8; unknown charsets and invalid UTF-8 are
/// decoded lossily rather than failing.
fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    match charset.map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "utf-8" | "utf8" | "us-ascii" | "ascii") => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        Some(other) => {
            match mail_parser::decoders::charsets::map::charset_decoder(other.as_bytes()) {
                Some(decode) => decode(bytes),
                None => String::from_utf8_lossy(bytes).into_owned(),
            }
        }
    }
}

/// `local_part@domain` of a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrSpec {
    pub local_part: String,
    pub domain: String,
}

/// A mailbox: optional display name and address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: AddrSpec,
}

/// A named group of mailboxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub entries: Vec<Mailbox>,
}

/// One entry of an address list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Address {
    Mailbox(Mailbox),
    Group(Group),
}

fn addr_spec(text: &str) -> AddrSpec {
    let text = text.trim();
    match text.rfind('@') {
        Some(at) => AddrSpec {
            local_part: unquote(&text[..at]),
            domain: text[at + 1..].to_string(),
        },
        None => AddrSpec {
            local_part: unquote(text),
            domain: String::new(),
        },
    }
}

fn owned_mailbox(addr: &mail_parser::Addr<'_>) -> Option<Mailbox> {
    let address = addr.address.as_deref()?.trim();
    if address.is_empty() {
        return None;
    }
    Some(Mailbox {
        name: addr
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        address: addr_spec(address),
    })
}

/// Parse an address-list header value (mailboxes and groups).
pub fn parse_address_list(raw: &[u8]) -> Result<Vec<Address>, String> {
    use mail_parser::HeaderValue;
    use mail_parser::parsers::MessageStream;
    let mut buf = Vec::with_capacity(raw.len() + 2);
    buf.extend_from_slice(raw);
    buf.extend_from_slice(b"\r\n");
    let fail = || {
        format!(
            "cannot parse '{}' as an address list",
            String::from_utf8_lossy(raw).trim()
        )
    };
    match MessageStream::new(&buf).parse_address() {
        HeaderValue::Address(mail_parser::Address::List(list)) => {
            let out: Vec<Address> = list
                .iter()
                .filter_map(owned_mailbox)
                .map(Address::Mailbox)
                .collect();
            if out.is_empty() && !list.is_empty() {
                return Err(fail());
            }
            Ok(out)
        }
        HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            let mut out = Vec::new();
            for group in groups.iter() {
                let members = group.addresses.iter().filter_map(owned_mailbox);
                match group
                    .name
                    .as_deref()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                {
                    Some(name) => out.push(Address::Group(Group {
                        name: name.to_string(),
                        entries: members.collect(),
                    })),
                    None => out.extend(members.map(Address::Mailbox)),
                }
            }
            Ok(out)
        }
        HeaderValue::Empty => Ok(Vec::new()),
        _ => Err(fail()),
    }
}

fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(ch)
}

fn render_phrase(name: &str, out: &mut String) {
    if !name.is_ascii() {
        let mut encoded = String::new();
        crate::headers::encode_rfc2047(&mut encoded, name, "\r\n\t");
        out.push_str(encoded.trim_start());
    } else if name
        .split(' ')
        .all(|word| !word.is_empty() && word.chars().all(is_atext))
    {
        out.push_str(name);
    } else {
        out.push('"');
        for ch in name.chars() {
            if matches!(ch, '"' | '\\') {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
}

fn render_mailbox(mailbox: &Mailbox, out: &mut String) -> Result<(), String> {
    let AddrSpec { local_part, domain } = &mailbox.address;
    if local_part.is_empty()
        || domain.is_empty()
        || domain.contains(|c: char| c.is_whitespace() || "<>@,;\"".contains(c))
    {
        return Err(format!(
            "invalid header: '{local_part}@{domain}' is not a valid address"
        ));
    }
    if let Some(name) = &mailbox.name {
        render_phrase(name, out);
        out.push(' ');
    }
    out.push('<');
    if local_part
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
    {
        out.push_str(local_part);
    } else {
        out.push('"');
        for ch in local_part.chars() {
            if matches!(ch, '"' | '\\') {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('@');
    out.push_str(domain);
    out.push('>');
    Ok(())
}

/// Render an address list, one entry per folded line.
pub fn render_address_list(list: &[Address], eol: &str) -> Result<String, String> {
    let separator = format!(",{eol}\t");
    let mut out = String::new();
    for (idx, address) in list.iter().enumerate() {
        if idx > 0 {
            out.push_str(&separator);
        }
        match address {
            Address::Mailbox(mailbox) => render_mailbox(mailbox, &mut out)?,
            Address::Group(group) => {
                render_phrase(&group.name, &mut out);
                out.push(':');
                for (idx, member) in group.entries.iter().enumerate() {
                    if idx > 0 {
                        out.push_str(&separator);
                    }
                    render_mailbox(member, &mut out)?;
                }
                out.push(';');
            }
        }
    }
    Ok(out)
}

/// How a part is to be presented as an attachment (`new_binary`,
/// `builder:attach`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentOptions {
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub inline: bool,
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A transfer-decoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodedBody {
    /// A `text/*` body converted to UTF-8 from its charset.
    Text(String),
    Binary(Vec<u8>),
}

impl DecodedBody {
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Text(text) => text.into_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }
}

/// The body of a part: bytes as transmitted, or child parts.
#[derive(Clone, Debug)]
enum Body {
    Leaf(Bytes),
    Multipart(Multipart),
}

#[derive(Clone, Debug)]
struct Multipart {
    boundary: String,
    /// Text before the first delimiter, without the line break that
    /// belongs to the delimiter; `None` when the body starts with it.
    preamble: Option<Bytes>,
    children: Vec<MimePart>,
    /// Everything after `--boundary--`; `None` when there was no close
    /// delimiter (or the part was built).
    epilogue: Option<Bytes>,
}

/// One entity of a MIME tree (the root is the whole message).
#[derive(Clone, Debug)]
pub struct MimePart {
    headers: Vec<Header>,
    /// The empty line between headers and body as it was written.
    separator: Bytes,
    body: Body,
    crlf: bool,
    /// The exact source bytes while nothing in this part has changed.
    pristine: Option<Bytes>,
}

/// Paths (child indexes from the part it was computed on) of the parts of
/// interest, as `get_simple_structure` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimpleStructure {
    pub text_part: Option<Vec<usize>>,
    pub html_part: Option<Vec<usize>>,
    pub amp_html_part: Option<Vec<usize>>,
    pub header_part: Vec<usize>,
    pub attachments: Vec<AttachmentInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub path: Vec<usize>,
    pub file_name: Option<String>,
    pub inline: bool,
    pub content_id: Option<String>,
    pub content_type: String,
}

/// One `--boundary` line found in a multipart body.
struct Delimiter {
    /// Offset of the line start.
    start: usize,
    /// Offset just past the line's line break.
    line_end: usize,
    closing: bool,
}

fn find_delimiters(body: &[u8], boundary: &[u8]) -> Vec<Delimiter> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let line_end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..line_end];
        if line.len() >= 2 + boundary.len()
            && line.starts_with(b"--")
            && line[2..].starts_with(boundary)
        {
            let rest = &line[2 + boundary.len()..];
            let closing = rest.starts_with(b"--");
            // A longer boundary that merely starts with ours is not ours.
            let padding_only = rest.iter().all(|b| b.is_ascii_whitespace());
            if closing || padding_only {
                found.push(Delimiter {
                    start: pos,
                    line_end,
                    closing,
                });
                if closing {
                    break;
                }
            }
        }
        pos = line_end;
    }
    found
}

/// `end` moved back over the line break just before it, but not below `floor`.
fn before_line_break(data: &[u8], floor: usize, mut end: usize) -> usize {
    if end > floor && data[end - 1] == b'\n' {
        end -= 1;
        if end > floor && data[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

impl MimePart {
    /// Parse a message or entity. Never fails; see the module docs.
    pub fn parse(data: impl Into<Bytes>) -> Self {
        Self::parse_at_depth(data.into(), 0)
    }

    fn parse_at_depth(data: Bytes, depth: usize) -> Self {
        let block = HeaderBlock::parse(&data);
        let headers = block
            .fields
            .iter()
            .map(|field| Header::from_field(&data, field))
            .collect();
        let body_bytes = data.slice(block.body_start..);
        let mut part = Self {
            headers,
            separator: data.slice(block.header_end..block.body_start),
            body: Body::Leaf(body_bytes.clone()),
            crlf: block.crlf,
            pristine: Some(data),
        };
        if depth < MAX_DEPTH
            && let Some(content_type) = part.content_type()
            && content_type
                .value
                .to_ascii_lowercase()
                .starts_with("multipart/")
            && let Some(boundary) = content_type.param("boundary").filter(|b| !b.is_empty())
        {
            part.body = Body::Multipart(Self::split(&body_bytes, boundary, depth));
        }
        part
    }

    fn split(body: &Bytes, boundary: &str, depth: usize) -> Multipart {
        let delimiters = find_delimiters(body, boundary.as_bytes());
        let Some(first) = delimiters.first() else {
            return Multipart {
                boundary: boundary.to_string(),
                preamble: Some(body.clone()),
                children: Vec::new(),
                epilogue: None,
            };
        };
        let preamble =
            (first.start > 0).then(|| body.slice(..before_line_break(body, 0, first.start)));
        let mut children = Vec::new();
        let mut epilogue = None;
        for (idx, delimiter) in delimiters.iter().enumerate() {
            if delimiter.closing {
                epilogue = Some(body.slice(delimiter.start + 2 + boundary.len() + 2..));
                break;
            }
            let start = delimiter.line_end;
            let end = match delimiters.get(idx + 1) {
                Some(next) => before_line_break(body, start, next.start),
                None => body.len(),
            };
            children.push(Self::parse_at_depth(body.slice(start..end), depth + 1));
        }
        Multipart {
            boundary: boundary.to_string(),
            preamble,
            children,
            epilogue,
        }
    }

    fn eol(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    /// Render the part. Unmodified parsed parts come out byte for byte; a
    /// modified or built tree ends with a line break.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pristine.as_ref().map_or(1024, Bytes::len));
        self.write_to(&mut out);
        if self.pristine.is_none() && !out.ends_with(b"\n") {
            out.extend_from_slice(self.eol().as_bytes());
        }
        out
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(pristine) = &self.pristine {
            out.extend_from_slice(pristine);
            return;
        }
        let eol = self.eol().as_bytes();
        for header in &self.headers {
            out.extend_from_slice(&header.raw);
            if !header.raw.ends_with(b"\n") {
                out.extend_from_slice(eol);
            }
        }
        if self.separator.is_empty() {
            out.extend_from_slice(eol);
        } else {
            out.extend_from_slice(&self.separator);
        }
        self.write_body_to(out);
    }

    fn write_body_to(&self, out: &mut Vec<u8>) {
        let eol = self.eol().as_bytes();
        match &self.body {
            Body::Leaf(bytes) => out.extend_from_slice(bytes),
            Body::Multipart(multi) => {
                if let Some(preamble) = &multi.preamble {
                    out.extend_from_slice(preamble);
                    out.extend_from_slice(eol);
                }
                for child in &multi.children {
                    out.extend_from_slice(b"--");
                    out.extend_from_slice(multi.boundary.as_bytes());
                    out.extend_from_slice(eol);
                    child.write_to(out);
                    out.extend_from_slice(eol);
                }
                out.extend_from_slice(b"--");
                out.extend_from_slice(multi.boundary.as_bytes());
                out.extend_from_slice(b"--");
                if let Some(epilogue) = &multi.epilogue {
                    out.extend_from_slice(epilogue);
                }
            }
        }
    }

    /// The body as transmitted (transfer-encoded; for a multipart, the
    /// delimited children).
    pub fn raw_body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_body_to(&mut out);
        out
    }

    /// The descendant at `path` (child indexes); `&[]` is this part.
    pub fn part(&self, path: &[usize]) -> Option<&MimePart> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children().get(*first)?.part(rest),
        }
    }

    /// Mutable access to a descendant. Everything on the way down is marked
    /// modified, since changing the descendant changes their bytes.
    pub fn part_mut(&mut self, path: &[usize]) -> Option<&mut MimePart> {
        if let Some((first, _)) = path.split_first()
            && self.children().get(*first).is_none()
        {
            return None;
        }
        self.pristine = None;
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => match &mut self.body {
                Body::Multipart(multi) => multi.children[*first].part_mut(rest),
                Body::Leaf(_) => None,
            },
        }
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn get_first(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is_named(name))
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.headers.iter().filter(move |h| h.is_named(name))
    }

    fn touch(&mut self) {
        self.pristine = None;
    }

    pub fn append_header(&mut self, header: Header) {
        self.touch();
        self.headers.push(header);
    }

    pub fn prepend_header(&mut self, header: Header) {
        self.touch();
        self.headers.insert(0, header);
    }

    /// Remove every header with this name; returns how many went.
    pub fn remove_all_named(&mut self, name: &str) -> usize {
        let before = self.headers.len();
        self.headers.retain(|h| !h.is_named(name));
        let removed = before - self.headers.len();
        if removed > 0 {
            self.touch();
        }
        removed
    }

    /// Replace the first header of this name in place (dropping any
    /// others), or append when there is none.
    pub fn set_header(&mut self, header: Header) {
        self.touch();
        match self.headers.iter().position(|h| h.is_named(&header.name)) {
            Some(at) => {
                let name = header.name.clone();
                self.headers[at] = header;
                let mut idx = 0;
                self.headers.retain(|h| {
                    let keep = idx <= at || !h.is_named(&name);
                    idx += 1;
                    keep
                });
            }
            None => self.headers.push(header),
        }
    }

    /// The header block rendered as text (`tostring(headers)`).
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for header in &self.headers {
            out.extend_from_slice(&header.raw);
            if !header.raw.ends_with(b"\n") {
                out.extend_from_slice(self.eol().as_bytes());
            }
        }
        out
    }

    pub fn content_type(&self) -> Option<MimeParams> {
        self.get_first("Content-Type")?.mime_params().ok()
    }

    /// The lowercased media type; `text/plain` when absent or unreadable.
    pub fn media_type(&self) -> String {
        self.content_type()
            .map(|ct| ct.value.to_ascii_lowercase())
            .unwrap_or_else(|| "text/plain".into())
    }

    fn transfer_encoding(&self) -> String {
        self.get_first("Content-Transfer-Encoding")
            .map(|h| h.unstructured().to_ascii_lowercase())
            .unwrap_or_default()
    }

    pub fn is_multipart(&self) -> bool {
        matches!(self.body, Body::Multipart(_))
    }

    pub fn children(&self) -> &[MimePart] {
        match &self.body {
            Body::Multipart(multi) => &multi.children,
            Body::Leaf(_) => &[],
        }
    }

    /// Add a child to a multipart part.
    pub fn append_part(&mut self, child: MimePart) -> Result<(), String> {
        match &mut self.body {
            Body::Multipart(multi) => {
                multi.children.push(child);
                self.pristine = None;
                Ok(())
            }
            Body::Leaf(_) => Err(format!(
                "append_part: this part ({}) is not a multipart container",
                self.media_type()
            )),
        }
    }

    /// The transfer-decoded body; `text/*` bodies are converted to UTF-8.
    pub fn body(&self) -> Result<DecodedBody, String> {
        let Body::Leaf(raw) = &self.body else {
            return Err("a multipart part has no body of its own; use its child parts".to_string());
        };
        let bytes = match self.transfer_encoding().as_str() {
            "base64" => {
                let compact: Vec<u8> = raw
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect();
                base64_engine()
                    .decode(&compact)
                    .map_err(|err| format!("cannot decode the base64 body: {err}"))?
            }
            "quoted-printable" => {
                mail_parser::decoders::quoted_printable::quoted_printable_decode(raw)
                    .ok_or_else(|| "cannot decode the quoted-printable body".to_string())?
            }
            _ => raw.to_vec(),
        };
        let content_type = self.content_type();
        let media_type = content_type
            .as_ref()
            .map(|ct| ct.value.to_ascii_lowercase())
            .unwrap_or_else(|| "text/plain".into());
        if media_type.starts_with("text/") {
            let charset = content_type.as_ref().and_then(|ct| ct.param("charset"));
            Ok(DecodedBody::Text(decode_charset(&bytes, charset)))
        } else {
            Ok(DecodedBody::Binary(bytes))
        }
    }

    /// Replace the body with `content`: text (valid UTF-8) keeps or gets a
    /// text content type, anything else becomes a base64 binary body.
    pub fn replace_body(
        &mut self,
        content: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), String> {
        let current = self.content_type().map(|ct| ct.value);
        let content_type = content_type.map(str::to_string).or(current);
        match std::str::from_utf8(content) {
            Ok(text) => {
                self.replace_text_body(content_type.as_deref().unwrap_or("text/plain"), text)
            }
            Err(_) => self.replace_binary_body(
                content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
                content,
            ),
        }
    }

    /// Set a text body: CRLF line endings, charset `us-ascii` or `utf-8`,
    /// 7-bit when possible and quoted-printable otherwise.
    pub fn replace_text_body(&mut self, content_type: &str, text: &str) -> Result<(), String> {
        let eol = self.eol();
        let params = MimeParams::parse(content_type.as_bytes())
            .map_err(|_| format!("invalid content type '{content_type}'"))?;
        let normalised = normalise_line_endings(text.as_bytes(), eol);
        let charset = if normalised.is_ascii() {
            "us-ascii"
        } else {
            "utf-8"
        };
        let (encoding, body) = if normalised.is_ascii() && !has_long_line(&normalised) {
            (None, normalised)
        } else {
            (
                Some("quoted-printable"),
                quoted_printable_encode(&normalised, eol),
            )
        };
        let mut params = MimeParams::new(&params.value);
        params.parameters.insert("charset".into(), charset.into());
        self.set_content(params, encoding, body)
    }

    /// Set a binary body, base64-encoded.
    pub fn replace_binary_body(&mut self, content_type: &str, bytes: &[u8]) -> Result<(), String> {
        let eol = self.eol();
        let params = MimeParams::parse(content_type.as_bytes())
            .map_err(|_| format!("invalid content type '{content_type}'"))?;
        let mut encoded = base64_encode_wrapped(bytes, eol);
        let keep = before_line_break(&encoded, 0, encoded.len());
        encoded.truncate(keep);
        self.set_content(params, Some("base64"), encoded)
    }

    fn set_content(
        &mut self,
        content_type: MimeParams,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let eol = self.eol();
        self.set_header(Header::new_raw(
            "Content-Type",
            &content_type.render(eol),
            eol,
        )?);
        match encoding {
            Some(encoding) => {
                self.set_header(Header::new_raw("Content-Transfer-Encoding", encoding, eol)?)
            }
            None => {
                self.remove_all_named("Content-Transfer-Encoding");
            }
        }
        self.touch();
        self.body = Body::Leaf(Bytes::from(body));
        Ok(())
    }

    fn empty() -> Self {
        Self {
            headers: Vec::new(),
            separator: Bytes::new(),
            body: Body::Leaf(Bytes::new()),
            crlf: true,
            pristine: None,
        }
    }

    /// A text part with the given content type (`kumo.mimepart.new_text`).
    pub fn new_text(content_type: &str, text: &str) -> Result<Self, String> {
        let mut part = Self::empty();
        part.replace_text_body(content_type, text)?;
        Ok(part)
    }

    pub fn new_text_plain(text: &str) -> Result<Self, String> {
        Self::new_text("text/plain", text)
    }

    pub fn new_html(html: &str) -> Result<Self, String> {
        Self::new_text("text/html", html)
    }

    /// A base64 part, with `Content-Disposition`/`Content-ID` when options
    /// are given (`kumo.mimepart.new_binary`).
    pub fn new_binary(
        content_type: &str,
        content: &[u8],
        options: Option<&AttachmentOptions>,
    ) -> Result<Self, String> {
        let mut part = Self::empty();
        part.replace_binary_body(content_type, content)?;
        if let Some(options) = options {
            let mut disposition = MimeParams::new(if options.inline {
                "inline"
            } else {
                "attachment"
            });
            if let Some(name) = &options.file_name {
                disposition
                    .parameters
                    .insert("filename".into(), name.clone());
            }
            part.append_header(Header::new_raw(
                "Content-Disposition",
                &disposition.render("\r\n"),
                "\r\n",
            )?);
            if let Some(id) = &options.content_id {
                let id = id.trim().trim_start_matches('<').trim_end_matches('>');
                if id.is_empty() || id.contains(['<', '>', ' ', '\r', '\n']) {
                    return Err(format!("invalid content_id '{id}'"));
                }
                part.append_header(Header::new_raw("Content-ID", &format!("<{id}>"), "\r\n")?);
            }
        }
        Ok(part)
    }

    /// A multipart part holding `children` (`kumo.mimepart.new_multipart`);
    /// a boundary is generated when none is given.
    pub fn new_multipart(
        content_type: &str,
        children: Vec<MimePart>,
        boundary: Option<&str>,
    ) -> Result<Self, String> {
        let boundary = match boundary {
            Some(b) => {
                let valid = !b.is_empty()
                    && b.len() <= 70
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c))
                    && !b.ends_with(' ');
                if !valid {
                    return Err(format!("invalid MIME boundary '{b}'"));
                }
                b.to_string()
            }
            None => tern_types::SpoolId::new().to_string(),
        };
        let mut params = MimeParams::parse(content_type.as_bytes())
            .map_err(|_| format!("invalid content type '{content_type}'"))?;
        params
            .parameters
            .insert("boundary".into(), boundary.clone());
        let mut part = Self::empty();
        part.append_header(Header::new_raw(
            "Content-Type",
            &params.render("\r\n"),
            "\r\n",
        )?);
        part.body = Body::Multipart(Multipart {
            boundary,
            preamble: None,
            children,
            epilogue: None,
        });
        Ok(part)
    }

    /// Walk the tree for the text, html and amp parts and the attachments.
    pub fn simple_structure(&self) -> SimpleStructure {
        let mut out = SimpleStructure::default();
        self.collect_structure(&mut Vec::new(), &mut out);
        out
    }

    fn collect_structure(&self, path: &mut Vec<usize>, out: &mut SimpleStructure) {
        if let Body::Multipart(multi) = &self.body {
            for (idx, child) in multi.children.iter().enumerate() {
                path.push(idx);
                child.collect_structure(path, out);
                path.pop();
            }
            return;
        }
        let disposition = self
            .get_first("Content-Disposition")
            .and_then(|h| h.mime_params().ok());
        let marked_attachment = disposition
            .as_ref()
            .is_some_and(|d| d.value.eq_ignore_ascii_case("attachment"));
        let content_type = self.content_type();
        let media_type = self.media_type();
        if !marked_attachment {
            let slot = match media_type.as_str() {
                "text/plain" => Some(&mut out.text_part),
                "text/html" => Some(&mut out.html_part),
                "text/x-amp-html" => Some(&mut out.amp_html_part),
                _ => None,
            };
            if let Some(slot) = slot
                && slot.is_none()
            {
                *slot = Some(path.clone());
                return;
            }
        }
        let file_name = disposition
            .as_ref()
            .and_then(|d| d.param("filename"))
            .or_else(|| content_type.as_ref().and_then(|ct| ct.param("name")))
            .map(str::to_string);
        out.attachments.push(AttachmentInfo {
            path: path.clone(),
            file_name,
            inline: !marked_attachment,
            content_id: self.get_first("Content-ID").map(|h| {
                let text = h.unstructured();
                parse_message_id(&text).unwrap_or(text)
            }),
            content_type: media_type,
        });
    }

    /// A new tree rebuilt from this one's decoded content: fresh
    /// boundaries, CRLF line endings, every leaf re-encoded (7-bit,
    /// quoted-printable or base64), `MIME-Version: 1.0` on the root. Bodies
    /// that cannot be decoded are carried over as binary content.
    pub fn rebuild(&self) -> Result<MimePart, String> {
        let mut rebuilt = self.rebuild_part()?;
        if rebuilt.get_first("MIME-Version").is_none() {
            rebuilt.append_header(Header::new_raw("MIME-Version", "1.0", "\r\n")?);
        }
        Ok(rebuilt)
    }

    fn rebuild_part(&self) -> Result<MimePart, String> {
        let mut part = match &self.body {
            Body::Multipart(multi) => {
                let children = multi
                    .children
                    .iter()
                    .map(MimePart::rebuild_part)
                    .collect::<Result<Vec<_>, _>>()?;
                MimePart::new_multipart(&self.media_type(), children, None)?
            }
            Body::Leaf(raw) => {
                let media_type = self.media_type();
                match self.body() {
                    Ok(DecodedBody::Text(text)) => MimePart::new_text(&media_type, &text)?,
                    Ok(DecodedBody::Binary(bytes)) => {
                        MimePart::new_binary(&media_type, &bytes, None)?
                    }
                    Err(_) => MimePart::new_binary(&media_type, raw, None)?,
                }
            }
        };
        // Keep every other header, line endings made CRLF, after the
        // regenerated content headers.
        let regenerated = ["Content-Type", "Content-Transfer-Encoding"];
        let mut kept = Vec::new();
        for header in &self.headers {
            if regenerated.iter().any(|n| header.is_named(n)) || header.name.is_empty() {
                continue;
            }
            let value = String::from_utf8_lossy(&header.raw_value);
            let value = String::from_utf8(normalise_line_endings(value.as_bytes(), "\r\n"))
                .unwrap_or_default();
            match Header::new_raw(header.name.trim(), &value, "\r\n") {
                Ok(header) => kept.push(header),
                Err(_) => {
                    if let Ok(header) =
                        Header::new_encoded(header.name.trim(), &header.unstructured(), "\r\n")
                    {
                        kept.push(header);
                    }
                }
            }
        }
        kept.append(&mut part.headers);
        part.headers = kept;
        Ok(part)
    }
}

/// Builds a message from optional text, optional html and attachments in
/// the usual arrangement (`kumo.mimepart.builder()`).
#[derive(Clone, Debug, Default)]
pub struct MessageBuilder {
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<MimePart>,
    stable: bool,
}

impl MessageBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text_plain(&mut self, text: &str) {
        self.text = Some(text.to_string());
    }

    pub fn text_html(&mut self, html: &str) {
        self.html = Some(html.to_string());
    }

    pub fn attach(
        &mut self,
        content_type: &str,
        content: &[u8],
        options: Option<&AttachmentOptions>,
    ) -> Result<(), String> {
        self.attachments
            .push(MimePart::new_binary(content_type, content, options)?);
        Ok(())
    }

    pub fn attach_part(&mut self, part: MimePart) {
        self.attachments.push(part);
    }

    /// Fixed boundaries and `Date` so test output can be compared.
    pub fn set_stable_content(&mut self, stable: bool) {
        self.stable = stable;
    }

    pub fn build(self) -> Result<MimePart, String> {
        let boundary = |prefix: &str| self.stable.then(|| format!("{prefix}-boundary"));
        let text = self
            .text
            .as_deref()
            .map(MimePart::new_text_plain)
            .transpose()?;
        let html = self.html.as_deref().map(MimePart::new_html).transpose()?;
        let content = match (text, html) {
            (Some(text), Some(html)) => Some(MimePart::new_multipart(
                "multipart/alternative",
                vec![text, html],
                boundary("ma").as_deref(),
            )?),
            (one, other) => one.or(other),
        };
        let mut root = if self.attachments.is_empty() {
            content.ok_or_else(|| {
                "builder: the message has no text, html or attachments".to_string()
            })?
        } else {
            let mut children: Vec<MimePart> = content.into_iter().collect();
            children.extend(self.attachments);
            MimePart::new_multipart("multipart/mixed", children, boundary("mm").as_deref())?
        };
        root.append_header(Header::new_raw("Mime-Version", "1.0", "\r\n")?);
        let date = if self.stable {
            STABLE_DATE.to_string()
        } else {
            chrono::Local::now().to_rfc2822()
        };
        root.append_header(Header::new_raw("Date", &date, "\r\n")?);
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALTERNATIVE_WITH_ATTACHMENT: &str = "From: a@example.com\r\nSubject: test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\nThis is a preamble.\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n--inner\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--inner--\r\n--outer\r\nContent-Type: image/png; name=\"fallback.png\"\r\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.png\r\nContent-ID: <img1@example.com>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n--outer--\r\nepilogue\r\n";

    #[test]
    fn parses_structure_and_decodes_bodies() {
        let root = MimePart::parse(ALTERNATIVE_WITH_ATTACHMENT);
        assert!(root.is_multipart());
        assert_eq!(root.children().len(), 2);
        let s = root.simple_structure();
        let text = root.part(s.text_part.as_ref().unwrap()).unwrap();
        assert_eq!(text.body().unwrap(), DecodedBody::Text("caf\u{e9}".into()));
        let html = root.part(s.html_part.as_ref().unwrap()).unwrap();
        assert_eq!(html.body().unwrap(), DecodedBody::Text("<b>hi</b>".into()));
        assert_eq!(s.attachments.len(), 1);
        let att = &s.attachments[0];
        assert_eq!(att.file_name.as_deref(), Some("r\u{e9}sum\u{e9}.png"));
        assert_eq!(att.content_id.as_deref(), Some("img1@example.com"));
        assert_eq!(att.content_type, "image/png");
        assert!(!att.inline);
        assert_eq!(
            root.part(&att.path).unwrap().body().unwrap(),
            DecodedBody::Binary(b"\x89PNG\r\n".to_vec())
        );
    }

    #[test]
    fn unmodified_round_trip_is_byte_exact() {
        for input in [
            ALTERNATIVE_WITH_ATTACHMENT,
            "Subject: no body",
            "Subject: x\n\nbare lf\n",
            "",
            "\r\n\r\n",
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nno close",
        ] {
            assert_eq!(MimePart::parse(input).to_bytes(), input.as_bytes());
        }
    }

    #[test]
    fn modifying_one_leaf_keeps_the_rest() {
        let mut root = MimePart::parse(ALTERNATIVE_WITH_ATTACHMENT);
        let path = root.simple_structure().text_part.unwrap();
        root.part_mut(&path)
            .unwrap()
            .replace_body(b"new text", None)
            .unwrap();
        let out = String::from_utf8(root.to_bytes()).unwrap();
        assert!(
            out.starts_with("From: a@example.com\r\nSubject: test\r\n"),
            "{out}"
        );
        assert!(out.contains("This is a preamble.\r\n--outer\r\n"), "{out}");
        assert!(
            out.contains(
                "Content-Type: text/plain;\r\n\tcharset=\"us-ascii\"\r\n\r\nnew text\r\n--inner\r\n"
            ),
            "{out}"
        );
        assert!(
            out.ends_with("iVBORw0K\r\n--outer--\r\nepilogue\r\n"),
            "{out}"
        );
        let again = MimePart::parse(out.clone());
        let s = again.simple_structure();
        assert_eq!(
            again.part(&s.text_part.unwrap()).unwrap().body().unwrap(),
            DecodedBody::Text("new text".into())
        );
        assert_eq!(again.to_bytes(), out.as_bytes());
    }

    #[test]
    fn builder_layout_matches_kumomta() {
        let mut builder = MessageBuilder::new();
        builder.text_plain("Hello there!");
        builder.text_html("<b>Hello</b>");
        builder.set_stable_content(true);
        let root = builder.build().unwrap();
        assert_eq!(
            String::from_utf8(root.to_bytes()).unwrap(),
            "Content-Type: multipart/alternative;\r\n\tboundary=\"ma-boundary\"\r\nMime-Version: 1.0\r\nDate: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\n--ma-boundary\r\nContent-Type: text/plain;\r\n\tcharset=\"us-ascii\"\r\n\r\nHello there!\r\n--ma-boundary\r\nContent-Type: text/html;\r\n\tcharset=\"us-ascii\"\r\n\r\n<b>Hello</b>\r\n--ma-boundary--\r\n"
        );
    }

    #[test]
    fn new_multipart_layout() {
        let main = MimePart::new_text_plain("Hello, I am the main message content").unwrap();
        let attachment = MimePart::new_binary(
            "application/octet-stream",
            b"\xbb\xaa",
            Some(&AttachmentOptions {
                file_name: Some("binary.dat".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        let message =
            MimePart::new_multipart("multipart/mixed", vec![main, attachment], Some("woot"))
                .unwrap();
        let expected = "Content-Type: multipart/mixed;\n\tboundary=\"woot\"\n\n--woot\nContent-Type: text/plain;\n\tcharset=\"us-ascii\"\n\nHello, I am the main message content\n--woot\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment;\n\tfilename=\"binary.dat\"\n\nu6o=\n--woot--\n".replace('\n', "\r\n");
        assert_eq!(String::from_utf8(message.to_bytes()).unwrap(), expected);
        assert!(MimePart::new_multipart("multipart/mixed", vec![], Some("bad\r\nx")).is_err());
    }

    #[test]
    fn text_bodies_choose_an_encoding() {
        let part = MimePart::new_text_plain("na\u{ef}ve\nline").unwrap();
        let out = String::from_utf8(part.to_bytes()).unwrap();
        assert!(out.contains("charset=\"utf-8\""), "{out}");
        assert!(
            out.contains("Content-Transfer-Encoding: quoted-printable"),
            "{out}"
        );
        assert_eq!(
            part.body().unwrap(),
            DecodedBody::Text("na\u{ef}ve\r\nline".into())
        );
        let long = "word ".repeat(40);
        let part = MimePart::new_text_plain(&long).unwrap();
        assert!(part.get_first("Content-Transfer-Encoding").is_some());
        assert_eq!(part.body().unwrap(), DecodedBody::Text(long));
    }

    #[test]
    fn mime_params_parse_and_render() {
        let p = MimeParams::parse(
            b"attachment;\r\n filename*0*=UTF-8''a%20b;\r\n filename*1=\".txt\"; size=3",
        )
        .unwrap();
        assert_eq!(p.value, "attachment");
        assert_eq!(p.param("filename"), Some("a b.txt"));
        assert_eq!(p.param("size"), Some("3"));
        assert!(MimeParams::parse(b"  ").is_err());
        let rendered = MimeParams::new("attachment")
            .with("filename", "\u{e9}.txt")
            .render("\r\n");
        assert_eq!(rendered, "attachment;\r\n\tfilename*=UTF-8''%C3%A9.txt");
        let back = MimeParams::parse(rendered.as_bytes()).unwrap();
        assert_eq!(back.param("filename"), Some("\u{e9}.txt"));
    }

    #[test]
    fn addresses_parse_and_render() {
        let header = Header::new_raw(
            "To",
            "\"Doe, J\" <j@x.com>, Team: a@y.com, <b@y.com>;",
            "\r\n",
        )
        .unwrap();
        let list = header.address_list().unwrap();
        assert_eq!(list.len(), 2);
        let Address::Mailbox(first) = &list[0] else {
            panic!("{list:?}")
        };
        assert_eq!(first.name.as_deref(), Some("Doe, J"));
        assert_eq!(first.address.local_part, "j");
        let Address::Group(group) = &list[1] else {
            panic!("{list:?}")
        };
        assert_eq!(group.name, "Team");
        assert_eq!(group.entries.len(), 2);
        let rendered = render_address_list(&list, "\r\n").unwrap();
        assert_eq!(
            rendered,
            "\"Doe, J\" <j@x.com>,\r\n\tTeam:<a@y.com>,\r\n\t<b@y.com>;"
        );
        assert!(header.mailbox_list().is_err());
        let again = Header::new_raw("To", &rendered, "\r\n").unwrap();
        assert_eq!(again.address_list().unwrap(), list);
    }

    #[test]
    fn header_values_cannot_inject_lines() {
        assert!(Header::new_raw("X", "a\r\nBcc: evil@x.com", "\r\n").is_err());
        assert!(Header::new_raw("X", "a\rBcc: evil@x.com\r\n\tb", "\r\n").is_err());
        assert!(Header::new_raw("X", "a\r\n", "\r\n").is_err());
        assert!(Header::new_raw("X", "a\r\n\tcontinued", "\r\n").is_ok());
        assert!(Header::new_raw("Bad Name", "x", "\r\n").is_err());
        let h = Header::new_encoded("X", "a\r\nBcc: evil", "\r\n").unwrap();
        assert_eq!(h.raw(), b"X: a Bcc: evil\r\n");
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut inputs: Vec<Vec<u8>> = vec![
            b"Content-Type: multipart/mixed\r\n\r\nno boundary param".to_vec(),
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--".to_vec(),
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n--x\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--xy\r\nnot ours\r\n".to_vec(),
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!".to_vec(),
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=".to_vec(),
            b"Content-Type: text/plain; charset=bogus-charset\r\n\r\n\xff\xfe".to_vec(),
            b"Content-Type: ;;;===\"\r\nContent-Disposition: \"\r\n\r\n".to_vec(),
            b"no colon here\r\n\tcontinued\r\n\r\nbody".to_vec(),
            b"\xff\xfe\xfd: \xff\r\n\r\n\xff".to_vec(),
            b":\r\n:\r\n".to_vec(),
            b"Content-Disposition: attachment; filename*0*=bad'%zz; filename*x=1\r\n\r\n".to_vec(),
        ];
        // Deep nesting beyond the limit.
        let mut deep = Vec::new();
        for level in 0..100 {
            deep.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n")
                    .as_bytes(),
            );
        }
        inputs.push(deep);
        for input in inputs {
            let mut root = MimePart::parse(input.clone());
            assert_eq!(root.to_bytes(), input);
            let structure = root.simple_structure();
            for att in &structure.attachments {
                let _ = root.part(&att.path).unwrap().body();
            }
            let _ = root.body();
            for header in root.headers().to_vec() {
                let _ = header.mime_params();
                let _ = header.address_list();
                let _ = header.message_id_list();
                let _ = header.unstructured();
            }
            let _ = root.rebuild().map(|r| r.to_bytes());
            let _ = root.replace_body(b"\xff\x00", None);
            let _ = root.to_bytes();
        }
    }

    #[test]
    fn rebuild_normalises() {
        let input = "Subject: x\nContent-Type: multipart/alternative; boundary=q\n\n--q\nContent-Type: text/plain\n\ncaf\u{e9}\n--q--\n";
        let rebuilt = MimePart::parse(input).rebuild().unwrap();
        let out = rebuilt.to_bytes();
        assert!(out.is_ascii());
        assert!(!out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        let again = MimePart::parse(out);
        let s = again.simple_structure();
        assert_eq!(
            again.part(&s.text_part.unwrap()).unwrap().body().unwrap(),
            DecodedBody::Text("caf\u{e9}".into())
        );
        assert_eq!(
            again.get_first("MIME-Version").unwrap().unstructured(),
            "1.0"
        );
        assert_eq!(again.get_first("Subject").unwrap().unstructured(), "x");
    }
}
