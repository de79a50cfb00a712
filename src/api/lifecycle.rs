//! Pure: when a finished resource expires (`spec.ttlSecondsAfterFinished`,
//! `--ttl-after-finished`), and when a spec change is only a change of that TTL.
//!
//! - [`invocation_ttl`] / [`command_ttl`]: the TTL that applies to an object (its spec, else the
//!   operator's default), with the contract's exceptions: a `CommandInvocation` whose controller
//!   is a `Command` never expires on its own (it goes with its `Command`), the default applies
//!   only to `CommandInvocation`s without a controller owner, and a `Command` that Argo CD or
//!   Flux tracks gets no TTL unless it opts in ([`GITOPS_OPT_IN`]): a GitOps tool would
//!   recreate the deleted object, and a recreated `Command` is a new send.
//! - [`expiry`]: given that TTL, when `Finished` last turned `True`, and now: keep, delete now,
//!   or look again at a given time (the reconcilers requeue for exactly then; nothing is polled
//!   between finish and expiry).
//! - [`spec_hash`] and [`rebase_command`]: a spec change that only touched the TTL is not a new
//!   run: the status moves to the new generation as it is, with no SSM call and no send.
//!
//! Nothing here does I/O or reads a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::api::conditions::FINISHED;
use crate::api::{Command, CommandStatus};

/// The annotation by which a GitOps-managed `Command` accepts a TTL (value `"true"`): the user
/// states that the GitOps tool will not recreate it (e.g. the `Command` is also removed from
/// Git, or the tool ignores it once deleted).
pub const GITOPS_OPT_IN: &str = "ssm.operator.dev/ttl-with-gitops";

/// Reason of the Event that says a TTL was not applied to a GitOps-tracked `Command`.
pub const TTL_REFUSED: &str = "TTLRefusedGitOps";

/// Reason of the Event recorded when a resource is deleted by its TTL.
pub const EXPIRED: &str = "Expired";

/// Labels and annotations by which Argo CD and Flux mark what they manage: a `Command` with
/// any of them is recreated by its tool after a TTL deletion. (`label`, key, tool.)
pub const GITOPS_MARKS: &[(bool, &str, &str)] = &[
    (true, "app.kubernetes.io/instance", "Argo CD"),
    (false, "argocd.argoproj.io/tracking-id", "Argo CD"),
    (true, "kustomize.toolkit.fluxcd.io/name", "Flux"),
    (true, "helm.toolkit.fluxcd.io/name", "Flux"),
];

/// The TTL that applies to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Kept forever.
    None,
    /// Deleted this long after `Finished` turned `True`.
    After(Duration),
    /// A TTL was asked for, but the object is tracked by a GitOps tool (named by the mark) and
    /// did not opt in: kept forever, and the user is told.
    RefusedGitOps {
        /// The label or annotation found.
        mark: &'static str,
        /// `Argo CD` or `Flux`.
        tool: &'static str,
    },
}

/// The TTL of a `CommandInvocation`: a child of a `Command` never expires on its own; else the
/// spec's TTL, else `default` (`--ttl-after-finished`) when it has no controller owner at all.
pub fn invocation_ttl(
    spec_ttl: Option<i64>,
    owners: &[OwnerReference],
    default: Option<Duration>,
) -> Ttl {
    if Command::controls(owners) {
        return Ttl::None;
    }
    let controller = owners.iter().find(|o| o.controller == Some(true));
    match (spec_ttl, controller) {
        (Some(secs), _) => Ttl::After(seconds(secs)),
        (None, None) => default.map_or(Ttl::None, Ttl::After),
        (None, Some(_)) => Ttl::None,
    }
}

/// The TTL of a `Command`: the spec's, else `default`; refused when Argo CD or Flux tracks it
/// (see [`GITOPS_MARKS`]) unless it carries [`GITOPS_OPT_IN`]` = "true"`.
pub fn command_ttl(
    spec_ttl: Option<i64>,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    default: Option<Duration>,
) -> Ttl {
    let Some(ttl) = spec_ttl.map(seconds).or(default) else {
        return Ttl::None;
    };
    let opted_in = annotations
        .get(GITOPS_OPT_IN)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let tracked = GITOPS_MARKS.iter().find(|(label, key, _)| {
        if *label {
            labels.contains_key(*key)
        } else {
            annotations.contains_key(*key)
        }
    });
    match tracked {
        Some((_, mark, tool)) if !opted_in => Ttl::RefusedGitOps { mark, tool },
        _ => Ttl::After(ttl),
    }
}

