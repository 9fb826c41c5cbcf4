//! DKIM verification (RFC 6376 §6, RFC 8463 for Ed25519, RFC 8301 for the
//! algorithm and key-size rules): what `msg:dkim_verify` runs.
//!
//! [`verify_dkim`] checks each `DKIM-Signature` field from the top, at most
//! [`MAX_SIGNATURES`] of them so a message stuffed with signatures cannot
//! cost unbounded DNS lookups and RSA operations. Each one becomes an
//! [`AuthenticationResult`] in KumoMTA's shape: method `dkim`, properties
//! `header.d`, `header.i`, `header.s`, `header.a` and `header.b` (the
//! shortest prefix of `b=`, at least 8 characters, that tells the message's
//! signatures apart, RFC 6008), and one of these results:
//!
//! * `pass`: the signature verifies and `d=` is the From domain;
//! * `policy` (reason `mail-from-mismatch-signing-domain`, as KumoMTA): it
//!   verifies, but for another domain;
//! * `fail`: the body hash or the signature does not match (RFC 8601
//!   §2.7.1: the message was changed or forged), or the body is shorter
//!   than `l=`;
//! * `permerror`: the signature or key record is unusable (syntax, missing
//!   tags, expired `x=`, `h=` without From, no key in DNS, revoked key,
//!   rsa-sha1, RSA keys under 1024 bits, ...);
//! * `temperror`: the key could not be fetched (DNS timeout, SERVFAIL).
//!
//! A message without signatures gives no results, as upstream; a message
//! whose From header is missing or not a single address gives one
//! `permerror` result, because no signature could pass for it.
//!
//! The canonicalization code is the signer's (`canon`), so signing and
//! verification agree on every edge case; bare LF line endings are treated
//! as CRLF, as when signing. Keys are looked up through Tern's own
//! [`Resolver`], so policies' test zones and named resolvers apply.

use crate::canon::{self, HeaderField};
use crate::config::{Algorithm, Canonicalization};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, signature};
use std::collections::HashMap;
use tern_dns::Resolver;
use tern_message::{AddressHeader, AuthenticationResult};

/// Signatures verified per message; the rest are ignored.
pub const MAX_SIGNATURES: usize = 10;

/// How long after `x=` a signature is still accepted, for clock skew
/// (KumoMTA allows the same 15 minutes).
const EXPIRY_GRACE_SECS: u64 = 15 * 60;

/// Why a signature did not pass: the RFC 8601 result and the reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub result: &'static str,
    pub reason: String,
}

pub(crate) fn permerror(reason: impl Into<String>) -> Failure {
    Failure {
        result: "permerror",
        reason: reason.into(),
    }
}

fn temperror(reason: impl Into<String>) -> Failure {
    Failure {
        result: "temperror",
        reason: reason.into(),
    }
}

pub(crate) fn fail(reason: impl Into<String>) -> Failure {
    Failure {
        result: "fail",
        reason: reason.into(),
    }
}

/// Parse an RFC 6376 §3.2 tag-list into `(name, value)` pairs in order.
/// Values have the white space around them removed; white space inside
/// (folded base64) is kept for the caller to strip where it may occur.
pub(crate) fn parse_tag_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    let segments: Vec<&str> = text.split(';').collect();
    for (index, segment) in segments.iter().enumerate() {
        let trimmed = segment.trim_matches(is_fws);
        if trimmed.is_empty() {
            // A trailing ';' is allowed; an empty tag in the middle is not.
            if index + 1 == segments.len() {
                continue;
            }
            return Err("empty tag".to_string());
        }
        let (name, value) = trimmed
            .split_once('=')
            .ok_or_else(|| format!("tag {trimmed:?} has no '='"))?;
        let name = name.trim_matches(is_fws);
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("invalid tag name {name:?}"));
        }
        let value = value.trim_matches(is_fws);
        if value
            .chars()
            .any(|c| !(is_fws(c) || ('\x21'..='\x7e').contains(&c)))
        {
            return Err(format!("tag {name} has a value with invalid characters"));
        }
        if tags.iter().any(|(existing, _)| existing == name) {
            return Err(format!("duplicate tag {name}"));
        }
        tags.push((name.to_string(), value.to_string()));
    }
    Ok(tags)
}

