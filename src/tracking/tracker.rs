//! The tracker: the one place that decides when to ask SSM, per command instead of per
//! resource. This file owns the [`Tracker`] type, the state its rounds share, and what the
//! reconcilers and the SQS consumer call: track a resource, settle or forget it, count its
//! failed writes, take a hint. The round loop that asks SSM is in `rounds.rs`.
//!
//! Nothing here may call SSM or await: every call holds the state lock only briefly, and
//! what needs SSM is left to the rounds (marked due, and the loop notified).
//!
//! Resources are grouped by (region, command id). The answers are kept here; resources whose
//! answer changed are woken (a stream per controller), and their reconcile maps the answer
//! and writes. A reconcile never waits on SSM.
//!
//! A new resource (or a new generation) is first read as `plan::first_read` chooses:
//! resources keep arriving while a fleet runs, so one joins its command's next round when
//! that is due within `--poll-interval-min`; otherwise it is read like a hinted node (below),
//! and its command's backoff starts over (one Get while few are new, one walk when many are,
//! at start-up). Under push, events often come before their resource exists: they are
//! remembered (`heard`), so a node heard to have ended is read at once, and a fleet's node
//! heard running waits for its terminal event. A fleet reads ahead (`plan::reads_ahead`): the
//! end event of a node no resource tracks yet is read when it comes, and a walk keeps the
//! final answers of untracked nodes on its pages; the resource that comes takes that answer
//! ([`TrackedCommand::unclaimed`]) without a call. While the queue delivers, a new resource
//! does not bring the regular rounds back: events bring the news.
//!
//! Push (`--sqs-queue-url`): an event that a node reached a terminal state is a hint: within
//! [`HINT_COALESCE`] the hinted nodes of a command are read with one `GetCommandInvocation`
//! each (or one List walk when that is cheaper: a walk costs every page of the command's
//! listing, [`TrackedCommand::walk_pages`]), so a finished invocation costs one read (a step
//! without a name on a multi-step command, [`TrackedCommand::multi_step`], is read from that
//! node's listing instead: Get cannot read an invocation as a whole). While
//! the queue delivers, regular rounds back off up to the backstop interval (`--push-backstop`),
//! never stopping: delivery is best effort. A walk that finds a node ended more than
//! [`EVENT_GRACE`] ago that no event announced shows the queue loses events: for
//! [`LOSSY_KEEP`] rounds then follow the polling backoff, as without push.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::Stream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use crate::api::CommandInvocation;
use crate::aws::ssm::{is_terminal, Invocation, InvocationKey, Ssm, SsmError};
use crate::aws::sts::Role;
use crate::invocation::status::Polling;
use crate::runtime::metrics::Metrics;
use crate::tracking::heard::{Heard, Memory};
use crate::tracking::plan::{first_read, reads_ahead, ArrivalFacts, FirstRead};
use crate::tracking::schedule::{PollIntervals, RoundClock};
use crate::tracking::wakers::Wakers;

/// Hints arriving within this window are read together.
pub const HINT_COALESCE: Duration = Duration::from_millis(100);
/// The queue counts as delivering while its last SSM event is younger than this.
const PUSH_FRESH: Duration = Duration::from_secs(600);
/// An event announces a node's end within this long, or counts as lost.
pub(super) const EVENT_GRACE: Duration = Duration::from_secs(3);
/// After a lost event, rounds follow the polling backoff for this long.
pub(super) const LOSSY_KEEP: Duration = Duration::from_secs(300);

/// What SSM last said about one step, and when it was asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// SSM's answer.
    pub result: Result<Invocation, SsmError>,
    /// When SSM was asked.
    pub asked_at: Time,
}

impl Answer {
    /// SSM answered, with a terminal status: the invocation will not change any more.
    pub(super) fn is_final(&self) -> bool {
        self.result.as_ref().is_ok_and(|i| is_terminal(&i.status))
    }
}

/// What the tracker knows for one resource.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The latest answer for its step, if SSM was asked yet.
    pub answer: Option<Arc<Answer>>,
    /// When the tracker first saw this generation of the resource.
    pub first_seen: Instant,
}

/// A batch: one command in one region, asked with one identity (two namespaces with
/// different roles never share a call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CommandKey {
    pub(super) region: Option<String>,
    pub(super) role: Option<Role>,
    pub(super) command_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Step {
    pub(super) instance_id: String,
    pub(super) plugin_name: Option<String>,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) object: ObjectRef<CommandInvocation>,
    pub(super) step: Step,
    generation: i64,
    first_seen: Instant,
    /// Stalled on an error an outside fix can cure: asked only every recheck interval.
    pub(super) rare: bool,
    /// How its generation was first read: only one read `Now` is asked again while it has
    /// no answer.
    first_read: FirstRead,
    /// An event announced its node's end (so a walk finding it ended found no lost event).
    pub(super) end_heard: bool,
    /// Status writes that failed in a row (for the retry backoff).
    write_failures: u32,
}

