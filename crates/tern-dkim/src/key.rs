//! Private-key loading for the two DKIM algorithms, on top of `ring`.
//!
//! Accepted inputs, matching what KumoMTA documents plus a raw Ed25519 seed:
//! * RSA: PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`)
//!   PEM, or the same structures as binary DER.
//! * Ed25519: PKCS#8 PEM or DER, version 1 (private key only, what
//!   `openssl genpkey -algorithm ed25519` writes) or version 2 (with the
//!   public key), or the bare 32-byte seed.
//!
//! `ring` only signs with RSA keys of 2048 bits or more; a shorter key gets
//! an error that says so rather than a generic parse failure.

use crate::DkimError;
use crate::config::Algorithm;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};

/// A parsed private key, ready to sign.
pub(crate) enum SigningKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            SigningKey::Rsa(key) => write!(f, "RsaKey({} bits)", key.public().modulus_len() * 8),
            SigningKey::Ed25519(_) => f.write_str("Ed25519Key"),
        }
    }
}

/// The kind of structure a PEM label announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DerKind {
    Pkcs1Rsa,
    Pkcs8,
    /// Binary input: try each structure the algorithm allows.
    Unknown,
}

impl SigningKey {
    /// Parse `data` (PEM text or binary DER, or an Ed25519 seed) for `algorithm`.
    pub(crate) fn parse(algorithm: Algorithm, data: &[u8]) -> Result<Self, DkimError> {
        let (der, kind) = match find_pem_private_key(data)? {
            Some((der, kind)) => (der, kind),
            None => (data.to_vec(), DerKind::Unknown),
        };
        match algorithm {
            Algorithm::RsaSha256 => parse_rsa(&der, kind).map(SigningKey::Rsa),
            Algorithm::Ed25519Sha256 => parse_ed25519(&der, kind).map(SigningKey::Ed25519),
        }
    }

    /// The `p=` value for the DNS TXT record: base64 of the RSA
    /// SubjectPublicKeyInfo, or of the raw 32-byte Ed25519 public key.
    pub(crate) fn public_key_base64(&self) -> String {
        match self {
            SigningKey::Rsa(key) => BASE64.encode(rsa_spki(key.public().as_ref())),
            SigningKey::Ed25519(key) => BASE64.encode(key.public_key().as_ref()),
        }
    }
}

fn parse_rsa(der: &[u8], kind: DerKind) -> Result<RsaKeyPair, DkimError> {
    let result = match kind {
        DerKind::Pkcs1Rsa => RsaKeyPair::from_der(der),
        DerKind::Pkcs8 => RsaKeyPair::from_pkcs8(der),
        DerKind::Unknown => RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)),
    };
    result.map_err(|rejected| {
        let reason = rejected.to_string();
        if reason.contains("TooSmall") {
            DkimError::Key(
                "RSA keys shorter than 2048 bits are not supported by Tern yet; generate a 2048-bit key (openssl genrsa -out key.pem 2048)"
                    .to_string(),
            )
        } else if kind == DerKind::Unknown {
            DkimError::Key(format!(
                "the RSA key is neither PKCS#1 nor PKCS#8 PEM/DER ({reason})"
            ))
        } else {
            DkimError::Key(format!("the RSA key was rejected: {reason}"))
        }
    })
}

fn parse_ed25519(der: &[u8], kind: DerKind) -> Result<Ed25519KeyPair, DkimError> {
    if kind == DerKind::Pkcs1Rsa {
        return Err(DkimError::Key(
            "an RSA key was given to an Ed25519 signer".to_string(),
        ));
    }
    if kind == DerKind::Unknown && der.len() == 32 {
        return Ed25519KeyPair::from_seed_unchecked(der)
            .map_err(|err| DkimError::Key(format!("the Ed25519 seed was rejected: {err}")));
    }
    // `maybe_unchecked` accepts PKCS#8 v1 (seed only) as well as v2.
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|err| {
        DkimError::Key(format!(
            "the Ed25519 key is not PKCS#8 (PEM or DER) or a 32-byte seed ({err})"
        ))
    })
}

