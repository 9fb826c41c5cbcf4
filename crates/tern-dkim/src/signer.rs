//! [`Signer`]: a validated [`SignerConfig`] with its parsed key, producing
//! the `DKIM-Signature` header field for a message.
//!
//! Signing is one pass over the message: the body is hashed while it is
//! canonicalized, the selected header fields are canonicalized into one
//! buffer together with the new signature field (its `b=` still empty), and
//! that buffer is handed to `ring`. The result is the complete header field,
//! folded to lines of at most 78 characters and ending in CRLF; the caller
//! prepends it to the message.
//!
//! Header selection (`h=`), decided here and documented in `docs/dkim.md`:
//! * `From` is always signed (RFC 6376 §5.4 requires it); if the configured
//!   list lacks it, it is put first.
//! * A listed header that occurs N times in the message is listed N times,
//!   so every instance is covered; with `over_sign` it is listed N+1 times.
//! * A listed header that is absent is still listed once, so a copy of the
//!   message cannot gain that header without breaking the signature.
//! * A name the configuration repeats on purpose (manual over-signing) is
//!   listed at least as many times as it was configured.

use crate::DkimError;
use crate::canon;
use crate::config::{Algorithm, Canonicalization, SignerConfig};
use crate::key::SigningKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SystemRandom;
use ring::{digest, signature};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest header line we write, not counting the CRLF (RFC 5322 §2.1.1).
const MAX_LINE: usize = 78;
/// Room kept at the end of a line for the `;` or `:` that may follow.
const RESERVE: usize = 1;

/// A ready-to-use DKIM signer. Cheap to share behind an `Arc`; signing
/// takes `&self`.
#[derive(Debug)]
pub struct Signer {
    algorithm: Algorithm,
    key: SigningKey,
    rng: SystemRandom,
    domain: String,
    selector: String,
    header_canonicalization: Canonicalization,
    body_canonicalization: Canonicalization,
    /// Distinct header names (first spelling kept) with how many times the
    /// configuration lists each.
    headers: Vec<(String, usize)>,
    over_sign: bool,
    expiration: Option<Duration>,
    body_length: bool,
    /// Tags written before `t=`: `v`, `a`, `c`, `d`, `s` and optional `i`.
    leading_tags: Vec<String>,
    /// Optional tags written after `l=`: `r`, `atps`, `atpsh`.
    trailing_tags: Vec<String>,
}

impl Signer {
    /// Load the key from `config.key` and build a signer.
    pub fn new(config: &SignerConfig, algorithm: Algorithm) -> Result<Self, DkimError> {
        let key_data = config.key.load().map_err(DkimError::Key)?;
        Self::from_key_data(config, algorithm, &key_data)
    }

