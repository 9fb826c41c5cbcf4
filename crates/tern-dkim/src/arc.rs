//! ARC, the Authenticated Received Chain of RFC 8617: what `msg:arc_verify`
//! and `msg:arc_seal` run.
//!
//! An ARC set is three header fields with the same instance `i=N`:
//! `ARC-Authentication-Results` (what hop N concluded), an
//! `ARC-Message-Signature` (a DKIM signature over the message as hop N
//! forwarded it) and an `ARC-Seal` (a signature over the ARC fields of sets
//! 1..N, binding them together). [`verify_arc`] follows RFC 8617 §5.2:
//!
//! 1. no ARC field at all gives `none`;
//! 2. every field must parse and carry an instance in 1..=50, and the sets
//!    must be complete, unique and numbered 1..N without gaps;
//! 3. `cv=` must be `none` in set 1 and `pass` in every later set; a
//!    `cv=fail` anywhere ends the chain;
//! 4. the most recent `ARC-Message-Signature` must verify against the
//!    message; older ones are not checked, because intermediaries that
//!    change the message (mailing lists) are what ARC is for;
//! 5. every `ARC-Seal` must verify, oldest first.
//!
//! Anything else is `fail`, with the first problem as the reason. The
//! result carries `header.oldest-pass` like KumoMTA's: `0` on pass, and on
//! fail the number of sets whose seal verified before the failure.
//!
//! [`seal_arc`] verifies first and adds nothing to a failed chain (as
//! upstream); otherwise it returns the new set, `cv=none` for the first set
//! and `cv=pass` after a passing chain. Keys, canonicalization and signature
//! checks are the DKIM verifier's, so both agree on every edge case.

use crate::canon::{self, HeaderField};
use crate::config::Canonicalization;
use crate::verify::{
    Failure, blank_b_tag, check_dns_label_text, decode_base64, fail, fetch_key, parse_algorithm,
    parse_canonicalization, parse_tag_list, permerror, signed_header_input, tag, verify_signature,
};
use crate::{DkimError, Signer};
use std::collections::BTreeMap;
use tern_dns::Resolver;
use tern_message::{AuthenticationResult, render_authentication_results};

/// The highest instance number RFC 8617 §4.2.1 allows.
pub const MAX_ARC_INSTANCE: u32 = 50;

const AAR: &str = "ARC-Authentication-Results";
const AMS: &str = "ARC-Message-Signature";
const AS: &str = "ARC-Seal";

/// The chain validation status of RFC 8617 §4.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainStatus {
    None,
    Pass,
    Fail,
}

impl ChainStatus {
    /// The `cv=` / result spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pass => "pass",
            Self::Fail => "fail",
        }
    }
}

/// One complete ARC set: the three fields as written in the message.
struct ArcSet<'a> {
    aar: &'a [u8],
    ams: &'a [u8],
    seal: &'a [u8],
}

/// What verification found; the sets are kept for sealing.
struct Chain<'a> {
    sets: Vec<ArcSet<'a>>,
    status: ChainStatus,
    /// Sets whose seal verified before the first failure.
    validated: usize,
    reason: Option<String>,
}

impl Chain<'_> {
    fn result(&self) -> AuthenticationResult {
        let mut result = AuthenticationResult::new("arc", self.status.as_str());
        result.reason = self.reason.clone();
        if !self.sets.is_empty() || self.status == ChainStatus::Fail {
            let oldest_pass = match self.status {
                ChainStatus::Fail => self.validated,
                _ => 0,
            };
            result
                .props
                .insert("header.oldest-pass".into(), oldest_pass.to_string());
        }
        result
    }
}

fn value_of<'a>(field: &HeaderField<'a>) -> &'a [u8] {
    memchr::memchr(b':', field.raw).map_or(&b""[..], |i| &field.raw[i + 1..])
}

