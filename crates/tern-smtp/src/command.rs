//! Parsing one SMTP command line (without its CRLF) into a [`Command`].
//!
//! Verbs are case-insensitive. Anything the listener does not implement
//! (VRFY, EXPN, HELP, LHLO, unknown verbs) parses to
//! [`Command::Unimplemented`] so the driver can answer `502 5.5.1`. Every
//! parse failure is a [`CommandError`] whose [`CommandError::reply`] is the
//! exact reply KumoMTA sends for it.
//!
//! The parser is deliberately a little lenient where real clients are
//! sloppy (spaces after `FROM:`, a missing pair of angle brackets) and
//! strict where it matters for routing (the address itself goes through
//! [`EnvelopeAddress::parse`], a null recipient is refused).

use crate::reply::Reply;
use tern_types::EnvelopeAddress;

/// One ESMTP parameter of MAIL FROM / RCPT TO, e.g. `BODY=8BITMIME` or
/// `SMTPUTF8` (no value). Parsed and kept, but not interpreted by the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EsmtpParam {
    pub name: String,
    pub value: Option<String>,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    MailFrom {
        address: EnvelopeAddress,
        params: Vec<EsmtpParam>,
    },
    RcptTo {
        address: EnvelopeAddress,
        params: Vec<EsmtpParam>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
    /// `XCLIENT NAME=VALUE ...`: names uppercased, values xtext-decoded.
    XClient(Vec<(String, String)>),
    /// VRFY, EXPN, HELP, LHLO or an unknown verb (uppercased).
    Unimplemented {
        verb: String,
    },
}

/// Why a command line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("Invalid UTF-8 in command")]
    InvalidUtf8,
    #[error("Syntax error in command or arguments: {0}")]
    Syntax(String),
    #[error("Invalid sender address syntax: {0}")]
    InvalidSender(String),
    #[error("Invalid recipient address syntax: {0}")]
    InvalidRecipient(String),
}

impl CommandError {
    /// The reply KumoMTA sends for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::InvalidUtf8 => Reply::invalid_utf8_command(),
            Self::Syntax(detail) => Reply::syntax_error(detail),
            Self::InvalidSender(detail) => Reply::invalid_sender(detail),
            // KumoMTA does not echo the reason for recipients.
            Self::InvalidRecipient(_) => Reply::invalid_recipient(),
        }
    }
}

impl Command {
    /// The verb as KumoMTA names it in logs and `smtp_server_rewrite_response`.
    pub fn verb(&self) -> &str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::MailFrom { .. } => "MAIL FROM",
            Self::RcptTo { .. } => "RCPT TO",
            Self::Data => "DATA",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
            Self::XClient(_) => "XCLIENT",
            Self::Unimplemented { verb } => verb,
        }
    }
}

fn syntax(detail: impl Into<String>) -> CommandError {
    CommandError::Syntax(detail.into())
}

/// Parse one command line (CRLF already removed).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::InvalidUtf8)?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, args) = match line.find([' ', '\t']) {
        Some(idx) => (
            &line[..idx],
            line[idx + 1..].trim_start_matches([' ', '\t']),
        ),
        None => (line, ""),
    };
    if verb.is_empty() {
        return Err(syntax("empty command"));
    }

    let is = |name: &str| verb.eq_ignore_ascii_case(name);
    if is("EHLO") || is("HELO") {
        let domain = single_token(verb, args)?;
        return Ok(if is("EHLO") {
            Command::Ehlo(domain.to_string())
        } else {
            Command::Helo(domain.to_string())
        });
    }
    if is("MAIL") {
        let rest =
            strip_keyword(args, "FROM:").ok_or_else(|| syntax("expected MAIL FROM:<address>"))?;
        let (path, params) = split_path(rest).map_err(CommandError::InvalidSender)?;
        let address = EnvelopeAddress::parse(path).map_err(CommandError::InvalidSender)?;
        return Ok(Command::MailFrom {
            address,
            params: parse_params(params)?,
        });
    }
    if is("RCPT") {
        let rest =
            strip_keyword(args, "TO:").ok_or_else(|| syntax("expected RCPT TO:<address>"))?;
        let (path, params) = split_path(rest).map_err(CommandError::InvalidRecipient)?;
        let address = EnvelopeAddress::parse(path).map_err(CommandError::InvalidRecipient)?;
        if address.is_null() {
            return Err(CommandError::InvalidRecipient(
                "null recipient is not allowed".into(),
            ));
        }
        return Ok(Command::RcptTo {
            address,
            params: parse_params(params)?,
        });
    }
    if is("NOOP") {
        // RFC 5321 allows (and ignores) an argument.
        return Ok(Command::Noop);
    }
    for (name, command) in [
        ("DATA", Command::Data),
        ("RSET", Command::Rset),
        ("QUIT", Command::Quit),
        ("STARTTLS", Command::StartTls),
    ] {
        if is(name) {
            if !args.is_empty() {
                return Err(syntax(format!("{name} takes no arguments")));
            }
            return Ok(command);
        }
    }
    if is("AUTH") {
        let mut parts = args.split([' ', '\t']).filter(|p| !p.is_empty());
        let mechanism = parts
            .next()
            .ok_or_else(|| syntax("AUTH requires a mechanism"))?;
        let initial_response = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return Err(syntax("too many arguments to AUTH"));
        }
        return Ok(Command::Auth {
            mechanism: mechanism.to_string(),
            initial_response,
        });
    }
    if is("XCLIENT") {
        return parse_xclient_args(args).map(Command::XClient);
    }
    Ok(Command::Unimplemented {
        verb: verb.to_ascii_uppercase(),
    })
}

