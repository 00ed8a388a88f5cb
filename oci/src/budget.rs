//! One bound, shared by every client of a process, on pulls at once and on bytes being
//! downloaded at once: however many programs name images (and however many clients
//! their pull secrets make), the registry side of the operator holds at most
//! `max_pulls` image pulls or verifications and `max_bytes` of answers in flight.

use std::fmt;
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bytes are counted in KiB permits (a semaphore counts in `u32`).
const UNIT: u64 = 1024;

pub struct PullBudget {
    pulls: Semaphore,
    bytes: Semaphore,
    max_units: u32,
    max_pulls: usize,
}

impl fmt::Debug for PullBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PullBudget({} pulls, {} KiB)", self.max_pulls, self.max_units)
    }
}

impl PullBudget {
    /// At most `max_pulls` pulls (or signature checks) at once, and `max_bytes` of
    /// answer bodies being read at once (each answer reserves its declared length, or its
    /// limit when it declares none, before the first byte is read).
    pub fn new(max_pulls: usize, max_bytes: u64) -> Arc<PullBudget> {
        let max_pulls = max_pulls.clamp(1, Semaphore::MAX_PERMITS);
        let max_units = (max_bytes / UNIT).clamp(1, u32::MAX as u64) as u32;
        Arc::new(PullBudget {
            pulls: Semaphore::new(max_pulls),
            bytes: Semaphore::new(max_units as usize),
            max_units,
            max_pulls,
        })
    }

    /// Unbounded in practice: for tools (the kubectl plugin) that pull one image.
    pub fn unbounded() -> Arc<PullBudget> {
        PullBudget::new(1 << 16, u32::MAX as u64 * UNIT)
    }

    pub(crate) async fn pull(&self) -> SemaphorePermit<'_> {
        self.pulls.acquire().await.expect("never closed")
    }

    /// Reserve `bytes` (an answer larger than the whole budget waits for all of it).
    pub(crate) async fn bytes(&self, bytes: u64) -> SemaphorePermit<'_> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.max_units as u64) as u32;
        self.bytes.acquire_many(units).await.expect("never closed")
    }

    /// Bytes reservable now (for tests and metrics).
    pub fn available_bytes(&self) -> u64 {
        self.bytes.available_permits() as u64 * UNIT
    }

    pub fn available_pulls(&self) -> usize {
        self.pulls.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_beyond_the_budget_wait() {
        let b = PullBudget::new(2, 64 << 10);
        let a = b.bytes(48 << 10).await;
        assert_eq!(b.available_bytes(), 16 << 10);
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), b.bytes(32 << 10)).await;
        assert!(second.is_err(), "waits while the first answer is in flight");
        drop(a);
        let huge = b.bytes(1 << 30).await;
        assert_eq!(b.available_bytes(), 0, "an answer larger than the budget takes all of it");
        drop(huge);
        let (_p1, _p2) = (b.pull().await, b.pull().await);
        assert_eq!(b.available_pulls(), 0);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), b.pull()).await.is_err());
    }
}