pub(crate) fn is_fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

pub(crate) fn without_fws(value: &str) -> String {
    value.chars().filter(|c| !is_fws(*c)).collect()
}

pub(crate) fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A `DKIM-Signature` whose tags passed the checks of RFC 6376 §6.1.1.
#[derive(Debug)]
pub(crate) struct Signature {
    pub algorithm: Algorithm,
    pub header_canon: Canonicalization,
    pub body_canon: Canonicalization,
    pub domain: String,
    pub selector: String,
    /// The `i=` domain, lowercased, if there is an `i=`.
    pub auid_domain: Option<String>,
    /// `h=`, lowercased.
    pub headers: Vec<String>,
    pub body_hash: Vec<u8>,
    pub signature: Vec<u8>,
    pub length: Option<u64>,
}

pub(crate) fn decode_base64(what: &str, value: &str) -> Result<Vec<u8>, Failure> {
    BASE64.decode(without_fws(value)).map_err(|err| {
        permerror(format!(
            "signature syntax error: {what} is not base64: {err}"
        ))
    })
}

pub(crate) fn parse_canonicalization(
    value: Option<&str>,
) -> Result<(Canonicalization, Canonicalization), Failure> {
    let parse = |text: &str| match text.to_ascii_lowercase().as_str() {
        "simple" => Ok(Canonicalization::Simple),
        "relaxed" => Ok(Canonicalization::Relaxed),
        other => Err(permerror(format!("unsupported canonicalization: {other}"))),
    };
    match value {
        None => Ok((Canonicalization::Simple, Canonicalization::Simple)),
        Some(value) => match value.split_once('/') {
            Some((header, body)) => Ok((parse(header)?, parse(body)?)),
            // "relaxed" alone means relaxed/simple (RFC 6376 §3.5, c=).
            None => Ok((parse(value)?, Canonicalization::Simple)),
        },
    }
}

pub(crate) fn parse_algorithm(value: &str) -> Result<Algorithm, Failure> {
    match value.to_ascii_lowercase().as_str() {
        "rsa-sha256" => Ok(Algorithm::RsaSha256),
        "ed25519-sha256" => Ok(Algorithm::Ed25519Sha256),
        // RFC 8301 §3.1: verifiers must not consider rsa-sha1 valid.
        other => Err(permerror(format!("unsupported hash algorithm: {other}"))),
    }
}

/// Domain names as used in `d=` and `s=`: labels of letters, digits,
/// hyphens and underscores (selectors may be dotted).
pub(crate) fn check_dns_label_text(what: &str, value: &str) -> Result<(), Failure> {
    let ok = !value.is_empty()
        && value.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(permerror(format!(
            "signature syntax error: {what}={value:?} is not a domain name"
        )))
    }
}

