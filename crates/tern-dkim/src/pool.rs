//! [`SigningPool`]: the optional `dkimsign` thread pool behind
//! `kumo.dkim.set_signing_threads(n)`.
//!
//! By default there is no pool and [`sign_on`] signs on the calling thread,
//! as KumoMTA does. With a pool, signing (the CPU-heavy RSA operation) runs
//! on `n` dedicated OS threads named `dkimsign-<i>`, and the async caller
//! waits on a oneshot channel, so the tokio workers that run SMTP sessions
//! are not held up by it. Dropping the pool lets queued jobs finish and
//! joins the threads.

use crate::DkimError;
use crate::signer::Signer;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of signing threads fed from one queue.
pub struct SigningPool {
    sender: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl SigningPool {
    /// Start `threads` signing threads (at least one).
    pub fn new(threads: usize) -> Result<Self, DkimError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            let worker = std::thread::Builder::new()
                .name(format!("dkimsign-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is only held while waiting for the next
                        // job, never while running one.
                        let job = receiver.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break, // pool dropped
                        }
                    }
                })
                .map_err(|err| DkimError::Pool(format!("cannot start a signing thread: {err}")))?;
            workers.push(worker);
        }
        Ok(Self {
            sender: Some(sender),
            workers,
        })
    }

    /// Number of signing threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Sign `message` on a pool thread.
    pub async fn sign<M>(&self, signer: Arc<Signer>, message: M) -> Result<String, DkimError>
    where
        M: AsRef<[u8]> + Send + 'static,
    {
        self.submit(signer, message)?.await
    }

    /// Queue `message` for signing now and return a future for the header
    /// that does not borrow the pool, so a caller that reached the pool
    /// through a lock can release the lock before waiting.
    pub fn submit<M>(
        &self,
        signer: Arc<Signer>,
        message: M,
    ) -> Result<impl Future<Output = Result<String, DkimError>> + Send + 'static, DkimError>
    where
        M: AsRef<[u8]> + Send + 'static,
    {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have given up waiting; nothing to do then.
            let _ = reply.send(signer.sign(message.as_ref()));
        });
        self.sender
            .as_ref()
            .ok_or_else(|| DkimError::Pool("the signing pool is shut down".into()))?
            .send(job)
            .map_err(|_| DkimError::Pool("the signing pool is shut down".into()))?;
        Ok(async move {
            result
                .await
                .map_err(|_| DkimError::Pool("a signing thread stopped before replying".into()))?
        })
    }
}

impl Drop for SigningPool {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Sign on `pool` when there is one, otherwise right here on the calling
/// thread (KumoMTA's default when `set_signing_threads` was never called).
pub async fn sign_on<M>(
    pool: Option<&SigningPool>,
    signer: &Arc<Signer>,
    message: M,
) -> Result<String, DkimError>
where
    M: AsRef<[u8]> + Send + 'static,
{
    match pool {
        Some(pool) => pool.sign(signer.clone(), message).await,
        None => signer.sign(message.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, SignerConfig};
    use serde_json::json;

    fn signer() -> Arc<Signer> {
        let config: SignerConfig = serde_json::from_value(json!({
            "domain": "example.com",
            "selector": "s1",
            "headers": ["From"],
            "key": concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ed25519.pkcs8.pem"),
        }))
        .unwrap();
        Arc::new(Signer::new(&config, Algorithm::Ed25519Sha256).unwrap())
    }

    #[tokio::test]
    async fn pool_signs_on_its_own_threads_like_inline() {
        let signer = signer();
        let pool = SigningPool::new(2).unwrap();
        assert_eq!(pool.threads(), 2);
        let message: &'static [u8] = b"From: a@example.com\r\n\r\nhello\r\n";
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(pool.sign(signer.clone(), message));
        }
        for wait in waits {
            let header = wait.await.unwrap();
            assert!(header.starts_with("DKIM-Signature: v=1;"));
        }
        // Ed25519 is deterministic: the pooled header is exactly what signing
        // inline at the same t= produces.
        let pooled = sign_on(Some(&pool), &signer, message).await.unwrap();
        let unix_time: u64 = pooled
            .split("t=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pooled, signer.sign_at(message, unix_time).unwrap());
        let inline = sign_on(None, &signer, message).await.unwrap();
        assert!(inline.starts_with("DKIM-Signature: v=1;"));
        let thread_name = {
            let (reply, result) = tokio::sync::oneshot::channel();
            pool.sender
                .as_ref()
                .unwrap()
                .send(Box::new(move || {
                    let _ = reply.send(std::thread::current().name().map(str::to_string));
                }))
                .unwrap();
            result.await.unwrap()
        };
        assert!(thread_name.unwrap().starts_with("dkimsign-"));
        drop(pool);
    }
}
