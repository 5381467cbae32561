//! Group commit: callers submit one item each and await its answer; a
//! background task writes whatever has queued up as one batch.
//!
//! There is no linger timer: a lone item is written at once, and items that
//! arrive while `concurrency` batches are being written wait for the next
//! batch, so batches grow with load and latency stays one round trip.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Why a batched call got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("batch write failed: {0}")]
    Failed(Arc<anyhow::Error>),
    #[error("batch writer stopped")]
    Closed,
}

type Slot<Req, Resp> = (Req, oneshot::Sender<Result<Resp, BatchError>>);

pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Slot<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Start the writer. `write` gets a batch and must answer each item, in order.
    /// The task ends (after writing what it holds) when every handle is dropped.
    /// `kind` labels the batch-size histogram (`claims`, `records`, ...).
    pub fn spawn<F, Fut>(kind: &'static str, max_batch: usize, concurrency: usize, write: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<Resp>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Slot<Req, Resp>>(max_batch * (concurrency + 1));
        let write = Arc::new(write);
        let permits = Arc::new(Semaphore::new(concurrency));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                if batch.is_empty() && rx.recv_many(&mut batch, max_batch).await == 0 {
                    break;
                }
                // Wait for a free writer while collecting what keeps arriving.
                let permit = loop {
                    if batch.len() >= max_batch {
                        break permits.clone().acquire_owned().await.expect("never closed");
                    }
                    let room = max_batch - batch.len();
                    tokio::select! {
                        biased;
                        p = permits.clone().acquire_owned() => break p.expect("never closed"),
                        n = rx.recv_many(&mut batch, room) => if n == 0 {
                            break permits.clone().acquire_owned().await.expect("never closed");
                        },
                    }
                };
                let items = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
                let write = write.clone();
                tokio::spawn(async move {
                    let (reqs, replies): (Vec<Req>, Vec<_>) = items.into_iter().unzip();
                    let n = reqs.len();
                    metrics::histogram!(crate::metrics::LOG_BATCH_SIZE, "kind" => kind)
                        .record(n as f64);
                    match write(reqs).await {
                        Ok(resps) if resps.len() == n => {
                            for (reply, r) in replies.into_iter().zip(resps) {
                                let _ = reply.send(Ok(r));
                            }
                        }
                        Ok(resps) => {
                            let e = BatchError::Failed(Arc::new(anyhow::anyhow!(
                                "batch writer answered {} of {n} items",
                                resps.len()
                            )));
                            replies
                                .into_iter()
                                .for_each(|r| drop(r.send(Err(e.clone()))));
                        }
                        Err(e) => {
                            let e = BatchError::Failed(Arc::new(e));
                            replies
                                .into_iter()
                                .for_each(|r| drop(r.send(Err(e.clone()))));
                        }
                    }
                    drop(permit);
                });
            }
            // Wait for the batches in flight before reporting done.
            let _ = permits.acquire_many(concurrency as u32).await;
        });
        Self { tx }
    }

    /// Submit one item and wait for its answer.
    pub async fn call(&self, req: Req) -> Result<Resp, BatchError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, tx))
            .await
            .map_err(|_| BatchError::Closed)?;
        rx.await.map_err(|_| BatchError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn every_caller_gets_its_own_answer_and_items_are_batched() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b2 = batches.clone();
        let batcher = Batcher::spawn("test", 64, 1, move |items: Vec<u32>| {
            let b2 = b2.clone();
            async move {
                b2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let calls: Vec<_> = (0..500u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.call(i).await.unwrap()) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.unwrap();
            assert_eq!(r, i * 2);
        }
        assert!(
            batches.load(Ordering::SeqCst) < 500,
            "items were written one by one"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_callers() {
        let batcher = Batcher::spawn("test", 8, 1, |_: Vec<u32>| async {
            Err::<Vec<u32>, _>(anyhow::anyhow!("db down"))
        });
        assert!(matches!(batcher.call(1).await, Err(BatchError::Failed(_))));
    }
}
