//! The sending side: what the delivery code needs to talk to a remote SMTP
//! server, still without any I/O.
//!
//! * [`ReplyReader`] pulls complete (possibly multi-line) replies out of a
//!   read buffer, one per call, so pipelined responses are matched to the
//!   commands that were written together.
//! * [`EhloCapabilities`] reads what a server advertised.
//! * The `*_line` functions build command lines, CRLF included (that exact
//!   string is what logs record as `response.command`).
//! * [`encode_data`] / [`dot_stuff_into`] turn message bytes into the DATA
//!   payload ending in `\r\n.\r\n`.
//! * [`classify`] maps a reply to the outcome of spec §7.5.

use crate::line::{LineReader, LineTooLong};
use crate::reply::{Reply, ReplyBuilder, ReplyLine, ReplyParseError};
use base64::Engine;
use bytes::BytesMut;
use tern_types::EnvelopeAddress;

/// Default cap on one reply line from a remote server. RFC 5321 says 512;
/// real servers exceed it, so this is generous but still bounded.
pub const DEFAULT_REPLY_LINE_LIMIT: usize = 16 * 1024;
/// Default cap on the number of lines of one reply.
pub const DEFAULT_REPLY_MAX_LINES: usize = 256;

pub const DATA_LINE: &str = "DATA\r\n";
pub const DATA_DOT_LINE: &str = ".\r\n";
pub const RSET_LINE: &str = "RSET\r\n";
pub const QUIT_LINE: &str = "QUIT\r\n";
pub const NOOP_LINE: &str = "NOOP\r\n";
pub const STARTTLS_LINE: &str = "STARTTLS\r\n";

/// Reads replies incrementally from a buffer the caller fills.
#[derive(Debug)]
pub struct ReplyReader {
    lines: LineReader,
    max_lines: usize,
    partial: Option<ReplyBuilder>,
    partial_lines: usize,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new(DEFAULT_REPLY_LINE_LIMIT, DEFAULT_REPLY_MAX_LINES)
    }
}

impl ReplyReader {
    pub fn new(max_line_len: usize, max_lines: usize) -> Self {
        Self {
            lines: LineReader::new(max_line_len),
            max_lines,
            partial: None,
            partial_lines: 0,
        }
    }

    /// Forget a partially read reply (e.g. after STARTTLS).
    pub fn reset(&mut self) {
        self.lines.reset();
        self.partial = None;
        self.partial_lines = 0;
    }

    /// Take the next complete reply from the front of `buf`; `None` means
    /// more input is needed. After an error the connection is out of step
    /// and should be dropped.
    pub fn next_reply(&mut self, buf: &mut BytesMut) -> Option<Result<Reply, ReplyParseError>> {
        loop {
            let line = match self.lines.next_line(buf)? {
                Ok(line) => line,
                Err(LineTooLong) => {
                    self.reset();
                    return Some(Err(ReplyParseError::TooLong(self.lines.max_line_length())));
                }
            };
            let result = self.push_line(&line);
            match result {
                Ok(None) => continue,
                Ok(Some(reply)) => return Some(Ok(reply)),
                Err(err) => {
                    self.partial = None;
                    self.partial_lines = 0;
                    return Some(Err(err));
                }
            }
        }
    }

    fn push_line(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyParseError> {
        let text = std::str::from_utf8(raw).map_err(|_| ReplyParseError::InvalidUtf8)?;
        let line = ReplyLine::parse(text)?;
        match &mut self.partial {
            None => self.partial = Some(ReplyBuilder::new(&line)),
            Some(builder) => builder.push(&line, text)?,
        }
        self.partial_lines += 1;
        if self.partial_lines > self.max_lines {
            return Err(ReplyParseError::TooLong(self.max_lines));
        }
        if !line.is_final {
            return Ok(None);
        }
        self.partial_lines = 0;
        Ok(self.partial.take().map(ReplyBuilder::finish))
    }
}

/// What a server advertised in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EhloCapabilities {
    /// The text of the first line (server name and greeting).
    pub greeting: String,
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtp_utf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// `AUTH` mechanisms, uppercased.
    pub auth_mechanisms: Vec<String>,
    /// `SIZE` limit; `Some(0)` means "no fixed limit".
    pub size: Option<u64>,
    /// Every extension line: uppercased keyword and the rest of the line.
    pub extensions: Vec<(String, String)>,
}

