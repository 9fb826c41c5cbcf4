//! The `kumo.define_spool { ... }` parameter table.
//!
//! The policy layer deserializes the Lua table straight into [`SpoolConfig`]
//! (unknown keys are an error, missing keys take the documented defaults).
//! The one deliberate difference from KumoMTA is `flush`: Tern defaults it to
//! `true`, so a `250` always means the message is on stable storage; group
//! commit keeps that cheap (see `docs/spool.md`).

use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which storage engine backs a spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpoolKind {
    /// One file per message under `<path>/data/aa/bb/<rest>`.
    #[default]
    LocalDisk,
    /// A RocksDB database directory.
    RocksDB,
}

/// `kumo.define_spool` parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// `"data"` (message bodies) or `"meta"` (envelope and metadata); the
    /// spool itself does not care.
    pub name: String,
    /// Directory that holds the spool; created if missing.
    pub path: PathBuf,
    #[serde(default)]
    pub kind: SpoolKind,
    /// `true` (Tern's default): a store returns only after a sync made it
    /// durable. `false` (KumoMTA's default): no sync; a store survives a
    /// process crash but not an OS crash or power loss.
    #[serde(default = "default_flush")]
    pub flush: bool,
    /// RocksDB tuning; ignored for `LocalDisk` so that policies written for
    /// either kind load unchanged.
    #[serde(default)]
    pub rocks_params: Option<RocksParams>,
    #[serde(default = "FreeThreshold::default_ten_percent")]
    pub min_free_space: FreeThreshold,
    #[serde(default = "FreeThreshold::default_ten_percent")]
    pub min_free_inodes: FreeThreshold,
}

fn default_flush() -> bool {
    true
}

impl SpoolConfig {
    /// A config with every default, for `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, kind: SpoolKind) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            kind,
            flush: true,
            rocks_params: None,
            min_free_space: FreeThreshold::default_ten_percent(),
            min_free_inodes: FreeThreshold::default_ten_percent(),
        }
    }

    /// Checks combinations that serde alone cannot reject.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("define_spool: name must not be empty".into());
        }
        if self.path.as_os_str().is_empty() {
            return Err(format!(
                "define_spool '{}': path must not be empty",
                self.name
            ));
        }
        if let Some(params) = &self.rocks_params {
            params
                .validate()
                .map_err(|err| format!("define_spool '{}': {err}", self.name))?;
        }
        Ok(())
    }
}

/// A minimum amount of free space or free inodes: a percentage of the
/// filesystem's total (`"10%"`) or an absolute count (`1000000000`, or the
/// same as a string).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FreeThreshold {
    Percent(f64),
    Absolute(u64),
}

impl FreeThreshold {
    pub fn default_ten_percent() -> Self {
        Self::Percent(10.0)
    }

    /// Parses `"10%"`, `"12.5%"`, `"1000000"` or `"1_000_000"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Some(number) = trimmed.strip_suffix('%') {
            let percent: f64 = number.trim().parse().map_err(|_| {
                format!(
                    "invalid free-space threshold '{text}': expected a percentage such as \"10%\""
                )
            })?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!(
                    "invalid free-space threshold '{text}': a percentage must be between 0% and 100%"
                ));
            }
            return Ok(Self::Percent(percent));
        }
        let digits: String = trimmed.chars().filter(|c| *c != '_' && *c != ',').collect();
        digits.parse::<u64>().map(Self::Absolute).map_err(|_| {
            format!(
                "invalid free-space threshold '{text}': expected a percentage such as \"10%\" or a whole number"
            )
        })
    }

    /// The minimum number of free units given the filesystem's `total`.
    pub fn minimum(&self, total: u64) -> u64 {
        match *self {
            Self::Percent(percent) => ((total as f64) * percent / 100.0).ceil() as u64,
            Self::Absolute(count) => count,
        }
    }
}

impl<'de> Deserialize<'de> for FreeThreshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(count) => Ok(Self::Absolute(count)),
            Raw::Float(count) if count >= 0.0 && count.fract() == 0.0 && count.is_finite() => {
                Ok(Self::Absolute(count as u64))
            }
            Raw::Float(count) => Err(serde::de::Error::custom(format!(
                "invalid free-space threshold {count}: expected a whole number or a percentage string"
            ))),
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for FreeThreshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::Percent(percent) => s.collect_str(&format_args!("{percent}%")),
            Self::Absolute(count) => s.serialize_u64(count),
        }
    }
}

/// RocksDB compression for SST files. The Debian library has all of these
/// linked in; RocksDB refuses to open with a clear error if one is missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompressionType {
    None,
    #[default]
    Snappy,
    Zlib,
    Bz2,
    Lz4,
    Lz4hc,
    Zstd,
}

/// RocksDB's info-log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Fatal,
    Header,
}

