//! The `Command` custom resource (`ssm.operator.dev/v1alpha1`): a Run Command to send, exactly
//! once per spec generation, and the state of that run as SSM reports it.
//!
//! The schema refuses what it can: the document name's pattern, 1–50 instance ids matching
//! SSM's pattern, 1–5 targets, exactly one of `instanceIds` / `targets` (a structural `oneOf`
//! of `required`: our oldest supported API server, 1.20, has no CEL rules), the timeout range.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CloudWatchOutputConfig, NOT_OBSERVED};

/// SSM's pattern for a document name or ARN (`DocumentName` of SendCommand).
pub const DOCUMENT_NAME_PATTERN: &str = r"^[a-zA-Z0-9_\-.:/]{3,128}$";

/// SSM allows 100 characters of `Comment`; the operator appends its marker (a space and 19
/// characters), so a spec's comment may use the first 80.
pub const MAX_COMMENT_CHARS: u32 = 80;

/// Run an SSM document on managed nodes, exactly once per spec generation, and track every node.
// Each `printcolumn(...)` repeats `type_`/`priority` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ssm.operator.dev",
    version = "v1alpha1",
    kind = "Command",
    plural = "commands",
    singular = "command",
    shortname = "ssmcmd",
    category = "ssm",
    namespaced,
    doc = "An AWS SSM Run Command that ssm-operator sends exactly once per spec generation (with --send-commands), tracking every node as a child CommandInvocation.",
    status = "CommandStatus",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.status",
        description = "SSM status of the command"
    ),
    printcolumn(
        name = "Done",
        type_ = "string",
        json_path = ".status.done",
        description = "Completed / target nodes"
    ),
    printcolumn(
        name = "Errors",
        type_ = "integer",
        json_path = ".status.errorCount",
        description = "Nodes that failed"
    ),
    printcolumn(
        name = "Document",
        type_ = "string",
        json_path = ".spec.documentName",
        description = "SSM document"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Command-ID",
        type_ = "string",
        json_path = ".status.commandId",
        priority = "1",
        description = "SSM command id"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["instanceIds"]}, {"required": ["targets"]}]))]
pub struct CommandSpec {
    /// The SSM document to run: a name (`AWS-RunShellScript`), a shared document's ARN.
    #[schemars(pattern(DOCUMENT_NAME_PATTERN))]
    pub document_name: String,

    /// The document version: `$DEFAULT`, `$LATEST` or a version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([$]LATEST|[$]DEFAULT|[1-9][0-9]*)$"))]
    pub document_version: Option<String>,

    /// The document's parameters: SSM's map of string lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, Vec<String>>>,

    /// The managed nodes to run on (1 to 50). Give this or `targets`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 50),
        inner(pattern(crate::api::INSTANCE_ID_PATTERN))
    )]
    pub instance_ids: Option<Vec<String>>,

    /// SSM targets (1 to 5), e.g. `{key: "tag:Role", values: [web]}`: nodes resolve over time.
    /// Give this or `instanceIds`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5))]
    pub targets: Option<Vec<Target>>,

    /// A comment for the command (at most 80 characters; the operator appends its marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub comment: Option<String>,

    /// SSM's delivery timeout in seconds (30 to 2592000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 2_592_000))]
    pub timeout_seconds: Option<i32>,

    /// How many nodes run at once: a number (`10`) or a percentage (`10%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$"))]
    pub max_concurrency: Option<String>,

    /// How many errors stop sending to more nodes: a number (`0`) or a percentage (`10%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$"))]
    pub max_errors: Option<String>,

    /// The S3 bucket for the full output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 63))]
    pub output_s3_bucket_name: Option<String>,

    /// The key prefix in that bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub output_s3_key_prefix: Option<String>,

    /// Where CloudWatch Logs receives the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_watch_output_config: Option<CloudWatchOutputConfig>,

    /// The AWS region to send in; defaults to the operator's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::api::REGION_PATTERN))]
    pub region: Option<String>,

    /// Delete this `Command` (and, through their owner references, its children) this many
    /// seconds after its `Finished` condition turned `True` (like a Job's). Unset: the
    /// operator's `--ttl-after-finished`, if any. Refused on a `Command` that Argo CD or Flux
    /// tracks, unless it is annotated `ssm.operator.dev/ttl-with-gitops: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// One SSM target: nodes whose `key` (e.g. `tag:Role`, `InstanceIds`,
/// `resource-groups:Name`) has one of `values`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The target key.
    #[schemars(length(min = 1, max = 163))]
    pub key: String,
    /// The values that select a node (at most 50).
    #[schemars(length(max = 50))]
    pub values: Vec<String>,
}