    /// Build a signer from key bytes already in hand; `config.key` is not
    /// read.
    pub fn from_key_data(
        config: &SignerConfig,
        algorithm: Algorithm,
        key_data: &[u8],
    ) -> Result<Self, DkimError> {
        check_tag_text("domain", &config.domain)?;
        check_tag_text("selector", &config.selector)?;
        let headers = header_list(&config.headers)?;
        let mut leading_tags = vec![
            "v=1".to_string(),
            format!("a={}", algorithm.tag_value()),
            format!(
                "c={}/{}",
                config.header_canonicalization.tag_value(),
                config.body_canonicalization.tag_value()
            ),
            format!("d={}", config.domain),
            format!("s={}", config.selector),
        ];
        if let Some(auid) = &config.agent_user_identifier {
            leading_tags.push(format!("i={}", auid_tag_value(auid, &config.domain)?));
        }
        let mut trailing_tags = Vec::new();
        if config.reporting {
            trailing_tags.push("r=y".to_string());
        }
        match (&config.atps, &config.atpsh) {
            (Some(atps), Some(atpsh)) => {
                check_tag_text("atps", atps)?;
                let atpsh = atpsh.to_ascii_lowercase();
                if !matches!(atpsh.as_str(), "sha256" | "sha1" | "none") {
                    return Err(DkimError::Config(format!(
                        "atpsh must be \"sha256\", \"sha1\" or \"none\", not {atpsh:?}"
                    )));
                }
                trailing_tags.push(format!("atps={atps}"));
                trailing_tags.push(format!("atpsh={atpsh}"));
            }
            (Some(_), None) => {
                return Err(DkimError::Config(
                    "atps needs atpsh (\"sha256\", \"sha1\" or \"none\"), as RFC 6541 requires both"
                        .to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(DkimError::Config(
                    "atpsh is set but atps is not".to_string(),
                ));
            }
            (None, None) => {}
        }
        Ok(Self {
            algorithm,
            key: SigningKey::parse(algorithm, key_data)?,
            rng: SystemRandom::new(),
            domain: config.domain.clone(),
            selector: config.selector.clone(),
            header_canonicalization: config.header_canonicalization,
            body_canonicalization: config.body_canonicalization,
            headers,
            over_sign: config.over_sign,
            expiration: config.expiration,
            body_length: config.body_length,
            leading_tags,
            trailing_tags,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The DNS name of the key record: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish at [`Signer::dns_name`], e.g.
    /// `v=DKIM1; k=rsa; p=MIIBIjANBg...`. Long RSA records must be split
    /// into strings of at most 255 characters by the zone file.
    pub fn dns_txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.key_type(),
            self.key.public_key_base64()
        )
    }

    /// Sign `message` (header section, empty line, body) now and return the
    /// `DKIM-Signature` header field, folded and CRLF-terminated.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.sign_at(message, now)
    }

    /// [`Signer::sign`] with an explicit signing time (`t=`, Unix seconds).
    pub fn sign_at(&self, message: &[u8], unix_time: u64) -> Result<String, DkimError> {
        self.sign_fields(
            message,
            "DKIM-Signature",
            &self.leading_tags,
            true,
            unix_time,
        )
    }

    /// An `ARC-Message-Signature` for instance `instance` (RFC 8617 §4.1.2):
    /// the DKIM signature's tags and header selection under another name,
    /// with `i=` carrying the instance. The DKIM-only tags (`v=`, the AUID
    /// `i=`, `x=`, `l=`, `r=`, `atps=`) are left out: ARC has no `v=` and
    /// gives `i=` another meaning, and the others are not part of ARC.
    pub(crate) fn sign_arc_message(
        &self,
        message: &[u8],
        instance: u32,
        unix_time: u64,
    ) -> Result<String, DkimError> {
        if self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("ARC-Seal"))
        {
            return Err(DkimError::Config(
                "an ARC-Message-Signature must not sign ARC-Seal (RFC 8617 §4.1.2); remove it from headers"
                    .to_string(),
            ));
        }
        let leading = [
            format!("i={instance}"),
            format!("a={}", self.algorithm.tag_value()),
            format!(
                "c={}/{}",
                self.header_canonicalization.tag_value(),
                self.body_canonicalization.tag_value()
            ),
            format!("d={}", self.domain),
            format!("s={}", self.selector),
        ];
        self.sign_fields(message, "ARC-Message-Signature", &leading, false, unix_time)
    }

    /// An `ARC-Seal` (RFC 8617 §4.1.3) over `sealed`: the ARC header fields
    /// of every set so far, oldest instance first, each as written in the
    /// message (AAR, AMS, AS per set), ending with the new AAR and AMS.
    /// Always relaxed header canonicalization, as the RFC requires.
    pub(crate) fn sign_arc_seal(
        &self,
        sealed: &[&[u8]],
        instance: u32,
        chain_validation: &str,
        unix_time: u64,
    ) -> Result<String, DkimError> {
        let mut input = Vec::with_capacity(4096);
        for field in sealed {
            canon::canonicalize_header(&mut input, field, Canonicalization::Relaxed);
            input.extend_from_slice(b"\r\n");
        }
        let mut header = FoldedHeader::new("ARC-Seal");
        header.tag(&format!("i={instance}"));
        header.tag(&format!("a={}", self.algorithm.tag_value()));
        header.tag(&format!("cv={chain_validation}"));
        header.tag(&format!("d={}", self.domain));
        header.tag(&format!("s={}", self.selector));
        header.tag(&format!("t={unix_time}"));
        header.tag("b=");
        canon::canonicalize_header(
            &mut input,
            header.text.as_bytes(),
            Canonicalization::Relaxed,
        );
        header.wrap(&BASE64.encode(self.sign_input(&input)?));
        header.text.push_str("\r\n");
        Ok(header.text)
    }

    /// The signature of `input` with this signer's key.
    fn sign_input(&self, input: &[u8]) -> Result<Vec<u8>, DkimError> {
        Ok(match &self.key {
            SigningKey::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    input,
                    &mut signature,
                )
                .map_err(|_| DkimError::Sign("RSA signing failed".to_string()))?;
                signature
            }
            // RFC 8463: Ed25519 signs the SHA-256 digest of the input.
            SigningKey::Ed25519(key) => key
                .sign(digest::digest(&digest::SHA256, input).as_ref())
                .as_ref()
                .to_vec(),
        })
    }

    /// A DKIM-style signature field named `name`, starting with `leading`
    /// tags; `dkim_tags` adds `x=`, `l=` and the trailing DKIM-only tags.
    fn sign_fields(
        &self,
        message: &[u8],
        name: &str,
        leading: &[String],
        dkim_tags: bool,
        unix_time: u64,
    ) -> Result<String, DkimError> {
        let (fields, body) = canon::split_message(message);
        let body_hash = canon::hash_body(body, self.body_canonicalization);

        // The signing input: selected header fields, then this signature.
        let mut input = Vec::with_capacity(1024);
        let mut h_names: Vec<&str> = Vec::with_capacity(self.headers.len() * 2);
        for (name, configured) in &self.headers {
            let present = fields
                .iter()
                .filter(|field| field.name.eq_ignore_ascii_case(name.as_bytes()))
                .count();
            let wanted = if self.over_sign {
                present + 1
            } else {
                present.max(1)
            };
            let listed = wanted.max(*configured);
            h_names.extend(std::iter::repeat_n(name.as_str(), listed));
            // Instances are taken from the bottom up (RFC 6376 §5.4.2).
            for field in fields
                .iter()
                .rev()
                .filter(|field| field.name.eq_ignore_ascii_case(name.as_bytes()))
                .take(listed)
            {
                canon::canonicalize_header(&mut input, field.raw, self.header_canonicalization);
                input.extend_from_slice(b"\r\n");
            }
        }

        let mut header = FoldedHeader::new(name);
        for tag in leading {
            header.tag(tag);
        }
        header.tag(&format!("t={unix_time}"));
        if dkim_tags {
            if let Some(expiration) = self.expiration {
                header.tag(&format!(
                    "x={}",
                    unix_time.saturating_add(expiration.as_secs())
                ));
            }
            if self.body_length {
                header.tag(&format!("l={}", body_hash.length));
            }
            for tag in &self.trailing_tags {
                header.tag(tag);
            }
        }
        header.tag_list("h=", &h_names);
        header.tag(&format!("bh={}", BASE64.encode(body_hash.digest.as_ref())));
        header.tag("b=");
        // Hashed without its CRLF and with b= empty (RFC 6376 §3.7).
        canon::canonicalize_header(
            &mut input,
            header.text.as_bytes(),
            self.header_canonicalization,
        );
        header.wrap(&BASE64.encode(self.sign_input(&input)?));
        header.text.push_str("\r\n");
        Ok(header.text)
    }
}

