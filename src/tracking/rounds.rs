//! The tracker's rounds: the loop that starts each command's rounds as they fall due, asks
//! SSM, keeps the answers and wakes the resources whose answer changed. Only this part of
//! the tracker calls SSM.
//!
//! It must never hold the state lock across an `.await` (the reconcilers' calls take it too,
//! and a reconcile never waits on SSM), and never writes a status: that is the reconciles'.
//!
//! Each command gets rounds on its own [`RoundClock`](crate::tracking::schedule::RoundClock):
//! one `ListCommandInvocations` walk (details, 50 per page) answers every tracked step of the
//! command; `GetCommandInvocation` is asked only for what List cannot answer
//! ([`batch::from_list`]). Every call takes a token from the process-wide SSM budget (in
//! [`Ssm`](crate::aws::ssm::Ssm)).
//!
//! If List keeps failing (an endpoint or IAM policy without it), rounds fall back to one
//! `GetCommandInvocation` per step and try List again now and then.
//!
//! A step tracked without a name on a multi-step invocation is the invocation as a whole,
//! which `GetCommandInvocation` cannot read (SSM refuses a missing step name there): it is
//! never sent to Get without a name. Where a Get would read such a node (a new resource, a
//! hint, a node a walk did not list, the per-step fallback), one node's listing
//! (`ListCommandInvocations` with `InstanceId`, one call like a Get) reads it instead; a
//! command is known to be multi-step once a listing showed several steps, or once SSM refused
//! a Get without a step name (then that node is read from its listing at once). While List
//! keeps failing such steps therefore show List's error: nothing else can read them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinSet;
use tracing::debug;

use crate::aws::budget::{self, Share};
use crate::aws::ssm::is_terminal;
use crate::aws::ssm::{Invocation, InvocationKey, SsmError};
use crate::invocation::status::only_elapsed_time_ticked;
use crate::tracking::entries::{self as batch, with_output_of, FromList, Why};
use crate::tracking::heard::KEEP;
use crate::tracking::plan::{plan, RoundFacts, RoundKind, RoundPlan};
use crate::tracking::schedule::PollIntervals;
use crate::tracking::tracker::{Answer, CommandKey, Step, Tracker, EVENT_GRACE};

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

