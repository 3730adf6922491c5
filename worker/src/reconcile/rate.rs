//! Pacing of one merchant's queries (`reconciler.rate_per_merchant` per second).
//!
//! WeChat Pay limits the query API per merchant and answers `FREQUENCY_LIMITED` (429)
//! beyond it; every attempt, retries included, takes a slot. Each merchant is worked by one
//! task, so the limiter needs no locking: it hands out evenly spaced instants.

use std::time::Duration;

use tokio::time::Instant;

/// Evenly spaced slots, `rate` per second (a rate of 0 is taken as 1).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    interval: Duration,
    next: Option<Instant>,
}

impl RateLimiter {
    pub fn per_second(rate: u32) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs(1) / rate.max(1),
            next: None,
        }
    }

    /// Waits for the next slot. The first call does not wait; an idle limiter does not
    /// save up slots for a burst.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        let slot = match self.next {
            Some(next) if next > now => {
                tokio::time::sleep_until(next).await;
                next
            }
            _ => now,
        };
        self.next = Some(slot + self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (tokio's test-util is not enabled in this workspace): generous upper bounds.
    #[tokio::test]
    async fn spaces_calls_evenly() {
        let mut limiter = RateLimiter::per_second(50);
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
    async fn idle_time_is_not_saved_up() {
        let mut limiter = RateLimiter::per_second(20);
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
