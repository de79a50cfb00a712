//! ListCommands' `Filters`: `InvokedAfter` / `InvokedBefore` (ISO-8601 instants, as the SDK
//! sends them), `Status`, `ExecutionStage` and `DocumentName`. Every filter must match.

use std::time::SystemTime;

use crate::clock::parse_iso_instant;
use crate::error::ApiError;
use crate::model::CommandState;
use crate::protocol as wire;
use crate::script::Status;

/// One filter of a ListCommands request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommandsFilter {
    /// Requested at or after this instant.
    InvokedAfter(SystemTime),
    /// Requested before this instant.
    InvokedBefore(SystemTime),
    /// The command's status is this one.
    Status(Status),
    /// The command's `StatusDetails` read this.
    Details(&'static str),
    /// Finished (`Complete`) or not (`Executing`).
    Complete(bool),
    /// The document has this name.
    DocumentName(String),
}

/// The `Status` values ListCommands accepts, as the SSM API reference lists them
/// (`CommandFilter`), with what each matches.
const STATUS_VALUES: [(&str, CommandsFilter); 12] = [
    ("Pending", CommandsFilter::Status(Status::Pending)),
    ("InProgress", CommandsFilter::Status(Status::InProgress)),
    ("Success", CommandsFilter::Status(Status::Success)),
    ("Cancelled", CommandsFilter::Status(Status::Cancelled)),
    ("Failed", CommandsFilter::Status(Status::Failed)),
    ("TimedOut", CommandsFilter::Status(Status::TimedOut)),
    ("AccessDenied", CommandsFilter::Details("Access Denied")),
    (
        "DeliveryTimedOut",
        CommandsFilter::Details("Delivery Timed Out"),
    ),
    (
        "ExecutionTimedOut",
        CommandsFilter::Details("Execution Timed Out"),
    ),
    ("Incomplete", CommandsFilter::Details("Incomplete")),
    (
        "NoInstancesInTag",
        CommandsFilter::Details("No Instances In Tag"),
    ),
    ("LimitExceeded", CommandsFilter::Details("Limit Exceeded")),
];

fn invalid_value(key: &str, value: &str) -> ApiError {
    ApiError::validation(format!(
        "Invalid value '{value}' for filter key {key} of ListCommands"
    ))
}

impl CommandsFilter {
    fn parse(key: &str, value: &str) -> Result<CommandsFilter, ApiError> {
        let instant = || parse_iso_instant(value).ok_or_else(|| invalid_value(key, value));
        match key {
            "InvokedAfter" => Ok(CommandsFilter::InvokedAfter(instant()?)),
            "InvokedBefore" => Ok(CommandsFilter::InvokedBefore(instant()?)),
            "Status" => STATUS_VALUES
                .iter()
                .find(|(name, _)| *name == value)
                .map(|(_, filter)| filter.clone())
                .ok_or_else(|| invalid_value(key, value)),
            "ExecutionStage" => match value {
                "Executing" => Ok(CommandsFilter::Complete(false)),
                "Complete" => Ok(CommandsFilter::Complete(true)),
                _ => Err(invalid_value(key, value)),
            },
            "DocumentName" => Ok(CommandsFilter::DocumentName(value.to_string())),
            _ => Err(ApiError::new(
                "InvalidFilterKey",
                format!("The filter key {key} is not valid for ListCommands"),
            )),
        }
    }

    /// Whether a command, rendered as `rendered`, passes this filter.
    pub(crate) fn matches(&self, command: &CommandState, rendered: &wire::Command) -> bool {
        match self {
            CommandsFilter::InvokedAfter(t) => command.added_wall >= *t,
            CommandsFilter::InvokedBefore(t) => command.added_wall < *t,
            CommandsFilter::Status(status) => rendered.status == status.as_str(),
            CommandsFilter::Details(details) => rendered.status_details == *details,
            CommandsFilter::Complete(complete) => {
                let terminal = [
                    Status::Success,
                    Status::Cancelled,
                    Status::TimedOut,
                    Status::Failed,
                ]
                .iter()
                .any(|s| s.as_str() == rendered.status);
                terminal == *complete
            }
            CommandsFilter::DocumentName(name) => rendered.document_name == *name,
        }
    }
}

/// The filters of a ListCommands request. An unknown key is `InvalidFilterKey`, a bad value
/// or a filter without its key or value a `ValidationException`.
pub(crate) fn commands_filters(
    filters: Option<&[wire::CommandFilter]>,
) -> Result<Vec<CommandsFilter>, ApiError> {
    filters
        .unwrap_or_default()
        .iter()
        .map(|filter| {
            let (Some(key), Some(value)) = (filter.key.as_deref(), filter.value.as_deref()) else {
                return Err(ApiError::validation(
                    "1 validation error detected: a CommandFilter needs both key and value",
                ));
            };
            CommandsFilter::parse(key, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn filter(key: &str, value: &str) -> wire::CommandFilter {
        wire::CommandFilter {
            key: Some(key.into()),
            value: Some(value.into()),
        }
    }

    #[test]
    fn filters_parse() {
        let parsed = commands_filters(Some(&[
            filter("InvokedAfter", "1970-01-01T00:00:10Z"),
            filter("InvokedBefore", "1970-01-01T00:01:00.5Z"),
            filter("Status", "Success"),
            filter("Status", "DeliveryTimedOut"),
            filter("ExecutionStage", "Executing"),
            filter("DocumentName", "AWS-RunShellScript"),
        ]))
        .unwrap();
        assert_eq!(
            parsed,
            [
                CommandsFilter::InvokedAfter(UNIX_EPOCH + Duration::from_secs(10)),
                CommandsFilter::InvokedBefore(UNIX_EPOCH + Duration::from_millis(60_500)),
                CommandsFilter::Status(Status::Success),
                CommandsFilter::Details("Delivery Timed Out"),
                CommandsFilter::Complete(false),
                CommandsFilter::DocumentName("AWS-RunShellScript".into()),
            ]
        );
        let code = |f: wire::CommandFilter| commands_filters(Some(&[f])).unwrap_err().code;
        assert_eq!(code(filter("Bogus", "x")), "InvalidFilterKey");
        assert_eq!(code(filter("InvokedAfter", "soon")), "ValidationException");
        assert_eq!(code(filter("Status", "Cancelling")), "ValidationException");
        assert_eq!(
            code(filter("ExecutionStage", "Done")),
            "ValidationException"
        );
        let half = wire::CommandFilter {
            key: Some("Status".into()),
            value: None,
        };
        assert_eq!(code(half), "ValidationException");
        assert!(commands_filters(None).unwrap().is_empty());
    }
}