/// What SSM reports for the command, and the operator's record of its send.
// The same `{observedGeneration: -1}` default as CommandInvocation, for kstatus, and the same
// atomic status: the operator writes it whole.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "default" = {"observedGeneration": NOT_OBSERVED},
    "x-kubernetes-map-type" = "atomic"
))]
pub struct CommandStatus {
    /// The SSM command id of this generation's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// SSM `Status` of the command: Pending, InProgress, Success, Cancelled, Failed, TimedOut,
    /// Cancelling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// SSM `StatusDetails`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<String>,
    /// SSM `RequestedDateTime` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_date_time: Option<String>,
    /// SSM `TargetCount`: nodes the command resolved to so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<i32>,
    /// SSM `CompletedCount`: nodes that finished, whatever the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_count: Option<i32>,
    /// SSM `ErrorCount`: nodes that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<i32>,
    /// SSM `DeliveryTimedOutCount`: nodes never reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_timed_out_count: Option<i32>,
    /// Nodes whose child `CommandInvocation` the API server refused (an admission policy, a
    /// quota, RBAC); the status goes on following SSM without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_children: Option<i32>,
    /// `completedCount/targetCount`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The operator's record of the send for this generation, written before `SendCommand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRecord>,
    /// Standard conditions: Ready, Reconciling, Stalled, Finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The intent to send a generation, recorded in status before `SendCommand` is called: after a
/// crash, a lost reply or a leader change, the operator looks for `marker` in the Comment of
/// the commands SSM lists instead of sending again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendRecord {
    /// The spec generation being sent.
    pub generation: i64,
    /// The marker the command's Comment ends with (`op:` and 16 hex digits).
    pub marker: String,
    /// When the latest attempt was recorded (just before it was made), in whole seconds.
    pub time: Time,
    /// Which attempt of this generation this is (1, 2, ...; 0 in statuses written before
    /// attempts were numbered). With the generation it names the attempt: two attempts
    /// recorded in the same second are still told apart.
    #[serde(default)]
    pub attempt: u32,
    /// Fingerprint of the spec sent, apart from `ttlSecondsAfterFinished`: a later generation
    /// with the same fingerprint changed only the TTL, and is the same run (no new send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
}

impl Command {
    /// Whether `owners` name a `Command` as the controller: the owned object is its child.
    pub fn controls(owners: &[OwnerReference]) -> bool {
        owners.iter().any(|o| {
            o.controller == Some(true)
                && o.kind == "Command"
                && o.api_version.starts_with("ssm.operator.dev/")
        })
    }

    /// The condition of the given type in the current status, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{json, Value};

    fn schema() -> Value {
        let crd = serde_json::to_value(Command::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn crd_names_follow_the_contract() {
        let crd = Command::crd();
        assert_eq!(crd.spec.group, "ssm.operator.dev");
        assert_eq!(crd.spec.names.kind, "Command");
        assert_eq!(crd.spec.names.plural, "commands");
        assert_eq!(crd.spec.names.short_names, Some(vec!["ssmcmd".to_string()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["ssm".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            ["Status", "Done", "Errors", "Document", "Age", "Command-ID"]
        );
    }

    #[test]
    fn schema_refuses_what_it_can() {
        let schema = schema();
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["required"], json!(["documentName"]));
        assert_eq!(
            spec["oneOf"],
            json!([{"required": ["instanceIds"]}, {"required": ["targets"]}])
        );
        let props = &spec["properties"];
        assert_eq!(props["documentName"]["pattern"], DOCUMENT_NAME_PATTERN);
        assert_eq!(props["instanceIds"]["minItems"], 1);
        assert_eq!(props["instanceIds"]["maxItems"], 50);
        assert_eq!(
            props["instanceIds"]["items"]["pattern"],
            super::super::INSTANCE_ID_PATTERN
        );
        assert_eq!(props["targets"]["minItems"], 1);
        assert_eq!(props["targets"]["maxItems"], 5);
        assert_eq!(props["timeoutSeconds"]["minimum"], 30.0);
        assert_eq!(props["timeoutSeconds"]["maximum"], 2_592_000.0);
        assert_eq!(props["comment"]["maxLength"], MAX_COMMENT_CHARS);
        assert_eq!(props["ttlSecondsAfterFinished"]["minimum"], 0.0);
        assert_eq!(
            props["parameters"]["additionalProperties"]["items"]["type"],
            "string"
        );
    }

    #[test]
    fn a_missing_status_defaults_to_not_observed_for_kstatus() {
        assert_eq!(
            schema()["properties"]["status"]["default"],
            json!({"observedGeneration": NOT_OBSERVED})
        );
    }
}
