//! The response value every delivery outcome is reported with.
//!
//! A log record's `response` (spec §12.2) needs a code, an optional enhanced
//! code, the content on one line and the command the reply answered. Remote
//! replies, internal failures (`KumoMTA internal: ...`) and plan failures all
//! end up as a [`DeliveryResponse`], so the queue runtime logs them the same
//! way.

use tern_smtp::{EnhancedCode, Reply};

/// What the log record's `response` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryResponse {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// The reply text with line breaks turned into spaces (how KumoMTA logs
    /// multi-line replies).
    pub content: String,
    /// The command line as sent, CRLF included (`"RCPT TO:<a@b>\r\n"`,
    /// `".\r\n"` for the end of data); `None` for internal failures.
    pub command: Option<String>,
}

impl DeliveryResponse {
    /// A response made by Tern itself rather than by the peer.
    pub fn internal(code: u16, enhanced: Option<EnhancedCode>, content: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            content: content.into(),
            command: None,
        }
    }

    /// The response for a peer's reply to `command`.
    pub fn from_reply(reply: &Reply, command: Option<&str>) -> Self {
        Self {
            code: reply.code,
            enhanced: reply.enhanced,
            content: reply.content_single_line(),
            command: command.map(str::to_string),
        }
    }

    /// `code[ x.y.z] content`, the one-line form used in summaries and tests.
    pub fn to_single_line(&self) -> String {
        match self.enhanced {
            Some(enhanced) => format!("{} {enhanced} {}", self.code, self.content),
            None => format!("{} {}", self.code, self.content),
        }
    }

    /// 4xx, or any code outside 2xx/5xx: worth retrying.
    pub fn is_transient(&self) -> bool {
        !self.is_permanent() && !(200..300).contains(&self.code)
    }

    /// 5xx other than 503 (spec §7.5: 503 is a protocol desync, transient).
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code) && self.code != 503
    }
}

impl std::fmt::Display for DeliveryResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_single_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_multi_line_reply() {
        let reply = Reply::parse("550-5.7.1 first line\r\n550 5.7.1 second line\r\n").unwrap();
        let response = DeliveryResponse::from_reply(&reply, Some("RCPT TO:<a@b.example>\r\n"));
        assert_eq!(response.code, 550);
        assert_eq!(response.enhanced, Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(response.content, "first line second line");
        assert_eq!(
            response.command.as_deref(),
            Some("RCPT TO:<a@b.example>\r\n")
        );
        assert_eq!(
            response.to_single_line(),
            "550 5.7.1 first line second line"
        );
        assert!(response.is_permanent() && !response.is_transient());
    }

    #[test]
    fn classification_of_codes() {
        let r = |code| DeliveryResponse::internal(code, None, "x");
        assert!(r(503).is_transient() && !r(503).is_permanent());
        // A 3xx where a 2xx/4xx/5xx was expected is a protocol desync:
        // retried, never bounced (spec §7.5).
        for code in [300, 334, 354, 399] {
            assert!(r(code).is_transient() && !r(code).is_permanent(), "{code}");
        }
        for code in [500, 502, 504, 550, 554, 599] {
            assert!(r(code).is_permanent() && !r(code).is_transient(), "{code}");
        }
        assert!(r(451).is_transient());
        assert!(r(400).is_transient());
        assert!(!r(250).is_transient() && !r(250).is_permanent());
        assert_eq!(r(400).to_single_line(), "400 x");
    }
}
