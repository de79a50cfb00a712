//! Pure: what following a `Command` or `CommandInvocation` shows and how it ends. The objects
//! seen so far become a [`Progress`] (`done/target`, errors, SSM status, finished or not); a
//! plain line is printed only when [`Progress::line`] changes; the end becomes an exit status.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;
use ssm_operator::api::{Command, CommandInvocation};

use crate::cli::Kind;

/// Where a followed object stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Not finished yet (or its children have not all got their final status).
    Running,
    /// SSM says `Success` (`Ready=True`).
    Succeeded,
    /// Finished otherwise: Failed, TimedOut, Cancelled, or stalled on an error.
    Failed,
}

/// What the follower knows about the object at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// SSM's status of the object (`None` until the operator wrote one for this generation).
    pub status: Option<String>,
    /// Nodes finished, whatever the outcome.
    pub done: u32,
    /// Nodes the command runs on (so far: targets resolve over time).
    pub target: u32,
    /// Nodes that failed.
    pub errors: u32,
    /// Finished or not, and how.
    pub state: State,
    /// The reason of the deciding condition (`Success`, `Failed`, `SendingDisabled`, ...).
    pub reason: String,
    /// Its message.
    pub message: String,
    /// The SSM command id, once known.
    pub command_id: Option<String>,
}

/// How following ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum End {
    /// SSM said Success.
    Succeeded,
    /// It ended otherwise.
    Failed,
    /// The object was deleted while followed.
    Deleted,
    /// `--timeout` passed first.
    TimedOut,
    /// Ctrl-C.
    Interrupted,
}

impl End {
    /// The exit status: 0 success, 1 ended otherwise (or deleted), 124 timeout, 130 Ctrl-C.
    pub fn exit_code(self) -> u8 {
        match self {
            End::Succeeded => 0,
            End::Failed | End::Deleted => 1,
            End::TimedOut => 124,
            End::Interrupted => 130,
        }
    }
}

/// The condition `type_` if it describes the object's current generation.
fn current<'a>(
    conditions: &'a [Condition],
    type_: &str,
    generation: Option<i64>,
) -> Option<&'a Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| generation.is_none() || c.observed_generation == generation)
}

fn is_true(conditions: &[Condition], type_: &str, generation: Option<i64>) -> bool {
    current(conditions, type_, generation).is_some_and(|c| c.status == "True")
}

/// Where a `CommandInvocation` stands, from its conditions (never from `.status.status`
/// alone: a stalled error has no SSM status).
pub fn invocation_state(cinv: &CommandInvocation) -> State {
    let generation = cinv.metadata.generation;
    let Some(status) = cinv.status.as_ref() else {
        return State::Running;
    };
    if status.observed_generation != generation && generation.is_some() {
        return State::Running;
    }
    let conditions = &status.conditions;
    if is_true(conditions, "Ready", generation) {
        State::Succeeded
    } else if is_true(conditions, "Finished", generation)
        || is_true(conditions, "Stalled", generation)
    {
        State::Failed
    } else {
        State::Running
    }
}

