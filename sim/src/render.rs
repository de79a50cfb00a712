//! Rendering model state into SSM's wire types: output limits, S3 URLs, CloudWatch settings,
//! timestamps.

use std::time::{Duration, Instant};

use crate::clock::{epoch_seconds, iso_duration, iso_instant};
use crate::model::{CommandState, InvocationState, PluginView};
use crate::protocol::{self as wire, CloudWatchOutputConfig, NotificationConfig};
use crate::script::Command;

/// `StandardOutputContent` keeps this many characters of stdout.
const STDOUT_LIMIT: usize = 24_000;
/// `StandardErrorContent` keeps this many characters of stderr.
const STDERR_LIMIT: usize = 8_000;
/// `CommandPlugin.Output` keeps this many characters.
const PLUGIN_OUTPUT_LIMIT: usize = 2_500;
/// How long SSM keeps trying to deliver a command unless SendCommand's `TimeoutSeconds` says
/// otherwise (reported as `ExpiresAfter` and `TimeoutSeconds`).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The first `limit` characters of `s`.
pub(crate) fn truncate_chars(s: &str, limit: usize) -> &str {
    match s.char_indices().nth(limit) {
        Some((byte, _)) => &s[..byte],
        None => s,
    }
}

/// An output URL of a plugin, or empty when the command has no S3 bucket, e.g.
/// `https://s3.eu-west-1.amazonaws.com/b/p/<cmd>/<instance>/awsrunShellScript/0.awsrunShellScript/stdout`.
fn output_url(command: &Command, instance_id: &str, plugin: &str, stream: &str) -> String {
    let Some(bucket) = command.s3_bucket.as_deref().filter(|b| !b.is_empty()) else {
        return String::new();
    };
    let dir: String = plugin.chars().filter(|&c| c != ':').collect();
    let prefix = command.s3_key_prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    format!(
        "https://s3.{}.amazonaws.com/{bucket}/{prefix}{}/{instance_id}/{dir}/0.{dir}/{stream}",
        command.s3_region, command.command_id
    )
}

fn cloudwatch(command: &Command) -> CloudWatchOutputConfig {
    match &command.cloudwatch_log_group {
        Some(group) => CloudWatchOutputConfig {
            cloud_watch_log_group_name: if group.is_empty() {
                format!("/aws/ssm/{}", command.document_name)
            } else {
                group.clone()
            },
            cloud_watch_output_enabled: command.cloudwatch_enabled,
        },
        None => CloudWatchOutputConfig::default(),
    }
}

/// The GetCommandInvocation reply for one plugin of an invocation, `elapsed` after the
/// command was added.
pub(crate) fn invocation_detail(
    command: &CommandState,
    instance_id: &str,
    plugin: &PluginView<'_>,
    elapsed: Duration,
) -> wire::GetCommandInvocationResponse {
    let spec = &command.spec;
    let time = |offset: Option<Duration>| {
        offset
            .map(|d| iso_instant(command.wall(d)))
            .unwrap_or_default()
    };
    let elapsed_time = plugin
        .started
        .map(|start| iso_duration(plugin.ended.unwrap_or(elapsed).saturating_sub(start)))
        .unwrap_or_default();
    wire::GetCommandInvocationResponse {
        command_id: spec.command_id.clone(),
        instance_id: instance_id.to_string(),
        comment: spec.comment.clone(),
        document_name: spec.document_name.clone(),
        document_version: spec.document_version.clone(),
        plugin_name: plugin.name.to_string(),
        response_code: plugin.response_code,
        execution_start_date_time: time(plugin.started),
        execution_elapsed_time: elapsed_time,
        execution_end_date_time: time(plugin.ended),
        status: plugin.status.as_str(),
        status_details: plugin.details.to_string(),
        standard_output_content: truncate_chars(plugin.stdout, STDOUT_LIMIT).to_string(),
        standard_output_url: output_url(spec, instance_id, plugin.name, "stdout"),
        standard_error_content: truncate_chars(plugin.stderr, STDERR_LIMIT).to_string(),
        standard_error_url: output_url(spec, instance_id, plugin.name, "stderr"),
        cloud_watch_output_config: cloudwatch(spec),
    }
}

/// `CommandPlugin.Output`: stdout, then stderr after SSM's error banner, cut to 2,500 chars.
fn plugin_output(plugin: &PluginView<'_>) -> String {
    let mut output = plugin.stdout.to_string();
    if !plugin.stderr.is_empty() {
        output.push_str("\n----------ERROR-------\n");
        output.push_str(plugin.stderr);
    }
    truncate_chars(&output, PLUGIN_OUTPUT_LIMIT).to_string()
}

