//! One SSM budget for the whole process: a token bucket that every SSM call takes a token from
//! (`--ssm-max-rate` requests per second, bursts up to one second's worth). On a
//! `ThrottlingException` it halves its rate (multiplicative decrease, never below
//! [`MIN_RATE`]); each second without one it climbs back by [`RECOVERY_PER_SECOND`] of the
//! configured rate (additive increase), so the whole fleet backs off together instead of every
//! resource retrying on its own.
//!
//! As TCP does, the rate is cut at most once per round trip: a throttle answering a call that
//! was let go before the latest cut belongs to the same congestion (the calls in flight then
//! are answered throttled together) and cuts nothing more; without this, eight throttled
//! replies at once took 100 calls/s under 1/s. This only works because a throttled call comes
//! back at once: the SDK does not retry throttles (see `aws::ssm`), else the answer came
//! seconds later, after retries the budget never saw, and the rule let the rate stay high.
//! While the rate is below the maximum (recovering from a cut) no burst is saved: calls go
//! out one by one at the rate, so a queue that built up during the cut does not throttle again
//! at once.
//!
//! Waiting calls queue, and keep their place when the rate changes:
//! - a `SendCommand` ([`Lane::Send`]) goes ahead of every read: sends are rare, seen by users,
//!   and dropped unsent after waiting too long;
//! - a read SSM throttled is asked again ([`Lane::Retry`]) ahead of first tries, so it keeps
//!   its place (the SDK does not retry throttles: every try takes a token);
//! - reads queue per share (the namespace asking, [`Share`]), FIFO within one, and the shares
//!   with waiters take turns, so one namespace's thousands of reads cannot hold back another's.
//!
//! [`Bucket`] is the pure state machine (time is passed in); [`Budget`] shares it, and one task
//! per budget lets the queued calls go as tokens come.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

/// The rate never drops below this many requests per second.
pub const MIN_RATE: f64 = 0.5;
/// Share of the configured rate regained per second without throttling.
pub const RECOVERY_PER_SECOND: f64 = 0.02;

/// Which queue a call waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// `SendCommand`: ahead of every read.
    Send,
    /// A read again after SSM throttled it: ahead of first tries, so it keeps its place.
    Retry,
    /// Everything else: per share, shares taking turns.
    Read,
}

/// Who a read is for: the namespace of the resources it serves. Reads of different shares take
/// turns under a busy budget.
pub type Share = Arc<str>;

/// A queued call.
pub type Ticket = u64;

tokio::task_local! {
    /// The share of the calls made by the current task ([`in_share`]).
    static SHARE: Share;
}

/// Runs `future` with its SSM calls counted against `share` (the namespace it serves); calls
/// made outside any share queue under the empty one.
pub async fn in_share<F: Future>(share: Share, future: F) -> F::Output {
    SHARE.scope(share, future).await
}

/// The share of the current task (see [`in_share`]).
fn current_share() -> Share {
    SHARE.try_with(Arc::clone).unwrap_or_else(|_| Arc::from(""))
}

