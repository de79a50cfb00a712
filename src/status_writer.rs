//! Writes `.status` with server-side apply (field manager `ssm-operator`, forced) and records
//! Kubernetes Events. The only code that changes objects in the API server.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{CommandInvocation, CommandInvocationStatus};
use crate::mapping::Note;
use crate::metrics::Metrics;
use crate::{Error, OPERATOR_NAME};

/// Longest Event note the API accepts is 1 kB; longer SSM messages are cut.
const MAX_NOTE_CHARS: usize = 1000;

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
        let patch = json!({
            "apiVersion": CommandInvocation::api_version(&()),
            "kind": CommandInvocation::kind(&()),
            "metadata": { "name": name },
            "status": status,
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
