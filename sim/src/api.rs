//! The SSM operations: decode a request body, check it against the [`Store`] (or change the
//! store), and encode the reply. Rendering model state into wire types lives in
//! [`crate::render`], the list operations in [`crate::listing`].

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::ids::uuid_v4;
use crate::listing::{list_command_invocations, list_commands};
use crate::model::{default_plugin_name, Store};
use crate::protocol as wire;
use crate::render;
use crate::script::Command;
use crate::sending::Sent;

/// Most instances one SendCommand may name.
const MAX_INSTANCE_IDS: usize = 50;
/// Most `Targets` one SendCommand may give.
const MAX_TARGETS: usize = 5;
/// Most values one `Target` may list.
const MAX_TARGET_VALUES: usize = 50;

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
            let mut store = write();
            store.sending.cancelled.push(command_id.clone());
            store.cancel(&command_id, &req.instance_ids.unwrap_or_default(), now)?;
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
    Ok(render::invocation_detail(
        command,
        &instance_id,
        plugin,
        elapsed,
    ))
}

/// Checks SendCommand's `Targets`: at most [`MAX_TARGETS`], each with a key and
/// 1..=[`MAX_TARGET_VALUES`] values. Returns them as (key, values).
fn targets(targets: Option<Vec<wire::Target>>) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let targets = targets.unwrap_or_default();
    if targets.len() > MAX_TARGETS {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'targets' failed to satisfy constraint: Member must have length less than or equal to {MAX_TARGETS}"
        )));
    }
    targets
        .into_iter()
        .map(|target| {
            let key = target.key.filter(|k| !k.is_empty()).ok_or_else(|| {
                ApiError::validation("1 validation error detected: a Target needs a Key")
            })?;
            let values = target.values.unwrap_or_default();
            if values.is_empty() || values.len() > MAX_TARGET_VALUES {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: the Values of Target {key} must have 1 to {MAX_TARGET_VALUES} members"
                )));
            }
            Ok((key, values))
        })
        .collect()
}

fn send_command(
    store: &mut Store,
    req: wire::SendCommandRequest,
    now: Instant,
    wall: SystemTime,
) -> Result<wire::SendCommandResponse, ApiError> {
    let document = required(req.document_name, "DocumentName")?;
    let requested = req.instance_ids.unwrap_or_default();
    let targets = targets(req.targets)?;
    match (requested.is_empty(), targets.is_empty()) {
        (true, true) => return Err(ApiError::validation("InstanceIds or Targets must be given")),
        (false, false) => {
            return Err(ApiError::validation(
                "InstanceIds and Targets cannot both be given",
            ))
        }
        _ => {}
    }
    if requested.len() > MAX_INSTANCE_IDS {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to {MAX_INSTANCE_IDS}"
        )));
    }
    if requested.iter().any(|id| id.trim().is_empty()) {
        return Err(ApiError::new("InvalidInstanceId", "Instance ID is empty"));
    }
    if store.sending.refuses(&document) {
        return Err(ApiError::new(
            "InvalidDocument",
            format!("Document with name {document} does not exist."),
        ));
    }
    let version = req.document_version.filter(|v| !v.is_empty());
    let mut command = Command::new(uuid_v4()).document(
        document.clone(),
        version
            .clone()
            .filter(|v| !v.starts_with('$'))
            .unwrap_or_else(|| "1".to_string()),
    );
    command.comment = req.comment.unwrap_or_default();
    command.parameters = req.parameters.unwrap_or_default();
    let bucket = req.output_s3_bucket_name.filter(|b| !b.is_empty());
    if let Some(bucket) = &bucket {
        command = command.s3_output(
            bucket.clone(),
            req.output_s3_key_prefix.clone().unwrap_or_default(),
        );
        if let Some(region) = req.output_s3_region.filter(|r| !r.is_empty()) {
            command.s3_region = region;
        }
    }
    if let Some(config) = req.cloud_watch_output_config {
        command.cloudwatch_log_group = Some(config.cloud_watch_log_group_name);
        command.cloudwatch_enabled = config.cloud_watch_output_enabled;
    }
    command.max_concurrency = req.max_concurrency.clone().filter(|m| !m.is_empty());
    command.max_errors = req.max_errors.clone().filter(|m| !m.is_empty());
    command.timeout_seconds = req.timeout_seconds.and_then(|t| u32::try_from(t).ok());
    let plugin_name = default_plugin_name(&document);
    let sending = &store.sending;
    let instances: Vec<(String, Duration)> = if targets.is_empty() {
        let mut seen = BTreeSet::new();
        requested
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .map(|id| (id.clone(), Duration::ZERO))
            .collect()
    } else {
        sending.resolve(&targets)
    };
    for (id, appears_after) in instances {
        command = command.invocation(sending.invocation(&id, appears_after, plugin_name));
    }
    let command_id = command.command_id.clone();
    store.sending.sent.push(Sent {
        command_id: command_id.clone(),
        comment: command.comment.clone(),
        document_name: document,
        document_version: version,
        instance_ids: requested,
        targets: targets.clone(),
        parameters: command.parameters.clone(),
        max_concurrency: req.max_concurrency,
        max_errors: req.max_errors,
        timeout_seconds: req.timeout_seconds,
        output_s3_bucket_name: bucket,
        output_s3_key_prefix: req.output_s3_key_prefix,
        at: wall,
    });
    command.targets = targets;
    store.add_sent(command, now, wall);
    let command = store
        .command(&command_id)
        .ok_or_else(|| ApiError::new("InternalServerError", "command vanished"))?;
    Ok(wire::SendCommandResponse {
        command: render::command_wire(command, now),
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