/// Builds `<name>: tag; tag; ...` (`DKIM-Signature`, `ARC-Seal`, ...), folding before a tag that would
/// overflow the line.
struct FoldedHeader {
    text: String,
    line_len: usize,
    first: bool,
}

impl FoldedHeader {
    fn new(name: &str) -> Self {
        let mut text = String::with_capacity(640);
        text.push_str(name);
        text.push_str(": ");
        Self {
            line_len: text.len(),
            text,
            first: true,
        }
    }

    /// Write the separator before a tag whose first piece is `len` long.
    fn separate(&mut self, len: usize) {
        if self.first {
            self.first = false;
        } else if self.line_len + 2 + len + RESERVE > MAX_LINE {
            self.text.push_str(";\r\n\t");
            self.line_len = 1;
        } else {
            self.text.push_str("; ");
            self.line_len += 2;
        }
    }

    fn tag(&mut self, tag: &str) {
        self.separate(tag.len());
        self.text.push_str(tag);
        self.line_len += tag.len();
    }

    /// `h=a:b:c`, folding after a colon when the list is long.
    fn tag_list(&mut self, key: &str, items: &[&str]) {
        let first = items.first().copied().unwrap_or_default();
        self.separate(key.len() + first.len());
        self.text.push_str(key);
        self.text.push_str(first);
        self.line_len += key.len() + first.len();
        for item in items.iter().skip(1) {
            if self.line_len + 1 + item.len() + RESERVE > MAX_LINE {
                self.text.push_str(":\r\n\t");
                self.line_len = 1;
            } else {
                self.text.push(':');
                self.line_len += 1;
            }
            self.text.push_str(item);
            self.line_len += item.len();
        }
    }

