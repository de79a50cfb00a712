//! What `/healthz`, `/readyz` and the resource gauges report on: the watches' caches (both
//! kinds) and whether each watch is failing. The watches feed it ([`crate::k8s::watch`]); the
//! HTTP endpoint reads it ([`crate::runtime::http`]), also to count resources by condition at
//! scrape time ([`condition_of`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use kube::runtime::reflector::Store;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::{is_true, READY, RECONCILING, STALLED};
use crate::api::{Command, CommandInvocation};

/// What the endpoints report on, shared with the controller.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stores: Mutex<Vec<Store<CommandInvocation>>>,
    /// The `Command` watches' caches (counted in the resources gauge only).
    command_stores: Mutex<Vec<Store<Command>>>,
    /// Watches (by index in `stores`) that failed and have not recovered yet.
    failing: Mutex<BTreeSet<usize>>,
}

impl Health {
    /// Marks the process ready (caches synced, or standing by as a follower) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Adds a controller's cache, counted in the `ssm_operator_invocations` gauge.
    /// Adds a watch's cache; returns the watch's number for [`Health::set_failing`].
    pub fn add_store(&self, store: Store<CommandInvocation>) -> usize {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.push(store);
        stores.len() - 1
    }

    /// Adds a `Command` watch's cache, counted in the `ssm_operator_resources` gauge.
    pub fn add_command_store(&self, store: Store<Command>) {
        self.command_stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(store);
    }

    /// Counts watched resources by kind and condition ([`condition_of`]); every kind and
    /// condition is listed, zero or not, so dashboards and alerts always find the series.
    pub fn condition_counts(&self) -> Vec<(&'static str, &'static str, i64)> {
        let mut counts: Vec<_> = crate::runtime::metrics::KINDS
            .iter()
            .flat_map(|kind| {
                crate::runtime::metrics::CONDITIONS
                    .iter()
                    .map(move |condition| (*kind, *condition, 0))
            })
            .collect();
        let mut add = |kind: &str, conditions: &[Condition]| {
            let condition = condition_of(conditions);
            if let Some(entry) = counts
                .iter_mut()
                .find(|(k, c, _)| *k == kind && *c == condition)
            {
                entry.2 += 1;
            }
        };
        for object in self
            .stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(Store::state)
        {
            add(
                "CommandInvocation",
                object.status.as_ref().map_or(&[], |s| &s.conditions),
            );
        }
        for object in self
            .command_stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(Store::state)
        {
            add(
                "Command",
                object.status.as_ref().map_or(&[], |s| &s.conditions),
            );
        }
        counts
    }

    /// Marks watch number `watch` as failing (list/watch errors) or recovered.
    pub fn set_failing(&self, watch: usize, failing: bool) {
        let mut set = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failing {
            set.insert(watch);
        } else {
            set.remove(&watch);
        }
    }

    /// Ready: caches synced (or standing by for the Lease) and no watch failing.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && self
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// The uids of every watched resource.
    pub fn live_uids(&self) -> HashSet<String> {
        uids_in(&self.stores.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Counts watched resources by SSM status (`Unobserved` before the first answer).
    pub fn counts(&self) -> BTreeMap<String, i64> {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counts = BTreeMap::new();
        for object in stores.iter().flat_map(Store::state) {
            let status = object
                .status
                .as_ref()
                .and_then(|s| s.status.clone())
                .unwrap_or_else(|| "Unobserved".to_string());
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }
}

/// The one condition a resource is counted under: `Stalled`, `Ready` or `Reconciling`,
/// whichever is True (kstatus never has two of them True), else `Unknown` (no status yet).
pub fn condition_of(conditions: &[Condition]) -> &'static str {
    [STALLED, READY, RECONCILING]
        .into_iter()
        .find(|type_| is_true(conditions, type_))
        .unwrap_or("Unknown")
}

/// The uids of every object in `stores`.
pub fn uids_in<K>(stores: &[Store<K>]) -> HashSet<String>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    stores
        .iter()
        .flat_map(Store::state)
        .filter_map(|o| o.meta().uid.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Any".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_resource_is_counted_under_the_condition_that_is_true() {
        let set = |ready: &str, stalled: &str, reconciling: &str| {
            vec![
                condition("Ready", ready),
                condition("Reconciling", reconciling),
                condition("Stalled", stalled),
                condition("Finished", "True"),
            ]
        };
        assert_eq!(condition_of(&set("True", "False", "False")), "Ready");
        assert_eq!(condition_of(&set("False", "True", "False")), "Stalled");
        assert_eq!(condition_of(&set("False", "False", "True")), "Reconciling");
        assert_eq!(condition_of(&set("False", "False", "False")), "Unknown");
        assert_eq!(condition_of(&[]), "Unknown", "no status yet");
    }

    #[test]
    fn every_kind_and_condition_is_counted_even_when_empty() {
        let counts = Health::default().condition_counts();
        assert_eq!(counts.len(), 8);
        assert!(counts.iter().all(|(_, _, n)| *n == 0));
        assert!(counts.contains(&("Command", "Stalled", 0)));
    }
}
