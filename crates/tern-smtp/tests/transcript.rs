//! A toy synchronous driver built only from this crate's public API, run
//! against scripted client input. It shows how the pieces fit (the real
//! tokio driver lives in another crate) and checks whole conversations,
//! including fully pipelined ones, byte for byte.

use bytes::{Buf, BytesMut};
use tern_smtp::{
    Command, DataDecoder, DataLimits, LineReader, Reply, SessionState, decode_auth_plain,
    parse_command,
};

const HOST: &str = "mx.test";

enum Mode {
    Commands,
    Data(Box<DataDecoder>),
    AuthResponse,
}

struct ToyServer {
    lines: LineReader,
    state: SessionState,
    mode: Mode,
    buf: BytesMut,
    out: Vec<u8>,
    closed: bool,
    messages: Vec<Vec<u8>>,
}

impl ToyServer {
    fn new() -> Self {
        let mut out = Vec::new();
        Reply::banner(HOST, "KumoMTA").write_to(&mut out);
        Self {
            lines: LineReader::default(),
            state: SessionState::new(),
            mode: Mode::Commands,
            buf: BytesMut::new(),
            out,
            closed: false,
            messages: Vec::new(),
        }
    }

    fn send(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
        if reply.closes_connection() {
            self.closed = true;
        }
    }

    /// Feed bytes "read from the socket"; returns everything written back.
    fn feed(&mut self, input: &[u8]) -> String {
        self.buf.extend_from_slice(input);
        while !self.closed {
            match &mut self.mode {
                Mode::Data(decoder) => {
                    let progress = decoder.decode(&self.buf);
                    self.buf.advance(progress.consumed);
                    let Some(result) = progress.finished else {
                        break;
                    };
                    self.mode = Mode::Commands;
                    self.state.on_data_finished();
                    match result {
                        Ok(message) => {
                            self.messages.push(message);
                            let id = format!("id{}", self.messages.len());
                            self.send(Reply::queued(&[id], false));
                        }
                        Err(err) => self.send(err.reply()),
                    }
                }
                Mode::AuthResponse => {
                    let Some(line) = self.lines.next_line(&mut self.buf) else {
                        break;
                    };
                    self.lines.set_max_line_length(998);
                    self.mode = Mode::Commands;
                    let reply = match line {
                        Err(too_long) => too_long.reply(),
                        Ok(line) => self.finish_auth(&String::from_utf8_lossy(&line)),
                    };
                    self.send(reply);
                }
                Mode::Commands => {
                    let Some(line) = self.lines.next_line(&mut self.buf) else {
                        break;
                    };
                    let reply = match line {
                        Err(too_long) => too_long.reply(),
                        Ok(line) => match parse_command(&line) {
                            Err(err) => err.reply(),
                            Ok(cmd) => self.command(cmd),
                        },
                    };
                    self.send(reply);
                }
            }
        }
        String::from_utf8(std::mem::take(&mut self.out)).unwrap()
    }

    fn finish_auth(&mut self, response: &str) -> Reply {
        match decode_auth_plain(response) {
            Err(reply) => reply,
            Ok(auth) if auth.authc == "user" && auth.password == "pass" => {
                self.state.on_authenticated();
                Reply::auth_ok()
            }
            Ok(_) => Reply::auth_invalid(),
        }
    }

