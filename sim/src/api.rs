//! The SSM operations: decode a request body, read or change the [`Store`], encode the reply.
//!
//! Lookups go through the store's hash indexes; list operations walk only the page they
//! return (plus invocations still hidden), except ListCommands, which summarises each
//! command it returns over all that command's invocations.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::{epoch_seconds, iso_duration, iso_instant};
use crate::error::ApiError;
use crate::ids::uuid_v4;
use crate::model::{CommandState, InvocationState, PluginView, Store};
use crate::protocol::{self as wire, CloudWatchOutputConfig, NotificationConfig};
use crate::script::{Command, Invocation};

/// `StandardOutputContent` keeps this many characters of stdout.
pub(crate) const STDOUT_LIMIT: usize = 24_000;
/// `StandardErrorContent` keeps this many characters of stderr.
pub(crate) const STDERR_LIMIT: usize = 8_000;
/// `CommandPlugin.Output` keeps this many characters.
pub(crate) const PLUGIN_OUTPUT_LIMIT: usize = 2_500;
/// How long SSM keeps trying to deliver a command (reported as `ExpiresAfter`).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most instances one SendCommand may name.
const MAX_INSTANCE_IDS: usize = 50;
/// Page size bounds of the list operations.
const MAX_RESULTS: i64 = 50;

/// Runs one operation on a request body and returns the reply body.
pub(crate) fn handle(
    store: &RwLock<Store>,
    operation: &str,
    body: &[u8],
    now: Instant,
    wall: SystemTime,
) -> Result<Vec<u8>, ApiError> {
    let read = || store.read().unwrap_or_else(PoisonError::into_inner);
    let write = || store.write().unwrap_or_else(PoisonError::into_inner);
    match operation {
        "GetCommandInvocation" => encode(&get_command_invocation(&read(), decode(body)?, now)?),
        "ListCommandInvocations" => encode(&list_command_invocations(&read(), decode(body)?, now)?),
        "ListCommands" => encode(&list_commands(&read(), decode(body)?, now)?),
        "SendCommand" => encode(&send_command(&mut write(), decode(body)?, now, wall)?),
        "CancelCommand" => {
            let req: wire::CancelCommandRequest = decode(body)?;
            let command_id = required(req.command_id, "CommandId")?;
            write().cancel(&command_id, &req.instance_ids.unwrap_or_default(), now)?;
            Ok(b"{}".to_vec())
        }
        _ => Err(ApiError::unknown_operation()),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new("SerializationException", format!("Malformed request: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::new("InternalServerError", e.to_string()))
}

fn required(value: Option<String>, member: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::validation(format!("1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null")))
}

fn page_size(max_results: Option<i64>) -> Result<usize, ApiError> {
    match max_results {
        None => Ok(MAX_RESULTS as usize),
        Some(n) if (1..=MAX_RESULTS).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{n}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and {MAX_RESULTS}"
        ))),
    }
}

fn invalid_token() -> ApiError {
    ApiError::new("InvalidNextToken", "The specified token is not valid")
}

/// Parses a token `"<tag>:<n>[:<m>]"` made by the same kind of listing.
fn parse_token(token: Option<&str>, tag: &str) -> Result<Option<Vec<usize>>, ApiError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let mut parts = token.split(':');
    if parts.next() != Some(tag) {
        return Err(invalid_token());
    }
    parts
        .map(|p| p.parse::<usize>().map_err(|_| invalid_token()))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Takes up to `max` shown items; the token is the cursor of the next item, if any.
/// Each item is its cursor and, unless hidden, what it shows.
fn take_page<C, T>(
    mut items: impl Iterator<Item = (C, Option<T>)>,
    max: usize,
) -> (Vec<T>, Option<C>) {
    let mut page = Vec::new();
    while page.len() < max {
        match items.next() {
            Some((_, Some(item))) => page.push(item),
            Some((_, None)) => {}
            None => return (page, None),
        }
    }
    (page, items.next().map(|(cursor, _)| cursor))
}

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

