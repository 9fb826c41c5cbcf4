//! SMTP replies: the value type shared by the server side (what we send) and
//! the client side (what a remote server sent us).
//!
//! A [`Reply`] is a three-digit code, an optional RFC 3463 enhanced status
//! code and a text that may span several lines (separated by `\n`). On the
//! wire every line carries the code, `-` on all but the last line, and the
//! enhanced code (when there is one) in front of each line's text, which is
//! how KumoMTA formats multi-line replies.
//!
//! The constructors below produce every fixed reply of the KumoMTA ESMTP
//! listener (spec §3.2–§3.12) so that the session driver never spells a
//! reply text itself; tests pin each text byte for byte.
//!
//! For the client side, [`Reply::parse`] turns a complete multi-line server
//! reply into a `Reply` and [`Reply::content_single_line`] gives the text as
//! KumoMTA logs it (`response.content`: line breaks become spaces).

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
///
/// Serialises as `{"class":5,"subject":7,"detail":1}`, the shape of
/// `response.enhanced_code` in log records (spec §12.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Split a leading `class.subject.detail ` off `text`.
    ///
    /// Only classes 2, 4 and 5 exist, and the code must be followed by a
    /// space and more text: `"5.7.1 denied"` yields the code and `"denied"`,
    /// while `"3.0.0 x"`, `"2.0.0.1 x"` or a bare `"2.0.0"` yield `None`.
    pub fn split_prefix(text: &str) -> Option<(Self, &str)> {
        let (token, rest) = text.split_once(' ')?;
        let mut parts = token.split('.');
        let class = parse_digits::<u8>(parts.next()?)?;
        let subject = parse_digits::<u16>(parts.next()?)?;
        let detail = parse_digits::<u16>(parts.next()?)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((Self::new(class, subject, detail), rest))
    }
}

/// Parse a non-empty run of ASCII digits (no sign, no spaces).
fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// The text without code or enhanced code; lines separated by `\n`.
    pub text: String,
}

/// Why a server reply could not be parsed (client side).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    #[error("malformed SMTP reply line: {0:?}")]
    MalformedLine(String),
    #[error("SMTP reply lines disagree on the code: {first} then {line:?}")]
    CodeMismatch { first: u16, line: String },
    #[error("SMTP reply is not valid UTF-8")]
    InvalidUtf8,
    #[error("empty SMTP reply")]
    Empty,
    #[error("SMTP reply exceeds {0} bytes")]
    TooLong(usize),
}