/// Find the first `-----BEGIN ... PRIVATE KEY-----` block and decode it.
/// Returns `None` when the input is not PEM at all (binary DER).
fn find_pem_private_key(data: &[u8]) -> Result<Option<(Vec<u8>, DerKind)>, DkimError> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(None);
    };
    if !text.contains("-----BEGIN ") {
        return Ok(None);
    }
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| DkimError::Key("malformed PEM: unterminated BEGIN line".into()))?;
        let label = &after[..label_end];
        let body_and_more = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let body_end = body_and_more
            .find(&end_marker)
            .ok_or_else(|| DkimError::Key(format!("malformed PEM: missing {end_marker}")))?;
        let body = &body_and_more[..body_end];
        let kind = match label {
            "RSA PRIVATE KEY" => Some(DerKind::Pkcs1Rsa),
            "PRIVATE KEY" => Some(DerKind::Pkcs8),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(DkimError::Key(
                    "encrypted private keys are not supported by Tern yet; export the key without a passphrase".into(),
                ));
            }
            other if other.ends_with("PRIVATE KEY") => {
                return Err(DkimError::Key(format!(
                    "PEM block '{other}' is not a supported DKIM key; use PKCS#1 or PKCS#8"
                )));
            }
            _ => None,
        };
        if let Some(kind) = kind {
            if body.lines().any(|line| line.contains(':')) {
                return Err(DkimError::Key(
                    "encrypted (Proc-Type) PEM keys are not supported by Tern yet; export the key without a passphrase".into(),
                ));
            }
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let der = BASE64
                .decode(compact.as_bytes())
                .map_err(|err| DkimError::Key(format!("malformed PEM base64: {err}")))?;
            return Ok(Some((der, kind)));
        }
        rest = &body_and_more[body_end + end_marker.len()..];
    }
    Err(DkimError::Key(
        "the PEM data holds no PRIVATE KEY block".to_string(),
    ))
}

/// Wrap a DER `RSAPublicKey` in a `SubjectPublicKeyInfo`, the form DKIM
/// records publish (and what `openssl rsa -pubout` prints).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = Vec::with_capacity(rsa_public_key.len() + 6);
    bit_string.push(0x03);
    der_length(&mut bit_string, rsa_public_key.len() + 1);
    bit_string.push(0x00); // no unused bits
    bit_string.extend_from_slice(rsa_public_key);
    let mut out = Vec::with_capacity(bit_string.len() + ALGORITHM.len() + 4);
    out.push(0x30);
    der_length(&mut out, ALGORITHM.len() + bit_string.len());
    out.extend_from_slice(&ALGORITHM);
    out.extend_from_slice(&bit_string);
    out
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PKCS1: &str = include_str!("../tests/keys/rsa2048.pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("../tests/keys/rsa2048.pkcs8.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa2048.p.txt");
    const RSA_1024: &str = include_str!("../tests/keys/rsa1024.pkcs1.pem");
    const ED_PEM: &str = include_str!("../tests/keys/ed25519.pkcs8.pem");
    const ED_DER: &[u8] = include_bytes!("../tests/keys/ed25519.pkcs8.der");
    const ED_PUBLIC: &str = include_str!("../tests/keys/ed25519.p.txt");

    #[test]
    fn rsa_pem_forms_and_public_key_match_openssl() {
        for pem in [RSA_PKCS1, RSA_PKCS8] {
            let key = SigningKey::parse(Algorithm::RsaSha256, pem.as_bytes()).unwrap();
            assert_eq!(key.public_key_base64(), RSA_PUBLIC.trim());
        }
        // Binary DER of the PKCS#1 structure, found without a label.
        let Some((der, DerKind::Pkcs1Rsa)) = find_pem_private_key(RSA_PKCS1.as_bytes()).unwrap()
        else {
            panic!("PKCS#1 label not recognised");
        };
        let key = SigningKey::parse(Algorithm::RsaSha256, &der).unwrap();
        assert_eq!(key.public_key_base64(), RSA_PUBLIC.trim());
    }

    #[test]
    fn ed25519_forms_and_public_key_match_openssl() {
        let seed = &ED_DER[ED_DER.len() - 32..];
        for data in [ED_PEM.as_bytes(), ED_DER, seed] {
            let key = SigningKey::parse(Algorithm::Ed25519Sha256, data).unwrap();
            assert_eq!(key.public_key_base64(), ED_PUBLIC.trim());
        }
    }

    #[test]
    fn clear_errors_for_wrong_keys() {
        let err = SigningKey::parse(Algorithm::RsaSha256, RSA_1024.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("2048 bits"), "{err}");
        let err = SigningKey::parse(Algorithm::Ed25519Sha256, RSA_PKCS1.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("RSA key"), "{err}");
        let err = SigningKey::parse(Algorithm::RsaSha256, ED_PEM.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("RSA key was rejected"), "{err}");
        let err = SigningKey::parse(Algorithm::RsaSha256, b"not a key").unwrap_err();
        assert!(err.to_string().contains("PKCS#1 nor PKCS#8"), "{err}");
        let err = SigningKey::parse(
            Algorithm::RsaSha256,
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = SigningKey::parse(
            Algorithm::RsaSha256,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
    }
}