impl Signature {
    /// Check the tags of one signature (RFC 6376 §6.1.1).
    pub(crate) fn from_tags(tags: &[(String, String)], now: u64) -> Result<Self, Failure> {
        for required in ["v", "a", "b", "bh", "d", "h", "s"] {
            if tag(tags, required).is_none() {
                return Err(permerror(format!(
                    "signature missing required tag ({required})"
                )));
            }
        }
        let required = |name: &str| tag(tags, name).unwrap_or_default();
        if required("v") != "1" {
            return Err(permerror("incompatible version"));
        }
        let algorithm = parse_algorithm(required("a"))?;
        let (header_canon, body_canon) = parse_canonicalization(tag(tags, "c"))?;
        let domain = required("d").to_ascii_lowercase();
        check_dns_label_text("d", &domain)?;
        let selector = required("s").to_ascii_lowercase();
        check_dns_label_text("s", &selector)?;
        let auid_domain = match tag(tags, "i") {
            None => None,
            Some(auid) => {
                let (_, auid_domain) = auid
                    .rsplit_once('@')
                    .ok_or_else(|| permerror("signature syntax error: i= has no '@'"))?;
                let auid_domain = auid_domain.to_ascii_lowercase();
                if auid_domain != domain && !auid_domain.ends_with(&format!(".{domain}")) {
                    return Err(permerror("domain mismatch"));
                }
                Some(auid_domain)
            }
        };
        let headers: Vec<String> = required("h")
            .split(':')
            .map(|name| name.trim_matches(is_fws).to_ascii_lowercase())
            .collect();
        if !headers.iter().any(|name| name == "from") {
            return Err(permerror("From field not signed"));
        }
        if let Some(query) = tag(tags, "q")
            && !query
                .split(':')
                .any(|q| q.trim_matches(is_fws).eq_ignore_ascii_case("dns/txt"))
        {
            return Err(permerror("unsupported query method"));
        }
        let number = |name: &str| -> Result<Option<u64>, Failure> {
            tag(tags, name)
                .map(|value| {
                    value.parse::<u64>().map_err(|_| {
                        permerror(format!(
                            "signature syntax error: invalid \"{name}\" tag value {value:?}"
                        ))
                    })
                })
                .transpose()
        };
        let signed_at = number("t")?;
        if let Some(expires) = number("x")? {
            if signed_at.is_some_and(|t| expires < t) {
                return Err(permerror("signature syntax error: x= is earlier than t="));
            }
            if now > expires.saturating_add(EXPIRY_GRACE_SECS) {
                return Err(permerror("signature expired"));
            }
        }
        Ok(Self {
            algorithm,
            header_canon,
            body_canon,
            domain,
            selector,
            auid_domain,
            headers,
            body_hash: decode_base64("bh=", required("bh"))?,
            signature: decode_base64("b=", required("b"))?,
            length: number("l")?,
        })
    }

    /// The body-hash check of RFC 6376 §6.1.3.
    pub(crate) fn check_body(&self, body: &[u8]) -> Result<(), Failure> {
        let hashed = canon::hash_body_prefix(body, self.body_canon, self.length);
        if let Some(length) = self.length
            && hashed.length < length
        {
            return Err(fail(format!(
                "body is shorter than l= ({} < {length} bytes)",
                hashed.length
            )));
        }
        if hashed.digest.as_ref() != self.body_hash.as_slice() {
            return Err(fail("body hash did not verify"));
        }
        Ok(())
    }
}

