//! `kumo.configure_local_logs { ... }` as a strict serde struct (spec §12.1),
//! plus the meta/header capture rules every logger applies to its records.
//!
//! The policy layer deserialises the Lua table straight into [`LogConfig`];
//! unknown keys are rejected and missing keys take KumoMTA's defaults. The
//! writer ([`crate::writer::Logger`]) consumes the validated config.

use crate::record::RecordType;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

fn default_max_file_size() -> u64 {
    1_000_000_000
}

fn default_back_pressure() -> usize {
    128_000
}

fn default_max_record_size() -> usize {
    128 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

/// The parameters of one `kumo.configure_local_logs` call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Directory for segment files; created if missing.
    pub log_dir: PathBuf,
    /// Uncompressed bytes per segment before it is closed.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    /// Close a segment this long after it was opened, even when idle.
    #[serde(default, with = "tern_types::duration::opt")]
    pub max_segment_duration: Option<Duration>,
    /// zstd level; `0` means the zstd default (3).
    #[serde(default)]
    pub compression_level: i32,
    /// Records queued before submitters wait.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// Meta keys copied into `meta`; a trailing `*` matches a prefix.
    #[serde(default)]
    pub meta: Vec<String>,
    /// Header names copied into `headers`; trailing `*`, case-insensitive.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Per-record-type settings, keyed by type name or `Any`.
    #[serde(default)]
    pub per_record: BTreeMap<PerRecordKey, PerRecordConfig>,
    /// Name of an event `(msg) -> bool` that selects the messages this
    /// logger records (evaluated by the policy engine, not here).
    #[serde(default)]
    pub filter_event: Option<String>,
    /// Ingress is refused when the log file system has less free space.
    #[serde(default)]
    pub min_free_space: FreeSpaceLimit,
    /// Ingress is refused when the log file system has fewer free inodes.
    #[serde(default)]
    pub min_free_inodes: FreeSpaceLimit,
    /// A record whose line (plus newline) is this large or larger is dropped.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: usize,
    /// Time zone for `strftime` expansion in `log_dir`; only `"UTC"` is
    /// accepted, and Tern does not expand `log_dir` patterns yet.
    #[serde(default)]
    pub log_dir_timezone: Option<String>,
}

