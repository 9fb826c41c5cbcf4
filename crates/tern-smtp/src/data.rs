//! Incremental decoding of the DATA payload (server side).
//!
//! After the `354` reply the driver feeds whatever it has read to
//! [`DataDecoder::decode`]. The decoder consumes bytes until it sees the end
//! of data, and reports how many input bytes it used, so commands that a
//! pipelining client sent after the terminator stay in the driver's buffer.
//!
//! Rules, in the order their errors win:
//!
//! * The message ends only at `<CRLF>.<CRLF>` — a line holding a single dot
//!   that starts right after a real CRLF (or at the very start of the data)
//!   and is itself ended by CRLF. `<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`,
//!   `<CRLF>.<LF>` and friends never end the message: that disagreement
//!   between servers is what SMTP smuggling exploits.
//! * A line that starts with `..` loses its first dot (dot-unstuffing).
//!   Other lines starting with a dot are kept as they are.
//! * Bytes beyond `max_message_size` (counted after unstuffing) are read and
//!   thrown away up to the terminator; then `552 5.3.4 message too big`.
//! * A line longer than `line_length_hard_limit` (excluding its line ending)
//!   gives `500 5.2.3 line too long`.
//! * A bare CR or bare LF is handled per [`InvalidLineEndings`]: `Deny`
//!   answers `552 5.6.0`, `Allow` keeps it, `Fix` turns it into CRLF.
//!
//! The decoder copies runs of ordinary bytes in bulk (found with `memchr2`)
//! and only steps byte by byte around line endings.

use crate::reply::Reply;
use serde::{Deserialize, Serialize};

/// What to do with a bare CR or LF inside DATA (`invalid_line_endings`).
/// Deserialises from the listener parameter strings `"Deny"`, `"Allow"`,
/// `"Fix"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum InvalidLineEndings {
    /// Reject the message with `552 5.6.0`.
    #[default]
    Deny,
    /// Keep the bytes as they are.
    Allow,
    /// Replace each bare CR or LF with CRLF.
    Fix,
}

/// The listener parameters the decoder needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    pub max_message_size: usize,
    pub line_length_hard_limit: usize,
    pub invalid_line_endings: InvalidLineEndings,
}

impl Default for DataLimits {
    /// KumoMTA's listener defaults: 20 MiB, 998 bytes, `Deny`.
    fn default() -> Self {
        Self {
            max_message_size: 20 * 1024 * 1024,
            line_length_hard_limit: crate::line::DEFAULT_LINE_LENGTH_LIMIT,
            invalid_line_endings: InvalidLineEndings::Deny,
        }
    }
}

/// Why a message was refused after its terminator was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("message too big")]
    MessageTooBig,
    #[error("line too long")]
    LineTooLong,
    #[error("message data must use CRLF for line endings")]
    InvalidLineEndings,
}

impl DataError {
    pub fn reply(&self) -> Reply {
        match self {
            Self::MessageTooBig => Reply::message_too_big(),
            Self::LineTooLong => Reply::line_too_long(),
            Self::InvalidLineEndings => Reply::invalid_line_endings(),
        }
    }
}

/// The result of one [`DataDecoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct DataProgress {
    /// Input bytes used; the caller drops exactly these from its buffer.
    pub consumed: usize,
    /// `Some` once the terminator was seen: the message (dot-unstuffed,
    /// ending with the CRLF before the final dot) or why it was refused.
    /// The decoder is then ready for the next message.
    pub finished: Option<Result<Vec<u8>, DataError>>,
}

/// Where the decoder stands relative to line structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Right after a real CRLF (or at the start of DATA).
    LineStart,
    /// A `.` at line start, not yet written.
    Dot,
    /// `.` + CR at line start, not yet written: LF here ends the message.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, a CR was just read and not yet written.
    Cr,
}

/// Incremental DATA decoder; see the module docs.
#[derive(Debug)]
pub struct DataDecoder {
    limits: DataLimits,
    state: State,
    message: Vec<u8>,
    /// Length of the current output line so far.
    line_len: usize,
    too_big: bool,
    line_too_long: bool,
    bad_line_endings: bool,
}

const INITIAL_CAPACITY: usize = 16 * 1024;