/// The bytes the signature covers: the `h=` fields, bottom instance first
/// for repeated names, then the signature field itself with `b=` emptied
/// and without its final line ending (RFC 6376 §3.7, §5.4.2).
pub(crate) fn signed_header_input(
    fields: &[HeaderField<'_>],
    names: &[String],
    signature_field: &[u8],
    canon: Canonicalization,
) -> Vec<u8> {
    let mut input = Vec::with_capacity(1024);
    let mut used: HashMap<&str, usize> = HashMap::new();
    for name in names {
        let taken = used.entry(name.as_str()).or_insert(0);
        let instance = fields
            .iter()
            .rev()
            .filter(|field| field.name.eq_ignore_ascii_case(name.as_bytes()))
            .nth(*taken);
        *taken += 1;
        // A name with no instance left is signed as absent: no bytes.
        if let Some(field) = instance {
            canon::canonicalize_header(&mut input, field.raw, canon);
            input.extend_from_slice(b"\r\n");
        }
    }
    canon::canonicalize_header(&mut input, &blank_b_tag(signature_field), canon);
    input
}

/// The field with the value of its `b=` tag removed, everything else
/// (including the `b=` itself and other tags' spacing) byte for byte.
pub(crate) fn blank_b_tag(field: &[u8]) -> Vec<u8> {
    let Some(colon) = memchr::memchr(b':', field) else {
        return field.to_vec();
    };
    // The final line ending stays out of the tag values.
    let mut end = field.len();
    if field[..end].ends_with(b"\n") {
        end -= 1;
        if field[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    let mut start = colon + 1;
    while start <= end {
        let segment_end = memchr::memchr(b';', &field[start..end]).map_or(end, |i| start + i);
        let segment = &field[start..segment_end];
        if let Some(eq) = memchr::memchr(b'=', segment) {
            let name = segment[..eq].trim_ascii();
            if name == b"b" {
                let mut out = Vec::with_capacity(field.len());
                out.extend_from_slice(&field[..start + eq + 1]);
                out.extend_from_slice(&field[segment_end..]);
                return out;
            }
        }
        start = segment_end + 1;
    }
    field.to_vec()
}

/// A public key from a DNS key record.
#[derive(Debug)]
pub(crate) enum PublicKey {
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

/// What a key record says, beyond the key itself.
#[derive(Debug)]
pub(crate) struct KeyRecord {
    pub key: PublicKey,
    /// `t=s`: the `i=` domain must be `d=` itself, not a subdomain.
    pub strict: bool,
}

/// Parse a key record (RFC 6376 §3.6.1) for a signature made with
/// `algorithm`.
pub(crate) fn parse_key_record(txt: &str, algorithm: Algorithm) -> Result<KeyRecord, Failure> {
    let tags = parse_tag_list(txt).map_err(|err| permerror(format!("key syntax error: {err}")))?;
    if let Some(version) = tag(&tags, "v")
        && version != "DKIM1"
    {
        return Err(permerror("key incompatible version"));
    }
    if let Some(hashes) = tag(&tags, "h")
        && !hashes
            .split(':')
            .any(|h| h.trim_matches(is_fws).eq_ignore_ascii_case("sha256"))
    {
        return Err(permerror(format!(
            "inappropriate hash algorithm: the key allows h={hashes}"
        )));
    }
    if let Some(services) = tag(&tags, "s")
        && !services
            .split(':')
            .map(|s| s.trim_matches(is_fws))
            .any(|s| s == "*" || s.eq_ignore_ascii_case("email"))
    {
        return Err(permerror(format!("key is not for email (s={services})")));
    }
    let key_type = tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    let expected = algorithm.key_type();
    if key_type != expected {
        return Err(permerror(format!(
            "inappropriate key algorithm: the key is k={key_type}, the signature a={}",
            algorithm.tag_value()
        )));
    }
    let p = tag(&tags, "p").ok_or_else(|| permerror("key syntax error: no p= tag"))?;
    let p = without_fws(p);
    if p.is_empty() {
        return Err(permerror("key revoked"));
    }
    let der = BASE64
        .decode(&p)
        .map_err(|err| permerror(format!("key syntax error: p= is not base64: {err}")))?;
    let key = match algorithm {
        Algorithm::RsaSha256 => rsa_public_key(&der)?,
        Algorithm::Ed25519Sha256 => {
            if der.len() != 32 {
                return Err(permerror(format!(
                    "key syntax error: an Ed25519 key has 32 bytes, this one {}",
                    der.len()
                )));
            }
            PublicKey::Ed25519(der)
        }
    };
    let strict = tag(&tags, "t").is_some_and(|flags| {
        flags
            .split(':')
            .any(|flag| flag.trim_matches(is_fws).eq_ignore_ascii_case("s"))
    });
    Ok(KeyRecord { key, strict })
}

/// One DER element: tag, contents, rest of the input.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The RSA key from `p=`: a SubjectPublicKeyInfo (what RFC 6376 specifies
/// and `openssl rsa -pubout` writes) or, as some publishers do, a bare
/// PKCS#1 RSAPublicKey.
fn rsa_public_key(der: &[u8]) -> Result<PublicKey, Failure> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let bad = || permerror("key syntax error: p= is not an RSA public key");
    let (tag, outer, _) = der_element(der).ok_or_else(bad)?;
    if tag != 0x30 {
        return Err(bad());
    }
    let (first_tag, first, rest) = der_element(outer).ok_or_else(bad)?;
    let pkcs1 = match first_tag {
        // SubjectPublicKeyInfo: AlgorithmIdentifier, then a BIT STRING.
        0x30 => {
            let (oid_tag, oid, _) = der_element(first).ok_or_else(bad)?;
            if oid_tag != 0x06 || oid != RSA_ENCRYPTION {
                return Err(permerror(
                    "inappropriate key algorithm: p= is not an RSA key",
                ));
            }
            let (bits_tag, bits, _) = der_element(rest).ok_or_else(bad)?;
            match bits.split_first() {
                Some((0, key)) if bits_tag == 0x03 => key,
                _ => return Err(bad()),
            }
        }
        // Already an RSAPublicKey: its first element is the modulus.
        0x02 => der,
        _ => return Err(bad()),
    };
    let (tag, sequence, _) = der_element(pkcs1).ok_or_else(bad)?;
    let (n_tag, n, rest) = der_element(sequence).ok_or_else(bad)?;
    let (e_tag, e, _) = der_element(rest).ok_or_else(bad)?;
    if tag != 0x30 || n_tag != 0x02 || e_tag != 0x02 {
        return Err(bad());
    }
    let strip = |int: &[u8]| -> Vec<u8> {
        let zeros = int.iter().take_while(|b| **b == 0).count();
        int[zeros..].to_vec()
    };
    let (n, e) = (strip(n), strip(e));
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < 1024 {
        // RFC 8301 §3.2: keys under 1024 bits must not be considered valid.
        return Err(permerror(format!(
            "RSA key of {bits} bits is too short (at least 1024 are required)"
        )));
    }
    if bits > 8192 {
        return Err(permerror(format!(
            "RSA key of {bits} bits is too long (at most 8192 are supported)"
        )));
    }
    Ok(PublicKey::Rsa { n, e })
}

/// Check `signature` over `input` (the canonical header bytes).
pub(crate) fn verify_signature(key: &PublicKey, input: &[u8], sig: &[u8]) -> Result<(), Failure> {
    let verified = match key {
        PublicKey::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(
            &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            input,
            sig,
        ),
        // RFC 8463: Ed25519 signs the SHA-256 digest of the input.
        PublicKey::Ed25519(key) => signature::UnparsedPublicKey::new(&signature::ED25519, key)
            .verify(digest::digest(&digest::SHA256, input).as_ref(), sig),
    };
    verified.map_err(|_| fail("signature did not verify"))
}

/// Fetch and parse the key for `selector` / `domain`. A missing record is
/// permanent (RFC 6376 §6.1.2: "no key for signature"); a lookup that did
/// not complete is temporary.
pub(crate) async fn fetch_key(
    resolver: &Resolver,
    selector: &str,
    domain: &str,
    algorithm: Algorithm,
) -> Result<KeyRecord, Failure> {
    let name = format!("{selector}._domainkey.{domain}");
    let records = match resolver.resolve_txt(&name).await {
        Ok(answer) => answer.records,
        Err(err) if err.is_nxdomain() || err.is_nodata() => Vec::new(),
        Err(err) if err.is_transient() => {
            return Err(temperror(format!("key unavailable: {err}")));
        }
        Err(err @ tern_dns::DnsError::InvalidName { .. }) => {
            return Err(permerror(format!("no key for signature: {err}")));
        }
        Err(err) => return Err(temperror(format!("key unavailable: {err}"))),
    };
    // Several records (during a key change, or junk next to the key): the
    // first usable one wins; otherwise the first one's problem is reported.
    let mut first_error = None;
    for record in &records {
        match parse_key_record(record, algorithm) {
            Ok(key) => return Ok(key),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| permerror(format!("no key for signature ({name})"))))
}

/// The shortest prefix of `b`, at least 8 characters and growing two at a
/// time, that no other signature's `b=` shares (RFC 6008 `header.b`).
fn unique_b_prefix(b: &str, all: &[String]) -> String {
    let mut len = 8;
    'longer: while len < b.len() {
        for other in all {
            if other != b && other.starts_with(&b[..len]) {
                len += 2;
                continue 'longer;
            }
        }
        return b[..len].to_string();
    }
    b.to_string()
}

/// The domain of the message's single From address, or the permerror
/// result KumoMTA gives when there is none.
fn from_domain(fields: &[HeaderField<'_>]) -> Result<String, String> {
    let mut from = fields
        .iter()
        .filter(|field| field.name.eq_ignore_ascii_case(b"From"));
    let Some(field) = from.next() else {
        return Err("From header is missing".to_string());
    };
    let others = from.count();
    if others > 0 {
        return Err(format!(
            "message has {} From headers, a verifier cannot tell which one was signed",
            others + 1
        ));
    }
    let value = memchr::memchr(b':', field.raw).map_or(&b""[..], |i| &field.raw[i + 1..]);
    let parsed =
        AddressHeader::parse(value).map_err(|err| format!("From header is invalid: {err}"))?;
    if parsed.list().len() != 1 {
        return Err(format!(
            "From header must have a single sender, found {}",
            parsed.list().len()
        ));
    }
    parsed
        .domain()
        .map(str::to_ascii_lowercase)
        .map_err(|err| format!("From header is invalid: {err}"))
}

/// Verify the DKIM signatures of `message` at time `now` (Unix seconds).
pub async fn verify_dkim(
    message: &[u8],
    resolver: &Resolver,
    now: u64,
) -> Vec<AuthenticationResult> {
    let (fields, body) = canon::split_message(message);
    let from_domain = match from_domain(&fields) {
        Ok(domain) => domain,
        Err(reason) => {
            return vec![AuthenticationResult::new("dkim", "permerror").with_reason(reason)];
        }
    };
    let signatures: Vec<&HeaderField<'_>> = fields
        .iter()
        .filter(|field| field.name.eq_ignore_ascii_case(b"DKIM-Signature"))
        .take(MAX_SIGNATURES)
        .collect();
    let parsed: Vec<Result<Vec<(String, String)>, String>> = signatures
        .iter()
        .map(|field| {
            let colon = memchr::memchr(b':', field.raw).unwrap_or(field.raw.len());
            parse_tag_list(&String::from_utf8_lossy(&field.raw[colon + 1..]))
        })
        .collect();
    let all_b: Vec<String> = parsed
        .iter()
        .filter_map(|tags| tags.as_ref().ok())
        .filter_map(|tags| tag(tags, "b").map(without_fws))
        .collect();

    let mut results = Vec::with_capacity(signatures.len());
    for (field, tags) in signatures.iter().zip(parsed) {
        let tags = match tags {
            Ok(tags) => tags,
            Err(err) => {
                results.push(
                    AuthenticationResult::new("dkim", "permerror")
                        .with_reason(format!("signature syntax error: {err}")),
                );
                continue;
            }
        };
        let mut result = AuthenticationResult::new("dkim", "pass");
        if let Some(d) = tag(&tags, "d") {
            result.props.insert("header.d".into(), d.to_string());
            let auid = tag(&tags, "i").map_or_else(|| format!("@{d}"), str::to_string);
            result.props.insert("header.i".into(), auid);
        }
        for (name, prop) in [("s", "header.s"), ("a", "header.a")] {
            if let Some(value) = tag(&tags, name) {
                result.props.insert(prop.into(), value.to_string());
            }
        }
        if let Some(b) = tag(&tags, "b") {
            let b = without_fws(b);
            result
                .props
                .insert("header.b".into(), unique_b_prefix(&b, &all_b));
        }
        match verify_one(field, &tags, &fields, body, resolver, now).await {
            Ok(signing_domain) if signing_domain == from_domain => {}
            Ok(_) => {
                let why = "mail-from-mismatch-signing-domain";
                result.result = "policy".into();
                result.reason = Some(why.into());
                result.props.insert("policy.dkim-rules".into(), why.into());
            }
            Err(failure) => {
                result.result = failure.result.into();
                result.reason = Some(failure.reason);
            }
        }
        results.push(result);
    }
    results
}

/// Verify one signature; its `d=` (lowercased) on success.
async fn verify_one(
    field: &HeaderField<'_>,
    tags: &[(String, String)],
    fields: &[HeaderField<'_>],
    body: &[u8],
    resolver: &Resolver,
    now: u64,
) -> Result<String, Failure> {
    let signature = Signature::from_tags(tags, now)?;
    // Cheap local checks first: a tampered body costs no DNS lookup.
    signature.check_body(body)?;
    let record = fetch_key(
        resolver,
        &signature.selector,
        &signature.domain,
        signature.algorithm,
    )
    .await?;
    if record.strict
        && signature
            .auid_domain
            .as_ref()
            .is_some_and(|auid| *auid != signature.domain)
    {
        return Err(permerror(
            "domain mismatch: the key's t=s forbids an i= subdomain",
        ));
    }
    let input = signed_header_input(
        fields,
        &signature.headers,
        field.raw,
        signature.header_canon,
    );
    verify_signature(&record.key, &input, &signature.signature)?;
    Ok(signature.domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists() {
        let tags = parse_tag_list(" v=1; a = rsa-sha256 ;\r\n\tb=ab\r\n cd ;").unwrap();
        assert_eq!(
            tags,
            [
                ("v".to_string(), "1".to_string()),
                ("a".to_string(), "rsa-sha256".to_string()),
                ("b".to_string(), "ab\r\n cd".to_string()),
            ]
        );
        assert!(
            parse_tag_list("v=1; v=2")
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(parse_tag_list("v=1;; a=b").is_err());
        assert!(parse_tag_list("v1").is_err());
        assert!(parse_tag_list("1v=1").is_err());
        assert!(parse_tag_list("p=").unwrap()[0].1.is_empty());
    }

    #[test]
    fn b_tag_value_is_blanked_in_place() {
        assert_eq!(
            blank_b_tag(b"DKIM-Signature: v=1; b=abc\r\n def; bh=xyz;\r\n"),
            b"DKIM-Signature: v=1; b=; bh=xyz;\r\n"
        );
        assert_eq!(
            blank_b_tag(b"DKIM-Signature: bh=x; b = abc\r\n\tdef\r\n"),
            b"DKIM-Signature: bh=x; b =\r\n"
        );
        assert_eq!(blank_b_tag(b"X: bh=1"), b"X: bh=1");
    }

    #[test]
    fn header_b_is_the_shortest_unique_prefix() {
        let all = vec![
            "AAAAAAAAAAAA1".to_string(),
            "AAAAAAAAAAAA2".to_string(),
            "BBBBBBBBBBBBBB".to_string(),
        ];
        assert_eq!(unique_b_prefix(&all[2], &all), "BBBBBBBB");
        assert_eq!(unique_b_prefix(&all[0], &all), "AAAAAAAAAAAA1");
        assert_eq!(unique_b_prefix("short", &all), "short");
    }

    fn tags(text: &str) -> Vec<(String, String)> {
        parse_tag_list(text).unwrap()
    }

    #[test]
    fn signature_tag_checks() {
        let base = "v=1; a=rsa-sha256; d=Example.com; s=sel; h=from:to; bh=AAAA; b=AAAA";
        let ok = Signature::from_tags(&tags(base), 0).unwrap();
        assert_eq!(ok.domain, "example.com");
        assert_eq!(
            (ok.header_canon, ok.body_canon),
            (Canonicalization::Simple, Canonicalization::Simple)
        );
        let reason = |extra: &str, now: u64| {
            Signature::from_tags(&tags(&format!("{base}; {extra}")), now)
                .unwrap_err()
                .reason
        };
        assert_eq!(reason("i=a@other.com", 0), "domain mismatch");
        Signature::from_tags(&tags(&format!("{base}; i=a@mail.example.com")), 0).unwrap();
        assert_eq!(reason("x=100", 100 + 901), "signature expired");
        Signature::from_tags(&tags(&format!("{base}; x=100")), 100 + 900).unwrap();
        assert!(reason("t=200; x=100", 0).contains("earlier than t="));
        assert_eq!(reason("q=http", 0), "unsupported query method");
        assert!(reason("l=-1", 0).contains("invalid \"l\" tag"));
        assert!(reason("c=fancy", 0).contains("unsupported canonicalization"));
        let missing = Signature::from_tags(&tags("v=1; a=rsa-sha256; d=x; s=y; h=from; b=AA"), 0)
            .unwrap_err();
        assert_eq!(missing.reason, "signature missing required tag (bh)");
        let sha1 = base.replace("rsa-sha256", "rsa-sha1");
        assert_eq!(
            Signature::from_tags(&tags(&sha1), 0).unwrap_err().reason,
            "unsupported hash algorithm: rsa-sha1"
        );
        let no_from = base.replace("h=from:to", "h=to:subject");
        assert_eq!(
            Signature::from_tags(&tags(&no_from), 0).unwrap_err().reason,
            "From field not signed"
        );
        let relaxed = base.replace("d=Example.com", "d=example.com; c=relaxed");
        let relaxed = Signature::from_tags(&tags(&relaxed), 0).unwrap();
        assert_eq!(
            (relaxed.header_canon, relaxed.body_canon),
            (Canonicalization::Relaxed, Canonicalization::Simple)
        );
    }

    #[test]
    fn key_records() {
        let ed = "v=DKIM1; k=ed25519; p=k1O85S2sJcNYSvPhu6a/QrbaOZ1ZDaZDAV/2CPhXQVQ=";
        assert!(matches!(
            parse_key_record(ed, Algorithm::Ed25519Sha256).unwrap().key,
            PublicKey::Ed25519(_)
        ));
        let reason = |txt: &str, algorithm| parse_key_record(txt, algorithm).unwrap_err().reason;
        assert!(reason(ed, Algorithm::RsaSha256).starts_with("inappropriate key algorithm"));
        assert_eq!(reason("v=DKIM1; p=", Algorithm::RsaSha256), "key revoked");
        assert_eq!(
            reason("v=DKIM2; p=AA", Algorithm::RsaSha256),
            "key incompatible version"
        );
        assert!(reason("v=DKIM1; h=sha1; p=AA", Algorithm::RsaSha256).contains("h=sha1"));
        assert!(reason("v=DKIM1; s=tlsrpt; p=AA", Algorithm::RsaSha256).contains("not for email"));
        assert!(reason("v=DKIM1", Algorithm::RsaSha256).contains("no p= tag"));
        assert!(
            reason("v=DKIM1; k=ed25519; p=AAAA", Algorithm::Ed25519Sha256).contains("32 bytes")
        );
        assert!(reason("v=DKIM1; p=AAAA", Algorithm::RsaSha256).contains("not an RSA public key"));
        let strict = format!("{ed}; t=y:s");
        assert!(
            parse_key_record(&strict, Algorithm::Ed25519Sha256)
                .unwrap()
                .strict
        );
    }

    #[test]
    fn rsa_keys_from_openssl_parse_in_both_forms() {
        let spki = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keys/rsa2048.p.txt"
        ))
        .unwrap();
        let der = BASE64.decode(spki.trim()).unwrap();
        let PublicKey::Rsa { n, e } = rsa_public_key(&der).unwrap() else {
            panic!("not RSA")
        };
        assert_eq!((n.len(), e.as_slice()), (256, &[1, 0, 1][..]));
        // The PKCS#1 RSAPublicKey inside the BIT STRING parses too.
        let (_, outer, _) = der_element(&der).unwrap();
        let (_, _, rest) = der_element(outer).unwrap();
        let (_, bits, _) = der_element(rest).unwrap();
        assert!(matches!(
            rsa_public_key(&bits[1..]),
            Ok(PublicKey::Rsa { .. })
        ));
        assert!(rsa_public_key(&der[..100]).is_err());
    }
}
