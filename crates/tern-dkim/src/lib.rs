//! DKIM signing for Tern: RSA-SHA256 (RFC 6376) and Ed25519-SHA256 (RFC 8463).
//!
//! This crate is what `kumo.dkim.rsa_sha256_signer`, `kumo.dkim.ed25519_signer`,
//! `kumo.dkim.set_signing_threads` and `msg:dkim_sign(signer)` sit on. The
//! signing core has no Lua in it; the bindings are one module (`lua`) whose
//! [`DkimRegistrar`] the server hands to the policy engine: it deserializes
//! the Lua parameter table into a [`SignerConfig`], asks the server's
//! [`SignerCache`] for a [`Signer`], and prepends the header returned by
//! [`Signer::sign`] to the message, either inline or through a
//! [`SigningPool`] (see also [`sign_on`]).
//!
//! Canonicalization and header assembly are implemented here (module
//! `canon`, sans-IO); the cryptography is `ring`. Every signature form is
//! checked against Python's `dkimpy` in `tests/dkimpy.rs`.
//!
//! Verification (`msg:dkim_verify`, module `verify`) and ARC (RFC 8617,
//! `msg:arc_verify` and `msg:arc_seal`, module `arc`) reuse the same
//! canonicalization and key handling; ARC is cross-checked against
//! dkimpy's `arc_sign` / `arc_verify` in `tests/arc.rs`.

mod arc;
mod cache;
mod canon;
mod config;
mod key;
mod lua;
mod pool;
mod signer;
mod verify;

pub use arc::{ChainStatus, MAX_ARC_INSTANCE, seal_arc, verify_arc};
pub use cache::{DEFAULT_CAPACITY, SignerCache};
pub use config::{Algorithm, Canonicalization, SignerConfig};
pub use lua::{DkimRegistrar, LuaSigner};
pub use pool::{SigningPool, sign_on};
pub use signer::Signer;
pub use verify::{MAX_SIGNATURES, verify_dkim};

/// Everything that can go wrong while building a signer or signing.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The signer parameters are inconsistent or malformed.
    #[error("invalid DKIM signer configuration: {0}")]
    Config(String),
    /// The key could not be read or parsed.
    #[error("DKIM key: {0}")]
    Key(String),
    /// The cryptographic operation failed.
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    /// The signing thread pool is unavailable.
    #[error("DKIM signing pool: {0}")]
    Pool(String),
}
