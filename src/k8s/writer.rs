//! The fenced writer: the only code that changes the cluster, or SSM's state, on behalf of a
//! reconcile. Status patches and Events of both kinds, a `Command`'s children (create,
//! delete), its finalizer, the deletion of resources whose TTL ran out (uid precondition), and
//! `SendCommand` / `CancelCommand` all go through [`Writer`],
//! which asks the leadership [`Fence`] right before each: a replica that is not sure it leads
//! (a follower, or a leader paused past its Lease) changes nothing, and the reconcile that
//! tried ends with [`Error::Fenced`]. Reads (the watch, SSM's answers, `ListCommands`) are not
//! fenced: they change nothing.
//!
//! Status is written with server-side apply (field manager `ssm-operator`, forced).
//! Events are created directly (events.k8s.io/v1) under a name derived from the object, the
//! transition and the status it left, so recording one twice (a retry, or a restart after a
//! crash between the Event and the status write) is refused by the API server as a duplicate
//! instead of creating a second Event. The reconcilers record the Event before the status
//! write, so a crash can repeat an Event attempt but never lose one.
//!
//! Each write that first stores a terminal SSM status records its status lag
//! (`ssm_operator_status_lag_seconds`, measured by [`crate::runtime::lag`]) once it succeeded.
//!
//! The writer also remembers what it wrote last for each `CommandInvocation` until the watch
//! cache shows that write, so a reconcile that runs on the older cached object acts on what is
//! really stored (no duplicate Event, no moved `lastTransitionTime`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::api::{Command, CommandInvocation, CommandInvocationStatus, CommandSpec, CommandStatus};
use crate::aws::ssm::{Scope, Ssm};
use crate::command::send::SendResult;
use crate::k8s::leader::Fence;
use crate::k8s::output::cut_to_bytes;
use crate::runtime::lag;
use crate::runtime::metrics::Metrics;
use crate::{Error, OPERATOR_NAME};

/// A Kubernetes Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// Short CamelCase reason (the SSM status or the error reason).
    pub reason: String,
    /// The transition, `<previous reason>To<reason>` (`New` when there was none), so Events of
    /// different transitions are never folded into one series by the recorder.
    pub action: String,
    /// Human-readable text.
    pub message: String,
}

/// The API refuses Event notes longer than 1 kB (bytes, not characters).
const MAX_NOTE_BYTES: usize = 1024;
/// Event reasons and actions may be at most 128 bytes.
const MAX_REASON_BYTES: usize = 128;

/// What the operator last wrote for one resource.
#[derive(Clone, Debug)]
struct Written {
    /// The resourceVersion the write was based on (the cache's at the time).
    before: String,
    /// The resourceVersion the API server gave the written object.
    after: String,
    status: CommandInvocationStatus,
}

impl Written {
    /// Whether a cached object with `cached` resourceVersion predates this write.
    /// resourceVersions are etcd revisions on every real API server: compare them as numbers
    /// when they are; otherwise only the version the write was based on is known to be older.
    fn is_newer_than(&self, cached: &str) -> bool {
        match (cached.parse::<u64>(), self.after.parse::<u64>()) {
            (Ok(cached), Ok(after)) => cached < after,
            _ => cached == self.before,
        }
    }
}

/// Every change a reconcile makes, each behind the fence (see the module docs).
pub struct Writer {
    client: Client,
    instance: String,
    metrics: Arc<Metrics>,
    fence: Fence,
    written: Mutex<HashMap<String, Written>>,
    /// The old-CRD warning was logged ([`status_owned_per_field`]).
    warned_old_crd: AtomicBool,
}

