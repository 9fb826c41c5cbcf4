//! Log hooks (`kumo.configure_log_hook`, spec §12.4): each log record
//! becomes a new message that the policy may queue, typically to a custom
//! Lua (webhook) queue.
//!
//! This module holds the pure part: the strict parameter table
//! [`LogHookConfig`] and [`LogHook::message_for`], which turns a record
//! into the [`HookMessage`] to build: sender and recipients of the
//! original message, meta = the record's captured `meta` plus
//! `log_record` (the whole record) and `reception_protocol = "LogRecord"`,
//! body = the record's JSON or its `per_record` template output. The
//! server creates the message, calls `should_enqueue_log_record(msg,
//! hook_name)` and spools/queues it when that returns `true` (unless
//! `deferred_spool`, which only skips the immediate spool write).
//!
//! Records of messages that were themselves made by a hook
//! (`reception_protocol == "LogRecord"`) produce nothing, so a hook never
//! feeds on its own deliveries.

use crate::config::{
    PerRecordConfig, PerRecordKey, capture_headers_matching, capture_meta_matching,
};
use crate::format::{FormatError, RecordFormatter, TemplateError};
use crate::record::{LogRecord, RecordType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `reception_protocol` of hook messages.
pub const LOG_RECORD_PROTOCOL: &str = "LogRecord";

fn default_back_pressure() -> usize {
    128_000
}

/// The parameters of `kumo.configure_log_hook`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHookConfig {
    /// Passed to `should_enqueue_log_record` as `hook_name`.
    pub name: String,
    /// Records queued for the hook before producers wait.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// Meta keys copied into the record's `meta` (trailing `*` wildcard).
    #[serde(default)]
    pub meta: Vec<String>,
    /// Header names copied into the record's `headers`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Per-record-type `enable` and `template`; `suffix`, `log_dir` and
    /// `segment_header` are accepted and have no effect for a hook.
    #[serde(default)]
    pub per_record: BTreeMap<PerRecordKey, PerRecordConfig>,
    /// Queue accepted hook messages without writing them to the spool
    /// first.
    #[serde(default)]
    pub deferred_spool: bool,
}

/// Errors from building a [`LogHook`].
#[derive(Debug, thiserror::Error)]
pub enum HookConfigError {
    #[error("invalid configure_log_hook parameters: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("invalid configure_log_hook parameters: {0}")]
    Value(String),
    #[error("configure_log_hook '{name}': {source}")]
    Template {
        name: String,
        #[source]
        source: TemplateError,
    },
}

