//! Pure: the status of a `Command` for each thing that happens to its run (refused, intended,
//! sent, observed in SSM, an SSM error), with the four standard conditions and the Event
//! that marks a transition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions::{self, Standing, READY};
use crate::api::{CommandStatus, SendRecord};
use crate::aws::ssm::is_terminal;
use crate::aws::ssm::{CommandSummary, Recovery, SsmError};
use crate::command::send::{DOCUMENT_NOT_ALLOWED, SENDING_DISABLED};
use crate::k8s::writer::EventNote;

/// Condition reason from the intent until SSM reports on the run: SSM's own first status
/// (the contract's reasons are SSM statuses and the operator's named errors).
pub const PENDING: &str = "Pending";
/// Event reason of a recorded intent (the condition says `Pending`).
pub const SENDING: &str = "Sending";
/// Event reason of SSM accepting the send, or of the search finding it.
pub const SENT: &str = "Sent";

/// A new status and the Event for the transition into it, if it is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The whole status.
    pub status: CommandStatus,
    /// The Event to record before writing it.
    pub note: Option<EventNote>,
}

impl Change {
    /// Whether the status differs from `current` (else nothing is written).
    pub fn differs_from(&self, current: Option<&CommandStatus>) -> bool {
        current != Some(&self.status)
    }
}

fn with_conditions(
    current: Option<&CommandStatus>,
    status: CommandStatus,
    standing: Standing,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
) -> Change {
    with_event(
        current,
        status,
        standing,
        (reason, message),
        generation,
        now,
        None,
    )
}

/// Like [`with_conditions`]; `event` names an Event reason recorded even when the condition
/// reason stays the same (a step of the send that SSM's statuses do not name).
fn with_event(
    current: Option<&CommandStatus>,
    mut status: CommandStatus,
    standing: Standing,
    (reason, message): (&str, &str),
    generation: i64,
    now: &Time,
    event: Option<&str>,
) -> Change {
    let previous: &[Condition] = current.map_or(&[], |s| s.conditions.as_slice());
    let was = previous.iter().find(|c| c.type_ == READY);
    let same = was.is_some_and(|c| {
        c.reason == reason && c.message == message && c.observed_generation == Some(generation)
    });
    status.observed_generation = Some(generation);
    status.conditions = if same {
        previous.to_vec()
    } else {
        conditions::build(previous, standing, reason, message, Some(generation), now)
    };
    let transition =
        was.is_none_or(|c| c.reason != reason || c.observed_generation != Some(generation));
    let note = (transition || (event.is_some() && !same)).then(|| {
        let reason = event.unwrap_or(reason);
        EventNote {
            warning: standing == Standing::Stalled,
            reason: reason.to_string(),
            action: format!("{}To{reason}", was.map_or("New", |c| c.reason.as_str())),
            message: message.to_string(),
        }
    });
    Change { status, note }
}

/// `Stalled` with `reason` and no run for this generation (sending disabled, document not
/// allowed, SSM refused the send, or the operator cannot tell whether it sent). The intent, if
/// any, is kept: it documents what was tried.
pub fn refused(
    current: Option<&CommandStatus>,
    generation: i64,
    reason: &str,
    message: &str,
    now: &Time,
) -> Change {
    let status = CommandStatus {
        send: current
            .and_then(|s| s.send.clone())
            .filter(|s| s.generation == generation),
        ..CommandStatus::default()
    };
    with_conditions(
        current,
        status,
        Standing::Stalled,
        reason,
        message,
        generation,
        now,
    )
}

/// The message for a refusal by the operator's own settings.
pub fn gate_message(reason: &str, document: &str) -> String {
    match reason {
        SENDING_DISABLED => "sending commands is disabled in this operator (start it with \
                             --send-commands, chart value sendCommands.enabled)"
            .to_string(),
        DOCUMENT_NOT_ALLOWED => format!(
            "document {document} is not in this operator's --allowed-documents \
             (chart value sendCommands.allowedDocuments)"
        ),
        _ => reason.to_string(),
    }
}

/// A new attempt recorded for `generation`: the previous run's SSM fields are gone.
pub fn intended(
    current: Option<&CommandStatus>,
    generation: i64,
    record: &SendRecord,
    now: &Time,
) -> Change {
    let status = CommandStatus {
        send: Some(record.clone()),
        ..CommandStatus::default()
    };
    let message = format!(
        "sending generation {generation} to SSM (Comment marker {})",
        record.marker
    );
    with_event(
        current,
        status,
        Standing::InProgress,
        (PENDING, &message),
        generation,
        now,
        Some(SENDING),
    )
}

