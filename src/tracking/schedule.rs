//! Pure: when to ask SSM next. Exponential backoff with jitter between the configured bounds,
//! and the clock of each command's rounds (the tracker walks a command's invocations once per
//! round). Nothing here survives a restart, and nothing needs to: after one every tracked
//! command is due at once.

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

/// When one command's next round is due: at once when first tracked; then from `min` again
/// after a round that brought news, else one backoff step further (up to `max`); every
/// `recheck` while all its tracked steps are stalled on errors an outside fix can cure. A
/// hurry while a round runs (a command-level event after the round took its list of steps)
/// makes the next round due as soon as this one ends; a resource that joins while a round
/// runs makes the next one come `min` after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundClock {
    attempt: u32,
    /// When the next round is due.
    pub due: Instant,
    /// Hurried since the running round started.
    hurried: bool,
    /// A resource joined since the running round started.
    joined: bool,
}

impl RoundClock {
    /// A clock due at `now`.
    pub fn due_at(now: Instant) -> Self {
        Self {
            attempt: 0,
            due: now,
            hurried: false,
            joined: false,
        }
    }

    /// A round starts: what it will ask covers every hurry and every joined resource so far.
    pub fn start(&mut self) {
        self.hurried = false;
        self.joined = false;
    }

    /// Schedules the next round after one that ended at `now`; returns the delay. `unit` is a
    /// random number in `[0, 1)` for jitter.
    pub fn after_round(
        &mut self,
        news: bool,
        only_rare: bool,
        intervals: PollIntervals,
        recheck: Duration,
        now: Instant,
        unit: f64,
    ) -> Duration {
        if std::mem::take(&mut self.hurried) {
            self.attempt = 0;
            self.due = now;
            return Duration::ZERO;
        }
        self.attempt = if news || std::mem::take(&mut self.joined) {
            0
        } else {
            self.attempt.saturating_add(1)
        };
        let delay = if only_rare {
            recheck
        } else {
            backoff(intervals, self.attempt, unit)
        };
        self.due = now + delay;
        delay
    }

    /// A step is read outside the rounds (a new resource) and more news may follow soon: the
    /// backoff starts over and the next round comes no later than `by` (a round running now
    /// schedules the next one from its own end, from the first interval).
    pub fn restart_backoff(&mut self, by: Instant) {
        self.attempt = 0;
        self.due = self.due.min(by);
    }

    /// A new resource joins the next round, which comes no later than `by`; if a round runs
    /// now (it took its steps already), the next one comes at the first interval after it.
    pub fn join(&mut self, by: Instant) {
        self.due = self.due.min(by);
        self.joined = true;
    }

    /// Something new needs a whole round (an event said the command changed): due now,
    /// backoff reset.
    pub fn hurry(&mut self, now: Instant) {
        self.attempt = 0;
        self.due = self.due.min(now);
        self.hurried = true;
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
    fn rounds_speed_up_on_news_and_slow_down_while_nothing_changes() {
        let t0 = Instant::now();
        let recheck = Duration::from_secs(300);
        let mut clock = RoundClock::due_at(t0);
        assert_eq!(clock.due, t0, "a new command is due at once");
        let quiet: Vec<u64> = (0..6)
            .map(|_| {
                clock
                    .after_round(false, false, IV, recheck, t0, 0.5)
                    .as_secs()
            })
            .collect();
        assert_eq!(quiet, [4, 8, 16, 30, 30, 30]);
        let news = clock.after_round(true, false, IV, recheck, t0, 0.5);
        assert_eq!(news, IV.min, "news resets to the minimum");
        assert_eq!(clock.due, t0 + IV.min);
    }

    #[test]
    fn a_command_with_only_rarely_rechecked_steps_waits_the_recheck_interval() {
        let t0 = Instant::now();
        let mut clock = RoundClock::due_at(t0);
        let recheck = Duration::from_secs(300);
        assert_eq!(clock.after_round(true, true, IV, recheck, t0, 0.5), recheck);
    }

    #[test]
    fn hurrying_makes_the_round_due_now_and_resets_the_backoff() {
        let t0 = Instant::now();
        let mut clock = RoundClock::due_at(t0);
        clock.after_round(false, false, IV, Duration::from_secs(300), t0, 0.5);
        clock.after_round(false, false, IV, Duration::from_secs(300), t0, 0.5);
        let later = t0 + Duration::from_secs(1);
        clock.hurry(later);
        assert_eq!(clock.due, later);
        clock.start();
        let next = clock.after_round(false, false, IV, Duration::from_secs(300), later, 0.5);
        assert_eq!(
            next,
            Duration::from_secs(4),
            "backoff restarted: one step past min"
        );
    }

    #[test]
    fn restarting_the_backoff_brings_a_far_round_closer_and_never_delays_one() {
        let t0 = Instant::now();
        let recheck = Duration::from_secs(300);
        let mut clock = RoundClock::due_at(t0);
        for _ in 0..4 {
            clock.after_round(false, false, IV, recheck, t0, 0.5);
        }
        assert_eq!(clock.due, t0 + IV.max, "backed off to max");
        clock.restart_backoff(t0 + IV.min);
        assert_eq!(clock.due, t0 + IV.min);
        clock.restart_backoff(t0 + IV.max);
        assert_eq!(clock.due, t0 + IV.min, "never later than it was");
        clock.start();
        let next = clock.after_round(false, false, IV, recheck, t0, 0.5);
        assert_eq!(next, Duration::from_secs(4), "one step past min");
    }

    #[test]
    fn a_hurry_while_a_round_runs_makes_the_next_round_due_when_it_ends() {
        let t0 = Instant::now();
        let recheck = Duration::from_secs(300);
        let backstop = PollIntervals {
            min: Duration::from_secs(30),
            max: Duration::from_secs(30),
        };
        let mut clock = RoundClock::due_at(t0);
        clock.start();
        // A command-level event comes after the round took its steps.
        clock.hurry(t0 + Duration::from_millis(10));
        let end = t0 + Duration::from_millis(500);
        assert_eq!(
            clock.after_round(true, false, backstop, recheck, end, 0.5),
            Duration::ZERO,
            "the new resource is not left for the backstop interval"
        );
        assert_eq!(clock.due, end);
        clock.start();
        assert_eq!(
            clock.after_round(false, false, backstop, recheck, end, 0.5),
            backstop.max,
            "a round with no hurry meanwhile schedules as usual"
        );
    }

    #[test]
    fn a_resource_joining_during_a_round_makes_the_next_round_come_at_the_first_interval() {
        let t0 = Instant::now();
        let recheck = Duration::from_secs(300);
        let mut clock = RoundClock::due_at(t0);
        // Backed off: three quiet rounds.
        for _ in 0..3 {
            clock.start();
            clock.after_round(false, false, IV, recheck, t0, 0.5);
        }
        clock.start();
        // A new resource joins while the fourth round runs (after it took its steps).
        clock.join(t0 + IV.min);
        let end = t0 + Duration::from_millis(700);
        assert_eq!(
            clock.after_round(false, false, IV, recheck, end, 0.5),
            IV.min,
            "not the 16 s the quiet rounds had reached"
        );
        // Joining while no round runs: the round due sooner stays, none is put off.
        let mut resting = RoundClock::due_at(t0 + Duration::from_secs(1));
        resting.join(t0 + IV.min);
        assert_eq!(resting.due, t0 + Duration::from_secs(1));
        let mut backed_off = RoundClock::due_at(t0 + Duration::from_secs(20));
        backed_off.join(t0 + IV.min);
        assert_eq!(backed_off.due, t0 + IV.min);
    }
}
