//! Incremental splitting of SMTP command lines out of a caller-owned buffer.
//!
//! The session driver reads from the socket into a `BytesMut` and calls
//! [`LineReader::next_line`] until it returns `None`; each call hands back one
//! complete line (without its line ending) or a [`LineTooLong`] error. Several
//! pipelined commands arriving in one read simply come out one per call.
//!
//! A line ends at LF; a CR right before it is stripped too. Bare LF is
//! accepted as a command-line terminator (many clients send it), while the
//! strict CRLF rules that matter for smuggling live in the DATA decoder.
//!
//! The length limit counts the bytes before the line ending. Once the
//! buffered part of a line is known to be too long the reader drops it and
//! keeps discarding until that line's end, so memory stays bounded by the
//! limit whatever the client sends. The error is reported once, when the
//! offending line ends, which keeps the reply stream in step with the
//! client's commands.

use bytes::{Buf, Bytes, BytesMut};

/// The default hard limit on a command line, excluding CRLF (RFC 5321 §4.5.3.1.6).
pub const DEFAULT_LINE_LENGTH_LIMIT: usize = 998;

/// A line exceeded the configured limit; answer with
/// [`Reply::line_too_long`](crate::Reply::line_too_long).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line too long")]
pub struct LineTooLong;

impl LineTooLong {
    pub fn reply(&self) -> crate::Reply {
        crate::Reply::line_too_long()
    }
}

/// Splits lines out of a buffer, remembering how far it has already looked.
#[derive(Debug, Clone)]
pub struct LineReader {
    max_len: usize,
    /// Bytes at the front of the buffer already known to contain no LF, so
    /// a line trickling in byte by byte is not rescanned from the start.
    scanned: usize,
    /// The current line was too long and its start was thrown away.
    discarding: bool,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new(DEFAULT_LINE_LENGTH_LIMIT)
    }
}

impl LineReader {
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
            discarding: false,
        }
    }

    pub fn max_line_length(&self) -> usize {
        self.max_len
    }

    /// Change the limit, e.g. 16384 while reading an AUTH response line.
    pub fn set_max_line_length(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Forget any partial-line state. Call this when the buffer is cleared
    /// or handed to another decoder (DATA, TLS handshake).
    pub fn reset(&mut self) {
        self.scanned = 0;
        self.discarding = false;
    }

    /// Whether a partial line is waiting for more input.
    pub fn has_partial_line(&self, buf: &BytesMut) -> bool {
        self.discarding || !buf.is_empty()
    }

    /// Take the next complete line from the front of `buf`.
    ///
    /// Returns `None` when more input is needed, `Some(Ok(line))` for a line
    /// (CRLF or LF removed), `Some(Err(LineTooLong))` once for a line that
    /// exceeded the limit (its bytes are consumed).
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, LineTooLong>> {
        let start = self.scanned.min(buf.len());
        match memchr::memchr(b'\n', &buf[start..]) {
            Some(rel) => {
                let lf = start + rel;
                self.scanned = 0;
                if std::mem::take(&mut self.discarding) {
                    buf.advance(lf + 1);
                    return Some(Err(LineTooLong));
                }
                let mut line = buf.split_to(lf + 1);
                line.truncate(lf);
                if line.last() == Some(&b'\r') {
                    line.truncate(lf - 1);
                }
                if line.len() > self.max_len {
                    return Some(Err(LineTooLong));
                }
                Some(Ok(line.freeze()))
            }
            None => {
                // Allow one extra byte for a CR whose LF has not arrived yet.
                if buf.len() > self.max_len.saturating_add(1) {
                    self.discarding = true;
                    buf.clear();
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(reader: &mut LineReader, buf: &mut BytesMut) -> Vec<Result<Vec<u8>, LineTooLong>> {
        let mut out = Vec::new();
        while let Some(item) = reader.next_line(buf) {
            out.push(item.map(|b| b.to_vec()));
        }
        out
    }

    #[test]
    fn splits_pipelined_lines() {
        let mut reader = LineReader::default();
        let mut buf = BytesMut::from(&b"EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<x@y>\nDA"[..]);
        let lines = drain(&mut reader, &mut buf);
        assert_eq!(
            lines,
            vec![
                Ok(b"EHLO a".to_vec()),
                Ok(b"MAIL FROM:<>".to_vec()),
                Ok(b"RCPT TO:<x@y>".to_vec())
            ]
        );
        assert_eq!(&buf[..], b"DA");
        buf.extend_from_slice(b"TA\r\n");
        assert_eq!(drain(&mut reader, &mut buf), vec![Ok(b"DATA".to_vec())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn limit_is_exclusive_of_crlf() {
        let mut reader = LineReader::new(5);
        let mut buf = BytesMut::from(&b"12345\r\n123456\r\nok\r\n"[..]);
        assert_eq!(
            drain(&mut reader, &mut buf),
            vec![Ok(b"12345".to_vec()), Err(LineTooLong), Ok(b"ok".to_vec())]
        );
    }

    #[test]
    fn overlong_line_is_discarded_with_bounded_memory() {
        let mut reader = LineReader::new(10);
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(b"xxxxxxxx");
            assert!(reader.next_line(&mut buf).is_none());
            assert!(buf.len() <= 19, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"tail\r\nNOOP\r\n");
        assert_eq!(
            drain(&mut reader, &mut buf),
            vec![Err(LineTooLong), Ok(b"NOOP".to_vec())]
        );
    }

    #[test]
    fn byte_at_a_time_gives_same_lines() {
        let input = b"EHLO a\r\nNOOP\r\n0123456789012\r\nQUIT\r\n";
        let mut whole = LineReader::new(12);
        let mut buf = BytesMut::from(&input[..]);
        let expected = drain(&mut whole, &mut buf);
        assert_eq!(expected.len(), 4);
        assert_eq!(expected[2], Err(LineTooLong));

        for split in 0..=input.len() {
            let mut reader = LineReader::new(12);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            buf.extend_from_slice(&input[..split]);
            got.extend(drain(&mut reader, &mut buf));
            buf.extend_from_slice(&input[split..]);
            got.extend(drain(&mut reader, &mut buf));
            assert_eq!(got, expected, "split at {split}");
        }

        let mut reader = LineReader::new(12);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            got.extend(drain(&mut reader, &mut buf));
        }
        assert_eq!(got, expected);
    }
}