impl Member {
    /// Its resource waits for its node's terminal event to be read ([`FirstRead::AwaitEvent`]).
    pub(super) fn awaits_event(&self) -> bool {
        self.first_read == FirstRead::AwaitEvent
    }
}

/// One SSM command the tracker asks about (a [`CommandKey`]): its tracked resources, their
/// answers and its rounds' state. Not the `Command` kind ([`crate::api::Command`]).
#[derive(Debug)]
pub(super) struct TrackedCommand {
    pub(super) members: HashMap<String, Member>,
    /// Shared with the reconciles that read them (an answer is ~400 bytes).
    pub(super) answers: HashMap<Step, Arc<Answer>>,
    pub(super) clock: RoundClock,
    /// A walk runs (a regular round, or hinted nodes too many for Gets): one at a time, so a
    /// busy budget's queue holds at most one page per command.
    pub(super) walking: bool,
    /// A round reading hinted nodes with one Get each runs.
    pub(super) getting: bool,
    pub(super) list_failures: u32,
    pub(super) rounds: u32,
    /// Nodes to read at `hint_due` without a whole round: an event said they reached a
    /// terminal state, or their resource is new (no answer yet), or they are read ahead (no
    /// resource yet: `TrackedCommand::reads_ahead`).
    pub(super) hinted: HashSet<String>,
    pub(super) hint_due: Option<Instant>,
    /// The most pages a walk of the command has read. SSM keeps every node of a command, so
    /// a walk that must find a node on the last page costs this many calls however few nodes
    /// are still tracked (a walk stops once it has seen every tracked node).
    pub(super) walk_pages: usize,
    /// Its nodes have several steps (a listing showed them, or SSM refused a Get without a
    /// step name): a step tracked without a name is the invocation as a whole, which only
    /// List can read, so where a Get would read one node, one node's listing does instead.
    pub(super) multi_step: bool,
    /// Resources it has tracked since it was first tracked (finished ones included).
    pub(super) arrived: usize,
    /// Of those, the ones that name no step: only they can take an answer read ahead (the
    /// invocation as a whole), so only they make the command read ahead.
    pub(super) arrived_whole: usize,
    /// Final answers of nodes no resource tracks yet, read ahead (`plan::reads_ahead`), by
    /// node, with when they were kept: the resource that comes takes its answer from here.
    pub(super) unclaimed: HashMap<String, (Arc<Answer>, Instant)>,
    /// Nodes no resource tracked when a running round took them to read ahead.
    pub(super) reading_ahead: HashSet<String>,
    /// Nodes that have had a resource: never read ahead (a finished resource's node is not
    /// tracked any more, but no resource is to come for it).
    pub(super) had: HashSet<String>,
}

impl TrackedCommand {
    /// What a walk costs, in pages: [`TrackedCommand::walk_pages`], at least one per 50 steps.
    pub(super) fn walk_cost(&self) -> usize {
        self.walk_pages.max(
            self.members
                .len()
                .div_ceil(crate::aws::ssm::PAGE_SIZE as usize),
        )
    }

    /// Whether it keeps one more final answer of a node no resource tracks yet.
    pub(super) fn reads_ahead(&self) -> bool {
        reads_ahead(self.arrived_whole, self.unclaimed.len())
    }

    /// Keeps `answer`, read ahead for `node` (which no resource tracks), if it is final and
    /// there is room ([`TrackedCommand::reads_ahead`]).
    pub(super) fn keep_unclaimed(&mut self, node: String, answer: Answer, now: Instant) {
        let room = self.unclaimed.contains_key(&node) || self.reads_ahead();
        if answer.is_final() && room && !self.had.contains(&node) {
            self.unclaimed.insert(node, (Arc::new(answer), now));
        }
    }

    /// Whether every tracked step of `node` already has a final answer (true when no resource
    /// tracks `node`).
    pub(super) fn node_answered(&self, node: &str) -> bool {
        self.members
            .values()
            .filter(|m| m.step.instance_id == node)
            .all(|m| self.answers.get(&m.step).is_some_and(|a| a.is_final()))
    }

