//! The simulated Run Command state: commands, their invocations, and what each plugin
//! timeline says at a given instant.
//!
//! Nothing here moves on its own: every status is computed from the time elapsed since the
//! command was added, so reads need no background task and no write lock.
//!
//! # Aggregation rules
//!
//! An invocation's `Status` is derived from its plugins (document steps):
//! - while any plugin is not terminal: `Cancelling` if any plugin is cancelling, else
//!   `InProgress` if any is in progress, else `Delayed` if any is delayed, else `Pending` if
//!   every plugin is pending, else (some done, some pending) `InProgress`;
//! - once all are terminal: `Failed` if any failed, else `TimedOut` if any timed out, else
//!   `Cancelled` if any was cancelled, else `Success`.
//!
//! `StatusDetails` is that of the first plugin having the chosen status (`In Progress` for
//! the synthesised in-between case). A command's status follows the same rule over its
//! invocations, except that `Delayed` counts as `InProgress` (commands have no `Delayed`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crate::error::ApiError;
use crate::script::{Command, Invocation, Plugin, Status, DEFAULT_PLUGIN};
use crate::sending::Sending;

/// How long a cancelled plugin stays `Cancelling` before it is `Cancelled`.
pub(crate) const CANCEL_DELAY: Duration = Duration::from_secs(1);

/// The plugin name SendCommand and plugin-less invocations use for a document.
pub(crate) fn default_plugin_name(document: &str) -> &'static str {
    if document == "AWS-RunPowerShellScript" {
        "aws:runPowerShellScript"
    } else {
        DEFAULT_PLUGIN
    }
}

/// One invocation with its run-time state.
#[derive(Debug)]
pub(crate) struct InvocationState {
    /// The script: at least one plugin, steps sorted by time.
    pub(crate) spec: Invocation,
    /// When CancelCommand reached it, since the command was added.
    pub(crate) cancelled_at: Option<Duration>,
    /// A target cancelled before it appeared: it never appears.
    pub(crate) withdrawn: bool,
}

/// One command with its invocations and clocks.
#[derive(Debug)]
pub(crate) struct CommandState {
    /// The script (its `invocations` moved to [`CommandState::invocations`]).
    pub(crate) spec: Command,
    /// Monotonic start of every timeline of this command.
    pub(crate) added: Instant,
    /// Wall-clock time of `added`, for timestamps.
    pub(crate) added_wall: SystemTime,
    /// Invocations in the order given.
    pub(crate) invocations: Vec<InvocationState>,
    /// Instance id to position in `invocations`.
    index: HashMap<String, usize>,
    /// Made by SendCommand (subject to ListCommands' lag).
    pub(crate) sent: bool,
    /// When CancelCommand reached the whole command while it was unfinished, since it was
    /// added: once all its invocations are terminal it is `Cancelled`.
    pub(crate) cancelled_at: Option<Duration>,
}

impl CommandState {
    /// Time since the command was added, at `now`.
    pub(crate) fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.added)
    }

    /// Wall-clock time of an offset since the command was added.
    pub(crate) fn wall(&self, offset: Duration) -> SystemTime {
        self.added_wall + offset
    }

    /// The invocation on this instance, visible or not.
    pub(crate) fn invocation(&self, instance_id: &str) -> Option<&InvocationState> {
        self.index.get(instance_id).map(|&i| &self.invocations[i])
    }

    /// Whether SendCommand made it from `Targets`: its invocations count only once
    /// visible, as SSM's target count grows while targets resolve.
    pub(crate) fn by_targets(&self) -> bool {
        !self.spec.targets.is_empty()
    }

    /// The command's aggregate status and counters at `now`.
    pub(crate) fn summary(&self, now: Instant) -> CommandSummary {
        self.summary_at(self.elapsed(now))
    }

    /// The command's aggregate status and counters `elapsed` after it was added.
    ///
    /// A command made from targets counts only its visible invocations; while some are yet
    /// to appear it is not finished (`Pending` if none is visible, at least `InProgress`
    /// otherwise), and one that selected no instance at all is `Success` with no target.
    /// A command cancelled as a whole is `Cancelled` once its invocations are terminal.
    pub(crate) fn summary_at(&self, elapsed: Duration) -> CommandSummary {
        let by_targets = self.by_targets();
        let mut summary = CommandSummary {
            status: Status::Pending,
            target_count: 0,
            completed_count: 0,
            error_count: 0,
            delivery_timed_out_count: 0,
        };
        let mut statuses = Vec::with_capacity(self.invocations.len());
        let mut unresolved = false;
        for inv in &self.invocations {
            if inv.withdrawn {
                continue;
            }
            if by_targets && !inv.visible(elapsed) {
                unresolved = true;
                continue;
            }
            summary.target_count += 1;
            let view = inv.view(elapsed);
            if view.status.is_terminal() {
                summary.completed_count += 1;
            }
            if view.details == "Delivery Timed Out" {
                summary.delivery_timed_out_count += 1;
            } else if matches!(view.status, Status::Failed | Status::TimedOut) {
                summary.error_count += 1;
            }
            statuses.push(match view.status {
                Status::Delayed => Status::InProgress,
                other => other,
            });
        }
        let status = aggregate(statuses.iter().map(|&s| (s, ""))).0;
        summary.status = if statuses.is_empty() && by_targets && !unresolved {
            Status::Success
        } else if unresolved && status.is_terminal() {
            Status::InProgress
        } else {
            status
        };
        let cancelled = self.cancelled_at.is_some_and(|c| elapsed >= c);
        if cancelled && summary.status.is_terminal() {
            summary.status = Status::Cancelled;
        }
        summary
    }
}

