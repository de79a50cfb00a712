//! Writes `.status` with server-side apply (field manager `ssm-operator`, forced) and records
//! Kubernetes Events. The only code that changes objects in the API server.
//!
//! Every write and Event first asks the leadership [`Fence`]. The writer also remembers what it
//! wrote last for each resource until the watch cache shows that write, so a reconcile that
//! runs on the older cached object acts on what is really stored (no duplicate Event, no moved
//! `lastTransitionTime`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::api::{CommandInvocation, CommandInvocationStatus};
use crate::leader::Fence;
use crate::mapping::Note;
use crate::metrics::Metrics;
use crate::output::cut_to_bytes;
use crate::{Error, OPERATOR_NAME};

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

/// Sets to `null` every field of `current` (recursively, in objects) that `next` lacks.
///
/// Server-side apply removes a field we stop sending only if no other manager owns it. The
/// API server records the resource's creator as co-owner of status fields (it owns the
/// defaulted `status.observedGeneration`, and 1.20 then attributes later status fields to it
/// too), so a dropped field would survive, e.g. the old command's output after a spec change.
/// An explicit `null` clears it whoever owns it.
pub fn null_removed_fields(current: &Value, next: &mut Value) {
    let (Value::Object(current), Value::Object(next)) = (current, next) else {
        return;
    };
    for (key, old) in current {
        match next.get_mut(key) {
            Some(new) => null_removed_fields(old, new),
            None if !old.is_null() => {
                next.insert(key.clone(), Value::Null);
            }
            None => {}
        }
    }
}

/// Status patches and Events for `CommandInvocation` resources.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    fence: Fence,
    written: Mutex<HashMap<String, Written>>,
}

impl StatusWriter {
    /// A writer reporting Events as `ssm-operator` from `instance` (the pod name).
    /// Writes and Events are refused while `fence` is closed.
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        fence: Fence,
    ) -> Self {
        let reporter = Reporter {
            controller: OPERATOR_NAME.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            fence,
            written: Mutex::new(HashMap::new()),
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
        let namespace = object
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let uid = object.uid().ok_or(Error::MissingObjectKey("uid"))?;
        let name = object.name_any();
        let api: Api<CommandInvocation> = Api::namespaced(self.client.clone(), &namespace);
        let mut body = serde_json::to_value(status).map_err(Error::Serialize)?;
        if let Some(current) = &object.status {
            let current = serde_json::to_value(current).map_err(Error::Serialize)?;
            null_removed_fields(&current, &mut body);
        }
        let patch = json!({
            "apiVersion": CommandInvocation::api_version(&()),
            "kind": CommandInvocation::kind(&()),
            "metadata": { "name": name },
            "status": body,
        });
        if !self.fence.allows_writes() {
            self.metrics.write_fenced();
            return Err(Error::Fenced);
        }
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

    /// Records `note` as an Event on `object`. A failure is logged, never fatal: the status
    /// already says what happened.
    pub async fn record(&self, object: &CommandInvocation, note: &Note) {
        if !self.fence.allows_writes() {
            self.metrics.write_fenced();
            tracing::debug!(reason = %note.reason, "not the leader: Event not recorded");
            return;
        }
        let event = event_of(note);
        match self.recorder.publish(&event, &object.object_ref(&())).await {
            Ok(()) => self.metrics.event_recorded(),
            Err(error) => tracing::warn!(
                object = %object.name_any(),
                reason = %note.reason,
                %error,
                "could not record Event"
            ),
        }
    }
}

/// The Event for `note`, within the API's size limits.
fn event_of(note: &Note) -> Event {
    Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: cut_to_bytes(&note.reason, MAX_REASON_BYTES).to_string(),
        note: Some(cut_to_bytes(&note.message, MAX_NOTE_BYTES).to_string()),
        action: cut_to_bytes(&note.action, MAX_REASON_BYTES).to_string(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_1024_bytes_on_a_character_boundary() {
        let note = Note {
            warning: false,
            reason: "Failed".into(),
            action: "InProgressToFailed".into(),
            message: "é".repeat(1000),
        };
        let text = event_of(&note).note.unwrap();
        assert_eq!(text.len(), 1024, "512 two-byte characters");
        assert_eq!(text.chars().count(), 512);
        assert_eq!(cut_to_bytes("😀😀", 5), "😀", "never splits a character");
        assert_eq!(cut_to_bytes("short", 1024), "short");
    }

    #[test]
    fn the_event_action_names_the_transition() {
        let note = Note {
            warning: true,
            reason: "Throttled".into(),
            action: "InProgressToThrottled".into(),
            message: "Rate exceeded".into(),
        };
        let event = event_of(&note);
        assert_eq!(
            (event.reason.as_str(), event.action.as_str()),
            ("Throttled", "InProgressToThrottled")
        );
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
    fn fields_dropped_from_the_status_are_sent_as_null() {
        let current = json!({
            "status": "Failed", "comment": "old command", "responseCode": 1,
            "cloudWatchOutputConfig": {"cloudWatchLogGroupName": "/old", "cloudWatchOutputEnabled": true},
            "conditions": [{"type": "Ready"}],
        });
        let mut next = json!({
            "status": "Pending", "responseCode": -1,
            "cloudWatchOutputConfig": {"cloudWatchOutputEnabled": false},
            "conditions": [{"type": "Ready"}, {"type": "Finished"}],
        });
        null_removed_fields(&current, &mut next);
        assert_eq!(
            next,
            json!({
                "status": "Pending", "comment": null, "responseCode": -1,
                "cloudWatchOutputConfig": {"cloudWatchLogGroupName": null, "cloudWatchOutputEnabled": false},
                "conditions": [{"type": "Ready"}, {"type": "Finished"}],
            })
        );
    }

    #[test]
    fn nothing_is_added_when_nothing_was_dropped_or_already_null() {
        let current = json!({"status": "InProgress", "comment": null});
        let mut next = json!({"status": "Success", "responseCode": 0});
        null_removed_fields(&current, &mut next);
        assert_eq!(next, json!({"status": "Success", "responseCode": 0}));
    }
}