const fn enh(class: u8, subject: u16, detail: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode::new(class, subject, detail))
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// Build a reply from a code and a text that may start with an enhanced
    /// code, as `kumo.reject(550, "5.7.1 go away")` gives them.
    pub fn from_code_and_text(code: u16, text: &str) -> Self {
        match EnhancedCode::split_prefix(text) {
            Some((enhanced, rest)) => Self::new(code, Some(enhanced), rest),
            None => Self::new(code, None, text),
        }
    }

    /// Append the wire form (each line ending in CRLF) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let mut code_buf = itoa3(self.code);
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            code_buf[3] = if lines.peek().is_some() { b'-' } else { b' ' };
            out.extend_from_slice(&code_buf);
            if let Some(enhanced) = self.enhanced {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{enhanced} ");
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.write_to(&mut out);
        out
    }

    /// `[enhanced ]text`: the message as KumoMTA hands it to policy, e.g.
    /// the `text` argument of `smtp_server_rewrite_response`.
    pub fn full_text(&self) -> String {
        match self.enhanced {
            Some(enhanced) => format!("{enhanced} {}", self.text),
            None => self.text.clone(),
        }
    }

    /// `code [enhanced ]text` on one line, line breaks turned into spaces.
    pub fn to_single_line(&self) -> String {
        let mut line = format!("{} ", self.code);
        if let Some(enhanced) = self.enhanced {
            line.push_str(&format!("{enhanced} "));
        }
        line.push_str(&self.content_single_line());
        line
    }

    /// The text as KumoMTA logs it in `response.content`: every CR, LF or
    /// CRLF becomes one space.
    pub fn content_single_line(&self) -> String {
        remove_line_breaks(&self.text)
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// After writing a 421 the server closes the connection.
    pub fn closes_connection(&self) -> bool {
        self.code == 421
    }

    /// Parse one complete server reply (one or more lines, each ending in
    /// CRLF or LF; the final CRLF may be missing).
    ///
    /// The enhanced code is taken from the first line; continuation lines
    /// that repeat it have it stripped, and the line texts are joined with
    /// `\n`.
    pub fn parse(input: &str) -> Result<Self, ReplyParseError> {
        let mut builder: Option<ReplyBuilder> = None;
        for raw in input.split_terminator('\n') {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let line = ReplyLine::parse(raw)?;
            match &mut builder {
                None => builder = Some(ReplyBuilder::new(&line)),
                Some(b) => b.push(&line, raw)?,
            }
        }
        builder
            .map(ReplyBuilder::finish)
            .ok_or(ReplyParseError::Empty)
    }

    // ----- fixed replies of the ESMTP listener (spec §3.2–§3.12) -----

    /// `220 <hostname> <banner>`
    pub fn banner(hostname: &str, banner: &str) -> Self {
        Self::new(220, None, format!("{hostname} {banner}"))
    }

    /// `250-<hostname> Aloha <domain>` followed by one line per extension.
    pub fn ehlo<S: AsRef<str>>(hostname: &str, domain: &str, extensions: &[S]) -> Self {
        let mut text = format!("{hostname} Aloha {domain}");
        for ext in extensions {
            text.push('\n');
            text.push_str(ext.as_ref());
        }
        Self::new(250, None, text)
    }

    /// `250 Hello <domain>!`
    pub fn helo(domain: &str) -> Self {
        Self::new(250, None, format!("Hello {domain}!"))
    }

    /// `250 OK <addr>`: reply to an accepted MAIL FROM or RCPT TO.
    pub fn address_ok(address: &str) -> Self {
        Self::new(250, None, format!("OK <{address}>"))
    }

    /// `354 Send body; end with CRLF.CRLF`
    pub fn start_data() -> Self {
        Self::new(354, None, "Send body; end with CRLF.CRLF")
    }

    /// `221 So long, and thanks for all the fish!`
    pub fn quit() -> Self {
        Self::new(221, None, "So long, and thanks for all the fish!")
    }

    /// `250 the goggles do nothing`
    pub fn noop() -> Self {
        Self::new(250, None, "the goggles do nothing")
    }

    /// `250 Reset state`
    pub fn rset() -> Self {
        Self::new(250, None, "Reset state")
    }

    /// `502 5.5.1 Command unimplemented` (VRFY, EXPN, HELP, LHLO, unknown verbs).
    pub fn unimplemented() -> Self {
        Self::new(502, enh(5, 5, 1), "Command unimplemented")
    }

    /// `503 5.5.0 MAIL FROM already issued; you must RSET first`
    pub fn mail_already_issued() -> Self {
        Self::new(
            503,
            enh(5, 5, 0),
            "MAIL FROM already issued; you must RSET first",
        )
    }

    /// `503 5.5.0 MAIL FROM must be issued first`
    pub fn mail_first() -> Self {
        Self::new(503, enh(5, 5, 0), "MAIL FROM must be issued first")
    }

    /// `503 5.5.0 RCPT TO must be issued first`
    pub fn rcpt_first() -> Self {
        Self::new(503, enh(5, 5, 0), "RCPT TO must be issued first")
    }

    /// `500 5.2.3 line too long` (command line or DATA line).
    pub fn line_too_long() -> Self {
        Self::new(500, enh(5, 2, 3), "line too long")
    }

    /// `501 5.5.2 Invalid UTF-8 in command`
    pub fn invalid_utf8_command() -> Self {
        Self::new(501, enh(5, 5, 2), "Invalid UTF-8 in command")
    }

    /// `501 Syntax error in command or arguments: <err>`
    pub fn syntax_error(detail: &str) -> Self {
        Self::new(
            501,
            None,
            format!("Syntax error in command or arguments: {detail}"),
        )
    }

    /// `501 5.1.7 Invalid sender address syntax: <detail>`
    pub fn invalid_sender(detail: &str) -> Self {
        Self::new(
            501,
            enh(5, 1, 7),
            format!("Invalid sender address syntax: {detail}"),
        )
    }

    /// `501 5.1.3 Invalid recipient address syntax`
    pub fn invalid_recipient() -> Self {
        Self::new(501, enh(5, 1, 3), "Invalid recipient address syntax")
    }

    /// `552 5.3.4 message too big`
    pub fn message_too_big() -> Self {
        Self::new(552, enh(5, 3, 4), "message too big")
    }

    /// `552 5.6.0 message data must use CRLF for line endings`
    pub fn invalid_line_endings() -> Self {
        Self::new(
            552,
            enh(5, 6, 0),
            "message data must use CRLF for line endings",
        )
    }

    /// `220 Ready to Start TLS`
    pub fn starttls_ready() -> Self {
        Self::new(220, None, "Ready to Start TLS")
    }

    /// `501 Cannot STARTTLS as TLS is already active`
    pub fn tls_already_active() -> Self {
        Self::new(501, None, "Cannot STARTTLS as TLS is already active")
    }

    /// `550 5.7.1 relaying not permitted for <peer ip:port>` (RCPT).
    pub fn relaying_not_permitted_for(peer: &str) -> Self {
        Self::new(
            550,
            enh(5, 7, 1),
            format!("relaying not permitted for {peer}"),
        )
    }

    /// `550 5.7.1 relaying not permitted` (end of DATA, nothing relayed).
    pub fn relaying_not_permitted() -> Self {
        Self::new(550, enh(5, 7, 1), "relaying not permitted")
    }

    /// `452 4.5.3 too many recipients`
    pub fn too_many_recipients() -> Self {
        Self::new(452, enh(4, 5, 3), "too many recipients")
    }

    /// `421 4.5.3 <hostname> too many recipients on this connection`
    pub fn too_many_recipients_on_connection_closing(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 5, 3),
            format!("{hostname} too many recipients on this connection"),
        )
    }

    /// `452 4.5.3 too many recipients on this connection`
    pub fn too_many_recipients_on_connection() -> Self {
        Self::new(452, enh(4, 5, 3), "too many recipients on this connection")
    }

    /// `421 4.3.2 <hostname> idle too long`
    pub fn idle_too_long(hostname: &str) -> Self {
        Self::new(421, enh(4, 3, 2), format!("{hostname} idle too long"))
    }

    /// `421 4.3.2 <hostname> too many concurrent sessions. Try later`
    pub fn too_many_sessions(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 3, 2),
            format!("{hostname} too many concurrent sessions. Try later"),
        )
    }

    /// `421 4.3.2 <hostname> shutting down`
    pub fn shutting_down(hostname: &str) -> Self {
        Self::new(421, enh(4, 3, 2), format!("{hostname} shutting down"))
    }

    /// `421 4.3.2 <hostname> load shedding. Try later`
    pub fn load_shedding(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 3, 2),
            format!("{hostname} load shedding. Try later"),
        )
    }

    /// `421 4.3.2 <hostname> disk is too full. Try later`
    pub fn disk_too_full(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 3, 2),
            format!("{hostname} disk is too full. Try later"),
        )
    }

    /// `421 4.3.2 <hostname> waiting for spool startup. Try again soon!`
    pub fn waiting_for_spool(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 3, 2),
            format!("{hostname} waiting for spool startup. Try again soon!"),
        )
    }

    /// `421 4.3.2 <hostname> <reason>. Try later`
    pub fn spool_unhealthy(hostname: &str, reason: &str) -> Self {
        Self::new(421, enh(4, 3, 2), format!("{hostname} {reason}. Try later"))
    }

    /// `421 4.3.2 <hostname> the spool is not accepting writes. Try later`
    pub fn spool_not_accepting_writes(hostname: &str) -> Self {
        Self::spool_unhealthy(hostname, "the spool is not accepting writes")
    }

    /// `421 4.3.0 <hostname> technical difficulties`
    pub fn technical_difficulties(hostname: &str) -> Self {
        Self::new(
            421,
            enh(4, 3, 0),
            format!("{hostname} technical difficulties"),
        )
    }

    /// `421 <hostname> disconnecting due to previous error`
    /// (sent after the reply of a `FollowWith421` disconnect).
    pub fn disconnecting_after_error(hostname: &str) -> Self {
        Self::new(
            421,
            None,
            format!("{hostname} disconnecting due to previous error"),
        )
    }

    /// `451 4.4.5 data_processing_timeout exceeded (<stage>)` where stage
    /// is `rx`, `resolve`, `spool` or `insert`.
    pub fn data_processing_timeout(stage: &str) -> Self {
        Self::new(
            451,
            enh(4, 4, 5),
            format!("data_processing_timeout exceeded ({stage})"),
        )
    }

    /// `250 OK ids=<id> <id> ...`, or `250 PARTIAL ids=...` when some
    /// messages of the transaction could not be queued.
    pub fn queued<S: AsRef<str>>(ids: &[S], partial: bool) -> Self {
        let mut text = String::from(if partial { "PARTIAL ids=" } else { "OK ids=" });
        for (n, id) in ids.iter().enumerate() {
            if n > 0 {
                text.push(' ');
            }
            text.push_str(id.as_ref());
        }
        Self::new(250, None, text)
    }

    /// `503 5.5.1 AUTH me once, can't get authed again!`
    pub fn auth_already_done() -> Self {
        Self::new(503, enh(5, 5, 1), "AUTH me once, can't get authed again!")
    }

    /// `503 5.5.1 AUTH not permitted inside a transaction`
    pub fn auth_in_transaction() -> Self {
        Self::new(503, enh(5, 5, 1), "AUTH not permitted inside a transaction")
    }

    /// `504 5.5.4 AUTH <mech> not supported`
    pub fn auth_mechanism_not_supported(mechanism: &str) -> Self {
        Self::new(504, enh(5, 5, 4), format!("AUTH {mechanism} not supported"))
    }

    /// `524 5.7.11 AUTH PLAIN requires an encrypted channel`
    pub fn auth_requires_tls() -> Self {
        Self::new(
            524,
            enh(5, 7, 11),
            "AUTH PLAIN requires an encrypted channel",
        )
    }

    /// `334 ` (empty challenge: send the PLAIN response).
    pub fn auth_continue() -> Self {
        Self::new(334, None, "")
    }

    /// `500 5.5.6 authentication exchange line too long` (the line after
    /// `334 ` exceeded 16384 bytes).
    pub fn auth_line_too_long() -> Self {
        Self::new(500, enh(5, 5, 6), "authentication exchange line too long")
    }

    /// `501 5.5.0 AUTH cancelled by client`
    pub fn auth_cancelled() -> Self {
        Self::new(501, enh(5, 5, 0), "AUTH cancelled by client")
    }

    /// `501 5.5.2 Invalid base64 response`
    pub fn auth_invalid_base64() -> Self {
        Self::new(501, enh(5, 5, 2), "Invalid base64 response")
    }

    /// `501 5.5.2 Invalid decoded PLAIN response`
    pub fn auth_invalid_plain() -> Self {
        Self::new(501, enh(5, 5, 2), "Invalid decoded PLAIN response")
    }

    /// `501 5.5.2 Invalid UTF8 in decoded PLAIN response`
    pub fn auth_invalid_plain_utf8() -> Self {
        Self::new(501, enh(5, 5, 2), "Invalid UTF8 in decoded PLAIN response")
    }

    /// `235 2.7.0 AUTH OK!`
    pub fn auth_ok() -> Self {
        Self::new(235, enh(2, 7, 0), "AUTH OK!")
    }

    /// `535 5.7.8 AUTH invalid`
    pub fn auth_invalid() -> Self {
        Self::new(535, enh(5, 7, 8), "AUTH invalid")
    }

    /// `550 insufficient authorization` (XCLIENT without `allow_xclient`).
    pub fn xclient_not_allowed() -> Self {
        Self::new(550, None, "insufficient authorization")
    }

    /// `503 mail transaction in progress` (XCLIENT inside a transaction).
    pub fn xclient_in_transaction() -> Self {
        Self::new(503, None, "mail transaction in progress")
    }

    /// `501 parameter <NAME> is not supported`
    pub fn xclient_unsupported_parameter(name: &str) -> Self {
        Self::new(501, None, format!("parameter {name} is not supported"))
    }

    /// `501 <NAME> <value> is invalid`
    pub fn xclient_invalid_value(name: &str, value: &str) -> Self {
        Self::new(501, None, format!("{name} {value} is invalid"))
    }
}