/// A command's aggregate status and counters, as ListCommands reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommandSummary {
    /// Aggregate status over the invocations.
    pub(crate) status: Status,
    /// Number of invocations (visible ones, for a command made from targets).
    pub(crate) target_count: usize,
    /// Invocations in a terminal status.
    pub(crate) completed_count: usize,
    /// Invocations Failed or TimedOut, other than delivery time-outs.
    pub(crate) error_count: usize,
    /// Invocations whose details read `Delivery Timed Out`.
    pub(crate) delivery_timed_out_count: usize,
}

/// What one plugin shows at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginView<'a> {
    /// The plugin (step) name.
    pub(crate) name: &'a str,
    /// Its status.
    pub(crate) status: Status,
    /// Its `StatusDetails`.
    pub(crate) details: &'a str,
    /// Its `ResponseCode` (-1 until it finished running).
    pub(crate) response_code: i32,
    /// When it started running, since the command was added.
    pub(crate) started: Option<Duration>,
    /// When it reached its terminal status, since the command was added.
    pub(crate) ended: Option<Duration>,
    /// Full standard output (empty until terminal).
    pub(crate) stdout: &'a str,
    /// Full standard error (empty until terminal).
    pub(crate) stderr: &'a str,
}

/// What one invocation shows at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvocationView<'a> {
    /// Aggregate status (see the module docs).
    pub(crate) status: Status,
    /// Aggregate `StatusDetails`.
    pub(crate) details: &'a str,
    /// Each plugin, in document order.
    pub(crate) plugins: Vec<PluginView<'a>>,
}

impl InvocationState {
    /// A fresh invocation playing this script.
    pub(crate) fn new(spec: Invocation) -> Self {
        InvocationState {
            spec,
            cancelled_at: None,
            withdrawn: false,
        }
    }

    /// Whether the invocation can be seen `elapsed` after the command was added.
    pub(crate) fn visible(&self, elapsed: Duration) -> bool {
        !self.withdrawn && elapsed >= self.spec.hidden_for
    }

    /// The invocation and its plugins `elapsed` after the command was added.
    pub(crate) fn view(&self, elapsed: Duration) -> InvocationView<'_> {
        let plugins: Vec<PluginView<'_>> = self
            .spec
            .plugins
            .iter()
            .map(|p| plugin_view(p, self.cancelled_at, elapsed))
            .collect();
        let (status, details) = aggregate(plugins.iter().map(|p| (p.status, p.details)));
        InvocationView {
            status,
            details,
            plugins,
        }
    }
}

/// A plugin `elapsed` after the command was added, given when (if ever) it was cancelled.
pub(crate) fn plugin_view(
    plugin: &Plugin,
    cancelled_at: Option<Duration>,
    elapsed: Duration,
) -> PluginView<'_> {
    if let Some(cancel) = cancelled_at.filter(|&c| elapsed >= c) {
        let at_cancel = scripted_view(plugin, cancel);
        if !at_cancel.status.is_terminal() {
            let done = elapsed >= cancel + CANCEL_DELAY;
            let status = if done {
                Status::Cancelled
            } else {
                Status::Cancelling
            };
            return PluginView {
                name: &plugin.name,
                status,
                details: status.default_details(),
                response_code: -1,
                started: at_cancel.started,
                ended: done.then_some(cancel + CANCEL_DELAY),
                stdout: "",
                stderr: "",
            };
        }
    }
    scripted_view(plugin, elapsed)
}

