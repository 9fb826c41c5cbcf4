//! Memory limits and load shedding (§1.2 step 1, §3.2, `kumo.set_memory_*`).
//!
//! At startup [`MemoryGovernor::discover`] works out how much memory the
//! process may use: a cgroup v2 `memory.max`, else a cgroup v1
//! `memory.limit_in_bytes`, else the `ulimit -m` resource limit, else the
//! physical RAM (`MemTotal`). That is the *hard limit*. The *soft limit*
//! defaults to 75% of it and the *low threshold* to 80% of the soft limit;
//! the policy may override all three from `pre_init` through
//! [`MemoryRegistrar`].
//!
//! A background task ([`MemoryGovernor::spawn_sampler`]) samples usage once a
//! period: the cgroup's working set when the limit came from a cgroup (so
//! that the number compared is the one the kernel's OOM killer sees), the
//! process RSS otherwise. It keeps two flags up to date:
//!
//! * over the soft limit ("headroom is zero"): the SMTP listener answers
//!   `421 4.3.2 <host> load shedding. Try later` before the banner, HTTP
//!   injection answers 503, and the liveness check fails;
//! * over the low threshold: passive reduction (dropping message bodies from
//!   memory when they move between queues) should apply.
//!
//! Reading a flag is one atomic load ([`MemoryGovernor::over_soft_limit`]),
//! cheap enough for every connection and request. Everything that reads
//! files (sampling, discovery) or changes limits is off that path. The
//! parsers for the kernel's files are pure functions over `&str` so they are
//! tested with sample contents rather than with this machine's layout.

use mlua::{Lua, Table, Value};
use parking_lot::Mutex;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tern_policy::LuaRegistrar;
use tokio::sync::watch;

/// Soft limit as a share of the hard limit when the policy sets none.
const DEFAULT_SOFT_PERCENT: u64 = 75;
/// Low threshold as a share of the soft limit when the policy sets none.
const DEFAULT_LOW_PERCENT: u64 = 80;
/// cgroup v1 reports "no limit" as a page-rounded `i64::MAX`; anything at or
/// above 2^62 bytes is treated as unlimited.
const CGROUP_V1_UNLIMITED_FLOOR: u64 = 1 << 62;

// ---------------------------------------------------------------------------
// Pure parsers for the kernel's files
// ---------------------------------------------------------------------------

/// Where the process sits in the cgroup hierarchies, from `/proc/self/cgroup`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMembership {
    /// Path in the unified (v2) hierarchy: the `0::<path>` line.
    pub v2: Option<String>,
    /// Path in the v1 hierarchy that has the `memory` controller.
    pub v1_memory: Option<String>,
}

/// Parses `/proc/self/cgroup` (`id:controllers:path` per line).
pub fn parse_proc_self_cgroup(text: &str) -> CgroupMembership {
    let mut membership = CgroupMembership::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            membership.v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            membership.v1_memory = Some(path.to_string());
        }
    }
    membership
}

/// Which kind of cgroup filesystem a mount is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A cgroup filesystem mount from `/proc/self/mountinfo` that matters for
/// memory: the unified hierarchy, or the v1 hierarchy with `memory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub version: CgroupVersion,
    /// The path inside the hierarchy that is mounted (the "root" field).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// Parses `/proc/self/mountinfo`, keeping the cgroup2 mounts and the cgroup
/// v1 mounts that carry the memory controller.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount_point options [optional...] - fstype source super_options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = before.split(' ').collect();
        let post: Vec<&str> = after.split(' ').collect();
        if pre.len() < 5 || post.is_empty() {
            continue;
        }
        let version = match post[0] {
            "cgroup2" => CgroupVersion::V2,
            "cgroup" => {
                let super_options = post.get(2).copied().unwrap_or("");
                if !super_options.split(',').any(|o| o == "memory") {
                    continue;
                }
                CgroupVersion::V1
            }
            _ => continue,
        };
        mounts.push(CgroupMount {
            version,
            root: unescape_mountinfo(pre[3]),
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
        });
    }
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory holding the control files of the cgroup at `cgroup_path`
/// under `mount`. The mount may expose only a sub-tree (containers without a
/// cgroup namespace), so the mounted root is stripped first; a path outside
/// the mounted sub-tree falls back to the mount point itself.
pub fn cgroup_dir(mount: &CgroupMount, cgroup_path: &str) -> PathBuf {
    let root = mount.root.trim_end_matches('/');
    let relative = match cgroup_path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => "",
    };
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(relative)
    }
}

/// Parses cgroup v2 `memory.max`: a byte count, or `max` for no limit.
pub fn parse_cgroup_v2_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|&v| v > 0)
}

/// Parses cgroup v1 `memory.limit_in_bytes`; the huge "unlimited" value
/// (and anything near it) means no limit.
pub fn parse_cgroup_v1_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&v| v > 0 && v < CGROUP_V1_UNLIMITED_FLOOR)
}

