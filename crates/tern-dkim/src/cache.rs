//! [`SignerCache`]: reuse built signers across messages.
//!
//! KumoMTA policies typically build a signer per message
//! (`kumo.dkim.rsa_sha256_signer { ... }` inside `smtp_server_message_received`).
//! Loading and parsing the key each time would cost more than signing, so
//! the policy layer asks this cache instead. The key is the algorithm plus
//! the whole [`SignerConfig`] (compared field by field, so two different
//! configurations can never share a signer), and an entry lives for the
//! configuration's `ttl`, after which the key source is read again; that is
//! how a rotated key file is picked up without a restart.
//!
//! The server owns one cache (there is no global). Building a signer happens
//! outside the lock, so a slow key read never blocks other lookups; two
//! threads missing at once may both build, and the later insert wins.

use crate::DkimError;
use crate::config::{Algorithm, SignerConfig};
use crate::signer::Signer;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Default number of signers kept, like KumoMTA's `dkim_signer_cache`.
pub const DEFAULT_CAPACITY: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    algorithm: Algorithm,
    config: SignerConfig,
}

struct Entry {
    signer: Arc<Signer>,
    expires: Instant,
}

/// A bounded, TTL-based cache of [`Signer`]s keyed by their configuration.
pub struct SignerCache {
    entries: Mutex<HashMap<CacheKey, Entry>>,
    capacity: AtomicUsize,
}

impl Default for SignerCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl SignerCache {
    /// A cache holding at most `capacity` signers (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: AtomicUsize::new(capacity.max(1)),
        }
    }

    /// Change the capacity (`kumo.set_lruttl_cache_capacity('dkim_signer_cache', n)`).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    /// The cached signer for this configuration, building (and caching) it
    /// if there is none or it has outlived its `ttl`. Errors are not cached.
    pub fn get_or_build(
        &self,
        algorithm: Algorithm,
        config: SignerConfig,
    ) -> Result<Arc<Signer>, DkimError> {
        self.get_or_build_at(algorithm, config, Instant::now())
    }

    fn get_or_build_at(
        &self,
        algorithm: Algorithm,
        config: SignerConfig,
        now: Instant,
    ) -> Result<Arc<Signer>, DkimError> {
        let key = CacheKey { algorithm, config };
        if let Some(entry) = self.entries.lock().get(&key)
            && entry.expires > now
        {
            return Ok(entry.signer.clone());
        }
        let signer = Arc::new(Signer::new(&key.config, algorithm)?);
        let expires = now + key.config.ttl;
        let capacity = self.capacity.load(Ordering::Relaxed);
        let mut entries = self.entries.lock();
        if entries.len() >= capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.expires > now);
            while entries.len() >= capacity {
                // Evict the entry closest to expiry.
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                signer: signer.clone(),
                expires,
            },
        );
        Ok(signer)
    }

    /// Number of cached signers (expired ones included until replaced).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every cached signer (for example on a configuration epoch change).
    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn config_with_file(path: &std::path::Path, selector: &str, ttl: u64) -> SignerConfig {
        serde_json::from_value(json!({
            "domain": "example.com",
            "selector": selector,
            "headers": ["From"],
            "key": path,
            "ttl": ttl,
        }))
        .unwrap()
    }

    #[test]
    fn hits_within_ttl_and_reloads_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ed25519.pkcs8.pem"),
            &path,
        )
        .unwrap();
        let cache = SignerCache::default();
        let start = Instant::now();
        let config = config_with_file(&path, "s1", 300);
        let first = cache
            .get_or_build_at(Algorithm::Ed25519Sha256, config.clone(), start)
            .unwrap();
        // The file is gone, yet a hit does not read it again.
        std::fs::remove_file(&path).unwrap();
        let again = cache
            .get_or_build_at(
                Algorithm::Ed25519Sha256,
                config.clone(),
                start + Duration::from_secs(299),
            )
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // After the ttl the key source is read again (and now fails).
        let err = cache
            .get_or_build_at(
                Algorithm::Ed25519Sha256,
                config.clone(),
                start + Duration::from_secs(301),
            )
            .unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        // A different algorithm is a different entry.
        assert!(
            cache
                .get_or_build_at(Algorithm::RsaSha256, config, start)
                .is_err()
        );
    }

    #[test]
    fn capacity_evicts_the_entry_closest_to_expiry() {
        let path = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keys/ed25519.pkcs8.pem"
        ));
        let cache = SignerCache::new(2);
        let now = Instant::now();
        let short = config_with_file(&path, "short", 10);
        let long = config_with_file(&path, "long", 1000);
        let third = config_with_file(&path, "third", 1000);
        let short_signer = cache
            .get_or_build_at(Algorithm::Ed25519Sha256, short.clone(), now)
            .unwrap();
        cache
            .get_or_build_at(Algorithm::Ed25519Sha256, long.clone(), now)
            .unwrap();
        cache
            .get_or_build_at(Algorithm::Ed25519Sha256, third, now)
            .unwrap();
        assert_eq!(cache.len(), 2);
        let rebuilt = cache
            .get_or_build_at(Algorithm::Ed25519Sha256, short, now)
            .unwrap();
        assert!(!Arc::ptr_eq(&short_signer, &rebuilt), "short was evicted");
        cache.clear();
        assert!(cache.is_empty());
    }
}
