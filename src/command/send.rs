//! Pure: the exactly-once send of a `Command` generation, as a small state machine.
//!
//! SSM's `SendCommand` has no idempotency token, so exactly-once rests on three things:
//! 1. **Intent before the send.** The operator records `status.send` (generation, marker, time)
//!    with a compare-and-swap write (the object's resourceVersion as precondition) and calls
//!    `SendCommand` only after that write succeeded, with the SDK's retries off.
//! 2. **A marker SSM keeps.** The command's `Comment` ends with a marker derived from the
//!    object's uid and generation, so the command can be found again with `ListCommands`.
//! 3. **Search before any second attempt.** An intent without a command id (a crash, a lost
//!    reply, a new leader) is looked for in `ListCommands`. Found: adopted. Not found once SSM's
//!    listing has had [`SETTLE`] to catch up: never sent, so sent now. Cannot tell (the listing
//!    is refused, or the intent is older than SSM's history): `SendUnknown`, and no second send.
//!
//! [`decide`] says what to do next from what is stored; [`after_send`] and [`after_search`]
//! turn the outcome of a call into the next step. Nothing here does I/O.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::STALLED;
use crate::api::{CommandStatus, SendRecord};

/// How long `ListCommands` may lag behind `SendCommand` (eventual consistency; users report
/// about a second, SSM publishes no bound). An intent not found after this was never sent.
pub const SETTLE: Duration = Duration::from_secs(60);

/// How far around the intent's time the search looks (clock skew between the operator and
/// SSM).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The longest an attempt may wait (for the SSM budget) between its intent and the request
/// leaving: later, it is dropped unsent and a fresh intent follows, so [`SETTLE`], counted
/// from the intent, always leaves SSM's listing most of a minute after the request.
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(10);

/// SSM keeps Run Command history for about 30 days: an older intent cannot be checked.
pub const HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Reason: `--send-commands` is off.
pub const SENDING_DISABLED: &str = "SendingDisabled";
/// Reason: the document is not in `--allowed-documents`.
pub const DOCUMENT_NOT_ALLOWED: &str = "DocumentNotAllowed";
/// Reason: SSM refused the send.
pub const SEND_FAILED: &str = "SendFailed";
/// Reason: the operator cannot tell whether the send happened.
pub const SEND_UNKNOWN: &str = "SendUnknown";

/// Whether this operator may send the Command's document at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `--send-commands` is on and the document is allowed.
    Open,
    /// `--send-commands` is off.
    SendingDisabled,
    /// The document does not match `--allowed-documents`.
    DocumentNotAllowed,
}

/// The operator's sending policy: `--send-commands` and `--allowed-documents`.
#[derive(Clone, Debug)]
pub struct Policy {
    enabled: bool,
    /// `None`: every document.
    allowed: Option<globset::GlobSet>,
}

impl Policy {
    /// The policy for the flags; an invalid glob is refused with its own message.
    pub fn new(enabled: bool, allowed: &[String]) -> Result<Self, globset::Error> {
        let allowed = if allowed.is_empty() {
            None
        } else {
            let mut set = globset::GlobSetBuilder::new();
            for pattern in allowed {
                set.add(globset::Glob::new(pattern)?);
            }
            Some(set.build()?)
        };
        Ok(Self { enabled, allowed })
    }

    /// Whether `document` may be sent.
    pub fn gate(&self, document: &str) -> Gate {
        if !self.enabled {
            Gate::SendingDisabled
        } else if self
            .allowed
            .as_ref()
            .is_some_and(|set| !set.is_match(document))
        {
            Gate::DocumentNotAllowed
        } else {
            Gate::Open
        }
    }
}

/// What the operator knows when it decides.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The object's uid (for the marker).
    pub uid: &'a str,
    /// The spec generation to run.
    pub generation: i64,
    /// The status as stored.
    pub status: Option<&'a CommandStatus>,
    /// Whether a send is allowed.
    pub gate: Gate,
    /// This process made the recorded attempt and knows SSM did not create the command
    /// (throttled before it was created): it may try again at once.
    pub known_unsent: bool,
    /// Now.
    pub now: Timestamp,
}

