//! Randomised tests: every parser is fed random bytes and must never panic,
//! and the DATA decoder is checked against a slow, obviously-correct model
//! of the same rules on random inputs split into random chunks.
//!
//! The generator is a fixed-seed xorshift so failures reproduce exactly.

use bytes::BytesMut;
use tern_smtp::client::{EhloCapabilities, ReplyReader, encode_data};
use tern_smtp::{
    DataDecoder, DataError, DataLimits, InvalidLineEndings, LineReader, Reply, XClientUpdate,
    decode_auth_plain, parse_command,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Random bytes drawn from `alphabet`.
    fn bytes_from(&mut self, alphabet: &[u8], max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }

    fn any_bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// SMTP-ish fragments so random input reaches deep into the parsers.
const FRAGMENTS: &[&[u8]] = &[
    b"MAIL FROM:",
    b"RCPT TO:",
    b"EHLO ",
    b"AUTH PLAIN ",
    b"XCLIENT ADDR=",
    b"DATA",
    b"<",
    b">",
    b"@",
    b"\"",
    b"\\",
    b"=",
    b"+",
    b" ",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"a",
    b"[",
    b"]",
    b":",
    b"250-",
    b"250 ",
    b"5.7.1 ",
    b"\xff",
    b"\xc3\xa9",
    b"\0",
];

fn smtpish(rng: &mut Rng, pieces: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(pieces + 1) {
        if rng.below(4) == 0 {
            out.extend(rng.any_bytes(3));
        } else {
            out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
    }
    out
}

#[test]
fn parsers_never_panic_on_random_input() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let input = if rng.below(2) == 0 {
            rng.any_bytes(64)
        } else {
            smtpish(&mut rng, 24)
        };

        if let Ok(cmd) = parse_command(&input) {
            let _ = cmd.verb();
            if let tern_smtp::Command::XClient(attrs) = &cmd {
                let _ = XClientUpdate::parse(attrs);
            }
        } else if let Err(err) = parse_command(&input) {
            assert!(err.reply().code == 501);
        }

        let _ = tern_smtp::parse_proxy_header(&input);
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&input);
        let _ = tern_smtp::parse_proxy_header(&v2);
        let mut v1 = b"PROXY ".to_vec();
        v1.extend_from_slice(&input);
        let _ = tern_smtp::parse_proxy_header(&v1);

        let text = String::from_utf8_lossy(&input);
        let _ = decode_auth_plain(&text);
        if let Ok(reply) = Reply::parse(&text) {
            let _ = reply.to_bytes();
            let _ = reply.content_single_line();
            let _ = EhloCapabilities::from_reply(&reply);
        }
        let _ = Reply::from_code_and_text(550, &text).to_bytes();

        let mut lines = LineReader::new(rng.below(40));
        let mut buf = BytesMut::from(&input[..]);
        while lines.next_line(&mut buf).is_some() {}

        let mut replies = ReplyReader::new(1 + rng.below(40), 1 + rng.below(5));
        let mut buf = BytesMut::from(&input[..]);
        while replies.next_reply(&mut buf).is_some() {}

        let mut decoder = DataDecoder::new(DataLimits {
            max_message_size: rng.below(64),
            line_length_hard_limit: rng.below(16),
            invalid_line_endings: [
                InvalidLineEndings::Deny,
                InvalidLineEndings::Allow,
                InvalidLineEndings::Fix,
            ][rng.below(3)],
        });
        let progress = decoder.decode(&input);
        assert!(progress.consumed <= input.len());
    }
}

