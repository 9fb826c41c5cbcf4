//! Making accepted messages durable and logging them.
//!
//! The `data` and `meta` spools are written concurrently for every
//! message of a transaction; each spool groups concurrent writes into one
//! sync (group commit), so the `250` is sent only once both halves of
//! every message are on stable storage, at little cost per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tern_log::{LogRecord, Logger, MessageInfo};
use tern_message::Message;
use tern_spool::Spool;

pub struct Reception {
    pub data: Spool,
    pub meta: Spool,
    pub loggers: Arc<Vec<Logger>>,
    pub node_id: uuid::Uuid,
    /// Messages accepted into the spool and waiting there (no queue yet).
    pub spooled: AtomicU64,
}

impl Reception {
    /// Store every message in both spools; fails as a whole if any write
    /// fails, after removing what was written.
    pub async fn spool_all(&self, messages: &[Message]) -> Result<(), String> {
        let writes = messages.iter().map(|msg| async move {
            let id = msg.id();
            let data = self.data.store(id, msg.data());
            let meta = self
                .meta
                .store(id, bytes::Bytes::from(msg.meta_spool_bytes()));
            let (d, m) = tokio::join!(data, meta);
            d.map_err(|e| e.to_string())?;
            m.map_err(|e| e.to_string())?;
            msg.mark_clean();
            Ok::<(), String>(())
        });
        let results = futures::future::join_all(writes).await;
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
            for msg in messages {
                let _ = self.meta.remove(msg.id()).await;
                let _ = self.data.remove(msg.id()).await;
            }
            return Err(err.clone());
        }
        self.spooled
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn log(&self, record: LogRecord) {
        for logger in self.loggers.iter() {
            if logger.is_enabled(record.kind) {
                let _ = logger.submit(record.clone()).await;
            }
        }
    }

    /// The Reception record for `msg`, with the logger's meta capture done
    /// per logger at submit time.
    pub async fn log_reception(&self, msg: &Message, queue: &str, peer: Option<(&str, &str)>) {
        let recipients: Vec<String> = msg.recipients().iter().map(|r| r.to_string()).collect();
        let recipient_refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let sender = msg.sender().to_string();
        let protocol = msg.get_meta_str("reception_protocol");
        let info = MessageInfo {
            id: msg.id(),
            sender: &sender,
            recipients: &recipient_refs,
            queue,
            size: msg.size() as u64,
            num_attempts: msg.num_attempts() as u32,
            reception_protocol: protocol.as_deref(),
        };
        let mut record = LogRecord::reception(self.node_id, info);
        if let Some((name, addr)) = peer {
            record = record.with_peer(name, addr);
        }
        if let Some(session) = msg.get_meta_str("session_id").and_then(|s| s.parse().ok()) {
            record = record.with_session_id(session);
        }
        if let (Some(cipher), Some(version)) = (
            msg.get_meta_str("tls_cipher"),
            msg.get_meta_str("tls_protocol_version"),
        ) {
            record = record.with_tls(cipher, version, None);
        }
        let meta = msg.meta();
        for logger in self.loggers.iter() {
            if logger.is_enabled(record.kind) {
                let captured = tern_log::capture_meta(logger.config(), &meta);
                let mut copy = record.clone().with_meta(captured);
                if !logger.config().headers.is_empty() {
                    let headers = msg.get_all_headers();
                    copy = copy.with_headers(tern_log::capture_headers(
                        logger.config(),
                        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    ));
                }
                let _ = logger.submit(copy).await;
            }
        }
    }
}