impl LogConfig {
    /// A config with every default and the given directory.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Self {
            log_dir: log_dir.into(),
            max_file_size: default_max_file_size(),
            max_segment_duration: None,
            compression_level: 0,
            back_pressure: default_back_pressure(),
            meta: Vec::new(),
            headers: Vec::new(),
            per_record: BTreeMap::new(),
            filter_event: None,
            min_free_space: FreeSpaceLimit::default(),
            min_free_inodes: FreeSpaceLimit::default(),
            max_record_size: default_max_record_size(),
            log_dir_timezone: None,
        }
    }

    /// Parse from JSON (how tests and the policy layer hand tables over).
    pub fn from_json(value: Value) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_value(value).map_err(ConfigError::Invalid)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.log_dir.as_os_str().is_empty() {
            return Err(ConfigError::Value("log_dir must not be empty".into()));
        }
        if self.max_file_size == 0 {
            return Err(ConfigError::Value(
                "max_file_size must be at least 1".into(),
            ));
        }
        if self.back_pressure == 0 {
            return Err(ConfigError::Value(
                "back_pressure must be at least 1".into(),
            ));
        }
        if self.max_record_size < 2 {
            return Err(ConfigError::Value(
                "max_record_size must be at least 2".into(),
            ));
        }
        if self.max_segment_duration == Some(Duration::ZERO) {
            return Err(ConfigError::Value(
                "max_segment_duration must be longer than zero".into(),
            ));
        }
        let range = zstd::compression_level_range();
        if self.compression_level != 0 && !range.contains(&self.compression_level) {
            return Err(ConfigError::Value(format!(
                "compression_level {} is outside zstd's range {}..={}",
                self.compression_level,
                range.start(),
                range.end()
            )));
        }
        let zones = std::iter::once(&self.log_dir_timezone)
            .chain(self.per_record.values().map(|p| &p.log_dir_timezone));
        for zone in zones {
            match zone.as_deref() {
                None | Some("UTC") => {}
                Some(other) => {
                    return Err(ConfigError::Value(format!(
                        "log_dir_timezone = '{other}' is not supported by Tern yet (only 'UTC')"
                    )));
                }
            }
        }
        let mut dirs = vec![&self.log_dir];
        dirs.extend(self.per_record.values().filter_map(|p| p.log_dir.as_ref()));
        for dir in dirs {
            if dir.to_string_lossy().contains('%') {
                return Err(ConfigError::Value(format!(
                    "strftime patterns in log_dir ('{}') are not supported by Tern yet",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The zstd level actually used.
    pub fn effective_compression_level(&self) -> i32 {
        if self.compression_level == 0 {
            zstd::DEFAULT_COMPRESSION_LEVEL
        } else {
            self.compression_level
        }
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

/// Errors from building a [`LogConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configure_local_logs parameters: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("invalid configure_local_logs parameters: {0}")]
    Value(String),
}

/// A `per_record` key: a record type name, or `Any` for every type not
/// listed explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PerRecordKey {
    Any,
    Type(RecordType),
}

impl FromStr for PerRecordKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "Any" {
            Ok(PerRecordKey::Any)
        } else {
            s.parse().map(PerRecordKey::Type)
        }
    }
}

impl fmt::Display for PerRecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PerRecordKey::Any => f.write_str("Any"),
            PerRecordKey::Type(kind) => f.write_str(kind.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for PerRecordKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for PerRecordKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Settings for one record type (KumoMTA's `LogRecordParams`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerRecordConfig {
    /// `false` drops records of this type.
    #[serde(default = "default_true")]
    pub enable: bool,
    /// Appended to segment file names.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Another directory for this type's segments.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// MiniJinja template producing the line instead of the JSON record.
    #[serde(default)]
    pub template: Option<String>,
    /// Text written at the start of every new segment (e.g. a CSV header).
    #[serde(default)]
    pub segment_header: String,
    /// Time zone for `strftime` expansion of this type's `log_dir`; like
    /// the global key, only `"UTC"` is accepted.
    #[serde(default)]
    pub log_dir_timezone: Option<String>,
}

impl Default for PerRecordConfig {
    fn default() -> Self {
        Self {
            enable: true,
            suffix: None,
            log_dir: None,
            template: None,
            segment_header: String::new(),
            log_dir_timezone: None,
        }
    }
}

/// `min_free_space` / `min_free_inodes`: a percentage (`"10%"`) or an
/// absolute number (bytes or inodes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FreeSpaceLimit {
    Percent(f64),
    Absolute(u64),
}

impl Default for FreeSpaceLimit {
    fn default() -> Self {
        FreeSpaceLimit::Percent(10.0)
    }
}

impl FreeSpaceLimit {
    /// Whether `available` out of `total` satisfies the limit.
    pub fn is_satisfied(&self, available: u64, total: u64) -> bool {
        match *self {
            FreeSpaceLimit::Absolute(min) => available >= min,
            FreeSpaceLimit::Percent(pct) => {
                total == 0 || (available as f64) * 100.0 >= pct * total as f64
            }
        }
    }
}

impl FromStr for FreeSpaceLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if let Some(pct) = trimmed.strip_suffix('%') {
            let value: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage '{s}'"))?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!("percentage '{s}' must be between 0% and 100%"));
            }
            Ok(FreeSpaceLimit::Percent(value))
        } else {
            trimmed
                .parse()
                .map(FreeSpaceLimit::Absolute)
                .map_err(|_| format!("invalid free space limit '{s}': use a number or \"N%\""))
        }
    }
}

impl<'de> Deserialize<'de> for FreeSpaceLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(FreeSpaceLimit::Absolute(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for FreeSpaceLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FreeSpaceLimit::Absolute(n) => s.serialize_u64(*n),
            FreeSpaceLimit::Percent(p) => s.collect_str(&format_args!("{p}%")),
        }
    }
}

/// Free space and inodes of the file system holding `path`, checked
/// against the config's limits. `Ok(None)` when both are satisfied, else a
/// message saying which one is not.
pub fn check_free_space(config: &LogConfig) -> std::io::Result<Option<String>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(config.log_dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("log_dir contains a NUL byte"))?;
    // SAFETY: statvfs only writes into the zeroed struct we pass.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stats.f_frsize as u64;
    let (free_bytes, total_bytes) = (stats.f_bavail as u64 * block, stats.f_blocks as u64 * block);
    if !config.min_free_space.is_satisfied(free_bytes, total_bytes) {
        return Ok(Some(format!(
            "log dir {} has {free_bytes} of {total_bytes} bytes free, below min_free_space",
            config.log_dir.display()
        )));
    }
    let (free_inodes, total_inodes) = (stats.f_favail as u64, stats.f_files as u64);
    if !config
        .min_free_inodes
        .is_satisfied(free_inodes, total_inodes)
    {
        return Ok(Some(format!(
            "log dir {} has {free_inodes} of {total_inodes} inodes free, below min_free_inodes",
            config.log_dir.display()
        )));
    }
    Ok(None)
}

/// A configured list of names, where a trailing `*` makes a prefix match.
fn name_matches(pattern: &str, name: &str, ignore_case: bool) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            name.len() >= prefix.len()
                && name.is_char_boundary(prefix.len())
                && if ignore_case {
                    name[..prefix.len()].eq_ignore_ascii_case(prefix)
                } else {
                    name.starts_with(prefix)
                }
        }
        None => {
            if ignore_case {
                name.eq_ignore_ascii_case(pattern)
            } else {
                name == pattern
            }
        }
    }
}