/// Token bucket with an adaptive rate, and the calls waiting for its tokens.
#[derive(Clone, Debug)]
pub struct Bucket {
    max_rate: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
    /// When the rate was last cut: throttles of calls let go before then cut nothing more.
    last_cut: Option<Instant>,
    sends: VecDeque<Ticket>,
    retries: VecDeque<Ticket>,
    reads: HashMap<Share, VecDeque<Ticket>>,
    /// The shares with reads waiting, in the order they take their next turn.
    turns: VecDeque<Share>,
    next_ticket: Ticket,
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
            last_cut: None,
            sends: VecDeque::new(),
            retries: VecDeque::new(),
            reads: HashMap::new(),
            turns: VecDeque::new(),
            next_ticket: 0,
        }
    }

    /// The rate currently allowed, in requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Calls waiting.
    pub fn waiting(&self) -> usize {
        self.sends.len()
            + self.retries.len()
            + self.reads.values().map(VecDeque::len).sum::<usize>()
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now.max(self.updated);
        self.rate = (self.rate + self.max_rate * RECOVERY_PER_SECOND * elapsed).min(self.max_rate);
        // Bursts of up to one second's worth at the full rate; none while recovering.
        let burst = if self.rate < self.max_rate {
            1.0
        } else {
            self.rate.max(1.0)
        };
        self.tokens = (self.tokens + self.rate * elapsed).min(burst);
    }

    /// Queues a call in `lane` (a read for `share`); [`Bucket::grant`] lets it go.
    pub fn enqueue(&mut self, lane: Lane, share: &Share) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        match lane {
            Lane::Send => self.sends.push_back(ticket),
            Lane::Retry => self.retries.push_back(ticket),
            Lane::Read => {
                let queue = self.reads.entry(share.clone()).or_default();
                if queue.is_empty() {
                    self.turns.push_back(share.clone());
                }
                queue.push_back(ticket);
            }
        }
        ticket
    }

    /// Takes a queued call out (its caller gave up); whether it was still waiting.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        for lane in [&mut self.sends, &mut self.retries] {
            if let Some(at) = lane.iter().position(|t| *t == ticket) {
                lane.remove(at);
                return true;
            }
        }
        let Some(share) = self
            .reads
            .iter()
            .find(|(_, queue)| queue.contains(&ticket))
            .map(|(share, _)| share.clone())
        else {
            return false;
        };
        if let Some(queue) = self.reads.get_mut(&share) {
            queue.retain(|t| *t != ticket);
            if queue.is_empty() {
                self.reads.remove(&share);
                self.turns.retain(|s| *s != share);
            }
        }
        true
    }

    /// The next call to let go: a send, else a throttled read's retry, else the front read of
    /// the share whose turn it is.
    fn next(&mut self) -> Option<Ticket> {
        if let Some(ticket) = self.sends.pop_front().or_else(|| self.retries.pop_front()) {
            return Some(ticket);
        }
        let share = self.turns.pop_front()?;
        let queue = self.reads.get_mut(&share)?;
        let ticket = queue.pop_front();
        if queue.is_empty() {
            self.reads.remove(&share);
        } else {
            self.turns.push_back(share);
        }
        ticket
    }

    /// Lets go the queued calls a token is there for at `now`, in order; also returns how long
    /// until the next token, if calls are still waiting.
    pub fn grant(&mut self, now: Instant) -> (Vec<Ticket>, Option<Duration>) {
        self.refill(now);
        let mut granted = Vec::new();
        while self.tokens >= 1.0 {
            let Some(ticket) = self.next() else { break };
            self.tokens -= 1.0;
            granted.push(ticket);
        }
        let next = (self.waiting() > 0)
            .then(|| Duration::from_secs_f64((1.0 - self.tokens).max(0.0) / self.rate));
        (granted, next)
    }

    /// Takes a token at once if nobody waits and one is there (the fast path).
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.waiting() == 0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// SSM throttled a call let go at `sent`: unless the rate was cut since (the same
    /// congestion), halve the rate and drop the saved tokens. Waiting calls keep their place.
    /// Returns whether it cut.
    pub fn throttled(&mut self, now: Instant, sent: Instant) -> bool {
        if self.last_cut.is_some_and(|cut| sent < cut) {
            return false;
        }
        self.refill(now);
        self.rate = (self.rate / 2.0).max(MIN_RATE);
        self.tokens = self.tokens.min(0.0);
        self.last_cut = Some(now);
        true
    }
}

/// What the budget's task and its waiters share.
#[derive(Debug)]
struct State {
    bucket: Bucket,
    /// How to tell each queued call it may go.
    waiters: HashMap<Ticket, oneshot::Sender<()>>,
    /// The task letting queued calls go runs.
    driving: bool,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the task: a call queued, or the rate changed.
    changed: Notify,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared budget: waits for a token before each SSM call.
#[derive(Debug)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// Takes a queued call out if its caller stops waiting before it was let go.
struct Queued<'a> {
    inner: &'a Inner,
    ticket: Option<Ticket>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let mut state = self.inner.state();
            state.bucket.cancel(ticket);
            state.waiters.remove(&ticket);
        }
    }
}

