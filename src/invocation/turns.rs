//! Whose status write goes next.
//!
//! At most `--max-concurrent-reconciles` `CommandInvocation` writes (an Event and a status
//! patch each, from a reconcile with an SSM answer to write) run at once, across all watched
//! namespaces. The others wait their turn here, in
//! order, and final answers (what pipelines gate on) before writes that only show progress. A
//! reconcile never waits for a turn: it leaves its place in line and ends, and is woken when
//! its turn comes. So controller workers are never parked behind the API server, and the
//! order of writes is this queue's, not the order in which kube-runtime's scheduler hands
//! out waiting reconciles (newest first once its workers are busy).
//!
//! [`Turns`] is the pure bookkeeping; [`WriteTurns`] puts it behind a lock and wakes whoever
//! is called.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::CommandInvocation;
use crate::runtime::metrics::Metrics;

/// A resource called for its turn whose reconcile has not come within this long loses the
/// turn (it was deleted on the way, say), so a lost wake holds a slot at most this long: every
/// release and every ask takes such turns back, and so does a timer
/// ([`WriteTurns::expire`]) while nothing else happens.
pub const CALL_STALE: Duration = Duration::from_secs(30);

/// One slot in this many may show progress: under load, a resource waits in line while it is
/// running and is written once, when final, instead of twice. Each status write costs the API
/// server a few milliseconds of CPU; progress writes taking every slot whenever the finals'
/// line ran empty cost the arrival benchmark 0.16 writes per resource and a 12 s tail.
pub const PROGRESS_SHARE: usize = 8;

/// What a write is about: a final answer goes ahead of any progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Finished or stalled: what `kubectl wait` and pipelines gate on.
    Final,
    /// Still running (Pending, InProgress, Delayed, ...).
    Progress,
}

/// The answer to [`Turns::ask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Write now, and call [`Turns::done`] after.
    Go,
    /// In line: the resource is called (woken) when its turn comes.
    Wait,
}

/// The line of writers. `T` is how a resource is woken (an `ObjectRef` in the operator).
#[derive(Debug)]
pub struct Turns<T> {
    slots: usize,
    /// Of `slots`, how many may show progress at once.
    progress_slots: usize,
    /// Writing now, and what.
    writing: HashMap<String, Class>,
    /// Called for their turn, not back yet: for what, since when.
    called: HashMap<String, (Class, Instant)>,
    /// In line: their class, how to wake them, and the number of their place. The queues
    /// below may still hold places given up (left, or moved to the finals' line); only a
    /// place whose number is the one here counts.
    waiting: HashMap<String, Place<T>>,
    finals: VecDeque<(u64, String)>,
    progress: VecDeque<(u64, String)>,
    /// The number of the next place given.
    places: u64,
}

/// A resource's place in line.
#[derive(Debug)]
struct Place<T> {
    class: Class,
    wake: T,
    number: u64,
}

