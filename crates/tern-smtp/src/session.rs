//! Transaction ordering for the ESMTP listener, plus the AUTH PLAIN and
//! XCLIENT argument decoders.
//!
//! [`SessionState`] holds what the ordering rules depend on (greeting,
//! open transaction, recipient counts, TLS, authentication). The driver asks
//! a `check_*` method before acting on a command — an `Err` is the exact
//! reply to send — and reports what happened with an `on_*` method. Policy
//! events, relaying and I/O stay in the driver; this type never decides
//! anything that needs them.

use crate::reply::Reply;
use base64::Engine;
use std::net::{IpAddr, SocketAddr};

/// The EHLO extensions that are always advertised, in KumoMTA's order.
const BASE_EXTENSIONS: [&str; 4] = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"];

/// The XCLIENT line advertised when `allow_xclient` is set.
pub const XCLIENT_EXTENSION: &str = "XCLIENT ADDR PORT DESTADDR DESTPORT";

/// Per-connection protocol state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionState {
    ehlo_domain: Option<String>,
    in_transaction: bool,
    /// Recipients accepted in the current transaction.
    recipients: usize,
    /// RCPT commands counted against `max_messages_per_connection`.
    connection_rcpt_count: usize,
    tls_active: bool,
    authenticated: bool,
}

impl SessionState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ehlo_domain(&self) -> Option<&str> {
        self.ehlo_domain.as_deref()
    }

    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    pub fn recipient_count(&self) -> usize {
        self.recipients
    }

    pub fn connection_rcpt_count(&self) -> usize {
        self.connection_rcpt_count
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The default EHLO extension list: PIPELINING, ENHANCEDSTATUSCODES,
    /// 8BITMIME, SMTPUTF8, then STARTTLS (no TLS yet) or AUTH PLAIN (TLS
    /// active), then the XCLIENT line if allowed.
    pub fn ehlo_extensions(&self, allow_xclient: bool) -> Vec<String> {
        let mut list: Vec<String> = BASE_EXTENSIONS.iter().map(|s| s.to_string()).collect();
        list.push(
            if self.tls_active {
                "AUTH PLAIN"
            } else {
                "STARTTLS"
            }
            .to_string(),
        );
        if allow_xclient {
            list.push(XCLIENT_EXTENSION.to_string());
        }
        list
    }

    /// EHLO/HELO accepted: remember the domain. A new greeting also
    /// abandons any open transaction (RFC 5321 §4.1.4).
    pub fn on_ehlo(&mut self, domain: &str) {
        self.ehlo_domain = Some(domain.to_string());
        self.clear_transaction();
    }

    /// MAIL FROM is only valid outside a transaction.
    pub fn check_mail(&self) -> Result<(), Reply> {
        if self.in_transaction {
            return Err(Reply::mail_already_issued());
        }
        Ok(())
    }

    pub fn on_mail_accepted(&mut self) {
        self.in_transaction = true;
        self.recipients = 0;
    }

    /// RCPT TO needs MAIL FROM first.
    pub fn check_rcpt(&self) -> Result<(), Reply> {
        if !self.in_transaction {
            return Err(Reply::mail_first());
        }
        Ok(())
    }

    /// The recipient limits, checked after the relay check (spec §3.4 RCPT
    /// steps 2–4). On success the connection RCPT counter is incremented,
    /// before the `smtp_server_rcpt_to` event runs, as KumoMTA does.
    pub fn reserve_recipient(
        &mut self,
        max_recipients_per_message: usize,
        max_messages_per_connection: usize,
        hostname: &str,
    ) -> Result<(), Reply> {
        if self.recipients >= max_recipients_per_message {
            return Err(Reply::too_many_recipients());
        }
        if self.connection_rcpt_count >= max_messages_per_connection {
            return Err(if self.recipients == 0 {
                Reply::too_many_recipients_on_connection_closing(hostname)
            } else {
                Reply::too_many_recipients_on_connection()
            });
        }
        self.connection_rcpt_count += 1;
        Ok(())
    }

    /// The recipient was accepted (`250 OK <addr>` sent).
    pub fn on_rcpt_accepted(&mut self) {
        self.recipients += 1;
    }

    /// DATA needs MAIL FROM and at least one recipient.
    pub fn check_data(&self) -> Result<(), Reply> {
        if !self.in_transaction {
            return Err(Reply::mail_first());
        }
        if self.recipients == 0 {
            return Err(Reply::rcpt_first());
        }
        Ok(())
    }

    /// The DATA phase ended (accepted or not): the transaction is consumed.
    pub fn on_data_finished(&mut self) {
        self.clear_transaction();
    }

    pub fn on_rset(&mut self) {
        self.clear_transaction();
    }

    pub fn check_starttls(&self) -> Result<(), Reply> {
        if self.tls_active {
            return Err(Reply::tls_already_active());
        }
        Ok(())
    }

    /// The TLS handshake succeeded. Everything learnt in clear text is
    /// forgotten (RFC 3207 §4.2); the client must EHLO again.
    pub fn on_tls_established(&mut self) {
        self.tls_active = true;
        self.ehlo_domain = None;
        self.clear_transaction();
    }

    /// AUTH ordering rules of spec §3.11, in KumoMTA's order.
    pub fn check_auth(&self, mechanism: &str) -> Result<(), Reply> {
        if self.authenticated {
            return Err(Reply::auth_already_done());
        }
        if self.in_transaction {
            return Err(Reply::auth_in_transaction());
        }
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return Err(Reply::auth_mechanism_not_supported(mechanism));
        }
        if !self.tls_active {
            return Err(Reply::auth_requires_tls());
        }
        Ok(())
    }

    pub fn on_authenticated(&mut self) {
        self.authenticated = true;
    }

    /// XCLIENT needs `allow_xclient` and no open transaction.
    pub fn check_xclient(&self, allow_xclient: bool) -> Result<(), Reply> {
        if !allow_xclient {
            return Err(Reply::xclient_not_allowed());
        }
        if self.in_transaction {
            return Err(Reply::xclient_in_transaction());
        }
        Ok(())
    }

    /// XCLIENT applied: the session restarts as if the client had just
    /// connected (the banner is re-sent), keeping TLS and authentication.
    pub fn on_xclient(&mut self) {
        self.ehlo_domain = None;
        self.clear_transaction();
    }

    fn clear_transaction(&mut self) {
        self.in_transaction = false;
        self.recipients = 0;
    }
}