/// The next step for a Command generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The run is known: track this command.
    Track {
        /// SSM command id.
        command_id: String,
    },
    /// This generation ended without a run (`SendFailed` / `SendUnknown` already recorded).
    Settled,
    /// Nothing may be sent: `Stalled` with this reason ([`SENDING_DISABLED`] or
    /// [`DOCUMENT_NOT_ALLOWED`]).
    Refuse {
        /// The condition reason.
        reason: &'static str,
    },
    /// Record this intent (compare-and-swap), then send.
    Intend {
        /// The intent to record.
        record: SendRecord,
    },
    /// Look for the recorded intent's command in `ListCommands`.
    Search {
        /// The marker to find at the end of a Comment.
        marker: String,
        /// When the attempt was recorded.
        attempted: Timestamp,
        /// The `InvokedAfter` / `InvokedBefore` bounds to look within ([`search_window`]).
        window: (Timestamp, Timestamp),
        /// Whether SSM's listing has had [`SETTLE`] since the attempt: if nothing is found
        /// now, nothing was sent.
        settled: bool,
    },
    /// The operator cannot tell whether it sent: `Stalled` with [`SEND_UNKNOWN`].
    Unknown {
        /// Why not.
        message: String,
    },
}

/// The marker for a generation of the object with `uid`: `op:` and 16 hex digits of FNV-1a.
pub fn marker(uid: &str, generation: i64) -> String {
    let hash = format!("{uid}/{generation}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("op:{hash:016x}")
}

/// The Comment sent: the spec's comment (cut to fit SSM's 100 characters) and the marker.
pub fn comment(spec_comment: Option<&str>, marker: &str) -> String {
    const SSM_MAX: usize = 100;
    let room = SSM_MAX.saturating_sub(marker.chars().count() + 1);
    match spec_comment.map(str::trim).filter(|c| !c.is_empty()) {
        Some(text) => {
            let text: String = text.chars().take(room).collect();
            format!("{} {marker}", text.trim_end())
        }
        None => marker.to_string(),
    }
}

/// Whether `comment` (a command SSM lists) carries `marker`.
pub fn carries(comment: &str, marker: &str) -> bool {
    comment == marker || comment.ends_with(&format!(" {marker}"))
}

/// What to do next for the stored state. See the module docs.
pub fn decide(facts: &Facts<'_>) -> Step {
    let generation = facts.generation;
    let status = facts.status;
    let intent = status
        .and_then(|s| s.send.as_ref())
        .filter(|send| send.generation == generation);
    if let (Some(_), Some(command_id)) = (intent, status.and_then(|s| s.command_id.as_ref())) {
        return Step::Track {
            command_id: command_id.clone(),
        };
    }
    if status.is_some_and(|s| ended_without_run(s, generation)) {
        return Step::Settled;
    }
    match intent {
        Some(_) if facts.known_unsent => fresh_or_refused(facts),
        Some(intent) => {
            let attempted = intent.time.0;
            if age(facts.now, attempted) > HISTORY {
                return Step::Unknown {
                    message: format!(
                        "the send of generation {generation} was attempted at {attempted}, longer \
                         ago than SSM keeps Run Command history, and no command id was recorded"
                    ),
                };
            }
            Step::Search {
                marker: intent.marker.clone(),
                attempted,
                window: search_window(attempted),
                settled: age(facts.now, attempted) >= SETTLE,
            }
        }
        None => fresh_or_refused(facts),
    }
}

/// A new attempt (with the same marker as any earlier one of this generation), if allowed.
fn fresh_or_refused(facts: &Facts<'_>) -> Step {
    match facts.gate {
        Gate::SendingDisabled => Step::Refuse {
            reason: SENDING_DISABLED,
        },
        Gate::DocumentNotAllowed => Step::Refuse {
            reason: DOCUMENT_NOT_ALLOWED,
        },
        Gate::Open => Step::Intend {
            record: SendRecord {
                spec_hash: None,
                generation: facts.generation,
                marker: marker(facts.uid, facts.generation),
                time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(whole_seconds(
                    facts.now,
                )),
                attempt: next_attempt(facts.status, facts.generation),
            },
        },
    }
}

/// The number of a new attempt at `generation`: one past the stored intent's of the same
/// generation, else 1. Intents are stored with a compare-and-swap over the object that holds
/// the previous one, so no two attempts of a generation get the same number.
fn next_attempt(status: Option<&CommandStatus>, generation: i64) -> u32 {
    status
        .and_then(|s| s.send.as_ref())
        .filter(|send| send.generation == generation)
        .map_or(1, |send| send.attempt.saturating_add(1))
}

/// The `InvokedAfter` / `InvokedBefore` bounds of a search for an attempt made at `attempted`.
pub fn search_window(attempted: Timestamp) -> (Timestamp, Timestamp) {
    let after = attempted
        .checked_sub(CLOCK_SKEW)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let before = attempted
        .checked_add(CLOCK_SKEW + MAX_SEND_DELAY)
        .unwrap_or(attempted);
    (after, before)
}

/// `now` to whole seconds: the API server stores `metav1.Time` so, and an intent compared
/// with what was stored must match it exactly.
fn whole_seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// How one `SendCommand` call ended, as far as creation of the command is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendResult {
    /// SSM created the command.
    Accepted {
        /// Its id.
        command_id: String,
    },
    /// SSM refused the request (a 4xx other than throttling): nothing was created, and sending
    /// the same request again cannot succeed.
    Refused {
        /// SSM's error code and message.
        message: String,
    },
    /// Nothing was created, and trying again later may work (throttling, the budget).
    NotCreated {
        /// Why.
        message: String,
    },
    /// Nothing was created, and only a fix outside the cluster helps (IAM refused the caller,
    /// the namespace's role could not be assumed, the region's endpoint never resolves):
    /// tried again rarely.
    Blocked {
        /// The condition reason (`AccessDenied`, `AssumeRoleFailed`, `SsmUnavailable`).
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// The command may or may not exist (5xx, timeout, connection lost mid-request).
    Unknown {
        /// Why.
        message: String,
    },
}

/// What follows a `SendCommand` call (or a search).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// Record this command id: the run is known.
    Adopt {
        /// SSM command id.
        command_id: String,
        /// Other commands that carry the same marker (a duplicate someone else caused).
        duplicates: Vec<String>,
    },
    /// `Stalled` with [`SEND_FAILED`]: never sent again for this generation.
    Failed {
        /// SSM's words.
        message: String,
    },
    /// Nothing is known to be created, and asking again later may help (throttled, SSM
    /// unavailable): retry the same step with backoff.
    Retry {
        /// Why.
        message: String,
    },
    /// Nothing was created, and only an outside fix helps: `Stalled` with `reason`, a new
    /// attempt after the rare re-check.
    Blocked {
        /// The condition reason.
        reason: &'static str,
        /// Why.
        message: String,
    },
    /// Whether it was created is unknown: search for the marker.
    Search,
    /// Not found yet, and the listing may still be catching up: search again after this.
    SearchAgain {
        /// How long until the listing has settled.
        after: Duration,
    },
    /// Not found once the listing settled: it was never sent; make a new attempt now.
    Resend,
    /// `Stalled` with [`SEND_UNKNOWN`]: never sent again for this generation.
    Unknown {
        /// Why the operator cannot tell.
        message: String,
    },
}