impl EhloCapabilities {
    /// Read the capabilities from a 250 EHLO reply.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut lines = reply.text.split('\n');
        let mut caps = Self {
            greeting: lines.next().unwrap_or_default().to_string(),
            ..Self::default()
        };
        for line in lines {
            let line = line.trim();
            let (keyword, rest) = match line.split_once([' ', '=']) {
                Some((k, r)) => (k, r.trim()),
                None => (line, ""),
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtp_utf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "AUTH" => {
                    for mechanism in rest.split_whitespace() {
                        let mechanism = mechanism.to_ascii_uppercase();
                        if !caps.auth_mechanisms.contains(&mechanism) {
                            caps.auth_mechanisms.push(mechanism);
                        }
                    }
                }
                "SIZE" => caps.size = Some(rest.parse().unwrap_or(0)),
                _ => {}
            }
            if !keyword.is_empty() {
                caps.extensions.push((keyword, rest.to_string()));
            }
        }
        caps
    }

    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

/// `EHLO <name>\r\n`
pub fn ehlo_line(name: &str) -> String {
    format!("EHLO {name}\r\n")
}

/// `HELO <name>\r\n`
pub fn helo_line(name: &str) -> String {
    format!("HELO {name}\r\n")
}

/// `MAIL FROM:<sender>[ BODY=8BITMIME][ SMTPUTF8]\r\n`
pub fn mail_from_line(sender: &EnvelopeAddress, eight_bit_body: bool, smtp_utf8: bool) -> String {
    let mut line = format!("MAIL FROM:<{}>", sender.email());
    if eight_bit_body {
        line.push_str(" BODY=8BITMIME");
    }
    if smtp_utf8 {
        line.push_str(" SMTPUTF8");
    }
    line.push_str("\r\n");
    line
}

/// `RCPT TO:<recipient>\r\n`
pub fn rcpt_to_line(recipient: &EnvelopeAddress) -> String {
    format!("RCPT TO:<{}>\r\n", recipient.email())
}

