//! What `/healthz`, `/readyz` and the resource gauges report on: the watches' caches and
//! whether each watch is failing. The watches feed it ([`crate::k8s::watch`]); the HTTP
//! endpoint reads it ([`crate::runtime::http`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use kube::runtime::reflector::Store;

use crate::api::CommandInvocation;

/// What the endpoints report on, shared with the controller.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stores: Mutex<Vec<Store<CommandInvocation>>>,
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
