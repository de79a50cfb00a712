//! The tracker: the one place that decides when to ask SSM, per command instead of per
//! resource.
//!
//! Resources are grouped by (region, command id). Each group gets rounds on its own
//! [`RoundClock`]: one `ListCommandInvocations` walk (details, 50 per page) answers every
//! tracked step of the command; `GetCommandInvocation` is asked only for what List cannot answer
//! ([`batch::from_list`]). The answers are kept here; resources whose answer changed are woken
//! (a stream per controller), and their reconcile maps the answer and writes. A reconcile never
//! waits on SSM. Every call takes a token from the process-wide SSM budget (in [`Ssm`]).
//!
//! A new resource (or a new generation) is read like a hinted node (below), and its command's
//! backoff starts over: one Get while few are new, one walk when many are (start-up).
//!
//! If List keeps failing (an endpoint or IAM policy without it), rounds fall back to one
//! `GetCommandInvocation` per step and try List again now and then.
//!
//! Push (`--sqs-queue-url`): an event that a node reached a terminal state is a hint: within
//! [`HINT_COALESCE`] the hinted nodes of a command are read with one `GetCommandInvocation`
//! each (or one List walk when that is cheaper: a walk costs every page of the command's
//! listing, [`Command::walk_pages`]), so a finished invocation costs one read. While
//! the queue delivers, regular rounds slow to the backstop interval (`--push-backstop`), never
//! stopping: delivery is best effort.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::debug;

use crate::api::CommandInvocation;
use crate::aws::ssm::is_terminal;
use crate::aws::ssm::{Invocation, InvocationKey, Ssm, SsmError};
use crate::aws::sts::Role;
use crate::invocation::status::{only_elapsed_time_ticked, Polling};
use crate::runtime::metrics::Metrics;
use crate::tracking::entries::{self as batch, FromList, Why};
use crate::tracking::schedule::{PollIntervals, RoundClock};
use crate::tracking::wakers::Wakers;

/// After this many failed List walks in a row, a transient error is shown on the resources and
/// (unless SSM is throttling) rounds ask `GetCommandInvocation` per step instead.
const LIST_FAILURES_TOLERATED: u32 = 2;
/// While List keeps failing, it is tried again every this many rounds.
const LIST_RETRY_EVERY: u32 = 5;
/// At most this many `GetCommandInvocation` calls per command per round; the rest wait.
const MAX_GETS_PER_ROUND: usize = 50;
/// `GetCommandInvocation` calls of one round in flight at once.
const GETS_IN_FLIGHT: usize = 8;
/// A walk stops after this many pages (100,000 nodes), whatever SSM says.
const MAX_PAGES: usize = 2000;
/// Regular rounds under push come this share of the backstop sooner, at most.
const BACKSTOP_JITTER: f64 = 0.2;
/// Hints arriving within this window are read together.
pub const HINT_COALESCE: Duration = Duration::from_millis(100);
/// The queue counts as delivering while its last SSM event is younger than this.
const PUSH_FRESH: Duration = Duration::from_secs(600);
/// While this many final answers wait for their status write, writes that only report
/// progress are put off (see [`Tracker::defer`]). One: measured on the fleet benchmark, any
/// larger backlog lets progress writes take API server capacity the final answers need
/// (20 × 500 at 100 calls/s: lag p99 4.9 s with 1, 34.7 s with 16).
const FINAL_BACKLOG: usize = 1;
/// A final answer not written within this long no longer counts as waiting (its resource may
/// be reconciled by nobody, e.g. its namespace is no longer watched).
const FINAL_STALE: Duration = Duration::from_secs(30);
/// Put-off resources woken per tracker loop turn while no final answers wait.
const DEFERRED_PER_TURN: usize = 16;