impl fmt::Display for Reply {
    /// The single-line form, for logs and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_single_line())
    }
}

/// Three ASCII digits plus a separator slot. Codes outside 100..=999 are a
/// programming error upstream; clamp instead of panicking.
fn itoa3(code: u16) -> [u8; 4] {
    let code = code.clamp(100, 999);
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]
}

/// Replace each CRLF, lone CR or lone LF with a single space.
pub(crate) fn remove_line_breaks(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for idx in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        out.push_str(&text[start..idx]);
        // A CR directly followed by LF is one break: the LF emits the space.
        if !(bytes[idx] == b'\r' && bytes.get(idx + 1) == Some(&b'\n')) {
            out.push(' ');
        }
        start = idx + 1;
    }
    out.push_str(&text[start..]);
    out
}

/// One parsed reply line: `DDD` + (`-` | ` ` | end) + text.
#[derive(Debug)]
pub(crate) struct ReplyLine<'a> {
    pub code: u16,
    pub is_final: bool,
    pub text: &'a str,
}

impl<'a> ReplyLine<'a> {
    pub fn parse(line: &'a str) -> Result<Self, ReplyParseError> {
        let bytes = line.as_bytes();
        let malformed = || ReplyParseError::MalformedLine(line.to_string());
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let code = u16::from(bytes[0] - b'0') * 100
            + u16::from(bytes[1] - b'0') * 10
            + u16::from(bytes[2] - b'0');
        if !(200..600).contains(&code) {
            return Err(malformed());
        }
        let (is_final, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        Ok(Self {
            code,
            is_final,
            text,
        })
    }
}

/// Accumulates the lines of one multi-line reply.
#[derive(Debug)]
pub(crate) struct ReplyBuilder {
    code: u16,
    enhanced: Option<EnhancedCode>,
    /// `"c.s.d "` of the first line, stripped from continuation lines.
    enhanced_prefix: Option<String>,
    text: String,
}

impl ReplyBuilder {
    pub fn new(first: &ReplyLine<'_>) -> Self {
        match EnhancedCode::split_prefix(first.text) {
            Some((enhanced, rest)) => Self {
                code: first.code,
                enhanced: Some(enhanced),
                enhanced_prefix: Some(format!("{enhanced} ")),
                text: rest.to_string(),
            },
            None => Self {
                code: first.code,
                enhanced: None,
                enhanced_prefix: None,
                text: first.text.to_string(),
            },
        }
    }

