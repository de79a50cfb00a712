//! Pure: SSM's answer + the current status → the new status, its conditions, the Event to
//! record and what to do next. No I/O, no clock: the reconciler passes `now` in.
//!
//! Rules (see the README's status table):
//! - success is decided by SSM `Status` alone; `StatusDetails` is copied, never branched on;
//! - `Pending`, `InProgress`, `Delayed`, `Cancelling` and unknown future values are not terminal;
//! - `responseCode` is -1 until SSM reports a terminal status (the SDK reads an absent code as 0);
//! - errors keep what SSM last said for this generation, and only change the conditions;
//! - errors an outside fix can cure (`InvocationNotFound` after the grace, `AccessDenied`) stall
//!   the resource and are re-checked rarely; a transient error during such a re-check leaves it
//!   exactly as it was (no Stalled → Reconciling → Stalled flapping for kstatus);
//! - nothing is written, and no clock moves, when the result equals the current status;
//! - a multi-step invocation answered as a whole (no step named) also lists its steps
//!   (`status.steps`), each step's code -1 until that step is terminal.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions::{self, Standing};
use crate::api::{CloudWatchOutputConfig, CommandInvocationStatus, InvocationStep};
use crate::aws::ssm::{is_terminal, Invocation, Recovery, SsmError, StepOutcome};
use crate::k8s::output;
use crate::k8s::writer::EventNote;

/// The operator settings that shape the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `--max-output-chars`: bound of each of stdout and stderr in `.status`.
    pub max_output_chars: usize,
    /// `--not-found-grace`: how long `InvocationDoesNotExist` counts as "not visible yet".
    pub not_found_grace: Duration,
    /// How often a resource stalled on an error an outside fix can cure is asked again.
    pub recheck_interval: Duration,
    /// `--progress-after`: how old a resource must be before its first progress is written.
    pub progress_after: Duration,
}

/// One answer from SSM and the facts needed to judge it.
#[derive(Debug)]
pub struct Poll<'a> {
    /// What SSM answered.
    pub answer: &'a Result<Invocation, SsmError>,
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// When SSM was asked.
    pub now: Time,
    /// How long SSM has had to make the invocation visible (since creation or spec change).
    pub waited: Duration,
}

/// What the reconciler does after this answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Keep polling with backoff.
    Poll,
    /// Stalled on an error an outside fix can cure (`InvocationNotFound`, `AccessDenied`):
    /// look again rarely, so the resource recovers by itself.
    RecheckRarely,
    /// Terminal or permanent error: no more SSM calls until the spec changes.
    Stop,
}

/// The result of [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The whole status the resource should have.
    pub status: CommandInvocationStatus,
    /// The status differs from the current one: write it.
    pub write: bool,
    /// The Event to record, if the change deserves one.
    pub note: Option<EventNote>,
    /// What to do next.
    pub next: Polling,
}