impl Budget {
    /// A budget of `max_rate` requests per second.
    pub fn new(max_rate: f64) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    bucket: Bucket::new(max_rate, now()),
                    waiters: HashMap::new(),
                    driving: false,
                }),
                changed: Notify::new(),
            }),
        }
    }

    /// Waits until a call in `lane` may be made (sends first, then reads of the current task's
    /// share, see [`in_share`], in turn with other shares); returns when it was let go, for
    /// [`Budget::throttled`].
    pub async fn acquire(&self, lane: Lane) -> Instant {
        let (ticket, granted) = {
            let mut state = self.inner.state();
            if state.bucket.try_take(now()) {
                return now();
            }
            let ticket = state.bucket.enqueue(lane, &current_share());
            let (tx, rx) = oneshot::channel();
            state.waiters.insert(ticket, tx);
            if !state.driving {
                state.driving = true;
                tokio::spawn(drive(self.inner.clone()));
            }
            (ticket, rx)
        };
        let mut queued = Queued {
            inner: &self.inner,
            ticket: Some(ticket),
        };
        self.inner.changed.notify_one();
        // The sender is dropped only once the ticket was let go or the budget is gone.
        let _ = granted.await;
        queued.ticket = None;
        now()
    }

    /// Reports that SSM throttled the call let go at `sent` (see [`Bucket::throttled`]).
    pub fn throttled(&self, sent: Instant) {
        let cut = self.inner.state().bucket.throttled(now(), sent);
        if cut {
            self.inner.changed.notify_one();
        }
    }

    /// The rate currently allowed, in requests per second.
    pub fn rate(&self) -> f64 {
        let mut state = self.inner.state();
        state.bucket.refill(now());
        state.bucket.rate()
    }
}

/// Lets queued calls go as tokens come, until none wait (the next caller to queue starts it
/// again; a caller that gives up leaves the queue, so it never outlives its budget's callers
/// by more than one token's wait).
async fn drive(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut state = inner.state();
            let (granted, next) = state.bucket.grant(now());
            for ticket in granted {
                if let Some(tx) = state.waiters.remove(&ticket) {
                    let _ = tx.send(());
                }
            }
            if next.is_none() {
                state.driving = false;
                return;
            }
            next
        };
        let wait = next.unwrap_or(Duration::ZERO);
        // A call queued meanwhile or a cut (the next token's time moved) wakes it early.
        let changed = inner.changed.notified();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed => {}
        }
    }
}

