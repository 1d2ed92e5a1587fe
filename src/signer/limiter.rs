//! Backpressure for signing: at most `max_in_flight` signatures at once, at most
//! `max_waiting` requests queued behind them, and tryLater at once for anyone beyond that.
//!
//! An HSM has a fixed capacity; queueing without bound in front of it turns a traffic spike
//! into unbounded latency and memory (Boulder #6392, #6523). Size `max_in_flight` to the HSM's
//! capacity divided by the number of responder instances.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Signing capacity is exhausted: answer tryLater.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("signing capacity exhausted ({in_flight} in flight, {waiting} waiting)")]
pub struct Overloaded {
    pub in_flight: usize,
    pub waiting: usize,
}

pub struct SigningLimiter {
    permits: Semaphore,
    max_in_flight: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl SigningLimiter {
    pub fn new(max_in_flight: usize, max_waiting: usize) -> Self {
        SigningLimiter {
            permits: Semaphore::new(max_in_flight.max(1)),
            max_in_flight: max_in_flight.max(1),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A permit to sign, possibly after waiting in the bounded queue.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, Overloaded> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = LeaveQueue(&self.waiting);
        if queued >= self.max_waiting {
            return Err(Overloaded { in_flight: self.in_flight(), waiting: queued });
        }
        // The semaphore is never closed, so acquire only fails if it were.
        self.permits.acquire().await.map_err(|_| Overloaded { in_flight: self.in_flight(), waiting: queued })
    }

    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_in_flight_and_waiting_is_refused_at_once() {
        let limiter = SigningLimiter::new(2, 1);
        let a = limiter.acquire().await.unwrap();
        let _b = limiter.acquire().await.unwrap();
        assert_eq!(limiter.in_flight(), 2);
        let waiter = limiter.acquire();
        tokio::pin!(waiter);
        assert!(futures_util::FutureExt::now_or_never(&mut waiter).is_none());
        assert_eq!(limiter.waiting(), 1);
        assert_eq!(limiter.acquire().await.unwrap_err(), Overloaded { in_flight: 2, waiting: 1 });
        drop(a);
        let _c = waiter.await.unwrap();
        assert_eq!(limiter.waiting(), 0);
        assert_eq!(limiter.in_flight(), 2);
    }
}