    pub fn push(&mut self, line: &ReplyLine<'_>, raw: &str) -> Result<(), ReplyParseError> {
        if line.code != self.code {
            return Err(ReplyParseError::CodeMismatch {
                first: self.code,
                line: raw.to_string(),
            });
        }
        let text = match &self.enhanced_prefix {
            Some(prefix) => line.text.strip_prefix(prefix.as_str()).unwrap_or(line.text),
            None => line.text,
        };
        self.text.push('\n');
        self.text.push_str(text);
        Ok(())
    }

    pub fn finish(self) -> Reply {
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            text: self.text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: Reply) -> String {
        String::from_utf8(reply.to_bytes()).unwrap()
    }

    #[test]
    fn enhanced_code_prefix() {
        assert_eq!(
            EnhancedCode::split_prefix("2.0.1 w00t"),
            Some((EnhancedCode::new(2, 0, 1), "w00t"))
        );
        assert_eq!(EnhancedCode::split_prefix("3.0.0 nope"), None);
        assert_eq!(EnhancedCode::split_prefix("2.0.0.1 nope"), None);
        assert_eq!(EnhancedCode::split_prefix("2.0.0"), None);
        assert_eq!(EnhancedCode::split_prefix("2.x.0 nope"), None);
        assert_eq!(EnhancedCode::split_prefix("2.+1.0 nope"), None);
        assert_eq!(EnhancedCode::split_prefix("OK 1.2.3"), None);
    }

