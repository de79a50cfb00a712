//! The SendCommand side of [`Simulator`]: scripts for the commands SendCommand makes, tag
//! targets, refused documents, SendCommand's own faults, ListCommands' lag, the records of
//! sends and cancels, and loading a whole [`Scenario`].

use std::sync::{PoisonError, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::model::Store;
use crate::scenario::Scenario;
use crate::script::{Invocation, Plugin};
use crate::sending::{SendFault, Sent};
use crate::Simulator;

impl Simulator {
    fn store_read(&self) -> RwLockReadGuard<'_, Store> {
        self.shared()
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.shared()
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Commands made by SendCommand from now on give `script`'s instance that script (its
    /// plugins, [`Invocation::hidden_for`] and [`Invocation::always_error`]) instead of the
    /// default timeline, e.g. "fails with exit code 3 and stderr X":
    /// `Invocation::new("i-1").plugin(Plugin::failing_at("", d / 2, d, 3).stderr("X"))`.
    /// Times count from the command's creation (for a target, from when the instance
    /// appears); a plugin named `""` takes the document's step name (`aws:runShellScript`,
    /// or `aws:runPowerShellScript` for `AWS-RunPowerShellScript`). Scripting an instance
    /// again replaces its script; commands already made keep theirs.
    pub fn script_instance(&self, script: Invocation) {
        self.store_mut().sending.script_instance(script);
    }

    /// The plugins every unscripted instance of the commands SendCommand makes from now on
    /// plays, e.g. `[Plugin::succeeding("", Duration::from_millis(500))]` (a plugin named
    /// `""` takes the document's step name). None restores the built-in default: InProgress
    /// after 1 s, Success after 3 s, stdout `hello from <instance>\n`.
    pub fn set_send_default(&self, plugins: impl IntoIterator<Item = Plugin>) {
        self.store_mut()
            .sending
            .set_default(plugins.into_iter().collect());
    }

    /// Forgets the per-instance scripts ([`Simulator::script_instance`]) and the default
    /// ([`Simulator::set_send_default`]).
    pub fn clear_send_scripts(&self) {
        self.store_mut().sending.clear_scripts();
    }

    /// A SendCommand `Targets` entry with this `key` (e.g. `tag:Role`) and `value` among its
    /// `Values` selects these instances, each appearing that long after the command is made:
    /// until then GetCommandInvocation answers `InvocationDoesNotExist`, the list operations
    /// leave it out, and `TargetCount` does not count it (SSM's count grows as targets
    /// resolve). Values of one entry add up; several entries must all select an instance
    /// (it appears at the latest of its times). Targets selecting nothing make a command
    /// that is `Success` with `TargetCount` 0. Key `InstanceIds` needs no resolving (its
    /// values are the instances, at once). Resolving a pair again replaces its instances.
    pub fn resolve_target<I, S>(
        &self,
        key: impl Into<String>,
        value: impl Into<String>,
        instances: I,
    ) where
        I: IntoIterator<Item = (S, Duration)>,
        S: Into<String>,
    {
        let instances = instances
            .into_iter()
            .map(|(id, after)| (id.into(), after))
            .collect();
        self.store_mut()
            .sending
            .resolve_target(key.into(), value.into(), instances);
    }

    /// SendCommand answers HTTP 400 `InvalidDocument` ("Document with name NAME does not
    /// exist.") for this document from now on (after its other checks), creating nothing.
    pub fn refuse_document(&self, name: impl Into<String>) {
        self.store_mut().sending.refuse_document(name.into());
    }

    /// Queues a fault for SendCommand alone, apart from [`Simulator::inject`]'s queue: the
    /// next SendCommand request that gets past the rate limit and the global faults takes
    /// the first one queued (see [`SendFault`]). A request hit by `AcceptThenHang` holds its
    /// connection for the delay (shutdown waits up to two seconds for it).
    pub fn inject_send(&self, fault: SendFault) {
        self.shared()
            .send_faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(fault);
    }

    /// Drops every queued SendCommand fault.
    pub fn clear_send_faults(&self) {
        self.shared()
            .send_faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Every command SendCommand created, in order (those whose reply was lost to a
    /// [`SendFault`] included; refused requests made none).
    pub fn sent(&self) -> Vec<Sent> {
        self.store_read().sending.sent.clone()
    }

    /// How many commands SendCommand created with a `Comment` containing `marker`.
    pub fn sent_with(&self, marker: &str) -> usize {
        self.store_read()
            .sending
            .sent
            .iter()
            .filter(|s| s.comment.contains(marker))
            .count()
    }

    /// The `CommandId` of every CancelCommand request handled, in order (unknown ids
    /// included; requests answered by an injected fault or the rate limit are not).
    pub fn cancelled(&self) -> Vec<String> {
        self.store_read().sending.cancelled.clone()
    }

    /// Leaves every command made by SendCommand out of ListCommands until `lag` has passed
    /// since it was made (SSM's eventual consistency; zero, the default, turns it off). It
    /// applies at once, to commands already made too. GetCommandInvocation,
    /// ListCommandInvocations and CancelCommand see the command at once; ListCommands with
    /// its `CommandId` answers an empty list meanwhile.
    pub fn set_list_commands_lag(&self, lag: Duration) {
        self.store_mut().sending.list_lag = lag;
    }

    /// Applies a scenario: its SendCommand set-up (scripts, default, targets, refused
    /// documents, faults, ListCommands lag), then its commands, all starting at the instant
    /// returned (see [`Simulator::add_commands`]).
    pub fn load_scenario(&self, scenario: Scenario) -> Instant {
        {
            let mut store = self.store_mut();
            let sending = &mut store.sending;
            for (instance_id, script) in scenario.send_scripts {
                sending.script_instance(script.into_invocation(instance_id));
            }
            sending.set_default(scenario.send_default);
            for target in scenario.targets {
                let instances = target
                    .instances
                    .into_iter()
                    .map(|i| (i.instance_id, i.appears_after))
                    .collect();
                sending.resolve_target(target.key, target.value, instances);
            }
            for name in scenario.refused_documents {
                sending.refuse_document(name);
            }
            sending.list_lag = scenario.list_commands_lag;
        }
        for fault in scenario.send_faults {
            self.inject_send(fault);
        }
        self.add_commands(scenario.commands)
    }
}
