//! Scripted scenarios: the commands, invocations and plugin timelines the simulator plays.
//!
//! Everything here is plain data built with small builders (or loaded from JSON through
//! serde, see `sim/README.md`). The timeline of a plugin is a list of steps, each saying
//! "from `after` since the command was added, the plugin is in this status". Nothing here
//! evaluates a timeline: the simulated state (the `model` module) builds on these types and
//! says what a timeline shows at a given instant. A whole scenario file, with SendCommand's
//! set-up, is read by the `scenario` module.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The document a [`Command`] runs when none is given.
pub const DEFAULT_DOCUMENT: &str = "AWS-RunShellScript";
/// The plugin (step) name of `AWS-RunShellScript`, used for invocations without plugins.
pub const DEFAULT_PLUGIN: &str = "aws:runShellScript";
/// The S3 region used in output URLs when a command does not name one.
pub const DEFAULT_S3_REGION: &str = "eu-west-1";

/// The status of a command invocation or of one of its plugins, as SSM spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Status {
    /// Not yet delivered to the node.
    Pending,
    /// Running on the node.
    InProgress,
    /// The node was unreachable; SSM retries.
    Delayed,
    /// Finished successfully (terminal).
    Success,
    /// Cancelled before it finished (terminal).
    Cancelled,
    /// Delivery or execution timed out (terminal).
    TimedOut,
    /// Finished unsuccessfully or could not be delivered (terminal).
    Failed,
    /// A cancel request is being carried out; ends `Cancelled`.
    Cancelling,
}

impl Status {
    /// The wire spelling, e.g. `"InProgress"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::InProgress => "InProgress",
            Status::Delayed => "Delayed",
            Status::Success => "Success",
            Status::Cancelled => "Cancelled",
            Status::TimedOut => "TimedOut",
            Status::Failed => "Failed",
            Status::Cancelling => "Cancelling",
        }
    }

    /// Whether the status is final: Success, Cancelled, TimedOut or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Success | Status::Cancelled | Status::TimedOut | Status::Failed
        )
    }

    /// The `StatusDetails` SSM reports for this status unless a script overrides it.
    pub fn default_details(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::InProgress => "In Progress",
            Status::Delayed => "Delayed",
            Status::Success => "Success",
            Status::Cancelled => "Cancelled",
            Status::TimedOut => "Execution Timed Out",
            Status::Failed => "Failed",
            Status::Cancelling => "Cancelling",
        }
    }

    /// The `ResponseCode` a step with this status gets unless a script sets one:
    /// 0 for Success, 1 for Failed, -1 otherwise.
    pub fn default_response_code(self) -> i32 {
        match self {
            Status::Success => 0,
            Status::Failed => 1,
            _ => -1,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Run Command command: a document sent to some instances.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub(crate) command_id: String,
    #[serde(default = "default_document")]
    pub(crate) document_name: String,
    #[serde(default = "default_version")]
    pub(crate) document_version: String,
    #[serde(default)]
    pub(crate) comment: String,
    #[serde(default)]
    pub(crate) parameters: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) s3_bucket: Option<String>,
    #[serde(default)]
    pub(crate) s3_key_prefix: String,
    #[serde(default = "default_region")]
    pub(crate) s3_region: String,
    #[serde(default)]
    pub(crate) cloudwatch_log_group: Option<String>,
    /// Not in the JSON shape: SendCommand may name a log group with output disabled.
    #[serde(skip, default = "enabled_by_default")]
    pub(crate) cloudwatch_enabled: bool,
    #[serde(default)]
    pub(crate) invocations: Vec<Invocation>,
    /// Not in the JSON shape: the `Targets` of a command made by SendCommand with targets
    /// (empty otherwise), as (key, values).
    #[serde(skip)]
    pub(crate) targets: Vec<(String, Vec<String>)>,
    /// Not in the JSON shape: SendCommand's `MaxConcurrency` (`50` when not given).
    #[serde(skip)]
    pub(crate) max_concurrency: Option<String>,
    /// Not in the JSON shape: SendCommand's `MaxErrors` (`0` when not given).
    #[serde(skip)]
    pub(crate) max_errors: Option<String>,
    /// Not in the JSON shape: SendCommand's `TimeoutSeconds` (3600 when not given).
    #[serde(skip)]
    pub(crate) timeout_seconds: Option<u32>,
}