pub(crate) fn command_invocation(
    command: &CommandState,
    inv: &InvocationState,
    elapsed: Duration,
    details: bool,
) -> wire::CommandInvocation {
    let spec = &command.spec;
    let instance_id = &inv.spec.instance_id;
    let view = inv.view(elapsed);
    let bucket = spec.s3_bucket.clone().unwrap_or_default();
    let first_plugin = view.plugins.first().map(|p| p.name).unwrap_or_default();
    let command_plugins = if details {
        view.plugins
            .iter()
            .map(|p| wire::CommandPlugin {
                name: p.name.to_string(),
                status: p.status.as_str(),
                status_details: p.details.to_string(),
                response_code: p.response_code,
                response_start_date_time: p.started.map(|d| epoch_seconds(command.wall(d))),
                response_finish_date_time: p.ended.map(|d| epoch_seconds(command.wall(d))),
                output: plugin_output(p),
                standard_output_url: output_url(spec, instance_id, p.name, "stdout"),
                standard_error_url: output_url(spec, instance_id, p.name, "stderr"),
                output_s3_region: if bucket.is_empty() {
                    String::new()
                } else {
                    spec.s3_region.clone()
                },
                output_s3_bucket_name: bucket.clone(),
                output_s3_key_prefix: spec.s3_key_prefix.clone(),
            })
            .collect()
    } else {
        Vec::new()
    };
    wire::CommandInvocation {
        command_id: spec.command_id.clone(),
        instance_id: instance_id.clone(),
        instance_name: String::new(),
        comment: spec.comment.clone(),
        document_name: spec.document_name.clone(),
        document_version: spec.document_version.clone(),
        requested_date_time: epoch_seconds(command.added_wall),
        status: view.status.as_str(),
        status_details: view.details.to_string(),
        trace_output: String::new(),
        standard_output_url: output_url(spec, instance_id, first_plugin, "stdout"),
        standard_error_url: output_url(spec, instance_id, first_plugin, "stderr"),
        command_plugins,
        service_role: String::new(),
        notification_config: NotificationConfig::default(),
        cloud_watch_output_config: cloudwatch(spec),
    }
}

pub(crate) fn command_wire(command: &CommandState, now: Instant) -> wire::Command {
    let spec = &command.spec;
    let summary = command.summary(now);
    let bucket = spec.s3_bucket.clone().unwrap_or_default();
    let timeout = spec
        .timeout_seconds
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(DELIVERY_TIMEOUT);
    wire::Command {
        command_id: spec.command_id.clone(),
        document_name: spec.document_name.clone(),
        document_version: spec.document_version.clone(),
        comment: spec.comment.clone(),
        expires_after: epoch_seconds(command.added_wall + timeout),
        parameters: spec.parameters.clone(),
        // SSM reports the instance ids only for a command sent to instance ids.
        instance_ids: if command.by_targets() {
            Vec::new()
        } else {
            command
                .invocations
                .iter()
                .map(|inv| inv.spec.instance_id.clone())
                .collect()
        },
        targets: spec
            .targets
            .iter()
            .map(|(key, values)| wire::Target {
                key: Some(key.clone()),
                values: Some(values.clone()),
            })
            .collect(),
        requested_date_time: epoch_seconds(command.added_wall),
        status: summary.status.as_str(),
        status_details: summary.status.default_details().to_string(),
        output_s3_region: if bucket.is_empty() {
            String::new()
        } else {
            spec.s3_region.clone()
        },
        output_s3_bucket_name: bucket,
        output_s3_key_prefix: spec.s3_key_prefix.clone(),
        max_concurrency: spec
            .max_concurrency
            .clone()
            .unwrap_or_else(|| "50".to_string()),
        max_errors: spec.max_errors.clone().unwrap_or_else(|| "0".to_string()),
        target_count: summary.target_count,
        completed_count: summary.completed_count,
        error_count: summary.error_count,
        delivery_timed_out_count: summary.delivery_timed_out_count,
        service_role: String::new(),
        notification_config: NotificationConfig::default(),
        cloud_watch_output_config: cloudwatch(spec),
        timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }

    #[test]
    fn output_urls_follow_the_s3_layout() {
        let command = Command::new("c").s3_output("bucket", "pre/fix/");
        assert_eq!(
            output_url(&command, "i-1", "aws:runShellScript", "stdout"),
            "https://s3.eu-west-1.amazonaws.com/bucket/pre/fix/c/i-1/awsrunShellScript/0.awsrunShellScript/stdout"
        );
        assert_eq!(output_url(&Command::new("c"), "i-1", "p", "stdout"), "");
    }
}