/// Parses a plain byte counter such as `memory.current`.
pub fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

/// Resident set size in bytes from `/proc/self/statm` (second field, pages).
pub fn parse_statm_rss(text: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size)
}

/// One `key value` line of a cgroup `memory.stat` file.
pub fn parse_memory_stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// The control files of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CgroupFiles {
    pub version: CgroupVersion,
    pub dir: PathBuf,
}

impl CgroupFiles {
    fn limit_file(&self) -> PathBuf {
        self.dir.join(match self.version {
            CgroupVersion::V2 => "memory.max",
            CgroupVersion::V1 => "memory.limit_in_bytes",
        })
    }

    fn parse_limit(&self, text: &str) -> Option<u64> {
        match self.version {
            CgroupVersion::V2 => parse_cgroup_v2_max(text),
            CgroupVersion::V1 => parse_cgroup_v1_limit(text),
        }
    }

    /// The cgroup's working set: its charged memory minus the inactive file
    /// cache, which the kernel reclaims before it runs out. Counting the
    /// cache would make a busy spool look like a leak.
    fn working_set(&self) -> Option<u64> {
        let (usage_name, inactive_key) = match self.version {
            CgroupVersion::V2 => ("memory.current", "inactive_file"),
            CgroupVersion::V1 => ("memory.usage_in_bytes", "total_inactive_file"),
        };
        let usage = parse_counter(&std::fs::read_to_string(self.dir.join(usage_name)).ok()?)?;
        let inactive = std::fs::read_to_string(self.dir.join("memory.stat"))
            .ok()
            .and_then(|stat| parse_memory_stat_field(&stat, inactive_key))
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }
}

/// Where the hard limit came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LimitSource {
    /// A cgroup's limit (this cgroup or the tightest of its ancestors).
    Cgroup(CgroupFiles),
    /// `getrlimit(RLIMIT_RSS)`, i.e. `ulimit -m`.
    Ulimit,
    /// `MemTotal` from `/proc/meminfo`.
    PhysicalRam,
    /// Nothing could be read: no limits until the policy sets one.
    Unknown,
}

/// How memory usage is measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum UsageSource {
    /// The process RSS from `<proc_root>/self/statm`.
    Rss { statm: PathBuf },
    /// The cgroup's working set, falling back to the RSS when unreadable.
    Cgroup { files: CgroupFiles, statm: PathBuf },
    /// Not sampled: usage is only what [`MemoryGovernor::record_usage`]
    /// reports (tests, or an embedding that measures memory itself).
    Manual,
}

/// What discovery found: the hard limit, where it came from, and how usage
/// should be measured against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub hard_limit: Option<u64>,
    pub source: LimitSource,
    pub usage: UsageSource,
}

impl Discovery {
    /// Probes the system under `root` (`/` in production; a scratch tree in
    /// tests). `rss_rlimit` is the `ulimit -m` value, passed in because it is
    /// a property of the process rather than of a file.
    pub fn probe(root: &Path, rss_rlimit: Option<u64>) -> Self {
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
        let statm = root.join("proc/self/statm");
        let physical = read("proc/meminfo").and_then(|t| parse_meminfo_total(&t));

        let cgroup = match (read("proc/self/cgroup"), read("proc/self/mountinfo")) {
            (Some(cgroup), Some(mountinfo)) => {
                let membership = parse_proc_self_cgroup(&cgroup);
                let mounts = parse_mountinfo(&mountinfo);
                cgroup_limit(root, &membership, &mounts, CgroupVersion::V2)
                    .or_else(|| cgroup_limit(root, &membership, &mounts, CgroupVersion::V1))
            }
            _ => None,
        };

        let (limit, source) = if let Some((limit, files)) = cgroup {
            (Some(limit), LimitSource::Cgroup(files))
        } else if let Some(limit) = rss_rlimit {
            (Some(limit), LimitSource::Ulimit)
        } else if let Some(limit) = physical {
            (Some(limit), LimitSource::PhysicalRam)
        } else {
            (None, LimitSource::Unknown)
        };

        // A limit above the machine's RAM cannot be reached: the RAM is the
        // real constraint then.
        let (limit, source) = match (limit, physical) {
            (Some(limit), Some(ram)) if ram < limit => (Some(ram), LimitSource::PhysicalRam),
            other => (other.0, source),
        };

        let usage = match &source {
            LimitSource::Cgroup(files) => UsageSource::Cgroup {
                files: files.clone(),
                statm,
            },
            _ => UsageSource::Rss { statm },
        };
        Discovery {
            hard_limit: limit,
            source,
            usage,
        }
    }
}