/// Judges one SSM answer against the current status.
pub fn apply(
    current: Option<&CommandInvocationStatus>,
    poll: &Poll<'_>,
    settings: &Settings,
) -> Outcome {
    let same_generation = current.is_some_and(|s| s.observed_generation == poll.generation);
    let previous_fields = match current {
        Some(status) if same_generation => ssm_fields_of(status),
        _ => CommandInvocationStatus::default(),
    };
    let previous_conditions = current.map_or(&[][..], |s| &s.conditions[..]);
    let stalled_on = same_generation
        .then(|| stalled_reason(previous_conditions))
        .flatten();
    let mut judged = judge(poll, settings, &previous_fields, stalled_on);
    // A running step's elapsed time ticks at every look; that alone is not news worth a write.
    if judged.standing == Standing::InProgress
        && poll.answer.is_ok()
        && previous_fields.status == judged.fields.status
        && previous_fields.status_details == judged.fields.status_details
    {
        judged.fields.execution_elapsed_time = previous_fields.execution_elapsed_time.clone();
    }

    let mut status = judged.fields.clone();
    status.observed_generation = poll.generation;
    status.conditions = conditions::build(
        previous_conditions,
        judged.standing,
        &judged.reason,
        &judged.message,
        poll.generation,
        &poll.now,
    );
    status.last_polled_time = current.and_then(|s| s.last_polled_time.clone());
    // The spec's fingerprint is the reconciler's to set; the mapping keeps it.
    status.spec_hash = current.and_then(|s| s.spec_hash.clone());
    let write = current != Some(&status);
    if write {
        status.last_polled_time = Some(poll.now.clone());
    }

    // An error is news when the Stalled condition's status or reason changes.
    let stalled_of = |conditions: &[Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == conditions::STALLED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let error_is_news = stalled_of(previous_conditions) != stalled_of(&status.conditions);
    let note_of = |warning| {
        let from = previous_conditions
            .first()
            .map_or("New", |c| c.reason.as_str());
        Some(EventNote {
            warning,
            reason: judged.reason.clone(),
            action: format!("{from}To{}", judged.reason),
            message: judged.message.clone(),
        })
    };
    let note = match poll.answer {
        Ok(_) if !same_generation || previous_fields.status != judged.fields.status => {
            note_of(judged.standing == Standing::Stalled)
        }
        Err(_) if judged.quiet || !error_is_news => None,
        Err(_) => note_of(true),
        Ok(_) => None,
    };

    Outcome {
        status,
        write,
        note,
        next: judged.next,
    }
}

/// The verdict on one answer, before conditions and clocks.
struct Judged {
    fields: CommandInvocationStatus,
    standing: Standing,
    reason: String,
    message: String,
    next: Polling,
    /// Expected, nothing to tell the user (not visible yet, within the grace window).
    quiet: bool,
}

/// The reason and message of the `Stalled` condition when it is `True`.
fn stalled_reason(conditions: &[Condition]) -> Option<(&str, &str)> {
    conditions
        .iter()
        .find(|c| c.type_ == conditions::STALLED && c.status == "True")
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

fn judge(
    poll: &Poll<'_>,
    settings: &Settings,
    previous: &CommandInvocationStatus,
    stalled_on: Option<(&str, &str)>,
) -> Judged {
    let keep = |standing, reason: &str, message: String, next, quiet| Judged {
        fields: previous.clone(),
        standing,
        reason: reason.to_string(),
        message,
        next,
        quiet,
    };
    let error = match poll.answer {
        Ok(invocation) => return judge_answer(invocation, settings),
        Err(error) => error,
    };
    match (error, error.recovery(), stalled_on) {
        // Stalled on an error an outside fix can cure, and this re-check could not tell:
        // stay exactly as we are (kstatus must not see Failed -> InProgress -> Failed).
        (_, Recovery::Transient, Some((reason, message))) => keep(
            Standing::Stalled,
            reason,
            message.to_string(),
            Polling::RecheckRarely,
            true,
        ),
        (SsmError::InvocationDoesNotExist(msg), _, None)
            if poll.waited < settings.not_found_grace =>
        {
            let message = format!(
                "SSM does not show this invocation yet; waiting up to {} for it to appear (SSM: {msg})",
                humantime::format_duration(settings.not_found_grace)
            );
            keep(
                Standing::InProgress,
                error.reason(),
                message,
                Polling::Poll,
                true,
            )
        }
        (_, Recovery::OutsideFix, _) => keep(
            Standing::Stalled,
            error.reason(),
            outside_fix_message(error, settings),
            Polling::RecheckRarely,
            false,
        ),
        (_, Recovery::SpecChange, _) => keep(
            Standing::Stalled,
            error.reason(),
            format!("{error}; fix the spec to try again"),
            Polling::Stop,
            false,
        ),
        (_, Recovery::Transient, None) => {
            let message = format!("{error}; retrying with backoff");
            keep(
                Standing::InProgress,
                error.reason(),
                message,
                Polling::Poll,
                false,
            )
        }
    }
}

/// What to tell the user about an error that a fix outside the cluster can cure: what to fix,
/// and that the resource is re-checked by itself.
fn outside_fix_message(error: &SsmError, settings: &Settings) -> String {
    let every = humantime::format_duration(settings.recheck_interval);
    match error {
        SsmError::InvocationDoesNotExist(msg) => format!(
            "SSM still has no such invocation after {}: check commandId, instanceId and \
             pluginName (SSM keeps about 30 days of history); re-checked every {every} \
             (SSM: {msg})",
            humantime::format_duration(settings.not_found_grace),
        ),
        SsmError::AccessDenied(msg) => format!(
            "AWS denied the operator's identity access to this invocation: grant it \
             ssm:GetCommandInvocation and ssm:ListCommandInvocations (see docs/iam.md); \
             re-checked every {every}, no spec change needed (AWS: {msg})"
        ),
        SsmError::AssumeRoleFailed(msg) => format!(
            "the operator could not assume this namespace's role (annotation \
             ssm.operator.dev/role-arn): check the role's trust policy names the operator's \
             role and the external id (see docs/iam.md); re-checked every {every} (STS: {msg})"
        ),
        other => format!("{other}; re-checked every {every}"),
    }
}

/// The verdict on an answer SSM gave.
fn judge_answer(invocation: &Invocation, settings: &Settings) -> Judged {
    let terminal = is_terminal(&invocation.status);
    let (standing, next) = match invocation.status.as_str() {
        "Success" => (Standing::Succeeded, Polling::Stop),
        _ if terminal => (Standing::Stalled, Polling::Stop),
        _ => (Standing::InProgress, Polling::Poll),
    };
    Judged {
        fields: ssm_fields_from(invocation, terminal, settings),
        standing,
        reason: conditions::sanitize_reason(&invocation.status),
        message: describe(invocation, terminal),
        next,
        quiet: false,
    }
}

/// Whether SSM needs to be asked again for this status (of the current generation): not when
/// it is terminal or stalled on an error only a spec change can cure; yes while running or
/// stalled on an error an outside fix can cure (re-checked rarely).
pub fn needs_polling(status: &CommandInvocationStatus) -> bool {
    let finished = conditions::is_true(&status.conditions, conditions::FINISHED);
    let rechecked = stalled_reason(&status.conditions)
        .is_some_and(|(reason, _)| RECHECKED_REASONS.contains(&reason));
    !finished || rechecked
}

/// Whether `new` tells nothing `old` did not: the same running step, only its elapsed time
/// ticked (which is never written, see [`apply`]).
pub fn only_elapsed_time_ticked(old: &Invocation, new: &Invocation) -> bool {
    !is_terminal(&new.status)
        && old.execution_elapsed_time != new.execution_elapsed_time
        && *old
            == Invocation {
                execution_elapsed_time: old.execution_elapsed_time.clone(),
                ..new.clone()
            }
}

/// Whether `status` only reports progress (no `Finished` or `Stalled` True): a write that
/// pipelines do not gate on, so it waits behind final answers and takes only its share of the
/// write turns ([`crate::invocation::turns`]).
pub fn is_progress(status: &CommandInvocationStatus) -> bool {
    !conditions::is_true(&status.conditions, conditions::FINISHED)
        && !conditions::is_true(&status.conditions, conditions::STALLED)
}

/// How long the first status of a resource waits: while it shows no status yet (none, or
/// only the schema's default `{observedGeneration: -1}`) and would first report only
/// progress, until it is `progress_after` (`--progress-after`) old (`age`); `None` (write
/// now) otherwise. A final answer or an error that stalls never waits; one that does not
/// (throttling, SSM unreachable, an invocation not visible yet) is progress, and waits.
///
/// Most runs end within seconds, so a resource's first status is then its final one: one
/// status write and one Event per invocation, not two of each. kstatus tools read the
/// default status as in progress meanwhile, and a `Command` shows its run's progress itself.
pub fn progress_held(
    current: Option<&CommandInvocationStatus>,
    next: &CommandInvocationStatus,
    age: Duration,
    progress_after: Duration,
) -> Option<Duration> {
    let shown = current.is_some_and(|s| !s.conditions.is_empty());
    if shown || !is_progress(next) {
        return None;
    }
    progress_after
        .checked_sub(age)
        .filter(|left| !left.is_zero())
}

/// Stalled reasons that are re-checked rarely, because a fix outside the cluster can cure them.
pub const RECHECKED_REASONS: &[&str] = &["InvocationNotFound", "AccessDenied", "AssumeRoleFailed"];

/// One line for condition messages and Events, e.g. `SSM reports Failed (Failed), exit code 1`.
fn describe(invocation: &Invocation, terminal: bool) -> String {
    let mut text = format!("SSM reports {}", invocation.status);
    if !invocation.status_details.is_empty() {
        text.push_str(&format!(" ({})", invocation.status_details));
    }
    if terminal {
        text.push_str(&format!(", exit code {}", invocation.response_code));
    }
    text
}

/// Only SSM's fields of a status (no conditions, generation or clocks).
fn ssm_fields_of(status: &CommandInvocationStatus) -> CommandInvocationStatus {
    CommandInvocationStatus {
        observed_generation: None,
        last_polled_time: None,
        conditions: Vec::new(),
        ..status.clone()
    }
}

/// SSM's answer as status fields: verbatim strings (empty ones left out), bounded output.
fn ssm_fields_from(
    invocation: &Invocation,
    terminal: bool,
    settings: &Settings,
) -> CommandInvocationStatus {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let output = |s: &str| (!s.is_empty()).then(|| output::bounded(s, settings.max_output_chars));
    let cloud_watch = (invocation.cloud_watch_log_group_name.is_some()
        || invocation.cloud_watch_output_enabled.is_some())
    .then(|| CloudWatchOutputConfig {
        cloud_watch_log_group_name: invocation
            .cloud_watch_log_group_name
            .as_deref()
            .and_then(text),
        cloud_watch_output_enabled: invocation.cloud_watch_output_enabled,
    });
    CommandInvocationStatus {
        status: text(&invocation.status),
        status_details: text(&invocation.status_details),
        response_code: Some(if terminal {
            invocation.response_code
        } else {
            -1
        }),
        comment: text(&invocation.comment),
        document_name: text(&invocation.document_name),
        document_version: text(&invocation.document_version),
        plugin_name: text(&invocation.plugin_name),
        execution_start_date_time: text(&invocation.execution_start_date_time),
        execution_elapsed_time: text(&invocation.execution_elapsed_time),
        execution_end_date_time: text(&invocation.execution_end_date_time),
        standard_output_url: text(&invocation.standard_output_url),
        standard_error_url: text(&invocation.standard_error_url),
        standard_output_content: output(&invocation.standard_output_content),
        standard_error_content: output(&invocation.standard_error_content),
        cloud_watch_output_config: cloud_watch,
        steps: invocation.steps.as_deref().map(steps_from),
        observed_generation: None,
        last_polled_time: None,
        spec_hash: None,
        conditions: Vec::new(),
    }
}

/// The steps of a multi-step invocation as status shows them: each step's code is -1 until
/// that step is terminal, as the invocation's own (the SDK reads an absent code as 0).
fn steps_from(steps: &[StepOutcome]) -> Vec<InvocationStep> {
    steps
        .iter()
        .map(|step| InvocationStep {
            name: step.name.clone(),
            status: step.status.clone(),
            response_code: if is_terminal(&step.status) {
                step.response_code
            } else {
                -1
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{FINISHED, READY, RECONCILING, STALLED};
    use k8s_openapi::jiff::Timestamp;

    const SETTINGS: Settings = Settings {
        max_output_chars: 4000,
        not_found_grace: Duration::from_secs(300),
        recheck_interval: Duration::from_secs(300),
        progress_after: Duration::from_secs(10),
    };

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn invocation(status: &str, details: &str, code: i32) -> Invocation {
        Invocation {
            status: status.into(),
            status_details: details.into(),
            response_code: code,
            document_name: "AWS-RunShellScript".into(),
            document_version: "1".into(),
            plugin_name: "aws:runShellScript".into(),
            ..Invocation::default()
        }
    }

    fn poll_at(answer: &Result<Invocation, SsmError>, seconds: i64) -> Outcome {
        poll_on(None, answer, seconds)
    }

    fn poll_on(
        current: Option<&CommandInvocationStatus>,
        answer: &Result<Invocation, SsmError>,
        seconds: i64,
    ) -> Outcome {
        let poll = Poll {
            answer,
            generation: Some(1),
            now: at(seconds),
            waited: Duration::from_secs(seconds as u64),
        };
        apply(current, &poll, &SETTINGS)
    }

    fn condition_row(status: &CommandInvocationStatus) -> Vec<(String, String, String)> {
        [READY, RECONCILING, STALLED, FINISHED]
            .iter()
            .map(|t| {
                let c = status.conditions.iter().find(|c| c.type_ == *t).unwrap();
                (c.type_.clone(), c.status.clone(), c.reason.clone())
            })
            .collect()
    }

    fn flags(status: &CommandInvocationStatus) -> [bool; 4] {
        [READY, RECONCILING, STALLED, FINISHED].map(|t| conditions::is_true(&status.conditions, t))
    }

    #[test]
    fn every_ssm_status_maps_to_the_contract_conditions() {
        let cases = [
            (
                "Pending",
                "Pending",
                [false, true, false, false],
                Polling::Poll,
            ),
            (
                "InProgress",
                "In Progress",
                [false, true, false, false],
                Polling::Poll,
            ),
            (
                "Delayed",
                "Delayed",
                [false, true, false, false],
                Polling::Poll,
            ),
            (
                "Cancelling",
                "Cancelling",
                [false, true, false, false],
                Polling::Poll,
            ),
            (
                "Success",
                "Success",
                [true, false, false, true],
                Polling::Stop,
            ),
            (
                "Failed",
                "Failed",
                [false, false, true, true],
                Polling::Stop,
            ),
            (
                "TimedOut",
                "Execution Timed Out",
                [false, false, true, true],
                Polling::Stop,
            ),
            (
                "TimedOut",
                "Delivery Timed Out",
                [false, false, true, true],
                Polling::Stop,
            ),
            (
                "Cancelled",
                "Cancelled",
                [false, false, true, true],
                Polling::Stop,
            ),
            (
                "Failed",
                "Undeliverable",
                [false, false, true, true],
                Polling::Stop,
            ),
            (
                "Failed",
                "Terminated",
                [false, false, true, true],
                Polling::Stop,
            ),
        ];
        for (status, details, expected, next) in cases {
            let out = poll_at(&Ok(invocation(status, details, 0)), 1);
            assert_eq!(flags(&out.status), expected, "{status}/{details}");
            assert_eq!(out.next, next, "{status}/{details}");
            assert_eq!(out.status.status.as_deref(), Some(status));
            assert_eq!(
                out.status.status_details.as_deref(),
                Some(details),
                "verbatim"
            );
            assert!(out.status.conditions.iter().all(|c| c.reason == status));
            assert!(out.write);
        }
    }

    #[test]
    fn an_unknown_future_status_keeps_polling_and_is_copied_verbatim() {
        let out = poll_at(&Ok(invocation("Paused By Admin", "Paused", -1)), 1);
        assert_eq!(out.next, Polling::Poll);
        assert_eq!(flags(&out.status), [false, true, false, false]);
        assert_eq!(out.status.status.as_deref(), Some("Paused By Admin"));
        assert_eq!(out.status.conditions[0].reason, "PausedByAdmin");
    }

    #[test]
    fn response_code_is_minus_one_until_terminal_and_zero_is_not_success() {
        let running = poll_at(&Ok(invocation("InProgress", "In Progress", 0)), 1);
        assert_eq!(
            running.status.response_code,
            Some(-1),
            "SDK's absent 0 is not a code"
        );
        let failed_zero = poll_at(&Ok(invocation("Failed", "Failed", 0)), 1);
        assert_eq!(failed_zero.status.response_code, Some(0));
        assert!(!conditions::is_true(&failed_zero.status.conditions, READY));
        let undeliverable = poll_at(&Ok(invocation("Failed", "Undeliverable", -1)), 1);
        assert_eq!(undeliverable.status.response_code, Some(-1));
    }

    #[test]
    fn every_field_is_copied_and_empty_strings_left_out() {
        let full = Invocation {
            status: "Success".into(),
            status_details: "Success".into(),
            response_code: 0,
            comment: "patch web".into(),
            document_name: "AWS-RunShellScript".into(),
            document_version: "$DEFAULT".into(),
            plugin_name: "aws:runShellScript".into(),
            execution_start_date_time: "2026-11-25T03:50:00.123Z".into(),
            execution_elapsed_time: "PT1.5S".into(),
            execution_end_date_time: "2026-11-25T03:50:01.623".into(),
            standard_output_content: "hello\n".into(),
            standard_output_url: "https://s3.eu-west-1.amazonaws.com/b/out".into(),
            standard_error_content: String::new(),
            standard_error_url: "https://s3.eu-west-1.amazonaws.com/b/err".into(),
            cloud_watch_log_group_name: Some("/ssm/out".into()),
            cloud_watch_output_enabled: Some(true),
            steps: None,
        };
        let s = poll_at(&Ok(full), 7).status;
        assert_eq!(s.steps, None, "one step: no list of steps");
        assert_eq!(s.comment.as_deref(), Some("patch web"));
        assert_eq!(s.document_version.as_deref(), Some("$DEFAULT"));
        assert_eq!(s.plugin_name.as_deref(), Some("aws:runShellScript"));
        assert_eq!(
            s.execution_start_date_time.as_deref(),
            Some("2026-11-25T03:50:00.123Z")
        );
        assert_eq!(s.execution_elapsed_time.as_deref(), Some("PT1.5S"));
        assert_eq!(
            s.execution_end_date_time.as_deref(),
            Some("2026-11-25T03:50:01.623")
        );
        assert_eq!(s.standard_output_content.as_deref(), Some("hello\n"));
        assert_eq!(s.standard_error_content, None);
        assert_eq!(
            s.standard_output_url.as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com/b/out")
        );
        assert_eq!(
            s.standard_error_url.as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com/b/err")
        );
        let cw = s.cloud_watch_output_config.unwrap();
        assert_eq!(cw.cloud_watch_log_group_name.as_deref(), Some("/ssm/out"));
        assert_eq!(cw.cloud_watch_output_enabled, Some(true));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.last_polled_time, Some(at(7)));
    }

    #[test]
    fn a_whole_multi_step_invocation_lists_its_steps_with_codes_only_once_terminal() {
        let step = |name: &str, status: &str, code: i32| StepOutcome {
            name: name.into(),
            status: status.into(),
            response_code: code,
        };
        let whole = |status: &str, steps: Vec<StepOutcome>| Invocation {
            status: status.into(),
            status_details: status.into(),
            response_code: 2,
            plugin_name: "runShellScript".into(),
            document_name: "AWS-RunRemoteScript".into(),
            steps: Some(steps),
            ..Invocation::default()
        };
        let running = poll_at(
            &Ok(whole(
                "InProgress",
                vec![
                    step("downloadContent", "Success", 0),
                    // The SDK reads an absent code as 0.
                    step("runShellScript", "InProgress", 0),
                ],
            )),
            1,
        )
        .status;
        assert_eq!(running.response_code, Some(-1), "the invocation still runs");
        assert_eq!(
            running.steps,
            Some(vec![
                InvocationStep {
                    name: "downloadContent".into(),
                    status: "Success".into(),
                    response_code: 0,
                },
                InvocationStep {
                    name: "runShellScript".into(),
                    status: "InProgress".into(),
                    response_code: -1,
                },
            ])
        );
        let failed = poll_at(
            &Ok(whole(
                "Failed",
                vec![
                    step("downloadContent", "Success", 0),
                    step("runShellScript", "Failed", 2),
                ],
            )),
            2,
        );
        let s = &failed.status;
        assert_eq!(s.status.as_deref(), Some("Failed"));
        assert_eq!(s.response_code, Some(2), "the deciding step's code");
        assert_eq!(s.plugin_name.as_deref(), Some("runShellScript"));
        let steps = s.steps.as_deref().unwrap_or_default();
        assert_eq!(
            steps.iter().map(|s| s.response_code).collect::<Vec<_>>(),
            [0, 2]
        );
        assert!(
            conditions::is_true(&s.conditions, STALLED),
            "a failure, not an error"
        );
        assert_eq!(failed.next, Polling::Stop);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(
            json["steps"][1],
            serde_json::json!({"name": "runShellScript", "status": "Failed", "responseCode": 2})
        );
    }

    #[test]
    fn missing_fields_stay_absent() {
        let bare = Invocation {
            status: "Pending".into(),
            ..Invocation::default()
        };
        let s = poll_at(&Ok(bare), 1).status;
        assert_eq!(s.status_details, None);
        assert_eq!(s.document_name, None);
        assert_eq!(s.cloud_watch_output_config, None);
        assert_eq!(s.standard_output_content, None);
    }

    #[test]
    fn long_output_is_bounded_with_a_marker() {
        let mut inv = invocation("Success", "Success", 0);
        inv.standard_output_content = "o".repeat(24_000);
        inv.standard_error_content = "e".repeat(8_000);
        let s = poll_at(&Ok(inv), 1).status;
        let out = s.standard_output_content.unwrap();
        assert_eq!(out.chars().count(), 4000);
        assert!(out.ends_with(output::CUT_MARKER));
        assert_eq!(s.standard_error_content.unwrap().chars().count(), 4000);
    }

    #[test]
    fn the_same_answer_twice_writes_nothing_and_moves_no_clock() {
        let answer = Ok(invocation("InProgress", "In Progress", -1));
        let first = poll_at(&answer, 10);
        let again = poll_on(Some(&first.status), &answer, 20);
        assert!(!again.write);
        assert_eq!(again.note, None);
        assert_eq!(
            again.status, first.status,
            "lastPolledTime and transition times kept"
        );
    }

    #[test]
    fn a_status_change_writes_records_an_event_and_keeps_unflipped_times() {
        let first = poll_at(&Ok(invocation("Pending", "Pending", -1)), 10);
        let next = poll_on(
            Some(&first.status),
            &Ok(invocation("InProgress", "In Progress", -1)),
            20,
        );
        assert!(next.write);
        assert_eq!(next.status.last_polled_time, Some(at(20)));
        let note = next.note.unwrap();
        assert_eq!((note.warning, note.reason.as_str()), (false, "InProgress"));
        assert!(next
            .status
            .conditions
            .iter()
            .all(|c| c.last_transition_time == at(10)));

        let failed = poll_on(
            Some(&next.status),
            &Ok(invocation("Failed", "Failed", 2)),
            30,
        );
        let note = failed.note.unwrap();
        assert!(note.warning);
        assert_eq!(note.message, "SSM reports Failed (Failed), exit code 2");
    }

    #[test]
    fn a_first_progress_waits_until_the_resource_is_progress_after_old() {
        let running = poll_at(&Ok(invocation("InProgress", "In Progress", -1)), 10).status;
        let pending = poll_at(&Ok(invocation("Pending", "Pending", -1)), 10).status;
        let not_yet = poll_at(&Err(SsmError::InvocationDoesNotExist("new".into())), 10).status;
        let throttled = poll_at(&Err(SsmError::Throttled("slow down".into())), 10).status;
        let done = poll_at(&Ok(invocation("Success", "Success", 0)), 10).status;
        let failed = poll_at(&Ok(invocation("Failed", "Failed", 1)), 10).status;
        let denied = poll_at(&Err(SsmError::AccessDenied("no".into())), 10).status;
        let secs = Duration::from_secs;
        let after = secs(10);
        // A first progress waits out the rest of the time (as stored, before any write, the
        // status is the schema's default)...
        let unobserved = CommandInvocationStatus {
            observed_generation: Some(crate::api::NOT_OBSERVED),
            ..CommandInvocationStatus::default()
        };
        for progress in [&running, &pending, &not_yet, &throttled] {
            for stored in [None, Some(&unobserved)] {
                assert_eq!(progress_held(stored, progress, secs(0), after), Some(after));
                assert_eq!(
                    progress_held(stored, progress, secs(3), after),
                    Some(secs(7))
                );
                assert_eq!(progress_held(stored, progress, secs(10), after), None);
                assert_eq!(progress_held(stored, progress, secs(60), after), None);
                // `--progress-after 0s` writes it at once.
                assert_eq!(
                    progress_held(stored, progress, secs(0), Duration::ZERO),
                    None
                );
            }
        }
        // ... a final answer or an error an outside fix must cure does not,
        for answer in [&done, &failed, &denied] {
            assert_eq!(progress_held(None, answer, secs(0), after), None);
            assert_eq!(
                progress_held(Some(&unobserved), answer, secs(0), after),
                None
            );
        }
        // nor progress on a resource that already shows a status (it is news there).
        assert_eq!(
            progress_held(Some(&pending), &running, secs(3), after),
            None
        );
    }

    #[test]
    fn a_ticking_elapsed_time_alone_is_not_written() {
        let mut started = invocation("InProgress", "In Progress", -1);
        started.execution_elapsed_time = "PT1S".into();
        let first = poll_at(&Ok(started), 10);
        let mut more = invocation("InProgress", "In Progress", -1);
        more.execution_elapsed_time = "PT5S".into();
        let next = poll_on(Some(&first.status), &Ok(more), 20);
        assert!(!next.write, "no write for a ticking clock");
        assert_eq!(next.note, None);
        assert_eq!(next.status.execution_elapsed_time.as_deref(), Some("PT1S"));
        let mut done = invocation("Success", "Success", 0);
        done.execution_elapsed_time = "PT9S".into();
        let end = poll_on(Some(&next.status), &Ok(done), 30);
        assert_eq!(end.status.execution_elapsed_time.as_deref(), Some("PT9S"));
    }

    #[test]
    fn not_found_within_grace_keeps_reconciling_quietly() {
        let out = poll_at(&Err(SsmError::InvocationDoesNotExist("nope".into())), 5);
        assert_eq!(flags(&out.status), [false, true, false, false]);
        assert_eq!(out.status.conditions[1].reason, "InvocationNotFound");
        assert_eq!(out.next, Polling::Poll);
        assert_eq!(out.note, None);
        assert_eq!(out.status.status, None);
    }

    #[test]
    fn not_found_after_grace_stalls_and_is_rechecked_rarely() {
        let out = poll_at(&Err(SsmError::InvocationDoesNotExist("nope".into())), 301);
        assert_eq!(flags(&out.status), [false, false, true, true]);
        assert_eq!(out.next, Polling::RecheckRarely);
        let note = out.note.unwrap();
        assert_eq!(
            (note.warning, note.reason.as_str()),
            (true, "InvocationNotFound")
        );
        assert!(note.message.contains("5m"), "{}", note.message);
    }

    #[test]
    fn crossing_the_grace_window_warns_once() {
        let not_found = Err(SsmError::InvocationDoesNotExist("nope".into()));
        let waiting = poll_at(&not_found, 5);
        let stalled = poll_on(Some(&waiting.status), &not_found, 301);
        assert_eq!(
            stalled.note.as_ref().map(|n| n.reason.as_str()),
            Some("InvocationNotFound")
        );
        let again = poll_on(Some(&stalled.status), &not_found, 900);
        assert_eq!(again.note, None);
        assert!(!again.write);
    }

    #[test]
    fn permanent_errors_stall_with_their_reason_and_stop() {
        for err in [
            SsmError::InvalidCommandId("bad id".into()),
            SsmError::InvalidInstanceId("bad node".into()),
            SsmError::InvalidPluginName("no such step".into()),
            SsmError::Validation("ValidationException: 1 validation error".into()),
        ] {
            let out = poll_at(&Err(err.clone()), 1);
            assert_eq!(flags(&out.status), [false, false, true, true], "{err:?}");
            assert!(out
                .status
                .conditions
                .iter()
                .all(|c| c.reason == err.reason()));
            assert!(out.status.conditions[2].message.contains(err.message()));
            assert_eq!(out.next, Polling::Stop);
            assert!(out.note.unwrap().warning);
        }
    }

    #[test]
    fn a_malformed_request_stalls_with_validation_error_and_is_not_retried() {
        let out = poll_at(
            &Err(SsmError::Validation("ValidationException: bad".into())),
            1,
        );
        assert_eq!(out.status.conditions[2].reason, "ValidationError");
        assert_eq!(out.next, Polling::Stop);
        assert!(!needs_polling(&out.status));
    }

    #[test]
    fn access_denied_stalls_points_at_iam_and_recovers_without_a_spec_change() {
        let denied = Err(SsmError::AccessDenied("not authorized".into()));
        let stalled = poll_at(&denied, 1);
        assert_eq!(flags(&stalled.status), [false, false, true, true]);
        assert_eq!(stalled.next, Polling::RecheckRarely);
        assert!(needs_polling(&stalled.status), "re-checked rarely");
        let message = &stalled.status.conditions[2].message;
        assert!(message.contains("ssm:GetCommandInvocation"), "{message}");
        assert!(message.contains("docs/iam.md"), "{message}");
        assert!(message.contains("not authorized"), "{message}");
        assert!(!message.contains("fix the spec"), "{message}");

        let still = poll_on(Some(&stalled.status), &denied, 400);
        assert!(!still.write && still.note.is_none(), "no news, no write");

        let fixed = poll_on(
            Some(&stalled.status),
            &Ok(invocation("Success", "Success", 0)),
            800,
        );
        assert_eq!(flags(&fixed.status), [true, false, false, true]);
        assert_eq!(fixed.next, Polling::Stop);
        assert!(!needs_polling(&fixed.status));
    }

    #[test]
    fn a_role_that_cannot_be_assumed_stalls_and_is_rechecked_rarely() {
        let failed = Err(SsmError::AssumeRoleFailed(
            "AccessDenied: not trusted".into(),
        ));
        let out = poll_at(&failed, 1);
        assert_eq!(flags(&out.status), [false, false, true, true]);
        assert_eq!(out.status.conditions[2].reason, "AssumeRoleFailed");
        assert_eq!(out.next, Polling::RecheckRarely);
        assert!(needs_polling(&out.status));
        let message = &out.status.conditions[2].message;
        assert!(
            message.contains("not trusted") && message.contains("trust policy"),
            "{message}"
        );
    }

    #[test]
    fn a_transient_error_during_a_rare_recheck_leaves_a_stalled_resource_as_it_was() {
        for stalling in [
            SsmError::AccessDenied("denied".into()),
            SsmError::InvocationDoesNotExist("nope".into()),
        ] {
            let stalled = poll_at(&Err(stalling.clone()), 301);
            assert_eq!(flags(&stalled.status), [false, false, true, true]);
            for transient in [
                SsmError::Throttled("Rate exceeded".into()),
                SsmError::Unavailable("HTTP 503".into()),
            ] {
                let out = poll_on(Some(&stalled.status), &Err(transient), 900);
                assert_eq!(out.status, stalled.status, "{stalling:?} then a blip");
                assert!(!out.write && out.note.is_none());
                assert_eq!(out.next, Polling::RecheckRarely);
            }
        }
    }

    #[test]
    fn not_found_stays_stalled_when_a_restart_forgets_how_long_it_waited() {
        let not_found = Err(SsmError::InvocationDoesNotExist("nope".into()));
        let stalled = poll_at(&not_found, 301);
        // After a restart the grace clock of a changed spec starts again at 0.
        let again = poll_on(Some(&stalled.status), &not_found, 0);
        assert_eq!(again.status, stalled.status);
        assert!(!again.write);
    }

    #[test]
    fn only_outside_fixable_stalls_and_unfinished_ones_need_polling() {
        let running = poll_at(&Ok(invocation("InProgress", "In Progress", -1)), 1);
        let failed = poll_at(&Ok(invocation("Failed", "Failed", 1)), 1);
        let bad_plugin = poll_at(&Err(SsmError::InvalidPluginName("x".into())), 1);
        let not_found = poll_at(&Err(SsmError::InvocationDoesNotExist("x".into())), 301);
        let verdicts =
            [&running, &failed, &bad_plugin, &not_found].map(|o| needs_polling(&o.status));
        assert_eq!(verdicts, [true, false, false, true]);
    }

    #[test]
    fn reconciling_and_stalled_are_never_true_together_and_failure_is_not_ready() {
        let answers = [
            Ok(invocation("Pending", "Pending", -1)),
            Ok(invocation("Failed", "Failed", 1)),
            Ok(invocation("Cancelling", "Cancelling", -1)),
            Err(SsmError::Throttled("x".into())),
            Err(SsmError::AccessDenied("x".into())),
            Err(SsmError::InvocationDoesNotExist("x".into())),
        ];
        for answer in &answers {
            for seconds in [1, 301] {
                let [ready, reconciling, stalled, finished] =
                    flags(&poll_at(answer, seconds).status);
                assert!(!(reconciling && stalled), "{answer:?}");
                assert_eq!(finished, ready || stalled, "{answer:?}");
                if stalled {
                    assert!(!ready, "{answer:?}");
                }
            }
        }
    }

    #[test]
    fn a_running_step_whose_elapsed_time_ticked_brings_no_news() {
        let mut before = invocation("InProgress", "In Progress", -1);
        before.execution_elapsed_time = "PT1S".into();
        let mut after = before.clone();
        after.execution_elapsed_time = "PT5S".into();
        assert!(only_elapsed_time_ticked(&before, &after));
        assert!(
            !only_elapsed_time_ticked(&before, &before),
            "nothing changed at all"
        );
        let mut output = after.clone();
        output.standard_output_content = "more".into();
        assert!(!only_elapsed_time_ticked(&before, &output));
        let mut done = invocation("Success", "Success", 0);
        done.execution_elapsed_time = "PT9S".into();
        assert!(!only_elapsed_time_ticked(&before, &done));
    }

    #[test]
    fn only_running_and_transient_answers_are_mere_progress() {
        let cases = [
            (Ok(invocation("Pending", "Pending", -1)), 1, true),
            (Ok(invocation("InProgress", "In Progress", -1)), 1, true),
            (Ok(invocation("Delayed", "Delayed", -1)), 1, true),
            (Ok(invocation("Cancelling", "Cancelling", -1)), 1, true),
            (Err(SsmError::Throttled("x".into())), 1, true),
            (Err(SsmError::InvocationDoesNotExist("x".into())), 1, true),
            (Ok(invocation("Success", "Success", 0)), 1, false),
            (Ok(invocation("Failed", "Failed", 1)), 1, false),
            (
                Ok(invocation("TimedOut", "Execution Timed Out", -1)),
                1,
                false,
            ),
            (Err(SsmError::AccessDenied("x".into())), 1, false),
            (
                Err(SsmError::InvocationDoesNotExist("x".into())),
                301,
                false,
            ),
        ];
        for (answer, seconds, progress) in &cases {
            let status = poll_at(answer, *seconds).status;
            assert_eq!(
                is_progress(&status),
                *progress,
                "{answer:?} after {seconds} s"
            );
        }
    }

    #[test]
    fn event_actions_name_the_transition() {
        let pending = poll_at(&Ok(invocation("Pending", "Pending", -1)), 1);
        assert_eq!(pending.note.as_ref().unwrap().action, "NewToPending");
        let running = poll_on(
            Some(&pending.status),
            &Ok(invocation("InProgress", "In Progress", -1)),
            2,
        );
        assert_eq!(running.note.unwrap().action, "PendingToInProgress");
        let throttled = poll_on(
            Some(&running.status),
            &Err(SsmError::Throttled("x".into())),
            3,
        );
        assert_eq!(throttled.note.unwrap().action, "InProgressToThrottled");
    }

    #[test]
    fn transient_errors_keep_the_last_answer_and_warn_once() {
        let running = poll_at(&Ok(invocation("InProgress", "In Progress", -1)), 10);
        let throttled = Err(SsmError::Throttled("Rate exceeded".into()));
        let first = poll_on(Some(&running.status), &throttled, 20);
        assert_eq!(
            first.status.status.as_deref(),
            Some("InProgress"),
            "status kept"
        );
        assert_eq!(flags(&first.status), [false, true, false, false]);
        assert_eq!(condition_row(&first.status)[1].2, "Throttled");
        assert!(first.write);
        assert_eq!(first.next, Polling::Poll);
        assert_eq!(first.note.as_ref().unwrap().reason, "Throttled");
        let second = poll_on(Some(&first.status), &throttled, 30);
        assert!(!second.write);
        assert_eq!(second.note, None, "no Event flood while the error lasts");
        let unavailable = poll_on(
            Some(&first.status),
            &Err(SsmError::Unavailable("HTTP 500".into())),
            40,
        );
        assert_eq!(condition_row(&unavailable.status)[0].2, "SsmUnavailable");
    }

    #[test]
    fn a_new_generation_drops_the_old_answer_and_resets() {
        let done = poll_at(&Ok(invocation("Failed", "Failed", 1)), 10);
        let poll = Poll {
            answer: &Err(SsmError::Throttled("Rate exceeded".into())),
            generation: Some(2),
            now: at(20),
            waited: Duration::ZERO,
        };
        let out = apply(Some(&done.status), &poll, &SETTINGS);
        assert_eq!(
            out.status.status, None,
            "old spec's SSM fields are not shown"
        );
        assert_eq!(out.status.observed_generation, Some(2));
        assert!(out
            .status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(2)));
        assert!(out.write);
    }
}