impl LogHookConfig {
    /// A config with every default and the given name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            back_pressure: default_back_pressure(),
            meta: Vec::new(),
            headers: Vec::new(),
            per_record: BTreeMap::new(),
            deferred_spool: false,
        }
    }

    /// Parse from JSON (how tests and the policy layer hand tables over).
    pub fn from_json(value: Value) -> Result<Self, HookConfigError> {
        let config: Self = serde_json::from_value(value).map_err(HookConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<(), HookConfigError> {
        if self.name.trim().is_empty() {
            return Err(HookConfigError::Value("name must not be empty".into()));
        }
        if self.back_pressure == 0 {
            return Err(HookConfigError::Value(
                "back_pressure must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The settings that apply to `kind`: its own entry, else `Any`, else
    /// the defaults.
    pub fn record_settings(&self, kind: RecordType) -> PerRecordConfig {
        self.per_record
            .get(&PerRecordKey::Type(kind))
            .or_else(|| self.per_record.get(&PerRecordKey::Any))
            .cloned()
            .unwrap_or_default()
    }
}

/// The message a hook makes from one record.
#[derive(Clone, Debug, PartialEq)]
pub struct HookMessage {
    /// The original envelope sender (`""` for the null sender).
    pub sender: String,
    /// The original recipients.
    pub recipients: Vec<String>,
    /// The record's `meta`, plus `log_record` and `reception_protocol`.
    pub meta: Map<String, Value>,
    /// The record's JSON, or its template output.
    pub body: Vec<u8>,
}

/// A configured log hook with its templates compiled.
#[derive(Debug)]
pub struct LogHook {
    config: LogHookConfig,
    formatter: RecordFormatter,
    enabled: [bool; RecordType::ALL.len()],
}

impl LogHook {
    /// Validate `config` and compile its templates.
    pub fn new(config: LogHookConfig) -> Result<LogHook, HookConfigError> {
        config.validate()?;
        let formatter =
            RecordFormatter::new(|kind| config.record_settings(kind)).map_err(|source| {
                HookConfigError::Template {
                    name: config.name.clone(),
                    source,
                }
            })?;
        let mut enabled = [false; RecordType::ALL.len()];
        for kind in RecordType::ALL {
            enabled[kind as usize] = config.record_settings(kind).enable;
        }
        Ok(LogHook {
            config,
            formatter,
            enabled,
        })
    }

    pub fn config(&self) -> &LogHookConfig {
        &self.config
    }

    /// The hook's name (`hook_name` of `should_enqueue_log_record`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this record makes a hook message: its type is enabled and
    /// it is not about a message a hook made.
    pub fn wants(&self, record: &LogRecord) -> bool {
        self.enabled[record.kind as usize]
            && record.reception_protocol.as_deref() != Some(LOG_RECORD_PROTOCOL)
    }

    /// The hook's meta capture applied to the original message's meta.
    pub fn capture_meta(&self, meta: &Map<String, Value>) -> Map<String, Value> {
        capture_meta_matching(&self.config.meta, meta)
    }

    /// The hook's header capture applied to the original message's headers.
    pub fn capture_headers<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Map<String, Value> {
        capture_headers_matching(&self.config.headers, headers)
    }

    /// The message to build for `record` (whose `meta`/`headers` should
    /// already hold this hook's captures), or `None` when the hook does
    /// not want the record.
    pub fn message_for(&self, record: &LogRecord) -> Result<Option<HookMessage>, FormatError> {
        if !self.wants(record) {
            return Ok(None);
        }
        let mut body = Vec::with_capacity(1024);
        self.formatter.format(record, &mut body)?;
        let whole = serde_json::to_value(record).map_err(|source| FormatError::Json {
            kind: record.kind,
            source,
        })?;
        let mut meta = record.meta.clone();
        meta.insert("log_record".to_string(), whole);
        meta.insert(
            "reception_protocol".to_string(),
            Value::String(LOG_RECORD_PROTOCOL.to_string()),
        );
        Ok(Some(HookMessage {
            sender: record.sender.clone(),
            recipients: record.recipients.clone(),
            meta,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageInfo, Response};
    use serde_json::json;
    use tern_types::SpoolId;
    use uuid::Uuid;

    fn delivery(protocol: &str) -> LogRecord {
        let recipients = ["a@example.com", "b@example.com"];
        let mut meta = Map::new();
        meta.insert("tenant".into(), json!("acme"));
        LogRecord::delivery(
            Uuid::nil(),
            MessageInfo {
                id: SpoolId::new(),
                sender: "bounces@example.com",
                recipients: &recipients,
                queue: "example.com",
                size: 42,
                num_attempts: 0,
                reception_protocol: Some(protocol),
            },
            "src->example.com@smtp_client",
            Response::new(250, None, "ok"),
        )
        .with_meta(meta)
    }

    #[test]
    fn parameters_follow_the_docs() {
        let config = LogHookConfig::from_json(json!({"name": "webhook"})).unwrap();
        assert_eq!(config, LogHookConfig::new("webhook"));
        assert_eq!(config.back_pressure, 128_000);
        assert!(!config.deferred_spool);

        let full = LogHookConfig::from_json(json!({
            "name": "webhook",
            "back_pressure": 10,
            "meta": ["tenant"],
            "headers": ["Subject", "X-*"],
            "per_record": {"Any": {"enable": false}, "Bounce": {"template": "{{ id }}"}},
            "deferred_spool": true,
        }))
        .unwrap();
        assert!(full.deferred_spool);
        assert!(!full.record_settings(RecordType::Delivery).enable);
        assert!(full.record_settings(RecordType::Bounce).enable);
    }

    #[test]
    fn bad_parameters_are_rejected_clearly() {
        for (table, needle) in [
            (json!({}), "name"),
            (json!({"name": "x", "log_dir": "/x"}), "log_dir"),
            (json!({"name": " "}), "name must not be empty"),
            (json!({"name": "x", "back_pressure": 0}), "back_pressure"),
            (json!({"name": "x", "per_record": {"Nope": {}}}), "Nope"),
        ] {
            let err = LogHookConfig::from_json(table.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{table}: {err}");
        }
        let mut config = LogHookConfig::new("webhook");
        config.per_record.insert(
            PerRecordKey::Any,
            PerRecordConfig {
                template: Some("{{ oops".into()),
                ..PerRecordConfig::default()
            },
        );
        let err = LogHook::new(config).unwrap_err().to_string();
        assert!(err.contains("configure_log_hook 'webhook'"), "{err}");
    }

    #[test]
    fn message_carries_the_record_as_body_and_meta() {
        let hook = LogHook::new(LogHookConfig::new("webhook")).unwrap();
        let record = delivery("ESMTP");
        let message = hook.message_for(&record).unwrap().unwrap();
        assert_eq!(message.sender, "bounces@example.com");
        assert_eq!(message.recipients, ["a@example.com", "b@example.com"]);
        assert_eq!(message.body, record.to_json().into_bytes());
        let expected_record: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            Value::Object(message.meta),
            json!({
                "tenant": "acme",
                "log_record": expected_record,
                "reception_protocol": "LogRecord",
            })
        );
    }

    #[test]
    fn template_output_is_the_body() {
        let mut config = LogHookConfig::new("csv");
        config.per_record.insert(
            PerRecordKey::Type(RecordType::Delivery),
            PerRecordConfig {
                template: Some("{{ type }},{{ response.code }},{{ recipient | join(';') }}".into()),
                ..PerRecordConfig::default()
            },
        );
        let hook = LogHook::new(config).unwrap();
        let message = hook.message_for(&delivery("HTTP")).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(message.body).unwrap(),
            "Delivery,250,a@example.com;b@example.com"
        );
    }

    #[test]
    fn hook_messages_and_disabled_types_make_nothing() {
        let mut config = LogHookConfig::new("webhook");
        config.per_record.insert(
            PerRecordKey::Type(RecordType::Bounce),
            PerRecordConfig {
                enable: false,
                ..PerRecordConfig::default()
            },
        );
        let hook = LogHook::new(config).unwrap();
        assert_eq!(hook.message_for(&delivery("LogRecord")).unwrap(), None);
        let mut bounce = delivery("ESMTP");
        bounce.kind = RecordType::Bounce;
        assert!(!hook.wants(&bounce));
        assert_eq!(hook.message_for(&bounce).unwrap(), None);
        assert!(hook.wants(&delivery("ESMTP")));
    }

    #[test]
    fn captures_use_the_hook_lists() {
        let mut config = LogHookConfig::new("webhook");
        config.meta = vec!["tenant".into()];
        config.headers = vec!["subject".into()];
        let hook = LogHook::new(config).unwrap();
        let meta = json!({"tenant": "acme", "campaign": "x"});
        assert_eq!(
            Value::Object(hook.capture_meta(meta.as_object().unwrap())),
            json!({"tenant": "acme"})
        );
        let headers = [("Subject", "Hi"), ("From", "a@b")];
        assert_eq!(
            Value::Object(hook.capture_headers(headers.iter().copied())),
            json!({"Subject": "Hi"})
        );
    }
}