/// The tightest memory limit of the process's cgroup and its ancestors in
/// the hierarchy of `version`, with the cgroup that imposes it.
fn cgroup_limit(
    root: &Path,
    membership: &CgroupMembership,
    mounts: &[CgroupMount],
    version: CgroupVersion,
) -> Option<(u64, CgroupFiles)> {
    let path = match version {
        CgroupVersion::V2 => membership.v2.as_deref()?,
        CgroupVersion::V1 => membership.v1_memory.as_deref()?,
    };
    let mount = mounts.iter().find(|m| m.version == version)?;
    let mount_point = root.join(
        mount
            .mount_point
            .strip_prefix("/")
            .unwrap_or(&mount.mount_point),
    );
    let relocated = CgroupMount {
        mount_point: mount_point.clone(),
        ..mount.clone()
    };
    let mut dir = cgroup_dir(&relocated, path);
    let mut best: Option<(u64, CgroupFiles)> = None;
    loop {
        let files = CgroupFiles {
            version,
            dir: dir.clone(),
        };
        if let Some(limit) = std::fs::read_to_string(files.limit_file())
            .ok()
            .and_then(|t| files.parse_limit(&t))
            && best.as_ref().is_none_or(|(b, _)| limit < *b)
        {
            best = Some((limit, files));
        }
        if dir == mount_point || !dir.pop() || !dir.starts_with(&mount_point) {
            break;
        }
    }
    best
}

/// `getrlimit(RLIMIT_RSS)` (`ulimit -m`), or `None` when unlimited.
// rlim_t is 32 bits on some targets, so the cast is not always a no-op.
#[allow(clippy::unnecessary_cast)]
fn rss_rlimit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_RSS, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur > 0)
        .then_some(limit.rlim_cur as u64)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

// ---------------------------------------------------------------------------
// The governor
// ---------------------------------------------------------------------------

/// What the policy (or discovery) asked for; the effective limits are
/// derived from it by [`LimitConfig::effective`].
#[derive(Clone, Copy, Debug, Default)]
struct LimitConfig {
    hard: Option<u64>,
    soft: Option<u64>,
    low: Option<u64>,
}

/// The limits actually enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Effective {
    hard: Option<u64>,
    soft: Option<u64>,
    low: Option<u64>,
}

impl LimitConfig {
    /// Unset values are derived from the one above (soft = 75% of hard, low
    /// = 80% of soft); a set value above the one it sits under is clamped
    /// to it.
    fn effective(&self) -> Effective {
        let hard = self.hard;
        let soft = match (self.soft, hard) {
            (Some(soft), Some(hard)) => Some(soft.min(hard)),
            (Some(soft), None) => Some(soft),
            (None, Some(hard)) => Some(percent_of(hard, DEFAULT_SOFT_PERCENT)),
            (None, None) => None,
        };
        let low = match (self.low, soft) {
            (Some(low), Some(soft)) => Some(low.min(soft)),
            (Some(low), None) => Some(low),
            (None, Some(soft)) => Some(percent_of(soft, DEFAULT_LOW_PERCENT)),
            (None, None) => None,
        };
        Effective { hard, soft, low }
    }
}

/// `value * percent / 100` without overflow, never below 1 byte (0 is the
/// "no limit" marker in the atomics).
fn percent_of(value: u64, percent: u64) -> u64 {
    ((value as u128 * percent as u128 / 100) as u64).max(1)
}

/// A snapshot for diagnostics (`/api/admin/memory/stats`) and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Last sampled usage (the `memory_usage` gauge).
    pub usage_bytes: u64,
    pub hard_limit_bytes: Option<u64>,
    /// The load-shedding threshold (the `memory_limit` gauge).
    pub soft_limit_bytes: Option<u64>,
    pub low_thresh_bytes: Option<u64>,
    /// `soft limit - usage`, clamped at 0; `None` without a soft limit.
    pub headroom_bytes: Option<u64>,
    pub load_shedding: bool,
    pub over_low_thresh: bool,
    pub limit_source: LimitSource,
    pub usage_source: UsageSource,
}

/// Process-wide memory limits and the load-shedding flag. Share it as an
/// `Arc`; every method takes `&self`.
pub struct MemoryGovernor {
    limit_source: LimitSource,
    usage_source: UsageSource,
    page_size: u64,
    /// Serialises limit changes and flag evaluation (never on a hot path).
    config: Mutex<LimitConfig>,
    // Effective limits, mirrored for lock-free reads; 0 means "none".
    hard: AtomicU64,
    soft: AtomicU64,
    low: AtomicU64,
    usage: AtomicU64,
    over_soft: AtomicBool,
    over_low: AtomicBool,
    shedding: watch::Sender<bool>,
}

impl std::fmt::Debug for MemoryGovernor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGovernor")
            .field("stats", &self.stats())
            .finish()
    }
}

fn none_if_zero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

impl MemoryGovernor {
    /// Builds a governor from a discovery result without sampling.
    pub fn new(discovery: Discovery) -> Self {
        let config = LimitConfig {
            hard: discovery.hard_limit,
            ..LimitConfig::default()
        };
        let governor = Self {
            limit_source: discovery.source,
            usage_source: discovery.usage,
            page_size: page_size(),
            config: Mutex::new(config),
            hard: AtomicU64::new(0),
            soft: AtomicU64::new(0),
            low: AtomicU64::new(0),
            usage: AtomicU64::new(0),
            over_soft: AtomicBool::new(false),
            over_low: AtomicBool::new(false),
            shedding: watch::channel(false).0,
        };
        governor.publish(&config.effective());
        governor
    }