/// A plugin as its script alone says, `elapsed` after the command was added.
///
/// It started at its first `InProgress` step, or, if it went straight to a terminal status
/// with a response code other than -1, at that step; a plugin that never ran (e.g.
/// Undeliverable) has no start. It ended at its terminal step.
fn scripted_view(plugin: &Plugin, elapsed: Duration) -> PluginView<'_> {
    let reached = plugin.steps.partition_point(|s| s.after <= elapsed);
    let Some(current) = reached.checked_sub(1).map(|i| &plugin.steps[i]) else {
        return PluginView {
            name: &plugin.name,
            status: Status::Pending,
            details: Status::Pending.default_details(),
            response_code: -1,
            started: None,
            ended: None,
            stdout: "",
            stderr: "",
        };
    };
    let terminal = current.status.is_terminal();
    let started = plugin.steps[..reached]
        .iter()
        .find(|s| s.status == Status::InProgress)
        .map(|s| s.after)
        .or_else(|| (terminal && current.response_code() != -1).then_some(current.after));
    PluginView {
        name: &plugin.name,
        status: current.status,
        details: current.details(),
        response_code: current.response_code(),
        started,
        ended: terminal.then_some(current.after),
        stdout: if terminal { &plugin.stdout } else { "" },
        stderr: if terminal { &plugin.stderr } else { "" },
    }
}

/// Combines statuses (with their details) by the rule in the module docs.
fn aggregate<'a>(parts: impl Iterator<Item = (Status, &'a str)> + Clone) -> (Status, &'a str) {
    let first = |wanted: Status| parts.clone().find(|(s, _)| *s == wanted);
    if parts.clone().any(|(s, _)| !s.is_terminal()) {
        for wanted in [Status::Cancelling, Status::InProgress, Status::Delayed] {
            if let Some(found) = first(wanted) {
                return found;
            }
        }
        if parts.clone().all(|(s, _)| s == Status::Pending) {
            return first(Status::Pending).unwrap_or((Status::Pending, "Pending"));
        }
        return (Status::InProgress, Status::InProgress.default_details());
    }
    for wanted in [Status::Failed, Status::TimedOut, Status::Cancelled] {
        if let Some(found) = first(wanted) {
            return found;
        }
    }
    first(Status::Success).unwrap_or((Status::Pending, "Pending"))
}

/// Every command, indexed for O(1) lookups by id and by instance.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Commands in the order added (a replaced command keeps its slot).
    commands: Vec<CommandState>,
    /// Command id to slot.
    by_id: HashMap<String, usize>,
    /// Instance id to (command slot, invocation position), in the order added.
    by_instance: HashMap<String, Vec<(usize, usize)>>,
    /// SendCommand's set-up and records.
    pub(crate) sending: Sending,
}

impl Store {
    /// Adds a command whose timelines start at `now` / `wall`. Plugin-less invocations get
    /// the default timeline, plugins named `""` the document's step name; a repeated
    /// instance keeps its last script. A command with an id already present replaces it
    /// (which costs a pass over the instance index).
    pub(crate) fn add(&mut self, command: Command, now: Instant, wall: SystemTime) {
        self.insert(command, now, wall, false);
    }

    /// Adds a command made by SendCommand, like [`Store::add`].
    pub(crate) fn add_sent(&mut self, command: Command, now: Instant, wall: SystemTime) {
        self.insert(command, now, wall, true);
    }

    fn insert(&mut self, mut command: Command, now: Instant, wall: SystemTime, sent: bool) {
        let plugin_name = default_plugin_name(&command.document_name);
        let mut invocations: Vec<InvocationState> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for mut spec in std::mem::take(&mut command.invocations) {
            if spec.plugins.is_empty() {
                spec.plugins
                    .push(Plugin::default_for(plugin_name, &spec.instance_id));
            }
            for plugin in &mut spec.plugins {
                plugin.steps.sort_by_key(|s| s.after);
                if plugin.name.is_empty() {
                    plugin.name = plugin_name.to_string();
                }
            }
            let state = InvocationState::new(spec);
            match index.get(&state.spec.instance_id) {
                Some(&i) => invocations[i] = state,
                None => {
                    index.insert(state.spec.instance_id.clone(), invocations.len());
                    invocations.push(state);
                }
            }
        }
        let state = CommandState {
            spec: command,
            added: now,
            added_wall: wall,
            invocations,
            index,
            sent,
            cancelled_at: None,
        };
        match self.by_id.get(&state.spec.command_id) {
            Some(&slot) => {
                self.commands[slot] = state;
                self.rebuild_instance_index();
            }
            None => {
                let slot = self.commands.len();
                self.by_id.insert(state.spec.command_id.clone(), slot);
                self.index_instances(slot, &state);
                self.commands.push(state);
            }
        }
    }