impl<T: Clone> Turns<T> {
    /// A line with `slots` writes at once (at least one), of which a [`PROGRESS_SHARE`]
    /// (at least one) may show progress.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slots,
            progress_slots: (slots / PROGRESS_SHARE).max(1),
            writing: HashMap::new(),
            called: HashMap::new(),
            waiting: HashMap::new(),
            finals: VecDeque::new(),
            progress: VecDeque::new(),
            places: 0,
        }
    }

    /// `uid` has a write of `class` to make. It goes now if it was called, or if a slot is free
    /// and nobody it must let go first is in line; else it gets (or keeps) its place, moving
    /// up to the finals' line if its write became final.
    pub fn ask(&mut self, uid: &str, class: Class, wake: T) -> Turn {
        if let Some((called_as, _)) = self.called.remove(uid) {
            self.waiting.remove(uid);
            // Called to show progress and now final: it still counts as progress until done,
            // so the progress share is never exceeded.
            self.writing.insert(uid.to_string(), called_as);
            return Turn::Go;
        }
        if let Some(place) = self.waiting.get_mut(uid) {
            if place.class == Class::Final || class == Class::Progress {
                place.wake = wake;
                return Turn::Wait;
            }
            // Waited to show progress, and is final now: first in the finals' line if a slot
            // is free (none of them waits then), else at its end.
            self.waiting.remove(uid);
            if self.free(Class::Final) > 0 {
                self.writing.insert(uid.to_string(), Class::Final);
                return Turn::Go;
            }
            self.enqueue(uid, Class::Final, wake);
            return Turn::Wait;
        }
        // Nobody waits whom a free slot could take (every release calls the next in line), so
        // a free slot means nobody this write must let go first is in line.
        if self.free(class) > 0 && !self.writing.contains_key(uid) {
            self.writing.insert(uid.to_string(), class);
            return Turn::Go;
        }
        self.enqueue(uid, class, wake);
        Turn::Wait
    }

    /// `uid` ends this reconcile without using a turn it was called for (it found nothing to
    /// write, or cannot write yet): the turn goes to the next in line. A place in line is kept.
    /// Returns whom to wake.
    pub fn pass(&mut self, uid: &str, now: Instant) -> Vec<T> {
        if self.called.remove(uid).is_none() {
            return Vec::new();
        }
        self.call(now)
    }

    /// Gives `uid` a new place at the end of `class`'s line.
    fn enqueue(&mut self, uid: &str, class: Class, wake: T) {
        let number = self.places;
        self.places += 1;
        self.waiting.insert(
            uid.to_string(),
            Place {
                class,
                wake,
                number,
            },
        );
        let queue = match class {
            Class::Final => &mut self.finals,
            Class::Progress => &mut self.progress,
        };
        queue.push_back((number, uid.to_string()));
    }

    /// `uid`'s write ended (written or failed): its slot goes to the next in line. Returns
    /// whom to wake.
    pub fn done(&mut self, uid: &str, now: Instant) -> Vec<T> {
        self.writing.remove(uid);
        self.call(now)
    }

    /// `uid` has nothing to write any more, or is gone: it leaves the line (and gives back a
    /// turn it was called for). Returns whom to wake.
    pub fn leave(&mut self, uid: &str, now: Instant) -> Vec<T> {
        self.waiting.remove(uid);
        self.called.remove(uid);
        self.call(now)
    }

    /// Every resource not in `live` leaves the line. Returns whom to wake.
    pub fn retain(&mut self, live: &HashSet<String>, now: Instant) -> Vec<T> {
        self.waiting.retain(|uid, _| live.contains(uid));
        self.called.retain(|uid, _| live.contains(uid));
        self.call(now)
    }

    /// Turns called longer than [`CALL_STALE`] ago are given to the next in line. Returns
    /// whom to wake. (Every release does this too.)
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        self.call(now)
    }

    /// How many wait in line.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Free slots for a write of `class`.
    fn free(&self, class: Class) -> usize {
        let free = self
            .slots
            .saturating_sub(self.writing.len() + self.called.len());
        match class {
            Class::Final => free,
            Class::Progress => {
                let showing = self
                    .writing
                    .values()
                    .chain(self.called.values().map(|(c, _)| c))
                    .filter(|c| **c == Class::Progress)
                    .count();
                free.min(self.progress_slots.saturating_sub(showing))
            }
        }
    }

    /// Takes back turns called longer than [`CALL_STALE`] ago, then calls the next in line,
    /// finals first, into the free slots.
    fn call(&mut self, now: Instant) -> Vec<T> {
        self.called
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < CALL_STALE);
        let mut woken = Vec::new();
        while let Some(uid) = self.next() {
            if let Some(place) = self.waiting.remove(&uid) {
                self.called.insert(uid, (place.class, now));
                woken.push(place.wake);
            }
        }
        if self.waiting.is_empty() {
            self.finals.clear();
            self.progress.clear();
        }
        woken
    }

    /// The first in line that a free slot can take (finals first), if any, off its queue.
    fn next(&mut self) -> Option<String> {
        for class in [Class::Final, Class::Progress] {
            if self.free(class) == 0 {
                continue;
            }
            let queue = match class {
                Class::Final => &mut self.finals,
                Class::Progress => &mut self.progress,
            };
            while let Some((number, uid)) = queue.pop_front() {
                if self.waiting.get(&uid).is_some_and(|p| p.number == number) {
                    return Some(uid);
                }
            }
        }
        None
    }
}