    /// Discovers the limits of this process (cgroup v2, cgroup v1, `ulimit
    /// -m`, physical RAM, in that order) and takes a first sample.
    pub fn discover() -> Self {
        let discovery = Discovery::probe(Path::new("/"), rss_rlimit());
        let governor = Self::new(discovery);
        governor.sample();
        let stats = governor.stats();
        tracing::info!(
            hard_limit = ?stats.hard_limit_bytes,
            soft_limit = ?stats.soft_limit_bytes,
            low_thresh = ?stats.low_thresh_bytes,
            usage = stats.usage_bytes,
            source = ?stats.limit_source,
            "memory limits discovered"
        );
        governor
    }

    /// True while usage is at or above the soft limit: refuse new work.
    /// One atomic load; safe to call per connection and per request.
    #[inline]
    pub fn over_soft_limit(&self) -> bool {
        self.over_soft.load(Ordering::Relaxed)
    }

    /// True while usage is at or above the low threshold: apply passive
    /// reduction (drop message bodies from memory when moving them).
    #[inline]
    pub fn over_low_thresh(&self) -> bool {
        self.over_low.load(Ordering::Relaxed)
    }

    /// The last sampled usage in bytes (the `memory_usage` gauge).
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// The load-shedding threshold, i.e. the effective soft limit (the
    /// `memory_limit` gauge).
    pub fn limit(&self) -> Option<u64> {
        self.soft_limit()
    }

    pub fn hard_limit(&self) -> Option<u64> {
        none_if_zero(self.hard.load(Ordering::Relaxed))
    }

    pub fn soft_limit(&self) -> Option<u64> {
        none_if_zero(self.soft.load(Ordering::Relaxed))
    }

    pub fn low_thresh(&self) -> Option<u64> {
        none_if_zero(self.low.load(Ordering::Relaxed))
    }

    /// `soft limit - usage`, clamped at 0; `None` without a soft limit.
    pub fn headroom(&self) -> Option<u64> {
        self.soft_limit()
            .map(|soft| soft.saturating_sub(self.usage()))
    }

    pub fn limit_source(&self) -> &LimitSource {
        &self.limit_source
    }