impl DataDecoder {
    pub fn new(limits: DataLimits) -> Self {
        Self {
            limits,
            state: State::LineStart,
            message: Vec::with_capacity(INITIAL_CAPACITY.min(limits.max_message_size)),
            line_len: 0,
            too_big: false,
            line_too_long: false,
            bad_line_endings: false,
        }
    }

    pub fn limits(&self) -> DataLimits {
        self.limits
    }

    /// Start over for a new message with the same limits.
    pub fn reset(&mut self) {
        self.state = State::LineStart;
        self.message.clear();
        self.line_len = 0;
        self.too_big = false;
        self.line_too_long = false;
        self.bad_line_endings = false;
    }

    /// Feed the next bytes read from the client.
    pub fn decode(&mut self, input: &[u8]) -> DataProgress {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Mid => {
                    let rest = &input[pos..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.emit_text(rest);
                            pos = input.len();
                        }
                        Some(rel) => {
                            self.emit_text(&rest[..rel]);
                            pos += rel + 1;
                            if rest[rel] == b'\r' {
                                self.state = State::Cr;
                            } else {
                                self.bare_line_ending(b'\n');
                            }
                        }
                    }
                }
                State::Cr => {
                    if input[pos] == b'\n' {
                        pos += 1;
                        self.emit_raw(b"\r\n");
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        // Not consumed: the byte is looked at again in Mid.
                        self.bare_line_ending(b'\r');
                    }
                }
                State::LineStart => {
                    if input[pos] == b'.' {
                        pos += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => match input[pos] {
                    b'\r' => {
                        pos += 1;
                        self.state = State::DotCr;
                    }
                    b'.' => {
                        // `..` at line start: write one dot.
                        pos += 1;
                        self.emit_text(b".");
                        self.state = State::Mid;
                    }
                    _ => {
                        self.emit_text(b".");
                        self.state = State::Mid;
                    }
                },
                State::DotCr => {
                    if input[pos] == b'\n' {
                        pos += 1;
                        return DataProgress {
                            consumed: pos,
                            finished: Some(self.finish()),
                        };
                    }
                    // `.` then a bare CR: not a terminator.
                    self.emit_text(b".");
                    self.bare_line_ending(b'\r');
                }
            }
        }
        DataProgress {
            consumed: pos,
            finished: None,
        }
    }

    /// A CR or LF that is not part of a CRLF pair.
    fn bare_line_ending(&mut self, byte: u8) {
        match self.limits.invalid_line_endings {
            // Deny keeps the bytes like Allow (so the size and line-length
            // verdicts are the same) and refuses the message at the end.
            InvalidLineEndings::Deny | InvalidLineEndings::Allow => {
                if self.limits.invalid_line_endings == InvalidLineEndings::Deny {
                    self.bad_line_endings = true;
                }
                if byte == b'\n' {
                    // A bare LF still ends a line for the length limit.
                    self.emit_raw(b"\n");
                    self.line_len = 0;
                } else {
                    self.emit_text(b"\r");
                }
            }
            InvalidLineEndings::Fix => {
                self.emit_raw(b"\r\n");
                self.line_len = 0;
            }
        }
        // A bare line ending never starts a line that could hold the
        // terminator or be unstuffed: only a real CRLF does.
        self.state = State::Mid;
    }

    /// Line content: counts towards the line length.
    #[inline]
    fn emit_text(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len > self.limits.line_length_hard_limit {
            self.line_too_long = true;
        }
        self.emit_raw(bytes);
    }

    /// Append to the message unless it already outgrew the size limit.
    #[inline]
    fn emit_raw(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.message.len() + bytes.len() > self.limits.max_message_size {
            self.too_big = true;
            // Release the memory now; the rest is read and dropped.
            self.message = Vec::new();
            return;
        }
        self.message.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> Result<Vec<u8>, DataError> {
        let result = if self.too_big {
            Err(DataError::MessageTooBig)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else if self.bad_line_endings {
            Err(DataError::InvalidLineEndings)
        } else {
            Ok(std::mem::replace(
                &mut self.message,
                Vec::with_capacity(INITIAL_CAPACITY.min(self.limits.max_message_size)),
            ))
        };
        self.reset();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(mode: InvalidLineEndings) -> DataLimits {
        DataLimits {
            invalid_line_endings: mode,
            ..DataLimits::default()
        }
    }

    /// Decode all of `input` in one call.
    fn decode_all(limits: DataLimits, input: &[u8]) -> (usize, Option<Result<Vec<u8>, DataError>>) {
        let mut dec = DataDecoder::new(limits);
        let p = dec.decode(input);
        (p.consumed, p.finished)
    }

    fn ok(input: &[u8]) -> Vec<u8> {
        match decode_all(DataLimits::default(), input) {
            (_, Some(Ok(msg))) => msg,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    #[test]
    fn simple_message_and_pipelined_tail() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (consumed, finished) = decode_all(DataLimits::default(), input);
        assert_eq!(finished, Some(Ok(b"Subject: hi\r\n\r\nbody\r\n".to_vec())));
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn invalid_line_endings_parameter_values() {
        use serde::de::value::{Error, StrDeserializer};
        let parse = |text| InvalidLineEndings::deserialize(StrDeserializer::<Error>::new(text));
        assert_eq!(parse("Deny"), Ok(InvalidLineEndings::Deny));
        assert_eq!(parse("Allow"), Ok(InvalidLineEndings::Allow));
        assert_eq!(parse("Fix"), Ok(InvalidLineEndings::Fix));
        assert!(parse("fix").is_err());
        assert_eq!(InvalidLineEndings::default(), InvalidLineEndings::Deny);
    }

    #[test]
    fn empty_message() {
        assert_eq!(ok(b".\r\n"), b"");
    }

    #[test]
    fn dot_unstuffing() {
        assert_eq!(
            ok(b"..leading\r\n...two\r\n.x\r\n..\r\n.\r\n"),
            b".leading\r\n..two\r\n.x\r\n.\r\n"
        );
        // Dots in the middle of a line are untouched.
        assert_eq!(ok(b"a..b\r\n.\r\n"), b"a..b\r\n");
    }

    #[test]
    fn smuggling_sequences_never_terminate() {
        for mode in [
            InvalidLineEndings::Allow,
            InvalidLineEndings::Fix,
            InvalidLineEndings::Deny,
        ] {
            for sneaky in [
                &b"a\n.\nMAIL FROM:<x@y.example>\r\n"[..],
                b"a\r.\rMAIL FROM:<x@y.example>\r\n",
                b"a\n.\r\nMAIL FROM:<x@y.example>\r\n",
                b"a\r\n.\nMAIL FROM:<x@y.example>\r\n",
                b"a\r.\r\nMAIL FROM:<x@y.example>\r\n",
                b"a\r\n.\rMAIL FROM:<x@y.example>\r\n",
                b"a\r\n.\r\r\nMAIL FROM:<x@y.example>\r\n",
                b"a\r\n .\r\nMAIL FROM:<x@y.example>\r\n",
            ] {
                let (consumed, finished) = decode_all(limits(mode), sneaky);
                assert_eq!(finished, None, "{mode:?} {sneaky:?} terminated");
                assert_eq!(consumed, sneaky.len());
            }
        }
    }

    #[test]
    fn bare_line_endings_per_mode() {
        let input = b"a\nb\rc\r\n.\r\n";
        assert_eq!(
            decode_all(limits(InvalidLineEndings::Deny), input).1,
            Some(Err(DataError::InvalidLineEndings))
        );
        assert_eq!(
            decode_all(limits(InvalidLineEndings::Allow), input).1,
            Some(Ok(b"a\nb\rc\r\n".to_vec()))
        );
        assert_eq!(
            decode_all(limits(InvalidLineEndings::Fix), input).1,
            Some(Ok(b"a\r\nb\r\nc\r\n".to_vec()))
        );
        // A dot followed by a bare CR is kept as content, then the mode applies.
        assert_eq!(
            decode_all(limits(InvalidLineEndings::Fix), b".\rx\r\n.\r\n").1,
            Some(Ok(b".\r\nx\r\n".to_vec()))
        );
        assert_eq!(
            decode_all(limits(InvalidLineEndings::Deny), b"ok\r\n.\r\nX\n").1,
            Some(Ok(b"ok\r\n".to_vec())),
            "bytes after the terminator are not the decoder's business"
        );
        assert_eq!(
            DataError::InvalidLineEndings.reply().to_bytes(),
            b"552 5.6.0 message data must use CRLF for line endings\r\n"
        );
    }

    #[test]
    fn line_length_limit() {
        let lim = DataLimits {
            line_length_hard_limit: 5,
            ..DataLimits::default()
        };
        assert_eq!(
            decode_all(lim, b"12345\r\n.\r\n").1,
            Some(Ok(b"12345\r\n".to_vec()))
        );
        assert_eq!(
            decode_all(lim, b"123456\r\n.\r\n").1,
            Some(Err(DataError::LineTooLong))
        );
        // Measured after unstuffing: "..2345" is the 5-byte line ".2345".
        assert_eq!(
            decode_all(lim, b"..2345\r\n.\r\n").1,
            Some(Ok(b".2345\r\n".to_vec()))
        );
        assert_eq!(
            DataError::LineTooLong.reply().to_bytes(),
            b"500 5.2.3 line too long\r\n"
        );
    }

    #[test]
    fn size_limit_reads_to_terminator_then_refuses() {
        let lim = DataLimits {
            max_message_size: 10,
            ..DataLimits::default()
        };
        assert_eq!(
            decode_all(lim, b"12345678\r\n.\r\n").1,
            Some(Ok(b"12345678\r\n".to_vec()))
        );
        let input = b"123456789\r\nmore\r\n.\r\nNOOP\r\n";
        let (consumed, finished) = decode_all(lim, input);
        assert_eq!(finished, Some(Err(DataError::MessageTooBig)));
        assert_eq!(&input[consumed..], b"NOOP\r\n");
        assert_eq!(
            DataError::MessageTooBig.reply().to_bytes(),
            b"552 5.3.4 message too big\r\n"
        );
    }

    #[test]
    fn decoder_is_reusable_after_a_message() {
        let mut dec = DataDecoder::new(DataLimits::default());
        let input = b"one\r\n.\r\ntwo\r\n.\r\n";
        let first = dec.decode(input);
        assert_eq!(first.finished, Some(Ok(b"one\r\n".to_vec())));
        let second = dec.decode(&input[first.consumed..]);
        assert_eq!(second.finished, Some(Ok(b"two\r\n".to_vec())));
        assert_eq!(first.consumed + second.consumed, input.len());
    }

    /// Feed `input` in two pieces split at `split`, as a driver would:
    /// unconsumed bytes stay in the buffer and are offered again.
    fn decode_split(
        limits: DataLimits,
        input: &[u8],
        split: usize,
    ) -> (usize, Option<Result<Vec<u8>, DataError>>) {
        let mut dec = DataDecoder::new(limits);
        let p = dec.decode(&input[..split]);
        if p.finished.is_some() {
            return (p.consumed, p.finished);
        }
        assert_eq!(
            p.consumed, split,
            "an unfinished decode consumes everything"
        );
        let q = dec.decode(&input[split..]);
        (split + q.consumed, q.finished)
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let inputs: Vec<&[u8]> = vec![
            b"Subject: x\r\n\r\n..dots\r\n.x\r\nbody\r\n.\r\nQUIT\r\n",
            b".\r\nNOOP\r\n",
            b"a\n.\nb\r\n.\r.\r\n..\r\n.\r\nRSET\r\n",
            b"line\rwith\rcr\r\n.\r\n",
            b"0123456789abcdef\r\n.\r\n",
            b"x\r\n.\r\r\n.\r\n",
        ];
        let lims = [
            limits(InvalidLineEndings::Deny),
            limits(InvalidLineEndings::Allow),
            limits(InvalidLineEndings::Fix),
            DataLimits {
                line_length_hard_limit: 8,
                ..DataLimits::default()
            },
            DataLimits {
                max_message_size: 12,
                ..DataLimits::default()
            },
        ];
        for lim in lims {
            for input in &inputs {
                let expected = decode_all(lim, input);
                for split in 0..=input.len() {
                    assert_eq!(
                        decode_split(lim, input, split),
                        expected,
                        "{lim:?} {input:?} split at {split}"
                    );
                }
                // One byte at a time.
                let mut dec = DataDecoder::new(lim);
                let mut got = (0, None);
                for (idx, byte) in input.iter().enumerate() {
                    let p = dec.decode(std::slice::from_ref(byte));
                    if p.finished.is_some() {
                        got = (idx + 1, p.finished);
                        break;
                    }
                    got.0 = idx + 1;
                }
                assert_eq!(got, expected, "{lim:?} {input:?} byte by byte");
            }
        }
    }
}