/// Now, on tokio's clock (paused in tests, the same as `Instant::now` otherwise).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(name: &str) -> Share {
        Arc::from(name)
    }

    /// A bucket of 10 tokens a second whose saved burst was just spent at `t0`.
    fn spent_bucket(t0: Instant) -> Bucket {
        let mut bucket = Bucket::new(10.0, t0);
        for _ in 0..10 {
            assert!(bucket.try_take(t0), "the saved burst");
        }
        bucket
    }

    /// Lets every queued call go, one token at a time, from `start`; each ticket with when.
    fn drain(bucket: &mut Bucket, start: Instant) -> Vec<(Ticket, Duration)> {
        let mut now = start;
        let mut out = Vec::new();
        loop {
            let (granted, next) = bucket.grant(now);
            out.extend(granted.into_iter().map(|t| (t, now - start)));
            match next {
                Some(wait) => now += wait.max(Duration::from_nanos(1)),
                None => return out,
            }
        }
    }

    /// Calls a caller that queues and waits, over and over, makes within `window`.
    fn takes_within(bucket: &mut Bucket, start: Instant, window: Duration) -> u32 {
        let mut now = start;
        let mut taken = 0;
        let any = share("");
        loop {
            let ticket = bucket.enqueue(Lane::Read, &any);
            loop {
                let (granted, next) = bucket.grant(now);
                if granted.contains(&ticket) {
                    break;
                }
                now += next.unwrap_or_default().max(Duration::from_nanos(1));
            }
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
        assert!(bucket.throttled(t0, t0));
        assert_eq!(bucket.rate(), 20.0);
        // Each call let go after the previous cut, throttled in turn, halves again.
        for n in 1..=20 {
            let t = t0 + Duration::from_nanos(n);
            assert!(bucket.throttled(t, t));
        }
        assert!((bucket.rate() - MIN_RATE).abs() < 1e-3, "{}", bucket.rate());
        assert!(!bucket.try_take(t0), "the saved burst is dropped");
    }

    #[test]
    fn the_rate_recovers_additively_to_the_configured_maximum() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(50.0, t0);
        bucket.throttled(t0, t0);
        assert_eq!(bucket.rate(), 25.0);
        bucket.refill(t0 + Duration::from_secs(10));
        assert!((bucket.rate() - 35.0).abs() < 1e-9, "{}", bucket.rate());
        bucket.refill(t0 + Duration::from_secs(100));
        assert_eq!(bucket.rate(), 50.0, "never above the maximum");
    }

    #[test]
    fn waits_are_what_the_next_token_needs() {
        let t0 = Instant::now();
        let mut bucket = spent_bucket(t0);
        bucket.enqueue(Lane::Read, &share("a"));
        let (granted, wait) = bucket.grant(t0);
        assert!(granted.is_empty());
        let wait = wait.unwrap_or_default();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn a_burst_of_throttles_from_calls_in_flight_together_cuts_once() {
        // Eight calls leave together and SSM answers all of them throttled: one congestion,
        // one halving (it used to be eight: 100/s down to 0.5/s).
        let t0 = Instant::now();
        let mut bucket = Bucket::new(100.0, t0);
        let sent = t0 + Duration::from_millis(10);
        let answered = t0 + Duration::from_millis(60);
        let cuts = (0..8)
            .filter(|n| bucket.throttled(answered + Duration::from_millis(*n), sent))
            .count();
        assert_eq!(cuts, 1);
        assert!((bucket.rate() - 50.0).abs() < 0.1, "{}", bucket.rate());
        // A call let go after that cut and throttled too: congestion again, cut again.
        let later = answered + Duration::from_millis(20);
        assert!(bucket.throttled(later + Duration::from_millis(50), later));
        assert!((bucket.rate() - 25.0).abs() < 0.1, "{}", bucket.rate());
    }

    #[test]
    fn after_a_cut_queued_calls_leave_one_by_one_not_in_a_burst() {
        // 20 calls queue while the rate is cut from 20/s to 10/s; a second later nothing was
        // saved for a burst: they leave at the rate, ~100 ms apart, from the cut on.
        let t0 = Instant::now();
        let mut bucket = Bucket::new(20.0, t0);
        for _ in 0..20 {
            assert!(bucket.try_take(t0));
        }
        assert!(bucket.throttled(t0, t0));
        let later = t0 + Duration::from_secs(1);
        for _ in 0..20 {
            bucket.enqueue(Lane::Read, &share("a"));
        }
        let out = drain(&mut bucket, later);
        let at_once = out.iter().filter(|(_, at)| at.is_zero()).count();
        assert_eq!(
            at_once, 1,
            "one token saved while recovering, not a second's worth"
        );
        let last = out
            .last()
            .map(|(_, at)| at.as_secs_f64())
            .unwrap_or_default();
        assert!((1.6..2.0).contains(&last), "19 more at ~10/s: {last}");
    }

    #[test]
    fn waiters_keep_their_place_across_a_throttle() {
        let t0 = Instant::now();
        let mut bucket = spent_bucket(t0);
        let a = share("a");
        let queued: Vec<Ticket> = (0..5).map(|_| bucket.enqueue(Lane::Read, &a)).collect();
        let t1 = t0 + Duration::from_millis(150);
        let (first, _) = bucket.grant(t1);
        assert_eq!(first, queued[..1]);
        // SSM throttles: the rest go in the order they queued, at 5/s.
        assert!(bucket.throttled(t1, t0));
        let rest = drain(&mut bucket, t1);
        let order: Vec<Ticket> = rest.iter().map(|(t, _)| *t).collect();
        assert_eq!(order, queued[1..]);
        // ~200 ms apart (a little less as the rate climbs back).
        let at: Vec<u128> = rest.iter().map(|(_, at)| at.as_millis()).collect();
        for (n, at) in at.iter().enumerate() {
            let due = 200 * (n as u128 + 1);
            assert!((due - 15..=due).contains(at), "{n}: {at} ms, not ~{due}");
        }
    }

    #[test]
    fn a_send_goes_ahead_of_queued_reads() {
        // 200 reads queued at 10/s would take 20 s; a send queued after them leaves with the
        // next token, far within the 10 s a send may wait.
        let t0 = Instant::now();
        let mut bucket = spent_bucket(t0);
        let a = share("a");
        for _ in 0..200 {
            bucket.enqueue(Lane::Read, &a);
        }
        let send = bucket.enqueue(Lane::Send, &a);
        let out = drain(&mut bucket, t0);
        assert_eq!(out[0].0, send);
        assert!(out[0].1 <= Duration::from_millis(100), "{:?}", out[0].1);
    }

    #[test]
    fn a_throttled_read_asked_again_goes_before_first_tries() {
        let t0 = Instant::now();
        let mut bucket = spent_bucket(t0);
        let a = share("a");
        let first_tries: Vec<Ticket> = (0..5).map(|_| bucket.enqueue(Lane::Read, &a)).collect();
        let retry = bucket.enqueue(Lane::Retry, &a);
        let out: Vec<Ticket> = drain(&mut bucket, t0).into_iter().map(|(t, _)| t).collect();
        assert_eq!(out[0], retry);
        assert_eq!(out[1..], first_tries);
    }

    #[test]
    fn namespaces_with_waiters_take_turns() {
        let t0 = Instant::now();
        let mut bucket = spent_bucket(t0);
        let (busy, quiet) = (share("busy"), share("quiet"));
        let busy_reads: Vec<Ticket> = (0..100)
            .map(|_| bucket.enqueue(Lane::Read, &busy))
            .collect();
        let quiet_reads: Vec<Ticket> = (0..2).map(|_| bucket.enqueue(Lane::Read, &quiet)).collect();
        let out: Vec<Ticket> = drain(&mut bucket, t0).into_iter().map(|(t, _)| t).collect();
        // The quiet namespace's two reads go second and fourth, not after the busy one's 100.
        assert_eq!(
            out[..5],
            [
                busy_reads[0],
                quiet_reads[0],
                busy_reads[1],
                quiet_reads[1],
                busy_reads[2]
            ]
        );
        // Within a namespace, first come, first served.
        assert_eq!(out[5..], busy_reads[3..]);
    }

    #[test]
    fn a_caller_that_gives_up_leaves_the_queue() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(1.0, t0);
        assert!(bucket.try_take(t0));
        let a = share("a");
        let gone = bucket.enqueue(Lane::Read, &a);
        let stays = bucket.enqueue(Lane::Read, &a);
        assert!(bucket.cancel(gone));
        assert!(!bucket.cancel(gone));
        let out: Vec<Ticket> = drain(&mut bucket, t0).into_iter().map(|(t, _)| t).collect();
        assert_eq!(out, [stays]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_when_ssm_throttles_goes_out_at_the_new_rate() {
        let budget = Budget::new(10.0);
        for _ in 0..10 {
            budget.acquire(Lane::Read).await;
        }
        let start = tokio::time::Instant::now();
        let first = budget.acquire(Lane::Read).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let waiting = budget.acquire(Lane::Read);
        tokio::pin!(waiting);
        // Its token is 100 ms away; SSM throttles the call let go just now, 50 ms in.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_millis(50)).await;
        budget.throttled(first);
        waiting.await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(290),
            "its token came at 5/s after the throttle, not at 10/s: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_serve_shares_in_turn() {
        let budget = Arc::new(Budget::new(1.0));
        budget.acquire(Lane::Read).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for (name, calls) in [("busy", 3), ("quiet", 1)] {
            for n in 0..calls {
                let (budget, order) = (budget.clone(), order.clone());
                tasks.spawn(in_share(share(name), async move {
                    budget.acquire(Lane::Read).await;
                    order
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(format!("{name}{n}"));
                }));
                // Queue in this order.
                tokio::task::yield_now().await;
            }
        }
        while tasks.join_next().await.is_some() {}
        let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(order, ["busy0", "quiet0", "busy1", "busy2"]);
    }
}