fn deciding(conditions: &[Condition], generation: Option<i64>) -> (String, String) {
    ["Stalled", "Ready", "Finished", "Reconciling"]
        .iter()
        .filter_map(|t| current(conditions, t, generation))
        .find(|c| c.status == "True")
        .or_else(|| current(conditions, "Ready", generation))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// The progress of one `CommandInvocation`: 0/1 or 1/1 done.
pub fn of_invocation(cinv: &CommandInvocation) -> Progress {
    let state = invocation_state(cinv);
    let status = cinv.status.as_ref();
    let current_status = status.filter(|s| {
        s.observed_generation == cinv.metadata.generation || cinv.metadata.generation.is_none()
    });
    let (reason, message) = current_status
        .map(|s| deciding(&s.conditions, cinv.metadata.generation))
        .unwrap_or_default();
    Progress {
        status: current_status.and_then(|s| s.status.clone()),
        done: u32::from(state != State::Running),
        target: 1,
        errors: u32::from(state == State::Failed),
        state,
        reason,
        message,
        command_id: Some(cinv.spec.command_id.clone()),
    }
}

/// The progress of a `Command` and its children: the counts are the larger of SSM's (in the
/// Command's status) and the children's own; it is finished once the Command is and every
/// child has its final status too (so `logs` right after shows every node's output).
pub fn of_command<'a>(
    command: &Command,
    children: impl IntoIterator<Item = &'a CommandInvocation>,
) -> Progress {
    let generation = command.metadata.generation;
    let status = command
        .status
        .as_ref()
        .filter(|s| s.observed_generation == generation || generation.is_none());
    let command_id = status.and_then(|s| s.command_id.clone());
    // Children of an earlier generation's run are on their way out: count this run's only.
    let states: Vec<State> = children
        .into_iter()
        .filter(|c| {
            command_id
                .as_deref()
                .is_none_or(|id| c.spec.command_id == id)
        })
        .map(invocation_state)
        .collect();
    let count = |want: fn(State) -> bool| states.iter().filter(|s| want(**s)).count() as u32;
    let kids_done = count(|s| s != State::Running);
    let kids_failed = count(|s| s == State::Failed);
    let to_u32 = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let (mut reason, mut message) = (String::new(), String::new());
    let mut state = State::Running;
    if let Some(s) = status {
        (reason, message) = deciding(&s.conditions, generation);
        let finished = is_true(&s.conditions, "Finished", generation)
            || is_true(&s.conditions, "Stalled", generation);
        if finished && kids_done as usize == states.len() {
            state = if is_true(&s.conditions, "Ready", generation) {
                State::Succeeded
            } else {
                State::Failed
            };
        }
    }
    Progress {
        status: status.and_then(|s| s.status.clone()),
        done: kids_done.max(to_u32(status.and_then(|s| s.completed_count))),
        target: (states.len() as u32).max(to_u32(status.and_then(|s| s.target_count))),
        errors: kids_failed.max(to_u32(status.and_then(|s| s.error_count))),
        state,
        reason,
        message,
        command_id,
    }
}

impl Progress {
    /// The SSM status, or what stands in for it before the operator wrote one.
    pub fn status_text(&self) -> &str {
        self.status
            .as_deref()
            .unwrap_or(match self.reason.as_str() {
                "" => "Waiting for the operator",
                reason => reason,
            })
    }

    /// `InProgress, 1/3 done, 0 errors`: one plain line per change of this text.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}, {}/{} done, {} error{}",
            self.status_text(),
            self.done,
            self.target,
            self.errors,
            if self.errors == 1 { "" } else { "s" }
        );
        // An operator reason that is not the SSM status says more (InvocationNotFound,
        // AccessDenied, SendingDisabled): show it with its message.
        if !self.reason.is_empty() && Some(self.reason.as_str()) != self.status.as_deref() {
            line.push_str(&format!(" ({}: {})", self.reason, self.message));
        }
        line
    }

    /// How following ends here, if it does.
    pub fn end(&self) -> Option<End> {
        match self.state {
            State::Running => None,
            State::Succeeded => Some(End::Succeeded),
            State::Failed => Some(End::Failed),
        }
    }
}

/// The last words of `run` / `wait`, for people.
pub fn final_text(
    kind: Kind,
    name: &str,
    end: End,
    progress: Option<&Progress>,
    elapsed: Duration,
    timeout: Option<Duration>,
) -> String {
    let what = format!("{}/{name}", kind.short());
    let line = progress
        .map(Progress::line)
        .unwrap_or_else(|| "not seen yet".into());
    let secs = format!("{:.1}s", elapsed.as_secs_f64());
    let kept = match kind {
        Kind::Command => "the Command is left in place (kubectl delete it to cancel the run)",
        Kind::Invocation => "the CommandInvocation is left in place",
    };
    match end {
        End::Succeeded => format!("{what}: {line} in {secs}"),
        End::Failed => format!("{what}: {line} in {secs}; see `kubectl ssm logs {what} --failed`"),
        End::Deleted => format!("{what} was deleted after {secs} while being followed"),
        End::TimedOut => format!(
            "{what}: timed out after {} ({line}); {kept}: follow it again with `kubectl ssm wait {what}`",
            humantime::format_duration(timeout.unwrap_or(elapsed))
        ),
        End::Interrupted => format!(
            "{what}: interrupted after {secs} ({line}); {kept}: follow it again with `kubectl ssm wait {what}`"
        ),
    }
}