    /// Reads `node` within [`HINT_COALESCE`], together with the other hinted nodes.
    pub(super) fn hint(&mut self, node: &str, now: Instant) {
        self.hinted.insert(node.to_string());
        let due = now + HINT_COALESCE;
        self.hint_due = Some(self.hint_due.map_or(due, |d| d.min(due)));
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) commands: HashMap<CommandKey, TrackedCommand>,
    pub(super) command_of: HashMap<String, CommandKey>,
    /// What the push queue said about nodes no resource tracks yet.
    heard: Memory,
}

impl State {
    fn remove(&mut self, uid: &str) {
        let Some(key) = self.command_of.remove(uid) else {
            return;
        };
        if let Some(command) = self.commands.get_mut(&key) {
            let Some(member) = command.members.remove(uid) else {
                return;
            };
            if command.members.is_empty() {
                self.commands.remove(&key);
            } else if !command.members.values().any(|m| m.step == member.step) {
                // Its answer goes with it (a round of Gets does not sweep answers).
                command.answers.remove(&member.step);
            }
        }
    }
}

/// See the module docs.
pub struct Tracker {
    pub(super) ssm: Arc<Ssm>,
    pub(super) intervals: PollIntervals,
    pub(super) recheck: Duration,
    pub(super) backstop: Duration,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    pub(super) changed: Notify,
    wakers: Wakers<CommandInvocation>,
    push: Mutex<Push>,
}

/// What the push queue has shown.
#[derive(Debug, Default)]
struct Push {
    reachable: bool,
    last_event: Option<Instant>,
    /// When a walk last found a node's end that no event announced.
    lost_event: Option<Instant>,
}

