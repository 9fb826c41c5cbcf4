//! Tern's metrics: the counters and gauges behind `GET /metrics` and
//! `GET /metrics.json`.
//!
//! A component asks the [`Registry`] once for a [`Counter`] or [`Gauge`]
//! handle (per listener, per service) and keeps it; recording is then one
//! relaxed atomic operation, with no lookup or lock on the hot path.
//! Values that already live elsewhere (free disk space, queue sizes, the
//! Lua pool, memory use) are not mirrored into gauges that would have to
//! be kept in step: a collector closure ([`Registry::add_collector`])
//! reads them when a scrape asks, so series for things that have gone
//! away (a reaped queue) simply stop being reported.
//!
//! [`Registry::render_text`] produces the Prometheus text exposition
//! format, [`Registry::render_json`] the shape of KumoMTA's
//! `/metrics.json` (`{name: {help, type, value}}`, with labelled values
//! nested as `{label: {value: number}}`).
//!
//! The registry is a value handed to whoever records metrics (the server
//! keeps one in its state); there is no process-global registry, so tests
//! and embedded uses get their own.

use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The Prometheus type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Label names and values of one series, in the order given.
pub type LabelSet = Vec<(&'static str, String)>;

fn label_set(labels: &[(&'static str, &str)]) -> LabelSet {
    labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// A monotonically increasing count. Cloning shares the value.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cloning shares the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Count one more now and one less when the returned value is dropped:
    /// an active-connection gauge stays right however the task ends.
    pub fn hold(&self) -> GaugeHold {
        self.inc();
        GaugeHold(self.clone())
    }
}

/// See [`Gauge::hold`].
#[derive(Debug)]
pub struct GaugeHold(Gauge);

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.dec();
    }
}

enum Cell {
    Counter(Counter),
    Gauge(Gauge),
}

impl Cell {
    fn value(&self) -> f64 {
        match self {
            Cell::Counter(c) => c.get() as f64,
            Cell::Gauge(g) => g.get() as f64,
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, Cell>,
}

type Collector = Arc<dyn Fn(&mut Scrape) + Send + Sync>;

#[derive(Default)]
struct Inner {
    families: Mutex<BTreeMap<&'static str, Family>>,
    collectors: Mutex<Vec<Collector>>,
}

/// The set of metrics one server reports. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name` with these labels, created at zero the first
    /// time. Keep the handle: this call takes a lock.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        match self.cell(name, help, Kind::Counter, labels) {
            CellHandle::Counter(c) => c,
            CellHandle::Gauge(_) => unreachable!("cell() checks the kind"),
        }
    }

    /// The gauge `name` with these labels, created at zero the first time.
    /// Keep the handle: this call takes a lock.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        match self.cell(name, help, Kind::Gauge, labels) {
            CellHandle::Gauge(g) => g,
            CellHandle::Counter(_) => unreachable!("cell() checks the kind"),
        }
    }

    fn cell(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> CellHandle {
        let mut families = self.inner.families.lock();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        // One name is one type in the exposition format; asking for the
        // other type is a programming error, caught by the tests that
        // scrape every family.
        assert_eq!(family.kind, kind, "metric {name} registered as two types");
        let cell = family
            .series
            .entry(label_set(labels))
            .or_insert_with(|| match kind {
                Kind::Counter => Cell::Counter(Counter::default()),
                Kind::Gauge => Cell::Gauge(Gauge::default()),
            });
        match cell {
            Cell::Counter(c) => CellHandle::Counter(c.clone()),
            Cell::Gauge(g) => CellHandle::Gauge(g.clone()),
        }
    }

    /// Run `collect` at every scrape to report values read from their
    /// owners. It should be quick (it runs on the HTTP request) and must
    /// not call back into this registry.
    pub fn add_collector(&self, collect: impl Fn(&mut Scrape) + Send + Sync + 'static) {
        self.inner.collectors.lock().push(Arc::new(collect));
    }

    /// Every family, sorted by name, with the collectors' values merged in.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        let mut scrape = Scrape::default();
        {
            let families = self.inner.families.lock();
            for (name, family) in families.iter() {
                let entry = scrape.family(name, family.help, family.kind);
                for (labels, cell) in &family.series {
                    entry.samples.push((labels.clone(), cell.value()));
                }
            }
        }
        // Collectors run outside the registry's lock, on a copy of the
        // list, so a slow one does not hold up handle creation.
        let collectors: Vec<Collector> = self.inner.collectors.lock().clone();
        for collect in collectors {
            collect(&mut scrape);
        }
        scrape.families.into_values().collect()
    }

    /// The Prometheus text exposition format (`text/plain; version=0.0.4`),
    /// each metric name preceded by `prefix` (which must pass
    /// [`valid_prefix`]).
    pub fn render_text(&self, prefix: &str) -> String {
        let mut out = String::new();
        for family in self.snapshot() {
            let name = family.name;
            let _ = writeln!(out, "# HELP {prefix}{name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {prefix}{name} {}", family.kind.as_str());
            for (labels, value) in &family.samples {
                out.push_str(prefix);
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (key, val)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{key}=\"{}\"", escape_label_value(val));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(*value));
            }
        }
        out
    }

    /// KumoMTA's `/metrics.json` shape: `{name: {help, type, value}}`
    /// where `value` is a number for an unlabelled metric and
    /// `{label: {label value: number}}` otherwise, nested label by label
    /// in the order the labels were given.
    pub fn render_json(&self) -> Value {
        let mut out = Map::new();
        for family in self.snapshot() {
            let value = if family.samples.iter().all(|(labels, _)| labels.is_empty()) {
                family
                    .samples
                    .first()
                    .map(|(_, v)| json_number(*v))
                    .unwrap_or(Value::Null)
            } else {
                let mut nested = Value::Object(Map::new());
                for (labels, value) in &family.samples {
                    insert_nested(&mut nested, labels, json_number(*value));
                }
                nested
            };
            let mut entry = Map::new();
            entry.insert("help".into(), Value::String(family.help.to_string()));
            entry.insert("type".into(), Value::String(family.kind.as_str().into()));
            entry.insert("value".into(), value);
            out.insert(family.name.to_string(), Value::Object(entry));
        }
        Value::Object(out)
    }
}

