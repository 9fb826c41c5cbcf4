//! What `GET /api/machine-info` reports about the host: names, sizes and
//! versions an operator (or an inventory tool) uses to tell nodes apart.
//! Everything is read from `/proc`, `/sys` and `/etc` at request time;
//! a fact that cannot be read is reported as empty rather than failing
//! the request.

use serde_json::{Value, json};
use std::path::Path;
use std::time::SystemTime;

/// The `MachineInfoV1` document for this process.
pub fn machine_info(hostname: &str, node_id: &uuid::Uuid, started: SystemTime) -> Value {
    let os_release = read("/etc/os-release");
    let field = |key: &str| os_release_field(&os_release, key);
    let distribution = field("ID").unwrap_or_default();
    let pretty = field("PRETTY_NAME").unwrap_or_else(|| distribution.clone());
    json!({
        "hostname": hostname,
        "node_id": node_id.to_string(),
        "num_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel_version": non_empty(read("/proc/sys/kernel/osrelease").trim()),
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        "distribution": distribution,
        "os_version": format!("Linux ({pretty})"),
        "total_memory_bytes": meminfo_total(&read("/proc/meminfo")).unwrap_or(0),
        "container_runtime": container_runtime(),
        "cpu_brand": cpu_brands(&read("/proc/cpuinfo")),
        "mac_address": mac_address().unwrap_or_default(),
        "fingerprint": fingerprint(),
        "online_since": humantime::format_rfc3339_seconds(started).to_string(),
        "process_kind": "tern",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// `KEY=value` or `KEY="value"` from os-release(5).
fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

/// `MemTotal:  16384 kB` in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The distinct `model name`s of /proc/cpuinfo, comma-separated.
fn cpu_brands(text: &str) -> String {
    let mut brands: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':')
            && key.trim() == "model name"
            && !brands.contains(&value.trim())
        {
            brands.push(value.trim());
        }
    }
    brands.join(", ")
}

fn container_runtime() -> Option<&'static str> {
    if Path::new("/.dockerenv").exists() {
        Some("docker")
    } else if Path::new("/run/.containerenv").exists() {
        Some("podman")
    } else {
        None
    }
}

/// The first non-loopback interface's address, by interface name.
fn mac_address() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let mac = read(format!("/sys/class/net/{name}/address"));
        let mac = mac.trim();
        (!mac.is_empty() && mac != "00:00:00:00:00:00").then(|| mac.to_string())
    })
}

/// `machine_uid=<machine-id>`: systemd's stable identifier of the host.
fn fingerprint() -> String {
    let id = read("/etc/machine-id");
    match id.trim() {
        "" => String::new(),
        id => format!("machine_uid={id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_and_etc_formats() {
        let release =
            "NAME=\"Debian GNU/Linux\"\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n";
        assert_eq!(os_release_field(release, "ID").as_deref(), Some("debian"));
        assert_eq!(
            os_release_field(release, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
        assert_eq!(os_release_field(release, "VERSION"), None);
        assert_eq!(
            meminfo_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16 << 20)
        );
        let cpus = "model name\t: A\nflags\t: x\nmodel name\t: A\nmodel name\t: B\n";
        assert_eq!(cpu_brands(cpus), "A, B");
    }
}