/// The step after a `SendCommand` call.
pub fn after_send(result: SendResult) -> FollowUp {
    match result {
        SendResult::Accepted { command_id } => FollowUp::Adopt {
            command_id,
            duplicates: Vec::new(),
        },
        SendResult::Refused { message } => FollowUp::Failed { message },
        SendResult::NotCreated { message } => FollowUp::Retry { message },
        SendResult::Blocked { reason, message } => FollowUp::Blocked { reason, message },
        SendResult::Unknown { .. } => FollowUp::Search,
    }
}

/// A command SSM lists whose Comment carries the marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// SSM command id.
    pub command_id: String,
    /// SSM `RequestedDateTime`.
    pub requested: Timestamp,
}

/// How a search of `ListCommands` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchResult {
    /// Every page was read; these carry the marker (maybe none).
    Listed(Vec<Found>),
    /// SSM refused the listing for good (e.g. no `ssm:ListCommands` permission).
    Refused {
        /// SSM's words.
        message: String,
    },
    /// The listing failed for now (throttled, unavailable): search again later.
    Failed {
        /// Why.
        message: String,
    },
}

/// The step after a search for the intent's marker. `intent_time` is when the attempt was
/// recorded, `now` the time the search started.
pub fn after_search(result: SearchResult, intent_time: Timestamp, now: Timestamp) -> FollowUp {
    match result {
        SearchResult::Listed(mut found) if !found.is_empty() => {
            found.sort_by(|a, b| (a.requested, &a.command_id).cmp(&(b.requested, &b.command_id)));
            let mut ids = found.into_iter().map(|f| f.command_id);
            let command_id = ids.next().unwrap_or_default();
            FollowUp::Adopt {
                command_id,
                duplicates: ids.collect(),
            }
        }
        SearchResult::Listed(_) => {
            let waited = age(now, intent_time);
            if waited >= SETTLE {
                FollowUp::Resend
            } else {
                FollowUp::SearchAgain {
                    after: SETTLE - waited,
                }
            }
        }
        SearchResult::Refused { message } => FollowUp::Unknown {
            message: format!(
                "a send was attempted but its reply was lost, and SSM refused the search for it \
                 (ListCommands): {message}"
            ),
        },
        SearchResult::Failed { message } => FollowUp::Retry { message },
    }
}

