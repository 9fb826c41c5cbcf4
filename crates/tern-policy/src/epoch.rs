//! The configuration epoch (§1.6).
//!
//! An integer that changes whenever the policy or its data files change.
//! Pooled Lua states, memoized values marked `invalidate_with_epoch` and
//! epoch-refreshed queue and path configs all compare the epoch they were
//! made under with the current one. A monitor task hashes the files that
//! match the configured globs every 10 seconds (polling, like upstream) and
//! bumps the epoch when the hash changes; `kumo.bump_config_epoch()` bumps
//! it explicitly.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often the monitor re-hashes the watched files.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);

pub struct ConfigEpoch {
    value: AtomicU64,
    changed: watch::Sender<u64>,
    globs: Mutex<Vec<String>>,
}

impl ConfigEpoch {
    pub fn new(globs: Vec<String>) -> Arc<Self> {
        let (changed, _) = watch::channel(0);
        Arc::new(Self {
            value: AtomicU64::new(0),
            changed,
            globs: Mutex::new(globs),
        })
    }

    pub fn current(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    pub fn bump(&self) -> u64 {
        let next = self.value.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.send_replace(next);
        tracing::info!("configuration epoch is now {next}");
        next
    }

    /// A receiver that sees every bump; used by caches that refresh on epoch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_globs(&self, globs: Vec<String>) {
        *self.globs.lock() = globs;
    }

    pub fn globs(&self) -> Vec<String> {
        self.globs.lock().clone()
    }

    /// Expand the globs into a sorted, de-duplicated list of files.
    pub fn matching_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for pattern in self.globs() {
            for expanded in expand_braces(&pattern) {
                if let Ok(paths) = glob::glob(&expanded) {
                    files.extend(paths.flatten().filter(|p| p.is_file()));
                }
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// Hash of the names and contents of every watched file.
    pub fn hash_files(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for file in self.matching_files() {
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update([0]);
            if let Ok(bytes) = std::fs::read(&file) {
                hasher.update(&bytes);
            }
            hasher.update([0]);
        }
        hasher.finalize().into()
    }

    /// Poll the watched files until `shutdown` fires, bumping on change.
    pub async fn monitor(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        let mut last = tokio::task::spawn_blocking(move || me.hash_files())
            .await
            .ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let me = self.clone();
            let hash = tokio::task::spawn_blocking(move || me.hash_files())
                .await
                .ok();
            if hash.is_some() && hash != last {
                if last.is_some() {
                    tracing::info!("policy or data files changed");
                    self.bump();
                }
                last = hash;
            }
        }
    }
}

/// Expand one level of `{a,b,c}` alternatives (repeatedly), since the glob
/// crate does not understand braces and the upstream default uses them.
pub fn expand_braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_string()];
    };
    let Some(close_rel) = pattern[open..].find('}') else {
        return vec![pattern.to_string()];
    };
    let close = open + close_rel;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    body.split(',')
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand() {
        assert_eq!(
            expand_braces("/x/**/*.{lua,json}"),
            vec!["/x/**/*.lua".to_string(), "/x/**/*.json".to_string()]
        );
        assert_eq!(expand_braces("plain"), vec!["plain".to_string()]);
    }

    #[test]
    fn hash_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, "{}").unwrap();
        let epoch = ConfigEpoch::new(vec![format!("{}/*.{{json,lua}}", dir.path().display())]);
        assert_eq!(epoch.matching_files(), vec![file.clone()]);
        let before = epoch.hash_files();
        std::fs::write(&file, "{\"a\":1}").unwrap();
        assert_ne!(before, epoch.hash_files());
    }

    #[tokio::test]
    async fn monitor_bumps_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("init.lua");
        std::fs::write(&file, "-- one").unwrap();
        let epoch = ConfigEpoch::new(vec![format!("{}/*.lua", dir.path().display())]);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(epoch.clone().monitor(Duration::from_millis(50), stop_rx));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(epoch.current(), 0);
        std::fs::write(&file, "-- two").unwrap();
        for _ in 0..50 {
            if epoch.current() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(epoch.current(), 1);
        task.abort();
    }
}