/// The instance of an `ARC-Authentication-Results` value: `i=N;` comes
/// first (RFC 8617 §4.1.1).
fn aar_instance(value: &str) -> Result<u32, String> {
    let (first, _) = value
        .split_once(';')
        .ok_or_else(|| "it has no \"i=N;\" prefix".to_string())?;
    let (name, number) = first
        .split_once('=')
        .ok_or_else(|| "it has no \"i=N;\" prefix".to_string())?;
    if !name.trim().eq_ignore_ascii_case("i") {
        return Err("it does not start with \"i=N;\"".to_string());
    }
    number
        .trim()
        .parse()
        .map_err(|_| format!("invalid instance {:?}", number.trim()))
}

/// The instance of an `ARC-Seal` or `ARC-Message-Signature` value.
fn tagged_instance(value: &str) -> Result<u32, String> {
    let tags = parse_tag_list(value)?;
    let number = tag(&tags, "i").ok_or_else(|| "it has no i= tag".to_string())?;
    number
        .parse()
        .map_err(|_| format!("invalid instance {number:?}"))
}

/// Steps 1 and 2: collect the sets, or the first structural problem.
fn collect_sets<'a>(fields: &[HeaderField<'a>]) -> Result<Vec<ArcSet<'a>>, String> {
    // instance -> [AAR, AMS, AS] fields
    let mut by_instance: BTreeMap<u32, [Vec<&'a [u8]>; 3]> = BTreeMap::new();
    for field in fields {
        let slot = [AAR, AMS, AS]
            .iter()
            .position(|name| field.name.eq_ignore_ascii_case(name.as_bytes()));
        let Some(slot) = slot else { continue };
        let name = [AAR, AMS, AS][slot];
        let value = String::from_utf8_lossy(value_of(field));
        let instance = if slot == 0 {
            aar_instance(&value)
        } else {
            tagged_instance(&value)
        }
        .map_err(|err| format!("An {name} header could not be parsed: {err}"))?;
        if instance == 0 || instance > MAX_ARC_INSTANCE {
            return Err(format!(
                "An {name} header has an invalid instance value ({instance}; 1 to {MAX_ARC_INSTANCE} are allowed)"
            ));
        }
        by_instance.entry(instance).or_default()[slot].push(field.raw);
    }
    let mut sets = Vec::with_capacity(by_instance.len());
    for (expected, (instance, [aars, amss, seals])) in (1..).zip(by_instance) {
        if instance != expected {
            return Err(format!("The ARC Set with instance {expected} is missing"));
        }
        let duplicates: Vec<&str> = [(AAR, &aars), (AMS, &amss), (AS, &seals)]
            .iter()
            .filter(|(_, found)| found.len() > 1)
            .map(|(name, _)| *name)
            .collect();
        if !duplicates.is_empty() {
            return Err(format!(
                "There are duplicate {} header(s) for instance {instance}",
                duplicates.join(", ")
            ));
        }
        match (aars.first(), amss.first(), seals.first()) {
            (Some(aar), Some(ams), Some(seal)) => sets.push(ArcSet { aar, ams, seal }),
            _ => {
                return Err(format!(
                    "The ARC Set with instance {instance} is missing some of its constituent headers"
                ));
            }
        }
    }
    Ok(sets)
}

/// Step 3: the `cv=` of the seal of set `instance`, and that the seal has
/// the tags it needs.
fn seal_tags(set: &ArcSet<'_>, instance: usize) -> Result<Vec<(String, String)>, String> {
    let value = String::from_utf8_lossy(value_of(&HeaderField {
        name: b"",
        raw: set.seal,
    }))
    .into_owned();
    let tags = parse_tag_list(&value)
        .map_err(|err| format!("The {AS} for instance {instance} could not be parsed: {err}"))?;
    if tag(&tags, "h").is_some() {
        return Err(format!(
            "The {AS} for instance {instance} has an h= tag, which RFC 8617 forbids"
        ));
    }
    match tag(&tags, "cv").map(str::to_ascii_lowercase).as_deref() {
        Some("pass") if instance == 1 => Err(format!(
            "The {AS} for instance 1 is marked as cv=pass but that is invalid"
        )),
        Some("none") if instance > 1 => Err(format!(
            "The {AS} for instance {instance} is marked as cv=none but that is invalid"
        )),
        Some("pass" | "none") => Ok(tags),
        Some("fail") => Err(format!(
            "The {AS} for instance {instance} is marked as failing its chain validation"
        )),
        Some(other) => Err(format!(
            "The {AS} for instance {instance} has an invalid chain validation status {other:?}"
        )),
        None => Err(format!(
            "The {AS} for instance {instance} is missing its chain validation status"
        )),
    }
}

