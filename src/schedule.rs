//! When to ask SSM next: exponential backoff with jitter between the configured bounds, and
//! the small in-memory book of when each resource is due.
//!
//! The book only saves SSM calls: after a restart it is empty and every unfinished resource
//! is polled once at once, which is always safe.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `--poll-interval-min` / `--poll-interval-max` bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollIntervals {
    /// First interval after a change.
    pub min: Duration,
    /// Ceiling of the backoff.
    pub max: Duration,
}

/// Fraction of the interval that jitter may add or remove (spreads resources created together).
const JITTER: f64 = 0.2;

/// The delay before poll number `attempt` (0 after a change), doubling from `min` up to `max`,
/// moved by up to ±20% according to `unit` (a random number in `[0, 1)`), never outside
/// `[min, max]`.
pub fn backoff(intervals: PollIntervals, attempt: u32, unit: f64) -> Duration {
    let doubled = intervals
        .min
        .checked_mul(2u32.saturating_pow(attempt.min(31)))
        .unwrap_or(intervals.max);
    let base = doubled.min(intervals.max);
    let factor = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    base.mul_f64(factor).clamp(intervals.min, intervals.max)
}

/// Per-resource poll state, keyed by object uid.
#[derive(Debug, Default)]
pub struct PollBook {
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    generation: i64,
    attempt: u32,
    due: Instant,
    first_seen: Instant,
}

impl PollBook {
    /// How long until the resource is due, if it was polled for this generation and is not due.
    pub fn wait_left(&self, uid: &str, generation: i64, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(uid)
            .filter(|e| e.generation == generation && e.due > now)
            .map(|e| e.due - now)
    }

    /// When this process first saw this generation of the resource (`now` if never).
    pub fn first_seen(&self, uid: &str, generation: i64, now: Instant) -> Instant {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(uid)
            .filter(|e| e.generation == generation)
            .map_or(now, |e| e.first_seen)
    }

    /// Records a poll and returns the delay until the next one: backoff from `min` again when
    /// `reset` (SSM's answer changed, or a new generation), else one step further.
    pub fn record_poll(
        &self,
        uid: &str,
        generation: i64,
        reset: bool,
        intervals: PollIntervals,
        now: Instant,
    ) -> Duration {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = entries.get(uid).filter(|e| e.generation == generation);
        let attempt = match previous {
            Some(e) if !reset => e.attempt.saturating_add(1),
            _ => 0,
        };
        let first_seen = previous.map_or(now, |e| e.first_seen);
        let delay = backoff(intervals, attempt, fastrand::f64());
        entries.insert(
            uid.to_string(),
            Entry {
                generation,
                attempt,
                due: now + delay,
                first_seen,
            },
        );
        delay
    }

    /// Schedules the next poll at a fixed delay (used for rare re-checks), keeping the attempt.
    pub fn record_fixed(&self, uid: &str, generation: i64, delay: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = entries.get(uid).filter(|e| e.generation == generation);
        let entry = Entry {
            generation,
            attempt: previous.map_or(0, |e| e.attempt),
            due: now + delay,
            first_seen: previous.map_or(now, |e| e.first_seen),
        };
        entries.insert(uid.to_string(), entry);
    }

    /// Drops the resource's state (finished, or gone).
    pub fn forget(&self, uid: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(uid);
    }

    /// Drops the state of every resource not in `live` (deleted while nobody watched).
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|uid, _| live.contains(uid));
    }

    /// Number of resources with poll state (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no resource has poll state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: PollIntervals = PollIntervals {
        min: Duration::from_secs(2),
        max: Duration::from_secs(30),
    };

    #[test]
    fn backoff_doubles_from_min_to_max_without_jitter() {
        let delays: Vec<u64> = (0..7).map(|a| backoff(IV, a, 0.5).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(IV, u32::MAX, 0.5), IV.max, "no overflow");
    }

    #[test]
    fn jitter_moves_at_most_twenty_percent_and_stays_in_bounds() {
        assert_eq!(backoff(IV, 2, 0.0), Duration::from_millis(6400));
        assert_eq!(backoff(IV, 2, 1.0), Duration::from_millis(9600));
        assert_eq!(backoff(IV, 0, 0.0), IV.min, "never below min");
        assert_eq!(backoff(IV, 9, 1.0), IV.max, "never above max");
    }

    #[test]
    fn book_grows_the_delay_until_a_change_resets_it() {
        let book = PollBook::default();
        let t0 = Instant::now();
        let d0 = book.record_poll("u", 1, false, IV, t0);
        let d1 = book.record_poll("u", 1, false, IV, t0);
        let d2 = book.record_poll("u", 1, false, IV, t0);
        assert!(d0 <= Duration::from_millis(2400));
        assert!(d1 >= Duration::from_millis(3200) && d1 <= Duration::from_millis(4800));
        assert!(d2 >= Duration::from_millis(6400));
        let reset = book.record_poll("u", 1, true, IV, t0);
        assert!(reset <= Duration::from_millis(2400));
    }

    #[test]
    fn book_knows_when_a_resource_is_not_due() {
        let book = PollBook::default();
        let t0 = Instant::now();
        let delay = book.record_poll("u", 1, false, IV, t0);
        assert_eq!(book.wait_left("u", 1, t0), Some(delay));
        assert_eq!(book.wait_left("u", 1, t0 + delay), None, "due now");
        assert_eq!(
            book.wait_left("u", 2, t0),
            None,
            "a new generation is due at once"
        );
        assert_eq!(book.wait_left("other", 1, t0), None);
        book.forget("u");
        assert!(book.is_empty());
    }

    #[test]
    fn entries_of_resources_no_longer_watched_are_pruned() {
        let book = PollBook::default();
        let t0 = Instant::now();
        for uid in ["a", "b", "c"] {
            book.record_poll(uid, 1, false, IV, t0);
        }
        book.retain(&["b".to_string()].into_iter().collect());
        assert_eq!(book.len(), 1);
        assert_eq!(book.wait_left("a", 1, t0), None);
        assert!(book.wait_left("b", 1, t0).is_some());
    }

    #[test]
    fn first_seen_is_kept_per_generation() {
        let book = PollBook::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        book.record_poll("u", 1, false, IV, t0);
        book.record_poll("u", 1, false, IV, later);
        assert_eq!(book.first_seen("u", 1, later), t0);
        assert_eq!(book.first_seen("u", 2, later), later);
        book.record_fixed("u", 1, Duration::from_secs(300), later);
        assert_eq!(
            book.wait_left("u", 1, later),
            Some(Duration::from_secs(300))
        );
        assert_eq!(book.first_seen("u", 1, later), t0);
    }
}