    fn index_instances(&mut self, slot: usize, state: &CommandState) {
        for (position, inv) in state.invocations.iter().enumerate() {
            self.by_instance
                .entry(inv.spec.instance_id.clone())
                .or_default()
                .push((slot, position));
        }
    }

    fn rebuild_instance_index(&mut self) {
        let mut by_instance: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (slot, state) in self.commands.iter().enumerate() {
            for (position, inv) in state.invocations.iter().enumerate() {
                by_instance
                    .entry(inv.spec.instance_id.clone())
                    .or_default()
                    .push((slot, position));
            }
        }
        self.by_instance = by_instance;
    }

    /// The command with this id.
    pub(crate) fn command(&self, command_id: &str) -> Option<&CommandState> {
        self.by_id.get(command_id).map(|&slot| &self.commands[slot])
    }

    /// The slot of the command with this id.
    pub(crate) fn slot(&self, command_id: &str) -> Option<usize> {
        self.by_id.get(command_id).copied()
    }

    /// The command in a slot.
    pub(crate) fn command_at(&self, slot: usize) -> Option<&CommandState> {
        self.commands.get(slot)
    }

    /// Number of command slots.
    pub(crate) fn command_count(&self) -> usize {
        self.commands.len()
    }

    /// The (command slot, invocation position) pairs of an instance, in the order added.
    pub(crate) fn instance_entries(&self, instance_id: &str) -> &[(usize, usize)] {
        self.by_instance
            .get(instance_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Cancels the non-terminal invocations of a command (all, or those on `instance_ids`):
    /// they turn `Cancelling` now and `Cancelled` one second later. Already terminal ones
    /// and ones cancelled before are left alone. Cancelling a whole unfinished command makes
    /// it `Cancelled` in the end, and the targets that have not appeared yet never appear.
    pub(crate) fn cancel(
        &mut self,
        command_id: &str,
        instance_ids: &[String],
        now: Instant,
    ) -> Result<(), ApiError> {
        let slot = self
            .slot(command_id)
            .ok_or_else(|| ApiError::new("InvalidCommandId", "The command ID is not valid"))?;
        let command = &mut self.commands[slot];
        let elapsed = command.elapsed(now);
        let mut positions = Vec::new();
        if instance_ids.is_empty() {
            if command.cancelled_at.is_none() && !command.summary_at(elapsed).status.is_terminal() {
                command.cancelled_at = Some(elapsed);
                if command.by_targets() {
                    for inv in &mut command.invocations {
                        inv.withdrawn |= !inv.visible(elapsed);
                    }
                }
            }
            positions.extend(0..command.invocations.len());
        } else {
            for id in instance_ids {
                let position = command.index.get(id).copied().ok_or_else(|| {
                    ApiError::new(
                        "InvalidInstanceId",
                        format!("Instance {id} is not a target of command {command_id}"),
                    )
                })?;
                positions.push(position);
            }
        }
        for position in positions {
            let inv = &mut command.invocations[position];
            if inv.cancelled_at.is_none() && !inv.view(elapsed).status.is_terminal() {
                inv.cancelled_at = Some(elapsed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn one(plugin: Plugin) -> InvocationState {
        InvocationState::new(Invocation::new("i-1").plugin(plugin))
    }

    #[test]
    fn plugin_timeline_progresses() {
        let inv = one(Plugin::succeeding("p", ms(200)).stdout("out"));
        let at = |t| inv.view(ms(t)).plugins[0].clone();
        assert_eq!(at(0).status, Status::Pending);
        assert_eq!(at(0).response_code, -1);
        assert_eq!(at(100).status, Status::InProgress);
        assert_eq!(at(100).details, "In Progress");
        assert_eq!(at(100).started, Some(ms(100)));
        assert_eq!(at(100).stdout, "");
        let done = at(250);
        assert_eq!(
            (done.status, done.response_code, done.ended, done.stdout),
            (Status::Success, 0, Some(ms(200)), "out")
        );
    }

    #[test]
    fn fleet_builders_cap_the_start_at_the_end() {
        let inv = one(Plugin::succeeding_at("p", ms(300), ms(200)));
        assert_eq!(inv.view(ms(100)).status, Status::Pending);
        let done = inv.view(ms(400));
        assert_eq!(done.status, Status::Success);
        assert_eq!(done.plugins[0].started, Some(ms(200)));
        let inv = one(Plugin::failing_at("p", ms(50), ms(200), 3));
        assert_eq!(inv.view(ms(100)).status, Status::InProgress);
        let failed = inv.view(ms(200)).plugins[0].clone();
        assert_eq!(
            (failed.status, failed.details, failed.response_code),
            (Status::Failed, "Failed", 3)
        );
    }

    #[test]
    fn undelivered_plugin_never_starts() {
        let inv = one(Plugin::new("p").step_with(ms(10), Status::Failed, "Undeliverable", -1));
        let view = inv.view(ms(20));
        assert_eq!(view.status, Status::Failed);
        assert_eq!(view.details, "Undeliverable");
        assert_eq!(view.plugins[0].started, None);
        assert_eq!(view.plugins[0].response_code, -1);
    }

    #[test]
    fn cancel_overrides_running_plugins_only() {
        let mut inv = InvocationState::new(
            Invocation::new("i-1")
                .plugin(Plugin::succeeding("a", ms(100)))
                .plugin(Plugin::succeeding("b", ms(10_000))),
        );
        inv.cancelled_at = Some(ms(500));
        let view = inv.view(ms(600));
        assert_eq!(view.status, Status::Cancelling);
        assert_eq!(view.plugins[0].status, Status::Success);
        assert_eq!(view.plugins[1].status, Status::Cancelling);
        let view = inv.view(ms(1600));
        assert_eq!(view.status, Status::Cancelled);
        assert_eq!(view.plugins[1].ended, Some(ms(1500)));
        assert_eq!(view.plugins[1].started, None);
    }

    #[test]
    fn aggregation_rule() {
        let inv = InvocationState::new(
            Invocation::new("i-1")
                .plugin(Plugin::succeeding("a", ms(100)))
                .plugin(Plugin::new("b").step(ms(300), Status::Failed))
                .plugin(Plugin::new("c").step(ms(200), Status::TimedOut)),
        );
        assert_eq!(inv.view(ms(0)).status, Status::Pending);
        assert_eq!(inv.view(ms(60)).status, Status::InProgress);
        // a done, b and c pending: still running.
        let mid = inv.view(ms(150));
        assert_eq!(
            (mid.status, mid.details),
            (Status::InProgress, "In Progress")
        );
        assert_eq!(inv.view(ms(400)).status, Status::Failed);
    }

    #[test]
    fn store_indexes_and_cancels() {
        let mut store = Store::default();
        let now = Instant::now();
        store.add(
            Command::new("c1")
                .invocation(Invocation::new("i-1"))
                .invocation(Invocation::new("i-2")),
            now,
            SystemTime::now(),
        );
        store.add(
            Command::new("c2").invocation(Invocation::new("i-1")),
            now,
            SystemTime::now(),
        );
        assert_eq!(store.instance_entries("i-1"), &[(0, 0), (1, 0)]);
        let c1 = store.command("c1").unwrap();
        let plugin = &c1.invocation("i-2").unwrap().spec.plugins[0];
        assert_eq!(plugin.name, "aws:runShellScript");
        assert_eq!(plugin.stdout, "hello from i-2\n");
        assert!(store.cancel("nope", &[], now).is_err());
        assert!(store.cancel("c1", &["i-9".to_string()], now).is_err());
        store.cancel("c1", &["i-2".to_string()], now).unwrap();
        let c1 = store.command("c1").unwrap();
        assert_eq!(
            c1.invocation("i-2").unwrap().view(ms(10)).status,
            Status::Cancelling
        );
        assert_eq!(
            c1.invocation("i-1").unwrap().view(ms(10)).status,
            Status::Pending
        );
        let summary = c1.summary(now + ms(5000));
        assert_eq!(summary.status, Status::Cancelled);
        assert_eq!(summary.completed_count, 2);
        // Replacing keeps the slot and reindexes.
        store.add(
            Command::new("c1").invocation(Invocation::new("i-3")),
            now,
            SystemTime::now(),
        );
        assert_eq!(store.instance_entries("i-1"), &[(1, 0)]);
        assert_eq!(store.instance_entries("i-3"), &[(0, 0)]);
    }
}
