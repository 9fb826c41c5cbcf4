//! Encoding primitives of the MIME builder: transfer-encoding choice,
//! quoted-printable and base64 bodies with line limits, RFC 2047 encoded
//! words and folding for header values, RFC 2231 file-name parameters,
//! and multipart boundaries that cannot collide with encoded content.
//!
//! Everything here writes CRLF line endings and keeps every output line
//! within 78 characters where the input allows it, and always within the
//! 998-octet hard limit of RFC 5322.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::sync::atomic::{AtomicU64, Ordering};

/// RFC 5322's hard line limit, excluding CRLF.
pub const HARD_LINE_LIMIT: usize = 998;
/// The recommended line length for folded headers.
pub const SOFT_LINE_LIMIT: usize = 78;

/// A body's Content-Transfer-Encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEncoding {
    SevenBit,
    QuotedPrintable,
    Base64,
}

impl TransferEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferEncoding::SevenBit => "7bit",
            TransferEncoding::QuotedPrintable => "quoted-printable",
            TransferEncoding::Base64 => "base64",
        }
    }

    /// Choose by content: 7bit when the data is ASCII text with short
    /// lines, quoted-printable for mostly-ASCII text, base64 otherwise.
    /// `is_text` is false for attachments of non-text types, which are
    /// always base64 unless they are plain short-lined ASCII.
    pub fn choose(data: &[u8], is_text: bool) -> Self {
        let mut non_ascii = 0usize;
        let mut controls = 0usize;
        let mut line_len = 0usize;
        let mut long_line = false;
        let mut bare_cr_or_lf = false;
        let mut prev = 0u8;
        for &b in data {
            match b {
                b'\n' => {
                    if prev != b'\r' {
                        bare_cr_or_lf = true;
                    }
                    line_len = 0;
                }
                b'\r' => {}
                _ => {
                    if prev == b'\r' {
                        bare_cr_or_lf = true;
                    }
                    line_len += 1;
                    if line_len > SOFT_LINE_LIMIT {
                        long_line = true;
                    }
                    if b >= 0x80 {
                        non_ascii += 1;
                    } else if b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f {
                        controls += 1;
                    }
                }
            }
            prev = b;
        }
        if prev == b'\r' {
            bare_cr_or_lf = true;
        }
        if non_ascii == 0 && controls == 0 && !long_line {
            // Bare LFs are fine: the writers normalise them to CRLF.
            let _ = bare_cr_or_lf;
            return TransferEncoding::SevenBit;
        }
        if !is_text || controls > 0 {
            return TransferEncoding::Base64;
        }
        // Quoted-printable triples each non-ASCII byte; past about a third
        // of the text base64 is both shorter and no less readable.
        if non_ascii * 3 > data.len() {
            TransferEncoding::Base64
        } else {
            TransferEncoding::QuotedPrintable
        }
    }
}

/// Append `data` encoded with `encoding`, ending with CRLF.
pub fn write_body(out: &mut Vec<u8>, data: &[u8], encoding: TransferEncoding) {
    match encoding {
        TransferEncoding::SevenBit => write_crlf_normalised(out, data),
        TransferEncoding::QuotedPrintable => write_quoted_printable(out, data),
        TransferEncoding::Base64 => write_base64(out, data),
    }
}

