//! The metrics that are read from their owners at scrape time rather than
//! counted as they happen: free space under each spool, memory use, the
//! Lua pool, and the sizes of the scheduled and ready queues.
//!
//! Counters kept on hot paths live next to the code that counts (the ESMTP
//! listener's are in [`crate::esmtp::listener`], the delivery totals in
//! the queue manager, each ready queue's own in the queue, reported here
//! so that a reaped queue's series go with it); this module only adds
//! the collectors to the server's [`tern_metrics::Registry`] once the
//! spools and queues exist. Each collector holds a weak reference, so a
//! scrape during shutdown reports what is left instead of keeping it alive.

use crate::queue::{CONNECTIONS_HELP, DELIVERED_HELP, FAIL_HELP, QueueManager, TRANSFAIL_HELP};
use crate::reception::Reception;
use crate::state::ServerState;
use std::sync::{Arc, Weak};
use tern_metrics::Scrape;
use tern_spool::Spool;

/// Add every scrape-time collector to `state.metrics`.
pub fn register_collectors(
    state: &Arc<ServerState>,
    reception: &Arc<Reception>,
    queues: &Arc<QueueManager>,
) {
    let registry = &state.metrics;

    let weak: Weak<Reception> = Arc::downgrade(reception);
    registry.add_collector(move |scrape| {
        if let Some(reception) = weak.upgrade() {
            disk_space(scrape, "data spool", &reception.data);
            disk_space(scrape, "meta spool", &reception.meta);
        }
    });

    let weak: Weak<ServerState> = Arc::downgrade(state);
    registry.add_collector(move |scrape| {
        let Some(state) = weak.upgrade() else { return };
        scrape.gauge(
            "memory_usage",
            "bytes of memory in use by the process (as sampled for load shedding)",
            &[],
            state.memory.usage() as f64,
        );
        if let Some(limit) = state.memory.limit() {
            scrape.gauge(
                "memory_limit",
                "the soft memory limit in bytes: above it, ingress is refused (load shedding)",
                &[],
                limit as f64,
            );
        }
        let engine = &state.engine;
        scrape.gauge(
            "lua_count",
            "Lua contexts alive now, in use or spare",
            &[],
            engine.live_states() as f64,
        );
        scrape.gauge(
            "lua_spare_count",
            "Lua contexts waiting in the pool for reuse",
            &[],
            engine.spare_states() as f64,
        );
        scrape.counter(
            "lua_load_count",
            "times the policy has been loaded into a new Lua context",
            &[],
            engine.states_created() as f64,
        );
    });

    let weak: Weak<QueueManager> = Arc::downgrade(queues);
    registry.add_collector(move |scrape| {
        if let Some(queues) = weak.upgrade() {
            queue_sizes(scrape, &queues);
        }
    });
}

fn disk_space(scrape: &mut Scrape, name: &str, spool: &Spool) {
    // A statvfs failure (the spool directory removed underneath us) is
    // already reported by the free-space refusal; the scrape just omits
    // the series.
    let Ok(space) = spool.free_space() else {
        return;
    };
    let labels = [("name", name)];
    let percent = |free: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            (free as f64 * 100.0 / total as f64).round()
        }
    };
    scrape.gauge(
        "disk_free_bytes",
        "bytes available to unprivileged users in a monitored location",
        &labels,
        space.available_bytes as f64,
    );
    scrape.gauge(
        "disk_free_percent",
        "percentage of space available in a monitored location",
        &labels,
        percent(space.available_bytes, space.total_bytes),
    );
    scrape.gauge(
        "disk_free_inodes",
        "inodes available in a monitored location",
        &labels,
        space.available_inodes as f64,
    );
    scrape.gauge(
        "disk_free_inodes_percent",
        "percentage of inodes available in a monitored location",
        &labels,
        percent(space.available_inodes, space.total_inodes),
    );
}

fn queue_sizes(scrape: &mut Scrape, queues: &QueueManager) {
    // Only the queue handles are copied under the map locks, which
    // reception and delivery take for every message; each queue's own
    // lock is taken afterwards, one at a time.
    let scheduled: Vec<_> = queues.scheduled.lock().values().cloned().collect();
    let ready: Vec<_> = queues.ready.lock().values().cloned().collect();
    let scheduled: Vec<(String, usize)> = scheduled
        .iter()
        .map(|queue| (queue.name.clone(), queue.len()))
        .collect();
    let ready: Vec<(String, usize, usize, [u64; 4])> = ready
        .iter()
        .map(|queue| {
            (
                queue.name.clone(),
                queue.len(),
                queue.connections(),
                queue.counts.get(),
            )
        })
        .collect();
    for (name, len) in &scheduled {
        scrape.gauge(
            "scheduled_count",
            "messages waiting in a scheduled queue",
            &[("queue", name)],
            *len as f64,
        );
    }
    let mut open_connections = 0;
    for (name, len, open, counts) in &ready {
        let service = format!("smtp_client:{name}");
        let labels = [("service", service.as_str())];
        let [delivered, transfail, fail, connections] = *counts;
        scrape.counter(
            "total_messages_delivered",
            DELIVERED_HELP,
            &labels,
            delivered as f64,
        );
        scrape.counter(
            "total_messages_transfail",
            TRANSFAIL_HELP,
            &labels,
            transfail as f64,
        );
        scrape.counter("total_messages_fail", FAIL_HELP, &labels, fail as f64);
        scrape.counter(
            "total_connection_count",
            CONNECTIONS_HELP,
            &labels,
            connections as f64,
        );
        scrape.gauge(
            "ready_count",
            "messages in a ready queue",
            &[("service", &service)],
            *len as f64,
        );
        scrape.gauge(
            "connection_count",
            "number of connections open now",
            &[("service", &service)],
            *open as f64,
        );
        open_connections += open;
    }
    scrape.gauge(
        "connection_count",
        "number of connections open now",
        &[("service", "smtp_client")],
        open_connections as f64,
    );
}
