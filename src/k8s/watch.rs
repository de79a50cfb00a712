//! The watch of `CommandInvocation`s that feeds a controller: list+watch with backoff, the
//! cache without `managedFields` and annotations (never read; most of a small object), and no
//! silent failures: every list/watch error (403 from missing RBAC, a missing CRD, the API
//! server down) is logged at warn, counted in `ssm_operator_watch_errors_total`, and makes
//! `/readyz` fail until the watch works again. Deleted resources are handed to [`Forget`].
//!
//! The watch of `Command`s ([`watch_commands`]) hands deleted ones to [`Forget`] the same way;
//! its errors go on to the controller, which logs and counts them (a missing Command CRD must
//! not make the process unready).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{Command, CommandInvocation};
use crate::k8s::health::{uids_in, Health};
use crate::runtime::metrics::Metrics;

/// How often a failed watch is probed for recovery.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What happens to resources that left the cache.
pub trait Forget: Send + Sync + 'static {
    /// The resource with this uid was deleted.
    fn forget(&self, uid: &str);
    /// The watch re-listed: forget every resource not in `live` (deletions missed meanwhile).
    fn retain(&self, live: &HashSet<String>);
}

/// A watch ready to hand to `Controller::for_stream`.
pub struct Watched {
    /// The cache the stream fills.
    pub store: Store<CommandInvocation>,
    /// Applied objects (and errors) that trigger reconciles.
    pub stream: BoxStream<'static, Result<CommandInvocation, watcher::Error>>,
}

/// Aborts the recovery prober when the stream is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds the watch of `api`, registered with `health` for readiness.
pub fn watch(
    api: Api<CommandInvocation>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    gone: Arc<dyn Forget>,
) -> Watched {
    let (store, writer) = reflector::store();
    let id = health.add_store(store.clone());
    let failed = Arc::new(Notify::new());
    let prober = AbortOnDrop(tokio::spawn(recover(
        api.clone(),
        id,
        health.clone(),
        failed.clone(),
    )));
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        // Never read, and most of a small object's size (kubectl's last-applied annotation
        // repeats the whole spec): 10,000 resources keep only what reconciles use.
        .modify(|object| {
            object.managed_fields_mut().clear();
            object.annotations_mut().clear();
        })
        .reflect(writer)
        .inspect(move |event| {
            let _prober = &prober;
            match event {
                Ok(event) => {
                    health.set_failing(id, false);
                    hand_over_gone(event, gone.as_ref(), || health.live_uids());
                }
                Err(error) => {
                    metrics.watch_failed();
                    health.set_failing(id, true);
                    warn!(%error, "watching CommandInvocations failed; not ready until it works again");
                    failed.notify_one();
                }
            }
        })
        .applied_objects()
        .boxed();
    Watched { store, stream }
}

/// After each failure, probes list and watch until both work, then marks the watch healthy.
/// (The watcher itself says nothing when a watch restarts quietly after an error.)
async fn recover(api: Api<CommandInvocation>, id: usize, health: Arc<Health>, failed: Arc<Notify>) {
    loop {
        failed.notified().await;
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if works(&api).await {
                health.set_failing(id, false);
                info!("watching CommandInvocations works again");
                break;
            }
        }
    }
}

/// One cheap list and a one-second watch, with the watch's own permissions.
async fn works(api: &Api<CommandInvocation>) -> bool {
    let Ok(list) = api.list_metadata(&ListParams::default().limit(1)).await else {
        return false;
    };
    let version = list.metadata.resource_version.unwrap_or_default();
    let Ok(events) = api
        .watch_metadata(&WatchParams::default().timeout(1), &version)
        .await
    else {
        return false;
    };
    let first = events.boxed().next().await;
    !matches!(first, Some(Err(_)) | Some(Ok(WatchEvent::Error(_))))
}

/// A watch of `Command`s ready to hand to `Controller::for_stream`.
pub struct WatchedCommands {
    /// The cache the stream fills.
    pub store: Store<Command>,
    /// Applied objects (and errors) that trigger reconciles.
    pub stream: BoxStream<'static, Result<Command, watcher::Error>>,
}

/// The caches of every `Command` watch (one per watched namespace, or one for all): a re-list
/// of one of them forgets only what none of them holds.
#[derive(Default)]
pub struct CommandStores(Mutex<Vec<Store<Command>>>);

impl CommandStores {
    fn add(&self, store: Store<Command>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(store);
    }

    /// The watched `Command`s of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<Command>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(Store::state)
            .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// The watched `Command`s whose run is SSM command `command_id`.
    pub fn running(&self, command_id: &str) -> Vec<Arc<Command>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(Store::state)
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.command_id.as_deref() == Some(command_id))
            })
            .collect()
    }

    /// Whether `object` is known to be gone: every watch has listed, and none holds it (by
    /// uid). Without a watch, or before a watch's first list, nothing is known to be gone.
    pub fn known_gone(&self, object: &Command) -> bool {
        let stores = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = ObjectRef::from_obj(object);
        !stores.is_empty()
            && stores.iter().all(listed)
            && !stores
                .iter()
                .filter_map(|store| store.get(&key))
                .any(|cached| cached.metadata.uid == object.metadata.uid)
    }

    /// The uids of every watched `Command`.
    pub fn live_uids(&self) -> HashSet<String> {
        uids_in(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Hands what a watch `event` says left the cache to `gone`: a deleted object, or after a
/// (re-)list everything not in `live` (the uids the caches hold now).
fn hand_over_gone<K: kube::Resource>(
    event: &Event<K>,
    gone: &dyn Forget,
    live: impl FnOnce() -> HashSet<String>,
) {
    match event {
        Event::Delete(object) => {
            if let Some(uid) = object.uid() {
                gone.forget(&uid);
            }
        }
        Event::InitDone => gone.retain(&live()),
        Event::Apply(_) | Event::Init | Event::InitApply(_) => {}
    }
}

/// Whether `store`'s watch has listed (its cache is filled), without waiting.
pub fn listed<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Builds the watch of `api`'s `Command`s, its cache registered in `stores`: a deleted one is
/// handed to `gone`, and after every (re-)list so is the set still live.
pub fn watch_commands(
    api: Api<Command>,
    stores: Arc<CommandStores>,
    gone: Arc<dyn Forget>,
) -> WatchedCommands {
    let (store, writer) = reflector::store();
    stores.add(store.clone());
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                hand_over_gone(event, gone.as_ref(), || stores.live_uids());
            }
        })
        .applied_objects()
        .boxed();
    WatchedCommands { store, stream }
}