/// `rocks_params`: every key of KumoMTA's table. The storage options are
/// applied to RocksDB when the spool opens; the `limit_*`, deadline and
/// error-latch keys govern Tern's own handling of the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RocksParams {
    /// Background flush/compaction threads.
    #[serde(default)]
    pub increase_parallelism: Option<i32>,
    /// Memtable memory budget in bytes; selects level-style compaction.
    #[serde(default)]
    pub optimize_level_style_compaction: Option<usize>,
    /// Memtable memory budget in bytes; selects universal-style compaction.
    #[serde(default)]
    pub optimize_universal_style_compaction: Option<usize>,
    #[serde(default)]
    pub paranoid_checks: bool,
    #[serde(default)]
    pub compression_type: CompressionType,
    #[serde(default)]
    pub compaction_readahead_size: Option<usize>,
    #[serde(default)]
    pub level_compaction_dynamic_level_bytes: Option<bool>,
    #[serde(default)]
    pub max_open_files: Option<i32>,
    #[serde(default)]
    pub write_buffer_size: Option<usize>,
    #[serde(default)]
    pub level0_stop_writes_trigger: Option<i32>,
    #[serde(default)]
    pub log_level: LogLevel,
    /// Where RocksDB writes its own info `LOG` files (`db_log_dir`),
    /// instead of the spool directory. Tern's extension: Debian's
    /// librocksdb 7.8 is built with assertions, and a LOG file whose write
    /// failed (ENOSPC) aborts the process at the next LOG line, so a LOG
    /// on the spool's filesystem turns a full spool into a crash.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    #[serde(default)]
    pub memtable_huge_page_size: Option<usize>,
    #[serde(default = "default_log_roll", with = "tern_types::duration::req")]
    pub log_file_time_to_roll: Duration,
    #[serde(
        default = "default_obsolete_period",
        with = "tern_types::duration::req"
    )]
    pub obsolete_files_period: Duration,
    /// At most this many stores waiting on the spool at once; further
    /// stores wait for a slot (bounded by `store_deadline`).
    #[serde(default)]
    pub limit_concurrent_stores: Option<usize>,
    /// At most this many loads running on blocking threads at once.
    #[serde(default)]
    pub limit_concurrent_loads: Option<usize>,
    /// At most this many removes running at once.
    #[serde(default)]
    pub limit_concurrent_removes: Option<usize>,
    /// A store not durable within this time fails (the message is then
    /// refused with a transient error instead of hanging the session).
    #[serde(default = "default_store_deadline", with = "tern_types::duration::req")]
    pub store_deadline: Duration,
    /// A non-fatal write error not followed by a successful write within
    /// this time latches the spool unhealthy.
    #[serde(default = "default_error_latch", with = "tern_types::duration::req")]
    pub error_latch_duration: Duration,
    /// Quiet time after the latch (and after the most recent error) before
    /// writes are allowed again.
    #[serde(default = "default_error_unlatch", with = "tern_types::duration::req")]
    pub error_unlatch_duration: Duration,
    /// `false` keeps a latched spool refusing writes until a restart.
    #[serde(default = "default_true")]
    pub allow_error_unlatch: bool,
}

fn default_log_roll() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_obsolete_period() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_store_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_error_latch() -> Duration {
    Duration::from_secs(15)
}
fn default_error_unlatch() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}

impl Default for RocksParams {
    fn default() -> Self {
        Self {
            increase_parallelism: None,
            optimize_level_style_compaction: None,
            optimize_universal_style_compaction: None,
            paranoid_checks: false,
            compression_type: CompressionType::default(),
            compaction_readahead_size: None,
            level_compaction_dynamic_level_bytes: None,
            max_open_files: None,
            write_buffer_size: None,
            level0_stop_writes_trigger: None,
            log_level: LogLevel::default(),
            log_dir: None,
            memtable_huge_page_size: None,
            log_file_time_to_roll: default_log_roll(),
            obsolete_files_period: default_obsolete_period(),
            limit_concurrent_stores: None,
            limit_concurrent_loads: None,
            limit_concurrent_removes: None,
            store_deadline: default_store_deadline(),
            error_latch_duration: default_error_latch(),
            error_unlatch_duration: default_error_unlatch(),
            allow_error_unlatch: true,
        }
    }
}