/// The decoded fields of an AUTH PLAIN response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthPlain {
    /// Authorization identity; the authentication identity when sent empty.
    pub authz: String,
    /// Authentication identity (the user name).
    pub authc: String,
    pub password: String,
}

/// Decode the AUTH PLAIN response (initial response or the line sent after
/// `334 `): `*` cancels, then base64, then exactly three NUL-separated
/// UTF-8 fields. An `Err` is the exact reply to send.
pub fn decode_auth_plain(response: &str) -> Result<AuthPlain, Reply> {
    let response = response.trim();
    if response == "*" {
        return Err(Reply::auth_cancelled());
    }
    // RFC 4954: "=" stands for an empty initial response.
    let encoded = if response == "=" { "" } else { response };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| Reply::auth_invalid_base64())?;
    let fields: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
    let [authz, authc, password] = fields[..] else {
        return Err(Reply::auth_invalid_plain());
    };
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| Reply::auth_invalid_plain_utf8())
    };
    let authc = text(authc)?;
    let authz = match text(authz)? {
        empty if empty.is_empty() => authc.clone(),
        authz => authz,
    };
    Ok(AuthPlain {
        authz,
        authc,
        password: text(password)?,
    })
}

/// The address changes requested by an XCLIENT command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XClientUpdate {
    /// `ADDR`: new peer IP (`received_from`).
    pub addr: Option<IpAddr>,
    /// `PORT`: new peer port.
    pub port: Option<u16>,
    /// `DESTADDR`: new local IP (`received_via`).
    pub dest_addr: Option<IpAddr>,
    /// `DESTPORT`: new local port.
    pub dest_port: Option<u16>,
}

impl XClientUpdate {
    /// Check the attributes of an XCLIENT command. Unknown names give
    /// `501 parameter <NAME> is not supported`, bad values
    /// `501 <NAME> <value> is invalid`.
    pub fn parse(attrs: &[(String, String)]) -> Result<Self, Reply> {
        let mut update = Self::default();
        for (name, value) in attrs {
            let invalid = || Reply::xclient_invalid_value(name, value);
            match name.to_ascii_uppercase().as_str() {
                "ADDR" => update.addr = Some(parse_xclient_ip(value).ok_or_else(invalid)?),
                "PORT" => update.port = Some(value.parse().map_err(|_| invalid())?),
                "DESTADDR" => update.dest_addr = Some(parse_xclient_ip(value).ok_or_else(invalid)?),
                "DESTPORT" => update.dest_port = Some(value.parse().map_err(|_| invalid())?),
                _ => return Err(Reply::xclient_unsupported_parameter(name)),
            }
        }
        Ok(update)
    }