fn get_command_invocation(
    store: &Store,
    req: wire::GetCommandInvocationRequest,
    now: Instant,
) -> Result<wire::GetCommandInvocationResponse, ApiError> {
    let command_id = required(req.command_id, "CommandId")?;
    let instance_id = required(req.instance_id, "InstanceId")?;
    let command = store
        .command(&command_id)
        .ok_or_else(ApiError::invocation_does_not_exist)?;
    let inv = command
        .invocation(&instance_id)
        .ok_or_else(ApiError::invocation_does_not_exist)?;
    if let Some(err) = &inv.spec.always_error {
        return Err(ApiError::new(err.code.clone(), err.message.clone()));
    }
    let elapsed = command.elapsed(now);
    if !inv.visible(elapsed) {
        return Err(ApiError::invocation_does_not_exist());
    }
    let view = inv.view(elapsed);
    let plugin = match req.plugin_name.filter(|p| !p.is_empty()) {
        Some(name) => view
            .plugins
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                ApiError::new(
                    "InvalidPluginName",
                    format!("The plugin name {name} is not valid for this document"),
                )
            })?,
        None => match view.plugins.as_slice() {
            [only] => only,
            _ => {
                return Err(ApiError::new(
                    "InvalidPluginName",
                    "The document has more than one step: a step name (PluginName) is required",
                ))
            }
        },
    };
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
    Ok(wire::GetCommandInvocationResponse {
        command_id: spec.command_id.clone(),
        instance_id: instance_id.clone(),
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
        standard_output_url: output_url(spec, &instance_id, plugin.name, "stdout"),
        standard_error_content: truncate_chars(plugin.stderr, STDERR_LIMIT).to_string(),
        standard_error_url: output_url(spec, &instance_id, plugin.name, "stderr"),
        cloud_watch_output_config: cloudwatch(spec),
    })
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

fn command_invocation(
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

fn list_command_invocations(
    store: &Store,
    req: wire::ListCommandInvocationsRequest,
    now: Instant,
) -> Result<wire::ListCommandInvocationsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let details = req.details.unwrap_or(false);
    let instance = req.instance_id.as_deref().filter(|i| !i.is_empty());
    let token = req.next_token.as_deref();
    let show = |command: &CommandState, inv: &InvocationState| {
        let elapsed = command.elapsed(now);
        inv.visible(elapsed)
            .then(|| command_invocation(command, inv, elapsed, details))
    };
    let command_id = req.command_id.as_deref().filter(|c| !c.is_empty());
    let (invocations, next) = match (command_id, instance) {
        // One command: its invocations in order; cursor = next position.
        (Some(command_id), instance) => {
            let start = match parse_token(token, "i")?.as_deref() {
                None => 0,
                Some([position]) => *position,
                Some(_) => return Err(invalid_token()),
            };
            let Some(command) = store.command(command_id) else {
                return Ok(wire::ListCommandInvocationsResponse {
                    command_invocations: Vec::new(),
                    next_token: None,
                });
            };
            let (page, next) = match instance {
                // At most one invocation: a single page.
                Some(id) => {
                    let shown = command.invocation(id).and_then(|inv| show(command, inv));
                    (shown.into_iter().collect(), None)
                }
                None => take_page(
                    command
                        .invocations
                        .iter()
                        .enumerate()
                        .skip(start)
                        .map(|(position, inv)| (position, show(command, inv))),
                    max,
                ),
            };
            (page, next.map(|p| format!("i:{p}")))
        }
        // One instance across commands, newest first; cursor = entries still to walk.
        (None, Some(instance)) => {
            let entries = store.instance_entries(instance);
            let end = match parse_token(token, "n")?.as_deref() {
                None => entries.len(),
                Some([end]) => (*end).min(entries.len()),
                Some(_) => return Err(invalid_token()),
            };
            let (page, next) = take_page(
                entries[..end]
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(k, &(slot, position))| {
                        let shown = store.command_at(slot).and_then(|command| {
                            command
                                .invocations
                                .get(position)
                                .and_then(|inv| show(command, inv))
                        });
                        (k + 1, shown)
                    }),
                max,
            );
            (page, next.map(|end| format!("n:{end}")))
        }
        // Everything: commands newest first, each command's invocations in order.
        (None, None) => {
            let count = store.command_count();
            let (start_slot, start_position) = match parse_token(token, "a")?.as_deref() {
                None => (count, 0),
                Some([slot, position]) => (slot.saturating_add(1), *position),
                Some(_) => return Err(invalid_token()),
            };
            let items = (0..start_slot.min(count))
                .rev()
                .filter_map(|slot| store.command_at(slot).map(|command| (slot, command)))
                .flat_map(|(slot, command)| {
                    let from = if slot + 1 == start_slot {
                        start_position
                    } else {
                        0
                    };
                    command
                        .invocations
                        .iter()
                        .enumerate()
                        .skip(from)
                        .map(move |(position, inv)| ((slot, position), show(command, inv)))
                });
            let (page, next) = take_page(items, max);
            (
                page,
                next.map(|(slot, position)| format!("a:{slot}:{position}")),
            )
        }
    };
    Ok(wire::ListCommandInvocationsResponse {
        command_invocations: invocations,
        next_token: next,
    })
}

