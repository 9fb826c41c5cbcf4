//! Streaming every spool entry to the recovery code at startup.
//!
//! A dedicated thread walks the storage and sends entries in chunks over a
//! bounded channel, so a multi-million-message spool never sits in memory at
//! once and the per-entry channel cost stays small. The consumer can pull
//! from async code ([`Enumeration::next`]) or from a plain thread
//! ([`Enumeration::blocking_next`]).

use crate::{Result, SpoolError, SpoolId};
use tokio::sync::mpsc;

/// One stored message: its id and the bytes stored under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    pub id: SpoolId,
    pub data: Vec<u8>,
}

/// Entries per channel message: large enough to amortise the channel,
/// small enough to keep memory bounded.
pub(crate) const CHUNK: usize = 256;
/// Chunks buffered ahead of the consumer.
const CHANNEL_CHUNKS: usize = 16;

/// A stream of spool entries (in no particular order), or errors for
/// entries that could not be read. Ends when every entry has been sent.
pub struct Enumeration {
    rx: mpsc::Receiver<Result<Vec<SpoolEntry>>>,
    current: std::vec::IntoIter<SpoolEntry>,
}

impl Enumeration {
    pub async fn next(&mut self) -> Option<Result<SpoolEntry>> {
        loop {
            if let Some(entry) = self.current.next() {
                return Some(Ok(entry));
            }
            match self.rx.recv().await? {
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(err) => return Some(Err(err)),
            }
        }
    }

    /// For use outside the async runtime (for example from spool-in worker
    /// threads). Must not be called from an async task.
    pub fn blocking_next(&mut self) -> Option<Result<SpoolEntry>> {
        loop {
            if let Some(entry) = self.current.next() {
                return Some(Ok(entry));
            }
            match self.rx.blocking_recv()? {
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

/// The producing side, handed to the walking thread.
pub(crate) struct Producer {
    tx: mpsc::Sender<Result<Vec<SpoolEntry>>>,
    chunk: Vec<SpoolEntry>,
}

impl Producer {
    /// Returns `false` once the consumer has gone away, so the walk can stop.
    pub(crate) fn push(&mut self, entry: SpoolEntry) -> bool {
        self.chunk.push(entry);
        if self.chunk.len() >= CHUNK {
            return self.flush();
        }
        true
    }

    /// Another producer feeding the same consumer, for walks split over
    /// several threads.
    pub(crate) fn sibling(&self) -> Producer {
        Producer {
            tx: self.tx.clone(),
            chunk: Vec::with_capacity(CHUNK),
        }
    }

    pub(crate) fn error(&mut self, err: SpoolError) -> bool {
        self.flush() && self.tx.blocking_send(Err(err)).is_ok()
    }

    pub(crate) fn flush(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk)).is_ok()
    }
}

/// Starts `walk` on its own thread and returns the consumer's end.
pub(crate) fn spawn(name: &str, walk: impl FnOnce(&mut Producer) + Send + 'static) -> Enumeration {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let mut producer = Producer {
        tx,
        chunk: Vec::with_capacity(CHUNK),
    };
    let spawned = std::thread::Builder::new()
        .name(format!("spool-enum-{name}"))
        .spawn(move || {
            walk(&mut producer);
            producer.flush();
        });
    let mut enumeration = Enumeration {
        rx,
        current: Vec::new().into_iter(),
    };
    if let Err(err) = spawned {
        // The producer (and its sender) was dropped with the closure, so
        // report the failure through a fresh channel.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(SpoolError::io("cannot start enumeration thread", err)));
        enumeration.rx = rx;
    }
    enumeration
}