    /// The peer address after the update (`received_from`).
    pub fn apply_to_peer(&self, peer: SocketAddr) -> SocketAddr {
        apply(peer, self.addr, self.port)
    }

    /// The local address after the update (`received_via`).
    pub fn apply_to_local(&self, local: SocketAddr) -> SocketAddr {
        apply(local, self.dest_addr, self.dest_port)
    }
}

fn apply(addr: SocketAddr, ip: Option<IpAddr>, port: Option<u16>) -> SocketAddr {
    SocketAddr::new(ip.unwrap_or(addr.ip()), port.unwrap_or(addr.port()))
}

/// An IP as XCLIENT sends it; IPv6 may carry Postfix's `IPV6:` prefix.
fn parse_xclient_ip(value: &str) -> Option<IpAddr> {
    let text = match value.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPV6:") => &value[5..],
        _ => value,
    };
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Result<(), Reply>) -> String {
        String::from_utf8(r.unwrap_err().to_bytes()).unwrap()
    }

    #[test]
    fn extension_list_order() {
        let mut s = SessionState::new();
        assert_eq!(
            s.ehlo_extensions(false),
            [
                "PIPELINING",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "SMTPUTF8",
                "STARTTLS"
            ]
        );
        assert_eq!(
            s.ehlo_extensions(true).last().map(String::as_str),
            Some("XCLIENT ADDR PORT DESTADDR DESTPORT")
        );
        s.on_tls_established();
        assert_eq!(
            s.ehlo_extensions(true),
            [
                "PIPELINING",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "SMTPUTF8",
                "AUTH PLAIN",
                "XCLIENT ADDR PORT DESTADDR DESTPORT"
            ]
        );
    }

    #[test]
    fn transaction_ordering() {
        let mut s = SessionState::new();
        // Greeting is not required before MAIL.
        assert!(s.check_mail().is_ok());
        assert_eq!(
            text(s.check_rcpt()),
            "503 5.5.0 MAIL FROM must be issued first\r\n"
        );
        assert_eq!(
            text(s.check_data()),
            "503 5.5.0 MAIL FROM must be issued first\r\n"
        );
        s.on_mail_accepted();
        assert_eq!(
            text(s.check_mail()),
            "503 5.5.0 MAIL FROM already issued; you must RSET first\r\n"
        );
        assert_eq!(
            text(s.check_data()),
            "503 5.5.0 RCPT TO must be issued first\r\n"
        );
        assert!(s.check_rcpt().is_ok());
        s.reserve_recipient(10, 10, "h").unwrap();
        s.on_rcpt_accepted();
        assert!(s.check_data().is_ok());
        s.on_data_finished();
        assert!(!s.in_transaction());
        assert!(s.check_mail().is_ok());
        s.on_mail_accepted();
        s.on_rset();
        assert!(s.check_mail().is_ok());
        s.on_mail_accepted();
        s.on_ehlo("again.example");
        assert!(!s.in_transaction());
        assert_eq!(s.ehlo_domain(), Some("again.example"));
    }

    #[test]
    fn recipient_limits() {
        let mut s = SessionState::new();
        s.on_mail_accepted();
        s.reserve_recipient(2, 3, "mx").unwrap();
        s.on_rcpt_accepted();
        s.reserve_recipient(2, 3, "mx").unwrap();
        s.on_rcpt_accepted();
        assert_eq!(
            text(s.reserve_recipient(2, 3, "mx")),
            "452 4.5.3 too many recipients\r\n"
        );
        s.on_data_finished();
        s.on_mail_accepted();
        s.reserve_recipient(2, 3, "mx").unwrap();
        // A rejected RCPT (policy) still counts against the connection.
        assert_eq!(s.connection_rcpt_count(), 3);
        assert_eq!(
            text(s.reserve_recipient(2, 3, "mx")),
            "421 4.5.3 mx too many recipients on this connection\r\n"
        );
        s.on_rcpt_accepted();
        assert_eq!(
            text(s.reserve_recipient(2, 3, "mx")),
            "452 4.5.3 too many recipients on this connection\r\n"
        );
    }

    #[test]
    fn starttls_rules() {
        let mut s = SessionState::new();
        s.on_ehlo("c.example");
        assert!(s.check_starttls().is_ok());
        s.on_tls_established();
        assert_eq!(s.ehlo_domain(), None);
        assert_eq!(
            text(s.check_starttls()),
            "501 Cannot STARTTLS as TLS is already active\r\n"
        );
    }

    #[test]
    fn auth_rules_in_order() {
        let mut s = SessionState::new();
        assert_eq!(
            text(s.check_auth("PLAIN")),
            "524 5.7.11 AUTH PLAIN requires an encrypted channel\r\n"
        );
        assert_eq!(
            text(s.check_auth("LOGIN")),
            "504 5.5.4 AUTH LOGIN not supported\r\n"
        );
        s.on_mail_accepted();
        assert_eq!(
            text(s.check_auth("PLAIN")),
            "503 5.5.1 AUTH not permitted inside a transaction\r\n"
        );
        s.on_rset();
        s.on_tls_established();
        assert!(s.check_auth("plain").is_ok());
        s.on_authenticated();
        assert_eq!(
            text(s.check_auth("PLAIN")),
            "503 5.5.1 AUTH me once, can't get authed again!\r\n"
        );
    }

    #[test]
    fn auth_plain_decoding() {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_auth_plain(&b64(b"\0user\0secret")),
            Ok(AuthPlain {
                authz: "user".into(),
                authc: "user".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            decode_auth_plain(&b64(b"admin\0user\0secret"))
                .unwrap()
                .authz,
            "admin"
        );
        let err =
            |s: &str| String::from_utf8(decode_auth_plain(s).unwrap_err().to_bytes()).unwrap();
        assert_eq!(err("*"), "501 5.5.0 AUTH cancelled by client\r\n");
        assert_eq!(err("!!notbase64"), "501 5.5.2 Invalid base64 response\r\n");
        assert_eq!(
            err(&b64(b"user\0secret")),
            "501 5.5.2 Invalid decoded PLAIN response\r\n"
        );
        assert_eq!(
            err(&b64(b"a\0b\0c\0d")),
            "501 5.5.2 Invalid decoded PLAIN response\r\n"
        );
        assert_eq!(err("="), "501 5.5.2 Invalid decoded PLAIN response\r\n");
        assert_eq!(
            err(&b64(b"\0us\xffer\0secret")),
            "501 5.5.2 Invalid UTF8 in decoded PLAIN response\r\n"
        );
    }

    #[test]
    fn xclient_rules_and_attributes() {
        let mut s = SessionState::new();
        assert_eq!(
            text(s.check_xclient(false)),
            "550 insufficient authorization\r\n"
        );
        s.on_mail_accepted();
        assert_eq!(
            text(s.check_xclient(true)),
            "503 mail transaction in progress\r\n"
        );
        s.on_rset();
        assert!(s.check_xclient(true).is_ok());

        let attrs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let update = XClientUpdate::parse(&attrs(&[
            ("ADDR", "192.0.2.7"),
            ("PORT", "4242"),
            ("DESTADDR", "IPV6:2001:db8::1"),
            ("DESTPORT", "25"),
        ]))
        .unwrap();
        let peer: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:2025".parse().unwrap();
        assert_eq!(update.apply_to_peer(peer).to_string(), "192.0.2.7:4242");
        assert_eq!(update.apply_to_local(local).to_string(), "[2001:db8::1]:25");

        let only_addr = XClientUpdate::parse(&attrs(&[("ADDR", "10.1.1.1")])).unwrap();
        assert_eq!(only_addr.apply_to_peer(peer).to_string(), "10.1.1.1:1000");

        let err = |list: &[(&str, &str)]| {
            String::from_utf8(XClientUpdate::parse(&attrs(list)).unwrap_err().to_bytes()).unwrap()
        };
        assert_eq!(
            err(&[("NAME", "x")]),
            "501 parameter NAME is not supported\r\n"
        );
        assert_eq!(err(&[("ADDR", "nope")]), "501 ADDR nope is invalid\r\n");
        assert_eq!(err(&[("PORT", "70000")]), "501 PORT 70000 is invalid\r\n");
    }
}