/// The single argument of EHLO/HELO.
fn single_token<'a>(verb: &str, args: &'a str) -> Result<&'a str, CommandError> {
    if args.is_empty() {
        return Err(syntax(format!(
            "{} requires a domain or address literal",
            verb.to_ascii_uppercase()
        )));
    }
    if args.contains([' ', '\t']) {
        return Err(syntax(format!(
            "{} takes exactly one argument",
            verb.to_ascii_uppercase()
        )));
    }
    Ok(args)
}

/// Strip `FROM:` / `TO:` case-insensitively, plus any spaces after it.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start_matches([' ', '\t']))
}

/// Split `<path> params...` into the path (with brackets) and the rest.
/// The closing `>` is searched outside a quoted local part.
fn split_path(rest: &str) -> Result<(&str, &str), String> {
    if rest.is_empty() {
        return Err("missing address".into());
    }
    if rest.starts_with('<') {
        let mut in_quotes = false;
        let mut escaped = false;
        for (idx, ch) in rest.char_indices().skip(1) {
            match ch {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '>' if !in_quotes => {
                    let after = &rest[idx + 1..];
                    if !after.is_empty() && !after.starts_with([' ', '\t']) {
                        return Err(format!("unexpected text after address: {after:?}"));
                    }
                    return Ok((&rest[..=idx], after.trim_start_matches([' ', '\t'])));
                }
                _ => {}
            }
        }
        return Err(format!("'{rest}': missing closing '>'"));
    }
    // No brackets: the address runs to the first space.
    Ok(match rest.find([' ', '\t']) {
        Some(idx) => (
            &rest[..idx],
            rest[idx + 1..].trim_start_matches([' ', '\t']),
        ),
        None => (rest, ""),
    })
}

/// `KEY[=VALUE] ...` after the address.
fn parse_params(text: &str) -> Result<Vec<EsmtpParam>, CommandError> {
    let mut params = Vec::new();
    for token in text.split([' ', '\t']).filter(|t| !t.is_empty()) {
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (token, None),
        };
        let valid_name = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name {
            return Err(syntax(format!("invalid ESMTP parameter {token:?}")));
        }
        params.push(EsmtpParam {
            name: name.to_string(),
            value,
        });
    }
    Ok(params)
}

/// `NAME=VALUE ...` of XCLIENT; names uppercased, values xtext-decoded.
fn parse_xclient_args(args: &str) -> Result<Vec<(String, String)>, CommandError> {
    let mut attrs = Vec::new();
    for token in args.split([' ', '\t']).filter(|t| !t.is_empty()) {
        let (name, value) = token
            .split_once('=')
            .ok_or_else(|| syntax(format!("XCLIENT attribute {token:?} lacks '='")))?;
        if name.is_empty() {
            return Err(syntax(format!("XCLIENT attribute {token:?} lacks a name")));
        }
        let value = xtext_decode(value)
            .ok_or_else(|| syntax(format!("XCLIENT attribute {token:?} has bad xtext")))?;
        attrs.push((name.to_ascii_uppercase(), value));
    }
    if attrs.is_empty() {
        return Err(syntax("XCLIENT requires at least one attribute"));
    }
    Ok(attrs)
}