/// What SSM last said about one step, and when it was asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// SSM's answer.
    pub result: Result<Invocation, SsmError>,
    /// When SSM was asked.
    pub asked_at: Time,
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
struct CommandKey {
    region: Option<String>,
    role: Option<Role>,
    command_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Step {
    instance_id: String,
    plugin_name: Option<String>,
}

#[derive(Debug)]
struct Member {
    object: ObjectRef<CommandInvocation>,
    step: Step,
    generation: i64,
    first_seen: Instant,
    /// Stalled on an error an outside fix can cure: asked only every recheck interval.
    rare: bool,
    /// Status writes that failed in a row (for the retry backoff).
    write_failures: u32,
}

#[derive(Debug)]
struct Command {
    members: HashMap<String, Member>,
    /// Shared with the reconciles that read them (an answer is ~400 bytes).
    answers: HashMap<Step, Arc<Answer>>,
    clock: RoundClock,
    /// A walk runs (a regular round, or hinted nodes too many for Gets): one at a time, so a
    /// busy budget's queue holds at most one page per command.
    walking: bool,
    /// A round reading hinted nodes with one Get each runs.
    getting: bool,
    list_failures: u32,
    rounds: u32,
    /// Nodes to read at `hint_due` without a whole round: an event said they reached a
    /// terminal state, or their resource is new (no answer yet).
    hinted: HashSet<String>,
    hint_due: Option<Instant>,
    /// The most pages a walk of the command has read. SSM keeps every node of a command, so
    /// a walk that must find a node on the last page costs this many calls however few nodes
    /// are still tracked (a walk stops once it has seen every tracked node).
    walk_pages: usize,
}

impl Command {
    /// What a walk costs, in pages: [`Command::walk_pages`], at least one per 50 steps.
    fn walk_cost(&self) -> usize {
        self.walk_pages.max(
            self.members
                .len()
                .div_ceil(crate::aws::ssm::PAGE_SIZE as usize),
        )
    }

    /// Reads `node` within [`HINT_COALESCE`], together with the other hinted nodes.
    fn hint(&mut self, node: &str, now: Instant) {
        self.hinted.insert(node.to_string());
        let due = now + HINT_COALESCE;
        self.hint_due = Some(self.hint_due.map_or(due, |d| d.min(due)));
    }
}

#[derive(Debug, Default)]
struct State {
    commands: HashMap<CommandKey, Command>,
    command_of: HashMap<String, CommandKey>,
    /// Resources woken with a final answer whose status is not written yet, and when.
    finals: HashMap<String, Instant>,
    /// Resources whose progress-only write was put off while final answers waited...
    deferred: HashSet<String>,
    /// ... in the order they were put off (may still name some no longer put off).
    deferred_order: VecDeque<String>,
}

impl State {
    /// Final answers wait for their writes: progress-only writes are put off.
    fn finals_waiting(&self) -> bool {
        self.finals.len() >= FINAL_BACKLOG
    }

    /// `uid` neither waits with a final answer nor is put off any more.
    fn unqueue(&mut self, uid: &str) {
        self.finals.remove(uid);
        self.deferred.remove(uid);
    }

    fn remove(&mut self, uid: &str) {
        self.unqueue(uid);
        let Some(key) = self.command_of.remove(uid) else {
            return;
        };
        if let Some(command) = self.commands.get_mut(&key) {
            command.members.remove(uid);
            if command.members.is_empty() {
                self.commands.remove(&key);
            }
        }
    }
}

/// See the module docs.
pub struct Tracker {
    ssm: Arc<Ssm>,
    intervals: PollIntervals,
    recheck: Duration,
    backstop: Duration,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    changed: Notify,
    wakers: Wakers<CommandInvocation>,
    push: Mutex<Push>,
}

/// What the push queue has shown.
#[derive(Debug, Default)]
struct Push {
    reachable: bool,
    last_event: Option<Instant>,
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
    fn push_active(&self, now: Instant) -> bool {
        let push = self.push();
        push.reachable
            && push
                .last_event
                .is_some_and(|at| now.saturating_duration_since(at) < PUSH_FRESH)
    }

