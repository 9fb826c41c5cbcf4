//! Key sources: where a TLS certificate, DKIM key or password comes from.
//!
//! Tern supports a file path and inline `key_data`. Vault and event-callback
//! forms are recognised so that the error says exactly what is missing.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeySource {
    File(PathBuf),
    Data {
        key_data: String,
    },
    /// Any other table shape (Vault, event callback). Kept so that loading
    /// can name the unsupported form instead of failing to parse.
    Unsupported(serde_json::Map<String, serde_json::Value>),
}

impl KeySource {
    pub fn load(&self) -> Result<Vec<u8>, String> {
        match self {
            KeySource::File(path) => std::fs::read(path)
                .map_err(|err| format!("failed to read key file {}: {err}", path.display())),
            KeySource::Data { key_data } => Ok(key_data.as_bytes().to_vec()),
            KeySource::Unsupported(map) => {
                let form = if map.contains_key("vault_mount") || map.contains_key("vault_path") {
                    "the HashiCorp Vault key source"
                } else if map.contains_key("event_name") {
                    "the event-callback key source"
                } else {
                    "this key source form"
                };
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                Err(format!(
                    "{form} ({}) is not supported by Tern yet; use a file path or {{ key_data = \"...\" }}",
                    keys.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_inline() {
        let dir = std::env::temp_dir().join(format!("tern-ks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, b"secret").unwrap();
        let ks: KeySource = serde_json::from_value(serde_json::json!(path)).unwrap();
        assert_eq!(ks.load().unwrap(), b"secret");
        let ks: KeySource = serde_json::from_str(r#"{"key_data":"inline"}"#).unwrap();
        assert_eq!(ks.load().unwrap(), b"inline");
        let missing: KeySource = serde_json::from_str(r#""/no/such/key""#).unwrap();
        assert!(missing.load().unwrap_err().contains("/no/such/key"));
    }

    #[test]
    fn vault_is_named_as_unsupported() {
        let ks: KeySource =
            serde_json::from_str(r#"{"vault_mount":"secret","vault_path":"dkim/x"}"#).unwrap();
        let err = ks.load().unwrap_err();
        assert!(
            err.contains("Vault") && err.contains("not supported"),
            "{err}"
        );
    }
}
