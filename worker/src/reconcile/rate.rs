//! Pacing of one merchant's queries (`reconciler.rate_per_merchant` per second).
//!
//! WeChat Pay limits the query API per merchant and answers `FREQUENCY_LIMITED` (429)
//! beyond it; every attempt, retries included, takes a slot. The reconciler works each
//! merchant in one task; the worker's confirming queries ([`crate::confirm`]) come from many
//! deliveries at once and share one limiter per merchant. Either way a slot is reserved under
//! a short lock and waited for outside it, so the limiter hands out evenly spaced instants.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Evenly spaced slots, `rate` per second (a rate of 0 is taken as 1).
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs(1) / rate.max(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for the next slot. The first call does not wait; an idle limiter does not
    /// save up slots for a burst.
    pub async fn acquire(&self) {
        let slot = {
            // Nothing panics under this lock; a poisoned one still holds a valid instant.
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let slot = match *next {
                Some(next) if next > now => next,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (tokio's test-util is not enabled in this workspace): generous upper bounds.
    #[tokio::test]
    async fn spaces_calls_evenly() {
        let limiter = RateLimiter::per_second(50);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // 5 slots at 50/s: the first immediately, then 20 ms apart.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    }

    #[tokio::test]
    async fn concurrent_callers_share_the_slots() {
        let limiter = std::sync::Arc::new(RateLimiter::per_second(50));
        let start = Instant::now();
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire().await })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller");
        }
        // As from one caller: the first at once, the other four 20 ms apart.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    }

    #[tokio::test]
    async fn idle_time_is_not_saved_up() {
        let limiter = RateLimiter::per_second(20);
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        limiter.acquire().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    }

    #[test]
    fn zero_rate_means_one_per_second() {
        assert_eq!(RateLimiter::per_second(0).interval, Duration::from_secs(1));
        assert_eq!(
            RateLimiter::per_second(10).interval,
            Duration::from_millis(100)
        );
    }
}