impl Tracker {
    /// Runs rounds as they fall due, until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut rounds = JoinSet::new();
        loop {
            let now = Instant::now();
            let (due, next) = self.start_due(now);
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

    /// Marks the rounds due at `now` as running; returns them (and their kind) and the next
    /// due time. A command runs at most one walk and one round of Gets at once: which round
    /// starts is [`plan`]'s choice, applied here.
    fn start_due(&self, now: Instant) -> (Vec<(CommandKey, RoundKind)>, Option<Instant>) {
        let mut state = self.state();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, command) in state.commands.iter_mut() {
            let facts = RoundFacts {
                walking: command.walking,
                getting: command.getting,
                regular_due: command.clock.due,
                hint_due: command.hint_due,
                hinted: command.hinted.len(),
                walk_cost: command.walk_cost(),
            };
            match plan(&facts, now) {
                RoundPlan::Start(kind) => {
                    match kind {
                        RoundKind::Regular => {
                            // The round asks about every step, hinted ones included.
                            command.walking = true;
                            command.hint_due = None;
                        }
                        RoundKind::Gets => command.getting = true,
                        RoundKind::HintWalk => command.walking = true,
                    }
                    command.rounds = command.rounds.wrapping_add(1);
                    due.push((key.clone(), kind));
                }
                RoundPlan::Wait(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                RoundPlan::Wait(None) => {}
            }
        }
        (due, next)
    }

    /// What a round of `key` asks about: the steps tracked now (which answer every hurry so
    /// far, for a regular round), and the hinted nodes, taken. `None`: the command is gone.
    fn take_round(&self, key: &CommandKey, kind: RoundKind) -> Option<RoundStart> {
        let mut state = self.state();
        let command = state.commands.get_mut(key)?;
        let hinted = std::mem::take(&mut command.hinted);
        // A round of Gets reads the hinted nodes' steps only; a walk answers every step.
        let steps: HashSet<Step> = command
            .members
            .values()
            .filter(|m| kind != RoundKind::Gets || hinted.contains(&m.step.instance_id))
            .map(|m| m.step.clone())
            .collect();
        // Hinted nodes no resource tracks: read ahead, for the resources to come.
        let tracked: HashSet<&str> = steps.iter().map(|s| s.instance_id.as_str()).collect();
        let ahead: HashSet<String> = hinted
            .iter()
            .filter(|node| !tracked.contains(node.as_str()) && !command.had.contains(*node))
            .cloned()
            .collect();
        command.reading_ahead.extend(ahead.iter().cloned());
        if kind == RoundKind::Regular {
            command.clock.start();
        }
        let use_list = command.list_failures < LIST_FAILURES_TOLERATED
            || command.rounds % LIST_RETRY_EVERY == 0;
        command.hint_due = None;
        // Whose budget share the round's calls count against: the namespace of the role it
        // asks with, else the first of its members' namespaces (by name, so always the same).
        let share = match &key.role {
            Some(role) => role.namespace.as_str(),
            None => command
                .members
                .values()
                .filter_map(|m| m.object.namespace.as_deref())
                .min()
                .unwrap_or_default(),
        };
        Some(RoundStart {
            steps,
            use_list,
            hinted,
            ahead,
            share: Arc::from(share),
        })
    }

    /// One round of one command, its SSM calls in its namespace's share of the budget.
    async fn round(self: Arc<Self>, key: CommandKey, kind: RoundKind) {
        let Some(start) = self.take_round(&key, kind) else {
            return;
        };
        budget::in_share(start.share.clone(), self.ask(key, kind, start)).await;
    }

    /// Asks SSM, keeps the answers, wakes whose answer changed. A round that is not regular
    /// reads the hinted nodes (a walk answers the others too).
    async fn ask(&self, key: CommandKey, kind: RoundKind, start: RoundStart) {
        let RoundStart {
            steps,
            use_list,
            hinted,
            ahead,
            share: _,
        } = start;
        let hinted: Vec<Step> = steps
            .iter()
            .filter(|s| hinted.contains(&s.instance_id))
            .cloned()
            .collect();
        if kind == RoundKind::Gets || (kind == RoundKind::HintWalk && !use_list) {
            // No more hinted nodes than pages in a walk: one Get each is the cheapest read
            // (and the only one while List keeps failing).
            let asked_at = Time(Timestamp::now());
            let wholes = ahead.iter().map(|node| Step {
                instance_id: node.clone(),
                plugin_name: None,
            });
            let (read_ahead, fresh): (Vec<_>, Vec<_>) = self
                .get_each(&key, hinted.into_iter().chain(wholes).collect())
                .await
                .into_iter()
                .partition(|(step, _)| ahead.contains(&step.instance_id));
            self.keep_ahead(&key, read_ahead, &asked_at);
            self.done_ahead(&key, &ahead);
            self.keep(&key, fresh, asked_at, false, 0, kind);
            return;
        }
        let mut fresh: Vec<(Step, Result<Invocation, SsmError>)> = Vec::new();
        let mut gets: Vec<Step> = Vec::new();
        let mut list_result = None;
        let mut news = false;
        let mut missed = 0;
        // The steps no answer reached yet (a walk that failed midway answered some).
        let mut unanswered: Vec<Step> = steps.iter().cloned().collect();
        if use_list {
            let (walked, error) = self.walk(&key, &steps, &ahead).await;
            news = walked.news;
            missed = walked.missed;
            fresh.extend(self.complete_outputs(&key, walked.outputs).await);
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
        self.done_ahead(&key, &ahead);
        let more_left = gets.len() > MAX_GETS_PER_ROUND;
        gets.truncate(MAX_GETS_PER_ROUND);
        let asked_at = Time(Timestamp::now());
        fresh.extend(self.get_each(&key, gets).await);
        self.keep(&key, fresh, asked_at, news || more_left, missed, kind);
    }

    /// Walks every page of the command, keeping each page's answers as it arrives (a node
    /// that finished is woken without waiting for the rest of the walk). A page that fails
    /// ends the walk with that error; what earlier pages answered stays answered. Counts the
    /// ends it found that no event announced.
    ///
    /// The walk looks for the nodes to read `ahead` too (hinted, no resource yet), and keeps
    /// the final answers of the untracked nodes on the pages it reads anyway, while the
    /// command reads ahead (`plan::reads_ahead`): a fleet's resources keep arriving, many
    /// after their node ended, and then find their answer without a call.
    async fn walk(
        &self,
        key: &CommandKey,
        steps: &HashSet<Step>,
        ahead: &HashSet<String>,
    ) -> (Walked, Option<SsmError>) {
        let mut wanted: HashMap<&str, Vec<&Step>> = HashMap::new();
        for step in steps {
            wanted.entry(&step.instance_id).or_default().push(step);
        }
        let tracked: HashSet<&str> = wanted.keys().copied().collect();
        let mut sought: HashSet<&str> = ahead.iter().map(String::as_str).collect();
        // Whether it keeps untracked nodes' answers.
        let harvest = self
            .state()
            .commands
            .get(key)
            .is_some_and(|c| c.reads_ahead());
        let mut news = false;
        let mut missed = 0;
        let mut unclear = Vec::new();
        let mut outputs = Vec::new();
        let mut multi_step = false;
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
            let mut found_ahead = Vec::new();
            let new_to_keep = self.new_to_keep(key, &page.invocations, &tracked, harvest);
            for listed in &page.invocations {
                let node = listed.instance_id.as_str();
                if !tracked.contains(node) && (sought.remove(node) || new_to_keep.contains(node)) {
                    match batch::from_list(Some(listed), None) {
                        FromList::Answer(invocation) if is_terminal(&invocation.status) => {
                            let whole = Step {
                                instance_id: listed.instance_id.clone(),
                                plugin_name: None,
                            };
                            found_ahead.push((whole, Ok(*invocation)));
                        }
                        _ => {}
                    }
                    continue;
                }
                for step in wanted.remove(node).unwrap_or_default() {
                    multi_step |= step.plugin_name.is_none() && listed.plugins.len() > 1;
                    match batch::from_list(Some(listed), step.plugin_name.as_deref()) {
                        FromList::Answer(invocation) => {
                            answered.push((step.clone(), Ok(*invocation)))
                        }
                        FromList::OutputFromGet { answer, step: name } => {
                            outputs.push((step.clone(), *answer, name))
                        }
                        FromList::NeedsGet(_) => unclear.push(step.clone()),
                    }
                }
            }
            pages += 1;
            self.keep_ahead(key, found_ahead, &asked_at);
            let absorbed = self.absorb(key, answered, &asked_at, true);
            news |= absorbed.news;
            missed += absorbed.missed;
            token = page.next_token.filter(|t| !t.is_empty());
            if token.is_none() || (wanted.is_empty() && sought.is_empty()) {
                break;
            }
        }
        if let Some(command) = self.state().commands.get_mut(key) {
            command.walk_pages = command.walk_pages.max(pages);
            command.multi_step |= multi_step;
        }
        let not_listed = wanted.into_values().flatten().cloned().collect();
        let walked = Walked {
            news,
            missed,
            not_listed,
            unclear,
            outputs,
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

    /// Reads one step: `GetCommandInvocation`, except for a step without a name on a
    /// multi-step command, which only List can read ([`Tracker::read_whole`]).
    async fn get(&self, key: &CommandKey, step: &Step) -> Result<Invocation, SsmError> {
        let whole = step.plugin_name.is_none();
        if whole && self.is_multi_step(key) {
            return self.read_whole(key, step).await;
        }
        let answer = self.get_step(key, step, step.plugin_name.clone()).await;
        if whole && matches!(answer, Err(SsmError::InvalidPluginName(_))) {
            // SSM wants a step name: the document has several steps, and the resource names
            // none. Not an error: the invocation as a whole is read from List.
            if let Some(command) = self.state().commands.get_mut(key) {
                command.multi_step = true;
            }
            return self.read_whole(key, step).await;
        }
        answer
    }

    /// `GetCommandInvocation` for `step`'s node, naming `plugin_name`.
    async fn get_step(
        &self,
        key: &CommandKey,
        step: &Step,
        plugin_name: Option<String>,
    ) -> Result<Invocation, SsmError> {
        self.ssm
            .invocation(&InvocationKey {
                region: key.region.clone(),
                command_id: key.command_id.clone(),
                instance_id: step.instance_id.clone(),
                plugin_name,
                role: key.role.clone(),
            })
            .await
    }

    fn is_multi_step(&self, key: &CommandKey) -> bool {
        self.state().commands.get(key).is_some_and(|c| c.multi_step)
    }

    /// A step without a name on a multi-step command, read from its node's listing (one
    /// call, like a Get). A node not listed has no invocation to show yet
    /// (`InvocationDoesNotExist`, as a Get would say); one step only, or none listed: the
    /// Get without a name answers as before.
    async fn read_whole(&self, key: &CommandKey, step: &Step) -> Result<Invocation, SsmError> {
        let page = self
            .ssm
            .list_node(&key.region, &key.role, &key.command_id, &step.instance_id)
            .await?;
        let listed = page
            .invocations
            .iter()
            .find(|l| l.instance_id == step.instance_id);
        match batch::from_list(listed, None) {
            FromList::Answer(answer) => Ok(*answer),
            FromList::OutputFromGet { answer, step: name } => self
                .get_step(key, step, Some(name))
                .await
                .map(|full| with_output_of(*answer, &full)),
            FromList::NeedsGet(Why::NotListed) => Err(SsmError::InvocationDoesNotExist(format!(
                "ListCommandInvocations does not list node {} of command {} (yet)",
                step.instance_id, key.command_id
            ))),
            FromList::NeedsGet(Why::StepUnclear | Why::OutputCut) => {
                self.get_step(key, step, None).await
            }
        }
    }

    /// Multi-step invocations answered as a whole whose deciding step's output List may have
    /// cut: one `GetCommandInvocation` naming that step each reads the full output.
    async fn complete_outputs(
        &self,
        key: &CommandKey,
        outputs: Vec<(Step, Invocation, String)>,
    ) -> Vec<(Step, Result<Invocation, SsmError>)> {
        futures::stream::iter(outputs)
            .map(|(step, answer, name)| async move {
                let full = self.get_step(key, &step, Some(name)).await;
                (step, full.map(|full| with_output_of(answer, &full)))
            })
            .buffer_unordered(GETS_IN_FLIGHT)
            .collect()
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

    /// The nodes of a walk's page whose answers it keeps for resources to come (if final): not
    /// tracked, never had a resource, not kept already.
    fn new_to_keep<'a>(
        &self,
        key: &CommandKey,
        listed: &'a [crate::aws::ssm::Listed],
        tracked: &HashSet<&str>,
        harvest: bool,
    ) -> HashSet<&'a str> {
        if !harvest {
            return HashSet::new();
        }
        let state = self.state();
        let Some(command) = state.commands.get(key) else {
            return HashSet::new();
        };
        listed
            .iter()
            .map(|l| l.instance_id.as_str())
            .filter(|node| {
                !tracked.contains(node)
                    && !command.had.contains(*node)
                    && !command.unclaimed.contains_key(*node)
            })
            .collect()
    }

    /// Keeps the answers read ahead for nodes no resource tracked when the round started: a
    /// final one waits for its resource (`TrackedCommand::keep_unclaimed`); one whose
    /// resource came meanwhile is its answer.
    fn keep_ahead(
        &self,
        key: &CommandKey,
        fresh: Vec<(Step, Result<Invocation, SsmError>)>,
        asked_at: &Time,
    ) {
        if fresh.is_empty() {
            return;
        }
        let now = Instant::now();
        let claimed = {
            let mut state = self.state();
            let Some(command) = state.commands.get_mut(key) else {
                return;
            };
            let tracked: HashSet<&Step> = command.members.values().map(|m| &m.step).collect();
            let (claimed, untracked): (Vec<_>, Vec<_>) = fresh
                .into_iter()
                .partition(|(step, _)| tracked.contains(step));
            for (step, result) in untracked {
                let answer = Answer {
                    result,
                    asked_at: asked_at.clone(),
                };
                command.keep_unclaimed(step.instance_id, answer, now);
            }
            claimed
        };
        self.absorb(key, claimed, asked_at, false);
    }

    /// The round that read `ahead` is done with them. A node whose resource came during the
    /// read (and so waited for it) but has no final answer from it is read again: its end
    /// event has come already.
    fn done_ahead(&self, key: &CommandKey, ahead: &HashSet<String>) {
        if ahead.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        let Some(command) = state.commands.get_mut(key) else {
            return;
        };
        command.reading_ahead.retain(|node| !ahead.contains(node));
        // Not answered: tracked now (an untracked node counts as answered), without a final
        // answer.
        let unanswered: Vec<String> = ahead
            .iter()
            .filter(|node| !command.node_answered(node))
            .cloned()
            .collect();
        for node in &unanswered {
            command.hint(node, now);
        }
        drop(state);
        if !unanswered.is_empty() {
            self.changed.notify_one();
        }
    }

    /// Keeps `fresh` answers asked at `asked_at` and wakes the resources whose answer changed.
    /// Returns whether any answer changed, and, for a walk, how many ends it found that no
    /// event announced in time ([`EVENT_GRACE`]; an announced end is its member's `end_heard`).
    fn absorb(
        &self,
        key: &CommandKey,
        fresh: Vec<(Step, Result<Invocation, SsmError>)>,
        asked_at: &Time,
        walk: bool,
    ) -> Absorbed {
        let nothing = Absorbed {
            news: false,
            missed: 0,
        };
        if fresh.is_empty() {
            return nothing;
        }
        let mut wake = Vec::new();
        let mut missed = 0;
        {
            let mut state = self.state();
            let Some(command) = state.commands.get_mut(key) else {
                return nothing;
            };
            // The steps whose answer changed.
            let mut changed: HashSet<Step> = HashSet::new();
            // Of those, the ends found by a walk that no event announced in time, and whether
            // the step was followed while it ran (else: only if its resource awaits an event).
            let mut unannounced: HashMap<Step, bool> = HashMap::new();
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
                if let (true, Ok(new)) = (walk, &result) {
                    if terminal && ended_before(new, asked_at, EVENT_GRACE) {
                        let followed = matches!(known, Some(Ok(old)) if !is_terminal(&old.status));
                        unannounced.insert(step.clone(), followed);
                    }
                }
                changed.insert(step.clone());
                let answer = Answer {
                    result,
                    asked_at: asked_at.clone(),
                };
                command.answers.insert(step, Arc::new(answer));
            }
            if changed.is_empty() {
                return nothing;
            }
            for member in command.members.values() {
                if let Some(followed) = unannounced.remove(&member.step) {
                    if (followed || member.awaits_event()) && !member.end_heard {
                        missed += 1;
                    }
                }
                if changed.contains(&member.step) {
                    wake.push(member.object.clone());
                }
            }
        }
        self.wake(wake);
        Absorbed { news: true, missed }
    }

    /// Keeps the round's last answers, schedules the next round (`news`: an earlier part of
    /// the round already brought some) and wakes the resources whose answer changed.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        key: &CommandKey,
        fresh: Vec<(Step, Result<Invocation, SsmError>)>,
        asked_at: Time,
        news: bool,
        missed: usize,
        kind: RoundKind,
    ) {
        let news = self.absorb(key, fresh, &asked_at, false).news || news;
        let now = Instant::now();
        self.events_lost(missed, now);
        // While the queue delivers (and has not been seen to lose events), regular rounds back
        // off from the first interval up to the backstop, and only a lost event counts as news
        // (the events bring the rest); so a lost event delays an update by at most the
        // backstop, and a queue seen losing events brings rounds back to the polling backoff.
        let push = self.push_active(now) && !self.push_lossy(now);
        let (intervals, news) = if push {
            let intervals = PollIntervals {
                min: self.intervals.min.min(self.backstop),
                max: self.backstop,
            };
            (intervals, missed > 0)
        } else {
            (self.intervals, news)
        };
        {
            let mut state = self.state();
            let Some(command) = state.commands.get_mut(key) else {
                return;
            };
            // A hint-only round leaves the regular rounds' clock alone (and the per-step
            // housekeeping to the regular rounds: they come at least every backstop).
            if kind == RoundKind::Regular {
                let tracked: HashSet<&Step> = command.members.values().map(|m| &m.step).collect();
                command.answers.retain(|step, _| tracked.contains(step));
                command
                    .unclaimed
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < KEEP);
                // Every step stalled on an outside fix, or already answered with a terminal
                // status (its reconcile only has to write it): nothing to ask SSM soon.
                let only_rare = command
                    .members
                    .values()
                    .all(|m| m.rare || command.answers.get(&m.step).is_some_and(|a| a.is_final()));
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

/// What a round asks about, taken when it starts.
struct RoundStart {
    steps: HashSet<Step>,
    /// List, or (while List keeps failing) Get per step.
    use_list: bool,
    /// Nodes hinted at since the last round.
    hinted: HashSet<String>,
    /// Of those, the nodes no resource tracks: read ahead.
    ahead: HashSet<String>,
    /// The budget share its calls count against (see [`budget::in_share`]).
    share: Share,
}

/// What [`Tracker::absorb`] found.
struct Absorbed {
    /// Some answer changed.
    news: bool,
    /// Ends found by a walk that no event announced in time.
    missed: usize,
}

/// Whether `answer` says its node ended more than `grace` before `asked_at` (an event would
/// have announced it by then). An end time SSM did not give, or that does not parse, is not.
fn ended_before(answer: &Invocation, asked_at: &Time, grace: Duration) -> bool {
    answer
        .execution_end_date_time
        .parse::<Timestamp>()
        .ok()
        .and_then(|end| Duration::try_from(asked_at.0.duration_since(end)).ok())
        .is_some_and(|age| age > grace)
}

/// What a List walk found.
struct Walked {
    /// Some answer changed.
    news: bool,
    /// Ends it found that no event announced in time.
    missed: usize,
    /// Steps whose node List did not show (or not yet, when the walk failed midway).
    not_listed: Vec<Step>,
    /// Steps only `GetCommandInvocation` can answer.
    unclear: Vec<Step>,
    /// Multi-step invocations answered as a whole whose deciding step's output (named) is
    /// read from `GetCommandInvocation`.
    outputs: Vec<(Step, Invocation, String)>,
}

#[cfg(test)]
mod tests;