fn command_wire(command: &CommandState, now: Instant) -> wire::Command {
    let spec = &command.spec;
    let summary = command.summary(now);
    let bucket = spec.s3_bucket.clone().unwrap_or_default();
    wire::Command {
        command_id: spec.command_id.clone(),
        document_name: spec.document_name.clone(),
        document_version: spec.document_version.clone(),
        comment: spec.comment.clone(),
        expires_after: epoch_seconds(command.added_wall + DELIVERY_TIMEOUT),
        parameters: spec.parameters.clone(),
        instance_ids: command
            .invocations
            .iter()
            .map(|inv| inv.spec.instance_id.clone())
            .collect(),
        targets: Vec::new(),
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
        max_concurrency: "50".to_string(),
        max_errors: "0".to_string(),
        target_count: summary.target_count,
        completed_count: summary.completed_count,
        error_count: summary.error_count,
        delivery_timed_out_count: summary.delivery_timed_out_count,
        service_role: String::new(),
        notification_config: NotificationConfig::default(),
        cloud_watch_output_config: cloudwatch(spec),
        timeout_seconds: DELIVERY_TIMEOUT.as_secs() as u32,
    }
}

fn list_commands(
    store: &Store,
    req: wire::ListCommandsRequest,
    now: Instant,
) -> Result<wire::ListCommandsResponse, ApiError> {
    let max = page_size(req.max_results)?;
    let instance = req.instance_id.as_deref().filter(|i| !i.is_empty());
    // The commands to list as slots, oldest first; the page walks them newest first.
    let slots: Vec<usize> = match req.command_id.as_deref().filter(|c| !c.is_empty()) {
        Some(command_id) => {
            let slot = store.slot(command_id).ok_or_else(|| {
                ApiError::new(
                    "InvalidCommandId",
                    format!("Command {command_id} not found"),
                )
            })?;
            let matches = instance.is_none_or(|id| {
                store
                    .command_at(slot)
                    .is_some_and(|c| c.invocation(id).is_some())
            });
            if matches {
                vec![slot]
            } else {
                Vec::new()
            }
        }
        None => match instance {
            Some(id) => store
                .instance_entries(id)
                .iter()
                .map(|&(slot, _)| slot)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => (0..store.command_count()).collect(),
        },
    };
    let end = match parse_token(req.next_token.as_deref(), "c")?.as_deref() {
        None => slots.len(),
        Some([end]) => (*end).min(slots.len()),
        Some(_) => return Err(invalid_token()),
    };
    let (commands, next) = take_page(
        slots[..end].iter().enumerate().rev().map(|(k, &slot)| {
            (
                k + 1,
                store
                    .command_at(slot)
                    .map(|command| command_wire(command, now)),
            )
        }),
        max,
    );
    Ok(wire::ListCommandsResponse {
        commands,
        next_token: next.map(|end| format!("c:{end}")),
    })
}