/// The last words of `run` / `wait`, for scripts (`--output json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalJson<'a> {
    /// `Command` or `CommandInvocation`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// How following ended.
    pub result: End,
    /// The exit status the process ends with.
    pub exit_code: u8,
    /// Seconds spent following.
    pub elapsed_seconds: f64,
    /// Whether the object is still in the cluster (always, except after `deleted`).
    pub left_in_place: bool,
    /// The last progress seen.
    #[serde(flatten)]
    pub progress: Option<&'a Progress>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use ssm_operator::api::{
        CommandInvocationSpec, CommandInvocationStatus, CommandSpec, CommandStatus,
    };

    fn cond(type_: &str, status: bool, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(generation),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    /// The four conditions the operator writes for an outcome.
    fn conditions(ready: bool, stalled: bool, reason: &str, generation: i64) -> Vec<Condition> {
        let finished = ready || stalled;
        vec![
            cond("Ready", ready, reason, generation),
            cond("Reconciling", !finished, reason, generation),
            cond("Stalled", stalled, reason, generation),
            cond("Finished", finished, reason, generation),
        ]
    }

    fn cinv(
        command_id: &str,
        ssm: Option<&str>,
        ready: bool,
        stalled: bool,
        reason: &str,
    ) -> CommandInvocation {
        let mut c = CommandInvocation::new(
            "x",
            CommandInvocationSpec {
                command_id: command_id.into(),
                instance_id: "i-0aaaaaaaaaaaaaaa1".into(),
                plugin_name: None,
                region: None,
                ttl_seconds_after_finished: None,
            },
        );
        c.metadata.generation = Some(1);
        c.status = Some(CommandInvocationStatus {
            status: ssm.map(str::to_string),
            observed_generation: Some(1),
            conditions: conditions(ready, stalled, reason, 1),
            ..CommandInvocationStatus::default()
        });
        c
    }

    fn command(ssm: &str, ready: bool, stalled: bool, counts: (i32, i32, i32)) -> Command {
        let mut c = Command::new("web", CommandSpec::default());
        c.metadata.generation = Some(1);
        c.status = Some(CommandStatus {
            command_id: Some("cmd-1".into()),
            status: Some(ssm.into()),
            target_count: Some(counts.0),
            completed_count: Some(counts.1),
            error_count: Some(counts.2),
            observed_generation: Some(1),
            conditions: conditions(ready, stalled, ssm, 1),
            ..CommandStatus::default()
        });
        c
    }

    #[test]
    fn a_new_object_waits_for_the_operator() {
        let mut c = CommandInvocation::new(
            "x",
            CommandInvocationSpec {
                command_id: "c".into(),
                instance_id: "i-1".into(),
                plugin_name: None,
                region: None,
                ttl_seconds_after_finished: None,
            },
        );
        c.metadata.generation = Some(1);
        c.status = Some(CommandInvocationStatus {
            observed_generation: Some(-1),
            ..Default::default()
        });
        let p = of_invocation(&c);
        assert_eq!(p.state, State::Running);
        assert_eq!(p.line(), "Waiting for the operator, 0/1 done, 0 errors");
        assert_eq!(p.end(), None);
    }

    #[test]
    fn an_invocation_ends_by_its_conditions() {
        let ok = of_invocation(&cinv("c", Some("Success"), true, false, "Success"));
        assert_eq!((ok.state, ok.done, ok.errors), (State::Succeeded, 1, 0));
        assert_eq!(ok.end().map(End::exit_code), Some(0));
        assert_eq!(ok.line(), "Success, 1/1 done, 0 errors");

        let failed = of_invocation(&cinv("c", Some("Failed"), false, true, "Failed"));
        assert_eq!(
            (failed.state, failed.done, failed.errors),
            (State::Failed, 1, 1)
        );
        assert_eq!(failed.end().map(End::exit_code), Some(1));

        // An operator reason without SSM status: stalled, and the line says why.
        let denied = of_invocation(&cinv("c", None, false, true, "AccessDenied"));
        assert_eq!(denied.end(), Some(End::Failed));
        assert_eq!(
            denied.line(),
            "AccessDenied, 1/1 done, 1 error (AccessDenied: AccessDenied message)"
        );

        let running = of_invocation(&cinv("c", Some("InProgress"), false, false, "InProgress"));
        assert_eq!(running.end(), None);
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_an_end() {
        let mut c = cinv("c", Some("Success"), true, false, "Success");
        c.metadata.generation = Some(2);
        assert_eq!(invocation_state(&c), State::Running);
        let mut cmd = command("Success", true, false, (1, 1, 0));
        cmd.metadata.generation = Some(2);
        let p = of_command(&cmd, []);
        assert_eq!((p.state, p.status.as_deref()), (State::Running, None));
    }

    #[test]
    fn a_command_ends_once_every_child_has_its_final_status() {
        let cmd = command("Failed", false, true, (3, 3, 1));
        let ok = cinv("cmd-1", Some("Success"), true, false, "Success");
        let bad = cinv("cmd-1", Some("Failed"), false, true, "Failed");
        let slow = cinv("cmd-1", Some("InProgress"), false, false, "InProgress");
        let p = of_command(&cmd, [&ok, &bad, &slow]);
        assert_eq!(p.state, State::Running, "one child has no final status yet");
        assert_eq!((p.done, p.target, p.errors), (3, 3, 1), "SSM's counts lead");
        let p = of_command(&cmd, [&ok, &bad, &ok]);
        assert_eq!(p.end(), Some(End::Failed));
        assert_eq!(p.line(), "Failed, 3/3 done, 1 error");

        let done = command("Success", true, false, (2, 2, 0));
        assert_eq!(
            of_command(&done, [&ok, &ok]).end().map(End::exit_code),
            Some(0)
        );
        // Children of an earlier run do not count.
        let old = cinv("cmd-0", Some("InProgress"), false, false, "InProgress");
        assert_eq!(
            of_command(&done, [&ok, &ok, &old]).end(),
            Some(End::Succeeded)
        );
    }

    #[test]
    fn children_lead_while_ssm_counts_lag() {
        let cmd = command("InProgress", false, false, (0, 0, 0));
        let ok = cinv("cmd-1", Some("Success"), true, false, "Success");
        let running = cinv("cmd-1", Some("InProgress"), false, false, "InProgress");
        let p = of_command(&cmd, [&ok, &running]);
        assert_eq!(
            (p.done, p.target, p.errors, p.state),
            (1, 2, 0, State::Running)
        );
        assert_eq!(p.line(), "InProgress, 1/2 done, 0 errors");
    }

    #[test]
    fn a_stalled_command_without_children_ends_with_its_reason() {
        let mut cmd = command("", false, true, (0, 0, 0));
        let status = cmd.status.as_mut().unwrap();
        status.status = None;
        status.conditions = conditions(false, true, "SendingDisabled", 1);
        let p = of_command(&cmd, []);
        assert_eq!(p.end(), Some(End::Failed));
        assert!(
            p.line().starts_with("SendingDisabled, 0/0 done"),
            "{}",
            p.line()
        );
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(End::Succeeded.exit_code(), 0);
        assert_eq!(End::Failed.exit_code(), 1);
        assert_eq!(End::Deleted.exit_code(), 1);
        assert_eq!(End::TimedOut.exit_code(), 124);
        assert_eq!(End::Interrupted.exit_code(), 130);
    }

    #[test]
    fn timeout_and_interrupt_say_the_object_stays() {
        let p = of_invocation(&cinv("c", Some("InProgress"), false, false, "InProgress"));
        let t = final_text(
            Kind::Command,
            "web",
            End::TimedOut,
            Some(&p),
            Duration::from_secs(5),
            Some(Duration::from_secs(5)),
        );
        assert!(
            t.contains("timed out after 5s") && t.contains("left in place"),
            "{t}"
        );
        assert!(t.contains("kubectl ssm wait ssmcmd/web"), "{t}");
        let i = final_text(
            Kind::Invocation,
            "a",
            End::Interrupted,
            Some(&p),
            Duration::from_secs(1),
            None,
        );
        assert!(
            i.contains("interrupted") && i.contains("CommandInvocation is left in place"),
            "{i}"
        );
        let f = final_text(
            Kind::Command,
            "web",
            End::Failed,
            Some(&p),
            Duration::from_secs(1),
            None,
        );
        assert!(f.contains("kubectl ssm logs ssmcmd/web --failed"), "{f}");
    }
}