/// `AUTH PLAIN <base64(authz NUL authc NUL password)>\r\n`
pub fn auth_plain_line(authz: &str, authc: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(authz.len() + authc.len() + password.len() + 2);
    raw.extend_from_slice(authz.as_bytes());
    raw.push(0);
    raw.extend_from_slice(authc.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Whether the content needs `8BITMIME` (any byte ≥ 0x80).
pub fn needs_8bitmime(content: &[u8]) -> bool {
    !content.is_ascii()
}

/// Whether the envelope needs `SMTPUTF8` (a non-ASCII address).
pub fn needs_smtputf8<'a>(addresses: impl IntoIterator<Item = &'a EnvelopeAddress>) -> bool {
    addresses.into_iter().any(|a| !a.is_ascii())
}

/// The DATA payload for `message`: dot-stuffed, with a CRLF added if the
/// message does not end in one, followed by `.\r\n`.
pub fn encode_data(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    dot_stuff_into(message, &mut out);
    out
}

/// Append the DATA payload for `message` to `out` (see [`encode_data`]).
///
/// A dot is doubled at the start of the message and after every LF, bare
/// or part of a CRLF. A message accepted with `invalid_line_endings =
/// "Allow"` keeps its bare LFs, and some receivers take a bare LF as a line
/// end: stuffing only after CRLF would let `<LF>.<LF>` in the body end the
/// message there and smuggle whatever follows as commands. A receiver that
/// wants CRLF sees one extra dot inside a line of an already malformed
/// message.
pub fn dot_stuff_into(message: &[u8], out: &mut Vec<u8>) {
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut start = 0;
    for idx in memchr::memmem::find_iter(message, b"\n.") {
        // Copy through the LF and the dot, then add the second dot.
        out.extend_from_slice(&message[start..idx + 2]);
        out.push(b'.');
        start = idx + 2;
    }
    out.extend_from_slice(&message[start..]);
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// How a delivery attempt should treat a reply to MAIL, RCPT or DATA
/// (spec §7.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// 4xx, 3xx (protocol out of step) and 503: retry later.
    Transient,
    /// Any other 5xx: bounce.
    Permanent,
}

pub fn classify(reply: &Reply) -> Outcome {
    match reply.code {
        200..=299 => Outcome::Delivered,
        503 => Outcome::Transient,
        500..=599 => Outcome::Permanent,
        _ => Outcome::Transient,
    }
}

/// "Too many recipients": 452, or 552 in answer to RCPT (RFC 5321
/// §4.5.3.1.10). The excess recipients are retried on the same connection.
pub fn is_too_many_recipients(reply: &Reply, command_was_rcpt: bool) -> bool {
    reply.code == 452 || (reply.code == 552 && command_was_rcpt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::EnhancedCode;

    #[test]
    fn reads_pipelined_replies() {
        let mut reader = ReplyReader::default();
        let mut buf = BytesMut::from(
            &b"250 2.1.0 OK\r\n250-2.1.5 first\r\n250-2.1.5 second\r\n250 last\r\n354 go"[..],
        );
        let r1 = reader.next_reply(&mut buf).unwrap().unwrap();
        assert_eq!((r1.code, r1.text.as_str()), (250, "OK"));
        let r2 = reader.next_reply(&mut buf).unwrap().unwrap();
        assert_eq!(r2.enhanced, Some(EnhancedCode::new(2, 1, 5)));
        assert_eq!(r2.text, "first\nsecond\nlast");
        assert!(reader.next_reply(&mut buf).is_none());
        buf.extend_from_slice(b" ahead\r\n");
        let r3 = reader.next_reply(&mut buf).unwrap().unwrap();
        assert_eq!((r3.code, r3.text.as_str()), (354, "go ahead"));
        assert!(buf.is_empty());
    }

    #[test]
    fn reply_split_at_every_byte() {
        let input = b"220-mx.example ESMTP\r\n220 ready\r\n250 2.0.0 ok\r\n";
        for split in 0..=input.len() {
            let mut reader = ReplyReader::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&input[..split], &input[split..]] {
                buf.extend_from_slice(part);
                while let Some(r) = reader.next_reply(&mut buf) {
                    got.push(r.unwrap());
                }
            }
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0].text, "mx.example ESMTP\nready");
            assert_eq!(got[1].to_single_line(), "250 2.0.0 ok");
        }
    }

    #[test]
    fn reply_errors() {
        let mut reader = ReplyReader::default();
        let mut buf = BytesMut::from(&b"250-a\r\n550 b\r\n"[..]);
        assert!(matches!(
            reader.next_reply(&mut buf),
            Some(Err(ReplyParseError::CodeMismatch { .. }))
        ));
        let mut reader = ReplyReader::new(10, 5);
        let mut buf = BytesMut::from(&b"250 this line is far too long\r\n"[..]);
        assert!(matches!(
            reader.next_reply(&mut buf),
            Some(Err(ReplyParseError::TooLong(10)))
        ));
        let mut buf =
            BytesMut::from(&b"250-a\r\n250-a\r\n250-a\r\n250-a\r\n250-a\r\n250-a\r\n"[..]);
        assert!(matches!(
            reader.next_reply(&mut buf),
            Some(Err(ReplyParseError::TooLong(5)))
        ));
        let mut reader = ReplyReader::default();
        let mut buf = BytesMut::from(&b"250 \xff\r\n"[..]);
        assert_eq!(
            reader.next_reply(&mut buf),
            Some(Err(ReplyParseError::InvalidUtf8))
        );
    }

    #[test]
    fn ehlo_capabilities() {
        let reply = Reply::parse(
            "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n\
             250-STARTTLS\r\n250-AUTH LOGIN plain\r\n250-AUTH=LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-CHUNKING\r\n250 SMTPUTF8\r\n",
        )
        .unwrap();
        let caps = EhloCapabilities::from_reply(&reply);
        assert_eq!(caps.greeting, "mx.example Hello");
        assert!(caps.pipelining && caps.starttls && caps.eight_bit_mime && caps.smtp_utf8);
        assert!(caps.enhanced_status_codes && caps.chunking);
        assert_eq!(caps.size, Some(35882577));
        assert_eq!(caps.auth_mechanisms, ["LOGIN", "PLAIN"]);
        assert!(caps.supports_auth("plain"));

        let bare = EhloCapabilities::from_reply(&Reply::parse("250 mx.example\r\n").unwrap());
        assert!(!bare.pipelining && !bare.starttls && bare.auth_mechanisms.is_empty());
        assert_eq!(bare.size, None);
    }

    #[test]
    fn command_lines() {
        let sender = EnvelopeAddress::parse("bounce@example.com").unwrap();
        let rcpt = EnvelopeAddress::parse("user@example.net").unwrap();
        assert_eq!(
            mail_from_line(&sender, true, true),
            "MAIL FROM:<bounce@example.com> BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(
            mail_from_line(&EnvelopeAddress::null_sender(), false, false),
            "MAIL FROM:<>\r\n"
        );
        assert_eq!(rcpt_to_line(&rcpt), "RCPT TO:<user@example.net>\r\n");
        assert_eq!(ehlo_line("me.example"), "EHLO me.example\r\n");
        assert_eq!(helo_line("me.example"), "HELO me.example\r\n");
        assert_eq!(
            auth_plain_line("", "user", "pass"),
            "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
        );
        let decoded = crate::session::decode_auth_plain("AHVzZXIAcGFzcw==").unwrap();
        assert_eq!(
            (decoded.authc.as_str(), decoded.password.as_str()),
            ("user", "pass")
        );
        assert!(needs_8bitmime("héllo".as_bytes()));
        assert!(!needs_8bitmime(b"hello"));
        let utf8 = EnvelopeAddress::parse("usér@example.com").unwrap();
        assert!(needs_smtputf8([&sender, &utf8]));
        assert!(!needs_smtputf8([&sender, &rcpt]));
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(encode_data(b"hello\r\n"), b"hello\r\n.\r\n");
        assert_eq!(encode_data(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode_data(b""), b".\r\n");
        assert_eq!(
            encode_data(b".first\r\n.\r\nmid.dle\r\n..two\r\n"),
            b"..first\r\n..\r\nmid.dle\r\n...two\r\n.\r\n"
        );
    }

    #[test]
    fn a_dot_after_a_bare_lf_is_stuffed_too() {
        let smuggling = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.com>\r\nbye\r\n";
        let wire = encode_data(smuggling);
        assert_eq!(
            wire,
            b"Subject: x\r\n\r\nhi\n..\nMAIL FROM:<evil@example.com>\r\nbye\r\n.\r\n"
        );
        // A receiver that ends lines at any LF finds its first lone-dot
        // line only at the real end.
        let lines: Vec<&[u8]> = wire
            .split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .collect();
        let first_dot = lines.iter().position(|line| *line == b".").unwrap();
        assert_eq!(first_dot, lines.len() - 2, "{lines:?}");
    }

    #[test]
    fn dot_stuffing_round_trips_through_the_decoder() {
        use crate::data::{DataDecoder, DataLimits};
        for message in [
            &b""[..],
            b".\r\n",
            b"..\r\n.\r\n.x\r\n",
            b"Subject: a\r\n\r\n.\r\n..\r\nend\r\n",
        ] {
            let wire = encode_data(message);
            let mut dec = DataDecoder::new(DataLimits::default());
            let progress = dec.decode(&wire);
            assert_eq!(progress.consumed, wire.len());
            assert_eq!(progress.finished, Some(Ok(message.to_vec())), "{message:?}");
        }
    }

    #[test]
    fn classification() {
        let r = |code| Reply::new(code, None, "x");
        assert_eq!(classify(&r(250)), Outcome::Delivered);
        assert_eq!(classify(&r(354)), Outcome::Transient);
        assert_eq!(classify(&r(451)), Outcome::Transient);
        assert_eq!(classify(&r(503)), Outcome::Transient);
        assert_eq!(classify(&r(550)), Outcome::Permanent);
        assert!(is_too_many_recipients(&r(452), false));
        assert!(is_too_many_recipients(&r(552), true));
        assert!(!is_too_many_recipients(&r(552), false));
    }
}