fn seconds(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// What to do about a resource's expiry now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Not finished, or no TTL: nothing (a later status or spec change is looked at again).
    Keep,
    /// The TTL has run out: delete it.
    DeleteNow,
    /// Finished, the TTL runs out after this long: look again then.
    CheckIn(Duration),
}

/// Whether a resource with `ttl`, whose conditions are `conditions`, expires at `now`: counted
/// from the `lastTransitionTime` of `Finished` being `True`.
pub fn expiry(ttl: &Ttl, conditions: &[Condition], now: Timestamp) -> Expiry {
    let Ttl::After(ttl) = ttl else {
        return Expiry::Keep;
    };
    let Some(finished) = conditions
        .iter()
        .find(|c| c.type_ == FINISHED && c.status == "True")
    else {
        return Expiry::Keep;
    };
    let since: Duration = now
        .duration_since(finished.last_transition_time.0)
        .try_into()
        .unwrap_or(Duration::ZERO);
    match ttl.checked_sub(since) {
        Some(left) if !left.is_zero() => Expiry::CheckIn(left),
        _ => Expiry::DeleteNow,
    }
}

/// A fingerprint of what a spec asks SSM for: the spec as JSON without
/// `ttlSecondsAfterFinished` (FNV-1a, 16 hex digits). Two specs that differ only in the TTL
/// have the same fingerprint.
pub fn spec_hash<S: Serialize>(spec: &S) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("ttlSecondsAfterFinished");
    }
    let hash = value
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// A `Command`'s status moved to `generation` when the spec changed since the recorded send
/// only in its TTL (same [`spec_hash`]): the same run, no new send. `None`: not such a
/// change (a real new generation, an old record without a fingerprint, or already current).
pub fn rebase_command(
    status: &CommandStatus,
    hash: &str,
    generation: i64,
) -> Option<CommandStatus> {
    let send = status.send.as_ref()?;
    let old = send.generation;
    if old == generation
        || status.observed_generation != Some(old)
        || send.spec_hash.as_deref() != Some(hash)
    {
        return None;
    }
    let mut rebased = status.clone();
    if let Some(send) = rebased.send.as_mut() {
        send.generation = generation;
    }
    rebased.observed_generation = Some(generation);
    for condition in &mut rebased.conditions {
        if condition.observed_generation == Some(old) {
            condition.observed_generation = Some(generation);
        }
    }
    Some(rebased)
}

