//! Sans-IO DKIM canonicalization (RFC 6376 §3.4): splitting a message into
//! header fields and body, canonicalizing selected header fields into the
//! signing input, and hashing the canonical body without building it.
//!
//! Lines may end in CRLF or a bare LF; canonical output always uses CRLF,
//! which is what the message looks like once it is sent over SMTP.
//!
//! The body is hashed line by line with empty lines held back, so that the
//! trailing empty lines that both algorithms ignore are never hashed. Under
//! relaxed canonicalization a line of only spaces and tabs becomes empty
//! and is dropped with them when it sits at the end of the body (the case
//! `mail-auth` 0.13.3 gets wrong).

use crate::config::Canonicalization;
use memchr::memchr;
use ring::digest;

/// One header field: its name (as written, trailing whitespace removed) and
/// its full text from the name to the end of its last line, line endings
/// included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderField<'a> {
    pub name: &'a [u8],
    pub raw: &'a [u8],
}

/// Split `message` into its header fields and its body (the bytes after the
/// first empty line; empty if there is none).
pub(crate) fn split_message(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut fields: Vec<HeaderField<'_>> = Vec::with_capacity(24);
    // Start of the field being collected, so continuation lines extend it.
    let mut current: Option<(usize, usize)> = None; // (field start, name end)
    let mut pos = 0;
    let mut body_start = message.len();
    while pos < message.len() {
        let end = memchr(b'\n', &message[pos..]).map_or(message.len(), |i| pos + i + 1);
        let content = strip_line_ending(&message[pos..end]);
        if content.is_empty() {
            body_start = end;
            break;
        }
        if matches!(content[0], b' ' | b'\t') {
            // Continuation of the current field; a stray one before any
            // field is dropped.
        } else {
            push_field(&mut fields, message, current, pos);
            // A line without a colon gets an empty name, which no signed
            // header name can match.
            let name_end = memchr(b':', content).map_or(pos, |i| pos + i);
            current = Some((pos, name_end));
        }
        pos = end;
    }
    push_field(&mut fields, message, current, pos.min(body_start));
    (fields, &message[body_start.min(message.len())..])
}