    #[test]
    fn single_and_multi_line_wire_format() {
        assert_eq!(wire(Reply::noop()), "250 the goggles do nothing\r\n");
        assert_eq!(
            wire(Reply::new(550, enh(5, 7, 1), "first\nsecond\nthird")),
            "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"
        );
        assert_eq!(wire(Reply::new(421, None, "a\r\nb")), "421-a\r\n421 b\r\n");
        assert_eq!(wire(Reply::auth_continue()), "334 \r\n");
    }

    #[test]
    fn full_text_and_serde_shape() {
        assert_eq!(Reply::auth_ok().full_text(), "2.7.0 AUTH OK!");
        assert_eq!(Reply::rset().full_text(), "Reset state");
        let round = Reply::from_code_and_text(550, &Reply::relaying_not_permitted().full_text());
        assert_eq!(round, Reply::relaying_not_permitted());
        // Field names as in the `response.enhanced_code` log object.
        let code = EnhancedCode::new(5, 7, 1);
        let de: EnhancedCode =
            serde::Deserialize::deserialize(serde::de::value::MapDeserializer::<
                _,
                serde::de::value::Error,
            >::new(
                [("class", 5u16), ("subject", 7), ("detail", 1)].into_iter(),
            ))
            .unwrap();
        assert_eq!(de, code);
    }

