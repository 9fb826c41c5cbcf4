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
        }
    }

    /// The spools and loggers, once opened.
    pub fn reception(&self) -> Option<&Arc<Reception>> {
        self.reception.get()
    }

    pub fn set_reception(&self, reception: Arc<Reception>) {
        let _ = self.reception.set(reception);
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

    /// Why ingress must be refused right now, if it must: the text that
    /// follows `421 4.3.2 <host>` on SMTP and the 503 body on HTTP.
    pub fn ingress_refusal(&self) -> Option<&'static str> {
        if self.shutting_down() {
            Some("shutting down")
        } else if !self.spool_ready() {
            Some("waiting for spool startup")
        } else if self.memory.over_soft_limit() {
            Some("load shedding")
        } else {
            None
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