fn push_field<'a>(
    fields: &mut Vec<HeaderField<'a>>,
    message: &'a [u8],
    current: Option<(usize, usize)>,
    end: usize,
) {
    if let Some((start, name_end)) = current {
        fields.push(HeaderField {
            name: trim_trailing_wsp(&message[start..name_end]),
            raw: &message[start..end],
        });
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_trailing_wsp(bytes: &[u8]) -> &[u8] {
    let keep = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    &bytes[..keep]
}

/// Append the canonical form of one header field to `out`, without a
/// trailing CRLF (the caller adds it, except for the DKIM-Signature field
/// itself, which is hashed without one).
pub(crate) fn canonicalize_header(out: &mut Vec<u8>, field: &[u8], canon: Canonicalization) {
    match canon {
        Canonicalization::Simple => {
            // Keep the bytes, but make every line ending CRLF.
            let field = field.strip_suffix(b"\n").unwrap_or(field);
            let field = field.strip_suffix(b"\r").unwrap_or(field);
            let mut rest = field;
            while let Some(i) = memchr(b'\n', rest) {
                let line = &rest[..i];
                out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                out.extend_from_slice(b"\r\n");
                rest = &rest[i + 1..];
            }
            out.extend_from_slice(rest);
        }
        Canonicalization::Relaxed => {
            let colon = memchr(b':', field).unwrap_or(field.len());
            let name = trim_trailing_wsp(&field[..colon]);
            out.extend(name.iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let value = field.get(colon + 1..).unwrap_or_default();
            let mut pending_space = false;
            let mut wrote_any = false;
            let mut i = 0;
            while i < value.len() {
                let byte = value[i];
                i += 1;
                match byte {
                    // Unfold: line breaks vanish, the WSP after them stays.
                    b'\n' => {}
                    b'\r' if value.get(i) == Some(&b'\n') => {}
                    b' ' | b'\t' => pending_space = wrote_any,
                    _ => {
                        if pending_space {
                            out.push(b' ');
                            pending_space = false;
                        }
                        out.push(byte);
                        wrote_any = true;
                    }
                }
            }
        }
    }
}

/// Hash of the canonical body and its length in bytes (the `l=` value).
/// With a length limit (a verifier honouring `l=`), `digest` covers only
/// the first `limit` canonical bytes while `length` is still the whole
/// canonical length, so the caller can tell a body shorter than `l=`.
pub(crate) struct BodyHash {
    pub digest: digest::Digest,
    pub length: u64,
}

/// Feeds the canonical body to SHA-256 with as little copying as possible.
///
/// Most canonical body lines are byte-for-byte the original lines, so those
/// are recorded as a range of the source, and adjacent ranges merge: a
/// CRLF body that canonicalization does not change is hashed with one
/// digest call and no copy. Bytes that differ from the source (a space
/// replacing a tab run, a CRLF replacing a bare LF) go through a small
/// buffer. At most one of the range and the buffer is non-empty at a time,
/// which keeps the output in order.
struct HashSink<'a> {
    context: digest::Context,
    source: &'a [u8],
    run_start: usize,
    run_end: usize,
    buffer: [u8; 512],
    used: usize,
    total: u64,
    /// Canonical bytes still to hash; `u64::MAX` without a limit.
    room: u64,
}

impl<'a> HashSink<'a> {
    fn new(source: &'a [u8]) -> Self {
        Self {
            context: digest::Context::new(&digest::SHA256),
            source,
            run_start: 0,
            run_end: 0,
            buffer: [0; 512],
            used: 0,
            total: 0,
            room: u64::MAX,
        }
    }

    /// How many of `len` new canonical bytes may still be hashed.
    fn admit(&mut self, len: usize) -> usize {
        self.total += len as u64;
        let take = (len as u64).min(self.room);
        self.room -= take;
        take as usize
    }

    /// The next canonical bytes are `source[start..end]` unchanged.
    fn copy(&mut self, start: usize, end: usize) {
        let end = start + self.admit(end - start);
        if end == start {
            return;
        }
        if self.used > 0 {
            self.context.update(&self.buffer[..self.used]);
            self.used = 0;
        }
        if self.run_end != start {
            self.flush_run();
            self.run_start = start;
        }
        self.run_end = end;
    }

    fn flush_run(&mut self) {
        if self.run_end > self.run_start {
            self.context
                .update(&self.source[self.run_start..self.run_end]);
        }
        self.run_start = 0;
        self.run_end = 0;
    }

    /// The next canonical bytes are `data`.
    fn write(&mut self, data: &[u8]) {
        let data = &data[..self.admit(data.len())];
        if data.is_empty() {
            return;
        }
        self.flush_run();
        if data.len() > self.buffer.len() - self.used {
            self.context.update(&self.buffer[..self.used]);
            self.used = 0;
            if data.len() >= self.buffer.len() {
                self.context.update(data);
                return;
            }
        }
        self.buffer[self.used..self.used + data.len()].copy_from_slice(data);
        self.used += data.len();
    }

    fn finish(mut self) -> BodyHash {
        self.flush_run();
        self.context.update(&self.buffer[..self.used]);
        BodyHash {
            digest: self.context.finish(),
            length: self.total,
        }
    }
}

/// Hash the canonical form of `body`.
pub(crate) fn hash_body(body: &[u8], canon: Canonicalization) -> BodyHash {
    hash_body_prefix(body, canon, None)
}

/// Hash the first `limit` bytes of the canonical form of `body` (all of it
/// for `None`), as `l=` asks.
pub(crate) fn hash_body_prefix(
    body: &[u8],
    canon: Canonicalization,
    limit: Option<u64>,
) -> BodyHash {
    let mut sink = HashSink::new(body);
    if let Some(limit) = limit {
        sink.room = limit;
    }
    // Empty lines seen but not yet written: they are written only when a
    // non-empty line follows, which drops the trailing ones. `held_exact`
    // says whether they were all plain CRLF in the source.
    let mut held_empty_lines = 0usize;
    let mut held_start = 0;
    let mut held_exact = true;
    let mut pos = 0;
    while pos < body.len() {
        let start = pos;
        let end = memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        let line = &body[start..end];
        pos = end;
        let (content, crlf) = match line.strip_suffix(b"\n") {
            Some(without_lf) => match without_lf.strip_suffix(b"\r") {
                Some(content) => (content, true),
                None => (without_lf, false),
            },
            // A last line without a line ending gets one, and is otherwise
            // treated like any line (trailing WSP dropped under relaxed):
            // that is the body a receiver sees, since SMTP adds the CRLF.
            None => (line, false),
        };
        let is_empty = match canon {
            Canonicalization::Simple => content.is_empty(),
            Canonicalization::Relaxed => content.iter().all(|b| matches!(b, b' ' | b'\t')),
        };
        if is_empty {
            if held_empty_lines == 0 {
                held_start = start;
                held_exact = true;
            }
            held_empty_lines += 1;
            held_exact &= crlf && content.is_empty();
            continue;
        }
        if held_empty_lines > 0 {
            if held_exact {
                sink.copy(held_start, start);
            } else {
                for _ in 0..held_empty_lines {
                    sink.write(b"\r\n");
                }
            }
            held_empty_lines = 0;
        }
        let unchanged = crlf
            && match canon {
                Canonicalization::Simple => true,
                Canonicalization::Relaxed => is_relaxed_already(content),
            };
        if unchanged {
            sink.copy(start, end);
            continue;
        }
        match canon {
            Canonicalization::Simple => sink.write(content),
            Canonicalization::Relaxed => write_relaxed_line(&mut sink, content),
        }
        sink.write(b"\r\n");
    }
    if canon == Canonicalization::Simple && sink.total == 0 {
        // RFC 6376 §3.4.3: an empty body is a single CRLF.
        sink.write(b"\r\n");
    }
    sink.finish()
}

/// True if relaxed canonicalization leaves this (non-empty) line as it is:
/// no tab, no run of spaces, no space at the end.
fn is_relaxed_already(content: &[u8]) -> bool {
    let Some((&last, _)) = content.split_last() else {
        return true;
    };
    // A branch-free scan over byte pairs vectorizes well; lines are short,
    // so not stopping early costs less than a branch per byte.
    let pairs = content.iter().zip(&content[1..]);
    let needs_work = pairs.fold(false, |found, (&a, &b)| {
        found | (a == b'\t') | ((a == b' ') & (b == b' '))
    });
    !(needs_work || last == b' ' || last == b'\t')
}

/// Relaxed body line: runs of WSP become one space, WSP at the end goes.
fn write_relaxed_line(sink: &mut HashSink<'_>, content: &[u8]) {
    let content = trim_trailing_wsp(content);
    let mut rest = content;
    while !rest.is_empty() {
        let run_end = rest
            .iter()
            .position(|b| matches!(b, b' ' | b'\t'))
            .unwrap_or(rest.len());
        sink.write(&rest[..run_end]);
        rest = &rest[run_end..];
        let wsp = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(rest.len());
        if wsp > 0 {
            // Never at the end: trailing WSP was trimmed above.
            sink.write(b" ");
            rest = &rest[wsp..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Canonicalization::{Relaxed, Simple};

    fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    fn body_hash(body: &[u8], canon: Canonicalization) -> (Vec<u8>, u64) {
        let hash = hash_body(body, canon);
        (hash.digest.as_ref().to_vec(), hash.length)
    }

    #[test]
    fn splits_headers_with_folding_and_bare_lf() {
        let message =
            b"From: a@example.com\r\nSubject: one\r\n two\r\nX-Odd :v\nno colon\r\n\r\nbody\r\n";
        let (fields, body) = split_message(message);
        let names: Vec<&[u8]> = fields.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [&b"From"[..], &b"Subject"[..], &b"X-Odd"[..], &b""[..]]
        );
        assert_eq!(fields[1].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(fields[2].raw, b"X-Odd :v\n");
        assert_eq!(body, b"body\r\n");
        let (fields, body) = split_message(b"Subject: only headers\r\n");
        assert_eq!(fields.len(), 1);
        assert!(body.is_empty());
    }

    #[test]
    fn relaxed_and_simple_headers() {
        let mut out = Vec::new();
        canonicalize_header(
            &mut out,
            b"SubJect \t:  Hello \t  world\r\n\t again  \r\n",
            Relaxed,
        );
        assert_eq!(out, b"subject:Hello world again");
        out.clear();
        canonicalize_header(&mut out, b"Subject: a\n  b\n", Simple);
        assert_eq!(out, b"Subject: a\r\n  b");
        out.clear();
        canonicalize_header(&mut out, b"X-Empty:   \r\n", Relaxed);
        assert_eq!(out, b"x-empty:");
    }

    #[test]
    fn simple_body_rules() {
        assert_eq!(body_hash(b"", Simple), (sha256(b"\r\n"), 2));
        assert_eq!(body_hash(b"\r\n\r\n", Simple), (sha256(b"\r\n"), 2));
        assert_eq!(
            body_hash(b"a  b \r\n\r\n \r\n\r\n", Simple),
            (sha256(b"a  b \r\n\r\n \r\n"), 12)
        );
        assert_eq!(
            body_hash(b"no newline", Simple).0,
            sha256(b"no newline\r\n")
        );
        assert_eq!(
            body_hash(b"lf\nonly\n\n", Simple).0,
            sha256(b"lf\r\nonly\r\n")
        );
    }

    #[test]
    fn relaxed_body_rules_including_trailing_whitespace_lines() {
        assert_eq!(body_hash(b"", Relaxed), (sha256(b""), 0));
        assert_eq!(body_hash(b"\r\n \t\r\n", Relaxed), (sha256(b""), 0));
        assert_eq!(
            body_hash(b" a \t b\t\r\n\r\n  c  \r\n \r\n\t\r\n", Relaxed),
            (sha256(b" a b\r\n\r\n c\r\n"), 12)
        );
        assert_eq!(
            body_hash("h\u{e9}llo  w\u{f6}rld\r\n".as_bytes(), Relaxed).0,
            sha256("h\u{e9}llo w\u{f6}rld\r\n".as_bytes())
        );
    }

    #[test]
    fn copied_ranges_and_rewritten_lines_interleave_in_order() {
        assert_eq!(
            body_hash(b"a\r\n \r\n\r\nb  c\r\nd\r\n\r\n", Relaxed).0,
            sha256(b"a\r\n\r\n\r\nb c\r\nd\r\n")
        );
        assert_eq!(
            body_hash(b"a\r\n\n\r\nb\nc\r\nd", Simple).0,
            sha256(b"a\r\n\r\n\r\nb\r\nc\r\nd\r\n")
        );
        assert_eq!(
            body_hash(b"x\tz\r\n\r\n\r\ny\r\n", Relaxed).0,
            sha256(b"x z\r\n\r\n\r\ny\r\n")
        );
        assert_eq!(
            body_hash(b"one space ok\r\n ends in tab\t\r\n", Relaxed).0,
            sha256(b"one space ok\r\n ends in tab\r\n")
        );
    }

    #[test]
    fn long_bodies_hash_like_one_piece() {
        let line = b"0123456789 abcdefghij\tKLMNOP  \r\n";
        let body: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 500)
            .collect();
        let expected: Vec<u8> = b"0123456789 abcdefghij KLMNOP\r\n"
            .iter()
            .copied()
            .cycle()
            .take(30 * 500)
            .collect();
        assert_eq!(body_hash(&body, Relaxed), (sha256(&expected), 15000));
        assert_eq!(body_hash(&body, Simple).0, sha256(&body));
    }

    /// The RFC 6376 §3.4.3/§3.4.4 rules written the obvious way, to check
    /// the streaming implementation against.
    fn reference_body(body: &[u8], canon: Canonicalization) -> Vec<u8> {
        let text = body.to_vec();
        let mut lines: Vec<Vec<u8>> = text.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        // Only a CR that precedes a LF belongs to the line ending.
        let last = lines.len() - 1;
        for line in &mut lines[..last] {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if body.ends_with(b"\n") || body.is_empty() {
            lines.pop(); // nothing after the last line ending
        }
        if canon == Relaxed {
            for line in &mut lines {
                let mut out = Vec::new();
                for &b in line.iter() {
                    let wsp = b == b' ' || b == b'\t';
                    if wsp {
                        if out.last() != Some(&b' ') {
                            out.push(b' ');
                        }
                    } else {
                        out.push(b);
                    }
                }
                while out.last() == Some(&b' ') {
                    out.pop();
                }
                *line = out;
            }
        }
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        if canon == Simple && out.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn matches_a_plain_reference_on_generated_bodies() {
        // A small deterministic generator: no dependency, same cases every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 9] = [
            b"word",
            b" ",
            b"  ",
            b"\t",
            b"\r\n",
            b"\n",
            b"\r",
            "\u{e9}t\u{e9}".as_bytes(),
            b"x",
        ];
        for case in 0..2000 {
            let mut body = Vec::new();
            let length = (next() % 60) as usize;
            for _ in 0..length {
                let piece = pieces[(next() % pieces.len() as u64) as usize];
                body.extend_from_slice(piece);
            }
            if case % 50 == 0 {
                // Some lines longer than the sink's buffer.
                body.extend(std::iter::repeat_n(b'a', 700));
                body.extend_from_slice(b" \t ");
                body.extend(std::iter::repeat_n(b'b', 700));
                body.extend_from_slice(b"\r\n");
            }
            for canon in [Relaxed, Simple] {
                let expected = reference_body(&body, canon);
                assert_eq!(
                    body_hash(&body, canon),
                    (sha256(&expected), expected.len() as u64),
                    "{canon:?} {:?}",
                    String::from_utf8_lossy(&body)
                );
                // A verifier's l= limit hashes a prefix of the same bytes
                // but still reports the whole length.
                let limit = next() % (expected.len() as u64 + 3);
                let prefix = hash_body_prefix(&body, canon, Some(limit));
                let cut = (limit as usize).min(expected.len());
                assert_eq!(
                    (prefix.digest.as_ref().to_vec(), prefix.length),
                    (sha256(&expected[..cut]), expected.len() as u64),
                    "{canon:?} l={limit} {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
}