    fn command(&mut self, cmd: Command) -> Reply {
        let result = match cmd {
            Command::Ehlo(domain) => {
                self.state.on_ehlo(&domain);
                Ok(Reply::ehlo(
                    HOST,
                    &domain,
                    &self.state.ehlo_extensions(false),
                ))
            }
            Command::Helo(domain) => {
                self.state.on_ehlo(&domain);
                Ok(Reply::helo(&domain))
            }
            Command::MailFrom { address, .. } => self.state.check_mail().map(|()| {
                self.state.on_mail_accepted();
                Reply::address_ok(address.email())
            }),
            Command::RcptTo { address, .. } => self
                .state
                .check_rcpt()
                .and_then(|()| self.state.reserve_recipient(2, 100, HOST))
                .map(|()| {
                    self.state.on_rcpt_accepted();
                    Reply::address_ok(address.email())
                }),
            Command::Data => self.state.check_data().map(|()| {
                self.mode = Mode::Data(Box::new(DataDecoder::new(DataLimits::default())));
                Reply::start_data()
            }),
            Command::Rset => {
                self.state.on_rset();
                Ok(Reply::rset())
            }
            Command::Noop => Ok(Reply::noop()),
            Command::Quit => {
                self.closed = true;
                Ok(Reply::quit())
            }
            Command::StartTls => self.state.check_starttls().map(|()| {
                // Bytes pipelined after STARTTLS were sent in clear text
                // and must not be acted on after the handshake.
                self.buf.clear();
                self.lines.reset();
                self.state.on_tls_established();
                Reply::starttls_ready()
            }),
            Command::Auth {
                mechanism,
                initial_response,
            } => self
                .state
                .check_auth(&mechanism)
                .map(|()| match initial_response {
                    Some(response) => self.finish_auth(&response),
                    None => {
                        self.mode = Mode::AuthResponse;
                        self.lines.set_max_line_length(16384);
                        Reply::auth_continue()
                    }
                }),
            Command::XClient(_) => self.state.check_xclient(false).map(|()| Reply::noop()),
            Command::Unimplemented { .. } => Ok(Reply::unimplemented()),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

#[test]
fn fully_pipelined_transaction_in_one_read() {
    let mut server = ToyServer::new();
    assert_eq!(server.feed(b""), "220 mx.test KumoMTA\r\n");
    let out = server.feed(
        b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n\
          DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n",
    );
    assert_eq!(
        out,
        "250-mx.test Aloha client.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n\
         250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n\
         250 OK <a@client.test>\r\n250 OK <b@mx.test>\r\n\
         354 Send body; end with CRLF.CRLF\r\n250 OK ids=id1\r\n\
         250 the goggles do nothing\r\n221 So long, and thanks for all the fish!\r\n"
    );
    assert_eq!(
        server.messages,
        vec![b"Subject: hi\r\n\r\n.dot\r\n".to_vec()]
    );
}

#[test]
fn same_conversation_byte_by_byte() {
    let script: &[u8] =
        b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let mut whole = ToyServer::new();
    let expected = whole.feed(script);
    let mut trickle = ToyServer::new();
    let mut got = String::new();
    for byte in script {
        got.push_str(&trickle.feed(std::slice::from_ref(byte)));
    }
    assert_eq!(got, expected);
    assert_eq!(trickle.messages, whole.messages);
}

#[test]
fn smuggled_commands_stay_inside_the_message() {
    let mut server = ToyServer::new();
    server.feed(b"");
    let out = server.feed(
        b"MAIL FROM:<a@c.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n\
          hello\n.\nMAIL FROM:<evil@c.test>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\n\
          evil\r\n.\r\n",
    );
    // One transaction only, refused for its bare LFs; no second MAIL FROM.
    assert_eq!(
        out,
        "250 OK <a@c.test>\r\n250 OK <b@mx.test>\r\n354 Send body; end with CRLF.CRLF\r\n\
         552 5.6.0 message data must use CRLF for line endings\r\n"
    );
    assert!(server.messages.is_empty());
}

#[test]
fn ordering_errors_and_unimplemented() {
    let mut server = ToyServer::new();
    server.feed(b"");
    let out = server.feed(
        b"RCPT TO:<b@mx.test>\r\nDATA\r\nMAIL FROM:<a@c.test>\r\nMAIL FROM:<a@c.test>\r\n\
          DATA\r\nRCPT TO:<x@mx.test:2025>\r\nVRFY b\r\nXCLIENT ADDR=1.2.3.4\r\n\
          RCPT TO:<b1@mx.test>\r\nRCPT TO:<b2@mx.test>\r\nRCPT TO:<b3@mx.test>\r\nRSET\r\n",
    );
    assert_eq!(
        out,
        "503 5.5.0 MAIL FROM must be issued first\r\n\
         503 5.5.0 MAIL FROM must be issued first\r\n\
         250 OK <a@c.test>\r\n\
         503 5.5.0 MAIL FROM already issued; you must RSET first\r\n\
         503 5.5.0 RCPT TO must be issued first\r\n\
         501 5.1.3 Invalid recipient address syntax\r\n\
         502 5.5.1 Command unimplemented\r\n\
         550 insufficient authorization\r\n\
         250 OK <b1@mx.test>\r\n250 OK <b2@mx.test>\r\n\
         452 4.5.3 too many recipients\r\n\
         250 Reset state\r\n"
    );
}

#[test]
fn starttls_then_auth_plain_with_continuation() {
    let mut server = ToyServer::new();
    server.feed(b"");
    let out = server.feed(b"EHLO c\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    assert!(out.ends_with("524 5.7.11 AUTH PLAIN requires an encrypted channel\r\n"));
    // The pipelined NOOP after STARTTLS is dropped, not executed.
    let out = server.feed(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(out, "220 Ready to Start TLS\r\n");
    let out = server.feed(b"EHLO c\r\nAUTH PLAIN\r\nAHVzZXIAd3Jvbmc=\r\nAUTH PLAIN\r\n*\r\n");
    assert!(out.contains("250 AUTH PLAIN\r\n"), "{out}");
    assert!(out.ends_with(
        "334 \r\n535 5.7.8 AUTH invalid\r\n334 \r\n501 5.5.0 AUTH cancelled by client\r\n"
    ));
    let out = server.feed(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\nAUTH PLAIN x\r\nSTARTTLS\r\n");
    assert_eq!(
        out,
        "235 2.7.0 AUTH OK!\r\n503 5.5.1 AUTH me once, can't get authed again!\r\n\
         501 Cannot STARTTLS as TLS is already active\r\n"
    );
}

#[test]
fn long_lines_and_bad_utf8_keep_the_session_in_step() {
    let mut server = ToyServer::new();
    server.feed(b"");
    let mut input = b"NOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend_from_slice(b"\r\nEHLO \xff\r\nNOOP\r\n");
    assert_eq!(
        server.feed(&input),
        "500 5.2.3 line too long\r\n501 5.5.2 Invalid UTF-8 in command\r\n\
         250 the goggles do nothing\r\n"
    );
}