/// The conditions moved to `generation` (those that described `old`), for a
/// `CommandInvocation` whose spec changed only in its TTL.
pub fn rebase_conditions(
    conditions: &[Condition],
    old: Option<i64>,
    generation: i64,
) -> Vec<Condition> {
    conditions
        .iter()
        .cloned()
        .map(|mut c| {
            if c.observed_generation == old {
                c.observed_generation = Some(generation);
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CommandSpec, SendRecord};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn finished(status: &str, since: i64) -> Vec<Condition> {
        vec![Condition {
            type_: FINISHED.into(),
            status: status.into(),
            reason: "Success".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(at(since)),
        }]
    }

    fn owner(kind: &str, api_version: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    #[test]
    fn an_invocation_takes_its_spec_ttl_else_the_default_only_without_a_controller() {
        let secs = Duration::from_secs;
        assert_eq!(invocation_ttl(None, &[], None), Ttl::None);
        assert_eq!(invocation_ttl(None, &[], HOUR), Ttl::After(secs(3600)));
        assert_eq!(invocation_ttl(Some(10), &[], HOUR), Ttl::After(secs(10)));
        assert_eq!(invocation_ttl(Some(0), &[], None), Ttl::After(secs(0)));
        // Another controller (not a Command): its own TTL counts, the default does not.
        let other = [owner("Workflow", "argoproj.io/v1alpha1", Some(true))];
        assert_eq!(invocation_ttl(None, &other, HOUR), Ttl::None);
        assert_eq!(invocation_ttl(Some(5), &other, HOUR), Ttl::After(secs(5)));
        // A plain (non-controller) owner does not make it a child.
        let plain = [owner("ConfigMap", "v1", None)];
        assert_eq!(invocation_ttl(None, &plain, HOUR), Ttl::After(secs(3600)));
    }

    #[test]
    fn a_commands_child_never_expires_on_its_own() {
        let parent = [owner("Command", "ssm.operator.dev/v1alpha1", Some(true))];
        assert_eq!(invocation_ttl(None, &parent, HOUR), Ttl::None);
        assert_eq!(invocation_ttl(Some(1), &parent, HOUR), Ttl::None);
    }

    #[test]
    fn a_command_takes_its_spec_ttl_else_the_default() {
        let none = BTreeMap::new();
        let secs = Duration::from_secs;
        assert_eq!(command_ttl(None, &none, &none, None), Ttl::None);
        assert_eq!(
            command_ttl(None, &none, &none, HOUR),
            Ttl::After(secs(3600))
        );
        assert_eq!(
            command_ttl(Some(60), &none, &none, HOUR),
            Ttl::After(secs(60))
        );
    }

    #[test]
    fn a_gitops_tracked_command_gets_no_ttl_unless_it_opts_in() {
        let none = BTreeMap::new();
        let cases = [
            (
                map(&[("app.kubernetes.io/instance", "ops")]),
                none.clone(),
                "Argo CD",
            ),
            (
                none.clone(),
                map(&[("argocd.argoproj.io/tracking-id", "a:g/K:n/x")]),
                "Argo CD",
            ),
            (
                map(&[("kustomize.toolkit.fluxcd.io/name", "apps")]),
                none.clone(),
                "Flux",
            ),
            (
                map(&[("helm.toolkit.fluxcd.io/name", "rel")]),
                none.clone(),
                "Flux",
            ),
        ];
        for (labels, annotations, tool) in cases {
            let refused = command_ttl(Some(10), &labels, &annotations, None);
            assert!(
                matches!(refused, Ttl::RefusedGitOps { tool: t, .. } if t == tool),
                "{refused:?}"
            );
            // The operator's default is refused the same way.
            assert!(matches!(
                command_ttl(None, &labels, &annotations, HOUR),
                Ttl::RefusedGitOps { .. }
            ));
            // Nothing asked, nothing refused.
            assert_eq!(command_ttl(None, &labels, &annotations, None), Ttl::None);
            let mut opted = annotations.clone();
            opted.insert(GITOPS_OPT_IN.into(), "true".into());
            assert_eq!(
                command_ttl(Some(10), &labels, &opted, None),
                Ttl::After(Duration::from_secs(10))
            );
            opted.insert(GITOPS_OPT_IN.into(), "no".into());
            assert!(matches!(
                command_ttl(Some(10), &labels, &opted, None),
                Ttl::RefusedGitOps { .. }
            ));
        }
        // The same key as an annotation where a label is meant (and vice versa) is no mark.
        let wrong = map(&[("app.kubernetes.io/instance", "ops")]);
        assert_eq!(
            command_ttl(Some(10), &none, &wrong, None),
            Ttl::After(Duration::from_secs(10))
        );
    }

    #[test]
    fn expiry_counts_from_finished_turning_true() {
        let ttl = Ttl::After(Duration::from_secs(100));
        let done = finished("True", 0);
        assert_eq!(
            expiry(&ttl, &done, at(0)),
            Expiry::CheckIn(Duration::from_secs(100))
        );
        assert_eq!(
            expiry(&ttl, &done, at(40)),
            Expiry::CheckIn(Duration::from_secs(60))
        );
        assert_eq!(expiry(&ttl, &done, at(100)), Expiry::DeleteNow);
        assert_eq!(expiry(&ttl, &done, at(5000)), Expiry::DeleteNow);
        // A clock behind the condition's time: the whole TTL is still ahead.
        assert_eq!(
            expiry(&ttl, &done, at(-30)),
            Expiry::CheckIn(Duration::from_secs(100))
        );
        assert_eq!(
            expiry(&Ttl::After(Duration::ZERO), &done, at(0)),
            Expiry::DeleteNow
        );
    }

    #[test]
    fn nothing_expires_unfinished_or_without_a_ttl() {
        let ttl = Ttl::After(Duration::from_secs(1));
        assert_eq!(expiry(&ttl, &finished("False", 0), at(999)), Expiry::Keep);
        assert_eq!(expiry(&ttl, &[], at(999)), Expiry::Keep);
        assert_eq!(
            expiry(&Ttl::None, &finished("True", 0), at(999)),
            Expiry::Keep
        );
        let refused = Ttl::RefusedGitOps {
            mark: "app.kubernetes.io/instance",
            tool: "Argo CD",
        };
        assert_eq!(
            expiry(&refused, &finished("True", 0), at(999)),
            Expiry::Keep
        );
    }

    #[test]
    fn the_fingerprint_ignores_only_the_ttl() {
        let spec = CommandSpec {
            document_name: "AWS-RunShellScript".into(),
            instance_ids: Some(vec!["i-0123456789abcdef0".into()]),
            ..Default::default()
        };
        let with_ttl = CommandSpec {
            ttl_seconds_after_finished: Some(30),
            ..spec.clone()
        };
        let other = CommandSpec {
            comment: Some("x".into()),
            ..with_ttl.clone()
        };
        assert_eq!(spec_hash(&spec), spec_hash(&with_ttl));
        assert_ne!(spec_hash(&spec), spec_hash(&other));
        assert_eq!(spec_hash(&spec).len(), 16);
    }

    fn sent(generation: i64, hash: Option<&str>) -> CommandStatus {
        CommandStatus {
            command_id: Some("c".into()),
            status: Some("Success".into()),
            observed_generation: Some(generation),
            send: Some(SendRecord {
                generation,
                marker: "op:0000000000000000".into(),
                time: Time(at(0)),
                attempt: 1,
                spec_hash: hash.map(str::to_string),
            }),
            conditions: finished("True", 5)
                .into_iter()
                .map(|mut c| {
                    c.observed_generation = Some(generation);
                    c
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_ttl_only_change_moves_the_run_to_the_new_generation() {
        let rebased = rebase_command(&sent(1, Some("h")), "h", 2).unwrap();
        assert_eq!(rebased.observed_generation, Some(2));
        assert_eq!(rebased.send.as_ref().unwrap().generation, 2);
        assert_eq!(rebased.command_id.as_deref(), Some("c"), "same run");
        assert_eq!(rebased.send.as_ref().unwrap().marker, "op:0000000000000000");
        let c = &rebased.conditions[0];
        assert_eq!(c.observed_generation, Some(2));
        assert_eq!(
            c.last_transition_time,
            Time(at(5)),
            "the TTL still counts from the finish"
        );
    }

    #[test]
    fn any_other_change_is_a_new_run() {
        assert_eq!(rebase_command(&sent(1, Some("h")), "other", 2), None);
        assert_eq!(
            rebase_command(&sent(1, None), "h", 2),
            None,
            "record without fingerprint"
        );
        assert_eq!(
            rebase_command(&sent(2, Some("h")), "h", 2),
            None,
            "already current"
        );
        let mut refused_later = sent(1, Some("h"));
        refused_later.observed_generation = Some(2);
        assert_eq!(
            rebase_command(&refused_later, "h", 3),
            None,
            "status is not the send's"
        );
        let unsent = CommandStatus::default();
        assert_eq!(rebase_command(&unsent, "h", 2), None);
    }

    #[test]
    fn rebased_conditions_describe_the_new_generation() {
        let moved = rebase_conditions(&finished("True", 5), Some(1), 3);
        assert_eq!(moved[0].observed_generation, Some(3));
        assert_eq!(moved[0].last_transition_time, Time(at(5)));
    }
}
