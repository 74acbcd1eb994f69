//! One shared completion per batch, and the per-record future that reads it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::error::Result;

/// The outcome of one batch, shared by all its records' futures.
///
/// Set once by the sender; wakes every task that polled a record future of
/// the batch before it was set. The per-record cost is one `Arc` clone.
#[derive(Debug)]
pub(crate) struct BatchCompletion {
    partition: u32,
    /// The base offset (`None` with acks=0), or the error that failed the batch.
    result: OnceLock<Result<Option<u64>>>,
    wakers: Mutex<Vec<Waker>>,
}

impl BatchCompletion {
    pub(crate) fn new(partition: u32) -> Arc<BatchCompletion> {
        Arc::new(BatchCompletion {
            partition,
            result: OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn partition(&self) -> u32 {
        self.partition
    }

    /// Sets the outcome (the first call wins) and wakes the waiters.
    pub(crate) fn complete(&self, result: Result<Option<u64>>) {
        if self.result.set(result).is_err() {
            return;
        }
        // `result` is set before the lock is taken, so a poller that finds it
        // unset under the lock has its waker in the list we drain here.
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.result.get().is_some()
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<&Result<Option<u64>>> {
        if let Some(result) = self.result.get() {
            return Poll::Ready(result);
        }
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(result) = self.result.get() {
            return Poll::Ready(result);
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until the batch is acknowledged or failed.
    pub(crate) async fn wait(self: &Arc<Self>) {
        std::future::poll_fn(|cx| self.poll_result(cx).map(|_| ())).await;
    }
}

/// Where a record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The partition the record went to.
    pub partition: u32,
    /// The record's offset; `None` with [`Acks::None`](crate::Acks::None),
    /// where the broker does not say.
    pub offset: Option<u64>,
    /// The record's timestamp (ms since the Unix epoch) as sent.
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or its batch failed for good).
///
/// Returned by [`Producer::send`](crate::Producer::send). Dropping it does
/// not cancel the record. Cheap: one `Arc` to the batch's shared completion
/// and the record's index in the batch.
#[derive(Debug)]
#[must_use = "a DeliveryFuture tells whether the record was stored"]
pub struct DeliveryFuture {
    batch: Arc<BatchCompletion>,
    index: u32,
    timestamp: i64,
}

impl DeliveryFuture {
    pub(crate) fn new(batch: Arc<BatchCompletion>, index: u32, timestamp: i64) -> Self {
        DeliveryFuture {
            batch,
            index,
            timestamp,
        }
    }

    /// True once the outcome is known (awaiting will not wait).
    pub fn is_done(&self) -> bool {
        self.batch.is_done()
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.batch.poll_result(cx).map(|result| match result {
            Ok(base) => Ok(RecordMetadata {
                partition: this.batch.partition(),
                offset: base.map(|b| b + u64::from(this.index)),
                timestamp: this.timestamp,
            }),
            Err(e) => Err(e.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[tokio::test]
    async fn every_record_of_a_batch_resolves() {
        let batch = BatchCompletion::new(3);
        let futures: Vec<DeliveryFuture> = (0..4)
            .map(|i| DeliveryFuture::new(batch.clone(), i, 100 + i64::from(i)))
            .collect();
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            for f in futures {
                out.push(f.await.unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        batch.complete(Ok(Some(40)));
        batch.complete(Ok(Some(99))); // ignored: the first outcome wins
        let metadata = waiter.await.unwrap();
        let offsets: Vec<_> = metadata.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [Some(40), Some(41), Some(42), Some(43)]);
        assert!(metadata.iter().all(|m| m.partition == 3));
        assert_eq!(metadata[2].timestamp, 102);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_record() {
        let batch = BatchCompletion::new(0);
        let f = DeliveryFuture::new(batch.clone(), 1, 0);
        batch.complete(Err(Error::Closed));
        assert!(f.is_done());
        assert!(matches!(f.await, Err(Error::Closed)));
        batch.wait().await;
    }
}
