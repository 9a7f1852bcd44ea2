//! A circuit breaker for an optional shared backend (Redis): after a failure, callers skip the
//! backend for a short pause instead of each paying its timeout, then one tries it again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// tokio's Instant is std's, except that tests can pause and advance it.
use tokio::time::Instant;

/// How long the backend is skipped after a failure.
pub(crate) const PAUSE: Duration = Duration::from_millis(500);

pub(crate) struct Breaker {
    /// Skip the backend until this instant (nanos since `epoch`).
    open_until: AtomicU64,
    epoch: Instant,
    healthy: AtomicBool,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self {
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            healthy: AtomicBool::new(true),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether the backend may be tried now (no failure within the last [`PAUSE`]).
    pub(crate) fn may_try(&self) -> bool {
        self.now() >= self.open_until.load(Ordering::Relaxed)
    }

    /// The backend failed: skip it for a pause. True if it was healthy until now (worth a log
    /// line).
    pub(crate) fn failed(&self) -> bool {
        self.open_until
            .store(self.now() + PAUSE.as_nanos() as u64, Ordering::Relaxed);
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// The backend answered. True if it had failed before (it is back).
    pub(crate) fn succeeded(&self) -> bool {
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// Whether the backend answered last time.
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_skips_the_backend_for_a_pause_then_it_is_tried_again() {
        let b = Breaker::new();
        assert!(b.may_try() && b.healthy());
        assert!(b.failed(), "the first failure is news");
        assert!(!b.failed(), "the second is not");
        assert!(!b.may_try());
        tokio::time::advance(PAUSE - Duration::from_millis(1)).await;
        assert!(!b.may_try());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(b.may_try());
        assert!(b.succeeded(), "back after a failure");
        assert!(!b.succeeded());
        assert!(b.healthy());
    }
}
