//! The node id that appears as `nodeid` in every log record (§0.7).
//!
//! `KUMO_NODE_ID` forces a value; otherwise the id is read from
//! `KUMO_NODE_ID_PATH` (default `/opt/kumomta/etc/.nodeid`) and generated
//! and saved there on first run. When the file cannot be written, a
//! deterministic id derived from the host name is used so the value is at
//! least stable across restarts.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use uuid::Uuid;

pub const DEFAULT_NODE_ID_PATH: &str = "/opt/kumomta/etc/.nodeid";

pub fn load_node_id() -> anyhow::Result<Uuid> {
    if let Ok(value) = std::env::var("KUMO_NODE_ID") {
        return Uuid::parse_str(value.trim())
            .map_err(|e| anyhow::anyhow!("KUMO_NODE_ID '{value}' is not a UUID: {e}"));
    }
    let path = std::env::var("KUMO_NODE_ID_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_NODE_ID_PATH));
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Uuid::parse_str(text.trim()).map_err(|e| {
            anyhow::anyhow!("node id file {} does not hold a UUID: {e}", path.display())
        });
    }
    let id = Uuid::new_v4();
    let saved = path
        .parent()
        .map(|dir| std::fs::create_dir_all(dir).is_ok())
        .unwrap_or(true)
        && std::fs::write(&path, id.to_string()).is_ok();
    if saved {
        return Ok(id);
    }
    tracing::warn!(
        "cannot save the node id to {}; using an id derived from the host name",
        path.display()
    );
    let mut hasher = Sha256::new();
    hasher.update(crate::state::hostname().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
}