fn default_document() -> String {
    DEFAULT_DOCUMENT.to_string()
}

fn default_version() -> String {
    "1".to_string()
}

fn default_region() -> String {
    DEFAULT_S3_REGION.to_string()
}

fn enabled_by_default() -> bool {
    true
}

impl Command {
    /// A command with this id running `AWS-RunShellScript` version `1`, empty comment,
    /// no S3 or CloudWatch output and no invocations yet.
    pub fn new(command_id: impl Into<String>) -> Self {
        Command {
            command_id: command_id.into(),
            document_name: default_document(),
            document_version: default_version(),
            comment: String::new(),
            parameters: BTreeMap::new(),
            s3_bucket: None,
            s3_key_prefix: String::new(),
            s3_region: default_region(),
            cloudwatch_log_group: None,
            cloudwatch_enabled: true,
            invocations: Vec::new(),
            targets: Vec::new(),
            max_concurrency: None,
            max_errors: None,
            timeout_seconds: None,
        }
    }

    /// Sets the document name and version.
    pub fn document(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.document_name = name.into();
        self.document_version = version.into();
        self
    }

    /// Sets the comment.
    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = c.into();
        self
    }

    /// Sends output to S3: output URLs appear in responses for this command.
    pub fn s3_output(mut self, bucket: impl Into<String>, key_prefix: impl Into<String>) -> Self {
        self.s3_bucket = Some(bucket.into());
        self.s3_key_prefix = key_prefix.into();
        self
    }

    /// Enables CloudWatch output to this log group.
    pub fn cloudwatch(mut self, log_group: impl Into<String>) -> Self {
        self.cloudwatch_log_group = Some(log_group.into());
        self.cloudwatch_enabled = true;
        self
    }

    /// Adds an invocation (one target instance).
    pub fn invocation(mut self, invocation: Invocation) -> Self {
        self.invocations.push(invocation);
        self
    }

    /// The command id.
    pub fn command_id(&self) -> &str {
        &self.command_id
    }
}

/// A scripted error that GetCommandInvocation always answers for one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScriptedError {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// The invocation of a command on one instance, made of one or more plugins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    pub(crate) instance_id: String,
    #[serde(default)]
    pub(crate) plugins: Vec<Plugin>,
    #[serde(default, rename = "hidden_ms", with = "millis")]
    pub(crate) hidden_for: Duration,
    #[serde(default)]
    pub(crate) always_error: Option<ScriptedError>,
}

impl Invocation {
    /// An invocation on this instance. Without plugins it plays the default timeline of
    /// SendCommand (see [`Plugin::default_for`]).
    pub fn new(instance_id: impl Into<String>) -> Self {
        Invocation {
            instance_id: instance_id.into(),
            plugins: Vec::new(),
            hidden_for: Duration::ZERO,
            always_error: None,
        }
    }

    /// Adds a plugin (a document step), in document order.
    pub fn plugin(mut self, plugin: Plugin) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Makes the invocation invisible (GetCommandInvocation answers InvocationDoesNotExist,
    /// ListCommandInvocations leaves it out) until `d` has passed since the command was added.
    pub fn hidden_for(mut self, d: Duration) -> Self {
        self.hidden_for = d;
        self
    }

    /// Makes GetCommandInvocation for this invocation always fail with this error code.
    pub fn always_error(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.always_error = Some(ScriptedError {
            code: code.into(),
            message: message.into(),
        });
        self
    }
}

/// One timeline step: from `after` on, the plugin is in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    #[serde(rename = "after_ms", with = "millis")]
    pub(crate) after: Duration,
    pub(crate) status: Status,
    #[serde(default)]
    pub(crate) details: Option<String>,
    #[serde(default)]
    pub(crate) response_code: Option<i32>,
}

impl Step {
    /// The step's `StatusDetails`, the status default unless scripted.
    pub(crate) fn details(&self) -> &str {
        self.details
            .as_deref()
            .unwrap_or_else(|| self.status.default_details())
    }

    /// The step's `ResponseCode`, the status default unless scripted.
    pub(crate) fn response_code(&self) -> i32 {
        self.response_code
            .unwrap_or_else(|| self.status.default_response_code())
    }
}