/// Whether a stored status records that `generation`'s send ended without a run.
pub fn ended_without_run(status: &CommandStatus, generation: i64) -> bool {
    status.observed_generation == Some(generation)
        && status.command_id.is_none()
        && status.conditions.iter().any(|c| {
            c.type_ == STALLED
                && c.status == "True"
                && (c.reason == SEND_FAILED || c.reason == SEND_UNKNOWN)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const UID: &str = "6f1c0c9e-8a4e-4c1e-9f7e-2f0d6c1b9a11";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn intent(generation: i64, secs: i64) -> SendRecord {
        SendRecord {
            spec_hash: None,
            generation,
            marker: marker(UID, generation),
            time: Time(at(secs)),
            attempt: 1,
        }
    }

    fn stalled(reason: &str, generation: i64) -> Vec<Condition> {
        conditions::build(
            &[],
            conditions::Standing::Stalled,
            reason,
            "m",
            Some(generation),
            &Time(at(0)),
        )
    }

    fn facts(status: Option<&CommandStatus>, generation: i64, now: i64) -> Facts<'_> {
        Facts {
            uid: UID,
            generation,
            status,
            gate: Gate::Open,
            known_unsent: false,
            now: at(now),
        }
    }

    #[test]
    fn the_policy_is_off_by_default_and_globs_match_whole_names() {
        let off = Policy::new(false, &["*".into()]).unwrap();
        assert_eq!(off.gate("AWS-RunShellScript"), Gate::SendingDisabled);
        let all = Policy::new(true, &[]).unwrap();
        assert_eq!(all.gate("Anything"), Gate::Open);
        let some = Policy::new(true, &["AWS-RunShellScript".into(), "Team-*".into()]).unwrap();
        assert_eq!(some.gate("AWS-RunShellScript"), Gate::Open);
        assert_eq!(some.gate("Team-Patch"), Gate::Open);
        assert_eq!(some.gate("AWS-RunShellScriptX"), Gate::DocumentNotAllowed);
        assert_eq!(
            some.gate("AWS-RunPowerShellScript"),
            Gate::DocumentNotAllowed
        );
        assert!(Policy::new(true, &["a[".into()]).is_err());
    }

    #[test]
    fn the_marker_is_stable_per_object_and_generation_and_fits_ssm_comments() {
        let m = marker(UID, 1);
        assert_eq!(m.len(), 19);
        assert!(m.starts_with("op:"));
        assert_eq!(m, marker(UID, 1), "the same in every process");
        assert_ne!(m, marker(UID, 2));
        assert_ne!(m, marker("another-uid", 1));
        let long = "x".repeat(200);
        for c in [None, Some(""), Some("nightly patch"), Some(long.as_str())] {
            let sent = comment(c, &m);
            assert!(sent.chars().count() <= 100, "{sent}");
            assert!(carries(&sent, &m), "{sent}");
        }
        assert_eq!(
            comment(Some("nightly patch"), &m),
            format!("nightly patch {m}")
        );
        assert!(!carries(&format!("nightly patch {m}x"), &m));
        assert!(!carries(&format!("x{m}"), &m));
    }

    #[test]
    fn a_new_generation_is_intended_with_its_own_marker() {
        assert_eq!(
            decide(&facts(None, 1, 0)),
            Step::Intend {
                record: intent(1, 0)
            }
        );
        // A previous generation's run (and its intent) do not count for this one.
        let old = CommandStatus {
            command_id: Some("old".into()),
            send: Some(intent(1, 0)),
            observed_generation: Some(1),
            ..Default::default()
        };
        assert_eq!(
            decide(&facts(Some(&old), 2, 10)),
            Step::Intend {
                record: intent(2, 10)
            }
        );
    }

    #[test]
    fn the_gate_refuses_before_anything_is_recorded() {
        for (gate, reason) in [
            (Gate::SendingDisabled, SENDING_DISABLED),
            (Gate::DocumentNotAllowed, DOCUMENT_NOT_ALLOWED),
        ] {
            let f = Facts {
                gate,
                ..facts(None, 1, 0)
            };
            assert_eq!(decide(&f), Step::Refuse { reason });
        }
    }

    #[test]
    fn a_known_run_is_tracked_whatever_the_gate_says() {
        let status = CommandStatus {
            command_id: Some("c-1".into()),
            send: Some(intent(3, 0)),
            observed_generation: Some(3),
            ..Default::default()
        };
        for gate in [Gate::Open, Gate::SendingDisabled, Gate::DocumentNotAllowed] {
            let f = Facts {
                gate,
                ..facts(Some(&status), 3, 5)
            };
            assert_eq!(
                decide(&f),
                Step::Track {
                    command_id: "c-1".into()
                }
            );
        }
    }

    #[test]
    fn an_intent_without_a_command_id_is_searched_never_resent_blindly() {
        // The crash points: after the intent write (before or after SSM accepted), a lost reply,
        // a new leader. All look the same from the stored status, and all search first.
        let status = CommandStatus {
            send: Some(intent(1, 0)),
            observed_generation: Some(1),
            ..Default::default()
        };
        assert_eq!(
            decide(&facts(Some(&status), 1, 5)),
            Step::Search {
                marker: marker(UID, 1),
                attempted: at(0),
                window: (
                    at(0).checked_sub(CLOCK_SKEW).unwrap(),
                    at(0).checked_add(CLOCK_SKEW + MAX_SEND_DELAY).unwrap()
                ),
                settled: false,
            }
        );
        let Step::Search { settled, .. } = decide(&facts(Some(&status), 1, 60)) else {
            panic!("search")
        };
        assert!(settled, "after SETTLE a miss means never sent");
        // Even with sending now disabled, the search still runs (it sends nothing).
        let f = Facts {
            gate: Gate::SendingDisabled,
            ..facts(Some(&status), 1, 5)
        };
        assert!(matches!(decide(&f), Step::Search { .. }));
    }

    #[test]
    fn an_attempt_this_process_knows_was_not_created_is_made_again_at_once() {
        let status = CommandStatus {
            send: Some(intent(1, 0)),
            ..Default::default()
        };
        let f = Facts {
            known_unsent: true,
            ..facts(Some(&status), 1, 3)
        };
        assert_eq!(
            decide(&f),
            Step::Intend {
                record: SendRecord {
                    attempt: 2,
                    ..intent(1, 3)
                }
            },
            "the same marker, a fresh time, the next number"
        );
        let f = Facts {
            known_unsent: true,
            gate: Gate::SendingDisabled,
            ..facts(Some(&status), 1, 3)
        };
        assert_eq!(
            decide(&f),
            Step::Refuse {
                reason: SENDING_DISABLED
            }
        );
    }

    #[test]
    fn attempts_in_the_same_second_are_told_apart_by_their_number() {
        // A throttled attempt at second 3, then a fresh one in the same second: the memo of
        // the first ("not created") must never be taken for the second.
        let status = CommandStatus {
            send: Some(intent(1, 3)),
            ..Default::default()
        };
        let f = Facts {
            known_unsent: true,
            ..facts(Some(&status), 1, 3)
        };
        let Step::Intend { record } = decide(&f) else {
            panic!("intend")
        };
        assert_eq!(record.time, intent(1, 3).time, "the same whole second");
        assert_ne!(
            (record.generation, record.attempt),
            (1, status.send.as_ref().map_or(0, |s| s.attempt)),
            "a different attempt"
        );
        // The first attempt of a generation is 1, also after an earlier generation's.
        assert_eq!(next_attempt(None, 1), 1);
        assert_eq!(next_attempt(Some(&status), 2), 1);
        assert_eq!(next_attempt(Some(&status), 1), 2);
        let old = CommandStatus {
            send: Some(SendRecord {
                attempt: 0,
                ..intent(1, 3)
            }),
            ..Default::default()
        };
        assert_eq!(
            next_attempt(Some(&old), 1),
            1,
            "a status written before numbering"
        );
    }

    #[test]
    fn intents_are_stamped_in_whole_seconds_as_the_api_server_stores_them() {
        let f = Facts {
            now: at(5).checked_add(Duration::from_millis(750)).unwrap(),
            ..facts(None, 1, 0)
        };
        let Step::Intend { record } = decide(&f) else {
            panic!("intend")
        };
        assert_eq!(record.time.0, at(5));
        let (after, before) = search_window(at(100));
        assert_eq!(after, at(100 - 300));
        assert_eq!(before, at(100 + 310));
    }

    #[test]
    fn an_intent_older_than_ssm_history_cannot_be_checked() {
        let status = CommandStatus {
            send: Some(intent(1, 0)),
            ..Default::default()
        };
        let later = HISTORY.as_secs() as i64 + 1;
        assert!(matches!(
            decide(&facts(Some(&status), 1, later)),
            Step::Unknown { .. }
        ));
    }

    #[test]
    fn a_generation_that_failed_or_is_unknown_stays_settled() {
        for reason in [SEND_FAILED, SEND_UNKNOWN] {
            let status = CommandStatus {
                send: Some(intent(2, 0)),
                observed_generation: Some(2),
                conditions: stalled(reason, 2),
                ..Default::default()
            };
            assert_eq!(decide(&facts(Some(&status), 2, 999)), Step::Settled);
            assert!(ended_without_run(&status, 2));
            // The next generation is a new run.
            assert!(matches!(
                decide(&facts(Some(&status), 3, 999)),
                Step::Intend { .. }
            ));
        }
        // A refusal by the gate is not an end: the gate is asked again.
        let status = CommandStatus {
            observed_generation: Some(2),
            conditions: stalled(SENDING_DISABLED, 2),
            ..Default::default()
        };
        assert!(matches!(
            decide(&facts(Some(&status), 2, 0)),
            Step::Intend { .. }
        ));
    }

    #[test]
    fn send_outcomes() {
        assert_eq!(
            after_send(SendResult::Accepted {
                command_id: "c".into()
            }),
            FollowUp::Adopt {
                command_id: "c".into(),
                duplicates: vec![]
            }
        );
        assert_eq!(
            after_send(SendResult::Refused {
                message: "InvalidDocument: nope".into()
            }),
            FollowUp::Failed {
                message: "InvalidDocument: nope".into()
            }
        );
        assert_eq!(
            after_send(SendResult::NotCreated {
                message: "Rate exceeded".into()
            }),
            FollowUp::Retry {
                message: "Rate exceeded".into()
            }
        );
        assert_eq!(
            after_send(SendResult::Unknown {
                message: "HTTP 500".into()
            }),
            FollowUp::Search
        );
        assert_eq!(
            after_send(SendResult::Blocked {
                reason: "AccessDenied",
                message: "no ssm:SendCommand".into()
            }),
            FollowUp::Blocked {
                reason: "AccessDenied",
                message: "no ssm:SendCommand".into()
            }
        );
    }

    #[test]
    fn search_outcomes() {
        let found = |id: &str, secs| Found {
            command_id: id.into(),
            requested: at(secs),
        };
        assert_eq!(
            after_search(
                SearchResult::Listed(vec![found("b", 2), found("a", 1)]),
                at(0),
                at(3)
            ),
            FollowUp::Adopt {
                command_id: "a".into(),
                duplicates: vec!["b".into()]
            },
            "the earliest is the run; later ones are reported"
        );
        assert_eq!(
            after_search(SearchResult::Listed(vec![]), at(0), at(20)),
            FollowUp::SearchAgain {
                after: Duration::from_secs(40)
            }
        );
        assert_eq!(
            after_search(SearchResult::Listed(vec![]), at(0), at(60)),
            FollowUp::Resend
        );
        assert!(matches!(
            after_search(
                SearchResult::Refused {
                    message: "AccessDenied".into()
                },
                at(0),
                at(1)
            ),
            FollowUp::Unknown { .. }
        ));
        assert_eq!(
            after_search(
                SearchResult::Failed {
                    message: "Rate exceeded".into()
                },
                at(0),
                at(1)
            ),
            FollowUp::Retry {
                message: "Rate exceeded".into()
            }
        );
    }
}
