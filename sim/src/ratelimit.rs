//! The optional request-rate limit: a token bucket over all operations.

use std::time::Instant;

/// A token bucket refilled continuously at `rate` tokens per second, holding at most `burst`
/// (= the rate, at least one) tokens; it starts full. A request takes one token or is
/// throttled; a throttled request takes nothing.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` requests per second (a positive, finite number).
    pub(crate) fn new(rate: f64, now: Instant) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now` if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        // An earlier `now` (racing callers) adds nothing and does not move the clock back.
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        let taken = (0..25).filter(|_| bucket.try_take(t0)).count();
        assert_eq!(taken, 10);
        // 0.25 s later: 2.5 tokens came back.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!((0..5).filter(|_| bucket.try_take(t1)).count(), 2);
        // Never more than the burst, however long it idles.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| bucket.try_take(t2)).count(), 10);
        // A caller with an older instant gets nothing extra.
        assert!(!bucket.try_take(t1));
    }

    #[test]
    fn slow_rates_still_allow_one_request() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.5, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(1)));
        assert!(bucket.try_take(t0 + Duration::from_secs(2)));
    }
}