    /// Append a base64 value, filling lines and folding between characters
    /// (folding white space is allowed anywhere inside `b=`).
    fn wrap(&mut self, mut value: &str) {
        while !value.is_empty() {
            let room = MAX_LINE.saturating_sub(self.line_len);
            if room == 0 {
                self.text.push_str("\r\n\t");
                self.line_len = 1;
                continue;
            }
            let (piece, rest) = value.split_at(room.min(value.len()));
            self.text.push_str(piece);
            self.line_len += piece.len();
            value = rest;
        }
    }
}

/// Distinct header names with their configured counts, `From` first if the
/// configuration left it out.
fn header_list(configured: &[String]) -> Result<Vec<(String, usize)>, DkimError> {
    let mut headers: Vec<(String, usize)> = Vec::with_capacity(configured.len() + 1);
    for name in configured {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(DkimError::Config(format!(
                "header name {name:?} is not a valid header field name"
            )));
        }
        match headers
            .iter_mut()
            .find(|(seen, _)| seen.eq_ignore_ascii_case(name))
        {
            Some((_, count)) => *count += 1,
            None => headers.push((name.clone(), 1)),
        }
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("From"))
    {
        headers.insert(0, ("From".to_string(), 1));
    }
    Ok(headers)
}

/// Tag values we write verbatim must be non-empty printable ASCII without
/// `;` or whitespace, or they would corrupt the header.
fn check_tag_text(what: &str, value: &str) -> Result<(), DkimError> {
    if value.is_empty() {
        return Err(DkimError::Config(format!("{what} must not be empty")));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
        return Err(DkimError::Config(format!(
            "{what} {value:?} must be printable ASCII without ';' or spaces (use the punycode form of an internationalized domain)"
        )));
    }
    Ok(())
}