/// The operator's line: resources are woken through their `ObjectRef`.
type Line = Turns<ObjectRef<CommandInvocation>>;

/// [`Turns`] shared by every reconcile, waking the called through `wake`; the length of the
/// line is the gauge `ssm_operator_status_writes_waiting`.
pub struct WriteTurns {
    turns: Mutex<Line>,
    wake: Box<dyn Fn(Vec<ObjectRef<CommandInvocation>>) + Send + Sync>,
    metrics: Arc<Metrics>,
}

/// A turn to write: the slot goes to the next in line when this is dropped.
pub struct Slot<'a> {
    turns: &'a WriteTurns,
    uid: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.turns.change(|t, now| ((), t.done(&self.uid, now)));
    }
}

impl WriteTurns {
    /// `slots` writes at once; the called are passed to `wake` (the controllers' wake-ups).
    pub fn new(
        slots: usize,
        metrics: Arc<Metrics>,
        wake: impl Fn(Vec<ObjectRef<CommandInvocation>>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            turns: Mutex::new(Turns::new(slots)),
            wake: Box::new(wake),
            metrics,
        }
    }

    /// A slot to write now, or `None`: `object` is in line and is woken for its turn.
    pub fn ask(
        &self,
        uid: &str,
        class: Class,
        object: ObjectRef<CommandInvocation>,
    ) -> Option<Slot<'_>> {
        // `expire` first: a turn taken back may be this resource's own call; it then asks
        // like anyone else.
        let turn = self.change(|t, now| {
            let woken = t.expire(now);
            (t.ask(uid, class, object), woken)
        });
        (turn == Turn::Go).then(|| Slot {
            turns: self,
            uid: uid.to_string(),
        })
    }

    /// `uid`'s reconcile ends without taking a turn it was called for: the turn goes on.
    pub fn pass(&self, uid: &str) {
        self.change(|t, now| ((), t.pass(uid, now)));
    }

    /// Takes back turns not taken within [`CALL_STALE`]; for a timer, so that a lost wake
    /// cannot stall the line while nothing else happens.
    pub fn expire(&self) {
        self.change(|t, now| ((), t.expire(now)));
    }

    /// `uid` has nothing to write (or is gone).
    pub fn leave(&self, uid: &str) {
        self.change(|t, now| ((), t.leave(uid, now)));
    }

    /// Every resource not in `live` leaves the line.
    pub fn retain(&self, live: &HashSet<String>) {
        self.change(|t, now| ((), t.retain(live, now)));
    }

    /// How many writes wait for their turn.
    pub fn waiting(&self) -> usize {
        self.lock().waiting()
    }

    /// Runs `change` on the line under one hold of its lock; then shows the line's length
    /// and wakes whom `change` called (outside the lock).
    fn change<R>(
        &self,
        change: impl FnOnce(&mut Line, Instant) -> (R, Vec<ObjectRef<CommandInvocation>>),
    ) -> R {
        let (result, woken, waiting) = {
            let mut turns = self.lock();
            let (result, woken) = change(&mut turns, Instant::now());
            (result, woken, turns.waiting())
        };
        self.metrics.set_writes_waiting(waiting);
        if !woken.is_empty() {
            (self.wake)(woken);
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(slots: usize) -> Turns<&'static str> {
        Turns::new(slots)
    }

    #[test]
    fn writes_go_at_once_while_slots_are_free() {
        let mut t = line(2);
        assert_eq!(t.ask("a", Class::Final, "a"), Turn::Go);
        assert_eq!(t.ask("b", Class::Progress, "b"), Turn::Go);
        assert_eq!(t.ask("c", Class::Final, "c"), Turn::Wait);
        assert_eq!(t.waiting(), 1);
    }

    #[test]
    fn a_freed_slot_calls_the_oldest_final_answer_first() {
        let mut t = line(1);
        let now = Instant::now();
        assert_eq!(t.ask("w", Class::Final, "w"), Turn::Go);
        assert_eq!(t.ask("p1", Class::Progress, "p1"), Turn::Wait);
        assert_eq!(t.ask("f1", Class::Final, "f1"), Turn::Wait);
        assert_eq!(t.ask("f2", Class::Final, "f2"), Turn::Wait);
        assert_eq!(t.done("w", now), ["f1"]);
        // Called: its reconcile comes back and goes, whatever else is in line.
        assert_eq!(t.ask("f1", Class::Final, "f1"), Turn::Go);
        assert_eq!(t.done("f1", now), ["f2"]);
        assert_eq!(t.ask("f2", Class::Final, "f2"), Turn::Go);
        assert_eq!(
            t.done("f2", now),
            ["p1"],
            "progress once no final answer waits"
        );
    }

    #[test]
    fn a_newcomer_never_jumps_the_line() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("f1", Class::Final, "f1");
        assert_eq!(t.done("w", now), ["f1"]);
        // f1's slot is kept for it while its reconcile is on the way.
        assert_eq!(t.ask("late", Class::Final, "late"), Turn::Wait);
        assert_eq!(t.ask("f1", Class::Final, "f1"), Turn::Go);
    }

    #[test]
    fn a_final_answer_goes_ahead_of_progress_but_not_of_other_finals() {
        let mut t = line(1);
        t.ask("w", Class::Progress, "w");
        assert_eq!(t.ask("p", Class::Progress, "p"), Turn::Wait);
        assert_eq!(t.ask("f", Class::Final, "f"), Turn::Wait);
        let now = Instant::now();
        assert_eq!(t.done("w", now), ["f"]);
    }

    #[test]
    fn a_progress_write_that_became_final_moves_to_the_finals_line() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("p", Class::Progress, "p");
        t.ask("f", Class::Final, "f");
        assert_eq!(t.ask("p", Class::Final, "p"), Turn::Wait);
        assert_eq!(t.done("w", now), ["f"]);
        t.ask("f", Class::Final, "f");
        assert_eq!(t.done("f", now), ["p"]);
        t.ask("p", Class::Final, "p");
        assert!(t.done("p", now).is_empty(), "p was called once, not twice");
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn asking_again_while_in_line_keeps_the_place_and_a_final_class() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("a", Class::Final, "a");
        t.ask("b", Class::Final, "b");
        assert_eq!(t.ask("b", Class::Progress, "b"), Turn::Wait);
        assert_eq!(t.done("w", now), ["a"]);
        t.ask("a", Class::Final, "a");
        assert_eq!(t.done("a", now), ["b"]);
    }

    #[test]
    fn leaving_the_line_or_the_turn_hands_it_on() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("a", Class::Final, "a");
        t.ask("b", Class::Final, "b");
        assert!(t.leave("a", now).is_empty(), "the slot is still taken");
        assert_eq!(t.done("w", now), ["b"]);
        // b was called but has nothing to write any more: its turn goes on.
        t.ask("c", Class::Final, "c");
        assert_eq!(t.leave("b", now), ["c"]);
    }

    #[test]
    fn deleted_resources_leave_the_line() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("gone", Class::Final, "gone");
        t.ask("live", Class::Final, "live");
        let live: HashSet<String> = ["w", "live"].map(String::from).into();
        assert!(t.retain(&live, now).is_empty());
        assert_eq!(t.done("w", now), ["live"]);
    }

    #[test]
    fn a_turn_nobody_comes_for_is_given_on_after_a_while() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("lost", Class::Final, "lost");
        t.ask("next", Class::Final, "next");
        assert_eq!(t.done("w", now), ["lost"]);
        assert!(t.expire(now + CALL_STALE / 2).is_empty());
        assert_eq!(t.expire(now + CALL_STALE), ["next"]);
        // The lost one's reconcile finally comes: it asks like anyone else.
        assert_eq!(t.ask("lost", Class::Final, "lost"), Turn::Wait);
    }

    #[test]
    fn a_failed_write_frees_its_slot_too() {
        let mut t = line(2);
        let now = Instant::now();
        t.ask("a", Class::Final, "a");
        t.ask("b", Class::Final, "b");
        t.ask("c", Class::Final, "c");
        // done is called whether the write succeeded or not (the slot guard's drop).
        assert_eq!(t.done("a", now), ["c"]);
        assert_eq!(
            t.ask("a", Class::Final, "a"),
            Turn::Wait,
            "its retry queues"
        );
    }

    #[test]
    fn progress_takes_only_its_share_of_the_slots() {
        let mut t = line(2 * PROGRESS_SHARE);
        let now = Instant::now();
        assert_eq!(t.ask("p1", Class::Progress, "p1"), Turn::Go);
        assert_eq!(t.ask("p2", Class::Progress, "p2"), Turn::Go);
        assert_eq!(
            t.ask("p3", Class::Progress, "p3"),
            Turn::Wait,
            "two show progress"
        );
        assert_eq!(
            t.ask("f1", Class::Final, "f1"),
            Turn::Go,
            "finals have the rest"
        );
        // p3's answer becomes final while it waits: a free slot is a free slot for a final.
        assert_eq!(t.ask("p3", Class::Final, "p3"), Turn::Go);
        assert!(t.done("f1", now).is_empty());
        assert_eq!(t.ask("p4", Class::Progress, "p4"), Turn::Wait);
        assert_eq!(t.done("p1", now), ["p4"], "a progress slot went free");
    }

    #[test]
    fn a_progress_turn_counts_as_progress_until_its_write_ends() {
        let mut t = line(PROGRESS_SHARE);
        let now = Instant::now();
        t.ask("p1", Class::Progress, "p1");
        t.ask("p2", Class::Progress, "p2");
        assert_eq!(t.done("p1", now), ["p2"]);
        // p2's answer became final on the way: it writes now, still in the progress slot.
        assert_eq!(t.ask("p2", Class::Final, "p2"), Turn::Go);
        assert_eq!(t.ask("p3", Class::Progress, "p3"), Turn::Wait);
        assert_eq!(t.done("p2", now), ["p3"]);
    }

    #[test]
    fn a_place_given_up_is_not_kept_in_the_queue() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("a", Class::Final, "a");
        t.ask("b", Class::Final, "b");
        t.leave("a", now);
        t.ask("c", Class::Final, "c");
        t.ask("a", Class::Final, "a");
        // a's old place is gone: it comes after b and c.
        assert_eq!(t.done("w", now), ["b"]);
        t.ask("b", Class::Final, "b");
        assert_eq!(t.done("b", now), ["c"]);
        t.ask("c", Class::Final, "c");
        assert_eq!(t.done("c", now), ["a"]);
    }

    #[test]
    fn a_progress_place_given_up_for_the_finals_line_is_not_kept_either() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("p", Class::Progress, "p");
        t.ask("q", Class::Progress, "q");
        t.ask("p", Class::Final, "p");
        t.ask("f", Class::Final, "f");
        assert_eq!(t.done("w", now), ["p"]);
        t.ask("p", Class::Final, "p");
        assert_eq!(t.done("p", now), ["f"]);
        // p shows progress again later: its old progress place (ahead of q) is gone.
        t.ask("f", Class::Final, "f");
        t.ask("p", Class::Progress, "p");
        assert_eq!(t.done("f", now), ["q"]);
    }

    #[test]
    fn a_turn_not_taken_is_passed_on_and_a_place_kept() {
        let mut t = line(1);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("a", Class::Final, "a");
        t.ask("b", Class::Final, "b");
        assert!(
            t.pass("b", now).is_empty(),
            "b was not called: nothing to pass"
        );
        assert_eq!(t.done("w", now), ["a"]);
        // a's reconcile found no answer to write yet (its role changed, say).
        assert_eq!(t.pass("a", now), ["b"]);
        assert_eq!(t.ask("b", Class::Final, "b"), Turn::Go);
    }

    #[test]
    fn any_release_takes_back_a_turn_nobody_came_for() {
        let mut t = line(2);
        let now = Instant::now();
        t.ask("w", Class::Final, "w");
        t.ask("x", Class::Final, "x");
        t.ask("lost", Class::Final, "lost");
        t.ask("next", Class::Final, "next");
        assert_eq!(t.done("w", now), ["lost"]);
        assert_eq!(
            t.done("x", now + CALL_STALE),
            ["next"],
            "x's slot, and lost's taken back"
        );
    }

    #[test]
    fn zero_slots_means_one() {
        let mut t = line(0);
        assert_eq!(t.ask("a", Class::Final, "a"), Turn::Go);
    }
}