/// One plugin (document step) of an invocation, with its status timeline and output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) steps: Vec<Step>,
    #[serde(default)]
    pub(crate) stdout: String,
    #[serde(default)]
    pub(crate) stderr: String,
}

impl Plugin {
    /// A plugin that stays Pending until its first step.
    pub fn new(name: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            steps: Vec::new(),
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// From `after` since the command was added, the plugin is in `status`, with the default
    /// details and response code (0 for Success, 1 for Failed, -1 otherwise).
    pub fn step(mut self, after: Duration, status: Status) -> Self {
        self.steps.push(Step {
            after,
            status,
            details: None,
            response_code: None,
        });
        self
    }

    /// Like [`Plugin::step`] with explicit `StatusDetails` and `ResponseCode`.
    pub fn step_with(
        mut self,
        after: Duration,
        status: Status,
        details: impl Into<String>,
        response_code: i32,
    ) -> Self {
        self.steps.push(Step {
            after,
            status,
            details: Some(details.into()),
            response_code: Some(response_code),
        });
        self
    }

    /// The plugin's full standard output (shown once it is terminal).
    pub fn stdout(mut self, s: impl Into<String>) -> Self {
        self.stdout = s.into();
        self
    }

    /// The plugin's full standard error (shown once it is terminal).
    pub fn stderr(mut self, s: impl Into<String>) -> Self {
        self.stderr = s.into();
        self
    }

    /// Pending, InProgress at `after / 2`, Success (code 0) at `after`.
    pub fn succeeding(name: impl Into<String>, after: Duration) -> Self {
        Plugin::new(name)
            .step(after / 2, Status::InProgress)
            .step(after, Status::Success)
    }

    /// Pending, InProgress at `in_progress_at`, Success (code 0) at `done_at`: one fleet member's
    /// timeline in a line. `in_progress_at` is capped at `done_at` (equal: it started and
    /// succeeded at that instant).
    pub fn succeeding_at(
        name: impl Into<String>,
        in_progress_at: Duration,
        done_at: Duration,
    ) -> Self {
        Plugin::new(name)
            .step(in_progress_at.min(done_at), Status::InProgress)
            .step(done_at, Status::Success)
    }

    /// Pending, InProgress at `in_progress_at` (capped at `failed_at`), Failed (details
    /// `Failed`, this response code) at `failed_at`.
    pub fn failing_at(
        name: impl Into<String>,
        in_progress_at: Duration,
        failed_at: Duration,
        response_code: i32,
    ) -> Self {
        Plugin::new(name)
            .step(in_progress_at.min(failed_at), Status::InProgress)
            .step_with(failed_at, Status::Failed, "Failed", response_code)
    }

    /// A step the SSM agent skipped at `at` (a precondition such as the platform was not met:
    /// `AWS-RunRemoteScript` skips the step for the other platform): as SSM reports it,
    /// `Success` (code 0) straight away, with the agent's message as its output,
    /// `Step execution skipped due to unsatisfied preconditions: ... Step name: <name>` (the
    /// agent counts "Skipped" as a form of success when it aggregates the document's status).
    pub fn skipped(name: impl Into<String>, at: Duration) -> Self {
        let name = name.into();
        let message = format!(
            "Step execution skipped due to unsatisfied preconditions: \
             '\"StringEquals\": [platformType, Windows]' failed. Step name: {name}"
        );
        Plugin::new(name)
            .step_with(at, Status::Success, "Success", 0)
            .stdout(message)
    }

    /// The timeline SendCommand gives each instance: Pending, InProgress after 1 s, Success
    /// after 3 s with stdout `hello from <instance>\n`.
    pub fn default_for(name: impl Into<String>, instance_id: &str) -> Self {
        Plugin::new(name)
            .step(Duration::from_secs(1), Status::InProgress)
            .step(Duration::from_secs(3), Status::Success)
            .stdout(format!("hello from {instance_id}\n"))
    }
}

/// Serde helper: a [`Duration`] written as whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_spell_like_ssm() {
        assert_eq!(Status::InProgress.as_str(), "InProgress");
        assert_eq!(Status::TimedOut.default_details(), "Execution Timed Out");
        assert!(Status::Cancelled.is_terminal());
        assert!(!Status::Cancelling.is_terminal());
    }
}