/// The subset of a message's meta that `config.meta` selects
/// (case-sensitive; a trailing `*` is a prefix wildcard).
pub fn capture_meta(config: &LogConfig, meta: &Map<String, Value>) -> Map<String, Value> {
    capture_meta_matching(&config.meta, meta)
}

/// [`capture_meta`] with an explicit pattern list (log hooks have their
/// own `meta` list).
pub fn capture_meta_matching(patterns: &[String], meta: &Map<String, Value>) -> Map<String, Value> {
    let mut captured = Map::new();
    if patterns.is_empty() {
        return captured;
    }
    for pattern in patterns {
        if pattern.ends_with('*') {
            for (key, value) in meta {
                if name_matches(pattern, key, false) && !captured.contains_key(key) {
                    captured.insert(key.clone(), value.clone());
                }
            }
        } else if let Some(value) = meta.get(pattern)
            && !captured.contains_key(pattern)
        {
            captured.insert(pattern.clone(), value.clone());
        }
    }
    captured
}

/// The headers that `config.headers` selects (case-insensitive; trailing
/// `*` wildcard). Keys are the header names as they appear in the message;
/// a header that appears more than once becomes an array of its values in
/// message order.
pub fn capture_headers<'a>(
    config: &LogConfig,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Map<String, Value> {
    capture_headers_matching(&config.headers, headers)
}