fn send_command(
    store: &mut Store,
    req: wire::SendCommandRequest,
    now: Instant,
    wall: SystemTime,
) -> Result<wire::SendCommandResponse, ApiError> {
    let document = required(req.document_name, "DocumentName")?;
    let requested = req.instance_ids.unwrap_or_default();
    if requested.is_empty() {
        let message = if req.targets.is_some_and(|t| !t.is_empty()) {
            "ssm-sim resolves InstanceIds only, not Targets"
        } else {
            "InstanceIds or Targets must be given"
        };
        return Err(ApiError::validation(message));
    }
    if requested.len() > MAX_INSTANCE_IDS {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to {MAX_INSTANCE_IDS}"
        )));
    }
    let mut command = Command::new(uuid_v4()).document(
        document,
        req.document_version
            .filter(|v| !v.is_empty() && !v.starts_with('$'))
            .unwrap_or_else(|| "1".to_string()),
    );
    command.comment = req.comment.unwrap_or_default();
    command.parameters = req.parameters.unwrap_or_default();
    if let Some(bucket) = req.output_s3_bucket_name.filter(|b| !b.is_empty()) {
        command = command.s3_output(bucket, req.output_s3_key_prefix.unwrap_or_default());
        if let Some(region) = req.output_s3_region.filter(|r| !r.is_empty()) {
            command.s3_region = region;
        }
    }
    if let Some(config) = req.cloud_watch_output_config {
        command.cloudwatch_log_group = Some(config.cloud_watch_log_group_name);
        command.cloudwatch_enabled = config.cloud_watch_output_enabled;
    }
    let mut seen = BTreeSet::new();
    for id in requested {
        if id.trim().is_empty() {
            return Err(ApiError::new("InvalidInstanceId", "Instance ID is empty"));
        }
        if seen.insert(id.clone()) {
            command = command.invocation(Invocation::new(id));
        }
    }
    let command_id = command.command_id.clone();
    store.add(command, now, wall);
    let command = store
        .command(&command_id)
        .ok_or_else(|| ApiError::new("InternalServerError", "command vanished"))?;
    Ok(wire::SendCommandResponse {
        command: command_wire(command, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(store: &RwLock<Store>, op: &str, body: &str) -> Result<serde_json::Value, ApiError> {
        let now = Instant::now();
        handle(store, op, body.as_bytes(), now, SystemTime::now())
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

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

    #[test]
    fn errors_and_unknown_operations() {
        let store = RwLock::new(Store::default());
        let err = call(&store, "Nope", "{}").unwrap_err();
        assert_eq!(
            err.body().to_string(),
            r#"{"__type":"UnknownOperationException"}"#
        );
        let err = call(&store, "GetCommandInvocation", "{").unwrap_err();
        assert_eq!(err.code, "SerializationException");
        let err = call(&store, "GetCommandInvocation", r#"{"CommandId":"c"}"#).unwrap_err();
        assert_eq!(err.code, "ValidationException");
        let err = call(&store, "ListCommands", r#"{"MaxResults":51}"#).unwrap_err();
        assert_eq!(err.code, "ValidationException");
        let err = call(&store, "ListCommands", r#"{"NextToken":"zz"}"#).unwrap_err();
        assert_eq!(err.code, "InvalidNextToken");
        let err = call(&store, "CancelCommand", r#"{"CommandId":"c"}"#).unwrap_err();
        assert_eq!(err.code, "InvalidCommandId");
    }

    #[test]
    fn send_then_list() {
        let store = RwLock::new(Store::default());
        let sent = call(
            &store,
            "SendCommand",
            r#"{"DocumentName":"AWS-RunShellScript","InstanceIds":["i-1","i-2","i-1"],
                "Parameters":{"commands":["true"]}}"#,
        )
        .unwrap();
        let command = &sent["Command"];
        assert_eq!(command["CommandId"].as_str().unwrap().len(), 36);
        assert_eq!(command["Status"], "Pending");
        assert_eq!(command["TargetCount"], 2);
        assert_eq!(command["Parameters"]["commands"][0], "true");
        assert!(command["RequestedDateTime"].is_f64());
        let listed = call(&store, "ListCommandInvocations", r#"{"Details":true}"#).unwrap();
        let invocations = listed["CommandInvocations"].as_array().unwrap();
        assert_eq!(invocations.len(), 2);
        assert_eq!(invocations[0]["InstanceId"], "i-1");
        assert_eq!(
            invocations[0]["CommandPlugins"][0]["Name"],
            "aws:runShellScript"
        );
    }
}