/// Copy text with every line ending (CRLF, bare LF or bare CR) written as
/// CRLF, ending with a CRLF.
pub fn write_crlf_normalised(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() + data.len() / 32 + 2);
    let mut i = 0;
    while i < data.len() {
        match memchr::memchr2(b'\r', b'\n', &data[i..]) {
            None => {
                out.extend_from_slice(&data[i..]);
                break;
            }
            Some(pos) => {
                out.extend_from_slice(&data[i..i + pos]);
                out.extend_from_slice(b"\r\n");
                let at = i + pos;
                i = if data[at] == b'\r' && data.get(at + 1) == Some(&b'\n') {
                    at + 2
                } else {
                    at + 1
                };
            }
        }
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// Base64 in lines of 76 characters.
pub fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    // 57 input bytes make exactly one 76-character line.
    let mut buf = [0u8; 76];
    for chunk in data.chunks(57) {
        let n = STANDARD
            .encode_slice(chunk, &mut buf)
            .expect("76 bytes hold the encoding of 57");
        out.extend_from_slice(&buf[..n]);
        out.extend_from_slice(b"\r\n");
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Quoted-printable (RFC 2045 §6.7) treating the data as text: line
/// breaks become hard CRLF breaks, soft breaks keep lines at 76.
pub fn write_quoted_printable(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() + data.len() / 8 + 2);
    let mut lines = data.split(|&b| b == b'\n').peekable();
    while let Some(mut line) = lines.next() {
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let last = lines.peek().is_none();
        if last && line.is_empty() {
            break;
        }
        let mut col = 0usize;
        for (idx, &b) in line.iter().enumerate() {
            let at_end = idx + 1 == line.len();
            let literal = match b {
                b'=' => false,
                b' ' | b'\t' => !at_end,
                33..=126 => true,
                _ => false,
            };
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft break "=" at column 76.
            let limit = if at_end { 76 } else { 75 };
            if col + width > limit {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            col += width;
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether a header value needs RFC 2047 encoding.
pub fn needs_encoding(value: &str) -> bool {
    !value.is_ascii() || value.bytes().any(|b| b < 0x20 && b != b'\t')
}

/// Append `Name: value\r\n` for an unstructured header: ASCII values are
/// folded at whitespace near 78 columns; values with non-ASCII words get
/// those words (and only those) as RFC 2047 encoded words.
pub fn write_unstructured_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let mut folder = Folder::new(out, name);
    let mut pending_encoded = String::new();
    for word in value
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
    {
        // A word too long for one line is encoded too, which lets it be
        // split across encoded words and keeps lines under the hard limit.
        if needs_encoding(word) || word.len() > HARD_LINE_LIMIT - 100 {
            if !pending_encoded.is_empty() {
                pending_encoded.push(' ');
            }
            pending_encoded.push_str(word);
        } else {
            if !pending_encoded.is_empty() {
                folder.encoded_words(&pending_encoded);
                pending_encoded.clear();
            }
            folder.atom(word);
        }
    }
    if !pending_encoded.is_empty() {
        folder.encoded_words(&pending_encoded);
    }
    folder.finish();
}

/// Append `Name: value\r\n` where value is a list of mailboxes (From, To,
/// Cc, Reply-To ...): non-ASCII display names are encoded, addresses are
/// kept verbatim. Values that do not look like a mailbox list fall back to
/// the unstructured rules.
pub fn write_address_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let Some(mailboxes) = split_mailboxes(value) else {
        write_unstructured_header(out, name, value);
        return;
    };
    let mut folder = Folder::new(out, name);
    let count = mailboxes.len();
    for (i, (display, addr)) in mailboxes.into_iter().enumerate() {
        let sep = if i + 1 < count { "," } else { "" };
        match (display, addr) {
            (Some(display), Some(addr)) => {
                write_display_name(&mut folder, &display);
                folder.atom(&format!("<{addr}>{sep}"));
            }
            (None, Some(addr)) => folder.atom(&format!("{addr}{sep}")),
            (_, None) => {}
        }
    }
    folder.finish();
}

/// Append `Name: "Display" <addr>\r\n` for one mailbox. Control
/// characters and spaces in the address are dropped, so a substituted
/// value cannot start a new header line.
pub fn write_mailbox_header(out: &mut Vec<u8>, name: &str, display: Option<&str>, addr: &str) {
    let cleaned;
    let addr = if addr.chars().any(|c| c.is_control() || c.is_whitespace()) {
        cleaned = addr
            .chars()
            .filter(|c| !c.is_control() && !c.is_whitespace())
            .collect::<String>();
        cleaned.as_str()
    } else {
        addr
    };
    let mut folder = Folder::new(out, name);
    if let Some(display) = display.filter(|d| !d.is_empty()) {
        write_display_name(&mut folder, display);
        folder.atom(&format!("<{addr}>"));
    } else {
        folder.atom(addr);
    }
    folder.finish();
}

/// The text form of a mailbox as a template variable (`to_header`):
/// `"Name" <addr>` with the name quoted (or RFC 2047 encoded), or the bare
/// address.
pub fn mailbox_text(display: Option<&str>, addr: &str) -> String {
    let mut out = Vec::new();
    write_mailbox_header(&mut out, "X", display, addr);
    let text = String::from_utf8(out).expect("ascii output");
    // Drop the "X: " prefix and the final CRLF; unfold.
    text[3..text.len() - 2].replace("\r\n ", " ")
}

fn write_display_name(folder: &mut Folder<'_>, display: &str) {
    if needs_encoding(display) {
        folder.encoded_words(display);
    } else {
        let mut quoted = String::with_capacity(display.len() + 2);
        quoted.push('"');
        for c in display.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        folder.atom(&quoted);
    }
}

/// Split `a@b, "Name, Jr" <c@d>, Name <e@f>` into (display, address)
/// pairs; None when the text is not a plain mailbox list (groups,
/// comments, unbalanced quotes).
fn split_mailboxes(value: &str) -> Option<Vec<(Option<String>, Option<String>)>> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut in_angle = false;
    for c in value.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            '<' if !in_quotes => {
                in_angle = true;
                current.push(c);
            }
            '>' if !in_quotes => {
                in_angle = false;
                current.push(c);
            }
            '(' | ')' | ';' | ':' if !in_quotes && !in_angle => return None,
            ',' if !in_quotes && !in_angle => {
                items.push(std::mem::take(&mut current));
            }
            _ => current.push(c),
        }
    }
    if in_quotes || in_angle {
        return None;
    }
    items.push(current);
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(open) = item.rfind('<') {
            let close = item[open..].find('>')? + open;
            if !item[close + 1..].trim().is_empty() {
                return None;
            }
            let addr = item[open + 1..close].trim().to_string();
            let display = item[..open].trim();
            let display = unquote(display);
            out.push(((!display.is_empty()).then_some(display), Some(addr)));
        } else {
            if item.contains(' ') || item.contains('"') {
                return None;
            }
            out.push((None, Some(item.to_string())));
        }
    }
    (!out.is_empty()).then_some(out)
}

