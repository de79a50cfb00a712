//! Wire types of the awsJson1_1 protocol for the operations the simulator serves, with the
//! exact member names of the SSM API (PascalCase, except `CommandFilter`'s `key` / `value`).
//! Requests ignore members they do not know; required members are `Option`s so their absence
//! becomes a `ValidationException` rather than a parse failure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `X-Amz-Target` prefix of every SSM operation.
pub(crate) const TARGET_PREFIX: &str = "AmazonSSM.";

/// The content type of requests and replies.
pub(crate) const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// GetCommandInvocation input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct GetCommandInvocationRequest {
    pub(crate) command_id: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) plugin_name: Option<String>,
}

/// ListCommandInvocations input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListCommandInvocationsRequest {
    pub(crate) command_id: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) max_results: Option<i64>,
    pub(crate) next_token: Option<String>,
    pub(crate) details: Option<bool>,
    pub(crate) filters: Option<Vec<CommandFilter>>,
}

/// One `CommandFilter` of a list request. SSM spells its members in lower case.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct CommandFilter {
    pub(crate) key: Option<String>,
    pub(crate) value: Option<String>,
}

/// ListCommands input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListCommandsRequest {
    pub(crate) command_id: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) max_results: Option<i64>,
    pub(crate) next_token: Option<String>,
    pub(crate) filters: Option<Vec<CommandFilter>>,
}

/// One `Target` of SendCommand (and of a Command in replies).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Target {
    pub(crate) key: Option<String>,
    pub(crate) values: Option<Vec<String>>,
}

/// CloudWatchOutputConfig, in requests and replies.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CloudWatchOutputConfig {
    pub(crate) cloud_watch_log_group_name: String,
    pub(crate) cloud_watch_output_enabled: bool,
}

/// SendCommand input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct SendCommandRequest {
    pub(crate) instance_ids: Option<Vec<String>>,
    pub(crate) targets: Option<Vec<Target>>,
    pub(crate) document_name: Option<String>,
    pub(crate) document_version: Option<String>,
    pub(crate) comment: Option<String>,
    pub(crate) parameters: Option<BTreeMap<String, Vec<String>>>,
    pub(crate) output_s3_region: Option<String>,
    pub(crate) output_s3_bucket_name: Option<String>,
    pub(crate) output_s3_key_prefix: Option<String>,
    pub(crate) cloud_watch_output_config: Option<CloudWatchOutputConfig>,
    pub(crate) max_concurrency: Option<String>,
    pub(crate) max_errors: Option<String>,
    pub(crate) timeout_seconds: Option<i64>,
}

/// CancelCommand input.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct CancelCommandRequest {
    pub(crate) command_id: Option<String>,
    pub(crate) instance_ids: Option<Vec<String>>,
}

/// GetCommandInvocation output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetCommandInvocationResponse {
    pub(crate) command_id: String,
    pub(crate) instance_id: String,
    pub(crate) comment: String,
    pub(crate) document_name: String,
    pub(crate) document_version: String,
    pub(crate) plugin_name: String,
    pub(crate) response_code: i32,
    pub(crate) execution_start_date_time: String,
    pub(crate) execution_elapsed_time: String,
    pub(crate) execution_end_date_time: String,
    pub(crate) status: &'static str,
    pub(crate) status_details: String,
    pub(crate) standard_output_content: String,
    pub(crate) standard_output_url: String,
    pub(crate) standard_error_content: String,
    pub(crate) standard_error_url: String,
    pub(crate) cloud_watch_output_config: CloudWatchOutputConfig,
}

/// NotificationConfig (always empty here).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NotificationConfig {
    pub(crate) notification_arn: String,
    pub(crate) notification_events: Vec<String>,
    pub(crate) notification_type: String,
}

/// One plugin in a CommandInvocation (ListCommandInvocations with `Details`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CommandPlugin {
    pub(crate) name: String,
    pub(crate) status: &'static str,
    pub(crate) status_details: String,
    pub(crate) response_code: i32,
    /// Epoch seconds; absent until the plugin started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_start_date_time: Option<f64>,
    /// Epoch seconds; absent until the plugin finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_finish_date_time: Option<f64>,
    pub(crate) output: String,
    pub(crate) standard_output_url: String,
    pub(crate) standard_error_url: String,
    #[serde(rename = "OutputS3Region")]
    pub(crate) output_s3_region: String,
    #[serde(rename = "OutputS3BucketName")]
    pub(crate) output_s3_bucket_name: String,
    #[serde(rename = "OutputS3KeyPrefix")]
    pub(crate) output_s3_key_prefix: String,
}