    #[test]
    fn from_code_and_text_extracts_enhanced() {
        let r = Reply::from_code_and_text(550, "5.7.1 go away");
        assert_eq!(r.enhanced, enh(5, 7, 1));
        assert_eq!(r.text, "go away");
        let r = Reply::from_code_and_text(550, "go away");
        assert_eq!((r.enhanced, r.text.as_str()), (None, "go away"));
    }

    #[test]
    fn every_fixed_reply_text() {
        let cases: Vec<(Reply, &str)> = vec![
            (
                Reply::banner("mx.example", "KumoMTA"),
                "220 mx.example KumoMTA\r\n",
            ),
            (
                Reply::ehlo("mx.example", "client.example", &["PIPELINING", "8BITMIME"]),
                "250-mx.example Aloha client.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            ),
            (
                Reply::helo("client.example"),
                "250 Hello client.example!\r\n",
            ),
            (Reply::address_ok("a@b.example"), "250 OK <a@b.example>\r\n"),
            (Reply::address_ok(""), "250 OK <>\r\n"),
            (Reply::start_data(), "354 Send body; end with CRLF.CRLF\r\n"),
            (
                Reply::quit(),
                "221 So long, and thanks for all the fish!\r\n",
            ),
            (Reply::noop(), "250 the goggles do nothing\r\n"),
            (Reply::rset(), "250 Reset state\r\n"),
            (
                Reply::unimplemented(),
                "502 5.5.1 Command unimplemented\r\n",
            ),
            (
                Reply::mail_already_issued(),
                "503 5.5.0 MAIL FROM already issued; you must RSET first\r\n",
            ),
            (
                Reply::mail_first(),
                "503 5.5.0 MAIL FROM must be issued first\r\n",
            ),
            (
                Reply::rcpt_first(),
                "503 5.5.0 RCPT TO must be issued first\r\n",
            ),
            (Reply::line_too_long(), "500 5.2.3 line too long\r\n"),
            (
                Reply::invalid_utf8_command(),
                "501 5.5.2 Invalid UTF-8 in command\r\n",
            ),
            (
                Reply::syntax_error("oops"),
                "501 Syntax error in command or arguments: oops\r\n",
            ),
            (
                Reply::invalid_sender("bad"),
                "501 5.1.7 Invalid sender address syntax: bad\r\n",
            ),
            (
                Reply::invalid_recipient(),
                "501 5.1.3 Invalid recipient address syntax\r\n",
            ),
            (Reply::message_too_big(), "552 5.3.4 message too big\r\n"),
            (
                Reply::invalid_line_endings(),
                "552 5.6.0 message data must use CRLF for line endings\r\n",
            ),
            (Reply::starttls_ready(), "220 Ready to Start TLS\r\n"),
            (
                Reply::tls_already_active(),
                "501 Cannot STARTTLS as TLS is already active\r\n",
            ),
            (
                Reply::relaying_not_permitted_for("10.0.0.1:4321"),
                "550 5.7.1 relaying not permitted for 10.0.0.1:4321\r\n",
            ),
            (
                Reply::relaying_not_permitted(),
                "550 5.7.1 relaying not permitted\r\n",
            ),
            (
                Reply::too_many_recipients(),
                "452 4.5.3 too many recipients\r\n",
            ),
            (
                Reply::too_many_recipients_on_connection_closing("h"),
                "421 4.5.3 h too many recipients on this connection\r\n",
            ),
            (
                Reply::too_many_recipients_on_connection(),
                "452 4.5.3 too many recipients on this connection\r\n",
            ),
            (Reply::idle_too_long("h"), "421 4.3.2 h idle too long\r\n"),
            (
                Reply::too_many_sessions("h"),
                "421 4.3.2 h too many concurrent sessions. Try later\r\n",
            ),
            (Reply::shutting_down("h"), "421 4.3.2 h shutting down\r\n"),
            (
                Reply::load_shedding("h"),
                "421 4.3.2 h load shedding. Try later\r\n",
            ),
            (
                Reply::disk_too_full("h"),
                "421 4.3.2 h disk is too full. Try later\r\n",
            ),
            (
                Reply::waiting_for_spool("h"),
                "421 4.3.2 h waiting for spool startup. Try again soon!\r\n",
            ),
            (
                Reply::spool_not_accepting_writes("h"),
                "421 4.3.2 h the spool is not accepting writes. Try later\r\n",
            ),
            (
                Reply::technical_difficulties("h"),
                "421 4.3.0 h technical difficulties\r\n",
            ),
            (
                Reply::disconnecting_after_error("h"),
                "421 h disconnecting due to previous error\r\n",
            ),
            (
                Reply::data_processing_timeout("spool"),
                "451 4.4.5 data_processing_timeout exceeded (spool)\r\n",
            ),
            (Reply::queued(&["a1", "b2"], false), "250 OK ids=a1 b2\r\n"),
            (Reply::queued(&["a1"], true), "250 PARTIAL ids=a1\r\n"),
            (
                Reply::auth_already_done(),
                "503 5.5.1 AUTH me once, can't get authed again!\r\n",
            ),
            (
                Reply::auth_in_transaction(),
                "503 5.5.1 AUTH not permitted inside a transaction\r\n",
            ),
            (
                Reply::auth_mechanism_not_supported("LOGIN"),
                "504 5.5.4 AUTH LOGIN not supported\r\n",
            ),
            (
                Reply::auth_requires_tls(),
                "524 5.7.11 AUTH PLAIN requires an encrypted channel\r\n",
            ),
            (
                Reply::auth_line_too_long(),
                "500 5.5.6 authentication exchange line too long\r\n",
            ),
            (
                Reply::auth_cancelled(),
                "501 5.5.0 AUTH cancelled by client\r\n",
            ),
            (
                Reply::auth_invalid_base64(),
                "501 5.5.2 Invalid base64 response\r\n",
            ),
            (
                Reply::auth_invalid_plain(),
                "501 5.5.2 Invalid decoded PLAIN response\r\n",
            ),
            (
                Reply::auth_invalid_plain_utf8(),
                "501 5.5.2 Invalid UTF8 in decoded PLAIN response\r\n",
            ),
            (Reply::auth_ok(), "235 2.7.0 AUTH OK!\r\n"),
            (Reply::auth_invalid(), "535 5.7.8 AUTH invalid\r\n"),
            (
                Reply::xclient_not_allowed(),
                "550 insufficient authorization\r\n",
            ),
            (
                Reply::xclient_in_transaction(),
                "503 mail transaction in progress\r\n",
            ),
            (
                Reply::xclient_unsupported_parameter("NAME"),
                "501 parameter NAME is not supported\r\n",
            ),
            (
                Reply::xclient_invalid_value("ADDR", "x"),
                "501 ADDR x is invalid\r\n",
            ),
        ];
        for (reply, expected) in cases {
            assert_eq!(wire(reply), expected);
        }
        assert!(Reply::idle_too_long("h").closes_connection());
        assert!(!Reply::too_many_recipients().closes_connection());
    }

    #[test]
    fn parse_single_and_multi_line() {
        let r = Reply::parse("250 2.0.0 OK queued\r\n").unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, enh(2, 0, 0));
        assert_eq!(r.text, "OK queued");

        let r = Reply::parse("550-5.7.1 first\r\n550-5.7.1 second\r\n550 third\r\n").unwrap();
        assert_eq!(r.enhanced, enh(5, 7, 1));
        assert_eq!(r.text, "first\nsecond\nthird");
        assert_eq!(r.content_single_line(), "first second third");
        assert_eq!(r.to_single_line(), "550 5.7.1 first second third");

        let r = Reply::parse("220 mx ESMTP").unwrap();
        assert_eq!(
            (r.code, r.enhanced, r.text.as_str()),
            (220, None, "mx ESMTP")
        );

        let r = Reply::parse("354\r\n").unwrap();
        assert_eq!((r.code, r.text.as_str()), (354, ""));
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            Reply::parse("250-a\r\n251 b\r\n"),
            Err(ReplyParseError::CodeMismatch { first: 250, .. })
        ));
        assert!(matches!(
            Reply::parse("25x ok"),
            Err(ReplyParseError::MalformedLine(_))
        ));
        assert!(matches!(
            Reply::parse("250xok"),
            Err(ReplyParseError::MalformedLine(_))
        ));
        assert!(matches!(
            Reply::parse("999 nope"),
            Err(ReplyParseError::MalformedLine(_))
        ));
        assert_eq!(Reply::parse(""), Err(ReplyParseError::Empty));
    }

    #[test]
    fn line_breaks_become_spaces() {
        assert_eq!(remove_line_breaks("hello\r\nthere\r\n"), "hello there ");
        assert_eq!(remove_line_breaks("hello\r"), "hello ");
        assert_eq!(remove_line_breaks("a\nb\r\nc"), "a b c");
        assert_eq!(remove_line_breaks("a\r\r\r\nb"), "a   b");
    }
}