/// SSM accepted the send (or the search found it): the run is `command_id`.
pub fn adopted(
    current: Option<&CommandStatus>,
    generation: i64,
    command_id: &str,
    now: &Time,
) -> Change {
    let status = CommandStatus {
        command_id: Some(command_id.to_string()),
        send: current.and_then(|s| s.send.clone()),
        ..CommandStatus::default()
    };
    let message = format!("SSM accepted the command: {command_id}");
    with_event(
        current,
        status,
        Standing::InProgress,
        (PENDING, &message),
        generation,
        now,
        Some(SENT),
    )
}

/// Still sending: the attempt did not create a command for now, or the search must wait.
pub fn sending(
    current: Option<&CommandStatus>,
    generation: i64,
    message: &str,
    now: &Time,
) -> Change {
    let status = CommandStatus {
        send: current.and_then(|s| s.send.clone()),
        ..CommandStatus::default()
    };
    with_conditions(
        current,
        status,
        Standing::InProgress,
        PENDING,
        message,
        generation,
        now,
    )
}

/// What SSM reports for the run.
/// `change` with `refused` children counted in its status (left out while none were).
pub fn with_refused_children(mut change: Change, refused: usize) -> Change {
    change.status.refused_children =
        (refused > 0).then(|| i32::try_from(refused).unwrap_or(i32::MAX));
    change
}

/// The status for SSM's latest `summary` of the run.
pub fn observed(
    current: Option<&CommandStatus>,
    generation: i64,
    summary: &CommandSummary,
    now: &Time,
) -> Change {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let status = CommandStatus {
        command_id: Some(summary.command_id.clone()),
        status: text(&summary.status),
        status_details: text(&summary.status_details),
        requested_date_time: text(&summary.requested),
        target_count: Some(summary.target_count),
        completed_count: Some(summary.completed_count),
        error_count: Some(summary.error_count),
        delivery_timed_out_count: Some(summary.delivery_timed_out_count),
        done: Some(format!(
            "{}/{}",
            summary.completed_count, summary.target_count
        )),
        send: current.and_then(|s| s.send.clone()),
        ..CommandStatus::default()
    };
    let standing = match summary.status.as_str() {
        "Success" => Standing::Succeeded,
        s if is_terminal(s) => Standing::Stalled,
        _ => Standing::InProgress,
    };
    let reason = conditions::sanitize_reason(&summary.status);
    let message = format!(
        "SSM reports {}: {} of {} nodes done, {} failed, {} not reached",
        if summary.status_details.is_empty() {
            &summary.status
        } else {
            &summary.status_details
        },
        summary.completed_count,
        summary.target_count,
        summary.error_count,
        summary.delivery_timed_out_count
    );
    with_conditions(
        current, status, standing, &reason, &message, generation, now,
    )
}

/// SSM could not say how the run stands. Transient errors keep the last counts (`Reconciling`);
/// others stall with the error's reason (re-checked later by the caller).
pub fn ssm_error(
    current: Option<&CommandStatus>,
    generation: i64,
    error: &SsmError,
    now: &Time,
) -> Change {
    let status = current.cloned().unwrap_or_default();
    let standing = match error.recovery() {
        Recovery::Transient => Standing::InProgress,
        Recovery::OutsideFix | Recovery::SpecChange => Standing::Stalled,
    };
    with_conditions(
        current,
        status,
        standing,
        error.reason(),
        &error.to_string(),
        generation,
        now,
    )
}