/// The slow model: find the terminator, then apply the rules to the whole
/// content at once.
fn model(limits: DataLimits, input: &[u8]) -> (usize, Option<Result<Vec<u8>, DataError>>) {
    // Every CRLF in the input is a real line break, so the terminator is the
    // first ".\r\n" at offset 0 or right after a CRLF.
    let end = (0..input.len())
        .find(|&i| input[i..].starts_with(b".\r\n") && (i == 0 || input[..i].ends_with(b"\r\n")));
    let Some(end) = end else {
        return (input.len(), None);
    };
    let content = &input[..end];

    let mut output = Vec::new();
    let mut bad_endings = false;
    // Lines split at real CRLFs; the content is empty or ends with CRLF.
    let mut rest = content;
    while !rest.is_empty() {
        let cut = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let mut line = &rest[..cut];
        rest = &rest[cut + 2..];
        if line.starts_with(b"..") {
            line = &line[1..];
        }
        for &byte in line {
            match byte {
                b'\r' | b'\n' => {
                    bad_endings = true;
                    match limits.invalid_line_endings {
                        InvalidLineEndings::Fix => output.extend_from_slice(b"\r\n"),
                        _ => output.push(byte),
                    }
                }
                _ => output.push(byte),
            }
        }
        output.extend_from_slice(b"\r\n");
    }

    let too_long = match limits.invalid_line_endings {
        InvalidLineEndings::Fix => output
            .split(|&b| b == b'\n')
            .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > limits.line_length_hard_limit),
        _ => {
            // A bare CR is line content, a bare LF ends a line.
            let mut too_long = false;
            for raw in output.split(|&b| b == b'\n') {
                let len = raw.len() - usize::from(raw.ends_with(b"\r"));
                too_long |= len > limits.line_length_hard_limit;
            }
            too_long
        }
    };

    let result = if output.len() > limits.max_message_size {
        Err(DataError::MessageTooBig)
    } else if too_long {
        Err(DataError::LineTooLong)
    } else if bad_endings && limits.invalid_line_endings == InvalidLineEndings::Deny {
        Err(DataError::InvalidLineEndings)
    } else {
        Ok(output)
    };
    (end + 3, Some(result))
}

#[test]
fn data_decoder_matches_model_under_random_chunking() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    // Weighted towards CRLF and dot lines so terminators, stuffing and
    // near-miss terminators all show up often.
    let tokens: &[&[u8]] = &[
        b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"\r\n", b"\r\n", b".\r\n", b"..",
    ];
    // How many inputs ended accepted, refused, unterminated: each kind
    // must be well represented or the comparison proves little.
    let mut outcomes = [0usize; 3];
    for round in 0..30_000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(40) {
            input.extend_from_slice(tokens[rng.below(tokens.len())]);
        }
        // Mostly generous limits so that message contents get compared,
        // sometimes tight ones so that the limit verdicts do.
        let tight = rng.below(4) == 0;
        let limits = DataLimits {
            max_message_size: if tight { 8 + rng.below(40) } else { 1000 },
            line_length_hard_limit: if tight { 1 + rng.below(6) } else { 1000 },
            invalid_line_endings: [
                InvalidLineEndings::Deny,
                InvalidLineEndings::Allow,
                InvalidLineEndings::Fix,
            ][round % 3],
        };
        let expected = model(limits, &input);

        let mut decoder = DataDecoder::new(limits);
        let mut offset = 0;
        let mut got = None;
        while offset < input.len() {
            let chunk = 1 + rng.below(8);
            let stop = (offset + chunk).min(input.len());
            let progress = decoder.decode(&input[offset..stop]);
            offset += progress.consumed;
            if progress.finished.is_some() {
                got = progress.finished;
                break;
            }
            assert_eq!(offset, stop, "unfinished decode must consume its input");
        }
        match &expected.1 {
            Some(Ok(_)) => outcomes[0] += 1,
            Some(Err(_)) => outcomes[1] += 1,
            None => outcomes[2] += 1,
        }
        assert_eq!(
            (offset, got),
            expected,
            "input {:?} limits {limits:?}",
            String::from_utf8_lossy(&input)
        );
    }
    assert!(outcomes.iter().all(|&n| n > 2_000), "{outcomes:?}");
}

#[test]
fn dot_stuffing_round_trips_on_random_messages() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    for _ in 0..10_000 {
        // CRLF-only messages: the encoder's input is canonical mail.
        let mut message = Vec::new();
        for _ in 0..rng.below(6) {
            message.extend(rng.bytes_from(b".ab", 6));
            message.extend_from_slice(b"\r\n");
        }
        let wire = encode_data(&message);
        let mut decoder = DataDecoder::new(DataLimits::default());
        let progress = decoder.decode(&wire);
        assert_eq!(progress.consumed, wire.len());
        assert_eq!(progress.finished, Some(Ok(message)));
    }
}