impl Writer {
    /// A writer reporting Events as `ssm-operator` from `instance` (the pod name).
    /// Every change is refused while `fence` is closed.
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        fence: Fence,
    ) -> Self {
        Self {
            instance: instance.unwrap_or_else(|| OPERATOR_NAME.to_string()),
            client,
            metrics,
            fence,
            written: Mutex::new(HashMap::new()),
            warned_old_crd: AtomicBool::new(false),
        }
    }

    /// `object` as really stored: when the watch cache has not yet shown this process's last
    /// write, the same object with that write's status and resourceVersion; else `None` (the
    /// cached object is current).
    pub fn fresher(&self, object: &CommandInvocation) -> Option<CommandInvocation> {
        let uid = object.uid()?;
        let cached = object.resource_version().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let last = written.get(&uid)?;
        if !last.is_newer_than(&cached) {
            written.remove(&uid);
            return None;
        }
        let mut fresher = object.clone();
        fresher.status = Some(last.status.clone());
        fresher.metadata.resource_version = Some(last.after.clone());
        Some(fresher)
    }

    /// Forgets a deleted resource.
    pub fn forget(&self, uid: &str) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Forgets every resource not in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|uid, _| live.contains(uid));
    }

    /// Number of resources whose last write the cache has not shown yet.
    pub fn pending_len(&self) -> usize {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Applies `status` as the whole status owned by the operator.
    pub async fn write(
        &self,
        object: &CommandInvocation,
        status: &CommandInvocationStatus,
    ) -> Result<(), Error> {
        let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
        let stored = self.apply_status(object, status, None).await?;
        if let Some(lag) = lag::invocation_lag(object.status.as_ref(), status, Timestamp::now()) {
            self.metrics.status_lag("CommandInvocation", lag);
        }
        if let Some(after) = stored.resource_version() {
            let written = Written {
                before: object.resource_version().unwrap_or_default(),
                after,
                status: status.clone(),
            };
            self.written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(uid, written);
        }
        Ok(())
    }

    /// Records `note` as an Event on `object`, whose status is `object.status` (the one the
    /// transition leaves). Already recorded (same transition from the same status) is success.
    ///
    /// A failure that a retry can get past (API server unreachable, 5xx, 429) is returned, so
    /// the reconcile fails before the status write and the Event is tried again: writing the
    /// status first would lose the Event for good. A refusal no retry changes (RBAC, an invalid
    /// Event) is logged and counted; the status is written anyway, as it says what happened.
    pub async fn record(&self, object: &CommandInvocation, note: &EventNote) -> Result<(), Error> {
        let event = event_of(object, note, &self.instance, Timestamp::now());
        self.create_event(object, event, note).await
    }

    /// Records `note` as an Event on a `Command` whose stored resourceVersion identifies the
    /// status the transition leaves. Failures as for [`Writer::record`].
    pub async fn record_command(&self, object: &Command, note: &EventNote) -> Result<(), Error> {
        let since = object.resource_version().unwrap_or_default();
        let event = event_for(object, &since, note, &self.instance, Timestamp::now());
        self.create_event(object, event, note).await
    }

    async fn create_event<K>(&self, object: &K, event: Event, note: &EventNote) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()>,
    {
        if !self.fence.allows_writes() {
            self.metrics.write_fenced();
            tracing::debug!(reason = %note.reason, "not the leader: Event not recorded");
            return Ok(());
        }
        let namespace = object
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => self.metrics.event_recorded(),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(reason = %note.reason, "Event already recorded");
            }
            Err(source) if worth_retrying(&source) => {
                return Err(Error::RecordEvent {
                    namespace,
                    name: object.name_any(),
                    source,
                })
            }
            Err(error) => tracing::warn!(
                object = %object.name_any(),
                reason = %note.reason,
                %error,
                "could not record Event; the API server refuses it, so the status is written \
                 without it"
            ),
        }
        Ok(())
    }

    /// Writes a `Command`'s whole status if the object is still at the resourceVersion
    /// `object` carries (compare-and-swap): a stale cache, or another writer in between, gets
    /// `Ok(None)` and must decide again on the stored object. Returns the stored object.
    pub async fn write_command(
        &self,
        object: &Command,
        status: &CommandStatus,
    ) -> Result<Option<Command>, Error> {
        let version = object
            .resource_version()
            .ok_or(Error::MissingObjectKey("resourceVersion"))?;
        match self.apply_status(object, status, Some(version)).await {
            Ok(stored) => {
                if let Some(lag) =
                    lag::command_lag(object.status.as_ref(), status, Timestamp::now())
                {
                    self.metrics.status_lag("Command", lag);
                }
                Ok(Some(stored))
            }
            Err(Error::WriteStatus {
                source: kube::Error::Api(answer),
                ..
            }) if answer.code == 409 => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates a `Command`'s child. The API server's refusal comes back as
    /// [`Error::CreateChild`] (409 when it exists: the caller tells ours from someone else's).
    pub async fn create_child(&self, child: &CommandInvocation) -> Result<(), Error> {
        let namespace = child
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let name = child.name_any();
        self.check_fence()?;
        let api: Api<CommandInvocation> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), child).await {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::CreateChild {
                namespace,
                name,
                source,
            }),
        }
    }

    /// Deletes child `name` of an earlier run (background propagation). Already gone is
    /// success.
    pub async fn delete_child(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.check_fence()?;
        let api: Api<CommandInvocation> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::DeleteChild {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Deletes `object` because its TTL ran out (`ttlSecondsAfterFinished`), with its uid as
    /// precondition, so a newer object of the same name is never deleted, and **background**
    /// propagation: the object goes at once (after its finalizers) and Kubernetes' garbage
    /// collector deletes what it owns afterwards (a `Command`'s children). `Ok(false)`: it was
    /// already gone, or the name now belongs to another object (404 / 409).
    pub async fn delete_expired<K>(&self, object: &K) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let namespace = object
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
        let name = object.name_any();
        self.check_fence()?;
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        match api.delete(&name, &expiry_delete_params(uid)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
            Err(source) => Err(Error::Expire {
                namespace,
                name,
                source,
            }),
        }
    }

    /// Sets a `Command`'s `metadata.finalizers` if the object is still at the resourceVersion
    /// `object` carries. `Ok(None)`: it changed meanwhile, or is gone.
    pub async fn patch_finalizers(
        &self,
        object: &Command,
        finalizers: Vec<String>,
    ) -> Result<Option<Command>, Error> {
        let namespace = object
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let name = object.name_any();
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": object.resource_version(),
            }
        });
        self.check_fence()?;
        let api: Api<Command> = Api::namespaced(self.client.clone(), &namespace);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(stored) => Ok(Some(stored)),
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(None),
            Err(source) => Err(Error::PatchFinalizers { name, source }),
        }
    }

    /// `SendCommand` for `spec` through `ssm` (see [`Ssm::send_command`]).
    pub async fn send_command(
        &self,
        ssm: &Ssm,
        scope: &Scope,
        spec: &CommandSpec,
        comment: &str,
        not_after: Timestamp,
    ) -> Result<SendResult, Error> {
        self.check_fence()?;
        Ok(ssm.send_command(scope, spec, comment, not_after).await)
    }

    /// `CancelCommand` of `command_id` through `ssm`. SSM's refusal comes back as
    /// [`Error::Cancel`].
    pub async fn cancel_command(
        &self,
        ssm: &Ssm,
        scope: &Scope,
        command_id: &str,
    ) -> Result<(), Error> {
        self.check_fence()?;
        ssm.cancel_command(scope, command_id)
            .await
            .map_err(|source| Error::Cancel {
                command_id: command_id.to_string(),
                source,
            })
    }

    /// [`Error::Fenced`] (counted) unless this process may change things now.
    fn check_fence(&self) -> Result<(), Error> {
        if self.fence.allows_writes() {
            Ok(())
        } else {
            self.metrics.write_fenced();
            Err(Error::Fenced)
        }
    }

    /// Server-side-applies `status` as the whole status (the CRDs make it one atomic value:
    /// it replaces what is stored, and a field left out is gone), fenced; with `version`, only
    /// over that resourceVersion. Returns the stored object.
    async fn apply_status<K, S>(
        &self,
        object: &K,
        status: &S,
        version: Option<String>,
    ) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        let namespace = object
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let body = serde_json::to_value(status).map_err(Error::Serialize)?;
        let mut metadata = json!({ "name": name });
        if let Some(version) = version {
            metadata["resourceVersion"] = json!(version);
        }
        let patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": metadata,
            "status": body,
        });
        self.check_fence()?;
        let stored = api
            .patch_status(
                &name,
                &PatchParams::apply(OPERATOR_NAME).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::WriteStatus {
                namespace,
                name,
                source,
            })?;
        self.metrics.status_written();
        if status_owned_per_field(stored.meta())
            && !self.warned_old_crd.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                kind = K::kind(&()).as_ref(),
                "the installed CRD is older than this operator: its status is not one atomic \
                 value, so a field the operator stops writing can stay behind; apply the CRDs \
                 of this release (docs/install.md, Upgrade)"
            );
        }
        Ok(stored)
    }
}