/// Whether the run this status shows has ended (SSM terminal status).
pub fn run_finished(status: &CommandStatus) -> bool {
    status.status.as_deref().is_some_and(is_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{is_true, FINISHED, RECONCILING, STALLED};
    use k8s_openapi::jiff::Timestamp;

    fn now(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn summary(status: &str, completed: i32, target: i32, errors: i32) -> CommandSummary {
        CommandSummary {
            command_id: "c-1".into(),
            status: status.into(),
            status_details: status.into(),
            requested: "2026-11-30T10:00:00.000Z".into(),
            target_count: target,
            completed_count: completed,
            error_count: errors,
            delivery_timed_out_count: 0,
        }
    }

    fn record() -> SendRecord {
        SendRecord {
            spec_hash: None,
            generation: 1,
            marker: "op:0123456789abcdef".into(),
            time: now(0),
            attempt: 1,
        }
    }

    #[test]
    fn a_run_goes_sending_sent_in_progress_success_with_one_event_per_transition() {
        let c1 = intended(None, 1, &record(), &now(0));
        assert_eq!(c1.note.as_ref().unwrap().action, "NewToSending");
        assert!(is_true(&c1.status.conditions, RECONCILING));
        let c2 = adopted(Some(&c1.status), 1, "c-1", &now(1));
        assert_eq!(c2.status.command_id.as_deref(), Some("c-1"));
        assert_eq!(c2.status.send, Some(record()), "the intent stays");
        assert_eq!(c2.note.as_ref().unwrap().action, "PendingToSent");
        assert_eq!(c2.note.as_ref().unwrap().reason, "Sent");
        assert_eq!(
            c2.status.conditions[0].reason, "Pending",
            "condition reasons stay within the contract: SSM statuses and named errors"
        );
        let c3 = observed(
            Some(&c2.status),
            1,
            &summary("InProgress", 1, 3, 0),
            &now(2),
        );
        assert_eq!(c3.status.done.as_deref(), Some("1/3"));
        assert_eq!(c3.note.as_ref().unwrap().action, "PendingToInProgress");
        let same = observed(
            Some(&c3.status),
            1,
            &summary("InProgress", 1, 3, 0),
            &now(3),
        );
        assert!(
            !same.differs_from(Some(&c3.status)),
            "nothing new: no write"
        );
        assert!(same.note.is_none());
        let more = observed(
            Some(&c3.status),
            1,
            &summary("InProgress", 2, 3, 0),
            &now(4),
        );
        assert!(more.differs_from(Some(&c3.status)), "counts moved: write");
        assert!(more.note.is_none(), "but no Event: the reason is the same");
        let done = observed(Some(&more.status), 1, &summary("Success", 3, 3, 0), &now(5));
        assert!(is_true(&done.status.conditions, READY));
        assert!(is_true(&done.status.conditions, FINISHED));
        assert!(!done.note.as_ref().unwrap().warning);
        assert!(run_finished(&done.status));
        // lastTransitionTime of Reconciling moved only when it flipped.
        let ltt = |s: &CommandStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(ltt(&more.status, RECONCILING), now(0));
        assert_eq!(ltt(&done.status, RECONCILING), now(5));
    }

    #[test]
    fn a_failed_run_stalls_with_a_warning() {
        let c = observed(None, 1, &summary("Failed", 3, 3, 2), &now(0));
        assert!(is_true(&c.status.conditions, STALLED));
        assert!(is_true(&c.status.conditions, FINISHED));
        assert!(!is_true(&c.status.conditions, RECONCILING));
        let note = c.note.unwrap();
        assert!(note.warning);
        assert_eq!(note.reason, "Failed");
        assert!(
            note.message.contains("3 of 3 nodes done, 2 failed"),
            "{}",
            note.message
        );
    }

    #[test]
    fn refusals_stall_and_keep_the_intent_of_this_generation_only() {
        let sent = intended(None, 1, &record(), &now(0)).status;
        let c = refused(
            Some(&sent),
            1,
            "SendFailed",
            "InvalidDocument: no such document",
            &now(1),
        );
        assert!(is_true(&c.status.conditions, STALLED));
        assert_eq!(c.status.send, Some(record()));
        assert_eq!(c.status.observed_generation, Some(1));
        let c = refused(Some(&sent), 2, SENDING_DISABLED, "off", &now(1));
        assert_eq!(
            c.status.send, None,
            "generation 1's intent is not generation 2's"
        );
        let again = refused(Some(&c.status), 2, SENDING_DISABLED, "off", &now(9));
        assert!(
            !again.differs_from(Some(&c.status)),
            "a repeat writes nothing"
        );
        assert!(gate_message(DOCUMENT_NOT_ALLOWED, "Evil").contains("Evil"));
    }

    #[test]
    fn ssm_errors_while_tracking_keep_the_counts() {
        let running = observed(None, 1, &summary("InProgress", 1, 3, 0), &now(0)).status;
        let c = ssm_error(
            Some(&running),
            1,
            &SsmError::Throttled("Rate exceeded".into()),
            &now(1),
        );
        assert!(is_true(&c.status.conditions, RECONCILING));
        assert_eq!(c.status.done.as_deref(), Some("1/3"));
        let c = ssm_error(
            Some(&running),
            1,
            &SsmError::AccessDenied("no".into()),
            &now(1),
        );
        assert!(is_true(&c.status.conditions, STALLED));
        assert_eq!(c.note.unwrap().reason, "AccessDenied");
    }
}
