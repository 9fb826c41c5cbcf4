//! Process-wide server state passed to every component by value (`Arc`).

use crate::memory::MemoryGovernor;
use crate::reception::Reception;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tern_policy::PolicyEngine;
use tokio::sync::watch;
use uuid::Uuid;

pub struct ServerState {
    pub hostname: String,
    pub node_id: Uuid,
    pub engine: PolicyEngine,
    /// Memory limits and the load-shedding flag (§3.2).
    pub memory: Arc<MemoryGovernor>,
    spool_ready: AtomicBool,
    shutdown: watch::Sender<bool>,
    reception: OnceLock<Arc<Reception>>,
    /// Counters and gauges for `GET /metrics` (see tern-metrics).
    pub metrics: tern_metrics::Registry,
    /// The queue layer, once started (the admin API acts on it).
    queues: OnceLock<Arc<crate::queue::QueueManager>>,
    /// When this server state was made, at startup (`online_since`).
    pub started: std::time::SystemTime,
}

impl ServerState {
    pub fn new(
        hostname: String,
        node_id: Uuid,
        engine: PolicyEngine,
        memory: Arc<MemoryGovernor>,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            hostname,
            node_id,
            engine,
            memory,
            spool_ready: AtomicBool::new(false),
            shutdown,
            reception: OnceLock::new(),
            metrics: tern_metrics::Registry::new(),
            queues: OnceLock::new(),
            started: std::time::SystemTime::now(),
        }
    }

    /// The spools and loggers, once opened.
    pub fn reception(&self) -> Option<&Arc<Reception>> {
        self.reception.get()
    }

    pub fn set_reception(&self, reception: Arc<Reception>) {
        let _ = self.reception.set(reception);
    }

    /// The queue layer, once started.
    pub fn queues(&self) -> Option<&Arc<crate::queue::QueueManager>> {
        self.queues.get()
    }

    pub fn set_queues(&self, queues: Arc<crate::queue::QueueManager>) {
        let _ = self.queues.set(queues);
    }

    /// True once spool enumeration has finished; until then ingress
    /// answers 421 / 503 `waiting for spool startup`.
    pub fn spool_ready(&self) -> bool {
        self.spool_ready.load(Ordering::Acquire)
    }

    pub fn set_spool_ready(&self) {
        self.spool_ready.store(true, Ordering::Release);
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Why ingress must be refused right now, if it must, in the order of
    /// §3.2 step 2: shutting down, load shedding (memory), disk too full
    /// (either spool), waiting for spool startup, spool unhealthy (either
    /// spool latched after write errors).
    pub fn refusal(&self) -> Option<Refusal> {
        if self.shutting_down() {
            return Some(Refusal::ShuttingDown);
        }
        if self.memory.over_soft_limit() {
            return Some(Refusal::LoadShedding);
        }
        let reception = self.reception();
        if let Some(reception) = reception
            && (reception.data.check_free_space().is_err()
                || reception.meta.check_free_space().is_err())
        {
            return Some(Refusal::DiskTooFull);
        }
        if !self.spool_ready() {
            return Some(Refusal::WaitingForSpool);
        }
        if let Some(reception) = reception
            && let Err(reason) = reception.data.health().and(reception.meta.health())
        {
            return Some(Refusal::SpoolUnhealthy(reason));
        }
        None
    }
}

/// Why ingress is refused (see [`ServerState::refusal`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    ShuttingDown,
    LoadShedding,
    /// A spool's filesystem is below `min_free_space`/`min_free_inodes`.
    DiskTooFull,
    /// Spool enumeration at startup has not finished.
    WaitingForSpool,
    /// A RocksDB spool is latched unhealthy; the reason names the error.
    SpoolUnhealthy(String),
}

impl Refusal {
    /// The text after `421 4.3.2 <host>` on SMTP and the body of an HTTP
    /// injection's 503.
    pub fn ingress_text(&self) -> String {
        match self {
            Self::ShuttingDown => "shutting down".into(),
            Self::LoadShedding => "load shedding".into(),
            Self::DiskTooFull => tern_spool::DISK_TOO_FULL.into(),
            Self::WaitingForSpool => "waiting for spool startup".into(),
            Self::SpoolUnhealthy(reason) => reason.clone(),
        }
    }

    /// The body of `GET /api/check-liveness/v1`'s 503, in KumoMTA's words
    /// (which say "storage" where the ingress replies say "disk").
    pub fn liveness_text(&self) -> String {
        match self {
            Self::DiskTooFull => "storage is too full".into(),
            other => other.ingress_text(),
        }
    }
}

/// The machine's host name, as `gethostname` reports it.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Wait for `shutdown` to become true.
pub async fn wait_for_shutdown(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reception::Reception;
    use tern_policy::{EngineOptions, PolicyEngine};
    use tern_spool::{FreeThreshold, Spool, SpoolConfig, SpoolKind};

    fn state(dir: &std::path::Path) -> ServerState {
        let policy = dir.join("init.lua");
        std::fs::write(&policy, "").unwrap();
        let engine = PolicyEngine::new(EngineOptions::new(&policy));
        let memory = Arc::new(MemoryGovernor::discover());
        ServerState::new("mx.test".into(), Uuid::new_v4(), engine, memory)
    }

    /// A reception whose meta spool (only) demands 100% free space.
    fn full_meta(dir: &std::path::Path) -> Arc<Reception> {
        let open = |name: &str, min: FreeThreshold| {
            let mut config = SpoolConfig::new(name, dir.join(name), SpoolKind::LocalDisk);
            config.min_free_space = min;
            Spool::open(&config).unwrap()
        };
        Arc::new(Reception {
            data: open("data", FreeThreshold::Absolute(0)),
            meta: open("meta", FreeThreshold::Percent(100.0)),
            loggers: Arc::new(Vec::new()),
            node_id: Uuid::new_v4(),
            spooled: Default::default(),
            queues: Default::default(),
            filter: Default::default(),
            hooks: Vec::new(),
        })
    }

    /// §3.2 step 2: shutting down, load shedding, disk too full (either
    /// spool), waiting for spool startup, then spool health. Each stage
    /// adds a reason that must take precedence over the ones before.
    #[test]
    fn refusals_come_in_the_order_of_the_spec() {
        let dir = std::env::temp_dir().join(format!("tern-state-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = state(&dir);
        assert_eq!(state.refusal(), Some(Refusal::WaitingForSpool));

        state.set_reception(full_meta(&dir));
        assert_eq!(state.refusal(), Some(Refusal::DiskTooFull));
        assert_eq!(Refusal::DiskTooFull.ingress_text(), "disk is too full");
        assert_eq!(Refusal::DiskTooFull.liveness_text(), "storage is too full");

        state.memory.set_soft_limit(1);
        state.memory.sample();
        assert_eq!(state.refusal(), Some(Refusal::LoadShedding));

        state.request_shutdown();
        assert_eq!(state.refusal(), Some(Refusal::ShuttingDown));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