impl RocksParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.optimize_level_style_compaction.is_some()
            && self.optimize_universal_style_compaction.is_some()
        {
            return Err("rocks_params: optimize_level_style_compaction and \
                        optimize_universal_style_compaction cannot both be set"
                .into());
        }
        if self.allow_error_unlatch && self.error_unlatch_duration.is_zero() {
            return Err(
                "rocks_params: error_unlatch_duration must be greater than zero \
                        when allow_error_unlatch is true"
                    .into(),
            );
        }
        for (name, value) in [
            ("limit_concurrent_stores", self.limit_concurrent_stores),
            ("limit_concurrent_loads", self.limit_concurrent_loads),
            ("limit_concurrent_removes", self.limit_concurrent_removes),
        ] {
            if value == Some(0) {
                return Err(format!("rocks_params: {name} must be at least 1"));
            }
        }
        if self.store_deadline.is_zero() {
            return Err("rocks_params: store_deadline must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SpoolConfig, String> {
        serde_json::from_str(json).map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let config = parse(r#"{"name": "data", "path": "/var/spool/tern/data"}"#).unwrap();
        assert_eq!(config.kind, SpoolKind::LocalDisk);
        assert!(config.flush, "Tern syncs before acknowledging by default");
        assert_eq!(config.min_free_space, FreeThreshold::Percent(10.0));
        assert_eq!(config.min_free_inodes, FreeThreshold::Percent(10.0));
        assert!(config.rocks_params.is_none());

        let rocks = RocksParams::default();
        assert_eq!(rocks.compression_type, CompressionType::Snappy);
        assert_eq!(rocks.log_level, LogLevel::Info);
        assert_eq!(rocks.log_file_time_to_roll, Duration::from_secs(86400));
        assert_eq!(rocks.obsolete_files_period, Duration::from_secs(6 * 3600));
        assert_eq!(rocks.store_deadline, Duration::from_secs(30));
        assert_eq!(rocks.error_latch_duration, Duration::from_secs(15));
        assert_eq!(rocks.error_unlatch_duration, Duration::from_secs(300));
        assert!(rocks.allow_error_unlatch);
        assert!(!rocks.paranoid_checks);
    }

    #[test]
    fn full_table_deserializes() {
        let config = parse(
            r#"{"name": "meta", "path": "/s/meta", "kind": "RocksDB", "flush": false,
                "min_free_space": 1000000, "min_free_inodes": "5%",
                "rocks_params": {"increase_parallelism": 4, "compression_type": "Zstd",
                  "optimize_level_style_compaction": 67108864, "paranoid_checks": true,
                  "compaction_readahead_size": 2097152, "level_compaction_dynamic_level_bytes": true,
                  "max_open_files": 1000, "write_buffer_size": 1048576,
                  "level0_stop_writes_trigger": 40, "log_level": "Warn", "log_dir": "/var/log/rocks",
                  "memtable_huge_page_size": 0, "log_file_time_to_roll": "1 hour",
                  "obsolete_files_period": 60, "limit_concurrent_stores": 8,
                  "limit_concurrent_loads": 8, "limit_concurrent_removes": 8,
                  "store_deadline": "10s", "error_latch_duration": "1s",
                  "error_unlatch_duration": "2 minutes", "allow_error_unlatch": false}}"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.kind, SpoolKind::RocksDB);
        assert!(!config.flush);
        assert_eq!(config.min_free_space, FreeThreshold::Absolute(1_000_000));
        assert_eq!(config.min_free_inodes, FreeThreshold::Percent(5.0));
        let rocks = config.rocks_params.unwrap();
        assert_eq!(rocks.compression_type, CompressionType::Zstd);
        assert_eq!(rocks.log_file_time_to_roll, Duration::from_secs(3600));
        assert_eq!(rocks.obsolete_files_period, Duration::from_secs(60));
        assert_eq!(rocks.error_unlatch_duration, Duration::from_secs(120));
        assert_eq!(rocks.log_dir, Some(PathBuf::from("/var/log/rocks")));
        assert!(!rocks.allow_error_unlatch);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let err = parse(r#"{"name": "d", "path": "/x", "flsh": true}"#).unwrap_err();
        assert!(err.contains("flsh"), "{err}");
        let err = parse(r#"{"name": "d", "path": "/x", "rocks_params": {"nope": 1}}"#).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err = parse(r#"{"name": "d", "path": "/x", "kind": "Maildir"}"#).unwrap_err();
        assert!(err.contains("Maildir"), "{err}");
        let err = parse(r#"{"name": "d", "path": "/x", "min_free_space": "lots"}"#).unwrap_err();
        assert!(err.contains("lots"), "{err}");
        assert!(parse(r#"{"path": "/x"}"#).unwrap_err().contains("name"));

        let mut config = parse(r#"{"name": "d", "path": "/x"}"#).unwrap();
        config.rocks_params = Some(RocksParams {
            optimize_level_style_compaction: Some(1),
            optimize_universal_style_compaction: Some(1),
            ..RocksParams::default()
        });
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("cannot both be set")
        );
    }

    #[test]
    fn thresholds_parse_and_scale() {
        assert_eq!(
            FreeThreshold::parse("12.5%").unwrap(),
            FreeThreshold::Percent(12.5)
        );
        assert_eq!(
            FreeThreshold::parse("1_000").unwrap(),
            FreeThreshold::Absolute(1000)
        );
        assert!(FreeThreshold::parse("150%").is_err());
        assert!(FreeThreshold::parse("-1").is_err());
        assert_eq!(FreeThreshold::Percent(10.0).minimum(1000), 100);
        assert_eq!(FreeThreshold::Absolute(7).minimum(1000), 7);
    }
}