/// Whether `meta`'s managedFields show the operator owning status field by field: the CRD in
/// the cluster predates the atomic status (Helm never upgrades CRDs), and a status write no
/// longer clears what it leaves out.
pub fn status_owned_per_field(meta: &ObjectMeta) -> bool {
    meta.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(OPERATOR_NAME)
            && entry
                .fields_v1
                .as_ref()
                .and_then(|fields| fields.0.get("f:status"))
                .and_then(|status| status.as_object())
                .is_some_and(|status| !status.is_empty())
    })
}

/// The delete of an expired object: only the object with this uid, background propagation.
pub fn expiry_delete_params(uid: String) -> DeleteParams {
    DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

/// Whether a failed API call may succeed when repeated unchanged: the server was unreachable,
/// overloaded (429) or failed (5xx). Other answers (403, 404, 422, ...) will not change.
fn worth_retrying(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// FNV-1a: a hash that is the same in every process and release (std's is not promised to be).
fn fnv1a(parts: &[&str]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325, |hash, part| {
        part.bytes().chain([0xff]).fold(hash, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

/// The Event for `note` on a `CommandInvocation`, named after the transition: the status it
/// leaves is identified by when that was polled.
fn event_of(object: &CommandInvocation, note: &EventNote, instance: &str, now: Timestamp) -> Event {
    let since = object
        .status
        .as_ref()
        .and_then(|s| s.last_polled_time.as_ref())
        .map(|Time(t)| t.to_string())
        .unwrap_or_default();
    event_for(object, &since, note, instance, now)
}

/// The Event for `note` on `object`, within the API's size limits, named after the
/// transition: the object's uid and generation, `since` (what identifies the status it
/// leaves), and the action. The same transition from the same status always gets the same name.
fn event_for<K>(object: &K, since: &str, note: &EventNote, instance: &str, now: Timestamp) -> Event
where
    K: Resource<DynamicType = ()>,
{
    let generation = object.meta().generation.unwrap_or_default().to_string();
    let uid = object.uid().unwrap_or_default();
    let key = fnv1a(&[&uid, &generation, since, &note.action, &note.reason]);
    let object_name = object.name_any();
    let name = format!("{}.{key:016x}", cut_to_bytes(&object_name, 253 - 17));
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: object.namespace(),
            ..ObjectMeta::default()
        },
        action: Some(cut_to_bytes(&note.action, MAX_REASON_BYTES).to_string()),
        reason: Some(cut_to_bytes(&note.reason, MAX_REASON_BYTES).to_string()),
        note: Some(cut_to_bytes(&note.message, MAX_NOTE_BYTES).to_string()),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(object.object_ref(&())),
        reporting_controller: Some(OPERATOR_NAME.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    #[test]
    fn notes_are_cut_at_1024_bytes_on_a_character_boundary() {
        let note = EventNote {
            warning: false,
            reason: "Failed".into(),
            action: "InProgressToFailed".into(),
            message: "é".repeat(1000),
        };
        let text = event_of(&object(), &note, "pod-1", Timestamp::UNIX_EPOCH)
            .note
            .unwrap();
        assert_eq!(text.len(), 1024, "512 two-byte characters");
        assert_eq!(text.chars().count(), 512);
        assert_eq!(cut_to_bytes("😀😀", 5), "😀", "never splits a character");
        assert_eq!(cut_to_bytes("short", 1024), "short");
    }

    #[test]
    fn the_event_action_names_the_transition() {
        let note = EventNote {
            warning: true,
            reason: "Throttled".into(),
            action: "InProgressToThrottled".into(),
            message: "Rate exceeded".into(),
        };
        let event = event_of(&object(), &note, "pod-1", Timestamp::UNIX_EPOCH);
        assert_eq!(
            (event.reason.as_deref(), event.action.as_deref()),
            (Some("Throttled"), Some("InProgressToThrottled"))
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(
            event.regarding.unwrap().name.as_deref(),
            Some("patch-web-1")
        );
    }

    fn object() -> CommandInvocation {
        let mut object = CommandInvocation::new(
            "patch-web-1",
            crate::api::CommandInvocationSpec {
                ttl_seconds_after_finished: None,
                command_id: "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11".into(),
                instance_id: "i-0123456789abcdef0".into(),
                plugin_name: None,
                region: None,
            },
        );
        object.metadata.namespace = Some("ops".into());
        object.metadata.uid = Some("uid-1".into());
        object.metadata.generation = Some(1);
        object
    }

    #[test]
    fn the_same_transition_from_the_same_status_gets_the_same_event_name() {
        let note = |action: &str| EventNote {
            warning: false,
            reason: "Success".into(),
            action: action.into(),
            message: "SSM reports Success".into(),
        };
        let name = |object: &CommandInvocation, action: &str, at: i64| {
            let now = Timestamp::from_second(at).unwrap();
            event_of(object, &note(action), "pod", now)
                .metadata
                .name
                .unwrap()
        };
        let first = object();
        // A retry (or a restarted process) records the same transition later: same name.
        assert_eq!(
            name(&first, "InProgressToSuccess", 1),
            name(&first, "InProgressToSuccess", 9)
        );
        assert!(name(&first, "InProgressToSuccess", 1).starts_with("patch-web-1."));
        assert_ne!(
            name(&first, "InProgressToSuccess", 1),
            name(&first, "PendingToSuccess", 1)
        );
        // The same transition from a later status is a new Event.
        let mut later = object();
        later.status = Some(CommandInvocationStatus {
            last_polled_time: Some(Time(Timestamp::from_second(5).unwrap())),
            ..CommandInvocationStatus::default()
        });
        assert_ne!(
            name(&first, "InProgressToSuccess", 1),
            name(&later, "InProgressToSuccess", 1)
        );
        let mut long = object();
        long.metadata.name = Some("x".repeat(253));
        assert_eq!(name(&long, "NewToPending", 1).len(), 253);
    }

    #[test]
    fn a_write_is_newer_than_the_cache_until_the_cache_shows_it() {
        let written = Written {
            before: "41".into(),
            after: "57".into(),
            status: CommandInvocationStatus::default(),
        };
        assert!(written.is_newer_than("41"));
        assert!(written.is_newer_than("50"), "an intermediate version");
        assert!(!written.is_newer_than("57"));
        assert!(!written.is_newer_than("90"));
        let opaque = Written {
            before: "a".into(),
            after: "b".into(),
            ..written
        };
        assert!(opaque.is_newer_than("a"));
        assert!(!opaque.is_newer_than("c"));
    }

    #[test]
    fn a_status_owned_field_by_field_shows_an_old_crd() {
        let meta = |manager: &str, status: serde_json::Value| ObjectMeta {
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(json!({ "f:status": status }))),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        };
        let per_field = json!({"f:status": {}, "f:conditions": {}});
        assert!(status_owned_per_field(&meta(
            OPERATOR_NAME,
            per_field.clone()
        )));
        assert!(
            !status_owned_per_field(&meta(OPERATOR_NAME, json!({}))),
            "atomic"
        );
        assert!(
            !status_owned_per_field(&meta("kubectl", per_field)),
            "not ours"
        );
        assert!(!status_owned_per_field(&ObjectMeta::default()));
    }
}