/// Decode RFC 3461 xtext (`+HH` escapes).
fn xtext_decode(value: &str) -> Option<String> {
    if !value.contains('+') {
        return Some(value.to_string());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'+' {
            let hex = value.get(idx + 1..idx + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            idx += 3;
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        parse_command(line.as_bytes())
    }

    fn wire(err: CommandError) -> String {
        String::from_utf8(err.reply().to_bytes()).unwrap()
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse("HeLo [10.0.0.1]"),
            Ok(Command::Helo("[10.0.0.1]".into()))
        );
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("RSET "), Ok(Command::Rset));
        assert_eq!(parse("noop whatever"), Ok(Command::Noop));
        assert_eq!(parse("Quit"), Ok(Command::Quit));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
    }

    #[test]
    fn unimplemented_verbs() {
        for (line, verb) in [
            ("VRFY postmaster", "VRFY"),
            ("expn list", "EXPN"),
            ("HELP", "HELP"),
            ("LHLO x", "LHLO"),
            ("BDAT 100 LAST", "BDAT"),
            ("frobnicate", "FROBNICATE"),
        ] {
            assert_eq!(
                parse(line),
                Ok(Command::Unimplemented { verb: verb.into() }),
                "{line}"
            );
        }
    }

    #[test]
    fn mail_from_with_params() {
        let cmd = parse("MAIL FROM:<Sender@Example.com> BODY=8BITMIME SMTPUTF8").unwrap();
        let Command::MailFrom { address, params } = cmd else {
            panic!("not MAIL")
        };
        assert_eq!(address.email(), "Sender@Example.com");
        assert_eq!(
            params,
            vec![
                EsmtpParam {
                    name: "BODY".into(),
                    value: Some("8BITMIME".into())
                },
                EsmtpParam {
                    name: "SMTPUTF8".into(),
                    value: None
                }
            ]
        );
        let Command::MailFrom { address, params } = parse("mail from: <>").unwrap() else {
            panic!("not MAIL")
        };
        assert!(address.is_null() && params.is_empty());
        let Command::MailFrom { address, .. } =
            parse("MAIL FROM:<\"odd > name\"@example.com>").unwrap()
        else {
            panic!("not MAIL")
        };
        assert_eq!(address.domain(), "example.com");
    }

    #[test]
    fn rcpt_to() {
        let Command::RcptTo { address, params } = parse("rcpt to:<user@example.com>").unwrap()
        else {
            panic!("not RCPT")
        };
        assert_eq!(address.email(), "user@example.com");
        assert!(params.is_empty());
    }

    #[test]
    fn bad_recipients_get_513() {
        for line in [
            "RCPT TO:<x@example.com:2025>",
            "RCPT TO:<>",
            "RCPT TO:<nodomain>",
            "RCPT TO:<x@example.com",
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(
                wire(err),
                "501 5.1.3 Invalid recipient address syntax\r\n",
                "{line}"
            );
        }
    }

    #[test]
    fn bad_sender_gets_517() {
        let err = parse("MAIL FROM:<x@-bad.example>").unwrap_err();
        assert!(
            wire(err).starts_with("501 5.1.7 Invalid sender address syntax: "),
            "sender error"
        );
    }

    #[test]
    fn syntax_errors() {
        for line in [
            "",
            "MAIL TO:<a@b.example>",
            "RCPT FROM:<a@b.example>",
            "DATA now",
            "EHLO",
            "EHLO a b",
            "AUTH",
            "XCLIENT",
            "XCLIENT ADDR",
            "MAIL FROM:<a@b.example> =x",
        ] {
            let err = parse(line).unwrap_err();
            assert!(
                wire(err).starts_with("501 Syntax error in command or arguments: "),
                "{line:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8() {
        let err = parse_command(b"EHLO \xff\xfe").unwrap_err();
        assert_eq!(err, CommandError::InvalidUtf8);
        assert_eq!(wire(err), "501 5.5.2 Invalid UTF-8 in command\r\n");
    }

    #[test]
    fn auth_and_xclient() {
        assert_eq!(
            parse("AUTH PLAIN AHVzZXIAcGFzcw=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AHVzZXIAcGFzcw==".into())
            })
        );
        assert_eq!(
            parse("auth login"),
            Ok(Command::Auth {
                mechanism: "login".into(),
                initial_response: None
            })
        );
        assert_eq!(
            parse("XCLIENT addr=10.0.0.1 PORT=25 NAME=a+2Bb"),
            Ok(Command::XClient(vec![
                ("ADDR".into(), "10.0.0.1".into()),
                ("PORT".into(), "25".into()),
                ("NAME".into(), "a+b".into()),
            ]))
        );
    }
}
