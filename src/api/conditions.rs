//! The four standard conditions (`Ready`, `Reconciling`, `Stalled`, `Finished`) and the one rule
//! that keeps them honest: `lastTransitionTime` moves only when a condition's status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: SSM status is `Success` (kstatus, `kubectl wait --for=condition=Ready`).
pub const READY: &str = "Ready";
/// `Reconciling`: not yet terminal and no permanent error (kstatus).
pub const RECONCILING: &str = "Reconciling";
/// `Stalled`: terminal failure or permanent error (kstatus).
pub const STALLED: &str = "Stalled";
/// `Finished`: terminal, whatever the outcome (`kubectl wait --for=condition=Finished`).
pub const FINISHED: &str = "Finished";

/// Where the invocation stands, as far as conditions are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// SSM reports `Success`.
    Succeeded,
    /// Still going: SSM not terminal, or a transient problem asking it.
    InProgress,
    /// SSM reports a terminal failure, or a permanent error stops tracking.
    Stalled,
}

/// The conditions for `standing`, with one reason and message for all four.
///
/// `previous` supplies `lastTransitionTime` for conditions whose status did not flip; `now`
/// stamps the rest. The result is always in the order Ready, Reconciling, Stalled, Finished.
pub fn build(
    previous: &[Condition],
    standing: Standing,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (ready, reconciling, stalled) = match standing {
        Standing::Succeeded => (true, false, false),
        Standing::InProgress => (false, true, false),
        Standing::Stalled => (false, false, true),
    };
    let finished = ready || stalled;
    [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
        (FINISHED, finished),
    ]
    .into_iter()
    .map(|(type_, on)| {
        let status = if on { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: crate::k8s::output::cut_to_bytes(message, MAX_MESSAGE_BYTES).to_string(),
            observed_generation: generation,
            last_transition_time,
        }
    })
    .collect()
}

/// Whether the condition `type_` is `True` in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Longest reason kept: SSM's statuses are short; the API allows 1024 characters.
pub const MAX_REASON_CHARS: usize = 64;
/// Longest message kept, in bytes: enough for any SSM message worth reading; the API allows
/// 32768 bytes, and a reply SSM garbled can carry far more.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Turns any string into a valid condition reason (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`,
/// at most [`MAX_REASON_CHARS`]), for SSM status values newer than this operator.
pub fn sanitize_reason(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .skip_while(|c| !c.is_ascii_alphabetic())
        .take(MAX_REASON_CHARS)
        .collect();
    if kept.is_empty() {
        "Unknown".to_string()
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> &'a str {
        &conditions.iter().find(|c| c.type_ == type_).unwrap().status
    }

    #[test]
    fn each_standing_sets_the_kstatus_triple_and_finished() {
        let ok = build(&[], Standing::Succeeded, "Success", "", Some(1), &at(0));
        let run = build(&[], Standing::InProgress, "InProgress", "", Some(1), &at(0));
        let bad = build(&[], Standing::Stalled, "Failed", "", Some(1), &at(0));
        let row = |c: &[Condition]| {
            [READY, RECONCILING, STALLED, FINISHED].map(|t| status_of(c, t).to_string())
        };
        assert_eq!(row(&ok), ["True", "False", "False", "True"]);
        assert_eq!(row(&run), ["False", "True", "False", "False"]);
        assert_eq!(row(&bad), ["False", "False", "True", "True"]);
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = build(&[], Standing::InProgress, "Pending", "a", Some(1), &at(10));
        let same = build(
            &first,
            Standing::InProgress,
            "InProgress",
            "b",
            Some(1),
            &at(20),
        );
        assert!(same.iter().all(|c| c.last_transition_time == at(10)));
        let done = build(&same, Standing::Succeeded, "Success", "c", Some(1), &at(30));
        let time_of = |t: &str| {
            done.iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time_of(READY), at(30));
        assert_eq!(time_of(RECONCILING), at(30));
        assert_eq!(time_of(FINISHED), at(30));
        assert_eq!(time_of(STALLED), at(10), "Stalled stayed False");
    }

    #[test]
    fn reasons_are_made_valid() {
        assert_eq!(sanitize_reason("InProgress"), "InProgress");
        assert_eq!(sanitize_reason("Paused by user"), "Pausedbyuser");
        assert_eq!(sanitize_reason("1-Step"), "Step");
        assert_eq!(sanitize_reason("--"), "Unknown");
        assert_eq!(sanitize_reason(&"A".repeat(5000)).len(), MAX_REASON_CHARS);
    }

    #[test]
    fn messages_are_bounded_in_bytes() {
        let huge = "é".repeat(100_000);
        let built = build(
            &[],
            Standing::InProgress,
            "SsmUnavailable",
            &huge,
            Some(1),
            &at(0),
        );
        assert!(built.iter().all(|c| c.message.len() == MAX_MESSAGE_BYTES));
    }
}