    /// A receiver that sees `true` on entering load shedding and `false` on
    /// leaving it: for work that should happen once per transition (purging
    /// caches, shrinking ready queues).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.shedding.subscribe()
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            usage_bytes: self.usage(),
            hard_limit_bytes: self.hard_limit(),
            soft_limit_bytes: self.soft_limit(),
            low_thresh_bytes: self.low_thresh(),
            headroom_bytes: self.headroom(),
            load_shedding: self.over_soft_limit(),
            over_low_thresh: self.over_low_thresh(),
            limit_source: self.limit_source.clone(),
            usage_source: self.usage_source.clone(),
        }
    }

    /// Sets the hard limit; unset soft limit and low threshold follow it.
    pub fn set_hard_limit(&self, bytes: u64) {
        self.reconfigure(|c| c.hard = Some(bytes));
    }

    /// Sets the soft (load-shedding) limit. A value above the hard limit is
    /// clamped to the hard limit.
    pub fn set_soft_limit(&self, bytes: u64) {
        self.reconfigure(|c| c.soft = Some(bytes));
        if let Some(hard) = self.hard_limit()
            && bytes > hard
        {
            tracing::warn!(
                requested = bytes,
                hard_limit = hard,
                "memory soft limit is above the hard limit; using the hard limit"
            );
        }
    }

    /// Sets the low-memory threshold. A value above the soft limit is
    /// clamped to the soft limit.
    pub fn set_low_thresh(&self, bytes: u64) {
        self.reconfigure(|c| c.low = Some(bytes));
        if let Some(soft) = self.soft_limit()
            && bytes > soft
        {
            tracing::warn!(
                requested = bytes,
                soft_limit = soft,
                "memory low threshold is above the soft limit; using the soft limit"
            );
        }
    }

    /// Applies a limit change and takes a fresh sample, so the flags reflect
    /// the new limits immediately rather than at the next tick.
    fn reconfigure(&self, change: impl FnOnce(&mut LimitConfig)) {
        {
            let mut config = self.config.lock();
            change(&mut config);
            self.publish(&config.effective());
        }
        self.sample();
    }

    fn publish(&self, effective: &Effective) {
        self.hard
            .store(effective.hard.unwrap_or(0), Ordering::Relaxed);
        self.soft
            .store(effective.soft.unwrap_or(0), Ordering::Relaxed);
        self.low
            .store(effective.low.unwrap_or(0), Ordering::Relaxed);
    }

    /// Measures usage now (per the usage source) and re-evaluates the flags.
    /// With [`UsageSource::Manual`] only the evaluation happens.
    pub fn sample(&self) {
        match self.measure() {
            Some(usage) => self.record_usage(usage),
            None => {
                if !matches!(self.usage_source, UsageSource::Manual) {
                    tracing::debug!(source = ?self.usage_source, "could not read memory usage");
                }
                let _config = self.config.lock();
                self.evaluate(self.usage());
            }
        }
    }

    fn measure(&self) -> Option<u64> {
        let rss = |statm: &Path| {
            std::fs::read_to_string(statm)
                .ok()
                .and_then(|t| parse_statm_rss(&t, self.page_size))
        };
        match &self.usage_source {
            UsageSource::Rss { statm } => rss(statm),
            UsageSource::Cgroup { files, statm } => files.working_set().or_else(|| rss(statm)),
            UsageSource::Manual => None,
        }
    }

    /// Records a usage figure measured elsewhere and re-evaluates the flags.
    pub fn record_usage(&self, bytes: u64) {
        let _config = self.config.lock();
        self.usage.store(bytes, Ordering::Relaxed);
        self.evaluate(bytes);
    }

    /// Updates both flags for `usage`; logs and notifies on a transition of
    /// the load-shedding flag only. Called with the config lock held so that
    /// concurrent samples and limit changes cannot interleave.
    fn evaluate(&self, usage: u64) {
        let over = |limit: &AtomicU64| {
            let limit = limit.load(Ordering::Relaxed);
            limit != 0 && usage >= limit
        };
        self.over_low.store(over(&self.low), Ordering::Relaxed);
        let now = over(&self.soft);
        let before = self.over_soft.swap(now, Ordering::Relaxed);
        if now == before {
            return;
        }
        let soft_limit = self.soft.load(Ordering::Relaxed);
        if now {
            tracing::warn!(
                usage,
                soft_limit,
                "memory usage reached the soft limit: load shedding (new SMTP connections and HTTP injections are refused)"
            );
        } else {
            tracing::info!(
                usage,
                soft_limit,
                "memory usage is below the soft limit again: load shedding ended"
            );
        }
        self.shedding.send_replace(now);
    }

    /// Starts a task that samples usage every `period` until the governor
    /// is dropped. Call from within a tokio runtime.
    pub fn spawn_sampler(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let governor: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(governor) = governor.upgrade() else {
                    return;
                };
                governor.sample();
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Lua
// ---------------------------------------------------------------------------

/// Registers `kumo.set_memory_{hard_limit,soft_limit,low_thresh}` and their
/// `get_*` counterparts, acting on the shared governor.
pub struct MemoryRegistrar(pub Arc<MemoryGovernor>);

/// A positive whole number of bytes from a Lua value; integral floats (as
/// produced by `2 * 1024^3`) are accepted too.
fn byte_count(value: &Value, function: &str) -> mlua::Result<u64> {
    let bytes = match value {
        Value::Integer(i) if *i > 0 => Some(*i as u64),
        Value::Number(n) if n.is_finite() && *n >= 1.0 && n.fract() == 0.0 && *n < 1.8e19 => {
            Some(*n as u64)
        }
        _ => None,
    };
    bytes.ok_or_else(|| {
        let shown = match value {
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => format!("{:?}", s.to_string_lossy()),
            other => other.type_name().to_string(),
        };
        mlua::Error::runtime(format!(
            "{function}: expected a positive integer number of bytes, got {shown}"
        ))
    })
}

impl LuaRegistrar for MemoryRegistrar {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        type Setter = fn(&MemoryGovernor, u64);
        type Getter = fn(&MemoryGovernor) -> Option<u64>;
        let functions: [(&str, Setter, &str, Getter); 3] = [
            (
                "set_memory_hard_limit",
                MemoryGovernor::set_hard_limit,
                "get_memory_hard_limit",
                MemoryGovernor::hard_limit,
            ),
            (
                "set_memory_soft_limit",
                MemoryGovernor::set_soft_limit,
                "get_memory_soft_limit",
                MemoryGovernor::soft_limit,
            ),
            (
                "set_memory_low_thresh",
                MemoryGovernor::set_low_thresh,
                "get_memory_low_thresh",
                MemoryGovernor::low_thresh,
            ),
        ];
        for (set_name, setter, get_name, getter) in functions {
            let governor = Arc::clone(&self.0);
            let qualified = format!("kumo.{set_name}");
            kumo.raw_set(
                set_name,
                lua.create_function(move |_, value: Value| {
                    let bytes = byte_count(&value, &qualified)?;
                    setter(&governor, bytes);
                    Ok(())
                })?,
            )?;
            let governor = Arc::clone(&self.0);
            kumo.raw_set(
                get_name,
                lua.create_function(move |_, ()| {
                    // Lua integers are i64; limits beyond that are not real.
                    Ok(getter(&governor).map(|v| v.min(i64::MAX as u64) as i64))
                })?,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
";

    fn manual(hard: Option<u64>) -> MemoryGovernor {
        MemoryGovernor::new(Discovery {
            hard_limit: hard,
            source: LimitSource::Unknown,
            usage: UsageSource::Manual,
        })
    }

    #[test]
    fn proc_self_cgroup_hybrid_and_unified() {
        let hybrid = parse_proc_self_cgroup(HYBRID_CGROUP);
        assert_eq!(hybrid.v2.as_deref(), Some("/"));
        assert_eq!(hybrid.v1_memory.as_deref(), Some("/process_api/abc"));

        let unified = parse_proc_self_cgroup("0::/system.slice/tern.service\n");
        assert_eq!(unified.v2.as_deref(), Some("/system.slice/tern.service"));
        assert_eq!(unified.v1_memory, None);

        // Combined controllers and junk lines.
        let v1 = parse_proc_self_cgroup("garbage\n5:cpu,memory:/docker/x\n");
        assert_eq!(v1.v1_memory.as_deref(), Some("/docker/x"));
        assert_eq!(v1.v2, None);
    }

    #[test]
    fn mountinfo_keeps_memory_cgroup_mounts() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            mounts,
            vec![
                CgroupMount {
                    version: CgroupVersion::V1,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/memory".into(),
                },
                CgroupMount {
                    version: CgroupVersion::V2,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/unified".into(),
                },
            ]
        );
        let escaped =
            parse_mountinfo("1 2 0:1 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw,nsdelegate\n");
        assert_eq!(escaped[0].root, "/a b");
        assert_eq!(escaped[0].mount_point, PathBuf::from("/mnt/my cg"));
    }

    #[test]
    fn cgroup_dir_strips_the_mounted_root() {
        let mount = CgroupMount {
            version: CgroupVersion::V2,
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(
            cgroup_dir(&mount, "/docker/abc"),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            cgroup_dir(&mount, "/docker/abc/child"),
            PathBuf::from("/sys/fs/cgroup/child")
        );
        // Outside the mounted sub-tree (or a sibling with a common prefix).
        assert_eq!(
            cgroup_dir(&mount, "/docker/abcdef"),
            PathBuf::from("/sys/fs/cgroup")
        );
        let full = CgroupMount {
            root: "/".into(),
            ..mount
        };
        assert_eq!(
            cgroup_dir(&full, "/user.slice/x"),
            PathBuf::from("/sys/fs/cgroup/user.slice/x")
        );
        assert_eq!(cgroup_dir(&full, "/"), PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn limit_file_parsers() {
        assert_eq!(parse_cgroup_v2_max("max\n"), None);
        assert_eq!(parse_cgroup_v2_max("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_cgroup_v2_max("junk"), None);
        assert_eq!(parse_cgroup_v1_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_v1_limit("536870912\n"), Some(1 << 29));
        assert_eq!(parse_cgroup_v1_limit("-1"), None);
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684100 kB\nMemFree: 1 kB\n"),
            Some(24684100 * 1024)
        );
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            parse_statm_rss("765 434 406 5 0 123 0\n", 4096),
            Some(434 * 4096)
        );
        assert_eq!(parse_statm_rss("765", 4096), None);
        let stat = "anon 100\nfile 5000\ninactive_file 3000\ntotal_inactive_file 7\n";
        assert_eq!(parse_memory_stat_field(stat, "inactive_file"), Some(3000));
        assert_eq!(
            parse_memory_stat_field(stat, "total_inactive_file"),
            Some(7)
        );
        assert_eq!(parse_memory_stat_field(stat, "active_file"), None);
    }

    /// A scratch directory tree standing in for `/`.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            // Test names are unique, and the pid separates concurrent runs.
            let dir =
                std::env::temp_dir().join(format!("tern-memory-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, text: &str) -> &Self {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn probe_prefers_the_tightest_v2_ancestor() {
        let root = FakeRoot::new("v2");
        root.write("proc/meminfo", "MemTotal: 16777216 kB\n") // 16 GiB
            .write("proc/self/cgroup", "0::/ctr/app\n")
            .write(
                "proc/self/mountinfo",
                "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            )
            .write("sys/fs/cgroup/ctr/app/memory.max", "max\n")
            .write("sys/fs/cgroup/ctr/memory.max", &format!("{}\n", 2 * GIB))
            .write("sys/fs/cgroup/ctr/memory.current", "1000\n")
            .write("sys/fs/cgroup/ctr/memory.stat", "inactive_file 400\n");
        let found = Discovery::probe(&root.0, None);
        assert_eq!(found.hard_limit, Some(2 * GIB));
        let files = CgroupFiles {
            version: CgroupVersion::V2,
            dir: root.0.join("sys/fs/cgroup/ctr"),
        };
        assert_eq!(found.source, LimitSource::Cgroup(files.clone()));
        assert!(matches!(&found.usage, UsageSource::Cgroup { files: f, .. } if *f == files));
        // Usage is the cgroup's working set (charged minus inactive cache).
        let governor = MemoryGovernor::new(found);
        governor.sample();
        assert_eq!(governor.usage(), 600);
    }

    #[test]
    fn probe_falls_back_to_v1_then_ulimit_then_ram() {
        let root = FakeRoot::new("v1");
        root.write("proc/meminfo", "MemTotal: 16777216 kB\n")
            .write("proc/self/cgroup", HYBRID_CGROUP)
            .write("proc/self/mountinfo", MOUNTINFO)
            .write("proc/self/statm", "100 10 5 1 0 2 0\n")
            .write(
                "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                &format!("{}\n", GIB),
            );
        let found = Discovery::probe(&root.0, Some(4 * GIB));
        assert_eq!(found.hard_limit, Some(GIB));
        assert!(matches!(
            &found.source,
            LimitSource::Cgroup(CgroupFiles {
                version: CgroupVersion::V1,
                ..
            })
        ));

        // The v1 cgroup is unlimited: the ulimit is next.
        root.write(
            "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let found = Discovery::probe(&root.0, Some(4 * GIB));
        assert_eq!(found.hard_limit, Some(4 * GIB));
        assert_eq!(found.source, LimitSource::Ulimit);
        assert!(matches!(found.usage, UsageSource::Rss { .. }));

        // No ulimit: physical RAM.
        let found = Discovery::probe(&root.0, None);
        assert_eq!(found.hard_limit, Some(16 * GIB));
        assert_eq!(found.source, LimitSource::PhysicalRam);

        // A limit above the RAM is capped at the RAM.
        let found = Discovery::probe(&root.0, Some(64 * GIB));
        assert_eq!(found.hard_limit, Some(16 * GIB));
        assert_eq!(found.source, LimitSource::PhysicalRam);

        // RSS usage from statm.
        let governor = MemoryGovernor::new(found);
        governor.sample();
        assert_eq!(governor.usage(), 10 * page_size());
    }

    #[test]
    fn probe_with_nothing_readable_has_no_limits() {
        let root = FakeRoot::new("empty");
        let found = Discovery::probe(&root.0, None);
        assert_eq!(found.hard_limit, None);
        assert_eq!(found.source, LimitSource::Unknown);
        let governor = MemoryGovernor::new(found);
        governor.sample();
        assert_eq!(governor.soft_limit(), None);
        assert!(!governor.over_soft_limit());
    }

    #[test]
    fn defaults_derive_from_the_hard_limit() {
        let governor = manual(Some(1000));
        assert_eq!(governor.hard_limit(), Some(1000));
        assert_eq!(governor.soft_limit(), Some(750));
        assert_eq!(governor.low_thresh(), Some(600));
        assert_eq!(governor.limit(), Some(750));

        // Raising the hard limit moves the derived values with it...
        governor.set_hard_limit(2000);
        assert_eq!(governor.soft_limit(), Some(1500));
        assert_eq!(governor.low_thresh(), Some(1200));
        // ...but not explicitly set ones.
        governor.set_soft_limit(1000);
        governor.set_hard_limit(4000);
        assert_eq!(governor.soft_limit(), Some(1000));
        assert_eq!(governor.low_thresh(), Some(800));

        assert_eq!(manual(None).soft_limit(), None);
        assert_eq!(manual(None).low_thresh(), None);
    }

    #[test]
    fn limits_above_the_one_above_are_clamped() {
        let governor = manual(Some(1000));
        governor.set_soft_limit(5000);
        assert_eq!(governor.soft_limit(), Some(1000));
        governor.set_low_thresh(3000);
        assert_eq!(governor.low_thresh(), Some(1000));
        // Raising the hard limit afterwards releases the clamp.
        governor.set_hard_limit(10_000);
        assert_eq!(governor.soft_limit(), Some(5000));
        assert_eq!(governor.low_thresh(), Some(3000));
    }

    #[test]
    fn shedding_flag_follows_usage_and_limit_changes() {
        let governor = manual(Some(1000)); // soft 750, low 600
        let mut changes = governor.subscribe();
        governor.record_usage(500);
        assert!(!governor.over_soft_limit());
        assert!(!governor.over_low_thresh());
        assert_eq!(governor.headroom(), Some(250));

        governor.record_usage(650);
        assert!(governor.over_low_thresh());
        assert!(!governor.over_soft_limit());

        governor.record_usage(750);
        assert!(governor.over_soft_limit());
        assert_eq!(governor.headroom(), Some(0));
        assert!(changes.has_changed().unwrap());
        assert!(*changes.borrow_and_update());

        governor.record_usage(900);
        assert!(!changes.has_changed().unwrap(), "no repeat notification");

        governor.record_usage(100);
        assert!(!governor.over_soft_limit());
        assert!(!*changes.borrow_and_update());

        // A limit dropping below the current usage takes effect at once.
        governor.set_soft_limit(1);
        assert!(governor.over_soft_limit());
        governor.set_soft_limit(500);
        assert!(!governor.over_soft_limit());

        let stats = governor.stats();
        assert_eq!(stats.usage_bytes, 100);
        assert_eq!(stats.soft_limit_bytes, Some(500));
        assert!(!stats.load_shedding);
    }

    #[test]
    fn setting_a_tiny_soft_limit_on_a_real_process_sheds_at_once() {
        let governor = MemoryGovernor::discover();
        assert!(governor.usage() > 0, "RSS of a running process is not 0");
        governor.set_soft_limit(1);
        assert!(governor.over_soft_limit());
        governor.set_hard_limit(u64::MAX / 2);
        governor.set_soft_limit(u64::MAX / 4);
        assert!(!governor.over_soft_limit());
    }

    #[tokio::test]
    async fn sampler_updates_the_flag() {
        let root = FakeRoot::new("sampler");
        root.write("proc/self/statm", "100 10 5 1 0 2 0\n");
        let governor = Arc::new(MemoryGovernor::new(Discovery {
            hard_limit: Some(page_size() * 20),
            source: LimitSource::Unknown,
            usage: UsageSource::Rss {
                statm: root.0.join("proc/self/statm"),
            },
        })); // soft = 15 pages; usage 10 pages once sampled
        let task = governor.spawn_sampler(Duration::from_millis(10));
        let mut changes = governor.subscribe();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(governor.usage(), 10 * page_size());
        assert!(!governor.over_soft_limit());

        root.write("proc/self/statm", "100 16 5 1 0 2 0\n");
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the sampler notices the growth")
            .unwrap();
        assert!(governor.over_soft_limit());

        root.write("proc/self/statm", "100 3 5 1 0 2 0\n");
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the sampler notices the shrink")
            .unwrap();
        assert!(!governor.over_soft_limit());

        // The task ends once the governor is gone.
        drop(governor);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("sampler exits")
            .unwrap();
    }

    fn lua_with(governor: &Arc<MemoryGovernor>) -> Lua {
        let lua = Lua::new();
        let kumo = lua.create_table().unwrap();
        MemoryRegistrar(Arc::clone(governor))
            .register(&lua, &kumo)
            .unwrap();
        lua.globals().set("kumo", kumo).unwrap();
        lua
    }

    #[test]
    fn lua_functions_set_and_get() {
        let governor = Arc::new(manual(Some(4 * GIB)));
        let lua = lua_with(&governor);
        let (hard, soft, low): (i64, i64, i64) = lua
            .load(
                "kumo.set_memory_hard_limit(2 * 1024 * 1024 * 1024)
                 kumo.set_memory_soft_limit(1024 ^ 3)
                 kumo.set_memory_low_thresh(800 * 1024 * 1024)
                 return kumo.get_memory_hard_limit(), kumo.get_memory_soft_limit(),
                        kumo.get_memory_low_thresh()",
            )
            .eval()
            .unwrap();
        assert_eq!(hard as u64, 2 * GIB);
        assert_eq!(soft as u64, GIB);
        assert_eq!(low as u64, 800 << 20);
        assert_eq!(governor.soft_limit(), Some(GIB));

        // The test hook: a one-byte soft limit sheds load.
        governor.record_usage(4096);
        lua.load("kumo.set_memory_soft_limit(1)").exec().unwrap();
        assert!(governor.over_soft_limit());
    }

    #[test]
    fn lua_getters_return_nil_without_limits() {
        let governor = Arc::new(manual(None));
        let lua = lua_with(&governor);
        let values: (Value, Value, Value) = lua
            .load(
                "return kumo.get_memory_hard_limit(), kumo.get_memory_soft_limit(),
                        kumo.get_memory_low_thresh()",
            )
            .eval()
            .unwrap();
        assert!(values.0.is_nil() && values.1.is_nil() && values.2.is_nil());
    }

    #[test]
    fn lua_rejects_bad_arguments() {
        let governor = Arc::new(manual(Some(1000)));
        let lua = lua_with(&governor);
        for (call, shown) in [
            ("kumo.set_memory_hard_limit(-5)", "got -5"),
            ("kumo.set_memory_soft_limit(0)", "got 0"),
            ("kumo.set_memory_low_thresh('2GB')", "got \"2GB\""),
            ("kumo.set_memory_soft_limit(1.5)", "got 1.5"),
            ("kumo.set_memory_soft_limit()", "got nil"),
            ("kumo.set_memory_hard_limit({})", "got table"),
        ] {
            let err = lua.load(call).exec().unwrap_err().to_string();
            let function = call.split('(').next().unwrap();
            assert!(err.contains(function), "{call}: {err}");
            assert!(err.contains("positive integer number of bytes"), "{err}");
            assert!(err.contains(shown), "{call}: {err}");
        }
        // Nothing changed.
        assert_eq!(governor.hard_limit(), Some(1000));
        assert_eq!(governor.soft_limit(), Some(750));
        assert_eq!(governor.low_thresh(), Some(600));
    }
}
