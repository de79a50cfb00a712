//! Pure: what the push queue said about nodes that no resource tracks yet, kept for a while.
//!
//! Resources arrive while a fleet runs (a pipeline creates its `CommandInvocation` after
//! `SendCommand`, a `Command` creates a child per node), so a node's events often come before
//! its resource exists. The tracker remembers them here, and a new resource's first read
//! depends on it (see `plan::first_read`): a node heard to have ended is read at once (unless
//! its answer was read ahead, `plan::reads_ahead`); one heard running will announce its end
//! (its resource waits for that event, or for a round).
//!
//! Bounded: entries are keyed by a 64-bit hash of (command id, node) (a collision only makes
//! one resource read sooner or later than it could be; an event is a hint, never truth),
//! forgotten after [`KEEP`], and at most [`CAPACITY`] nodes are remembered (~40 bytes each).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// What is remembered of an event this long.
pub(super) const KEEP: Duration = Duration::from_secs(600);
/// At most this many nodes are remembered; past it, new ones are not (until old ones expire).
pub(super) const CAPACITY: usize = 50_000;
/// Expired entries are dropped every this many remembered events...
const PRUNE_EVERY: u32 = 4096;
/// ... and, while full, at most this often.
const PRUNE_FULL_EVERY: Duration = Duration::from_secs(1);

/// What the queue last said about one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// A status after which more follows (Pending, InProgress, Delayed, ...).
    Running,
    /// A terminal status.
    Ended,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Memory {
    nodes: HashMap<u64, (Heard, Instant)>,
    /// The last event of each command (any node, or the command itself).
    commands: HashMap<u64, Instant>,
    since_prune: u32,
    last_prune: Option<Instant>,
}

fn key(command_id: &str, node: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    command_id.hash(&mut hasher);
    node.hash(&mut hasher);
    hasher.finish()
}

impl Memory {
    /// An event about `node` of `command_id` (`None`: the command itself) at `now`. A node
    /// heard to have ended stays ended (events may come out of order).
    pub(super) fn remember(
        &mut self,
        command_id: &str,
        node: Option<&str>,
        heard: Heard,
        now: Instant,
    ) {
        self.since_prune += 1;
        let full_for_a_while = self.nodes.len() >= CAPACITY
            && self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_FULL_EVERY);
        if self.since_prune >= PRUNE_EVERY || full_for_a_while {
            self.prune(now);
        }
        self.commands.insert(key(command_id, None), now);
        if node.is_none() {
            return;
        }
        let k = key(command_id, node);
        let full = self.nodes.len() >= CAPACITY;
        match self.nodes.get_mut(&k) {
            Some(entry) => {
                if entry.0 != Heard::Ended {
                    entry.0 = heard;
                }
                entry.1 = now;
            }
            None if !full => {
                self.nodes.insert(k, (heard, now));
            }
            None => {}
        }
    }

    /// What was heard about `node` of `command_id` within [`KEEP`], forgetting it (its
    /// resource now exists, and the tracker follows it from here).
    pub(super) fn take(&mut self, command_id: &str, node: &str, now: Instant) -> Option<Heard> {
        let (heard, at) = self.nodes.remove(&key(command_id, Some(node)))?;
        (now.saturating_duration_since(at) < KEEP).then_some(heard)
    }

    /// Whether the queue spoke about `command_id` (any node) within [`KEEP`].
    pub(super) fn command_heard(&self, command_id: &str, now: Instant) -> bool {
        self.commands
            .get(&key(command_id, None))
            .is_some_and(|at| now.saturating_duration_since(*at) < KEEP)
    }

    /// Nodes remembered now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    fn prune(&mut self, now: Instant) {
        self.since_prune = 0;
        self.last_prune = Some(now);
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < KEEP;
        self.nodes.retain(|_, (_, at)| fresh(at));
        self.commands.retain(|_, at| fresh(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_heard_is_taken_once_and_an_end_is_never_undone() {
        let t0 = Instant::now();
        let mut memory = Memory::default();
        memory.remember("c1", Some("i-1"), Heard::Running, t0);
        memory.remember("c1", Some("i-1"), Heard::Ended, t0);
        // Out of order: an InProgress event delivered after the terminal one.
        memory.remember("c1", Some("i-1"), Heard::Running, t0);
        memory.remember("c1", Some("i-2"), Heard::Running, t0);
        assert_eq!(memory.take("c1", "i-1", t0), Some(Heard::Ended));
        assert_eq!(memory.take("c1", "i-1", t0), None, "taken once");
        assert_eq!(memory.take("c1", "i-2", t0), Some(Heard::Running));
        assert_eq!(memory.take("c2", "i-2", t0), None, "another command's node");
    }

    #[test]
    fn commands_are_heard_through_any_event_and_everything_expires() {
        let t0 = Instant::now();
        let mut memory = Memory::default();
        memory.remember("c1", None, Heard::Ended, t0);
        memory.remember("c2", Some("i-1"), Heard::Running, t0);
        assert!(memory.command_heard("c1", t0));
        assert!(memory.command_heard("c2", t0 + KEEP - Duration::from_secs(1)));
        assert!(!memory.command_heard("c3", t0));
        assert!(!memory.command_heard("c2", t0 + KEEP));
        assert_eq!(
            memory.take("c2", "i-1", t0 + KEEP),
            None,
            "too old to trust"
        );
    }

    #[test]
    fn memory_stays_bounded_and_drops_the_expired_first() {
        let t0 = Instant::now();
        let mut memory = Memory::default();
        for i in 0..CAPACITY {
            memory.remember("c1", Some(&format!("i-{i}")), Heard::Running, t0);
        }
        memory.remember("c1", Some("i-late"), Heard::Ended, t0);
        assert_eq!(memory.len(), CAPACITY, "full: a new node is not remembered");
        assert_eq!(memory.take("c1", "i-late", t0), None);
        // Once the old ones expire, the next event prunes them and is remembered.
        let later = t0 + KEEP;
        memory.remember("c1", Some("i-later"), Heard::Ended, later);
        assert_eq!(memory.len(), 1);
        assert_eq!(memory.take("c1", "i-later", later), Some(Heard::Ended));
    }
}
