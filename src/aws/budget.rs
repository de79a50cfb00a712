//! One SSM budget for the whole process: a token bucket that every SSM call takes a token from
//! (`--ssm-max-rate` requests per second, bursts up to one second's worth). On a
//! `ThrottlingException` it halves its rate (multiplicative decrease, never below
//! [`MIN_RATE`]); each second without one it climbs back by [`RECOVERY_PER_SECOND`] of the
//! configured rate (additive increase), so the whole fleet backs off together instead of every
//! resource retrying on its own.
//!
//! Calls are served in the order they ask: each reserves the next token at once (the bucket
//! may go into debt) and waits until it is due, so no caller is passed over while others win
//! the race for each new token. A throttle forgives the debt and makes every waiting call
//! reserve again, at the new rate.
//!
//! [`Bucket`] is the pure state machine (time is passed in); [`Budget`] shares it and waits.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The rate never drops below this many requests per second.
pub const MIN_RATE: f64 = 0.5;
/// Share of the configured rate regained per second without throttling.
pub const RECOVERY_PER_SECOND: f64 = 0.02;

/// Token bucket with an adaptive rate; negative tokens are reservations not yet due.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    max_rate: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
    /// Throttles so far: a reservation made before the latest one is void.
    throttles: u64,
}

impl Bucket {
    /// A full bucket allowing `max_rate` requests per second.
    pub fn new(max_rate: f64, now: Instant) -> Self {
        let max_rate = max_rate.max(MIN_RATE);
        Self {
            max_rate,
            rate: max_rate,
            tokens: max_rate,
            updated: now,
            throttles: 0,
        }
    }

    /// The rate currently allowed, in requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now.max(self.updated);
        self.rate = (self.rate + self.max_rate * RECOVERY_PER_SECOND * elapsed).min(self.max_rate);
        // Bursts of up to one second's worth at the current rate.
        self.tokens = (self.tokens + self.rate * elapsed).min(self.rate.max(1.0));
    }

    /// Reserves a token at `now`; returns how long to wait until it is due (zero: call now).
    /// Callers are served in the order they reserve.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Throttles so far; a reservation made under an older count must be made again.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// SSM throttled a call: halve the rate, drop the saved burst and void every reservation
    /// (their callers reserve again, at the new rate).
    pub fn throttled(&mut self, now: Instant) {
        self.refill(now);
        self.rate = (self.rate / 2.0).max(MIN_RATE);
        self.tokens = 0.0;
        self.throttles = self.throttles.wrapping_add(1);
    }
}

/// The shared budget: waits for a token before each SSM call.
#[derive(Debug)]
pub struct Budget {
    bucket: Mutex<Bucket>,
}

impl Budget {
    /// A budget of `max_rate` requests per second.
    pub fn new(max_rate: f64) -> Self {
        Self {
            bucket: Mutex::new(Bucket::new(max_rate, Instant::now())),
        }
    }

    /// Waits until a call may be made (first come, first served; again at the new rate if
    /// SSM throttled meanwhile).
    pub async fn acquire(&self) {
        loop {
            let (wait, throttles) = {
                let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
                (bucket.reserve(Instant::now()), bucket.throttles())
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
            let bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            if bucket.throttles() == throttles {
                return;
            }
        }
    }

    /// Reports a throttled call.
    pub fn throttled(&self) {
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .throttled(Instant::now());
    }

    /// The rate currently allowed, in requests per second.
    pub fn rate(&self) -> f64 {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.refill(Instant::now());
        bucket.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls a caller that reserves and waits, over and over, makes within `window`.
    fn takes_within(bucket: &mut Bucket, start: Instant, window: Duration) -> u32 {
        let mut now = start;
        let mut taken = 0;
        loop {
            now += bucket.reserve(now);
            if now >= start + window {
                return taken;
            }
            taken += 1;
        }
    }

    #[test]
    fn a_full_bucket_allows_a_one_second_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(50.0, t0);
        let taken = takes_within(&mut bucket, t0, Duration::from_secs(2));
        // 50 saved + 50/s for 2 s, give or take the last token.
        assert!((149..=151).contains(&taken), "{taken}");
    }

    #[test]
    fn throttling_halves_the_rate_down_to_the_floor() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(40.0, t0);
        bucket.throttled(t0);
        assert_eq!(bucket.rate(), 20.0);
        for _ in 0..20 {
            bucket.throttled(t0);
        }
        assert_eq!(bucket.rate(), MIN_RATE);
        assert!(!bucket.reserve(t0).is_zero(), "the saved burst is dropped");
    }

    #[test]
    fn the_rate_recovers_additively_to_the_configured_maximum() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(50.0, t0);
        bucket.throttled(t0);
        assert_eq!(bucket.rate(), 25.0);
        bucket.refill(t0 + Duration::from_secs(10));
        assert!((bucket.rate() - 35.0).abs() < 1e-9, "{}", bucket.rate());
        bucket.refill(t0 + Duration::from_secs(100));
        assert_eq!(bucket.rate(), 50.0, "never above the maximum");
    }

    #[test]
    fn waits_are_what_the_next_token_needs() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(t0), Duration::ZERO, "the saved burst");
        }
        let wait = bucket.reserve(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn a_throttle_forgives_the_queue_and_voids_its_reservations() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, t0);
        for _ in 0..30 {
            bucket.reserve(t0);
        }
        let before = bucket.throttles();
        bucket.throttled(t0);
        assert_ne!(
            bucket.throttles(),
            before,
            "waiting callers must reserve again"
        );
        // The 20 queued calls reserve again at 5/s: the first waits one slot, not the debt.
        assert_eq!(bucket.reserve(t0).as_millis(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_when_ssm_throttles_goes_out_at_the_new_rate() {
        let budget = Budget::new(10.0);
        for _ in 0..10 {
            budget.acquire().await;
        }
        let start = tokio::time::Instant::now();
        let waiting = budget.acquire();
        tokio::pin!(waiting);
        // Its slot is 100 ms away; SSM throttles another call 50 ms in.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_millis(50)).await;
        budget.throttled();
        waiting.await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "reserved again at 5/s after the throttle, not at 10/s: {waited:?}"
        );
    }

    #[test]
    fn callers_are_served_in_the_order_they_ask() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10.0, t0);
        for _ in 0..10 {
            bucket.reserve(t0);
        }
        // Three callers ask at once with the burst spent: each gets the next slot in turn.
        let waits: Vec<u128> = (0..3).map(|_| bucket.reserve(t0).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300]);
        // A caller asking later queues behind them, whatever the timing of its wake-ups.
        let later = t0 + Duration::from_millis(50);
        assert_eq!(bucket.reserve(later).as_millis(), 350);
    }
}