/// Check `i=` against `d=` (its domain must be the signing domain or a
/// subdomain of it, RFC 6376 §3.5) and encode it as dkim-quoted-printable.
fn auid_tag_value(auid: &str, domain: &str) -> Result<String, DkimError> {
    let Some((_, auid_domain)) = auid.rsplit_once('@') else {
        return Err(DkimError::Config(format!(
            "agent_user_identifier {auid:?} must contain '@' (for example \"@{domain}\")"
        )));
    };
    let auid_domain = auid_domain.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    if auid_domain != domain && !auid_domain.ends_with(&format!(".{domain}")) {
        return Err(DkimError::Config(format!(
            "agent_user_identifier domain {auid_domain:?} must be {domain:?} or one of its subdomains"
        )));
    }
    let mut encoded = String::with_capacity(auid.len());
    for byte in auid.bytes() {
        if matches!(byte, 0x21..=0x3a | 0x3c | 0x3e..=0x7e) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("={byte:02X}"));
        }
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ED_PEM: &str = include_str!("../tests/keys/ed25519.pkcs8.pem");

    fn config(extra: serde_json::Value) -> SignerConfig {
        let mut base = json!({
            "domain": "example.com",
            "selector": "s1",
            "headers": ["From", "To", "Subject"],
            "key": {"key_data": ED_PEM},
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn signer(extra: serde_json::Value) -> Signer {
        Signer::new(&config(extra), Algorithm::Ed25519Sha256).unwrap()
    }

    fn tag(header: &str, name: &str) -> Option<String> {
        let unfolded: String = header
            .trim_start_matches("DKIM-Signature:")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        unfolded
            .split(';')
            .find_map(|part| part.strip_prefix(&format!("{name}=")).map(str::to_string))
    }

    const MESSAGE: &[u8] = b"From: A <a@example.com>\r\nTo: b@example.net\r\nTo: c@example.net\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn header_list_counts_instances_and_absent_names() {
        let header = signer(json!({"headers": ["From", "To", "Reply-To"]}))
            .sign_at(MESSAGE, 1_700_000_000)
            .unwrap();
        assert_eq!(tag(&header, "h").unwrap(), "From:To:To:Reply-To");
        let header = signer(json!({"headers": ["To", "Reply-To"], "over_sign": true}))
            .sign_at(MESSAGE, 1_700_000_000)
            .unwrap();
        // From added first; each present header N+1 times, absent once.
        assert_eq!(tag(&header, "h").unwrap(), "From:From:To:To:To:Reply-To");
    }

    #[test]
    fn optional_tags() {
        let header = signer(json!({
            "expiration": "1h", "body_length": true, "reporting": true,
            "agent_user_identifier": "user;x@Mail.Example.com",
            "atps": "esp.example", "atpsh": "SHA256",
            "header_canonicalization": "Simple",
        }))
        .sign_at(MESSAGE, 1_700_000_000)
        .unwrap();
        assert_eq!(tag(&header, "t").unwrap(), "1700000000");
        assert_eq!(tag(&header, "x").unwrap(), "1700003600");
        assert_eq!(tag(&header, "l").unwrap(), "6");
        assert_eq!(tag(&header, "r").unwrap(), "y");
        assert_eq!(tag(&header, "i").unwrap(), "user=3Bx@Mail.Example.com");
        assert_eq!(tag(&header, "atps").unwrap(), "esp.example");
        assert_eq!(tag(&header, "atpsh").unwrap(), "sha256");
        assert_eq!(tag(&header, "c").unwrap(), "simple/relaxed");
        assert_eq!(tag(&header, "a").unwrap(), "ed25519-sha256");
        let plain = signer(json!({})).sign_at(MESSAGE, 1).unwrap();
        for absent in ["x", "l", "r", "i", "atps", "atpsh"] {
            assert_eq!(tag(&plain, absent), None, "{absent} in {plain}");
        }
    }

    #[test]
    fn folded_lines_stay_short_and_end_in_crlf() {
        let many: Vec<String> = (0..40).map(|i| format!("X-Header-{i}")).collect();
        let header = signer(json!({"headers": many, "over_sign": true}))
            .sign_at(MESSAGE, 1_700_000_000)
            .unwrap();
        assert!(header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"));
        assert!(header.ends_with("\r\n"));
        for line in header.trim_end_matches("\r\n").split("\r\n") {
            assert!(line.len() <= MAX_LINE, "{line:?}");
        }
        let body_hash = tag(&header, "bh").unwrap();
        assert_eq!(BASE64.decode(body_hash).unwrap().len(), 32);
        assert_eq!(BASE64.decode(tag(&header, "b").unwrap()).unwrap().len(), 64);
    }

    #[test]
    fn invalid_configurations_are_reported() {
        let cases = [
            (json!({"domain": "exa mple.com"}), "domain"),
            (json!({"selector": ""}), "selector"),
            (json!({"headers": ["From", "Bad:Name"]}), "Bad:Name"),
            (
                json!({"agent_user_identifier": "user@other.org"}),
                "subdomains",
            ),
            (json!({"agent_user_identifier": "nobody"}), "'@'"),
            (json!({"atps": "esp.example"}), "atpsh"),
            (json!({"atps": "esp.example", "atpsh": "md5"}), "md5"),
            (json!({"atpsh": "sha256"}), "atps is not"),
            (
                json!({"key": {"vault_mount": "secret", "vault_path": "x"}}),
                "Vault",
            ),
        ];
        for (extra, expected) in cases {
            let err = Signer::new(&config(extra.clone()), Algorithm::Ed25519Sha256)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn degenerate_messages_sign_without_panicking() {
        let signer = signer(json!({"over_sign": true, "body_length": true}));
        for message in [
            &b""[..],
            b"\r\n",
            b"\n\n\n",
            b"no header section at all",
            b" leading continuation\r\nFrom: a@b\r\n\r\nx",
            b"\xff\xfe\x00:\x00\r\n\r\n\xff",
            b"From:\r\n\r\n",
        ] {
            let header = signer.sign_at(message, 1).unwrap();
            assert!(header.ends_with("\r\n"), "{message:?}");
        }
        let empty = signer.sign_at(b"", 1).unwrap();
        assert_eq!(tag(&empty, "h").unwrap(), "From:To:Subject");
        assert_eq!(tag(&empty, "l").unwrap(), "0");
    }

    #[test]
    fn dns_record_names_the_key() {
        let signer = signer(json!({}));
        assert_eq!(signer.dns_name(), "s1._domainkey.example.com");
        assert!(
            signer
                .dns_txt_record()
                .starts_with("v=DKIM1; k=ed25519; p=")
        );
    }
}