/// The signing domain, selector, algorithm and signature of an AMS or AS.
struct SignatureTags {
    algorithm: crate::Algorithm,
    domain: String,
    selector: String,
    signature: Vec<u8>,
}

fn signature_tags(tags: &[(String, String)], required: &[&str]) -> Result<SignatureTags, Failure> {
    for name in required {
        if tag(tags, name).is_none() {
            return Err(permerror(format!(
                "signature missing required tag ({name})"
            )));
        }
    }
    let required = |name: &str| tag(tags, name).unwrap_or_default();
    let domain = required("d").to_ascii_lowercase();
    check_dns_label_text("d", &domain)?;
    let selector = required("s").to_ascii_lowercase();
    check_dns_label_text("s", &selector)?;
    Ok(SignatureTags {
        algorithm: parse_algorithm(required("a"))?,
        domain,
        selector,
        signature: decode_base64("b=", required("b"))?,
    })
}

/// Step 4: the most recent `ARC-Message-Signature` against the message.
async fn verify_ams(
    ams: &[u8],
    fields: &[HeaderField<'_>],
    body: &[u8],
    resolver: &Resolver,
) -> Result<(), Failure> {
    let value = String::from_utf8_lossy(value_of(&HeaderField {
        name: b"",
        raw: ams,
    }));
    let tags = parse_tag_list(&value)
        .map_err(|err| permerror(format!("signature syntax error: {err}")))?;
    let sig = signature_tags(&tags, &["i", "a", "b", "bh", "d", "h", "s"])?;
    let (header_canon, body_canon) = parse_canonicalization(tag(&tags, "c"))?;
    let headers: Vec<String> = tag(&tags, "h")
        .unwrap_or_default()
        .split(':')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    if headers.iter().any(|name| name == "arc-seal") {
        return Err(permerror(
            "the signature covers ARC-Seal, which RFC 8617 forbids",
        ));
    }
    let length = match tag(&tags, "l") {
        None => None,
        Some(l) => Some(
            l.parse::<u64>()
                .map_err(|_| permerror(format!("invalid \"l\" tag value {l:?}")))?,
        ),
    };
    let hashed = canon::hash_body_prefix(body, body_canon, length);
    let body_hash = decode_base64("bh=", tag(&tags, "bh").unwrap_or_default())?;
    if length.is_some_and(|l| hashed.length < l) || hashed.digest.as_ref() != body_hash {
        return Err(fail("body hash did not verify"));
    }
    let key = fetch_key(resolver, &sig.selector, &sig.domain, sig.algorithm).await?;
    let input = signed_header_input(fields, &headers, ams, header_canon);
    verify_signature(&key.key, &input, &sig.signature)
}

/// Step 5: the seal of set `instance` (1-based) over sets 1..=instance.
async fn verify_seal(
    sets: &[ArcSet<'_>],
    instance: usize,
    tags: &[(String, String)],
    resolver: &Resolver,
) -> Result<(), Failure> {
    let sig = signature_tags(tags, &["i", "a", "b", "cv", "d", "s"])?;
    let mut input = Vec::with_capacity(4096);
    for (index, set) in sets[..instance].iter().enumerate() {
        canon::canonicalize_header(&mut input, set.aar, Canonicalization::Relaxed);
        input.extend_from_slice(b"\r\n");
        canon::canonicalize_header(&mut input, set.ams, Canonicalization::Relaxed);
        input.extend_from_slice(b"\r\n");
        if index + 1 < instance {
            canon::canonicalize_header(&mut input, set.seal, Canonicalization::Relaxed);
            input.extend_from_slice(b"\r\n");
        }
    }
    // The seal being checked comes last, with b= empty and no line ending.
    canon::canonicalize_header(
        &mut input,
        &blank_b_tag(sets[instance - 1].seal),
        Canonicalization::Relaxed,
    );
    let key = fetch_key(resolver, &sig.selector, &sig.domain, sig.algorithm).await?;
    verify_signature(&key.key, &input, &sig.signature)
}

async fn check_chain<'a>(
    fields: &[HeaderField<'a>],
    body: &[u8],
    resolver: &Resolver,
) -> Chain<'a> {
    let failed = |sets, validated, reason: String| Chain {
        sets,
        status: ChainStatus::Fail,
        validated,
        reason: Some(reason),
    };
    let sets = match collect_sets(fields) {
        Ok(sets) => sets,
        Err(reason) => return failed(Vec::new(), 0, reason),
    };
    if sets.is_empty() {
        return Chain {
            sets,
            status: ChainStatus::None,
            validated: 0,
            reason: None,
        };
    }
    // cv= of every seal before any cryptography: a chain some earlier hop
    // declared failed costs no DNS lookups.
    let mut all_tags = Vec::with_capacity(sets.len());
    for (index, set) in sets.iter().enumerate() {
        match seal_tags(set, index + 1) {
            Ok(tags) => all_tags.push(tags),
            Err(reason) => return failed(sets, 0, reason),
        }
    }
    let newest = sets.len();
    if let Err(failure) = verify_ams(sets[newest - 1].ams, fields, body, resolver).await {
        let reason = format!(
            "The {AMS} for instance {newest} failed to validate: {}",
            failure.reason
        );
        return failed(sets, 0, reason);
    }
    for (index, tags) in all_tags.iter().enumerate() {
        if let Err(failure) = verify_seal(&sets, index + 1, tags, resolver).await {
            let reason = format!(
                "The {AS} for instance {} failed to validate: {}",
                index + 1,
                failure.reason
            );
            return failed(sets, index, reason);
        }
    }
    Chain {
        sets,
        status: ChainStatus::Pass,
        validated: newest,
        reason: None,
    }
}

/// Verify the ARC chain of `message`: one result, method `arc`.
pub async fn verify_arc(message: &[u8], resolver: &Resolver) -> AuthenticationResult {
    let (fields, body) = canon::split_message(message);
    check_chain(&fields, body, resolver).await.result()
}

/// Verify the chain of `message` and, unless it failed or already has
/// [`MAX_ARC_INSTANCE`] sets, return the next ARC set as header fields to
/// prepend (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
/// CRLF-terminated). `results` become the ARC-Authentication-Results of
/// `serv_id`; `unix_time` is the `t=` of both signatures.
pub async fn seal_arc(
    message: &[u8],
    signer: &Signer,
    serv_id: &str,
    results: &[AuthenticationResult],
    resolver: &Resolver,
    unix_time: u64,
) -> Result<Option<String>, DkimError> {
    let (fields, body) = canon::split_message(message);
    let chain = check_chain(&fields, body, resolver).await;
    let cv = match chain.status {
        ChainStatus::Fail => return Ok(None),
        status => status,
    };
    let Some(instance) = u32::try_from(chain.sets.len() + 1)
        .ok()
        .filter(|&i| i <= MAX_ARC_INSTANCE)
    else {
        return Ok(None);
    };
    let rendered = render_authentication_results(serv_id, None, results, "\r\n")
        .map_err(|err| DkimError::Config(format!("authentication results: {err}")))?;
    let aar = format!("{AAR}: i={instance}; {rendered}\r\n");
    // The new AAR is part of the message the AMS sees, so a signer that
    // lists ARC-Authentication-Results covers the one it is adding.
    let mut with_aar = Vec::with_capacity(aar.len() + message.len());
    with_aar.extend_from_slice(aar.as_bytes());
    with_aar.extend_from_slice(message);
    let ams = signer.sign_arc_message(&with_aar, instance, unix_time)?;
    let mut sealed: Vec<&[u8]> = Vec::with_capacity(chain.sets.len() * 3 + 2);
    for set in &chain.sets {
        sealed.extend([set.aar, set.ams, set.seal]);
    }
    sealed.extend([aar.as_bytes(), ams.as_bytes()]);
    let seal = signer.sign_arc_seal(&sealed, instance, cv.as_str(), unix_time)?;
    Ok(Some(format!("{seal}{ams}{aar}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &[u8]) -> Vec<HeaderField<'_>> {
        canon::split_message(text).0
    }

    #[test]
    fn instances_are_parsed_from_each_field_kind() {
        assert_eq!(aar_instance(" i=3; mx.example.com; none"), Ok(3));
        assert_eq!(aar_instance("i = 12 ;mx; none"), Ok(12));
        assert!(aar_instance("mx.example.com; none").is_err());
        assert!(aar_instance("i=x; mx").is_err());
        assert_eq!(tagged_instance(" i=2; a=rsa-sha256; cv=pass"), Ok(2));
        assert!(tagged_instance("a=rsa-sha256").is_err());
    }

    #[test]
    fn structural_problems_are_reported() {
        let err = |text: &[u8]| collect_sets(&fields(text)).err().unwrap();
        assert!(
            collect_sets(&fields(b"From: a@b\r\n\r\n"))
                .unwrap()
                .is_empty()
        );
        assert!(
            err(b"ARC-Seal: i=1; cv=none\r\nARC-Message-Signature: i=1; a=x\r\n\r\n")
                .contains("missing some of its constituent headers")
        );
        let two = b"ARC-Seal: i=2; cv=pass\r\nARC-Message-Signature: i=2; a=x\r\n\
ARC-Authentication-Results: i=2; mx; none\r\n\r\n";
        assert_eq!(err(two), "The ARC Set with instance 1 is missing");
        assert!(err(b"ARC-Seal: i=51; cv=pass\r\n\r\n").contains("invalid instance value"));
        assert!(err(b"ARC-Seal: i=0; cv=pass\r\n\r\n").contains("invalid instance value"));
        let dup = b"ARC-Seal: i=1; cv=none\r\nARC-Seal: i=1; cv=none\r\n\
ARC-Message-Signature: i=1; a=x\r\nARC-Authentication-Results: i=1; mx; none\r\n\r\n";
        assert_eq!(
            err(dup),
            "There are duplicate ARC-Seal header(s) for instance 1"
        );
        assert!(err(b"ARC-Seal: cv=none\r\n\r\n").contains("could not be parsed"));
    }

    #[test]
    fn chain_validation_values_are_checked() {
        let set = |seal: &'static [u8]| ArcSet {
            aar: b"",
            ams: b"",
            seal,
        };
        assert!(seal_tags(&set(b"ARC-Seal: i=1; cv=none; a=x"), 1).is_ok());
        assert!(seal_tags(&set(b"ARC-Seal: i=2; cv=Pass"), 2).is_ok());
        let reason = |seal: &'static [u8], instance| seal_tags(&set(seal), instance).unwrap_err();
        assert!(reason(b"ARC-Seal: i=1; cv=pass", 1).contains("cv=pass but that is invalid"));
        assert!(reason(b"ARC-Seal: i=2; cv=none", 2).contains("cv=none but that is invalid"));
        assert!(reason(b"ARC-Seal: i=2; cv=fail", 2).contains("failing its chain validation"));
        assert!(reason(b"ARC-Seal: i=2", 2).contains("missing its chain validation status"));
        assert!(reason(b"ARC-Seal: i=1; cv=none; h=from", 1).contains("h= tag"));
    }

    #[test]
    fn results_carry_oldest_pass_like_kumomta() {
        let chain = |status, sets: usize, validated| Chain {
            sets: (0..sets)
                .map(|_| ArcSet {
                    aar: b"",
                    ams: b"",
                    seal: b"",
                })
                .collect(),
            status,
            validated,
            reason: None,
        };
        assert!(chain(ChainStatus::None, 0, 0).result().props.is_empty());
        let pass = chain(ChainStatus::Pass, 2, 2).result();
        assert_eq!(pass.props["header.oldest-pass"], "0");
        let failed = chain(ChainStatus::Fail, 3, 1).result();
        assert_eq!(
            (
                failed.result.as_str(),
                failed.props["header.oldest-pass"].as_str()
            ),
            ("fail", "1")
        );
    }
}