/// [`capture_headers`] with an explicit pattern list (log hooks have their
/// own `headers` list).
pub fn capture_headers_matching<'a>(
    patterns: &[String],
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Map<String, Value> {
    let mut captured = Map::new();
    if patterns.is_empty() {
        return captured;
    }
    for (name, value) in headers {
        if !patterns
            .iter()
            .any(|pattern| name_matches(pattern, name, true))
        {
            continue;
        }
        // group repeats under the first spelling seen
        let existing = captured
            .keys()
            .find(|key| key.eq_ignore_ascii_case(name))
            .cloned();
        match existing {
            None => {
                captured.insert(name.to_string(), Value::String(value.to_string()));
            }
            Some(key) => {
                let slot = captured.get_mut(&key).expect("key was just found");
                match slot {
                    Value::Array(values) => values.push(Value::String(value.to_string())),
                    other => {
                        let first = other.take();
                        *other = Value::Array(vec![first, Value::String(value.to_string())]);
                    }
                }
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_the_spec() {
        let config = LogConfig::from_json(json!({"log_dir": "/tmp/x"})).unwrap();
        assert_eq!(config, LogConfig::new("/tmp/x"));
        assert_eq!(config.max_file_size, 1_000_000_000);
        assert_eq!(config.back_pressure, 128_000);
        assert_eq!(config.max_segment_duration, None);
        assert_eq!(config.effective_compression_level(), 3);
        assert_eq!(config.min_free_space, FreeSpaceLimit::Percent(10.0));
        assert_eq!(config.min_free_inodes, FreeSpaceLimit::Percent(10.0));
        assert!(config.record_settings(RecordType::Bounce).enable);
    }

    #[test]
    fn log_dir_is_required_and_unknown_keys_are_rejected() {
        let err = LogConfig::from_json(json!({})).unwrap_err().to_string();
        assert!(err.contains("log_dir"), "{err}");
        let err = LogConfig::from_json(json!({"log_dir": "/x", "max_size": 5}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_size"), "{err}");
        let err = LogConfig::from_json(json!({"log_dir": "/x", "per_record": {"Bogus": {}}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Bogus"), "{err}");
        let err = LogConfig::from_json(
            json!({"log_dir": "/x", "per_record": {"Bounce": {"enabled": false}}}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("enabled"), "{err}");
    }

    #[test]
    fn full_table_parses() {
        let config = LogConfig::from_json(json!({
            "log_dir": "/var/log/tern",
            "max_file_size": 1000,
            "max_segment_duration": "1 minute",
            "compression_level": 9,
            "back_pressure": 10,
            "meta": ["tenant", "x_*"],
            "headers": ["Subject", "X-*"],
            "per_record": {
                "Reception": {"suffix": "_recv"},
                "Any": {"enable": false},
                "Bounce": {"template": "{{ id }}", "segment_header": "id\n", "log_dir": "/b"}
            },
            "filter_event": "should_log",
            "min_free_space": 1000000,
            "min_free_inodes": "5%",
        }))
        .unwrap();
        assert_eq!(config.max_segment_duration, Some(Duration::from_secs(60)));
        assert_eq!(config.effective_compression_level(), 9);
        assert_eq!(
            config
                .record_settings(RecordType::Reception)
                .suffix
                .as_deref(),
            Some("_recv")
        );
        assert!(config.record_settings(RecordType::Reception).enable);
        assert!(!config.record_settings(RecordType::Delivery).enable);
        let bounce = config.record_settings(RecordType::Bounce);
        assert_eq!(bounce.log_dir, Some(PathBuf::from("/b")));
        assert_eq!(bounce.segment_header, "id\n");
        assert_eq!(config.min_free_space, FreeSpaceLimit::Absolute(1_000_000));
        assert_eq!(config.min_free_inodes, FreeSpaceLimit::Percent(5.0));
        assert_eq!(config.filter_event.as_deref(), Some("should_log"));
        let utc = LogConfig::from_json(json!({
            "log_dir": "/x",
            "per_record": {"Bounce": {"log_dir_timezone": "UTC"}}
        }))
        .unwrap();
        assert_eq!(
            utc.record_settings(RecordType::Bounce)
                .log_dir_timezone
                .as_deref(),
            Some("UTC")
        );
    }

    #[test]
    fn bad_values_get_clear_errors() {
        for (table, needle) in [
            (
                json!({"log_dir": "/x", "compression_level": 99}),
                "compression_level",
            ),
            (
                json!({"log_dir": "/x", "back_pressure": 0}),
                "back_pressure",
            ),
            (
                json!({"log_dir": "/x", "max_segment_duration": "soon"}),
                "soon",
            ),
            (json!({"log_dir": "/x", "min_free_space": "110%"}), "110%"),
            (
                json!({"log_dir": "/x", "log_dir_timezone": "Local"}),
                "not supported by Tern yet",
            ),
            (json!({"log_dir": "/x/%Y"}), "not supported by Tern yet"),
            (
                json!({"log_dir": "/x", "per_record": {"Bounce": {"log_dir_timezone": "Local"}}}),
                "log_dir_timezone = 'Local' is not supported by Tern yet",
            ),
        ] {
            let err = LogConfig::from_json(table.clone()).unwrap_err().to_string();
            assert!(err.contains(needle), "{table}: {err}");
        }
    }

    #[test]
    fn meta_capture_is_case_sensitive_with_prefix_wildcards() {
        let mut config = LogConfig::new("/x");
        config.meta = vec!["tenant".into(), "xfer_*".into(), "Campaign".into()];
        let meta = json!({
            "tenant": "acme",
            "campaign": "ignored: case differs",
            "xfer_from": "node-a",
            "xfer_hops": 2,
            "XFER_upper": "no",
            "other": 1
        });
        let captured = capture_meta(&config, meta.as_object().unwrap());
        assert_eq!(
            Value::Object(captured),
            json!({"tenant": "acme", "xfer_from": "node-a", "xfer_hops": 2})
        );

        config.meta = vec!["*".into()];
        let all = capture_meta(&config, meta.as_object().unwrap());
        assert_eq!(all.len(), 6);

        config.meta.clear();
        assert!(capture_meta(&config, meta.as_object().unwrap()).is_empty());
    }

    #[test]
    fn header_capture_is_case_insensitive_and_groups_repeats() {
        let mut config = LogConfig::new("/x");
        config.headers = vec!["subject".into(), "x-*".into()];
        let headers = [
            ("Subject", "Hello"),
            ("X-Campaign", "spring"),
            ("From", "a@b.example"),
            ("X-Trace", "one"),
            ("x-trace", "two"),
            ("Received", "by mx"),
            ("X-Trace", "three"),
        ];
        let captured = capture_headers(&config, headers.iter().copied());
        assert_eq!(
            Value::Object(captured),
            json!({
                "Subject": "Hello",
                "X-Campaign": "spring",
                "X-Trace": ["one", "two", "three"]
            })
        );
        config.headers.clear();
        assert!(capture_headers(&config, headers.iter().copied()).is_empty());
    }

    #[test]
    fn free_space_limits() {
        assert!(FreeSpaceLimit::Percent(10.0).is_satisfied(10, 100));
        assert!(!FreeSpaceLimit::Percent(10.0).is_satisfied(9, 100));
        assert!(FreeSpaceLimit::Absolute(5).is_satisfied(5, 100));
        assert!(!FreeSpaceLimit::Absolute(5).is_satisfied(4, 100));
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.min_free_space = FreeSpaceLimit::Absolute(u64::MAX);
        let message = check_free_space(&config).unwrap().unwrap();
        assert!(message.contains("min_free_space"), "{message}");
        config.min_free_space = FreeSpaceLimit::Absolute(0);
        config.min_free_inodes = FreeSpaceLimit::Absolute(0);
        assert_eq!(check_free_space(&config).unwrap(), None);
    }
}
