//! Pure: the status lag of a status write (`ssm_operator_status_lag_seconds`), the operator's
//! main service-level indicator: how long after SSM's end of a run its terminal status was
//! stored, so that `kubectl wait` and GitOps tools could see it.
//!
//! Measured once per resource and spec generation, on the write that first stores a terminal
//! SSM status (Success, Failed, TimedOut, Cancelled; an operator error that stalls a resource is
//! no end of a run), from the moment SSM says the run ended to the write's success:
//! - `CommandInvocation`: SSM's `executionEndDateTime`, when it carries a time zone (SSM's own
//!   answers and the List walk's do: `...Z`). A string without one (moto writes local times
//!   without a zone) or one that does not parse is never an error: the lag then counts from
//!   `lastPolledTime`, when the operator first saw the terminal answer.
//! - `Command`: SSM's command-level status has no end time: the lag counts from the
//!   `Finished` condition's `lastTransitionTime`, when the operator first saw the terminal
//!   answer (the time of the reconcile that asked SSM).
//!
//! SSM's clock and the operator's are different clocks: skew shifts the figure by the
//! difference, and a write that seems to precede SSM's end (skew larger than the lag) counts
//! as zero rather than being dropped.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::FINISHED;
use crate::api::{CommandInvocationStatus, CommandStatus};
use crate::aws::ssm::is_terminal;

/// The lag to record for a `CommandInvocation` write from `before` to `after` that succeeded at
/// `written_at`; `None` unless this write is the first to store a terminal SSM status of its
/// generation.
pub fn invocation_lag(
    before: Option<&CommandInvocationStatus>,
    after: &CommandInvocationStatus,
    written_at: Timestamp,
) -> Option<Duration> {
    let ends = |s: &CommandInvocationStatus| s.status.as_deref().is_some_and(is_terminal);
    if !ends(after)
        || before.is_some_and(|b| ends(b) && b.observed_generation == after.observed_generation)
    {
        return None;
    }
    let end = after
        .execution_end_date_time
        .as_deref()
        .and_then(|text| text.parse::<Timestamp>().ok())
        .or_else(|| after.last_polled_time.as_ref().map(|t| t.0))
        .unwrap_or(written_at);
    Some(since(end, written_at))
}

/// The lag to record for a `Command` write from `before` to `after` that succeeded at
/// `written_at`; `None` unless this write is the first to store a terminal SSM status of its
/// generation.
pub fn command_lag(
    before: Option<&CommandStatus>,
    after: &CommandStatus,
    written_at: Timestamp,
) -> Option<Duration> {
    let ends = |s: &CommandStatus| s.status.as_deref().is_some_and(is_terminal);
    if !ends(after)
        || before.is_some_and(|b| ends(b) && b.observed_generation == after.observed_generation)
    {
        return None;
    }
    let seen = after
        .conditions
        .iter()
        .find(|c| c.type_ == FINISHED && c.status == "True")
        .map_or(written_at, |c| c.last_transition_time.0);
    Some(since(seen, written_at))
}

/// `to - from`, zero when `from` is later (clock skew).
fn since(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn invocation(status: &str, end: Option<&str>, polled: &str) -> CommandInvocationStatus {
        CommandInvocationStatus {
            status: Some(status.into()),
            execution_end_date_time: end.map(str::to_string),
            last_polled_time: Some(Time(at(polled))),
            observed_generation: Some(1),
            ..CommandInvocationStatus::default()
        }
    }

    #[test]
    fn a_terminal_write_counts_from_ssms_end_time() {
        let running = invocation("InProgress", None, "2026-12-01T10:00:00Z");
        let done = invocation(
            "Success",
            Some("2026-12-01T10:00:01.500Z"),
            "2026-12-01T10:00:02Z",
        );
        let written = at("2026-12-01T10:00:03.750Z");
        assert_eq!(
            invocation_lag(Some(&running), &done, written),
            Some(Duration::from_millis(2250))
        );
        assert_eq!(
            invocation_lag(None, &done, written),
            Some(Duration::from_millis(2250)),
            "a resource whose first write is its final one"
        );
        let offset = invocation(
            "Failed",
            Some("2026-12-01T11:00:01.5+01:00"),
            "2026-12-01T10:00:02Z",
        );
        assert_eq!(
            invocation_lag(Some(&running), &offset, written),
            Some(Duration::from_millis(2250)),
            "any RFC 3339 offset"
        );
    }

    #[test]
    fn progress_writes_and_rewrites_of_a_final_status_are_not_counted() {
        let pending = invocation("Pending", None, "2026-12-01T10:00:00Z");
        let running = invocation("InProgress", None, "2026-12-01T10:00:01Z");
        let written = at("2026-12-01T10:00:03Z");
        assert_eq!(invocation_lag(Some(&pending), &running, written), None);
        let done = invocation(
            "Success",
            Some("2026-12-01T10:00:01Z"),
            "2026-12-01T10:00:02Z",
        );
        let mut fuller = done.clone();
        fuller.standard_output_content = Some("the whole output".into());
        assert_eq!(invocation_lag(Some(&done), &fuller, written), None);
        let mut next_generation = done.clone();
        next_generation.observed_generation = Some(2);
        assert!(
            invocation_lag(Some(&done), &next_generation, written).is_some(),
            "a spec change runs again and ends again"
        );
        let cancelling = invocation("Cancelling", None, "2026-12-01T10:00:02Z");
        assert_eq!(invocation_lag(Some(&running), &cancelling, written), None);
    }

    #[test]
    fn an_end_time_without_a_zone_or_unreadable_falls_back_to_when_the_answer_was_first_seen() {
        let running = invocation("InProgress", None, "2026-12-01T10:00:00Z");
        let written = at("2026-12-01T10:00:05Z");
        for end in [
            Some("2026-12-01T10:00:01.623"),
            Some("yesterday"),
            Some(""),
            None,
        ] {
            let done = invocation("TimedOut", end, "2026-12-01T10:00:04Z");
            assert_eq!(
                invocation_lag(Some(&running), &done, written),
                Some(Duration::from_secs(1)),
                "{end:?}"
            );
        }
    }

    #[test]
    fn clock_skew_never_makes_a_negative_lag() {
        let done = invocation(
            "Success",
            Some("2026-12-01T10:00:09Z"),
            "2026-12-01T10:00:02Z",
        );
        assert_eq!(
            invocation_lag(None, &done, at("2026-12-01T10:00:05Z")),
            Some(Duration::ZERO)
        );
    }

    fn command(status: &str, finished_at: Option<&str>) -> CommandStatus {
        CommandStatus {
            status: Some(status.into()),
            observed_generation: Some(1),
            conditions: finished_at
                .map(|t| Condition {
                    type_: FINISHED.into(),
                    status: "True".into(),
                    reason: status.into(),
                    message: String::new(),
                    observed_generation: Some(1),
                    last_transition_time: Time(at(t)),
                })
                .into_iter()
                .collect(),
            ..CommandStatus::default()
        }
    }

    #[test]
    fn a_command_counts_from_when_its_end_was_first_seen() {
        let running = command("InProgress", None);
        let done = command("Failed", Some("2026-12-01T10:00:01Z"));
        let written = at("2026-12-01T10:00:01.400Z");
        assert_eq!(
            command_lag(Some(&running), &done, written),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            command_lag(Some(&done), &done, written),
            None,
            "counted once"
        );
        assert_eq!(command_lag(None, &running, written), None);
        assert_eq!(
            command_lag(None, &command("Success", None), written),
            Some(Duration::ZERO),
            "no Finished condition: the write itself"
        );
    }
}