impl Tracker {
    /// A tracker asking `ssm`, with rounds between `intervals` and rare re-checks every
    /// `recheck`; every `backstop` while push events arrive.
    pub fn new(
        ssm: Arc<Ssm>,
        intervals: PollIntervals,
        recheck: Duration,
        backstop: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            ssm,
            intervals,
            recheck,
            backstop,
            metrics,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            wakers: Wakers::default(),
            push: Mutex::new(Push::default()),
        }
    }

    fn push(&self) -> MutexGuard<'_, Push> {
        self.push.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The push queue answered (`true`) or failed (`false`).
    pub fn push_reachable(&self, reachable: bool) {
        self.push().reachable = reachable;
    }

    /// Whether regular rounds may slow to the backstop: the queue answers and has delivered
    /// an SSM event recently.
    pub(super) fn push_active(&self, now: Instant) -> bool {
        let push = self.push();
        push.reachable
            && push
                .last_event
                .is_some_and(|at| now.saturating_duration_since(at) < PUSH_FRESH)
    }

    /// Whether a walk found an end that no event announced within [`LOSSY_KEEP`].
    pub(super) fn push_lossy(&self, now: Instant) -> bool {
        self.push()
            .lost_event
            .is_some_and(|at| now.saturating_duration_since(at) < LOSSY_KEEP)
    }

    /// A walk found `count` nodes' ends that no event announced (while the queue delivers).
    pub(super) fn events_lost(&self, count: usize, now: Instant) {
        if count > 0 && self.push_active(now) {
            self.push().lost_event = Some(now);
            self.metrics.push_events_missed(count);
        }
    }

    /// An SSM event (a hint, never truth): a node of a command changed state, or the whole
    /// command did. The nodes hinted to have ended are read shortly, together; what is said
    /// of nodes no resource tracks yet is remembered for when their resource comes.
    pub fn hint(&self, hint: &crate::aws::eventbridge::Hint) {
        let now = Instant::now();
        self.push().last_event = Some(now);
        let terminal = hint.is_terminal();
        let mut state = self.state();
        let State {
            commands, heard, ..
        } = &mut *state;
        let mut any = false;
        let mut tracked = false;
        for (key, command) in commands.iter_mut() {
            if key.command_id != hint.command_id {
                continue;
            }
            match &hint.instance_id {
                Some(node)
                    if command
                        .members
                        .values()
                        .any(|m| m.step.instance_id == *node) =>
                {
                    tracked = true;
                    if terminal {
                        for member in command.members.values_mut() {
                            if member.step.instance_id == *node {
                                member.end_heard = true;
                            }
                        }
                        // A walk may have read its end already (before the event came).
                        if !command.node_answered(node) {
                            command.hint(node, now);
                            any = true;
                        }
                    }
                }
                // A fleet's node that no resource tracks yet: its resource is likely to come,
                // so its final answer is read now, at the pace nodes end, and kept for it.
                Some(node)
                    if terminal
                        && !command.unclaimed.contains_key(node)
                        && !command.reading_ahead.contains(node)
                        && !command.had.contains(node)
                        && command.reads_ahead() =>
                {
                    command.hint(node, now);
                    any = true;
                }
                Some(_) => {}
                None if terminal => {
                    command.clock.hurry(now);
                    any = true;
                }
                None => {}
            }
        }
        let said = if terminal {
            Heard::Ended
        } else {
            Heard::Running
        };
        let node = hint.instance_id.as_deref().filter(|_| !tracked);
        heard.remember(&hint.command_id, node, said, now);
        drop(state);
        if any {
            self.changed.notify_one();
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The resources of `namespace` (`None`: all) whose answer changed, for a controller's
    /// `reconcile_on`.
    pub fn wakes(
        &self,
        namespace: Option<String>,
    ) -> impl Stream<Item = ObjectRef<CommandInvocation>> + Send + 'static {
        self.wakers.stream(namespace)
    }

    /// Wakes `objects` in the controllers that watch them.
    pub fn wake(&self, objects: Vec<ObjectRef<CommandInvocation>>) {
        self.wakers.wake(objects);
    }

    /// Tracks the resource `uid` (its step `key`, its `generation`) and returns what is known.
    /// A new resource, a new generation or a step without an answer is read like a hinted node
    /// (within [`HINT_COALESCE`]), and (unless events bring the news) its command's backoff
    /// starts over.
    pub fn track(
        &self,
        uid: &str,
        object: ObjectRef<CommandInvocation>,
        key: &InvocationKey,
        generation: i64,
        now: Instant,
    ) -> Tracked {
        // Name and namespace are what a wake needs; the resourceVersion and uid are not kept.
        let mut object = object;
        object.extra = Default::default();
        let command_key = CommandKey {
            region: key.region.clone(),
            role: key.role.clone(),
            command_id: key.command_id.clone(),
        };
        let step = Step {
            instance_id: key.instance_id.clone(),
            plugin_name: key.plugin_name.clone(),
        };
        let push_active = self.push_active(now);
        // While the queue delivers (and loses nothing), events bring the news and the regular
        // rounds are a backstop: a new resource does not bring them back.
        let events_bring_news = push_active && !self.push_lossy(now);
        let mut state = self.state();
        if state
            .command_of
            .get(uid)
            .is_some_and(|old| *old != command_key)
        {
            state.remove(uid);
        }
        state
            .command_of
            .insert(uid.to_string(), command_key.clone());
        let State {
            commands, heard, ..
        } = &mut *state;
        let command = commands
            .entry(command_key.clone())
            .or_insert_with(|| TrackedCommand {
                members: HashMap::new(),
                answers: HashMap::new(),
                clock: RoundClock::due_at(now),
                walking: false,
                getting: false,
                list_failures: 0,
                rounds: 0,
                hinted: HashSet::new(),
                hint_due: None,
                walk_pages: 0,
                multi_step: false,
                arrived: 0,
                arrived_whole: 0,
                unclaimed: HashMap::new(),
                reading_ahead: HashSet::new(),
                had: HashSet::new(),
            });
        let mut answer = command.answers.get(&step).cloned();
        let arrived = !command.members.contains_key(uid);
        if arrived {
            command.arrived = command.arrived.saturating_add(1);
            if step.plugin_name.is_none() {
                command.arrived_whole = command.arrived_whole.saturating_add(1);
            }
        }
        if !command.had.contains(&step.instance_id) {
            command.had.insert(step.instance_id.clone());
        }
        // A new resource of a node whose final answer was read ahead takes that answer (a
        // spec change is read anew); one whose node a round is reading ahead now waits for
        // that read. The answer is final, so it is as good as one read now, and it counts
        // as read now: its time becomes the status's (`lastPolledTime`, the Finished
        // condition's transition), never earlier than the resource itself, so a TTL counts
        // from when the resource showed it.
        let mut read_ahead = false;
        if arrived && step.plugin_name.is_none() {
            if let Some((ahead, _)) = command.unclaimed.remove(&step.instance_id) {
                let ahead = Arc::new(Answer {
                    result: ahead.result.clone(),
                    asked_at: Time(Timestamp::now()),
                });
                command.answers.insert(step.clone(), ahead.clone());
                answer = Some(ahead);
                read_ahead = true;
            } else {
                read_ahead = command.reading_ahead.contains(&step.instance_id);
            }
        }
        let member = command
            .members
            .entry(uid.to_string())
            .or_insert_with(|| Member {
                object,
                step: step.clone(),
                generation: generation - 1,
                first_seen: now,
                rare: false,
                first_read: FirstRead::Now,
                end_heard: false,
                write_failures: 0,
            });
        let new_generation = member.generation != generation || member.step != step;
        let first_seen = if new_generation {
            member.step = step;
            member.generation = generation;
            member.first_seen = now;
            member.rare = false;
            let node = &member.step.instance_id;
            let facts = ArrivalFacts {
                push_active,
                heard: heard.take(&command_key.command_id, node, now),
                command_heard: heard.command_heard(&command_key.command_id, now),
                arrived: command.arrived,
                read_ahead,
                regular_due: command.clock.due,
                join_within: self.intervals.min,
            };
            member.first_read = first_read(&facts, now);
            member.end_heard = facts.heard == Some(Heard::Ended);
            now
        } else {
            member.first_seen
        };
        match member.first_read {
            FirstRead::Now if new_generation || answer.is_none() => {
                // Read like a hinted node: one Get while few are new, one walk for many (at
                // start-up, while thousands are tracked in a few seconds). Polling, the rounds
                // that follow come at the first interval again.
                let node = member.step.instance_id.clone();
                command.hint(&node, now);
                if !events_bring_news {
                    let soon = if push_active {
                        self.backstop
                    } else {
                        self.intervals.min
                    };
                    command.clock.restart_backoff(now + soon);
                }
                self.changed.notify_one();
            }
            FirstRead::JoinRound if new_generation && events_bring_news => {
                // Events bring the news: read on its own, the regular rounds stay a backstop.
                let node = member.step.instance_id.clone();
                command.hint(&node, now);
                self.changed.notify_one();
            }
            FirstRead::JoinRound if new_generation => {
                // The round due soon reads it; one running now took its steps already, so the
                // next comes at the first interval after it.
                command.clock.join(now + self.intervals.min);
                self.changed.notify_one();
            }
            FirstRead::Now
            | FirstRead::JoinRound
            | FirstRead::AwaitEvent
            | FirstRead::ReadAhead => {}
        }
        self.report_sizes(state);
        Tracked { answer, first_seen }
    }

    /// Publishes how many resources and commands are tracked, and lets the lock go.
    fn report_sizes(&self, state: MutexGuard<'_, State>) {
        let (members, commands) = (state.command_of.len(), state.commands.len());
        drop(state);
        self.metrics.set_poll_book(members);
        self.metrics.set_tracked_commands(commands);
    }

    /// What the reconcile concluded: stop tracking, re-check rarely, or keep going.
    pub fn settle(&self, uid: &str, next: Polling) {
        if next == Polling::Stop {
            self.forget(uid);
            return;
        }
        let mut state = self.state();
        let Some(key) = state.command_of.get(uid).cloned() else {
            return;
        };
        let Some(command) = state.commands.get_mut(&key) else {
            return;
        };
        if let Some(member) = command.members.get_mut(uid) {
            member.rare = next == Polling::RecheckRarely;
            member.write_failures = 0;
        }
        // Only rarely re-checked steps left: the next round waits the recheck interval.
        if command.members.values().all(|m| m.rare) {
            let rare_due = Instant::now() + self.recheck;
            command.clock.due = command.clock.due.max(rare_due);
        }
    }

    /// Counts a failed status write of `uid`; returns how many failed in a row.
    pub fn write_failed(&self, uid: &str) -> u32 {
        let mut state = self.state();
        let Some(key) = state.command_of.get(uid).cloned() else {
            return 1;
        };
        state
            .commands
            .get_mut(&key)
            .and_then(|c| c.members.get_mut(uid))
            .map_or(1, |m| {
                m.write_failures = m.write_failures.saturating_add(1);
                m.write_failures
            })
    }

    /// Stops tracking `uid` (finished, or deleted).
    pub fn forget(&self, uid: &str) {
        let mut state = self.state();
        state.remove(uid);
        self.report_sizes(state);
    }

    /// Stops tracking every resource not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        let mut state = self.state();
        let gone: Vec<String> = state
            .command_of
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            state.remove(&uid);
        }
        self.report_sizes(state);
    }

    /// Wakes every tracked resource of `namespace` (its role changed: the reconcile re-keys
    /// it, and its command is asked at once with the new identity).
    pub fn wake_namespace(&self, namespace: &str) {
        let objects: Vec<ObjectRef<CommandInvocation>> = self
            .state()
            .commands
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| m.object.namespace.as_deref() == Some(namespace))
            .map(|m| m.object.clone())
            .collect();
        self.wake(objects);
    }

    /// Number of tracked resources.
    pub fn len(&self) -> usize {
        self.state().command_of.len()
    }

    /// True when no resource is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