enum CellHandle {
    Counter(Counter),
    Gauge(Gauge),
}

/// One metric family as a scrape sees it.
#[derive(Clone, Debug)]
pub struct FamilySnapshot {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(LabelSet, f64)>,
}

/// What a collector adds to one scrape.
#[derive(Default)]
pub struct Scrape {
    families: BTreeMap<&'static str, FamilySnapshot>,
}

impl Scrape {
    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
    ) -> &mut FamilySnapshot {
        self.families.entry(name).or_insert_with(|| FamilySnapshot {
            name,
            help,
            kind,
            samples: Vec::new(),
        })
    }

    /// Report a gauge value read from its owner.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.family(name, help, Kind::Gauge)
            .samples
            .push((label_set(labels), value));
    }

    /// Report a counter value read from its owner.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.family(name, help, Kind::Counter)
            .samples
            .push((label_set(labels), value));
    }
}

/// Whether `prefix` can start a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`),
/// or is empty.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
    })
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Integral values print without a fraction ("42"), others in
        // Rust's shortest round-trip form; both parse as floats.
        format!("{value}")
    }
}

fn json_number(value: f64) -> Value {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn insert_nested(node: &mut Value, labels: &[(&'static str, String)], value: Value) {
    let Some(((key, val), rest)) = labels.split_first() else {
        *node = value;
        return;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else {
        unreachable!("made an object above")
    };
    let by_key = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !by_key.is_object() {
        *by_key = Value::Object(Map::new());
    }
    let Value::Object(by_value) = by_key else {
        unreachable!("made an object above")
    };
    let slot = by_value.entry(val.clone()).or_insert(Value::Null);
    insert_nested(slot, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_one_value_per_label_set() {
        let registry = Registry::new();
        let a = registry.counter("total_x", "x", &[("service", "esmtp_listener")]);
        let b = registry.counter("total_x", "x", &[("service", "esmtp_listener")]);
        let other = registry.counter("total_x", "x", &[("service", "smtp_client")]);
        a.inc();
        b.add(2);
        other.inc();
        assert_eq!(a.get(), 3);
        assert_eq!(other.get(), 1);
    }

    #[test]
    fn a_held_gauge_drops_back_when_released() {
        let registry = Registry::new();
        let gauge = registry.gauge("connection_count", "active", &[]);
        let first = gauge.hold();
        let second = gauge.hold();
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!(gauge.get(), 1);
        drop(second);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn text_format_has_help_type_labels_and_escapes() {
        let registry = Registry::new();
        registry
            .counter(
                "total_messages_received",
                "messages\\received",
                &[("service", "a\"b\\c\nd")],
            )
            .add(7);
        registry.gauge("lua_count", "states", &[]).set(3);
        registry.add_collector(|scrape| {
            scrape.gauge("disk_free_bytes", "free", &[("name", "data spool")], 1.5);
        });
        let text = registry.render_text("");
        assert_eq!(
            text,
            "# HELP disk_free_bytes free\n\
             # TYPE disk_free_bytes gauge\n\
             disk_free_bytes{name=\"data spool\"} 1.5\n\
             # HELP lua_count states\n\
             # TYPE lua_count gauge\n\
             lua_count 3\n\
             # HELP total_messages_received messages\\\\received\n\
             # TYPE total_messages_received counter\n\
             total_messages_received{service=\"a\\\"b\\\\c\\nd\"} 7\n"
        );
        assert!(
            registry
                .render_text("kumomta_")
                .contains("\nkumomta_lua_count 3\n")
        );
    }

    #[test]
    fn json_nests_labels_and_keeps_plain_values() {
        let registry = Registry::new();
        registry
            .counter(
                "total_connection_count",
                "made",
                &[("service", "esmtp_listener")],
            )
            .add(2);
        registry
            .counter(
                "total_connection_count",
                "made",
                &[("service", "esmtp_listener:127.0.0.1:25")],
            )
            .inc();
        registry.gauge("lua_spare_count", "spare", &[]).set(4);
        registry.add_collector(|scrape| {
            scrape.gauge(
                "by_tenant_campaign",
                "two labels",
                &[("tenant", "t"), ("campaign", "c")],
                5.0,
            );
        });
        let json = registry.render_json();
        assert_eq!(json["lua_spare_count"]["type"], "gauge");
        assert_eq!(json["lua_spare_count"]["value"], 4.0);
        assert_eq!(json["total_connection_count"]["type"], "counter");
        assert_eq!(json["total_connection_count"]["help"], "made");
        assert_eq!(
            json["total_connection_count"]["value"]["service"]["esmtp_listener"],
            2.0
        );
        assert_eq!(
            json["total_connection_count"]["value"]["service"]["esmtp_listener:127.0.0.1:25"],
            1.0
        );
        assert_eq!(
            json["by_tenant_campaign"]["value"]["tenant"]["t"]["campaign"]["c"],
            5.0
        );
    }

    #[test]
    fn collectors_report_only_what_exists_at_scrape_time() {
        let registry = Registry::new();
        let queues = Arc::new(Mutex::new(vec![("a.example", 3.0)]));
        let seen = queues.clone();
        registry.add_collector(move |scrape| {
            for (queue, count) in seen.lock().iter() {
                scrape.gauge("scheduled_count", "waiting", &[("queue", queue)], *count);
            }
        });
        assert!(
            registry
                .render_text("")
                .contains("scheduled_count{queue=\"a.example\"} 3\n")
        );
        queues.lock().clear();
        let text = registry.render_text("");
        assert!(!text.contains("a.example"), "{text}");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix(""));
        assert!(valid_prefix("kumomta_"));
        assert!(valid_prefix("a:b_9"));
        assert!(!valid_prefix("9a"));
        assert!(!valid_prefix("a-b"));
        assert!(!valid_prefix("a b"));
    }

    #[test]
    #[should_panic(expected = "two types")]
    fn one_name_cannot_be_two_types() {
        let registry = Registry::new();
        registry.counter("x", "x", &[]);
        registry.gauge("x", "x", &[]);
    }

    #[test]
    fn special_values_render_as_prometheus_spells_them() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(-0.25), "-0.25");
        assert_eq!(format_value(185647104.0), "185647104");
    }
}