    /// An SSM event (a hint, never truth): a node of a command reached a terminal state, or
    /// the whole command did. The hinted nodes are read shortly, together.
    pub fn hint(&self, hint: &crate::aws::eventbridge::Hint) {
        let now = Instant::now();
        self.push().last_event = Some(now);
        if !hint.is_terminal() {
            return;
        }
        let mut state = self.state();
        let mut any = false;
        for (key, command) in state.commands.iter_mut() {
            if key.command_id != hint.command_id {
                continue;
            }
            match &hint.instance_id {
                Some(node) => {
                    if command
                        .members
                        .values()
                        .any(|m| m.step.instance_id == *node)
                    {
                        command.hint(node, now);
                        any = true;
                    }
                }
                None => {
                    command.clock.hurry(now);
                    any = true;
                }
            }
        }
        drop(state);
        if any {
            self.changed.notify_one();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
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

    fn wake(&self, objects: Vec<ObjectRef<CommandInvocation>>) {
        self.wakers.wake(objects);
    }

    /// Tracks the resource `uid` (its step `key`, its `generation`) and returns what is known.
    /// A new resource, a new generation or a step without an answer is read like a hinted node
    /// (within [`HINT_COALESCE`]), and its command's backoff starts over.
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
        let soon = if self.push_active(now) {
            self.backstop
        } else {
            self.intervals.min
        };
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
        let command = state
            .commands
            .entry(command_key)
            .or_insert_with(|| Command {
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
            });
        let answer = command.answers.get(&step).cloned();
        let member = command
            .members
            .entry(uid.to_string())
            .or_insert_with(|| Member {
                object,
                step: step.clone(),
                generation: generation - 1,
                first_seen: now,
                rare: false,
                write_failures: 0,
            });
        let new_generation = member.generation != generation || member.step != step;
        if new_generation {
            member.step = step;
            member.generation = generation;
            member.first_seen = now;
            member.rare = false;
        }
        let first_seen = member.first_seen;
        if new_generation || answer.is_none() {
            // Read like a hinted node: one Get while few are new, one walk for many (at
            // start-up, while thousands are tracked in a few seconds). The rounds that follow
            // come at the first interval again.
            let node = member.step.instance_id.clone();
            command.hint(&node, now);
            command.clock.restart_backoff(now + soon);
            self.changed.notify_one();
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
        state.unqueue(uid);
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

    /// Puts off the progress-only write of `uid` while [`FINAL_BACKLOG`] final answers wait
    /// for their writes: the API server's write capacity goes to what pipelines gate
    /// on first. Returns whether it was put off; the tracker wakes `uid` again once the final
    /// answers are written ([`Tracker::wrote`], and every loop turn).
    pub fn defer(&self, uid: &str) -> bool {
        let mut state = self.state();
        // Its own answer is not final (else it would be written, not put off).
        state.finals.remove(uid);
        if !state.finals_waiting() || !state.command_of.contains_key(uid) {
            return false;
        }
        if state.deferred.insert(uid.to_string()) {
            state.deferred_order.push_back(uid.to_string());
        }
        true
    }

    /// A status write of `uid` succeeded: while no final answers queue, one put-off resource
    /// takes the freed write slot.
    pub fn wrote(&self, uid: &str) {
        let woken = {
            let mut state = self.state();
            state.unqueue(uid);
            take_deferred(&mut state, 1)
        };
        self.wake(woken);
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

    /// Runs rounds as they fall due, until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut rounds = JoinSet::new();
        loop {
            let now = Instant::now();
            let (due, next) = self.start_due(now);
            let woken = self.turn(now);
            self.wake(woken);
            for (key, kind) in due {
                rounds.spawn(self.clone().round(key, kind));
            }
            let sleep = next
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                })
                .min(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.changed.notified() => {}
                Some(_) = rounds.join_next(), if !rounds.is_empty() => {}
            }
        }
    }

    /// The bookkeeping of one loop turn at `now`: final answers waiting longer than
    /// [`FINAL_STALE`] stop counting; returns the put-off resources to wake, if none wait.
    fn turn(&self, now: Instant) -> Vec<ObjectRef<CommandInvocation>> {
        let mut state = self.state();
        state
            .finals
            .retain(|_, since| now.saturating_duration_since(*since) < FINAL_STALE);
        take_deferred(&mut state, DEFERRED_PER_TURN)
    }

    /// Marks the rounds due at `now` as running; returns them (and their kind) and the next
    /// due time. A command runs at most one walk and one round of Gets at once.
    fn start_due(&self, now: Instant) -> (Vec<(CommandKey, RoundKind)>, Option<Instant>) {
        let mut state = self.state();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, command) in state.commands.iter_mut() {
            if !command.walking && command.clock.due <= now {
                // The round asks about every step, hinted ones included.
                command.walking = true;
                command.hint_due = None;
                command.rounds = command.rounds.wrapping_add(1);
                due.push((key.clone(), RoundKind::Regular));
            }
            // Hinted nodes are read beside a running walk when Gets will do; a second walk
            // waits for the first (its end wakes this loop).
            let kind = if command.hinted.len() <= command.walk_cost() {
                (!command.getting).then_some(RoundKind::Gets)
            } else {
                (!command.walking).then_some(RoundKind::HintWalk)
            };
            let hint_due = command.hint_due.filter(|_| kind.is_some());
            if let (Some(kind), Some(true)) = (kind, hint_due.map(|at| at <= now)) {
                match kind {
                    RoundKind::Gets => command.getting = true,
                    RoundKind::Regular | RoundKind::HintWalk => command.walking = true,
                }
                command.rounds = command.rounds.wrapping_add(1);
                due.push((key.clone(), kind));
                continue;
            }
            let regular_due = (!command.walking).then_some(command.clock.due);
            if let Some(at) = [regular_due, hint_due].into_iter().flatten().min() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }

    /// What a round of `key` asks about: the steps tracked now (which answer every hurry so
    /// far, for a regular round), and the hinted nodes, taken. `None`: the command is gone.
    fn take_round(&self, key: &CommandKey, kind: RoundKind) -> Option<RoundStart> {
        let mut state = self.state();
        let command = state.commands.get_mut(key)?;
        let steps: HashSet<Step> = command.members.values().map(|m| m.step.clone()).collect();
        if kind == RoundKind::Regular {
            command.clock.start();
        }
        let use_list = command.list_failures < LIST_FAILURES_TOLERATED
            || command.rounds % LIST_RETRY_EVERY == 0;
        command.hint_due = None;
        Some(RoundStart {
            steps,
            use_list,
            hinted: std::mem::take(&mut command.hinted),
        })
    }

    /// One round of one command: ask SSM, keep the answers, wake whose answer changed. A
    /// round that is not regular reads the hinted nodes (a walk answers the others too).
    async fn round(self: Arc<Self>, key: CommandKey, kind: RoundKind) {
        let Some(RoundStart {
            steps,
            use_list,
            hinted,
        }) = self.take_round(&key, kind)
        else {
            return;
        };
        let hinted: Vec<Step> = steps
            .iter()
            .filter(|s| hinted.contains(&s.instance_id))
            .cloned()
            .collect();
        if kind == RoundKind::Gets || (kind == RoundKind::HintWalk && !use_list) {
            // No more hinted nodes than pages in a walk: one Get each is the cheapest read
            // (and the only one while List keeps failing).
            let asked_at = Time(Timestamp::now());
            let fresh = self.get_each(&key, hinted).await;
            self.keep(&key, fresh, asked_at, false, kind);
            return;
        }
        let mut fresh: Vec<(Step, Result<Invocation, SsmError>)> = Vec::new();
        let mut gets: Vec<Step> = Vec::new();
        let mut list_result = None;
        let mut news = false;
        // The steps no answer reached yet (a walk that failed midway answered some).
        let mut unanswered: Vec<Step> = steps.iter().cloned().collect();
        if use_list {
            let (walked, error) = self.walk(&key, &steps).await;
            news = walked.news;
            match error {
                None => {
                    gets.extend(walked.unclear);
                    fresh.extend(self.not_listed(&key, walked.not_listed, &mut gets).await);
                    list_result = Some(None);
                }
                Some(error) => {
                    unanswered = walked.not_listed;
                    unanswered.extend(walked.unclear);
                    list_result = Some(Some(error));
                }
            }
        }
        let failures = self.note_list_result(&key, list_result.as_ref());
        match list_result {
            Some(None) => {}
            Some(Some(error)) if failures >= LIST_FAILURES_TOLERATED => {
                if matches!(error, SsmError::Throttled(_)) {
                    fresh.extend(unanswered.into_iter().map(|s| (s, Err(error.clone()))));
                } else {
                    gets.extend(unanswered);
                }
            }
            Some(Some(error)) => {
                debug!(command = %key.command_id, %error, "List failed; trying again next round")
            }
            None => gets.extend(steps.iter().cloned()),
        }
        let more_left = gets.len() > MAX_GETS_PER_ROUND;
        gets.truncate(MAX_GETS_PER_ROUND);
        let asked_at = Time(Timestamp::now());
        fresh.extend(self.get_each(&key, gets).await);
        self.keep(&key, fresh, asked_at, news || more_left, kind);
    }

    /// Walks every page of the command, keeping each page's answers as it arrives (a node
    /// that finished is woken without waiting for the rest of the walk). A page that fails
    /// ends the walk with that error; what earlier pages answered stays answered.
    async fn walk(&self, key: &CommandKey, steps: &HashSet<Step>) -> (Walked, Option<SsmError>) {
        let mut wanted: HashMap<&str, Vec<&Step>> = HashMap::new();
        for step in steps {
            wanted.entry(&step.instance_id).or_default().push(step);
        }
        let mut news = false;
        let mut unclear = Vec::new();
        let mut token = None;
        let mut failed = None;
        let mut pages = 0;
        for _ in 0..MAX_PAGES {
            let asked_at = Time(Timestamp::now());
            let mut answered = Vec::new();
            let page = match self
                .ssm
                .list_page(&key.region, &key.role, &key.command_id, token)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            for listed in &page.invocations {
                for step in wanted
                    .remove(listed.instance_id.as_str())
                    .unwrap_or_default()
                {
                    match batch::from_list(Some(listed), step.plugin_name.as_deref()) {
                        FromList::Answer(invocation) => {
                            answered.push((step.clone(), Ok(*invocation)))
                        }
                        FromList::NeedsGet(_) => unclear.push(step.clone()),
                    }
                }
            }
            pages += 1;
            news |= self.absorb(key, answered, &asked_at);
            token = page.next_token.filter(|t| !t.is_empty());
            if token.is_none() || wanted.is_empty() {
                break;
            }
        }
        if let Some(command) = self.state().commands.get_mut(key) {
            command.walk_pages = command.walk_pages.max(pages);
        }
        let not_listed = wanted.into_values().flatten().cloned().collect();
        let walked = Walked {
            news,
            not_listed,
            unclear,
        };
        (walked, failed)
    }

    /// Steps whose node List did not show: one `GetCommandInvocation` probes; if SSM has no
    /// such invocation either (just sent, or gone), that is every such step's answer, else the
    /// rest are asked one by one.
    async fn not_listed(
        &self,
        key: &CommandKey,
        steps: Vec<Step>,
        gets: &mut Vec<Step>,
    ) -> Vec<(Step, Result<Invocation, SsmError>)> {
        let Some(first) = steps.first().cloned() else {
            return Vec::new();
        };
        let probe = self.get(key, &first).await;
        debug!(command = %key.command_id, steps = steps.len(), why = ?Why::NotListed, "not listed; asked GetCommandInvocation");
        if matches!(probe, Err(SsmError::InvocationDoesNotExist(_))) {
            steps.into_iter().map(|s| (s, probe.clone())).collect()
        } else {
            gets.extend(steps.into_iter().skip(1));
            vec![(first, probe)]
        }
    }

    async fn get(&self, key: &CommandKey, step: &Step) -> Result<Invocation, SsmError> {
        self.ssm
            .invocation(&InvocationKey {
                region: key.region.clone(),
                command_id: key.command_id.clone(),
                instance_id: step.instance_id.clone(),
                plugin_name: step.plugin_name.clone(),
                role: key.role.clone(),
            })
            .await
    }

    async fn get_each(
        &self,
        key: &CommandKey,
        steps: Vec<Step>,
    ) -> Vec<(Step, Result<Invocation, SsmError>)> {
        futures::stream::iter(steps)
            .map(|step| async move {
                let answer = self.get(key, &step).await;
                (step, answer)
            })
            .buffer_unordered(GETS_IN_FLIGHT)
            .collect()
            .await
    }

    /// Counts List failures in a row (`None`: List was not asked); returns the count.
    fn note_list_result(&self, key: &CommandKey, result: Option<&Option<SsmError>>) -> u32 {
        let mut state = self.state();
        let Some(command) = state.commands.get_mut(key) else {
            return 0;
        };
        match result {
            Some(None) => command.list_failures = 0,
            Some(Some(_)) => command.list_failures = command.list_failures.saturating_add(1),
            None => {}
        }
        command.list_failures
    }

    /// Keeps `fresh` answers asked at `asked_at` and wakes the resources whose answer changed
    /// (those with a final answer also count as waiting for their write). Returns whether any
    /// answer changed.
    fn absorb(
        &self,
        key: &CommandKey,
        fresh: Vec<(Step, Result<Invocation, SsmError>)>,
        asked_at: &Time,
    ) -> bool {
        if fresh.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut wake = Vec::new();
        {
            let mut state = self.state();
            let Some(command) = state.commands.get_mut(key) else {
                return false;
            };
            // The steps whose answer changed, and whether the new one is final.
            let mut changed: HashMap<Step, bool> = HashMap::new();
            for (step, result) in fresh {
                let known = command.answers.get(&step).map(|a| &a.result);
                let same = match (known, &result) {
                    // An invocation never leaves a terminal state: a read that says otherwise
                    // (a walk page read before the node finished, beside the Get that saw it
                    // finish) or failed is older news, and the terminal answer stands.
                    (Some(Ok(old)), new) if is_terminal(&old.status) => match new {
                        Ok(new) => old == new || !is_terminal(&new.status),
                        Err(_) => true,
                    },
                    (Some(Ok(old)), Ok(new)) => old == new || only_elapsed_time_ticked(old, new),
                    (Some(old), new) => old == new,
                    (None, _) => false,
                };
                if same {
                    continue;
                }
                let terminal = result.as_ref().is_ok_and(|i| is_terminal(&i.status));
                changed.insert(step.clone(), terminal);
                let answer = Answer {
                    result,
                    asked_at: asked_at.clone(),
                };
                command.answers.insert(step, Arc::new(answer));
            }
            if changed.is_empty() {
                return false;
            }
            let mut finals = Vec::new();
            for (uid, member) in &command.members {
                if let Some(&terminal) = changed.get(&member.step) {
                    wake.push(member.object.clone());
                    if terminal {
                        finals.push(uid.clone());
                    }
                }
            }
            for uid in finals {
                state.finals.entry(uid).or_insert(now);
            }
        }
        self.wake(wake);
        true
    }

    /// Keeps the round's last answers, schedules the next round (`news`: an earlier part of
    /// the round already brought some) and wakes the resources whose answer changed.
    fn keep(
        &self,
        key: &CommandKey,
        fresh: Vec<(Step, Result<Invocation, SsmError>)>,
        asked_at: Time,
        news: bool,
        kind: RoundKind,
    ) {
        let news = self.absorb(key, fresh, &asked_at) || news;
        let now = Instant::now();
        // While the queue delivers, regular rounds come every backstop interval, no slower, so
        // a lost event delays an update by at most that long; up to a fifth sooner (jitter), so
        // that commands tracked together do not all walk, and write, at once.
        let intervals = if self.push_active(now) {
            PollIntervals {
                min: self.backstop.mul_f64(1.0 - BACKSTOP_JITTER),
                max: self.backstop,
            }
        } else {
            self.intervals
        };
        {
            let mut state = self.state();
            let Some(command) = state.commands.get_mut(key) else {
                return;
            };
            let tracked: HashSet<&Step> = command.members.values().map(|m| &m.step).collect();
            command.answers.retain(|step, _| tracked.contains(step));
            // Every step stalled on an outside fix, or already answered with a terminal status
            // (its reconcile only has to write it): nothing to ask SSM soon.
            let only_rare = command.members.values().all(|m| {
                m.rare
                    || command
                        .answers
                        .get(&m.step)
                        .is_some_and(|a| a.result.as_ref().is_ok_and(|i| is_terminal(&i.status)))
            });
            // A hint-only round leaves the regular rounds' clock alone.
            if kind == RoundKind::Regular {
                command.clock.after_round(
                    news,
                    only_rare,
                    intervals,
                    self.recheck,
                    now,
                    fastrand::f64(),
                );
            }
            match kind {
                RoundKind::Gets => command.getting = false,
                RoundKind::Regular | RoundKind::HintWalk => command.walking = false,
            }
        }
        self.changed.notify_one();
    }
}

/// What a round reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoundKind {
    /// Every tracked step, on the command's clock.
    Regular,
    /// The hinted nodes, with one `GetCommandInvocation` each.
    Gets,
    /// The hinted nodes, too many for Gets, with a walk (which answers every step).
    HintWalk,
}

/// What a round asks about, taken when it starts.
struct RoundStart {
    steps: HashSet<Step>,
    /// List, or (while List keeps failing) Get per step.
    use_list: bool,
    /// Nodes hinted at since the last round.
    hinted: HashSet<String>,
}

/// What a List walk found.
struct Walked {
    /// Some answer changed.
    news: bool,
    /// Steps whose node List did not show (or not yet, when the walk failed midway).
    not_listed: Vec<Step>,
    /// Steps only `GetCommandInvocation` can answer.
    unclear: Vec<Step>,
}

/// Takes up to `n` put-off resources to wake, unless final answers are waiting.
fn take_deferred(state: &mut State, n: usize) -> Vec<ObjectRef<CommandInvocation>> {
    if state.deferred.is_empty() {
        state.deferred_order.clear();
        return Vec::new();
    }
    if state.finals_waiting() {
        return Vec::new();
    }
    let mut woken = Vec::new();
    while woken.len() < n {
        let Some(uid) = state.deferred_order.pop_front() else {
            break;
        };
        if !state.deferred.remove(&uid) {
            continue;
        }
        let member = state
            .command_of
            .get(&uid)
            .and_then(|key| state.commands.get(key))
            .and_then(|command| command.members.get(&uid));
        if let Some(member) = member {
            woken.push(member.object.clone());
        }
    }
    woken
}

#[cfg(test)]
mod tests;