/// One CommandInvocation (ListCommandInvocations).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CommandInvocation {
    pub(crate) command_id: String,
    pub(crate) instance_id: String,
    pub(crate) instance_name: String,
    pub(crate) comment: String,
    pub(crate) document_name: String,
    pub(crate) document_version: String,
    /// Epoch seconds.
    pub(crate) requested_date_time: f64,
    pub(crate) status: &'static str,
    pub(crate) status_details: String,
    pub(crate) trace_output: String,
    pub(crate) standard_output_url: String,
    pub(crate) standard_error_url: String,
    pub(crate) command_plugins: Vec<CommandPlugin>,
    pub(crate) service_role: String,
    pub(crate) notification_config: NotificationConfig,
    pub(crate) cloud_watch_output_config: CloudWatchOutputConfig,
}

/// ListCommandInvocations output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListCommandInvocationsResponse {
    pub(crate) command_invocations: Vec<CommandInvocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_token: Option<String>,
}

/// One Command (ListCommands, SendCommand).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Command {
    pub(crate) command_id: String,
    pub(crate) document_name: String,
    pub(crate) document_version: String,
    pub(crate) comment: String,
    /// Epoch seconds.
    pub(crate) expires_after: f64,
    pub(crate) parameters: BTreeMap<String, Vec<String>>,
    pub(crate) instance_ids: Vec<String>,
    pub(crate) targets: Vec<Target>,
    /// Epoch seconds.
    pub(crate) requested_date_time: f64,
    pub(crate) status: &'static str,
    pub(crate) status_details: String,
    #[serde(rename = "OutputS3Region")]
    pub(crate) output_s3_region: String,
    #[serde(rename = "OutputS3BucketName")]
    pub(crate) output_s3_bucket_name: String,
    #[serde(rename = "OutputS3KeyPrefix")]
    pub(crate) output_s3_key_prefix: String,
    pub(crate) max_concurrency: String,
    pub(crate) max_errors: String,
    pub(crate) target_count: usize,
    pub(crate) completed_count: usize,
    pub(crate) error_count: usize,
    pub(crate) delivery_timed_out_count: usize,
    pub(crate) service_role: String,
    pub(crate) notification_config: NotificationConfig,
    pub(crate) cloud_watch_output_config: CloudWatchOutputConfig,
    pub(crate) timeout_seconds: u32,
}

/// ListCommands output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListCommandsResponse {
    pub(crate) commands: Vec<Command>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_token: Option<String>,
}

/// SendCommand output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendCommandResponse {
    pub(crate) command: Command,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_match_the_api() {
        let req: SendCommandRequest = serde_json::from_str(
            r#"{"DocumentName":"AWS-RunShellScript","InstanceIds":["i-1"],
                "OutputS3BucketName":"b","OutputS3KeyPrefix":"p",
                "CloudWatchOutputConfig":{"CloudWatchOutputEnabled":true},
                "Parameters":{"commands":["echo hi"]},"Unknown":1}"#,
        )
        .unwrap();
        assert_eq!(req.output_s3_bucket_name.as_deref(), Some("b"));
        assert_eq!(req.output_s3_key_prefix.as_deref(), Some("p"));
        assert!(
            req.cloud_watch_output_config
                .unwrap()
                .cloud_watch_output_enabled
        );

        let plugin = CommandPlugin {
            name: "n".into(),
            status: "Success",
            status_details: "Success".into(),
            response_code: 0,
            response_start_date_time: Some(1.5),
            response_finish_date_time: None,
            output: String::new(),
            standard_output_url: String::new(),
            standard_error_url: String::new(),
            output_s3_region: String::new(),
            output_s3_bucket_name: String::new(),
            output_s3_key_prefix: String::new(),
        };
        let json = serde_json::to_value(&plugin).unwrap();
        assert_eq!(json["ResponseStartDateTime"], 1.5);
        assert!(json.get("ResponseFinishDateTime").is_none());
        assert!(json.get("OutputS3BucketName").is_some());
    }
}
