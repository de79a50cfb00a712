//! Writes `.status` with server-side apply (field manager `ssm-operator`, forced) and records
//! Kubernetes Events. The only code that changes objects in the API server.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::api::{CommandInvocation, CommandInvocationStatus};
use crate::mapping::Note;
use crate::metrics::Metrics;
use crate::{Error, OPERATOR_NAME};

/// Longest Event note the API accepts is 1 kB; longer SSM messages are cut.
const MAX_NOTE_CHARS: usize = 1000;

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
}

impl StatusWriter {
    /// A writer reporting Events as `ssm-operator` from `instance` (the pod name).
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: OPERATOR_NAME.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        }
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
        api.patch_status(
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
        Ok(())
    }

    /// Records `note` as an Event on `object`. A failure is logged, never fatal: the status
    /// already says what happened.
    pub async fn record(&self, object: &CommandInvocation, note: &Note) {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.clone(),
            note: Some(note.message.chars().take(MAX_NOTE_CHARS).collect()),
            action: "Poll".to_string(),
            secondary: None,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