fn unquote(text: &str) -> String {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return text.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// Writes one header field, folding between tokens so lines stay near 78
/// columns.
struct Folder<'a> {
    out: &'a mut Vec<u8>,
    col: usize,
    first: bool,
}

impl<'a> Folder<'a> {
    fn new(out: &'a mut Vec<u8>, name: &str) -> Self {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        Self {
            col: name.len() + 1,
            out,
            first: true,
        }
    }

    /// Append one token preceded by a space, folding before it when it
    /// would pass the soft limit (a single token longer than a line stays
    /// whole: the hard limit is guarded by the caller's encoding).
    fn atom(&mut self, token: &str) {
        if !self.first && self.col + 1 + token.len() > SOFT_LINE_LIMIT {
            self.out.extend_from_slice(b"\r\n");
            self.col = 0;
        }
        self.out.push(b' ');
        self.out.extend_from_slice(token.as_bytes());
        self.col += 1 + token.len();
        self.first = false;
    }

    /// Append `text` as one or more `=?UTF-8?B?...?=` words, each at most
    /// 75 characters and never splitting a UTF-8 sequence.
    fn encoded_words(&mut self, text: &str) {
        // 75 - len("=?UTF-8?B??=") = 63 base64 chars → 45 bytes of input.
        const MAX_CHUNK: usize = 45;
        const OVERHEAD: usize = "=?UTF-8?B??=".len();
        let mut start = 0;
        let bytes = text.as_bytes();
        while start < bytes.len() {
            // Fill what is left of the current line, folding first when
            // too little is left for a useful word.
            let mut room = SOFT_LINE_LIMIT.saturating_sub(self.col + 1 + OVERHEAD) / 4 * 3;
            if room < 9 && !self.first {
                self.out.extend_from_slice(b"\r\n");
                self.col = 0;
                room = MAX_CHUNK;
            }
            let chunk = room.clamp(4, MAX_CHUNK);
            let mut end = (start + chunk).min(bytes.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let word = format!("=?UTF-8?B?{}?=", STANDARD.encode(&bytes[start..end]));
            self.atom(&word);
            start = end;
        }
    }

    fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

/// A `filename` (or `name`) parameter: quoted when ASCII, RFC 2231
/// `filename*=UTF-8''...` otherwise.
pub fn file_name_param(param: &str, file_name: &str) -> String {
    if file_name.is_ascii() && !file_name.bytes().any(|b| b < 0x20) {
        let escaped = file_name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("{param}=\"{escaped}\"")
    } else {
        let mut out = format!("{param}*=UTF-8''");
        for &b in file_name.as_bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
        out
    }
}

/// Produces multipart boundaries that are unique per process and cannot
/// occur inside encoded content: `=_` never appears in base64 or
/// quoted-printable output, and the random part differs per process.
pub struct Boundaries {
    prefix: String,
    counter: AtomicU64,
}

impl Boundaries {
    pub fn new() -> Self {
        Self {
            prefix: format!("=_tern_{}", uuid::Uuid::new_v4().simple()),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}_{n:x}", self.prefix)
    }
}

impl Default for Boundaries {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn choice_of_transfer_encoding() {
        assert_eq!(
            TransferEncoding::choose(b"hello\nworld\n", true),
            TransferEncoding::SevenBit
        );
        assert_eq!(
            TransferEncoding::choose("caf\u{e9} au lait".as_bytes(), true),
            TransferEncoding::QuotedPrintable
        );
        assert_eq!(
            TransferEncoding::choose("日本語のテキスト".as_bytes(), true),
            TransferEncoding::Base64
        );
        let long = "a".repeat(200);
        assert_eq!(
            TransferEncoding::choose(long.as_bytes(), true),
            TransferEncoding::QuotedPrintable
        );
        assert_eq!(
            TransferEncoding::choose(&[0u8, 1, 2, 255], false),
            TransferEncoding::Base64
        );
        assert_eq!(
            TransferEncoding::choose(b"plain,csv\n", false),
            TransferEncoding::SevenBit
        );
    }

    #[test]
    fn quoted_printable_escapes_and_soft_breaks() {
        let mut out = Vec::new();
        write_quoted_printable(&mut out, "a=b caf\u{e9} \nnext\n".as_bytes());
        assert_eq!(text(out), "a=3Db caf=C3=A9=20\r\nnext\r\n");

        let mut out = Vec::new();
        write_quoted_printable(&mut out, "x".repeat(200).as_bytes());
        let s = text(out);
        for line in s.split("\r\n") {
            assert!(line.len() <= 76, "{line}");
        }
        assert_eq!(s.replace("=\r\n", "").trim_end(), "x".repeat(200));
    }

    #[test]
    fn base64_lines_are_76_wide() {
        let mut out = Vec::new();
        write_base64(&mut out, &[7u8; 200]);
        let s = text(out);
        let lines: Vec<&str> = s.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0].len(), 76);
        assert_eq!(
            STANDARD.decode(lines.concat()).unwrap(),
            vec![7u8; 200],
            "round trip"
        );
    }

    #[test]
    fn crlf_normalisation() {
        let mut out = Vec::new();
        write_crlf_normalised(&mut out, b"a\nb\r\nc\rd");
        assert_eq!(text(out), "a\r\nb\r\nc\r\nd\r\n");
    }

    #[test]
    fn unstructured_header_encodes_only_non_ascii_words() {
        let mut out = Vec::new();
        write_unstructured_header(&mut out, "Subject", "Hello Zo\u{eb} and J\u{f6}rg!");
        let s = text(out);
        assert!(s.starts_with("Subject: Hello =?UTF-8?B?"), "{s}");
        assert!(s.ends_with("\r\n"));
        assert!(s.is_ascii());
    }

    #[test]
    fn long_headers_fold_under_78() {
        let mut out = Vec::new();
        let value = "word ".repeat(60);
        write_unstructured_header(&mut out, "Subject", &value);
        let s = text(out);
        for line in s.trim_end().split("\r\n") {
            assert!(line.len() <= SOFT_LINE_LIMIT, "{line}");
        }
        let mut out = Vec::new();
        write_unstructured_header(&mut out, "Subject", &"\u{e9}".repeat(100));
        for line in text(out).trim_end().split("\r\n") {
            assert!(line.len() <= SOFT_LINE_LIMIT, "{line}");
        }
    }

    #[test]
    fn address_headers_keep_addresses() {
        let mut out = Vec::new();
        write_address_header(
            &mut out,
            "To",
            "\"Jos\u{e9} P\u{e9}rez\" <jose@example.com>, plain@example.com, \"Smith, J\" <j@example.com>",
        );
        let s = text(out);
        assert!(s.contains("<jose@example.com>,"), "{s}");
        assert!(s.contains("=?UTF-8?B?"), "{s}");
        assert!(s.contains(" plain@example.com,"), "{s}");
        assert!(s.contains("\"Smith, J\" <j@example.com>"), "{s}");
    }

    #[test]
    fn mailbox_text_quotes_specials() {
        assert_eq!(
            mailbox_text(Some("John Smith"), "john@example.com"),
            "\"John Smith\" <john@example.com>"
        );
        assert_eq!(
            mailbox_text(Some("Smith, John"), "john@example.com"),
            "\"Smith, John\" <john@example.com>"
        );
        assert_eq!(mailbox_text(None, "a@b.c"), "a@b.c");
    }

    #[test]
    fn addresses_cannot_inject_header_lines() {
        let mut out = Vec::new();
        write_mailbox_header(&mut out, "From", Some("x"), "a@b.c\r\nBcc: evil@d.e");
        let s = text(out);
        assert_eq!(s.matches("\r\n").count(), 1, "{s}");
        let mut out = Vec::new();
        write_unstructured_header(&mut out, "Subject", "hi\r\nBcc: evil@d.e");
        assert!(!text(out).contains("\r\nBcc"));
    }

    #[test]
    fn file_names() {
        assert_eq!(
            file_name_param("filename", "a b.pdf"),
            "filename=\"a b.pdf\""
        );
        assert_eq!(
            file_name_param("filename", "r\u{e9}sum\u{e9}.pdf"),
            "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
    }

    #[test]
    fn boundaries_are_unique() {
        let b = Boundaries::new();
        let (x, y) = (b.next(), b.next());
        assert_ne!(x, y);
        assert!(x.starts_with("=_tern_"));
        assert!(x.len() <= 70);
    }
}
